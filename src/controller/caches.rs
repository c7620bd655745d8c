//! The operator's view of the cluster, one per watched scope. Each kind the reconcilers read is
//! watched once, stripped to the fields they read, and shared by both controllers. A change
//! reaches exactly the objects that name the changed one, through an index kept up to date from
//! the watches, never by scanning every object; and only a real change (a new resourceVersion,
//! or a deletion) reaches them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::core::{DeserializeGuard, ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use super::health::{self, Health};
use super::scoped_api;
use crate::api::{ArtifactStore, Stack};

/// What a watched kind must be: a namespaced resource the operator can decode, copy and share
/// between tasks.
pub trait Watched:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A kind of object that a store or a Stack names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ArtifactStore,
    ConfigMap,
    Secret,
    ServiceAccount,
}

/// An object that another one names (or publishes), in that one's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    pub kind: Kind,
    pub name: String,
}

impl Reference {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Self { kind, name: name.into() }
    }
}

/// A reconciled kind, and every object whose change can change its outcome: what it reads, and
/// what it publishes (a clashing object's removal lets it publish at once).
pub trait Referrer {
    fn references(&self) -> Vec<Reference>;
}

/// The caches of one watched scope (a namespace, or all of them).
#[derive(Clone)]
pub struct Caches {
    pub stores: Store<DeserializeGuard<ArtifactStore>>,
    pub stacks: Store<DeserializeGuard<Stack>>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub accounts: Store<PartialObjectMeta<ServiceAccount>>,
}

impl Caches {
    /// The resourceVersion of the object `reference` names in `namespace`, as cached; None when
    /// it does not exist (or is not cached yet).
    pub fn version(&self, namespace: &str, reference: &Reference) -> Option<String> {
        fn of<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>, namespace: &str, name: &str) -> Option<String> {
            store.get(&ObjectRef::new(name).within(namespace)).and_then(|o| o.meta().resource_version.clone())
        }
        let name = reference.name.as_str();
        match reference.kind {
            Kind::ArtifactStore => of(&self.stores, namespace, name),
            Kind::ConfigMap => of(&self.config_maps, namespace, name),
            Kind::Secret => of(&self.secrets, namespace, name),
            Kind::ServiceAccount => of(&self.accounts, namespace, name),
        }
    }

    /// The state of `object` and of everything it names, as cached: equal watermarks mean that
    /// nothing the reconcile reads or writes has changed in between.
    pub fn watermark<K: Resource + Referrer>(&self, object: &K) -> String {
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        let mut parts = vec![object.meta().resource_version.clone().unwrap_or_default()];
        for reference in object.references() {
            parts.push(self.version(&namespace, &reference).unwrap_or_else(|| "-".to_owned()));
        }
        parts.join("/")
    }

    /// Returns once every cache holds its first complete list: a reconcile that read a cache
    /// before would take an object not listed yet for one that does not exist.
    pub async fn synced(&self) {
        let _ = futures::join!(
            self.stores.wait_until_ready(),
            self.stacks.wait_until_ready(),
            self.config_maps.wait_until_ready(),
            self.secrets.wait_until_ready(),
            self.accounts.wait_until_ready(),
        );
    }

    /// The cached ArtifactStore `name` in `namespace`, when it exists and deserializes.
    pub fn store(&self, namespace: &str, name: &str) -> Option<Arc<DeserializeGuard<ArtifactStore>>> {
        self.stores.get(&ObjectRef::new(name).within(namespace))
    }
}

/// Which objects of kind `K` name which others, kept up to date from the watch of `K`. Lean, as it
/// holds an entry for everything ten thousands of objects name: each object's reference is shared,
/// and the objects named are kept as hashes of kind, namespace and name. (Two that hash alike
/// would only wake each other's referrers once more.)
pub struct Index<K: Resource<DynamicType = ()>> {
    inner: Mutex<IndexInner<K>>,
}

/// An object named by others: the hash of its kind, namespace and name.
type Target = u64;

pub(super) fn target(kind: Kind, namespace: &str, name: &str) -> Target {
    super::digest((kind, namespace, name))
}

struct IndexInner<K: Resource<DynamicType = ()>> {
    referrers: HashMap<Target, Vec<Arc<ObjectRef<K>>>>,
    targets: HashMap<Arc<ObjectRef<K>>, Vec<Target>>,
}

impl<K: Resource<DynamicType = ()>> Default for Index<K> {
    fn default() -> Self {
        Self { inner: Mutex::new(IndexInner { referrers: HashMap::new(), targets: HashMap::new() }) }
    }
}

impl<K: Resource<DynamicType = ()>> Index<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, IndexInner<K>> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records what `object` names now, replacing what it named before.
    pub fn set(&self, object: ObjectRef<K>, namespace: &str, references: Vec<Reference>) {
        let mut targets: Vec<Target> = references.iter().map(|r| target(r.kind, namespace, &r.name)).collect();
        targets.sort_unstable();
        targets.dedup();
        let mut inner = self.lock();
        if inner.targets.get(&object) == Some(&targets) {
            return;
        }
        inner.unlink(&object);
        let object = Arc::new(object);
        for target in &targets {
            let referrers = inner.referrers.entry(*target).or_insert_with(|| Vec::with_capacity(1));
            referrers.push(object.clone());
        }
        targets.shrink_to_fit();
        inner.targets.insert(object, targets);
    }

    pub fn remove(&self, object: &ObjectRef<K>) {
        self.lock().unlink(object);
    }

    /// The objects that name `kind` `name` in `namespace`.
    pub fn referencing(&self, kind: Kind, namespace: &str, name: &str) -> Vec<ObjectRef<K>> {
        let inner = self.lock();
        let referrers = inner.referrers.get(&target(kind, namespace, name));
        referrers.map(|found| found.iter().map(|o| (**o).clone()).collect()).unwrap_or_default()
    }
}

impl<K: Resource<DynamicType = ()>> IndexInner<K> {
    fn unlink(&mut self, object: &ObjectRef<K>) {
        for target in self.targets.remove(object).unwrap_or_default() {
            if let Some(referrers) = self.referrers.get_mut(&target) {
                referrers.retain(|o| **o != *object);
                if referrers.is_empty() {
                    self.referrers.remove(&target);
                }
            }
        }
    }
}

/// Where a change is sent: the two controllers' reconcile queues, and the indexes that say which
/// of their objects a change concerns.
struct Fanout {
    stores: UnboundedSender<ObjectRef<DeserializeGuard<ArtifactStore>>>,
    stacks: UnboundedSender<ObjectRef<DeserializeGuard<Stack>>>,
    store_index: Index<DeserializeGuard<ArtifactStore>>,
    stack_index: Index<DeserializeGuard<Stack>>,
}

impl Fanout {
    /// Queues every store and Stack that names `kind` `name` in `namespace`.
    fn referrers_of(&self, kind: Kind, namespace: &str, name: &str) {
        for store in self.store_index.referencing(kind, namespace, name) {
            let _ = self.stores.unbounded_send(store);
        }
        for stack in self.stack_index.referencing(kind, namespace, name) {
            let _ = self.stacks.unbounded_send(stack);
        }
    }
}

/// The reconcile queues of one scope's two controllers.
pub struct Queues {
    pub stores: UnboundedReceiver<ObjectRef<DeserializeGuard<ArtifactStore>>>,
    pub stacks: UnboundedReceiver<ObjectRef<DeserializeGuard<Stack>>>,
}

/// How many watches [`watch`] runs per scope, each reporting to [`Health::cache_synced`] once.
pub const WATCHES_PER_SCOPE: usize = 5;

/// Starts the five watches of `namespace` (or of all namespaces): ArtifactStores and Stacks whole,
/// ConfigMaps, Secrets and ServiceAccounts as metadata only. Returns their caches, and the queues
/// that tell each controller which of its objects to reconcile.
pub fn watch(client: &Client, namespace: &Option<String>, health: &Arc<Health>) -> (Caches, Queues) {
    let (stores_writer, stacks_writer) = (reflector::store::Writer::default(), reflector::store::Writer::default());
    let (config_maps_writer, secrets_writer, accounts_writer) =
        (reflector::store::Writer::default(), reflector::store::Writer::default(), reflector::store::Writer::default());
    let caches = Caches {
        stores: stores_writer.as_reader(),
        stacks: stacks_writer.as_reader(),
        config_maps: config_maps_writer.as_reader(),
        secrets: secrets_writer.as_reader(),
        accounts: accounts_writer.as_reader(),
    };
    let (stores, store_queue) = unbounded();
    let (stacks, stack_queue) = unbounded();
    let fanout = Arc::new(Fanout { stores, stacks, store_index: Index::default(), stack_index: Index::default() });

    let f = fanout.clone();
    spawn_watch(client, namespace, health, stores_writer, strip_object, move |store, change| {
        let reference = ObjectRef::from_obj(store);
        let namespace = store.namespace().unwrap_or_default();
        match change {
            Change::Updated => {
                f.store_index.set(reference.clone(), &namespace, references_of(store));
                let _ = f.stores.unbounded_send(reference);
            }
            Change::Deleted => f.store_index.remove(&reference),
        }
        f.referrers_of(Kind::ArtifactStore, &namespace, &store.name_any());
    });
    let f = fanout.clone();
    spawn_watch(client, namespace, health, stacks_writer, strip_object, move |stack, change| {
        let reference = ObjectRef::from_obj(stack);
        match change {
            Change::Updated => {
                f.stack_index.set(reference.clone(), &stack.namespace().unwrap_or_default(), references_of(stack));
                let _ = f.stacks.unbounded_send(reference);
            }
            Change::Deleted => f.stack_index.remove(&reference),
        }
    });
    let f = fanout.clone();
    spawn_watch(
        client,
        namespace,
        health,
        config_maps_writer,
        strip_metadata,
        move |o: &PartialObjectMeta<ConfigMap>, _| {
            f.referrers_of(Kind::ConfigMap, &o.namespace().unwrap_or_default(), &o.name_any())
        },
    );
    let f = fanout.clone();
    spawn_watch(client, namespace, health, secrets_writer, strip_metadata, move |o: &PartialObjectMeta<Secret>, _| {
        f.referrers_of(Kind::Secret, &o.namespace().unwrap_or_default(), &o.name_any())
    });
    spawn_watch(
        client,
        namespace,
        health,
        accounts_writer,
        strip_metadata,
        move |o: &PartialObjectMeta<ServiceAccount>, _| {
            fanout.referrers_of(Kind::ServiceAccount, &o.namespace().unwrap_or_default(), &o.name_any())
        },
    );
    (caches, Queues { stores: store_queue, stacks: stack_queue })
}

/// What a guarded object names: nothing when it did not deserialize.
fn references_of<K: Resource + Referrer>(guarded: &DeserializeGuard<K>) -> Vec<Reference> {
    guarded.0.as_ref().map(Referrer::references).unwrap_or_default()
}

/// What happened to a cached object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Created, or changed (its resourceVersion differs from the cached one).
    Updated,
    Deleted,
}

/// Leaves only what the reconcilers read of a custom resource: no managedFields, and no copy of
/// the whole object in kubectl's last-applied annotation.
fn strip_object<K: Resource<DynamicType = ()>>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Leaves only what the operator reads of a ConfigMap, Secret or ServiceAccount from its cache:
/// name, namespace and resourceVersion. Whatever else a reconcile needs (a Secret's keys, a
/// ServiceAccount's role, the owners of a published object) it reads whole when the version
/// changes (see [`super::reads`]).
fn strip_metadata<K>(object: &mut PartialObjectMeta<K>) {
    let meta = std::mem::take(&mut object.metadata);
    object.types = None;
    object.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        resource_version: meta.resource_version,
        ..Default::default()
    };
}

/// Runs the watch of one kind in the background: its cache, `changed` for each object created,
/// changed or deleted (including those that changed or went while the watch re-listed), and
/// `health` told of the first complete list and of an apiserver that does not answer.
fn spawn_watch<K>(
    client: &Client,
    namespace: &Option<String>,
    health: &Arc<Health>,
    mut writer: reflector::store::Writer<K>,
    strip: fn(&mut K),
    mut changed: impl FnMut(&K, Change) + Send + 'static,
) where
    K: Watched,
{
    let api = scoped_api::<K>(client, namespace);
    let health = health.clone();
    let kind = K::kind(&());
    let reader = writer.as_reader();
    let mut events = watcher(api, watcher::Config::default().any_semantic()).modify(strip).default_backoff().boxed();
    tokio::spawn(async move {
        let mut synced = false;
        let mut listed: HashSet<ObjectRef<K>> = HashSet::new();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    if health::is_unreachable_watch(&error) {
                        health.apiserver_unreachable(&error);
                    }
                    tracing::warn!(%error, kind = %kind, "watch failed");
                    continue;
                }
            };
            let is_new = |object: &K| {
                reader.get(&ObjectRef::from_obj(object)).map(|cached| cached.resource_version())
                    != Some(object.resource_version())
            };
            match &event {
                watcher::Event::Init => listed.clear(),
                watcher::Event::Apply(object) => {
                    let new = is_new(object);
                    writer.apply_watcher_event(&event);
                    if new {
                        changed(object, Change::Updated);
                    }
                }
                watcher::Event::InitApply(object) => {
                    listed.insert(ObjectRef::from_obj(object));
                    let new = is_new(object);
                    writer.apply_watcher_event(&event);
                    if new {
                        changed(object, Change::Updated);
                    }
                }
                watcher::Event::Delete(object) => {
                    writer.apply_watcher_event(&event);
                    changed(object, Change::Deleted);
                }
                watcher::Event::InitDone => {
                    // Objects that went while the watch was re-listing are no longer listed.
                    let gone: Vec<Arc<K>> =
                        reader.state().into_iter().filter(|o| !listed.contains(&ObjectRef::from_obj(&**o))).collect();
                    writer.apply_watcher_event(&event);
                    for object in gone {
                        changed(&object, Change::Deleted);
                    }
                    listed = HashSet::new();
                    if !std::mem::replace(&mut synced, true) {
                        health.cache_synced();
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_exactly_the_referrers() {
        let index: Index<ConfigMap> = Index::default();
        let a = ObjectRef::new("a").within("ns");
        let b = ObjectRef::new("b").within("ns");
        index.set(a.clone(), "ns", vec![Reference::new(Kind::Secret, "keys"), Reference::new(Kind::Secret, "keys")]);
        index.set(b.clone(), "ns", vec![Reference::new(Kind::Secret, "keys"), Reference::new(Kind::ConfigMap, "ca")]);
        let mut found = index.referencing(Kind::Secret, "ns", "keys");
        found.sort_by_key(|r| r.name.clone());
        assert_eq!(found, vec![a.clone(), b.clone()]);
        assert!(index.referencing(Kind::Secret, "other", "keys").is_empty(), "namespaces never mix");
        assert!(index.referencing(Kind::ConfigMap, "ns", "keys").is_empty(), "kinds never mix");

        // A changed object names what it names now, no longer what it named before.
        index.set(b.clone(), "ns", vec![Reference::new(Kind::ConfigMap, "ca")]);
        assert_eq!(index.referencing(Kind::Secret, "ns", "keys"), vec![a.clone()]);
        index.remove(&a);
        assert!(index.referencing(Kind::Secret, "ns", "keys").is_empty());
        index.remove(&b);
        let inner = index.lock();
        assert!(inner.targets.is_empty() && inner.referrers.is_empty(), "nothing left behind");
    }
}
