//! The operator's view of the cluster, one per watched scope. Each kind the reconcilers read is
//! watched once, stripped to the fields they read, and shared by both controllers. A change
//! reaches exactly the objects it concerns: the one that publishes the changed object under its
//! own name, found by that name, and those that name it, through an index kept up to date from
//! the watches. Only a real change (a new resourceVersion, or a deletion) reaches them, and only
//! objects gone while a watch re-listed (known by their hashes alone) are looked for among every
//! cached object.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use super::claims::{self, PartClaim};
use super::health::{self, Health};
use crate::api::{ArtifactStore, Stack};
use crate::owner::{Kind, Published};

/// An Api over one namespace, or over all of them.
pub fn scoped_api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(
    client: &Client,
    namespace: &Option<String>,
) -> Api<K> {
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// A value the operator can decode, copy and share between tasks.
pub trait Shareable: Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static {}

impl<T: Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static> Shareable for T {}

/// What a watched kind must be: a namespaced resource whose objects are [`Shareable`].
pub trait Watched: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Shareable {}

impl<K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Shareable> Watched for K {}

/// A kind the caches hold as metadata, and the reconcilers read or publish whole.
pub trait Cached: Watched + serde::Serialize {
    const KIND: Kind;
}

impl Cached for Secret {
    const KIND: Kind = Kind::Secret;
}

impl Cached for ConfigMap {
    const KIND: Kind = Kind::ConfigMap;
}

impl Cached for ServiceAccount {
    const KIND: Kind = Kind::ServiceAccount;
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

    /// What `publisher` publishes as `published`.
    pub fn published(published: &Published, publisher: &str) -> Self {
        Self::new(published.kind, published.name(publisher))
    }
}

/// A reconciled kind, and every object whose change can change its outcome: what it reads, and
/// what it publishes (a clashing object's removal lets it publish at once).
pub trait Referrer {
    /// What it publishes under its own name. A change to one of these reaches it by that name
    /// (and, for a store's, the Stacks that name the store), not through the index.
    const PUBLISHES: &'static [Published];

    fn references(&self) -> Vec<Reference>;
}

/// A resourceVersion as the caches keep it: its hash. Versions are only ever compared for
/// equality (two that hash alike would make one read or write be skipped once in 2^64).
pub type Version = u64;

pub fn version_of(resource_version: &str) -> Version {
    super::memory::digest(resource_version)
}

/// The caches of one watched scope (a namespace, or all of them): stores and Stacks whole, and of
/// ConfigMaps, Secrets and ServiceAccounts only which exist and at which resourceVersion.
#[derive(Clone)]
pub struct Caches {
    pub stores: Store<DeserializeGuard<ArtifactStore>>,
    pub stacks: Store<DeserializeGuard<Stack>>,
    config_maps: Versions,
    secrets: Versions,
    accounts: Versions,
}

impl Caches {
    /// The resourceVersion of the object `reference` names in `namespace`, as cached; None when
    /// it does not exist (or is not cached yet).
    pub fn version(&self, namespace: &str, reference: &Reference) -> Option<Version> {
        let name = reference.name.as_str();
        let versions = match reference.kind {
            Kind::ArtifactStore => {
                let store = self.stores.get(&ObjectRef::new(name).within(namespace))?;
                return store.meta().resource_version.as_deref().map(version_of);
            }
            Kind::ConfigMap => &self.config_maps,
            Kind::Secret => &self.secrets,
            Kind::ServiceAccount => &self.accounts,
        };
        versions.get(target(reference.kind, namespace, name))
    }

    /// The cached version of the ConfigMap or Secret `reference` names, with the digest it was
    /// published with, when only this operator wrote it ([`claims::published`]).
    pub fn claimed(&self, namespace: &str, reference: &Reference) -> Option<(Version, u64)> {
        let versions = match reference.kind {
            Kind::ConfigMap => &self.config_maps,
            Kind::Secret => &self.secrets,
            Kind::ArtifactStore | Kind::ServiceAccount => return None,
        };
        versions.claimed(target(reference.kind, namespace, &reference.name))
    }

    /// The state of `object` and of everything it names, as cached: equal watermarks mean that
    /// nothing the reconcile reads or writes has changed in between.
    pub fn watermark<K: Resource + Referrer>(&self, object: &K) -> String {
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        let mut parts = vec![object.meta().resource_version.clone().unwrap_or_default()];
        for reference in object.references() {
            parts.push(self.version(&namespace, &reference).map_or_else(|| "-".to_owned(), |v| format!("{v:x}")));
        }
        parts.join("/")
    }

    /// Returns once every cache holds its first complete list: a reconcile that read a cache
    /// before would take an object not listed yet for one that does not exist.
    pub async fn synced(&self) {
        let _ = futures::join!(
            self.stores.wait_until_ready(),
            self.stacks.wait_until_ready(),
            self.config_maps.listed(),
            self.secrets.listed(),
            self.accounts.listed(),
        );
    }

    /// The claim of part `part` of the shared ConfigMap `name` in `namespace` ([`PartClaim`]),
    /// when its manager still holds its key and digest there.
    pub fn part_claim(&self, namespace: &str, name: &str, part: &str) -> Option<PartClaim> {
        self.config_maps.part_claim(target(Kind::ConfigMap, namespace, name), part)
    }

    /// The parts of the shared ConfigMap `name` in `namespace` (the Stacks whose field managers own
    /// something there); None when the caches do not hold it.
    pub fn parts(&self, namespace: &str, name: &str) -> Option<Vec<Box<str>>> {
        self.config_maps.parts(target(Kind::ConfigMap, namespace, name))
    }

    /// The ServiceAccount `name` in `namespace`, as far as the reconcilers read one (see
    /// [`AccountSketch`]); None when the caches do not hold it.
    pub fn service_account(&self, namespace: &str, name: &str) -> Option<ServiceAccount> {
        let sketch = self.accounts.account(target(Kind::ServiceAccount, namespace, name))?;
        Some(sketch.account(namespace, name))
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
    super::memory::digest((kind, namespace, name))
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

    /// The objects that name `target`.
    pub fn referencing(&self, target: Target) -> Vec<ObjectRef<K>> {
        let inner = self.lock();
        let referrers = inner.referrers.get(&target);
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

/// Which objects of one kind exist, and at which resourceVersion, by [`Target`]: all the
/// operator keeps of ConfigMaps, Secrets and ServiceAccounts, about 40 bytes an object where a
/// cached copy of the metadata alone took some 800. Of a ServiceAccount it also keeps what the
/// reconcilers read ([`AccountSketch`]). Whatever else a reconcile needs of them (a Secret's keys,
/// the owners of a published object) it reads whole when the version changes (see
/// [`super::reads`]).
///
/// Of the objects that carry the digest this operator wrote them with, and that nobody else has
/// written since, it also keeps that digest (see [`claims::published`]): a restarted process knows
/// from the watch alone that its publications still hold what it wrote, and reads none of them
/// back. Of a shared ConfigMap (`artifact-repositories`) it keeps the parts and their claims (see
/// [`claims::parts`]), to the same end.
#[derive(Clone)]
struct Versions {
    kept: Arc<KeptByTarget>,
    complete: tokio::sync::watch::Receiver<bool>,
}

/// The watch's side of [`Versions`].
struct VersionsWriter {
    kept: Arc<KeptByTarget>,
    complete: tokio::sync::watch::Sender<bool>,
}

/// What [`Versions`] keeps, by [`Target`]. The watch changes the others only while it holds the
/// lock of `by_target`, so a reader pairs them by reading the version before and after.
#[derive(Default)]
struct KeptByTarget {
    by_target: Mutex<HashMap<Target, Version>>,
    claims: Mutex<HashMap<Target, u64>>,
    accounts: Mutex<HashMap<Target, AccountSketch>>,
    parts: Mutex<HashMap<Target, PartClaims>>,
}

/// A shared ConfigMap's parts, each with its claim if it has one ([`claims::parts`]).
type PartClaims = Arc<[(Box<str>, Option<PartClaim>)]>;

/// What a metadata watch keeps of one object besides its version.
#[derive(Default)]
struct Kept {
    /// The digest it was published with, when only this operator wrote it ([`claims::published`]).
    claim: Option<u64>,
    /// Of a ServiceAccount: what the reconcilers read of it.
    account: Option<AccountSketch>,
    /// Of a shared ConfigMap: its parts and their claims.
    parts: Option<PartClaims>,
}

impl Kept {
    fn of<K: Cached>(meta: &kube::core::ObjectMeta) -> Self {
        let parts = (K::KIND == Kind::ConfigMap).then(|| claims::parts(meta)).filter(|parts| !parts.is_empty());
        Self {
            claim: claims::published(meta),
            account: (K::KIND == Kind::ServiceAccount).then(|| AccountSketch::of(meta)),
            parts: parts.map(Into::into),
        }
    }
}

/// All the operator reads of a ServiceAccount, kept from the metadata its watch sees: its
/// resourceVersion (which the fingerprints of a check's inputs name) and its IRSA role. With it
/// a ServiceAccount is never read whole.
#[derive(Clone, Debug, PartialEq)]
struct AccountSketch {
    resource_version: Box<str>,
    role_arn: Option<Box<str>>,
}

impl AccountSketch {
    fn of(meta: &kube::core::ObjectMeta) -> Self {
        let role_arn = meta.annotations.as_ref().and_then(|a| a.get(crate::aws::iam::ROLE_ARN_ANNOTATION));
        Self {
            resource_version: meta.resource_version.as_deref().unwrap_or_default().into(),
            role_arn: role_arn.map(|arn| arn.as_str().into()),
        }
    }

    /// The ServiceAccount as the reconcilers read it: its name, namespace, resourceVersion and
    /// role annotation.
    fn account(&self, namespace: &str, name: &str) -> ServiceAccount {
        let annotations = self
            .role_arn
            .as_ref()
            .map(|arn| [(crate::aws::iam::ROLE_ARN_ANNOTATION.to_owned(), arn.to_string())].into());
        ServiceAccount {
            metadata: kube::core::ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                resource_version: Some(self.resource_version.to_string()),
                annotations,
                ..Default::default()
            },
            ..ServiceAccount::default()
        }
    }
}

impl Versions {
    fn new() -> (Self, VersionsWriter) {
        let kept = Arc::new(KeptByTarget::default());
        let (complete, listed) = tokio::sync::watch::channel(false);
        (Self { kept: kept.clone(), complete: listed }, VersionsWriter { kept, complete })
    }

    fn get(&self, target: Target) -> Option<Version> {
        lock(&self.kept.by_target).get(&target).copied()
    }

    /// The version and the claimed digest ([`claims::published`]) of `target`, read together.
    fn claimed(&self, target: Target) -> Option<(Version, u64)> {
        let version = lock(&self.kept.by_target).get(&target).copied()?;
        let digest = lock(&self.kept.claims).get(&target).copied()?;
        // The watch updates both under the version's lock first; read again to pair them.
        (self.get(target) == Some(version)).then_some((version, digest))
    }

    /// The claim of part `part` of the shared ConfigMap `target` ([`PartClaim`]), read with the
    /// version as [`Versions::claimed`] reads a digest.
    fn part_claim(&self, target: Target, part: &str) -> Option<PartClaim> {
        let version = self.get(target)?;
        let claims = lock(&self.kept.parts).get(&target).cloned()?;
        let claim = claims.iter().find(|(name, _)| &**name == part).and_then(|(_, claim)| claim.clone())?;
        (self.get(target) == Some(version)).then_some(claim)
    }

    /// The parts of the shared ConfigMap `target` (none when it has none), at the version cached;
    /// None when the caches do not hold it.
    fn parts(&self, target: Target) -> Option<Vec<Box<str>>> {
        let version = self.get(target)?;
        let claims = lock(&self.kept.parts).get(&target).cloned();
        let parts = claims.iter().flat_map(|claims| claims.iter()).map(|(part, _)| part.clone()).collect();
        (self.get(target) == Some(version)).then_some(parts)
    }

    /// The ServiceAccount `target` as kept ([`AccountSketch`]), at the version cached.
    fn account(&self, target: Target) -> Option<AccountSketch> {
        let version = self.get(target)?;
        let sketch = lock(&self.kept.accounts).get(&target).cloned()?;
        (version_of(&sketch.resource_version) == version).then_some(sketch)
    }

    /// Returns once the first complete list is in.
    async fn listed(&self) {
        let _ = self.complete.clone().wait_for(|complete| *complete).await;
    }
}

impl VersionsWriter {
    /// Records `target` at `version`, with what is kept of it; true when that is new (created, or
    /// changed).
    fn set(&self, target: Target, version: Version, kept: Kept) -> bool {
        let mut by_target = lock(&self.kept.by_target);
        match kept.claim {
            Some(digest) => lock(&self.kept.claims).insert(target, digest),
            None => lock(&self.kept.claims).remove(&target),
        };
        if let Some(sketch) = kept.account {
            lock(&self.kept.accounts).insert(target, sketch);
        }
        match kept.parts {
            Some(claims) => lock(&self.kept.parts).insert(target, claims),
            None => lock(&self.kept.parts).remove(&target),
        };
        by_target.insert(target, version) != Some(version)
    }

    /// Forgets `target`; true when it was there.
    fn remove(&self, target: Target) -> bool {
        lock(&self.kept.claims).remove(&target);
        lock(&self.kept.accounts).remove(&target);
        lock(&self.kept.parts).remove(&target);
        lock(&self.kept.by_target).remove(&target).is_some()
    }

    /// Forgets every object not in `listed` (gone while the watch re-listed) and returns them.
    fn keep_only(&self, listed: &HashSet<Target>) -> Vec<Target> {
        let mut by_target = lock(&self.kept.by_target);
        let gone: Vec<Target> = by_target.keys().filter(|t| !listed.contains(t)).copied().collect();
        let mut claims = lock(&self.kept.claims);
        let mut accounts = lock(&self.kept.accounts);
        let mut parts = lock(&self.kept.parts);
        for target in &gone {
            by_target.remove(target);
            claims.remove(target);
            accounts.remove(target);
            parts.remove(target);
        }
        gone
    }

    fn complete(&self) {
        self.complete.send_replace(true);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a change is sent: the two controllers' reconcile queues, and what says which of their
/// objects a change concerns: the indexes, and the cached stores and Stacks, whose publications
/// are known by their names.
struct Fanout {
    stores: UnboundedSender<ObjectRef<DeserializeGuard<ArtifactStore>>>,
    stacks: UnboundedSender<ObjectRef<DeserializeGuard<Stack>>>,
    store_index: Index<DeserializeGuard<ArtifactStore>>,
    stack_index: Index<DeserializeGuard<Stack>>,
    cached_stores: Store<DeserializeGuard<ArtifactStore>>,
    cached_stacks: Store<DeserializeGuard<Stack>>,
}

impl Fanout {
    /// Queues every store and Stack that names `target`, as the indexes say.
    fn referrers_of(&self, target: Target) {
        for store in self.store_index.referencing(target) {
            let _ = self.stores.unbounded_send(store);
        }
        for stack in self.stack_index.referencing(target) {
            let _ = self.stacks.unbounded_send(stack);
        }
    }

    /// Queues every store and Stack that `kind` `name` in `namespace` concerns: those that name
    /// it, and the one whose publication it is by its name, with the Stacks of a store.
    fn changed(&self, kind: Kind, namespace: &str, name: &str) {
        self.referrers_of(target(kind, namespace, name));
        for published in ArtifactStore::PUBLISHES {
            if let Some(store) = published.publisher(kind, name) {
                self.store_publication_changed(namespace, store);
            }
        }
        for published in Stack::PUBLISHES {
            if let Some(stack) = published.publisher(kind, name) {
                let stack = ObjectRef::new(stack).within(namespace);
                if self.cached_stacks.get(&stack).is_some() {
                    let _ = self.stacks.unbounded_send(stack);
                }
            }
        }
    }

    /// Queues `store` when it exists, and the Stacks that name it.
    fn store_publication_changed(&self, namespace: &str, store: &str) {
        let reference = ObjectRef::new(store).within(namespace);
        if self.cached_stores.get(&reference).is_some() {
            let _ = self.stores.unbounded_send(reference);
        }
        self.referrers_of(target(Kind::ArtifactStore, namespace, store));
    }

    /// Queues every store and Stack concerned by objects that went while a watch re-listed, of
    /// which only their [`Target`]s are known: the indexes say who names them, and what each
    /// cached store and Stack publishes is compared with them (once per re-list that finds
    /// objects gone).
    fn gone(&self, gone: &[Target]) {
        if gone.is_empty() {
            return;
        }
        for target in gone {
            self.referrers_of(*target);
        }
        let gone: HashSet<Target> = gone.iter().copied().collect();
        let publishes_one = |published: &[Published], namespace: &str, name: &str| {
            published.iter().any(|p| gone.contains(&target(p.kind, namespace, &p.name(name))))
        };
        for store in self.cached_stores.state() {
            let (namespace, name) = (store.namespace().unwrap_or_default(), store.name_any());
            if publishes_one(ArtifactStore::PUBLISHES, &namespace, &name) {
                self.store_publication_changed(&namespace, &name);
            }
        }
        for stack in self.cached_stacks.state() {
            if publishes_one(Stack::PUBLISHES, &stack.namespace().unwrap_or_default(), &stack.name_any()) {
                let _ = self.stacks.unbounded_send(lean_ref(&*stack));
            }
        }
    }
}

/// The reconcile queues of one scope's two controllers.
pub struct Queues {
    pub stores: UnboundedReceiver<ObjectRef<DeserializeGuard<ArtifactStore>>>,
    pub stacks: UnboundedReceiver<ObjectRef<DeserializeGuard<Stack>>>,
    /// The namespaces in which a Stack was deleted, for the sweep of what it may have left.
    pub deleted_stacks: UnboundedReceiver<String>,
}

/// How many watches [`watch`] runs per scope, each reporting to [`Health::cache_synced`] once.
pub const WATCHES_PER_SCOPE: usize = 5;

/// Starts the five watches of `namespace` (or of all namespaces): ArtifactStores and Stacks whole,
/// ConfigMaps, Secrets and ServiceAccounts as metadata only, of which only the versions are kept.
/// Returns their caches, and the queues that tell each controller which of its objects to
/// reconcile.
pub fn watch(client: &Client, namespace: &Option<String>, health: &Arc<Health>) -> (Caches, Queues) {
    let (stores_writer, stacks_writer) = (reflector::store::Writer::default(), reflector::store::Writer::default());
    let (config_maps, config_maps_writer) = Versions::new();
    let (secrets, secrets_writer) = Versions::new();
    let (accounts, accounts_writer) = Versions::new();
    let caches =
        Caches { stores: stores_writer.as_reader(), stacks: stacks_writer.as_reader(), config_maps, secrets, accounts };
    let (stores, store_queue) = unbounded();
    let (stacks, stack_queue) = unbounded();
    let (deleted_stacks, deleted_stack_queue) = unbounded();
    let fanout = Arc::new(Fanout {
        stores,
        stacks,
        store_index: Index::default(),
        stack_index: Index::default(),
        cached_stores: caches.stores.clone(),
        cached_stacks: caches.stacks.clone(),
    });

    let f = fanout.clone();
    spawn_watch(client, namespace, health, stores_writer, move |store, change| {
        let reference = lean_ref(store);
        let namespace = store.namespace().unwrap_or_default();
        match change {
            Change::Updated => {
                f.store_index.set(reference.clone(), &namespace, indexed_references(store));
                let _ = f.stores.unbounded_send(reference);
            }
            Change::Deleted => f.store_index.remove(&reference),
        }
        f.referrers_of(target(Kind::ArtifactStore, &namespace, &store.name_any()));
    });
    let f = fanout.clone();
    spawn_watch(client, namespace, health, stacks_writer, move |stack, change| {
        let reference = lean_ref(stack);
        match change {
            Change::Updated => {
                f.stack_index.set(reference.clone(), &stack.namespace().unwrap_or_default(), indexed_references(stack));
                let _ = f.stacks.unbounded_send(reference);
            }
            Change::Deleted => {
                f.stack_index.remove(&reference);
                let _ = deleted_stacks.unbounded_send(stack.namespace().unwrap_or_default());
            }
        }
    });
    spawn_version_watch::<ConfigMap>(client, namespace, health, config_maps_writer, fanout.clone());
    spawn_version_watch::<Secret>(client, namespace, health, secrets_writer, fanout.clone());
    spawn_version_watch::<ServiceAccount>(client, namespace, health, accounts_writer, fanout);
    (caches, Queues { stores: store_queue, stacks: stack_queue, deleted_stacks: deleted_stack_queue })
}

/// A reference to `object` by namespace and name only: what the index and the queues hold of each
/// object, without the resourceVersion and UID that `ObjectRef::from_obj` copies along (and
/// that equality ignores).
pub fn lean_ref<K: Resource<DynamicType = ()>>(object: &K) -> ObjectRef<K> {
    ObjectRef::new(&object.name_any()).within(&object.namespace().unwrap_or_default())
}

/// What the index keeps of what a guarded object names (nothing when it did not deserialize):
/// not what the fanout finds by name, that is, what the object publishes under its own name and
/// what the stores it names publish under theirs. Two thirds of what a Stack names are such.
fn indexed_references<K: Resource + Referrer>(guarded: &DeserializeGuard<K>) -> Vec<Reference> {
    let Ok(object) = &guarded.0 else {
        return Vec::new();
    };
    let own = object.meta().name.as_deref().unwrap_or_default();
    let references = object.references();
    let stores: Vec<&str> =
        references.iter().filter(|r| r.kind == Kind::ArtifactStore).map(|r| r.name.as_str()).collect();
    let found_by_name = |reference: &Reference| {
        K::PUBLISHES.iter().any(|p| p.publisher(reference.kind, &reference.name) == Some(own))
            || ArtifactStore::PUBLISHES
                .iter()
                .any(|p| p.publisher(reference.kind, &reference.name).is_some_and(|store| stores.contains(&store)))
    };
    references.iter().filter(|r| !found_by_name(r)).cloned().collect()
}

/// What happened to a cached object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Created, or changed (its resourceVersion differs from the cached one).
    Updated,
    Deleted,
}

/// Leaves only the metadata the reconcilers read of a custom resource: who it is (name,
/// namespace, UID, resourceVersion, generation), when it was created and whether it is going
/// (with its finalizers). Its labels, annotations (kubectl's last-applied copy of the whole object
/// among them), owners and managedFields are read by no reconcile, and at ten thousands of objects
/// they would be most of the cache: a one-label map alone takes half a kilobyte.
fn strip_object<K: Resource<DynamicType = ()>>(object: &mut K) {
    let meta = std::mem::take(object.meta_mut());
    *object.meta_mut() = kube::core::ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        creation_timestamp: meta.creation_timestamp,
        deletion_timestamp: meta.deletion_timestamp,
        finalizers: meta.finalizers,
        ..kube::core::ObjectMeta::default()
    };
}

/// The watch of `kind` and its initial list. Streamed where the apiserver offers it (the WatchList
/// feature, on by default from Kubernetes 1.34): the objects come one by one from the watch cache
/// and are stripped as they come, so the whole list is never held decoded. An apiserver that
/// refuses a streaming list (1.33 and older, where the feature is off by default, answer 422)
/// is listed in pages of 500 instead, for the life of this watch. kube-core then leaves out
/// resourceVersion=0, so each page is read from etcd (a restart with 10,000 stores and Stacks took
/// some 13 s to list them); a whole list from the watch cache took 5 s, but held every object
/// decoded with its managedFields until stripped: a restart peaked at 227 to 249 MiB, against
/// the chart's 256Mi limit.
fn initial_lists<K>(
    api: kube::Api<K>,
    kind: String,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let events = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let streamed = Lists::Streamed { events, api: Box::new(api), kind };
    futures::stream::unfold(streamed, async |lists| match lists {
        Lists::Streamed { mut events, api, kind } => match events.next().await? {
            Err(error) if streaming_refused(&error) => {
                tracing::info!(kind = %kind, %error, "the apiserver does not stream lists: listing in pages");
                let mut paged = watcher(*api, watcher::Config::default().any_semantic()).boxed();
                let event = paged.next().await?;
                Some((event, Lists::Paged(paged)))
            }
            event => Some((event, Lists::Streamed { events, api, kind })),
        },
        Lists::Paged(mut paged) => {
            let event = paged.next().await?;
            Some((event, Lists::Paged(paged)))
        }
    })
}

type Events<K> = futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// How a watch lists: streamed until the apiserver refuses it, then in pages.
enum Lists<K: Resource + Clone> {
    /// The streaming watch, with what a switch to pages needs: the Api, and the kind for the log.
    Streamed {
        events: Events<K>,
        api: Box<kube::Api<K>>,
        kind: String,
    },
    Paged(Events<K>),
}

/// Whether the apiserver refused a watch because it does not stream lists: it finds
/// `sendInitialEvents` invalid (422), or does not know it (400).
fn streaming_refused(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 422 || status.code == 400)
}

/// The events of the watch of `kind`, started with backoff; its errors are told to `health` and
/// logged, and the watch goes on (an error is the apiserver's, never the input's).
fn watch_events<K>(
    api: kube::Api<K>,
    health: Arc<Health>,
    kind: String,
) -> futures::stream::BoxStream<'static, watcher::Event<K>>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    initial_lists(api, kind.clone())
        .default_backoff()
        .filter_map(move |event| {
            let event = event.map_err(|error| {
                if health::is_unreachable_watch(&error) {
                    health.apiserver_unreachable(&error);
                }
                tracing::warn!(%error, kind = %kind, "watch failed");
            });
            futures::future::ready(event.ok())
        })
        .boxed()
}

/// Runs the watch of one kind the caches hold whole in the background: its cache (objects
/// stripped by [`strip_object`]), `changed` for each object created, changed or deleted
/// (including those that changed or went while the watch re-listed), and `health` told of the
/// first complete list and of an apiserver that does not answer.
fn spawn_watch<K>(
    client: &Client,
    namespace: &Option<String>,
    health: &Arc<Health>,
    mut writer: reflector::store::Writer<K>,
    mut changed: impl FnMut(&K, Change) + Send + 'static,
) where
    K: Watched,
{
    let health = health.clone();
    let reader = writer.as_reader();
    let mut events = watch_events(scoped_api::<K>(client, namespace), health.clone(), K::kind(&()).to_string());
    tokio::spawn(async move {
        let mut synced = false;
        let mut listed: HashSet<ObjectRef<K>> = HashSet::new();
        while let Some(event) = events.next().await {
            let event = event.modify(strip_object);
            let is_new = |object: &K| {
                reader.get(&ObjectRef::from_obj(object)).map(|cached| cached.resource_version())
                    != Some(object.resource_version())
            };
            match &event {
                watcher::Event::Init => listed.clear(),
                watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                    if matches!(event, watcher::Event::InitApply(_)) {
                        listed.insert(ObjectRef::from_obj(object));
                    }
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

/// An object of a metadata watch as the fanout knows it: its [`Target`], namespace and name.
fn named<K: Cached>(object: &PartialObjectMeta<K>) -> (Target, &str, &str) {
    let namespace = object.metadata.namespace.as_deref().unwrap_or_default();
    let name = object.metadata.name.as_deref().unwrap_or_default();
    (target(K::KIND, namespace, name), namespace, name)
}

/// Runs the metadata-only watch of one kind the caches keep only the versions of, in the
/// background: `versions`, `fanout` told of each object created, changed or deleted (including
/// while the watch re-listed), and `health` as for [`spawn_watch`]. The apiserver sends metadata
/// only: no Secret's data ever crosses this watch.
fn spawn_version_watch<K>(
    client: &Client,
    namespace: &Option<String>,
    health: &Arc<Health>,
    versions: VersionsWriter,
    fanout: Arc<Fanout>,
) where
    K: Cached,
{
    let health = health.clone();
    // An Api of PartialObjectMeta asks the apiserver for metadata only.
    let api = scoped_api::<PartialObjectMeta<K>>(client, namespace);
    let mut events = watch_events(api, health.clone(), K::kind(&()).to_string());
    tokio::spawn(async move {
        let mut synced = false;
        let mut listed: HashSet<Target> = HashSet::new();
        while let Some(event) = events.next().await {
            match &event {
                watcher::Event::Init => listed.clear(),
                watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                    let (target, namespace, name) = named(object);
                    if matches!(event, watcher::Event::InitApply(_)) {
                        listed.insert(target);
                    }
                    let version = version_of(object.metadata.resource_version.as_deref().unwrap_or_default());
                    if versions.set(target, version, Kept::of::<K>(&object.metadata)) {
                        fanout.changed(K::KIND, namespace, name);
                    }
                }
                watcher::Event::Delete(object) => {
                    let (target, namespace, name) = named(object);
                    if versions.remove(target) {
                        fanout.changed(K::KIND, namespace, name);
                    }
                }
                watcher::Event::InitDone => {
                    // Objects that went while the watch was re-listing are no longer listed.
                    fanout.gone(&versions.keep_only(&listed));
                    listed = HashSet::new();
                    versions.complete();
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

    #[tokio::test]
    async fn an_apiserver_that_does_not_stream_lists_is_listed_in_pages() {
        let (ctx, mut api) = crate::controller::fixtures::test_context();
        let secrets: kube::Api<Secret> = kube::Api::namespaced(ctx.client.clone(), "ns");
        let mut events = initial_lists(secrets, "Secret".to_owned()).boxed();
        let listed = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(event) = events.next().await {
                match event.expect("no error reaches the caller") {
                    watcher::Event::Init => seen.push("init".to_owned()),
                    watcher::Event::InitApply(secret) => seen.push(secret.name_any()),
                    watcher::Event::InitDone => return seen,
                    other => panic!("unexpected {other:?}"),
                }
            }
            seen
        });
        let path = "/api/v1/namespaces/ns/secrets";
        let refused = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
            "reason": "Invalid", "message": "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"});
        let (_, streaming) = api.handle(http::Method::GET, path, |_| (422, refused)).await;
        assert!(streaming.contains("watch=true") && streaming.contains("sendInitialEvents=true"), "{streaming}");
        let list = serde_json::json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"},
            "items": [{"metadata": {"name": "keys", "namespace": "ns", "resourceVersion": "9"}}]});
        let (_, paged) = api.handle(http::Method::GET, path, |_| (200, list)).await;
        assert!(paged.contains("limit=500") && !paged.contains("watch"), "a list in pages: {paged}");
        assert_eq!(listed.await.unwrap(), ["init", "keys"]);
    }

    #[test]
    fn a_claim_is_kept_with_its_version_only() {
        let (versions, writer) = Versions::new();
        let digest = |claim| Kept { claim, ..Kept::default() };
        writer.set(7, 1, digest(Some(255)));
        assert_eq!(versions.claimed(7), Some((1, 255)));
        writer.set(7, 2, digest(None));
        assert_eq!(versions.claimed(7), None, "changed by someone: no longer claimed");
        writer.set(7, 3, digest(Some(9)));
        writer.remove(7);
        assert_eq!(versions.claimed(7), None);

        // The parts of a shared ConfigMap, each with its claim, until it changes without them.
        let claim = PartClaim { digest: 5, annotations: Box::default() };
        let parts = vec![("dev".into(), None), ("prod".into(), Some(claim.clone()))];
        writer.set(8, 1, Kept { parts: Some(parts.into()), ..Kept::default() });
        assert_eq!(versions.part_claim(8, "prod"), Some(claim));
        assert_eq!(versions.part_claim(8, "dev"), None, "a part without its claim");
        assert_eq!(versions.parts(8), Some(vec!["dev".into(), "prod".into()]));
        writer.set(8, 2, Kept::default());
        assert_eq!(versions.part_claim(8, "prod"), None, "the part's manager no longer holds its key");
        assert_eq!(versions.parts(8), Some(vec![]), "no part left");
        assert_eq!(versions.parts(9), None, "not held");
    }

    #[test]
    fn a_service_account_is_kept_as_its_version_and_role() {
        let mut meta = kube::core::ObjectMeta { resource_version: Some("41".into()), ..Default::default() };
        meta.annotations = Some(
            [
                (crate::aws::iam::ROLE_ARN_ANNOTATION.to_owned(), "arn:aws:iam::1:role/ml".to_owned()),
                ("team".to_owned(), "a".to_owned()),
            ]
            .into(),
        );
        let (versions, writer) = Versions::new();
        writer.set(7, version_of("41"), Kept::of::<ServiceAccount>(&meta));
        let account = versions.account(7).expect("kept").account("ns", "runner");
        assert_eq!(account.metadata.name.as_deref(), Some("runner"));
        assert_eq!(account.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(account.metadata.resource_version.as_deref(), Some("41"));
        let role = [(crate::aws::iam::ROLE_ARN_ANNOTATION.to_owned(), "arn:aws:iam::1:role/ml".to_owned())].into();
        assert_eq!(account.metadata.annotations, Some(role), "the role only");

        // Unannotated (Pod Identity, or not wired yet): no annotation at all.
        meta.annotations = None;
        meta.resource_version = Some("42".into());
        writer.set(7, version_of("42"), Kept::of::<ServiceAccount>(&meta));
        let account = versions.account(7).expect("kept").account("ns", "runner");
        assert_eq!((account.metadata.annotations, account.metadata.resource_version.as_deref()), (None, Some("42")));
        // A sketch behind the version it was kept with is not served.
        writer.set(7, version_of("43"), Kept::default());
        assert_eq!(versions.account(7), None);
        writer.remove(7);
        assert_eq!(versions.account(7), None);
    }

    #[test]
    fn the_index_finds_exactly_the_referrers() {
        let index: Index<ConfigMap> = Index::default();
        let a = ObjectRef::new("a").within("ns");
        let b = ObjectRef::new("b").within("ns");
        index.set(a.clone(), "ns", vec![Reference::new(Kind::Secret, "keys"), Reference::new(Kind::Secret, "keys")]);
        index.set(b.clone(), "ns", vec![Reference::new(Kind::Secret, "keys"), Reference::new(Kind::ConfigMap, "ca")]);
        let mut found = index.referencing(target(Kind::Secret, "ns", "keys"));
        found.sort_by_key(|r| r.name.clone());
        assert_eq!(found, vec![a.clone(), b.clone()]);
        assert!(index.referencing(target(Kind::Secret, "other", "keys")).is_empty(), "namespaces never mix");
        assert!(index.referencing(target(Kind::ConfigMap, "ns", "keys")).is_empty(), "kinds never mix");

        // A changed object names what it names now, no longer what it named before.
        index.set(b.clone(), "ns", vec![Reference::new(Kind::ConfigMap, "ca")]);
        assert_eq!(index.referencing(target(Kind::Secret, "ns", "keys")), vec![a.clone()]);
        index.remove(&a);
        assert!(index.referencing(target(Kind::Secret, "ns", "keys")).is_empty());
        index.remove(&b);
        let inner = index.lock();
        assert!(inner.targets.is_empty() && inner.referrers.is_empty(), "nothing left behind");
    }

    #[test]
    fn cached_objects_keep_only_the_metadata_the_reconcilers_read() {
        let mut store: ArtifactStore = serde_json::from_value(serde_json::json!({
            "apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore",
            "metadata": {
                "name": "s", "namespace": "ns", "uid": "u-1", "resourceVersion": "7", "generation": 2,
                "creationTimestamp": "2026-11-28T23:11:31Z", "deletionTimestamp": "2026-11-28T23:12:31Z",
                "finalizers": ["artifacts.dev/bucket"], "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u-0"}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {"path": "s3://bucket/prefix", "auth": {"secretRef": {"name": "keys"}}}
        }))
        .unwrap();
        let before = store.metadata.clone();
        strip_object(&mut store);
        let meta = &store.metadata;
        assert_eq!(
            (meta.name.as_deref(), meta.namespace.as_deref(), meta.uid.as_deref()),
            (Some("s"), Some("ns"), Some("u-1"))
        );
        assert_eq!((meta.resource_version.as_deref(), meta.generation), (Some("7"), Some(2)));
        assert_eq!(meta.creation_timestamp, before.creation_timestamp);
        assert_eq!(meta.deletion_timestamp, before.deletion_timestamp);
        assert_eq!(meta.finalizers, before.finalizers);
        assert!(meta.labels.is_none() && meta.annotations.is_none());
        assert!(meta.owner_references.is_none() && meta.managed_fields.is_none());
        assert_eq!(store.spec.path, "s3://bucket/prefix", "the spec is untouched");
    }

    fn guarded<K: Resource + serde::de::DeserializeOwned>(value: serde_json::Value) -> DeserializeGuard<K> {
        serde_json::from_value(value).unwrap()
    }

    fn store(name: &str, secret: &str) -> DeserializeGuard<ArtifactStore> {
        guarded(serde_json::json!({
            "apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
            "spec": {"path": "s3://bucket/prefix", "auth": {"secretRef": {"name": secret}}}
        }))
    }

    fn stack(name: &str, store: &str) -> DeserializeGuard<Stack> {
        guarded(serde_json::json!({
            "apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
            "spec": {"artifactStoreRef": {"name": store},
                     "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "runner"}}
        }))
    }

    #[test]
    fn what_an_object_publishes_is_what_it_names_under_its_own_name() {
        let (store, stack) = (store("a", "keys"), stack("s", "a"));
        let store_references = store.0.as_ref().unwrap().references();
        for published in ArtifactStore::PUBLISHES {
            let name = published.name("a");
            assert!(store_references.contains(&Reference::new(published.kind, &name)), "{name}");
            assert_eq!(published.publisher(published.kind, &name), Some("a"));
        }
        let stack_references = stack.0.as_ref().unwrap().references();
        for published in Stack::PUBLISHES {
            let name = published.name("s");
            assert!(stack_references.contains(&Reference::new(published.kind, &name)), "{name}");
            assert_eq!(published.publisher(published.kind, &name), Some("s"));
        }
        let config_map = ArtifactStore::PUBLISHES[0];
        assert_eq!(config_map.publisher(Kind::Secret, &config_map.name("a")), None, "kinds never mix");
        assert_eq!(config_map.publisher(Kind::ConfigMap, config_map.suffix), None, "no publisher without a name");
    }

    #[test]
    fn the_index_keeps_only_what_is_not_found_by_name() {
        assert_eq!(indexed_references(&store("a", "keys")), vec![Reference::new(Kind::Secret, "keys")]);
        assert_eq!(
            indexed_references(&stack("s", "a")),
            vec![Reference::new(Kind::ArtifactStore, "a"), Reference::new(Kind::ServiceAccount, "runner")]
        );
        // Another store's publication, named by this one: only the index finds this store.
        let reads_another = store("b", &ArtifactStore::PUBLISHES[1].name("a"));
        assert!(indexed_references(&reads_another).contains(&Reference::new(Kind::Secret, "a-aws-credentials")));
    }

    #[tokio::test]
    async fn a_change_reaches_its_publisher_by_name_and_its_referrers_through_the_index() {
        let (mut stores_writer, mut stacks_writer) =
            (reflector::store::Writer::default(), reflector::store::Writer::default());
        let (a, s) = (store("a", "keys"), stack("s", "a"));
        stores_writer.apply_watcher_event(&watcher::Event::Apply(a.clone()));
        stacks_writer.apply_watcher_event(&watcher::Event::Apply(s.clone()));
        let ((stores, mut store_queue), (stacks, mut stack_queue)) = (unbounded(), unbounded());
        let fanout = Fanout {
            stores,
            stacks,
            store_index: Index::default(),
            stack_index: Index::default(),
            cached_stores: stores_writer.as_reader(),
            cached_stacks: stacks_writer.as_reader(),
        };
        fanout.store_index.set(lean_ref(&a), "ns", indexed_references(&a));
        fanout.stack_index.set(lean_ref(&s), "ns", indexed_references(&s));
        fn names<K: Resource<DynamicType = ()>>(queue: &mut UnboundedReceiver<ObjectRef<K>>) -> Vec<String> {
            std::iter::from_fn(|| queue.try_recv().ok().map(|r| r.name)).collect()
        }
        let mut queued = || (names(&mut store_queue), names(&mut stack_queue));

        fanout.changed(Kind::ConfigMap, "ns", "a-artifact-store");
        assert_eq!(queued(), (vec!["a".to_owned()], vec!["s".to_owned()]), "the store, and the Stack of the store");
        fanout.changed(Kind::Secret, "ns", "s-scoped-credentials");
        assert_eq!(queued(), (vec![], vec!["s".to_owned()]));
        fanout.changed(Kind::Secret, "ns", "keys");
        assert_eq!(queued(), (vec!["a".to_owned()], vec![]), "through the index");
        fanout.changed(Kind::ServiceAccount, "ns", "runner");
        assert_eq!(queued(), (vec![], vec!["s".to_owned()]), "through the index");
        fanout.changed(Kind::ConfigMap, "other", "a-artifact-store");
        fanout.changed(Kind::ConfigMap, "ns", "ghost-artifact-store");
        fanout.changed(Kind::ConfigMap, "ns", "-stack");
        assert_eq!(queued(), (vec![], vec![]), "nothing that is not cached, nor in another namespace");

        // Gone while a watch re-listed: known by their targets only.
        fanout.gone(&[target(Kind::Secret, "ns", "s-ca-bundle")]);
        assert_eq!(queued(), (vec![], vec!["s".to_owned()]));
        fanout.gone(&[target(Kind::Secret, "ns", "a-aws-credentials"), target(Kind::Secret, "ns", "keys")]);
        let (stores, stacks) = queued();
        assert!(stores.iter().all(|n| n == "a") && !stores.is_empty() && stacks == vec!["s".to_owned()]);
    }

    #[tokio::test]
    async fn versions_tell_what_changed_and_what_went() {
        let (versions, writer) = Versions::new();
        let (keys, ca) = (target(Kind::Secret, "ns", "keys"), target(Kind::ConfigMap, "ns", "ca"));
        assert!(writer.set(keys, version_of("5"), Kept::default()), "created");
        assert!(!writer.set(keys, version_of("5"), Kept::default()), "the same version again is no change");
        assert!(writer.set(keys, version_of("6"), Kept::default()), "changed");
        assert!(writer.set(ca, version_of("1"), Kept::default()));
        assert_eq!(versions.get(keys), Some(version_of("6")));

        // A re-list that no longer holds `ca`: it went meanwhile.
        assert_eq!(writer.keep_only(&HashSet::from([keys])), vec![ca]);
        assert_eq!(versions.get(ca), None);
        assert!(!writer.remove(ca), "already gone");
        assert!(writer.remove(keys));

        let listed = tokio::spawn({
            let versions = versions.clone();
            async move { versions.listed().await }
        });
        tokio::task::yield_now().await;
        assert!(!listed.is_finished(), "not listed before the first complete list");
        writer.complete();
        tokio::time::timeout(std::time::Duration::from_secs(5), listed).await.unwrap().unwrap();
    }
}
