//! `openthreat call`: sends a task by name, like `celery call`, and with
//! `--wait` prints its result or its error.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use openthreat_queue::SendOptions;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::runtime;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Task name, e.g. backend.tasks.test_task.
    name: String,
    /// Positional arguments as a JSON array, e.g. '["hello"]'.
    #[arg(long, default_value = "[]")]
    args: String,
    /// Keyword arguments as a JSON object, e.g. '{"batch_size": 10}'.
    #[arg(long, default_value = "{}")]
    kwargs: String,
    /// Queue to send to.
    #[arg(short = 'Q', long, default_value = "celery")]
    queue: String,
    /// Seconds to wait before the task may run.
    #[arg(long)]
    countdown: Option<f64>,
    /// Message priority 0..=9 (0 is consumed first).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
    /// Wait for the result and print it.
    #[arg(long)]
    wait: bool,
    /// Seconds to wait for the result with --wait.
    #[arg(long, default_value_t = 60.0, requires = "wait")]
    timeout: f64,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let positional: Vec<Value> = serde_json::from_str(&args.args)
        .context("--args must be a JSON array, e.g. '[\"hello\"]'")?;
    let kwargs: Map<String, Value> = serde_json::from_str(&args.kwargs)
        .context("--kwargs must be a JSON object, e.g. '{\"batch_size\": 10}'")?;
    let countdown = match args.countdown {
        Some(s) if !(0.0..=31_536_000.0).contains(&s) => {
            anyhow::bail!("--countdown must be between 0 and one year in seconds")
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    anyhow::ensure!(
        args.timeout > 0.0 && args.timeout.is_finite(),
        "--timeout must be positive"
    );
    let producer = runtime::open_producer(config).await?;
    let options = SendOptions {
        queue: Some(args.queue),
        countdown,
        priority: args.priority,
        ..Default::default()
    };
    let handle = producer
        .send_task(&args.name, positional, kwargs, options)
        .await?;
    if !args.wait {
        println!("{}", handle.id());
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "sent {} as {}; waiting up to {}s",
        args.name,
        handle.id(),
        args.timeout
    );
    match handle.get(Duration::from_secs_f64(args.timeout)).await {
        Ok(value) => {
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: task {} ({}): {e}", handle.id(), args.name);
            Ok(ExitCode::FAILURE)
        }
    }
}
