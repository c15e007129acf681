//! An in-process store: no persistence, no sharing between processes.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{BeatStore, Claim};
use crate::beat::BeatError;

/// Keeps beat state in memory. Enough for one beat in one process (and for
/// tests); a restart forgets every last run, so missed slots are not caught up.
#[derive(Debug, Default)]
pub struct MemoryBeatStore {
    slots: Mutex<HashMap<String, (DateTime<Utc>, String)>>,
}

impl MemoryBeatStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl BeatStore for MemoryBeatStore {
    async fn claim(
        &self,
        entry: &str,
        slot: DateTime<Utc>,
        owner: &str,
    ) -> Result<Claim, BeatError> {
        let mut slots = self
            .slots
            .lock()
            .map_err(|_| BeatError::Store("memory store lock poisoned".into()))?;
        let won = match slots.get(entry) {
            None => true,
            Some((last, who)) => *last < slot || (*last == slot && who == owner),
        };
        if won {
            slots.insert(entry.to_string(), (slot, owner.to_string()));
            Ok(Claim::Won)
        } else {
            Ok(Claim::Lost)
        }
    }

    async fn last_run(&self, entry: &str) -> Result<Option<DateTime<Utc>>, BeatError> {
        let slots = self
            .slots
            .lock()
            .map_err(|_| BeatError::Store("memory store lock poisoned".into()))?;
        Ok(slots.get(entry).map(|(t, _)| *t))
    }
}
