//! `openthreat beat`: publishes periodic tasks on their schedule (never runs them).

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::{redact_url, Config};
use crate::{runtime, schedule};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A TOML schedule file that replaces the default timetable
    /// (also OPENTHREAT_SCHEDULE). See the README for its shape.
    #[arg(long, value_name = "FILE")]
    pub schedule: Option<PathBuf>,
    /// Print each entry, its schedule in words, last and next run, and exit.
    #[arg(long)]
    pub list: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let path = schedule::schedule_path(args.schedule, config);
    let (entries, left_out) = schedule::load_entries(path.as_deref())?;
    report_left_out(&left_out);
    let producer = runtime::open_producer(config).await?;
    let beat = schedule::build_beat(config, entries, producer).await?;
    if args.list {
        print_list(&beat).await?;
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "beat: {} entries from {}, publishing to {}",
        beat.entries().len(),
        path.as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the default schedule".into()),
        redact_url(&config.broker_url)
    );
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        runtime::shutdown_signal().await;
        signal.cancel();
    });
    beat.run(stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// Says which default entries are not run because their task is not built in.
pub fn report_left_out(left_out: &[openthreat_queue::beat::Entry]) {
    for e in left_out {
        tracing::warn!(entry = %e.name, task = %e.task, "schedule entry skipped: this binary does not define its task");
    }
}

async fn print_list(beat: &openthreat_queue::beat::Beat) -> anyhow::Result<()> {
    let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<26} {:<40} {:<34} {:<24} {:<24}",
        "ENTRY", "TASK", "SCHEDULE", "LAST RUN", "NEXT RUN"
    );
    for e in beat.list().await? {
        let when = if e.enabled {
            e.description.clone()
        } else {
            format!("{} (disabled)", e.description)
        };
        println!(
            "{:<26} {:<40} {:<34} {:<24} {:<24}",
            e.name,
            e.task,
            when,
            fmt(e.last_run),
            fmt(e.next_run)
        );
    }
    Ok(())
}
