//! A sliding-window rate limiter: at most `requests` starts within any
//! `window`.
//!
//! NVD states its quota exactly this way ("5 requests in a rolling 30 second
//! window"), so a sliding window matches it without the bursts a token
//! bucket would allow at a refill boundary. It uses tokio's clock, so tests
//! drive it with `tokio::time::pause()` instead of sleeping.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A quota: `requests` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

impl RateLimit {
    /// NVD's public quota without an API key: 5 requests / 30 s.
    pub const NVD_PUBLIC: RateLimit = RateLimit {
        requests: 5,
        window: Duration::from_secs(30),
    };
    /// NVD's quota with an API key: 50 requests / 30 s.
    pub const NVD_WITH_KEY: RateLimit = RateLimit {
        requests: 50,
        window: Duration::from_secs(30),
    };
}

/// Shared by all requests of one client; `acquire` waits for a free slot.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    /// Start times of the requests still inside the window, oldest first.
    /// A tokio mutex, held across the wait, so waiters are served in order.
    starts: Mutex<VecDeque<Instant>>,
}

impl RateLimiter {
    /// A limiter for `limit`; a zero request count is treated as one, so a
    /// misconfiguration slows us down instead of blocking forever.
    pub fn new(limit: RateLimit) -> Self {
        let limit = RateLimit {
            requests: limit.requests.max(1),
            window: limit.window,
        };
        RateLimiter {
            limit,
            starts: Mutex::new(VecDeque::with_capacity(limit.requests as usize)),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Waits until one more request fits in the window, and records it.
    pub async fn acquire(&self) {
        let mut starts = self.starts.lock().await;
        loop {
            let now = Instant::now();
            while starts
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.limit.window)
            {
                starts.pop_front();
            }
            if starts.len() < self.limit.requests as usize {
                starts.push_back(now);
                return;
            }
            if let Some(oldest) = starts.front().copied() {
                tokio::time::sleep_until(oldest + self.limit.window).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn five_per_thirty_seconds() {
        let limiter = RateLimiter::new(RateLimit::NVD_PUBLIC);
        let t0 = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "the first five go at once");
        limiter.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        // The window slides: requests 7..10 also wait for their own slot.
        for _ in 0..4 {
            limiter.acquire().await;
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        limiter.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn spaced_requests_do_not_wait() {
        let limiter = RateLimiter::new(RateLimit {
            requests: 2,
            window: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        for i in 0..6u64 {
            limiter.acquire().await;
            assert_eq!(t0.elapsed(), Duration::from_secs(5 * i));
            tokio::time::advance(Duration::from_secs(5)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_quota() {
        let limiter = Arc::new(RateLimiter::new(RateLimit {
            requests: 3,
            window: Duration::from_secs(30),
        }));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..7)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    l.acquire().await;
                    t0.elapsed().as_secs()
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
        assert_eq!(times, vec![0, 0, 0, 30, 30, 30, 60]);
    }
}
