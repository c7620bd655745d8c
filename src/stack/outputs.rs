//! Apply: what a Stack publishes besides its own ConfigMap, where each consumer looks for it.
//!
//! - `kfp-launcher` (KFP) is owned whole by one Stack per namespace; a second one is told who holds
//!   it (`KfpLauncherTaken`), and a `kfp-launcher` the user made is never touched (`NameConflict`).
//! - `artifact-repositories` (Argo) is shared: each Stack owns one key, its own name, written by
//!   server-side apply with a field manager of its own and without force, so other Stacks' keys and
//!   the user's stay as they are. The default-repository annotation goes to one Stack at most
//!   (`DefaultRepositoryTaken`). A finalizer removes the key (and the annotation, if ours) when the
//!   Stack goes or stops asking for Argo; the ConfigMap itself is deleted only when that leaves it
//!   empty and the operator created it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::ObjectMeta;
use serde_json::{Value, json};

use super::build;
use super::resolved::ResolvedStack;
use crate::api::artifact_store::CaBundleKind;
use crate::api::stack::OutputFormat;
use crate::api::{Stack, kind};
use crate::controller::Error;
use crate::controller::apply::{self, Applied, FIELD_MANAGER, Presence};
use crate::controller::claims;
use crate::owner::{MANAGED_BY, Owner};
use crate::reason::{Failure, Reason};
use crate::render::{argo, kfp};
use crate::resolve::{CA_BUNDLE_KEY, ResolvedStore, STORE_CONFIG_MAP};

/// Held while the Stack may own a key of `artifact-repositories`.
pub const FINALIZER: &str = "artifacts.dev/argo-repository";

fn config_maps(ctx: &crate::controller::Context, namespace: &str) -> Api<ConfigMap> {
    Api::namespaced(ctx.client.clone(), namespace)
}

/// What publishing a Stack came to.
pub enum Publication {
    /// Every consumer finds its configuration: the Stack's ConfigMap and its content hash.
    Done { name: String, hash: String },
    /// The Stack was deleted meanwhile: nothing shared was written for it.
    Gone,
}

/// Publishes everything the Stack renders: its ConfigMap, then `kfp-launcher` and its key of
/// `artifact-repositories` as asked. The shared objects are taken all together or not at all:
/// each is checked first, and while any is refused none is written anew (what the Stack already
/// holds stays). The finalizer that removes the Stack's key goes on before the key is written.
/// What the Stack could not take is [`Error::Invalid`], every part of it named.
/// (`object`: the Stack as read, whose finalizers this may change.)
pub async fn publish(
    ctx: &crate::controller::Context,
    object: &Stack,
    stack: &ResolvedStack,
    store: &ResolvedStore,
) -> Result<Publication, Error> {
    let ca_pem = store_ca_bundle(ctx, stack.namespace(), store).await?;
    let (config_map, hash) = build::config_map(stack, store, ca_pem.as_deref()).map_err(Error::Invalid)?;
    let name = build::CONFIG_MAP.name(stack.name());
    if apply::publish(ctx, &config_map).await.map_err(Error::Publish)? == Applied::NotOurs {
        return Err(Error::Invalid(stack.owner.name_conflict("ConfigMap", &name)));
    }
    if stack.wants(OutputFormat::Argo) && set_finalizer(ctx, object, true).await? == Presence::Gone {
        return Ok(Publication::Gone);
    }
    let kfp = Error::split(kfp_claim(ctx, stack, store).await)?;
    let argo = Error::split(argo_claim(ctx, object, stack, store, ca_pem.as_deref()).await)?;
    let (kfp, argo) = match (kfp, argo) {
        (Ok(kfp), Ok(argo)) => (kfp, argo),
        (kfp, argo) => {
            let refused = [kfp.err(), argo.err()].into_iter().flatten();
            return Err(Error::Invalid(refused_together(refused)));
        }
    };
    if let Some(argo) = &argo {
        argo.publish_ca_secret(ctx, &stack.owner).await?;
    }
    if let Some(launcher) = kfp {
        publish_kfp_launcher(ctx, &stack.owner, &launcher).await?;
    }
    if let Some(argo) = argo {
        argo.publish_key(ctx, &stack.owner).await?;
    }
    Ok(Publication::Done { name, hash })
}

/// One failure naming every shared object the Stack could not take (at least one), under the
/// first one's reason.
fn refused_together(refused: impl IntoIterator<Item = Failure>) -> Failure {
    let mut refused = refused.into_iter();
    let mut together = refused.next().unwrap_or_else(|| Failure::new(Reason::NameConflict, String::new()));
    for other in refused {
        together.message.push_str(&format!("; and {}", other.message));
    }
    together
        .message
        .push_str("; until it can take every one, the Stack writes nothing new into the namespace's shared objects");
    together
}

/// The CA bundle (certificates only) the store publishes in its ConfigMap, when it has one.
pub async fn store_ca_bundle(
    ctx: &crate::controller::Context,
    namespace: &str,
    store: &ResolvedStore,
) -> Result<Option<String>, Error> {
    if store.endpoint.as_ref().and_then(|e| e.ca_bundle.as_ref()).is_none() {
        return Ok(None);
    }
    let name = STORE_CONFIG_MAP.name(&store.name);
    let published = ctx.read::<ConfigMap>(namespace, &name).await.map_err(Error::Dereference)?;
    match published.as_ref().and_then(|cm| cm.data.as_ref()).and_then(|data| data.get(CA_BUNDLE_KEY)).cloned() {
        Some(pem) => Ok(Some(pem)),
        None => Err(Error::Invalid(Failure::new(
            Reason::ArtifactStoreNotReady,
            format!("ArtifactStore {} has not published its CA bundle in ConfigMap {name} yet", store.name),
        ))),
    }
}

/// The namespace's `kfp-launcher` the Stack may publish, when it asks for KFP: refused when
/// another Stack or the user holds it. Ours is removed when the Stack no longer asks for KFP.
async fn kfp_claim(
    ctx: &crate::controller::Context,
    stack: &ResolvedStack,
    store: &ResolvedStore,
) -> Result<Option<ConfigMap>, Error> {
    let desired = build::kfp_launcher(stack, store);
    let namespace = stack.namespace();
    if !stack.wants(OutputFormat::Kfp) && ctx.cached_absent::<ConfigMap>(namespace, kfp::CONFIG_MAP) {
        return Ok(None);
    }
    let current = ctx.read::<ConfigMap>(namespace, kfp::CONFIG_MAP).await.map_err(Error::Dereference)?;
    let ours = current.as_ref().is_some_and(|current| apply::is_ours(&current.metadata, &desired.metadata));
    if !stack.wants(OutputFormat::Kfp) {
        if let Some(current) = current.filter(|_| ours) {
            delete_exact(&config_maps(ctx, namespace), &current.metadata).await?;
        }
        return Ok(None);
    }
    match current {
        Some(theirs) if !ours => Err(Error::Invalid(kfp_launcher_taken(&theirs.metadata, &stack.owner))),
        _ => Ok(Some(desired)),
    }
}

/// Publishes the launcher claimed; one taken meanwhile is refused as the claim would have been.
async fn publish_kfp_launcher(
    ctx: &crate::controller::Context,
    owner: &Owner,
    launcher: &ConfigMap,
) -> Result<(), Error> {
    if apply::publish(ctx, launcher).await.map_err(Error::Publish)? != Applied::NotOurs {
        return Ok(());
    }
    let current = config_maps(ctx, &owner.namespace).get_opt(kfp::CONFIG_MAP).await.map_err(Error::Dereference)?;
    Err(Error::Invalid(kfp_launcher_taken(&current.unwrap_or_default().metadata, owner)))
}

/// Why `kfp-launcher` (as `meta` shows it) cannot be the Stack's.
fn kfp_launcher_taken(meta: &ObjectMeta, owner: &Owner) -> Failure {
    match holder(meta) {
        Some(holder) => Failure::new(
            Reason::KfpLauncherTaken,
            format!(
                "ConfigMap {} of this namespace, which Kubeflow Pipelines' launcher reads, belongs to Stack {holder}; only one Stack per namespace can provide it: remove KFP from one of them",
                kfp::CONFIG_MAP
            ),
        ),
        None => owner.name_conflict("ConfigMap", kfp::CONFIG_MAP),
    }
}

/// The Stack that controls an object, if a Stack does.
fn holder(meta: &ObjectMeta) -> Option<String> {
    let owners = meta.owner_references.iter().flatten();
    owners.filter(|o| o.kind == kind::<Stack>() && o.controller == Some(true)).map(|o| o.name.clone()).next()
}

/// Deletes exactly the version read, so a change made meanwhile is not deleted unseen.
pub(crate) async fn delete_exact<K>(api: &Api<K>, meta: &ObjectMeta) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let preconditions = Preconditions { resource_version: meta.resource_version.clone(), uid: meta.uid.clone() };
    let params = DeleteParams { preconditions: Some(preconditions), ..DeleteParams::default() };
    match api.delete(meta.name.as_deref().unwrap_or_default(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(Error::Publish(error)),
    }
}

/// The Stack's part of Argo's configuration, checked and ready to write.
struct ArgoPart {
    /// The CA Secret the repository names, when the store's CA is in a ConfigMap.
    ca_secret: Option<Secret>,
    /// Whether `artifact-repositories` exists (else it is created, empty, first).
    exists: bool,
    /// The server-side apply of the Stack's key (and the default annotation), unless already so.
    apply: Option<Value>,
}

/// The Stack's key of `artifact-repositories` (and the CA Secret it names) that it may write:
/// refused when the key is someone else's, or when it asks for the namespace default another
/// holds. When the Stack no longer asks for Argo, what it held there goes ([`release_argo`]).
async fn argo_claim(
    ctx: &crate::controller::Context,
    object: &Stack,
    stack: &ResolvedStack,
    store: &ResolvedStore,
    ca_pem: Option<&str>,
) -> Result<Option<ArgoPart>, Error> {
    let from_config_map =
        store.endpoint.as_ref().and_then(|e| e.ca_bundle.as_ref()).is_some_and(|ca| ca.kind == CaBundleKind::ConfigMap);
    if !stack.wants(OutputFormat::Argo) {
        return release_argo(ctx, object, &stack.owner, from_config_map).await.map(|()| None);
    }
    let namespace = stack.namespace();
    let name = stack.name();
    let ca_secret = ca_pem.filter(|_| from_config_map).map(|pem| build::ca_secret(&stack.owner, pem));
    if let Some(secret) = &ca_secret {
        let secret_name = build::CA_SECRET.name(name);
        let current = ctx.read::<Secret>(namespace, &secret_name).await.map_err(Error::Dereference)?;
        if current.is_some_and(|current| !apply::is_ours(&current.metadata, &secret.metadata)) {
            return Err(Error::Invalid(stack.owner.name_conflict("Secret", &secret_name)));
        }
    }
    let value = build::argo_repository(stack, store);
    let default = stack.argo_default_repository;
    let part = ArgoApply::new(name, &value, default);
    // The watch shows the Stack's manager still holding what it applied: nothing to read or write
    // (after a restart too).
    if ctx.part_claim(namespace, argo::CONFIG_MAP, name).is_some_and(|claim| part.claimed(&claim)) {
        return Ok(Some(ArgoPart { ca_secret, exists: true, apply: None }));
    }
    // Read whole only when someone wrote it since this process last read or wrote it: the Stacks
    // of a namespace that share it take each other's writes from memory.
    let read = ctx.read_with_managers::<ConfigMap>(namespace, argo::CONFIG_MAP).await.map_err(Error::Dereference)?;
    let none = ConfigMap::default();
    let current = read.as_deref().unwrap_or(&none);
    let owned = claims::owned(&current.metadata, &claims::part_manager(name));
    let no_data = BTreeMap::new();
    let data = current.data.as_ref().unwrap_or(&no_data);
    if data.contains_key(name) && !owned.key(name) {
        return Err(Error::Invalid(Failure::new(
            Reason::NameConflict,
            format!(
                "ConfigMap {} already has a key {name} that this Stack did not write; the operator never overwrites it: remove that key or rename the Stack",
                argo::CONFIG_MAP
            ),
        )));
    }
    let annotation = current.annotations().get(argo::DEFAULT_REPOSITORY_ANNOTATION);
    if let Some(key) = annotation.filter(|key| default && *key != name) {
        return Err(Error::Invalid(Failure::new(
            Reason::DefaultRepositoryTaken,
            format!(
                "the namespace's default artifact repository is already {} (annotation {} of ConfigMap {}); only one Stack per namespace can be the default: set argoDefaultRepository on one Stack only",
                holder_of_key(&current.metadata, key),
                argo::DEFAULT_REPOSITORY_ANNOTATION,
                argo::CONFIG_MAP
            ),
        )));
    }
    let claimed = claims::part_claim(&current.metadata, name).is_some_and(|claim| part.claimed(&claim));
    let unchanged = claimed && data.get(name) == Some(&value);
    let apply = (!unchanged).then_some(part.body);
    Ok(Some(ArgoPart { ca_secret, exists: read.is_some(), apply }))
}

/// The server-side apply of a Stack's part of `artifact-repositories`: its key, the default
/// annotation when it asks for it, and the digest of both ([`claims::part_digest_annotation`]).
struct ArgoApply {
    body: Value,
    digest: u64,
    default: bool,
}

impl ArgoApply {
    fn new(name: &str, value: &str, default: bool) -> Self {
        let mut annotations = serde_json::Map::new();
        if default {
            annotations.insert(argo::DEFAULT_REPOSITORY_ANNOTATION.to_owned(), json!(name));
        }
        let digest = crate::controller::digest((name, value, default));
        annotations.insert(claims::part_digest_annotation(name), json!(claims::digest_value(digest)));
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": argo::CONFIG_MAP, "annotations": annotations}, "data": { name: value }});
        Self { body, digest, default }
    }

    /// Whether the part's manager holds this apply as it was made: the same digest, and the
    /// default annotation exactly when asked for.
    fn claimed(&self, claim: &claims::PartClaim) -> bool {
        let holds_default = claim.annotations.iter().any(|a| &**a == argo::DEFAULT_REPOSITORY_ANNOTATION);
        claim.digest == self.digest && holds_default == self.default
    }
}

/// Once the Stack no longer asks for Argo: its key, its CA Secret, then the finalizer go.
async fn release_argo(
    ctx: &crate::controller::Context,
    object: &Stack,
    owner: &Owner,
    from_config_map: bool,
) -> Result<(), Error> {
    // Nothing to remove from a ConfigMap that is not there (most Stacks of a cluster without
    // Argo): no read.
    if !ctx.cached_absent::<ConfigMap>(&owner.namespace, argo::CONFIG_MAP) {
        remove_argo_key(ctx, owner).await?;
    }
    if from_config_map {
        remove_ca_secret(&Api::namespaced(ctx.client.clone(), &owner.namespace), owner).await?;
    }
    set_finalizer(ctx, object, false).await.map(|_| ())
}

impl ArgoPart {
    /// Publishes the CA Secret; one taken meanwhile is refused as the claim would have been.
    async fn publish_ca_secret(&self, ctx: &crate::controller::Context, owner: &Owner) -> Result<(), Error> {
        let Some(secret) = &self.ca_secret else { return Ok(()) };
        if apply::publish(ctx, secret).await.map_err(Error::Publish)? == Applied::NotOurs {
            return Err(Error::Invalid(owner.name_conflict("Secret", &build::CA_SECRET.name(&owner.name))));
        }
        Ok(())
    }

    /// Writes the Stack's key (and the default annotation) with its own field manager, creating
    /// an empty `artifact-repositories` first if there is none.
    async fn publish_key(self, ctx: &crate::controller::Context, owner: &Owner) -> Result<(), Error> {
        let Some(apply) = self.apply else { return Ok(()) };
        let api = config_maps(ctx, &owner.namespace);
        if !self.exists {
            create_argo_config_map(&api).await?;
        }
        let manager = claims::part_manager(&owner.name);
        let written = api
            .patch(argo::CONFIG_MAP, &PatchParams::apply(&manager), &Patch::Apply(&apply))
            .await
            .map_err(Error::Publish)?;
        ctx.remember_written_with_managers(written);
        Ok(())
    }
}

/// Deletes the Stack's CA Secret for Argo, if it is there and ours.
async fn remove_ca_secret(secrets: &Api<Secret>, owner: &Owner) -> Result<(), Error> {
    let desired = build::ca_secret(owner, "");
    let Some(current) =
        secrets.get_metadata_opt(&build::CA_SECRET.name(&owner.name)).await.map_err(Error::Dereference)?
    else {
        return Ok(());
    };
    if !apply::is_ours(&current.metadata, &desired.metadata) {
        return Ok(());
    }
    delete_exact(secrets, &current.metadata).await
}

/// Creates an empty `artifact-repositories`, labelled as ours. Its label is owned by the create,
/// not by any Stack's field manager, so it outlives each Stack's part and tells who created it.
async fn create_argo_config_map(api: &Api<ConfigMap>) -> Result<(), Error> {
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(argo::CONFIG_MAP.to_owned()),
            labels: Some(BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())])),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
    match api.create(&params, &config_map).await {
        Ok(_) => Ok(()),
        // Created meanwhile (by another Stack or the user): the Stack's key goes into theirs.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(Error::Publish(error)),
    }
}

/// Describes who a key of `artifact-repositories` belongs to.
fn holder_of_key(meta: &ObjectMeta, key: &str) -> String {
    claims::part_owning_key(meta, key)
        .map_or_else(|| format!("key {key}"), |stack| format!("Stack {stack}'s key {key}"))
}

/// Removes everything the Stack's field manager owns in `artifact-repositories` (its key, and the
/// default annotation if it set it), and the ConfigMap if that leaves one the operator created empty.
pub async fn remove_argo_key(ctx: &crate::controller::Context, owner: &Owner) -> Result<(), Error> {
    let api = config_maps(ctx, &owner.namespace);
    let Some(current) = api.get_opt(argo::CONFIG_MAP).await.map_err(Error::Dereference)? else {
        return Ok(());
    };
    let manager = claims::part_manager(&owner.name);
    let current = if claims::owned(&current.metadata, &manager).anything() {
        match drop_fields(&api, &current.metadata, &manager).await? {
            Some(updated) => updated,
            None => return Ok(()),
        }
    } else {
        current
    };
    delete_if_ours_and_empty(&api, &current).await
}

/// Drops everything `manager` owns in `artifact-repositories` as read at `read`'s version: an
/// apply of nothing, whose resourceVersion makes it apply to what was read (a change made
/// meanwhile fails it, 409) and never create the ConfigMap anew. The ConfigMap after, unless gone.
pub async fn drop_fields(api: &Api<ConfigMap>, read: &ObjectMeta, manager: &str) -> Result<Option<ConfigMap>, Error> {
    let patch = json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": argo::CONFIG_MAP, "resourceVersion": read.resource_version}});
    match api.patch(argo::CONFIG_MAP, &PatchParams::apply(manager), &Patch::Apply(&patch)).await {
        Ok(updated) => Ok(Some(updated)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(error) => Err(Error::Publish(error)),
    }
}

/// Deletes `artifact-repositories` when the operator created it and nothing is left in it.
pub async fn delete_if_ours_and_empty(api: &Api<ConfigMap>, current: &ConfigMap) -> Result<(), Error> {
    let empty = current.data.as_ref().is_none_or(BTreeMap::is_empty)
        && current.binary_data.as_ref().is_none_or(BTreeMap::is_empty);
    let created_by_us = current.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1);
    if empty && created_by_us {
        delete_exact(api, &current.metadata).await?;
    }
    Ok(())
}

fn has_finalizer(stack: &Stack) -> bool {
    apply::has_finalizer(stack, FINALIZER)
}

/// Adds or removes the finalizer when it is not already so. `Gone` when the Stack was deleted
/// before the finalizer could go on: it then holds nothing, and must write nothing shared.
pub async fn set_finalizer(ctx: &crate::controller::Context, stack: &Stack, present: bool) -> Result<Presence, Error> {
    if has_finalizer(stack) == present {
        return Ok(Presence::Exists);
    }
    let api: Api<Stack> = Api::namespaced(ctx.client.clone(), &stack.namespace().unwrap_or_default());
    apply::set_finalizer(&api, stack, FINALIZER, present).await.map_err(Error::Publish)
}

/// On deletion: the Stack's key of `artifact-repositories` goes, then the finalizer.
pub async fn cleanup(ctx: &crate::controller::Context, stack: &Stack) -> Result<(), Error> {
    if has_finalizer(stack) {
        remove_argo_key(ctx, &Owner::of(stack)).await?;
        // A Stack already gone has no finalizer left to remove.
        set_finalizer(ctx, stack, false).await.map(|_| ())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    use super::*;

    fn entry(manager: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            operation: Some("Apply".to_owned()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    #[test]
    fn a_stack_owns_only_what_its_field_manager_applied() {
        let meta = ObjectMeta {
            managed_fields: Some(vec![
                entry(
                    "artifact-operator/stack/prod",
                    json!({"f:data": {"f:prod": {}},
                           "f:metadata": {"f:annotations": {"f:workflows.argoproj.io/default-artifact-repository": {}}}}),
                ),
                entry("artifact-operator/stack/dev", json!({"f:data": {"f:dev": {}}})),
                entry("kubectl", json!({"f:data": {"f:mine": {}}})),
            ]),
            ..ObjectMeta::default()
        };
        let default = argo::DEFAULT_REPOSITORY_ANNOTATION;
        let prod = claims::owned(&meta, &claims::part_manager("prod"));
        assert!(prod.key("prod") && !prod.key("dev") && prod.annotation(default));
        let dev = claims::owned(&meta, &claims::part_manager("dev"));
        assert!(dev.key("dev") && !dev.annotation(default));
        assert_eq!(holder_of_key(&meta, "dev"), "Stack dev's key dev");
        assert_eq!(holder_of_key(&meta, "mine"), "key mine");
    }

    #[test]
    fn a_part_is_claimed_as_applied_only() {
        let claim = |digest, annotations: &[&str]| claims::PartClaim {
            digest,
            annotations: annotations.iter().map(|a| (*a).into()).collect(),
        };
        let default = argo::DEFAULT_REPOSITORY_ANNOTATION;
        let part = ArgoApply::new("prod", "s3: {}", true);
        assert_eq!(part.body["metadata"]["annotations"][default], "prod");
        assert_eq!(part.body["metadata"]["annotations"]["parts.artifacts.dev/prod"], claims::digest_value(part.digest));
        assert!(part.claimed(&claim(part.digest, &[default])));
        assert!(!part.claimed(&claim(part.digest, &[])), "the default annotation was taken from it");
        assert!(!part.claimed(&claim(part.digest ^ 1, &[default])), "another value");
        let other = ArgoApply::new("prod", "s3: {}", false);
        assert_ne!(other.digest, part.digest);
        assert!(other.claimed(&claim(other.digest, &[])));
        assert!(!other.claimed(&claim(other.digest, &[default])), "a default it no longer asks for");
    }
}
