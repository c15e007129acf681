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
