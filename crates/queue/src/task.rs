//! What a task is: a serde struct that is its own payload.
//!
//! Positional arguments from Python (`send_task("x", args=[1, 2])`) are mapped
//! onto the struct's fields by the names in [`Task::ARGS`]; keyword arguments
//! by their own names. Per-task defaults (queue, retries, limits, rate) are
//! associated constants so the registry reads them without an instance.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

/// A task type. Implement it on the struct that carries the task's arguments.
///
/// ```ignore
/// #[derive(Serialize, Deserialize)]
/// struct Add { a: i64, b: i64 }
/// impl Task for Add {
///     const NAME: &'static str = "tests.add";
///     const ARGS: &'static [&'static str] = &["a", "b"];
///     type Context = ();
///     type Output = i64;
///     async fn run(self, _ctx: TaskContext<()>) -> Result<i64, TaskError> { Ok(self.a + self.b) }
/// }
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// The Celery task name, e.g. `tasks.process_cve_with_llm`.
    const NAME: &'static str;
    /// Field names in positional order, so Python's `args=[...]` can be mapped.
    const ARGS: &'static [&'static str] = &[];
    /// Queue the producer sends to by default (Celery's default queue).
    const QUEUE: &'static str = "celery";
    /// Retries allowed before the task is recorded as FAILURE.
    const MAX_RETRIES: u32 = 3;
    /// Delay before retry `n` (0-based) is `RETRY_BACKOFF * 2^n`, minus up to
    /// a quarter of random jitter so a burst of failures does not retry in lockstep.
    const RETRY_BACKOFF: Duration = Duration::from_secs(60);
    /// When this passes, the task's cancellation token fires.
    const SOFT_TIME_LIMIT: Option<Duration> = Some(Duration::from_secs(3300));
    /// When this passes, the task is aborted and recorded as failed.
    const TIME_LIMIT: Option<Duration> = Some(Duration::from_secs(3600));
    /// Celery rate string: `"10/m"`, `"5/s"`, `"100/h"`, or a bare number per second.
    const RATE_LIMIT: Option<&'static str> = None;
    /// Default message priority, 0..=9 (0 is consumed first on Redis).
    const PRIORITY: u8 = 0;
    /// Do not store a result.
    const IGNORE_RESULT: bool = false;

    /// What the app hands every task (a store handle, clients, configuration).
    type Context: Clone + Send + Sync + 'static;
    /// The result, stored as JSON.
    type Output: Serialize + Send;

    /// Runs the task. Long-running work should watch `ctx.cancelled()` (soft
    /// time limit) and move blocking work to `tokio::task::spawn_blocking`.
    ///
    /// At the hard time limit the future is dropped at its next `.await`: the
    /// task is recorded as failed and its slot freed. A blocking closure
    /// already running on the blocking pool cannot be stopped that way; pass it
    /// [`TaskContext::cancellation_token`] and have it check now and then.
    fn run(
        self,
        ctx: TaskContext<Self::Context>,
    ) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;
}

/// Per-request information and the app's context, handed to [`Task::run`].
#[derive(Debug, Clone)]
pub struct TaskContext<C> {
    app: C,
    request: Arc<RequestInfo>,
    cancel: CancellationToken,
}

/// Facts about the message being executed.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// Task id.
    pub id: String,
    /// Task name.
    pub name: String,
    /// Retries so far.
    pub retries: u32,
    /// Queue it came from.
    pub queue: String,
    /// Worker hostname.
    pub hostname: String,
}

impl<C> TaskContext<C> {
    pub(crate) fn new(app: C, request: Arc<RequestInfo>, cancel: CancellationToken) -> Self {
        TaskContext {
            app,
            request,
            cancel,
        }
    }
    /// The app's context.
    pub fn app(&self) -> &C {
        &self.app
    }
    /// The request being run.
    pub fn request(&self) -> &RequestInfo {
        &self.request
    }
    /// True once the soft time limit has passed (or the task was revoked).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
    /// Resolves when the soft time limit passes; select on it in long loops.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
    /// The token itself, to pass into blocking code.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// A Python-style exception description: what a Python `AsyncResult.get()`
/// re-raises. `exc_module` `builtins` makes `ValueError` a real `ValueError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Exception class name.
    pub exc_type: String,
    /// Module the class lives in.
    pub exc_module: String,
    /// Message (Celery stores the exception's args; we store one string).
    pub message: String,
}

impl Failure {
    /// `exc_type` may be qualified (`mypkg.errors.Boom`); a bare name is a builtin.
    pub fn new(exc_type: &str, message: impl Into<String>) -> Self {
        let (module, ty) = match exc_type.rsplit_once('.') {
            Some((m, t)) => (m.to_owned(), t.to_owned()),
            None => ("builtins".to_owned(), exc_type.to_owned()),
        };
        Failure {
            exc_type: ty,
            exc_module: module,
            message: message.into(),
        }
    }
}

/// How a task run ended when it did not succeed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TaskError {
    /// Try again later (same task id, `retries + 1`), after `countdown` or the
    /// task's backoff. Once retries are exhausted the failure is recorded.
    Retry {
        /// Explicit delay; `None` uses the exponential backoff.
        countdown: Option<Duration>,
        /// What went wrong this time.
        failure: Failure,
    },
    /// Give up: record FAILURE.
    Fail(Failure),
}

impl TaskError {
    /// Fail with a Python exception type, e.g. `TaskError::fail("ValueError", "bad id")`.
    pub fn fail(exc_type: &str, message: impl Into<String>) -> Self {
        TaskError::Fail(Failure::new(exc_type, message))
    }
    /// Retry with backoff because of `err`.
    pub fn retry(err: impl std::fmt::Display) -> Self {
        TaskError::Retry {
            countdown: None,
            failure: Failure::new("Exception", err.to_string()),
        }
    }
    /// Retry after an explicit delay.
    pub fn retry_after(countdown: Duration, err: impl std::fmt::Display) -> Self {
        TaskError::Retry {
            countdown: Some(countdown),
            failure: Failure::new("Exception", err.to_string()),
        }
    }
}

/// Any `anyhow` error from a task body fails the task as a Python `Exception`
/// (with the whole error chain as the message).
impl From<anyhow::Error> for TaskError {
    fn from(e: anyhow::Error) -> Self {
        TaskError::Fail(Failure::new("Exception", format!("{e:#}")))
    }
}

/// Builds the struct's JSON from Celery's `args` + `kwargs`.
///
/// Why not deserialize args as a sequence: Python callers mix positional and
/// keyword arguments freely, so both are merged into one object by name.
pub(crate) fn arguments_object(
    names: &[&str],
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> Result<Value, String> {
    if args.len() > names.len() {
        return Err(format!(
            "takes {} positional arguments but {} were given",
            names.len(),
            args.len()
        ));
    }
    let mut obj = Map::new();
    for (name, v) in names.iter().zip(args) {
        obj.insert((*name).to_owned(), v.clone());
    }
    for (k, v) in kwargs {
        if obj.contains_key(k) {
            return Err(format!("got multiple values for argument {k:?}"));
        }
        obj.insert(k.clone(), v.clone());
    }
    Ok(Value::Object(obj))
}

/// Parses a Celery rate limit into "one token every `interval`".
pub(crate) fn parse_rate(rate: &str) -> Option<Duration> {
    let (n, unit) = match rate.split_once('/') {
        Some((n, u)) => (n.trim(), u.trim()),
        None => (rate.trim(), "s"),
    };
    let n: f64 = n.parse().ok()?;
    if n <= 0.0 {
        return None;
    }
    let per = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(per / n))
}

/// Nominal `base * 2^retries`, reduced by up to 25 % random jitter.
pub(crate) fn backoff(base: Duration, retries: u32) -> Duration {
    let nominal = base.saturating_mul(2u32.saturating_pow(retries.min(16)));
    let jitter: f64 = rand::random::<f64>() * 0.25;
    nominal.mul_f64(1.0 - jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_positional_and_keyword() {
        let kw = json!({"b": 2}).as_object().unwrap().clone();
        let v = arguments_object(&["a", "b"], &[json!(1)], &kw).unwrap();
        assert_eq!(v, json!({"a": 1, "b": 2}));
        assert!(arguments_object(&["a"], &[json!(1), json!(2)], &Map::new()).is_err());
        let kw = json!({"a": 2}).as_object().unwrap().clone();
        assert!(arguments_object(&["a"], &[json!(1)], &kw).is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10/m"), Some(Duration::from_secs(6)));
        assert_eq!(parse_rate("2/s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_rate("4"), Some(Duration::from_millis(250)));
        assert_eq!(parse_rate("1/h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_rate("x/m"), None);
    }

    #[test]
    fn backoff_grows_with_jitter_below_nominal() {
        for n in 0..3 {
            let nominal = Duration::from_secs(60 * 2u64.pow(n));
            let d = backoff(Duration::from_secs(60), n);
            assert!(d <= nominal && d >= nominal.mul_f64(0.75), "{d:?}");
        }
    }
}
