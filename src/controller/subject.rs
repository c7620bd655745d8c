//! The object a reconcile is about, as its own writes address it: its status, its finalizers and
//! the Events about it.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::Api;

use super::Context;
use super::apply::{self, Presence};
use super::caches::Watched;
use super::context::EventType;
use crate::conditions::Transition;
use crate::reason::Reason;

fn api<K: Watched>(ctx: &Context, object: &K) -> Api<K> {
    Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default())
}

/// Writes `status` of `object` by server-side apply, unless the cache has not caught up with this
/// process's last write (see [`Context::may_write_status`]); then announces `transitions`.
pub async fn write_status<K: Watched>(
    ctx: &Context,
    object: &K,
    status: &impl serde::Serialize,
    transitions: &[Transition],
) -> Result<(), kube::Error> {
    let meta = object.meta();
    // A cache that has not caught up with this process's last write would have it overwrite
    // (and announce again) what that write said.
    if !ctx.may_write_status(meta) {
        return Ok(());
    }
    apply::status(&api(ctx, object), &object.name_any(), status).await?;
    ctx.wrote_status(meta);
    ctx.announce_transitions(crate::api::kind::<K>(), meta, &object.object_ref(&()), transitions).await;
    Ok(())
}

/// Writes `status` of `object` ahead of the pass's last write, which then supersedes it (see
/// [`Context::wrote_intermediate_status`]).
pub async fn write_intermediate_status<K: Watched>(
    ctx: &Context,
    object: &K,
    status: &impl serde::Serialize,
) -> Result<(), kube::Error> {
    let version = apply::status(&api(ctx, object), &object.name_any(), status).await?;
    ctx.wrote_intermediate_status(object.meta(), &version.unwrap_or_default());
    Ok(())
}

/// Adds `finalizer` to `object` or removes it (see [`apply::set_finalizer`]).
pub async fn set_finalizer<K: Watched>(
    ctx: &Context,
    object: &K,
    finalizer: &str,
    present: bool,
) -> Result<Presence, kube::Error> {
    apply::set_finalizer(&api(ctx, object), object, finalizer, present).await
}

/// Publishes an Event about `object` (see [`Context::publish_event`]).
pub async fn event<K: Watched>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: Reason,
    note: String,
    action: &str,
) {
    ctx.publish_event(&object.object_ref(&()), type_, reason, note, action).await;
}

/// Whether `object` goes because its namespace or its CRD goes: why, or None.
///
/// Read from the Namespace and the CRD. An operator with namespaced RBAC may read neither: it
/// asks the apiserver instead with dry-run creates (of a ConfigMap, and of `probe`'s object of the
/// same kind), which fail only while the namespace is being terminated or the CRD is being deleted.
pub async fn deleted_in_bulk<K: Watched + serde::Serialize>(
    ctx: &Context,
    object: &K,
    probe: impl FnOnce(&str) -> K,
) -> Result<Option<String>, kube::Error> {
    let namespace = object.namespace().unwrap_or_default();
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let namespace_going = match namespaces.get_opt(&namespace).await {
        Ok(found) => found.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        Err(error) if forbidden(&error) => {
            let probe = ConfigMap {
                metadata: kube::core::ObjectMeta { name: Some(PROBE_NAME.into()), ..Default::default() },
                ..ConfigMap::default()
            };
            refused_create(&Api::namespaced(ctx.client.clone(), &namespace), &probe, "being terminated").await?
        }
        Err(error) => return Err(error),
    };
    if namespace_going {
        return Ok(Some(format!("namespace {namespace} is being deleted")));
    }
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let crd_going = match crds.get_opt(&format!("{}.{}", K::plural(&()), K::group(&()))).await {
        Ok(found) => found.is_none_or(|c| c.metadata.deletion_timestamp.is_some()),
        Err(error) if forbidden(&error) => refused_create(&api(ctx, object), &probe(PROBE_NAME), "terminating").await?,
        Err(error) => return Err(error),
    };
    if crd_going {
        return Ok(Some(format!("the {} CRD is being deleted", crate::api::kind::<K>())));
    }
    Ok(None)
}

/// The name of the objects only ever created as dry runs to probe for a deletion in progress.
const PROBE_NAME: &str = "artifact-operator-deletion-probe";

fn forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403)
}

/// Whether a dry-run create of `probe` is refused because what holds it is going away: the
/// apiserver says so with `going` in its message, or no longer finds the namespace or resource.
async fn refused_create<K>(api: &Api<K>, probe: &K, going: &str) -> Result<bool, kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = kube::api::PostParams { dry_run: true, ..Default::default() };
    match api.create(&params, probe).await {
        Ok(_) => Ok(false),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(true),
        Err(kube::Error::Api(status))
            if (status.code == 403 || status.code == 405) && status.message.contains(going) =>
        {
            Ok(true)
        }
        Err(error) => Err(error),
    }
}
