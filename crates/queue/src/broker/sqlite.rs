//! SQLite broker: the embedded default, one machine, no services.
//!
//! One table holds every message. A message is waiting when its `visible_at`
//! has passed; fetching it sets `visible_at` to the lease's end (now +
//! visibility timeout) and a fresh `lease_token`, in one
//! `UPDATE … WHERE id = (SELECT …) RETURNING` statement, so two processes
//! never claim the same row. An ack deletes the row *if the token still
//! matches*; a lease that runs out makes the row waiting again by itself, so
//! there is no separate restore step. ETA messages are rows whose
//! `visible_at` is their ETA. The file is in WAL mode with a busy timeout, so
//! a CLI in one terminal and a worker in another share it safely.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use super::{Broker, DeadLetter, Delivery, DEFAULT_VISIBILITY_TIMEOUT};
use crate::error::Result;
use crate::message::Message;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload TEXT NOT NULL,
    visible_at REAL NOT NULL,
    lease_token TEXT
);
CREATE INDEX IF NOT EXISTS queue_messages_fetch ON queue_messages (queue, visible_at, priority, id);
CREATE TABLE IF NOT EXISTS queue_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_results (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    meta TEXT NOT NULL,
    expires_at REAL NOT NULL
);
";

/// Opens (creating if needed) the SQLite file behind `url` (`sqlite:path`),
/// in WAL mode with a busy timeout, and creates the queue tables.
pub(crate) async fn open(url: &str) -> Result<SqlitePool> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    Ok(pool)
}

pub(crate) fn now() -> f64 {
    Utc::now().timestamp_micros() as f64 / 1e6
}

/// True for SQLITE_BUSY / SQLITE_LOCKED, which WAL can return without waiting
/// when a read transaction must be upgraded; the statement is simply retried.
pub(crate) fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code();
            matches!(
                code.as_deref(),
                Some("5") | Some("6") | Some("517") | Some("262")
            ) || d.message().contains("locked")
        }
        _ => false,
    }
}

/// SQLite broker.
#[derive(Debug, Clone)]
pub struct SqliteBroker {
    pool: SqlitePool,
    visibility_timeout: Duration,
    poll_interval: Duration,
}

impl SqliteBroker {
    /// Opens `url` (`sqlite:path/to/file.db`).
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(SqliteBroker {
            pool: open(url).await?,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            poll_interval: Duration::from_millis(100),
        })
    }

    /// Lease length: a message not acked by then is delivered again.
    pub fn with_visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// Longest pause between polls of an empty queue (there is no blocking pop).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    async fn claim(&self, queues: &[String], max: usize) -> Result<Vec<Delivery>> {
        let placeholders = vec!["?"; queues.len()].join(", ");
        let sql = format!(
            "UPDATE queue_messages SET visible_at = ?, lease_token = ? WHERE id IN (
                SELECT id FROM queue_messages WHERE queue IN ({placeholders}) AND visible_at <= ?
                ORDER BY priority, id LIMIT ?)
             RETURNING id, queue, payload, priority"
        );
        // One token per batch: acks are by (row id, token), so it stays unique per lease.
        let token = uuid::Uuid::new_v4().to_string();
        let now = now();
        loop {
            let mut q = sqlx::query(&sql)
                .bind(now + self.visibility_timeout.as_secs_f64())
                .bind(&token);
            for name in queues {
                q = q.bind(name);
            }
            match q.bind(now).bind(max as i64).fetch_all(&self.pool).await {
                Ok(rows) => {
                    let mut rows: Vec<(i64, i64, Delivery)> = rows
                        .into_iter()
                        .map(|r| {
                            let id: i64 = r.get(0);
                            let d = Delivery {
                                row: Some(id),
                                queue: r.get(1),
                                raw: r.get(2),
                                tag: token.clone(),
                            };
                            (r.get::<i64, _>(3), id, d)
                        })
                        .collect();
                    // RETURNING has no order: restore the queue's.
                    rows.sort_by_key(|(pri, id, _)| (*pri, *id));
                    return Ok(rows.into_iter().map(|(_, _, d)| d).collect());
                }
                Err(e) if is_busy(&e) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn insert(
        &self,
        queue: &str,
        priority: u8,
        payload: &str,
        visible_at: f64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO queue_messages (queue, priority, payload, visible_at) VALUES (?, ?, ?, ?)",
        )
        .bind(queue)
        .bind(priority as i64)
        .bind(payload)
        .bind(visible_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Broker for SqliteBroker {
    async fn publish(&self, message: &Message) -> Result<()> {
        // An ETA message simply stays invisible until it is due.
        let visible_at = message
            .headers
            .eta
            .map(|t| t.timestamp_micros() as f64 / 1e6)
            .unwrap_or(0.0);
        self.insert(
            message.queue(),
            message.priority(),
            &message.encode(),
            visible_at,
        )
        .await
    }

    async fn declare(&self, _queues: &[String]) -> Result<()> {
        Ok(())
    }

    async fn fetch(&self, queues: &[String], max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        loop {
            if !queues.is_empty() && max > 0 {
                let got = self.claim(queues, max).await?;
                if !got.is_empty() {
                    return Ok(got);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(self.poll_interval);
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<()> {
        sqlx::query("DELETE FROM queue_messages WHERE id = ? AND lease_token = ?")
            .bind(delivery.row)
            .bind(&delivery.tag)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn requeue(&self, delivery: &Delivery) -> Result<()> {
        sqlx::query("UPDATE queue_messages SET visible_at = 0, lease_token = NULL WHERE id = ? AND lease_token = ?")
            .bind(delivery.row)
            .bind(&delivery.tag)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn defer(&self, delivery: &Delivery, eta: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE queue_messages SET visible_at = ?, lease_token = NULL WHERE id = ? AND lease_token = ?")
            .bind(eta.timestamp_micros() as f64 / 1e6)
            .bind(delivery.row)
            .bind(&delivery.tag)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO queue_dead_letters (queue, reason, payload, at) VALUES (?, ?, ?, ?)",
        )
        .bind(&delivery.queue)
        .bind(reason)
        .bind(&delivery.raw)
        .bind(Utc::now().to_rfc3339())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM queue_messages WHERE id = ? AND lease_token = ?")
            .bind(delivery.row)
            .bind(&delivery.tag)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn touch(&self, deliveries: &[Delivery]) -> Result<()> {
        let until = now() + self.visibility_timeout.as_secs_f64();
        for d in deliveries {
            sqlx::query(
                "UPDATE queue_messages SET visible_at = ? WHERE id = ? AND lease_token = ?",
            )
            .bind(until)
            .bind(d.row)
            .bind(&d.tag)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    async fn restore_visible(&self) -> Result<usize> {
        // Expired leases are visible again by construction.
        Ok(0)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let r = sqlx::query("DELETE FROM queue_messages WHERE queue = ? AND (lease_token IS NULL OR visible_at <= ?)")
            .bind(queue)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    async fn queue_lengths(&self, queues: &[String]) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::with_capacity(queues.len());
        let now = now();
        for q in queues {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM queue_messages WHERE queue = ? AND (lease_token IS NULL OR visible_at <= ?)",
            )
            .bind(q)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
            out.push((q.clone(), n as u64));
        }
        Ok(out)
    }

    async fn priority_lengths(&self, queues: &[String]) -> Result<Vec<(String, u8, u64)>> {
        let mut out = Vec::new();
        let now = now();
        for q in queues {
            let rows: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT priority, COUNT(*) FROM queue_messages WHERE queue = ? AND (lease_token IS NULL OR visible_at <= ?) GROUP BY priority ORDER BY priority",
            )
            .bind(q)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
            out.extend(
                rows.into_iter()
                    .map(|(p, n)| (q.clone(), p.clamp(0, 9) as u8, n as u64)),
            );
        }
        Ok(out)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT queue, reason, payload, at FROM queue_dead_letters ORDER BY id DESC LIMIT ?",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                queue: r.get(0),
                reason: r.get(1),
                payload: r.get(2),
                at: DateTime::parse_from_rfc3339(r.get::<&str, _>(3))
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(|_| Utc::now()),
            })
            .collect())
    }

    async fn purge_dead_letters(&self) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM queue_dead_letters")
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
