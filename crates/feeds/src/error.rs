//! The one error type of the crate, and the per-record failure that is *not*
//! an error (a bad record is skipped and reported, the rest is kept).

use std::fmt;
use std::path::PathBuf;

/// Why a feed operation failed as a whole.
///
/// Every variant names where the problem is (a file path, a URL, a position),
/// because the operator reading the log has to find the bad input without a
/// debugger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedsError {
    /// A local file or directory could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// A document is not valid JSON, or is truncated. `line`/`column` come
    /// from serde_json (1-based); `bytes_read` counts the uncompressed bytes
    /// read from a stream so far, the useful position when a gzip stream
    /// itself broke off (`None` for in-memory documents).
    #[error("{origin}: malformed or truncated JSON at {}: {message}", position(*.line, *.column, *.bytes_read))]
    Json {
        origin: String,
        line: usize,
        column: usize,
        bytes_read: Option<u64>,
        message: String,
    },
    /// The document is valid JSON but not in the expected shape (a CSV
    /// without a `cve` column, a KEV catalog without `vulnerabilities`, ...).
    #[error("{origin}: {message}")]
    Format { origin: String, message: String },
    /// The `.meta` file next to a feed does not describe the feed we read.
    #[error("{path}: sha256 of the uncompressed JSON is {actual}, but {meta_path} says {expected} (truncated, edited or mismatched download)")]
    ChecksumMismatch {
        path: PathBuf,
        meta_path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A `.meta` file exists but cannot be understood.
    #[error("{path}: invalid .meta file: {message}")]
    InvalidMeta { path: PathBuf, message: String },
    /// The HTTP request could not be completed (connection, TLS, timeout),
    /// after all retries.
    #[error("request to {url} failed after {attempts} attempt(s): {message}")]
    Http {
        url: String,
        attempts: u32,
        message: String,
    },
    /// The server answered with an error status, after all retries for the
    /// retryable ones. `message` is NVD's `message` header or the body start.
    #[error("{url} answered HTTP {status} after {attempts} attempt(s): {message}")]
    Status {
        url: String,
        status: u16,
        attempts: u32,
        message: String,
    },
    /// A `lastModStartDate`/`lastModEndDate` window NVD would reject.
    #[error("invalid date window {start} .. {end}: {message}")]
    InvalidWindow {
        start: String,
        end: String,
        message: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The [`crate::sync::SyncSink`] failed to load or commit.
    #[error("sync sink failed: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A consumer callback asked to stop (its own error is carried along).
    #[error("stopped by the consumer: {0}")]
    Stopped(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A background parsing thread died.
    #[error("background task failed: {0}")]
    Join(String),
}

impl FeedsError {
    /// Builds [`FeedsError::Json`] from a serde_json error and where it happened.
    pub(crate) fn json(
        origin: impl fmt::Display,
        err: &serde_json::Error,
        bytes_read: Option<u64>,
    ) -> Self {
        FeedsError::Json {
            origin: origin.to_string(),
            line: err.line(),
            column: err.column(),
            bytes_read,
            message: err.to_string(),
        }
    }

    /// Whether retrying the same operation later might succeed (network,
    /// throttling, server trouble) as opposed to bad input or bad config.
    pub fn is_transient(&self) -> bool {
        match self {
            FeedsError::Http { .. } => true,
            FeedsError::Status { status, .. } => *status == 403 || *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// "line 3, column 7 (12345 bytes read)"; serde_json reports line 0 for
/// I/O errors such as a broken gzip stream, where only the count helps.
fn position(line: usize, column: usize, bytes_read: Option<u64>) -> String {
    let mut s = if line > 0 {
        format!("line {line}, column {column}")
    } else {
        "unknown line".to_string()
    };
    if let Some(n) = bytes_read {
        s.push_str(&format!(" ({n} uncompressed bytes read)"));
    }
    s
}

/// One record that could not be mapped: it is skipped, and reported so the
/// run can count and log it. Not an error of the file: the rest is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailure {
    /// The record's CVE id when it could be read (it almost always can).
    pub cve_id: Option<String>,
    /// Position of the record in its document (0-based), for records
    /// without a readable id.
    pub index: usize,
    /// What was wrong, e.g. `missing field "published"`.
    pub reason: String,
}

impl fmt::Display for RecordFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cve_id {
            Some(id) => write!(f, "{id} (record #{}): {}", self.index, self.reason),
            None => write!(f, "record #{} (no id): {}", self.index, self.reason),
        }
    }
}
