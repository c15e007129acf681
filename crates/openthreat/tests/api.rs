//! The HTTP API driven through `app()` with `oneshot`, no socket.
//!
//! The data are the real NVD records of `../shared/data/nvd/cve/` (22 CVEs,
//! two of them rejected), so the expected values below are facts read in
//! those files: e.g. CVE-2024-3400 is CVSS 10.0, CRITICAL, in KEV with the
//! due date 2024-04-19; five records name `microsoft` in their CPEs; eight
//! carry CISA KEV fields; by NVD's Primary scores eight are CRITICAL and six
//! HIGH (CVE-2023-4966 is 7.5 by NVD, 9.4 by Citrix: the Primary score wins).
//!
//! [`route_contract`] holds every data-dependent route check and runs once per
//! store: SQLite in a temporary file, and PostgreSQL in a throwaway database
//! created from `postgres://postgres@127.0.0.1:5432/postgres` (or
//! `OPENTHREAT_TEST_PG_URL`) and dropped afterwards. Without PostgreSQL the
//! PostgreSQL half is skipped with a message, or fails when `CI` is set.
//!
//! Snapshot: `tests/snapshots/openapi.json`; rewrite it with
//! `UPDATE_SNAPSHOTS=1 cargo test -p openthreat --test api`.

#[path = "support/mod.rs"]
mod support;

mod api_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use api_support::{
    enrichment, fixture_cves, seed, seeded_backends, sqlite, Backend, RecordingGateway,
};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use chrono::{Duration, Utc};
use http_body_util::BodyExt;
use openthreat::api::tasks::{ScheduledEntry, TaskState, TaskStatus, WorkerInfo};
use openthreat::api::{app, AppState};
use openthreat::config::Config;
use openthreat_core::CveId;
use openthreat_store::Store;
use serde_json::{json, Value};
use tower::ServiceExt;

const KEY: &str = "test-key-0123456789";
const LOOPBACK: &str = "127.0.0.1:50000";
const REMOTE: &str = "203.0.113.7:40000";

fn config(extra: &[(&str, &str)]) -> Config {
    let mut env: HashMap<String, String> = [
        ("OPENTHREAT_API_KEY", KEY),
        // A closed port: the LLM check fails fast instead of waiting.
        ("OLLAMA_HOST", "http://127.0.0.1:9"),
        ("OPENTHREAT_PUBLIC_URL", "https://openthreat.example"),
        ("OPENTHREAT_WRITE_BURST", "1000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        if v.is_empty() {
            env.remove(*k);
        } else {
            env.insert(k.to_string(), v.to_string());
        }
    }
    Config::from_map(env).unwrap()
}

/// A SQLite store seeded with the fixtures.
async fn seeded_sqlite() -> Backend {
    let b = sqlite().await;
    seed(b.store.as_ref(), &fixture_cves()).await;
    b
}

fn gateway() -> Arc<RecordingGateway> {
    Arc::new(RecordingGateway {
        schedule: vec![ScheduledEntry {
            name: "process-new-cves".into(),
            task: "tasks.process_new_cves".into(),
            schedule: "*/5 * * * *".into(),
            description: "Enrich CVEs added in the last hour".into(),
        }],
        ..Default::default()
    })
}

struct TestApp {
    router: Router,
    gateway: Arc<RecordingGateway>,
}

fn test_app(store: Arc<dyn Store>, extra_env: &[(&str, &str)]) -> TestApp {
    let gw = gateway();
    let state = AppState::new(store, config(extra_env))
        .unwrap()
        .with_tasks(gw.clone());
    TestApp {
        router: app(state),
        gateway: gw,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
    fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    peer: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    send(router, method, uri, peer, headers, Body::empty()).await
}

/// [`call`] with a request body.
async fn send(
    router: &Router,
    method: Method,
    uri: &str,
    peer: Option<&str>,
    headers: &[(&str, &str)],
    body: Body,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(body).unwrap();
    if let Some(peer) = peer {
        let addr: SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(addr));
    }
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(router: &Router, uri: &str) -> Answer {
    call(router, Method::GET, uri, Some(REMOTE), &[]).await
}

async fn post(router: &Router, uri: &str) -> Answer {
    call(
        router,
        Method::POST,
        uri,
        Some(REMOTE),
        &[("x-api-key", KEY)],
    )
    .await
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["cve_id"].as_str().unwrap().to_string())
        .collect()
}

fn assert_422_naming(a: &Answer, param: &str) {
    assert_eq!(
        a.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let body = a.json();
    assert!(
        body["detail"].as_str().unwrap().contains(param),
        "detail should name {param}: {body}"
    );
    assert_eq!(body["code"], "invalid_parameter");
}

/// Every data-dependent route, against one store seeded with the fixtures.
async fn route_contract(backend: &Backend) {
    eprintln!("route contract on {}", backend.name);
    let t = test_app(backend.store.clone(), &[]);
    let r = &t.router;
    let fixtures = fixture_cves();
    let count = |f: &dyn Fn(&openthreat_core::Cve) -> bool| {
        fixtures
            .iter()
            .filter(|c| !c.vuln_status.is_rejected() && f(c))
            .count()
    };
    let critical = count(&|c| c.severity == openthreat_core::Severity::Critical);
    let high = count(&|c| c.severity == openthreat_core::Severity::High);

    // --- list ---
    let a = get(r, "/api/v1/vulnerabilities").await;
    assert_eq!(a.status, StatusCode::OK);
    let page = a.json();
    assert_eq!(page["total"], 20, "22 records, 2 rejected");
    assert_eq!(page["page"], 1);
    assert_eq!(page["page_size"], 20);
    assert_eq!(page["total_pages"], 1);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    for key in [
        "cve_id",
        "title",
        "description",
        "cvss_score",
        "cvss_vector",
        "severity",
        "exploited_in_the_wild",
        "priority_score",
        "published_at",
        "modified_at",
        "sources",
        "simple_title",
        "simple_description",
        "llm_processed",
    ] {
        assert!(items[0].get(key).is_some(), "ListItem lacks {key}");
    }
    let scores: Vec<f64> = items
        .iter()
        .map(|i| i["priority_score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(
        !ids(&page).contains(&"CVE-2023-5129".to_string()),
        "rejected CVE listed"
    );

    let page = get(r, "/api/v1/vulnerabilities?severity=critical")
        .await
        .json();
    assert_eq!(page["total"], critical);
    assert!(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["severity"] == "CRITICAL"));
    let page = get(r, "/api/v1/vulnerabilities?exploited=true")
        .await
        .json();
    assert_eq!(page["total"], 8);
    let page = get(r, "/api/v1/vulnerabilities?exploited=false&severity=HIGH")
        .await
        .json();
    // HIGH and not in KEV: CVE-2008-4250, CVE-2022-26582, CVE-2024-6387.
    assert_eq!(
        ids(&page)
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        ["CVE-2008-4250", "CVE-2022-26582", "CVE-2024-6387"]
            .map(String::from)
            .into()
    );
    let page = get(r, "/api/v1/vulnerabilities?page=2&page_size=6")
        .await
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 6);
    assert_eq!(page["total_pages"], 4);
    let page = get(r, "/api/v1/vulnerabilities?page=9&page_size=6")
        .await
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    let page = get(
        r,
        "/api/v1/vulnerabilities?sort_by=cvss_score&sort_order=asc&page_size=100",
    )
    .await
    .json();
    let cvss: Vec<Option<f64>> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["cvss_score"].as_f64())
        .collect();
    assert_eq!(cvss[0], Some(4.8), "lowest score first: CVE-2018-1202");
    assert_eq!(cvss.last().unwrap(), &None, "unscored CVE-2022-49267 last");
    let page = get(r, "/api/v1/vulnerabilities?sort_by=cve_id&sort_order=asc")
        .await
        .json();
    assert_eq!(ids(&page)[0], "CVE-1999-0001");
    let page = get(r, "/api/v1/vulnerabilities?sort_by=published_at")
        .await
        .json();
    assert_eq!(ids(&page)[..2], ["CVE-2026-86345", "CVE-2026-103764"]);

    // --- sort whitelist and bad input ---
    let a = get(r, "/api/v1/vulnerabilities?sort_by=password").await;
    assert_422_naming(&a, "sort_by");
    for allowed in [
        "priority_score",
        "cvss_score",
        "published_at",
        "modified_at",
        "cve_id",
        "epss_score",
    ] {
        assert!(a.detail().contains(allowed), "{}", a.detail());
    }
    assert_422_naming(
        &get(r, "/api/v1/vulnerabilities?sort_order=up").await,
        "sort_order",
    );
    assert_422_naming(
        &get(r, "/api/v1/vulnerabilities?page_size=101").await,
        "page_size",
    );
    assert_422_naming(
        &get(r, "/api/v1/vulnerabilities?page_size=0").await,
        "page_size",
    );
    assert_422_naming(&get(r, "/api/v1/vulnerabilities?page=0").await, "page");
    assert_422_naming(&get(r, "/api/v1/vulnerabilities?page=abc").await, "page");
    assert_422_naming(&get(r, "/api/v1/vulnerabilities?page=-1").await, "page");
    assert_422_naming(
        &get(r, "/api/v1/vulnerabilities?page=99999999999999999999").await,
        "page",
    );
    assert_422_naming(
        &get(r, "/api/v1/vulnerabilities?severity=urgent").await,
        "severity",
    );
    assert_422_naming(
        &get(r, "/api/v1/vulnerabilities?exploited=maybe").await,
        "exploited",
    );

    // --- exploited, recent, vendor ---
    let page = get(r, "/api/v1/vulnerabilities/exploited").await.json();
    assert_eq!(page["total"], 8);
    assert!(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["exploited_in_the_wild"] == true));
    assert!(ids(&page).contains(&"CVE-2024-3400".to_string()));

    let now = Utc::now();
    let expected_recent: Vec<String> = {
        let mut v: Vec<_> = fixture_cves()
            .into_iter()
            .filter(|c| !c.vuln_status.is_rejected() && now - c.published_at < Duration::days(365))
            .collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.published_at));
        v.into_iter().map(|c| c.cve_id.to_string()).collect()
    };
    let page = get(r, "/api/v1/vulnerabilities/recent?days=365&page_size=100")
        .await
        .json();
    assert_eq!(ids(&page), expected_recent);
    assert_422_naming(
        &get(r, "/api/v1/vulnerabilities/recent?days=0").await,
        "days",
    );
    assert_422_naming(
        &get(r, "/api/v1/vulnerabilities/recent?days=366").await,
        "days",
    );

    let page = get(r, "/api/v1/vulnerabilities/vendor/microsoft")
        .await
        .json();
    assert_eq!(page["total"], 5);
    let page = get(r, "/api/v1/vulnerabilities/vendor/MICROSOFT")
        .await
        .json();
    assert_eq!(page["total"], 5, "vendor is case-insensitive");
    let page = get(r, "/api/v1/vulnerabilities/vendor/nobody").await.json();
    assert_eq!(page["total"], 0);

    // --- detail ---
    let a = get(r, "/api/v1/vulnerabilities/CVE-2024-3400").await;
    assert_eq!(a.status, StatusCode::OK);
    let d = a.json();
    assert_eq!(d["cve_id"], "CVE-2024-3400");
    assert_eq!(d["cvss_score"], 10.0);
    assert_eq!(
        d["cvss_vector"],
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"
    );
    assert_eq!(d["cvss_version"], "3.1");
    assert_eq!(d["severity"], "CRITICAL");
    assert_eq!(d["exploited_in_the_wild"], true);
    assert_eq!(d["cisa_due_date"], "2024-04-19");
    assert_eq!(d["cisa_date_added"], "2024-04-12");
    assert_eq!(
        d["cisa_vulnerability_name"],
        "Palo Alto Networks PAN-OS Command Injection Vulnerability"
    );
    assert_eq!(d["cwe_ids"], json!(["CWE-77"]));
    assert_eq!(d["vuln_status"], "Awaiting Analysis");
    assert_eq!(d["published_at"], "2024-04-12T08:15:06.230Z");
    assert_eq!(
        d["references"][0]["url"],
        "https://security.paloaltonetworks.com/CVE-2024-3400"
    );
    assert!(
        d["sources"].as_array().unwrap().contains(&json!("nvd")),
        "{d}"
    );
    assert_eq!(d["llm_processed"], true);
    assert_eq!(d["simple_title"], "Palo Alto firewall command injection");
    assert_eq!(d["llm_model"], "llama3.2:3b");
    for key in [
        "id",
        "cisa_due_date",
        "cwe_ids",
        "affected_products",
        "vendors",
        "products",
        "references",
        "source_tags",
        "created_at",
        "updated_at",
        "epss_score",
        "llm_processed_at",
    ] {
        assert!(d.get(key).is_some(), "Detail lacks {key}");
    }
    let d = get(r, "/api/v1/vulnerabilities/cve-2021-26855")
        .await
        .json();
    assert_eq!(d["cve_id"], "CVE-2021-26855", "lower-case ids are accepted");
    assert_eq!(d["vendors"], json!(["microsoft"]));
    let d = get(r, "/api/v1/vulnerabilities/CVE-2023-5129").await;
    assert_eq!(
        d.status,
        StatusCode::OK,
        "a rejected CVE is still found by id"
    );
    assert_eq!(d.json()["vuln_status"], "Rejected");
    let a = get(r, "/api/v1/vulnerabilities/CVE-2099-99999").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["code"], "not_found");
    assert!(a.detail().contains("CVE-2099-99999"));
    assert_422_naming(&get(r, "/api/v1/vulnerabilities/not-a-cve").await, "cve_id");
    assert_422_naming(
        &get(r, "/api/v1/vulnerabilities/CVE-2024-1").await,
        "cve_id",
    );

    // --- search ---
    let page = get(r, "/api/v1/search?q=exchange").await.json();
    assert!(ids(&page).contains(&"CVE-2021-26855".to_string()), "{page}");
    let page = get(r, "/api/v1/search?q=CVE-2024-3400").await.json();
    assert_eq!(ids(&page)[0], "CVE-2024-3400");
    let page = get(r, "/api/v1/search?q=Palo%20Alto%20firewall")
        .await
        .json();
    assert!(
        ids(&page).contains(&"CVE-2024-3400".to_string()),
        "LLM title searched"
    );
    let page = get(
        r,
        "/api/v1/search?severity=critical&exploited=true&vendor=microsoft&sort_by=cve_id&sort_order=asc",
    )
    .await
    .json();
    assert_eq!(
        ids(&page),
        ["CVE-2019-0708", "CVE-2021-26855", "CVE-2023-23397"]
    );
    let page = get(r, "/api/v1/search?cwe=CWE-79&sort_by=cve_id&sort_order=asc")
        .await
        .json();
    assert_eq!(ids(&page), ["CVE-2018-1202", "CVE-2023-7259"]);
    let page = get(r, "/api/v1/search?cwe=79").await.json();
    assert_eq!(page["total"], 2, "a bare CWE number is accepted");
    let page = get(
        r,
        "/api/v1/search?min_cvss=9.9&sort_by=cve_id&sort_order=asc",
    )
    .await
    .json();
    assert_eq!(
        ids(&page),
        ["CVE-2008-4250", "CVE-2024-20253", "CVE-2024-3400"]
    );
    let page = get(r, "/api/v1/search?max_cvss=5&sort_by=cve_id&sort_order=asc")
        .await
        .json();
    assert_eq!(ids(&page), ["CVE-1999-0001", "CVE-2018-1202"]);
    let page = get(r, "/api/v1/search?published_before=1999-12-31")
        .await
        .json();
    assert_eq!(
        ids(&page),
        ["CVE-1999-0001"],
        "published_before is inclusive"
    );
    let page = get(
        r,
        "/api/v1/search?published_after=2026-10-02&published_before=2026-10-02",
    )
    .await
    .json();
    assert_eq!(page["total"], 2);
    let page = get(r, "/api/v1/search?product=exchange_server")
        .await
        .json();
    assert_eq!(ids(&page), ["CVE-2021-26855"]);
    assert_422_naming(&get(r, "/api/v1/search?min_cvss=11").await, "min_cvss");
    assert_422_naming(&get(r, "/api/v1/search?max_cvss=-1").await, "max_cvss");
    assert_422_naming(&get(r, "/api/v1/search?min_cvss=abc").await, "min_cvss");
    assert_422_naming(
        &get(r, "/api/v1/search?min_cvss=9&max_cvss=2").await,
        "min_cvss",
    );
    assert_422_naming(
        &get(r, "/api/v1/search?published_after=2024-13-01").await,
        "published_after",
    );
    assert_422_naming(
        &get(r, "/api/v1/search?published_before=yesterday").await,
        "published_before",
    );
    assert_422_naming(&get(r, "/api/v1/search?cwe=XSS").await, "cwe");
    let long = "a".repeat(201);
    assert_422_naming(&get(r, &format!("/api/v1/search?q={long}")).await, "q");
    assert_422_naming(&get(r, "/api/v1/search?q=a%00b").await, "q");
    assert_422_naming(&get(r, "/api/v1/search?sort_by=title").await, "sort_by");

    // --- relevance ---
    // With q, the default order is relevance, best match first.
    let default = get(r, "/api/v1/search?q=microsoft").await.json();
    let explicit = get(
        r,
        "/api/v1/search?q=microsoft&sort_by=relevance&sort_order=desc",
    )
    .await
    .json();
    assert_eq!(ids(&default), ids(&explicit));
    let mut found = ids(&default);
    found.sort();
    assert_eq!(
        found,
        [
            "CVE-2008-4250",
            "CVE-2017-0144",
            "CVE-2019-0708",
            "CVE-2021-26855",
            "CVE-2023-23397"
        ],
        "{default}"
    );
    // CVE-2019-0708 names Microsoft only as its CPE vendor: the text hits
    // (titles, descriptions) rank above it.
    assert_eq!(ids(&default).last().unwrap(), "CVE-2019-0708", "{default}");
    // asc is the reverse; another sort_by still applies.
    let asc = get(r, "/api/v1/search?q=microsoft&sort_order=asc")
        .await
        .json();
    assert_eq!(ids(&asc)[0], "CVE-2019-0708", "{asc}");
    let by_id = get(
        r,
        "/api/v1/search?q=microsoft&sort_by=cve_id&sort_order=asc",
    )
    .await
    .json();
    assert_eq!(ids(&by_id), found);
    // A CVE id first finds that CVE, then the CVEs that mention it.
    let page = get(r, "/api/v1/search?q=cve-2024-3400").await.json();
    assert_eq!(ids(&page), ["CVE-2024-3400"]);
    // Ranked pages: totals and page slices agree with the whole ranking.
    let p2 = get(r, "/api/v1/search?q=microsoft&page=2&page_size=2")
        .await
        .json();
    assert_eq!(p2["total"], 5);
    assert_eq!(p2["total_pages"], 3);
    assert_eq!(ids(&p2), ids(&default)[2..4]);
    // Words combine with every filter, also when ranked.
    let page = get(
        r,
        "/api/v1/search?q=remote&exploited=true&severity=critical",
    )
    .await
    .json();
    for item in page["items"].as_array().unwrap() {
        assert_eq!(item["exploited_in_the_wild"], true, "{item}");
        assert_eq!(item["severity"], "CRITICAL", "{item}");
    }
    assert!(ids(&page).contains(&"CVE-2019-0708".to_string()), "{page}");
    // Relevance needs something to rank.
    assert_422_naming(&get(r, "/api/v1/search?sort_by=relevance").await, "sort_by");
    assert_422_naming(
        &get(r, "/api/v1/vulnerabilities?sort_by=relevance").await,
        "sort_by",
    );
    // Search syntax of either engine is plain text, never a 500.
    for q in [
        "%22",
        "*",
        "NEAR(",
        "%3A",
        "%27",
        "-",
        "a%22b*",
        "NEAR(remote%20code)",
        "remote:*",
    ] {
        let a = get(r, &format!("/api/v1/search?q={q}")).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "q={q}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }

    // --- SQL injection attempts change nothing ---
    // In `q` the words still count as search words (full-text search finds
    // CVEs mentioning "or" and "1"), but the condition must not open up the
    // whole table, and nothing may be dropped.
    for uri in [
        "/api/v1/search?q=%27%20OR%201%3D1%20--",
        "/api/v1/search?q=%27)%20OR%20(%271%27%3D%271",
        "/api/v1/search?q=x%27%3B%20DROP%20TABLE%20vulnerabilities%3B%20--",
        "/api/v1/search?q=%22%20OR%20%22%22%3D%22",
    ] {
        let a = get(r, uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}");
        assert!(
            a.json()["total"].as_u64().unwrap() < 20,
            "{uri} matched everything"
        );
    }
    for uri in [
        "/api/v1/search?vendor=microsoft%27%20OR%20%271%27%3D%271",
        "/api/v1/vulnerabilities/vendor/microsoft%27%20OR%20%271%27%3D%271",
        "/api/v1/search?product=%25",
        // LIKE wildcards are literal characters, not patterns.
        "/api/v1/search?q=%25",
        "/api/v1/search?q=%25%25%25",
    ] {
        let a = get(r, uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}");
        assert_eq!(a.json()["total"], 0, "{uri} matched something");
    }
    for uri in [
        "/api/v1/search?cwe=CWE-79%27%20OR%20%271%27%3D%271",
        "/api/v1/search?sort_by=cvss_score%3B%20DROP%20TABLE%20cves",
        "/api/v1/vulnerabilities?sort_by=(SELECT%201)",
    ] {
        let a = get(r, uri).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}");
    }
    assert_eq!(get(r, "/api/v1/vulnerabilities").await.json()["total"], 20);

    // --- suggest ---
    let s = get(r, "/api/v1/search/suggest?q=cve-2024&limit=10")
        .await
        .json();
    let got: Vec<&str> = s["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["cve_id"].as_str().unwrap())
        .collect();
    assert_eq!(got.len(), 4, "{s}");
    assert!(got.contains(&"CVE-2024-3400"));
    assert!(!got.contains(&"CVE-2024-2652"), "rejected CVE suggested");
    assert!(s["suggestions"][0]["title"].is_string());
    let s = get(r, "/api/v1/search/suggest?q=cve-2024&limit=1")
        .await
        .json();
    assert_eq!(s["suggestions"].as_array().unwrap().len(), 1);
    let s = get(r, "/api/v1/search/suggest?q=%25%25").await.json();
    assert_eq!(s["suggestions"], json!([]), "a LIKE wildcard matched");
    assert_422_naming(&get(r, "/api/v1/search/suggest?q=c").await, "q");
    assert_422_naming(&get(r, "/api/v1/search/suggest").await, "q");
    assert_422_naming(
        &get(r, "/api/v1/search/suggest?q=cve&limit=51").await,
        "limit",
    );

    // --- stats ---
    let s = get(r, "/api/v1/stats").await.json();
    assert_eq!(s["total_vulnerabilities"], 20);
    assert_eq!(s["exploited_vulnerabilities"], 8);
    assert_eq!(s["critical_vulnerabilities"], critical);
    assert_eq!(s["high_vulnerabilities"], high);
    assert_eq!(
        s["by_severity"]["MEDIUM"],
        count(&|c| c.severity == openthreat_core::Severity::Medium)
    );
    assert_eq!(s["by_severity"]["UNKNOWN"], 1);
    assert!(s.get("recent_updates").is_some());
    assert!(s["last_update"].is_string());

    let v = get(r, "/api/v1/stats/top-vendors?limit=3").await.json();
    assert_eq!(v["vendors"][0], json!({"name": "microsoft", "count": 5}));
    assert_eq!(v["vendors"][1], json!({"name": "siemens", "count": 4}));
    assert_eq!(v["vendors"].as_array().unwrap().len(), 3);
    assert_422_naming(&get(r, "/api/v1/stats/top-vendors?limit=0").await, "limit");

    let dist = get(r, "/api/v1/stats/severity-distribution").await.json();
    assert_eq!(dist["total"], 20);
    assert_eq!(
        dist["distribution"][0],
        json!({"severity": "CRITICAL", "count": critical, "percentage": critical as f64 * 5.0})
    );
    assert_eq!(dist["distribution"].as_array().unwrap().len(), 6);

    let tl = get(r, "/api/v1/stats/timeline?days=365").await.json();
    let days = tl["timeline"].as_array().unwrap();
    assert_eq!(days.len(), 365);
    let sum: u64 = days.iter().map(|d| d["count"].as_u64().unwrap()).sum();
    assert_eq!(sum as usize, expected_recent_days(&expected_recent, 365));
    assert_eq!(
        days.last().unwrap()["date"],
        Utc::now().date_naive().to_string()
    );
    assert_422_naming(&get(r, "/api/v1/stats/timeline?days=1000").await, "days");

    let h = get(r, "/api/v1/stats/ingestion-history").await.json();
    let run = &h["runs"][0];
    for key in [
        "id",
        "source",
        "status",
        "started_at",
        "completed_at",
        "duration_seconds",
        "records_fetched",
        "records_inserted",
        "records_updated",
        "records_failed",
    ] {
        assert!(run.get(key).is_some(), "run lacks {key}");
    }
    assert_eq!(run["records_fetched"], 22);

    // --- llm stats (both routes) ---
    for uri in ["/api/v1/llm/stats", "/api/v1/tasks/llm-stats"] {
        let s = get(r, uri).await.json();
        assert_eq!(s["total"], 20, "{uri}");
        assert_eq!(s["processed"], 1);
        assert_eq!(s["pending"], 19);
        assert_eq!(s["completion_percentage"], 5.0);
        // No LLM attempt has failed in the seed, so nothing is retrying or parked.
        assert_eq!(s["failed"], 0, "{uri}");
        assert_eq!(s["parked"], 0, "{uri}");
        assert!(
            s["high_priority_pending"].as_u64().unwrap() >= 8,
            "exploited ones are high"
        );
    }

    // --- RSS ---
    let a = get(r, "/api/v1/feeds/exploited?limit=100").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/rss+xml"));
    let feed = parse_rss(&a.text());
    assert_eq!(feed.items.len(), 8);
    assert_eq!(
        feed.self_link.as_deref(),
        Some("https://openthreat.example/api/v1/feeds/exploited")
    );
    let item = feed
        .items
        .iter()
        .find(|i| i.title.starts_with("CVE-2024-3400: "))
        .expect("CVE-2024-3400 in the exploited feed");
    assert_eq!(
        item.title,
        "CVE-2024-3400: Palo Alto firewall command injection"
    );
    assert_eq!(
        item.link,
        "https://openthreat.example/vulnerabilities/CVE-2024-3400"
    );
    assert_eq!(item.guid, item.link);
    assert!(item.description.contains("Attackers can run commands"));
    let feed = parse_rss(&get(r, "/api/v1/feeds/critical").await.text());
    assert_eq!(feed.items.len(), critical);
    let feed = parse_rss(&get(r, "/api/v1/feeds/rss?limit=3").await.text());
    assert_eq!(feed.items.len(), 3);
    assert!(feed.items[0].title.starts_with("CVE-2026-"), "newest first");
    let feed = parse_rss(&get(r, "/api/v1/feeds/rss?exploited_only=true").await.text());
    assert_eq!(feed.items.len(), 8);
    assert_422_naming(&get(r, "/api/v1/feeds/rss?limit=101").await, "limit");
    assert_422_naming(
        &get(r, "/api/v1/feeds/rss?exploited_only=perhaps").await,
        "exploited_only",
    );

    // --- LLM: one CVE must exist ---
    let a = post(r, "/api/v1/llm/process/CVE-2099-99999").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = post(r, "/api/v1/llm/process/CVE-2024-6387").await;
    assert_eq!(a.status, StatusCode::OK);
    let body = a.json();
    assert_eq!(body["status"], "queued");
    assert_eq!(body["cve_id"], "CVE-2024-6387");
    let sent = t.gateway.sent.lock().unwrap().clone();
    let (id, task) = sent.last().unwrap();
    assert_eq!(body["task_id"], id.as_str());
    assert_eq!(task.name, "tasks.process_cve_with_llm");
    assert_eq!(task.args, vec![json!("CVE-2024-6387")]);
}

fn expected_recent_days(recent: &[String], days: i64) -> usize {
    let today = Utc::now().date_naive();
    let first = today - Duration::days(days - 1);
    fixture_cves()
        .iter()
        .filter(|c| recent.contains(&c.cve_id.to_string()) || !c.vuln_status.is_rejected())
        .filter(|c| !c.vuln_status.is_rejected() && c.published_at.date_naive() >= first)
        .count()
}

#[derive(Debug, Default)]
struct RssItem {
    title: String,
    link: String,
    guid: String,
    description: String,
}

#[derive(Debug, Default)]
struct Rss {
    self_link: Option<String>,
    items: Vec<RssItem>,
}

/// Parses a feed with a real XML parser; panics on any well-formedness error.
fn parse_rss(xml: &str) -> Rss {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut rss = Rss::default();
    let mut path: Vec<String> = Vec::new();
    let mut item: Option<RssItem> = None;
    let mut saw_rss = false;
    loop {
        match reader
            .read_event()
            .unwrap_or_else(|e| panic!("feed is not XML: {e}\n{xml}"))
        {
            Event::Start(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                if name == "rss" {
                    saw_rss = true;
                    assert_eq!(
                        e.try_get_attribute("version")
                            .unwrap()
                            .unwrap()
                            .unescape_value()
                            .unwrap(),
                        "2.0"
                    );
                }
                if name == "item" {
                    item = Some(RssItem::default());
                }
                path.push(name);
            }
            Event::Empty(e) if e.name().as_ref() == b"atom:link" => {
                let href = e.try_get_attribute("href").unwrap().unwrap();
                rss.self_link = Some(href.unescape_value().unwrap().to_string());
            }
            Event::End(_) => {
                let ended = path.pop();
                if ended.as_deref() == Some("item") {
                    rss.items.push(item.take().unwrap());
                }
            }
            Event::Text(t) => {
                let text = t.unescape().unwrap().to_string();
                if let (Some(it), Some(field)) = (item.as_mut(), path.last()) {
                    match field.as_str() {
                        "title" => it.title.push_str(&text),
                        "link" => it.link.push_str(&text),
                        "guid" => it.guid.push_str(&text),
                        "description" => it.description.push_str(&text),
                        _ => {}
                    }
                }
            }
            Event::CData(c) => {
                if let Some(it) = item.as_mut() {
                    it.description
                        .push_str(std::str::from_utf8(&c.into_inner()).unwrap());
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(saw_rss, "no <rss> element");
    assert!(path.is_empty(), "unclosed elements: {path:?}");
    rss
}

#[tokio::test]
async fn routes_answer_from_the_fixtures_on_both_stores() {
    for backend in seeded_backends().await {
        route_contract(&backend).await;
    }
}

/// Read answers are cached (see `api/cache.rs`): a write through the
/// service's own store shows at once; a write by another process (a second
/// store on the same database) shows in other URLs at once and in an
/// already cached URL after the cache's TTL; errors are never cached.
#[tokio::test]
async fn cached_reads_see_this_process_writes_at_once() {
    let b = seeded_sqlite().await;
    let t = test_app(b.store.clone(), &[]);
    let uri = "/api/v1/vulnerabilities/CVE-2019-0708";
    let title = |a: &Answer| a.json()["simple_title"].as_str().map(str::to_string);
    let first = get(&t.router, uri).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(title(&first), None);
    let again = get(&t.router, uri).await;
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["content-type"], first.headers["content-type"]);
    assert!(
        again.headers.contains_key("x-request-id"),
        "outer layers still run"
    );

    // Another process writes: this URL is served from the cache until the
    // TTL ends, a URL not asked before shows the write.
    let other = openthreat_store::connect(&b.url).await.unwrap();
    let id = CveId::parse("CVE-2019-0708").unwrap();
    let enrich = async |store: &dyn openthreat_store::Store, title: &str| {
        let e = enrichment(title, "Written for this test. Yes.", Utc::now());
        store.save_enrichment(&id, &e).await.unwrap();
    };
    enrich(other.as_ref(), "Other process").await;
    assert_eq!(title(&get(&t.router, uri).await), None);
    let fresh = get(&t.router, &format!("{uri}?v=2")).await;
    assert_eq!(title(&fresh).as_deref(), Some("Other process"));

    // This process writes: every cached answer is stale at once.
    enrich(b.store.as_ref(), "This process").await;
    assert_eq!(
        title(&get(&t.router, uri).await).as_deref(),
        Some("This process")
    );

    // An error answer is not kept: the same URL succeeds once the CVE exists.
    let missing = "/api/v1/vulnerabilities/CVE-2031-0001";
    assert_eq!(get(&t.router, missing).await.status, StatusCode::NOT_FOUND);
    let mut cve = fixture_cves().remove(0);
    cve.cve_id = CveId::parse("CVE-2031-0001").unwrap();
    other.upsert_cves(&[cve], Utc::now()).await.unwrap();
    assert_eq!(get(&t.router, missing).await.status, StatusCode::OK);

    // OPENTHREAT_API_CACHE_SECONDS=0: every answer is read afresh.
    let uncached = test_app(b.store.clone(), &[("OPENTHREAT_API_CACHE_SECONDS", "0")]);
    assert_eq!(
        title(&get(&uncached.router, uri).await).as_deref(),
        Some("This process")
    );
    enrich(other.as_ref(), "Third").await;
    assert_eq!(
        title(&get(&uncached.router, uri).await).as_deref(),
        Some("Third")
    );
}

#[tokio::test]
async fn rss_stays_well_formed_with_hostile_text() {
    let mut cves = fixture_cves();
    let nasty =
        "Bad ]]> <script>alert(1)</script> & \u{1}\u{8}\u{b}\u{1b}[31m \u{85} \"quotes\" ]]]]>";
    let first = cves
        .iter_mut()
        .find(|c| c.cve_id.as_str() == "CVE-2019-0708")
        .unwrap();
    first.description = format!("{nasty} end");
    first.title = format!("Title {nasty}");
    let b = sqlite().await;
    seed(b.store.as_ref(), &cves).await;
    b.store
        .save_enrichment(
            &CveId::parse("CVE-2019-0708").unwrap(),
            &enrichment(
                &format!("LLM {nasty}"),
                &format!("Explained {nasty}"),
                Utc::now(),
            ),
        )
        .await
        .unwrap();
    let t = test_app(b.store.clone(), &[]);
    for uri in ["/api/v1/feeds/rss?limit=100", "/api/v1/feeds/critical"] {
        let xml = get(&t.router, uri).await.text();
        assert!(!xml.contains("<script>"), "raw markup leaked into {uri}");
        assert!(
            !xml.contains('\u{1}') && !xml.contains('\u{1b}'),
            "control char in {uri}"
        );
        parse_rss(&xml);
    }
    let xml = get(&t.router, "/api/v1/feeds/rss?limit=100").await.text();
    let feed = parse_rss(&xml);
    let item = feed
        .items
        .iter()
        .find(|i| i.title.starts_with("CVE-2019-0708"))
        .unwrap();
    assert!(
        item.title
            .starts_with("CVE-2019-0708: LLM Bad ]]> <script>"),
        "{}",
        item.title
    );
    // Inside the description the text is HTML-escaped, so a reader shows it as text.
    assert!(
        item.description.contains("&lt;script&gt;"),
        "{}",
        item.description
    );
}

#[tokio::test]
async fn every_write_operation_in_the_openapi_document_requires_a_key() {
    let b = seeded_sqlite().await;
    let t = test_app(b.store.clone(), &[]);
    let doc = get(&t.router, "/openapi.json").await.json();
    let mut writes = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if method == "get" || method == "parameters" {
                continue;
            }
            writes += 1;
            let uri = path
                .replace("{cve_id}", "CVE-2024-3400")
                .replace("{task_id}", "00000000-0000-4000-8000-000000000001")
                .replace("{vendor}", "microsoft");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for headers in [
                vec![],
                vec![("x-api-key", "wrong")],
                vec![("authorization", "Bearer wrong")],
                vec![("x-api-key", "")],
            ] {
                let a = call(&t.router, m.clone(), &uri, Some(REMOTE), &headers).await;
                assert_eq!(
                    a.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {uri} {headers:?}"
                );
                assert_eq!(a.json()["code"], "unauthorized");
            }
            for headers in [
                vec![("x-api-key", KEY)],
                vec![("authorization", &*format!("Bearer {KEY}"))],
            ] {
                let a = call(&t.router, m.clone(), &uri, Some(REMOTE), &headers).await;
                assert_ne!(
                    a.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {uri} with key"
                );
            }
        }
    }
    assert_eq!(
        writes, 4,
        "process-new-cves, process-llm-batch, llm/process/batch, llm/process/{{cve_id}}"
    );
    assert!(t.gateway.sent.lock().unwrap().len() >= 8);
}

#[tokio::test]
async fn without_a_configured_key_writes_come_from_loopback_only() {
    let b = seeded_sqlite().await;
    let t = test_app(b.store.clone(), &[("OPENTHREAT_API_KEY", "")]);
    let uri = "/api/v1/tasks/process-new-cves";
    let a = call(&t.router, Method::POST, uri, Some(LOOPBACK), &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a = call(&t.router, Method::POST, uri, Some("[::1]:5000"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(&t.router, Method::POST, uri, Some(REMOTE), &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.detail().contains("loopback"));
    // No ConnectInfo at all: unknown origin, refused.
    let a = call(&t.router, Method::POST, uri, None, &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Reads stay open to everyone.
    let a = call(&t.router, Method::GET, "/api/v1/stats", Some(REMOTE), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn writes_are_rate_limited_per_client() {
    let b = seeded_sqlite().await;
    let t = test_app(b.store.clone(), &[("OPENTHREAT_WRITE_BURST", "2")]);
    let uri = "/api/v1/tasks/process-new-cves";
    for _ in 0..2 {
        assert_eq!(post(&t.router, uri).await.status, StatusCode::OK);
    }
    let a = post(&t.router, uri).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.json()["code"], "rate_limited");
    assert!(a.headers.contains_key("retry-after"));
    let other = call(
        &t.router,
        Method::POST,
        uri,
        Some("198.51.100.1:1"),
        &[("x-api-key", KEY)],
    )
    .await;
    assert_eq!(
        other.status,
        StatusCode::OK,
        "another client has its own bucket"
    );
}

#[tokio::test]
async fn llm_batch_route_reaches_the_batch_handler() {
    let b = seeded_sqlite().await;
    let t = test_app(b.store.clone(), &[]);
    let a = post(
        &t.router,
        "/api/v1/llm/process/batch?batch_size=5&priority=medium",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let body = a.json();
    assert_eq!(body["status"], "queued");
    assert_eq!(body["batch_size"], 5);
    assert_eq!(body["priority"], "medium");
    assert!(body.get("cve_id").is_none(), "taken for a CVE id: {body}");
    let sent = t.gateway.sent.lock().unwrap().clone();
    assert_eq!(sent[0].1.name, "tasks.process_llm_queue");
    assert_eq!(
        json!(sent[0].1.kwargs),
        json!({"batch_size": 5, "priority": "medium"})
    );

    let a = post(&t.router, "/api/v1/llm/process/batch").await.json();
    assert_eq!(
        (a["batch_size"].as_u64(), a["priority"].as_str()),
        (Some(50), Some("high"))
    );
    let a = post(&t.router, "/api/v1/llm/process/batch?priority=all").await;
    assert_eq!(a.status, StatusCode::OK);
    for (uri, param) in [
        ("/api/v1/llm/process/batch?priority=urgent", "priority"),
        ("/api/v1/llm/process/batch?batch_size=0", "batch_size"),
        ("/api/v1/llm/process/batch?batch_size=101", "batch_size"),
        ("/api/v1/tasks/process-llm-batch?priority=x", "priority"),
    ] {
        let a = post(&t.router, uri).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(a.detail().starts_with(param), "{}", a.detail());
    }
    let a = post(&t.router, "/api/v1/llm/process/batch?batch_size=ten").await;
    assert_422_naming(&a, "batch_size");
    let a = post(&t.router, "/api/v1/llm/process/not-a-cve").await;
    assert_422_naming(&a, "cve_id");
}

#[tokio::test]
async fn task_routes_report_what_the_gateway_knows() {
    let b = seeded_sqlite().await;
    let gw = Arc::new(RecordingGateway {
        workers: vec![WorkerInfo {
            name: "celery@worker-1".into(),
            active_tasks: 2,
            registered_tasks: vec!["tasks.process_new_cves".into()],
            stats: json!({"pid": 42}),
        }],
        schedule: vec![ScheduledEntry {
            name: "update-stats-cache".into(),
            task: "backend.tasks.update_stats_cache_task".into(),
            schedule: "*/15 * * * *".into(),
            description: "Recompute the stats cache".into(),
        }],
        ..Default::default()
    });
    let state = AppState::new(b.store.clone(), config(&[]))
        .unwrap()
        .with_tasks(gw.clone());
    let r = app(state);

    let a = post(&r, "/api/v1/tasks/process-new-cves").await.json();
    assert_eq!(a["status"], "queued");
    let id = a["task_id"].as_str().unwrap().to_string();
    assert_eq!(gw.sent.lock().unwrap()[0].1.name, "tasks.process_new_cves");
    let a = post(
        &r,
        "/api/v1/tasks/process-llm-batch?batch_size=3&priority=low",
    )
    .await
    .json();
    assert_eq!(a["status"], "queued");
    assert_eq!(
        json!(gw.sent.lock().unwrap()[1].1.kwargs),
        json!({"batch_size": 3, "priority": "low"})
    );

    let s = get(&r, &format!("/api/v1/tasks/{id}")).await.json();
    assert_eq!(
        s,
        json!({"task_id": id, "status": "PENDING", "result": null, "error": null})
    );
    gw.states.lock().unwrap().insert(
        id.clone(),
        TaskStatus {
            state: TaskState::Success,
            result: Some(json!({"processed": 3})),
            error: None,
        },
    );
    let s = get(&r, &format!("/api/v1/tasks/{id}")).await.json();
    assert_eq!(s["status"], "SUCCESS");
    assert_eq!(s["result"]["processed"], 3);
    let s = get(&r, &format!("/api/v1/llm/task/{id}")).await.json();
    assert_eq!(s["status"], "success");
    gw.states.lock().unwrap().insert(
        "t-2".into(),
        TaskStatus {
            state: TaskState::Failure,
            result: None,
            error: Some("ConnectionError: ollama unreachable".into()),
        },
    );
    let s = get(&r, "/api/v1/llm/task/t-2").await.json();
    assert_eq!(s["status"], "failed");
    assert_eq!(s["error"], "ConnectionError: ollama unreachable");
    assert_422_naming(&get(&r, "/api/v1/tasks/a%20b").await, "task_id");

    let w = get(&r, "/api/v1/tasks/workers/status").await.json();
    assert_eq!(w["status"], "healthy");
    assert_eq!(w["total_workers"], 1);
    assert_eq!(w["workers"][0]["name"], "celery@worker-1");
    assert_eq!(w["workers"][0]["active_tasks"], 2);
    let s = get(&r, "/api/v1/tasks/scheduled/list").await.json();
    assert_eq!(s["total"], 1);
    assert_eq!(
        s["scheduled_tasks"][0]["task"],
        "backend.tasks.update_stats_cache_task"
    );
}

#[tokio::test]
async fn without_a_queue_nothing_is_invented() {
    let b = seeded_sqlite().await;
    let state = AppState::new(b.store.clone(), config(&[])).unwrap();
    let r = app(state);
    let w = get(&r, "/api/v1/tasks/workers/status").await.json();
    assert_eq!(
        w,
        json!({"status": "no_workers", "workers": [], "total_workers": 0})
    );
    let s = get(&r, "/api/v1/tasks/scheduled/list").await.json();
    assert_eq!(s, json!({"scheduled_tasks": [], "total": 0}));
    let a = post(&r, "/api/v1/tasks/process-new-cves").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["code"], "unavailable");
    assert!(a.json()["request_id"].is_string());
    let a = get(&r, "/api/v1/tasks/abc").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    // Reads of the data still work.
    assert_eq!(
        get(&r, "/api/v1/tasks/llm-stats").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn server_errors_hide_the_cause_and_carry_the_request_id() {
    // A store whose tables are gone: every query fails with an SQL error
    // naming tables and columns, which must not reach the client.
    let b = seeded_sqlite().await;
    let pool = sqlx::SqlitePool::connect(&b.url).await.unwrap();
    for table in ["vulnerabilities", "stats_cache", "ingestion_runs"] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let t = test_app(b.store.clone(), &[]);
    for uri in [
        "/api/v1/vulnerabilities",
        "/api/v1/vulnerabilities/CVE-2024-3400",
        "/api/v1/stats",
        "/api/v1/search?q=x",
    ] {
        let a = get(&t.router, uri).await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
        let text = a.text();
        assert!(
            !text.contains("hunter2") && !text.contains("postgres"),
            "{text}"
        );
        let body = a.json();
        assert_eq!(body["code"], "internal");
        assert_eq!(body["detail"], "internal server error");
        let id = body["request_id"].as_str().unwrap();
        assert_eq!(a.headers["x-request-id"].to_str().unwrap(), id);
        assert!(!id.is_empty());
    }
    // The database itself still answers (a ping needs no table).
    let h = get(&t.router, "/health").await;
    assert_eq!(h.json()["database"], "connected");
    assert!(!h.text().contains("vulnerabilities"));
}

#[tokio::test]
async fn health_reports_each_dependency() {
    let b = seeded_sqlite().await;
    let t = test_app(b.store.clone(), &[]);
    let a = get(&t.router, "/health").await;
    assert_eq!(a.status, StatusCode::OK);
    let h = a.json();
    assert_eq!(h["database"], "connected");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["broker"], "embedded");
    // Nothing listens on the configured Ollama port, so the LLM check warns.
    assert_eq!(h["status"], "degraded");
    assert!(h["llm"].as_str().unwrap().contains("unreachable"), "{h}");
    assert_eq!(h["workers"], 0);
    assert!(chrono::DateTime::parse_from_rfc3339(h["timestamp"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let b = seeded_sqlite().await;
    let t = test_app(b.store.clone(), &[]);
    get(&t.router, "/api/v1/vulnerabilities/CVE-2024-3400").await;
    get(&t.router, "/api/v1/vulnerabilities/CVE-2021-26855").await;
    get(&t.router, "/api/v1/vulnerabilities/CVE-2099-99999").await;
    let a = get(&t.router, "/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = a.text();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle) && !l.starts_with('#'))
            .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
            .to_string()
    };
    assert!(line(r#"openthreat_http_requests_total{method="GET",route="/api/v1/vulnerabilities/{cve_id}",status="200"}"#)
        .ends_with(" 2"));
    assert!(line(r#"route="/api/v1/vulnerabilities/{cve_id}",status="404""#).ends_with(" 1"));
    assert!(
        !text.contains("CVE-2024-3400"),
        "raw paths must not become labels"
    );
    assert!(line("openthreat_http_request_duration_seconds_bucket").contains("le="));
    assert!(line(r#"openthreat_cves{kind="all"}"#).ends_with(" 20"));
    assert!(line(r#"openthreat_cves{kind="exploited"}"#).ends_with(" 8"));
    assert!(line(r#"openthreat_cves{kind="llm_processed"}"#).ends_with(" 1"));
    assert!(line(r#"openthreat_cves{kind="llm_pending"}"#).ends_with(" 19"));
    assert!(
        line(r#"openthreat_last_successful_ingestion_timestamp_seconds{source="nvd"}"#).len() > 10
    );
    assert!(line(r#"openthreat_queue_length{queue="celery"}"#).ends_with(" 0"));
}

#[tokio::test]
async fn openapi_document_matches_the_snapshot() {
    let b = seeded_sqlite().await;
    let t = test_app(b.store.clone(), &[]);
    let a = get(&t.router, "/openapi.json").await;
    assert_eq!(a.status, StatusCode::OK);
    let doc = a.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tags,
        [
            "Vulnerabilities",
            "Search",
            "Statistics",
            "Feeds",
            "Tasks",
            "LLM Processing",
            "Health"
        ]
    );
    for path in [
        "/api/v1/vulnerabilities",
        "/api/v1/vulnerabilities/{cve_id}",
        "/api/v1/vulnerabilities/exploited",
        "/api/v1/vulnerabilities/recent",
        "/api/v1/vulnerabilities/vendor/{vendor}",
        "/api/v1/search",
        "/api/v1/search/suggest",
        "/api/v1/stats",
        "/api/v1/stats/top-vendors",
        "/api/v1/stats/severity-distribution",
        "/api/v1/stats/timeline",
        "/api/v1/stats/ingestion-history",
        "/api/v1/feeds/rss",
        "/api/v1/feeds/exploited",
        "/api/v1/feeds/critical",
        "/api/v1/tasks/process-new-cves",
        "/api/v1/tasks/process-llm-batch",
        "/api/v1/tasks/llm-stats",
        "/api/v1/tasks/{task_id}",
        "/api/v1/tasks/scheduled/list",
        "/api/v1/tasks/workers/status",
        "/api/v1/llm/stats",
        "/api/v1/llm/process/{cve_id}",
        "/api/v1/llm/process/batch",
        "/api/v1/llm/task/{task_id}",
        "/health",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert_eq!(
        serde_json::to_value(openthreat::api::openapi()).unwrap(),
        doc,
        "served and generated documents differ"
    );

    let snapshot = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots/openapi.json");
    let pretty = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(snapshot).parent().unwrap()).unwrap();
        std::fs::write(snapshot, &pretty).unwrap();
    }
    let stored = std::fs::read_to_string(snapshot)
        .unwrap_or_else(|e| panic!("{snapshot}: {e}; run with UPDATE_SNAPSHOTS=1 to create it"));
    assert!(
        stored == pretty,
        "the OpenAPI document changed; review, then run with UPDATE_SNAPSHOTS=1"
    );
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let b = seeded_sqlite().await;
    let t = test_app(b.store.clone(), &[]);
    let a = get(&t.router, "/docs/").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text().contains("swagger-ui"), "{}", a.text());
    let a = get(&t.router, "/docs/swagger-ui-bundle.js").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.len() > 100_000, "vendored bundle");
    let a = get(&t.router, "/docs/swagger-initializer.js").await;
    assert!(a.text().contains("/openapi.json"));
}

#[tokio::test]
async fn security_headers_cors_request_ids_and_limits() {
    let b = seeded_sqlite().await;
    let t = test_app(b.store.clone(), &[]);
    let a = get(&t.router, "/api/v1/stats").await;
    assert_eq!(a.headers["x-content-type-options"], "nosniff");
    assert_eq!(a.headers["x-frame-options"], "DENY");
    assert!(a.headers.contains_key("content-security-policy"));
    assert!(a.headers.contains_key("x-request-id"));

    let preflight = |origin: &'static str| {
        call(
            &t.router,
            Method::OPTIONS,
            "/api/v1/tasks/process-new-cves",
            Some(REMOTE),
            vec![
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-api-key"),
            ]
            .leak(),
        )
    };
    let a = preflight("http://localhost:3000").await;
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let a = preflight("https://evil.example").await;
    assert!(!a.headers.contains_key("access-control-allow-origin"));
    let t2 = test_app(
        b.store.clone(),
        &[(
            "OPENTHREAT_CORS_ORIGINS",
            "https://a.example, https://b.example",
        )],
    );
    let a = call(
        &t2.router,
        Method::GET,
        "/api/v1/stats",
        Some(REMOTE),
        &[("origin", "https://b.example")],
    )
    .await;
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://b.example"
    );

    let a = get(&t.router, "/no/such/route").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["code"], "not_found");
    let a = get(&t.router, "/api/v1/tasks/process-new-cves").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.json()["code"], "method_not_allowed");
    let a = get(&t.router, &format!("/api/v1/search?q={}", "x".repeat(5000))).await;
    assert_eq!(a.status, StatusCode::URI_TOO_LONG);
    assert_eq!(a.json()["code"], "uri_too_long");
    // A body over the limit is refused before the route starts anything,
    // even where the route reads no body.
    let big = "x".repeat(openthreat::api::BODY_LIMIT + 1);
    let length = big.len().to_string();
    let sent_before = t.gateway.sent.lock().unwrap().len();
    let a = send(
        &t.router,
        Method::POST,
        "/api/v1/tasks/process-new-cves",
        Some(REMOTE),
        &[("x-api-key", KEY), ("content-length", &length)],
        Body::from(big),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json()["code"], "payload_too_large");
    assert!(a.detail().contains("at most 65536 bytes"), "{}", a.text());
    assert_eq!(t.gateway.sent.lock().unwrap().len(), sent_before);
    let a = call(
        &t.router,
        Method::GET,
        "/api/v1/stats",
        Some(REMOTE),
        &[("x-request-id", "trace-me-123")],
    )
    .await;
    assert_eq!(
        a.headers["x-request-id"], "trace-me-123",
        "a caller's id is kept"
    );
}

#[tokio::test]
async fn bad_settings_are_named() {
    let b = seeded_sqlite().await;
    for (var, value) in [
        ("OPENTHREAT_CORS_ORIGINS", "http://ok.example,\u{7f}bad"),
        ("OPENTHREAT_PUBLIC_URL", "ftp://x"),
        ("OPENTHREAT_WRITE_RATE_PER_MINUTE", "-3"),
        ("OPENTHREAT_API_CACHE_SECONDS", "five"),
    ] {
        let err = AppState::new(b.store.clone(), config(&[(var, value)]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(var), "{err}");
    }
}

#[tokio::test]
async fn queue_gateway_publishes_celery_messages_and_reads_results() {
    use openthreat::api::gateway::QueueGateway;
    use openthreat_queue::message::Message;
    use openthreat_queue::{State, TaskMeta};

    let b = seeded_sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let queue_url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let broker = openthreat_queue::connect_broker(&queue_url).await.unwrap();
    let backend = openthreat_queue::connect_backend(&queue_url).await.unwrap();
    let gw = QueueGateway::new(
        broker.clone(),
        backend.clone(),
        openthreat_queue::beat::default_schedule(),
    );
    let state = AppState::new(b.store.clone(), config(&[]))
        .unwrap()
        .with_tasks(Arc::new(gw));
    let r = app(state);

    let a = post(&r, "/api/v1/llm/process/batch?batch_size=7&priority=low").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let id = a.json()["task_id"].as_str().unwrap().to_string();

    // A real Celery protocol v2 message is waiting in the broker.
    let queue = vec!["celery".to_string()];
    assert_eq!(
        broker.queue_lengths(&queue).await.unwrap(),
        vec![("celery".to_string(), 1)]
    );
    let delivery = broker
        .fetch(&queue, 1, std::time::Duration::from_secs(1))
        .await
        .unwrap()
        .pop()
        .expect("a message");
    let message = Message::decode(delivery.raw.as_bytes()).unwrap();
    assert_eq!(message.headers.task, "tasks.process_llm_queue");
    assert_eq!(message.headers.id, id);
    assert_eq!(
        json!(message.kwargs),
        json!({"batch_size": 7, "priority": "low"})
    );

    // Until a worker stores a result, Celery says PENDING.
    let s = get(&r, &format!("/api/v1/tasks/{id}")).await.json();
    assert_eq!(s["status"], "PENDING");
    backend
        .store(&TaskMeta::new(&id, State::Success, json!({"queued": 7})))
        .await
        .unwrap();
    let s = get(&r, &format!("/api/v1/tasks/{id}")).await.json();
    assert_eq!(s["status"], "SUCCESS");
    assert_eq!(s["result"], json!({"queued": 7}));
    let s = get(&r, &format!("/api/v1/llm/task/{id}")).await.json();
    assert_eq!(s["status"], "success");

    // The schedule is beat's, not a fixed list.
    let s = get(&r, "/api/v1/tasks/scheduled/list").await.json();
    assert_eq!(s["total"], 7);
    let high = s["scheduled_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "process-high-priority")
        .unwrap();
    assert_eq!(high["task"], "tasks.process_llm_queue");
    assert_eq!(high["schedule"], "*/10 * * * *");
    assert!(high["description"].as_str().unwrap().contains("high"));
    // No worker runs in this process and none is invented.
    let w = get(&r, "/api/v1/tasks/workers/status").await.json();
    assert_eq!(w["status"], "no_workers");
}

#[tokio::test]
async fn serve_answers_over_tcp_and_sees_the_client_address() {
    // Everything from the configuration, as `openthreat serve` starts it.
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("ot.db").display());
    let queue = format!("sqlite://{}", dir.path().join("queue.db").display());
    let cfg = config(&[
        ("OPENTHREAT_API_KEY", ""),
        ("DATABASE_URL", &db),
        ("CELERY_BROKER_URL", &queue),
    ]);
    let state = openthreat::api::state_from_config(
        &cfg,
        openthreat::runtime::open_fanout(&cfg).await.unwrap(),
        openthreat_queue::beat::default_schedule(),
        None,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(openthreat::api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["database"], "connected");
    // No key configured, and the client is on loopback: the write is accepted,
    // which shows the real client address reaches the guard.
    let sent = client
        .post(format!("http://{addr}/api/v1/tasks/process-new-cves"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let body: Value = sent.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    let list = client
        .get(format!("http://{addr}/api/v1/tasks/scheduled/list"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(list["total"], 7);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
