//! `tasks.process_llm_queue(batch_size, priority)`: claim the highest-scored
//! unprocessed CVEs of one class (or `all`) and queue one
//! `tasks.process_cve_with_llm` each, high-priority ones first.
//!
//! # Draining a backlog
//!
//! Beat fires these batches every 10 minutes to 2 hours (10, 20 and 50
//! CVEs): about 130 CVEs an hour, while one LLM slot at 5 s an answer does
//! 720, and a first install has hundreds of thousands pending. So a batch
//! that finds its claim full also queues a follow-up of itself among its
//! CVE tasks (see [`enrich::queue_batch`]), which does the same: a *chain*
//! that keeps the LLM busy, paced by how fast answers come back, until the
//! class has no backlog (a batch comes back short), the LLM is down (the
//! batch is skipped), or `OPENTHREAT_LLM_DRAIN=false` asks for the
//! original's one batch per tick.
//!
//! One chain per class: the running chain's id and last beat are kept in
//! the store's state (`llm.chain.<class>`). A batch from beat or a caller
//! starts a chain only when no chain of its class has been seen for a claim's
//! length ([`enrich::claim_for`]), so ticks do not pile up chains; a follow-up
//! continues only while the id is its own, so a chain replaced after a
//! stall ends at its next step. The check and the write are not atomic: two
//! heads racing can both start, and the one whose id was overwritten ends at
//! its next step.

use chrono::{DateTime, Utc};
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
    /// Set on the follow-up a batch queues: the chain it continues. Absent
    /// from beat and from Python callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
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
        if !drain_enabled(app) {
            return run_batch(app, &claim, None).await;
        }
        let chain = Chain::new(claim.priority.map_or("all", |p| p.as_str()));
        let Some(id) = chain
            .take_turn(app, self.chain.as_deref(), &ctx.request().id)
            .await
        else {
            // Another chain serves this class: just this batch, as beat asked.
            return run_batch(app, &claim, None).await;
        };
        let next = ProcessLlmQueue {
            chain: Some(id.clone()),
            ..self
        };
        let result = run_batch(app, &claim, Some(&next)).await;
        // A batch that will be retried keeps the chain: its retry continues it.
        if let Ok(v) = &result {
            if !v.get("follow_up").is_some_and(Value::is_string) {
                chain.end(app, &id).await;
            }
        }
        result
    }
}

/// `OPENTHREAT_LLM_DRAIN` (default on): whether full batches queue follow-ups.
fn drain_enabled(app: &AppContext) -> bool {
    !app.config.env.get("OPENTHREAT_LLM_DRAIN").is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        )
    })
}

/// The store's record of the chain serving one priority class.
struct Chain {
    key: String,
}

impl Chain {
    fn new(class: &str) -> Self {
        Chain {
            key: format!("llm.chain.{class}"),
        }
    }

    /// The running chain's id and last step, if any.
    async fn current(&self, app: &AppContext) -> Option<(String, DateTime<Utc>)> {
        let value = match app.store.get_state(&self.key).await {
            Ok(v) => v?,
            Err(e) => {
                tracing::warn!(key = %self.key, "cannot read the LLM chain state: {e}");
                return None;
            }
        };
        let (id, at) = value.split_once(' ')?;
        let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
        Some((id.to_string(), at))
    }

    /// Whether this batch may queue a follow-up, and under which chain id:
    /// a follow-up continues its own chain; another batch starts one (named
    /// after its task id) when none has stepped within a claim's length.
    /// Records the step.
    async fn take_turn(
        &self,
        app: &AppContext,
        mine: Option<&str>,
        task_id: &str,
    ) -> Option<String> {
        let now = Utc::now();
        let current = self.current(app).await;
        let id = match (mine, current) {
            (Some(mine), Some((running, _))) if running == mine => mine.to_string(),
            (Some(_), _) => return None,
            (None, Some((_, at))) if now - at < enrich::claim_for() => return None,
            (None, _) => task_id.to_string(),
        };
        let value = format!("{id} {}", now.to_rfc3339());
        if let Err(e) = app.store.set_state(&self.key, &value, now).await {
            tracing::warn!(key = %self.key, "cannot record the LLM chain: {e}");
            return None;
        }
        Some(id)
    }

    /// Ends the chain `id` (backlog done, LLM down or an error), unless
    /// another chain has replaced it meanwhile, so the next batch may start
    /// one at once.
    async fn end(&self, app: &AppContext, id: &str) {
        if self
            .current(app)
            .await
            .is_some_and(|(running, _)| running == id)
        {
            if let Err(e) = app.store.set_state(&self.key, "", Utc::now()).await {
                tracing::warn!(key = %self.key, "cannot end the LLM chain: {e}");
            }
        }
    }
}

/// Shared by the batch tasks: queue a claim (with a follow-up batch task
/// when given), map errors to retries.
pub(crate) async fn run_batch(
    app: &AppContext,
    claim: &openthreat_store::LlmClaim,
    follow_up: Option<&ProcessLlmQueue>,
) -> Result<Value, TaskError> {
    let outcome = enrich::queue_batch(&app.store, &app.enricher, &app.producer, claim, follow_up)
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
