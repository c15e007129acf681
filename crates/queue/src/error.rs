//! The crate's one error type.

use std::time::Duration;

/// Errors at the queue's edges: broker and backend I/O, bad messages, waits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Talking to Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Talking to SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] sqlx::Error),
    /// A value could not be (de)serialized.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A message is not valid Celery protocol v2 JSON.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A broker or backend URL could not be understood.
    #[error("unsupported URL {0:?}: expected redis://, rediss:// or sqlite:")]
    Url(String),
    /// No result arrived within the wait.
    #[error("no result after {0:?}")]
    Timeout(Duration),
    /// The task finished in FAILURE (or was revoked).
    #[error("task {state}: {exc_type}: {exc_message}")]
    TaskFailed {
        /// `FAILURE` or `REVOKED`.
        state: String,
        /// Python exception class name, e.g. `ValueError`.
        exc_type: String,
        /// Python module of the exception, e.g. `builtins`.
        exc_module: String,
        /// The exception's message.
        exc_message: String,
        /// The traceback text, when the worker sent one.
        traceback: Option<String>,
    },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
