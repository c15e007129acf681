//! The beat's wiring in the application: which entries (the default
//! timetable or the operator's TOML file), where fired slots are recorded
//! (Redis when the broker is Redis, else the embedded queue's SQLite file),
//! and how a run is published (through the queue's producer).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use openthreat_queue::beat::{
    default_schedule, load_schedule_file, Beat, BeatError, BeatStore, Entry, Publisher,
    RedisBeatStore, SqliteBeatStore, SystemClock,
};
use openthreat_queue::{Producer, SendOptions};

use crate::config::{redact_url, Config};
use crate::tasks;

/// The schedule file named by `--schedule` or `OPENTHREAT_SCHEDULE`, if any.
pub fn schedule_path(flag: Option<PathBuf>, config: &Config) -> Option<PathBuf> {
    flag.or_else(|| {
        config
            .env
            .get("OPENTHREAT_SCHEDULE")
            .filter(|s| !s.trim().is_empty())
            .map(PathBuf::from)
    })
}

/// The entries to run, and the default entries left out because this binary
/// does not define their task yet (to be reported at start).
///
/// A schedule file replaces the default and must name only known tasks: a
/// typo there is the operator's to fix, so it is an error. The default
/// timetable is ours: an entry whose task is not built into this binary is
/// left out and reported, never queued for a worker that cannot run it.
pub fn load_entries(path: Option<&Path>) -> anyhow::Result<(Vec<Entry>, Vec<Entry>)> {
    let known = tasks::task_names();
    match path {
        Some(p) => Ok((load_schedule_file(p, &known)?, Vec::new())),
        None => Ok(default_schedule()
            .into_iter()
            .partition(|e| known.contains(&e.task.as_str()))),
    }
}

/// Where beats record the slots they fired, shared by every beat on the same broker.
pub async fn open_beat_store(config: &Config) -> anyhow::Result<Arc<dyn BeatStore>> {
    let url = &config.broker_url;
    if url.starts_with("redis") {
        let base = url.split('?').next().unwrap_or(url);
        let store = RedisBeatStore::connect(base, RedisBeatStore::DEFAULT_PREFIX)
            .with_context(|| format!("beat store {}", redact_url(url)))?;
        return Ok(Arc::new(store));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .with_context(|| format!("beat store {path}"))?;
    Ok(Arc::new(SqliteBeatStore::new(pool).await?))
}

/// Publishes beat entries through the queue's producer.
#[derive(Debug, Clone)]
pub struct ProducerPublisher(pub Producer);

#[async_trait]
impl Publisher for ProducerPublisher {
    async fn publish(&self, entry: &Entry, slot: DateTime<Utc>) -> Result<String, BeatError> {
        // `expires` counts from the slot, not from now: a run published late
        // after an outage must not live longer than the operator intended.
        let expires = entry.options.expires.and_then(|e| {
            let deadline = slot + chrono::Duration::from_std(e).ok()?;
            (deadline - Utc::now())
                .to_std()
                .ok()
                .or(Some(Duration::ZERO))
        });
        let options = SendOptions {
            queue: entry.options.queue.clone(),
            priority: entry.options.priority,
            expires,
            ..Default::default()
        };
        let handle = self
            .0
            .send_task(
                &entry.task,
                entry.args.clone(),
                entry.kwargs.clone(),
                options,
            )
            .await
            .map_err(|e| BeatError::Publish(Box::new(e)))?;
        Ok(handle.id().to_string())
    }
}

/// A beat over the configured store and broker.
pub async fn build_beat(
    config: &Config,
    entries: Vec<Entry>,
    producer: Producer,
) -> anyhow::Result<Beat> {
    let store = open_beat_store(config).await?;
    // The beat picks a fresh owner id per process, so a restart can never
    // re-claim a slot its predecessor already took.
    Ok(Beat::new(
        entries,
        store,
        Arc::new(ProducerPublisher(producer)),
        Arc::new(SystemClock),
    ))
}
