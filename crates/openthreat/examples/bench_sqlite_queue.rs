//! Throughput of the embedded SQLite broker: N no-op tasks (`test_task`)
//! published by our producer into a fresh queue file, then drained by one
//! worker with the given concurrency, results stored in the SQLite backend.
//!
//! Usage: `cargo run --release --example bench_sqlite_queue -- [N] [CONCURRENCY]`

use std::time::{Duration, Instant};

use openthreat::config::Config;
use openthreat::tasks::{self, AppContext};
use openthreat_queue::{Producer, SendOptions, Worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(4);
    let dir = tempfile::tempdir()?;
    let queue = format!("sqlite://{}", dir.path().join("queue.db").display());
    let db = format!("sqlite://{}", dir.path().join("openthreat.db").display());
    let env = [("DATABASE_URL", db), ("CELERY_BROKER_URL", queue)];
    let config = Config::from_map(env.into_iter().map(|(k, v)| (k.to_string(), v)).collect())?;
    let store = openthreat::runtime::open_store(&config).await?;
    let broker = openthreat::runtime::open_broker(&config).await?;
    let backend = openthreat::runtime::open_backend(&config).await?;
    let producer = Producer::new(broker.clone(), backend.clone());

    let started = Instant::now();
    for i in 0..n {
        producer
            .send_task(
                "backend.tasks.test_task",
                vec![format!("m{i}").into()],
                Default::default(),
                SendOptions::default(),
            )
            .await?;
    }
    let publish = started.elapsed();

    let ctx = AppContext::new(store, &config, producer.clone())?;
    let worker = tasks::register_all(Worker::builder(broker, backend, ctx))
        .concurrency(concurrency)
        .build();
    let state = worker.state();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let handle = tokio::spawn(worker.run(async move { s.cancelled().await }));
    let started = Instant::now();
    while (state.snapshot().processed.values().sum::<u64>() as usize) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = started.elapsed();
    stop.cancel();
    handle.await??;
    println!(
        "sqlite broker: published {n} in {:.2}s ({:.0}/s); worker (concurrency {concurrency}) ran them in {:.2}s ({:.0} tasks/s)",
        publish.as_secs_f64(),
        n as f64 / publish.as_secs_f64(),
        drain.as_secs_f64(),
        n as f64 / drain.as_secs_f64()
    );
    Ok(())
}
