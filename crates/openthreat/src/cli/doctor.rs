//! `openthreat doctor`: one line per service, with the fix for what is down.

use std::process::ExitCode;

use crate::config::Config;
use crate::doctor::{run_all, Status};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the checks as JSON (for scripts and monitoring).
    #[arg(long)]
    json: bool,
}

/// Exits non-zero when something required (database, configured Redis) is down;
/// a missing LLM is only a warning because the service works without it.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let checks = run_all(config).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            let fix = c
                .fix
                .as_deref()
                .map(|f| format!(" — {f}"))
                .unwrap_or_default();
            println!("{mark} {:<9} {}: {}{fix}", c.name, c.target, c.detail);
        }
    }
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
