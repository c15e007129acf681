//! OpenThreat's LLM step: turn a CVE into a plain-language title, a short
//! explanation and a recommended action, using a local model behind Ollama or
//! any OpenAI-compatible server.
//!
//! The application's tasks stay thin: they build one [`Enricher`] from an
//! [`LlmConfig`], ask it for [`Enricher::health`] before a batch, and call
//! [`Enricher::enrich`] per CVE. That call makes one structured request (the
//! output's JSON schema goes to the server), validates and cleans the answer,
//! makes at most one repair request that names the problem, and returns
//! either a validated [`openthreat_core::Enrichment`] with token and timing
//! statistics, or an [`LlmError`] whose variant tells the task what to do.
//!
//! CVE text is untrusted: it is fenced and labelled as data in the prompt,
//! and the answer is treated as data too: parsed, measured, compared with
//! the input, never executed.
//!
//! # Layout
//! * [`config`]: [`LlmConfig`] from environment-style values; secrets redacted.
//! * [`error`]: [`LlmError`], the one error the tasks act on, and [`ConfigError`].
//! * [`provider`]: the [`Provider`] trait; [`OllamaProvider`] (`/api/chat`,
//!   `/api/tags`) and [`OpenAiProvider`] (`/chat/completions`, `/models`,
//!   with the `json_schema` → `json_object` fallback).
//! * [`prompt`]: the system and user messages, the output schema, the input
//!   hash.
//! * [`mod@validate`]: cleaning (preambles, markdown, quotes) and the checks
//!   (lengths, sentences, language, foreign CVE ids, invented versions and
//!   names, copies of the input).
//! * [`enricher`]: [`Enricher`], which ties the above together under a
//!   concurrency limit.
//! * [`observe`]: [`LlmObserver`], told about every call and failed
//!   enrichment, so the application can keep metrics without this crate
//!   depending on a metrics library.
//! * `test_server` (feature `test-server`): a scriptable local server speaking
//!   both protocols, for this crate's tests and the application's.

pub mod config;
pub mod enricher;
pub mod error;
pub mod observe;
pub mod prompt;
pub mod provider;
pub mod validate;

#[cfg(feature = "test-server")]
pub mod test_server;

pub use config::{LlmConfig, ProviderKind};
pub use enricher::{AttemptRecord, EnrichOutcome, EnrichStats, Enricher, Transcript};
pub use error::{ConfigError, LlmError};
pub use observe::{CallEvent, CallOutcome, LlmObserver};
pub use prompt::{build_prompt, output_schema, Prompt};
pub use provider::{
    build_provider, ChatMessage, ChatRequest, ChatResponse, HealthState, ModelStatus,
    OllamaProvider, OpenAiProvider, Provider, Role,
};
pub use validate::{validate, Field, Problem, ValidOutput, ValidationError};
