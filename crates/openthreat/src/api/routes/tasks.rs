//! `/api/v1/tasks...`: start background work, read results, see the workers
//! and the schedule. Every answer comes from the task gateway, i.e. from the
//! real broker, result backend, workers and beat schedule.

use axum::extract::State;
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::api::models::{LlmStats, ScheduledList, TaskResponse, TaskStatusOut, WorkersStatus};
use crate::api::params::BatchParams;
use crate::api::tasks::{names, TaskGateway, TaskRequest};
use crate::api::AppState;

pub(crate) const TAG: &str = "Tasks";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(process_new_cves))
        .routes(routes!(process_llm_batch))
        .routes(routes!(llm_stats))
        .routes(routes!(scheduled_list))
        .routes(routes!(workers_status))
        .routes(routes!(task_status))
}

/// The gateway, or 503 naming what is missing.
pub(crate) fn gateway(state: &AppState) -> Result<&dyn TaskGateway, ApiError> {
    state
        .tasks
        .as_deref()
        .ok_or_else(|| ApiError::unavailable("no task queue is configured in this process"))
}

/// A Celery task id: a UUID in practice; anything else short and plain is
/// accepted too (Python producers may choose their own), but nothing that
/// could smuggle odd bytes into a Redis key or a log line.
pub(crate) fn parse_task_id(raw: &str) -> Result<String, ApiError> {
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(ApiError::invalid(
            "task_id",
            "expected a task id (letters, digits, '-', '_', '.', ':'; at most 128)",
        ))
    }
}

/// Parses the batch parameters shared with `/llm/process/batch`; the original
/// answered 400 here, so we do too.
pub(crate) fn batch_params(p: &BatchParams, default_size: u32) -> Result<(u32, String), ApiError> {
    let size = p.batch_size.unwrap_or(default_size);
    if !(1..=100).contains(&size) {
        return Err(ApiError::bad_request(
            "batch_size",
            format!("must be between 1 and 100, got {size}"),
        ));
    }
    let priority = p
        .priority
        .as_deref()
        .unwrap_or("high")
        .trim()
        .to_ascii_lowercase();
    if !matches!(priority.as_str(), "high" | "medium" | "low" | "all") {
        return Err(ApiError::bad_request(
            "priority",
            "allowed values: high, medium, low, all",
        ));
    }
    Ok((size, priority))
}

/// LLM progress, from the same store query `tasks.get_llm_stats` runs: a
/// read needs no round trip through the queue, so it works with no worker.
pub(crate) async fn llm_progress(state: &AppState) -> Result<LlmStats, ApiError> {
    let stats = state.store.llm_stats(chrono::Utc::now()).await?;
    crate::api::routes::stats::reshape(serde_json::to_value(stats).map_err(ApiError::internal)?)
}

/// Sends `tasks.process_llm_queue(batch_size, priority)`.
pub(crate) async fn send_llm_queue(
    gw: &dyn TaskGateway,
    size: u32,
    priority: &str,
) -> Result<String, ApiError> {
    Ok(gw
        .send(TaskRequest {
            name: names::PROCESS_LLM_QUEUE.into(),
            // Keyword arguments, as beat's default schedule sends them.
            args: vec![],
            kwargs: [
                ("batch_size".to_string(), json!(size)),
                ("priority".to_string(), json!(priority)),
            ]
            .into_iter()
            .collect(),
            priority: None,
        })
        .await?)
}

/// Enrich the CVEs added in the last hour (top 20), in the background.
#[utoipa::path(
    post,
    path = "/tasks/process-new-cves",
    tag = TAG,
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Task queued", body = TaskResponse),
        (status = 401, description = "API key missing or wrong", body = ErrorBody),
        (status = 429, description = "Too many write requests", body = ErrorBody),
        (status = 503, description = "No task queue", body = ErrorBody),
    )
)]
pub(crate) async fn process_new_cves(
    State(state): State<AppState>,
) -> Result<Json<TaskResponse>, ApiError> {
    let gw = gateway(&state)?;
    let task_id = gw
        .send(TaskRequest {
            name: names::PROCESS_NEW_CVES.into(),
            args: vec![],
            kwargs: Default::default(),
            priority: None,
        })
        .await?;
    Ok(Json(TaskResponse {
        task_id,
        status: "queued".into(),
        message: "Processing of new CVEs queued".into(),
    }))
}

/// Enrich a batch of unprocessed CVEs of one priority class.
#[utoipa::path(
    post,
    path = "/tasks/process-llm-batch",
    tag = TAG,
    params(BatchParams),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Task queued", body = TaskResponse),
        (status = 400, description = "batch_size or priority out of range", body = ErrorBody),
        (status = 401, description = "API key missing or wrong", body = ErrorBody),
        (status = 429, description = "Too many write requests", body = ErrorBody),
        (status = 503, description = "No task queue", body = ErrorBody),
    )
)]
pub(crate) async fn process_llm_batch(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<BatchParams>,
) -> Result<Json<TaskResponse>, ApiError> {
    let (size, priority) = batch_params(&p, 10)?;
    let gw = gateway(&state)?;
    let task_id = send_llm_queue(gw, size, &priority).await?;
    Ok(Json(TaskResponse {
        task_id,
        status: "queued".into(),
        message: format!("LLM processing of up to {size} {priority}-priority CVEs queued"),
    }))
}

/// LLM progress: the answer `tasks.get_llm_stats` gives, computed directly.
#[utoipa::path(
    get,
    path = "/tasks/llm-stats",
    tag = TAG,
    responses((status = 200, description = "LLM progress", body = LlmStats))
)]
pub(crate) async fn llm_stats(State(state): State<AppState>) -> Result<Json<LlmStats>, ApiError> {
    Ok(Json(llm_progress(&state).await?))
}

/// The beat schedule in force.
#[utoipa::path(
    get,
    path = "/tasks/scheduled/list",
    tag = TAG,
    responses((status = 200, description = "Schedule entries (empty without a queue)", body = ScheduledList))
)]
pub(crate) async fn scheduled_list(
    State(state): State<AppState>,
) -> Result<Json<ScheduledList>, ApiError> {
    let entries = match state.tasks.as_deref() {
        Some(gw) => gw.scheduled().await?,
        None => Vec::new(),
    };
    Ok(Json(ScheduledList {
        total: entries.len(),
        scheduled_tasks: entries,
    }))
}

/// The workers answering right now.
#[utoipa::path(
    get,
    path = "/tasks/workers/status",
    tag = TAG,
    responses((status = 200, description = "Live workers", body = WorkersStatus))
)]
pub(crate) async fn workers_status(
    State(state): State<AppState>,
) -> Result<Json<WorkersStatus>, ApiError> {
    let workers = match state.tasks.as_deref() {
        Some(gw) => gw.workers().await?,
        None => Vec::new(),
    };
    Ok(Json(WorkersStatus {
        status: if workers.is_empty() {
            "no_workers"
        } else {
            "healthy"
        }
        .into(),
        total_workers: workers.len(),
        workers,
    }))
}

/// The state and result of one task.
#[utoipa::path(
    get,
    path = "/tasks/{task_id}",
    tag = TAG,
    params(("task_id" = String, Path, description = "The id a POST answered with")),
    responses(
        (status = 200, description = "Task state (PENDING for unknown ids, as in Celery)", body = TaskStatusOut),
        (status = 422, description = "Malformed task id", body = ErrorBody),
        (status = 503, description = "No task queue", body = ErrorBody),
    )
)]
pub(crate) async fn task_status(
    State(state): State<AppState>,
    ApiPath(task_id): ApiPath<String>,
) -> Result<Json<TaskStatusOut>, ApiError> {
    let task_id = parse_task_id(&task_id)?;
    let status = gateway(&state)?.status(&task_id).await?;
    Ok(Json(TaskStatusOut {
        task_id,
        status: serde_json::to_value(status.state)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        result: status.result,
        error: status.error,
    }))
}
