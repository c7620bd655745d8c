//! How many of its objects a controller's scheduler holds at once. kube-runtime's scheduler keeps
//! the capacity its map and delay queue once reached: handed ten thousand objects at once (a mass
//! apply, or a restart that queues every object) it would hold some 5 MB per controller for the
//! life of the process. The gate lets through at most `limit` objects whose pass has not finished
//! and keeps the others in a queue of its own, in arrival order and each once, whose memory goes
//! back once it drains. An object that comes again while its pass is queued or running waits for
//! that pass to finish and then runs once more, as kube-runtime would run it.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;

/// Objects let through per slot of reconcile concurrency: a few queued behind each pass in flight,
/// so that a slot that frees finds its next object already in the scheduler.
pub const PER_SLOT: usize = 4;

/// A waiting queue this long or longer gives its memory back once it drains.
const SHRINK_ABOVE: usize = 1024;

pub struct Gate<K: kube::Resource<DynamicType = ()>> {
    inner: Mutex<Inner<K>>,
    /// Wakes the gate's stream when a pass finishes.
    finished: tokio::sync::Notify,
    limit: usize,
}

struct Inner<K: kube::Resource<DynamicType = ()>> {
    /// The objects let through whose pass has not finished, by [`key`].
    through: HashSet<u64>,
    /// The objects waiting, in arrival order, and their keys (each waits once).
    waiting: VecDeque<ObjectRef<K>>,
    waiting_keys: HashSet<u64>,
}

/// An object's key in the gate: the digest of its namespace and name.
fn key(namespace: Option<&str>, name: &str) -> u64 {
    super::memory::digest((namespace.unwrap_or_default(), name))
}

impl<K: kube::Resource<DynamicType = ()>> Gate<K> {
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                through: HashSet::new(),
                waiting: VecDeque::new(),
                waiting_keys: HashSet::new(),
            }),
            finished: tokio::sync::Notify::new(),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `object`, unless it already waits.
    fn offer(&self, object: ObjectRef<K>) {
        let mut inner = self.lock();
        if inner.waiting_keys.insert(key(object.namespace.as_deref(), &object.name)) {
            inner.waiting.push_back(object);
        }
    }

    /// The first waiting object whose pass is not under way, when fewer than `limit` are.
    fn admit(&self) -> Option<ObjectRef<K>> {
        let mut inner = self.lock();
        if inner.through.len() >= self.limit {
            return None;
        }
        let Inner { through, waiting, waiting_keys } = &mut *inner;
        let position = waiting.iter().position(|o| !through.contains(&key(o.namespace.as_deref(), &o.name)))?;
        let object = waiting.remove(position)?;
        let admitted = key(object.namespace.as_deref(), &object.name);
        waiting_keys.remove(&admitted);
        through.insert(admitted);
        if waiting.is_empty() && waiting.capacity() >= SHRINK_ABOVE {
            *waiting = VecDeque::new();
            *waiting_keys = HashSet::new();
        }
        Some(object)
    }

    /// The pass of the object `namespace`/`name` finished (or found no object): the gate lets
    /// another one through.
    pub fn finished(&self, namespace: Option<&str>, name: &str) {
        if self.lock().through.remove(&key(namespace, name)) {
            self.finished.notify_one();
        }
    }

    /// The objects of `input` as the controller may take them: at most `limit` unfinished.
    pub fn pass(
        self: Arc<Self>,
        input: impl Stream<Item = ObjectRef<K>> + Send + 'static,
    ) -> impl Stream<Item = ObjectRef<K>>
    where
        K: Send + Sync + 'static,
    {
        futures::stream::unfold((self, input.boxed()), |(gate, mut input)| async move {
            loop {
                if let Some(object) = gate.admit() {
                    return Some((object, (gate, input)));
                }
                tokio::select! {
                    next = input.next() => match next {
                        Some(object) => gate.offer(object),
                        None if gate.lock().waiting.is_empty() => return None,
                        // The input ended: wait for the passes under way to let the rest through.
                        None => gate.finished.notified().await,
                    },
                    () = gate.finished.notified() => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::time::Duration;

    fn object(name: &str) -> ObjectRef<ConfigMap> {
        ObjectRef::new(name).within("ns")
    }

    async fn next_within<S: Stream<Item = ObjectRef<ConfigMap>> + Unpin>(stream: &mut S) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(100), stream.next()).await.ok().flatten().map(|o| o.name)
    }

    #[tokio::test]
    async fn at_most_limit_unfinished_each_once_in_order() {
        let gate = Arc::new(Gate::<ConfigMap>::new(2));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        for name in ["a", "b", "a", "c", "d"] {
            tx.unbounded_send(object(name)).unwrap();
        }
        let mut through = Box::pin(gate.clone().pass(rx));
        assert_eq!(next_within(&mut through).await.as_deref(), Some("a"));
        assert_eq!(next_within(&mut through).await.as_deref(), Some("b"));
        assert_eq!(next_within(&mut through).await, None, "two unfinished: nothing more");

        // `a` comes again while its pass runs: it waits for that pass, then runs once more.
        tx.unbounded_send(object("a")).unwrap();
        tx.unbounded_send(object("a")).unwrap();
        gate.finished(Some("ns"), "b");
        assert_eq!(next_within(&mut through).await.as_deref(), Some("c"), "`a` is still running");
        // `a` came back (three times) before `d` arrived: it runs next, once.
        gate.finished(Some("ns"), "a");
        assert_eq!(next_within(&mut through).await.as_deref(), Some("a"));
        gate.finished(Some("ns"), "c");
        assert_eq!(next_within(&mut through).await.as_deref(), Some("d"));
        gate.finished(Some("ns"), "d");
        assert_eq!(next_within(&mut through).await, None, "`a` came three times meanwhile but ran once");

        // The end of a pass the gate did not let through (an error's backoff) frees no place.
        gate.finished(Some("ns"), "nobody");
        assert_eq!(gate.lock().through, HashSet::from([key(Some("ns"), "a")]));
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let gate = Gate::<ConfigMap>::new(1);
        for n in 0..5000 {
            gate.offer(object(&format!("o-{n}")));
        }
        assert!(gate.lock().waiting.capacity() >= SHRINK_ABOVE);
        for n in 0..5000 {
            let admitted = gate.admit().unwrap();
            assert_eq!(admitted.name, format!("o-{n}"), "in arrival order");
            assert!(gate.admit().is_none(), "one at a time");
            gate.finished(Some("ns"), &admitted.name);
        }
        let inner = gate.lock();
        assert!(inner.waiting.is_empty() && inner.through.is_empty());
        assert!(inner.waiting.capacity() < SHRINK_ABOVE && inner.waiting_keys.capacity() < SHRINK_ABOVE);
    }
}
