//! Everything a worker knows about its own work, in one place.
//!
//! Remote control (`inspect active/reserved/scheduled/stats/revoked`) and
//! heartbeats read this struct; the worker is its only writer. A plain
//! `std::sync::Mutex` is enough: every critical section is a few map
//! operations and never awaits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::broker::Delivery;

/// What the worker holds for one message, in the shape `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RequestInfoSnapshot {
    /// Task id.
    pub id: String,
    /// Task name.
    pub name: String,
    /// Positional arguments.
    pub args: Value,
    /// Keyword arguments.
    pub kwargs: Value,
    /// Queue (routing key) it came from.
    pub queue: String,
    /// Priority of the message.
    pub priority: u8,
    /// Retries so far.
    pub retries: u32,
    /// ETA, for scheduled requests.
    pub eta: Option<DateTime<Utc>>,
    /// When the worker received it.
    pub received: DateTime<Utc>,
    /// When it started running (active requests only).
    pub started: Option<DateTime<Utc>>,
}

/// A consistent copy of the worker's state.
#[derive(Debug, Clone, Serialize)]
pub struct StateSnapshot {
    /// Hostname (`celery@host` by default).
    pub hostname: String,
    /// Queues consumed.
    pub queues: Vec<String>,
    /// Registered task names.
    pub registered: Vec<String>,
    /// Running now.
    pub active: Vec<RequestInfoSnapshot>,
    /// Received, waiting for a slot or a rate-limit token.
    pub reserved: Vec<RequestInfoSnapshot>,
    /// Waiting in memory for an ETA less than a second away.
    pub scheduled: Vec<RequestInfoSnapshot>,
    /// Finished runs per task name (any outcome).
    pub processed: BTreeMap<String, u64>,
    /// Ids revoked on this worker.
    pub revoked: Vec<String>,
    /// When the worker started.
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Reserved,
    Scheduled,
    Active,
}

#[derive(Debug, Default)]
struct Inner {
    queues: Vec<String>,
    requests: HashMap<String, (Phase, RequestInfoSnapshot)>,
    /// Running requests' kill switches, for `revoke --terminate`.
    terminators: HashMap<String, CancellationToken>,
    deliveries: HashMap<String, Delivery>,
    processed: BTreeMap<String, u64>,
    revoked: HashSet<String>,
}

/// The worker's shared state. Obtain it with [`crate::Worker::state`].
#[derive(Debug)]
pub struct WorkerState {
    hostname: String,
    registered: Vec<String>,
    started_at: DateTime<Utc>,
    inner: Mutex<Inner>,
}

impl WorkerState {
    pub(crate) fn new(hostname: String, queues: Vec<String>, registered: Vec<String>) -> Self {
        WorkerState {
            hostname,
            registered,
            started_at: Utc::now(),
            inner: Mutex::new(Inner {
                queues,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half-updated
        // in a way that matters, so a poisoned lock is still used.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `task_id` revoked: it will not run here (it is recorded REVOKED when received).
    pub fn revoke(&self, task_id: &str) {
        self.lock().revoked.insert(task_id.to_owned());
    }

    /// Whether `task_id` was revoked.
    pub fn is_revoked(&self, task_id: &str) -> bool {
        self.lock().revoked.contains(task_id)
    }

    /// Revokes `task_id` and, if it is running here, aborts it. Returns
    /// whether a running task was terminated.
    pub fn terminate(&self, task_id: &str) -> bool {
        let mut inner = self.lock();
        inner.revoked.insert(task_id.to_owned());
        match inner.terminators.get(task_id) {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }

    /// Queues consumed now (they change with `add_consumer`/`cancel_consumer`).
    pub fn queues(&self) -> Vec<String> {
        self.lock().queues.clone()
    }

    /// Starts consuming `queue`; false if it already was.
    pub(crate) fn add_queue(&self, queue: &str) -> bool {
        let mut inner = self.lock();
        if inner.queues.iter().any(|q| q == queue) {
            return false;
        }
        inner.queues.push(queue.to_owned());
        true
    }

    /// Stops consuming `queue`; false if it was not consumed.
    pub(crate) fn cancel_queue(&self, queue: &str) -> bool {
        let mut inner = self.lock();
        let before = inner.queues.len();
        inner.queues.retain(|q| q != queue);
        inner.queues.len() != before
    }

    /// Number of running tasks.
    pub fn active_count(&self) -> usize {
        self.lock()
            .requests
            .values()
            .filter(|(p, _)| *p == Phase::Active)
            .count()
    }

    /// Finished runs, all tasks together.
    pub fn processed_total(&self) -> u64 {
        self.lock().processed.values().sum()
    }

    /// The worker's hostname.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// A copy of everything, for inspect replies and heartbeats.
    pub fn snapshot(&self) -> StateSnapshot {
        let inner = self.lock();
        let by = |phase: Phase| {
            let mut v: Vec<RequestInfoSnapshot> = inner
                .requests
                .values()
                .filter(|(p, _)| *p == phase)
                .map(|(_, r)| r.clone())
                .collect();
            v.sort_by_key(|r| r.received);
            v
        };
        StateSnapshot {
            hostname: self.hostname.clone(),
            queues: inner.queues.clone(),
            registered: self.registered.clone(),
            active: by(Phase::Active),
            reserved: by(Phase::Reserved),
            scheduled: by(Phase::Scheduled),
            processed: inner.processed.clone(),
            revoked: inner.revoked.iter().cloned().collect(),
            started_at: self.started_at,
        }
    }

    pub(crate) fn track_delivery(&self, d: &Delivery) {
        self.lock().deliveries.insert(d.tag.clone(), d.clone());
    }

    pub(crate) fn untrack_delivery(&self, tag: &str) {
        self.lock().deliveries.remove(tag);
    }

    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.values().cloned().collect()
    }

    pub(crate) fn reserve(&self, r: RequestInfoSnapshot) {
        self.lock()
            .requests
            .insert(r.id.clone(), (Phase::Reserved, r));
    }

    pub(crate) fn set_scheduled(&self, id: &str) {
        if let Some(e) = self.lock().requests.get_mut(id) {
            e.0 = Phase::Scheduled;
        }
    }

    pub(crate) fn set_reserved(&self, id: &str) {
        if let Some(e) = self.lock().requests.get_mut(id) {
            e.0 = Phase::Reserved;
        }
    }

    /// Marks `id` running; the returned token fires on `revoke --terminate`.
    pub(crate) fn start(&self, id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        let mut inner = self.lock();
        if let Some(e) = inner.requests.get_mut(id) {
            e.0 = Phase::Active;
            e.1.started = Some(Utc::now());
        }
        inner.terminators.insert(id.to_owned(), token.clone());
        token
    }

    pub(crate) fn forget(&self, id: &str) {
        let mut inner = self.lock();
        inner.requests.remove(id);
        inner.terminators.remove(id);
    }

    /// Where `id` is on this worker: `active`, `reserved` or `scheduled`.
    pub fn query(&self, id: &str) -> Option<(&'static str, RequestInfoSnapshot)> {
        let inner = self.lock();
        inner.requests.get(id).map(|(p, r)| {
            let phase = match p {
                Phase::Active => "active",
                Phase::Reserved => "reserved",
                Phase::Scheduled => "scheduled",
            };
            (phase, r.clone())
        })
    }

    pub(crate) fn count_processed(&self, name: &str) {
        *self.lock().processed.entry(name.to_owned()).or_default() += 1;
    }
}
