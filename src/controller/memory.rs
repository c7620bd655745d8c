//! What the process remembers per object between reconciles: consecutive failures (for backoff),
//! when each object was last verified with which inputs and when it is due again (to verify once
//! per resync), what its last full pass read (so that an unchanged object costs no read), and the
//! status it last wrote until the watch brings it back (so that a stale cache costs no write).
//! Objects deleted without a final reconcile would stay here forever, so stale entries are pruned.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A 64-bit digest of `value`, the same in every process (fixed keys): what the per-object
/// memories keep in place of names, UIDs, resourceVersions and watermarks, to stay small at ten
/// thousands of objects. An entry is used only when two digests agree (the object's, and its
/// version's or inputs'), so a mix-up needs two 64-bit collisions at once.
pub fn digest(value: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// When a pass last touched the entry, the digest of the caches' watermark its full pass read
/// them at, and what it read.
type Settled = (Instant, u64, Arc<dyn Any + Send + Sync>);

/// When it was issued, and what.
type Issued = (Instant, Arc<dyn Any + Send + Sync>);

pub struct Memory {
    /// The resync interval: every live object is reconciled at least this often.
    interval: Duration,
    /// Consecutive failures per object (namespace/name), and when the last one was.
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// When each object (by the digest of its UID) was last verified, when it is due again, and
    /// the digest of the inputs it was verified with.
    verified: Mutex<HashMap<u64, (Instant, Instant, u64)>>,
    /// Per object (by the digest of its UID): when it was last touched, and what its last full
    /// pass read at which watermark.
    settled: Mutex<HashMap<u64, Settled>>,
    /// Per object (by the digest of its UID): the digests of the resourceVersions this process's
    /// last status write superseded (the one it was computed from, and those of the same pass's
    /// earlier writes), until the cache holds another.
    written: Mutex<HashMap<u64, (Instant, Vec<u64>)>>,
    /// Per object: the resourceVersions a pass's earlier status writes produced (a bucket's
    /// creation recorded before it is sent), which its last write supersedes too.
    intermediate: Mutex<HashMap<u64, Vec<u64>>>,
    /// Per object (by the digest of its UID): what this process last issued for it (a Stack's
    /// session credentials) and when, which a stale cache may not show yet.
    issued: Mutex<HashMap<u64, Issued>>,
    /// When stale entries were last pruned.
    pruned: Mutex<Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Memory {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            failures: Mutex::default(),
            verified: Mutex::default(),
            settled: Mutex::default(),
            written: Mutex::default(),
            intermediate: Mutex::default(),
            issued: Mutex::default(),
            pruned: Mutex::new(Instant::now()),
        }
    }

    /// Records a failure at `now` and returns the count so far.
    pub fn record_failure(&self, key: &str, now: Instant) -> u32 {
        self.prune_stale(now);
        let mut failures = lock(&self.failures);
        let (count, at) = failures.entry(key.to_owned()).or_insert((0, now));
        *count += 1;
        *at = now;
        *count
    }

    pub fn record_success(&self, key: &str) {
        lock(&self.failures).remove(key);
    }

    /// When `uid`, verified with `inputs`, is due to be verified again.
    pub fn verification_due(&self, uid: &str, inputs: &str) -> Option<Instant> {
        lock(&self.verified).get(&digest(uid)).filter(|(_, _, seen)| *seen == digest(inputs)).map(|(_, due, _)| *due)
    }

    /// Records that `uid` was verified with `inputs` now, and is due again at `due`.
    pub fn mark_verified(&self, uid: &str, inputs: &str, due: Instant) {
        let now = Instant::now();
        self.prune_stale(now);
        lock(&self.verified).insert(digest(uid), (now, due, digest(inputs)));
    }

    /// Records what a full pass of `uid` read, at `watermark`.
    pub fn settle(&self, uid: &str, watermark: String, read: Arc<dyn Any + Send + Sync>) {
        let now = Instant::now();
        self.prune_stale(now);
        lock(&self.settled).insert(digest(uid), (now, digest(&watermark), read));
    }

    /// What the last full pass of `uid` read, if the caches still stand at its `watermark`.
    pub fn settled(&self, uid: &str, watermark: &str) -> Option<Arc<dyn Any + Send + Sync>> {
        let mut settled = lock(&self.settled);
        let (touched, _, read) = settled.get_mut(&digest(uid)).filter(|(_, at, _)| *at == digest(watermark))?;
        *touched = Instant::now();
        Some(read.clone())
    }

    /// Records that a status was written for `uid`, computed from the object at `version`: that
    /// version and those the same pass's earlier writes produced are superseded.
    pub fn wrote_status(&self, uid: &str, version: &str) {
        let now = Instant::now();
        self.prune_stale(now);
        let mut superseded = lock(&self.intermediate).remove(&digest(uid)).unwrap_or_default();
        superseded.push(digest(version));
        lock(&self.written).insert(digest(uid), (now, superseded));
    }

    /// Records that a pass wrote a status of `uid` that produced `version`, before its last write.
    pub fn wrote_intermediate_status(&self, uid: &str, version: &str) {
        lock(&self.intermediate).entry(digest(uid)).or_default().push(digest(version));
    }

    /// Whether the cache holds a version of `uid` that this process's last status write
    /// superseded: the watch has not brought the write back yet. Whatever another pass computes
    /// from that version is older than the write (it sees the world the write changed, not the
    /// write), so it writes nothing; the write's watch event wakes the next pass. Once the cache
    /// holds another version, the entry goes.
    pub fn status_pending(&self, uid: &str, version: &str) -> bool {
        let mut written = lock(&self.written);
        let key = digest(uid);
        match written.get(&key) {
            Some((_, superseded)) if superseded.contains(&digest(version)) => true,
            Some(_) => {
                written.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Records what this process issued for `uid`.
    pub fn remember_issued(&self, uid: &str, issued: Arc<dyn Any + Send + Sync>) {
        let now = Instant::now();
        self.prune_stale(now);
        lock(&self.issued).insert(digest(uid), (now, issued));
    }

    /// What this process last issued for `uid`.
    pub fn issued(&self, uid: &str) -> Option<Arc<dyn Any + Send + Sync>> {
        lock(&self.issued).get(&digest(uid)).map(|(_, issued)| issued.clone())
    }

    /// Drops what is known about a deleted object.
    pub fn forget(&self, uid: &str, key: &str) {
        lock(&self.issued).remove(&digest(uid));
        lock(&self.verified).remove(&digest(uid));
        lock(&self.settled).remove(&digest(uid));
        lock(&self.written).remove(&digest(uid));
        lock(&self.intermediate).remove(&digest(uid));
        self.record_success(key);
    }

    /// How many objects have a verification time, a failure count, and a settled pass.
    pub fn len(&self) -> (usize, usize, usize) {
        (lock(&self.verified).len(), lock(&self.failures).len(), lock(&self.settled).len())
    }

    /// At most once per interval, drops the entries no reconcile has refreshed for two intervals:
    /// they belong to objects deleted without a final reconcile. (Backoff is capped by the
    /// interval, so a live object refreshes its entry in time; were one dropped anyway, the cost
    /// is one early re-verification or a shorter backoff.)
    fn prune_stale(&self, now: Instant) {
        {
            let mut pruned = lock(&self.pruned);
            if now.saturating_duration_since(*pruned) < self.interval {
                return;
            }
            *pruned = now;
        }
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < self.interval * 2;
        // A verification is due at most two intervals after it was recorded (a restart's first
        // sight), and its object is reconciled then: one interval past due, nobody is left.
        lock(&self.verified).retain(|_, (_, due, _)| now.saturating_duration_since(*due) < self.interval);
        lock(&self.failures).retain(|_, (_, at)| fresh(at));
        lock(&self.settled).retain(|_, (touched, _, _)| now.saturating_duration_since(*touched) < self.interval * 3);
        lock(&self.written).retain(|_, (at, _)| fresh(at));
        // Once the caches show it (seconds), the object itself says what was issued.
        lock(&self.issued).retain(|_, (at, _)| fresh(at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(600);

    #[test]
    fn verification_is_remembered_per_inputs() {
        let memory = Memory::new(INTERVAL);
        let due = Instant::now() + INTERVAL;
        memory.mark_verified("uid-1", "inputs-a", due);
        assert_eq!(memory.verification_due("uid-1", "inputs-a"), Some(due));
        assert_eq!(memory.verification_due("uid-1", "inputs-b"), None, "changed inputs need a new verification");
        memory.forget("uid-1", "ns/one");
        assert_eq!(memory.verification_due("uid-1", "inputs-a"), None);
    }

    #[test]
    fn a_status_write_supersedes_the_versions_its_pass_wrote_before() {
        let memory = Memory::new(INTERVAL);
        // A pass computed from version 5 records a bucket's coming creation (version 6), then
        // writes its outcome (version 7).
        memory.wrote_intermediate_status("uid-1", "6");
        assert!(!memory.status_pending("uid-1", "5"), "its own last write is not held back");
        memory.wrote_status("uid-1", "5");
        assert!(memory.status_pending("uid-1", "5"));
        assert!(memory.status_pending("uid-1", "6"), "a pass that sees the intermediate write writes nothing");
        assert!(!memory.status_pending("uid-1", "7"), "the cache caught up");
        assert!(!memory.status_pending("uid-1", "6"), "and the entry went");
    }

    #[test]
    fn a_settled_pass_holds_only_at_its_watermark() {
        let memory = Memory::new(INTERVAL);
        memory.settle("uid-1", "5/7/-".to_owned(), Arc::new(42u32));
        let read = memory.settled("uid-1", "5/7/-").expect("same watermark");
        assert_eq!(read.downcast_ref::<u32>(), Some(&42));
        assert!(memory.settled("uid-1", "5/8/-").is_none(), "a referenced object changed");
        memory.forget("uid-1", "ns/one");
        assert!(memory.settled("uid-1", "5/7/-").is_none());
    }

    #[test]
    fn no_status_is_written_from_a_version_a_write_superseded_until_the_cache_moves_on() {
        let memory = Memory::new(INTERVAL);
        memory.wrote_status("uid-1", "41");
        assert!(memory.status_pending("uid-1", "41"), "the cache still holds 41, which the write superseded");
        assert!(!memory.status_pending("uid-2", "41"), "another object");
        assert!(!memory.status_pending("uid-1", "42"), "the cache moved on: the status it holds is current");
        assert!(!memory.status_pending("uid-1", "41"), "and the entry is gone");
    }

    #[test]
    fn failures_count_up_until_a_success() {
        let memory = Memory::new(INTERVAL);
        let now = Instant::now();
        assert_eq!(memory.record_failure("ns/a", now), 1);
        assert_eq!(memory.record_failure("ns/a", now), 2);
        memory.record_success("ns/a");
        assert_eq!(memory.record_failure("ns/a", now), 1);
    }

    #[test]
    fn entries_of_objects_gone_without_a_reconcile_are_pruned() {
        let memory = Memory::new(INTERVAL);
        let start = Instant::now();
        memory.mark_verified("deleted", "x", start + INTERVAL);
        memory.settle("deleted", "1".to_owned(), Arc::new(()));
        memory.record_failure("ns/deleted", start);
        // Within an interval past its due time, or two since the failure, nothing is dropped.
        let soon = start + INTERVAL + Duration::from_secs(1);
        memory.record_failure("ns/live", soon);
        assert_eq!(memory.len(), (1, 2, 1));
        // Later, only what was refreshed recently survives; a settled pass lives three intervals
        // (a restart's first re-verification comes up to two intervals later).
        let mid = start + INTERVAL * 2 + Duration::from_secs(2);
        memory.record_failure("ns/live", mid);
        assert_eq!(memory.len(), (0, 1, 1));
        let late = start + INTERVAL * 3 + Duration::from_secs(3);
        assert_eq!(memory.record_failure("ns/live", late), 3, "the live object's count is kept");
        assert_eq!(memory.len(), (0, 1, 0));
    }

    #[test]
    fn prunes_at_most_once_per_interval() {
        let memory = Memory::new(INTERVAL);
        let start = Instant::now();
        let at = |fraction: f64| start + INTERVAL.mul_f64(fraction);
        memory.mark_verified("gone", "x", at(1.0));
        memory.record_failure("ns/other", at(1.5));
        assert_eq!(memory.len().0, 1, "pruned at 1.5 intervals, when the entry was still fresh");
        memory.record_failure("ns/other", at(2.2));
        assert_eq!(memory.len().0, 1, "stale now, but the last prune was less than an interval ago");
        memory.record_failure("ns/other", at(2.6));
        assert_eq!(memory.len().0, 0);
    }
}
