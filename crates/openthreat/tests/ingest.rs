//! The ingestion service and `openthreat ingest`, against real stores
//! (a SQLite file and a throwaway PostgreSQL database per test), the local
//! NVD/KEV/EPSS servers of `openthreat-feeds`, and the real records in
//! `shared/data`. Expected values are read from the fixture files here,
//! not copied from our own mapping.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use openthreat::config::Config;
use openthreat::ingest::sync::{load_cursor, SyncRequest};
use openthreat::ingest::{FeedName, IngestReport, IngestSettings, Ingestor, RunResult, Source};
use openthreat::tasks::update_vulnerabilities::update_vulnerabilities;
use openthreat_core::CveId;
use openthreat_feeds::http::RetryPolicy;
use openthreat_feeds::nvd::map::parse_nvd_timestamp;
use openthreat_feeds::ratelimit::RateLimit;
use openthreat_feeds::testing::{
    load_all_nvd_fixtures, FileServer, FixtureRecord, NvdServerConfig, NvdTestServer, ServedFile,
    Throttle,
};
use openthreat_store::{ListQuery, RunStatus, Store};
use serde_json::Value;
use support::{openthreat, text, PgDatabase};

fn data() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
}

/// A store for one test, with whatever keeps it alive. Cloneable so that
/// [`on_both`] keeps the database until the scenario's future is done (a
/// scenario's `async move` block may capture only some fields).
#[derive(Clone)]
struct TestStore {
    store: Arc<dyn Store>,
    url: String,
    _dir: Arc<tempfile::TempDir>,
    _pg: Option<Arc<PgDatabase>>,
}

async fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ot.db").display());
    let store = openthreat_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    TestStore {
        store,
        url,
        _dir: Arc::new(dir),
        _pg: None,
    }
}

/// `None` (after printing why, or panicking in CI) when PostgreSQL is down.
async fn pg_store() -> Option<TestStore> {
    let pg = PgDatabase::create()?;
    let store = openthreat_store::connect(&pg.url).await.unwrap();
    store.migrate().await.unwrap();
    Some(TestStore {
        store,
        url: pg.url.clone(),
        _dir: Arc::new(tempfile::tempdir().unwrap()),
        _pg: Some(Arc::new(pg)),
    })
}

/// Runs one scenario on SQLite, then on PostgreSQL.
async fn on_both<F, Fut>(scenario: F)
where
    F: Fn(TestStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let sqlite = sqlite_store().await;
    scenario(sqlite.clone()).await;
    drop(sqlite);
    if let Some(pg) = pg_store().await {
        scenario(pg.clone()).await;
        drop(pg);
    }
}

/// Settings pointing nowhere real, fast retries, no client-side quota.
fn settings(download_dir: &Path) -> IngestSettings {
    let mut s = IngestSettings::from_config(&Config::from_map(HashMap::new()).unwrap()).unwrap();
    for url in [
        &mut s.nvd.base_url,
        &mut s.feeds_url,
        &mut s.kev_url,
        &mut s.epss_url,
    ] {
        *url = url::Url::parse("http://127.0.0.1:9/unreachable").unwrap();
    }
    let retry = RetryPolicy {
        max_attempts: 8,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(400),
    };
    s.nvd.retry = retry.clone();
    s.retry = RetryPolicy {
        max_attempts: 2,
        ..retry
    };
    s.nvd.rate_limit = Some(RateLimit {
        requests: 10_000,
        window: Duration::from_secs(1),
    });
    s.nvd.results_per_page = 10;
    s.download_dir = download_dir.to_path_buf();
    s
}

fn ingestor(ts: &TestStore) -> Ingestor {
    Ingestor::new(ts.store.clone(), settings(ts._dir.path()))
}

fn id(s: &str) -> CveId {
    CveId::parse(s).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Every CVE in the store, rejected included.
async fn count(store: &dyn Store) -> u64 {
    store
        .list_cves(&ListQuery {
            page_size: 1,
            include_rejected: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .total
}

async fn last_run(store: &dyn Store) -> openthreat_store::IngestionRun {
    store.ingestion_runs(1).await.unwrap().remove(0)
}

fn ts(s: &str) -> DateTime<Utc> {
    parse_nvd_timestamp(s).unwrap()
}

// ---------------------------------------------------------------- files

#[tokio::test]
async fn bare_records_are_imported_with_their_fields_mapped() {
    on_both(|t| async move {
        let dir = data().join("nvd/cve");
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let report = ingestor(&t).import_path(&dir).await.unwrap();
        assert_eq!(report.status, RunResult::Success, "{report:?}");
        assert_eq!(report.counts.fetched, files.len() as u64);
        assert_eq!(report.counts.inserted, files.len() as u64);
        assert_eq!(report.counts.failed, 0);
        assert_eq!(count(t.store.as_ref()).await, files.len() as u64);

        // Every record's dates and status, as written in its file.
        for f in &files {
            let rec = read_json(f);
            let row = t
                .store
                .get_cve(&id(rec["id"].as_str().unwrap()))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{} not stored", f.display()));
            assert_eq!(row.published_at, ts(rec["published"].as_str().unwrap()));
            assert_eq!(row.modified_at, ts(rec["lastModified"].as_str().unwrap()));
            assert_eq!(row.vuln_status, rec["vulnStatus"].as_str().unwrap());
            let english = rec["descriptions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["lang"] == "en")
                .unwrap()["value"]
                .as_str()
                .unwrap();
            assert_eq!(row.description.trim(), english.trim(), "{}", f.display());
        }

        // Heartbleed: NVD's Primary v3.1 metric and NVD's own KEV fields.
        let hb = read_json(&dir.join("CVE-2014-0160.json"));
        let v31 = hb["metrics"]["cvssMetricV31"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["type"] == "Primary")
            .unwrap();
        let row = t
            .store
            .get_cve(&id("CVE-2014-0160"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.cvss_score, v31["cvssData"]["baseScore"].as_f64());
        assert_eq!(
            row.cvss_vector.as_deref(),
            v31["cvssData"]["vectorString"].as_str()
        );
        assert_eq!(
            row.severity.as_str(),
            v31["cvssData"]["baseSeverity"].as_str().unwrap()
        );
        assert!(row.exploited_in_the_wild);
        assert_eq!(
            row.kev_date_added.map(|d| d.to_string()).as_deref(),
            hb["cisaExploitAdd"].as_str()
        );
        assert_eq!(
            row.cisa_due_date.map(|d| d.to_string()).as_deref(),
            hb["cisaActionDue"].as_str()
        );

        // CVSS v4.0 only.
        let v4 = read_json(&dir.join("CVE-2025-0938.json"));
        let row = t
            .store
            .get_cve(&id("CVE-2025-0938"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.cvss_score,
            v4["metrics"]["cvssMetricV40"][0]["cvssData"]["baseScore"].as_f64()
        );
        assert_eq!(row.cvss_version.as_deref(), Some("4.0"));

        // Rejected records are kept, flagged, and hidden from default listings.
        let row = t
            .store
            .get_cve(&id("CVE-2024-2652"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.vuln_status, "Rejected");
        let listed = t.store.list_cves(&ListQuery::default()).await.unwrap();
        assert!(listed.items.iter().all(|r| r.vuln_status != "Rejected"));

        let run = last_run(t.store.as_ref()).await;
        assert_eq!(run.source, "nvd-feed");
        assert_eq!(run.status, RunStatus::Success);
        assert_eq!(run.records_inserted, files.len() as u64);
    })
    .await;
}

#[tokio::test]
async fn every_fixture_directory_imports_and_reimport_changes_nothing() {
    on_both(|t| async move {
        let ing = {
            let mut s = settings(t._dir.path());
            // The trimmed 2022 feed keeps the .meta of the full original.
            s.verify_meta = false;
            Ingestor::new(t.store.clone(), s)
        };
        let expected: BTreeSet<String> = load_all_nvd_fixtures()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        let first = ing.import_path(&data().join("nvd")).await.unwrap();
        assert_eq!(first.status, RunResult::Success, "{first:?}");
        assert_eq!(first.counts.failed, 0, "{first:?}");
        assert_eq!(count(t.store.as_ref()).await, expected.len() as u64);
        assert_eq!(first.counts.inserted, expected.len() as u64);

        let again = ing.import_path(&data().join("nvd")).await.unwrap();
        assert_eq!(again.status, RunResult::Success);
        assert_eq!(
            (again.counts.inserted, again.counts.updated),
            (0, 0),
            "{again:?}"
        );
        assert_eq!(again.counts.fetched, first.counts.fetched);
        assert_eq!(count(t.store.as_ref()).await, expected.len() as u64);
    })
    .await;
}

#[tokio::test]
async fn api_pages_envelopes_and_wrapped_records() {
    on_both(|t| async move {
        let ing = ingestor(&t);
        // A real 38-result page.
        let page = data().join("nvd/pages/vunnel/full-page.json");
        let doc = read_json(&page);
        let n = doc["vulnerabilities"].as_array().unwrap().len() as u64;
        let r = ing.import_path(&page).await.unwrap();
        assert_eq!((r.counts.fetched, r.counts.inserted), (n, n), "{r:?}");

        // An empty page is a success with nothing in it.
        let r = ing
            .import_path(&data().join("nvd/pages/vuls-data-update/empty-0-1.json"))
            .await
            .unwrap();
        assert_eq!((r.status, r.counts.fetched), (RunResult::Success, 0));

        // A {"cve": ...} wrapper.
        let dir = tempfile::tempdir().unwrap();
        let bare = read_json(&data().join("nvd/cve/CVE-2023-4966.json"));
        let wrapped = dir.path().join("wrapped.json");
        std::fs::write(
            &wrapped,
            serde_json::to_vec(&serde_json::json!({ "cve": bare })).unwrap(),
        )
        .unwrap();
        let r = ing.import_path(&wrapped).await.unwrap();
        assert_eq!(r.counts.inserted, 1, "{r:?}");
        let row = t
            .store
            .get_cve(&id("CVE-2023-4966"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.modified_at, ts(bare["lastModified"].as_str().unwrap()));
    })
    .await;
}

/// A record with a different `lastModified` and description.
fn variant(rec: &Value, last_modified: &str, description: &str) -> Value {
    let mut v = rec.clone();
    v["lastModified"] = Value::String(last_modified.into());
    v["descriptions"][0]["value"] = Value::String(description.into());
    v
}

#[tokio::test]
async fn an_older_file_never_overwrites_a_newer_record() {
    on_both(|t| async move {
        let ing = ingestor(&t);
        let dir = tempfile::tempdir().unwrap();
        let rec = read_json(&data().join("nvd/cve/CVE-2024-3400.json"));
        let write = |name: &str, v: &Value| {
            let p = dir.path().join(name);
            std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
            p
        };
        let newer = write(
            "newer.json",
            &variant(&rec, "2025-06-01T10:00:00.000", "Newer text."),
        );
        let older = write(
            "older.json",
            &variant(&rec, "2024-05-01T10:00:00.000", "Older text."),
        );
        let newest = write(
            "newest.json",
            &variant(&rec, "2025-07-01T10:00:00.000", "Newest text."),
        );

        assert_eq!(ing.import_path(&newer).await.unwrap().counts.inserted, 1);
        let r = ing.import_path(&older).await.unwrap();
        assert_eq!(
            (r.counts.inserted, r.counts.updated, r.counts.skipped_older),
            (0, 0, 1)
        );
        let row = t
            .store
            .get_cve(&id("CVE-2024-3400"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.description, "Newer text.");
        assert_eq!(row.modified_at, ts("2025-06-01T10:00:00.000"));

        let r = ing.import_path(&newest).await.unwrap();
        assert_eq!(r.counts.updated, 1);
        let row = t
            .store
            .get_cve(&id("CVE-2024-3400"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.description, "Newest text.");
    })
    .await;
}

/// Gzips `bytes` into `path`.
fn write_gz(path: &Path, bytes: &[u8]) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut out,
    )
    .unwrap();
    out
}

#[tokio::test]
async fn a_truncated_gz_feed_fails_naming_the_file_and_commits_nothing() {
    on_both(|t| async move {
        let mut s = settings(t._dir.path());
        // Several batches, so the file's first records would be committable.
        s.batch_size = 1;
        let ing = Ingestor::new(t.store.clone(), s);
        let dir = tempfile::tempdir().unwrap();
        let src = data().join("nvd/feeds/vuls-data-update/nvdcve-2.0-2021.json.gz");
        let bytes = std::fs::read(&src).unwrap();
        let cut = dir.path().join("nvdcve-2.0-2021.json.gz");
        std::fs::write(&cut, &bytes[..bytes.len() * 3 / 4]).unwrap();

        let r = ing.import_path(&cut).await.unwrap();
        assert_eq!(r.status, RunResult::Failed);
        let err = r.error.clone().unwrap();
        assert!(err.contains(&cut.display().to_string()), "{err}");
        assert!(
            err.contains("bytes read") && err.contains("truncated"),
            "{err}"
        );
        assert_eq!(count(t.store.as_ref()).await, 0);
        let run = last_run(t.store.as_ref()).await;
        assert_eq!(run.status, RunStatus::Failed);
        assert!(run.error.unwrap().contains("nvdcve-2.0-2021.json.gz"));

        // Malformed JSON (not gzip) too, with its position.
        let bad = dir.path().join("bad.json");
        let mut body =
            serde_json::to_vec_pretty(&read_json(&data().join("nvd/pages/vunnel/full-page.json")))
                .unwrap();
        let at = body.len() / 2;
        body.truncate(at);
        body.extend_from_slice(b"}}} not json");
        std::fs::write(&bad, &body).unwrap();
        let r = ing.import_path(&bad).await.unwrap();
        assert_eq!(r.status, RunResult::Failed);
        assert!(r.error.unwrap().contains("bad.json"));
        assert_eq!(count(t.store.as_ref()).await, 0);

        // The CLI says the same, and exits non-zero.
        let out = openthreat(
            dir.path(),
            &[("DATABASE_URL", &t.url)],
            &["ingest", "nvd", "--from", cut.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("nvdcve-2.0-2021.json.gz"),
            "{}",
            text(&out)
        );
        assert_eq!(count(t.store.as_ref()).await, 0);
    })
    .await;
}

#[tokio::test]
async fn meta_checksums_are_verified() {
    on_both(|t| async move {
        let ing = ingestor(&t);
        // The trimmed fixture keeps the real feed's .meta: a mismatch.
        let feed = data().join("nvd/feeds/dependency-track/nvdcve-2.0-2022.json");
        let r = ing.import_path(&feed).await.unwrap();
        assert_eq!(r.status, RunResult::Failed);
        let err = r.error.unwrap();
        assert!(
            err.contains("sha256") && err.contains("nvdcve-2.0-2022.meta"),
            "{err}"
        );
        assert_eq!(count(t.store.as_ref()).await, 0);

        // A matching .meta passes.
        let dir = tempfile::tempdir().unwrap();
        let json = std::fs::read(&feed).unwrap();
        let gz = dir.path().join("nvdcve-2.0-2022.json.gz");
        write_gz(&gz, &json);
        std::fs::write(dir.path().join("nvdcve-2.0-2022.meta"), meta_for(&json)).unwrap();
        let r = ing.import_path(&gz).await.unwrap();
        assert_eq!(r.status, RunResult::Success, "{r:?}");
        assert_eq!(r.counts.inserted, 3);
    })
    .await;
}

fn meta_for(json: &[u8]) -> String {
    use sha2::Digest;
    let sha = hex::encode_upper(sha2::Sha256::digest(json));
    format!(
        "lastModifiedDate:2026-01-01T03:00:00-04:00\r\nsize:{}\r\nsha256:{sha}\r\n",
        json.len()
    )
}

#[tokio::test]
async fn a_malformed_record_is_skipped_counted_and_named() {
    on_both(|t| async move {
        let ing = ingestor(&t);
        let mut page = read_json(&data().join("nvd/pages/vunnel/full-page.json"));
        let vulns = page["vulnerabilities"].as_array_mut().unwrap();
        let n = vulns.len() as u64;
        let victim = vulns[5]["cve"]["id"].as_str().unwrap().to_string();
        vulns[5]["cve"]["published"] = Value::String("not a date".into());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("page.json");
        std::fs::write(&p, serde_json::to_vec(&page).unwrap()).unwrap();
        let r = ing.import_path(&p).await.unwrap();
        assert_eq!(r.status, RunResult::Success, "{r:?}");
        assert_eq!(
            (r.counts.fetched, r.counts.inserted, r.counts.failed),
            (n, n - 1, 1)
        );
        assert!(
            r.failures.iter().any(|f| f.contains(&victim)),
            "{:?}",
            r.failures
        );
        assert!(t.store.get_cve(&id(&victim)).await.unwrap().is_none());
        assert_eq!(last_run(t.store.as_ref()).await.records_failed, 1);
    })
    .await;
}

// ---------------------------------------------------------------- CLI

#[tokio::test]
async fn cli_imports_fixtures_with_json_and_text_summaries() {
    on_both(|t| async move {
        let dir = tempfile::tempdir().unwrap();
        let env = [("DATABASE_URL", t.url.as_str())];
        let run = |args: &[&str]| {
            let out = openthreat(dir.path(), &env, args);
            assert!(out.status.success(), "{args:?}: {}", text(&out));
            out
        };
        let json = |args: &[&str]| -> Value { serde_json::from_slice(&run(args).stdout).unwrap() };
        let cve_dir = data().join("nvd/cve");
        let n = std::fs::read_dir(&cve_dir).unwrap().count() as u64;
        let r = json(&[
            "ingest",
            "nvd",
            "--from",
            cve_dir.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(r["source"], "nvd-feed");
        assert_eq!(r["status"], "success");
        assert_eq!(r["inserted"], n);
        let r = json(&[
            "ingest",
            "nvd",
            "--from",
            cve_dir.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(
            (r["inserted"].as_u64(), r["updated"].as_u64()),
            (Some(0), Some(0))
        );

        for sub in ["nvd/pages", "nvd/feeds/vuls-data-update", "nvd/synthetic"] {
            let p = data().join(sub);
            let r = json(&["ingest", "nvd", "--from", p.to_str().unwrap(), "--json"]);
            assert_eq!(r["status"], "success", "{sub}: {r}");
            assert_eq!(r["failed"], 0, "{sub}: {r}");
        }
        // The trimmed 2022 feed needs --no-verify-meta.
        let p = data().join("nvd/feeds/dependency-track");
        let out = openthreat(
            dir.path(),
            &env,
            &["ingest", "nvd", "--from", p.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).contains("sha256"), "{}", text(&out));
        let out = run(&[
            "ingest",
            "nvd",
            "--from",
            p.to_str().unwrap(),
            "--no-verify-meta",
        ]);
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.starts_with("nvd-feed: ok"), "{summary}");
        assert!(summary.contains("records/s"), "{summary}");

        let expected = load_all_nvd_fixtures().unwrap().len() as u64;
        assert_eq!(count(t.store.as_ref()).await, expected);

        let kev = data().join("kev/known_exploited_vulnerabilities.json");
        let r = json(&["ingest", "kev", "--from", kev.to_str().unwrap(), "--json"]);
        assert_eq!(r["status"], "success");
        let r = json(&["ingest", "kev", "--from", kev.to_str().unwrap(), "--json"]);
        assert_eq!(r["status"], "skipped");
        let r = json(&[
            "ingest",
            "kev",
            "--from",
            kev.to_str().unwrap(),
            "--force",
            "--json",
        ]);
        assert_eq!(r["status"], "success");
        let epss = data().join("epss/vunnel/example-1.csv");
        let r = json(&["ingest", "epss", "--from", epss.to_str().unwrap(), "--json"]);
        assert_eq!(
            (r["status"].as_str(), r["fetched"].as_u64()),
            (Some("success"), Some(5))
        );
    })
    .await;
}

#[test]
fn cli_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let out = openthreat(
        dir.path(),
        &[],
        &["ingest", "nvd", "--from", "/no/such/path"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("/no/such/path"), "{}", text(&out));
    let out = openthreat(dir.path(), &[], &["ingest", "nvd", "--feeds", "1999"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--feeds"), "{}", text(&out));
    let out = openthreat(dir.path(), &[], &["ingest", "nvd", "--since", "last week"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not a date"), "{}", text(&out));
    let out = openthreat(
        dir.path(),
        &[],
        &["ingest", "nvd", "--since", "2024-01-01", "--from", "x"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = openthreat(dir.path(), &[], &["ingest", "nvd", "--help"]);
    assert!(text(&out).contains("--feeds") && text(&out).contains("Examples"));
}

// ---------------------------------------------------------------- NVD API sync

fn sync_settings(t: &TestStore, server: &NvdTestServer) -> IngestSettings {
    let mut s = settings(t._dir.path());
    s.nvd.base_url = server.base_url();
    s
}

/// The fixture records modified in `[since, now]`.
fn records_since(all: &[FixtureRecord], since: DateTime<Utc>) -> BTreeSet<String> {
    all.iter()
        .filter(|r| r.last_modified >= since)
        .map(|r| r.id.clone())
        .collect()
}

#[tokio::test]
async fn nvd_sync_pages_through_windows_with_throttling_and_retries() {
    on_both(|t| async move {
        let all = load_all_nvd_fixtures().unwrap();
        let server = NvdTestServer::start(NvdServerConfig {
            records: all.clone(),
            // NVD's 403 past the quota, and one 503. A quota of 3 per second
            // is exceeded even by a slow (debug, loaded) client paging through.
            throttle: Some(Throttle {
                max_requests: 3,
                window: Duration::from_secs(1),
            }),
            scripted: HashMap::from([(2, 503)]),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut s = sync_settings(&t, &server);
        // The retries of one request must outlast the 1 s window: 7 waits
        // of half to all of 20, 40, ..., 400 ms can add up to only 0.71 s
        // (a CI run failed so); 11 waits are at least 1.5 s.
        s.nvd.retry.max_attempts = 12;
        let ing = Ingestor::new(t.store.clone(), s);
        let since = Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 0).unwrap();
        let expected = records_since(&all, since);
        assert!(expected.len() > 20, "need several pages");

        let r = ing
            .sync_nvd(&SyncRequest {
                since: Some(since),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(r.status, RunResult::Success, "{r:?}");
        assert_eq!(r.counts.inserted, expected.len() as u64, "{r:?}");
        assert_eq!(count(t.store.as_ref()).await, expected.len() as u64);
        for cve in &expected {
            assert!(t.store.get_cve(&id(cve)).await.unwrap().is_some(), "{cve}");
        }
        let reqs = server.requests();
        assert!(reqs.iter().any(|q| q.status == 403), "never throttled");
        assert!(reqs.iter().any(|q| q.status == 503));
        assert!(
            reqs.iter().any(|q| q.param("startIndex") == Some("10")),
            "no paging"
        );
        for q in &reqs {
            let s = ts(q.param("lastModStartDate").unwrap());
            let e = ts(q.param("lastModEndDate").unwrap());
            assert!(e - s <= chrono::Duration::days(120));
        }
        // Caught up: the cursor waits at the last window's end.
        let cursor = load_cursor(t.store.as_ref()).await.unwrap().unwrap();
        assert_eq!(cursor.next_start_index, 0);
        assert!(Utc::now() - cursor.window_start < chrono::Duration::minutes(5));
        let run = last_run(t.store.as_ref()).await;
        assert_eq!(
            (run.source.as_str(), run.status),
            ("nvd", RunStatus::Success)
        );

        // A second sync finds nothing new; a record NVD modifies is fetched.
        let r = ing.sync_nvd(&SyncRequest::default()).await.unwrap();
        assert_eq!((r.counts.fetched, r.counts.inserted), (0, 0), "{r:?}");
        let mut changed = all
            .iter()
            .find(|r| r.id == "CVE-2024-3400")
            .unwrap()
            .clone();
        changed.last_modified = Utc::now();
        changed.cve["lastModified"] = Value::String(
            changed
                .last_modified
                .format("%Y-%m-%dT%H:%M:%S%.3f")
                .to_string(),
        );
        let until = changed.last_modified + chrono::Duration::milliseconds(1);
        server.upsert_record(changed);
        let r = ing
            .sync_nvd(&SyncRequest {
                now: Some(until),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            (r.counts.fetched, r.counts.updated + r.counts.inserted),
            (1, 1),
            "{r:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn nvd_sync_resumes_after_a_crash_without_loss_or_duplicates() {
    on_both(|t| async move {
        let all = load_all_nvd_fixtures().unwrap();
        let since = Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 0).unwrap();
        let expected = records_since(&all, since);
        // Request 4 fails with a non-retryable status: the "crash".
        let server = NvdTestServer::start(NvdServerConfig {
            records: all.clone(),
            scripted: HashMap::from([(4, 400)]),
            ..Default::default()
        })
        .await
        .unwrap();
        let ing = Ingestor::new(t.store.clone(), sync_settings(&t, &server));
        let req = SyncRequest {
            since: Some(since),
            ..Default::default()
        };
        let first = ing.sync_nvd(&req).await.unwrap();
        assert_eq!(first.status, RunResult::Failed, "{first:?}");
        assert!(first.error.as_deref().unwrap().contains("400"), "{first:?}");
        let run = last_run(t.store.as_ref()).await;
        assert_eq!(run.status, RunStatus::Failed);
        assert!(run.error.is_some());
        assert_eq!(run.records_inserted, first.counts.inserted);
        let stored = count(t.store.as_ref()).await;
        assert_eq!(stored, first.counts.inserted);
        assert!(stored > 0 && stored < expected.len() as u64);

        // The cursor points just after the last committed page.
        let cursor = load_cursor(t.store.as_ref()).await.unwrap().unwrap();
        let reqs = server.requests();
        let failed = &reqs[3];
        assert_eq!(failed.status, 400);
        assert_eq!(
            cursor.next_start_index.to_string(),
            failed.param("startIndex").unwrap()
        );

        // Second run, without --since: continues at the cursor.
        let second = ing.sync_nvd(&SyncRequest::default()).await.unwrap();
        assert_eq!(second.status, RunResult::Success, "{second:?}");
        let resumed = &server.requests()[reqs.len()];
        assert_eq!(resumed.param("startIndex"), failed.param("startIndex"));
        assert_eq!(
            resumed.param("lastModStartDate"),
            failed.param("lastModStartDate")
        );
        // Every record exactly once: nothing re-fetched, nothing missing.
        assert_eq!(
            second.counts.unchanged + second.counts.updated,
            0,
            "{second:?}"
        );
        assert_eq!(
            first.counts.inserted + second.counts.inserted,
            expected.len() as u64
        );
        assert_eq!(count(t.store.as_ref()).await, expected.len() as u64);
    })
    .await;
}

/// `kill -9` during an import leaves its run `running`; the next run closes
/// it as failed (a killed process can close nothing itself), and leaves a
/// run that is alive alone.
#[tokio::test]
async fn a_run_left_open_by_a_killed_process_is_closed_by_the_next_run() {
    on_both(|t| async move {
        let now = Utc::now();
        let killed = t
            .store
            .start_ingestion_run("nvd-feed", now - chrono::Duration::hours(1))
            .await
            .unwrap();
        let alive = t
            .store
            .start_ingestion_run("nvd", now - chrono::Duration::minutes(1))
            .await
            .unwrap();
        let report = ingestor(&t)
            .import_path(&data().join("nvd/cve"))
            .await
            .unwrap();
        assert!(report.is_success(), "{report:?}");
        let runs = t.store.ingestion_runs(10).await.unwrap();
        let run = |id| runs.iter().find(|r| r.id == id).unwrap();
        assert_eq!(run(killed).status, RunStatus::Failed);
        let error = run(killed).error.clone().unwrap_or_default();
        assert!(error.contains("killed or crashed"), "{error}");
        assert_eq!(run(alive).status, RunStatus::Running);
        assert_eq!(run(report.run_id.unwrap()).status, RunStatus::Success);
    })
    .await;
}

#[tokio::test]
async fn first_sync_starts_at_the_newest_stored_record() {
    on_both(|t| async move {
        let server = NvdTestServer::start(NvdServerConfig::default())
            .await
            .unwrap();
        let ing = Ingestor::new(t.store.clone(), sync_settings(&t, &server));
        ing.import_path(&data().join("nvd/cve")).await.unwrap();
        let newest = t
            .store
            .list_cves(&ListQuery {
                page_size: 1,
                include_rejected: true,
                sort: openthreat_store::SortField::ModifiedAt,
                ..Default::default()
            })
            .await
            .unwrap()
            .items[0]
            .modified_at;
        ing.sync_nvd(&SyncRequest::default()).await.unwrap();
        let first = &server.requests()[0];
        assert_eq!(ts(first.param("lastModStartDate").unwrap()), newest);
    })
    .await;
}

// ---------------------------------------------------------------- KEV / EPSS

fn kev_file() -> PathBuf {
    data().join("kev/known_exploited_vulnerabilities.json")
}

#[tokio::test]
async fn kev_marks_exploited_cves_and_skips_an_unchanged_catalog() {
    on_both(|t| async move {
        // Records without NVD's own KEV fields, so the flags come from CISA.
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(data().join("nvd/cve")).unwrap() {
            let mut rec = read_json(&f.unwrap().path());
            let obj = rec.as_object_mut().unwrap();
            obj.retain(|k, _| !k.starts_with("cisa"));
            let name = format!("{}.json", obj["id"].as_str().unwrap());
            std::fs::write(dir.path().join(name), serde_json::to_vec(&rec).unwrap()).unwrap();
        }
        let server = FileServer::start(
            vec![ServedFile::new(
                "/kev.json",
                std::fs::read(kev_file()).unwrap(),
                "application/json",
            )],
            1, // one 503 first: retried
        )
        .await
        .unwrap();
        let mut s = settings(t._dir.path());
        s.kev_url = server.url("/kev.json");
        let ing = Ingestor::new(t.store.clone(), s);
        ing.import_path(dir.path()).await.unwrap();

        let catalog = read_json(&kev_file());
        let entries: HashMap<String, Value> = catalog["vulnerabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["cveID"].as_str().unwrap().to_string(), v.clone()))
            .collect();
        let r = ing.import_kev(None, false).await.unwrap();
        assert_eq!(r.status, RunResult::Success, "{r:?}");
        assert_eq!(r.counts.fetched, entries.len() as u64);

        let rows = t
            .store
            .list_cves(&ListQuery {
                page_size: 100,
                include_rejected: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .items;
        let mut exploited = 0;
        for row in &rows {
            match entries.get(&row.cve_id) {
                Some(e) => {
                    exploited += 1;
                    assert!(row.exploited_in_the_wild, "{}", row.cve_id);
                    assert_eq!(
                        row.kev_date_added.unwrap().to_string(),
                        e["dateAdded"].as_str().unwrap()
                    );
                    assert_eq!(
                        row.cisa_due_date.unwrap().to_string(),
                        e["dueDate"].as_str().unwrap()
                    );
                    assert_eq!(
                        row.kev_ransomware_use,
                        Some(e["knownRansomwareCampaignUse"] == "Known"),
                        "{}",
                        row.cve_id
                    );
                    assert_eq!(
                        row.kev_required_action.as_deref(),
                        Some(e["requiredAction"].as_str().unwrap().trim())
                    );
                }
                None => assert!(!row.exploited_in_the_wild, "{}", row.cve_id),
            }
        }
        assert!(
            exploited >= 5,
            "only {exploited} KEV CVEs among the fixtures"
        );
        assert_eq!(r.counts.updated, exploited);

        // Same dateReleased: skipped, recorded, nothing written.
        let r = ing.import_kev(None, false).await.unwrap();
        assert_eq!(r.status, RunResult::Skipped);
        assert_eq!(r.counts.updated, 0);
        assert_eq!(last_run(t.store.as_ref()).await.status, RunStatus::Success);
        // --force applies it again (nothing changes, since nothing did).
        let r = ing.import_kev(None, true).await.unwrap();
        assert_eq!((r.status, r.counts.updated), (RunResult::Success, 0));

        // A new catalog version is applied.
        let mut newer = catalog.clone();
        newer["dateReleased"] = Value::String("2025-08-26T17:00:00.0000Z".into());
        let p = dir.path().join("kev-next.json");
        std::fs::write(&p, serde_json::to_vec(&newer).unwrap()).unwrap();
        let r = ing.import_kev(Some(&p), false).await.unwrap();
        assert_eq!(r.status, RunResult::Success);
    })
    .await;
}

#[tokio::test]
async fn epss_scores_are_stored_including_scientific_notation() {
    on_both(|t| async move {
        let ing = ingestor(&t);
        ing.import_path(&data().join("nvd/cve")).await.unwrap();
        // The real file's rows, plus scores written the way FIRST writes tiny ones.
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::read_to_string(data().join("epss/vunnel/example-1.csv")).unwrap();
        let row = real
            .lines()
            .find(|l| l.starts_with("CVE-1999-0001,"))
            .unwrap()
            .to_string();
        let fields: Vec<&str> = row.split(',').collect();
        let csv = format!("{real}CVE-2014-0160,9.7e-01,9.99e-1\nCVE-2024-2652,1.2e-05,3.4E-02\n");
        let gz = dir.path().join("epss_scores-2025-02-20.csv.gz");
        write_gz(&gz, csv.as_bytes());

        let r = ing.import_epss(Some(&gz)).await.unwrap();
        assert_eq!(r.status, RunResult::Success, "{r:?}");
        assert_eq!(r.counts.fetched, 7);
        assert_eq!(r.counts.updated, 3);
        assert_eq!(r.counts.unknown, 4);
        let get = |c: &'static str| {
            let store = t.store.clone();
            async move { store.get_cve(&id(c)).await.unwrap().unwrap() }
        };
        let r1 = get("CVE-1999-0001").await;
        assert_eq!(r1.epss_score, Some(fields[1].parse().unwrap()));
        assert_eq!(r1.epss_percentile, Some(fields[2].parse().unwrap()));
        assert_eq!(r1.epss_date.unwrap().to_string(), "2025-02-20");
        let tiny = get("CVE-2024-2652").await;
        assert_eq!(tiny.epss_score, Some(1.2e-05));
        assert_eq!(tiny.epss_percentile, Some(0.034));
        assert_eq!(get("CVE-2014-0160").await.epss_score, Some(0.97));

        // Over HTTP, the gzip excerpts of older formats parse too.
        let f = data().join("epss/vuls-data-update/epss_scores-2021-04-14.csv.gz");
        let server = FileServer::start(
            vec![ServedFile::new(
                "/epss_scores-2021-04-14.csv.gz",
                std::fs::read(&f).unwrap(),
                "application/gzip",
            )],
            0,
        )
        .await
        .unwrap();
        let mut s = settings(t._dir.path());
        s.epss_url = server.url("/epss_scores-2021-04-14.csv.gz");
        let r = Ingestor::new(t.store.clone(), s)
            .import_epss(None)
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.counts.fetched),
            (RunResult::Success, 2),
            "{r:?}"
        );
        let run = last_run(t.store.as_ref()).await;
        assert_eq!((run.source.as_str(), run.records_fetched), ("epss", 2));
    })
    .await;
}

// ---------------------------------------------------------------- feed download

#[tokio::test]
async fn yearly_feeds_are_downloaded_verified_and_imported() {
    on_both(|t| async move {
        let gz2002 = data().join("nvd/feeds/vuls-data-update/nvdcve-2.0-2002.json.gz");
        let gz_mod = data().join("nvd/feeds/vuls-data-update/nvdcve-2.0-modified.json.gz");
        let n2002 = serde_json::from_slice::<Value>(&gunzip(&gz2002)).unwrap()["vulnerabilities"]
            .as_array()
            .unwrap()
            .len() as u64;
        let server = FileServer::start(
            vec![
                ServedFile::new(
                    "/feeds/nvdcve-2.0-2002.json.gz",
                    std::fs::read(&gz2002).unwrap(),
                    "application/gzip",
                ),
                ServedFile::new(
                    "/feeds/nvdcve-2.0-2002.meta",
                    meta_for(&gunzip(&gz2002)).into_bytes(),
                    "text/plain",
                ),
                ServedFile::new(
                    "/feeds/nvdcve-2.0-modified.json.gz",
                    std::fs::read(&gz_mod).unwrap(),
                    "application/gzip",
                ),
                // A .meta that does not match its feed.
                ServedFile::new(
                    "/feeds/nvdcve-2.0-modified.meta",
                    meta_for(b"something else").into_bytes(),
                    "text/plain",
                ),
            ],
            0,
        )
        .await
        .unwrap();
        let mut s = settings(t._dir.path());
        s.feeds_url = server.url("/feeds");
        let ing = Ingestor::new(t.store.clone(), s);
        let r = ing
            .import_feeds(&FeedName::parse_list("2002").unwrap())
            .await
            .unwrap();
        assert_eq!(r.status, RunResult::Success, "{r:?}");
        assert_eq!(r.counts.inserted, n2002);

        let r = ing
            .import_feeds(&FeedName::parse_list("2002,modified").unwrap())
            .await
            .unwrap();
        assert_eq!(r.status, RunResult::Failed);
        let err = r.error.unwrap();
        assert!(
            err.contains("feed modified") && err.contains("sha256"),
            "{err}"
        );
        assert_eq!(r.counts.unchanged, n2002);
        assert_eq!(count(t.store.as_ref()).await, n2002);
        // Downloads are not left behind.
        let left = std::fs::read_dir(t._dir.path())
            .unwrap()
            .filter(|e| {
                let e = e.as_ref().unwrap();
                e.file_name().to_string_lossy().starts_with("nvdcve")
            })
            .count();
        assert_eq!(left, 0);
        assert_eq!(r.source, Source::NvdFeed);
    })
    .await;
}

// ---------------------------------------------------------------- the task

#[tokio::test]
async fn update_vulnerabilities_runs_every_source_even_when_one_fails() {
    on_both(|t| async move {
        let kev = FileServer::start(
            vec![
                ServedFile::new(
                    "/kev.json",
                    std::fs::read(kev_file()).unwrap(),
                    "application/json",
                ),
                ServedFile::new(
                    "/epss.csv",
                    std::fs::read(data().join("epss/vunnel/example-1.csv")).unwrap(),
                    "text/csv",
                ),
            ],
            0,
        )
        .await
        .unwrap();
        let mut s = settings(t._dir.path());
        // NVD unreachable.
        s.nvd.retry.max_attempts = 1;
        s.kev_url = kev.url("/kev.json");
        s.epss_url = kev.url("/epss.csv");
        let ing = Ingestor::new(t.store.clone(), s);
        ing.import_path(&data().join("nvd/cve")).await.unwrap();
        let summary = update_vulnerabilities(&ing).await;
        assert_eq!(summary["status"], "partial", "{summary}");
        assert_eq!(summary["nvd"]["status"], "failed");
        assert!(summary["nvd"]["error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:9"));
        assert_eq!(summary["kev"]["status"], "success", "{summary}");
        assert_eq!(summary["epss"]["status"], "success", "{summary}");
        let runs = t.store.ingestion_runs(10).await.unwrap();
        let by_source: HashMap<&str, RunStatus> =
            runs.iter().map(|r| (r.source.as_str(), r.status)).collect();
        assert_eq!(by_source["nvd"], RunStatus::Failed);
        assert_eq!(by_source["kev"], RunStatus::Success);
        assert_eq!(by_source["epss"], RunStatus::Success);
        let _: Option<IngestReport> = None;
    })
    .await;
}
