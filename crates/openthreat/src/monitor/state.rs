//! The cluster as seen through Celery events: workers, tasks, throughput.
//!
//! The rules follow `celery/events/state.py`, so what `celery events`, Flower
//! and this monitor say about one cluster agrees:
//!
//! * A worker is alive while its last heartbeat, measured on *our* clock
//!   (`local_received`, the receiver's time, never the worker's own
//!   `timestamp`, which may drift), is younger than `freq × 2` (Celery's
//!   `HEARTBEAT_EXPIRE_WINDOW` of 200 %). We add a configurable slack so one
//!   late heartbeat on a busy broker does not declare a worker lost. Task
//!   events from a worker count as signs of life too, as in Celery.
//! * A task's name is known only from `task-received` (or `task-sent`); later
//!   events carry just the `uuid`, so the name is looked up here.
//! * Events may arrive out of order. A state that logically happened before
//!   the current one (Celery's `states.precedence`) does not move the task
//!   back; it only contributes the fields `task-received` owns (name,
//!   retries, ...). `task-retried` always applies.
//!
//! Memory is bounded: at most [`StateConfig::max_tasks`] tasks (the oldest by
//! first sight are dropped), [`StateConfig::max_workers`] workers, one bucket
//! per second of the throughput window, and the last
//! [`StateConfig::max_failures`] failures. Malformed events (not an object,
//! no `type`, a required field of the wrong type) and unknown event types are
//! counted by reason and otherwise ignored; nothing here panics on input.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

/// The name used for a task whose `task-received` we never saw (it was
/// received before the monitor started, or evicted since).
pub const UNKNOWN_TASK: &str = "unknown";

/// Celery's default heartbeat interval for a worker that never told us its
/// `freq` (`celery.events.state.Worker`).
const DEFAULT_FREQ: f64 = 60.0;

/// Longest exception text and traceback kept per task: a traceback can be
/// megabytes, and ten thousand of them must fit in memory.
const MAX_EXCEPTION_CHARS: usize = 500;
const MAX_TRACEBACK_CHARS: usize = 4_000;
const MAX_RESULT_CHARS: usize = 200;

/// Limits and timing of a [`ClusterState`].
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Tasks kept in memory; the oldest by first sight go first (Celery's
    /// `max_tasks_in_memory`, same default).
    pub max_tasks: usize,
    /// Workers kept; offline and lost ones are dropped first.
    pub max_workers: usize,
    /// Sliding window of the tasks-per-second figures.
    pub rate_window: Duration,
    /// Added to `freq × 2` before a silent worker counts as lost.
    pub heartbeat_slack: Duration,
    /// Failures kept for "latest failures" (they outlive task eviction).
    pub max_failures: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            max_tasks: 10_000,
            max_workers: 1_000,
            rate_window: Duration::from_secs(60),
            heartbeat_slack: Duration::from_secs(2),
            max_failures: 50,
        }
    }
}

/// What we believe about a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    /// Heartbeats arrive in time.
    Online,
    /// It said goodbye (`worker-offline`): a clean shutdown.
    Offline,
    /// It went silent without saying goodbye.
    Lost,
}

impl WorkerStatus {
    /// Upper-case word for screens, as `celery events` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Online => "ONLINE",
            WorkerStatus::Offline => "OFFLINE",
            WorkerStatus::Lost => "LOST",
        }
    }
}

/// One worker, by hostname (`celery@host`).
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub hostname: String,
    /// Status as of the snapshot's time (or the last [`ClusterState::check_lost`]).
    pub status: WorkerStatus,
    pub pid: Option<i64>,
    /// Heartbeat interval the worker announced, in seconds.
    pub freq: f64,
    /// When we last heard from it, on our clock (Unix seconds).
    pub last_seen: f64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Tasks executing now, from the last heartbeat.
    pub active: Option<u64>,
    /// Tasks processed since it started, from the last heartbeat.
    pub processed: Option<u64>,
    /// 1, 5 and 15 minute load average of its host.
    pub loadavg: Option<Vec<f64>>,
    /// Software, e.g. `py-celery` or `openthreat`.
    pub sw_ident: Option<String>,
    pub sw_ver: Option<String>,
    pub sw_sys: Option<String>,
}

impl WorkerInfo {
    fn new(hostname: &str, now: f64) -> Self {
        WorkerInfo {
            hostname: hostname.to_string(),
            status: WorkerStatus::Online,
            pid: None,
            freq: DEFAULT_FREQ,
            last_seen: now,
            heartbeats: 0,
            active: None,
            processed: None,
            loadavg: None,
            sw_ident: None,
            sw_ver: None,
            sw_sys: None,
        }
    }

    /// When it counts as lost if nothing more is heard: `freq × 2 + slack`
    /// after the last sign of life.
    pub fn expires_at(&self, slack: Duration) -> f64 {
        self.last_seen + self.freq * 2.0 + slack.as_secs_f64()
    }

    fn status_at(&self, now: f64, slack: Duration) -> WorkerStatus {
        match self.status {
            WorkerStatus::Offline => WorkerStatus::Offline,
            _ if now > self.expires_at(slack) => WorkerStatus::Lost,
            _ => WorkerStatus::Online,
        }
    }
}

/// A task's state, with Celery's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskState {
    Pending,
    Received,
    Started,
    Success,
    Failure,
    Retry,
    Revoked,
    Rejected,
}

impl TaskState {
    /// Celery's state name (`SUCCESS`, `FAILURE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Received => "RECEIVED",
            TaskState::Started => "STARTED",
            TaskState::Success => "SUCCESS",
            TaskState::Failure => "FAILURE",
            TaskState::Retry => "RETRY",
            TaskState::Revoked => "REVOKED",
            TaskState::Rejected => "REJECTED",
        }
    }

    /// Celery's `states.PRECEDENCE` index: lower means logically later.
    fn precedence(self) -> u8 {
        match self {
            TaskState::Success => 0,
            TaskState::Failure => 1,
            TaskState::Revoked => 3,
            TaskState::Started => 4,
            TaskState::Received => 5,
            TaskState::Rejected => 6,
            TaskState::Retry => 7,
            TaskState::Pending => 8,
        }
    }

    /// Whether the task is done (Celery's `READY_STATES`, plus `REJECTED`).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failure | TaskState::Revoked | TaskState::Rejected
        )
    }
}

/// The task event kinds (`task-<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskEvent {
    Sent,
    Received,
    Started,
    Succeeded,
    Failed,
    Retried,
    Rejected,
    Revoked,
}

impl TaskEvent {
    fn parse(subject: &str) -> Option<Self> {
        Some(match subject {
            "sent" => TaskEvent::Sent,
            "received" => TaskEvent::Received,
            "started" => TaskEvent::Started,
            "succeeded" => TaskEvent::Succeeded,
            "failed" => TaskEvent::Failed,
            "retried" => TaskEvent::Retried,
            "rejected" => TaskEvent::Rejected,
            "revoked" => TaskEvent::Revoked,
            _ => return None,
        })
    }

    /// The word after `task-`, also the `state` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskEvent::Sent => "sent",
            TaskEvent::Received => "received",
            TaskEvent::Started => "started",
            TaskEvent::Succeeded => "succeeded",
            TaskEvent::Failed => "failed",
            TaskEvent::Retried => "retried",
            TaskEvent::Rejected => "rejected",
            TaskEvent::Revoked => "revoked",
        }
    }

    fn state(self) -> TaskState {
        match self {
            TaskEvent::Sent => TaskState::Pending,
            TaskEvent::Received => TaskState::Received,
            TaskEvent::Started => TaskState::Started,
            TaskEvent::Succeeded => TaskState::Success,
            TaskEvent::Failed => TaskState::Failure,
            TaskEvent::Retried => TaskState::Retry,
            TaskEvent::Rejected => TaskState::Rejected,
            TaskEvent::Revoked => TaskState::Revoked,
        }
    }
}

/// One task, by uuid.
#[derive(Debug, Clone, Serialize)]
pub struct TaskInfo {
    pub uuid: String,
    /// Registered name; `None` until `task-received`/`task-sent` is seen.
    pub name: Option<String>,
    pub state: TaskState,
    /// Worker that handled it (or, for a task only sent, the client).
    pub hostname: Option<String>,
    /// Event times (the sender's `timestamp`, Unix seconds).
    pub received_at: Option<f64>,
    pub started_at: Option<f64>,
    /// Time of the final event (succeeded, failed, revoked or rejected).
    pub finished_at: Option<f64>,
    /// Time of the event that set the current state.
    pub updated_at: f64,
    /// Seconds of execution, from `task-succeeded`.
    pub runtime: Option<f64>,
    /// Retries so far (`retries` of `task-received`, or `task-retried` seen).
    pub retries: u64,
    /// Exception repr of the last failure or retry (truncated).
    pub exception: Option<String>,
    /// Traceback of the last failure or retry (truncated).
    pub traceback: Option<String>,
    /// Result repr from `task-succeeded` (truncated).
    pub result: Option<String>,
    /// Positional and keyword arguments as reprs, from `task-received`.
    pub args: Option<String>,
    pub kwargs: Option<String>,
}

impl TaskInfo {
    fn new(uuid: &str, at: f64) -> Self {
        TaskInfo {
            uuid: uuid.to_string(),
            name: None,
            state: TaskState::Pending,
            hostname: None,
            received_at: None,
            started_at: None,
            finished_at: None,
            updated_at: at,
            runtime: None,
            retries: 0,
            exception: None,
            traceback: None,
            result: None,
            args: None,
            kwargs: None,
        }
    }

    /// The name, or [`UNKNOWN_TASK`].
    pub fn name_or_unknown(&self) -> &str {
        self.name.as_deref().unwrap_or(UNKNOWN_TASK)
    }
}

/// A final failure, kept apart from the task table so the latest ones stay
/// visible after a storm evicts their tasks.
#[derive(Debug, Clone, Serialize)]
pub struct FailureInfo {
    pub uuid: String,
    pub name: String,
    pub hostname: String,
    /// When it failed (the worker's `timestamp`).
    pub at: f64,
    pub exception: Option<String>,
}

/// A change to a worker, as reported by [`ClusterState::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerChange {
    /// `worker-online`.
    Online,
    /// `worker-heartbeat` (or another `worker-*` event).
    Heartbeat,
    /// `worker-offline`: a clean shutdown.
    Offline,
}

/// A task event, decoded, with the name looked up.
#[derive(Debug, Clone)]
pub struct TaskUpdate {
    pub uuid: String,
    /// From this event or an earlier `task-received`.
    pub name: Option<String>,
    pub event: TaskEvent,
    pub hostname: String,
    /// The sender's `timestamp`.
    pub timestamp: f64,
    pub runtime: Option<f64>,
    pub exception: Option<String>,
    pub traceback: Option<String>,
}

impl TaskUpdate {
    /// The name, or [`UNKNOWN_TASK`].
    pub fn name_or_unknown(&self) -> &str {
        self.name.as_deref().unwrap_or(UNKNOWN_TASK)
    }
}

/// What one event did, for metrics and alerts to act on without parsing it again.
#[derive(Debug, Clone)]
pub enum Applied {
    Worker {
        hostname: String,
        change: WorkerChange,
        /// It had been lost and is heard from again.
        recovered: bool,
    },
    Task(TaskUpdate),
    /// Nothing changed; the reason is counted in [`ClusterState::ignored`].
    Ignored(&'static str),
}

/// Tasks finished per second, per name, in one-second buckets so memory does
/// not grow with the rate.
#[derive(Debug)]
struct Throughput {
    window: i64,
    buckets: VecDeque<(i64, HashMap<String, u32>)>,
    since: Option<f64>,
}

impl Throughput {
    fn new(window: Duration) -> Self {
        Throughput {
            window: (window.as_secs() as i64).max(1),
            buckets: VecDeque::new(),
            since: None,
        }
    }

    fn prune(&mut self, now: f64) {
        let oldest = now.floor() as i64 - self.window;
        while self.buckets.front().is_some_and(|(s, _)| *s <= oldest) {
            self.buckets.pop_front();
        }
    }

    fn record(&mut self, now: f64, name: &str) {
        self.since.get_or_insert(now);
        let sec = now.floor() as i64;
        match self.buckets.back_mut() {
            Some((s, counts)) if *s >= sec => *counts.entry(name.to_string()).or_default() += 1,
            _ => {
                let mut counts = HashMap::new();
                counts.insert(name.to_string(), 1);
                self.buckets.push_back((sec, counts));
            }
        }
        self.prune(now);
    }

    /// Per name, finished tasks divided by the window (or by the time since
    /// the first one, while the window is not yet full), highest first.
    fn rates(&self, now: f64) -> Vec<(String, f64)> {
        let oldest = now.floor() as i64 - self.window;
        let mut sums: HashMap<&str, u64> = HashMap::new();
        for (_, counts) in self.buckets.iter().filter(|(s, _)| *s > oldest) {
            for (name, n) in counts {
                *sums.entry(name.as_str()).or_default() += u64::from(*n);
            }
        }
        let span = self
            .since
            .map(|s| (now - s).clamp(1.0, self.window as f64))
            .unwrap_or(self.window as f64);
        let mut out: Vec<(String, f64)> = sums
            .into_iter()
            .map(|(name, n)| (name.to_string(), n as f64 / span))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

/// The cluster's state, fed one event at a time. Not thread-safe by itself:
/// the monitor keeps it behind a lock and hands out [`ClusterStateSnapshot`]s.
#[derive(Debug)]
pub struct ClusterState {
    config: StateConfig,
    workers: HashMap<String, WorkerInfo>,
    tasks: HashMap<String, TaskInfo>,
    /// Task uuids by first sight, for eviction.
    arrival: VecDeque<String>,
    failures: VecDeque<FailureInfo>,
    throughput: Throughput,
    event_count: u64,
    task_count: u64,
    ignored: BTreeMap<&'static str, u64>,
}

/// The current time as Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A number field: JSON numbers only (Celery sends floats and ints).
fn num(event: &Value, key: &str) -> Result<Option<f64>, &'static str> {
    match event.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().filter(|f| f.is_finite()).map(Some).ok_or(""),
        Some(_) => Err(""),
    }
}

fn opt_num(event: &Value, key: &str) -> Option<f64> {
    num(event, key).ok().flatten()
}

fn opt_u64(event: &Value, key: &str) -> Option<u64> {
    event.get(key).and_then(Value::as_u64)
}

fn opt_str(event: &Value, key: &str) -> Option<String> {
    event.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Cuts `s` to `max` characters, marking the cut.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A repr-like text of any JSON value (`result` may be a string or, from
/// other producers, structured).
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl Default for ClusterState {
    fn default() -> Self {
        Self::new(StateConfig::default())
    }
}

impl ClusterState {
    /// An empty state with these limits.
    pub fn new(config: StateConfig) -> Self {
        ClusterState {
            throughput: Throughput::new(config.rate_window),
            config,
            workers: HashMap::new(),
            tasks: HashMap::new(),
            arrival: VecDeque::new(),
            failures: VecDeque::new(),
            event_count: 0,
            task_count: 0,
            ignored: BTreeMap::new(),
        }
    }

    /// The limits and timing in force.
    pub fn config(&self) -> &StateConfig {
        &self.config
    }

    /// Applies one event received now: `local_received` when the receiver
    /// set it (Celery's `EventReceiver` does), else the current time.
    pub fn apply(&mut self, event: &Value) -> Applied {
        let now = opt_num(event, "local_received").unwrap_or_else(unix_now);
        self.apply_at(event, now)
    }

    /// Applies one event received at `now` (Unix seconds on our clock).
    pub fn apply_at(&mut self, event: &Value, now: f64) -> Applied {
        self.event_count += 1;
        let outcome = self.decode_and_apply(event, now);
        if let Applied::Ignored(reason) = &outcome {
            *self.ignored.entry(reason).or_default() += 1;
        }
        outcome
    }

    fn decode_and_apply(&mut self, event: &Value, now: f64) -> Applied {
        if !event.is_object() {
            return Applied::Ignored("not an object");
        }
        let Some(kind) = event.get("type") else {
            return Applied::Ignored("missing type");
        };
        let Some(kind) = kind.as_str() else {
            return Applied::Ignored("type not a string");
        };
        let (group, subject) = kind.split_once('-').unwrap_or((kind, ""));
        if group != "worker" && group != "task" {
            return Applied::Ignored("unknown event type");
        }
        let Some(hostname) = event.get("hostname").and_then(Value::as_str) else {
            return Applied::Ignored("missing or bad hostname");
        };
        let timestamp = match num(event, "timestamp") {
            Ok(Some(t)) => t,
            _ => return Applied::Ignored("missing or bad timestamp"),
        };
        if group == "worker" {
            let change = match subject {
                "online" => WorkerChange::Online,
                "offline" => WorkerChange::Offline,
                "heartbeat" => WorkerChange::Heartbeat,
                _ => return Applied::Ignored("unknown event type"),
            };
            return self.worker_event(hostname, change, event, now);
        }
        let Some(task_event) = TaskEvent::parse(subject) else {
            return Applied::Ignored("unknown event type");
        };
        let Some(uuid) = event.get("uuid").and_then(Value::as_str) else {
            return Applied::Ignored("missing or bad uuid");
        };
        if uuid.is_empty() {
            return Applied::Ignored("missing or bad uuid");
        }
        self.task_event(uuid, hostname, task_event, timestamp, event, now)
    }

    fn worker_event(
        &mut self,
        hostname: &str,
        change: WorkerChange,
        event: &Value,
        now: f64,
    ) -> Applied {
        self.make_room_for_worker(hostname);
        let slack = self.config.heartbeat_slack;
        let worker = self
            .workers
            .entry(hostname.to_string())
            .or_insert_with(|| WorkerInfo::new(hostname, now));
        let was = worker.status_at(now, slack);
        let recovered = was == WorkerStatus::Lost && change != WorkerChange::Offline;
        if let Some(freq) = opt_num(event, "freq").filter(|f| *f > 0.0) {
            worker.freq = freq;
        }
        if let Some(pid) = event.get("pid").and_then(Value::as_i64) {
            worker.pid = Some(pid);
        }
        if let Some(active) = opt_u64(event, "active") {
            worker.active = Some(active);
        }
        if let Some(processed) = opt_u64(event, "processed") {
            worker.processed = Some(processed);
        }
        if let Some(load) = event.get("loadavg").and_then(Value::as_array) {
            let load: Option<Vec<f64>> = load.iter().map(Value::as_f64).collect();
            if load.is_some() {
                worker.loadavg = load;
            }
        }
        for (key, slot) in [
            ("sw_ident", &mut worker.sw_ident),
            ("sw_ver", &mut worker.sw_ver),
            ("sw_sys", &mut worker.sw_sys),
        ] {
            if let Some(v) = opt_str(event, key) {
                *slot = Some(v);
            }
        }
        match change {
            WorkerChange::Offline => {
                worker.status = WorkerStatus::Offline;
                worker.active = Some(0);
            }
            _ => {
                worker.status = WorkerStatus::Online;
                worker.last_seen = worker.last_seen.max(now);
                worker.heartbeats += 1;
            }
        }
        Applied::Worker {
            hostname: hostname.to_string(),
            change,
            recovered,
        }
    }

    fn make_room_for_worker(&mut self, hostname: &str) {
        if self.workers.len() < self.config.max_workers || self.workers.contains_key(hostname) {
            return;
        }
        // Drop the one we heard from least recently, preferring those gone.
        let victim = self
            .workers
            .values()
            .min_by(|a, b| {
                (a.status == WorkerStatus::Online)
                    .cmp(&(b.status == WorkerStatus::Online))
                    .then(a.last_seen.total_cmp(&b.last_seen))
            })
            .map(|w| w.hostname.clone());
        if let Some(victim) = victim {
            self.workers.remove(&victim);
        }
    }

    fn task_event(
        &mut self,
        uuid: &str,
        hostname: &str,
        kind: TaskEvent,
        timestamp: f64,
        event: &Value,
        now: f64,
    ) -> Applied {
        // A worker's task events are signs of life (Celery counts them as
        // heartbeats); `task-sent` comes from a client, not a worker.
        // A late task event from a worker that said goodbye does not revive it.
        if kind != TaskEvent::Sent {
            self.make_room_for_worker(hostname);
            let worker = self
                .workers
                .entry(hostname.to_string())
                .or_insert_with(|| WorkerInfo::new(hostname, now));
            if worker.status != WorkerStatus::Offline {
                worker.status = WorkerStatus::Online;
                worker.last_seen = worker.last_seen.max(now);
            }
        }

        if !self.tasks.contains_key(uuid) {
            if self.tasks.len() >= self.config.max_tasks.max(1) {
                while let Some(old) = self.arrival.pop_front() {
                    if self.tasks.remove(&old).is_some() {
                        break;
                    }
                }
            }
            self.tasks
                .insert(uuid.to_string(), TaskInfo::new(uuid, timestamp));
            self.arrival.push_back(uuid.to_string());
        }
        if kind == TaskEvent::Received {
            self.task_count += 1;
        }
        let task = self.tasks.get_mut(uuid).expect("inserted above");

        match kind {
            TaskEvent::Received => task.received_at = Some(timestamp),
            TaskEvent::Started => task.started_at = Some(timestamp),
            TaskEvent::Succeeded | TaskEvent::Failed | TaskEvent::Revoked | TaskEvent::Rejected => {
                task.finished_at = Some(timestamp)
            }
            TaskEvent::Sent | TaskEvent::Retried => {}
        }

        // Fields `task-received` owns are always taken from it, whatever
        // order events arrive in (Celery's merge_rules).
        if matches!(kind, TaskEvent::Received | TaskEvent::Sent) {
            if let Some(name) = opt_str(event, "name").filter(|n| !n.is_empty()) {
                task.name = Some(name);
            }
            if let Some(args) = event.get("args").and_then(text_of) {
                task.args = Some(truncate(&args, MAX_RESULT_CHARS));
            }
            if let Some(kwargs) = event.get("kwargs").and_then(text_of) {
                task.kwargs = Some(truncate(&kwargs, MAX_RESULT_CHARS));
            }
            if let Some(retries) = opt_u64(event, "retries") {
                task.retries = task.retries.max(retries);
            }
        }

        let new_state = kind.state();
        let happened_before = new_state != TaskState::Retry
            && task.state != TaskState::Retry
            && new_state.precedence() > task.state.precedence();
        if !happened_before {
            task.state = new_state;
            task.updated_at = timestamp;
            // `task-sent` names the client: keep the worker once one is known.
            if kind != TaskEvent::Sent || task.hostname.is_none() {
                task.hostname = Some(hostname.to_string());
            }
        }

        let runtime = opt_num(event, "runtime").filter(|r| *r >= 0.0);
        let exception = opt_str(event, "exception").map(|e| truncate(&e, MAX_EXCEPTION_CHARS));
        let traceback = opt_str(event, "traceback").map(|t| truncate(&t, MAX_TRACEBACK_CHARS));
        match kind {
            TaskEvent::Succeeded => {
                task.runtime = runtime.or(task.runtime);
                if let Some(result) = event.get("result").and_then(text_of) {
                    task.result = Some(truncate(&result, MAX_RESULT_CHARS));
                }
            }
            TaskEvent::Failed | TaskEvent::Retried => {
                if exception.is_some() {
                    task.exception = exception.clone();
                }
                if traceback.is_some() {
                    task.traceback = traceback.clone();
                }
                if kind == TaskEvent::Retried {
                    task.retries += 1;
                }
            }
            _ => {}
        }

        let name = task.name.clone();
        let update = TaskUpdate {
            uuid: uuid.to_string(),
            name,
            event: kind,
            hostname: hostname.to_string(),
            timestamp,
            runtime,
            exception,
            traceback,
        };
        if matches!(kind, TaskEvent::Succeeded | TaskEvent::Failed) {
            self.throughput.record(now, update.name_or_unknown());
        }
        if kind == TaskEvent::Failed {
            if self.failures.len() >= self.config.max_failures.max(1) {
                self.failures.pop_front();
            }
            self.failures.push_back(FailureInfo {
                uuid: update.uuid.clone(),
                name: update.name_or_unknown().to_string(),
                hostname: update.hostname.clone(),
                at: timestamp,
                exception: update.exception.clone(),
            });
        }
        Applied::Task(update)
    }

    /// Marks workers silent for longer than `freq × 2 + slack` as lost and
    /// returns those newly lost, so each loss is reported once.
    pub fn check_lost(&mut self, now: f64) -> Vec<WorkerInfo> {
        let slack = self.config.heartbeat_slack;
        let mut lost = Vec::new();
        for worker in self.workers.values_mut() {
            if worker.status == WorkerStatus::Online
                && worker.status_at(now, slack) == WorkerStatus::Lost
            {
                worker.status = WorkerStatus::Lost;
                lost.push(worker.clone());
            }
        }
        lost.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        lost
    }

    /// One worker, with its status as of `now`.
    pub fn worker(&self, hostname: &str, now: f64) -> Option<WorkerInfo> {
        self.workers.get(hostname).map(|w| {
            let mut w = w.clone();
            w.status = w.status_at(now, self.config.heartbeat_slack);
            w
        })
    }

    /// One task.
    pub fn task(&self, uuid: &str) -> Option<&TaskInfo> {
        self.tasks.get(uuid)
    }

    /// Tasks held now (at most `max_tasks`).
    pub fn task_len(&self) -> usize {
        self.tasks.len()
    }

    /// Workers whose status as of `now` is online.
    pub fn workers_online(&self, now: f64) -> usize {
        let slack = self.config.heartbeat_slack;
        self.workers
            .values()
            .filter(|w| w.status_at(now, slack) == WorkerStatus::Online)
            .count()
    }

    /// Finished tasks per second by name over the window, highest first.
    pub fn tasks_per_second(&self, now: f64) -> Vec<(String, f64)> {
        self.throughput.rates(now)
    }

    /// Ignored events by reason.
    pub fn ignored(&self) -> &BTreeMap<&'static str, u64> {
        &self.ignored
    }

    /// Events applied, including ignored ones.
    pub fn event_count(&self) -> u64 {
        self.event_count
    }

    /// A copy for readers: workers with their status as of `now`, the
    /// `latest` most recently updated tasks, and the latest failures.
    pub fn snapshot(&self, now: f64, latest: usize) -> ClusterStateSnapshot {
        let slack = self.config.heartbeat_slack;
        let mut workers: Vec<WorkerInfo> = self
            .workers
            .values()
            .map(|w| {
                let mut w = w.clone();
                w.status = w.status_at(now, slack);
                w
            })
            .collect();
        workers.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        let mut by_state: BTreeMap<TaskState, u64> = BTreeMap::new();
        for t in self.tasks.values() {
            *by_state.entry(t.state).or_default() += 1;
        }
        let mut recent: Vec<&TaskInfo> = self.tasks.values().collect();
        recent.sort_by(|a, b| {
            b.updated_at
                .total_cmp(&a.updated_at)
                .then_with(|| a.uuid.cmp(&b.uuid))
        });
        ClusterStateSnapshot {
            taken_at: now,
            workers,
            tasks_per_second: self.throughput.rates(now),
            rate_window_secs: self.throughput.window as u64,
            latest_tasks: recent.into_iter().take(latest).cloned().collect(),
            latest_failures: self.failures.iter().rev().cloned().collect(),
            tasks_by_state: by_state
                .into_iter()
                .map(|(s, n)| (s.as_str().to_string(), n))
                .collect(),
            event_count: self.event_count,
            task_count: self.task_count,
            ignored: self
                .ignored
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }
}

/// A point-in-time copy of the cluster state, for the API, the CLI and the view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterStateSnapshot {
    /// When it was taken (Unix seconds).
    pub taken_at: f64,
    /// All known workers by hostname, with their status at `taken_at`.
    pub workers: Vec<WorkerInfo>,
    /// Finished tasks per second by name, highest first.
    pub tasks_per_second: Vec<(String, f64)>,
    pub rate_window_secs: u64,
    /// Most recently updated tasks first.
    pub latest_tasks: Vec<TaskInfo>,
    /// Most recent failure first.
    pub latest_failures: Vec<FailureInfo>,
    /// Tasks held in memory, by Celery state name.
    pub tasks_by_state: BTreeMap<String, u64>,
    /// Events seen (including ignored ones).
    pub event_count: u64,
    /// `task-received` events seen.
    pub task_count: u64,
    /// Ignored events by reason.
    pub ignored: BTreeMap<String, u64>,
}

impl ClusterStateSnapshot {
    /// Workers online at `taken_at`.
    pub fn workers_online(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.status == WorkerStatus::Online)
            .count()
    }

    /// Total ignored events.
    pub fn ignored_total(&self) -> u64 {
        self.ignored.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn out_of_order_events_do_not_move_a_task_back() {
        let mut s = ClusterState::default();
        let base = json!({"hostname": "celery@a", "uuid": "u1", "clock": 3});
        let ev = |t: &str, ts: f64| {
            let mut e = base.clone();
            e["type"] = json!(t);
            e["timestamp"] = json!(ts);
            e
        };
        s.apply_at(&ev("task-succeeded", 12.0), 12.0);
        let mut received = ev("task-received", 10.0);
        received["name"] = json!("tasks.x");
        s.apply_at(&received, 12.1);
        s.apply_at(&ev("task-started", 11.0), 12.2);
        let t = s.task("u1").unwrap();
        assert_eq!(t.state, TaskState::Success);
        assert_eq!(t.name.as_deref(), Some("tasks.x"));
        assert_eq!(t.received_at, Some(10.0));
        assert_eq!(t.started_at, Some(11.0));
    }

    #[test]
    fn eviction_keeps_the_newest_tasks() {
        let mut s = ClusterState::new(StateConfig {
            max_tasks: 3,
            ..Default::default()
        });
        for i in 0..5 {
            s.apply_at(
                &json!({"type": "task-received", "hostname": "h", "timestamp": 1.0,
                        "uuid": format!("u{i}"), "name": "n"}),
                1.0,
            );
        }
        assert_eq!(s.task_len(), 3);
        assert!(s.task("u0").is_none() && s.task("u1").is_none());
        assert!(s.task("u4").is_some());
    }

    #[test]
    fn throughput_uses_one_bucket_per_second() {
        let mut t = Throughput::new(Duration::from_secs(10));
        for i in 0..100 {
            t.record(100.0 + f64::from(i) * 0.1, "a");
        }
        assert!(t.buckets.len() <= 11);
        // At 110 the window is seconds 101..=110: second 100 has left it.
        let rates = t.rates(110.0);
        assert_eq!(rates[0].0, "a");
        assert!((rates[0].1 - 9.0).abs() < 1e-9, "{rates:?}");
        assert!(t.rates(200.0).is_empty());
    }

    #[test]
    fn truncate_marks_the_cut_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
