//! Process health for /readyz and /healthz: ready once every controller's cache has synced (its
//! first list has arrived); unhealthy when the watches have kept failing for too long.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long the watches may keep failing before /healthz reports the process unhealthy.
pub const WATCH_FAILURE_LIMIT: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Health {
    /// How many controllers run; zero until they start.
    controllers: AtomicUsize,
    /// How many of them have a synced cache.
    synced: AtomicUsize,
    /// Since when the watches have failed without a success in between.
    failing_since: Mutex<Option<Instant>>,
}

impl Health {
    /// Records that `count` controllers run, each of which reports [`Health::cache_synced`] once.
    pub fn controllers_started(&self, count: usize) {
        self.controllers.store(count, Ordering::SeqCst);
    }

    /// One controller's cache holds its first complete list.
    pub fn cache_synced(&self) {
        self.synced.fetch_add(1, Ordering::SeqCst);
    }

    /// Ready once the controllers run and every one of their caches has synced.
    pub fn is_ready(&self) -> bool {
        let controllers = self.controllers.load(Ordering::SeqCst);
        controllers > 0 && self.synced.load(Ordering::SeqCst) >= controllers
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
    fn ready_once_every_cache_has_synced() {
        let health = Health::default();
        assert!(!health.is_ready());
        health.controllers_started(2);
        assert!(!health.is_ready());
        health.cache_synced();
        assert!(!health.is_ready());
        health.cache_synced();
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
