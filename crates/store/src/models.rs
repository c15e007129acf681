//! Row and result types shared by both backends, shaped like the API's JSON.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use openthreat_core::{
    Cve, CveId, Cvss, CvssVersion, Epss, KevFacts, Priority, Reference, Severity, VulnStatus,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// Which database a [`crate::Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `vulnerabilities`, every column: the API's Detail shape.
///
/// Field names are the original OpenThreat's JSON names; the KEV, EPSS,
/// CVSS-version, vuln-status and LLM bookkeeping fields are ours. Internal
/// bookkeeping (`llm_input_hash`, `llm_claimed_until`) is kept but not
/// serialised, because clients have no use for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VulnerabilityRow {
    pub id: i64,
    pub cve_id: String,
    pub title: String,
    pub description: String,
    pub cvss_score: Option<f64>,
    pub cvss_vector: Option<String>,
    pub cvss_version: Option<String>,
    pub severity: Severity,
    pub published_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub vuln_status: String,
    pub exploited_in_the_wild: bool,
    pub cisa_due_date: Option<NaiveDate>,
    pub kev_date_added: Option<NaiveDate>,
    pub kev_required_action: Option<String>,
    pub kev_ransomware_use: Option<bool>,
    pub kev_vulnerability_name: Option<String>,
    pub epss_score: Option<f64>,
    pub epss_percentile: Option<f64>,
    pub epss_date: Option<NaiveDate>,
    pub cwe_ids: Vec<String>,
    pub affected_products: Vec<String>,
    pub vendors: Vec<String>,
    pub products: Vec<String>,
    pub references: Vec<Reference>,
    pub sources: Vec<String>,
    pub source_tags: Vec<String>,
    pub priority_score: f64,
    pub priority: Priority,
    pub simple_title: Option<String>,
    pub simple_description: Option<String>,
    pub recommended_action: Option<String>,
    pub llm_processed: bool,
    pub llm_processed_at: Option<DateTime<Utc>>,
    pub llm_model: Option<String>,
    pub llm_error: Option<String>,
    pub llm_attempts: i32,
    #[serde(skip)]
    pub llm_input_hash: Option<String>,
    #[serde(skip)]
    pub llm_claimed_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl VulnerabilityRow {
    /// The stored facts as a [`Cve`] again, e.g. for the LLM prompt or for
    /// recomputing the priority.
    pub fn to_cve(&self) -> Result<Cve> {
        let cve_id =
            CveId::parse(&self.cve_id).map_err(|e| StoreError::Data(format!("stored {e}")))?;
        let cvss = match (self.cvss_score, &self.cvss_version) {
            (Some(score), version) => Some(Cvss {
                score,
                vector: self.cvss_vector.clone().unwrap_or_default(),
                version: version
                    .as_deref()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(CvssVersion::V31),
            }),
            (None, _) => None,
        };
        Ok(Cve {
            cve_id,
            title: self.title.clone(),
            description: self.description.clone(),
            cvss,
            severity: self.severity,
            published_at: self.published_at,
            modified_at: self.modified_at,
            vuln_status: VulnStatus::parse(&self.vuln_status),
            cwe_ids: self.cwe_ids.clone(),
            references: self.references.clone(),
            affected_products: self.affected_products.clone(),
            vendors: self.vendors.clone(),
            products: self.products.clone(),
            sources: self.sources.clone(),
            source_tags: self.source_tags.clone(),
            kev: self.exploited_in_the_wild.then(|| KevFacts {
                date_added: self.kev_date_added,
                due_date: self.cisa_due_date,
                required_action: self.kev_required_action.clone(),
                ransomware_use: self.kev_ransomware_use,
                vulnerability_name: self.kev_vulnerability_name.clone(),
            }),
            epss: self.epss_score.map(|score| Epss {
                score,
                percentile: self.epss_percentile,
                date: self.epss_date,
            }),
        })
    }
}

/// The columns of `vulnerabilities` a list page shows, in the order
/// [`row_from!`] reads them; a macro so that [`SUMMARY_COLUMNS`] and
/// [`VULN_COLUMNS`] are both built from one literal.
macro_rules! narrow_columns {
    () => {
        "id, cve_id, title, description, cvss_score, cvss_vector, cvss_version, severity, \
         published_at, modified_at, vuln_status, exploited_in_the_wild, cisa_due_date, \
         kev_date_added, kev_required_action, kev_ransomware_use, kev_vulnerability_name, \
         epss_score, epss_percentile, epss_date, sources, priority_score, priority, \
         simple_title, simple_description, recommended_action, llm_processed, \
         llm_processed_at, llm_model, llm_error, llm_attempts, llm_input_hash, \
         llm_claimed_until, created_at, updated_at"
    };
}

/// The column list of `vulnerabilities` in the order [`row_from!`] reads it
/// (by position: looking 41 names up in every row of a page was a measurable
/// part of an uncached list request). The wide lists come last so that a
/// summary listing is a prefix of it, [`SUMMARY_COLUMNS`].
/// `references` is a reserved word in SQL, hence the quotes.
pub(crate) const VULN_COLUMNS: &str = concat!(
    narrow_columns!(),
    ", cwe_ids, affected_products, vendors, products, \"references\", source_tags"
);

/// [`VULN_COLUMNS`] for a [`crate::ListQuery::summary`] listing: without the
/// wide lists, which [`row_from!`] then leaves empty. They are most of a
/// row's bytes, and a list page never shows them.
pub(crate) const SUMMARY_COLUMNS: &str = narrow_columns!();

/// How many of [`VULN_COLUMNS`] come before the wide lists: a row with more
/// columns is a full one.
pub(crate) const NARROW_COLUMN_COUNT: usize = column_count(SUMMARY_COLUMNS);

/// The number of names in a comma-separated column list.
const fn column_count(list: &str) -> usize {
    let bytes = list.as_bytes();
    let (mut i, mut n) = (0, 1);
    while i < bytes.len() {
        if bytes[i] == b',' {
            n += 1;
        }
        i += 1;
    }
    n
}

/// Builds a [`VulnerabilityRow`] from a `PgRow` or a `SqliteRow` selected
/// with [`VULN_COLUMNS`] or [`SUMMARY_COLUMNS`].
///
/// Columns are read by position, in the order the struct literal below
/// lists them (Rust evaluates a struct expression's fields in source order),
/// which is the order of [`VULN_COLUMNS`]. A row with only the narrow
/// columns gets empty wide lists.
///
/// A macro rather than a generic function because the two row types share
/// method names but the trait bounds to express "decodable on either" would
/// be longer than the body. Both backends store the same logical types
/// (PostgreSQL natively, SQLite as RFC 3339 text and JSON text), which sqlx
/// decodes into the same Rust types.
macro_rules! row_from {
    // A JSON list column; its element type comes from the field.
    (@json $row:ident, $index:expr) => {{
        let sqlx::types::Json(v) = $row.try_get($index)?;
        v
    }};
    // A wide list: empty when the row is a summary's narrow prefix.
    (@wide $row:ident, $wide:ident, $index:expr) => {{
        let index = $index;
        if $wide {
            $crate::models::row_from!(@json $row, index)
        } else {
            Vec::new()
        }
    }};
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        let wide = row.len() > $crate::models::NARROW_COLUMN_COUNT;
        let mut at = 0usize;
        let mut next = || {
            at += 1;
            at - 1
        };
        $crate::models::VulnerabilityRow {
            id: row.try_get(next())?,
            cve_id: row.try_get(next())?,
            title: row.try_get(next())?,
            description: row.try_get(next())?,
            cvss_score: row.try_get(next())?,
            cvss_vector: row.try_get(next())?,
            cvss_version: row.try_get(next())?,
            severity: row
                .try_get::<String, _>(next())?
                .parse()
                .unwrap_or(openthreat_core::Severity::Unknown),
            published_at: row.try_get(next())?,
            modified_at: row.try_get(next())?,
            vuln_status: row.try_get(next())?,
            exploited_in_the_wild: row.try_get(next())?,
            cisa_due_date: row.try_get(next())?,
            kev_date_added: row.try_get(next())?,
            kev_required_action: row.try_get(next())?,
            kev_ransomware_use: row.try_get(next())?,
            kev_vulnerability_name: row.try_get(next())?,
            epss_score: row.try_get(next())?,
            epss_percentile: row.try_get(next())?,
            epss_date: row.try_get(next())?,
            sources: $crate::models::row_from!(@json row, next()),
            priority_score: row.try_get(next())?,
            priority: row
                .try_get::<String, _>(next())?
                .parse()
                .unwrap_or(openthreat_core::Priority::Low),
            simple_title: row.try_get(next())?,
            simple_description: row.try_get(next())?,
            recommended_action: row.try_get(next())?,
            llm_processed: row.try_get(next())?,
            llm_processed_at: row.try_get(next())?,
            llm_model: row.try_get(next())?,
            llm_error: row.try_get(next())?,
            llm_attempts: row.try_get(next())?,
            llm_input_hash: row.try_get(next())?,
            llm_claimed_until: row.try_get(next())?,
            created_at: row.try_get(next())?,
            updated_at: row.try_get(next())?,
            cwe_ids: $crate::models::row_from!(@wide row, wide, next()),
            affected_products: $crate::models::row_from!(@wide row, wide, next()),
            vendors: $crate::models::row_from!(@wide row, wide, next()),
            products: $crate::models::row_from!(@wide row, wide, next()),
            references: $crate::models::row_from!(@wide row, wide, next()),
            source_tags: $crate::models::row_from!(@wide row, wide, next()),
        }
    }};
}
pub(crate) use row_from;

/// One page of a listing, the API's Paginated shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// Matching rows over all pages.
    pub total: u64,
    pub page: u32,
    pub page_size: u32,
    /// `ceil(total / page_size)`; 0 when nothing matches.
    pub total_pages: u64,
    pub items: Vec<T>,
}

/// What a batch upsert did, record by record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpsertSummary {
    pub inserted: u64,
    pub updated: u64,
    /// Identical to what is stored: nothing written, `updated_at` untouched.
    pub unchanged: u64,
    /// Older (by `modified_at`) than the stored record, so ignored.
    pub skipped_older: u64,
    /// Records rejected before they reached the database: `(cve_id, reason)`.
    /// The rest of the batch is stored regardless.
    pub failed: Vec<(String, String)>,
}

impl UpsertSummary {
    /// Adds another summary's counts to this one (for multi-batch imports).
    pub fn merge(&mut self, other: UpsertSummary) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.skipped_older += other.skipped_older;
        self.failed.extend(other.failed);
    }
}

/// What applying KEV or EPSS facts did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplySummary {
    /// Facts received.
    pub received: u64,
    /// Stored CVEs whose row changed.
    pub updated: u64,
    /// Facts about CVEs the store does not hold (yet).
    pub unknown: u64,
}

/// A search suggestion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    pub cve_id: String,
    pub title: String,
}

/// Counts for `/stats`. Rejected CVEs are not counted, as they are not listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub total_vulnerabilities: u64,
    pub exploited_vulnerabilities: u64,
    pub critical_vulnerabilities: u64,
    pub high_vulnerabilities: u64,
    /// Every severity name (upper case) with its count, zeros included.
    pub by_severity: BTreeMap<String, u64>,
    /// Modified within the 24 hours up to `now` (later dates are not counted).
    pub recent_updates: u64,
    /// The latest `updated_at` of any row.
    pub last_update: Option<DateTime<Utc>>,
    pub llm: LlmStats,
}

/// LLM progress, the shape of `tasks.get_llm_stats` and `/llm/stats`.
///
/// Rejected CVEs are not counted. `failed`, `parked` and `claimed` are
/// subsets of `pending` (everything not processed), so operators can tell a
/// backlog that is merely waiting from one that keeps failing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlmStats {
    pub total: u64,
    pub processed: u64,
    pub pending: u64,
    pub high_priority_pending: u64,
    /// `processed / total * 100`, rounded to two decimals; 0 when empty.
    pub completion_percentage: f64,
    /// Pending with at least one failed attempt, still retried (attempts
    /// below [`crate::LLM_MAX_ATTEMPTS`]).
    pub failed: u64,
    /// Pending and no longer retried: [`crate::LLM_MAX_ATTEMPTS`] failed
    /// attempts or more (see [`crate::Store::parked_llm`]).
    pub parked: u64,
    /// Pending and claimed by a batch or a worker right now (claim not expired).
    pub claimed: u64,
}

/// The raw counts behind [`LlmStats`], as both backends query them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LlmCounts {
    pub total: u64,
    pub processed: u64,
    pub high_priority_pending: u64,
    pub failed: u64,
    pub parked: u64,
    pub claimed: u64,
}

impl LlmStats {
    pub(crate) fn new(c: LlmCounts) -> Self {
        let pct = if c.total == 0 {
            0.0
        } else {
            (c.processed as f64 / c.total as f64 * 10_000.0).round() / 100.0
        };
        LlmStats {
            total: c.total,
            processed: c.processed,
            pending: c.total.saturating_sub(c.processed),
            high_priority_pending: c.high_priority_pending,
            completion_percentage: pct,
            failed: c.failed,
            parked: c.parked,
            claimed: c.claimed,
        }
    }
}

/// What a batch claim ([`crate::Store::claim_llm_batch`]) selects.
#[derive(Debug, Clone)]
pub struct LlmClaim {
    /// One priority class, or `None` for all classes.
    pub priority: Option<Priority>,
    pub limit: u32,
    /// How long the claim holds. A claim is a lease, not a lock: when the
    /// worker holding it dies, it lapses and the CVE is picked again.
    pub claim_for: chrono::Duration,
    /// Only CVEs added (`created_at`) at or after this time, for
    /// `process_new_cves` (CVEs added in the last hour).
    pub created_after: Option<DateTime<Utc>>,
    /// CVEs with this many failed attempts or more are parked, not claimed
    /// (normally [`crate::LLM_MAX_ATTEMPTS`]).
    pub max_attempts: i32,
}

/// The outcome of claiming one CVE by id ([`crate::Store::claim_llm_one`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOne {
    /// Claimed: the row as stored, `llm_claimed_until` set to the new claim.
    Claimed(Box<VulnerabilityRow>),
    /// Already enriched for its current description: nothing to do.
    AlreadyProcessed,
    /// Another batch or worker holds an unexpired claim.
    ClaimedByOther { until: DateTime<Utc> },
    /// Failed `max_attempts` times: not retried until someone intervenes.
    Parked {
        attempts: i32,
        error: Option<String>,
    },
    /// No such CVE in the store.
    NotFound,
}

/// The claim state of one CVE, read under a row lock before claiming it.
#[derive(Debug, Clone)]
pub(crate) struct ClaimState {
    pub processed: bool,
    pub attempts: i32,
    pub error: Option<String>,
    pub claimed_until: Option<DateTime<Utc>>,
}

/// Decides, independent of the database, whether one CVE may be claimed:
/// `None` when it may, otherwise the outcome to report. A claim held until
/// exactly `expected_claim` counts as the caller's own (the batch that
/// claimed the CVE handed that time to the task), so the task may renew it.
/// Times are compared at microsecond precision, which both backends store.
pub(crate) fn claim_refusal(
    state: &ClaimState,
    expected_claim: Option<DateTime<Utc>>,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Option<ClaimOne> {
    if state.processed {
        return Some(ClaimOne::AlreadyProcessed);
    }
    if state.attempts >= max_attempts {
        return Some(ClaimOne::Parked {
            attempts: state.attempts,
            error: state.error.clone(),
        });
    }
    match state.claimed_until {
        Some(until) if until > now && Some(micros(until)) != expected_claim.map(micros) => {
            Some(ClaimOne::ClaimedByOther { until })
        }
        _ => None,
    }
}

/// `t` truncated to microseconds, the precision both backends keep, so that
/// a claim time handed out equals the one stored and compares equal later.
pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
}

/// Sorts claimed rows by priority score (highest first), then id: `UPDATE
/// ... RETURNING` gives no order guarantee, the caller wants the claim order.
pub(crate) fn sort_claimed(rows: &mut [VulnerabilityRow]) {
    rows.sort_by(|a, b| {
        b.priority_score
            .total_cmp(&a.priority_score)
            .then(a.id.cmp(&b.id))
    });
}

/// A vendor and how many CVEs name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VendorCount {
    pub name: String,
    pub count: u64,
}

/// One bar of the severity distribution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeverityCount {
    pub severity: Severity,
    pub count: u64,
    /// Share of the total in percent, two decimals.
    pub percentage: f64,
}

/// `/stats/severity-distribution`: all six severities, most severe first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeverityDistribution {
    pub distribution: Vec<SeverityCount>,
    pub total: u64,
}

/// CVEs published on one day (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayCount {
    pub date: NaiveDate,
    pub count: u64,
}

/// State of an ingestion run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Success,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "success" => RunStatus::Success,
            "failed" => RunStatus::Failed,
            _ => RunStatus::Running,
        }
    }
}

/// How an ingestion run ended; passed to `finish_ingestion_run`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// `true` for success; `false` (with `error`) for failure.
    pub success: bool,
    pub records_fetched: u64,
    pub records_inserted: u64,
    pub records_updated: u64,
    pub records_failed: u64,
    pub error: Option<String>,
}

/// One row of `ingestion_runs`, the shape of `/stats/ingestion-history`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestionRun {
    pub id: i64,
    pub source: String,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_seconds: Option<f64>,
    pub records_fetched: u64,
    pub records_inserted: u64,
    pub records_updated: u64,
    pub records_failed: u64,
    pub error: Option<String>,
}

/// A cached JSON value with the time it was written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheEntry {
    pub value: serde_json::Value,
    pub stored_at: DateTime<Utc>,
}

/// Builds the distribution from per-severity counts (zeros included).
pub(crate) fn distribution(counts: BTreeMap<String, u64>) -> SeverityDistribution {
    let total: u64 = counts.values().sum();
    let distribution = Severity::ALL
        .iter()
        .map(|s| {
            let count = counts.get(s.as_str()).copied().unwrap_or(0);
            let percentage = if total == 0 {
                0.0
            } else {
                (count as f64 / total as f64 * 10_000.0).round() / 100.0
            };
            SeverityCount {
                severity: *s,
                count,
                percentage,
            }
        })
        .collect();
    SeverityDistribution {
        distribution,
        total,
    }
}

/// First day of a `days`-day timeline ending on `now`'s date, and its midnight.
pub(crate) fn timeline_start(days: u32, now: DateTime<Utc>) -> (NaiveDate, DateTime<Utc>) {
    let back = i64::from(days.max(1)) - 1;
    let first = now.date_naive() - chrono::Duration::days(back);
    (first, first.and_time(chrono::NaiveTime::MIN).and_utc())
}

/// Midnight after `now`'s date: the exclusive end of a timeline.
pub(crate) fn day_after(now: DateTime<Utc>) -> DateTime<Utc> {
    (now.date_naive() + chrono::Duration::days(1))
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
}

/// One entry per day from `first`, zero where `counts` has none.
pub(crate) fn fill_days(
    first: NaiveDate,
    days: u32,
    counts: &std::collections::HashMap<NaiveDate, u64>,
) -> Vec<DayCount> {
    (0..i64::from(days))
        .map(|i| {
            let date = first + chrono::Duration::days(i);
            DayCount {
                date,
                count: counts.get(&date).copied().unwrap_or(0),
            }
        })
        .collect()
}

pub(crate) fn seconds_between(start: DateTime<Utc>, end: DateTime<Utc>) -> f64 {
    (end - start).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `row_from!` reads by position: the wide lists must be exactly the
    /// columns after the narrow prefix, and a summary exactly that prefix.
    #[test]
    fn summary_columns_are_the_narrow_prefix_of_the_column_list() {
        let all: Vec<&str> = VULN_COLUMNS.split(',').map(str::trim).collect();
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "a column listed twice");
        assert_eq!(
            all[NARROW_COLUMN_COUNT..],
            [
                "cwe_ids",
                "affected_products",
                "vendors",
                "products",
                "\"references\"",
                "source_tags"
            ]
        );
        let summary: Vec<&str> = SUMMARY_COLUMNS.split(", ").collect();
        assert_eq!(summary, all[..NARROW_COLUMN_COUNT]);
    }
}
