//! A Celery-compatible task queue: Python producers, `celery inspect` and
//! Flower see our Rust workers as Celery workers, because they speak Celery's
//! message protocol v2 (JSON only, never pickle) over kombu's Redis layout.
//! For single-machine installs the same semantics run on an SQLite file.
//!
//! This crate knows nothing about CVEs: the application registers its task
//! types and supplies their context.
//!
//! ```ignore
//! let broker = connect_broker("redis://127.0.0.1/0").await?;
//! let backend = connect_backend("redis://127.0.0.1/0").await?;
//! Worker::builder(broker.clone(), backend.clone(), app_ctx)
//!     .register::<ProcessNewCves>()
//!     .concurrency(8)
//!     .build()
//!     .run(shutdown_signal())
//!     .await?;
//!
//! let producer = Producer::new(broker, backend);
//! let res = producer.send_task("tasks.get_llm_stats", vec![], Map::new(), SendOptions::default()).await?;
//! let value = res.get(Duration::from_secs(10)).await?;
//! ```
//!
//! # Layout
//!
//! * [`message`]: protocol v2 envelope, headers, properties, body; encode/decode.
//! * [`task`]: the [`Task`] trait (a serde struct that is its own payload),
//!   [`TaskContext`], [`TaskError`].
//! * [`broker`]: the [`Broker`] trait; [`broker::redis`] (kombu layout, ack
//!   emulation, visibility-timeout restore, ETA handling) and
//!   [`broker::sqlite`] (leased rows).
//! * [`backend`]: the [`ResultBackend`] trait and Celery's result meta;
//!   Redis (`celery-task-meta-<id>`, SETEX + PUBLISH) and SQLite.
//! * [`producer`]: [`Producer::send_task`] and [`AsyncResult`].
//! * [`worker`]: [`Worker`], its builder, its shared [`WorkerState`], the
//!   registry and rate limits.
//! * `beat`: the periodic scheduler.
//! * [`connect_broker`] / [`connect_backend`]: pick an implementation by URL.

use std::sync::Arc;

pub mod backend;
pub mod beat;
pub mod broker;
mod error;
pub mod message;
pub mod producer;
pub mod task;
pub mod worker;

pub use backend::{ResultBackend, State, TaskMeta};
pub use broker::{Broker, DeadLetter};
pub use error::{Error, Result};
pub use producer::{AsyncResult, Producer, SendOptions};
pub use task::{Task, TaskContext, TaskError};
pub use worker::{Worker, WorkerState};

/// Connects to the broker at `url`: `redis://` / `rediss://` (an optional
/// `?global_keyprefix=...` query sets kombu's key prefix) or `sqlite:path`.
pub async fn connect_broker(url: &str) -> Result<Arc<dyn Broker>> {
    if is_redis(url) {
        let (url, prefix) = split_prefix(url);
        Ok(Arc::new(
            broker::redis::RedisBroker::connect(&url)
                .await?
                .with_prefix(prefix),
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(broker::sqlite::SqliteBroker::connect(url).await?))
    } else {
        Err(Error::Url(url.to_owned()))
    }
}

/// Connects to the result backend at `url` (same schemes as [`connect_broker`]).
pub async fn connect_backend(url: &str) -> Result<Arc<dyn ResultBackend>> {
    if is_redis(url) {
        let (url, prefix) = split_prefix(url);
        Ok(Arc::new(
            backend::redis::RedisBackend::connect(&url)
                .await?
                .with_prefix(prefix),
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(
            backend::sqlite::SqliteBackend::connect(url).await?,
        ))
    } else {
        Err(Error::Url(url.to_owned()))
    }
}

fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://")
}

/// Splits `global_keyprefix=...` off a Redis URL's query string.
fn split_prefix(url: &str) -> (String, String) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), String::new());
    };
    let mut prefix = String::new();
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("global_keyprefix=") {
            Some(p) => {
                prefix = p.to_owned();
                false
            }
            None => true,
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, prefix)
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_from_url() {
        assert_eq!(
            super::split_prefix("redis://h/0"),
            ("redis://h/0".into(), "".into())
        );
        assert_eq!(
            super::split_prefix("redis://h/0?global_keyprefix=t1:"),
            ("redis://h/0".into(), "t1:".into())
        );
    }
}
