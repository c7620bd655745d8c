//! When each object is due to be reconciled again. kube-runtime's scheduler would hold a requeue
//! for every object between resyncs: its reference twice (in a delay queue and in a map) and the
//! reason, about 1.2 KB an object, 24 MB at ten thousand stores and Stacks. The timetable holds
//! one name and one instant per object, and sends the objects that are due to their controller's
//! queue. It sleeps until the earliest one is due (nothing due, no wake-up), and wakes at most
//! once per [`GATHER`], taking every object due by then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

/// What a reconcile asks for next: to run again after a while, or only when something it reads
/// changes. Unlike kube-runtime's `Action`, the timetable can read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Next(Option<Duration>);

impl Next {
    pub fn requeue(after: Duration) -> Self {
        Self(Some(after))
    }

    pub fn await_change() -> Self {
        Self(None)
    }

    /// How long until the object is due again, when it is.
    pub fn after(&self) -> Option<Duration> {
        self.0
    }
}

/// The shortest time between two wake-ups: objects due within it of each other go together
/// (none is sent more than this late), and ten thousand objects spread over a resync cost a few
/// wake-ups a second rather than one each.
pub const GATHER: Duration = Duration::from_millis(250);

/// The longest an object waits: longer than any resync interval (at most a day, and 10% jitter).
const LONGEST_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct Timetable<K: kube::Resource<DynamicType = ()>> {
    inner: Mutex<Inner<K>>,
    /// Wakes the sleeper when an object is due before the instant it sleeps until.
    sooner: tokio::sync::Notify,
}

struct Inner<K: kube::Resource<DynamicType = ()>> {
    due: HashMap<ObjectRef<K>, Instant>,
    /// The earliest instant in `due`, or earlier (never later).
    earliest: Option<Instant>,
}

impl<K: kube::Resource<DynamicType = ()>> Default for Timetable<K> {
    fn default() -> Self {
        Self { inner: Mutex::new(Inner { due: HashMap::new(), earliest: None }), sooner: tokio::sync::Notify::new() }
    }
}

impl<K: kube::Resource<DynamicType = ()>> Timetable<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Enters what the reconcile of `object` asked for at `now`, and returns kube-runtime's
    /// action: always to wait for a change, as the timetable keeps the time.
    pub fn enter(&self, object: ObjectRef<K>, next: Next, now: Instant) -> Action {
        match next.after() {
            // Clamped: an instant past what the clock can hold would panic.
            Some(after) => self.set(object, now + after.min(LONGEST_WAIT)),
            None => self.clear(&object),
        }
        Action::await_change()
    }

    /// `object` is due at `at`, and not before.
    fn set(&self, object: ObjectRef<K>, at: Instant) {
        let mut inner = self.lock();
        inner.due.insert(object, at);
        if inner.earliest.is_none_or(|earliest| at < earliest) {
            inner.earliest = Some(at);
            self.sooner.notify_one();
        }
    }

    /// `object` is due only when something changes.
    fn clear(&self, object: &ObjectRef<K>) {
        self.lock().due.remove(object);
    }

    /// Takes the objects due by `now`, and returns them with the earliest instant one of those
    /// left is due.
    fn take_due(&self, now: Instant) -> (Vec<ObjectRef<K>>, Option<Instant>) {
        let mut inner = self.lock();
        let mut due = Vec::new();
        let mut earliest: Option<Instant> = None;
        inner.due.retain(|object, at| {
            if *at <= now {
                due.push(object.clone());
                return false;
            }
            earliest = Some(earliest.map_or(*at, |e| e.min(*at)));
            true
        });
        inner.earliest = earliest;
        (due, earliest)
    }

    /// The objects as they fall due, for as long as the timetable lives.
    pub fn due(self: Arc<Self>) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
    where
        K: Send + Sync + 'static,
    {
        let stream = futures::stream::unfold((self, None::<Instant>), |(timetable, mut wake)| async move {
            loop {
                match wake {
                    Some(at) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(at) => {}
                            () = timetable.sooner.notified() => {}
                        }
                    }
                    None => timetable.sooner.notified().await,
                }
                // Gather: whatever falls due within GATHER goes in this batch.
                let now = Instant::now();
                let (due, earliest) = timetable.take_due(now + GATHER);
                wake = earliest;
                if !due.is_empty() {
                    // Sent no earlier than they are due, and at most GATHER late.
                    tokio::time::sleep_until(now + GATHER).await;
                    return Some((futures::stream::iter(due), (timetable, wake)));
                }
            }
        });
        futures::StreamExt::flatten(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn object(name: &str) -> ObjectRef<ConfigMap> {
        ObjectRef::new(name).within("ns")
    }

    #[tokio::test(start_paused = true)]
    async fn objects_come_when_due_and_not_before() {
        let timetable = Arc::new(Timetable::<ConfigMap>::default());
        let now = Instant::now();
        assert_eq!(
            timetable.enter(object("late"), Next::requeue(Duration::from_secs(60)), now),
            Action::await_change()
        );
        timetable.enter(object("soon"), Next::requeue(Duration::from_secs(10)), now);
        timetable.enter(object("changed"), Next::requeue(Duration::from_secs(5)), now);
        // A later pass of `changed` waits for a change only: its earlier time no longer counts.
        timetable.enter(object("changed"), Next::await_change(), now);

        let mut due = Box::pin(timetable.clone().due());
        let first = due.next().await.unwrap();
        assert_eq!(first, object("soon"));
        let at = Instant::now() - now;
        assert!(at >= Duration::from_secs(10) && at <= Duration::from_secs(10) + GATHER, "{at:?}");

        // An object due sooner than the sleeper's wake-up wakes it.
        let entered = Instant::now();
        timetable.enter(object("sooner"), Next::requeue(Duration::from_secs(3)), entered);
        assert_eq!(due.next().await.unwrap(), object("sooner"));
        let at = Instant::now() - entered;
        assert!(at >= Duration::from_secs(3) && at <= Duration::from_secs(3) + GATHER, "{at:?}");

        assert_eq!(due.next().await.unwrap(), object("late"));
        assert!(Instant::now() - now >= Duration::from_secs(60));
        assert!(timetable.lock().due.is_empty(), "an object sent is no longer due");

        // Nothing due: the sleeper sleeps until something is.
        let nothing = tokio::time::timeout(Duration::from_secs(3600), due.next()).await;
        assert!(nothing.is_err(), "nothing comes when nothing is due");
    }

    #[tokio::test(start_paused = true)]
    async fn objects_due_close_together_come_in_one_wake_up() {
        let timetable = Arc::new(Timetable::<ConfigMap>::default());
        let now = Instant::now();
        for n in 0..100u64 {
            timetable.enter(
                object(&format!("o-{n}")),
                Next::requeue(Duration::from_secs(30) + Duration::from_millis(n)),
                now,
            );
        }
        let mut due = Box::pin(timetable.clone().due());
        let mut names = Vec::new();
        for _ in 0..100 {
            names.push(due.next().await.unwrap().name);
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 100, "each exactly once");
        let at = Instant::now() - now;
        assert!(at >= Duration::from_millis(30_099) && at <= Duration::from_secs(30) + 2 * GATHER, "{at:?}");
    }
}
