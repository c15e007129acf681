//! A local NVD CVE API 2.0 with the real semantics that matter to a client:
//! paging (`startIndex`, `resultsPerPage` ≤ 2000, `totalResults`),
//! `lastModStartDate`/`lastModEndDate` filtering with NVD's validation (both
//! or neither, at most 120 days, else 400 with a `message` header), `cveId`
//! lookup, 403 throttling past N requests in a rolling window, and scripted
//! statuses (e.g. a 503 on the third request).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::oneshot;
use url::Url;

use super::FixtureRecord;
use crate::nvd::map::parse_nvd_timestamp;

/// NVD's path; the server also answers on `/` for convenience.
pub const NVD_PATH: &str = "/rest/json/cves/2.0";

/// 403 after `max_requests` accepted requests within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub max_requests: usize,
    pub window: Duration,
}

/// What the server serves and how it misbehaves.
#[derive(Debug, Clone, Default)]
pub struct NvdServerConfig {
    pub records: Vec<FixtureRecord>,
    pub throttle: Option<Throttle>,
    /// Status to answer instead of data, by request number (1-based).
    pub scripted: HashMap<usize, u16>,
    /// Delay before answering, by request number (1-based), to make a
    /// client time out.
    pub delays: HashMap<usize, Duration>,
    /// When set, requests must carry this `apiKey` header (else 404, as NVD
    /// answers an invalid key).
    pub required_api_key: Option<String>,
}

/// A request as the server saw it, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// 1-based request number.
    pub number: usize,
    pub query: Vec<(String, String)>,
    /// The `apiKey` header, if sent.
    pub api_key: Option<String>,
    /// The status answered.
    pub status: u16,
}

impl RecordedRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct Inner {
    records: Vec<FixtureRecord>,
    accepted: VecDeque<Instant>,
    log: Vec<RecordedRequest>,
}

#[derive(Debug)]
struct ServerState {
    cfg: NvdServerConfig,
    counter: std::sync::atomic::AtomicUsize,
    inner: Mutex<Inner>,
}

/// The running server; stops when dropped.
#[derive(Debug)]
pub struct NvdTestServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    _shutdown: oneshot::Sender<()>,
}

impl NvdTestServer {
    pub async fn start(cfg: NvdServerConfig) -> std::io::Result<Self> {
        let mut records = cfg.records.clone();
        records.sort_by(|a, b| (a.last_modified, &a.id).cmp(&(b.last_modified, &b.id)));
        let state = Arc::new(ServerState {
            cfg,
            counter: Default::default(),
            inner: Mutex::new(Inner {
                records,
                accepted: VecDeque::new(),
                log: Vec::new(),
            }),
        });
        let app = Router::new()
            .route(NVD_PATH, get(handle))
            .route("/", get(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(NvdTestServer {
            addr,
            state,
            _shutdown: tx,
        })
    }

    /// The CVE API URL to configure a client with.
    pub fn base_url(&self) -> Url {
        Url::parse(&format!("http://{}{}", self.addr, NVD_PATH)).expect("valid test URL")
    }

    /// Every answered request so far, in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let mut log = self.lock().log.clone();
        log.sort_by_key(|r| r.number);
        log
    }

    pub fn request_count(&self) -> usize {
        self.lock().log.len()
    }

    /// Adds or replaces a record (by id), e.g. to simulate NVD modifying a
    /// CVE between two syncs.
    pub fn upsert_record(&self, rec: FixtureRecord) {
        let mut inner = self.lock();
        inner.records.retain(|r| r.id != rec.id);
        inner.records.push(rec);
        inner
            .records
            .sort_by(|a, b| (a.last_modified, &a.id).cmp(&(b.last_modified, &b.id)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let mut resp = (status, message.to_string()).into_response();
    if let Ok(v) = HeaderValue::from_str(message) {
        resp.headers_mut().insert("message", v);
    }
    resp
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let api_key = headers
        .get("apiKey")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let number = state
        .counter
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        + 1;
    if let Some(delay) = state.cfg.delays.get(&number) {
        tokio::time::sleep(*delay).await;
    }
    let mut inner = state.inner.lock().unwrap_or_else(|p| p.into_inner());
    let resp = answer(&state.cfg, &mut inner, number, &query, api_key.as_deref());
    inner.log.push(RecordedRequest {
        number,
        query,
        api_key,
        status: resp.status().as_u16(),
    });
    resp
}

fn answer(
    cfg: &NvdServerConfig,
    inner: &mut Inner,
    number: usize,
    query: &[(String, String)],
    api_key: Option<&str>,
) -> Response {
    if let Some(&status) = cfg.scripted.get(&number) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return error(status, "scripted failure");
    }
    if let Some(required) = &cfg.required_api_key {
        if api_key != Some(required.as_str()) {
            return error(StatusCode::NOT_FOUND, "Invalid apiKey");
        }
    }
    if let Some(t) = cfg.throttle {
        let now = Instant::now();
        while inner
            .accepted
            .front()
            .is_some_and(|s| now.duration_since(*s) >= t.window)
        {
            inner.accepted.pop_front();
        }
        if inner.accepted.len() >= t.max_requests {
            return error(
                StatusCode::FORBIDDEN,
                "Request forbidden by administrative rules.",
            );
        }
        inner.accepted.push_back(now);
    }

    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let number_param = |name: &str, default: u64| -> Result<u64, String> {
        match param(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("Invalid {name} parameter: {v}")),
        }
    };
    let start_index = match number_param("startIndex", 0) {
        Ok(v) => v as usize,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let rpp = match number_param("resultsPerPage", 2000) {
        Ok(v) if (1..=2000).contains(&v) => v as usize,
        Ok(v) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("resultsPerPage must be between 1 and 2000, got {v}"),
            )
        }
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let window = match (param("lastModStartDate"), param("lastModEndDate")) {
        (None, None) => None,
        (Some(s), Some(e)) => {
            let (Some(start), Some(end)) = (parse_nvd_timestamp(s), parse_nvd_timestamp(e)) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Invalid date format for lastModStartDate/lastModEndDate",
                );
            };
            if end < start {
                return error(
                    StatusCode::BAD_REQUEST,
                    "lastModEndDate is before lastModStartDate",
                );
            }
            if end - start > chrono::Duration::days(120) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "The lastModStartDate and lastModEndDate range must not exceed 120 days",
                );
            }
            Some((start, end))
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "Both lastModStartDate and lastModEndDate are required when either is present",
            )
        }
    };
    let cve_id = param("cveId");
    let matching: Vec<&FixtureRecord> = inner
        .records
        .iter()
        .filter(|r| window.is_none_or(|(s, e)| r.last_modified >= s && r.last_modified <= e))
        .filter(|r| cve_id.is_none_or(|id| r.id.eq_ignore_ascii_case(id)))
        .collect();
    let total = matching.len();
    let page: Vec<serde_json::Value> = matching
        .iter()
        .skip(start_index)
        .take(rpp)
        .map(|r| serde_json::json!({ "cve": r.cve }))
        .collect();
    Json(serde_json::json!({
        "resultsPerPage": page.len(),
        "startIndex": start_index,
        "totalResults": total,
        "format": "NVD_CVE",
        "version": "2.0",
        "timestamp": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
        "vulnerabilities": page,
    }))
    .into_response()
}
