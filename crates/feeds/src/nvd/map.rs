//! NVD `cve` object → [`openthreat_core::Cve`].
//!
//! The choices made here (which CVSS metric wins, which CWE ids are dropped,
//! which CPEs count as affected) are the product's view of a CVE, so they are
//! spelled out one function each.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use openthreat_core::{Cve, CveId, Cvss, CvssVersion, KevFacts, Reference, Severity, VulnStatus};

use super::model::{NvdCve, NvdCvssMetric, NvdMetrics, NvdReference};

/// Why one record could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{cve_id}: {message}")]
pub struct MapError {
    /// The id as found in the record (possibly malformed).
    pub cve_id: String,
    pub message: String,
}

/// Maps one NVD record. Fails only when the record lacks what every CVE
/// must have (a valid id, a publication date); everything else degrades to
/// "unknown" rather than losing the CVE. Takes the record by value so that
/// texts and references move instead of being copied.
pub fn map_cve(mut nvd: NvdCve) -> Result<Cve, MapError> {
    let err = |message: String| MapError {
        cve_id: nvd.id.clone(),
        message,
    };
    let cve_id = CveId::parse(&nvd.id).map_err(|e| err(e.to_string()))?;
    let published_at = match nvd.published.as_deref() {
        Some(s) => {
            parse_nvd_timestamp(s).ok_or_else(|| err(format!("bad published date {s:?}")))?
        }
        None => return Err(err("missing published date".into())),
    };
    let modified_at = match nvd.last_modified.as_deref() {
        Some(s) => {
            parse_nvd_timestamp(s).ok_or_else(|| err(format!("bad lastModified date {s:?}")))?
        }
        None => published_at,
    };
    let description = english_description(&mut nvd);
    let cvss_choice = choose_cvss(&nvd.metrics);
    let (cvss, severity) = match cvss_choice {
        Some((cvss, severity)) => (Some(cvss), severity),
        None => (None, Severity::Unknown),
    };
    // A BTreeSet gives the dedup and the sorted order in one go.
    let pairs = affected_products(&nvd);
    let mut vendors: Vec<String> = pairs.iter().map(|(v, _)| v.clone()).collect();
    vendors.dedup(); // already sorted by vendor
    let mut product_names: Vec<String> = pairs.iter().map(|(_, p)| p.clone()).collect();
    product_names.sort();
    product_names.dedup();
    let affected: Vec<String> = pairs.iter().map(|(v, p)| format!("{v}:{p}")).collect();

    Ok(Cve {
        title: Cve::title_from_description(&cve_id, &description),
        cve_id,
        description,
        cvss,
        severity,
        published_at,
        modified_at,
        vuln_status: nvd
            .vuln_status
            .as_deref()
            .map(VulnStatus::parse)
            .unwrap_or(VulnStatus::Received),
        cwe_ids: cwe_ids(&nvd),
        references: references(std::mem::take(&mut nvd.references)),
        affected_products: affected,
        vendors,
        products: product_names,
        sources: vec!["nvd".to_string()],
        source_tags: source_tags(&nvd),
        kev: nvd_kev_facts(&nvd),
        epss: None,
    })
}

/// Parses NVD's timestamps. NVD writes them without an offset and means
/// UTC (`2014-04-07T22:55:03.893`); some re-published copies add `Z` or an
/// offset, which are honoured.
pub fn parse_nvd_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(naive.and_utc());
        }
    }
    // Offsets without a colon (`+0000`), as in EPSS's score_date.
    if let Ok(dt) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(dt.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc())
}

/// A `YYYY-MM-DD` date, tolerating a time part and stray whitespace.
pub(crate) fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .or_else(|| parse_nvd_timestamp(s).map(|dt| dt.date_naive()))
}

/// The English description, falling back to the first one in any language
/// (a CVE without English text is rare but should not be blank).
fn english_description(nvd: &mut NvdCve) -> String {
    let i = nvd
        .descriptions
        .iter()
        .position(|d| d.lang.eq_ignore_ascii_case("en"))
        .unwrap_or(0);
    match nvd.descriptions.get_mut(i) {
        Some(d) => {
            let v = std::mem::take(&mut d.value);
            if v.trim().len() == v.len() {
                v
            } else {
                v.trim().to_string()
            }
        }
        None => String::new(),
    }
}

/// Picks the one CVSS score we keep: the newest CVSS version present wins
/// (v4.0 > v3.1 > v3.0 > v2); within a version the `Primary` entry wins
/// over `Secondary` ones, but a lone `Secondary` (a CNA score NVD has not
/// re-scored yet) is still used. Entries without a base score are ignored.
pub fn choose_cvss(metrics: &NvdMetrics) -> Option<(Cvss, Severity)> {
    let lists = [
        (&metrics.v40, CvssVersion::V40),
        (&metrics.v31, CvssVersion::V31),
        (&metrics.v30, CvssVersion::V30),
        (&metrics.v2, CvssVersion::V2),
    ];
    for (list, list_version) in lists {
        let usable = || list.iter().filter(|m| m.cvss_data.base_score.is_some());
        let chosen = usable().find(|m| is_primary(m)).or_else(|| usable().next());
        if let Some(m) = chosen {
            return Some(metric_to_cvss(m, list_version));
        }
    }
    None
}

fn is_primary(m: &NvdCvssMetric) -> bool {
    m.kind
        .as_deref()
        .is_some_and(|k| k.eq_ignore_ascii_case("primary"))
}

fn metric_to_cvss(m: &NvdCvssMetric, list_version: CvssVersion) -> (Cvss, Severity) {
    let score = m.cvss_data.base_score.unwrap_or(0.0);
    let version = m
        .cvss_data
        .version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(list_version);
    // v3/v4 carry the severity in cvssData, v2 on the metric object; accept
    // either place and compute it from the score when neither is given.
    let named = m
        .cvss_data
        .base_severity
        .as_deref()
        .or(m.base_severity.as_deref())
        .and_then(|s| s.parse::<Severity>().ok())
        .filter(|s| *s != Severity::Unknown);
    let severity = named.unwrap_or(match version {
        CvssVersion::V2 => Severity::from_v2_score(score),
        _ => Severity::from_v3_score(score),
    });
    let cvss = Cvss {
        score,
        vector: m.cvss_data.vector_string.clone().unwrap_or_default(),
        version,
    };
    (cvss, severity)
}

/// CWE ids from all sources, deduplicated in order of appearance. NVD's
/// placeholders (`NVD-CWE-noinfo`, `NVD-CWE-Other`) say "no CWE" and are dropped.
fn cwe_ids(nvd: &NvdCve) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in &nvd.weaknesses {
        for d in &w.description {
            let v = d.value.trim();
            if v.is_empty() || v.starts_with("NVD-CWE-") {
                continue;
            }
            if !out.iter().any(|x| x == v) {
                out.push(v.to_string());
            }
        }
    }
    out
}

/// References without exact duplicates (same URL, source and tags), in
/// order. The same URL from two sources is kept twice: the source differs.
fn references(refs: Vec<NvdReference>) -> Vec<Reference> {
    // First decide what to keep while borrowing, then move: no copies.
    let keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(refs.len());
        refs.iter()
            .map(|r| {
                let url = r.url.trim();
                !url.is_empty() && seen.insert((url, r.source.as_deref(), r.tags.as_slice()))
            })
            .collect()
    };
    refs.into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(r, _)| Reference {
            url: if r.url.trim().len() == r.url.len() {
                r.url
            } else {
                r.url.trim().to_string()
            },
            source: r.source,
            tags: r.tags,
        })
        .collect()
}

/// All `cveTags[].tags`, deduplicated in order.
fn source_tags(nvd: &NvdCve) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in nvd.cve_tags.iter().flat_map(|t| t.tags.iter()) {
        let t = t.trim();
        if !t.is_empty() && !out.iter().any(|x| x == t) {
            out.push(t.to_string());
        }
    }
    out
}

/// NVD's copy of CISA's KEV facts. NVD does not carry the ransomware flag,
/// so it stays `None` until the KEV catalog itself is imported.
fn nvd_kev_facts(nvd: &NvdCve) -> Option<KevFacts> {
    let date_added = nvd.cisa_exploit_add.as_deref().and_then(parse_date);
    if date_added.is_none() && nvd.cisa_exploit_add.is_none() {
        return None;
    }
    let text = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    Some(KevFacts {
        date_added,
        due_date: nvd.cisa_action_due.as_deref().and_then(parse_date),
        required_action: text(&nvd.cisa_required_action),
        ransomware_use: None,
        vulnerability_name: text(&nvd.cisa_vulnerability_name),
    })
}

/// A vendor and product named by a CPE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CpeName {
    /// `a` (application), `o` (operating system) or `h` (hardware).
    pub part: String,
    pub vendor: String,
    pub product: String,
    pub version: String,
}

/// Parses a CPE 2.3 formatted string (`cpe:2.3:a:vendor:product:version:...`)
/// or a CPE 2.2 URI (`cpe:/a:vendor:product:...`). Backslash escapes are
/// honoured (`16.10.3\(3794\)` is version `16.10.3(3794)`, and `\:` does not
/// split). Returns `None` when vendor or product is missing or a wildcard.
pub fn parse_cpe(cpe: &str) -> Option<CpeName> {
    let cpe = cpe.trim();
    let fields: Vec<String> = if let Some(rest) = cpe.strip_prefix("cpe:2.3:") {
        split_escaped(rest)
    } else if let Some(rest) = cpe.strip_prefix("cpe:/") {
        rest.split(':').map(percent_decode).collect()
    } else {
        return None;
    };
    let get = |i: usize| fields.get(i).cloned().unwrap_or_default();
    let (part, vendor, product, version) = (get(0), get(1), get(2), get(3));
    let concrete = |s: &str| !s.is_empty() && s != "*" && s != "-";
    if !concrete(&vendor) || !concrete(&product) {
        return None;
    }
    Some(CpeName {
        part,
        vendor,
        product,
        version,
    })
}

/// Splits on `:` not preceded by a backslash, and drops the escaping backslashes.
fn split_escaped(s: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(11);
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            ':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Decodes CPE 2.2's `%xx` escapes; malformed escapes are kept verbatim.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(vendor, product)` pairs from the CPE criteria marked `vulnerable:
/// true`, deduplicated and sorted. Platform CPEs (`vulnerable: false`,
/// "running on") and negated nodes are not affected products and are left out.
fn affected_products(nvd: &NvdCve) -> Vec<(String, String)> {
    let mut out = BTreeSet::new();
    for node in nvd.configurations.iter().flat_map(|c| c.nodes.iter()) {
        if node.negate {
            continue;
        }
        for m in node.cpe_match.iter().filter(|m| m.vulnerable) {
            // Records list hundreds of CPEs, mostly for the same product:
            // borrow while collecting, allocate once per distinct pair.
            if let Some(pair) = cpe_vendor_product(&m.criteria) {
                out.insert(pair);
            }
        }
    }
    out.into_iter()
        .map(|(v, p)| (v.into_owned(), p.into_owned()))
        .collect()
}

/// Vendor and product of a CPE 2.3 string without allocating when they hold
/// no escapes (the common case); other forms go through [`parse_cpe`].
fn cpe_vendor_product(cpe: &str) -> Option<(Cow<'_, str>, Cow<'_, str>)> {
    let concrete = |s: &str| !s.is_empty() && s != "*" && s != "-";
    if let Some(rest) = cpe.strip_prefix("cpe:2.3:") {
        let mut it = rest.splitn(4, ':');
        let (_part, vendor, product) = (it.next()?, it.next()?, it.next()?);
        if !vendor.contains('\\') && !product.contains('\\') {
            return (concrete(vendor) && concrete(product))
                .then_some((Cow::Borrowed(vendor), Cow::Borrowed(product)));
        }
    }
    parse_cpe(cpe).map(|c| (Cow::Owned(c.vendor), Cow::Owned(c.product)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpe_23_with_escapes() {
        let c =
            parse_cpe("cpe:2.3:o:ricon:s9922l_firmware:16.10.3\\(3794\\):*:*:*:*:*:*:*").unwrap();
        assert_eq!(c.part, "o");
        assert_eq!(c.vendor, "ricon");
        assert_eq!(c.product, "s9922l_firmware");
        assert_eq!(c.version, "16.10.3(3794)");
        let c = parse_cpe("cpe:2.3:a:foo\\:bar:baz:1.0:*:*:*:*:*:*:*").unwrap();
        assert_eq!(c.vendor, "foo:bar");
        assert_eq!(c.product, "baz");
    }

    #[test]
    fn cpe_22_uri_and_rejects() {
        let c = parse_cpe("cpe:/o:redhat:enterprise_linux:9").unwrap();
        assert_eq!(
            (c.vendor.as_str(), c.product.as_str()),
            ("redhat", "enterprise_linux")
        );
        let c = parse_cpe("cpe:/a:foo%21:bar").unwrap();
        assert_eq!(c.vendor, "foo!");
        assert!(parse_cpe("cpe:2.3:a:*:*:*:*:*:*:*:*:*:*").is_none());
        assert!(parse_cpe("not a cpe").is_none());
        assert!(parse_cpe("cpe:2.3:a").is_none());
        assert!(parse_cpe("cpe:/a:%").is_none());
    }

    #[test]
    fn timestamps_without_offset_are_utc() {
        let t = parse_nvd_timestamp("2014-04-07T22:55:03.893").unwrap();
        assert_eq!(t.to_rfc3339(), "2014-04-07T22:55:03.893+00:00");
        let z = parse_nvd_timestamp("2023-11-19T10:15:49.433Z").unwrap();
        assert_eq!(z.to_rfc3339(), "2023-11-19T10:15:49.433+00:00");
        let off = parse_nvd_timestamp("2025-08-25T03:00:56-04:00").unwrap();
        assert_eq!(off.to_rfc3339(), "2025-08-25T07:00:56+00:00");
        let e = parse_nvd_timestamp("2025-02-20T00:00:00+0000").unwrap();
        assert_eq!(e.date_naive().to_string(), "2025-02-20");
        assert!(parse_nvd_timestamp("yesterday").is_none());
    }
}
