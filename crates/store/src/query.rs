//! The listing query: filters, the sort whitelist and pagination.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use openthreat_core::{Priority, Severity};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// Largest page the store serves; the API caps lower (100).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Columns a listing may be sorted by. Only these reach the SQL text (as
/// fixed strings), which is what makes sorting injection-proof.
///
/// [`SortField::Relevance`] is not a column: it orders full-text matches by
/// their rank (`ts_rank` on PostgreSQL, `bm25` on SQLite), best first in
/// `desc` order. Without a `q` there is nothing to rank, and it falls back
/// to `priority_score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortField {
    #[default]
    PriorityScore,
    CvssScore,
    PublishedAt,
    ModifiedAt,
    CveId,
    EpssScore,
    Relevance,
}

impl SortField {
    pub const ALL: [SortField; 7] = [
        SortField::PriorityScore,
        SortField::CvssScore,
        SortField::PublishedAt,
        SortField::ModifiedAt,
        SortField::CveId,
        SortField::EpssScore,
        SortField::Relevance,
    ];

    /// The column name, also the accepted spelling in queries.
    pub fn as_str(self) -> &'static str {
        match self {
            SortField::PriorityScore => "priority_score",
            SortField::CvssScore => "cvss_score",
            SortField::PublishedAt => "published_at",
            SortField::ModifiedAt => "modified_at",
            SortField::CveId => "cve_id",
            SortField::EpssScore => "epss_score",
            SortField::Relevance => "relevance",
        }
    }

    /// The column behind the sort; `relevance` orders by rank where there
    /// is a `q` and by `priority_score` where there is none.
    pub(crate) fn column(self) -> &'static str {
        match self {
            SortField::Relevance => "priority_score",
            other => other.as_str(),
        }
    }
}

impl fmt::Display for SortField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sort column outside the whitelist; the message lists the allowed ones
/// so that the API can answer 422 with it as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sort_by {0:?}: allowed values are priority_score, cvss_score, published_at, modified_at, cve_id, epss_score, relevance")]
pub struct SortFieldParseError(pub String);

impl FromStr for SortField {
    type Err = SortFieldParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SortField::ALL
            .into_iter()
            .find(|f| f.as_str() == s.trim())
            .ok_or_else(|| SortFieldParseError(s.to_string()))
    }
}

/// Sort direction; NULLs come last in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

impl SortOrder {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            SortOrder::Asc => "ASC",
            SortOrder::Desc => "DESC",
        }
    }

    /// The other direction (for ranks where lower is better).
    pub(crate) fn reversed(self) -> SortOrder {
        match self {
            SortOrder::Asc => SortOrder::Desc,
            SortOrder::Desc => SortOrder::Asc,
        }
    }
}

/// An unknown sort order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sort_order {0:?}: allowed values are asc, desc")]
pub struct SortOrderParseError(pub String);

impl FromStr for SortOrder {
    type Err = SortOrderParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "asc" => Ok(SortOrder::Asc),
            "desc" => Ok(SortOrder::Desc),
            _ => Err(SortOrderParseError(s.to_string())),
        }
    }
}

/// Filters, sort and page of a vulnerability listing. Every filter is
/// optional and they combine with AND. Values are always bound as
/// parameters, never spliced into SQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListQuery {
    /// 1-based page number.
    pub page: u32,
    /// Rows per page, 1 to [`MAX_PAGE_SIZE`].
    pub page_size: u32,
    pub severity: Option<Severity>,
    pub exploited: Option<bool>,
    /// Exact vendor name as in the CPE (case-insensitive).
    pub vendor: Option<String>,
    /// Exact product name as in the CPE (case-insensitive).
    pub product: Option<String>,
    /// A CWE id such as `CWE-79` (case-insensitive).
    pub cwe: Option<String>,
    pub min_cvss: Option<f64>,
    pub max_cvss: Option<f64>,
    /// Published on or after this day (UTC).
    pub published_after: Option<NaiveDate>,
    /// Published on or before this day (UTC), the whole day included.
    pub published_before: Option<NaiveDate>,
    /// Published at or after this instant; see [`ListQuery::published_within_days`].
    pub published_since: Option<DateTime<Utc>>,
    /// Rejected CVEs are hidden unless this is set.
    pub include_rejected: bool,
    pub llm_processed: Option<bool>,
    pub priority: Option<Priority>,
    /// Full-text search over CVE id, title, description, the LLM fields,
    /// vendors and products (PostgreSQL `tsvector`, SQLite FTS5; stemmed
    /// English words, any case). Every word must occur; words written
    /// together with punctuation (`CVE-2024-3400`, `pan-os`, `1.0.1`) must
    /// occur in that order, as a phrase. Punctuation is never query syntax.
    pub q: Option<String>,
    pub sort: SortField,
    pub order: SortOrder,
    /// Rows for a list of items: the wide lists (references, affected
    /// products, vendors, products, CWE ids, source tags) come back empty.
    /// They are most of a row's bytes, and decoding them was most of the
    /// time of an uncached list page that never shows them.
    #[serde(default)]
    pub summary: bool,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            page: 1,
            page_size: 20,
            severity: None,
            exploited: None,
            vendor: None,
            product: None,
            cwe: None,
            min_cvss: None,
            max_cvss: None,
            published_after: None,
            published_before: None,
            published_since: None,
            include_rejected: false,
            llm_processed: None,
            priority: None,
            q: None,
            sort: SortField::default(),
            order: SortOrder::default(),
            summary: false,
        }
    }
}

impl ListQuery {
    /// Restricts to CVEs published in the `days` days before `now`
    /// (the API's `/vulnerabilities/recent?days=`).
    pub fn published_within_days(mut self, days: u32, now: DateTime<Utc>) -> Self {
        self.published_since = Some(now - chrono::Duration::days(i64::from(days)));
        self
    }

    /// Checks the values that SQL cannot check for us.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.page == 0 {
            return Err(StoreError::InvalidInput("page must be at least 1".into()));
        }
        if self.page_size == 0 || self.page_size > MAX_PAGE_SIZE {
            return Err(StoreError::InvalidInput(format!(
                "page_size must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        for (name, v) in [("min_cvss", self.min_cvss), ("max_cvss", self.max_cvss)] {
            if let Some(v) = v {
                if !(0.0..=10.0).contains(&v) {
                    return Err(StoreError::InvalidInput(format!(
                        "{name} must be between 0 and 10"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The page of `items` out of `total` matches (a count that came back
    /// negative, which cannot happen, reads as 0).
    pub(crate) fn page_of<T>(&self, total: i64, items: Vec<T>) -> crate::Page<T> {
        let total = total.max(0) as u64;
        crate::Page {
            total,
            page: self.page,
            page_size: self.page_size,
            total_pages: total_pages(total, self.page_size),
            items,
        }
    }

    pub(crate) fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.page_size)
    }

    /// Normalised filter values, as they are stored.
    pub(crate) fn vendor_norm(&self) -> Option<String> {
        self.vendor.as_deref().map(|v| v.trim().to_lowercase())
    }
    pub(crate) fn product_norm(&self) -> Option<String> {
        self.product.as_deref().map(|v| v.trim().to_lowercase())
    }
    pub(crate) fn cwe_norm(&self) -> Option<String> {
        self.cwe.as_deref().map(|v| v.trim().to_uppercase())
    }
    /// `published_before` as an exclusive upper bound: the next midnight.
    pub(crate) fn published_before_exclusive(&self) -> Option<DateTime<Utc>> {
        self.published_before
            .and_then(|d| d.succ_opt())
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc())
    }
    pub(crate) fn published_after_inclusive(&self) -> Option<DateTime<Utc>> {
        self.published_after
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc())
    }
    /// The search terms of `q`, see [`search_terms`]. `None` when there is
    /// no `q` (no condition); an empty list when `q` has no word at all
    /// (it matches nothing).
    pub(crate) fn q_phrases(&self) -> Option<Vec<Vec<String>>> {
        let q = self.q.as_deref()?.trim();
        if q.is_empty() {
            return None;
        }
        Some(search_terms(q))
    }

    /// `q` as a CVE id when that is all it is, so relevance can put the
    /// CVE itself before the ones that merely mention it.
    pub(crate) fn q_cve_id(&self) -> Option<String> {
        let q = self.q.as_deref()?.trim();
        openthreat_core::CveId::parse(q)
            .ok()
            .map(|id| id.to_string())
    }

    /// Whether rows are ordered by full-text rank.
    pub(crate) fn ranked(&self) -> bool {
        self.sort == SortField::Relevance && self.q_phrases().is_some_and(|p| !p.is_empty())
    }
}

/// Most phrases and words per phrase taken from a query; the API caps `q`
/// at 200 characters anyway, this only bounds the SQL a query can build.
const MAX_PHRASES: usize = 16;
const MAX_WORDS_PER_PHRASE: usize = 16;

/// Splits what a user typed into phrases of words, the only form in which
/// user text reaches FTS5 or a tsquery.
///
/// Whitespace separates phrases; inside one, every run of letters and
/// digits is a word, lower-cased, and anything else only separates words
/// (`CVE-2024-3400` is the phrase `cve 2024 3400`, `"pan-os"` is `pan os`).
/// That is how both engines tokenise the indexed text (the PostgreSQL
/// document turns `-_./:@` into spaces first, like SQLite's `unicode61`),
/// so a phrase matches the same words in the same order on both. Since a
/// word holds no quote, operator, `*`, `:` or parenthesis, no FTS5 or
/// tsquery syntax can come from the user: `NEAR(`, `"`, `-x`, `a:*` are
/// plain words or nothing.
pub(crate) fn search_terms(q: &str) -> Vec<Vec<String>> {
    q.split_whitespace()
        .map(|chunk| {
            chunk
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .take(MAX_WORDS_PER_PHRASE)
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        })
        .filter(|p| !p.is_empty())
        .take(MAX_PHRASES)
        .collect()
}

/// Escapes `\`, `%` and `_` so a user's text matches literally in
/// `LIKE ... ESCAPE '\'`.
pub(crate) fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(crate) fn total_pages(total: u64, page_size: u32) -> u64 {
    total.div_ceil(u64::from(page_size.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_field_whitelist() {
        assert_eq!(
            "cvss_score".parse::<SortField>().unwrap(),
            SortField::CvssScore
        );
        let err = "id; DROP TABLE vulnerabilities"
            .parse::<SortField>()
            .unwrap_err();
        let msg = err.to_string();
        for f in SortField::ALL {
            assert!(msg.contains(f.as_str()), "{msg}");
        }
        assert!("DESC".parse::<SortOrder>().is_ok());
        assert!("sideways".parse::<SortOrder>().is_err());
    }

    #[test]
    fn search_terms_are_words_in_phrases() {
        let t = |q: &str| search_terms(q);
        assert_eq!(t("CVE-2024-3400"), [["cve", "2024", "3400"]]);
        assert_eq!(
            t("Remote  Desktop"),
            [vec!["remote".to_string()], vec!["desktop".to_string()]]
        );
        assert_eq!(
            t("pan-os 1.0.1g"),
            [vec!["pan", "os"], vec!["1", "0", "1g"]]
        );
        // Query syntax of either engine is only punctuation here.
        assert_eq!(
            t("NEAR(a b) \"x\" y* -z c:d 'e' OR"),
            [
                vec!["near", "a"],
                vec!["b"],
                vec!["x"],
                vec!["y"],
                vec!["z"],
                vec!["c", "d"],
                vec!["e"],
                vec!["or"],
            ]
        );
        assert!(t("%% * \" :: -").is_empty());
        assert_eq!(t("Überlauf"), [["überlauf"]]);
        assert_eq!(t(&"w ".repeat(100)).len(), MAX_PHRASES);
    }

    #[test]
    fn like_escaping_and_pages() {
        assert_eq!(escape_like(r"50%_a\b"), r"50\%\_a\\b");
        assert_eq!(total_pages(0, 20), 0);
        assert_eq!(total_pages(20, 20), 1);
        assert_eq!(total_pages(21, 20), 2);
    }
}
