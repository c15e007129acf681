//! Backend-independent half of the writes: deciding, in Rust, what a batch
//! upsert must write, and recomputing priorities with the core rules.
//!
//! Why in Rust and not in SQL: the priority score and class are defined once
//! in `openthreat-core`, and "is this record newer / different" must give the
//! same answer on both databases. The backends only fetch the current state of
//! a batch in one query and write the planned rows in one statement.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, Utc};
use openthreat_core::{
    priority_class, priority_score, Cve, CveId, Cvss, CvssVersion, Epss, KevFacts, Priority,
    Severity,
};
use sha2::{Digest, Sha256};

use crate::models::UpsertSummary;

/// What the store already holds about one CVE, as far as an upsert cares.
#[derive(Debug, Clone)]
pub(crate) struct Existing {
    pub modified_at: DateTime<Utc>,
    pub record_hash: String,
    pub kev: Option<KevFacts>,
    pub epss: Option<Epss>,
    pub sources: Vec<String>,
}

/// Column values of one row to insert or update, already normalised and
/// serialised, in the order of [`UPSERT_COLUMNS`].
#[derive(Debug, Clone)]
pub(crate) struct RowValues {
    pub cve_id: String,
    pub title: String,
    pub description: String,
    pub cvss_score: Option<f64>,
    pub cvss_vector: Option<String>,
    pub cvss_version: Option<String>,
    pub severity: String,
    pub published_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub vuln_status: String,
    pub exploited: bool,
    pub cisa_due_date: Option<NaiveDate>,
    pub kev_date_added: Option<NaiveDate>,
    pub kev_required_action: Option<String>,
    pub kev_ransomware_use: Option<bool>,
    pub kev_vulnerability_name: Option<String>,
    pub epss_score: Option<f64>,
    pub epss_percentile: Option<f64>,
    pub epss_date: Option<NaiveDate>,
    pub cwe_ids: String,
    pub affected_products: String,
    pub vendors: String,
    pub products: String,
    pub references: String,
    pub sources: String,
    pub source_tags: String,
    pub priority_score: f64,
    pub priority: String,
    pub record_hash: String,
    /// The normalised lists again, for SQLite's side table of filter terms.
    pub vendor_terms: Vec<String>,
    pub product_terms: Vec<String>,
    pub cwe_terms: Vec<String>,
}

/// Columns written by an upsert (besides `created_at`/`updated_at`).
pub(crate) const UPSERT_COLUMNS: [&str; 29] = [
    "cve_id",
    "title",
    "description",
    "cvss_score",
    "cvss_vector",
    "cvss_version",
    "severity",
    "published_at",
    "modified_at",
    "vuln_status",
    "exploited_in_the_wild",
    "cisa_due_date",
    "kev_date_added",
    "kev_required_action",
    "kev_ransomware_use",
    "kev_vulnerability_name",
    "epss_score",
    "epss_percentile",
    "epss_date",
    "cwe_ids",
    "affected_products",
    "vendors",
    "products",
    "\"references\"",
    "sources",
    "source_tags",
    "priority_score",
    "priority",
    "record_hash",
];

/// The `ON CONFLICT ... DO UPDATE` tail shared by both backends (both accept
/// `excluded.` and the same CASE). LLM columns are deliberately absent so a
/// re-import keeps them; a changed description only marks them stale, and
/// resets the failure count and error: they were about the old text, and a
/// CVE parked for it must get fresh attempts at the new one. The
/// WHERE is a second guard (after the planner's) that an older record never
/// overwrites a newer one, even under concurrent writers.
pub(crate) fn on_conflict_clause() -> String {
    let mut sql = String::from(" ON CONFLICT (cve_id) DO UPDATE SET ");
    for col in UPSERT_COLUMNS.iter().skip(1) {
        sql.push_str(col);
        sql.push_str(" = excluded.");
        sql.push_str(col);
        sql.push_str(", ");
    }
    sql.push_str(
        "updated_at = excluded.updated_at, \
         llm_processed = CASE WHEN vulnerabilities.description = excluded.description \
         THEN vulnerabilities.llm_processed ELSE FALSE END, \
         llm_attempts = CASE WHEN vulnerabilities.description = excluded.description \
         THEN vulnerabilities.llm_attempts ELSE 0 END, \
         llm_error = CASE WHEN vulnerabilities.description = excluded.description \
         THEN vulnerabilities.llm_error ELSE NULL END \
         WHERE vulnerabilities.modified_at <= excluded.modified_at",
    );
    sql
}

/// The outcome of planning a batch: rows to write and the per-record counts.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub rows: Vec<RowValues>,
    pub summary: UpsertSummary,
}

/// Decides what to write for `cves`, given what the store holds (`existing`,
/// keyed by CVE id) and the KEV catalog entries for the batch.
///
/// Records are taken in order, so a CVE that appears twice in one batch is
/// treated like two consecutive imports; only its last planned state is
/// written (one statement may not touch a row twice).
pub(crate) fn plan_upsert(
    cves: &[Cve],
    mut existing: HashMap<String, Existing>,
    kev_catalog: &HashMap<String, KevFacts>,
    now: DateTime<Utc>,
) -> Plan {
    let mut plan = Plan::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    for cve in cves {
        let id = cve.cve_id.as_str();
        if let Err(reason) = validate(cve) {
            plan.summary.failed.push((id.to_string(), reason));
            continue;
        }
        let hash = record_hash(cve);
        let before = existing.get(id);
        if let Some(ex) = before {
            if cve.modified_at < ex.modified_at {
                plan.summary.skipped_older += 1;
                continue;
            }
            if ex.record_hash == hash {
                plan.summary.unchanged += 1;
                continue;
            }
        }
        let kev = kev_catalog
            .get(id)
            .cloned()
            .or_else(|| cve.kev.clone())
            .or_else(|| before.and_then(|b| b.kev.clone()));
        let epss = cve
            .epss
            .clone()
            .or_else(|| before.and_then(|b| b.epss.clone()));
        let mut sources = normalise(&cve.sources, str::to_lowercase);
        for s in before.map(|b| b.sources.as_slice()).unwrap_or_default() {
            push_unique(&mut sources, s.clone());
        }
        if kev.is_some() {
            push_unique(&mut sources, "kev".into());
        }
        if epss.is_some() {
            push_unique(&mut sources, "epss".into());
        }
        if before.is_some() {
            plan.summary.updated += 1;
        } else {
            plan.summary.inserted += 1;
        }
        let (score, class) = compute_priority(
            &PriorityInputs {
                cvss_score: cve.cvss_score(),
                severity: cve.severity,
                published_at: cve.published_at,
                exploited: kev.is_some(),
                epss_score: epss.as_ref().map(|e| e.score),
            },
            now,
        );
        let row = build_row(cve, kev, epss, &sources, score, class, hash.clone());
        existing.insert(
            id.to_string(),
            Existing {
                modified_at: cve.modified_at,
                record_hash: hash,
                kev: row_kev(&row),
                epss: row_epss(&row),
                sources,
            },
        );
        match index.get(id) {
            Some(&i) => plan.rows[i] = row,
            None => {
                index.insert(id.to_string(), plan.rows.len());
                plan.rows.push(row);
            }
        }
    }
    plan
}

fn row_kev(row: &RowValues) -> Option<KevFacts> {
    row.exploited.then(|| KevFacts {
        date_added: row.kev_date_added,
        due_date: row.cisa_due_date,
        required_action: row.kev_required_action.clone(),
        ransomware_use: row.kev_ransomware_use,
        vulnerability_name: row.kev_vulnerability_name.clone(),
    })
}

fn row_epss(row: &RowValues) -> Option<Epss> {
    row.epss_score.map(|score| Epss {
        score,
        percentile: row.epss_percentile,
        date: row.epss_date,
    })
}

fn build_row(
    cve: &Cve,
    kev: Option<KevFacts>,
    epss: Option<Epss>,
    sources: &[String],
    priority_score: f64,
    priority: Priority,
    record_hash: String,
) -> RowValues {
    let vendor_terms = normalise(&cve.vendors, str::to_lowercase);
    let product_terms = normalise(&cve.products, str::to_lowercase);
    let cwe_terms = normalise(&cve.cwe_ids, str::to_uppercase);
    let exploited = kev.is_some();
    let kev = kev.unwrap_or_default();
    RowValues {
        cve_id: cve.cve_id.to_string(),
        title: cve.title.clone(),
        description: cve.description.clone(),
        cvss_score: cve.cvss.as_ref().map(|c| c.score),
        cvss_vector: cve.cvss.as_ref().map(|c| c.vector.clone()),
        cvss_version: cve.cvss.as_ref().map(|c| c.version.as_str().to_string()),
        severity: cve.severity.as_str().to_string(),
        published_at: cve.published_at,
        modified_at: cve.modified_at,
        vuln_status: cve.vuln_status.as_str().to_string(),
        exploited,
        cisa_due_date: kev.due_date,
        kev_date_added: kev.date_added,
        kev_required_action: kev.required_action,
        kev_ransomware_use: kev.ransomware_use,
        kev_vulnerability_name: kev.vulnerability_name,
        epss_score: epss.as_ref().map(|e| e.score),
        epss_percentile: epss.as_ref().and_then(|e| e.percentile),
        epss_date: epss.as_ref().and_then(|e| e.date),
        cwe_ids: json_list(&cwe_terms),
        affected_products: json_list(&cve.affected_products),
        vendors: json_list(&vendor_terms),
        products: json_list(&product_terms),
        references: serde_json::to_string(&cve.references).unwrap_or_else(|_| "[]".into()),
        sources: json_list(sources),
        source_tags: json_list(&cve.source_tags),
        priority_score,
        priority: priority.as_str().to_string(),
        record_hash,
        vendor_terms,
        product_terms,
        cwe_terms,
    }
}

fn json_list(items: &[String]) -> String {
    // Serialising a list of strings cannot fail.
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// Trims, applies `case` and removes empty and duplicate entries, keeping
/// the first occurrence's position: filters match on these exact values.
fn normalise(items: &[String], case: fn(&str) -> String) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let v = case(item.trim());
        if !v.is_empty() {
            push_unique(&mut out, v);
        }
    }
    out
}

fn push_unique(list: &mut Vec<String>, value: String) {
    if !list.contains(&value) {
        list.push(value);
    }
}

/// A fingerprint of everything the source said about a CVE, so that a
/// re-import of the same record is recognised without comparing 30 columns.
fn record_hash(cve: &Cve) -> String {
    // The JSON goes straight into the hash (the same bytes as a buffer
    // would hold, so stored fingerprints stay valid), not into a copy.
    let mut hasher = Sha256::new();
    if serde_json::to_writer(&mut hasher, cve).is_err() {
        hasher = Sha256::new();
    }
    hex::encode(hasher.finalize())
}

/// Values the database cannot store faithfully are rejected per record, so
/// one bad record does not sink its batch.
fn validate(cve: &Cve) -> Result<(), String> {
    if let Some(c) = &cve.cvss {
        if !c.score.is_finite() || !(0.0..=10.0).contains(&c.score) {
            return Err(format!("CVSS score {} is outside 0..10", c.score));
        }
    }
    if let Some(e) = &cve.epss {
        if !e.score.is_finite() || !(0.0..=1.0).contains(&e.score) {
            return Err(format!("EPSS score {} is outside 0..1", e.score));
        }
    }
    let texts = [cve.title.as_str(), cve.description.as_str()];
    let lists = cve
        .cwe_ids
        .iter()
        .chain(&cve.vendors)
        .chain(&cve.products)
        .chain(&cve.affected_products)
        .chain(&cve.sources)
        .chain(&cve.source_tags)
        .map(String::as_str);
    if texts.into_iter().chain(lists).any(|t| t.contains('\0')) {
        return Err("text contains a NUL character".into());
    }
    Ok(())
}

/// The inputs of the priority rules, as stored in a row.
#[derive(Debug, Clone)]
pub(crate) struct PriorityInputs {
    pub cvss_score: Option<f64>,
    pub severity: Severity,
    pub published_at: DateTime<Utc>,
    pub exploited: bool,
    pub epss_score: Option<f64>,
}

static PLACEHOLDER_ID: LazyLock<CveId> =
    LazyLock::new(|| CveId::parse("CVE-0000-0000").expect("a well-formed CVE id"));

/// Score and class by the core rules, from stored columns.
pub(crate) fn compute_priority(p: &PriorityInputs, now: DateTime<Utc>) -> (f64, Priority) {
    let mut cve = Cve::new(PLACEHOLDER_ID.clone(), "", p.published_at);
    cve.cvss = p.cvss_score.map(|score| Cvss {
        score,
        vector: String::new(),
        version: CvssVersion::V31,
    });
    cve.severity = p.severity;
    cve.kev = p.exploited.then(KevFacts::default);
    cve.epss = p.epss_score.map(|score| Epss {
        score,
        percentile: None,
        date: None,
    });
    (priority_score(&cve, now), priority_class(&cve, now))
}

/// Columns read by [`facts_from!`].
pub(crate) const FACTS_COLUMNS: &str = "cve_id, cvss_score, severity, published_at, \
    exploited_in_the_wild, cisa_due_date, kev_date_added, kev_required_action, \
    kev_ransomware_use, kev_vulnerability_name, epss_score, epss_percentile, epss_date, sources";

/// The stored facts of one CVE that KEV/EPSS updates and the priority need.
#[derive(Debug, Clone)]
pub(crate) struct FactsRow {
    pub cve_id: String,
    pub cvss_score: Option<f64>,
    pub severity: Severity,
    pub published_at: DateTime<Utc>,
    pub kev: Option<KevFacts>,
    pub epss: Option<Epss>,
    pub sources: Vec<String>,
}

/// Reads a [`FactsRow`] (selected with [`FACTS_COLUMNS`]) from a PostgreSQL
/// or SQLite row; see `row_from!` for why this is a macro.
macro_rules! facts_from {
    ($row:expr) => {{
        use sqlx::types::Json;
        use sqlx::Row as _;
        let row = $row;
        let severity: String = row.try_get("severity")?;
        let exploited: bool = row.try_get("exploited_in_the_wild")?;
        let epss_score: Option<f64> = row.try_get("epss_score")?;
        let Json(sources): Json<Vec<String>> = row.try_get("sources")?;
        $crate::plan::FactsRow {
            cve_id: row.try_get("cve_id")?,
            cvss_score: row.try_get("cvss_score")?,
            severity: severity
                .parse()
                .unwrap_or(openthreat_core::Severity::Unknown),
            published_at: row.try_get("published_at")?,
            kev: if exploited {
                Some(openthreat_core::KevFacts {
                    date_added: row.try_get("kev_date_added")?,
                    due_date: row.try_get("cisa_due_date")?,
                    required_action: row.try_get("kev_required_action")?,
                    ransomware_use: row.try_get("kev_ransomware_use")?,
                    vulnerability_name: row.try_get("kev_vulnerability_name")?,
                })
            } else {
                None
            },
            epss: match epss_score {
                Some(score) => Some(openthreat_core::Epss {
                    score,
                    percentile: row.try_get("epss_percentile")?,
                    date: row.try_get("epss_date")?,
                }),
                None => None,
            },
            sources,
        }
    }};
}
pub(crate) use facts_from;

/// New KEV/EPSS columns and priority for one row.
#[derive(Debug, Clone)]
pub(crate) struct FactsUpdate {
    pub cve_id: String,
    pub exploited: bool,
    pub kev: KevFacts,
    pub epss_score: Option<f64>,
    pub epss_percentile: Option<f64>,
    pub epss_date: Option<NaiveDate>,
    pub sources: String,
    pub priority_score: f64,
    pub priority: String,
}

/// Applies `change` to each stored row; rows it reports as changed get
/// their priority recomputed and become updates. Rows already holding the
/// facts are skipped, which keeps re-applying a feed free of writes.
pub(crate) fn plan_facts(
    rows: Vec<FactsRow>,
    now: DateTime<Utc>,
    mut change: impl FnMut(&mut FactsRow) -> bool,
) -> Vec<FactsUpdate> {
    let mut out = Vec::new();
    for mut row in rows {
        if !change(&mut row) {
            continue;
        }
        if row.kev.is_some() {
            push_unique(&mut row.sources, "kev".into());
        }
        if row.epss.is_some() {
            push_unique(&mut row.sources, "epss".into());
        }
        let (score, class) = compute_priority(
            &PriorityInputs {
                cvss_score: row.cvss_score,
                severity: row.severity,
                published_at: row.published_at,
                exploited: row.kev.is_some(),
                epss_score: row.epss.as_ref().map(|e| e.score),
            },
            now,
        );
        out.push(FactsUpdate {
            exploited: row.kev.is_some(),
            kev: row.kev.unwrap_or_default(),
            epss_score: row.epss.as_ref().map(|e| e.score),
            epss_percentile: row.epss.as_ref().and_then(|e| e.percentile),
            epss_date: row.epss.as_ref().and_then(|e| e.date),
            sources: json_list(&row.sources),
            priority_score: score,
            priority: class.as_str().to_string(),
            cve_id: row.cve_id,
        });
    }
    out
}

/// Last entry wins for duplicate ids; returns the map and the ids in order.
pub(crate) fn dedup_by_id<T: Clone>(entries: &[(CveId, T)]) -> (HashMap<String, T>, Vec<String>) {
    let mut map = HashMap::with_capacity(entries.len());
    let mut ids = Vec::with_capacity(entries.len());
    for (id, v) in entries {
        if map.insert(id.to_string(), v.clone()).is_none() {
            ids.push(id.to_string());
        }
    }
    (map, ids)
}

/// Turns stored facts into the upsert's view of an existing row.
pub(crate) fn existing_from(
    facts: FactsRow,
    modified_at: DateTime<Utc>,
    record_hash: String,
) -> (String, Existing) {
    (
        facts.cve_id,
        Existing {
            modified_at,
            record_hash,
            kev: facts.kev,
            epss: facts.epss,
            sources: facts.sources,
        },
    )
}

/// Validates an EPSS value before it is stored.
pub(crate) fn check_epss(id: &str, e: &Epss) -> crate::Result<()> {
    let ok = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
    if ok(e.score) && e.percentile.is_none_or(ok) {
        Ok(())
    } else {
        Err(crate::StoreError::InvalidInput(format!(
            "EPSS values for {id} are outside 0..1"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// Stored fingerprints are the SHA-256 of the record's JSON: computed
    /// any other way, every stored CVE would look changed at the next
    /// re-import and be rewritten.
    #[test]
    fn record_hash_is_the_sha256_of_the_records_json() {
        let mut cve = Cve::new(
            openthreat_core::CveId::parse("CVE-2024-6387").unwrap(),
            "A signal handler race condition in sshd (\"regreSSHion\") — é.",
            Utc.with_ymd_and_hms(2024, 7, 1, 13, 15, 0).unwrap(),
        );
        cve.vendors = vec!["openbsd".into()];
        cve.affected_products = vec!["cpe:2.3:a:openbsd:openssh:*:*:*:*:*:*:*:*".into()];
        let json = serde_json::to_vec(&cve).unwrap();
        assert_eq!(record_hash(&cve), hex::encode(Sha256::digest(&json)));
        cve.vendors.push("redhat".into());
        assert_ne!(record_hash(&cve), hex::encode(Sha256::digest(&json)));
    }
}
