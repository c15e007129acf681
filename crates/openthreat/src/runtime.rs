//! Opening the services a command needs (store, broker, result backend),
//! in one place so every command reports problems the same way.

use std::sync::Arc;

use anyhow::Context;
use openthreat_queue::control::Fanout;
use openthreat_queue::worker::WorkerBuilder;
use openthreat_queue::{Broker, Producer, ResultBackend};
use openthreat_store::Store;

use crate::config::{redact_url, Config};

/// Connects to the database and applies pending migrations (idempotent), so
/// a fresh install needs no separate `migrate` step before `worker` or `run`.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let target = redact_url(&config.database_url);
    let store = openthreat_store::connect_with(&config.database_url, config.db_pool_size)
        .await
        .with_context(|| format!("DATABASE_URL {target}"))?;
    store
        .migrate()
        .await
        .with_context(|| format!("migrating {target}"))?;
    Ok(store)
}

/// Connects to the task broker named by the configuration.
pub async fn open_broker(config: &Config) -> anyhow::Result<Arc<dyn Broker>> {
    ensure_parent_dir(&config.broker_url)?;
    openthreat_queue::connect_broker(&config.broker_url)
        .await
        .with_context(|| format!("broker {}", redact_url(&config.broker_url)))
}

/// Connects to the result backend named by the configuration.
pub async fn open_backend(config: &Config) -> anyhow::Result<Arc<dyn ResultBackend>> {
    ensure_parent_dir(&config.result_backend_url)?;
    openthreat_queue::connect_backend(&config.result_backend_url)
        .await
        .with_context(|| format!("result backend {}", redact_url(&config.result_backend_url)))
}

/// Connects to the transport of events and remote control (the broker's).
pub async fn open_fanout(config: &Config) -> anyhow::Result<Arc<dyn Fanout>> {
    ensure_parent_dir(&config.broker_url)?;
    openthreat_queue::connect_fanout(&config.broker_url)
        .await
        .with_context(|| format!("broker {}", redact_url(&config.broker_url)))
}

/// What `inspect stats` shows about the broker: transport, host, port and
/// database, never credentials.
pub fn broker_info(config: &Config) -> serde_json::Value {
    let url = config.broker_url.as_str();
    match url::Url::parse(url) {
        Ok(u) if u.scheme().starts_with("redis") => serde_json::json!({
            "transport": "redis",
            "hostname": u.host_str(),
            "port": u.port().unwrap_or(6379),
            "virtual_host": u.path().trim_start_matches('/'),
            "ssl": u.scheme() == "rediss",
        }),
        _ => serde_json::json!({"transport": "sqlite", "hostname": "localhost"}),
    }
}

/// Makes a worker visible to monitors: answers `inspect`/`control` (ours,
/// Celery's, Flower's) and sends events unless `events` is false.
pub fn monitored<C: Clone + Send + Sync + 'static>(
    builder: WorkerBuilder<C>,
    fanout: Arc<dyn Fanout>,
    config: &Config,
    events: bool,
) -> WorkerBuilder<C> {
    builder
        .fanout(fanout)
        .send_events(events)
        .broker_info(broker_info(config))
}

/// A producer over the configured broker and backend.
pub async fn open_producer(config: &Config) -> anyhow::Result<Producer> {
    let broker = open_broker(config).await?;
    let backend = open_backend(config).await?;
    // The event transport is only needed (and only opened) for task-sent events.
    let fanout = if config.task_sent_events {
        Some(open_fanout(config).await?)
    } else {
        None
    };
    Ok(producer(config, broker, backend, fanout))
}

/// A producer over handles already open; it sends `task-sent` events over
/// `fanout` when OPENTHREAT_TASK_SENT_EVENTS is on. Clone it rather than
/// building another: clones share one event sender.
pub fn producer(
    config: &Config,
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    fanout: Option<Arc<dyn Fanout>>,
) -> Producer {
    let p = Producer::new(broker, backend);
    match fanout {
        Some(fanout) if config.task_sent_events => {
            let node = openthreat_queue::control::events::producer_node();
            p.with_sent_events(openthreat_queue::control::EventDispatcher::new(
                fanout, node, true,
            ))
        }
        _ => p,
    }
}

/// The embedded queue lives in a file under the data dir; create the dir on first use.
fn ensure_parent_dir(url: &str) -> anyhow::Result<()> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = std::path::Path::new(path.split('?').next().unwrap_or(path));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM: the signal for a warm shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

/// How often the server checks that beat entries fired when due.
const BEAT_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// A beat entry this late counts as missed (beat ticks every few seconds).
const BEAT_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// Starts the monitor of `serve` and `run`: it follows the Celery event
/// stream into `/metrics` (`registry`) and failure alerts, and checks once a
/// minute that the beat `entries` fired when due. Runs until `stop`.
pub async fn start_monitor(
    config: &Config,
    fanout: &dyn Fanout,
    registry: &prometheus::Registry,
    entries: Vec<openthreat_queue::beat::Entry>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<crate::monitor::MonitorHandle> {
    use crate::monitor::{check_beat, Monitor, MonitorConfig};
    let receiver = openthreat_queue::control::EventReceiver::connect(fanout)
        .await
        .context("subscribing to worker events")?;
    let monitor = Monitor::new(MonitorConfig::from_config(config), Some(registry))?;
    let handle = monitor.handle();
    tokio::spawn(monitor.run(receiver.into_stream(), stop.clone()));
    let beat_store = crate::schedule::open_beat_store(config).await?;
    let beat_handle = handle.clone();
    tokio::spawn(async move {
        let since = chrono::Utc::now();
        let mut every = tokio::time::interval(BEAT_CHECK_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.cancelled() => return,
            }
            let now = chrono::Utc::now();
            match check_beat(&entries, beat_store.as_ref(), since, now, BEAT_GRACE).await {
                Ok(missed) => {
                    beat_handle.report_missed_beats(&missed, now);
                }
                Err(e) => tracing::warn!(error = %e, "beat schedule check failed"),
            }
        }
    });
    Ok(handle)
}
