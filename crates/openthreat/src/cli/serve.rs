//! `openthreat serve`: the HTTP API (with Swagger UI at /docs) on its own.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::{api, runtime, schedule};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (default: OPENTHREAT_BIND or 127.0.0.1:8001).
    #[arg(long, value_name = "ADDR")]
    bind: Option<std::net::SocketAddr>,
    /// The schedule file the beat uses, so /tasks/scheduled/list shows it
    /// (also OPENTHREAT_SCHEDULE; default: the built-in timetable).
    #[arg(long, value_name = "FILE")]
    schedule: Option<PathBuf>,
}

/// Graceful: on Ctrl-C or SIGTERM the server stops accepting and finishes open requests.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let path = schedule::schedule_path(args.schedule, config);
    let (entries, _) = schedule::load_entries(path.as_deref())?;
    let fanout = runtime::open_fanout(config).await?;
    let state = api::state_from_config(config, fanout.clone(), entries.clone(), None).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    if let Err(e) = runtime::start_monitor(
        config,
        fanout.as_ref(),
        &state.metrics().celery,
        entries,
        stop.clone(),
    )
    .await
    {
        tracing::warn!(
            error = format!("{e:#}"),
            "monitoring (events, alerts) not started"
        );
    }
    let bind = args
        .bind
        .map(|a| a.to_string())
        .unwrap_or_else(|| config.bind.clone());
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind} (OPENTHREAT_BIND / --bind)"))?;
    println!(
        "OpenThreat API on http://{} (Swagger UI at /docs)",
        listener.local_addr()?
    );
    api::serve(listener, state, runtime::shutdown_signal()).await?;
    stop.cancel();
    Ok(ExitCode::SUCCESS)
}
