//! The ArtifactStore reconciler: dereference → validate → verify → build → apply → status.

pub mod build;
pub mod dereference;
#[cfg(test)]
mod seam_tests;
pub mod status;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::api::artifact_store::{ArtifactStoreStatus, CaBundleKind, DeletionPolicy};
use crate::api::{ArtifactStore, Word, kind};
use crate::conditions::{self, READY};
use crate::controller::apply::{self, Applied, Presence};
use crate::controller::caches::{Kind, Published, Reference, Referrer};
use crate::controller::context::EventType;
use crate::controller::timing::{backoff, jittered, spread};
use crate::controller::{Context, Next, object_key};
use crate::reason::{Failure, Reason};
use crate::resolve::{
    DEFAULT_REGION, ResolvedAuth, ResolvedStore, STORE_CONFIG_MAP_SUFFIX, STORE_ENV_SECRET_SUFFIX,
    store_config_map_name, store_env_secret_name,
};
use dereference::{Inputs, dereference};

/// Held while a store with `deletionPolicy: Delete` may still have to delete its bucket.
pub const FINALIZER: &str = "artifacts.dev/bucket-deletion";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to dereference the store's inputs")]
    Dereference(#[source] dereference::Error),
    #[error("failed to publish the store's configuration")]
    Publish(#[source] kube::Error),
    #[error("failed to write the store's status")]
    Status(#[source] kube::Error),
    #[error("failed to update the store's finalizer")]
    Finalizer(#[source] kube::Error),
    #[error("failed to check whether the namespace or the CRD is being deleted")]
    DeletionScope(#[source] kube::Error),
    #[error("the reconcile panicked")]
    Panicked,
}

impl Error {
    /// A static label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Dereference(_) => "dereference",
            Self::Publish(_) => "publish",
            Self::Status(_) => "status",
            Self::Finalizer(_) => "finalizer",
            Self::DeletionScope(_) => "deletion_scope",
            Self::Panicked => "panic",
        }
    }
}

impl Referrer for ArtifactStore {
    const PUBLISHES: &'static [Published] = &[
        Published { kind: Kind::ConfigMap, suffix: STORE_CONFIG_MAP_SUFFIX },
        Published { kind: Kind::Secret, suffix: STORE_ENV_SECRET_SUFFIX },
    ];

    /// The Secret, CA bundle and ServiceAccount the store reads, and the ConfigMap and Secret it
    /// publishes (a clashing object's removal lets it publish at once).
    fn references(&self) -> Vec<Reference> {
        let spec = &self.spec;
        let name = self.name_any();
        let mut references = vec![
            Reference::new(Kind::ConfigMap, store_config_map_name(&name)),
            Reference::new(Kind::Secret, store_env_secret_name(&name)),
        ];
        let auth = ResolvedAuth::new(&spec.auth, &name);
        if let Some(keys) = auth.keys() {
            references.push(Reference::new(Kind::Secret, &keys.secret_name));
        }
        if let Some(ca) = spec.endpoint.as_ref().and_then(|e| e.tls.as_ref()).and_then(|t| t.ca_bundle.as_ref()) {
            let kind = match ca.kind {
                CaBundleKind::ConfigMap => Kind::ConfigMap,
                CaBundleKind::Secret => Kind::Secret,
            };
            references.push(Reference::new(kind, &ca.name));
        }
        if let Some(account) = auth.service_account() {
            references.push(Reference::new(Kind::ServiceAccount, account));
        }
        references
    }
}

/// The requeue after a failed reconcile (see [`crate::controller::error_action`]).
pub fn error_policy(store: Arc<DeserializeGuard<ArtifactStore>>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::controller::error_action(&ctx, kind::<ArtifactStore>(), &object_key(&*store), error.category(), error)
}

pub async fn reconcile(guarded: Arc<DeserializeGuard<ArtifactStore>>, ctx: Arc<Context>) -> Result<Next, Error> {
    let store = match crate::controller::deserialized(&ctx, &guarded).await {
        Ok(store) => store,
        Err(action) => return Ok(action),
    };
    let started = Instant::now();
    let result = match crate::controller::contained(&object_key(store), reconcile_inner(store, &ctx)).await {
        Some(result) => result,
        None => write_ready_only(store, &ctx, crate::controller::panicked()).await.and(Err(Error::Panicked)),
    };
    ctx.metrics.reconciled(kind::<ArtifactStore>(), started.elapsed());
    result
}

/// (steady: nothing changed) → resolve the spec → dereference → (recheck: verified with these
/// inputs) → verify → publish → status.
async fn reconcile_inner(store: &ArtifactStore, ctx: &Context) -> Result<Next, Error> {
    if store.metadata.deletion_timestamp.is_some() {
        return cleanup(store, ctx).await;
    }
    if sync_finalizer(store, ctx).await? == Presence::Gone {
        return Ok(Next::await_change());
    }
    // The spec, parsed and checked once: also what the schema could not check (objects created
    // before a rule existed).
    let resolved = match ResolvedStore::of(store) {
        Ok(resolved) => resolved,
        Err(error) => {
            let failure = Failure::new(Reason::InvalidPath, error.to_string());
            write_status(store, ctx, &status::unresolved(&failure), |_| {}).await?;
            return Ok(Next::await_change());
        }
    };
    let uid = store.uid().unwrap_or_default();
    // What the caches hold of the store and of everything it names, before anything is read.
    let watermark = ctx.caches(&store.namespace().unwrap_or_default()).map(|c| c.watermark(store));
    if let Some(action) = steady(store, &resolved, ctx, watermark.as_deref()).await {
        return Ok(action);
    }

    let inputs = match dereference(ctx, store, &resolved).await {
        Ok(inputs) => inputs,
        Err(dereference::Error::Invalid(failure)) => {
            let path = &resolved.path;
            write_status(store, ctx, &status::unresolved(&failure), |s| {
                s.bucket = Some(Word::new(&path.bucket));
                s.prefix = Some(path.prefix.clone());
            })
            .await?;
            // Only a change to what the store names fixes this, and the watches bring it at once.
            ctx.settle(&uid, watermark, Arc::new(Pass::Waiting));
            return Ok(Next::requeue(jittered(ctx.settings.resync_interval)));
        }
        Err(error) => return Err(Error::Dereference(error)),
    };

    let ready_for = match recheck(store, &resolved, ctx, &inputs).await? {
        Some(wait) => Some(wait),
        None => verify_and_publish(store, &resolved, ctx, &inputs).await?,
    };
    match ready_for {
        Some(wait) => {
            ctx.record_success(&object_key(store));
            ctx.settle(&uid, watermark, Arc::new(Pass::Ready(Box::new(inputs))));
            Ok(Next::requeue(wait))
        }
        None => {
            let failures = ctx.record_failure(&object_key(store));
            Ok(Next::requeue(backoff(failures, ctx.settings.resync_interval)))
        }
    }
}

/// What a full pass came to, kept while nothing the store names changes.
enum Pass {
    /// Ready, with these inputs.
    Ready(Box<Inputs>),
    /// Not Ready for a reason in the objects the store names (a missing Secret, an invalid CA
    /// bundle): until one of them changes, another pass would find the same.
    Waiting,
}

/// The steady state: nothing the store reads or publishes changed since a full pass found it
/// Ready (or waiting for such a change), so nothing is read from the apiserver; S3 is called
/// once, when the re-verification of a Ready store is due. None when a full pass is needed.
async fn steady(
    store: &ArtifactStore,
    resolved: &ResolvedStore,
    ctx: &Context,
    watermark: Option<&str>,
) -> Option<Next> {
    let uid = store.uid()?;
    let pass = ctx.settled::<Pass>(&uid, watermark?)?;
    let inputs = match &*pass {
        Pass::Waiting => return Some(Next::requeue(jittered(ctx.settings.resync_interval))),
        Pass::Ready(inputs) => inputs,
    };
    let due = ctx.verification_due(&uid, &inputs.fingerprint)?;
    let now = Instant::now();
    if due > now {
        return Some(Next::requeue(due - now));
    }
    verify::quick_check(ctx, resolved, inputs).await.ok()?;
    ctx.metrics.verified();
    Some(Next::requeue(ctx.mark_verified(&uid, &inputs.fingerprint)))
}

/// A store already Ready with these inputs needs no full verification: only the cheap check when
/// it is due (or, first seen by this process, a due time spread over one interval), and its
/// published objects healed. Returns how long it stays verified; None when a full verification
/// is needed (not Ready, new inputs, a failed check, or a name conflict to report).
async fn recheck(
    store: &ArtifactStore,
    resolved: &ResolvedStore,
    ctx: &Context,
    inputs: &Inputs,
) -> Result<Option<Duration>, Error> {
    let previous = store.status.clone().unwrap_or_default();
    let up_to_date = conditions::is_true_for(&previous.conditions, READY, store.metadata.generation)
        && previous.verified_inputs.as_deref() == Some(inputs.fingerprint.as_str());
    if !up_to_date {
        return Ok(None);
    }
    let uid = store.uid().unwrap_or_default();
    let now = Instant::now();
    let wait = match ctx.verification_due(&uid, &inputs.fingerprint) {
        Some(due) if due > now => due - now,
        Some(_) => match verify::quick_check(ctx, resolved, inputs).await {
            Ok(()) => {
                ctx.metrics.verified();
                ctx.mark_verified(&uid, &inputs.fingerprint)
            }
            Err(_) => return Ok(None),
        },
        None => {
            // First sight since this process started: the status is trusted for one interval, as
            // the process that wrote it did, then re-verifications are spread over the next one,
            // so that a restart with thousands of stores makes no burst of AWS calls.
            let resync = ctx.settings.resync_interval;
            let wait = resync + spread(resync);
            ctx.verification_due_in(&uid, &inputs.fingerprint, wait);
            wait
        }
    };
    Ok(publish(store, resolved, ctx, inputs).await?.is_none().then_some(wait))
}

/// The full verification: bucket found or provisioned, access proven, configuration published,
/// status written. Returns how long the store stays verified when it is Ready.
async fn verify_and_publish(
    store: &ArtifactStore,
    resolved: &ResolvedStore,
    ctx: &Context,
    inputs: &Inputs,
) -> Result<Option<Duration>, Error> {
    let path = &resolved.path;
    let previous = store.status.clone().unwrap_or_default();
    let provenance = verify::Provenance {
        created: previous.bucket_created == Some(true),
        create_requested: previous.bucket_create_requested.is_some(),
    };
    let record = async || record_create_request(store, ctx).await;
    let outcome = verify::verify(ctx, store, resolved, inputs, &provenance, record).await;
    let region = outcome.region.clone().or_else(|| previous.region.as_deref().map(str::to_owned));
    let config_map_name = store_config_map_name(&store.name_any());
    let verified = outcome.bucket.is_ok() && outcome.credentials.is_ok();
    let conflict = match verified {
        true => {
            let found = resolved.in_region(region.as_deref().unwrap_or(DEFAULT_REGION));
            publish(store, &found, ctx, inputs).await?
        }
        false => None,
    };
    let ready = verified && conflict.is_none();
    let observed = status::observe(
        &path.to_string(),
        region.as_deref(),
        &outcome.bucket,
        &outcome.credentials,
        conflict.as_ref(),
        &config_map_name,
    );
    let endpoint = crate::resolve::endpoint_shown(
        resolved.endpoint.as_ref().map(|e| e.url.as_str()),
        region.as_deref().unwrap_or(DEFAULT_REGION),
    );
    write_status(store, ctx, &observed, |s| {
        s.bucket = Some(Word::new(&path.bucket));
        s.prefix = Some(path.prefix.clone());
        s.region = region.as_deref().map(Word::new);
        s.endpoint = Some(Word::new(&endpoint));
        if let Ok(bucket) = &outcome.bucket {
            s.bucket_created = Some(bucket.created_by_operator);
        } else {
            s.bucket_created = previous.bucket_created;
        }
        s.bucket_create_requested =
            outcome.create_requested.clone().or_else(|| previous.bucket_create_requested.clone());
        if let Ok(identity) = &outcome.credentials {
            s.identity_arn = identity.arn.as_deref().map(Word::new);
        }
        if ready {
            s.config_map_name = Some(config_map_name.clone());
            s.credentials_secret_name = inputs.keys.as_ref().map(|_| store_env_secret_name(&store.name_any()));
            s.verified_inputs = Some(inputs.fingerprint.clone());
        } else {
            s.config_map_name = previous.config_map_name.clone();
            s.credentials_secret_name = previous.credentials_secret_name.clone();
        }
    })
    .await?;
    if !ready {
        return Ok(None);
    }
    ctx.metrics.verified();
    Ok(Some(ctx.mark_verified(&store.uid().unwrap_or_default(), &inputs.fingerprint)))
}

/// Publishes the store's ConfigMap (and, for key auth, the env Secret) where they differ. A name
/// taken by an object this operator did not make is left alone and returned as a `NameConflict`.
async fn publish(
    store: &ArtifactStore,
    resolved: &ResolvedStore,
    ctx: &Context,
    inputs: &Inputs,
) -> Result<Option<Failure>, Error> {
    let resolved = resolved.clone().with_session_token(inputs.has_session_token);
    let config_map = build::config_map(store, &resolved, inputs.ca_pem.as_deref());
    let config_map_name = store_config_map_name(&store.name_any());
    let written = match apply::publish(ctx, &config_map).await.map_err(Error::Publish)? {
        Applied::NotOurs => return Ok(Some(apply::name_conflict("ConfigMap", &config_map_name, store))),
        applied => applied == Applied::Written,
    };
    if let Some(keys) = &inputs.keys {
        let secret = apply::secret_with_data(build::env_secret(store, keys));
        let applied = apply::publish(ctx, &secret).await.map_err(Error::Publish)?;
        if applied == Applied::NotOurs {
            return Ok(Some(apply::name_conflict("Secret", &store_env_secret_name(&store.name_any()), store)));
        }
    }
    if written {
        tracing::info!(store = %object_key(store), config_map = %config_map_name, "published the store's configuration");
    }
    Ok(None)
}

/// Records in the status, before CreateBucket is sent, that this store is about to create its
/// bucket, so that a stop before the creator tag is set cannot leave the bucket unrecognised. A
/// request recorded by an earlier pass stands.
async fn record_create_request(store: &ArtifactStore, ctx: &Context) -> Result<Time, Failure> {
    let mut status = store.status.clone().unwrap_or_default();
    if let Some(at) = &status.bucket_create_requested {
        return Ok(at.clone());
    }
    let now = Time(jiff::Timestamp::now());
    status.bucket_create_requested = Some(now.clone());
    let api: Api<ArtifactStore> = Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    let version = apply::status(&api, &store.name_any(), &status).await.map_err(|error| {
        Failure::new(
            Reason::StatusWriteFailed,
            format!("the bucket was not created, because recording that it is about to be failed: {error}"),
        )
    })?;
    // A pass woken meanwhile would compute from this version, which the pass's last write
    // supersedes: without this it would see the bucket just created as one that exists.
    ctx.wrote_intermediate_status(&store.metadata, &version.unwrap_or_default());
    Ok(now)
}

/// Writes the status if anything but the verification time changed, and publishes an Event per
/// condition transition.
async fn write_status(
    store: &ArtifactStore,
    ctx: &Context,
    observed: &[conditions::Observed],
    fill: impl FnOnce(&mut ArtifactStoreStatus),
) -> Result<(), Error> {
    let previous = store.status.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let (merged, transitions) = conditions::merge(&previous.conditions, observed, store.metadata.generation, &now);
    let mut next = ArtifactStoreStatus {
        observed_generation: store.metadata.generation,
        conditions: merged,
        last_verified_time: previous.last_verified_time.clone(),
        verified_inputs: previous.verified_inputs.clone(),
        ..ArtifactStoreStatus::default()
    };
    fill(&mut next);
    if next == previous {
        return Ok(());
    }
    // A cache that has not caught up with this process's last write would have it overwrite
    // (and announce again) what that write said.
    if !ctx.may_write_status(&store.metadata) {
        return Ok(());
    }
    next.last_verified_time = Some(now);
    let api: Api<ArtifactStore> = Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    apply::status(&api, &store.name_any(), &next).await.map_err(Error::Status)?;
    ctx.wrote_status(&store.metadata);
    ctx.announce_transitions(kind::<ArtifactStore>(), &store.metadata, &store.object_ref(&()), &transitions).await;
    Ok(())
}

/// Writes `ready` as the only condition and keeps every other status field as it was: for a pass
/// that judged neither the bucket nor the credentials (a deletion blocked, a reconcile that panicked).
async fn write_ready_only(store: &ArtifactStore, ctx: &Context, ready: conditions::Observed) -> Result<(), Error> {
    write_status(store, ctx, &[ready], |s| {
        let previous = store.status.clone().unwrap_or_default();
        *s = ArtifactStoreStatus {
            conditions: std::mem::take(&mut s.conditions),
            observed_generation: s.observed_generation,
            ..previous
        };
    })
    .await
}

fn has_finalizer(store: &ArtifactStore) -> bool {
    apply::has_finalizer(store, FINALIZER)
}

async fn set_finalizer(store: &ArtifactStore, ctx: &Context, present: bool) -> Result<Presence, Error> {
    let api: Api<ArtifactStore> = Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    apply::set_finalizer(&api, store, FINALIZER, present).await.map_err(Error::Finalizer)
}

/// `Delete` needs the finalizer; `Retain` needs none. A store deleted before its finalizer went on
/// is `Gone`: it gets no bucket.
async fn sync_finalizer(store: &ArtifactStore, ctx: &Context) -> Result<Presence, Error> {
    let wanted = store.spec.deletion_policy == DeletionPolicy::Delete;
    if wanted != has_finalizer(store) {
        return set_finalizer(store, ctx, wanted).await;
    }
    Ok(Presence::Exists)
}

async fn event(ctx: &Context, store: &ArtifactStore, type_: EventType, reason: Reason, note: String) {
    ctx.publish_event(&store.object_ref(&()), type_, reason, note, "Delete").await;
}

/// Whether the store goes because its namespace or its CRD goes: then no bucket is deleted.
///
/// Read from the Namespace and the CRD. An operator with namespaced RBAC may read neither: it
/// asks the apiserver instead with dry-run creates, which fail only while the namespace is being
/// terminated or the CRD is being deleted.
async fn deleted_in_bulk(store: &ArtifactStore, ctx: &Context) -> Result<Option<String>, Error> {
    let namespace = store.namespace().unwrap_or_default();
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
        Err(error) => return Err(Error::DeletionScope(error)),
    };
    if namespace_going {
        return Ok(Some(format!("namespace {namespace} is being deleted")));
    }
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let crd_going = match crds.get_opt("artifactstores.artifacts.dev").await {
        Ok(found) => found.is_none_or(|c| c.metadata.deletion_timestamp.is_some()),
        Err(error) if forbidden(&error) => {
            let probe = ArtifactStore::new(PROBE_NAME, store.spec.clone());
            refused_create(&Api::namespaced(ctx.client.clone(), &namespace), &probe, "terminating").await?
        }
        Err(error) => return Err(Error::DeletionScope(error)),
    };
    if crd_going {
        return Ok(Some("the ArtifactStore CRD is being deleted".to_owned()));
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
async fn refused_create<K>(api: &Api<K>, probe: &K, going: &str) -> Result<bool, Error>
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
        Err(error) => Err(Error::DeletionScope(error)),
    }
}

async fn cleanup(store: &ArtifactStore, ctx: &Context) -> Result<Next, Error> {
    ctx.forget(&store.uid().unwrap_or_default(), &object_key(store));
    if !has_finalizer(store) {
        return Ok(Next::await_change());
    }
    let status = store.status.clone().unwrap_or_default();
    let bucket_name = status.bucket.as_deref().map_or_else(|| store.spec.path.clone(), str::to_owned);
    let bucket = &bucket_name;
    let retain = |why: String| async move {
        event(ctx, store, EventType::Normal, Reason::BucketRetained, format!("bucket {bucket} is kept: {why}")).await;
        set_finalizer(store, ctx, false).await.map(|_| Next::await_change())
    };
    if store.spec.deletion_policy == DeletionPolicy::Retain {
        return retain("deletionPolicy is Retain".into()).await;
    }
    if let Some(why) = deleted_in_bulk(store, ctx).await? {
        return retain(format!("{why}; buckets are deleted only when their ArtifactStore itself is deleted")).await;
    }
    if status.bucket_created != Some(true) && status.bucket_create_requested.is_none() {
        return retain("this operator did not create it".into()).await;
    }
    let blocked = |failure: Failure| async move {
        write_ready_only(store, ctx, conditions::Observed::failed(READY, failure.reason, failure.message.clone()))
            .await?;
        let failures = ctx.record_failure(&object_key(store));
        Ok(Next::requeue(backoff(failures, ctx.settings.resync_interval)))
    };
    let resolved = match ResolvedStore::of(store) {
        Ok(resolved) => resolved,
        Err(error) => {
            return blocked(Failure::new(
                Reason::DeletionBlocked,
                format!("cannot delete bucket {bucket_name}: {error}"),
            ))
            .await;
        }
    };
    let inputs = match dereference(ctx, store, &resolved).await {
        Ok(inputs) => inputs,
        Err(dereference::Error::Invalid(failure)) => {
            return blocked(Failure::new(
                Reason::DeletionBlocked,
                format!("cannot delete bucket {bucket_name}: {}", failure.message),
            ))
            .await;
        }
        Err(error) => return Err(Error::Dereference(error)),
    };
    match verify::delete_created_bucket(ctx, store, &resolved, &inputs).await {
        Ok(verify::Deletion::Deleted) => {
            event(
                ctx,
                store,
                EventType::Normal,
                Reason::BucketDeleted,
                format!("deleted empty bucket {bucket_name} (deletionPolicy Delete)"),
            )
            .await;
            set_finalizer(store, ctx, false).await.map(|_| Next::await_change())
        }
        Ok(verify::Deletion::NotOurs) => retain("its creator tag does not name this ArtifactStore".into()).await,
        Err(failure) => blocked(failure).await,
    }
}
