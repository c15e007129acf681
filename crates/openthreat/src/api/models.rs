//! The JSON shapes the API answers with.
//!
//! Field names are the original's (clients read them); fields we add are new
//! names only, never renames. The conversions from [`CveRecord`] live here so
//! that the list, search and detail routes cannot drift apart.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use openthreat_store::VulnerabilityRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::tasks::{ScheduledEntry, WorkerInfo};

/// A CVE in a list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ListItem {
    #[schema(example = "CVE-2024-3400")]
    pub cve_id: String,
    pub title: String,
    pub description: String,
    pub cvss_score: Option<f64>,
    pub cvss_vector: Option<String>,
    /// CRITICAL, HIGH, MEDIUM, LOW, NONE or UNKNOWN.
    pub severity: String,
    pub exploited_in_the_wild: bool,
    pub priority_score: f64,
    pub published_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub sources: Vec<String>,
    pub simple_title: Option<String>,
    pub simple_description: Option<String>,
    pub llm_processed: bool,
}

/// A reference link of a CVE.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReferenceOut {
    pub url: String,
    pub source: Option<String>,
    pub tags: Vec<String>,
}

/// One CVE with everything known about it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Detail {
    #[serde(flatten)]
    pub item: ListItem,
    pub id: i64,
    pub cisa_due_date: Option<NaiveDate>,
    pub cwe_ids: Vec<String>,
    pub affected_products: Vec<String>,
    pub vendors: Vec<String>,
    pub products: Vec<String>,
    pub references: Vec<ReferenceOut>,
    pub source_tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    // Ours in addition:
    pub cisa_date_added: Option<NaiveDate>,
    pub cisa_required_action: Option<String>,
    /// CISA's knownRansomwareCampaignUse: true for "Known".
    pub cisa_known_ransomware: Option<bool>,
    pub cisa_vulnerability_name: Option<String>,
    pub epss_score: Option<f64>,
    pub epss_percentile: Option<f64>,
    pub epss_date: Option<NaiveDate>,
    /// 2.0, 3.0, 3.1 or 4.0.
    pub cvss_version: Option<String>,
    /// NVD's analysis status, e.g. "Analyzed".
    pub vuln_status: String,
    /// high, medium or low (see the priority rules).
    pub priority: String,
    pub recommended_action: Option<String>,
    pub llm_model: Option<String>,
    pub llm_processed_at: Option<DateTime<Utc>>,
}

impl From<&VulnerabilityRow> for ListItem {
    fn from(r: &VulnerabilityRow) -> Self {
        ListItem {
            cve_id: r.cve_id.clone(),
            title: r.title.clone(),
            description: r.description.clone(),
            cvss_score: r.cvss_score,
            cvss_vector: r.cvss_vector.clone(),
            severity: r.severity.as_str().to_string(),
            exploited_in_the_wild: r.exploited_in_the_wild,
            priority_score: r.priority_score,
            published_at: r.published_at,
            modified_at: r.modified_at,
            sources: r.sources.clone(),
            simple_title: r.simple_title.clone(),
            simple_description: r.simple_description.clone(),
            llm_processed: r.llm_processed,
        }
    }
}

impl From<&VulnerabilityRow> for Detail {
    fn from(r: &VulnerabilityRow) -> Self {
        Detail {
            item: ListItem::from(r),
            id: r.id,
            cisa_due_date: r.cisa_due_date,
            cwe_ids: r.cwe_ids.clone(),
            affected_products: r.affected_products.clone(),
            vendors: r.vendors.clone(),
            products: r.products.clone(),
            references: r
                .references
                .iter()
                .map(|x| ReferenceOut {
                    url: x.url.clone(),
                    source: x.source.clone(),
                    tags: x.tags.clone(),
                })
                .collect(),
            source_tags: r.source_tags.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            cisa_date_added: r.kev_date_added,
            cisa_required_action: r.kev_required_action.clone(),
            cisa_known_ransomware: r.kev_ransomware_use,
            cisa_vulnerability_name: r.kev_vulnerability_name.clone(),
            epss_score: r.epss_score,
            epss_percentile: r.epss_percentile,
            epss_date: r.epss_date,
            cvss_version: r.cvss_version.clone(),
            vuln_status: r.vuln_status.clone(),
            priority: r.priority.as_str().to_string(),
            recommended_action: r.recommended_action.clone(),
            llm_model: r.llm_model.clone(),
            llm_processed_at: r.llm_processed_at,
        }
    }
}

/// LLM progress, the answer of `tasks.get_llm_stats` and `GET /llm/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LlmStats {
    pub total: u64,
    pub processed: u64,
    pub pending: u64,
    /// Unprocessed CVEs of the high priority class.
    pub high_priority_pending: u64,
    /// `processed / total * 100`, two decimals (0 when there are no CVEs).
    pub completion_percentage: f64,
    /// Pending CVEs with failed LLM attempts that will be tried again.
    #[serde(default)]
    pub failed: u64,
    /// CVEs set aside after three failed attempts (`openthreat llm --parked`).
    #[serde(default)]
    pub parked: u64,
}

/// `GET /stats`. Read from the stats cache (JSON written from the store's
/// types), hence `Deserialize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub total_vulnerabilities: u64,
    pub exploited_vulnerabilities: u64,
    pub critical_vulnerabilities: u64,
    pub high_vulnerabilities: u64,
    /// Count per upper-case severity name.
    pub by_severity: BTreeMap<String, u64>,
    /// CVEs modified in the last 24 hours.
    pub recent_updates: u64,
    /// The latest change to any CVE.
    pub last_update: Option<DateTime<Utc>>,
    /// LLM progress (ours in addition).
    #[serde(default)]
    pub llm: Option<LlmStats>,
}

/// A vendor and how many CVEs name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VendorCount {
    pub name: String,
    pub count: u64,
}

/// CVEs published on one day (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DayCount {
    pub date: NaiveDate,
    pub count: u64,
}

/// One ingestion run (NVD sync, KEV, EPSS, feed import).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IngestionRun {
    pub id: i64,
    /// `nvd`, `kev`, `epss`, ...
    pub source: String,
    /// `running`, `success` or `failed`.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_seconds: Option<f64>,
    pub records_fetched: u64,
    pub records_inserted: u64,
    pub records_updated: u64,
    pub records_failed: u64,
    /// Why the run failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// One page of CVEs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Paginated {
    pub total: u64,
    pub page: u32,
    pub page_size: u32,
    pub total_pages: u64,
    pub items: Vec<ListItem>,
}

impl Paginated {
    pub fn new(total: u64, page: u32, page_size: u32, items: Vec<ListItem>) -> Self {
        Paginated {
            total,
            page,
            page_size,
            total_pages: total.div_ceil(u64::from(page_size.max(1))),
            items,
        }
    }
}

/// One search suggestion.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Suggestion {
    pub cve_id: String,
    pub title: String,
}

/// `GET /search/suggest`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Suggestions {
    pub suggestions: Vec<Suggestion>,
}

/// `GET /stats/top-vendors`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopVendors {
    pub vendors: Vec<VendorCount>,
}

/// One severity's share.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SeverityShare {
    pub severity: String,
    pub count: u64,
    /// Share of all CVEs in percent, two decimals.
    pub percentage: f64,
}

/// `GET /stats/severity-distribution`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SeverityDistribution {
    /// Every severity, most severe first, including those with no CVE.
    pub distribution: Vec<SeverityShare>,
    pub total: u64,
}

/// `GET /stats/timeline`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Timeline {
    /// One entry per day, oldest first, days without CVEs included as 0.
    pub timeline: Vec<DayCount>,
}

/// `GET /stats/ingestion-history`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IngestionHistory {
    pub runs: Vec<IngestionRun>,
}

/// The answer of every route that starts a task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskResponse {
    pub task_id: String,
    /// `queued`.
    pub status: String,
    pub message: String,
}

/// `GET /tasks/{task_id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskStatusOut {
    pub task_id: String,
    /// Celery's state: PENDING, STARTED, SUCCESS, FAILURE, RETRY, REVOKED.
    pub status: String,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// `GET /tasks/scheduled/list`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduledList {
    pub scheduled_tasks: Vec<ScheduledEntry>,
    pub total: usize,
}

/// `GET /tasks/workers/status`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkersStatus {
    /// `healthy` when at least one worker answered, else `no_workers`.
    pub status: String,
    pub workers: Vec<WorkerInfo>,
    pub total_workers: usize,
}

/// `POST /llm/process/{cve_id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LlmQueued {
    /// `queued`.
    pub status: String,
    pub task_id: String,
    pub cve_id: String,
    pub message: String,
}

/// `POST /llm/process/batch`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LlmBatchQueued {
    /// `queued`.
    pub status: String,
    pub task_id: String,
    pub batch_size: u32,
    pub priority: String,
    pub message: String,
}

/// `GET /llm/task/{task_id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LlmTaskOut {
    pub task_id: String,
    /// pending, running, retrying, success, failed or revoked.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `healthy` when every check passed, else `degraded`.
    pub status: String,
    /// `connected` or `disconnected`.
    pub database: String,
    pub version: String,
    pub timestamp: DateTime<Utc>,
    /// `connected`, `disconnected`, or `embedded` (the SQLite queue).
    pub broker: String,
    /// What the LLM check found, e.g. `reachable, model present`.
    pub llm: String,
    /// Workers answering remote control; null when no queue is plugged in.
    pub workers: Option<usize>,
}
