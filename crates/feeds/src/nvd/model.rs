//! NVD CVE API 2.0 `cve` objects, as serde structs.
//!
//! Only the fields OpenThreat uses are declared; everything else (`affected`,
//! `ssvcV203`, `evaluatorImpact`, the CVSS sub-metrics whose key names NVD
//! changed for v4.0, ...) is ignored, so a schema addition at NVD never fails
//! a record. Every field is optional or defaults to empty, and `null` is
//! accepted wherever a list is expected, because NVD omits what it does not
//! know and records of different ages differ.

use serde::{Deserialize, Deserializer};

/// Treats `null` like an absent field for types with a default (lists, maps).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One element of the envelope's `vulnerabilities` array.
#[derive(Debug, Clone, Deserialize)]
pub struct NvdItem {
    pub cve: NvdCve,
}

/// The `cve` object of the NVD CVE API 2.0 (and of the 2.0 feed files).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NvdCve {
    pub id: String,
    /// ISO 8601 without offset (UTC), e.g. `2014-04-07T22:55:03.893`.
    pub published: Option<String>,
    pub last_modified: Option<String>,
    pub vuln_status: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub cve_tags: Vec<NvdCveTag>,
    #[serde(default, deserialize_with = "nullable")]
    pub descriptions: Vec<NvdLangString>,
    #[serde(default, deserialize_with = "nullable")]
    pub metrics: NvdMetrics,
    #[serde(default, deserialize_with = "nullable")]
    pub weaknesses: Vec<NvdWeakness>,
    #[serde(default, deserialize_with = "nullable")]
    pub configurations: Vec<NvdConfiguration>,
    #[serde(default, deserialize_with = "nullable")]
    pub references: Vec<NvdReference>,
    /// NVD's copy of the CISA KEV facts (`YYYY-MM-DD`).
    pub cisa_exploit_add: Option<String>,
    pub cisa_action_due: Option<String>,
    pub cisa_required_action: Option<String>,
    pub cisa_vulnerability_name: Option<String>,
}

/// `cveTags[]`: tags such as `disputed` or `unsupported-when-assigned`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NvdCveTag {
    #[serde(default, deserialize_with = "nullable")]
    pub tags: Vec<String>,
}

/// A text with its language, used by `descriptions` and `weaknesses`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NvdLangString {
    #[serde(default)]
    pub lang: String,
    #[serde(default)]
    pub value: String,
}

/// `metrics`: one list per CVSS version; each list may hold a Primary (NVD
/// or the CNA) and Secondary entries.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NvdMetrics {
    #[serde(rename = "cvssMetricV40", default, deserialize_with = "nullable")]
    pub v40: Vec<NvdCvssMetric>,
    #[serde(rename = "cvssMetricV31", default, deserialize_with = "nullable")]
    pub v31: Vec<NvdCvssMetric>,
    #[serde(rename = "cvssMetricV30", default, deserialize_with = "nullable")]
    pub v30: Vec<NvdCvssMetric>,
    #[serde(rename = "cvssMetricV2", default, deserialize_with = "nullable")]
    pub v2: Vec<NvdCvssMetric>,
}

/// One CVSS metric entry. For v2, `baseSeverity` sits on this object; for v3
/// and v4 it is inside `cvssData`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NvdCvssMetric {
    /// `Primary` or `Secondary`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub cvss_data: NvdCvssData,
    pub base_severity: Option<String>,
}

/// The part of `cvssData` that is the same in every CVSS version.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NvdCvssData {
    pub version: Option<String>,
    pub vector_string: Option<String>,
    pub base_score: Option<f64>,
    pub base_severity: Option<String>,
}

/// `weaknesses[]`: CWE ids from one source.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NvdWeakness {
    #[serde(default, deserialize_with = "nullable")]
    pub description: Vec<NvdLangString>,
}

/// `configurations[]`: applicability statements made of CPE match nodes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NvdConfiguration {
    #[serde(default, deserialize_with = "nullable")]
    pub nodes: Vec<NvdNode>,
}

/// A node of a configuration: CPE matches joined by `operator`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NvdNode {
    #[serde(default)]
    pub negate: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub cpe_match: Vec<NvdCpeMatch>,
}

/// One CPE match: `vulnerable: false` marks a platform the flaw runs on, not
/// an affected product.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NvdCpeMatch {
    #[serde(default)]
    pub vulnerable: bool,
    #[serde(default)]
    pub criteria: String,
}

/// `references[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NvdReference {
    #[serde(default)]
    pub url: String,
    pub source: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tags: Vec<String>,
}
