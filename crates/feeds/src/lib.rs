//! OpenThreat's data sources: the NVD CVE API 2.0, NVD 2.0 feed files, the
//! CISA KEV catalog and FIRST's EPSS scores, fetched politely and parsed
//! as streams into `openthreat-core` types.
//!
//! This crate knows nothing of the store or the application: it turns
//! bytes from the outside world into [`openthreat_core::Cve`],
//! [`openthreat_core::KevFacts`] and [`openthreat_core::Epss`], and drives
//! an incremental NVD sync through the [`sync::SyncSink`] trait that the
//! application implements on top of its store.
//!
//! # Layout
//! * [`nvd::model`]: serde structs of NVD's `cve` object, permissive.
//! * [`nvd::map`]: NVD record → `Cve` (CVSS choice, CWE, CPE vendors/products, KEV).
//! * [`nvd::parse`]: streaming parsers for API pages, feed files (`.json`,
//!   `.json.gz`), bare records and directories; the batch contract.
//! * [`nvd::meta`]: `.meta` files and their sha256 check.
//! * [`nvd::download`]: downloading yearly/modified feeds with their `.meta`.
//! * [`nvd::client`]: the NVD CVE API 2.0 client (paging, date windows,
//!   API key, retries with backoff).
//! * [`ratelimit`]: the sliding-window limiter that keeps us within NVD's quota.
//! * [`sync`]: the incremental sync driver and the [`sync::SyncSink`] /
//!   [`sync::SyncCursor`] it persists through.
//! * [`kev`]: the CISA KEV catalog.
//! * [`epss`]: the EPSS daily CSV.
//! * [`http`]: shared download helper (retries) for KEV and EPSS.
//! * `testing` (feature `test-server`): local NVD/KEV/EPSS servers for tests.
//! * [`error`]: [`FeedsError`] and the per-record [`RecordFailure`].

//!
//! # Using it
//!
//! An incremental NVD sync: the application implements [`sync::SyncSink`]
//! on its store (records and cursor in one transaction) and runs
//! [`sync::run_sync`] with an [`nvd::client::NvdClient`].
//!
//! ```no_run
//! use async_trait::async_trait;
//! use openthreat_feeds::nvd::client::{NvdClient, NvdConfig};
//! use openthreat_feeds::sync::{run_sync, SinkError, SyncCursor, SyncOptions, SyncPage, SyncSink};
//!
//! struct MyStore;
//!
//! #[async_trait]
//! impl SyncSink for MyStore {
//!     async fn load_cursor(&self) -> Result<Option<SyncCursor>, SinkError> {
//!         Ok(None) // read the JSON-serialized cursor from the store
//!     }
//!     async fn commit_page(&self, page: SyncPage) -> Result<(), SinkError> {
//!         // BEGIN; upsert page.cves (newest lastModified wins); record
//!         // page.failed; store page.next_cursor; COMMIT.
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), openthreat_feeds::FeedsError> {
//! let client = NvdClient::new(NvdConfig::new(std::env::var("NVD_API_KEY").ok()))?;
//! let now = chrono::Utc::now();
//! let report = run_sync(&client, &MyStore, &SyncOptions::new(now - chrono::Duration::days(1), now)).await?;
//! println!("{} records in {} pages", report.records, report.pages);
//! # Ok(()) }
//! ```
//!
//! A feed file (or a directory of them), streamed in batches:
//!
//! ```no_run
//! use openthreat_feeds::nvd::parse::{list_feed_files, parse_file_batches, FileOptions};
//!
//! # fn run() -> Result<(), openthreat_feeds::FeedsError> {
//! for file in list_feed_files("nvd-feeds/".as_ref())? {
//!     let summary = parse_file_batches(&file, &FileOptions::default(), &mut |batch| {
//!         // Store batch.cves; commit the file's transaction when batch.is_last.
//!         Ok(())
//!     })?;
//!     println!("{}: {} records, {} failed", file.display(), summary.parsed, summary.failed);
//! }
//! # Ok(()) }
//! ```

pub mod epss;
pub mod error;
pub mod http;
pub mod kev;
pub mod nvd;
pub mod ratelimit;
pub mod sync;
#[cfg(feature = "test-server")]
pub mod testing;

pub use error::{FeedsError, RecordFailure};
