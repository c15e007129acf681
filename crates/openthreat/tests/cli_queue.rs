//! The queue commands as an operator uses them, across processes: a worker
//! (or `run`) in one process, `call`, `purge` and `beat` in others, on the
//! embedded SQLite queue and on Redis.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{openthreat, text};

const NO_OLLAMA: (&str, &str) = ("OLLAMA_HOST", "http://127.0.0.1:9");

/// Starts `openthreat ARGS` in the background with a clean environment.
fn spawn(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openthreat"));
    cmd.current_dir(dir)
        .env_clear()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn openthreat")
}

/// A minimal HTTP/1.1 GET, so the test needs no HTTP client crate.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the API");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Sends SIGTERM and waits; returns the exit code and everything printed.
fn terminate(mut child: Child) -> (Option<i32>, String) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let _ = status;
            return (out.status.code(), text(&out));
        }
        assert!(
            Instant::now() < deadline,
            "process did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn call_wait(dir: &Path, env: &[(&str, &str)], message: &str) -> serde_json::Value {
    let args = format!("[\"{message}\"]");
    let out = openthreat(
        dir,
        env,
        &[
            "call",
            "backend.tasks.test_task",
            "--args",
            &args,
            "--wait",
            "--timeout",
            "20",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn round_trip_through_a_worker_process(env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let worker = spawn(dir.path(), env, &["worker", "-c", "2"]);
    let result = call_wait(dir.path(), env, "hello from the CLI");
    assert_eq!(result["message"], "hello from the CLI");
    assert_eq!(result["status"], "success");

    // Arguments of the wrong shape: the task fails with Python's TypeError and the worker lives on.
    let bad = openthreat(
        dir.path(),
        env,
        &[
            "call",
            "backend.tasks.test_task",
            "--args",
            "[1,2,3]",
            "--wait",
            "--timeout",
            "20",
        ],
    );
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("TypeError"), "{}", text(&bad));
    assert_eq!(
        call_wait(dir.path(), env, "still alive")["message"],
        "still alive"
    );

    let (code, output) = terminate(worker);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("worker stopped"), "{output}");

    // The refused message was set aside where an operator can inspect it,
    // and a plain purge leaves it there.
    let queued = openthreat(
        dir.path(),
        env,
        &["call", "backend.tasks.test_task", "--args", "[\"waiting\"]"],
    );
    assert!(queued.status.success(), "{}", text(&queued));
    let shown = openthreat(dir.path(), env, &["queues", "--json"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let report: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(report["queues"][0]["queue"], "celery");
    assert_eq!(report["queues"][0]["waiting"], 1);
    let dead = report["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{report}");
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("bad arguments"),
        "{report}"
    );
    assert!(
        dead[0]["payload"]
            .as_str()
            .unwrap()
            .contains("backend.tasks.test_task"),
        "{report}"
    );

    let purged = openthreat(dir.path(), env, &["purge", "--force"]);
    assert!(
        text(&purged).contains("purged 1 message(s) from celery"),
        "{}",
        text(&purged)
    );
    let shown = openthreat(dir.path(), env, &["queues"]);
    assert!(
        text(&shown).contains("0 waiting") && text(&shown).contains("bad arguments"),
        "{}",
        text(&shown)
    );
    let purged = openthreat(dir.path(), env, &["purge", "--force", "--dead-letters"]);
    assert!(
        text(&purged).contains("purged 1 dead letter(s)"),
        "{}",
        text(&purged)
    );
    assert!(text(&openthreat(dir.path(), env, &["queues"])).contains("no dead letters"));
}

#[test]
fn call_reaches_a_worker_in_another_process_on_the_embedded_queue() {
    round_trip_through_a_worker_process(&[NO_OLLAMA]);
}

#[test]
fn call_reaches_a_worker_in_another_process_on_redis() {
    if !support::redis_up() {
        support::unavailable("Redis", "127.0.0.1:6379 refused the connection");
        return;
    }
    let prefix = format!("ot-cli-test-{}-{:?}:", std::process::id(), Instant::now());
    let prefix: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == ':')
        .collect();
    let url = format!("redis://127.0.0.1:6379/0?global_keyprefix={prefix}");
    round_trip_through_a_worker_process(&[("REDIS_URL", &url), NO_OLLAMA]);
}

#[test]
fn call_rejects_malformed_arguments_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let out = openthreat(
        dir.path(),
        &[NO_OLLAMA],
        &["call", "backend.tasks.test_task", "--args", "{not json"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("--args must be a JSON array"),
        "{}",
        text(&out)
    );
    let out = openthreat(dir.path(), &[NO_OLLAMA], &["call", "x", "--priority", "12"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn purge_asks_first_and_keeps_messages_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let out = openthreat(
            dir.path(),
            &[NO_OLLAMA],
            &[
                "call",
                "backend.tasks.test_task",
                "--args",
                &format!("[\"m{i}\"]"),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let mut refused = Command::new(env!("CARGO_BIN_EXE_openthreat"));
    refused
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .args(["purge"]);
    let mut child = refused
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("Delete 3 waiting message(s)"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("Nothing purged"), "{}", text(&out));

    let out = openthreat(dir.path(), &[NO_OLLAMA], &["purge", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("purged 3 message(s) from celery"),
        "{}",
        text(&out)
    );
    let again = openthreat(dir.path(), &[NO_OLLAMA], &["purge", "--force"]);
    assert!(
        text(&again).contains("purged 0 message(s)"),
        "{}",
        text(&again)
    );
}

#[test]
fn beat_list_shows_the_timetable_and_a_bad_file_names_entry_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = openthreat(dir.path(), &[NO_OLLAMA], &["beat", "--list"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("update-stats-cache") && t.contains("every 15 minutes"),
        "{t}"
    );
    assert!(
        t.contains("clean-cache") && t.contains("at 03:00 every day"),
        "{t}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[schedule.ok]\ntask = \"backend.tasks.test_task\"\nevery = \"5s\"\n\n[schedule.broken]\ntask = \"backend.tasks.test_task\"\ncron = \"61 * * * *\"\n").unwrap();
    let out = openthreat(
        dir.path(),
        &[NO_OLLAMA],
        &["beat", "--list", "--schedule", bad.to_str().unwrap()],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("line 7") && t.contains("broken"), "{t}");
}

/// `openthreat run` with one worker slot, a beat entry running the test task
/// every second and the API on a free port. Returns the process, its stdout
/// (keep it open: `run` must never write to a closed pipe), the start-up
/// lines and the API's address.
fn start_run_ticking(
    dir: &Path,
    env: &[(&str, &str)],
) -> (Child, BufReader<std::process::ChildStdout>, String, String) {
    let schedule = dir.join("schedule.toml");
    std::fs::write(
        &schedule,
        "[schedule.tick]\ntask = \"backend.tasks.test_task\"\nargs = [\"tick\"]\nevery = \"1s\"\n",
    )
    .unwrap();
    let mut child = spawn(
        dir,
        env,
        &[
            "run",
            "-c",
            "1",
            "--bind",
            "127.0.0.1:0",
            "--schedule",
            schedule.to_str().unwrap(),
        ],
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    for _ in 0..8 {
        stdout.read_line(&mut banner).unwrap();
    }
    let addr = banner
        .lines()
        .find_map(|l| l.strip_prefix("  http     : http://"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no http line in {banner}"))
        .to_string();
    (child, stdout, banner, addr)
}

#[test]
fn run_starts_worker_and_beat_in_one_process_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _stdout, banner, addr) = start_run_ticking(
        dir.path(),
        &[NO_OLLAMA, ("RUST_LOG", "openthreat_queue=info")],
    );
    // The start-up lines say what the process uses.
    assert!(
        banner.contains("database : sqlite://data/openthreat.db"),
        "{banner}"
    );
    assert!(
        banner.contains("broker   : sqlite://data/queue.db"),
        "{banner}"
    );
    assert!(
        banner.contains("llm      :") && banner.contains("unreachable"),
        "{banner}"
    );
    assert!(banner.contains("beat     : 1 entries"), "{banner}");

    // The HTTP API runs in the same process and answers on the address it printed.
    let health = http_get(&addr, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"database\""), "{health}");

    // Wait until the beat has fired and the worker has run at least two ticks.
    // The reader keeps draining stderr afterwards so the process never sees a closed pipe.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut succeeded = 0;
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if line.contains("succeeded") && line.contains("backend.tasks.test_task") {
                succeeded += 1;
                let _ = tx.send(succeeded);
            }
        }
    });
    let mut ticks = 0;
    while ticks < 2 {
        ticks = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("two ticks within 30 s");
    }
    let (code, _) = terminate(child);
    assert_eq!(code, Some(0));
}

/// `openthreat inspect`, `control` and `events` in one terminal see the
/// worker of `openthreat run` in another, on the embedded SQLite queue.
#[test]
fn inspect_control_and_events_reach_run_in_another_process_on_the_embedded_queue() {
    let dir = tempfile::tempdir().unwrap();
    let env = [NO_OLLAMA];
    let (run, run_out, _, addr) = start_run_ticking(dir.path(), &env);

    // The worker answers once it has subscribed to the mailbox.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pong = loop {
        let out = openthreat(dir.path(), &env, &["inspect", "ping", "--json"]);
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        assert_eq!(out.status.code(), Some(69), "{}", text(&out));
        assert!(
            Instant::now() < deadline,
            "no worker answered: {}",
            text(&out)
        );
    };
    let (node, reply) = pong.as_object().unwrap().iter().next().unwrap();
    assert_eq!(reply, &serde_json::json!({"ok": "pong"}));
    assert!(node.starts_with("celery@"), "{node}");

    let registered = openthreat(dir.path(), &env, &["inspect", "registered"]);
    assert!(registered.status.success(), "{}", text(&registered));
    assert!(
        text(&registered).contains("* backend.tasks.test_task"),
        "{}",
        text(&registered)
    );
    let limited = openthreat(
        dir.path(),
        &env,
        // Options may follow the subcommand, as `celery control` takes them.
        &[
            "control",
            "rate_limit",
            "backend.tasks.test_task",
            "100/m",
            "-d",
            node,
        ],
    );
    assert!(limited.status.success(), "{}", text(&limited));
    assert!(
        text(&limited).contains("new rate limit set successfully"),
        "{}",
        text(&limited)
    );
    let unknown = openthreat(
        dir.path(),
        &env,
        &["control", "rate_limit", "no.such.task", "1/s"],
    );
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("unknown task"),
        "{}",
        text(&unknown)
    );

    // events --dump prints the beat's task as it succeeds on the worker.
    let mut dump = spawn(dir.path(), &env, &["events", "--dump"]);
    let stdout = BufReader::new(dump.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if line.contains("task succeeded") && line.contains("backend.tasks.test_task") {
                    break;
                }
                seen.push(line);
            }
            Err(_) => panic!("no task-succeeded line; saw: {seen:?}"),
        }
    }
    let _ = terminate(dump);

    // The server of `run` follows the same events into /metrics.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = http_get(&addr, "/metrics");
        let ok = metrics.lines().any(|l| {
            l.starts_with("celery_tasks_total{")
                && l.contains("name=\"backend.tasks.test_task\"")
                && l.contains("state=\"succeeded\"")
        }) && metrics.contains("celery_workers_online 1");
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "no task metrics: {metrics}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, output) = terminate(run);
    assert_eq!(code, Some(0), "{output}");
    drop(run_out);
}

/// `openthreat inspect ping` is answered by a Python Celery worker on the same Redis.
#[test]
fn inspect_ping_reaches_a_python_celery_worker() {
    if !support::redis_up() {
        support::unavailable("Redis", "127.0.0.1:6379 refused the connection");
        return;
    }
    let has_celery = Command::new("python3")
        .args(["-c", "import celery"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_celery {
        support::unavailable("Python celery", "python3 -c 'import celery' failed");
        return;
    }
    let prefix = format!("ot-cli-py-{}:", std::process::id());
    let node = format!("py{}@cli-test", std::process::id());
    let python_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../queue/tests/python");
    let mut worker = Command::new("python3")
        .current_dir(python_dir)
        .env("OTQ_URL", "redis://127.0.0.1:6379/0")
        .env("OTQ_PREFIX", &prefix)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args([
            "-m", "celery", "-A", "pyapp", "worker", "-P", "solo", "-l", "WARNING",
        ])
        .args([
            "-Q",
            &format!("{prefix}q"),
            "--without-gossip",
            "--without-mingle",
        ])
        .args(["-n", &node])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:6379/0?global_keyprefix={prefix}");
    let env = [("REDIS_URL", url.as_str()), NO_OLLAMA];
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = openthreat(
            dir.path(),
            &env,
            &["inspect", "ping", "-d", &node, "--json"],
        );
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
    };
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(out.status.success(), "no answer: {}", text(&out));
    let replies: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replies, serde_json::json!({node: {"ok": "pong"}}));
}
