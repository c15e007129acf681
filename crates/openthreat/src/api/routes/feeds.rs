//! `/api/v1/feeds/...`: RSS 2.0 feeds of the newest, exploited and critical CVEs.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use openthreat_core::Severity;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::{ApiError, ApiQuery, ErrorBody};
use crate::api::params::{in_range, parse_bool, FeedParams};
use crate::api::rss::{render, Channel};
use crate::api::AppState;
use openthreat_store::{ListQuery, SortField, SortOrder};

pub(crate) const TAG: &str = "Feeds";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(rss_feed))
        .routes(routes!(exploited_feed))
        .routes(routes!(critical_feed))
}

async fn feed(
    state: &AppState,
    params: &FeedParams,
    mut query: ListQuery,
    title: &str,
    description: &str,
    self_path: &str,
) -> Result<Response, ApiError> {
    query.page_size = in_range("limit", params.limit.unwrap_or(50), 1, 100)?;
    query.sort = SortField::PublishedAt;
    query.order = SortOrder::Desc;
    // Items show none of the wide lists (references, CPEs, ...).
    query.summary = true;
    let page = state.store.list_cves(&query).await?;
    let body = render(
        &Channel {
            title,
            description,
            base_url: &state.settings.public_url,
            self_path,
            now: Utc::now(),
        },
        &page.items,
    );
    Ok((
        [(header::CONTENT_TYPE, "application/rss+xml; charset=utf-8")],
        body,
    )
        .into_response())
}

/// The newest CVEs (optionally exploited only).
#[utoipa::path(
    get,
    path = "/feeds/rss",
    tag = TAG,
    params(FeedParams),
    responses(
        (status = 200, description = "RSS 2.0", content_type = "application/rss+xml", body = String),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn rss_feed(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<FeedParams>,
) -> Result<Response, ApiError> {
    let exploited = parse_bool("exploited_only", p.exploited_only.as_deref())?.unwrap_or(false);
    let query = ListQuery {
        exploited: exploited.then_some(true),
        ..ListQuery::default()
    };
    feed(
        &state,
        &p,
        query,
        "OpenThreat - Latest CVEs",
        "The newest CVEs known to OpenThreat",
        "/api/v1/feeds/rss",
    )
    .await
}

/// CVEs known to be exploited in the wild, newest first.
#[utoipa::path(
    get,
    path = "/feeds/exploited",
    tag = TAG,
    params(FeedParams),
    responses(
        (status = 200, description = "RSS 2.0", content_type = "application/rss+xml", body = String),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn exploited_feed(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<FeedParams>,
) -> Result<Response, ApiError> {
    let query = ListQuery {
        exploited: Some(true),
        ..ListQuery::default()
    };
    feed(
        &state,
        &p,
        query,
        "OpenThreat - Exploited CVEs",
        "CVEs known to be exploited in the wild (CISA KEV)",
        "/api/v1/feeds/exploited",
    )
    .await
}

/// CRITICAL CVEs, newest first.
#[utoipa::path(
    get,
    path = "/feeds/critical",
    tag = TAG,
    params(FeedParams),
    responses(
        (status = 200, description = "RSS 2.0", content_type = "application/rss+xml", body = String),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn critical_feed(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<FeedParams>,
) -> Result<Response, ApiError> {
    let query = ListQuery {
        severity: Some(Severity::Critical),
        ..ListQuery::default()
    };
    feed(
        &state,
        &p,
        query,
        "OpenThreat - Critical CVEs",
        "CVEs rated CRITICAL",
        "/api/v1/feeds/critical",
    )
    .await
}
