//! The NVD CVE API 2.0 client.
//!
//! NVD's rules, encoded here so callers cannot break them: the API key goes
//! in the `apiKey` header (never the URL, never a log line); pages hold at
//! most 2000 records and are walked with `startIndex`; `lastModStartDate`
//! and `lastModEndDate` come together and span at most 120 days; requests
//! stay within the rolling-window quota; throttling (403/429) and server
//! trouble (5xx, timeouts) are retried with jittered backoff.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use openthreat_core::{Cve, CveId};
use reqwest::header::{HeaderMap, HeaderValue};
use url::Url;

use super::parse::parse_page;
use crate::error::{FeedsError, RecordFailure};
use crate::http::{build_client, get_with_retry, RetryPolicy, USER_AGENT};
use crate::ratelimit::{RateLimit, RateLimiter};

/// NVD's production endpoint.
pub const DEFAULT_BASE_URL: &str = "https://services.nvd.nist.gov/rest/json/cves/2.0";
/// The largest `resultsPerPage` NVD accepts.
pub const MAX_RESULTS_PER_PAGE: u32 = 2000;
/// The longest `lastModStartDate`..`lastModEndDate` span NVD accepts.
pub const MAX_WINDOW_DAYS: i64 = 120;

/// An NVD API key. Its `Debug` and `Display` print a placeholder, so a
/// config dump or an error chain cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key; blank input (an empty `NVD_API_KEY=`) means no key.
    pub fn new(key: impl Into<String>) -> Option<Self> {
        let key = key.into().trim().to_string();
        (!key.is_empty()).then_some(ApiKey(key))
    }

    /// The secret itself, for the request header only.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Client settings. Build with [`NvdConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct NvdConfig {
    /// The CVE API endpoint; point it at a mirror or a test server.
    pub base_url: Url,
    pub api_key: Option<ApiKey>,
    /// Records per page, 1..=2000.
    pub results_per_page: u32,
    /// `None` picks NVD's published quota for keyed or anonymous use.
    pub rate_limit: Option<RateLimit>,
    pub retry: RetryPolicy,
    /// Per-request timeout (a 2000-record page can take NVD a while).
    pub timeout: Duration,
    pub user_agent: String,
}

impl NvdConfig {
    /// NVD production defaults, with an optional key (blank = none).
    pub fn new(api_key: Option<String>) -> Self {
        NvdConfig {
            base_url: Url::parse(DEFAULT_BASE_URL).expect("constant URL is valid"),
            api_key: api_key.and_then(ApiKey::new),
            results_per_page: MAX_RESULTS_PER_PAGE,
            rate_limit: None,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(120),
            user_agent: USER_AGENT.to_string(),
        }
    }

    /// The quota in force: the configured one, or NVD's default for
    /// keyed (50/30 s) or anonymous (5/30 s) use.
    pub fn effective_rate_limit(&self) -> RateLimit {
        self.rate_limit.unwrap_or(if self.api_key.is_some() {
            RateLimit::NVD_WITH_KEY
        } else {
            RateLimit::NVD_PUBLIC
        })
    }
}

/// A `lastModStartDate`..`lastModEndDate` window that NVD will accept:
/// start ≤ end and at most [`MAX_WINDOW_DAYS`] long. Both bounds inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModWindow {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl ModWindow {
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<Self, FeedsError> {
        let invalid = |message: &str| FeedsError::InvalidWindow {
            start: format_nvd_datetime(start),
            end: format_nvd_datetime(end),
            message: message.to_string(),
        };
        if end < start {
            return Err(invalid("end is before start"));
        }
        if end - start > chrono::Duration::days(MAX_WINDOW_DAYS) {
            return Err(invalid("NVD accepts at most 120 days per window"));
        }
        Ok(ModWindow { start, end })
    }

    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    pub fn end(&self) -> DateTime<Utc> {
        self.end
    }
}

/// Formats a time as NVD expects in date parameters: UTC, milliseconds, no
/// offset (`2024-01-01T00:00:00.000`).
pub fn format_nvd_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// One page to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub window: Option<ModWindow>,
    pub start_index: u64,
    /// `None` uses the client's configured page size.
    pub results_per_page: Option<u32>,
}

/// One page as NVD returned it, mapped.
#[derive(Debug, Clone)]
pub struct NvdPage {
    pub start_index: u64,
    /// Records in this page, as NVD reports it.
    pub results_per_page: u64,
    /// Records matching the query across all pages.
    pub total_results: u64,
    /// NVD's response timestamp, verbatim.
    pub timestamp: Option<String>,
    pub cves: Vec<Cve>,
    pub failed: Vec<RecordFailure>,
}

impl NvdPage {
    /// Records received in this page, mapped or not; the next page starts
    /// this many records further.
    pub fn received(&self) -> u64 {
        (self.cves.len() + self.failed.len()) as u64
    }
}

/// Where pages come from. [`NvdClient`] is the real one; the trait lets the
/// sync driver be exercised against anything that speaks in pages.
#[async_trait]
pub trait PageSource: Send + Sync {
    async fn fetch_page(&self, req: &PageRequest) -> Result<NvdPage, FeedsError>;
}

/// The NVD CVE API 2.0 client. Cheap to share (`Arc` inside); all clones
/// share one rate limiter so the quota holds across tasks.
#[derive(Debug, Clone)]
pub struct NvdClient {
    http: reqwest::Client,
    cfg: Arc<NvdConfig>,
    limiter: Arc<RateLimiter>,
}

impl NvdClient {
    pub fn new(cfg: NvdConfig) -> Result<Self, FeedsError> {
        if cfg.results_per_page == 0 || cfg.results_per_page > MAX_RESULTS_PER_PAGE {
            return Err(FeedsError::Config(format!(
                "results_per_page must be 1..={MAX_RESULTS_PER_PAGE}, got {}",
                cfg.results_per_page
            )));
        }
        let http = build_client(cfg.timeout, &cfg.user_agent)?;
        let limiter = Arc::new(RateLimiter::new(cfg.effective_rate_limit()));
        Ok(NvdClient {
            http,
            cfg: Arc::new(cfg),
            limiter,
        })
    }

    pub fn config(&self) -> &NvdConfig {
        &self.cfg
    }

    /// The URL of a page request (without the key, which is a header).
    pub fn page_url(&self, req: &PageRequest) -> Result<Url, FeedsError> {
        let rpp = req.results_per_page.unwrap_or(self.cfg.results_per_page);
        if rpp == 0 || rpp > MAX_RESULTS_PER_PAGE {
            return Err(FeedsError::Config(format!(
                "resultsPerPage must be 1..={MAX_RESULTS_PER_PAGE}, got {rpp}"
            )));
        }
        let mut url = self.cfg.base_url.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(w) = &req.window {
                q.append_pair("lastModStartDate", &format_nvd_datetime(w.start));
                q.append_pair("lastModEndDate", &format_nvd_datetime(w.end));
            }
            q.append_pair("resultsPerPage", &rpp.to_string());
            q.append_pair("startIndex", &req.start_index.to_string());
        }
        Ok(url)
    }

    /// Fetches and maps one page.
    pub async fn fetch_page(&self, req: &PageRequest) -> Result<NvdPage, FeedsError> {
        let url = self.page_url(req)?;
        self.get_page(url).await
    }

    /// Fetches one CVE by id; `None` when NVD does not know it.
    pub async fn fetch_cve(&self, id: &CveId) -> Result<Option<Cve>, FeedsError> {
        let mut url = self.cfg.base_url.clone();
        url.query_pairs_mut().append_pair("cveId", id.as_str());
        let page = self.get_page(url).await?;
        Ok(page.cves.into_iter().find(|c| &c.cve_id == id))
    }

    async fn get_page(&self, url: Url) -> Result<NvdPage, FeedsError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.cfg.api_key {
            let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
                FeedsError::Config("the NVD API key is not a valid header value".into())
            })?;
            value.set_sensitive(true);
            headers.insert("apiKey", value);
        }
        let fetched = get_with_retry(
            &self.http,
            &url,
            &headers,
            &self.cfg.retry,
            Some(&self.limiter),
        )
        .await?;
        let origin = url.to_string();
        // A 2000-record page takes tens of milliseconds to map: keep it off
        // the async workers.
        let parsed = tokio::task::spawn_blocking(move || parse_page(&fetched.body, &origin))
            .await
            .map_err(|e| FeedsError::Join(e.to_string()))??;
        let env = parsed.envelope.unwrap_or_default();
        let total_results = env.total_results.ok_or_else(|| FeedsError::Format {
            origin: url.to_string(),
            message: "NVD response without totalResults".into(),
        })?;
        Ok(NvdPage {
            start_index: env.start_index.unwrap_or(0),
            results_per_page: env
                .results_per_page
                .unwrap_or((parsed.cves.len() + parsed.failed.len()) as u64),
            total_results,
            timestamp: env.timestamp,
            cves: parsed.cves,
            failed: parsed.failed,
        })
    }
}

#[async_trait]
impl PageSource for NvdClient {
    async fn fetch_page(&self, req: &PageRequest) -> Result<NvdPage, FeedsError> {
        NvdClient::fetch_page(self, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn key_never_printed() {
        let cfg = NvdConfig::new(Some("secret-key-123".into()));
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("secret-key-123"), "{dbg}");
        assert!(dbg.contains("redacted"));
        let client = NvdClient::new(cfg).unwrap();
        assert!(!format!("{client:?}").contains("secret-key-123"));
        assert_eq!(
            client.config().effective_rate_limit(),
            RateLimit::NVD_WITH_KEY
        );
        assert!(NvdConfig::new(Some("  ".into())).api_key.is_none());
        assert_eq!(
            NvdConfig::new(None).effective_rate_limit(),
            RateLimit::NVD_PUBLIC
        );
    }

    #[test]
    fn window_limits() {
        let t = |d| Utc.with_ymd_and_hms(2024, 1, d, 0, 0, 0).unwrap();
        assert!(ModWindow::new(t(1), t(1)).is_ok());
        assert!(ModWindow::new(t(2), t(1)).is_err());
        let start = t(1);
        assert!(ModWindow::new(start, start + chrono::Duration::days(120)).is_ok());
        let err = ModWindow::new(
            start,
            start + chrono::Duration::days(120) + chrono::Duration::milliseconds(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("120 days"), "{err}");
    }

    #[test]
    fn page_url_format() {
        let mut cfg = NvdConfig::new(Some("k".into()));
        cfg.base_url = Url::parse("http://127.0.0.1:1/rest/json/cves/2.0").unwrap();
        let client = NvdClient::new(cfg).unwrap();
        let w = ModWindow::new(
            Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2024, 4, 29, 12, 30, 5).unwrap(),
        )
        .unwrap();
        let url = client
            .page_url(&PageRequest {
                window: Some(w),
                start_index: 4000,
                results_per_page: None,
            })
            .unwrap();
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                ("lastModStartDate".into(), "2024-01-01T00:00:00.000".into()),
                ("lastModEndDate".into(), "2024-04-29T12:30:05.000".into()),
                ("resultsPerPage".into(), "2000".into()),
                ("startIndex".into(), "4000".into()),
            ]
        );
        assert!(!url.as_str().contains("apiKey"));
        let bad = client.page_url(&PageRequest {
            window: None,
            start_index: 0,
            results_per_page: Some(2001),
        });
        assert!(bad.is_err());
    }
}
