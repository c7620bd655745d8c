//! What a Stack wrote into a namespace's shared ConfigMaps goes when the Stack goes, even when the
//! finalizer did not get to remove it (an operator of an older version, a Stack deleted while the
//! operator was down, a cleanup lost to a crash). At the start for each watched scope, then at
//! each resync for each namespace whose shared ConfigMaps changed since (see [`run`]):
//!
//! - in `artifact-repositories`, whatever a per-Stack field manager (`artifact-operator/stack/<name>`)
//!   owns, its key and the default annotation, is dropped when no Stack of that name exists; a
//!   user's keys, other field managers' and live Stacks' are never touched;
//! - a `kfp-launcher` the operator made for a Stack (our label, that Stack as controller) is deleted
//!   when that Stack no longer exists (the garbage collector does the same where it runs).
//!
//! Besides, a namespace is swept a few seconds after a Stack in it was deleted (see [`run`]).
//!
//! A Stack is taken for gone only when neither the cache nor the apiserver has it, and every
//! removal is conditional on the version read, so a Stack created meanwhile keeps what it writes.
//! A sweep is one LIST per ConfigMap name, of metadata only, filtered by name on the server. A
//! namespace's sweep lists none that the caches say is absent, nor an `artifact-repositories` whose
//! version this process read or wrote itself (it holds that copy, field managers and all).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Resource;
use kube::api::{Api, ListParams, ObjectMeta};
use kube::runtime::reflector::ObjectRef;

use super::outputs;
use crate::api::{Stack, kind};
use crate::controller::caches::{Caches, Reference, Version};
use crate::controller::timing::jittered;
use crate::controller::{Context, claims, scoped_api};
use crate::owner::{Kind, MANAGED_BY, MANAGED_BY_SELECTOR};
use crate::render::{argo, kfp};

/// How long after a Stack's deletion its namespace is swept: the pass that was running for it
/// when it went has written what it was going to by then.
const AFTER_DELETION: Duration = Duration::from_secs(3);

/// The shared ConfigMaps a Stack writes into.
const SHARED: [&str; 2] = [argo::CONFIG_MAP, kfp::CONFIG_MAP];

/// Sweeps the whole scope at once; then, every resync interval (jittered), each namespace whose
/// shared ConfigMaps changed since it was last swept (the watches' versions tell, so a quiet
/// cluster costs no request); and each namespace in which a Stack was deleted, [`AFTER_DELETION`]
/// later, until the process stops. The last is needed because the apiserver can confirm a
/// finalizer added to a Stack that a DELETE already under way then removes anyway, so a pass may
/// write for a Stack that is gone without a finalizer to run.
pub async fn run(ctx: Arc<Context>, scope: Option<String>, caches: Caches, mut deleted: UnboundedReceiver<String>) {
    let mut swept = Swept::default();
    let mut resync = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut first = true;
    loop {
        let namespaces: Vec<Option<String>> = tokio::select! {
            () = &mut resync => {
                resync.as_mut().reset(tokio::time::Instant::now() + jittered(ctx.settings.resync_interval));
                if std::mem::take(&mut first) {
                    vec![scope.clone()]
                } else {
                    swept.changed(&caches).into_iter().map(Some).collect()
                }
            }
            Some(namespace) = deleted.next() => {
                tokio::time::sleep(AFTER_DELETION).await;
                let mut namespaces = BTreeSet::from([namespace]);
                while let Ok(more) = deleted.try_recv() {
                    namespaces.insert(more);
                }
                namespaces.into_iter().map(Some).collect()
            }
        };
        for namespace in namespaces {
            match sweep(&ctx, &namespace, &caches).await {
                Ok(Sweep { removed, namespaces }) => {
                    if removed > 0 {
                        tracing::info!(removed, "removed what deleted Stacks had left in shared ConfigMaps");
                    }
                    swept.record(&caches, namespaces);
                }
                Err(error) => tracing::warn!(%error, "failed to sweep what deleted Stacks left in shared ConfigMaps"),
            }
        }
    }
}

/// The version of each namespace's shared ConfigMaps (None: absent) as the caches held them
/// when the namespace was last swept.
#[derive(Default)]
struct Swept(HashMap<(String, &'static str), Option<Version>>);

impl Swept {
    fn now(caches: &Caches, namespace: &str, name: &'static str) -> Option<Version> {
        caches.version(namespace, &Reference::new(Kind::ConfigMap, name))
    }

    /// The namespaces, among those swept and those with Stacks, whose shared ConfigMaps are not as
    /// they were when last swept.
    fn changed(&self, caches: &Caches) -> BTreeSet<String> {
        let with_stacks = caches.stacks.state().into_iter().filter_map(|stack| stack.meta().namespace.clone());
        let known = self.0.keys().map(|(namespace, _)| namespace.clone());
        let namespaces: BTreeSet<String> = with_stacks.chain(known).collect();
        let changed = |namespace: &String| {
            SHARED
                .iter()
                .any(|name| self.0.get(&(namespace.clone(), *name)) != Some(&Self::now(caches, namespace, name)))
        };
        namespaces.into_iter().filter(changed).collect()
    }

    /// Remembers `namespaces` as swept, with the versions the caches hold now (a removal the
    /// caches have not seen yet brings one more sweep, which finds nothing).
    fn record(&mut self, caches: &Caches, namespaces: BTreeSet<String>) {
        for namespace in namespaces {
            for name in SHARED {
                self.0.insert((namespace.clone(), name), Self::now(caches, &namespace, name));
            }
        }
    }
}

/// What one sweep did: how many leftovers it removed, and which namespaces it looked at.
pub struct Sweep {
    pub removed: usize,
    pub namespaces: BTreeSet<String>,
}

/// One sweep of `scope` (a namespace, or all the watched ones).
pub async fn sweep(ctx: &Context, scope: &Option<String>, caches: &Caches) -> Result<Sweep, kube::Error> {
    let mut removed = 0;
    // Every namespace of the scope with Stacks counts as looked at, with or without the ConfigMaps.
    let mut namespaces: BTreeSet<String> = match scope {
        Some(namespace) => BTreeSet::from([namespace.clone()]),
        None => caches.stacks.state().into_iter().filter_map(|stack| stack.meta().namespace.clone()).collect(),
    };
    let all: Api<ConfigMap> = scoped_api(&ctx.client, scope);
    let named = |name: &str| ListParams::default().fields(&format!("metadata.name={name}"));
    let listed = async |params: &ListParams| -> Result<Vec<ObjectMeta>, kube::Error> {
        Ok(all.list_metadata(params).await?.items.into_iter().map(|shared| shared.metadata).collect())
    };
    // One namespace's `artifact-repositories`: none when the caches hold none, or show a Stack for
    // each of its parts (nothing was left behind); the copy this process holds when it read or
    // wrote the version the caches hold (a ramp of Stacks changes it in every namespace, each
    // change theirs); else as listed.
    let argo_maps = match scope {
        Some(namespace) if ctx.cached_absent::<ConfigMap>(namespace, argo::CONFIG_MAP) => Vec::new(),
        Some(namespace) if every_part_has_its_stack(caches, namespace) => Vec::new(),
        Some(namespace) => match ctx.held_with_managers::<ConfigMap>(namespace, argo::CONFIG_MAP) {
            Some(held) => vec![held.metadata.clone()],
            None => listed(&named(argo::CONFIG_MAP)).await?,
        },
        None => listed(&named(argo::CONFIG_MAP)).await?,
    };
    for mut read in argo_maps {
        let namespace = read.namespace.clone().unwrap_or_default();
        namespaces.insert(namespace.clone());
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
        for stack in claims::parts_with_fields(&read) {
            if stack_exists(ctx, caches, &namespace, &stack, None).await? {
                continue;
            }
            tracing::info!(namespace, stack, "removing what a deleted Stack left in artifact-repositories");
            match drop_leftover(&api, &read, &stack).await {
                Ok(Some(updated)) => {
                    removed += 1;
                    read = updated.metadata;
                }
                Ok(None) => break,
                // Changed since it was read (409), perhaps by a Stack of that name created
                // meanwhile: the next sweep judges it again.
                Err(error) => {
                    tracing::debug!(%error, namespace, stack, "a leftover was not removed this time");
                    break;
                }
            }
        }
    }
    let ours = ListParams { label_selector: Some(MANAGED_BY_SELECTOR.to_owned()), ..named(kfp::CONFIG_MAP) };
    let launchers = match scope {
        Some(namespace) if ctx.cached_absent::<ConfigMap>(namespace, kfp::CONFIG_MAP) => Vec::new(),
        _ => listed(&ours).await?,
    };
    for launcher in launchers {
        let namespace = launcher.namespace.clone().unwrap_or_default();
        namespaces.insert(namespace.clone());
        let Some((stack, uid)) = controlling_stack(&launcher) else { continue };
        if stack_exists(ctx, caches, &namespace, &stack, Some(&uid)).await? {
            continue;
        }
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
        match outputs::delete_exact(&api, &launcher).await {
            Ok(()) => removed += 1,
            Err(error) => tracing::debug!(%error, namespace, stack, "a leftover launcher was not removed this time"),
        }
    }
    Ok(Sweep { removed, namespaces })
}

/// Whether the caches show `namespace`'s `artifact-repositories`, and a Stack for each of its parts
/// (see [`claims::parts`]): then nobody left anything there to sweep.
fn every_part_has_its_stack(caches: &Caches, namespace: &str) -> bool {
    let has_stack = |part: &str| caches.stacks.get(&ObjectRef::new(part).within(namespace)).is_some();
    caches.parts(namespace, argo::CONFIG_MAP).is_some_and(|parts| parts.iter().all(|part| has_stack(part)))
}

/// Drops what Stack `stack`'s field manager owns in `artifact-repositories` as `read`, and the
/// ConfigMap if that leaves ours empty. The ConfigMap after, unless gone.
async fn drop_leftover(
    api: &Api<ConfigMap>,
    read: &ObjectMeta,
    stack: &str,
) -> Result<Option<ConfigMap>, crate::controller::Error> {
    let Some(updated) = outputs::drop_fields(api, read, &claims::part_manager(stack)).await? else {
        return Ok(None);
    };
    outputs::delete_if_ours_and_empty(api, &updated).await?;
    Ok(Some(updated))
}

/// The Stack an object of ours was made for: its controller owner's name and UID, when that is a
/// Stack and the object carries our label.
fn controlling_stack(meta: &ObjectMeta) -> Option<(String, String)> {
    let labelled = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).map(String::as_str) == Some(MANAGED_BY.1);
    let owners = meta.owner_references.iter().flatten().filter(|_| labelled);
    owners
        .filter(|o| o.kind == kind::<Stack>() && o.controller == Some(true))
        .map(|o| (o.name.clone(), o.uid.clone()))
        .next()
}

/// Whether Stack `name` (with `uid`, when given) exists: as the cache has it, else as the
/// apiserver answers, so a Stack the cache has not seen yet is never taken for gone.
async fn stack_exists(
    ctx: &Context,
    caches: &Caches,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
) -> Result<bool, kube::Error> {
    let same = |meta: &ObjectMeta| uid.is_none_or(|uid| meta.uid.as_deref() == Some(uid));
    if caches.stacks.get(&ObjectRef::new(name).within(namespace)).is_some_and(|cached| same(cached.meta())) {
        return Ok(true);
    }
    let api: Api<Stack> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(api.get_metadata_opt(name).await?.is_some_and(|found| same(&found.metadata)))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    #[test]
    fn a_launcher_is_a_stack_s_only_with_our_label_and_that_stack_as_controller() {
        let owner = |kind: &str, controller: bool| OwnerReference {
            kind: kind.to_owned(),
            name: "prod".to_owned(),
            uid: "u-1".to_owned(),
            controller: Some(controller),
            ..OwnerReference::default()
        };
        let meta = |labelled: bool, owners: Vec<OwnerReference>| ObjectMeta {
            labels: labelled.then(|| [(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into()),
            owner_references: Some(owners),
            ..ObjectMeta::default()
        };
        assert_eq!(controlling_stack(&meta(true, vec![owner("Stack", true)])), Some(("prod".into(), "u-1".into())));
        assert_eq!(controlling_stack(&meta(false, vec![owner("Stack", true)])), None, "a user's launcher");
        assert_eq!(controlling_stack(&meta(true, vec![owner("Stack", false)])), None);
        assert_eq!(controlling_stack(&meta(true, vec![owner("Deployment", true)])), None);
    }
}
