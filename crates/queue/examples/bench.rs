//! No-op throughput: `bench BROKER_URL [N] [CONCURRENCY]`.
//!
//! Publishes N no-op tasks (results stored), then runs a worker until all
//! results are in and prints tasks/s. The URL may carry `?global_keyprefix=`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use openthreat_queue::{
    connect_backend, connect_broker, Producer, SendOptions, Task, TaskContext, TaskError, Worker,
};
use serde::{Deserialize, Serialize};
use serde_json::Map;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("redis://127.0.0.1:6379/0?global_keyprefix=bench:");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let conc: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(8);
    let broker = connect_broker(url).await?;
    let backend = connect_backend(url).await?;
    broker.purge("bench").await?;
    let producer = Arc::new(Producer::new(broker.clone(), backend.clone()));
    let t = Instant::now();
    let mut ids = Vec::with_capacity(n);
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
            ids.push(r?);
        }
    }
    println!(
        "published {n} in {:?} ({:.0}/s)",
        t.elapsed(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    let worker = Worker::builder(broker, backend, ())
        .register::<Noop>()
        .queues(["bench"])
        .concurrency(conc)
        .build();
    let state = worker.state();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let t = Instant::now();
    let running = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    loop {
        let done = state
            .snapshot()
            .processed
            .get("bench.noop")
            .copied()
            .unwrap_or(0);
        if done as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let el = t.elapsed();
    println!(
        "ran {n} in {el:?}: {:.0} tasks/s (concurrency {conc})",
        n as f64 / el.as_secs_f64()
    );
    let _ = tx.send(());
    running.await??;
    ids.last().unwrap().get(Duration::from_secs(5)).await?;
    Ok(())
}
