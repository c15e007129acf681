//! Any OpenAI-compatible server: `POST {base}/chat/completions` with a
//! structured `response_format`, `GET {base}/models`.
//!
//! Servers disagree on how structured output is requested. OpenAI, vLLM and
//! llama.cpp's own server take `{"type": "json_schema", "json_schema":
//! {name, schema, strict}}`; llama-cpp-python's server (0.3.x) rejects that
//! (0.3.36 with a 500 whose message is a pydantic validation error naming
//! `response_format`) and wants `{"type": "json_object", "schema": ...}`. We try the
//! standard form first and, when the server complains about
//! `response_format`, retry with the other and keep using it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use super::http::{self, HEALTH_TIMEOUT};
use super::{ChatRequest, ChatResponse, HealthState, ModelStatus, Provider};
use crate::config::{redact_url, LlmConfig, ProviderKind};
use crate::error::{ConfigError, LlmError};

/// How structured output is asked for; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormatMode {
    /// `{"type": "json_schema", "json_schema": {...}}` (the standard).
    JsonSchema,
    /// `{"type": "json_object", "schema": ...}` (llama-cpp-python).
    JsonObject,
}

const MODE_JSON_SCHEMA: u8 = 0;
const MODE_JSON_OBJECT: u8 = 1;

/// A client for one OpenAI-compatible server and one model.
#[derive(Debug)]
pub struct OpenAiProvider {
    base: Url,
    endpoint: String,
    model: String,
    /// Never logged: `Debug` of this struct is derived, so keep the key in a
    /// wrapper whose `Debug` hides it.
    api_key: Option<Secret>,
    timeout: Duration,
    client: reqwest::Client,
    health_client: reqwest::Client,
    /// The response-format form this server accepted; shared by all calls so
    /// the fallback costs one extra request per process, not per CVE.
    mode: AtomicU8,
}

struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl OpenAiProvider {
    pub fn new(config: &LlmConfig) -> Result<Self, LlmError> {
        Ok(OpenAiProvider {
            base: config.url.clone(),
            endpoint: redact_url(&config.url),
            model: config.model.clone(),
            api_key: config.api_key.clone().map(Secret),
            timeout: config.timeout,
            client: http::client(config.timeout)?,
            health_client: http::client(config.timeout.min(HEALTH_TIMEOUT))?,
            mode: AtomicU8::new(MODE_JSON_SCHEMA),
        })
    }

    /// The form of `response_format` currently used.
    pub fn response_format_mode(&self) -> ResponseFormatMode {
        match self.mode.load(Ordering::Relaxed) {
            MODE_JSON_OBJECT => ResponseFormatMode::JsonObject,
            _ => ResponseFormatMode::JsonSchema,
        }
    }

    fn url(&self, path: &str) -> Result<Url, LlmError> {
        // `{base}/path`, as OpenAI clients do: the base keeps its `/v1`.
        let mut base = self.base.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        base.join(path).map_err(|e| {
            LlmError::Config(ConfigError::BadUrl {
                name: "OPENTHREAT_LLM_URL",
                value: self.endpoint.clone(),
                reason: e.to_string(),
            })
        })
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(Secret(key)) => req.bearer_auth(key),
            None => req,
        }
    }

    fn fix(&self) -> String {
        format!(
            "load model {} on the server at {} or set OPENTHREAT_LLM_MODEL to a model it serves",
            self.model, self.endpoint
        )
    }

    fn body(&self, request: &ChatRequest, mode: ResponseFormatMode) -> Value {
        let response_format = match mode {
            ResponseFormatMode::JsonSchema => json!({
                "type": "json_schema",
                "json_schema": {
                    "name": request.schema_name,
                    "schema": request.schema,
                    "strict": true,
                },
            }),
            ResponseFormatMode::JsonObject => json!({
                "type": "json_object",
                "schema": request.schema,
            }),
        };
        json!({
            "model": self.model,
            "messages": request.messages,
            "stream": false,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "response_format": response_format,
        })
    }

    /// One POST; `Ok(Err(..))` carries a non-success status and body so the
    /// caller can decide on the fallback.
    async fn post(&self, body: &Value) -> Result<(reqwest::StatusCode, String), LlmError> {
        let resp = self
            .authorize(self.client.post(self.url("chat/completions")?))
            .json(body)
            .send()
            .await
            .map_err(|e| http::transport_error(&self.endpoint, self.timeout, e))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| http::transport_error(&self.endpoint, self.timeout, e))?;
        Ok((status, text))
    }

    fn error_for(&self, status: reqwest::StatusCode, text: &str) -> LlmError {
        let message = http::error_message(text).unwrap_or_default();
        if status == reqwest::StatusCode::NOT_FOUND && http::says_model_missing(&message) {
            LlmError::ModelMissing {
                model: self.model.clone(),
                fix: self.fix(),
            }
        } else {
            http::status_error(status, text)
        }
    }
}

/// An error answer that names the response format means "I do not know this
/// form". Servers differ in the status: pydantic-based servers say 422,
/// others 400, and llama-cpp-python 0.3.36 wraps its validation error in a
/// 500 whose message quotes `'response_format'` and `'json_schema'`.
fn rejects_response_format(status: reqwest::StatusCode, body: &str) -> bool {
    let status_fits =
        status.is_client_error() || status == reqwest::StatusCode::INTERNAL_SERVER_ERROR;
    let b = body.to_ascii_lowercase();
    status_fits && b.contains("response_format") && b.contains("json_schema")
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<ChoiceMessage>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Models {
    #[serde(default)]
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        let mode = self.response_format_mode();
        let (mut status, mut text) = self.post(&self.body(request, mode)).await?;
        if mode == ResponseFormatMode::JsonSchema && rejects_response_format(status, &text) {
            tracing::info!(
                endpoint = %self.endpoint,
                "LLM server rejects response_format json_schema; using json_object with a schema"
            );
            (status, text) = self
                .post(&self.body(request, ResponseFormatMode::JsonObject))
                .await?;
            if status.is_success() {
                self.mode.store(MODE_JSON_OBJECT, Ordering::Relaxed);
            }
        }
        if !status.is_success() {
            return Err(self.error_for(status, &text));
        }
        let completion: Completion =
            serde_json::from_str(&text).map_err(|e| LlmError::Transient {
                reason: format!(
                    "answer is not an OpenAI chat completion ({e}): {}",
                    http::snippet(&text)
                ),
            })?;
        let content = completion
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message)
            .and_then(|m| m.content)
            .unwrap_or_default();
        let usage = completion.usage;
        Ok(ChatResponse {
            content,
            prompt_tokens: usage.as_ref().and_then(|u| u.prompt_tokens),
            completion_tokens: usage.as_ref().and_then(|u| u.completion_tokens),
            generation_time: None,
            elapsed: started.elapsed(),
        })
    }

    async fn health(&self) -> ModelStatus {
        let state = match self.models().await {
            Ok(ids) if ids.iter().any(|id| id == &self.model) => HealthState::Ready,
            Ok(ids) => HealthState::ModelMissing {
                available: ids,
                fix: self.fix(),
            },
            Err(LlmError::Unreachable { reason, .. }) => HealthState::Unreachable { reason },
            Err(e) => HealthState::Error {
                reason: e.to_string(),
            },
        };
        ModelStatus {
            provider: ProviderKind::OpenAi,
            endpoint: self.endpoint.clone(),
            model: self.model.clone(),
            state,
        }
    }
}

impl OpenAiProvider {
    async fn models(&self) -> Result<Vec<String>, LlmError> {
        let resp = self
            .authorize(self.health_client.get(self.url("models")?))
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
        let models: Models = serde_json::from_str(&text).map_err(|e| LlmError::Transient {
            reason: format!(
                "/models answer is not OpenAI's model list ({e}): {}",
                http::snippet(&text)
            ),
        })?;
        Ok(models.data.into_iter().map(|m| m.id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn recognises_response_format_rejections() {
        // llama-cpp-python 0.3.36, as observed.
        let real = r#"{"error":{"message":"1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}","type":"internal_server_error","param":null,"code":null}}"#;
        assert!(rejects_response_format(
            StatusCode::INTERNAL_SERVER_ERROR,
            real
        ));
        let pydantic = r#"{"detail":[{"type":"literal_error","loc":["body","response_format","type"],"input":"json_schema"}]}"#;
        assert!(rejects_response_format(
            StatusCode::UNPROCESSABLE_ENTITY,
            pydantic
        ));
        assert!(!rejects_response_format(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"out of memory"}"#
        ));
        assert!(!rejects_response_format(StatusCode::BAD_GATEWAY, real));
    }
}
