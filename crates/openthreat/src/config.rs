//! Configuration from the environment (and an optional `.env` file).
//!
//! Names are the ones operators of the original already use (`DATABASE_URL`,
//! `REDIS_URL`, `CELERY_BROKER_URL`, `CELERY_RESULT_BACKEND`, `OLLAMA_HOST`,
//! `OLLAMA_MODEL`, `NVD_API_KEY`), plus `OPENTHREAT_*` for the rest. With
//! nothing set, everything is embedded: a SQLite database and a SQLite queue
//! under `./data/`.
//!
//! Secrets (passwords inside URLs, API keys) are kept in [`Secret`] or shown
//! through [`redact_url`], so neither `Debug` output nor logs reveal them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, named by its variable so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{var}: {problem}")]
    Invalid { var: &'static str, problem: String },
    #[error(".env: {0}")]
    DotEnv(String),
}

/// A string that never shows itself in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is sent to its service.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The whole configuration of one process.
#[derive(Clone)]
pub struct Config {
    /// Where CVEs live: `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// Most connections this process opens to the database
    /// (`OPENTHREAT_DB_POOL_SIZE`, 2..=1000; `None`: the backend's default).
    pub db_pool_size: Option<u32>,
    /// Redis, when the deployment uses it (queue and results default to it).
    pub redis_url: Option<String>,
    /// The task broker: `CELERY_BROKER_URL`, else `REDIS_URL`, else the embedded SQLite queue.
    pub broker_url: String,
    /// Where task results go: `CELERY_RESULT_BACKEND`, else the broker.
    pub result_backend_url: String,
    /// Folder for the embedded database and queue files.
    pub data_dir: PathBuf,
    pub ollama_host: String,
    pub ollama_model: String,
    pub nvd_api_key: Option<Secret>,
    /// Base URL of the NVD CVE API 2.0 (tests and mirrors point it elsewhere).
    pub nvd_api_url: String,
    /// Base URL of the NVD 2.0 feed files (`nvdcve-2.0-<name>.json.gz` and
    /// `.meta` live under it); `OPENTHREAT_NVD_FEEDS_URL`, for mirrors and tests.
    pub nvd_feeds_url: String,
    /// NVD API quota as `requests/seconds` (`OPENTHREAT_NVD_RATE_LIMIT`, e.g.
    /// `50/30`); `None` uses NVD's published quota for keyed or anonymous use.
    pub nvd_rate_limit: Option<(u32, u64)>,
    /// Records per NVD API page (`OPENTHREAT_NVD_PAGE_SIZE`, 1..=2000, default 2000).
    pub nvd_page_size: u32,
    pub kev_url: String,
    pub epss_url: String,
    /// API key required by routes that start work or change data.
    pub api_key: Option<Secret>,
    /// HTTP bind address.
    pub bind: String,
    /// Where failure alerts are POSTed (`OPENTHREAT_ALERT_WEBHOOK`); such URLs
    /// usually carry a token in their path or query, so the whole URL is a secret.
    pub alert_webhook: Option<Secret>,
    /// Shortest time between two alert POSTs (`OPENTHREAT_ALERT_INTERVAL`,
    /// seconds, default 10), so a storm of failures becomes one summary.
    pub alert_interval: Duration,
    /// Producers send `task-sent` events (`OPENTHREAT_TASK_SENT_EVENTS`,
    /// default off, as Celery's `task_send_sent_event`).
    pub task_sent_events: bool,
    /// All raw variables, for crates that read their own (the LLM config).
    pub env: HashMap<String, String>,
}

/// Where NVD publishes its 2.0 feed files.
pub const DEFAULT_NVD_FEEDS_URL: &str = "https://nvd.nist.gov/feeds/json/cve/2.0";

/// `value` of `var` as a whole number in `range`, or an error naming the
/// variable, the value and the range (`what` it counts, e.g. "number of seconds").
fn number_in<T>(
    var: &'static str,
    value: &str,
    range: std::ops::RangeInclusive<T>,
    what: &str,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display,
{
    value
        .parse::<T>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| ConfigError::Invalid {
            var,
            problem: format!(
                "{value:?} is not a {what} from {} to {}",
                range.start(),
                range.end()
            ),
        })
}

/// Parses `REQUESTS/SECONDS` (e.g. `50/30`); both parts positive.
fn parse_rate_limit(v: &str) -> Option<(u32, u64)> {
    let (r, s) = v.split_once('/')?;
    let r: u32 = r.trim().parse().ok()?;
    let s: u64 = s.trim().trim_end_matches('s').parse().ok()?;
    (r > 0 && s > 0).then_some((r, s))
}

/// Default file of the embedded database, relative to the data dir.
pub const DEFAULT_DB_FILE: &str = "openthreat.db";
/// Default file of the embedded queue, relative to the data dir.
pub const DEFAULT_QUEUE_FILE: &str = "queue.db";

impl Config {
    /// Reads `.env` (when present) into the process environment, then the environment.
    ///
    /// Variables already set in the environment win over `.env`, as with
    /// every dotenv tool operators know.
    pub fn load() -> Result<Self, ConfigError> {
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(ConfigError::DotEnv(e.to_string())),
        }
        Self::from_map(std::env::vars().collect())
    }

    /// Builds the configuration from a map of variables (the environment, or a test's map).
    pub fn from_map(env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let data_dir = PathBuf::from(get("OPENTHREAT_DATA_DIR").unwrap_or_else(|| "data".into()));

        let database_url = match get("DATABASE_URL") {
            Some(url) => {
                check_url("DATABASE_URL", &url, &["sqlite", "postgres", "postgresql"])?;
                url
            }
            None => sqlite_url(&data_dir.join(DEFAULT_DB_FILE)),
        };
        let db_pool_size = get("OPENTHREAT_DB_POOL_SIZE")
            .map(|v| {
                number_in(
                    "OPENTHREAT_DB_POOL_SIZE",
                    &v,
                    openthreat_store::MIN_POOL_SIZE..=1000,
                    "number of connections",
                )
            })
            .transpose()?;
        let redis_url = get("REDIS_URL");
        if let Some(url) = &redis_url {
            check_url("REDIS_URL", url, &["redis", "rediss"])?;
        }
        let broker_url = match get("CELERY_BROKER_URL") {
            Some(url) => {
                check_url("CELERY_BROKER_URL", &url, &["redis", "rediss", "sqlite"])?;
                url
            }
            None => redis_url
                .clone()
                .unwrap_or_else(|| sqlite_url(&data_dir.join(DEFAULT_QUEUE_FILE))),
        };
        let result_backend_url = match get("CELERY_RESULT_BACKEND") {
            Some(url) => {
                check_url(
                    "CELERY_RESULT_BACKEND",
                    &url,
                    &["redis", "rediss", "sqlite"],
                )?;
                url
            }
            None => broker_url.clone(),
        };
        let ollama_host = get("OLLAMA_HOST").unwrap_or_else(|| "http://localhost:11434".into());
        let ollama_host = if ollama_host.contains("://") {
            ollama_host
        } else {
            // Ollama's own CLI accepts a bare host:port here; so do we.
            format!("http://{ollama_host}")
        };
        check_url("OLLAMA_HOST", &ollama_host, &["http", "https"])?;
        let bind = get("OPENTHREAT_BIND").unwrap_or_else(|| "127.0.0.1:8001".into());
        if bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                var: "OPENTHREAT_BIND",
                problem: format!("{bind:?} is not an address like 127.0.0.1:8001"),
            });
        }
        let alert_webhook = match get("OPENTHREAT_ALERT_WEBHOOK") {
            Some(url) => {
                // Checked here without echoing the value: a token may be in any part of it.
                let ok = url::Url::parse(&url)
                    .map(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                    .unwrap_or(false);
                if !ok {
                    return Err(ConfigError::Invalid {
                        var: "OPENTHREAT_ALERT_WEBHOOK",
                        problem: "is not an http:// or https:// URL (value not shown: it may hold a token)".into(),
                    });
                }
                Some(Secret::new(url))
            }
            None => None,
        };
        let alert_interval = match get("OPENTHREAT_ALERT_INTERVAL") {
            Some(v) => Duration::from_secs(number_in(
                "OPENTHREAT_ALERT_INTERVAL",
                v.trim_end_matches('s'),
                1..=86_400,
                "number of seconds",
            )?),
            None => Duration::from_secs(10),
        };
        Ok(Config {
            database_url,
            db_pool_size,
            redis_url,
            broker_url,
            result_backend_url,
            data_dir,
            ollama_host,
            ollama_model: get("OLLAMA_MODEL").unwrap_or_else(|| "llama3.2:3b".into()),
            nvd_api_key: get("NVD_API_KEY").map(Secret::new),
            nvd_api_url: get("OPENTHREAT_NVD_API_URL")
                .unwrap_or_else(|| "https://services.nvd.nist.gov/rest/json/cves/2.0".into()),
            nvd_feeds_url: get("OPENTHREAT_NVD_FEEDS_URL")
                .unwrap_or_else(|| DEFAULT_NVD_FEEDS_URL.into()),
            nvd_rate_limit: match get("OPENTHREAT_NVD_RATE_LIMIT") {
                Some(v) => Some(parse_rate_limit(&v).ok_or_else(|| ConfigError::Invalid {
                    var: "OPENTHREAT_NVD_RATE_LIMIT",
                    problem: format!("{v:?} is not REQUESTS/SECONDS, e.g. 50/30"),
                })?),
                None => None,
            },
            nvd_page_size: match get("OPENTHREAT_NVD_PAGE_SIZE") {
                Some(v) => number_in("OPENTHREAT_NVD_PAGE_SIZE", &v, 1..=2000, "number")?,
                None => 2000,
            },
            kev_url: get("OPENTHREAT_KEV_URL").unwrap_or_else(|| {
                "https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json"
                    .into()
            }),
            epss_url: get("OPENTHREAT_EPSS_URL")
                .unwrap_or_else(|| "https://epss.cyentia.com/epss_scores-current.csv.gz".into()),
            api_key: get("OPENTHREAT_API_KEY").map(Secret::new),
            bind,
            alert_webhook,
            alert_interval,
            task_sent_events: match get("OPENTHREAT_TASK_SENT_EVENTS").as_deref() {
                None | Some("0" | "false" | "no" | "off" | "") => false,
                Some("1" | "true" | "yes" | "on") => true,
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        var: "OPENTHREAT_TASK_SENT_EVENTS",
                        problem: "must be true or false".into(),
                    })
                }
            },
            env,
        })
    }

    /// Whether the database is the embedded SQLite file.
    pub fn database_is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written so that passwords in URLs and API keys never reach a log line.
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("db_pool_size", &self.db_pool_size)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("broker_url", &redact_url(&self.broker_url))
            .field("result_backend_url", &redact_url(&self.result_backend_url))
            .field("data_dir", &self.data_dir)
            .field("ollama_host", &redact_url(&self.ollama_host))
            .field("ollama_model", &self.ollama_model)
            .field("nvd_api_key", &self.nvd_api_key)
            .field("nvd_api_url", &self.nvd_api_url)
            .field("nvd_feeds_url", &self.nvd_feeds_url)
            .field("nvd_rate_limit", &self.nvd_rate_limit)
            .field("nvd_page_size", &self.nvd_page_size)
            .field("kev_url", &self.kev_url)
            .field("epss_url", &self.epss_url)
            .field("api_key", &self.api_key)
            .field("bind", &self.bind)
            .field("alert_webhook", &self.alert_webhook)
            .field("alert_interval", &self.alert_interval)
            .field("task_sent_events", &self.task_sent_events)
            .finish_non_exhaustive()
    }
}

/// A `sqlite://` URL for a file path.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// The URL with any password replaced by `***`, for logs and messages (the
/// store's redaction, which also works on malformed URLs and free text).
pub use openthreat_store::redact_url;

fn check_url(var: &'static str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme {
        Some(s) if schemes.contains(&s.as_str()) => {}
        _ => {
            return Err(ConfigError::Invalid {
                var,
                problem: format!(
                    "{:?} is not a URL with one of the schemes {}",
                    redact_url(url),
                    schemes
                        .iter()
                        .map(|s| format!("{s}://"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
    }
    if !url.starts_with("sqlite:") {
        url::Url::parse(url).map_err(|e| ConfigError::Invalid {
            var,
            problem: format!("{:?} is malformed: {e}", redact_url(url)),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn nothing_set_means_embedded() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.database_url, "sqlite://data/openthreat.db");
        assert_eq!(c.broker_url, "sqlite://data/queue.db");
        assert_eq!(c.result_backend_url, c.broker_url);
        assert!(c.database_is_sqlite());
        assert_eq!(c.ollama_model, "llama3.2:3b");
        assert_eq!(c.bind, "127.0.0.1:8001");
    }

    #[test]
    fn redis_url_becomes_broker_and_backend_unless_overridden() {
        let c = cfg(&[("REDIS_URL", "redis://127.0.0.1:6379/0")]).unwrap();
        assert_eq!(c.broker_url, "redis://127.0.0.1:6379/0");
        assert_eq!(c.result_backend_url, "redis://127.0.0.1:6379/0");
        let c = cfg(&[
            ("REDIS_URL", "redis://127.0.0.1:6379/0"),
            ("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"),
            ("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/2"),
        ])
        .unwrap();
        assert_eq!(c.broker_url, "redis://127.0.0.1:6379/1");
        assert_eq!(c.result_backend_url, "redis://127.0.0.1:6379/2");
    }

    #[test]
    fn malformed_database_url_names_the_variable_and_hides_the_password() {
        let err = cfg(&[("DATABASE_URL", "mysql://u:hunter2@db/x")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("DATABASE_URL:"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = cfg(&[("DATABASE_URL", "postgres://u:hunter2@[bad/x")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("DATABASE_URL") && err.contains("malformed"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn database_pool_size_is_bounded_and_named_when_wrong() {
        assert_eq!(cfg(&[]).unwrap().db_pool_size, None);
        let c = cfg(&[("OPENTHREAT_DB_POOL_SIZE", " 4 ")]).unwrap();
        assert_eq!(c.db_pool_size, Some(4));
        for bad in ["1", "0", "1001", "four", "-3"] {
            let err = cfg(&[("OPENTHREAT_DB_POOL_SIZE", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("OPENTHREAT_DB_POOL_SIZE") && err.contains("from 2 to 1000"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_bind_and_bad_redis_are_named() {
        let err = cfg(&[("OPENTHREAT_BIND", "port 80")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("OPENTHREAT_BIND"), "{err}");
        let err = cfg(&[("REDIS_URL", "localhost:6379")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("REDIS_URL"), "{err}");
    }

    #[test]
    fn nvd_feed_url_rate_limit_and_page_size() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.nvd_feeds_url, DEFAULT_NVD_FEEDS_URL);
        assert_eq!(c.nvd_rate_limit, None);
        assert_eq!(c.nvd_page_size, 2000);
        let c = cfg(&[
            ("OPENTHREAT_NVD_FEEDS_URL", "http://127.0.0.1:9/feeds"),
            ("OPENTHREAT_NVD_RATE_LIMIT", "50/30"),
            ("OPENTHREAT_NVD_PAGE_SIZE", "100"),
        ])
        .unwrap();
        assert_eq!(c.nvd_feeds_url, "http://127.0.0.1:9/feeds");
        assert_eq!(c.nvd_rate_limit, Some((50, 30)));
        assert_eq!(c.nvd_page_size, 100);
        let err = cfg(&[("OPENTHREAT_NVD_RATE_LIMIT", "fast")]).unwrap_err();
        assert!(
            err.to_string().starts_with("OPENTHREAT_NVD_RATE_LIMIT"),
            "{err}"
        );
        let err = cfg(&[("OPENTHREAT_NVD_PAGE_SIZE", "5000")]).unwrap_err();
        assert!(
            err.to_string().starts_with("OPENTHREAT_NVD_PAGE_SIZE"),
            "{err}"
        );
    }

    #[test]
    fn bare_ollama_host_gets_a_scheme() {
        let c = cfg(&[("OLLAMA_HOST", "10.0.0.5:11434")]).unwrap();
        assert_eq!(c.ollama_host, "http://10.0.0.5:11434");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = cfg(&[
            ("DATABASE_URL", "postgres://app:s3cret-db@db.local:5432/ot"),
            ("REDIS_URL", "redis://:s3cret-redis@cache:6379/0"),
            ("NVD_API_KEY", "s3cret-nvd"),
            ("OPENTHREAT_API_KEY", "s3cret-api"),
        ])
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(
            debug.contains("postgres://app:***@db.local:5432/ot"),
            "{debug}"
        );
        assert!(debug.contains("redis://:***@cache:6379/0"), "{debug}");
    }

    #[test]
    fn alert_webhook_is_a_secret_and_its_errors_do_not_echo_it() {
        let c = cfg(&[(
            "OPENTHREAT_ALERT_WEBHOOK",
            "https://hooks.example.com/services/s3cret-token",
        )])
        .unwrap();
        assert_eq!(
            c.alert_webhook.as_ref().map(Secret::expose),
            Some("https://hooks.example.com/services/s3cret-token")
        );
        assert_eq!(c.alert_interval, Duration::from_secs(10));
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        let err = cfg(&[("OPENTHREAT_ALERT_WEBHOOK", "ftp://h/s3cret-token")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("OPENTHREAT_ALERT_WEBHOOK"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let c = cfg(&[("OPENTHREAT_ALERT_INTERVAL", "30")]).unwrap();
        assert_eq!(c.alert_interval, Duration::from_secs(30));
        assert!(cfg(&[("OPENTHREAT_ALERT_INTERVAL", "0")]).is_err());
    }

    #[test]
    fn redact_url_cases() {
        assert_eq!(redact_url("postgres://u:p@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("redis://pw@h:6379"), "redis://***@h:6379");
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        assert_eq!(redact_url("https://h/p?x=a@b"), "https://h/p?x=a@b");
    }
}
