//! The worker: fetches messages, runs tasks, stores results, acks late.
//!
//! One fetch loop leases messages while a semaphore has permits
//! (`concurrency × prefetch_multiplier`), so the worker never holds more
//! messages than it can soon run. Each message is handled on its own tokio
//! task; the task body itself runs in a further spawned task so that a panic
//! is caught as a FAILURE and a hard time limit can abort it. Acks come after
//! the result is stored: a worker that dies mid-task leaves the message
//! leased, and the broker hands it out again after the visibility timeout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{ResultBackend, State, TaskMeta};
use crate::broker::{Broker, Delivery};
use crate::control::events::{fields, loadavg, HEARTBEAT_FREQ};
use crate::control::{EventDispatcher, Fanout, Node};
use crate::error::Result;
use crate::message::Message;
use crate::task::{backoff, Failure, RequestInfo, Task, TaskContext, TaskError};

mod control;
mod rate;
mod registry;
mod state;

use rate::TokenBucket;
use registry::Registry;
pub use state::{RequestInfoSnapshot, StateSnapshot, WorkerState};

/// ETAs closer than this are waited for in memory instead of deferred to the broker.
const NEAR_ETA: Duration = Duration::from_secs(1);

/// Most messages leased in one fetch.
const FETCH_BATCH: usize = 64;

/// Configures and builds a [`Worker`].
#[derive(Debug)]
pub struct WorkerBuilder<C> {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    context: C,
    registry: Registry<C>,
    concurrency: usize,
    prefetch_multiplier: usize,
    queues: Vec<String>,
    hostname: Option<String>,
    restore_interval: Duration,
    lease_refresh_interval: Duration,
    shutdown_timeout: Duration,
    fetch_wait: Duration,
    track_started: bool,
    fanout: Option<Arc<dyn Fanout>>,
    send_events: bool,
    heartbeat_interval: Duration,
    broker_info: Value,
}

impl<C: Clone + Send + Sync + 'static> WorkerBuilder<C> {
    /// Answers remote control (`celery inspect`, `openthreat inspect`) and
    /// sends events over `fanout`. Without it the worker is invisible to
    /// monitors (embedded tests, one-off runs).
    pub fn fanout(mut self, fanout: Arc<dyn Fanout>) -> Self {
        self.fanout = Some(fanout);
        self
    }

    /// Whether task and worker events are sent from the start (default on;
    /// `enable_events`/`disable_events` switch it at run time). Needs a fanout.
    pub fn send_events(mut self, on: bool) -> Self {
        self.send_events = on;
        self
    }

    /// Seconds between `worker-heartbeat` events (default 2, Celery's).
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat_interval = every;
        self
    }

    /// What `inspect stats` reports under `broker` (transport, hostname, port;
    /// never credentials).
    pub fn broker_info(mut self, info: Value) -> Self {
        self.broker_info = info;
        self
    }

    /// Registers task type `T`; its name is `T::NAME`.
    pub fn register<T: Task<Context = C>>(mut self) -> Self {
        self.registry.register::<T>();
        self
    }

    /// How many tasks run at once (default: number of CPUs).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Messages leased per execution slot (Celery's `worker_prefetch_multiplier`,
    /// default 4 as there): the extra ones wait as "reserved", which saves a
    /// broker round trip per task. Use 1 for long tasks so a busy worker does
    /// not sit on messages an idle one could run.
    pub fn prefetch_multiplier(mut self, n: usize) -> Self {
        self.prefetch_multiplier = n.max(1);
        self
    }

    /// Queues to consume (default `["celery"]`).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Node name (default `celery@<host>`), as `celery inspect` shows it.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// How often expired leases are restored and due ETA messages released (default 10 s).
    pub fn restore_interval(mut self, every: Duration) -> Self {
        self.restore_interval = every;
        self
    }

    /// How often leases of running tasks are renewed (default 60 s); keep it
    /// well below the broker's visibility timeout.
    pub fn lease_refresh_interval(mut self, every: Duration) -> Self {
        self.lease_refresh_interval = every;
        self
    }

    /// How long a warm shutdown waits for running tasks before aborting and
    /// requeueing them (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Longest single wait for a message (default 1 s, kombu's BRPOP
    /// timeout); a warm shutdown waits for the current one to finish.
    pub fn fetch_wait(mut self, wait: Duration) -> Self {
        self.fetch_wait = wait;
        self
    }

    /// Store a STARTED state when a task begins (Celery's
    /// `task_track_started`, default off: it costs a write per task).
    pub fn track_started(mut self, on: bool) -> Self {
        self.track_started = on;
        self
    }

    /// Builds the worker.
    pub fn build(self) -> Worker<C> {
        let hostname = self.hostname.unwrap_or_else(|| {
            let host = hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into());
            format!("celery@{host}")
        });
        let mut buckets = HashMap::new();
        for name in self.registry.names() {
            if let Some(interval) = self
                .registry
                .get(&name)
                .and_then(|e| e.options.rate_interval)
            {
                buckets.insert(name, Arc::new(TokenBucket::new(interval)));
            }
        }
        let prefetch = self.concurrency * self.prefetch_multiplier;
        let state = Arc::new(WorkerState::new(
            hostname.clone(),
            self.queues.clone(),
            self.registry.names(),
        ));
        Worker {
            shared: Arc::new(Shared {
                broker: self.broker,
                backend: self.backend,
                context: self.context,
                registry: self.registry,
                buckets: RwLock::new(buckets),
                limits: RwLock::new(HashMap::new()),
                state,
                hostname,
                exec: Arc::new(Semaphore::new(self.concurrency)),
                fetch_permits: Arc::new(Semaphore::new(prefetch)),
                concurrency: AtomicUsize::new(self.concurrency),
                prefetch_multiplier: self.prefetch_multiplier,
                track_started: self.track_started,
                stop: CancellationToken::new(),
                requeue: CancellationToken::new(),
                remote_stop: CancellationToken::new(),
                fanout: self.fanout,
                send_events: self.send_events,
                events: OnceLock::new(),
                broker_info: self.broker_info,
            }),
            concurrency: self.concurrency,
            heartbeat_interval: self.heartbeat_interval,
            restore_interval: self.restore_interval,
            lease_refresh_interval: self.lease_refresh_interval,
            shutdown_timeout: self.shutdown_timeout,
            fetch_wait: self.fetch_wait,
        }
    }
}

/// `(soft, hard)` time limits.
type Limits = (Option<Duration>, Option<Duration>);

struct Shared<C> {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    context: C,
    registry: Registry<C>,
    /// Rate limits by task name; `rate_limit` commands replace them.
    buckets: RwLock<HashMap<String, Arc<TokenBucket>>>,
    /// `(soft, hard)` time limits set by `time_limit` commands, over the task's own.
    limits: RwLock<HashMap<String, Limits>>,
    state: Arc<WorkerState>,
    hostname: String,
    /// Execution slots: at most `concurrency` task bodies run at once, however
    /// many messages are prefetched.
    exec: Arc<Semaphore>,
    /// Messages held at once (`concurrency × prefetch_multiplier`).
    fetch_permits: Arc<Semaphore>,
    /// Current pool size (`pool_grow`/`pool_shrink` change it).
    concurrency: AtomicUsize,
    prefetch_multiplier: usize,
    track_started: bool,
    /// Stop fetching (warm shutdown began).
    stop: CancellationToken,
    /// Give up on running tasks: abort and requeue them.
    requeue: CancellationToken,
    /// A `shutdown` command arrived.
    remote_stop: CancellationToken,
    fanout: Option<Arc<dyn Fanout>>,
    send_events: bool,
    /// Set in `run` (it needs the runtime) when there is a fanout.
    events: OnceLock<Arc<EventDispatcher>>,
    broker_info: Value,
}

impl<C> Shared<C> {
    /// Sends an event if events are on. The fields are built only then:
    /// with events off, a task pays for no JSON.
    fn event(&self, kind: &str, fields: impl FnOnce() -> serde_json::Map<String, Value>) {
        if let Some(ev) = self.events.get().filter(|e| e.enabled()) {
            ev.send(kind, fields());
        }
    }

    fn queues(&self) -> Vec<String> {
        self.state.queues()
    }
}

/// A worker. Build with [`Worker::builder`], start with [`Worker::run`].
pub struct Worker<C> {
    shared: Arc<Shared<C>>,
    concurrency: usize,
    heartbeat_interval: Duration,
    restore_interval: Duration,
    lease_refresh_interval: Duration,
    shutdown_timeout: Duration,
    fetch_wait: Duration,
}

impl<C> std::fmt::Debug for Worker<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("hostname", &self.shared.hostname)
            .field("queues", &self.shared.queues())
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// How a task run ended, before bookkeeping.
enum Outcome {
    Finished(std::result::Result<std::result::Result<Value, TaskError>, tokio::task::JoinError>),
    TimeLimit(Duration),
    Requeue,
    Terminated,
}

impl<C: Clone + Send + Sync + 'static> Worker<C> {
    /// Starts configuring a worker over `broker` and `backend`; `context` is
    /// cloned into every task run (put shared handles behind an `Arc`).
    pub fn builder(
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
        context: C,
    ) -> WorkerBuilder<C> {
        WorkerBuilder {
            broker,
            backend,
            context,
            registry: Registry::new(),
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(4),
            prefetch_multiplier: 4,
            queues: vec!["celery".to_owned()],
            hostname: None,
            restore_interval: Duration::from_secs(10),
            lease_refresh_interval: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            fetch_wait: Duration::from_secs(1),
            track_started: false,
            fanout: None,
            send_events: true,
            heartbeat_interval: Duration::from_secs_f64(HEARTBEAT_FREQ),
            broker_info: Value::Null,
        }
    }

    /// The shared state (active/reserved/scheduled requests, counters, revoked ids).
    pub fn state(&self) -> Arc<WorkerState> {
        self.shared.state.clone()
    }

    /// Runs until `shutdown` resolves, then shuts down warmly: stops fetching,
    /// lets running tasks finish for up to the shutdown timeout, requeues the
    /// rest and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let shared = self.shared.clone();
        shared.broker.declare(&shared.queues()).await?;
        tracing::info!(hostname = %shared.hostname, queues = ?shared.queues(), concurrency = self.concurrency, "worker started");

        let mut monitor = Vec::new();
        if let Some(fanout) = shared.fanout.clone() {
            let events = EventDispatcher::new(fanout.clone(), &shared.hostname, shared.send_events);
            let _ = shared.events.set(events.clone());
            let clock = {
                let events = events.clone();
                Arc::new(move |seen: Option<u64>| {
                    if let Some(c) = seen {
                        events.adjust_clock(c);
                    }
                    events.tick()
                })
            };
            let node = Node::new(
                fanout,
                &shared.hostname,
                Arc::new(control::WorkerCommands(shared.clone())),
                clock,
            );
            monitor.push(node.spawn(shared.stop.child_token()).await?);
            monitor.push(tokio::spawn(heartbeats(
                shared.clone(),
                self.heartbeat_interval,
            )));
        }

        let tracker = TaskTracker::new();
        let housekeeping = tokio::spawn(housekeeping(
            shared.clone(),
            self.restore_interval,
            self.lease_refresh_interval,
        ));
        let fetcher = tokio::spawn(fetch_loop(shared.clone(), tracker.clone(), self.fetch_wait));

        tokio::select! {
            _ = shutdown => {}
            _ = shared.remote_stop.cancelled() => {
                tracing::warn!("shutdown requested by remote control");
            }
        }
        tracing::info!("warm shutdown: no new messages; waiting for running tasks");
        shared.stop.cancel();
        // The grace period counts from the signal, not from when fetching ended.
        let grace = tokio::spawn({
            let requeue = shared.requeue.clone();
            let timeout = self.shutdown_timeout;
            async move {
                tokio::time::sleep(timeout).await;
                tracing::warn!("shutdown timeout: aborting and requeueing running tasks");
                requeue.cancel();
            }
        });
        // The fetch loop finishes its current (≤ 1 s) fetch so no popped message is dropped.
        if let Err(e) = fetcher.await {
            tracing::error!(error = %e, "fetch loop failed");
        }
        tracker.close();
        tracker.wait().await;
        grace.abort();
        housekeeping.abort();
        for m in monitor {
            m.abort();
        }
        if let Some(ev) = shared.events.get() {
            ev.close(Duration::from_secs(2)).await;
            if ev.enabled() {
                let f = worker_fields(&shared);
                if let Err(e) = ev.send_now("worker-offline", f).await {
                    tracing::warn!(error = %e, "worker-offline event not sent");
                }
            }
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// The fields of `worker-*` events, as `celery.events.state.Worker` reads them.
fn worker_fields<C>(shared: &Shared<C>) -> serde_json::Map<String, Value> {
    fields([
        ("freq", json!(HEARTBEAT_FREQ)),
        ("active", json!(shared.state.active_count())),
        ("processed", json!(shared.state.processed_total())),
        ("loadavg", loadavg()),
        ("sw_ident", json!("openthreat")),
        ("sw_ver", json!(env!("CARGO_PKG_VERSION"))),
        ("sw_sys", json!(std::env::consts::OS)),
    ])
}

/// Sends `worker-online` and then a `worker-heartbeat` every `every`.
async fn heartbeats<C>(shared: Arc<Shared<C>>, every: Duration) {
    shared.event("worker-online", || worker_fields(&shared));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        shared.event("worker-heartbeat", || worker_fields(&shared));
    }
}

async fn fetch_loop<C: Clone + Send + Sync + 'static>(
    shared: Arc<Shared<C>>,
    tracker: TaskTracker,
    wait: Duration,
) {
    let permits = shared.fetch_permits.clone();
    let mut backoff_pause = Duration::from_millis(100);
    loop {
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shared.stop.cancelled() => return,
        };
        if shared.stop.is_cancelled() {
            return;
        }
        // Lease as many messages as there are free slots, in one round trip.
        let mut slots_held = vec![first];
        while slots_held.len() < FETCH_BATCH {
            match permits.clone().try_acquire_owned() {
                Ok(p) => slots_held.push(p),
                Err(_) => break,
            }
        }
        let queues = shared.queues();
        if queues.is_empty() {
            // Every consumer was cancelled: idle until one is added.
            drop(slots_held);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shared.stop.cancelled() => return,
            }
            continue;
        }
        // Never cancelled mid-flight: a dropped BRPOP could lose a popped message.
        match shared.broker.fetch(&queues, slots_held.len(), wait).await {
            Ok(deliveries) => {
                if !deliveries.is_empty() {
                    backoff_pause = Duration::from_millis(100);
                }
                for (delivery, permit) in deliveries.into_iter().zip(slots_held.drain(..)) {
                    shared.state.track_delivery(&delivery);
                    let shared = shared.clone();
                    tracker.spawn(async move {
                        let tag = delivery.tag.clone();
                        handle(&shared, delivery).await;
                        shared.state.untrack_delivery(&tag);
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                drop(slots_held);
                tracing::error!(error = %e, "fetch failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff_pause) => {}
                    _ = shared.stop.cancelled() => return,
                }
                backoff_pause = (backoff_pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn housekeeping<C>(shared: Arc<Shared<C>>, restore_every: Duration, refresh_every: Duration) {
    let mut restore = tokio::time::interval(restore_every);
    let mut refresh = tokio::time::interval(refresh_every);
    refresh.tick().await;
    loop {
        tokio::select! {
            _ = restore.tick() => {
                match shared.broker.restore_visible().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(count = n, "restored unacked or released scheduled messages"),
                    Err(e) => tracing::warn!(error = %e, "restore of unacked messages failed"),
                }
            }
            _ = refresh.tick() => {
                if let Err(e) = shared.broker.touch(&shared.state.deliveries()).await {
                    tracing::warn!(error = %e, "lease refresh failed");
                }
            }
        }
    }
}

/// Logs broker/backend errors during bookkeeping: the message stays leased
/// and comes back after the visibility timeout, so nothing is lost.
fn log_err(what: &str, id: &str, r: Result<()>) {
    if let Err(e) = r {
        tracing::error!(task_id = id, error = %e, "{what} failed");
    }
}

async fn handle<C: Clone + Send + Sync + 'static>(shared: &Shared<C>, delivery: Delivery) {
    let broker = &shared.broker;
    let msg = match Message::decode(delivery.raw.as_bytes()) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(queue = %delivery.queue, error = %e, "undecodable message moved to dead letters");
            log_err(
                "dead-letter",
                "?",
                broker.dead_letter(&delivery, &e.to_string()).await,
            );
            return;
        }
    };
    let id = msg.headers.id.clone();
    let name = msg.headers.task.clone();
    let Some(entry) = shared.registry.get(&name) else {
        let reason = format!("unknown task {name:?}");
        tracing::error!(task_id = %id, "{reason}: moved to dead letters");
        shared.event("task-rejected", || {
            fields([("uuid", json!(id)), ("requeue", json!(false))])
        });
        log_err(
            "dead-letter",
            &id,
            broker.dead_letter(&delivery, &reason).await,
        );
        if msg.headers.ignore_result != Some(true) {
            let f = Failure::new("celery.exceptions.NotRegistered", name.clone());
            log_err(
                "store",
                &id,
                shared
                    .backend
                    .store(&TaskMeta::failed(&id, State::Failure, &f, None))
                    .await,
            );
        }
        return;
    };
    let ignore_result = msg
        .headers
        .ignore_result
        .unwrap_or(entry.options.ignore_result);
    // Returns whether the result is safely stored (or not wanted).
    let store = |meta: TaskMeta| async move {
        if ignore_result {
            return true;
        }
        match shared.backend.store(&meta).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(task_id = %meta.task_id, error = %e, "storing the result failed");
                false
            }
        }
    };

    shared.state.reserve(RequestInfoSnapshot {
        id: id.clone(),
        name: name.clone(),
        args: Value::Array(msg.args.clone()),
        kwargs: Value::Object(msg.kwargs.clone()),
        queue: delivery.queue.clone(),
        priority: msg.priority(),
        retries: msg.headers.retries,
        eta: msg.headers.eta,
        received: Utc::now(),
        started: None,
    });
    let _forget = Forget(&shared.state, &id);
    shared.event("task-received", || {
        fields([
            ("uuid", json!(id)),
            ("name", json!(name)),
            (
                "args",
                json!(msg
                    .headers
                    .argsrepr
                    .clone()
                    .unwrap_or_else(|| py_repr(&Value::Array(msg.args.clone())))),
            ),
            (
                "kwargs",
                json!(msg
                    .headers
                    .kwargsrepr
                    .clone()
                    .unwrap_or_else(|| py_repr(&Value::Object(msg.kwargs.clone())))),
            ),
            ("root_id", json!(msg.headers.root_id)),
            ("parent_id", json!(msg.headers.parent_id)),
            ("retries", json!(msg.headers.retries)),
            ("eta", json!(msg.headers.eta.map(|t| t.to_rfc3339()))),
            (
                "expires",
                json!(msg.headers.expires.map(|t| t.to_rfc3339())),
            ),
        ])
    });
    let revoked_event = |expired: bool| {
        shared.event("task-revoked", || {
            fields([
                ("uuid", json!(id)),
                ("terminated", json!(false)),
                ("signum", Value::Null),
                ("expired", json!(expired)),
            ])
        });
    };

    if shared.state.is_revoked(&id) {
        tracing::info!(task_id = %id, "revoked: discarded");
        revoked_event(false);
        store(TaskMeta::failed(
            &id,
            State::Revoked,
            &Failure::new("celery.exceptions.TaskRevokedError", "revoked"),
            None,
        ))
        .await;
        log_err("ack", &id, broker.ack(&delivery).await);
        return;
    }
    if msg.headers.expires.is_some_and(|t| t <= Utc::now()) {
        tracing::info!(task_id = %id, "expired: discarded");
        revoked_event(true);
        store(TaskMeta::failed(
            &id,
            State::Revoked,
            &Failure::new("celery.exceptions.TaskRevokedError", "expired"),
            None,
        ))
        .await;
        log_err("ack", &id, broker.ack(&delivery).await);
        return;
    }
    if let Some(eta) = msg.headers.eta {
        let until = (eta - Utc::now()).to_std().unwrap_or_default();
        if until > NEAR_ETA {
            log_err("defer", &id, broker.defer(&delivery, eta).await);
            return;
        }
        if !until.is_zero() {
            shared.state.set_scheduled(&id);
            tokio::select! {
                _ = tokio::time::sleep(until) => {}
                _ = shared.stop.cancelled() => {
                    log_err("requeue", &id, broker.requeue(&delivery).await);
                    return;
                }
            }
            shared.state.set_reserved(&id);
        }
    }
    let bucket = shared
        .buckets
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&name)
        .cloned();
    if let Some(bucket) = bucket {
        let slot = bucket.reserve();
        tokio::select! {
            _ = tokio::time::sleep_until(slot) => {}
            _ = shared.stop.cancelled() => {
                log_err("requeue", &id, broker.requeue(&delivery).await);
                return;
            }
        }
    }
    let job = match (entry.prepare)(&msg.args, &msg.kwargs) {
        Ok(job) => job,
        Err(e) => {
            let reason = format!("bad arguments for {name}: {e}");
            tracing::error!(task_id = %id, "{reason}: moved to dead letters");
            shared.event("task-failed", || {
                fields([
                    ("uuid", json!(id)),
                    (
                        "exception",
                        json!(format!("TypeError({})", py_repr(&json!(reason)))),
                    ),
                    ("traceback", json!("")),
                ])
            });
            log_err(
                "dead-letter",
                &id,
                broker.dead_letter(&delivery, &reason).await,
            );
            store(TaskMeta::failed(
                &id,
                State::Failure,
                &Failure::new("TypeError", reason),
                None,
            ))
            .await;
            return;
        }
    };

    // Limits: the message's own (`timelimit: [hard, soft]`) win over the task's.
    let secs = |s: Option<f64>| s.filter(|s| *s > 0.0).map(Duration::from_secs_f64);
    let (set_soft, set_hard) = shared
        .limits
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&name)
        .copied()
        .unwrap_or((None, None));
    let hard = secs(msg.headers.timelimit.0)
        .or(set_hard)
        .or(entry.options.time_limit);
    let soft = secs(msg.headers.timelimit.1)
        .or(set_soft)
        .or(entry.options.soft_time_limit);

    let _slot = tokio::select! {
        p = shared.exec.clone().acquire_owned() => match p {
            Ok(p) => p,
            Err(_) => return,
        },
        _ = shared.stop.cancelled() => {
            // Prefetched but never started: give it back for another worker.
            log_err("requeue", &id, broker.requeue(&delivery).await);
            return;
        }
    };
    let terminate = shared.state.start(&id);
    shared.event("task-started", || {
        fields([("uuid", json!(id)), ("pid", json!(std::process::id()))])
    });
    if shared.track_started {
        let info = serde_json::json!({"pid": std::process::id(), "hostname": shared.hostname});
        store(TaskMeta::new(&id, State::Started, info)).await;
    }
    let cancel = CancellationToken::new();
    let request = Arc::new(RequestInfo {
        id: id.clone(),
        name: name.clone(),
        retries: msg.headers.retries,
        queue: delivery.queue.clone(),
        hostname: shared.hostname.clone(),
    });
    let ctx = TaskContext::new(shared.context.clone(), request, cancel.clone());
    tracing::debug!(task_id = %id, task = %name, "started");
    let started = Instant::now();
    let mut running = tokio::spawn(job(ctx));
    let far = started + Duration::from_secs(86_400 * 365);
    let soft_at = soft.map_or(far, |d| started + d);
    let hard_at = hard.map_or(far, |d| started + d);
    let mut soft_fired = false;
    let outcome = loop {
        tokio::select! {
            r = &mut running => break Outcome::Finished(r),
            _ = tokio::time::sleep_until(soft_at), if !soft_fired => {
                tracing::warn!(task_id = %id, "soft time limit exceeded: cancelling");
                cancel.cancel();
                soft_fired = true;
            }
            _ = tokio::time::sleep_until(hard_at) => {
                running.abort();
                break Outcome::TimeLimit(hard.unwrap_or_default());
            }
            _ = shared.requeue.cancelled() => {
                running.abort();
                break Outcome::Requeue;
            }
            _ = terminate.cancelled() => {
                running.abort();
                break Outcome::Terminated;
            }
        }
    };
    let failed_event = |f: &Failure| {
        shared.event("task-failed", || {
            fields([
                ("uuid", json!(id)),
                ("exception", json!(exception_repr(f))),
                ("traceback", json!("")),
            ])
        });
    };
    let runtime = started.elapsed();

    let stored = match outcome {
        Outcome::Requeue => {
            tracing::warn!(task_id = %id, "requeued at shutdown");
            log_err("requeue", &id, broker.requeue(&delivery).await);
            return;
        }
        Outcome::Terminated => {
            tracing::warn!(task_id = %id, task = %name, "terminated by revoke");
            shared.event("task-revoked", || {
                fields([
                    ("uuid", json!(id)),
                    ("terminated", json!(true)),
                    ("signum", json!(15)),
                    ("expired", json!(false)),
                ])
            });
            let f = Failure::new("celery.exceptions.TaskRevokedError", "terminated");
            store(TaskMeta::failed(&id, State::Revoked, &f, None)).await
        }
        Outcome::Finished(Ok(Ok(value))) => {
            tracing::info!(task_id = %id, task = %name, ?runtime, "succeeded");
            shared.event("task-succeeded", || {
                fields([
                    ("uuid", json!(id)),
                    ("result", json!(truncate(py_repr(&value), 1024))),
                    ("runtime", json!(runtime.as_secs_f64())),
                ])
            });
            store(TaskMeta::new(&id, State::Success, value)).await
        }
        Outcome::Finished(Ok(Err(TaskError::Retry { countdown, failure })))
            if msg.headers.retries < entry.options.max_retries =>
        {
            let delay = countdown
                .unwrap_or_else(|| backoff(entry.options.retry_backoff, msg.headers.retries));
            let mut next = msg.clone();
            next.headers.retries += 1;
            next.headers.eta = chrono::Duration::from_std(delay)
                .ok()
                .map(|d| Utc::now() + d);
            next.properties.delivery_tag = Some(uuid::Uuid::new_v4().to_string());
            tracing::warn!(task_id = %id, task = %name, retry = next.headers.retries, ?delay, reason = %failure.message, "retry");
            if let Err(e) = broker.publish(&next).await {
                // Leave the message leased: it comes back after the visibility timeout.
                tracing::error!(task_id = %id, error = %e, "could not publish retry");
                return;
            }
            shared.event("task-retried", || {
                fields([
                    ("uuid", json!(id)),
                    ("exception", json!(exception_repr(&failure))),
                    ("traceback", json!("")),
                ])
            });
            // The retry message exists now: ack the original whatever the store does.
            store(TaskMeta::failed(&id, State::Retry, &failure, None)).await;
            true
        }
        Outcome::Finished(Ok(
            Err(TaskError::Retry { failure, .. }) | Err(TaskError::Fail(failure)),
        )) => {
            tracing::error!(task_id = %id, task = %name, exc = %failure.exc_type, reason = %failure.message, "failed");
            failed_event(&failure);
            store(TaskMeta::failed(&id, State::Failure, &failure, None)).await
        }
        Outcome::Finished(Err(join)) => {
            let what = match join.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_owned()),
                Err(_) => "task was cancelled".to_owned(),
            };
            tracing::error!(task_id = %id, task = %name, panic = %what, "task panicked");
            let f = Failure::new("RuntimeError", format!("task panicked: {what}"));
            failed_event(&f);
            store(TaskMeta::failed(&id, State::Failure, &f, None)).await
        }
        Outcome::TimeLimit(limit) => {
            tracing::error!(task_id = %id, task = %name, ?limit, "hard time limit exceeded: aborted");
            let f = Failure::new(
                "billiard.exceptions.TimeLimitExceeded",
                format!("TimeLimitExceeded({})", limit.as_secs_f64()),
            );
            failed_event(&f);
            store(TaskMeta::failed(&id, State::Failure, &f, None)).await
        }
    };
    shared.state.count_processed(&name);
    if !stored {
        // Late ack only after the outcome is recorded: leave the message
        // leased so it is redelivered after the visibility timeout (a stored
        // SUCCESS is never overwritten, so a rerun is harmless).
        tracing::warn!(task_id = %id, "not acked: the outcome was not stored");
        return;
    }
    log_err("ack", &id, broker.ack(&delivery).await);
}

/// Removes a request from the worker state however `handle` returns.
struct Forget<'a>(&'a WorkerState, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

/// Python's `repr` of a JSON value, as Celery puts results and exceptions in
/// events (`{'a': 1, 'ok': True}`), so monitors show what Python would.
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::with_capacity(s.len() + 2);
            out.push('\'');
            for c in s.chars() {
                match c {
                    '\'' => out.push_str("\\'"),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('\'');
            out
        }
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", py_repr(&Value::String(k.clone())), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `ValueError('boom')`: the exception as Celery's events show it.
fn exception_repr(f: &Failure) -> String {
    format!(
        "{}({})",
        f.exc_type,
        py_repr(&Value::String(f.message.clone()))
    )
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_repr() {
        assert_eq!(
            py_repr(&json!({"a": [1, true, null], "b": "it's"})),
            r#"{'a': [1, True, None], 'b': 'it\'s'}"#
        );
        let f = Failure::new("builtins.ValueError", "bad\nvalue");
        assert_eq!(exception_repr(&f), r#"ValueError('bad\nvalue')"#);
        assert_eq!(truncate("ééé".into(), 3), "é...");
    }
}
