//! `backend.tasks.test_task(message)`: the original's diagnostic task, to
//! check end to end that a producer reaches a worker and a result comes back.

use chrono::Utc;
use openthreat_queue::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::AppContext;

#[derive(Debug, Serialize, Deserialize)]
pub struct TestTask {
    #[serde(default = "default_message")]
    pub message: String,
}

fn default_message() -> String {
    "Hello from OpenThreat".into()
}

impl Task for TestTask {
    const NAME: &'static str = "backend.tasks.test_task";
    const ARGS: &'static [&'static str] = &["message"];
    type Context = AppContext;
    type Output = Value;

    async fn run(self, _ctx: TaskContext<AppContext>) -> Result<Value, TaskError> {
        Ok(json!({
            "message": self.message,
            "status": "success",
            "timestamp": Utc::now().to_rfc3339(),
        }))
    }
}
