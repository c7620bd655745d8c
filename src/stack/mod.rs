//! The Stack reconciler: dereference the ArtifactStore and the orchestrator's ServiceAccount →
//! validate that this identity can use the store → build the ConfigMap → apply → with
//! `verification.inPod`, prove it from a pod ([`workload`]) → status.

pub mod build;
pub mod credentials;
pub mod outputs;
pub mod resolved;
pub mod sweep;
pub mod workload;
pub mod zenml;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;

use crate::api::stack::{CredentialsStatus, OutputFormat, StackStatus, ZenmlStatus};
use crate::api::{ArtifactStore, ArtifactStoreStatus, Stack, kind};
use crate::aws::clients::S3Connection;
use crate::conditions::{self, Observed, READY, SCOPED_CREDENTIALS, WORKLOAD_ACCESS_VERIFIED, ZENML_SYNCED};
use crate::controller::apply;
use crate::controller::caches::{Reference, Referrer};
use crate::controller::timing::{backoff, jittered};
use crate::controller::{Context, Next, object_key};
use crate::identity::Probe;
use crate::owner::{Kind, Owner, Published};
use crate::reason::{Failure, Reason};
use crate::resolve::{ConsumerCredentials, ResolvedStore, STORE_CONFIG_MAP, STORE_ENV_SECRET};
/// Why a Stack's reconcile did not finish.
pub type Error = crate::controller::Error;
use resolved::{Asks, PodCredentials, ResolvedStack};
use workload::Verdict;
use zenml::ZenmlReport;

impl Referrer for Stack {
    const PUBLISHES: &'static [Published] = &[build::CONFIG_MAP, build::CA_SECRET, credentials::SECRET];

    /// The store and what it publishes, the orchestrator's ServiceAccount, and what the Stack
    /// publishes (its ConfigMap and CA Secret, and the shared ConfigMaps it asks for).
    fn references(&self) -> Vec<Reference> {
        let store = &self.spec.artifact_store_ref.name;
        let name = self.name_any();
        let mut references = vec![
            Reference::new(Kind::ArtifactStore, store),
            Reference::published(&STORE_CONFIG_MAP, store),
            Reference::published(&STORE_ENV_SECRET, store),
            Reference::new(Kind::ServiceAccount, &self.spec.orchestrator.service_account_name),
            Reference::published(&build::CONFIG_MAP, &name),
            Reference::published(&build::CA_SECRET, &name),
            Reference::published(&credentials::SECRET, &name),
        ];
        if let Some(zenml) = &self.spec.zenml {
            references.push(Reference::new(Kind::Secret, &zenml.api_key_secret_ref.name));
        }
        if self.spec.wants(OutputFormat::Kfp) {
            references.push(Reference::new(Kind::ConfigMap, crate::render::kfp::CONFIG_MAP));
        }
        if self.spec.wants(OutputFormat::Argo) {
            references.push(Reference::new(Kind::ConfigMap, crate::render::argo::CONFIG_MAP));
        }
        references
    }
}

/// The requeue after a failed reconcile (see [`crate::controller::error_action`]).
pub fn error_policy(stack: Arc<DeserializeGuard<Stack>>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::controller::error_action(&ctx, kind::<Stack>(), &object_key(&*stack), error.category(), error)
}

pub async fn reconcile(guarded: Arc<DeserializeGuard<Stack>>, ctx: Arc<Context>) -> Result<Next, Error> {
    let on_panic = async |stack| {
        write_status(stack, &ctx, Report::keeping(crate::controller::panicked())).await?;
        Err(Error::Panicked)
    };
    crate::controller::reconcile_guarded(&ctx, &guarded, |stack| lifecycle(stack, &ctx), on_panic).await
}

/// Where the Stack is in its life: deleted, what it made goes ([`finalize`]); asking for ZenML
/// without the finalizer that guards what it makes there, the finalizer goes on first (its watch
/// event brings the next pass); otherwise it is reconciled.
async fn lifecycle(object: &Stack, ctx: &Context) -> Result<Next, Error> {
    if object.metadata.deletion_timestamp.is_some() {
        return finalize(ctx, object).await;
    }
    if object.spec.zenml.is_some() && !apply::has_finalizer(object, zenml::FINALIZER) {
        zenml::set_finalizer(ctx, object, true).await?;
        return Ok(Next::await_change());
    }
    reconcile_inner(object, ctx).await
}

/// What the stack's consumers need from the store, once it is usable by them.
struct Usable {
    resolved: ResolvedStore,
    /// Identifies the inputs of the identity check (resource versions), to skip repeating it.
    fingerprint: String,
}

/// resolve the spec → (steady: nothing changed) → the full pass → the status, written once, at
/// the end of the pass. (`object` is the Stack as read: its metadata and last status.)
async fn reconcile_inner(object: &Stack, ctx: &Context) -> Result<Next, Error> {
    let conclusion = match ResolvedStack::of(object) {
        Ok(stack) => pass(ctx, object, &stack).await?,
        // What admission refuses, in an object made before a rule existed: Ready and the
        // credentials' condition say what to fix; only a change of the spec helps.
        Err(failure) => {
            let ready = Observed::failed(READY, failure.reason, failure.message.clone());
            let report = Report { credentials: CredentialsReport::Failed(failure), ..Report::keeping(ready) };
            Conclusion { report: Some(report), after: After::Next(Next::await_change()) }
        }
    };
    if let Some(report) = conclusion.report {
        write_status(object, ctx, report).await?;
    }
    Ok(conclusion.after.finish(ctx))
}

/// The steps of a pass once the spec resolved: what ZenML holds that the Stack no longer asks for
/// goes → (steady: nothing the Stack reads or publishes changed) → the full pass.
async fn pass(ctx: &Context, object: &Stack, stack: &ResolvedStack) -> Result<Conclusion, Error> {
    let removal = zenml::withdraw(ctx, object, stack).await?;
    // Nothing the Stack reads or publishes changed since a full pass found it Ready: read nothing.
    // (A Stack with ZenML looks at the server each resync: someone may have changed it there. One
    // whose scoped credentials are due renews them.)
    let watermark = ctx.caches(stack.namespace()).map(|c| c.watermark(object));
    let settles = stack.zenml.is_none() && removal.is_none();
    let renewal_due = credentials::until_renewal(object).is_some_and(|left| left.is_zero());
    let uid = &stack.owner.uid;
    if settles && !renewal_due && watermark.as_deref().and_then(|w| ctx.settled::<()>(uid, w)).is_some() {
        return Ok(Conclusion { report: None, after: After::Next(Next::requeue(next_pass(ctx, object, None))) });
    }
    let watermark = watermark.filter(|_| settles);
    let ready = Observed::unknown(READY, Reason::Ready, String::new());
    let mut report = Report { zenml: removal.unwrap_or(ZenmlReport::Keep), ..Report::keeping(ready) };
    let owner = stack.owner.clone();
    let after = match full_pass(ctx, object, stack, &mut report).await.or_else(Pass::failed)? {
        Pass::Ready { fingerprint, message } => {
            report.ready = Observed::ok(READY, Reason::Ready, message);
            let next = next_pass(ctx, object, report.credentials.record());
            After::Ready { owner, fingerprint, renewal_failed: report.credentials.renewal_failed(), watermark, next }
        }
        Pass::Running(message) => {
            report.ready = Observed::failed(READY, Reason::WorkloadCheckRunning, message);
            After::Next(Next::requeue(CHECK_POLL))
        }
        Pass::Failed(failure) => {
            report.ready = Observed::failed(READY, failure.reason, failure.message.clone());
            After::Failed { owner, failure, watermark }
        }
        Pass::Gone => return Ok(Conclusion { report: None, after: After::Next(Next::await_change()) }),
    };
    Ok(Conclusion { report: Some(report), after })
}

/// What a pass found: the status to write, if any, and what follows the write.
struct Conclusion {
    report: Option<Report>,
    after: After,
}

/// What follows a pass's status write.
enum After {
    /// Nothing to record: the next pass is due then.
    Next(Next),
    /// The pods can use the store, checked with these inputs; the pass settles at `watermark`
    /// (None: it may not), and the next one is due in `next` unless the renewal failed.
    Ready { owner: Owner, fingerprint: String, renewal_failed: bool, watermark: Option<String>, next: Duration },
    /// The pass failed: retried with a backoff, or (settled at `watermark`) at the resync.
    Failed { owner: Owner, failure: Failure, watermark: Option<String> },
}

impl After {
    /// Records the pass's outcome and says when the Stack is reconciled next.
    fn finish(self, ctx: &Context) -> Next {
        match self {
            Self::Next(next) => next,
            Self::Ready { owner, fingerprint, renewal_failed, watermark, next } => {
                ctx.mark_verified(&owner.uid, &fingerprint);
                if renewal_failed {
                    let failures = ctx.record_failure(&owner.key());
                    return Next::requeue(backoff(failures, ctx.settings.resync_interval));
                }
                ctx.record_success(&owner.key());
                ctx.settle(&owner.uid, watermark, Arc::new(()));
                Next::requeue(next)
            }
            Self::Failed { owner, failure, watermark } => after_failure(ctx, &owner, &failure, watermark),
        }
    }
}

/// What a full pass came to.
enum Pass {
    /// The pods can use the store: what the check ran with, and Ready's message.
    Ready {
        fingerprint: String,
        message: String,
    },
    /// The in-pod check runs.
    Running(String),
    Failed(Failure),
    /// The Stack was deleted during the pass: nothing more is written for it.
    Gone,
}

impl Pass {
    /// What the user must fix ends a pass as failed; any other error is retried with a backoff.
    fn failed(error: Error) -> Result<Self, Error> {
        match error {
            Error::Invalid(failure) => Ok(Self::Failed(failure)),
            error => Err(error),
        }
    }
}

/// The steps of a full pass, each filling in its part of `report`: the store and identity are
/// usable → the pods' credentials (scoped ones when asked for) → publish → the in-pod check →
/// ZenML. What the user must fix ends it as [`Error::Invalid`].
async fn full_pass(ctx: &Context, object: &Stack, stack: &ResolvedStack, report: &mut Report) -> Result<Pass, Error> {
    let status = object.status.as_ref();
    let usable = usable(stack, ctx).await?;
    let store = pods_store(ctx, stack, status, &usable.resolved, report).await?;
    let (name, hash) = match outputs::publish(ctx, object, stack, &store).await? {
        outputs::Publication::Done { name, hash } => (name, hash),
        outputs::Publication::Gone => return Ok(Pass::Gone),
    };
    report.published = Some((name.clone(), hash.clone()));
    let check = workload_check(ctx, stack, status, &store, &hash).await?;
    let verdict = check.as_ref().map(|(verdict, _)| verdict.clone());
    report.check = check;
    match verdict {
        Some(Verdict::Running(message)) => return Ok(Pass::Running(message)),
        Some(Verdict::Failed(failure)) => return Err(Error::Invalid(failure)),
        None | Some(Verdict::Proven(_)) => {}
    }
    let mut message =
        format!("pods running as {} can use {}; configuration in ConfigMap {name}", stack.service_account, store.path);
    if let Some(record) = report.credentials.record() {
        message.push_str(&format!("; scoped credentials in Secret {} until {}", record.secret_name, record.expires_at));
    }
    if let Some(target) = &stack.zenml {
        match zenml::sync(ctx, stack, target, status.and_then(|s| s.zenml.as_deref()), &store).await {
            Ok(record) => {
                message.push_str(&format!(
                    "; ZenML stack {} in {}",
                    record.stack_name.as_deref().unwrap_or_default(),
                    record.url
                ));
                report.zenml = ZenmlReport::Synced(record);
            }
            Err(Error::Invalid(failure)) => {
                report.zenml = ZenmlReport::Failed(failure.clone());
                return Err(Error::Invalid(failure));
            }
            Err(error) => return Err(error),
        }
    }
    Ok(Pass::Ready { fingerprint: usable.fingerprint, message })
}

/// The store as the Stack's pods use it: as it is (`Shared`), or through session credentials of
/// their own, issued or renewed when due (`Scoped`).
async fn pods_store(
    ctx: &Context,
    stack: &ResolvedStack,
    status: Option<&StackStatus>,
    store: &ResolvedStore,
    report: &mut Report,
) -> Result<ResolvedStore, Error> {
    let PodCredentials::Scoped(request) = &stack.credentials else {
        credentials::retire(ctx, &stack.owner, status).await?;
        report.credentials = CredentialsReport::Shared;
        return Ok(store.clone());
    };
    let ca_pem = outputs::store_ca_bundle(ctx, stack.namespace(), store).await?;
    let keys = credentials::consumer_keys(ctx, stack.namespace(), store).await?;
    match credentials::ensure(ctx, stack, request, store, ca_pem, keys).await? {
        credentials::Outcome::Scoped { record, store, renewal } => {
            report.credentials = CredentialsReport::Issued(record, renewal);
            Ok(*store)
        }
        credentials::Outcome::Failed(failure) => {
            report.credentials = CredentialsReport::Failed(failure.clone());
            Err(Error::Invalid(failure))
        }
    }
}

/// When the next pass is due: the resync, or the renewal of the scoped credentials if sooner
/// (`renewed`: what this pass issued, newer than the status the cache holds).
fn next_pass(ctx: &Context, stack: &Stack, renewed: Option<&CredentialsStatus>) -> Duration {
    let resync = jittered(ctx.settings.resync_interval);
    let renewal = match renewed {
        Some(record) => credentials::until(&record.renew_at),
        None => credentials::until_renewal(stack),
    };
    renewal.map_or(resync, |left| resync.min(left))
}

/// On deletion: the Stack's key of `artifact-repositories`, then its ZenML objects, each followed
/// by its finalizer (one at a time: each write brings the next pass, with the new version).
async fn finalize(ctx: &Context, stack: &Stack) -> Result<Next, Error> {
    let uid = stack.uid().unwrap_or_default();
    if apply::has_finalizer(stack, outputs::FINALIZER) {
        outputs::cleanup(ctx, stack).await?;
        if apply::has_finalizer(stack, zenml::FINALIZER) {
            return Ok(Next::await_change());
        }
    } else if let Some(ZenmlReport::Failed(failure)) = zenml::release(ctx, stack).await? {
        let ready = Observed::failed(
            READY,
            failure.reason,
            format!("the Stack is being deleted, and its ZenML objects cannot be removed yet: {}", failure.message),
        );
        let report = Report { zenml: ZenmlReport::Failed(failure), ..Report::keeping(ready) };
        write_status(stack, ctx, report).await?;
        let failures = ctx.record_failure(&object_key(stack));
        return Ok(Next::requeue(backoff(failures, ctx.settings.resync_interval)));
    }
    ctx.forget(&uid, &object_key(stack));
    ctx.zenml.forget(&uid);
    Ok(Next::await_change())
}

/// How often a Stack looks at its running in-pod check.
const CHECK_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The check from inside a pod, when the Stack asks for it: its verdict and what it ran with.
async fn workload_check(
    ctx: &Context,
    stack: &ResolvedStack,
    status: Option<&StackStatus>,
    store: &ResolvedStore,
    config_map_hash: &str,
) -> Result<Option<(Verdict, String)>, Error> {
    if !stack.asks.in_pod_check {
        return Ok(None);
    }
    let image = ctx.settings.check_image.as_deref().unwrap_or_default();
    let inputs = workload::inputs(stack, store, config_map_hash, image);
    Ok(Some((workload::verify(ctx, stack, status, store, &inputs).await?, inputs)))
}

/// The requeue after a failure: backoff while it may pass by itself, else the resync (settled
/// when only a change of the objects the Stack names can fix it).
fn after_failure(ctx: &Context, owner: &Owner, failure: &Failure, watermark: Option<String>) -> Next {
    if failure.is_transient() {
        let failures = ctx.record_failure(&owner.key());
        Next::requeue(backoff(failures, ctx.settings.resync_interval))
    } else {
        // A reason in the objects the Stack names: the watches bring the fix at once, and until
        // then another pass would find the same. (IAM's answers are checked again each resync.)
        if waits_for_a_change(failure.reason) {
            ctx.settle(&owner.uid, watermark, Arc::new(()));
        }
        Next::requeue(jittered(ctx.settings.resync_interval))
    }
}

/// The condition `type_` of `previous`, as observed again (its reason still one we know): what a
/// pass that did not reach its step keeps.
fn observed_again(previous: &[crate::api::Condition], type_: &'static str) -> Option<Observed> {
    let condition = conditions::find(previous, type_)?;
    let reason = Reason::parse(&condition.reason)?;
    let status = match condition.status.as_str() {
        "True" => conditions::Status::True,
        "False" => conditions::Status::False,
        _ => conditions::Status::Unknown,
    };
    Some(Observed { type_, status, reason, message: condition.message.to_string() })
}

/// Whether a failure lies in the objects the Stack names (and so only their change fixes it),
/// rather than in IAM.
fn waits_for_a_change(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::ArtifactStoreNotFound
            | Reason::ArtifactStoreNotReady
            | Reason::ServiceAccountNotFound
            | Reason::CredentialsSecretNotFound
            | Reason::IrsaAnnotationMissing
            | Reason::RoleArnMismatch
            | Reason::NameConflict
            | Reason::KfpLauncherTaken
            | Reason::DefaultRepositoryTaken
            | Reason::FormatUnsupported
    )
}

/// Dereferences and validates: the store exists and is Ready, the ServiceAccount exists, and that
/// identity can use the store.
async fn usable(stack: &ResolvedStack, ctx: &Context) -> Result<Usable, Error> {
    let namespace = stack.namespace();
    let store_name = &stack.store;
    let Some(store) = read_store(ctx, namespace, store_name).await? else {
        return Err(Error::Invalid(Failure::new(
            Reason::ArtifactStoreNotFound,
            format!(
                "ArtifactStore {store_name} does not exist in namespace {namespace}; the stack turns Ready once it does"
            ),
        )));
    };
    let status = store.status.clone().unwrap_or_default();
    ready(&store, &status).map_err(Error::Invalid)?;
    let account_name = &stack.service_account;
    let Some(account) = ctx.service_account(namespace, account_name).await.map_err(Error::Dereference)? else {
        return Err(Error::Invalid(Failure::new(
            Reason::ServiceAccountNotFound,
            format!(
                "ServiceAccount {account_name} (spec.orchestrator.serviceAccountName) does not exist in namespace {namespace}"
            ),
        )));
    };
    let Ok(resolved) = ResolvedStore::of(&store) else {
        return Err(Error::Invalid(Failure::new(
            Reason::ArtifactStoreNotReady,
            format!("ArtifactStore {store_name} has an invalid path"),
        )));
    };
    let fingerprint =
        format!("{}/{}", store.resource_version().unwrap_or_default(), account.resource_version().unwrap_or_default());

    identity_can_use(ctx, stack, &account, &resolved, &fingerprint).await?;
    Ok(Usable { resolved, fingerprint })
}

/// Whether the store is Ready for its current generation.
fn ready(store: &ArtifactStore, status: &ArtifactStoreStatus) -> Result<(), Failure> {
    if conditions::is_true_for(&status.conditions, READY, store.metadata.generation) {
        return Ok(());
    }
    let why = conditions::find(&status.conditions, READY)
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_else(|| "not verified yet".to_owned());
    Err(Failure::new(Reason::ArtifactStoreNotReady, format!("ArtifactStore {} is not ready ({why})", store.name_any())))
}

/// Whether the Stack's pods can reach the store's credentials: the Secret the store publishes with
/// its keys exists, or (IRSA) the orchestrator's ServiceAccount is wired as the store's is.
async fn identity_can_use(
    ctx: &Context,
    stack: &ResolvedStack,
    account: &ServiceAccount,
    resolved: &ResolvedStore,
    fingerprint: &str,
) -> Result<(), Error> {
    let namespace = stack.namespace();
    let store_name = &stack.store;
    let role = match resolved.auth.consumer_credentials() {
        ConsumerCredentials::Keys { env_secret: secret_name, .. } => {
            if !ctx.exists::<Secret>(namespace, secret_name).await.map_err(Error::Dereference)? {
                return Err(Error::Invalid(Failure::new(
                    Reason::CredentialsSecretNotFound,
                    format!(
                        "Secret {secret_name}, which ArtifactStore {store_name} publishes with its keys, does not exist yet"
                    ),
                )));
            }
            return Ok(());
        }
        ConsumerCredentials::Ambient { service_account: Some(_), role_arn } => role_arn,
        ConsumerCredentials::Ambient { service_account: None, .. } | ConsumerCredentials::Session { .. } => {
            return Ok(());
        }
    };
    // IRSA: the orchestrator's identity must be wired as the store's is. Checked again only when
    // the store or the ServiceAccount changes.
    if ctx.verification_due(&stack.owner.uid, fingerprint).is_some() {
        return Ok(());
    }
    let permissions = crate::aws::iam::required_permissions(resolved);
    let ca_pem = outputs::store_ca_bundle(ctx, namespace, resolved).await?;
    let connection = S3Connection::to_store(resolved, ca_pem, None);
    let probe = Probe { connection, path: &resolved.path, write: resolved.write_probe };
    let proven = crate::identity::check_workload_identity(ctx, namespace, account, role, &permissions, probe).await;
    proven.map(|_| ()).map_err(Error::Invalid)
}

/// The ArtifactStore `name`: from the operator's cache once the watches run, otherwise from the
/// apiserver. One that does not deserialize counts as missing (its own controller reports it).
async fn read_store(ctx: &Context, namespace: &str, name: &str) -> Result<Option<ArtifactStore>, Error> {
    match ctx.caches(namespace) {
        Some(caches) => Ok(caches.store(namespace, name).and_then(|guarded| guarded.0.as_ref().ok().cloned())),
        None => {
            let stores: Api<ArtifactStore> = Api::namespaced(ctx.client.clone(), namespace);
            stores.get_opt(name).await.map_err(Error::Dereference)
        }
    }
}

/// What a pass found, for the status.
struct Report {
    ready: Observed,
    /// The ConfigMap published and its content hash (None: the last ones stay).
    published: Option<(String, String)>,
    /// The in-pod check's verdict and inputs, when it ran (None keeps the last one while the
    /// Stack still asks for it, and drops it once it does not).
    check: Option<(Verdict, String)>,
    zenml: ZenmlReport,
    credentials: CredentialsReport,
}

impl Report {
    /// Ready as observed; the rest of the status as it was.
    fn keeping(ready: Observed) -> Self {
        Self { ready, published: None, check: None, zenml: ZenmlReport::Keep, credentials: CredentialsReport::Keep }
    }
}

/// The scoped credentials' part of the status.
enum CredentialsReport {
    /// Not reached in this pass: the last condition and record stay while the Stack asks for them.
    Keep,
    /// The store's own credentials: no condition, no record.
    Shared,
    /// Valid credentials, and why their due renewal failed.
    Issued(CredentialsStatus, Option<Failure>),
    /// None valid; the record stays.
    Failed(Failure),
}

impl CredentialsReport {
    fn record(&self) -> Option<&CredentialsStatus> {
        match self {
            Self::Issued(record, _) => Some(record),
            _ => None,
        }
    }

    fn renewal_failed(&self) -> bool {
        matches!(self, Self::Issued(_, Some(_)))
    }
}

/// Writes Ready, the in-pod check's condition and the ZenML sync's, when something changed.
async fn write_status(stack: &Stack, ctx: &Context, report: Report) -> Result<(), Error> {
    let Report { ready, published, check, zenml, credentials } = report;
    let previous = stack.status.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let asks = Asks::of(&stack.spec);
    let (workload_observed, workload_check) = workload_condition(asks, check, &previous);
    let (zenml_observed, zenml) = zenml_condition(zenml, &previous);
    let (credentials_observed, credentials) = credentials_condition(asks, credentials, &previous);
    let observed: Vec<Observed> =
        std::iter::once(ready).chain(workload_observed).chain(zenml_observed).chain(credentials_observed).collect();
    let (conditions, transitions) = conditions::merge(&previous.conditions, &observed, stack.metadata.generation, &now);
    let (config_map_name, content_hash) = match published {
        Some((name, hash)) => (Some(name), Some(hash)),
        None => (previous.config_map_name.clone(), previous.content_hash.clone()),
    };
    let next = StackStatus {
        observed_generation: stack.metadata.generation,
        conditions,
        config_map_name,
        content_hash,
        workload_check,
        zenml,
        credentials,
    };
    if next == previous {
        return Ok(());
    }
    crate::controller::subject::write_status(ctx, stack, &next, &transitions).await.map_err(Error::Status)
}

/// The in-pod check's condition and inputs: this pass's verdict, or the last ones while the Stack
/// still asks for the check.
fn workload_condition(
    asks: Asks,
    check: Option<(Verdict, String)>,
    previous: &StackStatus,
) -> (Option<Observed>, Option<String>) {
    match check {
        Some((verdict, inputs)) => {
            let observed = match verdict {
                Verdict::Proven(message) => Observed::ok(WORKLOAD_ACCESS_VERIFIED, Reason::Verified, message),
                Verdict::Running(message) => {
                    Observed::unknown(WORKLOAD_ACCESS_VERIFIED, Reason::WorkloadCheckRunning, message)
                }
                Verdict::Failed(failure) => Observed::failed(WORKLOAD_ACCESS_VERIFIED, failure.reason, failure.message),
            };
            (Some(observed), Some(inputs))
        }
        None if asks.in_pod_check => match observed_again(&previous.conditions, WORKLOAD_ACCESS_VERIFIED) {
            Some(kept) => (Some(kept), previous.workload_check.clone()),
            None => (None, None),
        },
        None => (None, None),
    }
}

/// The ZenML sync's condition and record.
fn zenml_condition(zenml: ZenmlReport, previous: &StackStatus) -> (Option<Observed>, Option<Box<ZenmlStatus>>) {
    match zenml {
        ZenmlReport::Synced(record) => {
            let mut message = format!(
                "ZenML stack {} (id {}) is as declared in the server at {}",
                record.stack_name.as_deref().unwrap_or_default(),
                record.stack_id.as_deref().unwrap_or_default(),
                record.url
            );
            if record.container_registry_id.is_none() {
                message.push_str(
                    "; it has no container registry, so ZenML's kubernetes orchestrator runs no pipeline on it: set spec.orchestrator.containerRegistry.uri",
                );
            }
            (Some(Observed::ok(ZENML_SYNCED, Reason::ZenmlSynced, message)), Some(Box::new(record)))
        }
        ZenmlReport::Failed(failure) => {
            (Some(Observed::failed(ZENML_SYNCED, failure.reason, failure.message)), previous.zenml.clone())
        }
        ZenmlReport::Keep => (observed_again(&previous.conditions, ZENML_SYNCED), previous.zenml.clone()),
        ZenmlReport::Gone => (None, None),
    }
}

/// The scoped credentials' condition and record.
fn credentials_condition(
    asks: Asks,
    credentials: CredentialsReport,
    previous: &StackStatus,
) -> (Option<Observed>, Option<Box<CredentialsStatus>>) {
    match credentials {
        CredentialsReport::Issued(record, None) => {
            let message = format!(
                "session credentials for {} ({:?}) in Secret {}, key {}: expire at {}, renewed at {}",
                record.path,
                record.access,
                record.secret_name,
                record.access_key_id,
                record.expires_at,
                record.renew_at
            );
            (Some(Observed::ok(SCOPED_CREDENTIALS, Reason::CredentialsIssued, message)), Some(Box::new(record)))
        }
        CredentialsReport::Issued(record, Some(failure)) => {
            (Some(Observed::failed(SCOPED_CREDENTIALS, failure.reason, failure.message)), Some(Box::new(record)))
        }
        CredentialsReport::Failed(failure) => {
            (Some(Observed::failed(SCOPED_CREDENTIALS, failure.reason, failure.message)), previous.credentials.clone())
        }
        CredentialsReport::Keep if asks.scoped_credentials => {
            (observed_again(&previous.conditions, SCOPED_CREDENTIALS), previous.credentials.clone())
        }
        CredentialsReport::Keep | CredentialsReport::Shared => (None, None),
    }
}
