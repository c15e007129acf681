//! What an [`crate::Enricher`] reports about its calls, for the
//! application's metrics.
//!
//! Why a trait and not metrics here: which metrics library a process uses,
//! and under which names, is the application's choice (OpenThreat's is a
//! Prometheus registry served on `/metrics`). The enricher is the one place
//! that sees every call, its time and how it ended, so it tells an
//! [`LlmObserver`] and stays free of a metrics dependency.

use std::fmt;
use std::time::Duration;

use crate::config::ProviderKind;
use crate::error::LlmError;

/// How one chat call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Answered, and the answer passed validation.
    Valid,
    /// Answered, but the answer failed validation (a repair follows, or the
    /// enrichment fails as `bad_output`).
    Invalid,
    /// No usable answer; the error's [`LlmError::kind`].
    Failed(&'static str),
}

impl CallOutcome {
    /// A short stable label: `valid`, `invalid`, or the error kind
    /// (`unreachable`, `model_missing`, `transient`, `rejected`, `config`).
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Valid => "valid",
            CallOutcome::Invalid => "invalid",
            CallOutcome::Failed(kind) => kind,
        }
    }
}

/// One finished chat call.
#[derive(Debug, Clone, Copy)]
pub struct CallEvent<'a> {
    pub provider: ProviderKind,
    pub model: &'a str,
    /// Wall time of the call, without waiting for a concurrency permit.
    pub elapsed: Duration,
    pub outcome: CallOutcome,
}

/// Receives the enricher's events. Called inline on the enrichment's task,
/// so implementations must be quick and must not block (update a counter,
/// no I/O).
pub trait LlmObserver: Send + Sync + fmt::Debug {
    /// A chat call finished, answered or not.
    fn call(&self, event: &CallEvent<'_>);

    /// An enrichment failed: `error` is what [`crate::Enricher::enrich`]
    /// returns (for rejected answers, `bad_output` after the repair attempt).
    fn failure(&self, provider: ProviderKind, model: &str, error: &LlmError);
}
