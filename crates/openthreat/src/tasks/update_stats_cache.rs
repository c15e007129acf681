//! `backend.tasks.update_stats_cache_task()`: recomputes the statistics the
//! API serves and stores them in the stats cache, so `/stats` stays fast on
//! hundreds of thousands of CVEs.

use chrono::Utc;
use openthreat_queue::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::AppContext;
use crate::stats;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct UpdateStatsCache {}

impl Task for UpdateStatsCache {
    const NAME: &'static str = "backend.tasks.update_stats_cache_task";
    type Context = AppContext;
    type Output = Value;

    async fn run(self, ctx: TaskContext<AppContext>) -> Result<Value, TaskError> {
        let now = Utc::now();
        let store = &ctx.app().store;
        // Recency decays, so priorities are refreshed with the statistics.
        let reprioritised = store
            .recompute_priorities(now)
            .await
            .map_err(TaskError::retry)?;
        let keys = stats::refresh(store.as_ref(), now)
            .await
            .map_err(TaskError::retry)?;
        Ok(json!({ "status": "success", "cached": keys, "reprioritised": reprioritised }))
    }
}
