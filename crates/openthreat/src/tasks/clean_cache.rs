//! `backend.tasks.clean_cache_task()`: deletes cache entries older than 24 h,
//! so stale statistics and searches never outlive a day.

use chrono::{Duration, Utc};
use openthreat_queue::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::AppContext;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CleanCache {}

impl Task for CleanCache {
    const NAME: &'static str = "backend.tasks.clean_cache_task";
    type Context = AppContext;
    type Output = Value;

    async fn run(self, ctx: TaskContext<AppContext>) -> Result<Value, TaskError> {
        let deleted = ctx
            .app()
            .store
            .clean_cache(Utc::now() - Duration::hours(24))
            .await
            .map_err(TaskError::retry)?;
        Ok(json!({ "status": "success", "deleted": deleted }))
    }
}
