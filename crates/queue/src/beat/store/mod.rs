//! Where beats record which slots have fired, and race to claim the next one.
//!
//! A store holds, per entry, the last slot claimed and the beat (owner) that
//! claimed it. [`BeatStore::claim`] is the only write and it is atomic: it
//! succeeds only if the slot is *later* than the stored one (or is the same
//! slot already held by the same owner, so a claim whose reply was lost can be
//! retried safely). Two beats asking for one slot therefore get one `Won` and
//! one `Lost`, and a slot can never be claimed after a later one.

mod memory;
mod redis;
mod sqlite;

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use self::memory::MemoryBeatStore;
pub use self::redis::RedisBeatStore;
pub use self::sqlite::SqliteBeatStore;
use super::BeatError;

/// The outcome of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This beat owns the slot and must publish it.
    Won,
    /// Another beat owns this slot, or a later one: do nothing.
    Lost,
}

/// Persistent, shared beat state. Shared as `Arc<dyn BeatStore>`.
#[async_trait]
pub trait BeatStore: Send + Sync + fmt::Debug {
    /// Atomically claims `slot` of `entry` for `owner`: `Won` if the stored
    /// slot is earlier (or absent), or equal and already `owner`'s; `Lost`
    /// otherwise. An error means the outcome is unknown; retrying with the
    /// same owner is safe.
    async fn claim(
        &self,
        entry: &str,
        slot: DateTime<Utc>,
        owner: &str,
    ) -> Result<Claim, BeatError>;

    /// The last slot claimed for `entry` by any beat, if any.
    async fn last_run(&self, entry: &str) -> Result<Option<DateTime<Utc>>, BeatError>;
}

/// Slots are stored as Unix milliseconds: compact, ordered, and comparable
/// inside a Lua script or an SQL `WHERE`.
fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_millis(ms: i64) -> Result<DateTime<Utc>, BeatError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| BeatError::Store(format!("stored slot {ms} is not a valid time").into()))
}
