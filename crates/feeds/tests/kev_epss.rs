//! CISA KEV and EPSS against the real files in `shared/data`, read from disk
//! and served by the local file server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use openthreat_core::{CveId, Epss};
use openthreat_feeds::epss::{fetch_epss, parse_epss_file, parse_epss_reader, EpssSummary};
use openthreat_feeds::http::RetryPolicy;
use openthreat_feeds::kev::{fetch_kev, parse_kev, read_kev_file};
use openthreat_feeds::testing::{fixtures_dir, FileServer, ServedFile};
use openthreat_feeds::FeedsError;

fn data(rel: &str) -> PathBuf {
    fixtures_dir().join(rel)
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

#[test]
fn kev_catalog_parses() {
    let cat = read_kev_file(&data("kev/known_exploited_vulnerabilities.json")).unwrap();
    assert_eq!(cat.entries.len(), 1404);
    assert!(cat.skipped.is_empty(), "{:?}", cat.skipped);
    assert_eq!(cat.count, Some(1404));
    assert_eq!(cat.catalog_version.as_deref(), Some("2025.08.25"));
    assert_eq!(
        cat.date_released.unwrap().to_rfc3339(),
        "2025-08-25T17:04:19.979600+00:00"
    );
    let known = cat
        .entries
        .iter()
        .filter(|e| e.facts.ransomware_use == Some(true))
        .count();
    assert_eq!(known, 293);
    assert!(cat.entries.iter().all(|e| e.facts.ransomware_use.is_some()));

    let pan = cat
        .entries
        .iter()
        .find(|e| e.cve_id.as_str() == "CVE-2024-3400")
        .unwrap();
    assert_eq!(pan.facts.date_added.unwrap().to_string(), "2024-04-12");
    assert_eq!(pan.facts.due_date.unwrap().to_string(), "2024-04-19");
    assert_eq!(pan.facts.ransomware_use, Some(true));
    assert_eq!(pan.vendor_project.as_deref(), Some("Palo Alto Networks"));
    assert_eq!(pan.cwes, vec!["CWE-20", "CWE-77"]);
    // "https://security.paloaltonetworks.com/CVE-2024-3400 ;   https://..." is kept as text.
    assert!(pan
        .notes
        .as_deref()
        .unwrap()
        .starts_with("https://security.paloaltonetworks.com/"));
}

#[test]
fn kev_values_are_trimmed() {
    let cat = read_kev_file(&data("kev/known_exploited_vulnerabilities.json")).unwrap();
    let crush = cat
        .entries
        .iter()
        .find(|e| e.cve_id.as_str() == "CVE-2025-54309")
        .unwrap();
    // The catalog has " CrushFTP Unprotected Alternate Channel Vulnerability".
    assert_eq!(
        crush.facts.vulnerability_name.as_deref(),
        Some("CrushFTP Unprotected Alternate Channel Vulnerability")
    );
    assert!(!crush.notes.as_deref().unwrap().ends_with(' '));
    for e in &cat.entries {
        for s in [
            &e.facts.vulnerability_name,
            &e.facts.required_action,
            &e.short_description,
            &e.notes,
            &e.vendor_project,
            &e.product,
        ]
        .into_iter()
        .flatten()
        {
            assert_eq!(s, s.trim(), "{}", e.cve_id);
        }
    }
}

#[test]
fn bad_kev_entries_are_skipped_and_reported() {
    let text = std::fs::read_to_string(data("kev/known_exploited_vulnerabilities.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let vulns = v["vulnerabilities"].as_array_mut().unwrap();
    vulns[0]["dateAdded"] = serde_json::json!("someday");
    vulns[1]["cveID"] = serde_json::json!("CVE-BAD");
    vulns[2] = serde_json::json!(42);
    let cat = parse_kev(v.to_string().as_bytes(), "edited.json").unwrap();
    assert_eq!(cat.entries.len(), 1401);
    assert_eq!(cat.skipped.len(), 3);
    assert_eq!(cat.skipped[0].cve_id.as_deref(), Some("CVE-2025-48384"));
    assert!(cat.skipped[0].reason.contains("dateAdded"));
    assert_eq!(cat.skipped[1].cve_id.as_deref(), Some("CVE-BAD"));
    assert_eq!(cat.skipped[2].index, 2);

    let err = parse_kev(b"{\"title\": \"x\"", "cut.json").unwrap_err();
    assert!(matches!(err, FeedsError::Json { .. }));
    assert!(err.to_string().contains("cut.json"));
    let err = parse_kev(b"{\"title\": \"x\"}", "other.json").unwrap_err();
    assert!(matches!(err, FeedsError::Format { .. }), "{err:?}");
}

#[tokio::test]
async fn kev_served_after_an_outage() {
    let body = std::fs::read(data("kev/known_exploited_vulnerabilities.json")).unwrap();
    let path = "/sites/default/files/feeds/known_exploited_vulnerabilities.json";
    let srv = FileServer::start(vec![ServedFile::new(path, body, "application/json")], 2)
        .await
        .unwrap();
    let cat = fetch_kev(&srv.url(path), &fast_retry()).await.unwrap();
    assert_eq!(cat.entries.len(), 1404);
    assert_eq!(srv.request_count(), 3);
}

fn epss_rows(path: &Path) -> (EpssSummary, Vec<(CveId, Epss)>) {
    let mut rows = Vec::new();
    let summary = parse_epss_file(path, &mut |id, e| {
        rows.push((id, e));
        Ok(())
    })
    .unwrap();
    (summary, rows)
}

#[test]
fn epss_current_format() {
    let (s, rows) = epss_rows(&data("epss/vunnel/example-1.csv"));
    assert_eq!(s.model_version.as_deref(), Some("v2023.03.01"));
    assert_eq!(s.score_date.unwrap().to_string(), "2025-02-20");
    assert_eq!((s.rows, s.skipped), (5, 0));
    assert_eq!(rows[0].0.as_str(), "CVE-1999-0001");
    assert_eq!(rows[0].1.score, 0.00383);
    assert_eq!(rows[0].1.percentile, Some(0.73075));
    assert_eq!(rows[4].1.score, 0.91963);
    assert!(rows.iter().all(|(_, e)| e.date == s.score_date));
}

#[test]
fn epss_every_historic_format() {
    let dir = data("epss/vuls-data-update");
    // 2021-04-14: `cve,epss`, no comment line: the date comes from the name.
    let (s, rows) = epss_rows(&dir.join("epss_scores-2021-04-14.csv.gz"));
    assert_eq!((s.model_version.clone(), s.rows), (None, 2));
    assert_eq!(s.score_date.unwrap().to_string(), "2021-04-14");
    assert_eq!(rows[0].0.as_str(), "CVE-2020-5902");
    assert_eq!(rows[0].1.score, 0.65117);
    assert_eq!(rows[0].1.percentile, None);
    // 2021-09-01: long-float percentile.
    let (_, rows) = epss_rows(&dir.join("epss_scores-2021-09-01.csv.gz"));
    assert_eq!(rows[0].1.percentile, Some(0.9981063485700858));
    // 2022-02-04: first comment line.
    let (s, rows) = epss_rows(&dir.join("epss_scores-2022-02-04.csv.gz"));
    assert_eq!(s.model_version.as_deref(), Some("v2022.01.01"));
    assert_eq!(s.score_date.unwrap().to_string(), "2022-02-04");
    assert_eq!(rows[1].0.as_str(), "CVE-2018-19571");
    assert_eq!(rows[1].1.score, 0.17187);
    // 2023-03-07.
    let (s, rows) = epss_rows(&dir.join("epss_scores-2023-03-07.csv.gz"));
    assert_eq!(s.model_version.as_deref(), Some("v2023.03.01"));
    assert_eq!(rows[0].1.score, 0.97567);
    assert_eq!(rows[1].1.percentile, Some(0.43131));
}

#[test]
fn epss_scientific_notation_and_bad_rows() {
    let text = "#model_version:v2025.03.14,score_date:2025-06-01T00:00:00Z\n\
                cve,epss,percentile\n\
                CVE-2024-0001,1.2e-05,0.00012\n\
                CVE-2024-0002,not-a-number,0.5\n\
                bogus,0.1,0.2\n\
                CVE-2024-0003,1.5,0.2\n\
                CVE-2024-0004,4E-1,9.9e-1\n";
    let mut rows = Vec::new();
    let s = parse_epss_reader(text.as_bytes(), "inline", None, &mut |id, e| {
        rows.push((id, e));
        Ok(())
    })
    .unwrap();
    assert_eq!((s.rows, s.skipped), (2, 3));
    assert_eq!(rows[0].1.score, 1.2e-05);
    assert_eq!(rows[1].1.score, 0.4);
    assert_eq!(rows[1].1.percentile, Some(0.99));
    assert!(
        s.skipped_examples[0].starts_with("line 4:"),
        "{:?}",
        s.skipped_examples
    );
    assert_eq!(s.score_date.unwrap().to_string(), "2025-06-01");

    let err = parse_epss_reader(&b"id,score\nx,1\n"[..], "weird.csv", None, &mut |_, _| {
        Ok(())
    })
    .unwrap_err();
    assert!(err.to_string().contains("weird.csv"), "{err}");
}

#[test]
fn epss_truncated_gzip_is_an_error() {
    let gz = std::fs::read(data("epss/vuls-data-update/epss_scores-2023-03-07.csv.gz")).unwrap();
    let cut = &gz[..gz.len() - 12];
    let err = parse_epss_reader(cut, "cut.csv.gz", None, &mut |_, _| Ok(())).unwrap_err();
    assert!(err.to_string().contains("cut.csv.gz"), "{err}");
}

#[tokio::test]
async fn epss_served_gzip() {
    let body = std::fs::read(data("epss/vuls-data-update/epss_scores-2023-03-07.csv.gz")).unwrap();
    let srv = FileServer::start(
        vec![ServedFile::new(
            "/epss_scores-current.csv.gz",
            body,
            "application/gzip",
        )],
        1,
    )
    .await
    .unwrap();
    let (summary, rows) = fetch_epss(&srv.url("/epss_scores-current.csv.gz"), &fast_retry())
        .await
        .unwrap();
    assert_eq!(summary.score_date.unwrap().to_string(), "2023-03-07");
    assert_eq!(rows.len(), 2);
    assert_eq!(srv.request_count(), 2);
}
