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
//! recomputation, LLM results, search indexing) invalidates all totals once
//! it is done, so a process sees its own writes at once. Writes by another process
//! (the worker importing while `openthreat serve` answers) show in totals
//! after at most [`TTL`]; the rows of a page are always read fresh.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::fresh::FreshCache;
use crate::query::{ListQuery, SortField, SortOrder};

/// How long a total may be reused when nothing was written through this store.
pub(crate) const TTL: Duration = Duration::from_secs(10);

/// Distinct listings remembered; beyond this the cache starts afresh
/// (filters are user input, so the key space is unbounded).
const MAX_ENTRIES: usize = 4096;

/// Totals by filter set; see the module documentation.
#[derive(Debug)]
pub(crate) struct TotalsCache {
    /// Bumped by every write; totals of an older generation are stale.
    generation: AtomicU64,
    totals: FreshCache<i64>,
}

impl Default for TotalsCache {
    fn default() -> Self {
        TotalsCache {
            generation: AtomicU64::new(0),
            totals: FreshCache::new(MAX_ENTRIES),
        }
    }
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
            summary: false,
            ..q.clone()
        };
        serde_json::to_string(&filters).ok()
    }

    /// The current write generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The total under `key`, counted by `count` when not cached; `None`
    /// keys are always counted. Concurrent callers with the same key wait
    /// for one count (64 clients each scanning the table made every page
    /// slow).
    pub(crate) async fn get_or_count<F, Fut>(
        &self,
        key: Option<String>,
        count: F,
    ) -> crate::Result<i64>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = crate::Result<i64>>,
    {
        match key {
            None => count().await,
            Some(key) => {
                self.totals
                    .get_or_try_compute(&key, self.generation(), TTL, count)
                    .await
            }
        }
    }

    /// Makes every total stale: the data changed.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// For a write: makes every total stale when dropped, that is once the
    /// write is committed (or has failed). Invalidating before the commit
    /// would let a reader count the old data under the new generation and
    /// serve it for the whole TTL.
    pub(crate) fn invalidate_when_done(&self) -> InvalidateOnDrop<'_> {
        InvalidateOnDrop(self)
    }
}

/// See [`TotalsCache::invalidate_when_done`].
pub(crate) struct InvalidateOnDrop<'a>(&'a TotalsCache);

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        self.0.invalidate();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The total counted by `get_or_count`, with `count` returning `n`.
    async fn total(cache: &TotalsCache, key: &str, n: i64) -> i64 {
        cache
            .get_or_count(Some(key.to_string()), || async move { Ok(n) })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn totals_are_reused_until_a_write() {
        let cache = TotalsCache::default();
        let q = ListQuery::default();
        let key = TotalsCache::key(&q).unwrap();
        let other_page = ListQuery {
            page: 7,
            sort: SortField::CveId,
            ..q.clone()
        };
        assert_eq!(TotalsCache::key(&other_page).unwrap(), key);
        assert_eq!(total(&cache, &key, 42).await, 42, "nothing cached: counted");
        assert_eq!(total(&cache, &key, 99).await, 42, "cached: not counted");
        cache.invalidate();
        assert_eq!(total(&cache, &key, 43).await, 43, "a write: counted again");
        // Counted before a write, stored after it: never served.
        cache.invalidate();
        let raced = cache
            .get_or_count(Some(key.clone()), || async {
                cache.invalidate();
                Ok(41)
            })
            .await
            .unwrap();
        assert_eq!(raced, 41);
        assert_eq!(total(&cache, &key, 44).await, 44);
        let filtered = ListQuery {
            q: Some("remote".into()),
            ..q.clone()
        };
        assert_ne!(TotalsCache::key(&filtered).unwrap(), key);
        let recent = q.published_within_days(30, chrono::Utc::now());
        assert_eq!(TotalsCache::key(&recent), None);
    }

    /// A total counted while a write is under way (its data possibly not
    /// yet committed) is not served once the write is done.
    #[tokio::test]
    async fn a_total_counted_during_a_write_is_stale_after_it() {
        let cache = TotalsCache::default();
        let key = TotalsCache::key(&ListQuery::default()).unwrap();
        let write = cache.invalidate_when_done();
        assert_eq!(total(&cache, &key, 1).await, 1, "counted before the commit");
        drop(write);
        assert_eq!(total(&cache, &key, 2).await, 2, "counted again after it");
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
