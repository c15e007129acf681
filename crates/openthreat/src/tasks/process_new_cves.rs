//! `tasks.process_new_cves()`: every 5 minutes, the top 20 unprocessed CVEs
//! added in the last hour, so a fresh CVE gets its explanation without
//! waiting for its class's batch.

use openthreat_queue::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::process_llm_queue::run_batch;
use super::AppContext;
use crate::enrich;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ProcessNewCves {}

impl Task for ProcessNewCves {
    const NAME: &'static str = "tasks.process_new_cves";
    type Context = AppContext;
    type Output = Value;

    async fn run(self, ctx: TaskContext<AppContext>) -> Result<Value, TaskError> {
        run_batch(ctx.app(), &enrich::new_cves_claim(), None).await
    }
}
