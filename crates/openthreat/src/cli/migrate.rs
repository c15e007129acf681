//! `openthreat migrate`: create or upgrade the schema.

use std::process::ExitCode;

use crate::config::{redact_url, Config};

#[derive(Debug, clap::Args)]
pub struct Args {}

/// Idempotent: running it on an up-to-date database changes nothing.
pub async fn run(config: &Config, _args: Args) -> anyhow::Result<ExitCode> {
    let target = redact_url(&config.database_url);
    let store = crate::runtime::open_store(config).await?;
    println!("database {target} is up to date ({:?})", store.backend());
    Ok(ExitCode::SUCCESS)
}
