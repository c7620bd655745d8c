//! What both reconcilers share: the context, requeue timing, Events, and writing owned objects
//! only when they differ.

pub mod apply;
pub mod context;
pub mod health;
pub mod timing;

pub use context::Context;

use k8s_openapi::NamespaceResourceScope;
use kube::{Api, Client, Resource};

/// An Api over one namespace, or over all of them.
pub fn scoped_api<K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>>(
    client: &Client,
    namespace: &Option<String>,
) -> Api<K> {
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Consumes a controller's results: watch failures mark `health`, reconcile failures are logged
/// by the reconcilers' error policies, so here they are only traced.
pub async fn drive<K, E>(
    results: impl futures::Stream<
        Item = Result<
            (kube::runtime::reflector::ObjectRef<K>, kube::runtime::controller::Action),
            kube::runtime::controller::Error<E, kube::runtime::watcher::Error>,
        >,
    >,
    health: std::sync::Arc<health::Health>,
    kind: &'static str,
) where
    K: Resource,
    E: std::error::Error + 'static,
{
    use futures::StreamExt;
    results
        .for_each(|result| {
            match &result {
                Err(kube::runtime::controller::Error::QueueError(error)) => {
                    health.watch_failed();
                    tracing::warn!(%error, kind, "watch failed");
                }
                Err(error) => tracing::debug!(%error, kind, "reconcile did not complete"),
                Ok(_) => health.watch_succeeded(),
            }
            std::future::ready(())
        })
        .await;
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
