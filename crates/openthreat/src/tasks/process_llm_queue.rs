//! `tasks.process_llm_queue(batch_size, priority)`: claim the highest-scored
//! unprocessed CVEs of one class (or `all`) and queue one
//! `tasks.process_cve_with_llm` each, high-priority ones first.

use openthreat_queue::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppContext;
use crate::enrich;

/// Largest batch accepted: one beat tick should not claim more than a
/// worker can enrich before the claims expire.
pub const MAX_BATCH: u32 = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessLlmQueue {
    #[serde(default = "default_batch")]
    pub batch_size: i64,
    #[serde(default = "default_priority")]
    pub priority: String,
}

fn default_batch() -> i64 {
    10
}

fn default_priority() -> String {
    "high".into()
}

impl Task for ProcessLlmQueue {
    const NAME: &'static str = "tasks.process_llm_queue";
    const ARGS: &'static [&'static str] = &["batch_size", "priority"];
    type Context = AppContext;
    type Output = Value;

    async fn run(self, ctx: TaskContext<AppContext>) -> Result<Value, TaskError> {
        if !(1..=i64::from(MAX_BATCH)).contains(&self.batch_size) {
            return Err(TaskError::fail(
                "ValueError",
                format!(
                    "batch_size must be between 1 and {MAX_BATCH}, got {}",
                    self.batch_size
                ),
            ));
        }
        let priority =
            enrich::parse_priority(&self.priority).map_err(|e| TaskError::fail("ValueError", e))?;
        let app = ctx.app();
        let claim = enrich::batch_claim(priority, self.batch_size as u32);
        run_batch(app, &claim).await
    }
}

/// Shared by the batch tasks: queue a claim, map errors to retries.
pub(crate) async fn run_batch(
    app: &AppContext,
    claim: &openthreat_store::LlmClaim,
) -> Result<Value, TaskError> {
    let outcome = enrich::queue_batch(&app.store, &app.enricher, &app.producer, claim)
        .await
        .map_err(|e| {
            tracing::warn!("LLM batch failed: {e}");
            TaskError::retry(e)
        })?;
    if let enrich::BatchOutcome::Skipped { reason, .. } = &outcome {
        // One line per skipped batch, not one per CVE: the CLI prints its own.
        tracing::warn!("LLM batch skipped: {reason}");
    }
    serde_json::to_value(outcome).map_err(|e| TaskError::fail("RuntimeError", e.to_string()))
}
