//! The ArtifactStore reconciler: dereference → validate → verify → build → apply → status.

pub mod build;
pub mod dereference;
#[cfg(test)]
mod seam_tests;
pub mod status;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;

use crate::api::artifact_store::{CaBundleKind, DeletionPolicy};
use crate::api::{ArtifactStore, ArtifactStoreStatus, Word, kind};
use crate::conditions::{self, READY};
use crate::controller::apply::{self, Applied, Presence};
use crate::controller::caches::{Kind, Published, Reference, Referrer};
use crate::controller::context::EventType;
use crate::controller::subject;
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

/// Why a store's reconcile did not finish: its reads name the object they could not read.
pub type Error = crate::controller::Error<dereference::Error>;

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
    let on_panic = async |store| {
        status::write_ready_only(store, &ctx, crate::controller::panicked()).await.map_err(Error::Status)?;
        Err(Error::Panicked)
    };
    crate::controller::reconcile_guarded(&ctx, &guarded, |store| reconcile_inner(store, &ctx), on_panic).await
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
            status::write(store, ctx, &status::unresolved(&failure), |_| {}).await.map_err(Error::Status)?;
            return Ok(Next::await_change());
        }
    };
    let uid = &resolved.owner.uid;
    // What the caches hold of the store and of everything it names, before anything is read.
    let watermark = ctx.caches(&resolved.owner.namespace).map(|c| c.watermark(store));
    if let Some(action) = steady(&resolved, ctx, watermark.as_deref()).await {
        return Ok(action);
    }

    let inputs = match dereference(ctx, &resolved).await {
        Ok(inputs) => inputs,
        Err(dereference::Error::Invalid(failure)) => {
            let path = &resolved.path;
            status::write(store, ctx, &status::unresolved(&failure), |s| {
                s.bucket = Some(Word::new(&path.bucket));
                s.prefix = Some(path.prefix.clone());
            })
            .await
            .map_err(Error::Status)?;
            // Only a change to what the store names fixes this, and the watches bring it at once.
            ctx.settle(uid, watermark, Arc::new(Pass::Waiting));
            return Ok(Next::requeue(jittered(ctx.settings.resync_interval)));
        }
        Err(error) => return Err(Error::Dereference(error)),
    };

    let previous = store.status.clone().unwrap_or_default();
    let ready_for = match recheck(&previous, &resolved, ctx, &inputs).await? {
        Some(wait) => Some(wait),
        None => verify_and_publish(store, &previous, &resolved, ctx, &inputs).await?,
    };
    let key = resolved.owner.key();
    match ready_for {
        Some(wait) => {
            ctx.record_success(&key);
            ctx.settle(uid, watermark, Arc::new(Pass::Ready(Box::new(inputs))));
            Ok(Next::requeue(wait))
        }
        None => {
            let failures = ctx.record_failure(&key);
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
async fn steady(resolved: &ResolvedStore, ctx: &Context, watermark: Option<&str>) -> Option<Next> {
    let uid = Some(&resolved.owner.uid).filter(|uid| !uid.is_empty())?;
    let pass = ctx.settled::<Pass>(uid, watermark?)?;
    let inputs = match &*pass {
        Pass::Waiting => return Some(Next::requeue(jittered(ctx.settings.resync_interval))),
        Pass::Ready(inputs) => inputs,
    };
    let due = ctx.verification_due(uid, &inputs.fingerprint)?;
    let now = Instant::now();
    if due > now {
        return Some(Next::requeue(due - now));
    }
    verify::quick_check(ctx, resolved, inputs).await.ok()?;
    ctx.metrics.verified();
    Some(Next::requeue(ctx.mark_verified(uid, &inputs.fingerprint)))
}

/// A store already Ready with these inputs needs no full verification: only the cheap check when
/// it is due (or, first seen by this process, a due time spread over one interval), and its
/// published objects healed. Returns how long it stays verified; None when a full verification
/// is needed (not Ready, new inputs, a failed check, or a name conflict to report). (`previous`:
/// the status as last written.)
async fn recheck(
    previous: &ArtifactStoreStatus,
    resolved: &ResolvedStore,
    ctx: &Context,
    inputs: &Inputs,
) -> Result<Option<Duration>, Error> {
    let up_to_date = conditions::is_true_for(&previous.conditions, READY, resolved.generation)
        && previous.verified_inputs.as_deref() == Some(inputs.fingerprint.as_str());
    if !up_to_date {
        return Ok(None);
    }
    let uid = &resolved.owner.uid;
    let now = Instant::now();
    let wait = match ctx.verification_due(uid, &inputs.fingerprint) {
        Some(due) if due > now => due - now,
        Some(_) => match verify::quick_check(ctx, resolved, inputs).await {
            Ok(()) => {
                ctx.metrics.verified();
                ctx.mark_verified(uid, &inputs.fingerprint)
            }
            Err(_) => return Ok(None),
        },
        None => {
            // First sight since this process started: the status is trusted for one interval, as
            // the process that wrote it did, then re-verifications are spread over the next one,
            // so that a restart with thousands of stores makes no burst of AWS calls.
            let resync = ctx.settings.resync_interval;
            let wait = resync + spread(resync);
            ctx.verification_due_in(uid, &inputs.fingerprint, wait);
            wait
        }
    };
    Ok(publish(resolved, ctx, inputs).await?.is_none().then_some(wait))
}

/// The full verification: bucket found or provisioned, access proven, configuration published,
/// status written. Returns how long the store stays verified when it is Ready. (`previous`: the
/// status as last written.)
async fn verify_and_publish(
    store: &ArtifactStore,
    previous: &ArtifactStoreStatus,
    resolved: &ResolvedStore,
    ctx: &Context,
    inputs: &Inputs,
) -> Result<Option<Duration>, Error> {
    let path = &resolved.path;
    let provenance = verify::Provenance {
        created: previous.bucket_created == Some(true),
        create_requested: previous.bucket_create_requested.is_some(),
    };
    let record = async || status::record_create_request(store, ctx).await;
    let outcome = verify::verify(ctx, resolved, inputs, &provenance, record).await;
    let region = outcome.region.clone().or_else(|| previous.region.as_deref().map(str::to_owned));
    let config_map_name = store_config_map_name(&resolved.name);
    let verified = outcome.bucket.is_ok() && outcome.credentials.is_ok();
    let conflict = match verified {
        true => {
            let found = resolved.in_region(region.as_deref().unwrap_or(DEFAULT_REGION));
            publish(&found, ctx, inputs).await?
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
    status::write(store, ctx, &observed, |s| {
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
            s.credentials_secret_name = inputs.keys.as_ref().map(|_| store_env_secret_name(&resolved.name));
            s.verified_inputs = Some(inputs.fingerprint.clone());
        } else {
            s.config_map_name = previous.config_map_name.clone();
            s.credentials_secret_name = previous.credentials_secret_name.clone();
        }
    })
    .await
    .map_err(Error::Status)?;
    if !ready {
        return Ok(None);
    }
    ctx.metrics.verified();
    Ok(Some(ctx.mark_verified(&resolved.owner.uid, &inputs.fingerprint)))
}

/// Publishes the store's ConfigMap (and, for key auth, the env Secret) where they differ. A name
/// taken by an object this operator did not make is left alone and returned as a `NameConflict`.
async fn publish(resolved: &ResolvedStore, ctx: &Context, inputs: &Inputs) -> Result<Option<Failure>, Error> {
    let owner = &resolved.owner;
    let resolved = resolved.clone().with_session_token(inputs.has_session_token);
    let config_map = build::config_map(&resolved, inputs.ca_pem.as_deref());
    let config_map_name = store_config_map_name(&owner.name);
    let written = match apply::publish(ctx, &config_map).await.map_err(Error::Publish)? {
        Applied::NotOurs => return Ok(Some(owner.name_conflict("ConfigMap", &config_map_name))),
        applied => applied == Applied::Written,
    };
    if let Some(keys) = &inputs.keys {
        let secret = apply::secret_with_data(build::env_secret(owner, keys));
        let applied = apply::publish(ctx, &secret).await.map_err(Error::Publish)?;
        if applied == Applied::NotOurs {
            return Ok(Some(owner.name_conflict("Secret", &store_env_secret_name(&owner.name))));
        }
    }
    if written {
        tracing::info!(store = %owner.key(), config_map = %config_map_name, "published the store's configuration");
    }
    Ok(None)
}

/// `Delete` needs the finalizer; `Retain` needs none. A store deleted before its finalizer went on
/// is `Gone`: it gets no bucket.
async fn sync_finalizer(store: &ArtifactStore, ctx: &Context) -> Result<Presence, Error> {
    let wanted = store.spec.deletion_policy == DeletionPolicy::Delete;
    if wanted != apply::has_finalizer(store, FINALIZER) {
        return subject::set_finalizer(ctx, store, FINALIZER, wanted).await.map_err(Error::Finalizer);
    }
    Ok(Presence::Exists)
}

/// On deletion: the bucket is deleted when the user asked for it and this store created it,
/// else kept; either way an Event says which, and the finalizer goes. What blocks the deletion is
/// Ready=False, retried with a backoff.
async fn cleanup(store: &ArtifactStore, ctx: &Context) -> Result<Next, Error> {
    ctx.forget(&store.uid().unwrap_or_default(), &object_key(store));
    if !apply::has_finalizer(store, FINALIZER) {
        return Ok(Next::await_change());
    }
    let status = store.status.clone().unwrap_or_default();
    let bucket = status.bucket.as_deref().map_or_else(|| store.spec.path.clone(), str::to_owned);
    let (reason, note) = match ending(store, &status, &bucket, ctx).await? {
        Ending::Kept(why) => (Reason::BucketRetained, format!("bucket {bucket} is kept: {why}")),
        Ending::Deleted => (Reason::BucketDeleted, format!("deleted empty bucket {bucket} (deletionPolicy Delete)")),
        Ending::Blocked(failure) => {
            let ready = conditions::Observed::failed(READY, failure.reason, failure.message);
            status::write_ready_only(store, ctx, ready).await.map_err(Error::Status)?;
            let failures = ctx.record_failure(&object_key(store));
            return Ok(Next::requeue(backoff(failures, ctx.settings.resync_interval)));
        }
    };
    subject::event(ctx, store, EventType::Normal, reason, note, "Delete").await;
    subject::set_finalizer(ctx, store, FINALIZER, false).await.map(|_| Next::await_change()).map_err(Error::Finalizer)
}

/// What becomes of a deleted store's bucket.
enum Ending {
    Kept(String),
    Deleted,
    /// It cannot be deleted yet: why, and what to fix.
    Blocked(Failure),
}

/// Whether the bucket of the deleted `store` goes: only with `deletionPolicy: Delete`, when the
/// store itself is deleted (not its namespace or CRD), and when this store created it.
async fn ending(
    store: &ArtifactStore,
    status: &ArtifactStoreStatus,
    bucket: &str,
    ctx: &Context,
) -> Result<Ending, Error> {
    if store.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Ending::Kept("deletionPolicy is Retain".into()));
    }
    let probe = |name: &str| ArtifactStore::new(name, store.spec.clone());
    if let Some(why) = subject::deleted_in_bulk(ctx, store, probe).await.map_err(Error::DeletionScope)? {
        return Ok(Ending::Kept(format!("{why}; buckets are deleted only when their ArtifactStore itself is deleted")));
    }
    if status.bucket_created != Some(true) && status.bucket_create_requested.is_none() {
        return Ok(Ending::Kept("this operator did not create it".into()));
    }
    let cannot_delete = |why: String| {
        Ending::Blocked(Failure::new(Reason::DeletionBlocked, format!("cannot delete bucket {bucket}: {why}")))
    };
    let resolved = match ResolvedStore::of(store) {
        Ok(resolved) => resolved,
        Err(error) => return Ok(cannot_delete(error.to_string())),
    };
    let inputs = match dereference(ctx, &resolved).await {
        Ok(inputs) => inputs,
        Err(dereference::Error::Invalid(failure)) => return Ok(cannot_delete(failure.message)),
        Err(error) => return Err(Error::Dereference(error)),
    };
    Ok(match verify::delete_created_bucket(ctx, &resolved, &inputs).await {
        Ok(verify::Deletion::Deleted) => Ending::Deleted,
        Ok(verify::Deletion::NotOurs) => Ending::Kept("its creator tag does not name this ArtifactStore".into()),
        Err(failure) => Ending::Blocked(failure),
    })
}
