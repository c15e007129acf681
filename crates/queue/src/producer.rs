//! Sending tasks, by name (like Python's `app.send_task`) or typed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::backend::{ResultBackend, State, TaskMeta};
use crate::broker::Broker;
use crate::control::events::fields;
use crate::control::EventDispatcher;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::task::Task;

/// Per-send options, the ones `celery call` / `apply_async` know.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Queue (routing key); default `celery`.
    pub queue: Option<String>,
    /// Run no earlier than this many seconds from now.
    pub countdown: Option<Duration>,
    /// Run no earlier than this instant (wins over `countdown`).
    pub eta: Option<DateTime<Utc>>,
    /// Revoke if not started within this long from now.
    pub expires: Option<Duration>,
    /// 0..=9; 0 is consumed first on Redis.
    pub priority: Option<u8>,
    /// Use this task id instead of a fresh UUID.
    pub task_id: Option<String>,
    /// Hard time limit for this call.
    pub time_limit: Option<Duration>,
    /// Soft time limit for this call.
    pub soft_time_limit: Option<Duration>,
    /// Ask the worker not to store a result.
    pub ignore_result: Option<bool>,
}

impl SendOptions {
    /// Options with just a queue set.
    pub fn queue(queue: impl Into<String>) -> Self {
        SendOptions {
            queue: Some(queue.into()),
            ..Default::default()
        }
    }
}

/// Publishes tasks and hands back handles to their results.
#[derive(Debug, Clone)]
pub struct Producer {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    events: Option<Arc<EventDispatcher>>,
}

impl Producer {
    /// A producer over `broker`, reading results from `backend`.
    pub fn new(broker: Arc<dyn Broker>, backend: Arc<dyn ResultBackend>) -> Self {
        Producer {
            broker,
            backend,
            events: None,
        }
    }

    /// Also sends a `task-sent` event for every task published (Celery's
    /// `task_send_sent_event`), so monitors see tasks before a worker takes them.
    pub fn with_sent_events(mut self, events: Arc<EventDispatcher>) -> Self {
        self.events = Some(events);
        self
    }

    /// Sends task `name` with Python-style `args` and `kwargs`.
    pub async fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Result<AsyncResult> {
        let id = options
            .task_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let queue = options.queue.as_deref().unwrap_or("celery");
        let mut m = Message::new(name, &id, args, kwargs, queue);
        let now = Utc::now();
        m.headers.eta = options.eta.or_else(|| {
            options
                .countdown
                .and_then(|c| chrono::Duration::from_std(c).ok())
                .map(|c| now + c)
        });
        m.headers.expires = options
            .expires
            .and_then(|e| chrono::Duration::from_std(e).ok())
            .map(|e| now + e);
        if let Some(e) = options.expires {
            // AMQP per-message TTL in ms, as Celery writes it next to the header.
            m.properties.extra.insert(
                "expiration".into(),
                Value::String(e.as_millis().to_string()),
            );
        }
        m.headers.timelimit = (
            options.time_limit.map(|d| d.as_secs_f64()),
            options.soft_time_limit.map(|d| d.as_secs_f64()),
        );
        m.headers.ignore_result = options.ignore_result;
        m.properties.priority = Some(options.priority.unwrap_or(0).min(9));
        self.broker.publish(&m).await?;
        if let Some(ev) = &self.events {
            ev.send(
                "task-sent",
                fields([
                    ("uuid", json!(id)),
                    ("root_id", json!(m.headers.root_id)),
                    ("parent_id", json!(m.headers.parent_id)),
                    ("name", json!(name)),
                    ("args", json!(m.headers.argsrepr)),
                    ("kwargs", json!(m.headers.kwargsrepr)),
                    ("retries", json!(0)),
                    ("eta", json!(m.headers.eta.map(|t| t.to_rfc3339()))),
                    ("expires", json!(m.headers.expires.map(|t| t.to_rfc3339()))),
                    ("queue", json!(queue)),
                    ("exchange", json!("")),
                    ("routing_key", json!(queue)),
                ]),
            );
        }
        Ok(self.result(&id))
    }

    /// Sends a typed task with its own defaults (queue, priority); `options`
    /// overrides them. Arguments travel as kwargs.
    pub async fn enqueue<T: Task>(
        &self,
        task: &T,
        mut options: SendOptions,
    ) -> Result<AsyncResult> {
        let kwargs = match serde_json::to_value(task)? {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(Error::Protocol(format!(
                    "task {} must serialize to an object, not {other}",
                    T::NAME
                )))
            }
        };
        options.queue.get_or_insert_with(|| T::QUEUE.to_owned());
        options.priority.get_or_insert(T::PRIORITY);
        self.send_task(T::NAME, Vec::new(), kwargs, options).await
    }

    /// A handle on the result of an already sent task.
    pub fn result(&self, task_id: &str) -> AsyncResult {
        AsyncResult {
            id: task_id.to_owned(),
            backend: self.backend.clone(),
        }
    }

    /// The broker, for purge and queue lengths.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }
}

/// A handle on one task's result, like Python's `AsyncResult`.
#[derive(Debug, Clone)]
pub struct AsyncResult {
    id: String,
    backend: Arc<dyn ResultBackend>,
}

impl AsyncResult {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The current state (PENDING when nothing is stored).
    pub async fn state(&self) -> Result<State> {
        Ok(self
            .backend
            .get(&self.id)
            .await?
            .map(|m| m.status)
            .unwrap_or(State::Pending))
    }

    /// The stored meta, if any.
    pub async fn meta(&self) -> Result<Option<TaskMeta>> {
        self.backend.get(&self.id).await
    }

    /// Waits for the task to finish: its return value on SUCCESS,
    /// [`Error::TaskFailed`] on FAILURE/REVOKED, [`Error::Timeout`] otherwise.
    pub async fn get(&self, timeout: Duration) -> Result<Value> {
        let meta = self.backend.wait(&self.id, timeout).await?;
        match meta.status {
            State::Success => Ok(meta.result),
            _ => Err(meta.error()),
        }
    }
}
