//! A short-lived cache of whole GET responses for the read routes.
//!
//! Dashboards and scripts ask for the same pages again and again (the
//! default listing, `/stats`, a search for a popular word), and at 64
//! concurrent clients on a small machine recomputing each of them is what
//! makes latency climb: a ranked search over a common word scores every
//! match. A response is kept here as bytes, keyed by path and query string.
//!
//! Freshness is the store's, plus the TTL (`OPENTHREAT_API_CACHE_SECONDS`,
//! default [`DEFAULT_TTL`], `0` for no cache):
//! * every write through this process's store bumps
//!   [`Store::data_generation`](openthreat_store::Store::data_generation)
//!   and makes every cached response stale at once;
//! * writes by another process (a worker importing into the same database)
//!   show after at most the TTL.
//!
//! Concurrent requests for the same missing key wait for the first one to
//! compute it (one computation, not 64, when an entry expires under load).
//! Only `200` answers of known size up to [`MAX_BODY`] are kept; errors are
//! never cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::OnceCell;

use super::AppState;

/// How long a response may be served when nothing was written through this
/// process's store, unless configured otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// Largest body kept (a page of 100 CVEs with their references is well
/// under this; RSS feeds too).
const MAX_BODY: u64 = 1 << 20;

/// Distinct URLs kept; beyond this the cache starts afresh (query strings
/// are user input, so the key space is unbounded).
const MAX_ENTRIES: usize = 2048;

/// Path prefixes whose GET answers depend only on the stored CVE data.
/// Task, LLM-status, health and metrics routes report live state and are
/// never cached.
const CACHED_PREFIXES: [&str; 4] = [
    "/api/v1/vulnerabilities",
    "/api/v1/search",
    "/api/v1/stats",
    "/api/v1/feeds",
];

#[derive(Debug, Clone)]
struct Cached {
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Debug)]
struct Slot {
    at: Instant,
    generation: u64,
    value: Arc<OnceCell<Cached>>,
}

/// The cache; one per application.
#[derive(Debug, Default)]
pub struct ResponseCache {
    slots: Mutex<HashMap<String, Slot>>,
}

impl ResponseCache {
    /// The cell for `key` in `generation`: the current one when still
    /// fresh, else a new empty one that replaces it.
    fn cell(&self, key: &str, generation: u64, ttl: Duration) -> Arc<OnceCell<Cached>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get(key) {
            if s.generation == generation && s.at.elapsed() < ttl {
                return s.value.clone();
            }
        }
        if slots.len() >= MAX_ENTRIES {
            slots.clear();
        }
        let value = Arc::new(OnceCell::new());
        slots.insert(
            key.to_string(),
            Slot {
                at: Instant::now(),
                generation,
                value: value.clone(),
            },
        );
        value
    }
}

fn cacheable(request: &Request) -> bool {
    let path = request.uri().path();
    request.method() == Method::GET && CACHED_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// The middleware: answers from the cache, or runs the handler and keeps
/// its answer (see the module documentation).
pub async fn serve_cached(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let ttl = state.settings.response_cache_ttl;
    if ttl.is_zero() || !cacheable(&request) {
        return next.run(request).await;
    }
    let key = request.uri().to_string();
    let cell = state
        .response_cache
        .cell(&key, state.store.data_generation(), ttl);
    let mut uncached = None;
    let hit = cell
        .get_or_try_init(|| async {
            let response = next.run(request).await;
            match keep(response).await {
                Ok(cached) => Ok(cached),
                Err(response) => {
                    uncached = Some(response);
                    Err(())
                }
            }
        })
        .await;
    match (hit, uncached) {
        (Ok(cached), _) => {
            let mut response = Body::from(cached.body.clone()).into_response();
            *response.headers_mut() = cached.headers.clone();
            response
        }
        (Err(()), Some(response)) => response,
        // Not reachable: the init closure ran and left its response.
        (Err(()), None) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The response as bytes when it may be cached, else the response itself.
async fn keep(response: Response) -> Result<Cached, Response> {
    let small = response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_BODY);
    if response.status() != StatusCode::OK || !small {
        return Err(response);
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, MAX_BODY as usize).await {
        Ok(body) => Ok(Cached {
            headers: parts.headers,
            body,
        }),
        // A body that fails to read is an error for this client only.
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()),
    }
}
