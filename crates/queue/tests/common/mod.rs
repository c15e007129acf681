//! Shared test scaffolding: environments on real Redis and temp SQLite files,
//! a running worker with a shutdown switch, and the Python helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openthreat_queue::backend::redis::RedisBackend;
use openthreat_queue::backend::sqlite::SqliteBackend;
use openthreat_queue::broker::redis::RedisBroker;
use openthreat_queue::broker::sqlite::SqliteBroker;
use openthreat_queue::control::{Fanout, RedisFanout, SqliteFanout};
use openthreat_queue::worker::WorkerBuilder;
use openthreat_queue::{
    Broker, Producer, ResultBackend, Task, TaskContext, TaskError, Worker, WorkerState,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Visibility timeout used by every test environment: short, so lost
/// messages come back quickly.
pub const VT: Duration = Duration::from_secs(1);

/// Returns false (after printing why) when Redis is not reachable; panics
/// instead when `CI` is set, so CI cannot silently skip.
pub async fn redis_available() -> bool {
    let ok = async {
        let c = redis::Client::open(REDIS_URL).ok()?;
        let mut conn = c.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    match tokio::time::timeout(Duration::from_secs(2), ok).await {
        Ok(Some(_)) => true,
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("Redis at {REDIS_URL} is not reachable and CI is set");
            }
            eprintln!("skipping: Redis at {REDIS_URL} is not reachable");
            false
        }
    }
}

/// Same rule for python3 with the `celery` package.
pub fn python_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import celery, redis"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("python3 with celery is not available and CI is set");
        }
        eprintln!("skipping: python3 with celery is not available");
    }
    ok
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

/// One isolated broker + backend.
pub struct Env {
    pub broker: Arc<dyn Broker>,
    pub backend: Arc<dyn ResultBackend>,
    pub producer: Producer,
    /// Queue name unique to this test.
    pub queue: String,
    /// Redis key prefix (empty on SQLite).
    pub prefix: String,
    pub kind: &'static str,
    /// Events and remote control on the same broker.
    pub fanout: Arc<dyn Fanout>,
    /// A URL for [`openthreat_queue::connect_broker`] reaching the same queues
    /// (with this env's visibility timeout), for child processes.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Env {
    pub async fn redis() -> Option<Env> {
        if !redis_available().await {
            return None;
        }
        let prefix = format!("{}:", unique("otq"));
        let broker: Arc<dyn Broker> = Arc::new(
            RedisBroker::connect(REDIS_URL)
                .await
                .unwrap()
                .with_prefix(&prefix)
                .with_visibility_timeout(VT),
        );
        let backend: Arc<dyn ResultBackend> = Arc::new(
            RedisBackend::connect(REDIS_URL)
                .await
                .unwrap()
                .with_prefix(&prefix),
        );
        let fanout: Arc<dyn Fanout> =
            Arc::new(RedisFanout::connect(REDIS_URL, &prefix).await.unwrap());
        Some(Env {
            producer: Producer::new(broker.clone(), backend.clone()),
            broker,
            backend,
            fanout,
            queue: unique("q"),
            url: format!(
                "{REDIS_URL}?global_keyprefix={prefix}&visibility_timeout={}",
                VT.as_secs_f64()
            ),
            prefix,
            kind: "redis",
            _dir: None,
        })
    }

    pub async fn sqlite() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("queue.db").display());
        let broker: Arc<dyn Broker> = Arc::new(
            SqliteBroker::connect(&url)
                .await
                .unwrap()
                .with_visibility_timeout(VT)
                .with_poll_interval(Duration::from_millis(20)),
        );
        let backend: Arc<dyn ResultBackend> = Arc::new(SqliteBackend::connect(&url).await.unwrap());
        let fanout: Arc<dyn Fanout> = Arc::new(SqliteFanout::connect(&url).await.unwrap());
        Env {
            producer: Producer::new(broker.clone(), backend.clone()),
            broker,
            backend,
            fanout,
            queue: unique("q"),
            prefix: String::new(),
            kind: "sqlite",
            url: format!("{url}?visibility_timeout={}", VT.as_secs_f64()),
            _dir: Some(dir),
        }
    }

    /// A worker builder on this env's queue with test-speed housekeeping.
    pub fn worker(&self, ctx: Ctx) -> WorkerBuilder<Ctx> {
        Worker::builder(self.broker.clone(), self.backend.clone(), ctx)
            .queues([self.queue.clone()])
            .concurrency(4)
            .restore_interval(Duration::from_millis(100))
            .lease_refresh_interval(Duration::from_millis(200))
            .fetch_wait(Duration::from_millis(200))
            .hostname(format!("test@{}", self.queue))
            .register::<Add>()
            .register::<Fail>()
            .register::<Panicky>()
            .register::<Flaky>()
            .register::<AlwaysRetry>()
            .register::<Sleepy>()
            .register::<Stuck>()
            .register::<Limited>()
            .register::<Record>()
            .register::<Hold>()
    }

    /// [`Env::worker`] answering remote control and sending events.
    pub fn monitored_worker(&self, ctx: Ctx) -> WorkerBuilder<Ctx> {
        self.worker(ctx)
            .fanout(self.fanout.clone())
            .heartbeat_interval(Duration::from_millis(300))
    }

    /// This env's queue, as the slice broker calls take.
    pub fn queues(&self) -> Vec<String> {
        vec![self.queue.clone()]
    }

    pub fn send_opts(&self) -> openthreat_queue::SendOptions {
        openthreat_queue::SendOptions::queue(self.queue.clone())
    }

    /// Deletes this test's Redis keys.
    pub async fn cleanup(&self) {
        if self.prefix.is_empty() {
            return;
        }
        let c = redis::Client::open(REDIS_URL).unwrap();
        let mut conn = c.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}

/// A worker running on a tokio task, stopped by [`Running::stop`].
pub struct Running {
    pub state: Arc<WorkerState>,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<openthreat_queue::Result<()>>,
}

impl Running {
    pub fn start(worker: Worker<Ctx>) -> Running {
        let state = worker.state();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        Running {
            state,
            stop: Some(tx),
            handle,
        }
    }

    /// Whether the worker's `run` returned (e.g. after a remote shutdown).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("worker stops in time")
            .unwrap()
            .unwrap();
    }
}

/// The context our test tasks get: a log of what ran and a counter.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub log: Arc<Mutex<Vec<String>>>,
    pub runs: Arc<AtomicU32>,
}

impl Ctx {
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Add {
    pub a: i64,
    pub b: i64,
}

impl Task for Add {
    const NAME: &'static str = "tests.add";
    const ARGS: &'static [&'static str] = &["a", "b"];
    type Context = Ctx;
    type Output = i64;
    async fn run(self, ctx: TaskContext<Ctx>) -> Result<i64, TaskError> {
        ctx.app().runs.fetch_add(1, Ordering::SeqCst);
        Ok(self.a + self.b)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Fail {
    pub why: String,
}

impl Task for Fail {
    const NAME: &'static str = "tests.fail";
    const ARGS: &'static [&'static str] = &["why"];
    type Context = Ctx;
    type Output = ();
    async fn run(self, _ctx: TaskContext<Ctx>) -> Result<(), TaskError> {
        Err(TaskError::fail("ValueError", self.why))
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Panicky {}

impl Task for Panicky {
    const NAME: &'static str = "tests.panic";
    type Context = Ctx;
    type Output = ();
    async fn run(self, _ctx: TaskContext<Ctx>) -> Result<(), TaskError> {
        panic!("boom")
    }
}

/// Fails with a retry until it has run `succeed_on` times.
#[derive(Debug, Serialize, Deserialize)]
pub struct Flaky {
    pub succeed_on: u32,
}

impl Task for Flaky {
    const NAME: &'static str = "tests.flaky";
    const ARGS: &'static [&'static str] = &["succeed_on"];
    const RETRY_BACKOFF: Duration = Duration::from_millis(40);
    type Context = Ctx;
    type Output = u32;
    async fn run(self, ctx: TaskContext<Ctx>) -> Result<u32, TaskError> {
        let n = ctx.app().runs.fetch_add(1, Ordering::SeqCst) + 1;
        ctx.app()
            .log
            .lock()
            .unwrap()
            .push(format!("try {} retries={}", n, ctx.request().retries));
        if n < self.succeed_on {
            return Err(TaskError::retry("not yet"));
        }
        Ok(n)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AlwaysRetry {}

impl Task for AlwaysRetry {
    const NAME: &'static str = "tests.always_retry";
    const MAX_RETRIES: u32 = 2;
    const RETRY_BACKOFF: Duration = Duration::from_millis(20);
    type Context = Ctx;
    type Output = ();
    async fn run(self, ctx: TaskContext<Ctx>) -> Result<(), TaskError> {
        ctx.app().runs.fetch_add(1, Ordering::SeqCst);
        Err(TaskError::Retry {
            countdown: None,
            failure: openthreat_queue::task::Failure::new("KeyError", "still missing"),
        })
    }
}

/// Waits up to `ms`, returning early with "cancelled" at the soft limit.
#[derive(Debug, Serialize, Deserialize)]
pub struct Sleepy {
    pub ms: u64,
}

impl Task for Sleepy {
    const NAME: &'static str = "tests.sleepy";
    const ARGS: &'static [&'static str] = &["ms"];
    const SOFT_TIME_LIMIT: Option<Duration> = Some(Duration::from_millis(300));
    type Context = Ctx;
    type Output = String;
    async fn run(self, ctx: TaskContext<Ctx>) -> Result<String, TaskError> {
        ctx.app().log.lock().unwrap().push("sleepy started".into());
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(self.ms)) => Ok("slept".into()),
            _ = ctx.cancelled() => Ok("cancelled".into()),
        }
    }
}

/// Ignores cancellation: only the hard limit stops it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stuck {}

impl Task for Stuck {
    const NAME: &'static str = "tests.stuck";
    const SOFT_TIME_LIMIT: Option<Duration> = Some(Duration::from_millis(100));
    const TIME_LIMIT: Option<Duration> = Some(Duration::from_millis(250));
    type Context = Ctx;
    type Output = ();
    async fn run(self, _ctx: TaskContext<Ctx>) -> Result<(), TaskError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Limited {}

impl Task for Limited {
    const NAME: &'static str = "tests.limited";
    const RATE_LIMIT: Option<&'static str> = Some("20/s");
    type Context = Ctx;
    type Output = ();
    async fn run(self, ctx: TaskContext<Ctx>) -> Result<(), TaskError> {
        ctx.app().runs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Appends its tag to the log.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub tag: String,
}

impl Task for Record {
    const NAME: &'static str = "tests.record";
    const ARGS: &'static [&'static str] = &["tag"];
    type Context = Ctx;
    type Output = String;
    async fn run(self, ctx: TaskContext<Ctx>) -> Result<String, TaskError> {
        ctx.app().log.lock().unwrap().push(self.tag.clone());
        Ok(self.tag)
    }
}

/// Same as the `test_worker` example's task, so a survivor can finish its work.
#[derive(Debug, Serialize, Deserialize)]
pub struct SlowAdd {
    pub a: i64,
    pub b: i64,
    pub ms: u64,
}

impl Task for SlowAdd {
    const NAME: &'static str = "tests.slow_add";
    const ARGS: &'static [&'static str] = &["a", "b", "ms"];
    type Context = Ctx;
    type Output = i64;
    async fn run(self, _ctx: TaskContext<Ctx>) -> Result<i64, TaskError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(self.a + self.b)
    }
}

/// Runs for `ms` whatever happens (no limits): something to see in `inspect active`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hold {
    pub ms: u64,
}

impl Task for Hold {
    const NAME: &'static str = "tests.hold";
    const ARGS: &'static [&'static str] = &["ms"];
    type Context = Ctx;
    type Output = u64;
    async fn run(self, _ctx: TaskContext<Ctx>) -> Result<u64, TaskError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(self.ms)
    }
}

/// The node name [`Env::worker`] gives its worker.
pub fn hostname(env: &Env) -> String {
    format!("test@{}", env.queue)
}

/// Waits until the worker answers a ping: it subscribes to the mailbox a
/// moment after it starts, and a broadcast before that reaches nobody.
pub async fn wait_ready(env: &Env) {
    use openthreat_queue::control::{Broadcast, Mailbox};
    let mailbox = Mailbox::new(env.fanout.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut b = Broadcast::new("ping");
        b.destination = Some(vec![hostname(env)]);
        b.timeout = Duration::from_millis(300);
        if !mailbox.broadcast(&b).await.unwrap().is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker never answered ping"
        );
    }
}

/// Sends task `name` to this env's queue; returns its id.
pub async fn send(env: &Env, name: &str, args: Vec<serde_json::Value>) -> String {
    env.producer
        .send_task(name, args, serde_json::Map::new(), env.send_opts())
        .await
        .unwrap()
        .id()
        .to_owned()
}

impl Env {
    /// Redis and Python's celery both present (else skipped, or a failure under CI).
    pub async fn redis_with_python() -> Option<Env> {
        if !python_available() {
            return None;
        }
        Env::redis().await
    }

    /// `python3` in `tests/python/`, configured for this env's Redis prefix.
    pub fn python(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("python3");
        c.current_dir(python_dir())
            .env("OTQ_URL", REDIS_URL)
            .env("OTQ_PREFIX", &self.prefix)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .kill_on_drop(true);
        c
    }

    /// Sends `n` `tests.record` tasks at once and returns how long it took
    /// until all had finished: what a rate limit stretches.
    pub async fn time_records(&self, n: usize) -> Duration {
        let t0 = std::time::Instant::now();
        let ids: Vec<String> = futures::future::join_all((0..n).map(|i| {
            send(
                self,
                "tests.record",
                vec![serde_json::json!(format!("r{i}"))],
            )
        }))
        .await;
        for id in &ids {
            self.final_meta(id).await;
        }
        t0.elapsed()
    }

    /// Waits (up to 30 s) for task `id` to reach a final state; its meta.
    pub async fn final_meta(&self, id: &str) -> openthreat_queue::TaskMeta {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(m) = self.backend.get(id).await.unwrap() {
                if m.status.is_ready() {
                    return m;
                }
            }
            assert!(std::time::Instant::now() < deadline, "no result for {id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
