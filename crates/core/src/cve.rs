//! The CVE record and its parts, independent of where it came from (NVD API,
//! NVD feed files, KEV, EPSS) and where it is stored.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// A validated CVE identifier such as `CVE-2024-3400`.
///
/// Validation happens once, at the edges (feeds, HTTP, CLI, queue messages), so
/// everything behind them can rely on the shape: `CVE-`, a four-digit year, a
/// dash and at least four digits. Lower-case input is accepted and normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CveId(String);

/// Why a string is not a CVE id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CVE id {input:?}: expected CVE-YYYY-NNNN (four or more digits)")]
pub struct CveIdError {
    /// The rejected input, kept so that error messages can name it.
    pub input: String,
}

impl CveId {
    /// Parses and normalises (upper-cases, trims) a CVE id.
    pub fn parse(input: &str) -> Result<Self, CveIdError> {
        let upper = input.trim().to_ascii_uppercase();
        let err = || CveIdError {
            input: input.to_string(),
        };
        let rest = upper.strip_prefix("CVE-").ok_or_else(err)?;
        let (year, number) = rest.split_once('-').ok_or_else(err)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if year.len() != 4
            || !digits(year)
            || number.len() < 4
            || number.len() > 19
            || !digits(number)
        {
            return Err(err());
        }
        Ok(Self(upper))
    }

    /// The id as a string slice, e.g. `"CVE-2024-3400"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The year part of the id (not necessarily the publication year).
    pub fn year(&self) -> u16 {
        self.0[4..8].parse().unwrap_or(0)
    }
}

impl fmt::Display for CveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CveId {
    type Err = CveIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for CveId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CveId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Qualitative severity, as NVD and the original OpenThreat spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    None,
    /// No CVSS score is known (e.g. a CVE still awaiting analysis).
    Unknown,
}

impl Severity {
    /// All values, most severe first; used for distributions and validation messages.
    pub const ALL: [Severity; 6] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::None,
        Severity::Unknown,
    ];

    /// The upper-case name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "CRITICAL",
            Severity::High => "HIGH",
            Severity::Medium => "MEDIUM",
            Severity::Low => "LOW",
            Severity::None => "NONE",
            Severity::Unknown => "UNKNOWN",
        }
    }

    /// Severity from a CVSS v3/v4 base score (the FIRST qualitative scale).
    pub fn from_v3_score(score: f64) -> Self {
        if score >= 9.0 {
            Severity::Critical
        } else if score >= 7.0 {
            Severity::High
        } else if score >= 4.0 {
            Severity::Medium
        } else if score > 0.0 {
            Severity::Low
        } else {
            Severity::None
        }
    }

    /// Severity from a CVSS v2 base score (v2 has no CRITICAL band).
    pub fn from_v2_score(score: f64) -> Self {
        if score >= 7.0 {
            Severity::High
        } else if score >= 4.0 {
            Severity::Medium
        } else {
            Severity::Low
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an unknown severity name; names the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown severity {0:?}: expected one of CRITICAL, HIGH, MEDIUM, LOW, NONE, UNKNOWN")]
pub struct SeverityParseError(pub String);

impl FromStr for Severity {
    type Err = SeverityParseError;
    /// Case-insensitive, because the original API accepted any case in queries.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "CRITICAL" => Ok(Severity::Critical),
            "HIGH" => Ok(Severity::High),
            "MEDIUM" | "MODERATE" => Ok(Severity::Medium),
            "LOW" => Ok(Severity::Low),
            "NONE" => Ok(Severity::None),
            "UNKNOWN" | "" => Ok(Severity::Unknown),
            _ => Err(SeverityParseError(s.to_string())),
        }
    }
}

/// CVSS specification version of a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CvssVersion {
    #[serde(rename = "2.0")]
    V2,
    #[serde(rename = "3.0")]
    V30,
    #[serde(rename = "3.1")]
    V31,
    #[serde(rename = "4.0")]
    V40,
}

impl CvssVersion {
    /// The version as NVD writes it (`"3.1"`).
    pub fn as_str(self) -> &'static str {
        match self {
            CvssVersion::V2 => "2.0",
            CvssVersion::V30 => "3.0",
            CvssVersion::V31 => "3.1",
            CvssVersion::V40 => "4.0",
        }
    }
}

impl FromStr for CvssVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "2" | "2.0" => Ok(CvssVersion::V2),
            "3.0" => Ok(CvssVersion::V30),
            "3.1" => Ok(CvssVersion::V31),
            "4" | "4.0" => Ok(CvssVersion::V40),
            other => Err(format!("unknown CVSS version {other:?}")),
        }
    }
}

/// The one CVSS score we keep per CVE (the feeds choose which: v4.0 over v3.1
/// over v3.0 over v2, Primary over Secondary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cvss {
    /// Base score, 0.0 to 10.0.
    pub score: f64,
    /// The vector string, e.g. `CVSS:3.1/AV:N/AC:L/...`.
    pub vector: String,
    pub version: CvssVersion,
}

/// NVD's analysis status. `Rejected` records are kept (so a later re-import
/// does not resurrect them) but hidden from default listings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VulnStatus {
    Received,
    AwaitingAnalysis,
    UndergoingAnalysis,
    Analyzed,
    Modified,
    Deferred,
    Rejected,
    /// A status NVD may add in future; kept verbatim rather than failing the record.
    Other(String),
}

impl VulnStatus {
    /// The status as NVD spells it (`"Awaiting Analysis"`).
    pub fn as_str(&self) -> &str {
        match self {
            VulnStatus::Received => "Received",
            VulnStatus::AwaitingAnalysis => "Awaiting Analysis",
            VulnStatus::UndergoingAnalysis => "Undergoing Analysis",
            VulnStatus::Analyzed => "Analyzed",
            VulnStatus::Modified => "Modified",
            VulnStatus::Deferred => "Deferred",
            VulnStatus::Rejected => "Rejected",
            VulnStatus::Other(s) => s,
        }
    }

    /// Parses NVD's spelling; unknown values are kept as [`VulnStatus::Other`].
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            "Received" => VulnStatus::Received,
            "Awaiting Analysis" => VulnStatus::AwaitingAnalysis,
            "Undergoing Analysis" => VulnStatus::UndergoingAnalysis,
            "Analyzed" => VulnStatus::Analyzed,
            "Modified" => VulnStatus::Modified,
            "Deferred" => VulnStatus::Deferred,
            "Rejected" => VulnStatus::Rejected,
            other => VulnStatus::Other(other.to_string()),
        }
    }

    pub fn is_rejected(&self) -> bool {
        matches!(self, VulnStatus::Rejected)
    }
}

impl fmt::Display for VulnStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference link of a CVE (advisory, patch, exploit, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub url: String,
    /// Who supplied the reference (an e-mail or UUID in NVD data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// NVD's tags, e.g. `Patch`, `Exploit`, `Vendor Advisory`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Facts from CISA's Known Exploited Vulnerabilities catalog (or NVD's copy of
/// them). Presence of these facts is what "exploited in the wild" means.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KevFacts {
    /// When CISA added the CVE to the catalog.
    pub date_added: Option<NaiveDate>,
    /// The remediation deadline for US federal agencies.
    pub due_date: Option<NaiveDate>,
    pub required_action: Option<String>,
    /// `knownRansomwareCampaignUse`: `Some(true)` for "Known", `Some(false)`
    /// for "Unknown", `None` when the source did not say.
    pub ransomware_use: Option<bool>,
    /// CISA's short name of the vulnerability, when known.
    pub vulnerability_name: Option<String>,
}

/// FIRST's Exploit Prediction Scoring System facts for a CVE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Epss {
    /// Probability of exploitation in the next 30 days, 0.0 to 1.0.
    pub score: f64,
    /// Rank among all scored CVEs, 0.0 to 1.0 (absent in the oldest files).
    pub percentile: Option<f64>,
    /// The day the score is for.
    pub date: Option<NaiveDate>,
}

/// One CVE as OpenThreat knows it, merged from its sources.
///
/// This is the value the feeds produce and the store keeps; LLM output lives
/// beside it ([`crate::Enrichment`]) because it has its own life cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cve {
    pub cve_id: CveId,
    /// A short title. NVD has none, so ingestion derives one from the
    /// description; the LLM's `simple_title` is kept separately.
    pub title: String,
    /// The English description.
    pub description: String,
    pub cvss: Option<Cvss>,
    pub severity: Severity,
    pub published_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub vuln_status: VulnStatus,
    /// CWE ids such as `CWE-79` (NVD's placeholders `NVD-CWE-noinfo` and
    /// `NVD-CWE-Other` are dropped by the feeds).
    pub cwe_ids: Vec<String>,
    pub references: Vec<Reference>,
    /// `vendor:product` pairs from the CPE criteria, deduplicated.
    pub affected_products: Vec<String>,
    pub vendors: Vec<String>,
    pub products: Vec<String>,
    /// Where the facts came from: `nvd`, `kev`, `epss`.
    pub sources: Vec<String>,
    /// NVD's `cveTags` (e.g. `disputed`).
    pub source_tags: Vec<String>,
    /// `Some` when the CVE is known to be exploited in the wild.
    pub kev: Option<KevFacts>,
    pub epss: Option<Epss>,
}

impl Cve {
    /// A minimal record, mostly for tests and for sources that only know an id.
    pub fn new(cve_id: CveId, description: impl Into<String>, published_at: DateTime<Utc>) -> Self {
        let description = description.into();
        Cve {
            title: Self::title_from_description(&cve_id, &description),
            cve_id,
            description,
            cvss: None,
            severity: Severity::Unknown,
            published_at,
            modified_at: published_at,
            vuln_status: VulnStatus::Received,
            cwe_ids: Vec::new(),
            references: Vec::new(),
            affected_products: Vec::new(),
            vendors: Vec::new(),
            products: Vec::new(),
            sources: Vec::new(),
            source_tags: Vec::new(),
            kev: None,
            epss: None,
        }
    }

    /// Whether the CVE is known to be exploited in the wild (CISA KEV).
    pub fn exploited(&self) -> bool {
        self.kev.is_some()
    }

    /// The CVSS base score, if any.
    pub fn cvss_score(&self) -> Option<f64> {
        self.cvss.as_ref().map(|c| c.score)
    }

    /// NVD records carry no title; this derives one: the first sentence of the
    /// description, cut at a word boundary to at most 120 characters, or the
    /// CVE id when the description is empty.
    pub fn title_from_description(cve_id: &CveId, description: &str) -> String {
        const MAX: usize = 120;
        let text = description.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            return cve_id.to_string();
        }
        let first = match text.find(". ") {
            Some(i) => &text[..i],
            None => text.trim_end_matches('.'),
        };
        if first.chars().count() <= MAX {
            return first.to_string();
        }
        let mut cut: String = first.chars().take(MAX).collect();
        if let Some(space) = cut.rfind(' ') {
            cut.truncate(space);
        }
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cve_id_accepts_and_normalises() {
        assert_eq!(
            CveId::parse(" cve-2024-3400 ").unwrap().as_str(),
            "CVE-2024-3400"
        );
        assert_eq!(CveId::parse("CVE-2026-103764").unwrap().year(), 2026);
    }

    #[test]
    fn cve_id_rejects_malformed() {
        for bad in [
            "",
            "CVE-24-1234",
            "CVE-2024-123",
            "CVE-2024-12a4",
            "2024-1234",
            "CVE-2024",
            "CVE-2024-1234; DROP TABLE",
        ] {
            let err = CveId::parse(bad).unwrap_err();
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains("invalid CVE id"));
        }
    }

    #[test]
    fn cve_id_deserialize_validates() {
        assert!(serde_json::from_str::<CveId>("\"CVE-2021-44228\"").is_ok());
        assert!(serde_json::from_str::<CveId>("\"nope\"").is_err());
    }

    #[test]
    fn severity_parses_any_case_and_rejects_unknown() {
        assert_eq!("critical".parse::<Severity>().unwrap(), Severity::Critical);
        assert_eq!("High".parse::<Severity>().unwrap(), Severity::High);
        assert!("urgent".parse::<Severity>().is_err());
    }

    #[test]
    fn severity_bands_at_boundaries() {
        assert_eq!(Severity::from_v3_score(9.0), Severity::Critical);
        assert_eq!(Severity::from_v3_score(8.9), Severity::High);
        assert_eq!(Severity::from_v3_score(7.0), Severity::High);
        assert_eq!(Severity::from_v3_score(4.0), Severity::Medium);
        assert_eq!(Severity::from_v3_score(0.1), Severity::Low);
        assert_eq!(Severity::from_v3_score(0.0), Severity::None);
        assert_eq!(Severity::from_v2_score(10.0), Severity::High);
        assert_eq!(Severity::from_v2_score(3.9), Severity::Low);
    }

    #[test]
    fn title_is_first_sentence_cut_at_word() {
        let id = CveId::parse("CVE-2024-0001").unwrap();
        assert_eq!(
            Cve::title_from_description(&id, "A flaw. More text."),
            "A flaw"
        );
        assert_eq!(Cve::title_from_description(&id, "   "), "CVE-2024-0001");
        let long = "word ".repeat(60);
        let t = Cve::title_from_description(&id, &long);
        assert!(t.chars().count() <= 121, "{t}");
        assert!(t.ends_with('…'));
    }

    #[test]
    fn vuln_status_round_trips_and_keeps_unknown() {
        assert_eq!(
            VulnStatus::parse("Awaiting Analysis").as_str(),
            "Awaiting Analysis"
        );
        assert!(VulnStatus::parse("Rejected").is_rejected());
        assert_eq!(
            VulnStatus::parse("Brand New"),
            VulnStatus::Other("Brand New".into())
        );
    }
}
