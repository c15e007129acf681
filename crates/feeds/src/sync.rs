//! Incremental NVD sync: fetch every record modified since the last run, in
//! `lastModified` windows of at most 120 days, page by page, up to `now`.
//!
//! # Why a cursor, and why it is committed with the page
//!
//! The cursor says which window is being walked and which `startIndex`
//! comes next. The [`SyncSink`] stores each page's records *and* the cursor
//! that follows them in one transaction, so after a crash the next run
//! starts at the first page that was not committed: nothing is lost and
//! nothing is fetched twice (re-fetching a page would be harmless anyway,
//! since the store keeps the newest `lastModified`). A service that was down
//! for a year simply walks four windows to catch up.
//!
//! Window bounds are inclusive on both sides at NVD, and each window starts
//! where the previous one ended, so a record modified exactly on a boundary
//! may arrive twice; upserts make that harmless.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use openthreat_core::Cve;
use serde::{Deserialize, Serialize};

use crate::error::{FeedsError, RecordFailure};
use crate::nvd::client::{ModWindow, PageRequest, PageSource, MAX_WINDOW_DAYS};

/// Where an incremental sync stands. Serializable so the application can
/// keep it as JSON in its store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCursor {
    /// Start of the `lastModified` window being walked (inclusive).
    pub window_start: DateTime<Utc>,
    /// End of that window (inclusive). Fixed once paging inside it has
    /// begun, so page boundaries stay consistent; a window not yet started
    /// (`next_start_index == 0`) is stretched to the current time on the
    /// next run, up to 120 days.
    pub window_end: DateTime<Utc>,
    /// `startIndex` of the next page in the window.
    pub next_start_index: u64,
    /// NVD's `totalResults` for the window at the last committed page.
    /// Records modified while the window is walked leave it (their
    /// `lastModified` moves past its end), which shifts the records not yet
    /// fetched to lower indices; when the total drops, the walk steps back
    /// by the drop so that no record is skipped.
    #[serde(default)]
    pub last_total: Option<u64>,
}

impl SyncCursor {
    /// A cursor for a first sync that starts at `since`.
    pub fn starting_at(since: DateTime<Utc>) -> Self {
        SyncCursor {
            window_start: since,
            window_end: since,
            next_start_index: 0,
            last_total: None,
        }
    }

    /// Whether the current window has not been started yet.
    pub fn at_window_start(&self) -> bool {
        self.next_start_index == 0
    }
}

/// Errors a sink reports; any error type converts (including `anyhow::Error`).
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// One page of a sync, to be committed atomically with its cursor.
#[derive(Debug, Clone)]
pub struct SyncPage {
    /// The records of the page that mapped.
    pub cves: Vec<Cve>,
    /// Records of the page that were skipped (to be counted and logged).
    pub failed: Vec<RecordFailure>,
    /// The window and start index this page was fetched with.
    pub window: ModWindow,
    pub start_index: u64,
    /// NVD's count of records in the window.
    pub total_results: u64,
    /// The cursor to persist together with the records: where the next
    /// run (or the next iteration) continues.
    pub next_cursor: SyncCursor,
}

/// The persistence side of a sync, implemented by the application on its
/// store. Both methods must be safe to call again after a failure.
#[async_trait]
pub trait SyncSink: Send + Sync {
    /// The cursor of the last committed page, or `None` before the first sync.
    async fn load_cursor(&self) -> Result<Option<SyncCursor>, SinkError>;
    /// Stores the page's records and `page.next_cursor` in one transaction:
    /// either both are kept or neither. Also called for empty pages (an
    /// empty window), so that the cursor moves on. A record may arrive
    /// twice (window boundaries, a step back); keep the newest `lastModified`.
    async fn commit_page(&self, page: SyncPage) -> Result<(), SinkError>;
}

/// How a sync runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOptions {
    /// Where a first sync starts when the sink has no cursor (typically the
    /// time of the feed-file import).
    pub initial_since: DateTime<Utc>,
    /// Upper bound of the last window: the current time, passed in so tests
    /// control it.
    pub now: DateTime<Utc>,
    /// Window length, at most 120 days (NVD's limit).
    pub max_window: Duration,
    /// Records per page; `None` uses the source's default.
    pub results_per_page: Option<u32>,
    /// Stop after this many pages (e.g. to bound one task run); the cursor
    /// makes the next run continue.
    pub max_pages: Option<u64>,
}

impl SyncOptions {
    pub fn new(initial_since: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        SyncOptions {
            initial_since,
            now,
            max_window: Duration::days(MAX_WINDOW_DAYS),
            results_per_page: None,
            max_pages: None,
        }
    }
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub pages: u64,
    /// Records committed (mapped).
    pub records: u64,
    /// Records skipped as failures.
    pub failed: u64,
    /// Windows walked to the end.
    pub windows_completed: u64,
    /// The cursor after the last committed page.
    pub cursor: SyncCursor,
    /// `true` when the sync reached `now`; `false` when `max_pages` stopped it.
    pub caught_up: bool,
}

/// Runs an incremental sync from the sink's cursor up to `opts.now`.
///
/// Fetch errors and commit errors end the run with an error; the cursor of
/// the last committed page stays valid, so the next run resumes there.
pub async fn run_sync<P, S>(
    source: &P,
    sink: &S,
    opts: &SyncOptions,
) -> Result<SyncReport, FeedsError>
where
    P: PageSource + ?Sized,
    S: SyncSink + ?Sized,
{
    let max_window = opts.max_window.min(Duration::days(MAX_WINDOW_DAYS));
    if max_window <= Duration::zero() {
        return Err(FeedsError::Config("sync window must be positive".into()));
    }
    let mut cursor = sink
        .load_cursor()
        .await
        .map_err(FeedsError::Sink)?
        .unwrap_or_else(|| SyncCursor::starting_at(opts.initial_since));
    let mut report = SyncReport {
        pages: 0,
        records: 0,
        failed: 0,
        windows_completed: 0,
        cursor: cursor.clone(),
        caught_up: false,
    };
    loop {
        if cursor.at_window_start() {
            if cursor.window_start >= opts.now {
                report.caught_up = true;
                return Ok(report);
            }
            cursor.window_end = (cursor.window_start + max_window).min(opts.now);
        }
        if opts.max_pages.is_some_and(|max| report.pages >= max) {
            return Ok(report);
        }
        let window = ModWindow::new(cursor.window_start, cursor.window_end)?;
        let page = source
            .fetch_page(&PageRequest {
                window: Some(window),
                start_index: cursor.next_start_index,
                results_per_page: opts.results_per_page,
            })
            .await?;
        let received = page.received();
        let shrink = cursor
            .last_total
            .map_or(0, |t| t.saturating_sub(page.total_results));
        let next_index = if shrink > 0 {
            // Up to `shrink` unseen records slid in front of this page:
            // fetch again from where they may now be (duplicates are harmless).
            tracing::info!(
                shrink,
                start_index = cursor.next_start_index,
                "records left the NVD window while it was walked; stepping back"
            );
            cursor.next_start_index.saturating_sub(shrink)
        } else {
            cursor.next_start_index + received
        };
        let window_done = (next_index >= page.total_results || received == 0) && shrink == 0;
        if received == 0 && next_index < page.total_results {
            tracing::warn!(
                start_index = cursor.next_start_index,
                total = page.total_results,
                "NVD returned an empty page before totalResults; closing the window"
            );
        }
        let next_cursor = if window_done {
            SyncCursor::starting_at(cursor.window_end)
        } else {
            SyncCursor {
                next_start_index: next_index,
                last_total: Some(page.total_results),
                ..cursor.clone()
            }
        };
        let (records, failed) = (page.cves.len() as u64, page.failed.len() as u64);
        sink.commit_page(SyncPage {
            cves: page.cves,
            failed: page.failed,
            window,
            start_index: cursor.next_start_index,
            total_results: page.total_results,
            next_cursor: next_cursor.clone(),
        })
        .await
        .map_err(FeedsError::Sink)?;
        tracing::info!(
            window_start = %window.start(),
            window_end = %window.end(),
            start_index = cursor.next_start_index,
            total = page.total_results,
            records,
            failed,
            "committed NVD page"
        );
        report.pages += 1;
        report.records += records;
        report.failed += failed;
        if window_done {
            report.windows_completed += 1;
        }
        cursor = next_cursor;
        report.cursor = cursor.clone();
    }
}
