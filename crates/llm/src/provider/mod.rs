//! The [`Provider`] trait and the wire-independent request, answer and health
//! types shared by the two protocols.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::config::{LlmConfig, ProviderKind};
use crate::error::LlmError;

mod http;
pub mod ollama;
pub mod openai;

pub use ollama::OllamaProvider;
pub use openai::OpenAiProvider;

/// One LLM server speaking one protocol.
///
/// Object-safe so the application can hold an `Arc<dyn Provider>` and tests
/// can substitute their own.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// Which protocol this is.
    fn kind(&self) -> ProviderKind;
    /// The model every call uses.
    fn model(&self) -> &str;
    /// The server address with any password redacted, for logs.
    fn endpoint(&self) -> String;
    /// One non-streaming chat call whose answer must follow `request.schema`.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError>;
    /// Whether the server answers and has the model. Never fails: the state
    /// is the answer, so `doctor` and start-up lines can print it.
    async fn health(&self) -> ModelStatus;
}

/// Builds the provider the configuration names.
pub fn build_provider(config: &LlmConfig) -> Result<Arc<dyn Provider>, LlmError> {
    Ok(match config.provider {
        ProviderKind::Ollama => Arc::new(OllamaProvider::new(config)?),
        ProviderKind::OpenAi => Arc::new(OpenAiProvider::new(config)?),
    })
}

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation; both protocols use this exact shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A structured-output chat call.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// JSON schema the answer must follow (Ollama `format`, OpenAI
    /// `response_format`).
    pub schema: serde_json::Value,
    /// A name for the schema; OpenAI's `json_schema` requires one.
    pub schema_name: String,
    pub temperature: f32,
    pub max_tokens: u32,
}

/// The model's answer and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The assistant message's text: JSON if the model obeyed, anything otherwise.
    pub content: String,
    /// Tokens read (Ollama `prompt_eval_count`, OpenAI `usage.prompt_tokens`).
    pub prompt_tokens: Option<u64>,
    /// Tokens written (Ollama `eval_count`, OpenAI `usage.completion_tokens`).
    pub completion_tokens: Option<u64>,
    /// Generation time as the server measured it, when it says (Ollama's
    /// `eval_duration`); tokens per second are more honest from this.
    pub generation_time: Option<Duration>,
    /// Wall time of the HTTP call as we saw it.
    pub elapsed: Duration,
}

/// What [`Provider::health`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStatus {
    pub provider: ProviderKind,
    /// Server address, password redacted.
    pub endpoint: String,
    pub model: String,
    pub state: HealthState,
}

/// The answer to "can we enrich CVEs right now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthState {
    /// The server answers and lists the model.
    Ready,
    /// The server answers but lacks the model; `available` is what it has.
    ModelMissing { available: Vec<String>, fix: String },
    /// Nothing answers at the address.
    Unreachable { reason: String },
    /// Something answers, but not as the protocol says (wrong port, proxy
    /// error page, 5xx).
    Error { reason: String },
}

impl ModelStatus {
    pub fn is_ready(&self) -> bool {
        self.state == HealthState::Ready
    }

    /// Ready becomes `Ok`; anything else the error a task would act on, so a
    /// batch task can `status.into_result()?` and skip its run.
    pub fn into_result(self) -> Result<(), LlmError> {
        match self.state {
            HealthState::Ready => Ok(()),
            HealthState::ModelMissing { fix, .. } => Err(LlmError::ModelMissing {
                model: self.model,
                fix,
            }),
            HealthState::Unreachable { reason } => Err(LlmError::Unreachable {
                url: self.endpoint,
                reason,
            }),
            HealthState::Error { reason } => Err(LlmError::Transient { reason }),
        }
    }
}

impl fmt::Display for ModelStatus {
    /// One line for `doctor` and the start-up log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} model {} at {}: ",
            self.provider, self.model, self.endpoint
        )?;
        match &self.state {
            HealthState::Ready => f.write_str("ready"),
            HealthState::ModelMissing { available, fix } => {
                write!(f, "model missing (fix: {fix})")?;
                if !available.is_empty() {
                    write!(f, "; available: {}", available.join(", "))?;
                }
                Ok(())
            }
            HealthState::Unreachable { reason } => write!(f, "unreachable ({reason})"),
            HealthState::Error { reason } => write!(f, "error ({reason})"),
        }
    }
}
