//! Our worker seen by the real Python tools on the same Redis: `celery
//! inspect`, `celery control`, `celery events --dump` and Flower; and our
//! `Mailbox` answered by a Python Celery worker.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{hostname, send, wait_ready, Ctx, Env, Running};
use openthreat_queue::control::{Broadcast, Mailbox};
use openthreat_queue::State;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);

/// `celery -A pyapp <args> --json`, parsed.
async fn celery_json(env: &Env, args: &[&str]) -> Value {
    let out = tokio::time::timeout(
        WAIT,
        env.python()
            .args(["-m", "celery", "-A", "pyapp"])
            .args(args)
            .args(["--json", "-t", "5", "-d", &hostname(env)])
            .output(),
    )
    .await
    .expect("celery CLI timed out")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{') || l.starts_with('['));
    match line {
        // `inspect` prints {node: reply}; `control` prints [{node: reply}, ...].
        Some(l) => match serde_json::from_str::<Value>(l).unwrap() {
            Value::Array(replies) => Value::Object(
                replies
                    .into_iter()
                    .filter_map(|r| r.as_object().cloned())
                    .flatten()
                    .collect(),
            ),
            v => v,
        },
        None => panic!(
            "celery {args:?} printed no JSON; stdout: {stdout}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn celery_inspect_and_control_see_our_worker() {
    let Some(env) = Env::redis_with_python().await else {
        return;
    };
    let w = Running::start(env.monitored_worker(Ctx::default()).build());
    wait_ready(&env).await;
    let me = hostname(&env);

    let ping = celery_json(&env, &["inspect", "ping"]).await;
    assert_eq!(ping, json!({me.clone(): {"ok": "pong"}}));
    let registered = celery_json(&env, &["inspect", "registered"]).await;
    assert!(
        registered[&me]
            .as_array()
            .unwrap()
            .contains(&json!("tests.add")),
        "{registered}"
    );
    let stats = celery_json(&env, &["inspect", "stats"]).await;
    assert_eq!(stats[&me]["pool"]["max-concurrency"], 4, "{stats}");

    let held = send(&env, "tests.hold", vec![json!(60_000)]).await;
    let deadline = Instant::now() + WAIT;
    while !w.state.snapshot().active.iter().any(|r| r.id == held) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let active = celery_json(&env, &["inspect", "active"]).await;
    assert_eq!(active[&me][0]["id"], held.as_str(), "{active}");
    let reserved = celery_json(&env, &["inspect", "reserved"]).await;
    assert_eq!(reserved[&me], json!([]), "{reserved}");
    let scheduled = celery_json(&env, &["inspect", "scheduled"]).await;
    assert_eq!(scheduled[&me], json!([]), "{scheduled}");

    // celery control terminate aborts the running task on our worker.
    let revoked = celery_json(&env, &["control", "terminate", "SIGTERM", &held]).await;
    assert!(
        revoked[&me]["ok"]
            .as_str()
            .unwrap_or_default()
            .contains(&held),
        "{revoked}"
    );
    assert_eq!(env.final_meta(&held).await.status, State::Revoked);
    // celery control revoke: a task revoked before it arrives never runs.
    let later = uuid::Uuid::new_v4().to_string();
    let r = celery_json(&env, &["control", "revoke", &later]).await;
    assert!(
        r[&me]["ok"].as_str().unwrap_or_default().contains(&later),
        "{r}"
    );
    let mut opts = env.send_opts();
    opts.task_id = Some(later.clone());
    env.producer
        .send_task("tests.add", vec![json!(1), json!(1)], Map::new(), opts)
        .await
        .unwrap();
    assert_eq!(env.final_meta(&later).await.status, State::Revoked);

    // celery control rate_limit takes effect: 2/s spaces 4 runs over > 1 s.
    let rl = celery_json(&env, &["control", "rate_limit", "tests.record", "2/s"]).await;
    assert_eq!(
        rl[&me],
        json!({"ok": "new rate limit set successfully"}),
        "{rl}"
    );
    let took = env.time_records(4).await;
    assert!(
        took >= Duration::from_millis(1400),
        "rate limit ignored: {took:?}"
    );

    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn celery_events_dump_prints_our_events() {
    let Some(env) = Env::redis_with_python().await else {
        return;
    };
    let mut dump = env
        .python()
        .args(["-m", "celery", "-A", "pyapp", "events", "--dump"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dump.stdout.take().unwrap()).lines();
    let w = Running::start(env.monitored_worker(Ctx::default()).build());
    wait_ready(&env).await;
    let me = hostname(&env);
    // The dumper subscribes some time after it starts: keep sending until it shows.
    let deadline = Instant::now() + WAIT;
    let mut seen_succeeded = false;
    let mut seen_heartbeat = false;
    while !(seen_succeeded && seen_heartbeat) {
        assert!(
            Instant::now() < deadline,
            "celery events --dump showed succeeded={seen_succeeded} heartbeat={seen_heartbeat}"
        );
        send(&env, "tests.add", vec![json!(20), json!(22)]).await;
        let until = Instant::now() + Duration::from_millis(700);
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout_at(until.into(), lines.next_line()).await
        {
            if !line.starts_with(&me) {
                continue;
            }
            seen_succeeded |= line.contains("task succeeded")
                && line.contains("tests.add")
                && line.contains("42");
            seen_heartbeat |= line.contains("heartbeat");
        }
    }
    w.stop().await;
    let _ = dump.kill().await;
    env.cleanup().await;
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_json(env: &Env, url: &str) -> Value {
    let out = env
        .python()
        .args(["client.py", "http", url])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or(json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flower_shows_our_worker_and_task_states() {
    let Some(env) = Env::redis_with_python().await else {
        return;
    };
    let port = free_port();
    let _flower = env
        .python()
        .args([
            "-m",
            "celery",
            "-A",
            "pyapp",
            "flower",
            &format!("--port={port}"),
            "--address=127.0.0.1",
        ])
        .env("FLOWER_UNAUTHENTICATED_API", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w = Running::start(env.monitored_worker(Ctx::default()).build());
    wait_ready(&env).await;
    let me = hostname(&env);
    let base = format!("http://127.0.0.1:{port}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let workers = loop {
        let v = http_json(&env, &format!("{base}/api/workers?refresh=1")).await;
        if v.get(&me).is_some_and(|w| w.get("stats").is_some()) {
            break v;
        }
        assert!(Instant::now() < deadline, "Flower never listed {me}: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        workers[&me]["stats"]["pool"]["max-concurrency"], 4,
        "{workers}"
    );
    assert!(workers[&me]["registered"]
        .as_array()
        .unwrap()
        .contains(&json!("tests.add")));

    // Flower learns tasks from events only: it has been listening since it started.
    let ok = send(&env, "tests.add", vec![json!(1), json!(2)]).await;
    let bad = send(&env, "tests.fail", vec![json!("nope")]).await;
    env.final_meta(&ok).await;
    env.final_meta(&bad).await;
    loop {
        let tasks = http_json(&env, &format!("{base}/api/tasks")).await;
        let state = |id: &str| {
            tasks
                .get(id)
                .and_then(|t| t["state"].as_str())
                .map(str::to_owned)
        };
        if state(&ok).as_deref() == Some("SUCCESS") && state(&bad).as_deref() == Some("FAILURE") {
            assert_eq!(tasks[&ok]["name"], "tests.add");
            assert_eq!(tasks[&ok]["worker"], me.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "Flower task states: {tasks}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    w.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn our_mailbox_reaches_a_python_worker() {
    let Some(env) = Env::redis_with_python().await else {
        return;
    };
    let py = format!("py@{}", env.queue);
    let _worker = env
        .python()
        .args([
            "-m", "celery", "-A", "pyapp", "worker", "-Q", &env.queue, "-P", "solo", "-l",
            "WARNING",
        ])
        .args(["--without-gossip", "--without-mingle", "-n", &py])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mailbox = Mailbox::new(env.fanout.clone());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut b = Broadcast::new("ping");
        b.destination = Some(vec![py.clone()]);
        b.timeout = Duration::from_secs(1);
        let replies = mailbox.broadcast(&b).await.unwrap();
        if !replies.is_empty() {
            assert_eq!(replies, vec![(py.clone(), json!({"ok": "pong"}))]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Python worker never answered ping"
        );
    }
    let mut b = Broadcast::new("registered");
    b.destination = Some(vec![py.clone()]);
    b.timeout = Duration::from_secs(5);
    let replies = mailbox.broadcast(&b).await.unwrap();
    assert!(
        replies[0]
            .1
            .as_array()
            .unwrap()
            .contains(&json!("tests.py_add")),
        "{replies:?}"
    );
    env.cleanup().await;
}
