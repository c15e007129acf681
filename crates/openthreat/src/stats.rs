//! Statistics served from the stats cache: computed by the
//! `update_stats_cache_task` on a schedule, or on demand when the cache is
//! empty, so the API and the CLI read the same numbers.

use chrono::{DateTime, Utc};
use openthreat_store::{Store, StoreError};
use serde_json::Value;

/// Cache key of the `/stats` summary.
pub const STATS: &str = "stats";
/// Cache key of the severity distribution.
pub const SEVERITY_DISTRIBUTION: &str = "severity_distribution";
/// Cache key of the top vendors (the API's default limit of 20).
pub const TOP_VENDORS: &str = "top_vendors:20";
/// Cache key of the 30-day publication timeline.
pub const TIMELINE: &str = "timeline:30";

/// Recomputes every cached statistic and stores it; returns the keys written.
pub async fn refresh(
    store: &dyn Store,
    now: DateTime<Utc>,
) -> Result<Vec<&'static str>, StoreError> {
    let mut written = Vec::new();
    for key in [STATS, SEVERITY_DISTRIBUTION, TOP_VENDORS, TIMELINE] {
        let value = compute(store, key, now).await?;
        store.put_stats_cache(key, &value, now).await?;
        written.push(key);
    }
    Ok(written)
}

/// The cached value of `key`, or a freshly computed (and then cached) one.
pub async fn get_or_compute(
    store: &dyn Store,
    key: &'static str,
    now: DateTime<Utc>,
) -> Result<Value, StoreError> {
    if let Some(entry) = store.get_stats_cache(key).await? {
        return Ok(entry.value);
    }
    let value = compute(store, key, now).await?;
    store.put_stats_cache(key, &value, now).await?;
    Ok(value)
}

async fn compute(store: &dyn Store, key: &str, now: DateTime<Utc>) -> Result<Value, StoreError> {
    let json = |v: Result<Value, serde_json::Error>| v.map_err(|e| StoreError::Data(e.to_string()));
    match key {
        STATS => json(serde_json::to_value(store.stats(now).await?)),
        SEVERITY_DISTRIBUTION => json(serde_json::to_value(store.severity_distribution().await?)),
        TOP_VENDORS => json(serde_json::to_value(store.top_vendors(20).await?)),
        TIMELINE => json(serde_json::to_value(store.timeline(30, now).await?)),
        other => Err(StoreError::InvalidInput(format!(
            "unknown stats cache key {other:?}"
        ))),
    }
}
