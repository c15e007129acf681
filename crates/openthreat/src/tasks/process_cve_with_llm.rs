//! `tasks.process_cve_with_llm(cve_id)`: enrich one CVE.
//!
//! Retries (3, backoff 60/120/240 s: the [`Task`] defaults) only when the
//! LLM or the database is down; a rejected answer is a counted attempt and
//! a normal result, so a bad CVE is parked instead of retried for ever.

use chrono::{DateTime, Utc};
use openthreat_queue::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppContext;
use crate::enrich::{self, EnrichError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessCveWithLlm {
    pub cve_id: String,
    /// The claim a batch set on this CVE, so that this task (and no other)
    /// may take it before the claim expires. Absent from Python callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_until: Option<DateTime<Utc>>,
}

impl Task for ProcessCveWithLlm {
    const NAME: &'static str = "tasks.process_cve_with_llm";
    const ARGS: &'static [&'static str] = &["cve_id", "claimed_until"];
    type Context = AppContext;
    type Output = Value;

    async fn run(self, ctx: TaskContext<AppContext>) -> Result<Value, TaskError> {
        let app = ctx.app();
        let id = enrich::parse_id(&self.cve_id)
            .map_err(|e| TaskError::fail("ValueError", e.to_string()))?;
        match enrich::process_one(app.store.as_ref(), &app.enricher, &id, self.claimed_until).await
        {
            Ok(outcome) => Ok(outcome.to_json()),
            Err(e) if e.is_retryable() => {
                // One line per CVE and attempt, no stack trace: an LLM that is
                // down is an operating condition, not a bug.
                tracing::warn!(
                    cve = %id,
                    retries = ctx.request().retries,
                    "LLM enrichment postponed: {e}"
                );
                Err(TaskError::retry(e))
            }
            Err(e @ (EnrichError::InvalidId(_) | EnrichError::NotFound(_))) => {
                Err(TaskError::fail("ValueError", e.to_string()))
            }
            Err(e) => {
                tracing::warn!(cve = %id, "LLM enrichment failed: {e}");
                Err(TaskError::fail("RuntimeError", e.to_string()))
            }
        }
    }
}
