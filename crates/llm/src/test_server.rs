//! A scriptable LLM server for tests (feature `test-server`).
//!
//! One server on `127.0.0.1:0` speaks both protocols:
//! * Ollama: `GET /api/tags`, `POST /api/chat` (answers a model it does not
//!   list with Ollama's real 404 body, `{"error":"model \"x\" not found, try
//!   pulling it first"}`);
//! * OpenAI-compatible under `/v1`: `GET /v1/models`, `POST
//!   /v1/chat/completions`; optionally it rejects `response_format` of type
//!   `json_schema` exactly as llama-cpp-python 0.3.36 does (HTTP 500 with a
//!   validation error naming `response_format`).
//!
//! Chat answers come from a queue of [`Reply`] values the test pushes; when
//! the queue is empty the server answers [`Reply::Auto`], a valid
//! explanation of whatever CVE the prompt carries, so the application's
//! tests and benchmarks can run many CVEs without scripting each one.
//! `latency` and `slots` simulate a server with P parallel slots and L
//! seconds per answer. Every request is recorded for assertions about its
//! shape.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// One scripted answer to a chat call.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A valid answer for the CVE in the prompt if the request asked for
    /// JSON (Ollama `format`, OpenAI `response_format`); without that, prose
    /// with a preamble, as a real model would write.
    Auto,
    /// The assistant message's content, verbatim, in a normal envelope.
    Content(String),
    /// `Content` of a JSON value.
    Json(Value),
    /// This HTTP status and body instead of an answer.
    Status(u16, String),
    /// Wait, then answer with the inner reply (for timeouts).
    Delay(Duration, Box<Reply>),
    /// HTTP 200 with a body that is not the protocol's JSON.
    InvalidBody,
}

impl Reply {
    /// Content of a JSON object with the three fields.
    pub fn fields(title: &str, description: &str, action: &str) -> Reply {
        Reply::Json(json!({
            "simple_title": title,
            "simple_description": description,
            "recommended_action": action,
        }))
    }

    /// HTTP 500 as Ollama sends it for a crashed runner.
    pub fn server_error() -> Reply {
        Reply::Status(
            500,
            r#"{"error":"llama runner process has terminated: signal: killed"}"#.to_string(),
        )
    }
}

/// A request the server received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The JSON body, or `Value::Null` for none or not JSON.
    pub body: Value,
    /// The `Authorization` header, if sent.
    pub authorization: Option<String>,
}

impl RecordedRequest {
    /// The concatenated content of all messages, for prompt assertions.
    pub fn prompt_text(&self) -> String {
        self.body["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m["content"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct Script {
    replies: VecDeque<Reply>,
    requests: Vec<RecordedRequest>,
    models: Vec<String>,
    reject_json_schema: bool,
    latency: Duration,
}

#[derive(Debug)]
struct Shared {
    script: Mutex<Script>,
    slots: Semaphore,
    chats_answered: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Nanoseconds chat calls held a slot, summed.
    slot_busy_ns: AtomicU64,
}

impl Shared {
    fn script(&self) -> MutexGuard<'_, Script> {
        // A test that panicked while holding the lock has failed anyway;
        // keep serving so its other assertions can report.
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Options fixed at start.
#[derive(Debug, Clone)]
pub struct TestServerOptions {
    /// Models the server lists and accepts (default `llama3.2:3b`).
    pub models: Vec<String>,
    /// Chat calls answered at once; further calls wait (default 64).
    pub slots: usize,
    /// Time per chat answer, spent while holding a slot (default none).
    pub latency: Duration,
    /// Answer `response_format: json_schema` as llama-cpp-python 0.3.36 does
    /// (HTTP 500 with a validation error naming `response_format`).
    pub reject_json_schema: bool,
}

impl Default for TestServerOptions {
    fn default() -> Self {
        TestServerOptions {
            models: vec![crate::config::DEFAULT_MODEL.to_string()],
            slots: 64,
            latency: Duration::ZERO,
            reject_json_schema: false,
        }
    }
}

/// A running test server; stops when dropped.
#[derive(Debug)]
pub struct TestLlmServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for TestLlmServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestLlmServer {
    /// Starts with the default options.
    pub async fn start() -> Self {
        Self::start_with(TestServerOptions::default()).await
    }

    /// Starts on an ephemeral port of 127.0.0.1.
    ///
    /// # Panics
    /// If no local port can be bound: a broken test environment.
    pub async fn start_with(options: TestServerOptions) -> Self {
        let shared = Arc::new(Shared {
            script: Mutex::new(Script {
                replies: VecDeque::new(),
                requests: Vec::new(),
                models: options.models,
                reject_json_schema: options.reject_json_schema,
                latency: options.latency,
            }),
            slots: Semaphore::new(options.slots.max(1)),
            chats_answered: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            slot_busy_ns: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/api/tags", get(ollama_tags))
            .route("/api/chat", post(ollama_chat))
            .route("/v1/models", get(openai_models))
            .route("/v1/chat/completions", post(openai_chat))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestLlmServer { addr, shared, task }
    }

    /// `http://127.0.0.1:<port>`: the `OLLAMA_HOST` to use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>/v1`: the OpenAI-compatible base URL.
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a reply for the next chat call (either protocol).
    pub fn push(&self, reply: Reply) -> &Self {
        self.shared.script().replies.push_back(reply);
        self
    }

    /// Replaces the listed models (e.g. with none, for "model missing").
    pub fn set_models(&self, models: &[&str]) {
        self.shared.script().models = models.iter().map(|m| m.to_string()).collect();
    }

    /// All requests received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.script().requests.clone()
    }

    /// The chat requests received so far (either protocol), in order.
    pub fn chat_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/chat") || r.path.ends_with("/chat/completions"))
            .collect()
    }

    /// Chat calls answered with status 200 so far.
    pub fn chats_answered(&self) -> usize {
        self.shared.chats_answered.load(Ordering::Relaxed)
    }

    /// The most chat calls the server has seen in flight at once (counted
    /// from arrival, before waiting for a slot): what a client-side
    /// concurrency limit must keep low.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::Relaxed)
    }

    /// Time chat calls held a slot, summed over slots: with `slots` slots
    /// over a wall time `T`, `slot_busy_time() / (slots × T)` is how busy the
    /// simulated server was (a benchmark's measure of idle slots).
    pub fn slot_busy_time(&self) -> Duration {
        Duration::from_nanos(self.shared.slot_busy_ns.load(Ordering::Relaxed))
    }

    /// Stops serving; later calls find nobody listening (an LLM that
    /// disappears mid-batch). Connections already open are cut.
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// An address where nothing listens: a port bound and released at once.
///
/// # Panics
/// If no local port can be bound: a broken test environment.
pub fn unreachable_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    format!("http://{addr}")
}

fn record(shared: &Shared, method: &str, path: &str, headers: &HeaderMap, body: &[u8]) -> Value {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    shared.script().requests.push(RecordedRequest {
        method: method.to_string(),
        path: path.to_string(),
        body: body.clone(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    body
}

fn json_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("content-type", "application/json")], body).into_response()
}

async fn ollama_tags(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(&shared, "GET", "/api/tags", &headers, b"");
    let models: Vec<Value> = shared
        .script()
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m, "model": m,
                "modified_at": "2025-01-10T09:00:00.000000000Z",
                "size": 2019393189u64,
                "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B",
                            "quantization_level": "Q4_K_M"}
            })
        })
        .collect();
    json_response(200, json!({ "models": models }).to_string())
}

async fn openai_models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(&shared, "GET", "/v1/models", &headers, b"");
    let data: Vec<Value> = shared
        .script()
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 1736500000, "owned_by": "test"}))
        .collect();
    json_response(200, json!({"object": "list", "data": data}).to_string())
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Ollama,
    OpenAi,
}

async fn ollama_chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = record(&shared, "POST", "/api/chat", &headers, &body);
    let model = req["model"].as_str().unwrap_or_default().to_string();
    if !shared.script().models.contains(&model) {
        return json_response(
            404,
            json!({ "error": format!("model \"{model}\" not found, try pulling it first") })
                .to_string(),
        );
    }
    chat(shared, req, Protocol::Ollama).await
}

async fn openai_chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = record(&shared, "POST", "/v1/chat/completions", &headers, &body);
    let (reject, known) = {
        let s = shared.script();
        let model = req["model"].as_str().unwrap_or_default();
        (s.reject_json_schema, s.models.iter().any(|m| m == model))
    };
    if reject && req["response_format"]["type"] == "json_schema" {
        // llama-cpp-python 0.3.36, as observed: its pydantic validation
        // error for the literal, wrapped in a 500.
        let message = "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', \
            'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", \
            'input': 'json_schema', 'ctx': {'expected': \"'text' or 'json_object'\"}}\n\n  \
            File \"llama_cpp/server/app.py\", line 376, in create_chat_completion\n    \
            POST /v1/chat/completions";
        return json_response(
            500,
            json!({"error": {"message": message, "type": "internal_server_error",
                             "param": null, "code": null}})
            .to_string(),
        );
    }
    if !known {
        let model = req["model"].as_str().unwrap_or_default();
        return json_response(
            404,
            json!({"error": {
                "message": format!("The model `{model}` does not exist or you do not have access to it."),
                "type": "invalid_request_error", "param": null, "code": "model_not_found"
            }})
            .to_string(),
        );
    }
    chat(shared, req, Protocol::OpenAi).await
}

/// Counts a chat call in flight for as long as it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Adds the time a slot was held to [`Shared::slot_busy_ns`] when dropped.
struct SlotBusy<'a>(&'a Shared, std::time::Instant);

impl Drop for SlotBusy<'_> {
    fn drop(&mut self) {
        let ns = u64::try_from(self.1.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.slot_busy_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

async fn chat(shared: Arc<Shared>, req: Value, protocol: Protocol) -> Response {
    let _counted = InFlight::enter(&shared);
    let Ok(_slot) = shared.slots.acquire().await else {
        return json_response(503, r#"{"error":"closed"}"#.to_string());
    };
    let _busy = SlotBusy(&shared, std::time::Instant::now());
    let (reply, latency) = {
        let mut s = shared.script();
        (s.replies.pop_front().unwrap_or(Reply::Auto), s.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut reply = reply;
    loop {
        match reply {
            Reply::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                reply = *inner;
            }
            Reply::Status(code, body) => return json_response(code, body),
            Reply::InvalidBody => {
                return (StatusCode::OK, "<html>upstream proxy error</html>").into_response()
            }
            Reply::Auto => {
                let wants_json = match protocol {
                    Protocol::Ollama => !req["format"].is_null(),
                    Protocol::OpenAi => !req["response_format"].is_null(),
                };
                let content = auto_answer(&req, wants_json);
                return envelope(&shared, &req, protocol, content, latency);
            }
            Reply::Content(c) => return envelope(&shared, &req, protocol, c, latency),
            Reply::Json(v) => return envelope(&shared, &req, protocol, v.to_string(), latency),
        }
    }
}

fn envelope(
    shared: &Shared,
    req: &Value,
    protocol: Protocol,
    content: String,
    latency: Duration,
) -> Response {
    shared.chats_answered.fetch_add(1, Ordering::Relaxed);
    let model = req["model"].as_str().unwrap_or_default();
    let prompt_chars: usize = req["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["content"].as_str())
                .map(str::len)
                .sum()
        })
        .unwrap_or(0);
    // Roughly four characters per token, as for English with common tokenizers.
    let prompt_tokens = (prompt_chars / 4).max(1) as u64;
    let completion_tokens = (content.len() / 4).max(1) as u64;
    let eval_ns = latency.as_nanos().max(1_000_000) as u64;
    let body = match protocol {
        Protocol::Ollama => json!({
            "model": model,
            "created_at": "2025-01-10T09:00:00.000000000Z",
            "message": {"role": "assistant", "content": content},
            "done_reason": "stop",
            "done": true,
            "total_duration": eval_ns + 2_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 1_000_000,
            "eval_count": completion_tokens,
            "eval_duration": eval_ns,
        }),
        Protocol::OpenAi => json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1736500000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }),
    };
    json_response(200, body.to_string())
}

/// A plausible answer built from the facts block of the prompt.
fn auto_answer(req: &Value, wants_json: bool) -> String {
    let text = RecordedRequest {
        method: String::new(),
        path: String::new(),
        body: req.clone(),
        authorization: None,
    }
    .prompt_text();
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|s| s.trim().to_string())
    };
    let product = line("Products: ")
        .or_else(|| line("Vendors: "))
        .and_then(|l| l.split(',').next().map(|s| s.trim().to_string()))
        .or_else(|| line("Description: ").and_then(|d| first_name(&d)))
        .unwrap_or_else(|| "the affected software".to_string());
    let product: String = product
        .split_whitespace()
        .take(4)
        .collect::<Vec<_>>()
        .join(" ");
    let severity = line("Severity: ")
        .and_then(|s| s.split_whitespace().next().map(str::to_lowercase))
        .unwrap_or_else(|| "unknown".to_string());
    let title = format!("Security weakness in {product} needs attention");
    let description = format!(
        "A weakness in {product} could let an attacker harm the systems that run it. \
         The problem is rated {severity} by the people who track such flaws. \
         Systems stay at risk until they are updated."
    );
    let action = format!("Apply the vendor's update for {product} as soon as possible.");
    if wants_json {
        json!({
            "simple_title": title,
            "simple_description": description,
            "recommended_action": action,
        })
        .to_string()
    } else {
        format!("Sure! Here's a brief explanation:\n\n**{title}**\n\n{description}\n\n{action}")
    }
}

/// The first capitalised word that is not a common sentence opener.
fn first_name(description: &str) -> Option<String> {
    const OPENERS: [&str; 10] = [
        "The", "A", "An", "In", "This", "When", "An", "It", "Due", "Multiple",
    ];
    description
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .find(|w| {
            w.len() >= 3 && w.chars().next().is_some_and(char::is_uppercase) && !OPENERS.contains(w)
        })
        .map(str::to_string)
}

/// Fixture loading: just enough of an NVD 2.0 `cve` object to build the
/// prompt (id, English description, CVSS, CWE ids, CPE vendors/products,
/// CISA KEV fields). The real parser lives in the feeds crate; this keeps the
/// LLM tests and the real-model example independent of it.
pub mod fixtures {
    use std::path::{Path, PathBuf};

    use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
    use serde_json::Value;

    use openthreat_core::{Cve, CveId, Cvss, CvssVersion, KevFacts, Severity, VulnStatus};

    /// `../shared/data` of the workspace (fixtures shared by all crates).
    pub fn shared_data_dir() -> PathBuf {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")).to_path_buf()
    }

    /// All `nvd/cve/*.json` records, rejected ones included, sorted by file name.
    pub fn nvd_cves() -> Vec<Cve> {
        let dir = shared_data_dir().join("nvd/cve");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
        paths.sort();
        paths
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .filter_map(|s| serde_json::from_str::<Value>(&s).ok())
            .filter_map(|v| cve_from_nvd(&v))
            .collect()
    }

    /// The fixture with this id.
    pub fn nvd_cve(id: &str) -> Option<Cve> {
        nvd_cves().into_iter().find(|c| c.cve_id.as_str() == id)
    }

    fn time(v: &Value) -> Option<DateTime<Utc>> {
        let s = v.as_str()?;
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
            .map(|t| t.and_utc())
    }

    /// Builds a [`Cve`] from one NVD 2.0 `cve` object; `None` without an id.
    pub fn cve_from_nvd(v: &Value) -> Option<Cve> {
        let id = CveId::parse(v["id"].as_str()?).ok()?;
        let description = v["descriptions"]
            .as_array()?
            .iter()
            .find(|d| d["lang"] == "en")
            .and_then(|d| d["value"].as_str())
            .unwrap_or_default()
            .to_string();
        let published = time(&v["published"]).unwrap_or_default();
        let mut cve = Cve::new(id, description, published);
        cve.modified_at = time(&v["lastModified"]).unwrap_or(published);
        cve.vuln_status = VulnStatus::parse(v["vulnStatus"].as_str().unwrap_or_default());
        for (key, version) in [
            ("cvssMetricV40", CvssVersion::V40),
            ("cvssMetricV31", CvssVersion::V31),
            ("cvssMetricV30", CvssVersion::V30),
            ("cvssMetricV2", CvssVersion::V2),
        ] {
            let Some(metric) = v["metrics"][key].as_array().and_then(|a| a.first()) else {
                continue;
            };
            let data = &metric["cvssData"];
            let Some(score) = data["baseScore"].as_f64() else {
                continue;
            };
            cve.severity = match version {
                CvssVersion::V2 => Severity::from_v2_score(score),
                _ => Severity::from_v3_score(score),
            };
            cve.cvss = Some(Cvss {
                score,
                vector: data["vectorString"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                version,
            });
            break;
        }
        let mut cwes: Vec<String> = v["weaknesses"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|w| w["description"].as_array().cloned().unwrap_or_default())
            .filter_map(|d| d["value"].as_str().map(str::to_string))
            .filter(|c| c.starts_with("CWE-"))
            .collect();
        cwes.dedup();
        cve.cwe_ids = cwes;
        let mut criteria = Vec::new();
        collect_criteria(&v["configurations"], &mut criteria);
        for cpe in criteria {
            let parts: Vec<&str> = cpe.split(':').collect();
            if parts.len() > 4 {
                let (vendor, product) = (parts[3].to_string(), parts[4].to_string());
                if !cve.vendors.contains(&vendor) {
                    cve.vendors.push(vendor.clone());
                }
                if !cve.products.contains(&product) {
                    cve.products.push(product.clone());
                }
                let pair = format!("{vendor}:{product}");
                if !cve.affected_products.contains(&pair) {
                    cve.affected_products.push(pair);
                }
            }
        }
        if let Some(added) = v["cisaExploitAdd"].as_str() {
            let date = |s: &Value| {
                s.as_str()
                    .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            };
            cve.kev = Some(KevFacts {
                date_added: NaiveDate::parse_from_str(added, "%Y-%m-%d").ok(),
                due_date: date(&v["cisaActionDue"]),
                required_action: v["cisaRequiredAction"].as_str().map(str::to_string),
                ransomware_use: None,
                vulnerability_name: v["cisaVulnerabilityName"].as_str().map(str::to_string),
            });
        }
        Some(cve)
    }

    fn collect_criteria(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(c) = map.get("criteria").and_then(Value::as_str) {
                    if map.get("vulnerable").and_then(Value::as_bool) != Some(false) {
                        out.push(c.to_string());
                    }
                }
                for child in map.values() {
                    collect_criteria(child, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| collect_criteria(i, out)),
            _ => {}
        }
    }
}
