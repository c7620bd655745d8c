//! Reads and writes of whole objects, through the caches. The caches hold only metadata; an object
//! the operator needs whole (a Secret's keys, a CA bundle) is fetched from the apiserver only when
//! the watch says its resourceVersion changed since the last read (twenty stores that share one
//! Secret cost one read). A ServiceAccount is never read whole: the caches keep what is read of it.
//! An object the operator published is read back only when the watch says someone else changed it
//! since.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;

use super::Context;
use super::caches::{Cached, Reference, Version};
use super::known::{Key, key};

/// A 64-bit digest of everything `object` says, to tell whether the same object is wanted again
/// (two contents that digest alike, with the same resourceVersion, would skip one write once in
/// 2^64).
pub(super) fn content_hash(object: &impl serde::Serialize) -> u64 {
    super::digest(serde_json::to_vec(object).unwrap_or_default())
}

impl Context {
    /// The resourceVersion the caches hold for `K` `name` in `namespace`: Some(None) when they
    /// hold no such object, None without caches.
    fn cached_version<K: Cached>(&self, namespace: &str, name: &str) -> Option<Option<Version>> {
        self.caches(namespace).map(|caches| caches.version(namespace, &Reference::new(K::KIND, name)))
    }

    /// `K` `name` in `namespace`, whole: from memory while the caches say it is the version read
    /// last, otherwise from the apiserver (also when the caches do not hold it yet: they may lag
    /// behind an object just created).
    pub async fn read<K: Cached>(&self, namespace: &str, name: &str) -> Result<Option<Arc<K>>, kube::Error> {
        self.read_kept(namespace, name, Keep::Slim).await
    }

    /// The ServiceAccount `name` in `namespace`, as far as the reconcilers read one (its
    /// resourceVersion and IRSA role): from the caches, which keep that much of each; read only
    /// when they do not hold it yet (they may lag behind an object just created).
    pub async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<ServiceAccount>>, kube::Error> {
        if let Some(account) = self.caches(namespace).and_then(|caches| caches.service_account(namespace, name)) {
            return Ok(Some(Arc::new(account)));
        }
        self.read::<ServiceAccount>(namespace, name).await
    }

    /// The claim of part `part` of the shared ConfigMap `name` in `namespace`, as the caches keep
    /// it (see [`super::claims`]): None unless the part's manager still holds what it applied.
    pub fn part_claim(&self, namespace: &str, name: &str, part: &str) -> Option<super::claims::PartClaim> {
        self.caches(namespace)?.part_claim(namespace, name, part)
    }

    /// [`Context::read`], with the apiserver's record of field managers kept: for a shared object
    /// whose parts belong to several writers (`artifact-repositories`, a key per Stack).
    pub async fn read_with_managers<K: Cached>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<K>>, kube::Error> {
        self.read_kept(namespace, name, Keep::Managers).await
    }

    /// Records `object`, as this process's own write of it returned it (field managers included),
    /// as read at its resourceVersion: the next [`Context::read_with_managers`] takes it from
    /// memory once the caches have seen that version, unless someone wrote it since.
    pub fn remember_written_with_managers<K: Cached>(&self, object: K) {
        let (namespace, name) = namespace_and_name(&object);
        self.known.remember_read(Keep::Managers.key::<K>(&namespace, &name), Arc::new(object));
    }

    /// `K` `name` in `namespace`, whole with its field managers, if this process read or wrote it at
    /// the version the caches hold now: what a read would return, without the read.
    pub fn held_with_managers<K: Cached>(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.held(namespace, name, Keep::Managers)
    }

    /// What this process read or wrote of `K` `name`, kept as `keep` says, if the caches hold
    /// that version now.
    fn held<K: Cached>(&self, namespace: &str, name: &str, keep: Keep) -> Option<Arc<K>> {
        let Some(Some(version)) = self.cached_version::<K>(namespace, name) else { return None };
        self.known.read::<K>(&keep.key::<K>(namespace, name), version)
    }

    async fn read_kept<K: Cached>(
        &self,
        namespace: &str,
        name: &str,
        keep: Keep,
    ) -> Result<Option<Arc<K>>, kube::Error> {
        if let Some(object) = self.held(namespace, name, keep) {
            return Ok(Some(object));
        }
        // Another pass may be reading it right now: wait for its answer rather than ask again.
        let key = keep.key::<K>(namespace, name);
        let gate = self.known.reading(key);
        let _reading = gate.lock().await;
        if let Some(object) = self.held(namespace, name, keep) {
            return Ok(Some(object));
        }
        let found = Api::<K>::namespaced(self.client.clone(), namespace).get_opt(name).await?.map(|mut object| {
            if keep == Keep::Slim {
                slim(&mut object);
            }
            Arc::new(object)
        });
        if let Some(object) = &found {
            self.known.remember_read(key, object.clone());
        }
        Ok(found)
    }

    /// Whether `desired` (whose [`content_hash`] is `hash`) is what this process last published
    /// under that name, and nobody has changed it since (the caches hold the version of that write).
    ///
    /// A process that has not written it yet (a restarted one) takes the watch's word: the object
    /// carries `hash` as its published digest and only this operator's field manager wrote it.
    pub(super) fn published_unchanged<K: Cached>(&self, desired: &K, hash: u64) -> bool {
        let (namespace, name) = namespace_and_name(desired);
        let key = key::<K>(&namespace, &name);
        match self.cached_version::<K>(&namespace, &name) {
            Some(Some(version)) if self.known.published(&key, version, hash) => true,
            Some(Some(_)) => {
                let reference = Reference::new(K::KIND, &name);
                let claimed = self.caches(&namespace).and_then(|caches| caches.claimed(&namespace, &reference));
                match claimed {
                    Some((version, digest)) if digest == hash => {
                        self.known.remember_published_at(key, version, hash);
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// Whether `K` `name` exists in `namespace`: from the caches when they hold it, otherwise
    /// from the apiserver (the caches may lag behind an object just created).
    pub async fn exists<K: Cached>(&self, namespace: &str, name: &str) -> Result<bool, kube::Error> {
        if let Some(Some(_)) = self.cached_version::<K>(namespace, name) {
            return Ok(true);
        }
        Ok(Api::<K>::namespaced(self.client.clone(), namespace).get_metadata_opt(name).await?.is_some())
    }

    /// Whether the caches, complete since the start, hold no `K` `name` in `namespace`: then
    /// there is nothing of it to remove (false without caches). One made so recently that the
    /// watch has not told of it yet is seen at the next pass.
    pub fn cached_absent<K: Cached>(&self, namespace: &str, name: &str) -> bool {
        matches!(self.cached_version::<K>(namespace, name), Some(None))
    }

    /// Whether the caches hold no object under `desired`'s name (None without caches).
    pub(super) fn absent<K: Cached>(&self, desired: &K) -> Option<bool> {
        let (namespace, name) = namespace_and_name(desired);
        self.cached_version::<K>(&namespace, &name).map(|version| version.is_none())
    }

    /// Records that `desired` (whose [`content_hash`] is `hash`) is there as wanted, at `version`
    /// (None: forget it).
    pub(super) fn remember_published<K: Cached>(&self, desired: &K, hash: u64, version: Option<String>) {
        let (namespace, name) = namespace_and_name(desired);
        self.known.remember_published(key::<K>(&namespace, &name), version, hash);
    }
}

/// What a read keeps of an object; each is remembered apart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// What [`slim`] leaves.
    Slim,
    /// Everything, field managers included.
    Managers,
}

impl Keep {
    fn key<K: Cached>(self, namespace: &str, name: &str) -> Key {
        match self {
            Self::Slim => key::<K>(namespace, name),
            // Another key for the same object, so that a slim copy is never taken for a whole one.
            Self::Managers => key::<K>(namespace, name).rotate_left(1) ^ 1,
        }
    }
}

/// Drops what no reconcile reads of an object kept whole, and what makes most of its size:
/// the apiserver's record of field managers (kept decoded as a tree of JSON maps) and kubectl's
/// copy of the whole object in an annotation.
fn slim<K: Cached>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

fn namespace_and_name<K: Cached>(object: &K) -> (String, String) {
    (object.meta().namespace.clone().unwrap_or_default(), object.meta().name.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};

    use super::*;
    use crate::controller::caches::version_of;
    use crate::controller::known::Known;

    fn secret(version: &str) -> Arc<Secret> {
        let mut secret = Secret::default();
        secret.metadata.resource_version = Some(version.to_owned());
        Arc::new(secret)
    }

    #[test]
    fn a_read_is_reused_only_at_its_version() {
        let known = Known::default();
        let key = key::<Secret>("ns", "keys");
        known.remember_read(key, secret("5"));
        assert!(known.read::<Secret>(&key, version_of("5")).is_some());
        assert!(known.read::<Secret>(&key, version_of("6")).is_none(), "changed since: read again");
        assert!(known.read::<ConfigMap>(&key, version_of("5")).is_none(), "never another type");
    }

    #[test]
    fn a_whole_copy_and_a_slim_one_of_the_same_object_are_remembered_apart() {
        let known = Known::default();
        let (slim_key, whole_key) =
            (Keep::Slim.key::<Secret>("ns", "keys"), Keep::Managers.key::<Secret>("ns", "keys"));
        assert_ne!(slim_key, whole_key);
        known.remember_read(slim_key, secret("5"));
        assert!(known.read::<Secret>(&whole_key, version_of("5")).is_none(), "a slim copy is not a whole one");
    }

    #[test]
    fn a_read_keeps_what_reconciles_read_and_drops_the_rest() {
        let mut account: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "runner", "namespace": "ns", "resourceVersion": "3",
                "labels": {"team": "a"},
                "annotations": {
                    "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/runner",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"ServiceAccount\"}"
                },
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u-0"}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}}]
            }
        }))
        .unwrap();
        slim(&mut account);
        let meta = &account.metadata;
        assert!(meta.managed_fields.is_none());
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["eks.amazonaws.com/role-arn"]);
        assert_eq!(meta.labels.as_ref().unwrap()["team"], "a");
        assert_eq!(meta.owner_references.as_ref().unwrap()[0].name, "o");
        assert_eq!(meta.resource_version.as_deref(), Some("3"));
    }

    #[test]
    fn a_publication_is_known_only_at_its_version_and_content() {
        let known = Known::default();
        let key = key::<ConfigMap>("ns", "ml-artifact-store");
        let hash = content_hash(&"wanted");
        known.remember_published(key, Some("7".into()), hash);
        assert!(known.published(&key, version_of("7"), hash));
        assert!(!known.published(&key, version_of("8"), hash), "someone changed it since");
        assert!(!known.published(&key, version_of("7"), content_hash(&"other")), "something else is wanted now");
        known.remember_published(key, None, hash);
        assert!(!known.published(&key, version_of("7"), hash));
    }
}
