//! Task name → how to decode and run it, built by one generic function per type.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::task::{arguments_object, parse_rate, Task, TaskContext, TaskError};

/// A decoded task, ready to run with its context.
pub(crate) type Job<C> =
    Box<dyn FnOnce(TaskContext<C>) -> BoxFuture<'static, Result<Value, TaskError>> + Send>;

/// Per-task settings, read from the task type's constants at registration.
#[derive(Debug, Clone)]
pub(crate) struct TaskOptions {
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub soft_time_limit: Option<Duration>,
    pub time_limit: Option<Duration>,
    /// One token every this long.
    pub rate_interval: Option<Duration>,
    pub ignore_result: bool,
}

/// Decodes Celery's `args` + `kwargs` into a job, or says why it cannot.
pub(crate) type Prepare<C> = fn(&[Value], &Map<String, Value>) -> Result<Job<C>, String>;

pub(crate) struct Entry<C> {
    pub options: TaskOptions,
    pub prepare: Prepare<C>,
}

/// The task types a worker runs.
pub(crate) struct Registry<C> {
    entries: HashMap<&'static str, Entry<C>>,
}

impl<C> std::fmt::Debug for Registry<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

impl<C: Clone + Send + Sync + 'static> Registry<C> {
    pub fn new() -> Self {
        Registry {
            entries: HashMap::new(),
        }
    }

    pub fn register<T: Task<Context = C>>(&mut self) {
        let options = TaskOptions {
            max_retries: T::MAX_RETRIES,
            retry_backoff: T::RETRY_BACKOFF,
            soft_time_limit: T::SOFT_TIME_LIMIT,
            time_limit: T::TIME_LIMIT,
            rate_interval: T::RATE_LIMIT.and_then(|r| {
                let parsed = parse_rate(r);
                if parsed.is_none() {
                    tracing::warn!(task = T::NAME, rate = r, "ignoring unparsable rate limit");
                }
                parsed
            }),
            ignore_result: T::IGNORE_RESULT,
        };
        self.entries.insert(
            T::NAME,
            Entry {
                options,
                prepare: prepare::<T>,
            },
        );
    }

    pub fn get(&self, name: &str) -> Option<&Entry<C>> {
        self.entries.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.keys().map(|s| (*s).to_owned()).collect();
        v.sort();
        v
    }
}

/// Decodes `T` from Celery's args/kwargs and wraps its `run` into a [`Job`].
fn prepare<T: Task>(
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> Result<Job<T::Context>, String> {
    let value = if T::ARGS.is_empty() && !args.is_empty() && kwargs.is_empty() {
        // No names declared: serde maps a JSON array onto fields in order.
        Value::Array(args.to_vec())
    } else {
        arguments_object(T::ARGS, args, kwargs)?
    };
    let task: T = match serde_json::from_value(value.clone()) {
        Ok(t) => t,
        // A unit struct deserializes from null, not from `{}`.
        Err(e) if value.as_object().is_some_and(Map::is_empty) => {
            serde_json::from_value(Value::Null).map_err(|_| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    Ok(Box::new(move |ctx| {
        Box::pin(async move {
            let out = task.run(ctx).await?;
            serde_json::to_value(out)
                .map_err(|e| TaskError::fail("TypeError", format!("result is not JSON: {e}")))
        })
    }))
}
