//! Requeue timing: periodic re-verification with jitter, and exponential backoff with jitter for
//! failures, per object.

use std::time::Duration;

/// `base` spread by ±10%, so objects verified together drift apart.
pub fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// A uniformly random point in `[0, interval)`: after a restart, stores verified recently are
/// re-verified over one interval rather than all at once.
pub fn spread(interval: Duration) -> Duration {
    interval.mul_f64(fastrand::f64())
}

/// Backoff after `failures` consecutive failures (1 = first): 5s doubling, capped, with
/// "equal jitter" (half fixed, half random) so it never collapses to zero.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = Duration::from_secs(5).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let bounded = exp.min(cap);
    bounded / 2 + (bounded / 2).mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(300);
        for _ in 0..50 {
            let first = backoff(1, cap);
            assert!(first >= Duration::from_millis(2500) && first <= Duration::from_secs(5), "{first:?}");
            let fourth = backoff(4, cap);
            assert!(fourth >= Duration::from_secs(20) && fourth <= Duration::from_secs(40), "{fourth:?}");
            let many = backoff(30, cap);
            assert!(many >= Duration::from_secs(150) && many <= cap, "{many:?}");
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..50 {
            let value = jittered(Duration::from_secs(600));
            assert!(value >= Duration::from_secs(540) && value <= Duration::from_secs(660));
            assert!(spread(Duration::from_secs(600)) < Duration::from_secs(600));
        }
    }
}
