//! Broadcast and reply transport for events and remote control.
//!
//! On Redis this is kombu's layout, so Python's `celery events`, `celery
//! inspect` and Flower share it with us: a fanout exchange is a pub/sub
//! channel `/{db}.<exchange>[/<routing_key>]` (plus `global_keyprefix`),
//! subscribers use `PSUBSCRIBE`; a reply goes to a direct exchange, i.e. it is
//! `LPUSH`ed to every queue in the set `_kombu.binding.<exchange>` bound with
//! its routing key. On SQLite the same roles are played by two tables that
//! subscribers poll, so `openthreat inspect` in one terminal reaches the
//! worker of `openthreat run` in another without any service.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use redis::aio::ConnectionManager;
use redis::Client;
use sqlx::SqlitePool;
use tokio::sync::mpsc;

use crate::broker::redis::{binding_member, bound_queues, command_connection, BlockingConn};
use crate::error::Result;

/// Messages buffered per subscriber before the oldest are dropped (events are
/// lossy by design; a slow monitor must not hold up a worker).
const SUBSCRIBER_BUFFER: usize = 4096;

/// How fanout messages are carried. See the module docs.
#[async_trait]
pub trait Fanout: Send + Sync + Debug + 'static {
    /// Broadcasts the encoded envelopes `(routing_key, raw)` on `exchange` to
    /// every current subscriber, in one round trip (events come in bursts).
    /// Nobody listening is not an error.
    async fn publish_many(&self, exchange: &str, messages: &[(String, String)]) -> Result<()>;
    /// [`Fanout::publish_many`] for one message.
    async fn publish(&self, exchange: &str, routing_key: &str, raw: &str) -> Result<()> {
        self.publish_many(exchange, &[(routing_key.to_owned(), raw.to_owned())])
            .await
    }
    /// Receives, from now on, everything published on `exchange` whatever the
    /// routing key. The subscription is active when this returns.
    async fn subscribe(&self, exchange: &str) -> Result<Subscription>;
    /// Binds `queue` to the direct `exchange` with `routing_key`, so that
    /// [`Fanout::send_direct`] (ours or kombu's) reaches it.
    async fn bind(&self, exchange: &str, routing_key: &str, queue: &str) -> Result<()>;
    /// Removes the binding and the queue.
    async fn unbind(&self, exchange: &str, routing_key: &str, queue: &str) -> Result<()>;
    /// Delivers `raw` to the queues bound to `exchange` with `routing_key`;
    /// returns how many queues got it.
    async fn send_direct(&self, exchange: &str, routing_key: &str, raw: &str) -> Result<usize>;
    /// Takes the oldest message of `queue`, waiting up to `wait`.
    async fn pop(&self, queue: &str, wait: Duration) -> Result<Option<String>>;
}

/// A live subscription: encoded envelopes, in order. Ends when the transport
/// gives up for good.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<String>,
}

impl Subscription {
    /// The next message, or `None` when the subscription ended.
    pub async fn recv(&mut self) -> Option<String> {
        self.rx.recv().await
    }

    /// As a `Stream`.
    pub fn into_stream(self) -> impl futures::Stream<Item = String> + Send + Unpin {
        Box::pin(futures::stream::unfold(self.rx, |mut rx| async move {
            rx.recv().await.map(|v| (v, rx))
        }))
    }
}

/// Redis fanout in kombu's layout.
pub struct RedisFanout {
    client: Client,
    conn: ConnectionManager,
    blocking: BlockingConn,
    prefix: String,
    db: i64,
}

impl Debug for RedisFanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFanout")
            .field("prefix", &self.prefix)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl RedisFanout {
    /// Connects to `url`; `prefix` is kombu's `global_keyprefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = Client::open(url)?;
        let db = client.get_connection_info().redis_settings().db();
        let conn = command_connection(&client, Duration::from_secs(10)).await?;
        Ok(RedisFanout {
            blocking: BlockingConn::new(client.clone()),
            client,
            conn,
            prefix: prefix.to_owned(),
            db,
        })
    }

    /// kombu's `_get_publish_topic`, with the global prefix its pub/sub client adds.
    fn topic(&self, exchange: &str, routing_key: &str) -> String {
        if routing_key.is_empty() {
            format!("{}/{}.{exchange}", self.prefix, self.db)
        } else {
            format!("{}/{}.{exchange}/{routing_key}", self.prefix, self.db)
        }
    }

    fn binding_key(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }

    async fn open_pubsub(client: &Client, patterns: &[String]) -> Result<redis::aio::PubSub> {
        let mut ps = client.get_async_pubsub().await?;
        for p in patterns {
            ps.psubscribe(p).await?;
        }
        Ok(ps)
    }
}

#[async_trait]
impl Fanout for RedisFanout {
    async fn publish_many(&self, exchange: &str, messages: &[(String, String)]) -> Result<()> {
        let mut pipe = redis::pipe();
        for (rk, raw) in messages {
            pipe.cmd("PUBLISH")
                .arg(self.topic(exchange, rk))
                .arg(raw)
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn subscribe(&self, exchange: &str) -> Result<Subscription> {
        // Both forms: kombu publishes without a routing key as the bare topic.
        let base = self.topic(exchange, "");
        let patterns = vec![base.clone(), format!("{base}/*")];
        let first = Self::open_pubsub(&self.client, &patterns).await?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut ps = Some(first);
            let mut pause = Duration::from_millis(100);
            loop {
                if let Some(p) = ps.take() {
                    let mut stream = p.into_on_message();
                    while let Some(msg) = stream.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        match tx.try_send(payload) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                tracing::debug!("fanout subscriber is slow: message dropped");
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tracing::warn!("fanout subscription lost; reconnecting");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                match Self::open_pubsub(&client, &patterns).await {
                    Ok(p) => {
                        ps = Some(p);
                        pause = Duration::from_millis(100);
                    }
                    Err(e) => tracing::warn!(error = %e, "fanout resubscribe failed"),
                }
            }
        });
        Ok(Subscription { rx })
    }

    async fn bind(&self, exchange: &str, routing_key: &str, queue: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("SADD")
            .arg(self.binding_key(exchange))
            .arg(binding_member(routing_key, queue))
            .query_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    async fn unbind(&self, exchange: &str, routing_key: &str, queue: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("SREM")
            .arg(self.binding_key(exchange))
            .arg(binding_member(routing_key, queue))
            .ignore()
            .cmd("DEL")
            .arg(format!("{}{queue}", self.prefix))
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn send_direct(&self, exchange: &str, routing_key: &str, raw: &str) -> Result<usize> {
        let mut conn = self.conn.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.binding_key(exchange))
            .query_async(&mut conn)
            .await?;
        let queues = bound_queues(&members, routing_key);
        if queues.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for q in &queues {
            pipe.cmd("LPUSH")
                .arg(format!("{}{q}", self.prefix))
                .arg(raw)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(queues.len())
    }

    async fn pop(&self, queue: &str, wait: Duration) -> Result<Option<String>> {
        let key = format!("{}{queue}", self.prefix);
        let popped = self.blocking.brpop(&[key], wait).await?;
        Ok(popped.map(|(_, v)| v))
    }
}

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue_fanout (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_direct (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_direct_queue ON queue_direct (queue, id);
CREATE TABLE IF NOT EXISTS queue_direct_bindings (
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    queue TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (exchange, routing_key, queue)
);
";

/// How long broadcast rows are kept: long enough for every poller to see
/// them, short enough that the table stays small.
const SQLITE_FANOUT_KEEP: f64 = 60.0;
/// How often subscribers and `pop` look for new rows.
const SQLITE_POLL: Duration = Duration::from_millis(25);
/// Reply queues nobody collected are removed after this long.
const SQLITE_DIRECT_KEEP: f64 = 300.0;

/// SQLite fanout: polled tables in the queue's database file.
#[derive(Debug)]
pub struct SqliteFanout {
    pool: SqlitePool,
    published: AtomicU64,
}

/// `sqlite:dir/queue.db?opts` → `sqlite:dir/queue.control.db?opts`.
fn control_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let file = match base.strip_suffix(".db") {
        Some(stem) => format!("{stem}.control.db"),
        None => format!("{base}.control"),
    };
    match query {
        Some(q) => format!("{file}?{q}"),
        None => file,
    }
}

fn now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

impl SqliteFanout {
    /// Opens the control file beside the queue file behind `url`
    /// (`sqlite:path/queue.db` → `path/queue.control.db`) and creates the
    /// tables. A file of its own, so events never wait for the queue's
    /// write lock and the queue never waits for theirs.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = crate::broker::sqlite::open(&control_url(url)).await?;
        sqlx::raw_sql(SQLITE_SCHEMA).execute(&pool).await?;
        Ok(SqliteFanout {
            pool,
            published: AtomicU64::new(0),
        })
    }

    async fn prune(&self) -> Result<()> {
        let t = now();
        sqlx::query("DELETE FROM queue_fanout WHERE at < ?")
            .bind(t - SQLITE_FANOUT_KEEP)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM queue_direct WHERE at < ?")
            .bind(t - SQLITE_DIRECT_KEEP)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM queue_direct_bindings WHERE at < ?")
            .bind(t - SQLITE_DIRECT_KEEP)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Fanout for SqliteFanout {
    async fn publish_many(&self, exchange: &str, messages: &[(String, String)]) -> Result<()> {
        let at = now();
        let mut tx = self.pool.begin().await?;
        for (rk, raw) in messages {
            sqlx::query(
                "INSERT INTO queue_fanout (exchange, routing_key, payload, at) VALUES (?, ?, ?, ?)",
            )
            .bind(exchange)
            .bind(rk)
            .bind(raw)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let before = self
            .published
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        if before / 500 != (before + messages.len() as u64) / 500 {
            self.prune().await?;
        }
        Ok(())
    }

    async fn subscribe(&self, exchange: &str) -> Result<Subscription> {
        let mut last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM queue_fanout")
            .fetch_one(&self.pool)
            .await?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let pool = self.pool.clone();
        let exchange = exchange.to_owned();
        tokio::spawn(async move {
            loop {
                if tx.is_closed() {
                    return;
                }
                let rows: std::result::Result<Vec<(i64, String)>, _> = sqlx::query_as(
                    "SELECT id, payload FROM queue_fanout WHERE id > ? AND exchange = ? ORDER BY id LIMIT 1000",
                )
                .bind(last)
                .bind(&exchange)
                .fetch_all(&pool)
                .await;
                match rows {
                    Ok(rows) => {
                        let full = rows.len() == 1000;
                        for (id, payload) in rows {
                            last = id;
                            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(payload)
                            {
                                return;
                            }
                        }
                        if full {
                            continue;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "fanout poll failed"),
                }
                tokio::time::sleep(SQLITE_POLL).await;
            }
        });
        Ok(Subscription { rx })
    }

    async fn bind(&self, exchange: &str, routing_key: &str, queue: &str) -> Result<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO queue_direct_bindings (exchange, routing_key, queue, at) VALUES (?, ?, ?, ?)",
        )
        .bind(exchange)
        .bind(routing_key)
        .bind(queue)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unbind(&self, exchange: &str, routing_key: &str, queue: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM queue_direct_bindings WHERE exchange = ? AND routing_key = ? AND queue = ?",
        )
        .bind(exchange)
        .bind(routing_key)
        .bind(queue)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM queue_direct WHERE queue = ?")
            .bind(queue)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn send_direct(&self, exchange: &str, routing_key: &str, raw: &str) -> Result<usize> {
        let r = sqlx::query(
            "INSERT INTO queue_direct (queue, payload, at)
             SELECT queue, ?, ? FROM queue_direct_bindings WHERE exchange = ? AND routing_key = ?",
        )
        .bind(raw)
        .bind(now())
        .bind(exchange)
        .bind(routing_key)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() as usize)
    }

    async fn pop(&self, queue: &str, wait: Duration) -> Result<Option<String>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let row: Option<String> = sqlx::query_scalar(
                "DELETE FROM queue_direct WHERE id = (SELECT id FROM queue_direct WHERE queue = ? ORDER BY id LIMIT 1) RETURNING payload",
            )
            .bind(queue)
            .fetch_optional(&self.pool)
            .await?;
            if row.is_some() {
                return Ok(row);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(SQLITE_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_file_beside_the_queue_file() {
        assert_eq!(
            super::control_url("sqlite://data/queue.db"),
            "sqlite://data/queue.control.db"
        );
        assert_eq!(
            super::control_url("sqlite:/tmp/q?mode=rwc"),
            "sqlite:/tmp/q.control?mode=rwc"
        );
    }
}
