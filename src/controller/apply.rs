//! Writes the objects the operator owns, only when what is there differs from what we want, and
//! never over an object someone else made: an unchanged object costs no write (and no read when
//! this process published it and nobody changed it since), and a name clash is reported, not
//! taken over.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;

pub use super::claims::{FIELD_MANAGER, PUBLISHED_DIGEST_ANNOTATION};

/// What publishing an owned object came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It was already as wanted: nothing written.
    Unchanged,
    /// Created or replaced.
    Written,
    /// An object of that name exists and was not made by this operator for this owner: untouched.
    NotOurs,
}

/// Whether `current` was made by this operator for the owner of `desired`: it names that owner
/// (by UID) among its ownerReferences, or carries every label the operator puts on what it makes
/// for it (`app.kubernetes.io/managed-by` and the owner's name).
pub fn is_ours(current: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let owned = desired
        .owner_references
        .iter()
        .flatten()
        .any(|want| current.owner_references.iter().flatten().any(|have| have.uid == want.uid));
    let labelled = desired.labels.as_ref().is_some_and(|want| {
        !want.is_empty() && want.iter().all(|(k, v)| current.labels.as_ref().and_then(|have| have.get(k)) == Some(v))
    });
    owned || labelled
}

fn same_meta(current: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let subset = |want: &Option<BTreeMap<String, String>>, have: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    subset(&desired.labels, &current.labels)
        && subset(&desired.annotations, &current.annotations)
        && desired.owner_references.iter().flatten().all(|o| current.owner_references.iter().flatten().any(|c| c == o))
}

/// An object kind the operator publishes whole.
pub trait Owned: super::caches::Cached {
    /// Whether the content (not the metadata) of `self` equals that of `desired`.
    fn same_content(&self, desired: &Self) -> bool;
}

impl Owned for ConfigMap {
    fn same_content(&self, desired: &Self) -> bool {
        self.data == desired.data && self.binary_data == desired.binary_data
    }
}

impl Owned for Secret {
    fn same_content(&self, desired: &Self) -> bool {
        self.data.clone().unwrap_or_default() == desired.data.clone().unwrap_or_default() && self.type_ == desired.type_
    }
}

/// Publishes `desired` (which names its namespace) unless it is already there as wanted, or the
/// name is taken by an object that is not ours. What this process published and nobody changed
/// since costs no request; a name the caches do not hold is created at once. Otherwise the object
/// is read: a new one is created (a create fails rather than merging into an object made
/// meanwhile); an existing one of ours is replaced with its resourceVersion, so a concurrent
/// change fails the write instead of being overwritten unseen.
pub async fn publish<K: Owned>(ctx: &super::Context, desired: &K) -> Result<Applied, kube::Error> {
    let hash = super::reads::content_hash(desired);
    if ctx.published_unchanged(desired, hash) {
        return Ok(Applied::Unchanged);
    }
    // The digest goes with the object, for a restarted process to know it without a read.
    let desired = &with_digest(desired.clone(), hash);
    let name = desired.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), desired.meta().namespace.as_deref().unwrap_or_default());
    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
    let written = |object: K| {
        ctx.remember_published(desired, hash, object.meta().resource_version.clone());
        Ok(Applied::Written)
    };
    if ctx.absent(desired) == Some(true) {
        match api.create(&params, desired).await {
            Ok(created) => return written(created),
            // Made meanwhile (the caches had not seen it yet): judged below.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error),
        }
    }
    match api.get_opt(&name).await? {
        // One made by someone between our read and our create fails it (409): the next
        // reconcile judges that object.
        None => written(api.create(&params, desired).await?),
        Some(current) if !is_ours(current.meta(), desired.meta()) => {
            ctx.remember_published(desired, hash, None);
            Ok(Applied::NotOurs)
        }
        Some(current) if current.same_content(desired) && same_meta(current.meta(), desired.meta()) => {
            ctx.remember_published(desired, hash, current.meta().resource_version.clone());
            Ok(Applied::Unchanged)
        }
        Some(current) => {
            let mut replacement = desired.clone();
            replacement.meta_mut().resource_version = current.meta().resource_version.clone();
            written(api.replace(&name, &params, &replacement).await?)
        }
    }
}

/// Whether `desired` is published as it is (by this process, or, after a restart, as the watch
/// says): [`publish`] would write nothing.
pub fn is_published<K: Owned>(ctx: &super::Context, desired: &K) -> bool {
    ctx.published_unchanged(desired, super::reads::content_hash(desired))
}

/// Whether `K` `name` in `namespace` is a publication of this operator that nobody else has
/// written since (see [`super::caches::Caches::claimed`]), whatever it holds.
pub fn is_intact<K: super::caches::Cached>(ctx: &super::Context, namespace: &str, name: &str) -> bool {
    let reference = super::caches::Reference::new(K::KIND, name);
    ctx.caches(namespace).and_then(|caches| caches.claimed(namespace, &reference)).is_some()
}

/// `object` carrying the digest of what it is published as ([`PUBLISHED_DIGEST_ANNOTATION`]).
fn with_digest<K: Owned>(mut object: K, hash: u64) -> K {
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(PUBLISHED_DIGEST_ANNOTATION.to_owned(), format!("{hash:016x}"));
    object
}

/// A Secret's `stringData` moved into `data`, the form the apiserver stores and returns, so that
/// what we want compares equal to what is there.
pub fn secret_with_data(mut secret: Secret) -> Secret {
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (key, value) in strings {
            data.insert(key, k8s_openapi::ByteString(value.into_bytes()));
        }
    }
    secret
}

/// Whether `object` carries `finalizer`.
pub fn has_finalizer<K: kube::Resource>(object: &K, finalizer: &str) -> bool {
    object.meta().finalizers.iter().flatten().any(|f| f == finalizer)
}

/// Whether an object a write was meant for still exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Presence {
    Exists,
    /// Deleted (404): whoever wanted to hold it must write nothing more on its behalf.
    Gone,
}

/// Adds or removes `finalizer`, keeping every other finalizer, with optimistic concurrency (the
/// object's resourceVersion): a change made meanwhile, a deletion among them, fails the write
/// rather than being lost. An object already gone needs no change, and says so: a finalizer that
/// could not be added holds nothing, so nothing it would clean up may be written.
pub async fn set_finalizer<K>(api: &Api<K>, object: &K, finalizer: &str, present: bool) -> Result<Presence, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let meta = object.meta();
    let mut finalizers: Vec<String> = meta.finalizers.iter().flatten().filter(|f| *f != finalizer).cloned().collect();
    if present {
        finalizers.push(finalizer.to_owned());
    }
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": meta.resource_version}});
    match api.patch(meta.name.as_deref().unwrap_or_default(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(Presence::Exists),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Presence::Gone),
        Err(error) => Err(error),
    }
}

/// Writes a custom resource's status by server-side apply with the operator's field manager.
/// Returns the resourceVersion the write produced.
pub async fn status<K>(api: &Api<K>, name: &str, status: &impl serde::Serialize) -> Result<Option<String>, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let written = api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(written.meta().resource_version.clone())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn meta(labels: &[(&str, &str)], owner_uid: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("ml-artifact-store".into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            owner_references: owner_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "artifacts.dev/v1alpha1".into(),
                    kind: "ArtifactStore".into(),
                    name: "ml".into(),
                    uid: uid.into(),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    const OURS: &[(&str, &str)] =
        &[("app.kubernetes.io/managed-by", "artifact-operator"), ("artifacts.dev/artifact-store", "ml")];

    #[test]
    fn an_object_is_ours_by_owner_uid_or_by_our_labels() {
        let desired = meta(OURS, Some("uid-1"));
        assert!(is_ours(&meta(&[], Some("uid-1")), &desired));
        assert!(is_ours(&meta(OURS, None), &desired));
    }

    #[test]
    fn a_users_object_of_the_same_name_is_not_ours() {
        let desired = meta(OURS, Some("uid-1"));
        assert!(!is_ours(&meta(&[], None), &desired));
        assert!(!is_ours(&meta(&[("app.kubernetes.io/managed-by", "artifact-operator")], None), &desired));
        assert!(!is_ours(&meta(&[("artifacts.dev/artifact-store", "other")], Some("uid-2")), &desired));
    }

    #[test]
    fn string_data_compares_as_data() {
        let secret = Secret { string_data: Some([("K".to_owned(), "v".to_owned())].into()), ..Secret::default() };
        let secret = secret_with_data(secret);
        assert!(secret.string_data.is_none());
        assert_eq!(secret.data.unwrap()["K"].0, b"v");
    }
}
