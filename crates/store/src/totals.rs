//! A short-lived cache of listing totals.
//!
//! Every listing answers with the total number of matches, and counting is
//! the expensive part of a page: `COUNT(*)` over 300 000 CVEs for the default
//! listing, or over every match of a common search word, costs tens to
//! hundreds of milliseconds, while the page itself is an index walk of 20
//! rows. People page through the same listing, so the same count is asked
//! for again and again; it is kept here for a few seconds.
//!
//! Freshness: every write through this store (upserts, KEV, EPSS, priority
//! recomputation, LLM results, search indexing) invalidates all totals at
//! once, so a process sees its own writes at once. Writes by another process
//! (the worker importing while `openthreat serve` answers) show in totals
//! after at most [`TTL`]; the rows of a page are always read fresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::query::{ListQuery, SortField, SortOrder};

/// How long a total may be reused when nothing was written through this store.
pub(crate) const TTL: Duration = Duration::from_secs(10);

/// Distinct listings remembered; beyond this the cache starts afresh
/// (filters are user input, so the key space is unbounded).
const MAX_ENTRIES: usize = 4096;

#[derive(Debug)]
struct Entry {
    total: i64,
    at: Instant,
    generation: u64,
}

/// Totals by filter set; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct TotalsCache {
    /// Bumped by every write; entries of an older generation are stale.
    generation: AtomicU64,
    entries: Mutex<HashMap<String, Entry>>,
}

impl TotalsCache {
    /// The cache key of `q`'s total: its filters, without page and order.
    /// `None` for listings relative to the current time (`/recent`), whose
    /// filter never repeats.
    pub(crate) fn key(q: &ListQuery) -> Option<String> {
        if q.published_since.is_some() {
            return None;
        }
        let filters = ListQuery {
            page: 1,
            page_size: 1,
            sort: SortField::default(),
            order: SortOrder::default(),
            ..q.clone()
        };
        serde_json::to_string(&filters).ok()
    }

    /// The current generation, to be passed to [`TotalsCache::put`] with a
    /// total counted after reading it.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, key: &str) -> Option<i64> {
        let generation = self.generation();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|e| e.generation == generation && e.at.elapsed() < TTL)
            .map(|e| e.total)
    }

    /// Keeps a total counted in `generation`; if a write happened since,
    /// the entry is already stale and will not be served.
    pub(crate) fn put(&self, key: String, total: i64, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            key,
            Entry {
                total,
                at: Instant::now(),
                generation,
            },
        );
    }

    /// Makes every total stale: the data changed.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_reused_until_a_write() {
        let cache = TotalsCache::default();
        let q = ListQuery::default();
        let key = TotalsCache::key(&q).unwrap();
        let other_page = ListQuery {
            page: 7,
            sort: SortField::CveId,
            ..q.clone()
        };
        assert_eq!(TotalsCache::key(&other_page).unwrap(), key);
        assert_eq!(cache.get(&key), None);
        let g = cache.generation();
        cache.put(key.clone(), 42, g);
        assert_eq!(cache.get(&key), Some(42));
        cache.invalidate();
        assert_eq!(cache.get(&key), None);
        // Counted before a write, stored after it: never served.
        let g = cache.generation();
        cache.invalidate();
        cache.put(key.clone(), 41, g);
        assert_eq!(cache.get(&key), None);
        let filtered = ListQuery {
            q: Some("remote".into()),
            ..q.clone()
        };
        assert_ne!(TotalsCache::key(&filtered).unwrap(), key);
        let recent = q.published_within_days(30, chrono::Utc::now());
        assert_eq!(TotalsCache::key(&recent), None);
    }
}
