//! Events and remote control of our worker, seen through our own client, on
//! both transports (Redis pub/sub in kombu's layout, SQLite tables).

mod common;

use std::time::Duration;

use common::{hostname, send, wait_ready, Ctx, Env, Running};
use openthreat_queue::control::{Broadcast, Envelope, EventReceiver, Mailbox, PIDBOX_EXCHANGE};
use openthreat_queue::State;
use serde_json::{json, Map, Value};

const WAIT: Duration = Duration::from_secs(10);

async fn envs() -> Vec<Env> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut v = vec![Env::sqlite().await];
    if let Some(r) = Env::redis().await {
        v.push(r);
    }
    v
}

async fn ask(env: &Env, method: &str, args: Value) -> Value {
    let mut b = Broadcast::new(method);
    b.arguments = args.as_object().cloned().unwrap_or_default();
    b.destination = Some(vec![hostname(env)]);
    b.timeout = Duration::from_secs(5);
    let replies = Mailbox::new(env.fanout.clone())
        .broadcast(&b)
        .await
        .unwrap();
    assert_eq!(replies.len(), 1, "{} {method}: {replies:?}", env.kind);
    assert_eq!(replies[0].0, hostname(env));
    replies[0].1.clone()
}

/// Waits for an event matching `pred`, returning it.
async fn event_where(rx: &mut EventReceiver, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = rx.next().await.expect("event stream ended");
            if pred(&ev) {
                return ev;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} event"))
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_describe_worker_and_task_lifecycles() {
    for env in envs().await {
        let kind = env.kind;
        let mut rx = EventReceiver::connect(env.fanout.as_ref()).await.unwrap();
        let w = Running::start(env.monitored_worker(Ctx::default()).build());
        wait_ready(&env).await;
        let me = hostname(&env);
        let online = event_where(&mut rx, "worker-online", |e| {
            e["type"] == "worker-online" && e["hostname"] == me.as_str()
        })
        .await;
        for field in [
            "freq",
            "active",
            "processed",
            "loadavg",
            "sw_ident",
            "sw_ver",
            "sw_sys",
            "clock",
            "timestamp",
            "utcoffset",
            "pid",
        ] {
            assert!(
                online.get(field).is_some(),
                "{kind}: worker-online lacks {field}: {online}"
            );
        }
        let hb = event_where(&mut rx, "heartbeat", |e| e["type"] == "worker-heartbeat").await;
        assert_eq!(hb["hostname"], me.as_str());

        let ok = send(&env, "tests.add", vec![json!(2), json!(3)]).await;
        let received = event_where(&mut rx, "task-received", |e| {
            e["type"] == "task-received" && e["uuid"] == ok.as_str()
        })
        .await;
        assert_eq!(received["name"], "tests.add", "{kind}");
        event_where(&mut rx, "task-started", |e| {
            e["type"] == "task-started" && e["uuid"] == ok.as_str()
        })
        .await;
        let done = event_where(&mut rx, "task-succeeded", |e| {
            e["type"] == "task-succeeded" && e["uuid"] == ok.as_str()
        })
        .await;
        assert_eq!(done["result"], "5", "{kind}");
        assert!(done["runtime"].as_f64().unwrap() >= 0.0);
        // Sent after: `event_where` skips what it is not waiting for.
        let bad = send(&env, "tests.fail", vec![json!("boom")]).await;
        let failed = event_where(&mut rx, "task-failed", |e| {
            e["type"] == "task-failed" && e["uuid"] == bad.as_str()
        })
        .await;
        assert!(
            failed["exception"].as_str().unwrap().contains("boom"),
            "{kind}: {failed}"
        );

        // disable_events silences task events; enable_events brings them back.
        assert_eq!(
            ask(&env, "disable_events", json!({})).await,
            json!({"ok": "task events disabled"})
        );
        let quiet = send(&env, "tests.add", vec![json!(1), json!(1)]).await;
        env.final_meta(&quiet).await;
        assert_eq!(
            ask(&env, "enable_events", json!({})).await,
            json!({"ok": "task events enabled"})
        );
        let loud = send(&env, "tests.add", vec![json!(1), json!(2)]).await;
        let first = event_where(&mut rx, "task event after enabling", |e| {
            e["type"].as_str().is_some_and(|t| t.starts_with("task-"))
        })
        .await;
        assert_eq!(
            first["uuid"],
            loud.as_str(),
            "{kind}: no events while disabled"
        );

        w.stop().await;
        event_where(&mut rx, "worker-offline", |e| {
            e["type"] == "worker-offline" && e["hostname"] == me.as_str()
        })
        .await;
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspect_reports_what_the_worker_holds() {
    for env in envs().await {
        let kind = env.kind;
        let w = Running::start(env.monitored_worker(Ctx::default()).build());
        wait_ready(&env).await;
        assert_eq!(ask(&env, "ping", json!({})).await, json!({"ok": "pong"}));
        let registered = ask(&env, "registered", json!({})).await;
        assert!(
            registered.as_array().unwrap().contains(&json!("tests.add")),
            "{kind}: {registered}"
        );

        let held = send(&env, "tests.hold", vec![json!(3000)]).await;
        until("task active", async || {
            w.state.snapshot().active.iter().any(|r| r.id == held)
        })
        .await;
        let active = ask(&env, "active", json!({})).await;
        assert_eq!(active[0]["id"], held.as_str(), "{kind}: {active}");
        assert_eq!(active[0]["name"], "tests.hold");
        assert_eq!(
            active[0]["delivery_info"]["routing_key"],
            env.queue.as_str()
        );
        assert!(active[0]["time_start"].as_f64().is_some());
        let q = ask(&env, "query_task", json!({"ids": [held]})).await;
        assert_eq!(q[&held][0], "active", "{kind}: {q}");

        let stats = ask(&env, "stats", json!({})).await;
        assert_eq!(stats["pool"]["max-concurrency"], 4, "{kind}: {stats}");
        assert_eq!(stats["pid"], std::process::id());
        assert_eq!(
            ask(&env, "pool_grow", json!({"n": 2})).await,
            json!({"ok": "pool will grow"})
        );
        assert_eq!(
            ask(&env, "stats", json!({})).await["pool"]["max-concurrency"],
            6
        );
        assert_eq!(
            ask(&env, "pool_shrink", json!({"n": 1})).await,
            json!({"ok": "pool will shrink"})
        );
        assert_eq!(
            ask(&env, "stats", json!({})).await["pool"]["max-concurrency"],
            5
        );

        let queues = ask(&env, "active_queues", json!({})).await;
        assert_eq!(queues[0]["name"], env.queue.as_str(), "{kind}: {queues}");
        assert!(ask(&env, "revoked", json!({}))
            .await
            .as_array()
            .unwrap()
            .is_empty());
        assert!(ask(&env, "conf", json!({})).await["worker_concurrency"].is_number());
        assert!(ask(&env, "report", json!({})).await["ok"]
            .as_str()
            .unwrap()
            .contains("openthreat"));

        // Unknown commands and bad arguments get an error reply, and the worker goes on.
        let unknown = ask(&env, "frobnicate", json!({})).await;
        assert!(
            unknown["error"].as_str().unwrap().contains("frobnicate"),
            "{unknown}"
        );
        let bad = ask(
            &env,
            "rate_limit",
            json!({"task_name": "tests.nope", "rate_limit": "1/s"}),
        )
        .await;
        assert!(
            bad["error"].as_str().unwrap().contains("unknown task"),
            "{bad}"
        );
        // Malformed control messages from strangers are ignored.
        for raw in [
            "not json",
            "{\"body\": 3}",
            &Envelope::new(json!([1, 2]), PIDBOX_EXCHANGE, "").encode(),
        ] {
            env.fanout.publish(PIDBOX_EXCHANGE, "", raw).await.unwrap();
        }
        assert_eq!(ask(&env, "ping", json!({})).await, json!({"ok": "pong"}));

        // A request for another node is not answered by this one.
        let mut other = Broadcast::new("ping");
        other.destination = Some(vec!["nobody@nowhere".into()]);
        other.timeout = Duration::from_millis(500);
        assert!(Mailbox::new(env.fanout.clone())
            .broadcast(&other)
            .await
            .unwrap()
            .is_empty());
        w.stop().await;
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_changes_the_running_worker() {
    for env in envs().await {
        let kind = env.kind;
        let ctx = Ctx::default();
        let w = Running::start(env.monitored_worker(ctx.clone()).build());
        wait_ready(&env).await;

        // revoke --terminate aborts a running task: REVOKED, and the worker lists it.
        let held = send(&env, "tests.hold", vec![json!(60_000)]).await;
        until("task active", async || {
            w.state.snapshot().active.iter().any(|r| r.id == held)
        })
        .await;
        let r = ask(&env, "revoke", json!({"task_id": held, "terminate": true})).await;
        assert!(r["ok"].as_str().unwrap().contains(&held), "{kind}: {r}");
        assert_eq!(env.final_meta(&held).await.status, State::Revoked, "{kind}");
        assert_eq!(ask(&env, "revoked", json!({})).await, json!([held]));
        // A plain revoke stops a task that has not arrived yet.
        let later = uuid::Uuid::new_v4().to_string();
        ask(&env, "revoke", json!({"task_id": later})).await;
        let mut opts = env.send_opts();
        opts.task_id = Some(later.clone());
        env.producer
            .send_task("tests.add", vec![json!(1), json!(1)], Map::new(), opts)
            .await
            .unwrap();
        assert_eq!(
            env.final_meta(&later).await.status,
            State::Revoked,
            "{kind}"
        );

        // rate_limit: 2/s spaces ten runs over more than 4 s; removing it lets them through.
        assert_eq!(
            ask(
                &env,
                "rate_limit",
                json!({"task_name": "tests.record", "rate_limit": "5/s"})
            )
            .await,
            json!({"ok": "new rate limit set successfully"})
        );
        let took = env.time_records(6).await;
        assert!(
            took >= Duration::from_millis(900),
            "{kind}: rate limit ignored ({took:?})"
        );

        // time_limit: a hard limit on a task that has none.
        assert_eq!(
            ask(
                &env,
                "time_limit",
                json!({"task_name": "tests.hold", "soft": 0.1, "hard": 0.2})
            )
            .await,
            json!({"ok": "time limits set successfully"})
        );
        let limited = send(&env, "tests.hold", vec![json!(5_000)]).await;
        let meta = env.final_meta(&limited).await;
        assert_eq!(meta.status, State::Failure, "{kind}");
        assert!(
            meta.result["exc_type"]
                .as_str()
                .unwrap()
                .contains("TimeLimitExceeded"),
            "{kind}: {:?}",
            meta.result
        );

        // add_consumer / cancel_consumer change what the worker reads.
        let extra = format!("{}-extra", env.queue);
        assert_eq!(
            ask(&env, "add_consumer", json!({"queue": extra})).await,
            json!({"ok": format!("add consumer {extra}")})
        );
        let mut opts = openthreat_queue::SendOptions::queue(extra.clone());
        opts.task_id = None;
        let on_extra = env
            .producer
            .send_task("tests.add", vec![json!(4), json!(4)], Map::new(), opts)
            .await
            .unwrap();
        assert_eq!(on_extra.get(WAIT).await.unwrap(), json!(8), "{kind}");
        let names: Vec<Value> = ask(&env, "active_queues", json!({}))
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].clone())
            .collect();
        assert!(names.contains(&json!(extra)), "{kind}: {names:?}");
        ask(&env, "cancel_consumer", json!({"queue": extra})).await;
        let names: Vec<Value> = ask(&env, "active_queues", json!({}))
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].clone())
            .collect();
        assert!(!names.contains(&json!(extra)), "{kind}: {names:?}");

        // shutdown: no reply, and the worker stops by itself.
        let mut b = Broadcast::new("shutdown");
        b.reply = false;
        b.destination = Some(vec![hostname(&env)]);
        Mailbox::new(env.fanout.clone())
            .broadcast(&b)
            .await
            .unwrap();
        until("worker stopped", async || w.is_finished()).await;
        w.stop().await;
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_producer_asked_to_sends_task_sent_events() {
    for env in envs().await {
        let mut rx = EventReceiver::connect(env.fanout.as_ref()).await.unwrap();
        let events =
            openthreat_queue::control::EventDispatcher::new(env.fanout.clone(), "gen@test", true);
        let producer = openthreat_queue::Producer::new(env.broker.clone(), env.backend.clone())
            .with_sent_events(events);
        let id = producer
            .send_task(
                "tests.add",
                vec![json!(1), json!(2)],
                Map::new(),
                env.send_opts(),
            )
            .await
            .unwrap()
            .id()
            .to_owned();
        let sent = event_where(&mut rx, "task-sent", |e| e["type"] == "task-sent").await;
        assert_eq!(sent["uuid"], id.as_str(), "{}", env.kind);
        assert_eq!(sent["name"], "tests.add");
        assert_eq!(sent["queue"], env.queue.as_str());
        assert_eq!(sent["hostname"], "gen@test");
        // The plain producer sends none.
        env.producer
            .send_task(
                "tests.add",
                vec![json!(1), json!(2)],
                Map::new(),
                env.send_opts(),
            )
            .await
            .unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(500), rx.next()).await;
        assert!(quiet.is_err(), "{}: unexpected event {quiet:?}", env.kind);
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_lengths_per_priority() {
    for env in envs().await {
        for (priority, n) in [(0u8, 2), (6, 3)] {
            for _ in 0..n {
                let mut opts = env.send_opts();
                opts.priority = Some(priority);
                env.producer
                    .send_task("tests.add", vec![json!(1), json!(1)], Map::new(), opts)
                    .await
                    .unwrap();
            }
        }
        let lengths = env.broker.priority_lengths(&env.queues()).await.unwrap();
        assert_eq!(
            lengths,
            vec![(env.queue.clone(), 0, 2), (env.queue.clone(), 6, 3)],
            "{}",
            env.kind
        );
        env.cleanup().await;
    }
}
