//! Who may start work or change data, and how often.
//!
//! The rule is by HTTP method, applied to the whole router, so a write route
//! added later cannot forget it: every method other than GET, HEAD and
//! OPTIONS needs `X-API-Key: <key>` or `Authorization: Bearer <key>` equal to
//! `OPENTHREAT_API_KEY`. With no key configured, writes are accepted from
//! loopback clients only (a fresh install on a laptop works; one exposed on a
//! network does not accept anonymous writes). Behind a reverse proxy on the
//! same host every client looks like loopback: configure a key there.
//!
//! Writes are also rate-limited per client address (a token bucket), since
//! each one enqueues work for the LLM.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// Whether `method` only reads.
pub fn is_read_only(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The key a request presents, from `X-API-Key` or `Authorization: Bearer`.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("x-api-key") {
        return Some(v.as_bytes());
    }
    let auth = headers.get(axum::http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = auth.split_at(auth.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

/// Compares in constant time (for equal lengths; the length of the key is
/// not treated as a secret).
fn key_matches(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len() && bool::from(presented.ct_eq(expected))
}

/// The client's address as the server saw it; `None` when unknown (a test
/// that supplied no `ConnectInfo`), which counts as not loopback.
fn client_ip(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// Middleware: authentication and rate limit for every write.
pub async fn guard_writes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if is_read_only(request.method()) {
        return next.run(request).await;
    }
    let ip = client_ip(&request);
    let allowed = match state.config.api_key.as_ref() {
        Some(key) => presented_key(request.headers())
            .is_some_and(|p| key_matches(p, key.expose().as_bytes())),
        None => ip.is_some_and(|ip| ip.is_loopback()),
    };
    if !allowed {
        let detail = if state.config.api_key.is_some() {
            "a valid API key is required: send X-API-Key or Authorization: Bearer"
        } else {
            "no API key is configured (OPENTHREAT_API_KEY), so this route is open to \
             loopback clients only"
        };
        return ApiError::unauthorized(detail).into_response();
    }
    if let Err(wait_secs) = state.limiter.check(ip) {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many write requests; retry in {wait_secs} s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(wait_secs));
        return response;
    }
    next.run(request).await
}

/// A token bucket per client address.
///
/// A `std::sync::Mutex` is right here: the critical section is a few
/// arithmetic operations and never awaits.
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens added per second.
    rate: f64,
    /// Bucket size: how many writes may come in a burst.
    burst: f64,
    buckets: Mutex<HashMap<Option<IpAddr>, (f64, Instant)>>,
}

/// Above this many tracked clients, full buckets are forgotten.
const MAX_TRACKED: usize = 10_000;

impl RateLimiter {
    /// `per_minute` writes per minute on average, at most `burst` at once.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `client`, or says how many seconds to wait.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > MAX_TRACKED {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_header_keys_are_read() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer  k1 "));
        assert_eq!(presented_key(&h), Some(&b"k1"[..]));
        h.insert("x-api-key", HeaderValue::from_static("k2"));
        assert_eq!(presented_key(&h), Some(&b"k2"[..]));
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_key(&h), None);
    }

    #[test]
    fn keys_compare_exactly() {
        assert!(key_matches(b"secret", b"secret"));
        assert!(!key_matches(b"secreT", b"secret"));
        assert!(!key_matches(b"secret1", b"secret"));
        assert!(!key_matches(b"", b"secret"));
    }

    #[test]
    fn bucket_allows_a_burst_then_refuses() {
        let limiter = RateLimiter::new(60, 3);
        let ip = Some(IpAddr::from([192, 0, 2, 1]));
        for _ in 0..3 {
            assert!(limiter.check(ip).is_ok());
        }
        assert_eq!(limiter.check(ip), Err(1));
        // Another client has its own bucket.
        assert!(limiter.check(Some(IpAddr::from([192, 0, 2, 2]))).is_ok());
    }
}
