//! `tasks.get_llm_stats()`: enrichment progress, read by `/api/v1/llm/stats`
//! through the result backend and by the original's scripts.

use openthreat_queue::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppContext;
use crate::enrich;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct GetLlmStats {}

impl Task for GetLlmStats {
    const NAME: &'static str = "tasks.get_llm_stats";
    type Context = AppContext;
    type Output = Value;

    async fn run(self, ctx: TaskContext<AppContext>) -> Result<Value, TaskError> {
        enrich::stats_json(ctx.app().store.as_ref())
            .await
            .map_err(TaskError::retry)
    }
}
