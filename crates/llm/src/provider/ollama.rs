//! Ollama's native API: `POST /api/chat` with `format` set to the output's
//! JSON schema (Ollama then constrains generation to it), `GET /api/tags` to
//! see which models are pulled.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::http::{self, HEALTH_TIMEOUT};
use super::{ChatRequest, ChatResponse, HealthState, ModelStatus, Provider};
use crate::config::{redact_url, LlmConfig, ProviderKind};
use crate::error::{ConfigError, LlmError};

/// A client for one Ollama server and one model.
#[derive(Debug)]
pub struct OllamaProvider {
    base: Url,
    endpoint: String,
    model: String,
    keep_alive: String,
    timeout: Duration,
    client: reqwest::Client,
    health_client: reqwest::Client,
}

impl OllamaProvider {
    pub fn new(config: &LlmConfig) -> Result<Self, LlmError> {
        Ok(OllamaProvider {
            base: config.url.clone(),
            endpoint: redact_url(&config.url),
            model: config.model.clone(),
            keep_alive: config.keep_alive.clone(),
            timeout: config.timeout,
            client: http::client(config.timeout)?,
            health_client: http::client(config.timeout.min(HEALTH_TIMEOUT))?,
        })
    }

    fn url(&self, path: &str) -> Result<Url, LlmError> {
        // Joining onto the root keeps a reverse-proxy prefix such as
        // `https://host/ollama/` intact.
        let mut base = self.base.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        base.join(path).map_err(|e| {
            LlmError::Config(ConfigError::BadUrl {
                name: "OLLAMA_HOST",
                value: self.endpoint.clone(),
                reason: e.to_string(),
            })
        })
    }

    fn fix(&self) -> String {
        format!("ollama pull {}", self.model)
    }
}

#[derive(Deserialize)]
struct ChatAnswer {
    message: Option<AnswerMessage>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    /// Nanoseconds, as all Ollama durations.
    eval_duration: Option<u64>,
}

#[derive(Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: String,
}

#[derive(Deserialize)]
struct Tags {
    #[serde(default)]
    models: Vec<TagModel>,
}

#[derive(Deserialize)]
struct TagModel {
    name: String,
}

/// Ollama treats `llama3` and `llama3:latest` as the same model.
fn same_model(listed: &str, wanted: &str) -> bool {
    let norm = |s: &str| {
        if s.contains(':') {
            s.to_string()
        } else {
            format!("{s}:latest")
        }
    };
    norm(listed) == norm(wanted)
}

#[async_trait]
impl Provider for OllamaProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Ollama
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let body = json!({
            "model": self.model,
            "messages": request.messages,
            "stream": false,
            "format": request.schema,
            "options": {
                "temperature": request.temperature,
                "num_predict": request.max_tokens,
            },
            "keep_alive": self.keep_alive,
        });
        let started = Instant::now();
        let resp = self
            .client
            .post(self.url("api/chat")?)
            .json(&body)
            .send()
            .await
            .map_err(|e| http::transport_error(&self.endpoint, self.timeout, e))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| http::transport_error(&self.endpoint, self.timeout, e))?;
        if !status.is_success() {
            if status == reqwest::StatusCode::NOT_FOUND
                && http::error_message(&text).is_some_and(|m| http::says_model_missing(&m))
            {
                return Err(LlmError::ModelMissing {
                    model: self.model.clone(),
                    fix: self.fix(),
                });
            }
            return Err(http::status_error(status, &text));
        }
        let answer: ChatAnswer = serde_json::from_str(&text).map_err(|e| LlmError::Transient {
            reason: format!(
                "answer is not Ollama's chat JSON ({e}): {}",
                http::snippet(&text)
            ),
        })?;
        Ok(ChatResponse {
            content: answer.message.map(|m| m.content).unwrap_or_default(),
            prompt_tokens: answer.prompt_eval_count,
            completion_tokens: answer.eval_count,
            generation_time: answer.eval_duration.map(Duration::from_nanos),
            elapsed: started.elapsed(),
        })
    }

    async fn health(&self) -> ModelStatus {
        let state = match self.tags().await {
            Ok(names) if names.iter().any(|n| same_model(n, &self.model)) => HealthState::Ready,
            Ok(names) => HealthState::ModelMissing {
                available: names,
                fix: self.fix(),
            },
            Err(LlmError::Unreachable { reason, .. }) => HealthState::Unreachable { reason },
            Err(e) => HealthState::Error {
                reason: e.to_string(),
            },
        };
        ModelStatus {
            provider: ProviderKind::Ollama,
            endpoint: self.endpoint.clone(),
            model: self.model.clone(),
            state,
        }
    }
}

impl OllamaProvider {
    async fn tags(&self) -> Result<Vec<String>, LlmError> {
        let resp = self
            .health_client
            .get(self.url("api/tags")?)
            .send()
            .await
            .map_err(|e| http::transport_error(&self.endpoint, HEALTH_TIMEOUT, e))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| http::transport_error(&self.endpoint, HEALTH_TIMEOUT, e))?;
        if !status.is_success() {
            return Err(http::status_error(status, &text));
        }
        let tags: Tags = serde_json::from_str(&text).map_err(|e| LlmError::Transient {
            reason: format!(
                "/api/tags answer is not Ollama's ({e}): {}",
                http::snippet(&text)
            ),
        })?;
        Ok(tags.models.into_iter().map(|m| m.name).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_tag_is_implicit() {
        assert!(same_model("llama3:latest", "llama3"));
        assert!(same_model("llama3.2:3b", "llama3.2:3b"));
        assert!(!same_model("llama3.2:1b", "llama3.2:3b"));
    }
}
