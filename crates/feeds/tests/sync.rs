//! The incremental sync against the local NVD server: catching up window by
//! window, and resuming after a crash without loss or duplicates.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use openthreat_feeds::http::RetryPolicy;
use openthreat_feeds::nvd::client::{NvdClient, NvdConfig};
use openthreat_feeds::ratelimit::RateLimit;
use openthreat_feeds::sync::{run_sync, SinkError, SyncCursor, SyncOptions, SyncPage, SyncSink};
use openthreat_feeds::testing::{load_all_nvd_fixtures, NvdServerConfig, NvdTestServer};
use openthreat_feeds::FeedsError;

/// A store stand-in: records and cursor change together under one lock,
/// which is the atomicity the real store gives with a transaction.
#[derive(Default)]
struct MemorySink {
    state: Mutex<SinkState>,
    /// Fail the commit with this 1-based number (simulated crash).
    fail_on_commit: Mutex<Option<usize>>,
    /// Called after each successful commit with its number (e.g. to let
    /// NVD change records mid-sync).
    after_commit: Mutex<Option<CommitHook>>,
}

type CommitHook = Box<dyn FnMut(usize, &SyncPage) + Send>;

#[derive(Default)]
struct SinkState {
    cursor: Option<SyncCursor>,
    /// id → how many times it was committed.
    commits_per_id: BTreeMap<String, usize>,
    commits: usize,
    attempts: usize,
    windows: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

#[async_trait]
impl SyncSink for MemorySink {
    async fn load_cursor(&self) -> Result<Option<SyncCursor>, SinkError> {
        Ok(self.state.lock().unwrap().cursor.clone())
    }

    async fn commit_page(&self, page: SyncPage) -> Result<(), SinkError> {
        let mut st = self.state.lock().unwrap();
        st.attempts += 1;
        if *self.fail_on_commit.lock().unwrap() == Some(st.attempts) {
            return Err("disk full (simulated crash)".into());
        }
        for c in &page.cves {
            *st.commits_per_id.entry(c.cve_id.to_string()).or_default() += 1;
        }
        assert!(page.failed.is_empty(), "{:?}", page.failed);
        let w = (page.window.start(), page.window.end());
        if st.windows.last() != Some(&w) {
            st.windows.push(w);
        }
        st.cursor = Some(page.next_cursor.clone());
        st.commits += 1;
        let n = st.commits;
        drop(st);
        if let Some(hook) = self.after_commit.lock().unwrap().as_mut() {
            hook(n, &page);
        }
        Ok(())
    }
}

fn client(srv: &NvdTestServer, rpp: u32) -> NvdClient {
    let mut cfg = NvdConfig::new(None);
    cfg.base_url = srv.base_url();
    cfg.results_per_page = rpp;
    cfg.rate_limit = Some(RateLimit {
        requests: 1000,
        window: Duration::from_secs(1),
    });
    cfg.retry = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    };
    NvdClient::new(cfg).unwrap()
}

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
}

fn expected_ids(since: DateTime<Utc>, now: DateTime<Utc>) -> Vec<String> {
    load_all_nvd_fixtures()
        .unwrap()
        .into_iter()
        .filter(|r| r.last_modified >= since && r.last_modified <= now)
        .map(|r| r.id)
        .collect()
}

#[tokio::test]
async fn catches_up_a_long_outage_window_by_window() {
    let srv = NvdTestServer::start(NvdServerConfig {
        records: load_all_nvd_fixtures().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = client(&srv, 4);
    let sink = MemorySink::default();
    let since = at(2024, 1, 1);
    let now = at(2025, 11, 1);
    let report = run_sync(&client, &sink, &SyncOptions::new(since, now))
        .await
        .unwrap();
    assert!(report.caught_up);
    {
        let st = sink.state.lock().unwrap();
        // 670 days → 6 windows of ≤ 120 days.
        assert_eq!(st.windows.len(), 6);
        assert_eq!(report.windows_completed, 6);
        assert_eq!(st.windows[0], (since, since + chrono::Duration::days(120)));
        assert_eq!(st.windows.last().unwrap().1, now);
        for pair in st.windows.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "windows must be contiguous");
        }
        assert!(st
            .windows
            .iter()
            .all(|(s, e)| *e - *s <= chrono::Duration::days(120)));
        // No request the real NVD would reject.
        for r in srv.requests() {
            assert_eq!(r.status, 200, "{r:?}");
        }
        let expected = expected_ids(since, now);
        assert!(expected.len() > 10, "fixture spread: {}", expected.len());
        assert_eq!(st.commits_per_id.keys().cloned().collect::<Vec<_>>(), {
            let mut e = expected.clone();
            e.sort();
            e
        });
        assert!(st.commits_per_id.values().all(|n| *n == 1));
        assert_eq!(report.records as usize, expected.len());
        assert_eq!(report.cursor, SyncCursor::starting_at(now));
    }

    // A second run with nothing new asks nothing.
    let before = srv.request_count();
    let again = run_sync(&client, &sink, &SyncOptions::new(since, now))
        .await
        .unwrap();
    assert_eq!((again.pages, again.caught_up), (0, true));
    assert_eq!(srv.request_count(), before);
}

#[tokio::test]
async fn resumes_after_a_crash_without_loss_or_duplicates() {
    let srv = NvdTestServer::start(NvdServerConfig {
        records: load_all_nvd_fixtures().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = client(&srv, 3);
    let sink = MemorySink::default();
    *sink.fail_on_commit.lock().unwrap() = Some(2);
    let since = at(2023, 6, 1);
    let now = at(2024, 6, 1);
    let opts = SyncOptions::new(since, now);

    let err = run_sync(&client, &sink, &opts).await.unwrap_err();
    assert!(matches!(err, FeedsError::Sink(_)), "{err:?}");
    let (first_cursor, first_commits) = {
        let st = sink.state.lock().unwrap();
        (st.cursor.clone().unwrap(), st.commits)
    };
    assert_eq!(first_commits, 1);
    // Only page 1 is committed: the cursor points at page 2 of window 1.
    assert_eq!(first_cursor.window_start, since);
    assert_eq!(first_cursor.next_start_index, 3);
    let requests_before = srv.request_count();

    *sink.fail_on_commit.lock().unwrap() = None;
    let report = run_sync(&client, &sink, &opts).await.unwrap();
    assert!(report.caught_up);
    // The resumed run started at the failed page, with the same window end.
    let resumed = &srv.requests()[requests_before];
    assert_eq!(resumed.param("startIndex"), Some("3"));
    assert_eq!(
        resumed.param("lastModEndDate").unwrap(),
        openthreat_feeds::nvd::client::format_nvd_datetime(first_cursor.window_end)
    );

    let st = sink.state.lock().unwrap();
    let expected = expected_ids(since, now);
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(
        st.commits_per_id.keys().cloned().collect::<Vec<_>>(),
        sorted
    );
    let dupes: HashMap<_, _> = st.commits_per_id.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dupes.is_empty(), "committed more than once: {dupes:?}");
    assert_eq!(st.cursor, Some(SyncCursor::starting_at(now)));
}

#[tokio::test]
async fn a_fetch_failure_leaves_the_cursor_at_the_last_committed_page() {
    let srv = NvdTestServer::start(NvdServerConfig {
        records: load_all_nvd_fixtures().unwrap(),
        // Page 2 fails on both attempts.
        scripted: HashMap::from([(2, 503), (3, 503)]),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = client(&srv, 3);
    let sink = MemorySink::default();
    let since = at(2023, 6, 1);
    let now = at(2024, 6, 1);
    let err = run_sync(&client, &sink, &SyncOptions::new(since, now))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let cursor = sink.state.lock().unwrap().cursor.clone().unwrap();
    assert_eq!(cursor.next_start_index, 3);
    let report = run_sync(&client, &sink, &SyncOptions::new(since, now))
        .await
        .unwrap();
    assert!(report.caught_up);
    let st = sink.state.lock().unwrap();
    assert_eq!(st.commits_per_id.len(), expected_ids(since, now).len());
    assert!(st.commits_per_id.values().all(|n| *n == 1));
}

#[tokio::test]
async fn max_pages_bounds_a_run_and_the_next_run_continues() {
    let srv = NvdTestServer::start(NvdServerConfig {
        records: load_all_nvd_fixtures().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = client(&srv, 2);
    let sink = MemorySink::default();
    let since = at(2022, 1, 1);
    let now = at(2026, 1, 1);
    let mut opts = SyncOptions::new(since, now);
    opts.max_pages = Some(3);
    let mut runs = 0;
    loop {
        let r = run_sync(&client, &sink, &opts).await.unwrap();
        runs += 1;
        if r.caught_up {
            break;
        }
        assert_eq!(r.pages, 3);
        assert!(runs < 100);
    }
    assert!(runs > 1);
    let st = sink.state.lock().unwrap();
    assert_eq!(st.commits_per_id.len(), expected_ids(since, now).len());
    assert!(st.commits_per_id.values().all(|n| *n == 1));
}

#[tokio::test]
async fn records_modified_during_the_walk_do_not_make_us_skip_others() {
    let srv = Arc::new(
        NvdTestServer::start(NvdServerConfig {
            records: load_all_nvd_fixtures().unwrap(),
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let client = client(&srv, 3);
    let sink = MemorySink::default();
    let since = at(2023, 6, 1);
    let now = at(2024, 6, 1);
    let window_end = since + chrono::Duration::days(120);
    let in_first_window: Vec<_> = load_all_nvd_fixtures()
        .unwrap()
        .into_iter()
        .filter(|r| r.last_modified >= since && r.last_modified <= window_end)
        .collect();
    assert!(
        in_first_window.len() >= 6,
        "need two pages in the first window"
    );
    // After page 1 is committed, NVD modifies two of its records: they leave
    // the window, and everything behind them slides two places forward.
    let moved: Vec<_> = in_first_window[..2].to_vec();
    let srv2 = Arc::clone(&srv);
    *sink.after_commit.lock().unwrap() = Some(Box::new(move |n, _page| {
        if n == 1 {
            for rec in &moved {
                let mut rec = rec.clone();
                rec.last_modified = at(2030, 1, 1);
                rec.cve["lastModified"] = serde_json::json!("2030-01-01T00:00:00.000");
                srv2.upsert_record(rec);
            }
        }
    }));
    run_sync(&client, &sink, &SyncOptions::new(since, now))
        .await
        .unwrap();
    let st = sink.state.lock().unwrap();
    for r in &in_first_window {
        assert!(
            st.commits_per_id.contains_key(&r.id),
            "{} was skipped",
            r.id
        );
    }
    assert_eq!(st.commits_per_id.len(), expected_ids(since, now).len());
}
