//! The monitor against event dicts as Celery emits them, with a real local
//! HTTP server as the alert webhook.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use futures::channel::mpsc::{unbounded, UnboundedSender};
use openthreat::config::Secret;
use openthreat::monitor::view::{dump_line, render, Dumper};
use openthreat::monitor::{
    check_beat, missed_beat, AlertConfig, ClusterState, Monitor, MonitorConfig, MonitorHandle,
    StateConfig, TaskState, WorkerStatus,
};
use openthreat_queue::beat::{BeatStore, Crontab, Entry, MemoryBeatStore};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const T0: f64 = 1_764_100_000.0;

// ---------------------------------------------------------------- events

/// The fields every Celery event carries.
fn event(kind: &str, hostname: &str, ts: f64, extra: Value) -> Value {
    let mut e = json!({
        "type": kind,
        "hostname": hostname,
        "timestamp": ts,
        "utcoffset": 0,
        "pid": 4242,
        "clock": 17,
    });
    if let (Some(e), Some(extra)) = (e.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            e.insert(k.clone(), v.clone());
        }
    }
    e
}

fn worker_online(host: &str, ts: f64, freq: f64) -> Value {
    event(
        "worker-online",
        host,
        ts,
        json!({"freq": freq, "sw_ident": "py-celery", "sw_ver": "5.5.3", "sw_sys": "Linux"}),
    )
}

fn heartbeat(host: &str, ts: f64, freq: f64, active: u64, processed: u64) -> Value {
    event(
        "worker-heartbeat",
        host,
        ts,
        json!({"freq": freq, "active": active, "processed": processed,
               "loadavg": [0.52, 0.4, 0.31], "sw_ident": "py-celery",
               "sw_ver": "5.5.3", "sw_sys": "Linux"}),
    )
}

fn received(host: &str, ts: f64, uuid: &str, name: &str) -> Value {
    event(
        "task-received",
        host,
        ts,
        json!({"uuid": uuid, "name": name, "args": "('CVE-2024-3094',)", "kwargs": "{}",
               "root_id": uuid, "parent_id": null, "retries": 0, "eta": null, "expires": null}),
    )
}

fn started(host: &str, ts: f64, uuid: &str) -> Value {
    event("task-started", host, ts, json!({"uuid": uuid}))
}

fn succeeded(host: &str, ts: f64, uuid: &str, runtime: f64) -> Value {
    event(
        "task-succeeded",
        host,
        ts,
        json!({"uuid": uuid, "result": "{'status': 'ok'}", "runtime": runtime}),
    )
}

fn failed(host: &str, ts: f64, uuid: &str, exc: &str) -> Value {
    event(
        "task-failed",
        host,
        ts,
        json!({"uuid": uuid, "exception": exc,
               "traceback": format!("Traceback (most recent call last):\n  File \"tasks.py\", line 1\n{exc}\n")}),
    )
}

fn retried(host: &str, ts: f64, uuid: &str, exc: &str) -> Value {
    event(
        "task-retried",
        host,
        ts,
        json!({"uuid": uuid, "exception": exc, "traceback": "Traceback ...\n"}),
    )
}

// ---------------------------------------------------------------- state

#[test]
fn state_follows_workers_and_tasks_through_a_realistic_sequence() {
    let mut s = ClusterState::new(StateConfig {
        heartbeat_slack: Duration::from_secs(1),
        ..Default::default()
    });
    let a = "celery@worker-a";
    let b = "celery@worker-b";
    s.apply_at(&worker_online(a, T0, 2.0), T0);
    s.apply_at(&worker_online(b, T0, 2.0), T0);
    // a: one LLM task that succeeds, one that retries then fails for good.
    s.apply_at(
        &received(a, T0 + 0.1, "u1", "tasks.process_cve_with_llm"),
        T0 + 0.1,
    );
    s.apply_at(&started(a, T0 + 0.2, "u1"), T0 + 0.2);
    s.apply_at(&heartbeat(a, T0 + 2.0, 2.0, 1, 10), T0 + 2.0);
    s.apply_at(&heartbeat(b, T0 + 2.0, 2.0, 0, 3), T0 + 2.0);
    s.apply_at(&succeeded(a, T0 + 2.5, "u1", 2.3), T0 + 2.5);
    s.apply_at(
        &received(a, T0 + 3.0, "u2", "backend.tasks.update_stats_cache_task"),
        T0 + 3.0,
    );
    s.apply_at(&started(a, T0 + 3.1, "u2"), T0 + 3.1);
    s.apply_at(
        &retried(a, T0 + 3.2, "u2", "ConnectionError('db')"),
        T0 + 3.2,
    );
    let mut again = received(a, T0 + 3.5, "u2", "backend.tasks.update_stats_cache_task");
    again["retries"] = json!(1);
    s.apply_at(&again, T0 + 3.5);
    s.apply_at(&started(a, T0 + 3.6, "u2"), T0 + 3.6);
    s.apply_at(
        &failed(a, T0 + 3.7, "u2", "ConnectionError('db')"),
        T0 + 3.7,
    );
    s.apply_at(&heartbeat(a, T0 + 4.0, 2.0, 0, 12), T0 + 4.0);
    // b leaves cleanly.
    s.apply_at(
        &event("worker-offline", b, T0 + 4.5, json!({"freq": 2.0})),
        T0 + 4.5,
    );

    let u1 = s.task("u1").unwrap();
    assert_eq!(u1.state, TaskState::Success);
    assert_eq!(u1.name.as_deref(), Some("tasks.process_cve_with_llm"));
    assert_eq!(u1.runtime, Some(2.3));
    assert_eq!(u1.received_at, Some(T0 + 0.1));
    assert_eq!(u1.finished_at, Some(T0 + 2.5));
    let u2 = s.task("u2").unwrap();
    assert_eq!(u2.state, TaskState::Failure);
    assert_eq!(u2.retries, 1);
    assert_eq!(u2.exception.as_deref(), Some("ConnectionError('db')"));
    assert!(u2.traceback.as_deref().unwrap().starts_with("Traceback"));

    let snap = s.snapshot(T0 + 5.0, 10);
    let wa = snap.workers.iter().find(|w| w.hostname == a).unwrap();
    assert_eq!(wa.status, WorkerStatus::Online);
    assert_eq!(wa.processed, Some(12));
    assert_eq!(wa.active, Some(0));
    assert_eq!(wa.loadavg, Some(vec![0.52, 0.4, 0.31]));
    assert_eq!(wa.sw_ident.as_deref(), Some("py-celery"));
    let wb = snap.workers.iter().find(|w| w.hostname == b).unwrap();
    assert_eq!(wb.status, WorkerStatus::Offline);
    assert_eq!(snap.workers_online(), 1);
    assert_eq!(snap.task_count, 3, "three task-received events");
    assert_eq!(snap.latest_tasks[0].uuid, "u2", "most recent first");
    assert_eq!(snap.latest_failures.len(), 1);
    assert_eq!(
        snap.latest_failures[0].name,
        "backend.tasks.update_stats_cache_task"
    );
    assert_eq!(snap.tasks_by_state.get("SUCCESS"), Some(&1));
    assert_eq!(snap.tasks_by_state.get("FAILURE"), Some(&1));
    // Two tasks finished, one each, over the 5 s since the first: 0.2/s each.
    assert_eq!(snap.tasks_per_second.len(), 2);
    for (_, rate) in &snap.tasks_per_second {
        assert!(
            (rate - 1.0 / (T0 + 5.0 - (T0 + 2.5))).abs() < 1e-9,
            "{rate}"
        );
    }

    // a's last heartbeat was at T0+4 with freq 2: alive until T0+4+4+1.
    assert_eq!(s.worker(a, T0 + 8.9).unwrap().status, WorkerStatus::Online);
    assert!(s.check_lost(T0 + 8.9).is_empty());
    assert_eq!(s.worker(a, T0 + 9.1).unwrap().status, WorkerStatus::Lost);
    let lost = s.check_lost(T0 + 9.1);
    assert_eq!(lost.len(), 1, "b left cleanly, only a is lost");
    assert_eq!(lost[0].hostname, a);
    assert!(
        s.check_lost(T0 + 20.0).is_empty(),
        "a loss is reported once"
    );
    // It comes back.
    s.apply_at(&heartbeat(a, T0 + 30.0, 2.0, 0, 12), T0 + 30.0);
    assert_eq!(s.worker(a, T0 + 30.0).unwrap().status, WorkerStatus::Online);
    // After the window, no rate is left.
    assert!(s.tasks_per_second(T0 + 200.0).is_empty());
}

#[test]
fn malformed_and_foreign_events_are_counted_not_fatal() {
    let mut s = ClusterState::default();
    let bad = [
        json!("worker-online"),
        json!(null),
        json!([1, 2]),
        json!({"hostname": "h", "timestamp": T0}),
        json!({"type": 7, "hostname": "h", "timestamp": T0}),
        json!({"type": "worker-online", "hostname": 5, "timestamp": T0}),
        json!({"type": "worker-online", "hostname": "h", "timestamp": "yesterday"}),
        json!({"type": "worker-online", "hostname": "h"}),
        json!({"type": "task-failed", "hostname": "h", "timestamp": T0}),
        json!({"type": "task-failed", "hostname": "h", "timestamp": T0, "uuid": 12}),
        json!({"type": "flower-something", "hostname": "h", "timestamp": T0}),
        json!({"type": "task-custom-state", "hostname": "h", "timestamp": T0, "uuid": "x"}),
        json!({"type": "worker-dance", "hostname": "h", "timestamp": T0}),
    ];
    for e in &bad {
        s.apply_at(e, T0);
    }
    // Wrong types in optional fields are dropped, the event still counts.
    s.apply_at(
        &json!({"type": "worker-heartbeat", "hostname": "h", "timestamp": T0,
                "freq": "fast", "active": -1, "loadavg": "high", "processed": 3.5}),
        T0,
    );
    let total: u64 = s.ignored().values().sum();
    assert_eq!(total, bad.len() as u64, "{:?}", s.ignored());
    assert_eq!(s.ignored().get("unknown event type"), Some(&3));
    assert_eq!(s.task_len(), 0);
    let h = s.worker("h", T0).unwrap();
    assert_eq!(h.freq, 60.0, "Celery's default when freq is unusable");
    assert_eq!(h.active, None);
    assert_eq!(s.event_count(), bad.len() as u64 + 1);
}

#[test]
fn a_task_seen_only_after_it_was_received_is_named_unknown() {
    let mut s = ClusterState::default();
    s.apply_at(&failed("celery@a", T0, "lonely", "KeyError('x')"), T0);
    let snap = s.snapshot(T0, 5);
    assert_eq!(snap.latest_failures[0].name, "unknown");
    assert_eq!(snap.tasks_per_second[0].0, "unknown");
}

// ---------------------------------------------------------------- metrics

#[test]
fn metrics_count_task_events_and_runtimes() {
    let registry = prometheus::Registry::new();
    let monitor = Monitor::new(MonitorConfig::default(), Some(&registry)).unwrap();
    let now = openthreat::monitor::unix_now();
    let a = "celery@a";
    monitor.handle_event(&worker_online(a, now, 2.0), now);
    monitor.handle_event(&heartbeat(a, now, 2.0, 3, 7), now);
    for i in 0..5 {
        let u = format!("ok{i}");
        monitor.handle_event(&received(a, now, &u, "tasks.process_cve_with_llm"), now);
        monitor.handle_event(&started(a, now, &u), now);
        monitor.handle_event(&succeeded(a, now, &u, 0.5 + f64::from(i)), now);
    }
    monitor.handle_event(&received(a, now, "bad", "tasks.process_cve_with_llm"), now);
    monitor.handle_event(&retried(a, now, "bad", "Timeout()"), now);
    monitor.handle_event(&failed(a, now, "bad", "Timeout()"), now);
    monitor.handle_event(&json!({"type": "worker-heartbeat"}), now);

    let text = gather(&registry);
    for line in [
        r#"celery_tasks_total{name="tasks.process_cve_with_llm",state="received"} 6"#,
        r#"celery_tasks_total{name="tasks.process_cve_with_llm",state="started"} 5"#,
        r#"celery_tasks_total{name="tasks.process_cve_with_llm",state="succeeded"} 5"#,
        r#"celery_tasks_total{name="tasks.process_cve_with_llm",state="retried"} 1"#,
        r#"celery_tasks_total{name="tasks.process_cve_with_llm",state="failed"} 1"#,
        r#"celery_task_runtime_seconds_count{name="tasks.process_cve_with_llm"} 5"#,
        r#"celery_task_runtime_seconds_sum{name="tasks.process_cve_with_llm"} 12.5"#,
        "celery_workers_online 1",
        r#"celery_worker_tasks_active{hostname="celery@a"} 3"#,
        r#"celery_events_ignored_total{reason="missing or bad hostname"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }

    // Offline: the gauge drops and the worker's series goes away.
    monitor.handle_event(&event("worker-offline", a, now, json!({})), now);
    let text = gather(&registry);
    assert!(text.contains("celery_workers_online 0"), "{text}");
    assert!(!text.contains("celery_worker_tasks_active{"), "{text}");
}

fn gather(registry: &prometheus::Registry) -> String {
    let mut buf = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut buf,
    )
    .unwrap();
    String::from_utf8(buf).unwrap()
}

// ---------------------------------------------------------------- webhook

/// A webhook that records what it gets and answers from a script of statuses
/// (200 once the script is used up).
#[derive(Clone, Default)]
struct Hook {
    bodies: Arc<Mutex<Vec<Value>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl Hook {
    async fn start(script: &[u16]) -> (Hook, String) {
        let hook = Hook::default();
        hook.script.lock().unwrap().extend(script.iter().copied());
        let app = Router::new()
            .route("/hook/{token}", post(receive))
            .with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (
            hook,
            format!("http://{addr}/hook/s3cret-token?key=s3cret-key"),
        )
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        while self.bodies().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.bodies()
    }
}

async fn receive(State(hook): State<Hook>, Json(body): Json<Value>) -> StatusCode {
    hook.bodies.lock().unwrap().push(body);
    let status = hook.script.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

fn fast_alerts(webhook: &str) -> AlertConfig {
    AlertConfig {
        webhook: Some(Secret::new(webhook)),
        min_interval: Duration::from_millis(400),
        batch_delay: Duration::from_millis(150),
        dedup_window: Duration::from_secs(60),
        retries: 3,
        retry_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
    }
}

/// Fast alerts, a 50 ms tick and a small heartbeat slack, for lost-worker tests.
fn watching_heartbeats(webhook: &str, slack_ms: u64) -> MonitorConfig {
    MonitorConfig {
        alerts: fast_alerts(webhook),
        state: StateConfig {
            heartbeat_slack: Duration::from_millis(slack_ms),
            ..Default::default()
        },
        tick: Duration::from_millis(50),
        ..Default::default()
    }
}

struct Running {
    tx: UnboundedSender<Value>,
    handle: MonitorHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(config: MonitorConfig) -> Running {
        let monitor = Monitor::new(config, None).unwrap();
        let handle = monitor.handle();
        let (tx, rx) = unbounded();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(monitor.run(rx, shutdown.clone()));
        Running {
            tx,
            handle,
            shutdown,
            task,
        }
    }

    fn send(&self, e: Value) {
        self.tx.unbounded_send(e).unwrap();
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

fn now() -> f64 {
    openthreat::monitor::unix_now()
}

#[tokio::test]
async fn a_final_failure_is_posted_once_with_the_alert_fields() {
    let (hook, url) = Hook::start(&[]).await;
    let run = Running::start(MonitorConfig {
        alerts: fast_alerts(&url),
        ..Default::default()
    });
    let a = "celery@worker-a";
    run.send(received(a, now(), "f1", "tasks.process_cve_with_llm"));
    run.send(started(a, now(), "f1"));
    run.send(failed(
        a,
        now(),
        "f1",
        "OllamaUnavailable('connection refused')",
    ));
    let bodies = hook.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let bodies_after = hook.bodies();
    assert_eq!(bodies_after.len(), 1, "{bodies_after:#?}");
    let b = &bodies[0];
    assert_eq!(b["alert"], "task_failed");
    assert_eq!(b["source"], "openthreat");
    assert_eq!(b["count"], 1);
    let summary = b["summary"].as_str().unwrap();
    assert!(summary.contains("tasks.process_cve_with_llm"), "{summary}");
    assert!(summary.contains("OllamaUnavailable"), "{summary}");
    assert!(b["first_at"].as_str().unwrap().ends_with('Z'));
    assert!(b["last_at"].is_string());
    let latest = &b["details"]["by_key"][0]["latest"];
    assert_eq!(latest["uuid"], "f1");
    assert_eq!(latest["hostname"], a);
    assert!(latest["traceback"].as_str().unwrap().contains("Traceback"));
    run.stop().await;
}

#[tokio::test]
async fn a_retried_task_and_a_clean_offline_are_not_alerts() {
    let (hook, url) = Hook::start(&[]).await;
    let run = Running::start(watching_heartbeats(&url, 50));
    let a = "celery@worker-a";
    run.send(worker_online(a, now(), 0.2));
    run.send(heartbeat(a, now(), 0.2, 1, 0));
    run.send(received(a, now(), "r1", "tasks.process_cve_with_llm"));
    run.send(started(a, now(), "r1"));
    run.send(retried(a, now(), "r1", "Timeout('ollama')"));
    run.send(event("worker-offline", a, now(), json!({"freq": 0.2})));
    // Well past the heartbeat expiry (0.45 s) and the batch delay.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(hook.bodies().is_empty(), "{:#?}", hook.bodies());
    let snap = run.handle.snapshot();
    assert_eq!(snap.workers[0].status, WorkerStatus::Offline);
    run.stop().await;
}

#[tokio::test]
async fn a_storm_of_failures_becomes_one_summary() {
    let (hook, url) = Hook::start(&[]).await;
    let run = Running::start(MonitorConfig {
        alerts: fast_alerts(&url),
        ..Default::default()
    });
    let a = "celery@worker-a";
    for i in 0..1000 {
        let name = if i % 100 < 99 {
            "tasks.process_cve_with_llm"
        } else {
            "backend.tasks.update_stats_cache_task"
        };
        let u = format!("storm-{i}");
        run.send(received(a, now(), &u, name));
        run.send(failed(a, now(), &u, "OllamaUnavailable()"));
    }
    hook.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let bodies = hook.bodies();
    assert!((1..=2).contains(&bodies.len()), "{} POSTs", bodies.len());
    let total: u64 = bodies.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 1000);
    let first = &bodies[0];
    if bodies.len() == 1 {
        assert_eq!(
            first["summary"],
            "1000 tasks failed: tasks.process_cve_with_llm ×990, backend.tasks.update_stats_cache_task ×10"
        );
    }
    assert!(bodies.iter().all(|b| b["alert"] == "task_failed"));
    assert_eq!(run.handle.snapshot().latest_failures.len(), 50, "bounded");
    run.stop().await;
}

#[tokio::test]
async fn a_worker_that_stops_heartbeating_is_reported_lost_once() {
    let (hook, url) = Hook::start(&[]).await;
    let run = Running::start(watching_heartbeats(&url, 100));
    let a = "celery@worker-a";
    let b = "celery@worker-b";
    run.send(worker_online(a, now(), 0.2));
    run.send(worker_online(b, now(), 0.2));
    // b keeps beating; a goes silent after its first heartbeat.
    run.send(heartbeat(a, now(), 0.2, 2, 5));
    for _ in 0..12 {
        run.send(heartbeat(b, now(), 0.2, 0, 0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a was lost ~0.5 s after its heartbeat, while b was still beating.
    let bodies = hook.wait_for(1, Duration::from_secs(3)).await;
    let body = &bodies[0];
    assert_eq!(body["alert"], "worker_lost");
    assert_eq!(body["count"], 1);
    assert!(body["summary"].as_str().unwrap().contains(a), "{body}");
    assert_eq!(body["details"]["by_key"][0]["key"], a);
    assert_eq!(body["details"]["by_key"][0]["latest"]["active"], 2);
    // Now b goes silent too; a is not reported again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bodies = hook.bodies();
    let keys: Vec<&Value> = bodies
        .iter()
        .flat_map(|b| b["details"]["by_key"].as_array().unwrap())
        .map(|k| &k["key"])
        .collect();
    assert_eq!(keys, [a, b], "{bodies:#?}");
    let snap = run.handle.snapshot();
    assert!(snap.workers.iter().all(|w| w.status == WorkerStatus::Lost));
    assert_eq!(snap.workers_online(), 0);
    run.stop().await;
}

#[tokio::test]
async fn a_webhook_answering_500_is_retried_and_delivered_once() {
    let (hook, url) = Hook::start(&[500, 503]).await;
    let run = Running::start(MonitorConfig {
        alerts: fast_alerts(&url),
        ..Default::default()
    });
    run.send(received("celery@a", now(), "x1", "tasks.get_llm_stats"));
    run.send(failed("celery@a", now(), "x1", "ValueError('boom')"));
    let bodies = hook.wait_for(3, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hook.bodies().len(), 3, "500, 503, then 200");
    assert_eq!(bodies[0], bodies[2], "the same alert each time");
    assert!(hook.script.lock().unwrap().is_empty());
    run.stop().await;
}

#[tokio::test]
async fn a_slow_webhook_does_not_hold_up_the_event_loop() {
    // Nothing listens on this port: every POST fails and is retried.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut alerts = fast_alerts(&format!("http://{dead}/hook/s3cret"));
    alerts.retry_backoff = Duration::from_secs(2);
    let run = Running::start(MonitorConfig {
        alerts,
        ..Default::default()
    });
    for i in 0..200 {
        run.send(failed("celery@a", now(), &format!("s{i}"), "E()"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while run.handle.snapshot().latest_failures.len() < 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events not consumed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(run.handle.snapshot().event_count, 200);
    run.shutdown.cancel();
    // close() waits at most 5 s for the sender.
    tokio::time::timeout(Duration::from_secs(8), run.task)
        .await
        .unwrap()
        .unwrap();
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_webhook_token_never_reaches_logs_or_debug() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // One webhook that fails with 500 then works, one nobody listens on
    // (reqwest's connection error names the URL).
    let (hook, url) = Hook::start(&[500]).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead_url = format!("http://user:s3cret-pw@{dead}/hook/s3cret-token?key=s3cret-key");
    for url in [url.clone(), dead_url] {
        let mut alerts = fast_alerts(&url);
        alerts.retries = 1;
        let config = MonitorConfig {
            alerts,
            ..Default::default()
        };
        let debug = format!("{config:?}");
        let monitor = Monitor::new(config, None).unwrap();
        let debug = format!("{debug} {monitor:?} {:?}", monitor.handle());
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("/***"), "{debug}");
        monitor.handle_event(&failed("celery@a", now(), "t1", "E()"), now());
        let (_tx, rx) = unbounded::<Value>();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(monitor.run(rx, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(700)).await;
        shutdown.cancel();
        run.await.unwrap();
    }
    assert_eq!(hook.bodies().len(), 2, "500 then 200");

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("alert webhook failed"), "{text}");
    assert!(text.contains("alert sent"), "{text}");
    assert!(text.contains("giving up"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

// ---------------------------------------------------------------- beat

fn every_five_minutes() -> Entry {
    Entry::new(
        "process-new-cves",
        "tasks.process_new_cves",
        Crontab::parse("*/5 * * * *").unwrap().into(),
    )
}

#[test]
fn a_beat_slot_is_missed_only_when_due_while_watched_and_unclaimed() {
    let e = every_five_minutes();
    let at = |h, m, s| Utc.with_ymd_and_hms(2026, 11, 25, h, m, s).unwrap();
    let grace = Duration::from_secs(60);
    let since = at(12, 0, 30);
    // 12:06:30: slot 12:05 is due (grace passed); claimed → fine.
    assert_eq!(
        missed_beat(&e, Some(at(12, 5, 0)), since, at(12, 6, 30), grace),
        None
    );
    // Not claimed: missed.
    let m = missed_beat(&e, Some(at(12, 0, 0)), since, at(12, 6, 30), grace).unwrap();
    assert_eq!(m.entry, "process-new-cves");
    assert_eq!(m.task, "tasks.process_new_cves");
    assert_eq!(m.due_at, at(12, 5, 0));
    assert_eq!(m.last_run_at, Some(at(12, 0, 0)));
    // Within grace (12:05:30): not yet.
    assert_eq!(
        missed_beat(&e, Some(at(12, 0, 0)), since, at(12, 5, 30), grace),
        None
    );
    // A slot due before we started watching is not ours to report.
    assert_eq!(
        missed_beat(&e, None, at(12, 5, 10), at(12, 6, 30), grace),
        None
    );
    // Never run at all, and a slot came due while watching: missed.
    assert!(missed_beat(&e, None, since, at(12, 6, 30), grace).is_some());
    // Disabled entries never miss.
    let mut off = every_five_minutes();
    off.enabled = false;
    assert_eq!(missed_beat(&off, None, since, at(12, 6, 30), grace), None);
}

#[tokio::test]
async fn beat_checks_read_the_store_and_report_each_missed_slot_once() {
    let (hook, url) = Hook::start(&[]).await;
    let store = MemoryBeatStore::new();
    let at = |h, m, s| Utc.with_ymd_and_hms(2026, 11, 25, h, m, s).unwrap();
    let good = Entry::new(
        "update-stats-cache",
        "backend.tasks.update_stats_cache_task",
        Crontab::parse("*/15 * * * *").unwrap().into(),
    );
    store
        .claim("update-stats-cache", at(12, 0, 0), "beat-1")
        .await
        .unwrap();
    store
        .claim("process-new-cves", at(11, 55, 0), "beat-1")
        .await
        .unwrap();
    let entries = vec![every_five_minutes(), good];
    let since = at(11, 50, 0);
    let missed = check_beat(
        &entries,
        &store,
        since,
        at(12, 2, 0),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].entry, "process-new-cves");
    assert_eq!(missed[0].due_at, at(12, 0, 0));

    let monitor = Monitor::new(
        MonitorConfig {
            alerts: fast_alerts(&url),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let handle = monitor.handle();
    assert_eq!(handle.report_missed_beats(&missed, at(12, 2, 0)), 1);
    assert_eq!(
        handle.report_missed_beats(&missed, at(12, 3, 0)),
        0,
        "same slot"
    );
    let bodies = hook.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["alert"], "beat_missed");
    assert_eq!(
        bodies[0]["details"]["by_key"][0]["latest"]["entry"],
        "process-new-cves"
    );
    assert_eq!(
        bodies[0]["details"]["by_key"][0]["latest"]["due_at"],
        "2026-11-25T12:00:00.000Z"
    );
}

// ---------------------------------------------------------------- view

#[test]
fn render_shows_workers_rates_tasks_and_failures_within_the_screen() {
    let mut s = ClusterState::default();
    let a = "celery@worker-a";
    s.apply_at(&worker_online(a, T0, 2.0), T0);
    s.apply_at(&heartbeat(a, T0 + 1.0, 2.0, 2, 40), T0 + 1.0);
    s.apply_at(
        &received(a, T0 + 1.0, "v1", "tasks.process_cve_with_llm"),
        T0 + 1.0,
    );
    s.apply_at(&succeeded(a, T0 + 2.0, "v1", 1.25), T0 + 2.0);
    s.apply_at(
        &received(a, T0 + 2.0, "v2", "backend.tasks.clean_cache_task"),
        T0 + 2.0,
    );
    s.apply_at(
        &failed(a, T0 + 3.0, "v2", "OSError('disk \x1b[2J full')"),
        T0 + 3.0,
    );
    let snap = s.snapshot(T0 + 3.0, 20);
    let out = render(&snap, 160, 40);
    for needle in [
        "celery@worker-a",
        "ONLINE",
        "tasks.process_cve_with_llm",
        "backend.tasks.clean_cache_task",
        "WORKERS",
        "TASKS PER SECOND",
        "LATEST TASKS",
        "LATEST FAILURES",
        "0.52 0.40 0.31",
        "SUCCESS",
        "FAILURE",
        "1.25s",
    ] {
        assert!(out.contains(needle), "{needle} missing in\n{out}");
    }
    assert!(
        !out.contains('\x1b'),
        "terminal escapes are neutralised:\n{out}"
    );
    assert!(out.contains("\\x1b[2J"), "{out}");

    let small = render(&snap, 30, 9);
    assert!(small.lines().count() <= 9, "{small}");
    assert!(small.lines().all(|l| l.chars().count() <= 30), "{small}");
    assert!(small.contains("WORKERS"), "{small}");
    assert!(render(&snap, 80, 0).trim().is_empty());
}

#[test]
fn dump_lines_follow_celery_events_dump() {
    let ts = 1_764_100_000.5;
    let online = event(
        "worker-online",
        "celery@a",
        ts,
        json!({"freq": 2.0, "sw_ident": "py-celery"}),
    );
    assert_eq!(
        dump_line(&online),
        "celery@a [2025-11-25 19:46:40.500000+00:00] started: clock=17, freq=2.0, pid=4242, sw_ident=py-celery, utcoffset=0"
    );
    let hb = heartbeat("celery@a", 1_764_100_000.0, 2.0, 1, 3);
    assert_eq!(
        dump_line(&hb),
        "celery@a [2025-11-25 19:46:40+00:00] heartbeat: active=1, clock=17, freq=2.0, loadavg=[0.52, 0.4, 0.31], pid=4242, processed=3, sw_ident=py-celery, sw_sys=Linux, sw_ver=5.5.3, utcoffset=0"
    );

    let mut d = Dumper::new();
    let r = received("celery@a", ts, "d1", "tasks.process_cve_with_llm");
    assert_eq!(
        d.line(&r),
        "celery@a [2025-11-25 19:46:40.500000+00:00] task received: tasks.process_cve_with_llm(d1) args=('CVE-2024-3094',) kwargs={} clock=17, eta=None, expires=None, parent_id=None, pid=4242, retries=0, root_id=d1, utcoffset=0"
    );
    assert_eq!(
        d.line(&succeeded("celery@a", ts, "d1", 0.25)),
        "celery@a [2025-11-25 19:46:40.500000+00:00] task succeeded: tasks.process_cve_with_llm(d1) args=('CVE-2024-3094',) kwargs={} clock=17, pid=4242, result={'status': 'ok'}, runtime=0.25, utcoffset=0"
    );
    // Without memory, the task part is empty, as in Celery for unknown uuids.
    assert_eq!(
        dump_line(&started("celery@a", ts, "d1")),
        "celery@a [2025-11-25 19:46:40.500000+00:00] task started:  clock=17, pid=4242, utcoffset=0"
    );
    // One event, one line.
    let f = dump_line(&failed("celery@a", ts, "d1", "E()"));
    assert!(!f.contains('\n') && f.contains("\\n"), "{f}");
    assert!(dump_line(&json!(42)).starts_with("-> unreadable event"));
}

#[tokio::test]
async fn run_view_dumps_lines_or_draws_the_view_until_the_stream_ends() {
    let ts = 1_764_100_000.0;
    let events = vec![
        worker_online("celery@a", ts, 2.0),
        received("celery@a", ts, "e1", "tasks.process_new_cves"),
        succeeded("celery@a", ts + 1.0, "e1", 0.5),
    ];
    let mut out = Vec::new();
    openthreat::cli::events::run_view(futures::stream::iter(events.clone()), true, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "-> evdump: starting capture...");
    assert!(lines[1].starts_with("celery@a [2025-11-25 19:46:40+00:00] started: "));
    assert!(
        lines[3].contains("task succeeded: tasks.process_new_cves(e1)"),
        "{text}"
    );

    let mut out = Vec::new();
    openthreat::cli::events::run_view(futures::stream::iter(events), false, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let last_frame = text.rsplit("\x1b[H\x1b[2J").next().unwrap();
    assert!(last_frame.contains("celery@a"), "{text}");
    assert!(last_frame.contains("tasks.process_new_cves"), "{text}");
}
