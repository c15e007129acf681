//! A small cache of computed values that stay valid for a while and until
//! the next write: the store's listing totals and the API's response cache
//! are both this.
//!
//! A value is kept with the write generation it was computed in (see
//! [`Store::data_generation`](crate::Store::data_generation)) and the time;
//! it is served while the generation is unchanged and it is younger than the
//! TTL given with each call. Callers missing the same key at once wait for
//! one computation (64 clients asking for the same page should cost one
//! query, not 64). A failed computation is not kept: the next caller tries
//! again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

#[derive(Debug)]
struct Slot<V> {
    at: Instant,
    generation: u64,
    value: Arc<OnceCell<V>>,
}

/// Values by string key; see the module documentation.
#[derive(Debug)]
pub struct FreshCache<V> {
    slots: Mutex<HashMap<String, Slot<V>>>,
    /// Keys are user input (filters, URLs): beyond this many the cache
    /// starts afresh.
    max_entries: usize,
}

impl<V: Clone> FreshCache<V> {
    pub fn new(max_entries: usize) -> Self {
        FreshCache {
            slots: Mutex::default(),
            max_entries,
        }
    }

    /// The value under `key` if it was computed in `generation` less than
    /// `ttl` ago; otherwise `compute`s it (once for all concurrent callers)
    /// and keeps it unless it failed. `generation` must be read before the
    /// computation starts, so that a write during it makes the result stale.
    pub async fn get_or_try_compute<E, F, Fut>(
        &self,
        key: &str,
        generation: u64,
        ttl: Duration,
        compute: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = self.cell(key, generation, ttl);
        cell.get_or_try_init(compute).await.cloned()
    }

    /// The cell for `key`: the current one while fresh, else a new empty
    /// one that replaces it.
    fn cell(&self, key: &str, generation: u64, ttl: Duration) -> Arc<OnceCell<V>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get(key) {
            if s.generation == generation && s.at.elapsed() < ttl {
                return s.value.clone();
            }
        }
        if slots.len() >= self.max_entries {
            slots.clear();
        }
        let value = Arc::new(OnceCell::new());
        slots.insert(
            key.to_string(),
            Slot {
                at: Instant::now(),
                generation,
                value: value.clone(),
            },
        );
        value
    }
}
