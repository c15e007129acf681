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
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// One lock per key being counted, so that many requests missing the
    /// same total wait for one count instead of each running it (64
    /// concurrent clients each scanning the table made every page slow).
    counting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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

    /// The total under `key`, counted by `count` when not cached; `None`
    /// keys are always counted. Concurrent callers with the same key wait
    /// for one count.
    pub(crate) async fn get_or_count<F, Fut>(
        &self,
        key: Option<String>,
        count: F,
    ) -> crate::Result<i64>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = crate::Result<i64>>,
    {
        let Some(key) = key else {
            return count().await;
        };
        if let Some(total) = self.get(&key) {
            return Ok(total);
        }
        let lock = {
            let mut counting = self.counting.lock().unwrap_or_else(|e| e.into_inner());
            if counting.len() >= MAX_ENTRIES {
                counting.retain(|_, l| Arc::strong_count(l) > 1);
            }
            counting.entry(key.clone()).or_default().clone()
        };
        let _one = lock.lock().await;
        if let Some(total) = self.get(&key) {
            return Ok(total);
        }
        let generation = self.generation();
        let total = count().await?;
        self.put(key, total, generation);
        Ok(total)
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

    /// Many listings asking for the same missing total at once count once.
    #[tokio::test]
    async fn concurrent_misses_count_once() {
        let cache = Arc::new(TotalsCache::default());
        let counted = Arc::new(AtomicU64::new(0));
        let key = TotalsCache::key(&ListQuery::default());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, counted, key) = (cache.clone(), counted.clone(), key.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_count(key, || async {
                            counted.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(7)
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(counted.load(Ordering::SeqCst), 1);
        // A failed count is not kept: the next caller counts again.
        cache.invalidate();
        let failed = cache
            .get_or_count(key.clone(), || async {
                Err(crate::StoreError::NotFound("x".into()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(
            cache.get_or_count(key, || async { Ok(8) }).await.unwrap(),
            8
        );
    }
}
