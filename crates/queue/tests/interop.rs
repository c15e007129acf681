//! Interop with real Python Celery 5 on the same Redis, and at-least-once
//! delivery with a worker process killed by SIGKILL.
//!
//! Python runs as child processes (`tests/python/`), configured with kombu's
//! `global_keyprefix` equal to this test's prefix, so tests never collide.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Ctx, Env, Running};
use openthreat_queue::{Error, SendOptions};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(20);

/// Runs `client.py ARGS...` and parses its last output line.
async fn client(env: &Env, args: &[&str]) -> Value {
    let out = tokio::time::timeout(WAIT, env.python().arg("client.py").args(args).output())
        .await
        .expect("python client timed out")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no output from client.py {args:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(last).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_send_task_runs_on_our_worker_and_python_sees_the_result() {
    let Some(env) = Env::redis_with_python().await else {
        return;
    };
    let w = Running::start(env.worker(Ctx::default()).build());
    let q = env.queue.as_str();
    assert_eq!(
        client(&env, &["call", q, "tests.add", "[2, 3]"]).await,
        json!({"ok": 5})
    );
    // Failures arrive as the right Python exception types.
    let fail = client(&env, &["call", q, "tests.fail", "[\"bad id\"]"]).await;
    assert_eq!(fail["error"], "builtins.ValueError", "{fail}");
    assert!(fail["message"].as_str().unwrap().contains("bad id"));
    let stuck = client(&env, &["call", q, "tests.stuck", "[]"]).await;
    assert_eq!(
        stuck["error"], "billiard.exceptions.TimeLimitExceeded",
        "{stuck}"
    );
    let unknown = client(&env, &["call", q, "tests.not_here", "[]"]).await;
    assert_eq!(
        unknown["error"], "celery.exceptions.NotRegistered",
        "{unknown}"
    );
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn our_producer_to_python_worker() {
    let Some(env) = Env::redis_with_python().await else {
        return;
    };
    let mut worker = env
        .python()
        .args([
            "-m", "celery", "-A", "pyapp", "worker", "-Q", &env.queue, "-P", "solo", "-l",
            "WARNING",
        ])
        .args([
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            &format!("py@{}", env.queue),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let r = env
        .producer
        .send_task(
            "tests.py_add",
            vec![json!(2), json!(3)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(5));
    // Our ETA format is accepted by Celery.
    let opts = SendOptions {
        countdown: Some(Duration::from_millis(500)),
        ..env.send_opts()
    };
    let r = env
        .producer
        .send_task("tests.py_add", vec![json!(1)], kw(json!({"b": 1})), opts)
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(2));
    let r = env
        .producer
        .send_task(
            "tests.py_fail",
            vec![json!("k")],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    match r.get(WAIT).await {
        Err(Error::TaskFailed {
            exc_type,
            exc_module,
            ..
        }) => assert_eq!(
            (exc_type.as_str(), exc_module.as_str()),
            ("KeyError", "builtins")
        ),
        other => panic!("{other:?}"),
    }
    worker.kill().await.unwrap();

    // The result meta Python wrote has exactly the keys ours has.
    let python_meta = raw_meta(&env, r.id()).await;
    let w = Running::start(env.worker(Ctx::default()).build());
    let ours = env
        .producer
        .send_task("tests.fail", vec![json!("x")], Map::new(), env.send_opts())
        .await
        .unwrap();
    ours.get(WAIT).await.unwrap_err();
    w.stop().await;
    let our_meta = raw_meta(&env, ours.id()).await;
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&our_meta),
        keys(&python_meta),
        "{our_meta} vs {python_meta}"
    );
    assert_eq!(keys(&our_meta["result"]), keys(&python_meta["result"]));
    assert_eq!(our_meta["status"], python_meta["status"]);
    let date_len = |v: &Value| v["date_done"].as_str().unwrap().len();
    assert_eq!(
        date_len(&our_meta),
        date_len(&python_meta),
        "{our_meta} vs {python_meta}"
    );
    env.cleanup().await;
}

/// The stored `celery-task-meta-<id>` value, as JSON.
async fn raw_meta(env: &Env, id: &str) -> Value {
    let c = redis::Client::open(common::REDIS_URL).unwrap();
    let mut conn = c.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}celery-task-meta-{id}", env.prefix);
    let raw: String = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    serde_json::from_str(&raw).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_priorities_honoured_by_our_worker() {
    let Some(env) = Env::redis_with_python().await else {
        return;
    };
    let batch = json!([[["low"], 9], [["mid"], 6], [["high-1"], 0], [["high-2"], 0]]).to_string();
    client(&env, &["sendmany", &env.queue, "tests.record", &batch]).await;
    let ctx = Ctx::default();
    let w = Running::start(
        env.worker(ctx.clone())
            .concurrency(1)
            .prefetch_multiplier(1)
            .build(),
    );
    let deadline = Instant::now() + WAIT;
    while ctx.log().len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ctx.log(), vec!["high-1", "high-2", "mid", "low"]);
    w.stop().await;
    env.cleanup().await;
}

/// A Python consumer takes a message into kombu's `unacked` and dies; our
/// worker restores it after the visibility timeout and runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn our_worker_recovers_a_message_python_lost() {
    let Some(env) = Env::redis_with_python().await else {
        return;
    };
    let sent = client(&env, &["send", &env.queue, "tests.add", "[20, 1]", "0"]).await;
    let lost = client(&env, &["lose", &env.queue]).await;
    assert_eq!(lost["lost"], sent["id"]);
    assert_eq!(
        env.broker.queue_lengths(&env.queues()).await.unwrap()[0].1,
        0
    );
    let w = Running::start(env.worker(Ctx::default()).build());
    let r = env.producer.result(sent["id"].as_str().unwrap());
    assert_eq!(r.get(WAIT).await.unwrap(), json!(21));
    w.stop().await;
    env.cleanup().await;
}

/// We lease a message and "die"; kombu's own restore puts it back, with the
/// redelivered flag, and our worker then runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_restores_a_message_we_lost() {
    let Some(env) = Env::redis_with_python().await else {
        return;
    };
    let r = env
        .producer
        .send_task(
            "tests.add",
            vec![json!(5), json!(5)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    assert!(
        env.broker
            .fetch(&env.queues(), 1, Duration::from_secs(1))
            .await
            .unwrap()
            .len()
            == 1
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut restore = env.python();
    restore.env("OTQ_VT", "1").arg("client.py").arg("restore");
    let out = restore.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        env.broker.queue_lengths(&env.queues()).await.unwrap()[0].1,
        1
    );
    let d = env
        .broker
        .fetch(&env.queues(), 1, Duration::from_secs(1))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let m = openthreat_queue::message::Message::decode(d.raw.as_bytes()).unwrap();
    assert_eq!(m.headers.extra.get("redelivered"), Some(&json!(true)));
    env.broker.requeue(&d).await.unwrap();
    let w = Running::start(env.worker(Ctx::default()).build());
    assert_eq!(r.get(WAIT).await.unwrap(), json!(10));
    w.stop().await;
    env.cleanup().await;
}

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn test_worker_bin() -> std::path::PathBuf {
    // target/<profile>/deps/interop-xxxx → target/<profile>/examples/test_worker
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("test_worker")
}

/// Whether `bin` was built after the last change to this crate's sources.
fn example_is_fresh(bin: &std::path::Path) -> bool {
    fn newest(dir: &std::path::Path) -> Option<std::time::SystemTime> {
        let mut latest = None;
        for entry in std::fs::read_dir(dir).ok()? {
            let path = entry.ok()?.path();
            let t = if path.is_dir() {
                newest(&path)
            } else {
                std::fs::metadata(&path).and_then(|m| m.modified()).ok()
            };
            latest = latest.max(t);
        }
        latest
    }
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let sources = ["src", "examples"]
        .iter()
        .filter_map(|d| newest(&crate_dir.join(d)))
        .chain(
            std::fs::metadata(crate_dir.join("Cargo.toml"))
                .and_then(|m| m.modified())
                .ok(),
        )
        .max();
    sources.is_some_and(|s| built > s)
}

async fn spawn_test_worker(
    env: &Env,
    name: &str,
) -> (
    Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let bin = test_worker_bin();
    // `cargo test --test interop` does not build examples (plain `cargo test`
    // does), and a stale one would test old code: build it, once per run,
    // unless it is newer than every source file of this crate. Skipping a fresh
    // one matters: `cargo build -p` resolves features differently from a
    // workspace build and would recompile half the dependency tree in CI.
    static BUILT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let built = *BUILT.get_or_init(|| {
        if example_is_fresh(&bin) {
            return true;
        }
        let target = bin.parent().unwrap().parent().unwrap().parent().unwrap();
        std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args([
                "build",
                "-p",
                "openthreat-queue",
                "--example",
                "test_worker",
            ])
            .env("CARGO_TARGET_DIR", target)
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(built && bin.exists(), "could not build {}", bin.display());
    let mut child = Command::new(bin)
        .args([env.url.as_str(), env.queue.as_str(), name])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// At-least-once: a worker process killed with SIGKILL in the middle of a
/// batch loses nothing; every task completes on the surviving worker (in this
/// process, sharing the broker: on SQLite that is two processes on one file).
async fn killed_worker_loses_nothing(env: Env) {
    let (mut child, mut lines) = spawn_test_worker(&env, "victim").await;
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    const N: i64 = 2000;
    let mut handles = Vec::new();
    // The first tasks are slow so the victim is surely mid-task when killed.
    for i in 0..N {
        let ms = if i < 16 { 2000 } else { 0 };
        let args = vec![json!(i), json!(1), json!(ms)];
        handles.push((
            i,
            env.producer
                .send_task("tests.slow_add", args, Map::new(), env.send_opts())
                .await
                .unwrap(),
        ));
    }
    // Wait until the victim runs something, then kill it.
    let started = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.starts_with("started "), "{started}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let survivor = Running::start(
        env.worker(Ctx::default())
            .concurrency(32)
            .register::<common::SlowAdd>()
            .build(),
    );
    for (i, h) in handles {
        assert_eq!(h.get(WAIT).await.unwrap(), json!(i + 1), "task {i}");
    }
    survivor.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_worker_loses_nothing_redis() {
    if let Some(env) = Env::redis().await {
        killed_worker_loses_nothing(env).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_worker_loses_nothing_sqlite() {
    killed_worker_loses_nothing(Env::sqlite().await).await;
}

/// SIGTERM is a warm shutdown: the running task finishes before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_is_a_warm_shutdown() {
    // On SQLite, so this also shows a worker process and a producer process sharing one file.
    let env = Env::sqlite().await;
    let (mut child, mut lines) = spawn_test_worker(&env, "term").await;
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    let r = env
        .producer
        .send_task(
            "tests.slow_add",
            vec![json!(1), json!(2), json!(300)],
            Map::new(),
            env.send_opts(),
        )
        .await
        .unwrap();
    let started = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.starts_with("started "));
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        r.meta().await.unwrap().unwrap().result,
        json!(3),
        "finished before exit"
    );
    env.cleanup().await;
}

/// Two worker processes compete for one queue: every task runs, and no task
/// is claimed twice (the claim is atomic on both brokers).
async fn two_processes_share_a_queue(env: Env) {
    let (mut a, mut lines_a) = spawn_test_worker(&env, "a").await;
    let (mut b, mut lines_b) = spawn_test_worker(&env, "b").await;
    for lines in [&mut lines_a, &mut lines_b] {
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    }
    const N: i64 = 400;
    let mut handles = Vec::new();
    for i in 0..N {
        let args = vec![json!(i), json!(0), json!(1)];
        handles.push(
            env.producer
                .send_task("tests.slow_add", args, Map::new(), env.send_opts())
                .await
                .unwrap(),
        );
    }
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(h.get(WAIT).await.unwrap(), json!(i));
    }
    for child in [&mut a, &mut b] {
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap()
            .unwrap();
    }
    let mut started = std::collections::HashMap::<String, u32>::new();
    let mut per_worker = Vec::new();
    for mut lines in [lines_a, lines_b] {
        let mut n = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(id) = line.strip_prefix("started ") {
                *started.entry(id.to_owned()).or_default() += 1;
                n += 1;
            }
        }
        per_worker.push(n);
    }
    assert_eq!(started.len(), N as usize, "every task ran");
    assert!(started.values().all(|n| *n == 1), "a task ran twice");
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "both workers took work: {per_worker:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_share_a_queue_redis() {
    if let Some(env) = Env::redis().await {
        two_processes_share_a_queue(env).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_share_a_queue_sqlite() {
    two_processes_share_a_queue(Env::sqlite().await).await;
}
