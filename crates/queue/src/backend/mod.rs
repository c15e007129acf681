//! Result backends: where task states and results are kept, in Celery's meta format.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::message::celery_time;
use crate::task::Failure;

pub mod redis;
pub mod sqlite;

/// Default result lifetime: Celery's `result_expires` of one day.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(86_400);

/// Celery task states (the ones a backend stores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Unknown to the backend (never stored; what a missing key means).
    Pending,
    /// Received by a worker (only stored when tracking is asked for).
    Started,
    /// Failed and scheduled to run again.
    Retry,
    /// Done; the result is the return value.
    Success,
    /// Done; the result is `{exc_type, exc_message, exc_module}`.
    Failure,
    /// Revoked or expired before running.
    Revoked,
}

impl State {
    /// SUCCESS, FAILURE and REVOKED: nothing will change any more.
    pub fn is_ready(self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }
}

/// Celery's result meta: `{"status","result","traceback","children","date_done","task_id"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// The state.
    pub status: State,
    /// Return value, or the exception description for FAILURE/RETRY/REVOKED.
    pub result: Value,
    /// Traceback text (failures only).
    #[serde(default)]
    pub traceback: Option<String>,
    /// Child task results (we create none).
    #[serde(default)]
    pub children: Vec<Value>,
    /// ISO 8601 with offset, set for ready states.
    #[serde(default)]
    pub date_done: Option<String>,
    /// The task id.
    pub task_id: String,
    /// Other keys Celery may write (`group_id`, `parent_id`, extended meta).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TaskMeta {
    /// A result in `status` for `task_id`; `date_done` is set for ready states.
    pub fn new(task_id: &str, status: State, result: Value) -> Self {
        TaskMeta {
            status,
            result,
            traceback: None,
            children: Vec::new(),
            date_done: status.is_ready().then(|| celery_time::format(&Utc::now())),
            task_id: task_id.to_owned(),
            extra: Map::new(),
        }
    }

    /// A FAILURE/RETRY/REVOKED meta carrying an exception in Celery's JSON form.
    pub fn failed(
        task_id: &str,
        status: State,
        failure: &Failure,
        traceback: Option<String>,
    ) -> Self {
        let result = json!({
            "exc_type": failure.exc_type,
            "exc_message": [failure.message],
            "exc_module": failure.exc_module,
        });
        TaskMeta {
            traceback,
            ..TaskMeta::new(task_id, status, result)
        }
    }

    /// The exception stored in a failed meta.
    pub(crate) fn error(&self) -> Error {
        let r = &self.result;
        let s = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let exc_message = match r.get("exc_message") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        Error::TaskFailed {
            state: serde_json::to_value(self.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            exc_type: s("exc_type"),
            exc_module: s("exc_module"),
            exc_message,
            traceback: self.traceback.clone(),
        }
    }
}

/// Storage of task results.
#[async_trait]
pub trait ResultBackend: Send + Sync + Debug + 'static {
    /// Stores `meta`, unless a SUCCESS is already stored for the task (a
    /// redelivered duplicate must not turn a success into something else).
    async fn store(&self, meta: &TaskMeta) -> Result<()>;
    /// The stored meta, or `None` (PENDING).
    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>>;
    /// Waits until the task is ready, at most `timeout`.
    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<TaskMeta> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(m) = self.get(task_id).await? {
                if m.status.is_ready() {
                    return Ok(m);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
    /// Deletes a stored result.
    async fn forget(&self, task_id: &str) -> Result<()>;
}
