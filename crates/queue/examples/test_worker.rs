//! A worker in its own process, for tests that kill it (`kill -9`) or stop it
//! with SIGTERM. Not a product binary: `openthreat worker` is.
//!
//! Usage: `test_worker BROKER_URL QUEUE HOSTNAME`, where BROKER_URL may carry
//! `?global_keyprefix=...`; results go to the same URL. It prints
//! `started <task id>` when a task starts, so a test knows when to kill it.

use std::io::Write;
use std::time::Duration;

use openthreat_queue::{connect_backend, connect_broker, Task, TaskContext, TaskError, Worker};
use serde::{Deserialize, Serialize};

/// Adds after sleeping `ms` milliseconds.
#[derive(Debug, Serialize, Deserialize)]
struct SlowAdd {
    a: i64,
    b: i64,
    ms: u64,
}

impl Task for SlowAdd {
    const NAME: &'static str = "tests.slow_add";
    const ARGS: &'static [&'static str] = &["a", "b", "ms"];
    type Context = ();
    type Output = i64;
    async fn run(self, ctx: TaskContext<()>) -> Result<i64, TaskError> {
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "started {}", ctx.request().id);
            let _ = out.flush();
        }
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(self.a + self.b)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .init();
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, hostname] = args.as_slice() else {
        anyhow::bail!("usage: test_worker BROKER_URL QUEUE HOSTNAME");
    };
    let broker = connect_broker(url).await?;
    let backend = connect_backend(url).await?;
    let worker = Worker::builder(broker, backend, ())
        .register::<SlowAdd>()
        .queues([queue.as_str()])
        .hostname(hostname.as_str())
        .concurrency(8)
        .restore_interval(Duration::from_millis(100))
        .lease_refresh_interval(Duration::from_millis(200))
        .fetch_wait(Duration::from_millis(200))
        .build();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    println!("ready");
    worker
        .run(async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}
