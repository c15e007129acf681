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
//! * every write of CVE data through this process's store bumps
//!   [`Store::data_generation`](openthreat_store::Store::data_generation)
//!   when it is done and makes every cached response stale at once;
//! * bookkeeping (ingestion runs, the stats cache) and writes by another
//!   process (a worker importing into the same database) show after at
//!   most the TTL.
//!
//! Concurrent requests for the same missing key wait for the first one to
//! compute it (one computation, not 64, when an entry expires under load;
//! [`FreshCache`] does that, as it does for the store's listing totals).
//! Only `200` answers of known size up to [`MAX_BODY`] are kept; errors are
//! never cached.

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use openthreat_store::fresh::FreshCache;

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

/// The cache; one per application.
#[derive(Debug)]
pub struct ResponseCache(FreshCache<Cached>);

impl Default for ResponseCache {
    fn default() -> Self {
        ResponseCache(FreshCache::new(MAX_ENTRIES))
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
    let answer = state
        .response_cache
        .0
        .get_or_try_compute(&key, state.store.data_generation(), ttl, || async {
            keep(next.run(request).await).await
        })
        .await;
    match answer {
        Ok(cached) => {
            let mut response = Body::from(cached.body).into_response();
            *response.headers_mut() = cached.headers;
            response
        }
        // Not cacheable (an error, or too large): this client's own answer.
        Err(response) => response,
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
