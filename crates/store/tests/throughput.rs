//! Upsert throughput, measured on demand (it is a benchmark, not a check):
//!
//! ```text
//! cargo test -p openthreat-store --release --test throughput -- --ignored --nocapture
//! ```
//!
//! Targets (issue 2/8): ≥ 20,000 CVEs/s into SQLite and ≥ 10,000/s into
//! PostgreSQL, in batches of 1,000.

use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use openthreat_core::{Cve, CveId, Cvss, CvssVersion, Reference, Severity, VulnStatus};
use openthreat_store::Store;

const TOTAL: usize = 50_000;
const BATCH: usize = 1_000;

/// Realistic-sized records: a 300-character description, a CVSS vector,
/// CWE ids, vendors/products and three references each.
fn generate(n: usize) -> Vec<Cve> {
    let base = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    (0..n)
        .map(|i| {
            let id = CveId::parse(&format!("CVE-2024-{:05}", 10_000 + i)).unwrap();
            let description = format!(
                "A command injection vulnerability in the management interface of Example Product {i} \
                 allows a remote unauthenticated attacker to execute arbitrary commands with root \
                 privileges via crafted requests to the diagnostics endpoint. Versions before \
                 {}.{}.{} are affected.",
                i % 7,
                i % 13,
                i % 29
            );
            let mut c = Cve::new(id, description, base + Duration::minutes(i as i64));
            c.modified_at = c.published_at + Duration::days(2);
            c.vuln_status = VulnStatus::Analyzed;
            let score = (i % 100) as f64 / 10.0;
            c.cvss = Some(Cvss {
                score,
                vector: "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H".into(),
                version: CvssVersion::V31,
            });
            c.severity = Severity::from_v3_score(score);
            c.cwe_ids = vec![format!("CWE-{}", 20 + i % 50)];
            c.vendors = vec![format!("vendor{}", i % 500)];
            c.products = vec![format!("product{}", i % 2000), format!("product{}", i % 1999)];
            c.affected_products = vec![format!("vendor{}:product{}", i % 500, i % 2000)];
            c.references = (0..3)
                .map(|r| Reference {
                    url: format!("https://example.com/advisories/{i}/{r}"),
                    source: Some("cve@mitre.org".into()),
                    tags: vec!["Vendor Advisory".into()],
                })
                .collect();
            c.sources = vec!["nvd".into()];
            c
        })
        .collect()
}

async fn measure(store: &dyn Store, label: &str) {
    let cves = generate(TOTAL);
    let now = Utc::now();
    let start = Instant::now();
    for batch in cves.chunks(BATCH) {
        let s = store.upsert_cves(batch, now).await.unwrap();
        assert_eq!(s.inserted as usize, batch.len());
    }
    let insert = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for batch in cves.chunks(BATCH) {
        let s = store.upsert_cves(batch, now).await.unwrap();
        assert_eq!(s.unchanged as usize, batch.len());
    }
    let reimport = start.elapsed().as_secs_f64();
    let changed: Vec<Cve> = cves
        .into_iter()
        .map(|mut c| {
            c.modified_at += Duration::days(1);
            c.description.push_str(" Updated.");
            c
        })
        .collect();
    let start = Instant::now();
    for batch in changed.chunks(BATCH) {
        let s = store.upsert_cves(batch, now).await.unwrap();
        assert_eq!(s.updated as usize, batch.len());
    }
    let update = start.elapsed().as_secs_f64();
    let rate = |secs: f64| TOTAL as f64 / secs;
    println!(
        "{label}: insert {:.0}/s, unchanged re-import {:.0}/s, update {:.0}/s ({TOTAL} CVEs, batches of {BATCH})",
        rate(insert),
        rate(reimport),
        rate(update)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture, ideally --release"]
async fn upsert_throughput_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = openthreat_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    measure(store.as_ref(), "SQLite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture, ideally --release"]
async fn upsert_throughput_postgres() {
    let admin = std::env::var("OPENTHREAT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    let db = format!("ot_bench_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE \"{db}\""))
        .execute(&pool)
        .await
        .unwrap();
    let url = match admin.rsplit_once('/') {
        Some((root, _)) => format!("{root}/{db}"),
        None => panic!("no database in {admin}"),
    };
    let store = openthreat_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    measure(store.as_ref(), "PostgreSQL").await;
    drop(store);
    sqlx::query(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .execute(&pool)
        .await
        .unwrap();
}
