//! `/api/v1/stats...`: the dashboard's figures.
//!
//! The default views come from the stats cache through [`crate::stats`], the
//! same code the `update_stats_cache_task` uses to fill it every 15 minutes,
//! so the API, the task and the CLI agree; when the cache is empty the value
//! is computed on demand (and cached). Views with non-default parameters
//! (another `limit` or `days`) are asked of the store directly.

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use serde::de::DeserializeOwned;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::{ApiError, ApiQuery, ErrorBody};
use crate::api::models::{
    DayCount, IngestionHistory, IngestionRun, SeverityDistribution, Stats, Timeline, TopVendors,
    VendorCount,
};
use crate::api::params::{in_range, DaysParams, LimitParams};
use crate::api::AppState;
use crate::stats as cache;

pub(crate) const TAG: &str = "Statistics";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stats))
        .routes(routes!(top_vendors))
        .routes(routes!(severity_distribution))
        .routes(routes!(timeline))
        .routes(routes!(ingestion_history))
}

/// Re-reads a value of the store (or of the cache) as the API's documented type.
pub(crate) fn reshape<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::internal(format!("stats shape: {e}")))
}

fn to_json(value: impl serde::Serialize) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

async fn cached<T: DeserializeOwned>(state: &AppState, key: &'static str) -> Result<T, ApiError> {
    reshape(cache::get_or_compute(state.store.as_ref(), key, Utc::now()).await?)
}

/// Totals: all, exploited, critical, high, per severity, recently updated.
#[utoipa::path(
    get,
    path = "/stats",
    tag = TAG,
    responses((status = 200, description = "The summary figures", body = Stats))
)]
pub(crate) async fn stats(State(state): State<AppState>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(cached(&state, cache::STATS).await?))
}

/// Vendors with the most CVEs.
#[utoipa::path(
    get,
    path = "/stats/top-vendors",
    tag = TAG,
    params(LimitParams),
    responses(
        (status = 200, description = "Vendors, most CVEs first (limit 1..100, default 20)", body = TopVendors),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn top_vendors(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<LimitParams>,
) -> Result<Json<TopVendors>, ApiError> {
    let limit = in_range("limit", p.limit.unwrap_or(20), 1, 100)?;
    let vendors: Vec<VendorCount> = if limit == 20 {
        cached(&state, cache::TOP_VENDORS).await?
    } else {
        reshape(to_json(state.store.top_vendors(limit).await?)?)?
    };
    Ok(Json(TopVendors { vendors }))
}

/// CVEs per severity, with percentages.
#[utoipa::path(
    get,
    path = "/stats/severity-distribution",
    tag = TAG,
    responses((status = 200, description = "Every severity, most severe first", body = SeverityDistribution))
)]
pub(crate) async fn severity_distribution(
    State(state): State<AppState>,
) -> Result<Json<SeverityDistribution>, ApiError> {
    Ok(Json(cached(&state, cache::SEVERITY_DISTRIBUTION).await?))
}

/// CVEs published per day over the last `days` days.
#[utoipa::path(
    get,
    path = "/stats/timeline",
    tag = TAG,
    params(DaysParams),
    responses(
        (status = 200, description = "One entry per day, oldest first, days without CVEs as 0", body = Timeline),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn timeline(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<DaysParams>,
) -> Result<Json<Timeline>, ApiError> {
    let days = in_range("days", p.days.unwrap_or(30), 1, 365)?;
    let timeline: Vec<DayCount> = if days == 30 {
        cached(&state, cache::TIMELINE).await?
    } else {
        reshape(to_json(state.store.timeline(days, Utc::now()).await?)?)?
    };
    Ok(Json(Timeline { timeline }))
}

/// The newest ingestion runs (NVD, KEV, EPSS).
#[utoipa::path(
    get,
    path = "/stats/ingestion-history",
    tag = TAG,
    params(LimitParams),
    responses(
        (status = 200, description = "Runs, newest first (limit 1..100, default 10)", body = IngestionHistory),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn ingestion_history(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<LimitParams>,
) -> Result<Json<IngestionHistory>, ApiError> {
    let limit = in_range("limit", p.limit.unwrap_or(10), 1, 100)?;
    let runs: Vec<IngestionRun> = reshape(to_json(state.store.ingestion_runs(limit).await?)?)?;
    Ok(Json(IngestionHistory { runs }))
}
