//! `openthreat worker`: executes tasks from the broker until Ctrl-C/SIGTERM.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::{redact_url, Config};
use crate::runtime;
use crate::tasks::{self, AppContext};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tasks run at the same time (default: the number of CPUs plus OPENTHREAT_LLM_CONCURRENCY).
    #[arg(short = 'c', long)]
    concurrency: Option<usize>,
    /// Queues to consume, comma-separated (Celery's default queue is `celery`).
    #[arg(short = 'Q', long, value_delimiter = ',', default_value = "celery")]
    queues: Vec<String>,
    /// Worker name as `celery inspect` and Flower show it (default: celery@<host>).
    #[arg(short = 'n', long)]
    hostname: Option<String>,
    /// Send no task or worker events (Flower and `openthreat events` then see
    /// nothing; `openthreat control enable_events` turns them on later).
    #[arg(long)]
    without_events: bool,
}

/// Warm shutdown: on the first signal the worker stops fetching, lets running
/// tasks finish (or requeues them) and exits.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let store = runtime::open_store(config).await?;
    let broker = runtime::open_broker(config).await?;
    let backend = runtime::open_backend(config).await?;
    let fanout = runtime::open_fanout(config).await?;
    let ctx = AppContext::new(
        store,
        config,
        runtime::producer(
            config,
            broker.clone(),
            backend.clone(),
            Some(fanout.clone()),
        ),
    )
    .context("LLM configuration (OPENTHREAT_LLM_*, OLLAMA_*)")?;
    let builder = tasks::worker_builder(broker, backend, ctx).queues(args.queues.clone());
    let mut builder = runtime::monitored(builder, fanout, config, !args.without_events);
    if let Some(n) = args.concurrency {
        anyhow::ensure!(n > 0, "--concurrency must be at least 1");
        builder = builder.concurrency(n);
    }
    if let Some(name) = args.hostname {
        builder = builder.hostname(name);
    }
    eprintln!(
        "worker: broker {}, queues {}, tasks: {}",
        redact_url(&config.broker_url),
        args.queues.join(","),
        tasks::task_names().join(", ")
    );
    builder.build().run(runtime::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
