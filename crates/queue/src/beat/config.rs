//! The TOML schedule file (`--schedule FILE` / `OPENTHREAT_SCHEDULE`).
//!
//! ```toml
//! timezone = "UTC"                 # optional, default for crontab entries
//!
//! [schedule.process-high-priority]
//! task = "tasks.process_llm_queue"
//! cron = "*/10 * * * *"
//! kwargs = { batch_size = 10, priority = "high" }
//!
//! [schedule.heartbeat]
//! task = "backend.tasks.test_task"
//! args = ["tick"]
//! every = "30s"                    # or "1s", "5m", "2h", "1d", or seconds as a number
//! enabled = true                   # optional; false keeps the entry but never fires it
//! queue = "celery"                 # optional: queue, priority (0-9), expires (seconds)
//! timezone = "Europe/Paris"        # optional per crontab entry, overrides the top-level one
//! ```
//!
//! The file replaces the default schedule as a whole, so what runs is exactly
//! what the file says. It is checked completely before anything runs, and every
//! problem is reported with the entry, the line and the reason: a beat that
//! starts with a half-understood timetable fails silently for days.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use super::crontab::Crontab;
use super::entry::{Entry, EntryOptions, Schedule};
use super::interval::Interval;
use super::BeatError;

/// One problem found in a schedule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The entry the problem is in, when it is in one.
    pub entry: Option<String>,
    /// 1-based line of the offending value.
    pub line: usize,
    /// 1-based column of the offending value.
    pub column: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some(entry) => write!(f, "line {}: entry `{entry}`: {}", self.line, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

/// Reads and checks a schedule file. `known_tasks` is the list of task names
/// the binary registers; an entry naming any other task is an error.
pub fn load_schedule_file(path: &Path, known_tasks: &[&str]) -> Result<Vec<Entry>, BeatError> {
    let source = std::fs::read_to_string(path).map_err(|e| BeatError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    parse_schedule(&source, known_tasks).map_err(|e| match e {
        BeatError::Config { errors, .. } => BeatError::Config {
            source_name: path.display().to_string(),
            errors,
        },
        other => other,
    })
}

/// Parses and checks the text of a schedule file; see [`load_schedule_file`].
/// Entries are returned in file order.
pub fn parse_schedule(source: &str, known_tasks: &[&str]) -> Result<Vec<Entry>, BeatError> {
    let lines = LineIndex::new(source);
    let fail = |errors: Vec<ConfigError>| BeatError::Config {
        source_name: "schedule".to_string(),
        errors,
    };
    let doc: RawFile = toml::from_str(source).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, column) = lines.position(offset);
        fail(vec![ConfigError {
            entry: entry_around(source, offset),
            line,
            column,
            reason: e.message().trim().to_string(),
        }])
    })?;

    let mut errors = Vec::new();
    let mut push = |entry: Option<&str>, span: std::ops::Range<usize>, reason: String| {
        let (line, column) = lines.position(span.start);
        errors.push(ConfigError {
            entry: entry.map(str::to_string),
            line,
            column,
            reason,
        });
    };

    let default_tz = match &doc.timezone {
        None => Tz::UTC,
        Some(tz) => match tz.get_ref().parse::<Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                push(None, tz.span(), unknown_tz(tz.get_ref()));
                Tz::UTC
            }
        },
    };

    let mut raw: Vec<_> = doc.schedule.into_iter().collect();
    raw.sort_by_key(|(name, _)| name.span().start);
    let mut entries = Vec::with_capacity(raw.len());
    for (name, body) in raw {
        let name_span = name.span();
        let name = name.into_inner();
        let body = body.into_inner();
        let entry = Some(name.as_str());
        let mut ok = true;
        let mut report = |span, reason| {
            ok = false;
            push(entry, span, reason);
        };

        if name.trim().is_empty() {
            report(name_span.clone(), "the entry name is empty".into());
        }
        if !known_tasks.contains(&body.task.get_ref().as_str()) {
            report(
                body.task.span(),
                format!(
                    "unknown task `{}` (this binary defines: {})",
                    body.task.get_ref(),
                    known_tasks.join(", ")
                ),
            );
        }
        let tz = match &body.timezone {
            None => default_tz,
            Some(tz) => tz.get_ref().parse::<Tz>().unwrap_or_else(|_| {
                report(tz.span(), unknown_tz(tz.get_ref()));
                default_tz
            }),
        };
        let schedule = match (&body.cron, &body.every) {
            (Some(_), Some(every)) => {
                report(
                    every.span(),
                    "both `cron` and `every` are set; an entry has exactly one schedule".into(),
                );
                None
            }
            (None, None) => {
                report(
                    name_span.clone(),
                    "no schedule: set `cron = \"...\"` or `every = \"...\"`".into(),
                );
                None
            }
            (Some(cron), None) => match Crontab::parse(cron.get_ref()) {
                Ok(c) => Some(Schedule::Crontab(c.with_timezone(tz))),
                Err(e) => {
                    report(cron.span(), e.to_string());
                    None
                }
            },
            (None, Some(every)) => {
                let parsed = match every.get_ref() {
                    EveryValue::Text(t) => Interval::parse(t),
                    EveryValue::Seconds(s) => Interval::from_secs(*s),
                    EveryValue::Fraction(f) => Err(super::interval::IntervalError {
                        value: f.to_string(),
                        reason: "use a whole number of seconds, or a string such as \"90s\"".into(),
                    }),
                };
                match parsed {
                    Ok(i) => Some(Schedule::Interval(i)),
                    Err(e) => {
                        report(every.span(), e.to_string());
                        None
                    }
                }
            }
        };
        let priority = body.priority.as_ref().and_then(|p| match p.get_ref() {
            toml::Value::Integer(v) if (0..=9).contains(v) => u8::try_from(*v).ok(),
            other => {
                report(
                    p.span(),
                    format!("priority must be a whole number 0-9, not {other}"),
                );
                None
            }
        });
        let expires = body.expires.as_ref().and_then(|x| {
            let seconds = match x.get_ref() {
                toml::Value::Integer(i) => Some(*i as f64),
                toml::Value::Float(f) => Some(*f),
                _ => None,
            };
            match seconds {
                Some(v) if v.is_finite() && v > 0.0 && v < 1e10 => Some(Duration::from_secs_f64(v)),
                _ => {
                    report(
                        x.span(),
                        format!(
                            "expires must be a positive number of seconds, not {}",
                            x.get_ref()
                        ),
                    );
                    None
                }
            }
        });
        let queue = body.queue.as_ref().and_then(|q| {
            if q.get_ref().trim().is_empty() {
                report(q.span(), "queue name is empty".into());
                None
            } else {
                Some(q.get_ref().clone())
            }
        });

        if let (true, Some(schedule)) = (ok, schedule) {
            entries.push(Entry {
                name,
                task: body.task.into_inner(),
                args: body.args,
                kwargs: body.kwargs,
                options: EntryOptions {
                    queue,
                    priority,
                    expires,
                },
                schedule,
                enabled: body.enabled.unwrap_or(true),
            });
        }
    }

    if errors.is_empty() {
        if entries.is_empty() {
            tracing::warn!("the schedule file has no [schedule.*] entries: beat will fire nothing");
        }
        Ok(entries)
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(fail(errors))
    }
}

fn unknown_tz(name: &str) -> String {
    format!("unknown time zone `{name}` (use an IANA name such as `UTC` or `Europe/Paris`)")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    schedule: std::collections::BTreeMap<Spanned<String>, Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    task: Spanned<String>,
    cron: Option<Spanned<String>>,
    every: Option<Spanned<EveryValue>>,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
    enabled: Option<bool>,
    queue: Option<Spanned<String>>,
    // Loosely typed so a wrong type is reported with the other problems
    // and in our words, rather than as serde's first and only error.
    priority: Option<Spanned<toml::Value>>,
    expires: Option<Spanned<toml::Value>>,
    timezone: Option<Spanned<String>>,
}

/// `every = "30s"` or `every = 30` (seconds). `Fraction` exists only to
/// give `every = 1.5` a clear error instead of serde's "did not match any
/// variant".
#[derive(Deserialize)]
#[serde(untagged)]
enum EveryValue {
    Text(String),
    Seconds(i64),
    Fraction(f64),
}

/// Byte offset → (line, column), both 1-based.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(source: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|s| *s <= offset).max(1);
        let column = offset - self.starts[line - 1] + 1;
        (line, column)
    }
}

/// The entry whose table contains `offset`, found from the nearest
/// `[schedule.NAME]` header above it. Used only for errors toml reports
/// before we have entry spans (unknown keys, wrong types).
fn entry_around(source: &str, offset: usize) -> Option<String> {
    let upto = source.get(..offset.min(source.len()))?;
    upto.lines().rev().find_map(|line| {
        let header = line.trim().strip_prefix('[')?.strip_suffix(']')?;
        let name = header.trim().strip_prefix("schedule")?.trim_start();
        let name = name.strip_prefix('.')?.trim();
        // The first key after `schedule.`; `[schedule.x.kwargs]` is entry `x`.
        let name = match name.chars().next()? {
            q @ ('"' | '\'') => name[1..].split(q).next()?,
            _ => name.split('.').next()?.trim(),
        };
        Some(name.to_string())
    })
}
