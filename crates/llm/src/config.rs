//! LLM configuration from plain values.
//!
//! The application owns reading the environment and `.env`; this module only
//! turns a map of names to values into a checked [`LlmConfig`], so tests and
//! the CLI can build one without touching process state.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use url::Url;

use crate::error::ConfigError;

/// Ollama's own default address.
pub const DEFAULT_OLLAMA_HOST: &str = "http://localhost:11434";
/// A small model that writes acceptable English on a laptop CPU.
pub const DEFAULT_MODEL: &str = "llama3.2:3b";
/// llama.cpp's server listens on 8080; OpenAI clients take the `/v1` base.
pub const DEFAULT_OPENAI_BASE_URL: &str = "http://localhost:8080/v1";
/// Calls in flight per process: small local servers have one or two slots,
/// and queueing more only makes every answer later.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// CPU-only models need tens of seconds for one answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Which wire protocol the LLM server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Ollama's native API (`/api/chat`, `/api/tags`).
    Ollama,
    /// Any OpenAI-compatible server (`/chat/completions`, `/models`):
    /// llama.cpp, llama-cpp-python, vLLM, LM Studio, OpenAI itself.
    OpenAi,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Ollama => "ollama",
            ProviderKind::OpenAi => "openai",
        }
    }

    /// Parses the `OPENTHREAT_LLM_PROVIDER` value (case-insensitive).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "ollama" => Ok(ProviderKind::Ollama),
            "openai" | "openai-compatible" | "openai_compatible" => Ok(ProviderKind::OpenAi),
            _ => Err(ConfigError::UnknownProvider(s.to_string())),
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything needed to talk to one LLM server.
///
/// `Debug` is written by hand so the API key never reaches a log line, and
/// URLs are shown with any password redacted.
#[derive(Clone, PartialEq)]
pub struct LlmConfig {
    pub provider: ProviderKind,
    /// For Ollama the server root (`http://localhost:11434`); for the
    /// OpenAI-compatible provider the base as OpenAI clients take it,
    /// including `/v1`.
    pub url: Url,
    pub model: String,
    /// Sent as `Authorization: Bearer` by the OpenAI-compatible provider.
    pub api_key: Option<String>,
    /// Calls in flight per process, independent of the worker's concurrency.
    pub concurrency: usize,
    /// Limit for one HTTP call, generation included.
    pub timeout: Duration,
    /// Low, so that answers are factual and repeatable, but not zero, so that
    /// a retry after a rejected answer can come out differently.
    pub temperature: f32,
    /// Upper bound on generated tokens; the answer needs about 200.
    pub max_tokens: u32,
    /// Ollama's `keep_alive`: how long the model stays loaded between calls.
    pub keep_alive: String,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            provider: ProviderKind::Ollama,
            url: Url::parse(DEFAULT_OLLAMA_HOST).expect("valid default URL"),
            model: DEFAULT_MODEL.to_string(),
            api_key: None,
            concurrency: DEFAULT_CONCURRENCY,
            timeout: DEFAULT_TIMEOUT,
            temperature: 0.2,
            max_tokens: 400,
            keep_alive: "10m".to_string(),
        }
    }
}

impl fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmConfig")
            .field("provider", &self.provider)
            .field("url", &redact_url(&self.url))
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .field("keep_alive", &self.keep_alive)
            .finish()
    }
}

impl LlmConfig {
    /// Builds the configuration from environment-style values.
    ///
    /// Names read (empty values count as unset):
    /// * `OPENTHREAT_LLM_PROVIDER`: `ollama` (default) or `openai`.
    /// * `OLLAMA_HOST`: Ollama's address; like Ollama's own client it accepts
    ///   `host`, `host:port` or a full URL (default `http://localhost:11434`).
    /// * `OPENTHREAT_LLM_URL`, then `OPENAI_BASE_URL`: the OpenAI-compatible
    ///   base URL including `/v1` (default `http://localhost:8080/v1`).
    /// * `OPENTHREAT_LLM_MODEL`, then `OLLAMA_MODEL` (default `llama3.2:3b`).
    /// * `OPENAI_API_KEY`: optional bearer token.
    /// * `OPENTHREAT_LLM_CONCURRENCY` (default 2, at least 1).
    /// * `OPENTHREAT_LLM_TIMEOUT`: seconds, `120` or `120s` (default 120).
    pub fn from_env_map(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            env.get(name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let provider = match get("OPENTHREAT_LLM_PROVIDER") {
            Some(p) => ProviderKind::parse(&p)?,
            None => ProviderKind::Ollama,
        };
        let url = match provider {
            ProviderKind::Ollama => {
                let raw = get("OLLAMA_HOST").unwrap_or_else(|| DEFAULT_OLLAMA_HOST.to_string());
                parse_ollama_host(&raw)?
            }
            ProviderKind::OpenAi => {
                let (name, raw) = match (get("OPENTHREAT_LLM_URL"), get("OPENAI_BASE_URL")) {
                    (Some(v), _) => ("OPENTHREAT_LLM_URL", v),
                    (None, Some(v)) => ("OPENAI_BASE_URL", v),
                    (None, None) => ("OPENTHREAT_LLM_URL", DEFAULT_OPENAI_BASE_URL.to_string()),
                };
                parse_http_url(name, &raw)?
            }
        };
        let model = get("OPENTHREAT_LLM_MODEL")
            .or_else(|| get("OLLAMA_MODEL"))
            .unwrap_or_else(|| DEFAULT_MODEL.to_string());
        let concurrency = match get("OPENTHREAT_LLM_CONCURRENCY") {
            None => DEFAULT_CONCURRENCY,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(ConfigError::BadNumber {
                        name: "OPENTHREAT_LLM_CONCURRENCY",
                        expected: "a whole number of at least 1",
                        value: v,
                    })
                }
            },
        };
        let timeout = match get("OPENTHREAT_LLM_TIMEOUT") {
            None => DEFAULT_TIMEOUT,
            Some(v) => parse_seconds(&v).ok_or(ConfigError::BadNumber {
                name: "OPENTHREAT_LLM_TIMEOUT",
                expected: "a positive number of seconds such as 120 or 120s",
                value: v,
            })?,
        };
        Ok(LlmConfig {
            provider,
            url,
            model,
            api_key: get("OPENAI_API_KEY"),
            concurrency,
            timeout,
            ..LlmConfig::default()
        })
    }

    /// A configuration for the OpenAI-compatible provider at `base_url`
    /// (including `/v1`), other values at their defaults.
    pub fn openai(base_url: &str, model: &str) -> Result<Self, ConfigError> {
        Ok(LlmConfig {
            provider: ProviderKind::OpenAi,
            url: parse_http_url("OPENTHREAT_LLM_URL", base_url)?,
            model: non_empty("OPENTHREAT_LLM_MODEL", model)?,
            ..LlmConfig::default()
        })
    }

    /// A configuration for Ollama at `host`, other values at their defaults.
    pub fn ollama(host: &str, model: &str) -> Result<Self, ConfigError> {
        Ok(LlmConfig {
            provider: ProviderKind::Ollama,
            url: parse_ollama_host(host)?,
            model: non_empty("OLLAMA_MODEL", model)?,
            ..LlmConfig::default()
        })
    }

    /// The server URL with any password replaced, safe for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// One start-up line: provider, model, address, limits. Never shows the
    /// API key or a password.
    pub fn describe(&self) -> String {
        format!(
            "LLM provider {} model {} at {} (concurrency {}, timeout {}s{})",
            self.provider,
            self.model,
            self.redacted_url(),
            self.concurrency,
            self.timeout.as_secs(),
            if self.api_key.is_some() {
                ", API key set"
            } else {
                ""
            }
        )
    }
}

fn non_empty(name: &'static str, v: &str) -> Result<String, ConfigError> {
    let v = v.trim();
    if v.is_empty() {
        Err(ConfigError::Empty(name))
    } else {
        Ok(v.to_string())
    }
}

/// `OLLAMA_HOST` is often set to `0.0.0.0` or `host:port` for the server
/// itself; Ollama's client then assumes `http` and port 11434, and so do we.
fn parse_ollama_host(raw: &str) -> Result<Url, ConfigError> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let mut url = parse_http_url("OLLAMA_HOST", &with_scheme)?;
    if url.port().is_none() && !raw.contains("://") {
        // Cannot fail: an http URL with a host accepts a port.
        let _ = url.set_port(Some(11434));
    }
    Ok(url)
}

fn parse_http_url(name: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let bad = |reason: String| ConfigError::BadUrl {
        name,
        value: redact_str(raw),
        reason,
    };
    let url = Url::parse(raw.trim()).map_err(|e| bad(e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".to_string()));
    }
    Ok(url)
}

/// The URL with a password (if any) replaced by `***`.
pub(crate) fn redact_url(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.as_str().trim_end_matches('/').to_string()
}

fn redact_str(raw: &str) -> String {
    match Url::parse(raw.trim()) {
        Ok(u) => redact_url(&u),
        Err(_) => "<unparsable>".to_string(),
    }
}

fn parse_seconds(v: &str) -> Option<Duration> {
    let n = v.trim().trim_end_matches('s').trim();
    let secs: f64 = n.parse().ok()?;
    if secs.is_finite() && secs > 0.0 && secs < 1e7 {
        Some(Duration::from_secs_f64(secs))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_ollama_on_localhost() {
        let c = LlmConfig::from_env_map(&HashMap::new()).unwrap();
        assert_eq!(c.provider, ProviderKind::Ollama);
        assert_eq!(c.redacted_url(), "http://localhost:11434");
        assert_eq!(c.model, "llama3.2:3b");
        assert_eq!(c.concurrency, 2);
        assert_eq!(c.timeout, Duration::from_secs(120));
        assert_eq!(c.api_key, None);
    }

    #[test]
    fn ollama_host_without_scheme_or_port() {
        let c = LlmConfig::from_env_map(&env(&[("OLLAMA_HOST", "gpu-box")])).unwrap();
        assert_eq!(c.redacted_url(), "http://gpu-box:11434");
        let c = LlmConfig::from_env_map(&env(&[("OLLAMA_HOST", "10.0.0.5:9999")])).unwrap();
        assert_eq!(c.redacted_url(), "http://10.0.0.5:9999");
    }

    #[test]
    fn openai_reads_both_url_names_in_order() {
        let c = LlmConfig::from_env_map(&env(&[
            ("OPENTHREAT_LLM_PROVIDER", "OpenAI"),
            ("OPENAI_BASE_URL", "http://b:1/v1"),
        ]))
        .unwrap();
        assert_eq!(c.redacted_url(), "http://b:1/v1");
        let c = LlmConfig::from_env_map(&env(&[
            ("OPENTHREAT_LLM_PROVIDER", "openai"),
            ("OPENAI_BASE_URL", "http://b:1/v1"),
            ("OPENTHREAT_LLM_URL", "http://a:2/v1"),
            ("OPENTHREAT_LLM_TIMEOUT", "30s"),
            ("OPENTHREAT_LLM_CONCURRENCY", "4"),
            ("OLLAMA_MODEL", "gemma3-270m"),
        ]))
        .unwrap();
        assert_eq!(c.redacted_url(), "http://a:2/v1");
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.model, "gemma3-270m");
    }

    #[test]
    fn secrets_never_shown() {
        let c = LlmConfig::from_env_map(&env(&[
            ("OPENTHREAT_LLM_PROVIDER", "openai"),
            ("OPENTHREAT_LLM_URL", "https://user:hunter2@llm.example/v1"),
            ("OPENAI_API_KEY", "sk-secret-123"),
        ]))
        .unwrap();
        let shown = format!("{c:?} {}", c.describe());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("sk-secret-123"), "{shown}");
        assert!(shown.contains("user:***@llm.example"), "{shown}");
        assert!(c.describe().contains("API key set"));
    }

    #[test]
    fn bad_values_are_named() {
        let e = LlmConfig::from_env_map(&env(&[("OPENTHREAT_LLM_PROVIDER", "gpt")])).unwrap_err();
        assert!(e.to_string().contains("\"gpt\""), "{e}");
        let e = LlmConfig::from_env_map(&env(&[("OPENTHREAT_LLM_CONCURRENCY", "0")])).unwrap_err();
        assert!(e.to_string().contains("OPENTHREAT_LLM_CONCURRENCY"), "{e}");
        let e = LlmConfig::from_env_map(&env(&[("OPENTHREAT_LLM_TIMEOUT", "soon")])).unwrap_err();
        assert!(e.to_string().contains("OPENTHREAT_LLM_TIMEOUT"), "{e}");
        let e = LlmConfig::from_env_map(&env(&[
            ("OPENTHREAT_LLM_PROVIDER", "openai"),
            ("OPENTHREAT_LLM_URL", "ftp://x:pw@h/v1"),
        ]))
        .unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("OPENTHREAT_LLM_URL") && !shown.contains("pw@"),
            "{shown}"
        );
    }
}
