//! The HTTP API on port 8001: the original OpenThreat's `/api/v1` routes,
//! `/health`, `/metrics`, the OpenAPI document and Swagger UI.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests drive it
//! with `tower::ServiceExt::oneshot` and no socket; [`serve`] runs it on a
//! listener until a shutdown future resolves.
//!
//! # Layout
//! * [`tasks`]: the [`TaskGateway`] trait: send a task, read its state, list
//!   workers, read the beat schedule.
//! * [`gateway`]: [`gateway::QueueGateway`], the task gateway over the
//!   queue crate (producer, result backend, beat schedule, local workers).
//! * [`error`]: [`ApiError`] (FastAPI's `{"detail", "code"}` shape) and the
//!   extractors that turn bad input into it.
//! * [`params`]: query parameter structs and their validation.
//! * [`models`]: the JSON answers.
//! * `routes/`: the handlers, one file per Swagger tag.
//! * [`rss`]: RSS 2.0 rendering that stays well-formed whatever the CVE text.
//! * [`security`]: API keys for writes, loopback rule, rate limit.
//! * [`metrics`]: Prometheus metrics and `/metrics`.
//!
//! # Request flow
//! request id → trace span → security headers → CORS → body limit →
//! URI length check → 5xx finishing (log + request id) → metrics → write guard
//! → handler → store ([`openthreat_store::Store`]) / task gateway.

pub mod cache;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod models;
pub mod params;
mod routes;
pub mod rss;
pub mod security;
pub mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

pub use error::ApiError;
pub use tasks::{GatewayError, TaskGateway};

use openthreat_store::Store;

use crate::config::Config;

/// Largest request body accepted (no route takes a large one).
pub const BODY_LIMIT: usize = 64 * 1024;
/// Longest query string accepted; longer ones are refused before any parsing.
pub const MAX_QUERY_LEN: usize = 4096;

/// A problem with the API's own settings, named by variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiConfigError {
    #[error("{var}: {problem}")]
    Invalid { var: &'static str, problem: String },
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Settings of the HTTP layer, read from `OPENTHREAT_*` variables.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Base URL used in RSS links: `OPENTHREAT_PUBLIC_URL`, else `http://<bind>`.
    pub public_url: String,
    /// `OPENTHREAT_CORS_ORIGINS`, comma-separated; `*` for any. Default: the
    /// original front end's `http://localhost:3000`.
    pub cors_origins: Vec<String>,
    /// `OPENTHREAT_WRITE_RATE_PER_MINUTE` (default 30) per client address.
    pub write_rate_per_minute: u32,
    /// `OPENTHREAT_WRITE_BURST` (default 10).
    pub write_burst: u32,
    /// `OPENTHREAT_API_CACHE_SECONDS`: how long a read answer is reused
    /// (default 5; `0` turns the cache off). See `api/cache.rs`.
    pub response_cache_ttl: std::time::Duration,
}

impl ApiSettings {
    pub fn from_config(config: &Config) -> Result<Self, ApiConfigError> {
        let get = |k: &str| {
            config
                .env
                .get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let number = |var: &'static str, default: u32| -> Result<u32, ApiConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => {
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or(ApiConfigError::Invalid {
                            var,
                            problem: format!("{v:?} is not a positive whole number"),
                        })
                }
            }
        };
        let public_url = match get("OPENTHREAT_PUBLIC_URL") {
            Some(u) => {
                let parsed = url::Url::parse(&u).map_err(|e| ApiConfigError::Invalid {
                    var: "OPENTHREAT_PUBLIC_URL",
                    problem: format!("{u:?}: {e}"),
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(ApiConfigError::Invalid {
                        var: "OPENTHREAT_PUBLIC_URL",
                        problem: format!("{u:?} is not an http(s) URL"),
                    });
                }
                u.trim_end_matches('/').to_string()
            }
            None => format!("http://{}", config.bind.replace("0.0.0.0", "localhost")),
        };
        let cors_origins: Vec<String> = get("OPENTHREAT_CORS_ORIGINS")
            .unwrap_or_else(|| "http://localhost:3000".into())
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for origin in &cors_origins {
            if origin != "*" && HeaderValue::from_str(origin).is_err() {
                return Err(ApiConfigError::Invalid {
                    var: "OPENTHREAT_CORS_ORIGINS",
                    problem: format!("{origin:?} is not a valid origin"),
                });
            }
        }
        let response_cache_ttl = match get("OPENTHREAT_API_CACHE_SECONDS") {
            None => cache::DEFAULT_TTL,
            Some(v) => v
                .parse::<u16>()
                .map(|s| std::time::Duration::from_secs(s.into()))
                .map_err(|_| ApiConfigError::Invalid {
                    var: "OPENTHREAT_API_CACHE_SECONDS",
                    problem: format!("{v:?} is not a number of seconds (0 to 65535)"),
                })?,
        };
        Ok(ApiSettings {
            public_url,
            cors_origins,
            response_cache_ttl,
            write_rate_per_minute: number("OPENTHREAT_WRITE_RATE_PER_MINUTE", 30)?,
            write_burst: number("OPENTHREAT_WRITE_BURST", 10)?,
        })
    }
}

/// Everything a handler may use. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    /// The CVE data.
    pub store: Arc<dyn Store>,
    /// The background system; `None` when this process has no queue
    /// configured (then task routes answer 503 and no worker is claimed).
    pub tasks: Option<Arc<dyn TaskGateway>>,
    pub config: Arc<Config>,
    pub settings: Arc<ApiSettings>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) limiter: Arc<security::RateLimiter>,
    pub(crate) response_cache: Arc<cache::ResponseCache>,
    /// The last LLM check and when it ran (see `routes::health`).
    pub(crate) llm_health:
        Arc<tokio::sync::Mutex<Option<(std::time::Instant, crate::doctor::Check)>>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("settings", &self.settings)
            .field("tasks", &self.tasks.is_some())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State for `store` and `config`, with no task gateway yet.
    pub fn new(store: Arc<dyn Store>, config: Config) -> Result<Self, ApiConfigError> {
        let settings = ApiSettings::from_config(&config)?;
        Ok(AppState {
            store,
            tasks: None,
            limiter: Arc::new(security::RateLimiter::new(
                settings.write_rate_per_minute,
                settings.write_burst,
            )),
            metrics: Arc::new(metrics::Metrics::new()?),
            response_cache: Arc::default(),
            llm_health: Arc::default(),
            config: Arc::new(config),
            settings: Arc::new(settings),
        })
    }

    /// Plugs in the background system.
    pub fn with_tasks(mut self, tasks: Arc<dyn TaskGateway>) -> Self {
        self.tasks = Some(tasks);
        self
    }

    /// Uses `metrics` instead of a fresh registry: `openthreat run` creates
    /// them first so that its worker's LLM calls are recorded where `/metrics`
    /// reads.
    pub fn with_metrics(mut self, metrics: Arc<metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The Prometheus registry, for other parts of the process (the LLM
    /// client, the worker in `openthreat run`) to record into.
    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.metrics
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OpenThreat API",
        description = "Self-hosted CVE threat intelligence: NVD CVEs ranked by exploitation \
                       (CISA KEV), EPSS and CVSS, explained in plain language by a local LLM. \
                       Routes that start work need an API key (X-API-Key or Bearer).",
        license(name = "AGPL-3.0-or-later", identifier = "AGPL-3.0-or-later")
    ),
    tags(
        (name = "Vulnerabilities", description = "CVE lists and details"),
        (name = "Search", description = "Full-text search and suggestions"),
        (name = "Statistics", description = "Dashboard figures"),
        (name = "Feeds", description = "RSS 2.0 feeds"),
        (name = "Tasks", description = "Background tasks, workers and schedule"),
        (name = "LLM Processing", description = "Plain-language enrichment by the LLM"),
        (name = "Health", description = "Service health"),
    ),
    modifiers(&SecuritySchemes),
    components(schemas(error::ErrorBody))
)]
struct ApiDoc;

/// Declares the two ways of presenting the API key.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and their OpenAPI document, before state and layers.
fn routes() -> (Router<AppState>, OpenApiDoc) {
    let v1 = OpenApiRouter::new()
        .merge(routes::vulnerabilities::router())
        .merge(routes::search::router())
        .merge(routes::stats::router())
        .merge(routes::feeds::router())
        .merge(routes::tasks::router())
        .merge(routes::llm::router());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1)
        .merge(routes::health::router())
        .split_for_parts()
}

/// The OpenAPI document, generated from the handlers' annotations.
pub fn openapi() -> OpenApiDoc {
    routes().1
}

/// The whole application: every route, the docs, and the middleware stack.
pub fn app(state: AppState) -> Router {
    let (router, api) = routes();
    let cors = cors_layer(&state.settings);
    let router = router
        .route("/metrics", get(metrics::metrics_handler))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Innermost first: cached read answers skip only the handler;
        // the write guard sees the matched route; metrics count its
        // 401/429s and cache hits; 5xx finishing sees everything below it.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cache::serve_cached,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security::guard_writes,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::record,
        ))
        .layer(middleware::from_fn(error::finish_server_errors))
        .layer(middleware::from_fn(limit_input));
    let x_request_id = HeaderName::from_static("x-request-id");
    router
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(
                    x_request_id.clone(),
                    MakeRequestUuid,
                ))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|req: &Request| {
                        let id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                    }),
                )
                .layer(PropagateRequestIdLayer::new(x_request_id))
                .layer(security_header(
                    header::X_CONTENT_TYPE_OPTIONS,
                    "nosniff",
                ))
                .layer(security_header(header::X_FRAME_OPTIONS, "DENY"))
                .layer(security_header(header::REFERRER_POLICY, "no-referrer"))
                .layer(security_header(
                    header::CONTENT_SECURITY_POLICY,
                    // Swagger UI needs its own scripts, styles and data: images; nothing else loads.
                    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                     script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                ))
                .layer(cors)
                .layer(DefaultBodyLimit::max(BODY_LIMIT)),
        )
        .with_state(state)
}

fn security_header(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}

fn cors_layer(settings: &ApiSettings) -> CorsLayer {
    let origins = if settings.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            settings
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
        ])
}

/// Refuses absurdly long query strings before any extractor parses them,
/// and bodies announced over [`BODY_LIMIT`] before any handler runs: no
/// route takes more (parameters are in the query), and a handler that does
/// not read its body would otherwise accept any size without a word.
async fn limit_input(request: Request, next: Next) -> Response {
    if request.uri().query().map_or(0, str::len) > MAX_QUERY_LEN {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("query string: at most {MAX_QUERY_LEN} bytes"),
        )
        .into_response();
    }
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = announced.filter(|&n| n > BODY_LIMIT as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body: at most {BODY_LIMIT} bytes, got {length}"),
        )
        .into_response();
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("Not Found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method Not Allowed",
    )
}

/// The state `openthreat serve` and `openthreat run` start the API with:
/// the configured store (migrated), and a [`gateway::QueueGateway`] over the
/// configured broker and result backend reporting `schedule` (the entries
/// beat runs) and, when the worker runs in this process, its state.
pub async fn state_from_config(
    config: &Config,
    fanout: Arc<dyn openthreat_queue::control::Fanout>,
    schedule: Vec<openthreat_queue::beat::Entry>,
    local_worker: Option<Arc<openthreat_queue::WorkerState>>,
) -> anyhow::Result<AppState> {
    let store = crate::runtime::open_store(config).await?;
    let broker = crate::runtime::open_broker(config).await?;
    let backend = crate::runtime::open_backend(config).await?;
    state_with(
        config,
        store,
        broker,
        backend,
        Some(fanout),
        schedule,
        local_worker,
    )
}

/// The API's state over handles the caller already opened (as `openthreat
/// run` does, so the worker, the beat and the API share one connection each).
pub fn state_with(
    config: &Config,
    store: Arc<dyn openthreat_store::Store>,
    broker: Arc<dyn openthreat_queue::Broker>,
    backend: Arc<dyn openthreat_queue::ResultBackend>,
    fanout: Option<Arc<dyn openthreat_queue::control::Fanout>>,
    schedule: Vec<openthreat_queue::beat::Entry>,
    local_worker: Option<Arc<openthreat_queue::WorkerState>>,
) -> anyhow::Result<AppState> {
    let mut gateway = gateway::QueueGateway::new(broker, backend, schedule);
    if let Some(fanout) = fanout {
        gateway = gateway.with_fanout(fanout);
    }
    if let Some(worker) = local_worker {
        gateway = gateway.with_local_worker(worker);
    }
    Ok(AppState::new(store, config.clone())?.with_tasks(Arc::new(gateway)))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if state.config.api_key.is_none() {
        tracing::warn!(
            "OPENTHREAT_API_KEY is not set: routes that start work accept requests from \
             loopback clients only"
        );
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, docs = %format!("{}/docs", state.settings.public_url), "HTTP API listening");
    }
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
