//! Schedule entries: what to publish, and when.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::crontab::Crontab;
use super::interval::Interval;
use super::BeatError;

/// When an entry fires.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Schedule {
    /// Calendar slots, Celery's `crontab`.
    Crontab(Crontab),
    /// Every n seconds, counted from the Unix epoch (drift-free).
    Interval(Interval),
}

impl Schedule {
    /// The first slot strictly after `t`; `None` if the schedule never fires again.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Crontab(c) => c.next_after(t),
            Schedule::Interval(i) => i.next_after(t),
        }
    }

    /// The last slot at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Crontab(c) => c.latest_at_or_before(t),
            Schedule::Interval(i) => i.latest_at_or_before(t),
        }
    }

    /// The schedule in words, for `openthreat beat --list` and the API.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Crontab(c) => c.describe(),
            Schedule::Interval(i) => i.describe(),
        }
    }
}

impl fmt::Display for Schedule {
    /// The schedule as an operator writes it: `*/10 * * * *` or `every 30s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Crontab(c) => write!(f, "{c}"),
            Schedule::Interval(i) => write!(f, "every {i}"),
        }
    }
}

impl From<Crontab> for Schedule {
    fn from(c: Crontab) -> Self {
        Schedule::Crontab(c)
    }
}

impl From<Interval> for Schedule {
    fn from(i: Interval) -> Self {
        Schedule::Interval(i)
    }
}

/// Publishing options carried to the producer; `None` means "the producer's
/// default", so an entry only states what it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryOptions {
    /// Target queue (Celery's routing key), e.g. `celery`.
    pub queue: Option<String>,
    /// Message priority 0-9.
    pub priority: Option<u8>,
    /// How long after its slot the message is still worth running; a worker
    /// drops it after that. Useful so a backlog of stale periodic runs is not
    /// worked off after an outage.
    pub expires: Option<Duration>,
}

/// One periodic task: a named schedule that publishes `task(*args, **kwargs)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Unique name, e.g. `process-high-priority`; also the key of its state in
    /// the beat store, so renaming an entry forgets its last run.
    pub name: String,
    /// Registered task name, e.g. `tasks.process_llm_queue`.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Publishing options.
    pub options: EntryOptions,
    /// When it fires.
    pub schedule: Schedule,
    /// A disabled entry stays listed but never fires, so an operator can turn
    /// a default off without deleting (and forgetting) it.
    pub enabled: bool,
}

impl Entry {
    /// An enabled entry with no arguments and default options.
    pub fn new(name: impl Into<String>, task: impl Into<String>, schedule: Schedule) -> Self {
        Entry {
            name: name.into(),
            task: task.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            options: EntryOptions::default(),
            schedule,
            enabled: true,
        }
    }

    /// The same entry with these keyword arguments.
    pub fn with_kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// The same entry with these positional arguments.
    pub fn with_args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }
}

/// One line of `openthreat beat --list` and of the API's
/// `/tasks/scheduled/list`; `last_run`/`next_run` are filled by
/// [`Beat::list`](super::Beat::list), which knows the store and the clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduledEntry {
    /// Entry name.
    pub name: String,
    /// Task name.
    pub task: String,
    /// The schedule as written (`*/10 * * * *`, `every 30s`).
    pub schedule: String,
    /// The schedule in words.
    pub description: String,
    /// Whether it fires.
    pub enabled: bool,
    /// The last slot fired by any beat sharing the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<DateTime<Utc>>,
    /// When it fires next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run: Option<DateTime<Utc>>,
}

impl From<&Entry> for ScheduledEntry {
    fn from(entry: &Entry) -> Self {
        ScheduledEntry {
            name: entry.name.clone(),
            task: entry.task.clone(),
            schedule: entry.schedule.to_string(),
            description: entry.schedule.describe(),
            enabled: entry.enabled,
            last_run: None,
            next_run: None,
        }
    }
}

/// An entry naming a task the binary does not define.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTask {
    /// Entry name.
    pub entry: String,
    /// The task name it asked for.
    pub task: String,
}

impl fmt::Display for UnknownTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "entry `{}` names unknown task `{}`",
            self.entry, self.task
        )
    }
}

/// Checks every entry's task against the names the binary registers, so a
/// typo is reported at start instead of queueing messages no worker takes.
/// Disabled entries are checked too: enabling one later should not be the
/// moment the typo is found.
pub fn check_tasks(entries: &[Entry], known_tasks: &[&str]) -> Result<(), BeatError> {
    let unknown: Vec<UnknownTask> = entries
        .iter()
        .filter(|e| !known_tasks.contains(&e.task.as_str()))
        .map(|e| UnknownTask {
            entry: e.name.clone(),
            task: e.task.clone(),
        })
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(BeatError::UnknownTasks(unknown))
    }
}

fn cron(expr: &str) -> Schedule {
    // The expressions below are constants checked by the test suite.
    Schedule::Crontab(Crontab::parse(expr).expect("default crontab expressions are valid"))
}

fn llm_batch(batch_size: u32, priority: &str) -> Map<String, Value> {
    let Value::Object(map) = json!({ "batch_size": batch_size, "priority": priority }) else {
        return Map::new();
    };
    map
}

/// The default timetable of DESIGN.md §3 (UTC), used when no schedule file is
/// given. The task names are the original OpenThreat's, so its Python
/// producers and workers interoperate.
pub fn default_schedule() -> Vec<Entry> {
    vec![
        Entry::new(
            "process-new-cves",
            "tasks.process_new_cves",
            cron("*/5 * * * *"),
        ),
        Entry::new(
            "process-high-priority",
            "tasks.process_llm_queue",
            cron("*/10 * * * *"),
        )
        .with_kwargs(llm_batch(10, "high")),
        Entry::new(
            "process-medium-priority",
            "tasks.process_llm_queue",
            cron("*/30 * * * *"),
        )
        .with_kwargs(llm_batch(20, "medium")),
        Entry::new(
            "process-low-priority",
            "tasks.process_llm_queue",
            cron("0 */2 * * *"),
        )
        .with_kwargs(llm_batch(50, "low")),
        Entry::new(
            "update-vulnerabilities",
            "backend.tasks.update_vulnerabilities_task",
            cron("0 */2 * * *"),
        ),
        Entry::new(
            "update-stats-cache",
            "backend.tasks.update_stats_cache_task",
            cron("*/15 * * * *"),
        ),
        Entry::new(
            "clean-cache",
            "backend.tasks.clean_cache_task",
            cron("0 3 * * *"),
        ),
    ]
}
