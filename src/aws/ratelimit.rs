//! A token bucket per AWS account (keyed by access key id, or by the ambient identity), so that one
//! busy account cannot be throttled by S3 or IAM because of this operator.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second: per_second.max(0.001), burst: f64::from(burst.max(1)), buckets: Mutex::default() }
    }

    /// How long the caller must wait before its call for `account`; the token is taken now.
    fn reserve(&self, account: &str, now: Instant) -> Duration {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(account.to_owned()).or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst) - 1.0;
        bucket.updated = now;
        if bucket.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-bucket.tokens / self.per_second) }
    }

    /// Waits for a token for `account`.
    pub async fn acquire(&self, account: &str) {
        let wait = self.reserve(account, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_paces_each_account_separately() {
        let limiter = RateLimiter::new(2.0, 3);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.reserve("a", now), Duration::ZERO);
        }
        assert_eq!(limiter.reserve("a", now), Duration::from_millis(500));
        assert_eq!(limiter.reserve("a", now), Duration::from_millis(1000));
        assert_eq!(limiter.reserve("b", now), Duration::ZERO, "another account has its own bucket");
        assert_eq!(limiter.reserve("a", now + Duration::from_secs(10)), Duration::ZERO, "refills over time");
    }
}
