//! Queue and monitoring benchmarks: `bench_monitor BROKER_URL [N] [CONCURRENCY]`.
//!
//! 1. No-op throughput with events off and on: N no-op tasks published, then
//!    drained by one worker; with events on, an event receiver consumes the
//!    stream as a monitor would (and counts what it got).
//! 2. `inspect active` latency with 4 workers busy: four workers, every slot
//!    running a long task, answer 200 `active` broadcasts; p50/p99 of the
//!    time until all four replies arrived.
//!
//! The URL may carry `?global_keyprefix=` (Redis) or be `sqlite:PATH`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use openthreat_queue::control::{Broadcast, EventReceiver, Mailbox};
use openthreat_queue::{
    connect_backend, connect_broker, connect_fanout, Producer, SendOptions, Task, TaskContext,
    TaskError, Worker,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};

#[derive(Debug, Serialize, Deserialize)]
struct Noop {}

impl Task for Noop {
    const NAME: &'static str = "bench.noop";
    type Context = ();
    type Output = ();
    async fn run(self, _ctx: TaskContext<()>) -> Result<(), TaskError> {
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Busy {
    ms: u64,
}

impl Task for Busy {
    const NAME: &'static str = "bench.busy";
    const ARGS: &'static [&'static str] = &["ms"];
    type Context = ();
    type Output = ();
    async fn run(self, _ctx: TaskContext<()>) -> Result<(), TaskError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(())
    }
}

async fn throughput(url: &str, n: usize, conc: usize, events: bool) -> anyhow::Result<f64> {
    let broker = connect_broker(url).await?;
    let backend = connect_backend(url).await?;
    let fanout = connect_fanout(url).await?;
    broker.purge("bench").await?;
    let producer = Producer::new(broker.clone(), backend.clone());
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let sends = chunk.iter().map(|_| {
            producer.send_task(
                "bench.noop",
                vec![],
                Map::new(),
                SendOptions::queue("bench"),
            )
        });
        for r in join_all(sends).await {
            r?;
        }
    }
    let seen = Arc::new(AtomicU64::new(0));
    let monitor = if events {
        let mut rx = EventReceiver::connect(fanout.as_ref()).await?;
        let seen = seen.clone();
        Some(tokio::spawn(async move {
            while rx.next().await.is_some() {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }))
    } else {
        None
    };
    let worker = Worker::builder(broker, backend, ())
        .register::<Noop>()
        .queues(["bench"])
        .concurrency(conc)
        .hostname(format!("bench-{}@local", if events { "on" } else { "off" }))
        .fanout(fanout)
        .send_events(events)
        .build();
    let state = worker.state();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let t = Instant::now();
    let running = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    while (state.processed_total() as usize) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = tx.send(());
    running.await??;
    if let Some(m) = monitor {
        tokio::time::sleep(Duration::from_millis(500)).await;
        m.abort();
        println!(
            "  events received by the monitor: {}",
            seen.load(Ordering::Relaxed)
        );
    }
    Ok(rate)
}

async fn inspect_latency(url: &str) -> anyhow::Result<(Duration, Duration)> {
    let broker = connect_broker(url).await?;
    let backend = connect_backend(url).await?;
    let fanout = connect_fanout(url).await?;
    broker.purge("bench-busy").await?;
    let producer = Producer::new(broker.clone(), backend.clone());
    let mut stops = Vec::new();
    let mut handles = Vec::new();
    let mut states = Vec::new();
    for i in 0..4 {
        let w = Worker::builder(broker.clone(), backend.clone(), ())
            .register::<Busy>()
            .queues(["bench-busy"])
            .concurrency(4)
            .prefetch_multiplier(1)
            .hostname(format!("busy{i}@local"))
            .fanout(fanout.clone())
            .build();
        states.push(w.state());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        handles.push(tokio::spawn(w.run(async move {
            let _ = rx.await;
        })));
    }
    for _ in 0..16 {
        producer
            .send_task(
                "bench.busy",
                vec![json!(120_000)],
                Map::new(),
                SendOptions::queue("bench-busy"),
            )
            .await?;
    }
    while states.iter().map(|s| s.active_count()).sum::<usize>() < 16 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mailbox = Mailbox::new(fanout.clone());
    let mut times = Vec::new();
    for _ in 0..200 {
        let mut b = Broadcast::new("active");
        b.timeout = Duration::from_secs(5);
        b.limit = Some(4);
        let t = Instant::now();
        let replies = mailbox.broadcast(&b).await?;
        anyhow::ensure!(replies.len() == 4, "only {} replies", replies.len());
        times.push(t.elapsed());
    }
    times.sort();
    let p = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    for tx in stops {
        let _ = tx.send(());
    }
    // Running tasks are requeued after the shutdown timeout; do not wait for them.
    for h in handles {
        h.abort();
    }
    broker.purge("bench-busy").await?;
    Ok((p(0.5), p(0.99)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("redis://127.0.0.1:6379/0?global_keyprefix=benchmon:");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let conc: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(8);
    let off = throughput(url, n, conc, false).await?;
    println!("no-op, events off: {off:.0} tasks/s");
    let on = throughput(url, n, conc, true).await?;
    println!(
        "no-op, events on : {on:.0} tasks/s ({:.0}% of off)",
        on / off * 100.0
    );
    let (p50, p99) = inspect_latency(url).await?;
    println!("inspect active, 4 busy workers: p50 {p50:?}, p99 {p99:?}");
    Ok(())
}
