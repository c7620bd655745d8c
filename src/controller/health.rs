//! Process health for /readyz and /healthz: ready once the controllers run; unhealthy when the
//! watches have kept failing for too long.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the watches may keep failing before /healthz reports the process unhealthy.
pub const WATCH_FAILURE_LIMIT: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Health {
    started: AtomicBool,
    /// Since when the watches have failed without a success in between.
    failing_since: Mutex<Option<Instant>>,
}

impl Health {
    pub fn controllers_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    pub fn watch_succeeded(&self) {
        *self.failing_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn watch_failed(&self) {
        self.failing_since.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Instant::now);
    }

    /// False once the watches have failed for longer than `limit` without recovering.
    pub fn is_healthy(&self, limit: Duration) -> bool {
        self.failing_since.lock().unwrap_or_else(|p| p.into_inner()).is_none_or(|since| since.elapsed() <= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_the_controllers_start() {
        let health = Health::default();
        assert!(!health.is_ready());
        health.controllers_started();
        assert!(health.is_ready());
    }

    #[test]
    fn unhealthy_only_after_failing_for_longer_than_the_limit() {
        let health = Health::default();
        health.watch_failed();
        assert!(health.is_healthy(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!health.is_healthy(Duration::from_millis(1)));
        health.watch_succeeded();
        assert!(health.is_healthy(Duration::from_millis(1)));
    }
}
