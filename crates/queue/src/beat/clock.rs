//! The beat's sense of time, injectable so tests run days of schedule in
//! milliseconds.
//!
//! All waiting in the beat goes through [`Clock::sleep_until`] — the wait for
//! the next slot and the back-off after a store error alike — so a test that
//! controls the clock controls everything time-dependent. I/O timeouts (Redis
//! response timeouts, SQLite busy timeouts) stay on real time on purpose: they
//! measure the network, not the schedule.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// Wall-clock time and sleeping until a wall-clock instant.
#[async_trait]
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Returns once [`now`](Clock::now) is at or after `deadline`.
    async fn sleep_until(&self, deadline: DateTime<Utc>);
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// Longest single sleep. Sleeping in bounded steps and re-reading the wall
/// clock corrects for NTP steps and suspended machines, where a monotonic
/// timer and the wall clock part ways.
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        loop {
            let Ok(left) = (deadline - Utc::now()).to_std() else {
                return;
            };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(MAX_SLEEP)).await;
        }
    }
}

/// A clock that only moves when told to, for tests.
///
/// Besides [`advance`](ManualClock::advance) it can tell a test when every
/// task using it has caught up: [`wait_for_sleepers`](ManualClock::wait_for_sleepers)
/// returns once `n` tasks are parked in `sleep_until` on a deadline still in
/// the future. Advancing in small steps and settling after each one makes a
/// run of two racing beats deterministic without any real waiting.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<Inner>,
}

struct Inner {
    now: watch::Sender<DateTime<Utc>>,
    /// Deadlines of the tasks currently parked in `sleep_until`.
    sleepers: Mutex<HashMap<u64, DateTime<Utc>>>,
    /// Bumped whenever `sleepers` changes, so `wait_for_sleepers` can wait on it.
    changed: watch::Sender<u64>,
    next_id: AtomicU64,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &*self.inner.now.borrow())
            .finish()
    }
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            inner: Arc::new(Inner {
                now: watch::Sender::new(start),
                sleepers: Mutex::new(HashMap::new()),
                changed: watch::Sender::new(0),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Moves the clock forward, waking the sleepers whose deadline passed.
    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::zero());
        self.inner.now.send_modify(|now| *now += by);
    }

    /// Sets the clock to `t` (it may go backwards, like a wall clock can).
    pub fn set(&self, t: DateTime<Utc>) {
        self.inner.now.send_replace(t);
    }

    /// How many tasks are parked on a deadline still in the future.
    pub fn sleepers(&self) -> usize {
        let now = *self.inner.now.borrow();
        self.inner
            .sleepers
            .lock()
            .map(|s| s.values().filter(|d| **d > now).count())
            .unwrap_or(0)
    }

    /// Waits until at least `n` tasks are parked on a future deadline, i.e.
    /// have finished everything that was due at the current time.
    pub async fn wait_for_sleepers(&self, n: usize) {
        let mut changed = self.inner.changed.subscribe();
        let mut now = self.inner.now.subscribe();
        loop {
            if self.sleepers() >= n {
                return;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                r = now.changed() => if r.is_err() { return },
            }
        }
    }

    fn register(&self, deadline: DateTime<Utc>) -> SleeperGuard<'_> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.inner.sleepers.lock() {
            s.insert(id, deadline);
        }
        self.inner.changed.send_modify(|v| *v += 1);
        SleeperGuard { clock: self, id }
    }
}

/// Removes a sleeper on wake-up and on cancellation (a `select!` dropping the
/// sleep), so the count never includes tasks that stopped waiting.
struct SleeperGuard<'a> {
    clock: &'a ManualClock,
    id: u64,
}

impl Drop for SleeperGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.clock.inner.sleepers.lock() {
            s.remove(&self.id);
        }
        self.clock.inner.changed.send_modify(|v| *v += 1);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.inner.now.borrow()
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        let mut rx = self.inner.now.subscribe();
        if *rx.borrow_and_update() >= deadline {
            return;
        }
        let _guard = self.register(deadline);
        loop {
            if *rx.borrow_and_update() >= deadline {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
