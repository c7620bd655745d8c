//! What both reconcilers share: the context, requeue timing, Events, and writing owned objects
//! only when they differ.

pub mod apply;
pub mod caches;
pub mod claims;
pub mod context;
mod error;
#[cfg(test)]
pub mod fixtures;
pub mod gate;
pub mod health;
mod known;
pub mod memory;
pub mod reads;
pub mod subject;
pub mod timetable;
pub mod timing;

pub use caches::scoped_api;
pub use context::Context;
pub use error::Error;
pub use memory::digest;
pub use timetable::{Next, Timetable};

use kube::Resource;
use kube::core::DeserializeGuard;

use crate::bulkhead;

/// `object`'s key in per-object memory and logs (see [`crate::owner::key`]).
pub fn object_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    use kube::ResourceExt;
    crate::owner::key(&K::kind(&()), &object.namespace().unwrap_or_default(), &object.name_any())
}

/// The controller for `K` objects: it reconciles what `queue` names (see [`caches::watch`]: the
/// object itself changed, something it names did, or its time came), reading the objects from
/// `cache`. Objects come guarded: one that does not deserialize into `K` (stored under an older
/// schema, or written past the apiserver's validation) reaches the reconciler as such, see
/// [`deserialized`], instead of breaking the watch for all the others.
pub fn controller<K>(
    cache: kube::runtime::reflector::Store<DeserializeGuard<K>>,
    queue: impl futures::Stream<Item = kube::runtime::reflector::ObjectRef<DeserializeGuard<K>>> + Send + 'static,
    concurrency: u16,
) -> kube::runtime::Controller<DeserializeGuard<K>>
where
    K: caches::Watched,
{
    let no_trigger = futures::stream::pending::<Result<DeserializeGuard<K>, kube::runtime::watcher::Error>>();
    kube::runtime::Controller::for_stream(no_trigger, cache)
        .reconcile_on(queue)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
}

/// Runs the controller of `K` (see [`controller`]) until shutdown, with its reconciler and error
/// policy. When a reconcile asks to run again later, the object's time goes to a [`Timetable`]
/// (lean at ten thousands of objects), which queues it when due; the error policy's backoff stays
/// with kube-runtime's scheduler, for the few objects that fail.
pub async fn run<K, F, E>(
    ctx: std::sync::Arc<Context>,
    cache: kube::runtime::reflector::Store<DeserializeGuard<K>>,
    queue: futures::channel::mpsc::UnboundedReceiver<kube::runtime::reflector::ObjectRef<DeserializeGuard<K>>>,
    concurrency: u16,
    mut reconcile: impl FnMut(std::sync::Arc<DeserializeGuard<K>>, std::sync::Arc<Context>) -> F,
    error_policy: impl Fn(
        std::sync::Arc<DeserializeGuard<K>>,
        &E,
        std::sync::Arc<Context>,
    ) -> kube::runtime::controller::Action,
) where
    K: caches::Watched,
    F: std::future::Future<Output = Result<Next, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let timetable = std::sync::Arc::new(Timetable::default());
    let gate = std::sync::Arc::new(gate::Gate::new(usize::from(concurrency) * gate::PER_SLOT));
    let queue = gate.clone().pass(futures::stream::select(queue, timetable.clone().due()));
    // Each external server may keep only a share of these workers waiting (see [`bulkhead`]).
    let pool = bulkhead::Pool::new(concurrency);
    let reconcile = move |object: std::sync::Arc<DeserializeGuard<K>>, ctx| {
        let key = caches::lean_ref(&*object);
        let pass = bulkhead::within(pool.clone(), reconcile(object, ctx));
        let timetable = timetable.clone();
        async move {
            let outcome = pass.await;
            let next = outcome.as_ref().ok().copied().unwrap_or_else(Next::await_change);
            let action = timetable.enter(key, next, tokio::time::Instant::now());
            outcome.map(|_| action)
        }
    };
    let results = controller(cache, queue, concurrency).shutdown_on_signal().run(reconcile, error_policy, ctx);
    drive(results, crate::api::kind::<K>(), &gate).await;
}

/// Consumes a controller's results: each one ends a pass (or finds its object gone), which frees
/// the object's place in the `gate`. Reconcile failures are logged by the reconcilers' error
/// policies and the watches report to health themselves (see [`caches::watch`]), so here they
/// are only traced.
async fn drive<K, E>(
    results: impl futures::Stream<
        Item = Result<
            (kube::runtime::reflector::ObjectRef<K>, kube::runtime::controller::Action),
            kube::runtime::controller::Error<E, kube::runtime::watcher::Error>,
        >,
    >,
    kind: &'static str,
    gate: &gate::Gate<K>,
) where
    K: Resource<DynamicType = ()>,
    E: std::error::Error + 'static,
{
    use futures::StreamExt;
    use kube::runtime::controller::Error;
    results
        .for_each(|result| {
            match &result {
                Ok((object, _)) => gate.finished(object.namespace.as_deref(), &object.name),
                Err(Error::ReconcilerFailed(_, object) | Error::ObjectNotFound(object)) => {
                    gate.finished(object.namespace.as_deref(), &object.name);
                }
                Err(_) => {}
            }
            if let Err(error) = &result {
                tracing::debug!(%error, kind, "reconcile did not complete");
            }
            std::future::ready(())
        })
        .await;
}

/// The object of a guarded watch event; or, when it did not deserialize, a Warning Event on it
/// naming the error, and the action to wait for it to change.
pub async fn deserialized<'a, K>(ctx: &Context, guarded: &'a DeserializeGuard<K>) -> Result<&'a K, Next>
where
    K: Resource<DynamicType = ()>,
{
    let invalid = match &guarded.0 {
        Ok(object) => return Ok(object),
        Err(invalid) => invalid,
    };
    let key = object_key(guarded);
    tracing::warn!(object = %key, error = %invalid.error, "the object does not match the operator's schema");
    let note = format!("the operator cannot read this {}: {}", K::kind(&()), invalid.error);
    let reason = crate::reason::Reason::InvalidObject;
    ctx.publish_event(&guarded.object_ref(&()), context::EventType::Warning, reason, note, "Reconcile").await;
    Err(Next::await_change())
}

/// One reconcile of a watched object, as both controllers run it: an object that does not
/// deserialize is reported and left; a panic inside `reconcile` is contained to this object and
/// answered by `on_panic` (which writes the status that says so); the pass is timed.
pub async fn reconcile_guarded<'a, K, E, Pass, Panicked>(
    ctx: &'a Context,
    guarded: &'a DeserializeGuard<K>,
    reconcile: impl FnOnce(&'a K) -> Pass,
    on_panic: impl FnOnce(&'a K) -> Panicked,
) -> Result<Next, E>
where
    K: Resource<DynamicType = ()>,
    Pass: std::future::Future<Output = Result<Next, E>>,
    Panicked: std::future::Future<Output = Result<Next, E>>,
{
    let object = match deserialized(ctx, guarded).await {
        Ok(object) => object,
        Err(action) => return Ok(action),
    };
    let started = std::time::Instant::now();
    let result = match contained(&object_key(object), reconcile(object)).await {
        Some(result) => result,
        None => on_panic(object).await,
    };
    ctx.metrics.reconciled(crate::api::kind::<K>(), started.elapsed());
    result
}

/// The requeue after a reconcile error: counted by category, logged with its source, backed off.
pub fn error_action(
    ctx: &Context,
    kind: &'static str,
    key: &str,
    category: &'static str,
    error: &dyn std::error::Error,
) -> kube::runtime::controller::Action {
    let failures = ctx.record_failure(key);
    ctx.metrics.reconcile_error(kind, category);
    tracing::warn!(kind, object = %key, error = %error, source = ?error.source().map(ToString::to_string), "reconcile failed");
    kube::runtime::controller::Action::requeue(timing::backoff(failures, ctx.settings.resync_interval))
}

/// Runs one reconcile, containing a panic inside it to this object: None when it panicked. The
/// process, the controller's other objects and their watches carry on.
pub async fn contained<T>(key: &str, reconcile: impl std::future::Future<Output = T>) -> Option<T> {
    use futures::FutureExt;
    let outcome = std::panic::AssertUnwindSafe(async {
        injected_panic(key);
        reconcile.await
    })
    .catch_unwind()
    .await;
    if outcome.is_err() {
        tracing::error!(object = %key, "the reconcile panicked; this object is retried with backoff, the others carry on");
    }
    outcome.ok()
}

/// The Ready condition of an object whose reconcile panicked.
pub fn panicked() -> crate::conditions::Observed {
    crate::conditions::Observed::failed(
        crate::conditions::READY,
        crate::reason::Reason::ReconcilePanicked,
        "the operator hit an internal error while reconciling this object and retries with backoff; other objects are not affected. Please report it with the operator's log",
    )
}

/// The fail point `reconcile-panic` panics the reconcile of the object whose key (`Kind/namespace/
/// name`) it is given, e.g. `FAILPOINTS='reconcile-panic=return(ArtifactStore/ns/victim)'`. Debug
/// builds (the tests') only: release builds and the image have no fail points.
#[cfg(debug_assertions)]
fn injected_panic(key: &str) {
    static SETUP: std::sync::Once = std::sync::Once::new();
    // The scenario reads FAILPOINTS once and holds its lock for the life of the process.
    SETUP.call_once(|| std::mem::forget(fail::FailScenario::setup()));
    fail::fail_point!("reconcile-panic", |victim: Option<String>| {
        if victim.as_deref() == Some(key) {
            panic!("injected by the reconcile-panic fail point");
        }
    });
}

#[cfg(not(debug_assertions))]
fn injected_panic(_key: &str) {}

/// Logs panics through tracing with their location only: a panic inside a library may carry a
/// user's value (a key pasted into a Secret) in its message, and no secret reaches a log.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(%location, "panic (its message is withheld: it may hold user values)");
    }));
}
