//! Query parameters: their documented shapes and their validation.
//!
//! Parameters arrive as strings where the original was lenient (booleans,
//! severities, dates) and are parsed here, so that every bad value gets a 422
//! whose message starts with the parameter's name, instead of serde's generic
//! wording or, worse, a 500 from deeper down.

use chrono::NaiveDate;
use openthreat_core::{CveId, Severity};
use openthreat_store::{ListQuery, SortField, SortOrder};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;

/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Longest free-text parameter (`q`, `vendor`, ...), in characters.
pub const MAX_TEXT_LEN: usize = 200;
/// Deepest page: keeps `OFFSET` bounded so no request makes the database scan forever.
pub const MAX_PAGE: u32 = 10_000;

/// `page` and `page_size`, shared by every paginated route.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 10000, default = 1)]
    pub page: Option<u32>,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub page_size: Option<u32>,
}

impl PageParams {
    /// `(page, page_size)` after range checks.
    pub fn validate(&self) -> Result<(u32, u32), ApiError> {
        validate_page(self.page, self.page_size)
    }
}

/// `(page, page_size)` after range checks, defaults filled in.
///
/// Each parameter struct repeats the two fields rather than using
/// `#[serde(flatten)]`, because flattening makes serde hand numbers over as
/// strings and every `page=2` would be refused.
pub fn validate_page(page: Option<u32>, page_size: Option<u32>) -> Result<(u32, u32), ApiError> {
    let page = in_range("page", page.unwrap_or(1), 1, MAX_PAGE)?;
    let size = in_range("page_size", page_size.unwrap_or(20), 1, MAX_PAGE_SIZE)?;
    Ok((page, size))
}

/// Filters and sort of `GET /vulnerabilities`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 10000, default = 1)]
    pub page: Option<u32>,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub page_size: Option<u32>,
    /// CRITICAL, HIGH, MEDIUM, LOW, NONE or UNKNOWN (any case).
    pub severity: Option<String>,
    /// Only CVEs known to be exploited (CISA KEV), or only those not known to be.
    #[param(value_type = Option<bool>)]
    pub exploited: Option<String>,
    /// One of priority_score, cvss_score, published_at, modified_at, cve_id, epss_score.
    #[param(default = "priority_score")]
    pub sort_by: Option<String>,
    /// asc or desc.
    #[param(default = "desc")]
    pub sort_order: Option<String>,
}

/// `GET /vulnerabilities/recent`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecentParams {
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 10000, default = 1)]
    pub page: Option<u32>,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub page_size: Option<u32>,
    /// Published within this many days, 1 to 365.
    #[param(minimum = 1, maximum = 365, default = 30)]
    pub days: Option<u32>,
}

/// `GET /search`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words or a CVE id, searched (full text, stemmed, any case) in the id,
    /// title, description, the LLM fields, vendors and products. Every word
    /// must occur; words joined by punctuation (`CVE-2024-3400`, `pan-os`)
    /// as a phrase. No query syntax: quotes, `*`, `-`, `OR` are plain text.
    pub q: Option<String>,
    /// CRITICAL, HIGH, MEDIUM, LOW, NONE or UNKNOWN (any case).
    pub severity: Option<String>,
    #[param(value_type = Option<bool>)]
    pub exploited: Option<String>,
    /// Vendor as in CPE, e.g. `microsoft`.
    pub vendor: Option<String>,
    /// Product as in CPE, e.g. `exchange_server`.
    pub product: Option<String>,
    /// A CWE id, e.g. `CWE-79`.
    pub cwe: Option<String>,
    #[param(minimum = 0, maximum = 10)]
    pub min_cvss: Option<f64>,
    #[param(minimum = 0, maximum = 10)]
    pub max_cvss: Option<f64>,
    /// YYYY-MM-DD, inclusive.
    #[param(value_type = Option<String>, format = Date)]
    pub published_after: Option<String>,
    /// YYYY-MM-DD, inclusive.
    #[param(value_type = Option<String>, format = Date)]
    pub published_before: Option<String>,
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 10000, default = 1)]
    pub page: Option<u32>,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub page_size: Option<u32>,
    /// One of relevance, priority_score, cvss_score, published_at,
    /// modified_at, cve_id, epss_score. Default: relevance (best match
    /// first) when `q` is given, priority_score otherwise; relevance needs `q`.
    pub sort_by: Option<String>,
    /// asc or desc.
    #[param(default = "desc")]
    pub sort_order: Option<String>,
}

/// `GET /search/suggest`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SuggestParams {
    /// At least two characters: the start of a CVE id or a title.
    pub q: Option<String>,
    #[param(minimum = 1, maximum = 50, default = 10)]
    pub limit: Option<u32>,
}

/// A `limit` with a route-specific default and maximum.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitParams {
    /// How many entries, from 1 (the maximum depends on the route).
    #[param(minimum = 1)]
    pub limit: Option<u32>,
}

/// `days` for the timeline.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DaysParams {
    /// How many days back, 1 to 365.
    #[param(minimum = 1, maximum = 365, default = 30)]
    pub days: Option<u32>,
}

/// RSS feed options.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// Items in the feed, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<u32>,
    /// Only exploited CVEs (for `/feeds/rss`).
    #[param(value_type = Option<bool>, default = false)]
    pub exploited_only: Option<String>,
}

/// `POST /tasks/process-llm-batch` and `POST /llm/process/batch`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchParams {
    /// CVEs to pick, 1 to 100.
    #[param(minimum = 1, maximum = 100)]
    pub batch_size: Option<u32>,
    /// high, medium, low or all.
    #[param(default = "high")]
    pub priority: Option<String>,
}

/// Checks `min <= value <= max`, naming `param` otherwise.
pub fn in_range<T: PartialOrd + std::fmt::Display>(
    param: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ApiError> {
    if value < min || value > max {
        return Err(ApiError::invalid(
            param,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(value)
}

/// A boolean the way FastAPI accepted one: true/false, 1/0, yes/no, on/off.
pub fn parse_bool(param: &str, value: Option<&str>) -> Result<Option<bool>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    match v.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "true" | "1" | "yes" | "on" => Ok(Some(true)),
        "false" | "0" | "no" | "off" => Ok(Some(false)),
        _ => Err(ApiError::invalid(
            param,
            format!("expected true or false, got {:?}", truncate(v)),
        )),
    }
}

/// A severity in any case; empty means no filter.
pub fn parse_severity(param: &str, value: Option<&str>) -> Result<Option<Severity>, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<Severity>().map(Some).map_err(|_| {
            ApiError::invalid(
                param,
                format!(
                    "unknown value {:?}; allowed values: CRITICAL, HIGH, MEDIUM, LOW, NONE, UNKNOWN",
                    truncate(v)
                ),
            )
        }),
    }
}

/// `sort_by` against the whitelist, for a listing without full-text
/// search: `relevance` is refused there, as there is nothing to rank.
pub fn parse_sort(
    sort_by: Option<&str>,
    sort_order: Option<&str>,
) -> Result<(SortField, SortOrder), ApiError> {
    parse_sort_with(sort_by, sort_order, SortField::PriorityScore, false)
}

/// `sort_by` against the whitelist, `default` when absent; `relevance`
/// only where `ranked` (a search with `q`).
fn parse_sort_with(
    sort_by: Option<&str>,
    sort_order: Option<&str>,
    default: SortField,
    ranked: bool,
) -> Result<(SortField, SortOrder), ApiError> {
    let allowed = || {
        SortField::ALL
            .iter()
            .filter(|f| ranked || **f != SortField::Relevance)
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let field = match sort_by.map(str::trim) {
        None | Some("") => default,
        Some(v) => match v.parse::<SortField>() {
            Ok(SortField::Relevance) if !ranked => {
                return Err(ApiError::invalid(
                    "sort_by",
                    format!(
                        "relevance needs a search text (q); allowed values here: {}",
                        allowed()
                    ),
                ))
            }
            Ok(f) => f,
            Err(_) => {
                return Err(ApiError::invalid(
                    "sort_by",
                    format!(
                        "unknown value {:?}; allowed values: {}",
                        truncate(v),
                        allowed()
                    ),
                ))
            }
        },
    };
    let order = match sort_order.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("desc") => SortOrder::Desc,
        Some("asc") => SortOrder::Asc,
        Some(other) => {
            return Err(ApiError::invalid(
                "sort_order",
                format!(
                    "unknown value {:?}; allowed values: asc, desc",
                    truncate(other)
                ),
            ))
        }
    };
    Ok((field, order))
}

/// A free-text parameter: trimmed, empty treated as absent, length-checked,
/// control characters refused (they have no business in a search).
pub fn parse_text(param: &str, value: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if v.chars().count() > MAX_TEXT_LEN {
        return Err(ApiError::invalid(
            param,
            format!("at most {MAX_TEXT_LEN} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            param,
            "control characters are not allowed",
        ));
    }
    Ok(Some(v.to_string()))
}

/// A `YYYY-MM-DD` date.
pub fn parse_date(param: &str, value: Option<&str>) -> Result<Option<NaiveDate>, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .map(Some)
            .map_err(|_| {
                ApiError::invalid(
                    param,
                    format!("expected a date as YYYY-MM-DD, got {:?}", truncate(v)),
                )
            }),
    }
}

/// A CVE id from the path.
pub fn parse_cve_id(value: &str) -> Result<CveId, ApiError> {
    CveId::parse(value).map_err(|_| {
        ApiError::invalid(
            "cve_id",
            format!("expected CVE-YYYY-NNNN, got {:?}", truncate(value)),
        )
    })
}

/// A CVSS bound in `[0, 10]`.
pub fn parse_cvss(param: &str, value: Option<f64>) -> Result<Option<f64>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && (0.0..=10.0).contains(&v) => Ok(Some(v)),
        Some(v) => Err(ApiError::invalid(
            param,
            format!("must be between 0 and 10, got {v}"),
        )),
    }
}

/// A listing query for one page, every filter unset.
pub fn page_query(page: u32, page_size: u32) -> ListQuery {
    ListQuery {
        page,
        page_size,
        ..ListQuery::default()
    }
}

/// The query behind `GET /search`, validated.
pub fn search_query(p: &SearchParams) -> Result<ListQuery, ApiError> {
    let (page, size) = validate_page(p.page, p.page_size)?;
    let q = parse_text("q", p.q.as_deref())?;
    // With a search text the best matches come first unless another order
    // is asked for; without one, the usual priority order.
    let (default, ranked) = match q {
        Some(_) => (SortField::Relevance, true),
        None => (SortField::PriorityScore, false),
    };
    let (sort, order) = parse_sort_with(
        p.sort_by.as_deref(),
        p.sort_order.as_deref(),
        default,
        ranked,
    )?;
    let min_cvss = parse_cvss("min_cvss", p.min_cvss)?;
    let max_cvss = parse_cvss("max_cvss", p.max_cvss)?;
    if let (Some(lo), Some(hi)) = (min_cvss, max_cvss) {
        if lo > hi {
            return Err(ApiError::invalid(
                "min_cvss",
                format!("must not exceed max_cvss ({lo} > {hi})"),
            ));
        }
    }
    let after = parse_date("published_after", p.published_after.as_deref())?;
    let before = parse_date("published_before", p.published_before.as_deref())?;
    if let (Some(a), Some(b)) = (after, before) {
        if a > b {
            return Err(ApiError::invalid(
                "published_after",
                format!("must not be later than published_before ({a} > {b})"),
            ));
        }
    }
    let cwe = parse_text("cwe", p.cwe.as_deref())?
        .map(|c| {
            let upper = c.to_ascii_uppercase();
            let digits = upper.strip_prefix("CWE-").unwrap_or(&upper);
            if !digits.is_empty()
                && digits.len() <= 10
                && digits.bytes().all(|b| b.is_ascii_digit())
            {
                Ok(format!("CWE-{digits}"))
            } else {
                Err(ApiError::invalid(
                    "cwe",
                    format!("expected CWE-NNN, got {:?}", truncate(&c)),
                ))
            }
        })
        .transpose()?;
    Ok(ListQuery {
        q,
        severity: parse_severity("severity", p.severity.as_deref())?,
        exploited: parse_bool("exploited", p.exploited.as_deref())?,
        vendor: parse_text("vendor", p.vendor.as_deref())?.map(|v| v.to_lowercase()),
        product: parse_text("product", p.product.as_deref())?.map(|v| v.to_lowercase()),
        cwe,
        min_cvss,
        max_cvss,
        published_after: after,
        published_before: before,
        sort,
        order,
        ..page_query(page, size)
    })
}

/// Shortens an echoed bad value so an error message cannot be made huge.
fn truncate(v: &str) -> String {
    const MAX: usize = 40;
    if v.chars().count() <= MAX {
        v.to_string()
    } else {
        format!("{}…", v.chars().take(MAX).collect::<String>())
    }
}
