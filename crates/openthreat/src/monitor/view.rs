//! What `openthreat events` prints: the live view as a pure function of a
//! snapshot, and `--dump` lines in the format of `celery events --dump`.
//!
//! Everything shown here comes from events any producer on the broker can
//! send, and task fields (exceptions, arguments) can hold CVE text, which is
//! untrusted. So every string is made printable: control characters,
//! including the escape that starts a terminal control sequence, are shown
//! as `\n`, `\x1b`, ... and can neither break the layout nor drive the
//! terminal. That is also why a dump line stays one line where Python's
//! dumper prints a traceback's newlines as they are.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::state::{ClusterStateSnapshot, TaskState, WorkerStatus};

/// Task names remembered by a [`Dumper`] (Celery's dumper keeps 0xFFF).
const DUMPER_NAMES: usize = 0xFFF;

/// `s` with control characters escaped, so it prints on one line and
/// cannot send terminal control sequences.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Cuts a line to `width` characters.
fn fit(line: &str, width: usize) -> String {
    line.chars().take(width).collect()
}

/// `s` cut or padded to exactly `n` characters (a column).
fn col(s: &str, n: usize) -> String {
    let s = printable(s);
    let count = s.chars().count();
    if count > n {
        let mut cut: String = s.chars().take(n.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        format!("{s}{}", " ".repeat(n - count))
    }
}

fn utc(t: f64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros((t * 1e6).round() as i64)
}

fn hms(t: f64) -> String {
    utc(t)
        .map(|d| d.format("%H:%M:%S").to_string())
        .unwrap_or_else(|| "--:--:--".into())
}

fn ago(now: f64, then: f64) -> String {
    let s = (now - then).max(0.0);
    if s < 120.0 {
        format!("{s:.0}s ago")
    } else if s < 7200.0 {
        format!("{:.0}m ago", s / 60.0)
    } else {
        format!("{:.0}h ago", s / 3600.0)
    }
}

/// One block of the screen: a heading and its rows.
struct Section {
    heading: String,
    rows: Vec<String>,
}

/// The live view: workers (status, active tasks, load), tasks per second by
/// name, the latest tasks and the latest failures, in at most `height`
/// lines of at most `width` characters. When space is short every section
/// keeps its heading and first row, and the rest is shared out in turn.
pub fn render(snapshot: &ClusterStateSnapshot, width: usize, height: usize) -> String {
    let now = snapshot.taken_at;
    let title = format!(
        "OpenThreat events | workers {}/{} online | events {} | tasks {} | ignored {} | {} UTC",
        snapshot.workers_online(),
        snapshot.workers.len(),
        snapshot.event_count,
        snapshot.task_count,
        snapshot.ignored_total(),
        hms(now),
    );

    let mut workers = Vec::new();
    if snapshot.workers.is_empty() {
        workers.push("  No workers discovered.".to_string());
    } else {
        workers.push(format!(
            "  {} {} {:>6} {:>9} {:<16} LAST SEEN",
            col("HOSTNAME", 28),
            col("STATUS", 7),
            "ACTIVE",
            "PROCESSED",
            "LOAD"
        ));
        for w in &snapshot.workers {
            let load = w
                .loadavg
                .as_ref()
                .map(|l| {
                    l.iter()
                        .map(|x| format!("{x:.2}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_else(|| "-".into());
            workers.push(format!(
                "  {} {} {:>6} {:>9} {} {}",
                col(&w.hostname, 28),
                col(w.status.as_str(), 7),
                w.active.map_or("-".into(), |a| a.to_string()),
                w.processed.map_or("-".into(), |p| p.to_string()),
                col(&load, 16),
                if w.status == WorkerStatus::Offline {
                    "left".to_string()
                } else {
                    ago(now, w.last_seen)
                },
            ));
        }
    }

    let mut rates: Vec<String> = snapshot
        .tasks_per_second
        .iter()
        .map(|(name, rate)| format!("  {} {rate:>8.2}/s", col(name, 40)))
        .collect();
    if rates.is_empty() {
        rates.push("  (no task finished)".into());
    }

    let mut tasks = Vec::new();
    for t in &snapshot.latest_tasks {
        let runtime = t.runtime.map_or(String::new(), |r| format!("{r:.2}s"));
        let extra = match t.state {
            TaskState::Failure | TaskState::Retry => t.exception.clone().unwrap_or_default(),
            _ => runtime,
        };
        tasks.push(format!(
            "  {} {} {} {} {} {}",
            hms(t.updated_at),
            col(t.state.as_str(), 8),
            col(t.name_or_unknown(), 32),
            col(&t.uuid, 36),
            col(t.hostname.as_deref().unwrap_or("-"), 20),
            printable(&extra),
        ));
    }
    if tasks.is_empty() {
        tasks.push("  (no task seen)".into());
    }

    let mut failures = Vec::new();
    for f in &snapshot.latest_failures {
        failures.push(format!(
            "  {} {} {} on {}: {}",
            hms(f.at),
            col(&f.name, 32),
            col(&f.uuid, 36),
            printable(&f.hostname),
            printable(f.exception.as_deref().unwrap_or("?")),
        ));
    }
    if failures.is_empty() {
        failures.push("  (none)".into());
    }

    let sections = [
        Section {
            heading: "WORKERS".into(),
            rows: workers,
        },
        Section {
            heading: format!("TASKS PER SECOND (last {} s)", snapshot.rate_window_secs),
            rows: rates,
        },
        Section {
            heading: "LATEST TASKS".into(),
            rows: tasks,
        },
        Section {
            heading: "LATEST FAILURES".into(),
            rows: failures,
        },
    ];

    // Share the lines: heading + first row each, then one more row per
    // section in turn while space lasts.
    let mut budget = height.saturating_sub(1);
    let mut shown = [0usize; 4];
    for slot in shown.iter_mut() {
        if budget >= 2 {
            *slot = 1;
            budget -= 2;
        } else {
            *slot = usize::MAX; // no room for this section at all
        }
    }
    loop {
        let mut gave = false;
        for (i, s) in sections.iter().enumerate() {
            if budget > 0 && shown[i] != usize::MAX && shown[i] < s.rows.len() {
                shown[i] += 1;
                budget -= 1;
                gave = true;
            }
        }
        if !gave || budget == 0 {
            break;
        }
    }

    let mut lines = Vec::new();
    if height > 0 {
        lines.push(fit(&title, width));
    }
    for (i, s) in sections.iter().enumerate() {
        if shown[i] == usize::MAX {
            continue;
        }
        lines.push(fit(&s.heading, width));
        for row in s.rows.iter().take(shown[i]) {
            lines.push(fit(row, width));
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Python's `str()` of a JSON value as Celery's dumper prints it: strings
/// bare at the top level, `repr()` inside lists and dicts, `None`, `True`.
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => {
            if n.is_f64() {
                let f = n.as_f64().unwrap_or(0.0);
                let s = f.to_string();
                if s.contains(['.', 'e', 'E', 'i', 'N']) {
                    s
                } else {
                    format!("{s}.0")
                }
            } else {
                n.to_string()
            }
        }
        Value::String(s) => {
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            let mut out = String::from(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
            out
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(py_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", py_repr(&Value::String(k.clone())), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Python's `str(datetime.fromtimestamp(t, timezone.utc))`:
/// `2026-11-25 20:14:57.123456+00:00`, without the fraction when it is zero.
fn py_datetime(t: f64) -> String {
    match utc(t) {
        Some(d) if d.timestamp_subsec_micros() == 0 => {
            d.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
        }
        Some(d) => d.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string(),
        None => t.to_string(),
    }
}

/// Celery's words for worker events in a dump.
fn humanize_type(kind: &str) -> String {
    match kind {
        "worker-offline" => "shutdown".into(),
        "worker-online" => "started".into(),
        "worker-heartbeat" => "heartbeat".into(),
        other => other.replace('-', " "),
    }
}

/// Formats events like `celery events --dump`, remembering task names from
/// `task-received`/`task-sent` so later events of a task can show them.
#[derive(Debug, Default)]
pub struct Dumper {
    names: HashMap<String, String>,
    order: VecDeque<String>,
}

impl Dumper {
    /// A dumper with an empty name memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// One event as one line:
    /// `hostname [timestamp] type: task fields` for task events,
    /// `hostname [timestamp] type: fields` for the rest, fields sorted by key.
    pub fn line(&mut self, event: &Value) -> String {
        let Some(map) = event.as_object() else {
            return format!("-> unreadable event: {}", printable(&event.to_string()));
        };
        let mut ev: Map<String, Value> = map.clone();
        let (Some(Value::String(kind)), Some(ts), Some(Value::String(hostname))) = (
            ev.remove("type"),
            ev.remove("timestamp").and_then(|t| t.as_f64()),
            ev.remove("hostname"),
        ) else {
            return format!("-> unreadable event: {}", printable(&event.to_string()));
        };
        let kind = kind.to_lowercase();
        let head = format!(
            "{} [{}] {}",
            printable(&hostname),
            py_datetime(ts),
            humanize_type(&kind)
        );
        let fields = |ev: &Map<String, Value>| {
            let mut keys: Vec<&String> = ev.keys().collect();
            keys.sort();
            keys.iter()
                .map(|k| format!("{k}={}", py_str(&ev[k.as_str()])))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if kind.starts_with("task-") {
            let uuid = ev.remove("uuid").map(|u| py_str(&u)).unwrap_or_default();
            let task = if kind == "task-received" || kind == "task-sent" {
                let get = |ev: &mut Map<String, Value>, k: &str| {
                    ev.remove(k).map_or("None".to_string(), |v| py_str(&v))
                };
                let name = get(&mut ev, "name");
                let args = get(&mut ev, "args");
                let kwargs = get(&mut ev, "kwargs");
                let task = format!("{name}({uuid}) args={args} kwargs={kwargs}");
                self.remember(&uuid, &task);
                task
            } else {
                self.names.get(&uuid).cloned().unwrap_or_default()
            };
            let fields = fields(&ev);
            let sep = if fields.is_empty() { "" } else { ":" };
            return printable(&format!("{head}{sep} {task} {fields}"));
        }
        let fields = fields(&ev);
        let sep = if fields.is_empty() { "" } else { ":" };
        printable(&format!("{head}{sep} {fields}"))
    }

    fn remember(&mut self, uuid: &str, task: &str) {
        if self
            .names
            .insert(uuid.to_string(), task.to_string())
            .is_none()
        {
            self.order.push_back(uuid.to_string());
            if self.order.len() > DUMPER_NAMES {
                if let Some(old) = self.order.pop_front() {
                    self.names.remove(&old);
                }
            }
        }
    }
}

/// One event as `celery events --dump` prints it, without memory of earlier
/// events (so a task event other than received/sent shows no task name; use
/// a [`Dumper`] for a stream).
pub fn dump_line(event: &Value) -> String {
    Dumper::new().line(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_str_of_values() {
        assert_eq!(py_str(&json!("x")), "x");
        assert_eq!(py_str(&json!(2.0)), "2.0");
        assert_eq!(py_str(&json!(3)), "3");
        assert_eq!(py_str(&json!(null)), "None");
        assert_eq!(py_str(&json!([0.5, 1.0, "a"])), "[0.5, 1.0, 'a']");
        assert_eq!(py_str(&json!({"k": true})), "{'k': True}");
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
    }

    #[test]
    fn python_datetime() {
        assert_eq!(py_datetime(1_700_000_000.0), "2023-11-14 22:13:20+00:00");
        assert_eq!(
            py_datetime(1_700_000_000.25),
            "2023-11-14 22:13:20.250000+00:00"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\x1b[2Jb\nc"), "a\\x1b[2Jb\\nc");
    }
}
