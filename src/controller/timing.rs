//! Requeue timing: periodic re-verification with jitter, and exponential backoff with jitter for
//! failures, per object; and how long the leader's lease lasts, which readiness waits out too.

use std::time::Duration;

/// How long the leader's lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

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

/// Parses a duration such as `90s`, `10m`, `1h30m`, `1500ms` or plain seconds (`90`), from `min`
/// to `max`. Never overflows: a number too large for the arithmetic is above any maximum.
pub fn parse_duration(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let too_long = || format!("longer than the maximum of {}", describe(max));
    let malformed = || "not a duration such as 90s, 10m, 1h30m or 1500ms".to_owned();
    let whole = text.trim();
    if whole.is_empty() {
        return Err(malformed());
    }
    let mut rest = whole;
    let mut millis: u64 = 0;
    while !rest.is_empty() {
        let (number, after) = rest.split_at(rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len()));
        let (unit, after) = after.split_at(after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len()));
        let unit_millis: u64 = match unit {
            _ if number.is_empty() => return Err(malformed()),
            // Plain seconds only on their own, not as in `1m30`.
            "" if number == whole => 1000,
            "" => return Err(malformed()),
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(format!("unknown unit {unit:?}; use ms, s, m or h")),
        };
        // Only a run of digits too long for u64 fails to parse.
        let value: u64 = number.parse().map_err(|_| too_long())?;
        millis = value.checked_mul(unit_millis).and_then(|part| millis.checked_add(part)).ok_or_else(too_long)?;
        rest = after;
    }
    let duration = Duration::from_millis(millis);
    if duration > max {
        return Err(too_long());
    }
    if duration < min {
        return Err(format!("shorter than the minimum of {}", describe(min)));
    }
    Ok(duration)
}

/// A whole duration as its largest exact unit, e.g. `24h`, `90s`.
fn describe(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
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
