//! [`QueueGateway`]: the [`TaskGateway`] over the queue crate — its producer
//! (Celery protocol v2 messages on the configured broker), its result backend,
//! the beat schedule in force, and the workers this process can see.
//!
//! Workers: every worker that answers Celery remote control (`inspect stats`,
//! `registered`, `active` over the pidbox) within a second is listed, ours
//! and Python Celery's alike, on any machine sharing the broker. A worker
//! running in this process is also seen directly through its
//! [`WorkerState`], so it is listed even when it has no event transport.

use std::sync::Arc;
use std::time::Duration;

use openthreat_queue::beat::Entry;
use openthreat_queue::control::{Broadcast, Fanout, Mailbox};
use openthreat_queue::{Broker, Producer, ResultBackend, SendOptions, State, WorkerState};
use serde_json::Value;

use super::tasks::{
    GatewayError, ScheduledEntry, TaskGateway, TaskRequest, TaskState, TaskStatus, WorkerInfo,
};

/// The queue Celery producers use when they name none.
const DEFAULT_QUEUE: &str = "celery";

/// The background system as this process reaches it.
#[derive(Debug, Clone)]
pub struct QueueGateway {
    producer: Producer,
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    schedule: Vec<Entry>,
    workers: Vec<Arc<WorkerState>>,
    fanout: Option<Arc<dyn Fanout>>,
}

/// How long `/tasks/workers/status` waits for remote-control replies
/// (Celery's default inspect timeout).
const INSPECT_TIMEOUT: Duration = Duration::from_secs(1);

impl QueueGateway {
    /// A gateway over `broker` and `backend`, reporting `schedule` (the
    /// entries beat runs: the default schedule or the operator's file).
    pub fn new(
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
        schedule: Vec<Entry>,
    ) -> Self {
        QueueGateway {
            producer: Producer::new(broker.clone(), backend.clone()),
            broker,
            backend,
            schedule,
            workers: Vec::new(),
            fanout: None,
        }
    }

    /// Lists the workers that answer remote control over `fanout`.
    pub fn with_fanout(mut self, fanout: Arc<dyn Fanout>) -> Self {
        self.fanout = Some(fanout);
        self
    }

    /// Celery's default queue and every queue the schedule names.
    fn known_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = vec![DEFAULT_QUEUE.to_string()];
        for e in &self.schedule {
            if let Some(q) = &e.options.queue {
                if !queues.contains(q) {
                    queues.push(q.clone());
                }
            }
        }
        queues
    }

    /// Asks every worker `method`; `(hostname, reply)` pairs.
    async fn inspect(&self, method: &str) -> Result<Vec<(String, Value)>, GatewayError> {
        let Some(fanout) = &self.fanout else {
            return Ok(Vec::new());
        };
        let mut b = Broadcast::new(method);
        b.timeout = INSPECT_TIMEOUT;
        Mailbox::new(fanout.clone())
            .broadcast(&b)
            .await
            .map_err(unavailable)
    }

    /// Also reports a worker running in this process.
    pub fn with_local_worker(mut self, state: Arc<WorkerState>) -> Self {
        self.workers.push(state);
        self
    }
}

fn unavailable(e: openthreat_queue::Error) -> GatewayError {
    GatewayError::Unavailable(e.to_string())
}

/// A human description of a schedule entry, from its task and arguments.
fn describe(entry: &Entry) -> String {
    let what = match entry.task.as_str() {
        "tasks.process_new_cves" => "Enrich the CVEs added in the last hour".to_string(),
        "tasks.process_llm_queue" => format!(
            "Enrich up to {} unprocessed {}-priority CVEs",
            entry.kwargs.get("batch_size").unwrap_or(&Value::Null),
            entry
                .kwargs
                .get("priority")
                .and_then(Value::as_str)
                .unwrap_or("any")
        ),
        "backend.tasks.update_vulnerabilities_task" => "NVD incremental sync, KEV and EPSS".into(),
        "backend.tasks.update_stats_cache_task" => "Recompute the statistics cache".into(),
        "backend.tasks.clean_cache_task" => "Delete cache entries older than 24 hours".into(),
        other => format!("Run {other}"),
    };
    if entry.enabled {
        what
    } else {
        format!("{what} (disabled)")
    }
}

#[async_trait::async_trait]
impl TaskGateway for QueueGateway {
    async fn send(&self, task: TaskRequest) -> Result<String, GatewayError> {
        let options = SendOptions {
            priority: task.priority,
            ..SendOptions::default()
        };
        let result = self
            .producer
            .send_task(&task.name, task.args, task.kwargs, options)
            .await
            .map_err(unavailable)?;
        Ok(result.id().to_string())
    }

    async fn status(&self, task_id: &str) -> Result<TaskStatus, GatewayError> {
        let Some(meta) = self.backend.get(task_id).await.map_err(unavailable)? else {
            return Ok(TaskStatus {
                state: TaskState::Pending,
                result: None,
                error: None,
            });
        };
        let state = match meta.status {
            State::Pending => TaskState::Pending,
            State::Started => TaskState::Started,
            State::Retry => TaskState::Retry,
            State::Success => TaskState::Success,
            State::Failure => TaskState::Failure,
            State::Revoked => TaskState::Revoked,
        };
        // Failures carry Celery's {exc_type, exc_message}; show them as one line.
        let error = matches!(
            state,
            TaskState::Failure | TaskState::Retry | TaskState::Revoked
        )
        .then(|| {
            let r = &meta.result;
            let exc_type = r.get("exc_type").and_then(Value::as_str).unwrap_or("Error");
            let message = match r.get("exc_message") {
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| {
                        p.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| p.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            format!("{exc_type}: {message}")
        });
        let result = (state == TaskState::Success).then_some(meta.result);
        Ok(TaskStatus {
            state,
            result,
            error,
        })
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, GatewayError> {
        let (stats, registered, active) = tokio::try_join!(
            self.inspect("stats"),
            self.inspect("registered"),
            self.inspect("active")
        )?;
        let find = |list: &[(String, Value)], name: &str| {
            list.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        };
        let mut out: Vec<WorkerInfo> = stats
            .iter()
            .map(|(name, stats)| WorkerInfo {
                name: name.clone(),
                active_tasks: find(&active, name)
                    .and_then(|a| a.as_array().map(|a| a.len() as u64))
                    .unwrap_or(0),
                registered_tasks: find(&registered, name)
                    .and_then(|r| {
                        r.as_array().map(|a| {
                            a.iter()
                                .filter_map(|t| t.as_str().map(str::to_owned))
                                .collect()
                        })
                    })
                    .unwrap_or_default(),
                stats: stats.clone(),
            })
            .collect();
        let local = self
            .workers
            .iter()
            .filter(|w| !out.iter().any(|o| o.name == w.hostname()))
            .map(|w| {
                let s = w.snapshot();
                WorkerInfo {
                    name: s.hostname.clone(),
                    active_tasks: s.active.len() as u64,
                    registered_tasks: s.registered.clone(),
                    stats: serde_json::json!({
                        "queues": s.queues,
                        "reserved": s.reserved.len(),
                        "scheduled": s.scheduled.len(),
                        "total": s.processed,
                        "started_at": s.started_at,
                    }),
                }
            })
            .collect::<Vec<_>>();
        out.extend(local);
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn scheduled(&self) -> Result<Vec<ScheduledEntry>, GatewayError> {
        Ok(self
            .schedule
            .iter()
            .map(|e| ScheduledEntry {
                name: e.name.clone(),
                task: e.task.clone(),
                schedule: e.schedule.to_string(),
                description: describe(e),
            })
            .collect())
    }

    async fn queue_lengths(&self) -> Result<Vec<(String, u64)>, GatewayError> {
        self.broker
            .queue_lengths(&self.known_queues())
            .await
            .map_err(unavailable)
    }

    async fn priority_lengths(&self) -> Result<Vec<(String, u8, u64)>, GatewayError> {
        self.broker
            .priority_lengths(&self.known_queues())
            .await
            .map_err(unavailable)
    }
}
