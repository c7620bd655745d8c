//! The ArtifactStore reconciler: dereference → validate → verify → build → apply → status.

pub mod build;
pub mod dereference;
#[cfg(test)]
mod seam_tests;
pub mod status;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;

use crate::api::artifact_store::{CaBundleKind, DeletionPolicy};
use crate::api::{ArtifactStore, ArtifactStoreStatus, Word, kind};
use crate::conditions::{self, Observed, READY};
use crate::controller::apply::{self, Applied, Presence};
use crate::controller::caches::{Reference, Referrer};
use crate::controller::context::EventType;
use crate::controller::subject;
use crate::controller::timing::{backoff, jittered, spread};
use crate::controller::{Context, Next, object_key};
use crate::owner::{Kind, Owner, Published};
use crate::reason::{Failure, Reason};
use crate::resolve::{DEFAULT_REGION, ResolvedAuth, ResolvedStore, STORE_CONFIG_MAP, STORE_ENV_SECRET};
use dereference::{Inputs, dereference};

/// Held while a store with `deletionPolicy: Delete` may still have to delete its bucket.
pub const FINALIZER: &str = "artifacts.dev/bucket-deletion";

/// Why a store's reconcile did not finish: its reads name the object they could not read.
pub type Error = crate::controller::Error<dereference::Error>;

impl Referrer for ArtifactStore {
    const PUBLISHES: &'static [Published] = &[STORE_CONFIG_MAP, STORE_ENV_SECRET];

    /// The Secret, CA bundle and ServiceAccount the store reads, and the ConfigMap and Secret it
    /// publishes (a clashing object's removal lets it publish at once).
    fn references(&self) -> Vec<Reference> {
        let spec = &self.spec;
        let name = self.name_any();
        let mut references =
            vec![Reference::published(&STORE_CONFIG_MAP, &name), Reference::published(&STORE_ENV_SECRET, &name)];
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
    crate::controller::reconcile_guarded(&ctx, &guarded, |store| lifecycle(store, &ctx), on_panic).await
}

/// Where the store is in its life: deleted, it is cleaned up; with its finalizer out of step with
/// its deletion policy, that is mended first; otherwise it is reconciled.
async fn lifecycle(store: &ArtifactStore, ctx: &Context) -> Result<Next, Error> {
    if store.metadata.deletion_timestamp.is_some() {
        return cleanup(store, ctx).await;
    }
    if sync_finalizer(store, ctx).await? == Presence::Gone {
        return Ok(Next::await_change());
    }
    reconcile_inner(store, ctx).await
}

/// resolve the spec → (steady: nothing changed) → dereference → (recheck: verified with these
/// inputs) → verify → publish → the status, written once, at the end of the pass.
async fn reconcile_inner(store: &ArtifactStore, ctx: &Context) -> Result<Next, Error> {
    // What the caches hold of the store and of everything it names, before anything is read.
    let watermark = ctx.caches(&store.namespace().unwrap_or_default()).map(|c| c.watermark(store));
    let previous = store.status.clone().unwrap_or_default();
    let record = async || status::record_create_request(store, ctx).await;
    // The spec, parsed and checked once: also what the schema could not check (objects created
    // before a rule existed).
    let conclusion = match ResolvedStore::of(store) {
        Ok(resolved) => pass(&resolved, &previous, ctx, watermark.as_deref(), record).await?,
        Err(error) => Conclusion::unresolved(Failure::new(Reason::InvalidPath, error.to_string())),
    };
    if let Some((observed, fields)) = conclusion.status {
        status::write(store, ctx, &observed, fields).await.map_err(Error::Status)?;
    }
    Ok(conclusion.after.finish(ctx, watermark))
}

/// The steps of a pass after the spec resolved. (`previous`: the status as last written;
/// `record`: records in it that the bucket is about to be created, see [`verify::verify`].)
async fn pass(
    resolved: &ResolvedStore,
    previous: &ArtifactStoreStatus,
    ctx: &Context,
    watermark: Option<&str>,
    record: impl AsyncFnOnce() -> Result<Time, Failure>,
) -> Result<Conclusion, Error> {
    if let Some(next) = steady(resolved, ctx, watermark).await {
        return Ok(Conclusion { status: None, after: After::Steady(next) });
    }
    if let Some(conclusion) = trusted(resolved, previous, ctx) {
        return Ok(conclusion);
    }
    let inputs = match dereference(ctx, resolved).await {
        Ok(inputs) => inputs,
        Err(dereference::Error::Invalid(failure)) => return Ok(Conclusion::waiting(resolved, &failure)),
        Err(error) => return Err(Error::Dereference(error)),
    };
    if let Some(wait) = recheck(previous, resolved, ctx, &inputs).await? {
        let settled = Settled::Ready(Box::new(inputs));
        let after = After::Ready { owner: resolved.owner.clone(), verified: Verified::Until(wait), settled };
        return Ok(Conclusion { status: None, after });
    }
    verify_and_publish(previous, resolved, ctx, inputs, record).await
}

/// What a pass found: the status to write (its conditions and other fields), if any, and what
/// follows the write.
struct Conclusion {
    status: Option<(Vec<Observed>, ArtifactStoreStatus)>,
    after: After,
}

impl Conclusion {
    /// A spec that does not resolve: only a change of it helps.
    fn unresolved(failure: Failure) -> Self {
        let status = (status::unresolved(&failure), ArtifactStoreStatus::default());
        Self { status: Some(status), after: After::AwaitChange }
    }

    /// Not Ready for a reason in the objects the store names (a missing Secret, an invalid CA
    /// bundle): only a change to one of them fixes this, and the watches bring it at once.
    fn waiting(resolved: &ResolvedStore, failure: &Failure) -> Self {
        let fields = ArtifactStoreStatus {
            bucket: Some(Word::new(&resolved.path.bucket)),
            prefix: Some(resolved.path.prefix.clone()),
            ..ArtifactStoreStatus::default()
        };
        Self { status: Some((status::unresolved(failure), fields)), after: After::Waiting(resolved.owner.uid.clone()) }
    }
}

/// What follows a pass's status write.
enum After {
    /// The steady state: nothing was read or written.
    Steady(Next),
    AwaitChange,
    /// Waiting for a change of an object the store names (the store's uid).
    Waiting(String),
    /// Ready, as `settled` says.
    Ready {
        owner: Owner,
        verified: Verified,
        settled: Settled,
    },
    /// Verification failed: retried with a backoff.
    Failed(Owner),
}

/// How long a Ready store stays verified.
enum Verified {
    /// Until its next check is due.
    Until(Duration),
    /// For an interval from now: this pass verified it.
    Now(String),
}

impl After {
    /// Records the pass's outcome (`watermark`: the caches as the pass began) and says when the
    /// store is reconciled next.
    fn finish(self, ctx: &Context, watermark: Option<String>) -> Next {
        match self {
            Self::Steady(next) => next,
            Self::AwaitChange => Next::await_change(),
            Self::Waiting(uid) => {
                ctx.settle(&uid, watermark, Arc::new(Settled::Waiting));
                Next::requeue(jittered(ctx.settings.resync_interval))
            }
            Self::Ready { owner, verified, settled } => {
                let wait = match verified {
                    Verified::Until(wait) => wait,
                    Verified::Now(fingerprint) => {
                        ctx.metrics.verified();
                        ctx.mark_verified(&owner.uid, &fingerprint)
                    }
                };
                ctx.record_success(&owner.key());
                ctx.settle(&owner.uid, watermark, Arc::new(settled));
                Next::requeue(wait)
            }
            Self::Failed(owner) => {
                let failures = ctx.record_failure(&owner.key());
                Next::requeue(backoff(failures, ctx.settings.resync_interval))
            }
        }
    }
}

/// What a full pass came to, kept while nothing the store names changes.
enum Settled {
    /// Ready, with these inputs.
    Ready(Box<Inputs>),
    /// Ready as the status says, with the inputs of this fingerprint, not read yet (see
    /// [`trusted`]): they are read when the store's check falls due.
    Unread(String),
    /// Not Ready for a reason in the objects the store names (a missing Secret, an invalid CA
    /// bundle): until one of them changes, another pass would find the same.
    Waiting,
}

/// The steady state: nothing the store reads or publishes changed since a full pass found it
/// Ready (or waiting for such a change), so nothing is read from the apiserver; S3 is called
/// once, when the re-verification of a Ready store is due. None when a full pass is needed.
async fn steady(resolved: &ResolvedStore, ctx: &Context, watermark: Option<&str>) -> Option<Next> {
    let uid = Some(&resolved.owner.uid).filter(|uid| !uid.is_empty())?;
    let settled = ctx.settled::<Settled>(uid, watermark?)?;
    let (fingerprint, inputs) = match &*settled {
        Settled::Waiting => return Some(Next::requeue(jittered(ctx.settings.resync_interval))),
        Settled::Unread(fingerprint) => (fingerprint, None),
        Settled::Ready(inputs) => (&inputs.fingerprint, Some(inputs)),
    };
    let due = ctx.verification_due(uid, fingerprint)?;
    let now = Instant::now();
    if due > now {
        return Some(Next::requeue(due - now));
    }
    // Due, with the inputs not read yet: a full pass reads them.
    let inputs = inputs?;
    verify::quick_check(ctx, resolved, inputs).await.ok()?;
    ctx.metrics.verified();
    Some(Next::requeue(ctx.mark_verified(uid, &inputs.fingerprint)))
}

/// First seen by this process (after a restart), a store whose status says Ready with inputs the
/// caches still hold at the same versions, and whose publications are still as this operator
/// wrote them, is trusted for one interval, as the process that wrote the status did, and
/// nothing is read: its inputs are read when its check falls due, those checks spread over the
/// next interval. None when a pass must read them now (another fingerprint, a CA bundle, a
/// publication changed or not this operator's).
fn trusted(resolved: &ResolvedStore, previous: &ArtifactStoreStatus, ctx: &Context) -> Option<Conclusion> {
    let uid = Some(&resolved.owner.uid).filter(|uid| !uid.is_empty())?;
    let fingerprint = previous.verified_inputs.as_deref()?;
    let ready = conditions::is_true_for(&previous.conditions, READY, resolved.generation);
    if !ready || ctx.verification_due(uid, fingerprint).is_some() {
        return None;
    }
    if !dereference::unchanged_since(ctx, resolved, fingerprint) || !still_published(resolved, ctx) {
        return None;
    }
    let wait = trust_first_sight(ctx, uid, fingerprint);
    let settled = Settled::Unread(fingerprint.to_owned());
    let after = After::Ready { owner: resolved.owner.clone(), verified: Verified::Until(wait), settled };
    Some(Conclusion { status: None, after })
}

/// First sight since this process started: the status is trusted for one interval, as the process
/// that wrote it did, then re-verifications are spread over the next one, so that a restart with
/// thousands of stores makes no burst of AWS calls. Returns how long until `uid` is due.
fn trust_first_sight(ctx: &Context, uid: &str, fingerprint: &str) -> Duration {
    let resync = ctx.settings.resync_interval;
    let wait = resync + spread(resync);
    ctx.verification_due_in(uid, fingerprint, wait);
    wait
}

/// Whether what the store publishes is there as [`publish`] would write it, without its inputs:
/// the ConfigMap as rendered (with or without a session token, which only the keys tell), and
/// with key auth the env Secret, which only this operator wrote.
fn still_published(resolved: &ResolvedStore, ctx: &Context) -> bool {
    let rendered = |token: bool| build::config_map(&resolved.clone().with_session_token(token), None);
    let config_map = apply::is_published(ctx, &rendered(false)) || apply::is_published(ctx, &rendered(true));
    let env_secret = || {
        let owner = &resolved.owner;
        apply::is_intact::<Secret>(ctx, &owner.namespace, &STORE_ENV_SECRET.name(&owner.name))
    };
    config_map && (resolved.auth.keys().is_none() || env_secret())
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
        None => trust_first_sight(ctx, uid, &inputs.fingerprint),
    };
    Ok(publish(resolved, ctx, inputs).await?.is_none().then_some(wait))
}

/// The full verification: bucket found or provisioned, access proven, configuration published.
/// (`previous`: the status as last written.)
async fn verify_and_publish(
    previous: &ArtifactStoreStatus,
    resolved: &ResolvedStore,
    ctx: &Context,
    inputs: Inputs,
    record: impl AsyncFnOnce() -> Result<Time, Failure>,
) -> Result<Conclusion, Error> {
    let path = &resolved.path;
    let provenance = verify::Provenance {
        created: previous.bucket_created == Some(true),
        create_requested: previous.bucket_create_requested.is_some(),
    };
    let outcome = verify::verify(ctx, resolved, &inputs, &provenance, record).await;
    let region = outcome.region.clone().or_else(|| previous.region.as_deref().map(str::to_owned));
    let config_map_name = STORE_CONFIG_MAP.name(&resolved.name);
    let verified = outcome.bucket.is_ok() && outcome.credentials.is_ok();
    let conflict = match verified {
        true => {
            let found = resolved.in_region(region.as_deref().unwrap_or(DEFAULT_REGION));
            publish(&found, ctx, &inputs).await?
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
    let bucket_created = match &outcome.bucket {
        Ok(bucket) => Some(bucket.created_by_operator),
        Err(_) => previous.bucket_created,
    };
    let mut fields = ArtifactStoreStatus {
        bucket: Some(Word::new(&path.bucket)),
        prefix: Some(path.prefix.clone()),
        region: region.as_deref().map(Word::new),
        endpoint: Some(Word::new(&endpoint)),
        bucket_created,
        bucket_create_requested: outcome.create_requested.or_else(|| previous.bucket_create_requested.clone()),
        identity_arn: outcome.credentials.as_ref().ok().and_then(|identity| identity.arn.as_deref().map(Word::new)),
        config_map_name: previous.config_map_name.clone(),
        credentials_secret_name: previous.credentials_secret_name.clone(),
        ..ArtifactStoreStatus::default()
    };
    if !ready {
        return Ok(Conclusion { status: Some((observed, fields)), after: After::Failed(resolved.owner.clone()) });
    }
    fields.config_map_name = Some(config_map_name);
    fields.credentials_secret_name = inputs.keys.as_ref().map(|_| STORE_ENV_SECRET.name(&resolved.name));
    fields.verified_inputs = Some(inputs.fingerprint.clone());
    let verified = Verified::Now(inputs.fingerprint.clone());
    let settled = Settled::Ready(Box::new(inputs));
    let after = After::Ready { owner: resolved.owner.clone(), verified, settled };
    Ok(Conclusion { status: Some((observed, fields)), after })
}

/// Publishes the store's ConfigMap (and, for key auth, the env Secret) where they differ. A name
/// taken by an object this operator did not make is left alone and returned as a `NameConflict`.
async fn publish(resolved: &ResolvedStore, ctx: &Context, inputs: &Inputs) -> Result<Option<Failure>, Error> {
    let owner = &resolved.owner;
    let resolved = resolved.clone().with_session_token(inputs.has_session_token);
    let config_map = build::config_map(&resolved, inputs.ca_pem.as_deref());
    let config_map_name = STORE_CONFIG_MAP.name(&owner.name);
    let written = match apply::publish(ctx, &config_map).await.map_err(Error::Publish)? {
        Applied::NotOurs => return Ok(Some(owner.name_conflict("ConfigMap", &config_map_name))),
        applied => applied == Applied::Written,
    };
    if let Some(keys) = &inputs.keys {
        let secret = apply::secret_with_data(build::env_secret(owner, keys));
        let applied = apply::publish(ctx, &secret).await.map_err(Error::Publish)?;
        if applied == Applied::NotOurs {
            return Ok(Some(owner.name_conflict("Secret", &STORE_ENV_SECRET.name(&owner.name))));
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
