//! Per-task rate limits: a token bucket of capacity one, as Celery's.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Hands out one token every `interval`. Waiters queue up in call order.
///
/// Uses tokio's clock, so tests drive it with `tokio::time::pause()`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl TokenBucket {
    pub fn new(interval: Duration) -> Self {
        TokenBucket {
            interval,
            next: Mutex::new(None),
        }
    }

    /// Reserves the next token and returns when it may be used. A caller that
    /// gives up (shutdown) has still consumed its slot, which only slows the
    /// rate down, never speeds it up.
    pub fn reserve(&self) -> Instant {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let slot = next.map_or(now, |n| n.max(now));
        *next = Some(slot + self.interval);
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_tokens_by_interval() {
        let b = TokenBucket::new(Duration::from_secs(6));
        let t0 = Instant::now();
        let slots: Vec<_> = (0..3).map(|_| b.reserve() - t0).collect();
        assert_eq!(
            slots,
            vec![
                Duration::ZERO,
                Duration::from_secs(6),
                Duration::from_secs(12)
            ]
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        // After a quiet spell there is no burst: one token now, then spaced again.
        let t1 = Instant::now();
        assert_eq!(b.reserve(), t1);
        assert_eq!(b.reserve() - t1, Duration::from_secs(6));
    }
}
