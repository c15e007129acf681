//! `openthreat migrate`: create or upgrade the schema.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::{redact_url, Config};

#[derive(Debug, clap::Args)]
pub struct Args {}

/// Idempotent: running it on an up-to-date database changes nothing.
pub async fn run(config: &Config, _args: Args) -> anyhow::Result<ExitCode> {
    let target = redact_url(&config.database_url);
    let store = openthreat_store::connect(&config.database_url)
        .await
        .with_context(|| format!("DATABASE_URL {target}"))?;
    store
        .migrate()
        .await
        .with_context(|| format!("migrating {target}"))?;
    println!("database {target} is up to date ({:?})", store.backend());
    Ok(ExitCode::SUCCESS)
}
