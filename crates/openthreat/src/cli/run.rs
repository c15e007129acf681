//! `openthreat run`: the whole service in one process — HTTP API, worker and
//! beat — on the embedded default when nothing is configured. Ctrl-C or
//! SIGTERM shuts everything down cleanly.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use tokio_util::sync::CancellationToken;

use crate::config::{redact_url, Config};
use crate::doctor::{self, Status};
use crate::tasks::{self, AppContext};
use crate::{api, runtime, schedule};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tasks run at the same time by the embedded worker (default: the number of CPUs plus OPENTHREAT_LLM_CONCURRENCY).
    #[arg(short = 'c', long)]
    concurrency: Option<usize>,
    /// A TOML schedule file that replaces the default timetable (also OPENTHREAT_SCHEDULE).
    #[arg(long, value_name = "FILE")]
    schedule: Option<PathBuf>,
    /// Do not start the beat (e.g. when another machine runs it).
    #[arg(long)]
    without_beat: bool,
    /// Address of the HTTP API (default: OPENTHREAT_BIND or 127.0.0.1:8001).
    #[arg(long, value_name = "ADDR")]
    bind: Option<std::net::SocketAddr>,
    /// Send no task or worker events (Flower and `openthreat events` then see
    /// nothing; `openthreat control enable_events` turns them on later).
    #[arg(long)]
    without_events: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let path = schedule::schedule_path(args.schedule, config);
    let (entries, left_out) = schedule::load_entries(path.as_deref())?;

    let store = runtime::open_store(config).await?;
    let broker = runtime::open_broker(config).await?;
    let backend = runtime::open_backend(config).await?;
    let llm = doctor::check_llm(config).await;

    // A few clear lines on what this process uses, like the original start script.
    println!("OpenThreat {}", env!("CARGO_PKG_VERSION"));
    println!(
        "  database : {} ({:?})",
        redact_url(&config.database_url),
        store.backend()
    );
    println!("  broker   : {}", redact_url(&config.broker_url));
    println!("  results  : {}", redact_url(&config.result_backend_url));
    let llm_line = match llm.status {
        Status::Ok => format!("{} — {}", llm.target, llm.detail),
        _ => format!(
            "{} — {}{}",
            llm.target,
            llm.detail,
            llm.fix
                .as_deref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default()
        ),
    };
    println!("  llm      : {llm_line}");
    let bind = args
        .bind
        .map(|a| a.to_string())
        .unwrap_or_else(|| config.bind.clone());
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind} (OPENTHREAT_BIND / --bind)"))?;
    println!(
        "  http     : http://{} (Swagger UI at /docs)",
        listener.local_addr()?
    );
    println!(
        "  beat     : {}",
        if args.without_beat {
            "off (--without-beat)".to_string()
        } else {
            format!(
                "{} entries from {}",
                entries.len(),
                path.as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the default schedule".into())
            )
        }
    );
    crate::cli::beat::report_left_out(&left_out);
    println!("Press Ctrl-C to stop.");

    let stop = CancellationToken::new();
    // One registry for the API and the worker's LLM calls, so /metrics shows both.
    let metrics = Arc::new(api::metrics::Metrics::new()?);
    // One event transport and one producer for the worker, the API, the
    // monitor and the beat of this process.
    let fanout = runtime::open_fanout(config).await?;
    let producer = runtime::producer(
        config,
        broker.clone(),
        backend.clone(),
        Some(fanout.clone()),
    );
    let ctx =
        AppContext::with_llm_observer(store.clone(), config, producer.clone(), metrics.clone())
            .context("LLM configuration (OPENTHREAT_LLM_*, OLLAMA_*)")?;
    let builder = tasks::worker_builder(broker.clone(), backend.clone(), ctx);
    let mut builder = runtime::monitored(builder, fanout.clone(), config, !args.without_events);
    if let Some(n) = args.concurrency {
        anyhow::ensure!(n > 0, "--concurrency must be at least 1");
        builder = builder.concurrency(n);
    }
    let worker = builder.build();
    // The API shares the worker's live state, so /tasks/workers/status shows it.
    let state = api::state_with(
        config,
        store,
        broker.clone(),
        backend.clone(),
        Some(fanout.clone()),
        entries.clone(),
        Some(worker.state()),
    )?
    .with_metrics(metrics);
    if let Err(e) = runtime::start_monitor(
        config,
        fanout.as_ref(),
        &state.metrics().celery,
        entries.clone(),
        stop.clone(),
    )
    .await
    {
        tracing::warn!(
            error = format!("{e:#}"),
            "monitoring (events, alerts) not started"
        );
    }
    let worker_stop = stop.clone();
    let worker = tokio::spawn(worker.run(async move { worker_stop.cancelled().await }));
    let http_stop = stop.clone();
    let http = tokio::spawn(api::serve(listener, state, async move {
        http_stop.cancelled().await
    }));
    let beat = if args.without_beat {
        None
    } else {
        let beat = schedule::build_beat(config, entries, producer).await?;
        let beat_stop = stop.clone();
        Some(tokio::spawn(async move { beat.run(beat_stop).await }))
    };

    runtime::shutdown_signal().await;
    tracing::info!("shutting down: finishing running tasks");
    stop.cancel();
    if let Some(beat) = beat {
        beat.await??;
    }
    worker.await??;
    http.await??;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
