//! The NVD client against the local NVD server serving the real fixtures.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use openthreat_feeds::http::RetryPolicy;
use openthreat_feeds::nvd::client::{ModWindow, NvdClient, NvdConfig, PageRequest};
use openthreat_feeds::ratelimit::RateLimit;
use openthreat_feeds::testing::{load_all_nvd_fixtures, NvdServerConfig, NvdTestServer, Throttle};
use openthreat_feeds::FeedsError;

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }
}

fn client_for(
    server: &NvdTestServer,
    key: Option<&str>,
    rpp: u32,
    retry: RetryPolicy,
) -> NvdClient {
    let mut cfg = NvdConfig::new(key.map(String::from));
    cfg.base_url = server.base_url();
    cfg.results_per_page = rpp;
    cfg.retry = retry;
    cfg.timeout = Duration::from_secs(10);
    // The server's own throttle is what these tests exercise.
    cfg.rate_limit = Some(RateLimit {
        requests: 1000,
        window: Duration::from_secs(1),
    });
    NvdClient::new(cfg).unwrap()
}

async fn server(cfg: NvdServerConfig) -> NvdTestServer {
    NvdTestServer::start(NvdServerConfig {
        records: load_all_nvd_fixtures().unwrap(),
        ..cfg
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn pages_through_everything() {
    let srv = server(NvdServerConfig::default()).await;
    let all = load_all_nvd_fixtures().unwrap();
    let client = client_for(&srv, Some("test-key"), 7, fast_retry(1));
    let mut start = 0;
    let mut ids = Vec::new();
    loop {
        let page = client
            .fetch_page(&PageRequest {
                window: None,
                start_index: start,
                results_per_page: None,
            })
            .await
            .unwrap();
        assert!(page.failed.is_empty(), "{:?}", page.failed);
        assert_eq!(page.total_results, all.len() as u64);
        assert_eq!(page.start_index, start);
        start += page.received();
        ids.extend(page.cves.into_iter().map(|c| c.cve_id.to_string()));
        if start >= page.total_results {
            break;
        }
    }
    let expected: Vec<String> = all.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, expected);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), all.len().div_ceil(7));
    assert!(reqs
        .iter()
        .all(|r| r.api_key.as_deref() == Some("test-key")));
    assert_eq!(reqs[1].param("startIndex"), Some("7"));
    assert_eq!(reqs[1].param("resultsPerPage"), Some("7"));
}

#[tokio::test]
async fn date_window_filters_records() {
    let srv = server(NvdServerConfig::default()).await;
    let all = load_all_nvd_fixtures().unwrap();
    let client = client_for(&srv, None, 2000, fast_retry(1));
    let start = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let end = start + chrono::Duration::days(120);
    let page = client
        .fetch_page(&PageRequest {
            window: Some(ModWindow::new(start, end).unwrap()),
            start_index: 0,
            results_per_page: None,
        })
        .await
        .unwrap();
    let expected = all
        .iter()
        .filter(|r| r.last_modified >= start && r.last_modified <= end)
        .count();
    assert!(expected > 0);
    assert_eq!(page.total_results as usize, expected);
    assert!(page
        .cves
        .iter()
        .all(|c| c.modified_at >= start && c.modified_at <= end));
    let req = &srv.requests()[0];
    assert_eq!(
        req.param("lastModStartDate"),
        Some("2024-01-01T00:00:00.000")
    );
    assert_eq!(req.param("lastModEndDate"), Some("2024-04-30T00:00:00.000"));
    assert_eq!(req.api_key, None);
}

#[tokio::test]
async fn server_rejects_long_or_half_windows_and_client_never_sends_them() {
    let srv = server(NvdServerConfig::default()).await;
    // The server enforces NVD's rules ...
    let http = reqwest::Client::new();
    let url = format!(
        "{}?lastModStartDate=2024-01-01T00:00:00.000&lastModEndDate=2024-06-01T00:00:00.000",
        srv.base_url()
    );
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.headers()["message"]
        .to_str()
        .unwrap()
        .contains("120 days"));
    let url = format!(
        "{}?lastModStartDate=2024-01-01T00:00:00.000",
        srv.base_url()
    );
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // ... and our client cannot even build such a request.
    let start = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let err = ModWindow::new(start, start + chrono::Duration::days(121)).unwrap_err();
    assert!(matches!(err, FeedsError::InvalidWindow { .. }));
    assert_eq!(srv.request_count(), 2);
}

#[tokio::test]
async fn client_error_is_not_retried_and_is_clear() {
    let srv = server(NvdServerConfig {
        required_api_key: Some("right".into()),
        ..Default::default()
    })
    .await;
    let client = client_for(&srv, Some("wrong"), 10, fast_retry(5));
    let err = client
        .fetch_page(&PageRequest {
            window: None,
            start_index: 0,
            results_per_page: None,
        })
        .await
        .unwrap_err();
    match &err {
        FeedsError::Status {
            status,
            attempts,
            message,
            url,
        } => {
            assert_eq!((*status, *attempts), (404, 1));
            assert_eq!(message, "Invalid apiKey");
            assert!(!url.contains("wrong"), "key leaked into {url}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!format!("{err:?}").contains("wrong"));
    assert_eq!(srv.request_count(), 1);
}

#[tokio::test]
async fn throttled_then_backs_off_then_succeeds() {
    let srv = server(NvdServerConfig {
        throttle: Some(Throttle {
            max_requests: 2,
            window: Duration::from_millis(300),
        }),
        ..Default::default()
    })
    .await;
    let client = client_for(&srv, None, 5, fast_retry(20));
    for start in [0, 5, 10, 15] {
        let page = client
            .fetch_page(&PageRequest {
                window: None,
                start_index: start,
                results_per_page: None,
            })
            .await
            .unwrap();
        assert_eq!(page.start_index, start);
        assert_eq!(page.cves.len(), 5);
    }
    let statuses: Vec<u16> = srv.requests().iter().map(|r| r.status).collect();
    assert!(statuses.contains(&403), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 4);
}

#[tokio::test]
async fn retries_a_503_then_gives_up_after_max_attempts() {
    let srv = server(NvdServerConfig {
        scripted: HashMap::from([(1, 503), (3, 503), (4, 502), (5, 500)]),
        ..Default::default()
    })
    .await;
    let client = client_for(&srv, None, 3, fast_retry(3));
    let req = PageRequest {
        window: None,
        start_index: 0,
        results_per_page: None,
    };
    // Request 1 fails, request 2 succeeds.
    let page = client.fetch_page(&req).await.unwrap();
    assert_eq!(page.cves.len(), 3);
    // Requests 3, 4, 5 all fail: three attempts, then a clear error.
    let err = client.fetch_page(&req).await.unwrap_err();
    match &err {
        FeedsError::Status {
            status, attempts, ..
        } => assert_eq!((*status, *attempts), (500, 3)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.is_transient());
    assert_eq!(srv.request_count(), 5);
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = NvdConfig::new(None);
    cfg.base_url = url::Url::parse(&format!("http://{addr}/rest/json/cves/2.0")).unwrap();
    cfg.retry = fast_retry(2);
    let client = NvdClient::new(cfg).unwrap();
    let err = client
        .fetch_page(&PageRequest {
            window: None,
            start_index: 0,
            results_per_page: Some(1),
        })
        .await
        .unwrap_err();
    match err {
        FeedsError::Http { attempts, .. } => assert_eq!(attempts, 2),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn fetch_single_cve() {
    let srv = server(NvdServerConfig::default()).await;
    let client = client_for(&srv, None, 10, fast_retry(1));
    let id = openthreat_core::CveId::parse("CVE-2021-44228").unwrap();
    let cve = client.fetch_cve(&id).await.unwrap().unwrap();
    assert!(cve.kev.is_some());
    assert_eq!(cve.cvss.unwrap().score, 10.0);
    let missing = openthreat_core::CveId::parse("CVE-2099-99999").unwrap();
    assert!(client.fetch_cve(&missing).await.unwrap().is_none());
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let srv = server(NvdServerConfig {
        delays: HashMap::from([(1, Duration::from_secs(3))]),
        ..Default::default()
    })
    .await;
    let mut cfg = NvdConfig::new(None);
    cfg.base_url = srv.base_url();
    cfg.results_per_page = 2;
    cfg.retry = fast_retry(3);
    cfg.timeout = Duration::from_millis(300);
    let client = NvdClient::new(cfg).unwrap();
    let page = client
        .fetch_page(&PageRequest {
            window: None,
            start_index: 0,
            results_per_page: None,
        })
        .await
        .unwrap();
    assert_eq!(page.cves.len(), 2);
    // The first request was cut off by the client; the second one answered.
    assert!(srv
        .requests()
        .iter()
        .any(|r| r.number == 2 && r.status == 200));
}

#[tokio::test]
async fn a_bad_record_in_a_served_page_is_reported_not_fatal() {
    let mut records = load_all_nvd_fixtures().unwrap();
    let mut bad = records[0].clone();
    bad.id = "CVE-2099-0001".into();
    bad.cve["id"] = serde_json::json!("CVE-2099-0001");
    bad.cve["metrics"] = serde_json::json!("not an object");
    records.push(bad);
    let srv = NvdTestServer::start(NvdServerConfig {
        records,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = client_for(&srv, None, 2000, fast_retry(1));
    let page = client
        .fetch_page(&PageRequest {
            window: None,
            start_index: 0,
            results_per_page: None,
        })
        .await
        .unwrap();
    assert_eq!(page.failed.len(), 1);
    assert_eq!(page.failed[0].cve_id.as_deref(), Some("CVE-2099-0001"));
    assert_eq!(page.received(), page.total_results);
    assert_eq!(page.cves.len() as u64, page.total_results - 1);
}
