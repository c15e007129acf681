//! SQLite result backend: one row per task id in the same file as the broker.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;

use super::{ResultBackend, TaskMeta, DEFAULT_RESULT_EXPIRES};
use crate::broker::sqlite::{is_busy, now, open};
use crate::error::Result;

/// SQLite result backend.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    pool: SqlitePool,
    expires: Duration,
}

impl SqliteBackend {
    /// Opens `url` (`sqlite:path/to/file.db`); may be the broker's file.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(SqliteBackend {
            pool: open(url).await?,
            expires: DEFAULT_RESULT_EXPIRES,
        })
    }

    /// How long results are kept (default one day).
    pub fn with_expires(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }
}

#[async_trait]
impl ResultBackend for SqliteBackend {
    async fn store(&self, meta: &TaskMeta) -> Result<()> {
        let json = serde_json::to_string(meta)?;
        let status = serde_json::to_value(meta.status)?;
        let now = now();
        loop {
            // The WHERE on the upsert is what keeps a SUCCESS from being overwritten.
            let r = sqlx::query(
                "INSERT INTO queue_results (task_id, status, meta, expires_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, meta = excluded.meta,
                 expires_at = excluded.expires_at WHERE queue_results.status <> 'SUCCESS'",
            )
            .bind(&meta.task_id)
            .bind(status.as_str())
            .bind(&json)
            .bind(now + self.expires.as_secs_f64())
            .execute(&self.pool)
            .await;
            match r {
                Ok(_) => break,
                Err(e) if is_busy(&e) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => return Err(e.into()),
            }
        }
        // Expired results are swept now and then, not on every store.
        if rand::random::<u8>() == 0 {
            sqlx::query("DELETE FROM queue_results WHERE expires_at < ?")
                .bind(now)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>> {
        let raw: Option<String> = sqlx::query_scalar(
            "SELECT meta FROM queue_results WHERE task_id = ? AND expires_at > ?",
        )
        .bind(task_id)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?;
        Ok(raw.map(|r| serde_json::from_str(&r)).transpose()?)
    }

    async fn forget(&self, task_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM queue_results WHERE task_id = ?")
            .bind(task_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
