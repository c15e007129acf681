//! `/api/v1/llm...`: LLM progress, and enrichment on request.
//!
//! `POST /llm/process/batch` is a static route, so the router matches it
//! before `POST /llm/process/{cve_id}` (axum prefers static segments); in the
//! original it was shadowed and every call was taken as the CVE id "batch".

use axum::extract::State;
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::api::models::{LlmBatchQueued, LlmQueued, LlmStats, LlmTaskOut};
use crate::api::params::{parse_cve_id, BatchParams};
use crate::api::routes::tasks::{
    batch_params, gateway, llm_progress, parse_task_id, send_llm_queue,
};
use crate::api::tasks::{names, TaskRequest, TaskState};
use crate::api::AppState;

pub(crate) const TAG: &str = "LLM Processing";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(llm_stats))
        .routes(routes!(process_batch))
        .routes(routes!(process_one))
        .routes(routes!(llm_task))
}

/// LLM progress counts.
#[utoipa::path(
    get,
    path = "/llm/stats",
    tag = TAG,
    responses((status = 200, description = "LLM progress", body = LlmStats))
)]
pub(crate) async fn llm_stats(State(state): State<AppState>) -> Result<Json<LlmStats>, ApiError> {
    Ok(Json(llm_progress(&state).await?))
}

/// Enrich a batch of unprocessed CVEs of one priority class (or all).
#[utoipa::path(
    post,
    path = "/llm/process/batch",
    tag = TAG,
    params(BatchParams),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Task queued", body = LlmBatchQueued),
        (status = 400, description = "batch_size or priority out of range", body = ErrorBody),
        (status = 401, description = "API key missing or wrong", body = ErrorBody),
        (status = 429, description = "Too many write requests", body = ErrorBody),
        (status = 503, description = "No task queue", body = ErrorBody),
    )
)]
pub(crate) async fn process_batch(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<BatchParams>,
) -> Result<Json<LlmBatchQueued>, ApiError> {
    let (size, priority) = batch_params(&p, 50)?;
    let gw = gateway(&state)?;
    let task_id = send_llm_queue(gw, size, &priority).await?;
    Ok(Json(LlmBatchQueued {
        status: "queued".into(),
        task_id,
        message: format!("LLM processing of up to {size} {priority}-priority CVEs queued"),
        batch_size: size,
        priority,
    }))
}

/// Enrich one CVE now (skipped by the task if it is already processed).
#[utoipa::path(
    post,
    path = "/llm/process/{cve_id}",
    tag = TAG,
    params(("cve_id" = String, Path, description = "A CVE id, e.g. CVE-2024-3400")),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Task queued", body = LlmQueued),
        (status = 401, description = "API key missing or wrong", body = ErrorBody),
        (status = 404, description = "No such CVE", body = ErrorBody),
        (status = 422, description = "Not a CVE id", body = ErrorBody),
        (status = 429, description = "Too many write requests", body = ErrorBody),
        (status = 503, description = "No task queue", body = ErrorBody),
    )
)]
pub(crate) async fn process_one(
    State(state): State<AppState>,
    ApiPath(cve_id): ApiPath<String>,
) -> Result<Json<LlmQueued>, ApiError> {
    let id = parse_cve_id(&cve_id)?;
    if state.store.get_cve(&id).await?.is_none() {
        return Err(ApiError::not_found(format!("Vulnerability {id} not found")));
    }
    let task_id = gateway(&state)?
        .send(TaskRequest {
            name: names::PROCESS_CVE_WITH_LLM.into(),
            args: vec![json!(id.as_str())],
            kwargs: Default::default(),
            priority: None,
        })
        .await?;
    Ok(Json(LlmQueued {
        status: "queued".into(),
        task_id,
        message: format!("LLM processing of {id} queued"),
        cve_id: id.to_string(),
    }))
}

/// The state of an LLM task, in the original's lower-case words.
#[utoipa::path(
    get,
    path = "/llm/task/{task_id}",
    tag = TAG,
    params(("task_id" = String, Path, description = "The id a POST answered with")),
    responses(
        (status = 200, description = "Task state", body = LlmTaskOut),
        (status = 422, description = "Malformed task id", body = ErrorBody),
        (status = 503, description = "No task queue", body = ErrorBody),
    )
)]
pub(crate) async fn llm_task(
    State(state): State<AppState>,
    ApiPath(task_id): ApiPath<String>,
) -> Result<Json<LlmTaskOut>, ApiError> {
    let task_id = parse_task_id(&task_id)?;
    let status = gateway(&state)?.status(&task_id).await?;
    let message = match status.state {
        TaskState::Pending | TaskState::Received => Some("Task is waiting to be processed".into()),
        TaskState::Started => Some("Task is being processed".into()),
        TaskState::Retry => Some("Task failed and will be retried".into()),
        TaskState::Revoked => Some("Task was revoked".into()),
        TaskState::Success | TaskState::Failure => None,
    };
    Ok(Json(LlmTaskOut {
        task_id,
        status: status.state.simple().into(),
        result: status.result,
        error: status.error,
        message,
    }))
}
