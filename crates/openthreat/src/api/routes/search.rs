//! `/api/v1/search`: every filter at once, and prefix suggestions.

use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::{ApiError, ApiQuery, ErrorBody};
use crate::api::models::{Paginated, Suggestion, Suggestions};
use crate::api::params::{in_range, parse_text, search_query, SearchParams, SuggestParams};
use crate::api::routes::vulnerabilities::page_of;
use crate::api::AppState;

pub(crate) const TAG: &str = "Search";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(suggest))
}

/// Full-text search combined with every filter.
#[utoipa::path(
    get,
    path = "/search",
    tag = TAG,
    params(SearchParams),
    responses(
        (status = 200, description = "One page of matching CVEs", body = Paginated),
        (status = 422, description = "A parameter is invalid (named in `detail`)", body = ErrorBody),
    )
)]
pub(crate) async fn search(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<SearchParams>,
) -> Result<Json<Paginated>, ApiError> {
    page_of(&state, search_query(&p)?).await
}

/// CVEs whose id or title starts with `q`, for a search box.
#[utoipa::path(
    get,
    path = "/search/suggest",
    tag = TAG,
    params(SuggestParams),
    responses(
        (status = 200, description = "Suggestions", body = Suggestions),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn suggest(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<SuggestParams>,
) -> Result<Json<Suggestions>, ApiError> {
    let q = parse_text("q", p.q.as_deref())?.unwrap_or_default();
    if q.chars().count() < 2 {
        return Err(ApiError::invalid("q", "at least 2 characters"));
    }
    let limit = in_range("limit", p.limit.unwrap_or(10), 1, 50)?;
    let found = state.store.suggest(&q, limit).await?;
    Ok(Json(Suggestions {
        suggestions: found
            .into_iter()
            .map(|s| Suggestion {
                cve_id: s.cve_id,
                title: s.title,
            })
            .collect(),
    }))
}
