//! NVD parsing and mapping against the real fixtures in `shared/data/nvd`.
//! Expected values were read from the files by hand.

use std::io::Write;
use std::path::{Path, PathBuf};

use openthreat_core::{CvssVersion, Severity, VulnStatus};
use openthreat_feeds::nvd::meta::FeedMeta;
use openthreat_feeds::nvd::parse::{
    list_feed_files, parse_file, parse_file_batches, parse_page, DocumentKind, FileOptions,
    RecordBatch, RecordResult,
};
use openthreat_feeds::FeedsError;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");

fn nvd(rel: &str) -> PathBuf {
    Path::new(DATA).join("nvd").join(rel)
}

fn no_meta() -> FileOptions {
    // The trimmed 2022 fixture comes with the .meta of the full feed.
    FileOptions {
        verify_meta: false,
        ..FileOptions::default()
    }
}

fn opts(batch_size: usize) -> FileOptions {
    FileOptions {
        batch_size,
        ..FileOptions::default()
    }
}

fn collect(
    path: &Path,
) -> (
    Vec<openthreat_core::Cve>,
    Vec<openthreat_feeds::RecordFailure>,
) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    parse_file(path, &no_meta(), &mut |r: RecordResult| {
        match r {
            Ok(c) => ok.push(c),
            Err(f) => bad.push(f),
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (ok, bad)
}

fn one(rel: &str) -> openthreat_core::Cve {
    let (mut ok, bad) = collect(&nvd(rel));
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ok.len(), 1);
    ok.remove(0)
}

#[test]
fn every_nvd_fixture_parses() {
    let files = list_feed_files(&nvd("")).unwrap();
    assert_eq!(
        files.len(),
        22 + 37 + 5 + 1,
        "fixture files found: {files:?}"
    );
    let mut total = 0;
    for f in &files {
        let (ok, bad) = collect(f);
        assert!(bad.is_empty(), "{}: {bad:?}", f.display());
        for c in &ok {
            assert_eq!(c.sources, vec!["nvd".to_string()]);
            assert!(!c.title.is_empty());
        }
        total += ok.len();
    }
    // 22 bare records + 90 page records + 3+1+4+3+2 feed records + 1 synthetic.
    assert_eq!(total, 22 + 90 + 13 + 1);
}

#[test]
fn record_counts_per_document() {
    let count = |rel: &str| collect(&nvd(rel)).0.len();
    assert_eq!(count("pages/vunnel/full-page.json"), 38);
    assert_eq!(count("pages/osv.dev/conversion-nvd-testdata-test.json"), 13);
    assert_eq!(count("pages/vuls-data-update/empty-0-1.json"), 0);
    assert_eq!(
        count("feeds/dependency-track/nvdcve-2.0-2021_duplicate-cpes.json"),
        1
    );
    assert_eq!(count("feeds/vuls-data-update/nvdcve-2.0-2002.json.gz"), 4);
    assert_eq!(count("feeds/vuls-data-update/nvdcve-2.0-2021.json.gz"), 3);
    assert_eq!(
        count("feeds/vuls-data-update/nvdcve-2.0-modified.json.gz"),
        2
    );
}

#[test]
fn full_page_statuses_and_missing_metrics() {
    let (ok, _) = collect(&nvd("pages/vunnel/full-page.json"));
    let awaiting = ok
        .iter()
        .filter(|c| c.vuln_status == VulnStatus::AwaitingAnalysis)
        .count();
    let analyzed = ok
        .iter()
        .filter(|c| c.vuln_status == VulnStatus::Analyzed)
        .count();
    assert_eq!((analyzed, awaiting), (25, 13));
    let unscored = ok.iter().filter(|c| c.cvss.is_none()).count();
    assert_eq!(unscored, 3);
    assert!(ok
        .iter()
        .filter(|c| c.cvss.is_none())
        .all(|c| c.severity == Severity::Unknown));
}

#[test]
fn three_page_sequence() {
    let mut ids = Vec::new();
    for (file, start, rpp) in [
        ("3_pages-0-3.json", 0, 3),
        ("3_pages-3-3.json", 3, 3),
        ("3_pages-6-3.json", 6, 2),
    ] {
        let bytes = std::fs::read(nvd("pages/vuls-data-update").join(file)).unwrap();
        let page = parse_page(&bytes, file).unwrap();
        let env = page.envelope.unwrap();
        assert_eq!(env.start_index, Some(start));
        assert_eq!(env.results_per_page, Some(rpp));
        assert_eq!(env.total_results, Some(8));
        assert_eq!(page.cves.len() as u64, rpp);
        ids.extend(page.cves.into_iter().map(|c| c.cve_id));
    }
    assert_eq!(ids.len(), 8);
    let mut dedup = ids.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 8, "pages overlap: {ids:?}");
    // One record of the sequence is v3.0 only.
    let (all, _) = (0..3).fold((Vec::new(), ()), |(mut acc, _), i| {
        let f = ["3_pages-0-3.json", "3_pages-3-3.json", "3_pages-6-3.json"][i];
        let bytes = std::fs::read(nvd("pages/vuls-data-update").join(f)).unwrap();
        acc.extend(parse_page(&bytes, f).unwrap().cves);
        (acc, ())
    });
    let c = all
        .iter()
        .find(|c| c.cve_id.as_str() == "CVE-2023-6069")
        .unwrap();
    assert_eq!(c.cvss.as_ref().unwrap().version, CvssVersion::V30);
    assert_eq!(all.iter().filter(|c| c.cvss.is_none()).count(), 3);
}

#[test]
fn heartbleed() {
    let c = one("cve/CVE-2014-0160.json");
    assert_eq!(c.cve_id.as_str(), "CVE-2014-0160");
    let cvss = c.cvss.unwrap();
    assert_eq!(cvss.score, 7.5);
    assert_eq!(cvss.version, CvssVersion::V31);
    assert_eq!(cvss.vector, "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N");
    assert_eq!(c.severity, Severity::High);
    assert_eq!(c.vuln_status, VulnStatus::Deferred);
    assert_eq!(c.cwe_ids, vec!["CWE-125"]);
    // 286 references, 256 distinct ones.
    assert_eq!(c.references.len(), 256);
    assert!(c
        .description
        .starts_with("The (1) TLS and (2) DTLS implementations in OpenSSL"));
    assert_eq!(
        c.title,
        "The (1) TLS and (2) DTLS implementations in OpenSSL 1.0.1 before 1.0.1g do not properly handle Heartbeat Extension…"
            .chars()
            .take(c.title.chars().count())
            .collect::<String>()
    );
    assert_eq!(c.published_at.to_rfc3339(), "2014-04-07T22:55:03.893+00:00");
    assert_eq!(c.modified_at.to_rfc3339(), "2025-10-21T20:16:09.947+00:00");
    let kev = c.kev.unwrap();
    assert_eq!(kev.date_added.unwrap().to_string(), "2022-05-04");
    assert_eq!(kev.due_date.unwrap().to_string(), "2022-05-25");
    assert_eq!(
        kev.vulnerability_name.as_deref(),
        Some("OpenSSL Information Disclosure Vulnerability")
    );
    // 28 vulnerable vendor:product pairs, including the escaped-CPE one.
    assert_eq!(c.affected_products.len(), 28);
    assert!(c.affected_products.contains(&"openssl:openssl".to_string()));
    assert!(c
        .affected_products
        .contains(&"ricon:s9922l_firmware".to_string()));
    assert!(c.vendors.contains(&"siemens".to_string()));
    assert!(c.products.contains(&"filezilla_server".to_string()));
    let mut sorted = c.affected_products.clone();
    sorted.sort();
    assert_eq!(sorted, c.affected_products);
}

#[test]
fn proxylogon_prefers_primary_even_from_the_cna() {
    let c = one("cve/CVE-2021-26855.json");
    let cvss = c.cvss.unwrap();
    // CNA (Primary) 9.1 wins over NVD (Secondary) 9.8.
    assert_eq!(cvss.score, 9.1);
    assert_eq!(cvss.vector, "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:N");
    assert_eq!(c.severity, Severity::Critical);
    assert_eq!(
        c.kev.unwrap().required_action.as_deref(),
        Some("Apply updates per vendor instructions.")
    );
}

#[test]
fn cvss_v4_only_with_early_key_names() {
    let c = one("cve/CVE-2025-0938.json");
    let cvss = c.cvss.unwrap();
    assert_eq!(cvss.version, CvssVersion::V40);
    assert_eq!(cvss.score, 6.3);
    assert!(cvss.vector.starts_with("CVSS:4.0/AV:N/AC:H/AT:P/"));
    assert_eq!(c.severity, Severity::Medium);
    assert_eq!(c.vuln_status, VulnStatus::Received);
    assert_eq!(c.cwe_ids, vec!["CWE-20"]);
}

#[test]
fn v4_preferred_over_primary_v31() {
    // VulnCheck: v4.0 Secondary 9.3, v3.1 Primary 9.8; v4.0 wins.
    let c = one("cve/CVE-2026-103764.json");
    let cvss = c.cvss.unwrap();
    assert_eq!((cvss.version, cvss.score), (CvssVersion::V40, 9.3));
    assert!(c.affected_products.is_empty());
}

#[test]
fn rejected_records_are_kept_and_flagged() {
    let c = one("cve/CVE-2023-5129.json");
    assert!(c.vuln_status.is_rejected());
    assert!(c.description.starts_with("** REJECT **"));
    assert!(c.cvss.is_none());
    assert_eq!(c.severity, Severity::Unknown);
    assert!(c.references.is_empty());
    let c = one("cve/CVE-2024-2652.json");
    assert!(c.vuln_status.is_rejected());
}

#[test]
fn pan_os_kev_while_awaiting_analysis() {
    let c = one("cve/CVE-2024-3400.json");
    assert_eq!(c.vuln_status, VulnStatus::AwaitingAnalysis);
    let kev = c.kev.unwrap();
    assert_eq!(kev.date_added.unwrap().to_string(), "2024-04-12");
    assert_eq!(kev.due_date.unwrap().to_string(), "2024-04-19");
    assert!(kev
        .required_action
        .unwrap()
        .starts_with("Users of affected devices should enable Threat Prevention"));
    assert_eq!(
        kev.vulnerability_name.as_deref(),
        Some("Palo Alto Networks PAN-OS Command Injection Vulnerability")
    );
    assert_eq!(kev.ransomware_use, None);
    // Secondary alone is accepted.
    assert_eq!(c.cvss.unwrap().score, 10.0);
    assert_eq!(c.severity, Severity::Critical);
    assert_eq!(c.cwe_ids, vec!["CWE-77"]);
    assert!(c.vendors.is_empty());
}

#[test]
fn citrix_bleed_drops_noinfo_and_prefers_nvd_primary() {
    let c = one("cve/CVE-2023-4966.json");
    assert_eq!(c.cwe_ids, vec!["CWE-119"]);
    assert_eq!(c.cvss.unwrap().score, 7.5);
    assert_eq!(c.severity, Severity::High);
}

#[test]
fn old_v2_only_record() {
    let c = one("cve/CVE-1999-0001.json");
    let cvss = c.cvss.unwrap();
    assert_eq!(cvss.version, CvssVersion::V2);
    assert_eq!(cvss.score, 5.0);
    assert_eq!(cvss.vector, "AV:N/AC:L/Au:N/C:N/I:N/A:P");
    assert_eq!(c.severity, Severity::Medium);
    assert_eq!(c.vendors, vec!["bsdi", "freebsd", "openbsd"]);
    assert_eq!(
        c.affected_products,
        vec!["bsdi:bsd_os", "freebsd:freebsd", "openbsd:openbsd"]
    );
    assert_eq!(c.published_at.to_rfc3339(), "1999-12-30T05:00:00+00:00");
    assert!(c.references.iter().all(|r| r.tags.is_empty()));
    assert!(c.source_tags.is_empty());
}

#[test]
fn osv_timestamps_with_z_are_utc() {
    let c = one("pages/osv.dev/CVE-2023-5341.json");
    assert_eq!(c.published_at.to_rfc3339(), "2023-11-19T10:15:49.433+00:00");
    assert_eq!(c.vuln_status, VulnStatus::UndergoingAnalysis);
}

#[test]
fn cve_tags_become_source_tags() {
    let bytes = std::fs::read(nvd("pages/osv.dev/conversion-nvd-testdata-test.json")).unwrap();
    let mut all = parse_page(&bytes, "conv").unwrap().cves;
    for f in list_feed_files(&nvd("")).unwrap() {
        all.extend(collect(&f).0);
    }
    let tagged: Vec<_> = all
        .iter()
        .filter(|c| {
            c.source_tags
                .contains(&"unsupported-when-assigned".to_string())
        })
        .collect();
    assert!(!tagged.is_empty());
}

#[test]
fn platform_cpes_are_not_affected_products() {
    // EternalBlue: AND configurations with vulnerable:false platform nodes.
    let c = one("cve/CVE-2017-0144.json");
    assert!(
        c.vendors.iter().all(|v| v == "microsoft" || v == "siemens"),
        "{:?}",
        c.vendors
    );
    // Duplicate CPEs across configurations are listed once.
    let c = one("feeds/dependency-track/nvdcve-2.0-2021_duplicate-cpes.json");
    let fedora = c
        .affected_products
        .iter()
        .filter(|p| *p == "fedoraproject:fedora")
        .count();
    assert_eq!(fedora, 1, "{:?}", c.affected_products);
}

#[test]
fn wrapper_and_bare_forms() {
    let bare = std::fs::read_to_string(nvd("cve/CVE-1999-0001.json")).unwrap();
    let wrapped = format!("{{\"cve\": {bare}}}");
    let p = parse_page(wrapped.as_bytes(), "wrapped").unwrap();
    assert_eq!(p.kind, DocumentKind::Wrapped);
    assert_eq!(p.cves[0].cve_id.as_str(), "CVE-1999-0001");
    let p = parse_page(bare.as_bytes(), "bare").unwrap();
    assert_eq!(p.kind, DocumentKind::Bare);
    assert_eq!(p.cves.len(), 1);
}

#[test]
fn malformed_record_inside_good_page_is_skipped_with_its_id() {
    let text = std::fs::read_to_string(nvd("pages/vuls-data-update/3_pages-0-3.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let vulns = v["vulnerabilities"].as_array_mut().unwrap();
    let victim = vulns[1]["cve"]["id"].as_str().unwrap().to_string();
    vulns[1]["cve"]["published"] = serde_json::json!(12345);
    vulns.push(serde_json::json!({"cve": {"id": "CVE-2099-0001", "published": "not a date"}}));
    vulns.push(serde_json::json!({"cve": {"published": "2024-01-01T00:00:00.000"}}));
    let page = parse_page(v.to_string().as_bytes(), "edited").unwrap();
    assert_eq!(page.cves.len(), 2);
    assert_eq!(page.failed.len(), 3);
    assert_eq!(page.failed[0].cve_id.as_deref(), Some(victim.as_str()));
    assert_eq!(page.failed[0].index, 1);
    assert!(
        page.failed[0].reason.contains("invalid type"),
        "{}",
        page.failed[0]
    );
    assert_eq!(page.failed[1].cve_id.as_deref(), Some("CVE-2099-0001"));
    assert!(page.failed[1].reason.contains("published"));
    assert_eq!(page.failed[2].cve_id, None);
    assert!(page.failed[2].to_string().contains("record #4"));
}

#[test]
fn truncated_json_names_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read(nvd("feeds/dependency-track/nvdcve-2.0-2022.json")).unwrap();
    let path = dir.path().join("cut.json");
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let mut seen = 0;
    let err = parse_file(&path, &FileOptions::default(), &mut |_| {
        seen += 1;
        Ok(())
    })
    .unwrap_err();
    let msg = err.to_string();
    match &err {
        FeedsError::Json { origin, line, .. } => {
            assert!(origin.ends_with("cut.json"));
            assert!(*line > 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    println!("{msg}");
    assert!(msg.contains("cut.json") && msg.contains("line"), "{msg}");
}

#[test]
fn truncated_gzip_is_an_error_not_a_short_file() {
    let dir = tempfile::tempdir().unwrap();
    let gz = std::fs::read(nvd("feeds/vuls-data-update/nvdcve-2.0-2021.json.gz")).unwrap();
    let path = dir.path().join("nvdcve-2.0-2021.json.gz");
    std::fs::write(&path, &gz[..gz.len() * 2 / 3]).unwrap();
    let mut batches = Vec::new();
    let err = parse_file_batches(&path, &opts(1), &mut |b| {
        batches.push(b);
        Ok(())
    })
    .unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("nvdcve-2.0-2021.json.gz"), "{msg}");
    assert!(msg.contains("bytes read"), "{msg}");
    assert!(batches.iter().all(|b| !b.is_last));
}

#[test]
fn batches_hold_the_last_one_until_the_file_is_verified() {
    let path = nvd("feeds/vuls-data-update/nvdcve-2.0-2002.json.gz");
    let mut batches: Vec<RecordBatch> = Vec::new();
    let summary = parse_file_batches(&path, &opts(2), &mut |b| {
        batches.push(b);
        Ok(())
    })
    .unwrap();
    assert_eq!(summary.parsed, 4);
    assert_eq!(summary.envelope.unwrap().total_results, Some(4));
    let sizes: Vec<_> = batches.iter().map(|b| (b.cves.len(), b.is_last)).collect();
    assert_eq!(sizes, vec![(2, false), (2, true)]);
}

#[test]
fn meta_checksum_match_and_mismatch() {
    // The fixture's .meta describes the full original feed, so it must fail.
    let feed = nvd("feeds/dependency-track/nvdcve-2.0-2022.json");
    let mut got = 0;
    let err = parse_file_batches(&feed, &opts(1000), &mut |b| {
        got += b.cves.len();
        Ok(())
    })
    .unwrap_err();
    match &err {
        FeedsError::ChecksumMismatch { expected, .. } => {
            assert!(expected.starts_with("C7C69BD3"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        got, 0,
        "no batch may be handed over from a file that failed"
    );
    assert!(err.to_string().contains("nvdcve-2.0-2022.json"));

    // A generated .meta for the gzip fixture matches (hash of the uncompressed JSON).
    let dir = tempfile::tempdir().unwrap();
    let src = nvd("feeds/vuls-data-update/nvdcve-2.0-modified.json.gz");
    let gz = std::fs::read(&src).unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
    use sha2::Digest;
    let meta = FeedMeta {
        last_modified_date: Some("2026-01-01T00:00:00-05:00".into()),
        size: Some(plain.len() as u64),
        zip_size: None,
        gz_size: Some(gz.len() as u64),
        sha256: hex::encode_upper(sha2::Sha256::digest(&plain)),
    };
    let path = dir.path().join("nvdcve-2.0-modified.json.gz");
    std::fs::write(&path, &gz).unwrap();
    std::fs::File::create(dir.path().join("nvdcve-2.0-modified.meta"))
        .unwrap()
        .write_all(meta.render().as_bytes())
        .unwrap();
    let summary = parse_file(&path, &FileOptions::default(), &mut |_| Ok(())).unwrap();
    assert_eq!(summary.parsed, 2);
    assert_eq!(summary.meta.unwrap().sha256, meta.sha256);
}

#[test]
fn consumer_error_stops_the_parse() {
    let path = nvd("pages/vunnel/full-page.json");
    let mut n = 0;
    let err = parse_file(&path, &FileOptions::default(), &mut |_| {
        n += 1;
        if n == 5 {
            Err(FeedsError::Stopped("enough".into()))
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert!(matches!(err, FeedsError::Stopped(_)), "{err:?}");
    assert_eq!(n, 5);
}

#[tokio::test]
async fn channel_batches() {
    let mut rx = openthreat_feeds::nvd::parse::spawn_file_batches(
        nvd("pages/vunnel/full-page.json"),
        opts(10),
        2,
    );
    let mut total = 0;
    let mut last = false;
    while let Some(b) = rx.recv().await {
        let b = b.unwrap();
        total += b.cves.len();
        last = b.is_last;
    }
    assert!(last);
    assert_eq!(total, 38);
}

#[test]
fn mapping_workers_give_the_same_records_in_the_same_order() {
    // Make a file big enough for several chunks, with bad records inside.
    let text = std::fs::read_to_string(nvd("pages/vunnel/full-page.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let base = v["vulnerabilities"].as_array().unwrap().clone();
    let mut many = Vec::new();
    for i in 0..300 {
        let mut item = base[i % base.len()].clone();
        item["cve"]["id"] = serde_json::json!(format!("CVE-2030-{:05}", i));
        if i % 97 == 5 {
            item["cve"]["published"] = serde_json::json!([]);
        }
        many.push(item);
    }
    v["vulnerabilities"] = serde_json::Value::Array(many);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.json");
    std::fs::write(&path, v.to_string()).unwrap();

    let run = |workers| {
        let mut out = Vec::new();
        let summary = parse_file(
            &path,
            &FileOptions {
                workers: Some(workers),
                ..FileOptions::default()
            },
            &mut |r| {
                out.push(r);
                Ok(())
            },
        )
        .unwrap();
        (summary, out)
    };
    let (s0, inline) = run(0);
    let (s3, pooled) = run(3);
    assert_eq!((s0.parsed, s0.failed), (296, 4));
    assert_eq!((s3.parsed, s3.failed), (296, 4));
    assert_eq!(inline, pooled);
    let failed: Vec<_> = pooled.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(failed[0].index, 5);
    assert_eq!(failed[0].cve_id.as_deref(), Some("CVE-2030-00005"));

    // A consumer error mid-way stops the workers too.
    let mut n = 0;
    let err = parse_file(
        &path,
        &FileOptions {
            workers: Some(2),
            ..FileOptions::default()
        },
        &mut |_| {
            n += 1;
            if n == 100 {
                Err(FeedsError::Stopped("enough".into()))
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    assert!(matches!(err, FeedsError::Stopped(_)));
    assert_eq!(n, 100);

    // A truncated file fails the same way with workers.
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() * 3 / 4]).unwrap();
    let err = parse_file(
        &path,
        &FileOptions {
            workers: Some(2),
            ..FileOptions::default()
        },
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(matches!(err, FeedsError::Json { .. }), "{err:?}");
}

#[test]
fn other_documents_are_rejected_as_a_whole() {
    let kev = Path::new(DATA).join("kev/known_exploited_vulnerabilities.json");
    let err = parse_file(&kev, &FileOptions::default(), &mut |_| Ok(())).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("not an NVD document"), "{msg}");
    assert!(
        msg.contains("known_exploited_vulnerabilities.json"),
        "{msg}"
    );
    let cve5 = Path::new(DATA).join("cvelistv5/cves/2024/3xxx/CVE-2024-3400.json");
    assert!(parse_file(&cve5, &FileOptions::default(), &mut |_| Ok(())).is_err());
    assert!(parse_page(b"[1, 2]", "array").is_err());
    assert!(parse_page(b"{}", "empty").is_err());
}

/// A reader handing out a few bytes per call.
struct Trickle<'a>(&'a [u8], usize);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.1.min(buf.len()).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// Streams (files, readers) use a fast scanner, in-memory pages serde
/// alone: for every fixture both give the same records, failures, kind
/// and envelope, however the bytes arrive.
#[test]
fn streamed_and_in_memory_parses_agree() {
    use openthreat_feeds::nvd::parse::parse_reader;
    for f in list_feed_files(&nvd("")).unwrap() {
        let mut bytes = Vec::new();
        let mut file = std::fs::File::open(&f).unwrap();
        if f.extension().is_some_and(|e| e == "gz") {
            std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(file), &mut bytes)
                .unwrap();
        } else {
            std::io::Read::read_to_end(&mut file, &mut bytes).unwrap();
        }
        let page = parse_page(&bytes, "page").unwrap();
        for step in [3, 4096] {
            let mut records = Vec::new();
            let summary = parse_reader(Trickle(&bytes, step), "stream", &mut |r| {
                records.push(r);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let (cves, failed): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.is_ok());
            let cves: Vec<_> = cves.into_iter().map(Result::unwrap).collect();
            let failed: Vec<_> = failed.into_iter().map(|r| r.unwrap_err()).collect();
            assert_eq!(cves, page.cves, "{} step {step}", f.display());
            assert_eq!(failed, page.failed, "{}", f.display());
            assert_eq!(summary.kind, page.kind, "{}", f.display());
            assert_eq!(summary.envelope, page.envelope, "{}", f.display());
        }
    }
}

/// Broken JSON inside one record is the file's fault: the file fails at
/// that line, it is not a skipped record.
#[test]
fn broken_json_inside_a_record_fails_the_file_at_its_line() {
    let page: serde_json::Value =
        serde_json::from_slice(&std::fs::read(nvd("pages/vunnel/full-page.json")).unwrap())
            .unwrap();
    let text = serde_json::to_string_pretty(&page).unwrap();
    // The second record's sourceIdentifier loses its colon.
    let key = "\"sourceIdentifier\": ";
    let second = text.match_indices(key).nth(1).unwrap().0;
    let broken = format!(
        "{}\"sourceIdentifier\" {}",
        &text[..second],
        &text[second + key.len()..]
    );
    let line = broken[..second].matches('\n').count() + 1;
    let column = second - broken[..second].rfind('\n').unwrap() + key.len() - 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(&path, &broken).unwrap();
    for workers in [0, 2] {
        let err = parse_file(
            &path,
            &FileOptions {
                workers: Some(workers),
                ..no_meta()
            },
            &mut |_| Ok(()),
        )
        .unwrap_err();
        match &err {
            FeedsError::Json {
                origin,
                line: l,
                column: c,
                message,
                ..
            } => {
                assert!(origin.ends_with("broken.json"), "{origin}");
                assert_eq!((*l, *c), (line, column), "{err}");
                assert!(message.contains("expected `:`"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // serde on the same bytes in memory agrees on the place.
    match parse_page(broken.as_bytes(), "page").unwrap_err() {
        FeedsError::Json {
            line: l, column: c, ..
        } => assert_eq!((l, c), (line, column)),
        other => panic!("unexpected {other:?}"),
    }
}
