//! Downloading with retries, shared by the NVD client and the KEV and EPSS
//! fetchers.
//!
//! Public data services throttle and hiccup (NVD answers 403 or 503 when
//! busy), so every GET retries on throttling (403, 429), server errors (5xx),
//! timeouts and connection failures, waiting an exponentially growing,
//! jittered delay (or the server's `Retry-After`) between attempts. Other
//! 4xx answers are our mistake and fail at once.

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use url::Url;

use crate::error::FeedsError;
use crate::ratelimit::RateLimiter;

/// How often and how patiently to retry a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles with each further attempt.
    pub base_delay: Duration,
    /// Upper bound of a single delay (also caps `Retry-After`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based): the
    /// exponential step, jittered to between half and all of it so that many
    /// clients throttled together do not come back together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        let capped = exp.min(self.max_delay);
        let factor = rand::rng().random_range(0.5..=1.0);
        capped.mul_f64(factor)
    }
}

/// Whether an HTTP status is worth retrying.
pub fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::FORBIDDEN
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// A successful response, read completely.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// How many attempts it took (1 = no retry).
    pub attempts: u32,
}

/// GETs `url` with the given extra headers, waiting for `limiter` before
/// each attempt, retrying per `policy`. The URL in errors never contains
/// secrets: API keys travel in headers.
pub async fn get_with_retry(
    http: &reqwest::Client,
    url: &Url,
    headers: &HeaderMap,
    policy: &RetryPolicy,
    limiter: Option<&RateLimiter>,
) -> Result<Fetched, FeedsError> {
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        if let Some(l) = limiter {
            l.acquire().await;
        }
        let outcome = async {
            let resp = http
                .get(url.clone())
                .headers(headers.clone())
                .send()
                .await?;
            let status = resp.status();
            let resp_headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, resp_headers, body))
        }
        .await;
        let (retry_after, failure) = match outcome {
            Ok((status, headers, body)) if status.is_success() => {
                return Ok(Fetched {
                    status,
                    headers,
                    body,
                    attempts: attempt,
                });
            }
            Ok((status, headers, body)) => {
                let message = error_message(&headers, &body);
                let err = FeedsError::Status {
                    url: url.to_string(),
                    status: status.as_u16(),
                    attempts: attempt,
                    message,
                };
                if !is_retryable_status(status) {
                    return Err(err);
                }
                (retry_after(&headers), err)
            }
            Err(e) => {
                let err = FeedsError::Http {
                    url: url.to_string(),
                    attempts: attempt,
                    message: describe(&e),
                };
                // Builder errors (bad URL, bad header) will not heal.
                if e.is_builder() {
                    return Err(err);
                }
                (None, err)
            }
        };
        if attempt >= max_attempts {
            return Err(failure);
        }
        let delay = retry_after
            .map(|d| d.min(policy.max_delay))
            .unwrap_or_else(|| policy.delay(attempt));
        tracing::warn!(%url, attempt, ?delay, error = %failure, "retrying request");
        tokio::time::sleep(delay).await;
    }
}

/// NVD puts its error explanation in a `message` header; others in the body.
fn error_message(headers: &HeaderMap, body: &[u8]) -> String {
    if let Some(m) = headers.get("message").and_then(|v| v.to_str().ok()) {
        if !m.trim().is_empty() {
            return m.trim().to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    text.chars().take(300).collect()
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs and ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A reqwest error with its cause chain, since the top level alone often
/// says only "error sending request".
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = if e.is_timeout() {
        format!("timed out: {e}")
    } else {
        e.to_string()
    };
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A reqwest client with the crate's defaults: rustls, gzip, a timeout and
/// a user agent naming the product (NVD asks API users to identify).
pub fn build_client(timeout: Duration, user_agent: &str) -> Result<reqwest::Client, FeedsError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(30)))
        .user_agent(user_agent)
        .build()
        .map_err(|e| FeedsError::Config(format!("cannot build HTTP client: {e}")))
}

/// The default user agent.
pub const USER_AGENT: &str = concat!("OpenThreat/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_and_is_capped_with_jitter() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
        };
        for _ in 0..50 {
            let d1 = p.delay(1);
            assert!(d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8));
            let d20 = p.delay(20);
            assert!(d20 >= Duration::from_secs(30) && d20 <= Duration::from_secs(60));
        }
    }

    #[test]
    fn retryable_statuses() {
        for s in [403, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 404] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }
}
