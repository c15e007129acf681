//! The one error type the application's tasks act on.

/// Why an LLM call or an enrichment failed.
///
/// The variants are grouped by what the caller should do, not by where the
/// failure happened: the batch tasks skip their run on
/// [`LlmError::is_service_down`], the single-CVE task retries with backoff on
/// [`LlmError::is_retryable`], and [`LlmError::BadOutput`] is recorded as a
/// failed attempt (the application parks a CVE after a few of them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// Nothing answered at the configured address (connection refused, DNS
    /// failure). The CVE stays unprocessed and is picked up again later.
    #[error("LLM server at {url} is unreachable: {reason}")]
    Unreachable {
        /// The server address, with any password redacted.
        url: String,
        reason: String,
    },

    /// The server answered but does not have the model. Retrying does not
    /// help; an operator has to run `fix`.
    #[error("LLM model {model:?} is not available: {fix}")]
    ModelMissing {
        model: String,
        /// What the operator should do, e.g. `ollama pull llama3.2:3b`.
        fix: String,
    },

    /// A failure that may pass by itself: a 5xx answer, a timeout, a
    /// connection dropped mid-answer, an answer that is not the protocol's JSON.
    #[error("LLM call failed (transient): {reason}")]
    Transient { reason: String },

    /// The model answered, but even after one repair attempt its answer did
    /// not pass validation. `reason` names the last problem found.
    #[error("LLM output rejected: {reason}")]
    BadOutput { reason: String },

    /// The server refused the request for a reason other than a missing model
    /// (e.g. 401 for a wrong API key, 400 for a parameter it does not know).
    /// Retrying the same request would fail the same way.
    #[error("LLM server rejected the request (HTTP {status}): {body}")]
    Rejected {
        status: u16,
        /// The start of the answer's body, for the log.
        body: String,
    },

    /// The configuration cannot work (unknown provider, malformed URL, ...).
    #[error("LLM configuration: {0}")]
    Config(#[from] ConfigError),
}

impl LlmError {
    /// Whether trying the same CVE again after a delay may succeed.
    ///
    /// `BadOutput` is deliberately not retryable here: it already had its
    /// repair attempt, and the application counts it as one failed attempt
    /// rather than retrying at once.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LlmError::Unreachable { .. } | LlmError::Transient { .. }
        )
    }

    /// Whether the LLM cannot serve anything right now, so batch tasks should
    /// skip their run instead of queueing work that would fail.
    pub fn is_service_down(&self) -> bool {
        matches!(
            self,
            LlmError::Unreachable { .. } | LlmError::ModelMissing { .. } | LlmError::Config(_)
        )
    }

    /// A short stable name for logs, metrics and the stored `llm_error`.
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Unreachable { .. } => "unreachable",
            LlmError::ModelMissing { .. } => "model_missing",
            LlmError::Transient { .. } => "transient",
            LlmError::BadOutput { .. } => "bad_output",
            LlmError::Rejected { .. } => "rejected",
            LlmError::Config(_) => "config",
        }
    }
}

/// Why an [`crate::LlmConfig`] could not be built from its values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("unknown LLM provider {0:?}: expected \"ollama\" or \"openai\"")]
    UnknownProvider(String),
    #[error("{name} is not a valid URL ({value:?}): {reason}")]
    BadUrl {
        name: &'static str,
        /// The value with any password redacted.
        value: String,
        reason: String,
    },
    #[error("{name} must be {expected}, got {value:?}")]
    BadNumber {
        name: &'static str,
        expected: &'static str,
        value: String,
    },
    #[error("{0} must not be empty")]
    Empty(&'static str),
}
