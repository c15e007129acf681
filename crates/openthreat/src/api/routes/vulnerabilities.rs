//! `/api/v1/vulnerabilities...`: lists, the recent and exploited views, one
//! vendor's CVEs, and one CVE in detail.

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use openthreat_store::{ListQuery, SortField, SortOrder};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::api::models::{Detail, ListItem, Paginated};
use crate::api::params::{
    in_range, page_query, parse_bool, parse_cve_id, parse_severity, parse_sort, parse_text,
    validate_page, ListParams, PageParams, RecentParams,
};
use crate::api::AppState;

pub(crate) const TAG: &str = "Vulnerabilities";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_vulnerabilities))
        .routes(routes!(exploited_vulnerabilities))
        .routes(routes!(recent_vulnerabilities))
        .routes(routes!(vendor_vulnerabilities))
        .routes(routes!(get_vulnerability))
}

/// Runs a query and shapes the page.
pub(crate) async fn page_of(
    state: &AppState,
    query: ListQuery,
) -> Result<Json<Paginated>, ApiError> {
    // List items show none of the wide lists: do not read them.
    let query = ListQuery {
        summary: true,
        ..query
    };
    let page = state.store.list_cves(&query).await?;
    let items = page.items.iter().map(ListItem::from).collect();
    Ok(Json(Paginated::new(
        page.total,
        query.page,
        query.page_size,
        items,
    )))
}

/// List CVEs, filtered and sorted.
#[utoipa::path(
    get,
    path = "/vulnerabilities",
    tag = TAG,
    params(ListParams),
    responses(
        (status = 200, description = "One page of CVEs", body = Paginated),
        (status = 422, description = "A parameter is invalid (named in `detail`)", body = ErrorBody),
    )
)]
pub(crate) async fn list_vulnerabilities(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<Paginated>, ApiError> {
    let (page, size) = validate_page(p.page, p.page_size)?;
    let (sort, order) = parse_sort(p.sort_by.as_deref(), p.sort_order.as_deref())?;
    let query = ListQuery {
        severity: parse_severity("severity", p.severity.as_deref())?,
        exploited: parse_bool("exploited", p.exploited.as_deref())?,
        sort,
        order,
        ..page_query(page, size)
    };
    page_of(&state, query).await
}

/// CVEs known to be exploited in the wild (CISA KEV), highest priority first.
#[utoipa::path(
    get,
    path = "/vulnerabilities/exploited",
    tag = TAG,
    params(PageParams),
    responses(
        (status = 200, description = "One page of exploited CVEs", body = Paginated),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn exploited_vulnerabilities(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Paginated>, ApiError> {
    let (page, size) = p.validate()?;
    let query = ListQuery {
        exploited: Some(true),
        ..page_query(page, size)
    };
    page_of(&state, query).await
}

/// CVEs published in the last `days` days, newest first.
#[utoipa::path(
    get,
    path = "/vulnerabilities/recent",
    tag = TAG,
    params(RecentParams),
    responses(
        (status = 200, description = "One page of recent CVEs", body = Paginated),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn recent_vulnerabilities(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<RecentParams>,
) -> Result<Json<Paginated>, ApiError> {
    let (page, size) = validate_page(p.page, p.page_size)?;
    let days = in_range("days", p.days.unwrap_or(30), 1, 365)?;
    let query = ListQuery {
        sort: SortField::PublishedAt,
        order: SortOrder::Desc,
        ..page_query(page, size)
    }
    .published_within_days(days, Utc::now());
    page_of(&state, query).await
}

/// CVEs naming one vendor (as in CPE, case-insensitive), highest priority first.
#[utoipa::path(
    get,
    path = "/vulnerabilities/vendor/{vendor}",
    tag = TAG,
    params(("vendor" = String, Path, description = "Vendor as in CPE, e.g. microsoft"), PageParams),
    responses(
        (status = 200, description = "One page of the vendor's CVEs", body = Paginated),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn vendor_vulnerabilities(
    State(state): State<AppState>,
    ApiPath(vendor): ApiPath<String>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Paginated>, ApiError> {
    let (page, size) = p.validate()?;
    let vendor = parse_text("vendor", Some(&vendor))?
        .ok_or_else(|| ApiError::invalid("vendor", "must not be empty"))?;
    let query = ListQuery {
        vendor: Some(vendor.to_lowercase()),
        ..page_query(page, size)
    };
    page_of(&state, query).await
}

/// One CVE with everything known about it.
#[utoipa::path(
    get,
    path = "/vulnerabilities/{cve_id}",
    tag = TAG,
    params(("cve_id" = String, Path, description = "A CVE id, e.g. CVE-2024-3400")),
    responses(
        (status = 200, description = "The CVE", body = Detail),
        (status = 404, description = "No such CVE", body = ErrorBody),
        (status = 422, description = "Not a CVE id", body = ErrorBody),
    )
)]
pub(crate) async fn get_vulnerability(
    State(state): State<AppState>,
    ApiPath(cve_id): ApiPath<String>,
) -> Result<Json<Detail>, ApiError> {
    let id = parse_cve_id(&cve_id)?;
    match state.store.get_cve(&id).await? {
        Some(record) => Ok(Json(Detail::from(&record))),
        None => Err(ApiError::not_found(format!("Vulnerability {id} not found"))),
    }
}
