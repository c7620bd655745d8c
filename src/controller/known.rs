//! What this process read whole or published, by object and resourceVersion: the memory behind
//! [`super::reads`], held by the [`super::Context`].

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::caches::{Cached, Version, version_of};

/// One object's key: the digest of its kind, namespace and name (see [`super::caches::target`]).
pub(super) type Key = u64;
/// An object read whole: when last used, the digest of its resourceVersion, and the object.
type Read = (Instant, Version, Arc<dyn Any + Send + Sync>);
/// An object published: when last used, the digest of the resourceVersion of the write, and the
/// digest of what was written.
type Published = (Instant, Version, u64);

/// What the process read or wrote, by object and resourceVersion. Entries not used for a day are
/// dropped, so objects deleted meanwhile do not accumulate.
#[derive(Default)]
pub struct Known {
    /// Objects read whole, at their resourceVersion.
    read: Mutex<HashMap<Key, Read>>,
    /// Objects this process published, at the resourceVersion of its write, with a hash of what
    /// it wrote.
    published: Mutex<HashMap<Key, Published>>,
    /// One lock per object being read, so that passes that want the same object at once (twenty
    /// stores sharing a Secret, after a start) send one request and the others take its answer.
    reading: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    pruned: Mutex<Option<Instant>>,
}

const UNUSED: Duration = Duration::from_secs(25 * 3600);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Known {
    fn prune(&self, now: Instant) {
        {
            let mut pruned = lock(&self.pruned);
            if pruned.is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(3600)) {
                return;
            }
            *pruned = Some(now);
        }
        lock(&self.read).retain(|_, (used, _, _)| now.saturating_duration_since(*used) < UNUSED);
        lock(&self.published).retain(|_, (used, _, _)| now.saturating_duration_since(*used) < UNUSED);
    }

    pub(super) fn read<K: Cached>(&self, key: &Key, version: Version) -> Option<Arc<K>> {
        let mut read = lock(&self.read);
        let (used, _, object) = read.get_mut(key).filter(|(_, at, _)| *at == version)?;
        *used = Instant::now();
        object.clone().downcast::<K>().ok()
    }

    pub(super) fn remember_read<K: Cached>(&self, key: Key, object: Arc<K>) {
        let now = Instant::now();
        self.prune(now);
        let version = version_of(object.meta().resource_version.as_deref().unwrap_or_default());
        lock(&self.read).insert(key, (now, version, object));
    }

    pub(super) fn published(&self, key: &Key, version: Version, hash: u64) -> bool {
        let mut published = lock(&self.published);
        match published.get_mut(key) {
            Some((used, at, wrote)) if *at == version && *wrote == hash => {
                *used = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// The lock for reading `key`; dropped from the map once nobody holds or waits for it.
    pub(super) fn reading(&self, key: Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut reading = lock(&self.reading);
        reading.retain(|_, gate| Arc::strong_count(gate) > 1);
        reading.entry(key).or_default().clone()
    }

    pub(super) fn remember_published_at(&self, key: Key, version: Version, hash: u64) {
        let now = Instant::now();
        self.prune(now);
        lock(&self.published).insert(key, (now, version, hash));
    }

    pub(super) fn remember_published(&self, key: Key, version: Option<String>, hash: u64) {
        let now = Instant::now();
        self.prune(now);
        match version {
            Some(version) => lock(&self.published).insert(key, (now, version_of(&version), hash)),
            None => lock(&self.published).remove(&key),
        };
    }
}

pub(super) fn key<K: Cached>(namespace: &str, name: &str) -> Key {
    super::caches::target(K::KIND, namespace, name)
}
