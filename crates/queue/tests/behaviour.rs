//! One behavioural suite, run against both brokers: every `async fn` below
//! takes an [`Env`] and is instantiated twice by `both!` (Redis, SQLite).
//!
//! Time is real but short: the test tasks declare millisecond limits and
//! backoffs, so nothing here sleeps for long.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Ctx, Env, Running};
use openthreat_queue::{Error, SendOptions, State};
use serde_json::{json, Map, Value};

const WAIT: Duration = Duration::from_secs(10);

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn redis() {
                if let Some(env) = super::Env::redis().await {
                    super::$name(&env).await;
                    env.cleanup().await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(&super::Env::sqlite().await).await;
            }
        }
    )*};
}

both!(
    roundtrip,
    failure_has_python_exception,
    panic_is_a_failure,
    retries_then_succeeds,
    retries_exhausted,
    soft_time_limit_cancels,
    hard_time_limit_aborts,
    rate_limit_spaces_runs,
    eta_beyond_visibility_timeout_runs_once,
    expired_is_revoked,
    revoked_is_not_run,
    priorities_honoured,
    bad_input_is_dead_lettered,
    purge_and_lengths,
    lost_message_is_redelivered,
    warm_shutdown_finishes_running_task,
    warm_shutdown_requeues_after_timeout,
);

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn roundtrip(env: &Env) {
    let ctx = Ctx::default();
    let w = Running::start(env.worker(ctx.clone()).build());
    let r = env
        .producer
        .send_task(
            "tests.add",
            vec![json!(2), json!(3)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(5));
    // Mixed positional + keyword, like Python's add.delay(1, b=2).
    let r = env
        .producer
        .send_task(
            "tests.add",
            vec![json!(1)],
            kw(json!({"b": 2})),
            env.send_opts(),
        )
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(3));
    // Typed.
    let r = env
        .producer
        .enqueue(&common::Add { a: 20, b: 22 }, env.send_opts())
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(42));
    let meta = r.meta().await.unwrap().unwrap();
    assert_eq!(meta.status, State::Success);
    assert!(meta.date_done.is_some());
    assert_eq!(w.state.snapshot().processed.get("tests.add"), Some(&3));
    w.stop().await;
}

async fn failure_has_python_exception(env: &Env) {
    let w = Running::start(env.worker(Ctx::default()).build());
    let r = env
        .producer
        .send_task(
            "tests.fail",
            vec![json!("bad id")],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    match r.get(WAIT).await {
        Err(Error::TaskFailed {
            state,
            exc_type,
            exc_module,
            exc_message,
            ..
        }) => {
            assert_eq!(
                (state.as_str(), exc_type.as_str(), exc_module.as_str()),
                ("FAILURE", "ValueError", "builtins")
            );
            assert_eq!(exc_message, "bad id");
        }
        other => panic!("expected failure, got {other:?}"),
    }
    w.stop().await;
}

async fn panic_is_a_failure(env: &Env) {
    let w = Running::start(env.worker(Ctx::default()).build());
    let r = env
        .producer
        .send_task("tests.panic", vec![], Map::new(), env.send_opts())
        .await
        .unwrap();
    let err = r.get(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed { exc_type, exc_message, .. }
        if exc_type == "RuntimeError" && exc_message.contains("boom")),
        "{err:?}"
    );
    // The worker is still alive.
    let r = env
        .producer
        .send_task(
            "tests.add",
            vec![json!(1), json!(1)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(2));
    w.stop().await;
}

async fn retries_then_succeeds(env: &Env) {
    let ctx = Ctx::default();
    let w = Running::start(env.worker(ctx.clone()).build());
    let r = env
        .producer
        .send_task("tests.flaky", vec![json!(3)], Map::new(), env.send_opts())
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(3));
    // Same task id each time, retries counted up in the message.
    assert_eq!(
        ctx.log(),
        vec!["try 1 retries=0", "try 2 retries=1", "try 3 retries=2"]
    );
    w.stop().await;
}

async fn retries_exhausted(env: &Env) {
    let ctx = Ctx::default();
    let w = Running::start(env.worker(ctx.clone()).build());
    let r = env
        .producer
        .send_task("tests.always_retry", vec![], Map::new(), env.send_opts())
        .await
        .unwrap();
    let err = r.get(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed { exc_type, .. } if exc_type == "KeyError"),
        "{err:?}"
    );
    assert_eq!(
        ctx.runs.load(Ordering::SeqCst),
        3,
        "first run + MAX_RETRIES (2)"
    );
    w.stop().await;
}

async fn soft_time_limit_cancels(env: &Env) {
    let w = Running::start(env.worker(Ctx::default()).build());
    let t = Instant::now();
    let r = env
        .producer
        .send_task(
            "tests.sleepy",
            vec![json!(10_000)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!("cancelled"));
    assert!(t.elapsed() < Duration::from_secs(5));
    // A per-call soft limit (Celery's timelimit header) wins over the task's.
    let opts = SendOptions {
        soft_time_limit: Some(Duration::from_millis(50)),
        ..env.send_opts()
    };
    let r = env
        .producer
        .send_task("tests.sleepy", vec![json!(250)], Map::new(), opts)
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!("cancelled"));
    w.stop().await;
}

async fn hard_time_limit_aborts(env: &Env) {
    let w = Running::start(env.worker(Ctx::default()).build());
    let r = env
        .producer
        .send_task("tests.stuck", vec![], Map::new(), env.send_opts())
        .await
        .unwrap();
    let err = r.get(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed { exc_type, exc_module, .. }
        if exc_type == "TimeLimitExceeded" && exc_module == "billiard.exceptions"),
        "{err:?}"
    );
    // The request leaves the active list right after its result is stored.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !w.state.snapshot().active.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(w.state.snapshot().active.is_empty());
    w.stop().await;
}

async fn rate_limit_spaces_runs(env: &Env) {
    let w = Running::start(env.worker(Ctx::default()).concurrency(6).build());
    let t = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..6 {
        handles.push(
            env.producer
                .send_task("tests.limited", vec![], Map::new(), env.send_opts())
                .await
                .unwrap(),
        );
    }
    for h in handles {
        h.get(WAIT).await.unwrap();
    }
    // "20/s": one token per 50 ms, so six runs span at least 250 ms.
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    w.stop().await;
}

/// kombu#337: an ETA beyond the visibility timeout must not make the task run twice.
async fn eta_beyond_visibility_timeout_runs_once(env: &Env) {
    let ctx = Ctx::default();
    let w1 = Running::start(env.worker(ctx.clone()).build());
    let w2 = Running::start(env.worker(ctx.clone()).hostname("second").build());
    let t = Instant::now();
    let opts = SendOptions {
        countdown: Some(common::VT * 2),
        ..env.send_opts()
    };
    let r = env
        .producer
        .send_task("tests.add", vec![json!(1), json!(2)], Map::new(), opts)
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(3));
    assert!(
        t.elapsed() >= common::VT * 2 - Duration::from_millis(50),
        "ran early: {:?}",
        t.elapsed()
    );
    tokio::time::sleep(common::VT + Duration::from_millis(300)).await;
    assert_eq!(ctx.runs.load(Ordering::SeqCst), 1, "ran more than once");
    w1.stop().await;
    w2.stop().await;
}

async fn expired_is_revoked(env: &Env) {
    let ctx = Ctx::default();
    let opts = SendOptions {
        expires: Some(Duration::from_millis(1)),
        ..env.send_opts()
    };
    let r = env
        .producer
        .send_task("tests.add", vec![json!(1), json!(2)], Map::new(), opts)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let w = Running::start(env.worker(ctx.clone()).build());
    let err = r.get(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed { state, .. } if state == "REVOKED"),
        "{err:?}"
    );
    assert_eq!(ctx.runs.load(Ordering::SeqCst), 0);
    w.stop().await;
}

async fn revoked_is_not_run(env: &Env) {
    let ctx = Ctx::default();
    let w = Running::start(env.worker(ctx.clone()).build());
    let id = uuid::Uuid::new_v4().to_string();
    w.state.revoke(&id);
    let opts = SendOptions {
        task_id: Some(id.clone()),
        ..env.send_opts()
    };
    let r = env
        .producer
        .send_task("tests.add", vec![json!(1), json!(2)], Map::new(), opts)
        .await
        .unwrap();
    let err = r.get(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed { state, .. } if state == "REVOKED"),
        "{err:?}"
    );
    assert_eq!(ctx.runs.load(Ordering::SeqCst), 0);
    assert!(w.state.snapshot().revoked.contains(&id));
    w.stop().await;
}

async fn priorities_honoured(env: &Env) {
    let ctx = Ctx::default();
    for (tag, pri) in [
        ("low-1", 9),
        ("low-2", 9),
        ("mid", 5),
        ("high-1", 0),
        ("high-2", 0),
    ] {
        let opts = SendOptions {
            priority: Some(pri),
            ..env.send_opts()
        };
        env.producer
            .send_task("tests.record", vec![json!(tag)], Map::new(), opts)
            .await
            .unwrap();
    }
    let w = Running::start(
        env.worker(ctx.clone())
            .concurrency(1)
            .prefetch_multiplier(1)
            .build(),
    );
    let deadline = Instant::now() + WAIT;
    while ctx.log().len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ctx.log(), vec!["high-1", "high-2", "mid", "low-1", "low-2"]);
    w.stop().await;
}

async fn bad_input_is_dead_lettered(env: &Env) {
    let w = Running::start(env.worker(Ctx::default()).build());
    let unknown = env
        .producer
        .send_task("tests.nope", vec![], Map::new(), env.send_opts())
        .await
        .unwrap();
    let err = unknown.get(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed { exc_type, .. } if exc_type == "NotRegistered"),
        "{err:?}"
    );
    let wrong = env
        .producer
        .send_task(
            "tests.add",
            vec![json!("x"), json!(1)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    let err = wrong.get(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed { exc_type, .. } if exc_type == "TypeError"),
        "{err:?}"
    );
    let too_many = env.producer.send_task(
        "tests.add",
        vec![json!(1), json!(1), json!(1)],
        Map::new(),
        env.send_opts(),
    );
    too_many.await.unwrap().get(WAIT).await.unwrap_err();
    // The worker carried on.
    let ok = env
        .producer
        .send_task(
            "tests.add",
            vec![json!(1), json!(1)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    assert_eq!(ok.get(WAIT).await.unwrap(), json!(2));
    let dead = env.broker.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead
        .iter()
        .any(|d| d.reason.contains("unknown task \"tests.nope\"")));
    assert!(dead.iter().all(|d| d.queue == env.queue));
    // Purging the queue leaves dead letters alone; only an explicit purge removes them.
    env.broker.purge(&env.queue).await.unwrap();
    assert_eq!(env.broker.dead_letters(10).await.unwrap().len(), 3);
    assert_eq!(env.broker.purge_dead_letters().await.unwrap(), 3);
    assert!(env.broker.dead_letters(10).await.unwrap().is_empty());
    w.stop().await;
}

async fn purge_and_lengths(env: &Env) {
    let other = format!("{}-other", env.queue);
    for pri in [0, 4, 9] {
        let opts = SendOptions {
            priority: Some(pri),
            ..env.send_opts()
        };
        env.producer
            .send_task("tests.add", vec![json!(1), json!(1)], Map::new(), opts)
            .await
            .unwrap();
    }
    env.producer
        .send_task("tests.add", vec![], Map::new(), SendOptions::queue(&other))
        .await
        .unwrap();
    let lengths = env
        .broker
        .queue_lengths(&[env.queue.clone(), other.clone()])
        .await
        .unwrap();
    assert_eq!(lengths, vec![(env.queue.clone(), 3), (other.clone(), 1)]);
    assert_eq!(env.broker.purge(&env.queue).await.unwrap(), 3);
    let lengths = env
        .broker
        .queue_lengths(&[env.queue.clone(), other.clone()])
        .await
        .unwrap();
    assert_eq!(lengths, vec![(env.queue.clone(), 0), (other.clone(), 1)]);
    env.broker.purge(&other).await.unwrap();
}

/// A consumer that leases a message and vanishes: after the visibility
/// timeout the worker's housekeeping makes it visible again and runs it.
async fn lost_message_is_redelivered(env: &Env) {
    let ctx = Ctx::default();
    let r = env
        .producer
        .send_task(
            "tests.add",
            vec![json!(4), json!(4)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    let lost = env
        .broker
        .fetch(&env.queues(), 1, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(lost.len(), 1);
    let t = Instant::now();
    let w = Running::start(env.worker(ctx.clone()).build());
    assert_eq!(r.get(WAIT).await.unwrap(), json!(8));
    assert!(
        t.elapsed() >= common::VT - Duration::from_millis(100),
        "redelivered before the visibility timeout"
    );
    w.stop().await;
}

async fn warm_shutdown_finishes_running_task(env: &Env) {
    let ctx = Ctx::default();
    let w = Running::start(env.worker(ctx.clone()).build());
    let r = env
        .producer
        .send_task(
            "tests.sleepy",
            vec![json!(250)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while ctx.log().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w.state.snapshot().active.len(), 1);
    w.stop().await;
    assert_eq!(r.meta().await.unwrap().unwrap().result, json!("slept"));
}

async fn warm_shutdown_requeues_after_timeout(env: &Env) {
    let ctx = Ctx::default();
    let w = Running::start(
        env.worker(ctx.clone())
            .shutdown_timeout(Duration::from_millis(50))
            .build(),
    );
    let r = env
        .producer
        .send_task(
            "tests.sleepy",
            vec![json!(5_000)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while ctx.log().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.stop().await;
    assert_eq!(r.state().await.unwrap(), State::Pending);
    assert_eq!(
        env.broker.queue_lengths(&env.queues()).await.unwrap()[0].1,
        1,
        "requeued"
    );
    // And a new worker picks it up (the soft limit ends it early).
    let w = Running::start(env.worker(ctx.clone()).build());
    assert_eq!(r.get(WAIT).await.unwrap(), json!("cancelled"));
    w.stop().await;
}

/// Writes `raw` straight into the broker's storage for this env's queue,
/// bypassing our encoder: what a buggy or hostile producer could leave there.
async fn inject_raw(env: &Env, raw: &str) {
    match env.kind {
        "redis" => {
            let c = redis::Client::open(common::REDIS_URL).unwrap();
            let mut conn = c.get_multiplexed_async_connection().await.unwrap();
            let key = format!("{}{}", env.prefix, env.queue);
            let _: i64 = redis::cmd("LPUSH")
                .arg(key)
                .arg(raw)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        _ => {
            let url = env.url.split('?').next().unwrap();
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query(
                "INSERT INTO queue_messages (queue, priority, payload, visible_at) VALUES (?, 0, ?, 0)",
            )
            .bind(&env.queue)
            .bind(raw)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
}

both!(
    undecodable_messages_are_dead_lettered,
    track_started_shows_started
);

async fn track_started_shows_started(env: &Env) {
    let ctx = Ctx::default();
    let w = Running::start(env.worker(ctx.clone()).track_started(true).build());
    let r = env
        .producer
        .send_task(
            "tests.sleepy",
            vec![json!(200)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while r.state().await.unwrap() == State::Pending && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let meta = r.meta().await.unwrap().unwrap();
    assert_eq!(meta.status, State::Started);
    assert_eq!(
        meta.result["hostname"],
        json!(format!("test@{}", env.queue))
    );
    assert_eq!(meta.date_done, None);
    assert_eq!(r.get(WAIT).await.unwrap(), json!("slept"));
    w.stop().await;
}

async fn undecodable_messages_are_dead_lettered(env: &Env) {
    let good =
        openthreat_queue::message::Message::new("tests.add", "x", vec![], Map::new(), &env.queue)
            .encode();
    let pickled = good.replace("application/json", "application/x-python-serialize");
    let bad_body = {
        let mut v: Value = serde_json::from_str(&good).unwrap();
        v["body"] = json!("!!! not base64 !!!");
        v.to_string()
    };
    for raw in [
        "not json at all",
        "{\"body\": 1}",
        pickled.as_str(),
        bad_body.as_str(),
    ] {
        inject_raw(env, raw).await;
    }
    let w = Running::start(env.worker(Ctx::default()).build());
    let deadline = Instant::now() + WAIT;
    while env.broker.dead_letters(10).await.unwrap().len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = env.broker.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert!(dead
        .iter()
        .any(|d| d.payload == "not json at all" && d.reason.contains("bad envelope")));
    assert!(dead.iter().any(|d| d.reason.contains("JSON only")));
    assert!(dead.iter().any(|d| d.reason.contains("base64")));
    // Nothing left behind (not even in kombu's unacked hash), and the worker still works.
    assert_eq!(
        env.broker.queue_lengths(&env.queues()).await.unwrap()[0].1,
        0
    );
    if env.kind == "redis" {
        let c = redis::Client::open(common::REDIS_URL).unwrap();
        let mut conn = c.get_multiplexed_async_connection().await.unwrap();
        let key = format!("{}unacked", env.prefix);
        let n: i64 = redis::cmd("HLEN")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    let r = env
        .producer
        .send_task(
            "tests.add",
            vec![json!(1), json!(2)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(3));
    w.stop().await;
}
