//! SQLite beat state, for the embedded mode (one machine, no services).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::SqlitePool;

use super::{from_millis, to_millis, BeatStore, Claim};
use crate::beat::BeatError;

/// Beat state in the table `beat_state(entry, last_slot, owner)` of a SQLite
/// database. Several processes may share the file: a claim is one
/// `INSERT ... ON CONFLICT DO UPDATE ... WHERE` statement, which SQLite runs
/// under its write lock, so of two beats claiming one slot exactly one changes
/// the row.
#[derive(Debug, Clone)]
pub struct SqliteBeatStore {
    pool: SqlitePool,
}

impl SqliteBeatStore {
    /// Uses `pool`, creating the `beat_state` table if it is missing. The
    /// table is created here rather than by a migration so the queue crate
    /// works on any database the application hands it. Give the pool a busy
    /// timeout (sqlx's default is 5 s) so concurrent writers wait instead of
    /// failing.
    pub async fn new(pool: SqlitePool) -> Result<Self, BeatError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS beat_state (
                entry     TEXT    PRIMARY KEY NOT NULL,
                last_slot INTEGER NOT NULL,
                owner     TEXT    NOT NULL
            )",
        )
        .execute(&pool)
        .await?;
        Ok(SqliteBeatStore { pool })
    }
}

#[async_trait]
impl BeatStore for SqliteBeatStore {
    async fn claim(
        &self,
        entry: &str,
        slot: DateTime<Utc>,
        owner: &str,
    ) -> Result<Claim, BeatError> {
        let done = sqlx::query(
            "INSERT INTO beat_state (entry, last_slot, owner) VALUES (?1, ?2, ?3)
             ON CONFLICT (entry) DO UPDATE
                SET last_slot = excluded.last_slot, owner = excluded.owner
                WHERE beat_state.last_slot < excluded.last_slot
                   OR (beat_state.last_slot = excluded.last_slot
                       AND beat_state.owner = excluded.owner)",
        )
        .bind(entry)
        .bind(to_millis(slot))
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(if done.rows_affected() == 1 {
            Claim::Won
        } else {
            Claim::Lost
        })
    }

    async fn last_run(&self, entry: &str) -> Result<Option<DateTime<Utc>>, BeatError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT last_slot FROM beat_state WHERE entry = ?1")
                .bind(entry)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(ms,)| from_millis(ms)).transpose()
    }
}
