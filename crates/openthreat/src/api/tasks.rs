//! What the HTTP API asks of the background system: send a task, read its
//! result, list the live workers and the beat schedule.
//!
//! A trait rather than the queue crate's types because the API must not care
//! which broker (Redis or SQLite) or result backend is configured, and because
//! `tasks/workers/status` and `tasks/scheduled/list` must report what is really
//! running: an implementation asks the workers (remote control `inspect`) and
//! reads the beat schedule that beat itself uses. When no gateway is plugged
//! in, the API says so (503 for sends, `no_workers`, an empty schedule); it
//! never invents a worker or a schedule.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Registered task names (the original's, so its Python producers keep working).
pub mod names {
    pub const PROCESS_NEW_CVES: &str = "tasks.process_new_cves";
    pub const PROCESS_LLM_QUEUE: &str = "tasks.process_llm_queue";
    pub const PROCESS_CVE_WITH_LLM: &str = "tasks.process_cve_with_llm";
    pub const GET_LLM_STATS: &str = "tasks.get_llm_stats";
}

/// Why the gateway could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The broker or result backend cannot be reached; the HTTP answer is 503.
    #[error("task queue unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

/// One task to enqueue, as Celery sees it: a registered name, positional and
/// keyword arguments, and a message priority (0 highest .. 9 lowest).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRequest {
    pub name: String,
    pub args: Vec<serde_json::Value>,
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    pub priority: Option<u8>,
}

/// Celery's task states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskState {
    /// Unknown to the result backend: not started yet, or an id never sent.
    Pending,
    Received,
    Started,
    Success,
    Failure,
    Retry,
    Revoked,
}

impl TaskState {
    /// The lower-case word the original's `/llm/task/{id}` answered.
    pub fn simple(self) -> &'static str {
        match self {
            TaskState::Pending | TaskState::Received => "pending",
            TaskState::Started => "running",
            TaskState::Retry => "retrying",
            TaskState::Success => "success",
            TaskState::Failure => "failed",
            TaskState::Revoked => "revoked",
        }
    }
}

/// What the result backend knows about one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStatus {
    pub state: TaskState,
    /// The return value, on success.
    pub result: Option<serde_json::Value>,
    /// `exc_type: exc_message`, on failure.
    pub error: Option<String>,
}

/// One live worker as remote control reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerInfo {
    /// Celery node name, e.g. `celery@host`.
    pub name: String,
    pub active_tasks: u64,
    pub registered_tasks: Vec<String>,
    /// The worker's `inspect stats` answer, passed through.
    #[schema(value_type = Object)]
    pub stats: serde_json::Value,
}

/// One entry of the beat schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduledEntry {
    /// Entry name, e.g. `process-new-cves`.
    pub name: String,
    /// Task name, e.g. `tasks.process_new_cves`.
    pub task: String,
    /// Human-readable schedule, e.g. `*/5 * * * *` (crontab, UTC).
    pub schedule: String,
    pub description: String,
}

/// The background system as the API sees it. Implemented by the application
/// over the queue crate's producer, result backend, remote control and beat.
#[async_trait::async_trait]
pub trait TaskGateway: Send + Sync + 'static {
    /// Enqueues a task and returns its id.
    async fn send(&self, task: TaskRequest) -> Result<String, GatewayError>;
    /// The state of a task in the result backend.
    async fn status(&self, task_id: &str) -> Result<TaskStatus, GatewayError>;
    /// The workers answering remote control right now (may take up to the
    /// implementation's inspect timeout).
    async fn workers(&self) -> Result<Vec<WorkerInfo>, GatewayError>;
    /// The beat schedule in force.
    async fn scheduled(&self) -> Result<Vec<ScheduledEntry>, GatewayError>;
    /// Messages waiting per queue name, for `/metrics`.
    async fn queue_lengths(&self) -> Result<Vec<(String, u64)>, GatewayError>;
    /// Messages waiting per queue and priority, for `/metrics`.
    async fn priority_lengths(&self) -> Result<Vec<(String, u8, u64)>, GatewayError> {
        Ok(Vec::new())
    }
}
