//! The ingestion service: NVD (API 2.0 incremental sync, 2.0 feed files
//! downloaded or local), CISA KEV and FIRST EPSS, written into the store.
//!
//! The CLI (`openthreat ingest ...`) and the task
//! `backend.tasks.update_vulnerabilities_task` both call [`Ingestor`]; no
//! ingestion logic lives in either of them. Fetching and parsing belong to
//! `openthreat-feeds`, persistence to `openthreat-store`; this module joins
//! them, counts, and records every run in `ingestion_runs`.
//!
//! # Layout
//! * `mod.rs`: [`Ingestor`], its [`IngestSettings`], the [`IngestReport`]
//!   every operation returns, [`Progress`] and [`IngestError`].
//! * [`files`]: NVD import from local paths and downloaded yearly feeds.
//! * [`sync`]: the NVD API incremental sync ([`sync::StoreSink`]).
//! * [`kev`]: the CISA KEV catalog.
//! * [`epss`]: EPSS daily scores.
//!
//! # Runs
//! Every operation opens a row in `ingestion_runs` (source `nvd`,
//! `nvd-feed`, `kev` or `epss`) before it starts and closes it with its
//! counts, as `success` or as `failed` with the error, whatever happens in
//! between. An operation that fails still returns its [`IngestReport`]
//! (status `failed`), so callers print the same summary either way.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use openthreat_feeds::http::RetryPolicy;
use openthreat_feeds::nvd::client::NvdConfig;
use openthreat_feeds::ratelimit::RateLimit;
use openthreat_feeds::FeedsError;
use openthreat_store::{RunOutcome, Store, StoreError, UpsertSummary};
use serde::Serialize;
use url::Url;

use crate::config::Config;

pub mod epss;
pub mod files;
pub mod kev;
pub mod sync;

pub use files::FeedName;

/// Why an ingestion operation failed as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Fetching or parsing a source failed; the message names the file or
    /// URL and, for bad JSON, the position.
    #[error(transparent)]
    Feeds(#[from] FeedsError),
    /// The database refused or was unreachable.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A setting is unusable (a bad URL, a bad `--feeds` value, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A local file or directory could not be read or written.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// The stored sync cursor is not what this version wrote.
    #[error("sync state {key:?} is corrupt ({message}); reset it with `openthreat ingest nvd --since DATE`")]
    CorruptState { key: String, message: String },
    /// Some files of a multi-file import failed (the others were imported).
    #[error("{failed} of {total} file(s) failed: {}", .errors.join("; "))]
    Files {
        failed: usize,
        total: usize,
        errors: Vec<String>,
    },
    /// A background thread died.
    #[error("background task failed: {0}")]
    Join(String),
}

/// Which source a run ingests; the value written to `ingestion_runs.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The NVD CVE API 2.0 incremental sync.
    Nvd,
    /// NVD 2.0 feed files, downloaded or local, and other NVD JSON files.
    NvdFeed,
    Kev,
    Epss,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Nvd => "nvd",
            Source::NvdFeed => "nvd-feed",
            Source::Kev => "kev",
            Source::Epss => "epss",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunResult {
    Success,
    /// Nothing to do (KEV catalog unchanged since the last import).
    Skipped,
    Failed,
}

/// Counts of one run, accumulated as batches are committed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Records received from the source, mapped or not.
    pub fetched: u64,
    /// New CVEs stored.
    pub inserted: u64,
    /// Stored CVEs that changed.
    pub updated: u64,
    /// Records identical to what was stored (nothing written).
    pub unchanged: u64,
    /// Records older (by `lastModified`) than the stored copy, ignored.
    pub skipped_older: u64,
    /// Records that could not be mapped or stored, skipped.
    pub failed: u64,
    /// KEV/EPSS facts about CVEs the store does not hold (yet).
    pub unknown: u64,
}

impl Counts {
    /// Adds a store upsert's outcome for a batch of `received` records of
    /// which `parse_failed` could not be mapped.
    fn add_upsert(&mut self, summary: &UpsertSummary, received: u64, parse_failed: u64) {
        self.fetched += received;
        self.inserted += summary.inserted;
        self.updated += summary.updated;
        self.unchanged += summary.unchanged;
        self.skipped_older += summary.skipped_older;
        self.failed += parse_failed + summary.failed.len() as u64;
        for (id, reason) in &summary.failed {
            tracing::warn!(cve_id = %id, %reason, "store rejected a record");
        }
    }
}

/// Most failures a report lists by name (all are counted).
const MAX_LISTED_FAILURES: usize = 20;

/// What one ingestion run did; printed by the CLI and returned by the task.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub source: Source,
    /// The `ingestion_runs` row, when it could be opened.
    pub run_id: Option<i64>,
    pub status: RunResult,
    #[serde(flatten)]
    pub counts: Counts,
    pub duration_seconds: f64,
    /// Records (or KEV/EPSS facts) per second.
    pub per_second: f64,
    /// The error, when the run failed.
    pub error: Option<String>,
    /// The first skipped records, `id (record #n): reason`.
    pub failures: Vec<String>,
    /// Source-specific facts (files read, KEV catalog version, sync cursor, ...).
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl IngestReport {
    pub fn is_success(&self) -> bool {
        self.status != RunResult::Failed
    }

    /// One line for people: what came in and what it did.
    pub fn summary_line(&self) -> String {
        let c = &self.counts;
        let mut s = format!(
            "{}: {} — fetched {}, inserted {}, updated {}, unchanged {}, older skipped {}, failed {}",
            self.source,
            match self.status {
                RunResult::Success => "ok",
                RunResult::Skipped => "skipped",
                RunResult::Failed => "FAILED",
            },
            c.fetched,
            c.inserted,
            c.updated,
            c.unchanged,
            c.skipped_older,
            c.failed
        );
        if c.unknown > 0 {
            s.push_str(&format!(", not in store {}", c.unknown));
        }
        s.push_str(&format!(
            " in {:.2} s ({:.0} records/s)",
            self.duration_seconds, self.per_second
        ));
        s
    }
}

/// Receives progress for a terminal progress bar; the service calls it from
/// async code, so implementations must be cheap.
pub trait Progress: Send + Sync {
    /// A new phase begins (`label`), with a known total of records when
    /// the source says one.
    fn begin(&self, label: &str, total: Option<u64>);
    /// `n` more records were handled.
    fn advance(&self, n: u64);
}

/// Progress that goes nowhere (tasks, `--json`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _label: &str, _total: Option<u64>) {}
    fn advance(&self, _n: u64) {}
}

/// Where the ingestion service fetches from and how politely.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// The NVD API client's settings (URL, key, page size, quota, retries).
    pub nvd: NvdConfig,
    /// Base URL of the NVD 2.0 feed files.
    pub feeds_url: Url,
    pub kev_url: Url,
    pub epss_url: Url,
    /// Retries for feed, KEV and EPSS downloads.
    pub retry: RetryPolicy,
    /// Records per store transaction for file imports.
    pub batch_size: usize,
    /// Verify `.meta` sha256 files next to feed files (off only for edited
    /// files such as trimmed test fixtures).
    pub verify_meta: bool,
    /// Where downloaded feed files are kept while they are imported.
    pub download_dir: PathBuf,
    /// How far back the first NVD sync reaches when the store is empty and
    /// no `--since` is given.
    pub first_sync_lookback: chrono::Duration,
}

impl IngestSettings {
    /// Settings from the application configuration.
    pub fn from_config(config: &Config) -> Result<Self, IngestError> {
        let url = |name: &str, v: &str| {
            Url::parse(v).map_err(|e| IngestError::Config(format!("{name} {v:?}: {e}")))
        };
        let mut nvd = NvdConfig::new(config.nvd_api_key.as_ref().map(|k| k.expose().to_string()));
        nvd.base_url = url("OPENTHREAT_NVD_API_URL", &config.nvd_api_url)?;
        nvd.results_per_page = config.nvd_page_size;
        nvd.rate_limit = config.nvd_rate_limit.map(|(requests, secs)| RateLimit {
            requests,
            window: Duration::from_secs(secs),
        });
        Ok(IngestSettings {
            nvd,
            feeds_url: url("OPENTHREAT_NVD_FEEDS_URL", &config.nvd_feeds_url)?,
            kev_url: url("OPENTHREAT_KEV_URL", &config.kev_url)?,
            epss_url: url("OPENTHREAT_EPSS_URL", &config.epss_url)?,
            retry: RetryPolicy::default(),
            batch_size: 1000,
            verify_meta: true,
            download_dir: config.data_dir.join("downloads"),
            first_sync_lookback: chrono::Duration::days(120),
        })
    }
}

/// The ingestion service over one store.
#[derive(Clone)]
pub struct Ingestor {
    store: Arc<dyn Store>,
    settings: IngestSettings,
    progress: Arc<dyn Progress>,
}

impl fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ingestor")
            .field("store", &self.store.backend())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Ingestor {
    pub fn new(store: Arc<dyn Store>, settings: IngestSettings) -> Self {
        Ingestor {
            store,
            settings,
            progress: Arc::new(NoProgress),
        }
    }

    /// Reports progress to `progress` (the CLI's progress bar).
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    pub fn settings(&self) -> &IngestSettings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Runs `op` as one recorded run of `source`: opens the
    /// `ingestion_runs` row, lets `op` fill the counts, and closes the row
    /// as `success` or `failed` with the error, whatever `op` returned.
    async fn recorded<F>(&self, source: Source, op: F) -> Result<IngestReport, IngestError>
    where
        F: AsyncFnOnce(&mut RunState) -> Result<RunResult, IngestError>,
    {
        let started = Instant::now();
        let now = Utc::now();
        match self
            .store
            .close_silent_runs(now - RUN_SILENT_AFTER, now)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                runs = n,
                "closed ingestion runs left open by a killed process"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot close abandoned ingestion runs"),
        }
        let run_id = self.store.start_ingestion_run(source.as_str(), now).await?;
        let heartbeat = Heartbeat::start(self.store.clone(), run_id);
        let mut state = RunState::default();
        // Files are how a store is first filled: let the store put off its
        // index maintenance for the whole run (see Store::begin_bulk_load).
        let bulk = source == Source::NvdFeed
            && match self.store.begin_bulk_load().await {
                Ok(bulk) => bulk,
                Err(e) => {
                    tracing::warn!(error = %e, "bulk load not prepared; importing with indexes");
                    false
                }
            };
        let mut result = op(&mut state).await;
        // Search indexing first: a store may run part of it beside the
        // bulk load's index builds (PostgreSQL's GIN index).
        if matches!(source, Source::Nvd | Source::NvdFeed) {
            self.index_search(&mut state).await;
        }
        if bulk {
            self.progress.begin("building indexes", None);
            let t = Instant::now();
            match self.store.end_bulk_load().await {
                Ok(()) => state.detail("bulk_index_seconds", seconds_since(t)),
                // The store finishes it at its next start (migrate).
                Err(e) if result.is_ok() => result = Err(e.into()),
                Err(e) => tracing::error!(error = %e, "indexes not rebuilt after a failed import"),
            }
        }
        drop(heartbeat);
        let duration = started.elapsed().as_secs_f64();
        let (status, error) = match &result {
            Ok(status) => (*status, None),
            Err(e) => (RunResult::Failed, Some(e.to_string())),
        };
        let c = &state.counts;
        let outcome = RunOutcome {
            success: status != RunResult::Failed,
            records_fetched: c.fetched,
            records_inserted: c.inserted,
            records_updated: c.updated,
            records_failed: c.failed,
            error: error.clone(),
        };
        if let Err(e) = self
            .store
            .finish_ingestion_run(run_id, &outcome, Utc::now())
            .await
        {
            // The run's own error matters more; this one is only logged.
            tracing::error!(run_id, error = %e, "cannot close the ingestion run");
        }
        match &error {
            Some(e) => tracing::error!(%source, run_id, error = %e, "ingestion failed"),
            None => tracing::info!(%source, run_id, fetched = c.fetched, inserted = c.inserted,
                updated = c.updated, failed = c.failed, "ingestion finished"),
        }
        let handled = c.fetched.max(c.unknown);
        Ok(IngestReport {
            source,
            run_id: Some(run_id),
            status,
            per_second: if duration > 0.0 {
                handled as f64 / duration
            } else {
                0.0
            },
            counts: state.counts,
            duration_seconds: duration,
            error,
            failures: state.failures,
            details: state.details,
        })
    }
}

impl Ingestor {
    /// Brings the search index up to date with what the run stored, once
    /// per run: the store does not index inside its upserts, which keeps
    /// batches fast. Part of the run's duration, so the reported speed is
    /// the speed at which CVEs become searchable. Also after a failed run
    /// (its committed batches are stored). A failure is logged and left to
    /// the next search, which indexes whatever is pending.
    async fn index_search(&self, state: &mut RunState) {
        self.progress.begin("indexing for search", None);
        let t = Instant::now();
        match self.store.index_search().await {
            Ok(n) => {
                state.detail("search_indexed", n);
                state.detail("search_index_seconds", seconds_since(t));
            }
            Err(e) => tracing::warn!(error = %e, "search index not updated"),
        }
    }
}

/// Seconds since `t`, to the millisecond, for a report's details.
fn seconds_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// How often a running run says it is alive.
const RUN_HEARTBEAT: Duration = Duration::from_secs(30);

/// A `running` run silent for this long belongs to a dead process: the next
/// run closes it as failed. Ten heartbeats, so a busy database never
/// makes a live run look dead.
const RUN_SILENT_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Touches the run's heartbeat until dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(store: Arc<dyn Store>, run_id: i64) -> Self {
        Heartbeat(tokio::spawn(async move {
            let mut tick = tokio::time::interval(RUN_HEARTBEAT);
            loop {
                tick.tick().await;
                if let Err(e) = store.heartbeat_ingestion_run(run_id, Utc::now()).await {
                    tracing::warn!(run_id, error = %e, "ingestion run heartbeat not written");
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What an operation accumulates while it runs.
#[derive(Debug, Default)]
pub(crate) struct RunState {
    pub counts: Counts,
    pub failures: Vec<String>,
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl RunState {
    /// Lists a skipped record (the first few) and logs it.
    fn note_failure(&mut self, what: impl fmt::Display) {
        if self.failures.len() < MAX_LISTED_FAILURES {
            self.failures.push(what.to_string());
        }
    }

    /// Takes in what a part of the run (one file) accumulated once that
    /// part is committed.
    fn absorb(&mut self, part: RunState) {
        let c = part.counts;
        self.counts.fetched += c.fetched;
        self.counts.inserted += c.inserted;
        self.counts.updated += c.updated;
        self.counts.unchanged += c.unchanged;
        self.counts.skipped_older += c.skipped_older;
        self.counts.failed += c.failed;
        self.counts.unknown += c.unknown;
        for f in part.failures {
            self.note_failure(f);
        }
    }

    fn detail(&mut self, key: &str, value: impl Serialize) {
        self.details.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
    }
}

/// Parses a `--since` value: a date (`2024-01-31`, midnight UTC) or a
/// timestamp (`2024-01-31T12:00:00`, `...Z` or with an offset; no offset
/// means UTC, as at NVD).
pub fn parse_since(s: &str) -> Result<DateTime<Utc>, IngestError> {
    let s = s.trim();
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    openthreat_feeds::nvd::map::parse_nvd_timestamp(s).ok_or_else(|| {
        IngestError::Config(format!(
            "{s:?} is not a date (YYYY-MM-DD) or a timestamp (YYYY-MM-DDTHH:MM:SS)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_dates_and_timestamps() {
        assert_eq!(
            parse_since("2024-01-31").unwrap().to_rfc3339(),
            "2024-01-31T00:00:00+00:00"
        );
        assert_eq!(
            parse_since("2024-01-31T12:30:00").unwrap().to_rfc3339(),
            "2024-01-31T12:30:00+00:00"
        );
        assert!(parse_since("yesterday").is_err());
    }
}
