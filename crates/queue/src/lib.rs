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
//! * [`control`]: Celery events and remote control (pidbox) over a fanout.
//! * `beat`: the periodic scheduler.
//! * [`connect_broker`] / [`connect_backend`]: pick an implementation by URL.

use std::sync::Arc;

pub mod backend;
pub mod beat;
pub mod broker;
pub mod control;
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

/// Connects to the broker at `url`: `redis://` / `rediss://` or `sqlite:path`.
///
/// Redis URLs may carry kombu transport options in the query string:
/// `global_keyprefix=...` and `visibility_timeout=<seconds>`; SQLite URLs may
/// carry `visibility_timeout` too (other query keys go to the driver).
pub async fn connect_broker(url: &str) -> Result<Arc<dyn Broker>> {
    let opts = UrlOptions::parse(url);
    if is_redis(url) {
        let mut b = broker::redis::RedisBroker::connect(&opts.url)
            .await?
            .with_prefix(opts.prefix);
        if let Some(vt) = opts.visibility_timeout {
            b = b.with_visibility_timeout(vt);
        }
        Ok(Arc::new(b))
    } else if url.starts_with("sqlite:") {
        let mut b = broker::sqlite::SqliteBroker::connect(&opts.url).await?;
        if let Some(vt) = opts.visibility_timeout {
            b = b.with_visibility_timeout(vt);
        }
        Ok(Arc::new(b))
    } else {
        Err(Error::Url(url.to_owned()))
    }
}

/// Connects to the event and remote-control transport at `url` (same
/// schemes and `global_keyprefix` as [`connect_broker`]).
pub async fn connect_fanout(url: &str) -> Result<Arc<dyn control::Fanout>> {
    let opts = UrlOptions::parse(url);
    if is_redis(url) {
        Ok(Arc::new(
            control::RedisFanout::connect(&opts.url, &opts.prefix).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(control::SqliteFanout::connect(&opts.url).await?))
    } else {
        Err(Error::Url(url.to_owned()))
    }
}

/// Connects to the result backend at `url` (same schemes and
/// `global_keyprefix` as [`connect_broker`]).
pub async fn connect_backend(url: &str) -> Result<Arc<dyn ResultBackend>> {
    let opts = UrlOptions::parse(url);
    if is_redis(url) {
        Ok(Arc::new(
            backend::redis::RedisBackend::connect(&opts.url)
                .await?
                .with_prefix(opts.prefix),
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(
            backend::sqlite::SqliteBackend::connect(&opts.url).await?,
        ))
    } else {
        Err(Error::Url(url.to_owned()))
    }
}

fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://")
}

/// Our transport options, split off a URL's query string.
#[derive(Debug, PartialEq)]
struct UrlOptions {
    url: String,
    prefix: String,
    visibility_timeout: Option<std::time::Duration>,
}

impl UrlOptions {
    fn parse(url: &str) -> Self {
        let mut out = UrlOptions {
            url: url.to_owned(),
            prefix: String::new(),
            visibility_timeout: None,
        };
        let Some((base, query)) = url.split_once('?') else {
            return out;
        };
        let mut rest = Vec::new();
        for kv in query.split('&') {
            if let Some(p) = kv.strip_prefix("global_keyprefix=") {
                out.prefix = p.to_owned();
            } else if let Some(v) = kv.strip_prefix("visibility_timeout=") {
                out.visibility_timeout = v
                    .parse::<f64>()
                    .ok()
                    .map(std::time::Duration::from_secs_f64);
            } else {
                rest.push(kv);
            }
        }
        out.url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn options_from_url() {
        let o = super::UrlOptions::parse("redis://h/0");
        assert_eq!(
            (o.url.as_str(), o.prefix.as_str(), o.visibility_timeout),
            ("redis://h/0", "", None)
        );
        let o =
            super::UrlOptions::parse("redis://h/0?global_keyprefix=t1:&visibility_timeout=1.5&x=y");
        assert_eq!(o.url, "redis://h/0?x=y");
        assert_eq!(o.prefix, "t1:");
        assert_eq!(
            o.visibility_timeout,
            Some(std::time::Duration::from_millis(1500))
        );
    }
}
