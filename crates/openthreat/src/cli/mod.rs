//! The command tree of the `openthreat` binary.
//!
//! Each subcommand lives in its own file and calls the same services the HTTP
//! API calls; nothing here holds logic of its own beyond argument handling and
//! printing.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::Config;

pub(crate) mod beat;
mod call;
mod doctor;
pub mod events;
mod ingest;
mod inspect;
mod llm;
mod migrate;
mod purge;
mod queues;
mod run;
mod serve;
mod worker;

/// OpenThreat: a self-hosted CVE threat-intelligence service.
///
/// Configuration comes from the environment and an optional `.env` file:
/// DATABASE_URL (default: SQLite file data/openthreat.db), REDIS_URL,
/// CELERY_BROKER_URL, CELERY_RESULT_BACKEND, OLLAMA_HOST, OLLAMA_MODEL,
/// NVD_API_KEY and OPENTHREAT_* (see the README). With nothing set,
/// everything runs embedded under ./data/.
#[derive(Debug, Parser)]
#[command(name = "openthreat", version, about, long_about)]
pub struct Cli {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter like
    /// `openthreat=debug`). Overrides RUST_LOG.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub loglevel: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole service in one process: HTTP API, worker and beat, embedded by default.
    Run(run::Args),
    /// Create or upgrade the database schema (idempotent; creates the SQLite file if needed).
    Migrate(migrate::Args),
    /// Check the database, Redis and the LLM, and say how to fix what is down.
    Doctor(doctor::Args),
    /// Serve the HTTP API on port 8001 (Swagger UI at /docs).
    Serve(serve::Args),
    /// Publish periodic tasks on their schedule; --list shows the timetable.
    Beat(beat::Args),
    /// Execute tasks from the broker (Ctrl-C or SIGTERM: warm shutdown).
    Worker(worker::Args),
    /// Send a task by name, like `celery call`; --wait prints its result.
    Call(call::Args),
    /// Delete waiting messages from queues (asks first unless --force).
    Purge(purge::Args),
    /// Show waiting messages per queue and the dead letters with their reasons.
    Queues(queues::Args),
    /// Import CVEs (NVD API sync, NVD feed files or local files), CISA KEV
    /// and EPSS into the database, once, with a progress bar and a summary.
    Ingest(ingest::Args),
    /// Ask workers what they are doing, like `celery inspect` (Python Celery
    /// workers answer too): active, reserved, scheduled, registered, stats, ping, …
    Inspect(inspect::InspectArgs),
    /// Change running workers, like `celery control`: revoke, rate_limit,
    /// time_limit, pool_grow/shrink, add/cancel_consumer, events on/off, shutdown.
    Control(inspect::ControlArgs),
    /// Watch workers and tasks live (workers, load, tasks/s, latest tasks and
    /// failures), or --dump one line per event like `celery events --dump`.
    Events(events::Args),
    /// Enrich CVEs with the LLM: queue a batch (--priority, --batch-size) or
    /// one CVE (--cve), or do it here with --now; --stats and --parked report.
    Llm(llm::Args),
}

/// Entry point of the binary: parse, set up logging, load configuration, run.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.loglevel.as_deref());
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Migrate(args) => migrate::run(&config, args).await,
            Command::Doctor(args) => doctor::run(&config, args).await,
            Command::Run(args) => run::run(&config, args).await,
            Command::Serve(args) => serve::run(&config, args).await,
            Command::Beat(args) => beat::run(&config, args).await,
            Command::Worker(args) => worker::run(&config, args).await,
            Command::Call(args) => call::run(&config, args).await,
            Command::Purge(args) => purge::run(&config, args).await,
            Command::Queues(args) => queues::run(&config, args).await,
            Command::Ingest(args) => ingest::run(&config, args).await,
            Command::Llm(args) => llm::run(&config, args).await,
            Command::Inspect(args) => inspect::inspect(&config, args).await,
            Command::Control(args) => inspect::control(&config, args).await,
            Command::Events(args) => events::run(&config, args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line: "what failed: why".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_env("RUST_LOG")
            .or_else(|_| EnvFilter::try_from_env("OPENTHREAT_LOG"))
            .unwrap_or_else(|_| EnvFilter::new("warn,openthreat=info")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
