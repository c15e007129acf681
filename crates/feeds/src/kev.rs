//! CISA's Known Exploited Vulnerabilities catalog.
//!
//! The catalog is one JSON document (about 1.5 MB), so it is parsed whole;
//! each entry is checked on its own, so one bad entry is reported and
//! skipped rather than failing the catalog. CISA's values sometimes carry
//! stray spaces (`" CrushFTP Unprotected ..."`); every text is trimmed.
//!
//! Whether to skip an unchanged catalog is the application's decision: it
//! compares [`KevCatalog::date_released`] with the one it stored.

use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use openthreat_core::{CveId, KevFacts};
use serde::Deserialize;
use url::Url;

use crate::error::FeedsError;
use crate::http::{build_client, get_with_retry, RetryPolicy, USER_AGENT};
use crate::nvd::map::{parse_date, parse_nvd_timestamp};

/// Where CISA publishes the catalog.
pub const DEFAULT_KEV_URL: &str =
    "https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json";

/// One catalog entry: the facts OpenThreat keeps ([`KevFacts`]) plus the
/// catalog's descriptive fields, for callers that show or log them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KevEntry {
    pub cve_id: CveId,
    pub facts: KevFacts,
    pub vendor_project: Option<String>,
    pub product: Option<String>,
    pub short_description: Option<String>,
    pub notes: Option<String>,
    pub cwes: Vec<String>,
}

/// An entry that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KevSkipped {
    /// Index in `vulnerabilities[]`.
    pub index: usize,
    /// The `cveID` as written, when there was one.
    pub cve_id: Option<String>,
    pub reason: String,
}

/// The parsed catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KevCatalog {
    pub catalog_version: Option<String>,
    /// When CISA released this version; unchanged means nothing to do.
    pub date_released: Option<DateTime<Utc>>,
    /// The catalog's own `count`, for a sanity check against `entries`.
    pub count: Option<u64>,
    pub entries: Vec<KevEntry>,
    pub skipped: Vec<KevSkipped>,
}

impl KevCatalog {
    /// `(id, facts)` pairs, the shape the store takes.
    pub fn facts(&self) -> impl Iterator<Item = (&CveId, &KevFacts)> {
        self.entries.iter().map(|e| (&e.cve_id, &e.facts))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCatalog {
    catalog_version: Option<String>,
    date_released: Option<String>,
    count: Option<u64>,
    vulnerabilities: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    #[serde(rename = "cveID")]
    cve_id: String,
    vendor_project: Option<String>,
    product: Option<String>,
    vulnerability_name: Option<String>,
    date_added: Option<String>,
    short_description: Option<String>,
    required_action: Option<String>,
    due_date: Option<String>,
    known_ransomware_campaign_use: Option<String>,
    notes: Option<String>,
    #[serde(default)]
    cwes: Option<Vec<String>>,
}

/// Parses the catalog JSON. `origin` (path or URL) names the source in errors.
pub fn parse_kev(bytes: &[u8], origin: &str) -> Result<KevCatalog, FeedsError> {
    let raw: RawCatalog =
        serde_json::from_slice(bytes).map_err(|e| FeedsError::json(origin, &e, None))?;
    let vulns = raw.vulnerabilities.ok_or_else(|| FeedsError::Format {
        origin: origin.to_string(),
        message: "no \"vulnerabilities\" array: not a KEV catalog".into(),
    })?;
    let mut entries = Vec::with_capacity(vulns.len());
    let mut skipped = Vec::new();
    for (index, value) in vulns.into_iter().enumerate() {
        let id_hint = value
            .get("cveID")
            .and_then(|v| v.as_str())
            .map(|s| s.trim().to_string());
        match parse_entry(value) {
            Ok(e) => entries.push(e),
            Err(reason) => {
                tracing::warn!(index, cve_id = ?id_hint, %reason, "skipping KEV entry");
                skipped.push(KevSkipped {
                    index,
                    cve_id: id_hint,
                    reason,
                });
            }
        }
    }
    Ok(KevCatalog {
        catalog_version: trimmed(raw.catalog_version),
        date_released: raw.date_released.as_deref().and_then(parse_nvd_timestamp),
        count: raw.count,
        entries,
        skipped,
    })
}

fn parse_entry(value: serde_json::Value) -> Result<KevEntry, String> {
    let raw: RawEntry = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let cve_id = CveId::parse(&raw.cve_id).map_err(|e| e.to_string())?;
    let date = |field: &str, v: &Option<String>| -> Result<Option<NaiveDate>, String> {
        match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => parse_date(s)
                .map(Some)
                .ok_or_else(|| format!("{field} is not a date: {s:?}")),
        }
    };
    let date_added = date("dateAdded", &raw.date_added)?;
    if date_added.is_none() {
        return Err("missing dateAdded".into());
    }
    let ransomware_use = match raw.known_ransomware_campaign_use.as_deref().map(str::trim) {
        Some(s) if s.eq_ignore_ascii_case("known") => Some(true),
        Some(s) if s.eq_ignore_ascii_case("unknown") => Some(false),
        _ => None,
    };
    Ok(KevEntry {
        facts: KevFacts {
            date_added,
            due_date: date("dueDate", &raw.due_date)?,
            required_action: trimmed(raw.required_action),
            ransomware_use,
            vulnerability_name: trimmed(raw.vulnerability_name),
        },
        cve_id,
        vendor_project: trimmed(raw.vendor_project),
        product: trimmed(raw.product),
        short_description: trimmed(raw.short_description),
        notes: trimmed(raw.notes),
        cwes: raw
            .cwes
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect(),
    })
}

fn trimmed(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Reads the catalog from a local file.
pub fn read_kev_file(path: &Path) -> Result<KevCatalog, FeedsError> {
    let bytes = std::fs::read(path).map_err(|error| FeedsError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse_kev(&bytes, &path.display().to_string())
}

/// Downloads and parses the catalog, retrying per `retry`.
pub async fn fetch_kev(url: &Url, retry: &RetryPolicy) -> Result<KevCatalog, FeedsError> {
    let http = build_client(std::time::Duration::from_secs(120), USER_AGENT)?;
    let fetched = get_with_retry(&http, url, &Default::default(), retry, None).await?;
    parse_kev(&fetched.body, url.as_str())
}
