//! The NVD CVE API 2.0 incremental sync, persisted in the store.
//!
//! `openthreat-feeds` drives the sync ([`run_sync`]): windows of at most
//! 120 days of `lastModified`, page by page, up to now. This module is its
//! [`SyncSink`]: each page's records go into the store with `upsert_cves`,
//! then the cursor that follows them into the store's sync state (key
//! [`CURSOR_KEY`], the [`SyncCursor`] as JSON).
//!
//! # Why two commits are safe
//!
//! The store offers no transaction spanning `upsert_cves` and `set_state`,
//! so the page and its cursor are committed one after the other, records
//! first. The cursor therefore never runs ahead of the records: a crash
//! between the two leaves the *previous* cursor, and the next run fetches
//! that page again. Re-fetching is idempotent — records identical to the
//! stored ones are counted unchanged and written nowhere, and an older copy
//! never overwrites a newer one — so the only cost of the crash is one page
//! fetched twice. Nothing is lost and nothing is stored twice.
//!
//! # Where the first sync starts
//!
//! With `--since DATE` the cursor is reset to start at DATE. Otherwise the
//! stored cursor is used; when there is none (first sync), the sync starts
//! at the newest `modified_at` in the store — after a feed-file import that
//! is the feed's own date, so the sync fetches exactly what changed since —
//! or, on an empty store, 120 days back (one NVD window), because walking
//! all of NVD's history through the API is what the yearly feeds are for.

use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use openthreat_feeds::nvd::client::NvdClient;
use openthreat_feeds::sync::{run_sync, SinkError, SyncCursor, SyncOptions, SyncPage, SyncSink};
use openthreat_store::{ListQuery, SortField, SortOrder, Store};

use super::{IngestError, IngestReport, Ingestor, Progress, RunResult, RunState, Source};

/// The sync-state key of the NVD cursor.
pub const CURSOR_KEY: &str = "nvd_sync_cursor";

/// Options of one sync run.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// Start (or restart) at this time instead of the stored cursor.
    pub since: Option<DateTime<Utc>>,
    /// The upper bound; `None` is the current time.
    pub now: Option<DateTime<Utc>>,
    /// Stop after this many pages (the next run continues).
    pub max_pages: Option<u64>,
}

/// The store as a [`SyncSink`]: upsert, then cursor (see the module docs).
pub struct StoreSink<'a> {
    store: &'a dyn Store,
    progress: &'a dyn Progress,
    /// Counts and failures of the run, shared with the report.
    state: Mutex<RunState>,
}

impl<'a> StoreSink<'a> {
    pub fn new(store: &'a dyn Store, progress: &'a dyn Progress) -> Self {
        StoreSink {
            store,
            progress,
            state: Mutex::new(RunState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for StoreSink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSink").finish_non_exhaustive()
    }
}

/// Reads the stored cursor; `None` before the first sync.
pub async fn load_cursor(store: &dyn Store) -> Result<Option<SyncCursor>, IngestError> {
    match store.get_state(CURSOR_KEY).await? {
        None => Ok(None),
        Some(text) => {
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| IngestError::CorruptState {
                    key: CURSOR_KEY.into(),
                    message: e.to_string(),
                })
        }
    }
}

async fn save_cursor(store: &dyn Store, cursor: &SyncCursor) -> Result<(), IngestError> {
    let text = serde_json::to_string(cursor).map_err(|e| IngestError::CorruptState {
        key: CURSOR_KEY.into(),
        message: e.to_string(),
    })?;
    store.set_state(CURSOR_KEY, &text, Utc::now()).await?;
    Ok(())
}

#[async_trait]
impl SyncSink for StoreSink<'_> {
    async fn load_cursor(&self) -> Result<Option<SyncCursor>, SinkError> {
        Ok(load_cursor(self.store).await?)
    }

    async fn commit_page(&self, page: SyncPage) -> Result<(), SinkError> {
        let received = (page.cves.len() + page.failed.len()) as u64;
        if page.start_index == 0 {
            self.progress.begin(
                &format!(
                    "NVD {} .. {}",
                    page.window.start().format("%Y-%m-%d"),
                    page.window.end().format("%Y-%m-%d")
                ),
                Some(page.total_results),
            );
        }
        // Records first, cursor second: see the module docs.
        let summary = if page.cves.is_empty() {
            Default::default()
        } else {
            self.store.upsert_cves(&page.cves, Utc::now()).await?
        };
        save_cursor(self.store, &page.next_cursor).await?;
        let mut state = self.lock();
        for f in &page.failed {
            state.note_failure(f);
        }
        for (id, reason) in &summary.failed {
            state.note_failure(format!("{id}: {reason}"));
        }
        state
            .counts
            .add_upsert(&summary, received, page.failed.len() as u64);
        drop(state);
        self.progress.advance(received);
        Ok(())
    }
}

impl Ingestor {
    /// Runs the NVD API incremental sync up to now (see the module docs for
    /// where it starts).
    pub async fn sync_nvd(&self, req: &SyncRequest) -> Result<IngestReport, IngestError> {
        self.recorded(Source::Nvd, async |state: &mut RunState| {
            let now = req.now.unwrap_or_else(Utc::now);
            if let Some(since) = req.since {
                if since > now {
                    return Err(IngestError::Config(format!(
                        "--since {since} is in the future"
                    )));
                }
                save_cursor(self.store.as_ref(), &SyncCursor::starting_at(since)).await?;
            }
            let initial = self.first_sync_start(now).await?;
            let client = NvdClient::new(self.settings.nvd.clone())?;
            let sink = StoreSink::new(self.store.as_ref(), self.progress.as_ref());
            let mut opts = SyncOptions::new(initial, now);
            opts.max_pages = req.max_pages;
            let result = run_sync(&client, &sink, &opts).await;
            // Whatever happened, the counts of the committed pages are real.
            let sunk = std::mem::take(&mut *sink.lock());
            state.counts = sunk.counts;
            state.failures = sunk.failures;
            let report = result?;
            state.detail("pages", report.pages);
            state.detail("windows_completed", report.windows_completed);
            state.detail("caught_up", report.caught_up);
            state.detail("cursor", &report.cursor);
            Ok(RunResult::Success)
        })
        .await
    }

    /// Where a sync without a stored cursor starts: the newest
    /// `modified_at` in the store, else `first_sync_lookback` before `now`.
    async fn first_sync_start(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, IngestError> {
        let newest = self
            .store
            .list_cves(&ListQuery {
                page_size: 1,
                include_rejected: true,
                sort: SortField::ModifiedAt,
                order: SortOrder::Desc,
                ..Default::default()
            })
            .await?
            .items
            .into_iter()
            .next()
            .map(|row| row.modified_at);
        Ok(match newest {
            Some(t) if t < now => t,
            _ => now - self.settings.first_sync_lookback,
        })
    }
}
