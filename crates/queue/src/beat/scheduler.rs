//! The beat loop: wait for the next slot, claim it, publish it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::entry::{Entry, ScheduledEntry};
use super::store::{BeatStore, Claim};
use super::BeatError;

/// Sends one run of an entry to the broker. The queue's producer implements
/// it; the beat never runs tasks itself.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `entry.task(*entry.args, **entry.kwargs)` with the entry's
    /// options for the slot `slot` and returns the new task id. `slot` lets the
    /// producer compute `expires` from the scheduled time rather than the
    /// (possibly late) publishing time.
    async fn publish(&self, entry: &Entry, slot: DateTime<Utc>) -> Result<String, BeatError>;
}

/// First wait after a store or broker error; doubled on each failure.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest wait between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a won slot is offered to the publisher before it is given up.
const PUBLISH_ATTEMPTS: u32 = 5;

/// The beat scheduler. See the module docs of `beat` for the exactly-once design.
pub struct Beat {
    entries: Vec<Entry>,
    store: Arc<dyn BeatStore>,
    publisher: Arc<dyn Publisher>,
    clock: Arc<dyn Clock>,
    owner: String,
}

impl fmt::Debug for Beat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Beat")
            .field("owner", &self.owner)
            .field("entries", &self.entries.len())
            .field("store", &self.store)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// An enabled entry and the next slot the loop waits for.
struct Due {
    index: usize,
    next: Option<DateTime<Utc>>,
}

impl Beat {
    /// A beat over `entries`. Its owner id (written next to each claim) is
    /// unique per `Beat`, so a restarted process is a different owner and can
    /// never re-claim a slot its predecessor took.
    pub fn new(
        entries: Vec<Entry>,
        store: Arc<dyn BeatStore>,
        publisher: Arc<dyn Publisher>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let owner = format!(
            "beat-{}-{:08x}",
            std::process::id(),
            rand::rng().random::<u32>()
        );
        Beat {
            entries,
            store,
            publisher,
            clock,
            owner,
        }
    }

    /// The same beat under a chosen owner id (e.g. `host:pid:start-time`).
    /// It must be unique among beats running at once: the store lets an owner
    /// re-claim its own slot (to survive lost replies), so two live beats
    /// sharing an id could both fire one slot.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// This beat's owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Each entry with its schedule in words, its last run (from the store,
    /// so it reflects every beat sharing it) and its next run. An entry whose
    /// last slot was missed shows `next_run` = now: a starting beat fires it at
    /// once.
    pub async fn list(&self) -> Result<Vec<ScheduledEntry>, BeatError> {
        let now = self.clock.now();
        let mut out = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let mut row = ScheduledEntry::from(entry);
            row.last_run = self.store.last_run(&entry.name).await?;
            row.next_run = if entry.enabled {
                match row.last_run.and_then(|l| entry.schedule.next_after(l)) {
                    Some(missed) if missed <= now => Some(now),
                    _ => entry.schedule.next_after(now),
                }
            } else {
                None
            };
            out.push(row);
        }
        Ok(out)
    }

    /// Runs until `shutdown` is cancelled. Store and publisher errors are
    /// logged and retried with back-off; they never end the loop. The only
    /// error returned is a configuration one found before the first slot (two
    /// entries with one name), so `Ok` means a clean shutdown.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), BeatError> {
        let mut names = std::collections::HashSet::new();
        if let Some(dup) = self.entries.iter().find(|e| !names.insert(e.name.as_str())) {
            return Err(BeatError::DuplicateEntry(dup.name.clone()));
        }
        let start = self.clock.now();
        let mut due = Vec::new();
        for (index, entry) in self.entries.iter().enumerate() {
            if !entry.enabled {
                tracing::info!(entry = %entry.name, "beat: entry disabled; it will not fire");
                continue;
            }
            let Some(last) = self
                .retry(&shutdown, "reading the last run", || {
                    self.store.last_run(&entry.name)
                })
                .await
            else {
                return Ok(());
            };
            // With no record, start from now: a fresh beat does not fire
            // past slots. With a record, a missed slot is due at once.
            let next = entry.schedule.next_after(last.unwrap_or(start));
            if next.is_none() {
                tracing::warn!(entry = %entry.name, "beat: schedule never fires again");
            }
            due.push(Due { index, next });
        }
        tracing::info!(owner = %self.owner, entries = due.len(), "beat: started");

        loop {
            let now = self.clock.now();
            for d in due.iter_mut() {
                if d.next.is_some_and(|n| n <= now) {
                    let entry = &self.entries[d.index];
                    match self.fire(entry, &shutdown).await {
                        Some(slot) => d.next = entry.schedule.next_after(slot),
                        None => return Ok(()),
                    }
                }
            }
            let Some(wake) = due.iter().filter_map(|d| d.next).min() else {
                shutdown.cancelled().await;
                return Ok(());
            };
            if wake <= self.clock.now() {
                continue;
            }
            tokio::select! {
                _ = self.clock.sleep_until(wake) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// Claims and publishes the latest slot of `entry` at or before now.
    /// Returns the slot handled, or `None` on shutdown.
    ///
    /// The slot is recomputed on every retry: after a long store outage only
    /// the most recent slot fires, once, instead of the one that was due when
    /// the outage began followed by the current one.
    async fn fire(&self, entry: &Entry, shutdown: &CancellationToken) -> Option<DateTime<Utc>> {
        let mut failures = 0u32;
        let (slot, claim) = loop {
            let now = self.clock.now();
            let Some(slot) = entry.schedule.latest_at_or_before(now) else {
                return Some(now);
            };
            match self.store.claim(&entry.name, slot, &self.owner).await {
                Ok(claim) => {
                    if failures > 0 {
                        tracing::info!(entry = %entry.name, "beat: store reachable again");
                    }
                    break (slot, claim);
                }
                Err(error) => {
                    failures += 1;
                    let delay = backoff(failures);
                    tracing::warn!(
                        entry = %entry.name, %slot, %error, attempt = failures,
                        retry_in = ?delay, "beat: cannot claim slot; retrying"
                    );
                    if !self.pause(delay, shutdown).await {
                        return None;
                    }
                }
            }
        };
        if claim == Claim::Lost {
            tracing::debug!(entry = %entry.name, %slot, "beat: slot taken by another beat");
            return Some(slot);
        }
        for attempt in 1..=PUBLISH_ATTEMPTS {
            match self.publisher.publish(entry, slot).await {
                Ok(task_id) => {
                    tracing::info!(
                        entry = %entry.name, task = %entry.task, %slot, %task_id,
                        "beat: sending due task"
                    );
                    return Some(slot);
                }
                Err(error) => {
                    let delay = backoff(attempt);
                    tracing::warn!(
                        entry = %entry.name, %slot, %error, attempt,
                        "beat: publishing failed"
                    );
                    if attempt < PUBLISH_ATTEMPTS && !self.pause(delay, shutdown).await {
                        tracing::error!(entry = %entry.name, %slot, "beat: slot claimed but not published (shutdown)");
                        return None;
                    }
                }
            }
        }
        // The slot stays claimed: firing it later would risk a double run, and
        // the next slot comes on schedule. At most once, by design.
        tracing::error!(entry = %entry.name, %slot, "beat: giving up on this slot");
        Some(slot)
    }

    /// Retries a store read until it succeeds; `None` on shutdown.
    async fn retry<T, F, Fut>(&self, shutdown: &CancellationToken, what: &str, op: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, BeatError>>,
    {
        let mut failures = 0u32;
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(error) => {
                    failures += 1;
                    let delay = backoff(failures);
                    tracing::warn!(%error, attempt = failures, retry_in = ?delay, "beat: {what} failed; retrying");
                    if !self.pause(delay, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Sleeps on the beat's clock; `false` if shutdown came first.
    async fn pause(&self, delay: Duration, shutdown: &CancellationToken) -> bool {
        let until = self.clock.now() + chrono::Duration::from_std(delay).unwrap_or_default();
        tokio::select! {
            _ = self.clock.sleep_until(until) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

/// Exponential back-off with ±20 % jitter, so beats that lost Redis together
/// do not all retry in the same instant.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(BACKOFF_MAX);
    let jitter = rand::rng().random_range(0.8..1.2);
    base.mul_f64(jitter)
}
