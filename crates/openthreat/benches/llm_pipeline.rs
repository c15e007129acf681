//! LLM pipeline benchmark (not a timed test): how close the whole
//! enrichment pipeline — beat's batch tasks, the broker, a worker, LLM
//! calls, validation, the store — comes to what the LLM server can answer.
//!
//! A simulated server (the llm crate's test server) answers with `P`
//! parallel slots and `L` per answer, so it can serve at most `P / L`
//! answers per second. The benchmark seeds `N` pending CVEs (the real
//! records of `shared/data/nvd/cve/` under new ids), starts a real worker in
//! this process with every task registered and the defaults `openthreat
//! worker` would use, publishes the default schedule's LLM entries once
//! (exactly as beat publishes them), and waits until every CVE is processed
//! in the store. It reports answers/s and the share of `P / L`.
//!
//! ```text
//! cargo bench -p openthreat --bench llm_pipeline -- [--slots P] [--latency-ms L] [--count N] [--brokers sqlite,redis]
//!     [--worker-concurrency C] [--no-drain]
//! ```
//!
//! The last two reproduce older behaviour for comparison: a worker with
//! one slot per CPU, and batches that do not continue (one per beat tick).
//!
//! Defaults: P = 4, L = 100 ms, N = 2000, both brokers. The operator's knob
//! is set as a user with a `P`-slot server would: `OPENTHREAT_LLM_CONCURRENCY
//! = P`; nothing else is tuned. Brokers: the embedded SQLite queue with the
//! SQLite store (the default install), and Redis (own key prefix, removed
//! afterwards) with a throwaway PostgreSQL database (falling back to SQLite
//! when PostgreSQL is down). Redis and PostgreSQL come from
//! `OPENTHREAT_TEST_REDIS_URL` / `OPENTHREAT_TEST_PG_URL` (defaults
//! `redis://127.0.0.1:6379/0`, `postgres://postgres@127.0.0.1:5432/postgres`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use openthreat::config::Config;
use openthreat::schedule::ProducerPublisher;
use openthreat::tasks::{self, AppContext};
use openthreat_core::{Cve, CveId, VulnStatus};
use openthreat_feeds::nvd::map::map_cve;
use openthreat_feeds::nvd::model::NvdCve;
use openthreat_llm::test_server::{TestLlmServer, TestServerOptions};
use openthreat_queue::beat::{default_schedule, Publisher};
use openthreat_store::Store;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    slots: usize,
    latency: Duration,
    count: usize,
    brokers: Vec<String>,
    /// `--worker-concurrency N`: override the worker's default (to show
    /// what it changes); `None` is what `openthreat worker` uses.
    worker_concurrency: Option<usize>,
    /// `--no-drain`: `OPENTHREAT_LLM_DRAIN=false`, one batch per beat tick.
    no_drain: bool,
}

fn args() -> Result<Args, BoxError> {
    let mut a = Args {
        slots: 4,
        latency: Duration::from_millis(100),
        count: 2000,
        brokers: vec!["sqlite".into(), "redis".into()],
        worker_concurrency: None,
        no_drain: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--slots" => a.slots = value()?.parse()?,
            "--latency-ms" => a.latency = Duration::from_millis(value()?.parse()?),
            "--count" => a.count = value()?.parse()?,
            "--brokers" => a.brokers = value()?.split(',').map(str::to_string).collect(),
            "--worker-concurrency" => a.worker_concurrency = Some(value()?.parse()?),
            "--no-drain" => a.no_drain = true,
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if a.slots == 0 || a.latency.is_zero() || a.count == 0 {
        return Err("--slots, --latency-ms and --count must be positive".into());
    }
    Ok(a)
}

/// One measured run.
struct Row {
    broker: &'static str,
    store: &'static str,
    seconds: f64,
    answers: usize,
    max_in_flight: usize,
    /// Share of the server's slot time that was in use.
    occupancy: f64,
    /// CPU time of this process (worker, server, store client) per answer.
    cpu_ms_per_answer: f64,
}

fn main() -> Result<(), BoxError> {
    let args = args()?;
    let rt = tokio::runtime::Runtime::new()?;
    let ceiling = args.slots as f64 / args.latency.as_secs_f64();
    println!(
        "LLM pipeline: P = {} slots, L = {} ms, N = {} CVEs; ceiling P/L = {ceiling:.1} answers/s",
        args.slots,
        args.latency.as_millis(),
        args.count
    );
    println!(
        "machine: {} cores (shared; other builds may be running), load average {}",
        std::thread::available_parallelism()?,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let cves = bench_cves(args.count)?;
    let mut rows = Vec::new();
    for broker in &args.brokers {
        let row = match broker.as_str() {
            "sqlite" => rt.block_on(run_sqlite(&args, &cves))?,
            "redis" => rt.block_on(run_redis(&args, &cves))?,
            other => return Err(format!("unknown broker {other:?} (sqlite, redis)").into()),
        };
        let rate = row.answers as f64 / row.seconds;
        println!(
            "  {}: {} CVEs in {:.2} s, {rate:.1} answers/s, {:.1} % of P/L; server slots busy {:.1} %, \
             max {} calls in flight, {:.1} ms CPU per answer",
            row.broker,
            row.answers,
            row.seconds,
            rate / ceiling * 100.0,
            row.occupancy * 100.0,
            row.max_in_flight,
            row.cpu_ms_per_answer
        );
        rows.push(row);
    }
    println!();
    println!("| broker | store | P | L | N | time | answers/s | % of P/L |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let rate = r.answers as f64 / r.seconds;
        println!(
            "| {} | {} | {} | {} ms | {} | {:.1} s | {rate:.1} | {:.1} % |",
            r.broker,
            r.store,
            args.slots,
            args.latency.as_millis(),
            r.answers,
            r.seconds,
            rate / ceiling * 100.0
        );
    }
    Ok(())
}

/// `count` pending CVEs: the real fixture records (rejected ones left out,
/// since they are never enriched) cycled under new ids `CVE-2099-NNNNNN`.
fn bench_cves(count: usize) -> Result<Vec<Cve>, BoxError> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/nvd/cve");
    let mut templates = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let nvd: NvdCve = serde_json::from_slice(&std::fs::read(&path)?)?;
            let cve = map_cve(nvd).map_err(|e| format!("{}: {e:?}", path.display()))?;
            if cve.vuln_status != VulnStatus::Rejected {
                templates.push(cve);
            }
        }
    }
    templates.sort_by(|a, b| a.cve_id.cmp(&b.cve_id));
    if templates.is_empty() {
        return Err(format!("no records in {}", dir.display()).into());
    }
    (0..count)
        .map(|i| {
            let mut cve = templates[i % templates.len()].clone();
            cve.cve_id = CveId::parse(&format!("CVE-2099-{:06}", 100_000 + i))?;
            Ok(cve)
        })
        .collect()
}

async fn run_sqlite(args: &Args, cves: &[Cve]) -> Result<Row, BoxError> {
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let queue = format!("sqlite://{}", dir.path().join("queue.db").display());
    run(args, cves, "SQLite", "SQLite", &db, &queue).await
}

async fn run_redis(args: &Args, cves: &[Cve]) -> Result<Row, BoxError> {
    let redis_base = std::env::var("OPENTHREAT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let prefix = format!("otbench-llm-{}-", std::process::id());
    let queue = format!("{redis_base}?global_keyprefix={prefix}");
    let result = match support::PgDatabase::create() {
        // Dropped at the end of the run.
        Some(db) => run(args, cves, "Redis", "PostgreSQL", &db.url, &queue).await,
        None => {
            println!("  PostgreSQL unavailable; the Redis run uses a SQLite store");
            let dir = tempfile::tempdir()?;
            let db = format!("sqlite://{}", dir.path().join("bench.db").display());
            run(args, cves, "Redis", "SQLite", &db, &queue).await
        }
    };
    delete_keys(&redis_base, &prefix).await?;
    result
}

/// Seeds the store, starts the server and a worker, fires the LLM beat
/// entries once and times until every CVE is processed.
async fn run(
    args: &Args,
    cves: &[Cve],
    broker: &'static str,
    store_name: &'static str,
    database_url: &str,
    queue_url: &str,
) -> Result<Row, BoxError> {
    let store = openthreat_store::connect(database_url).await?;
    store.migrate().await?;
    for chunk in cves.chunks(1000) {
        let summary = store.upsert_cves(chunk, Utc::now()).await?;
        if !summary.failed.is_empty() {
            return Err(format!("seeding failed: {:?}", summary.failed).into());
        }
    }
    let pending = store.llm_stats(Utc::now()).await?.pending;
    if pending as usize != cves.len() {
        return Err(format!("{pending} pending after seeding {}", cves.len()).into());
    }

    let llm = TestLlmServer::start_with(TestServerOptions {
        slots: args.slots,
        latency: args.latency,
        ..TestServerOptions::default()
    })
    .await;
    let mut env = HashMap::from([
        ("DATABASE_URL".to_string(), database_url.to_string()),
        ("CELERY_BROKER_URL".to_string(), queue_url.to_string()),
        ("OLLAMA_HOST".to_string(), llm.url()),
        // The operator's knob for a server with P slots.
        (
            "OPENTHREAT_LLM_CONCURRENCY".to_string(),
            args.slots.to_string(),
        ),
    ]);
    if args.no_drain {
        env.insert("OPENTHREAT_LLM_DRAIN".into(), "false".into());
    }
    let config = Config::from_map(env)?;
    let broker_handle = openthreat::runtime::open_broker(&config).await?;
    let backend = openthreat::runtime::open_backend(&config).await?;
    let producer = openthreat_queue::Producer::new(broker_handle.clone(), backend.clone());
    let ctx = AppContext::new(store.clone(), &config, producer.clone())?;
    // What `openthreat worker` builds, with its defaults.
    let mut builder = tasks::worker_builder(broker_handle, backend, ctx);
    if let Some(c) = args.worker_concurrency {
        builder = builder.concurrency(c);
    }
    let worker = builder.build();
    let stop = CancellationToken::new();
    let worker_stop = stop.clone();
    let worker = tokio::spawn(worker.run(async move { worker_stop.cancelled().await }));

    // One tick of every LLM entry of the default schedule, published as beat does.
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let publisher = ProducerPublisher(producer);
    for entry in default_schedule()
        .iter()
        .filter(|e| e.task.starts_with("tasks.process_"))
    {
        publisher.publish(entry, Utc::now()).await?;
    }
    let seconds = wait_processed(store.as_ref(), cves.len(), started).await?;
    let cpu = cpu_seconds() - cpu_before;
    let busy = llm.slot_busy_time().as_secs_f64();
    stop.cancel();
    worker.await??;
    let answers = llm.chats_answered();
    Ok(Row {
        broker,
        store: store_name,
        seconds,
        answers,
        max_in_flight: llm.max_in_flight(),
        occupancy: busy / (args.slots as f64 * seconds),
        cpu_ms_per_answer: cpu * 1000.0 / answers.max(1) as f64,
    })
}

/// Polls the store until `n` CVEs are processed; the time since `started`.
///
/// Gives up when nothing has progressed for 30 s (the pipeline stalled),
/// reporting how far it got, so a stall is a clear failure rather than a hang.
async fn wait_processed(store: &dyn Store, n: usize, started: Instant) -> Result<f64, BoxError> {
    let mut last = (0u64, Instant::now());
    loop {
        let stats = store.llm_stats(Utc::now()).await?;
        if stats.processed as usize >= n {
            return Ok(started.elapsed().as_secs_f64());
        }
        if stats.processed != last.0 {
            last = (stats.processed, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "stalled: {} of {n} processed after {:.1} s (pending {}, claimed {}, failed {})",
                stats.processed,
                started.elapsed().as_secs_f64(),
                stats.pending,
                stats.claimed,
                stats.failed
            )
            .into());
        }
        // Each poll counts every row; polling faster would take CPU from
        // the pipeline it measures. The end is known to within 100 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// User + system CPU time of this process so far (Linux `/proc/self/stat`,
/// in clock ticks of 1/100 s); 0 elsewhere.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line; after the name, field 3 is index 0.
    (ticks(11) + ticks(12)) / 100.0
}

async fn delete_keys(redis_url: &str, prefix: &str) -> Result<(), BoxError> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
    }
    Ok(())
}
