//! State shared by every reconcile.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::aws::AwsEdge;
use crate::conditions::Transition;

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a Ready store is re-verified (with ±10% jitter).
    pub resync_interval: Duration,
    /// The cluster's service-account issuer, for IRSA trust checks. None: read from the apiserver.
    pub oidc_issuer: Option<String>,
    /// The image that runs `artifact-operator check` in a Stack's namespace (`--check-image`).
    pub check_image: Option<String>,
    /// The EKS cluster whose Pod Identity associations give ServiceAccounts a role
    /// (`--eks-cluster-name`). None: only IRSA annotations are looked at.
    pub eks_cluster: Option<String>,
}

pub struct Context {
    pub client: Client,
    pub aws: AwsEdge,
    pub settings: Settings,
    pub metrics: crate::metrics::Metrics,
    pub health: std::sync::Arc<super::health::Health>,
    /// Logins to ZenML servers, for Stacks with `spec.zenml`.
    pub zenml: crate::zenml::Sessions,
    /// Per-object memory of this process: failures for backoff, verification times.
    memory: super::memory::Memory,
    /// What this process read whole or published, by resourceVersion (see [`super::reads`]).
    pub(super) known: super::known::Known,
    issuer: tokio::sync::OnceCell<String>,
    /// The caches of each watched scope (None: all namespaces), set once the watches start.
    caches: std::sync::OnceLock<Vec<(Option<String>, super::caches::Caches)>>,
}

/// An Event's severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// The name that reports this operator's Events.
const REPORTER: &str = "artifact-operator";

impl Context {
    pub fn new(client: Client, aws: AwsEdge, settings: Settings, metrics: crate::metrics::Metrics) -> Self {
        let memory = super::memory::Memory::new(settings.resync_interval);
        Self {
            client,
            aws,
            settings,
            metrics,
            health: std::sync::Arc::default(),
            zenml: crate::zenml::Sessions::default(),
            memory,
            known: super::known::Known::default(),
            issuer: tokio::sync::OnceCell::new(),
            caches: std::sync::OnceLock::new(),
        }
    }

    /// Hands the reconcilers the caches of every watched scope; once, before they run.
    pub fn set_caches(&self, caches: Vec<(Option<String>, super::caches::Caches)>) {
        if self.caches.set(caches).is_err() {
            tracing::error!("the caches were set twice; the first ones stay");
        }
    }

    /// The caches that hold `namespace`'s objects, once the watches run.
    pub fn caches(&self, namespace: &str) -> Option<&super::caches::Caches> {
        let scopes = self.caches.get()?;
        scopes.iter().find(|(scope, _)| scope.as_deref().is_none_or(|s| s == namespace)).map(|(_, caches)| caches)
    }

    /// Records a failure and returns the count so far.
    pub fn record_failure(&self, key: &str) -> u32 {
        self.memory.record_failure(key, Instant::now())
    }

    pub fn record_success(&self, key: &str) {
        self.memory.record_success(key);
    }

    /// When `uid`, verified by this process with `inputs`, is due to be verified again.
    pub fn verification_due(&self, uid: &str, inputs: &str) -> Option<Instant> {
        self.memory.verification_due(uid, inputs)
    }

    /// Records that `uid` was verified with `inputs` now; it is due again after one resync
    /// interval (jittered).
    pub fn mark_verified(&self, uid: &str, inputs: &str) -> Duration {
        let wait = super::timing::jittered(self.settings.resync_interval);
        self.memory.mark_verified(uid, inputs, Instant::now() + wait);
        wait
    }

    /// Records that `uid` is due to be verified with `inputs` after `wait` (a process that saw it
    /// verified by an earlier one spreads these re-verifications).
    pub fn verification_due_in(&self, uid: &str, inputs: &str, wait: Duration) {
        self.memory.mark_verified(uid, inputs, Instant::now() + wait);
    }

    /// Whether a status computed from `object` as cached may be written: not while the cache
    /// still holds the version this process's last status write was computed from. That write
    /// supersedes anything computed from the same version: a pass woken by the objects the first
    /// one published sees the world it changed (the bucket it created, as one that exists) but not
    /// its status, and would overwrite it. The write's watch event wakes the next pass.
    pub fn may_write_status(&self, object: &ObjectMeta) -> bool {
        let (uid, version) = uid_and_version(object);
        !self.memory.status_pending(uid, version)
    }

    /// Records that a pass wrote a status of `object` that produced `version`, ahead of its last
    /// write (which then supersedes that version too).
    pub fn wrote_intermediate_status(&self, object: &ObjectMeta, version: &str) {
        self.memory.wrote_intermediate_status(object.uid.as_deref().unwrap_or_default(), version);
    }

    /// Records that a status was written for `object` as the cache holds it.
    pub fn wrote_status(&self, object: &ObjectMeta) {
        let (uid, version) = uid_and_version(object);
        self.memory.wrote_status(uid, version);
    }

    /// Records what a full pass of `uid` read, at the caches' `watermark` before it read.
    pub fn settle<T: std::any::Any + Send + Sync>(
        &self,
        uid: &str,
        watermark: Option<String>,
        read: std::sync::Arc<T>,
    ) {
        if let Some(watermark) = watermark {
            self.memory.settle(uid, watermark, read);
        }
    }

    /// What the last full pass of `uid` read, if nothing it reads or writes changed since.
    pub fn settled<T: std::any::Any + Send + Sync>(&self, uid: &str, watermark: &str) -> Option<std::sync::Arc<T>> {
        self.memory.settled(uid, watermark)?.downcast::<T>().ok()
    }

    pub fn forget(&self, uid: &str, key: &str) {
        self.memory.forget(uid, key);
    }

    /// Records what this process issued for `uid` (see [`Context::issued`]).
    pub fn remember_issued<T: std::any::Any + Send + Sync>(&self, uid: &str, issued: std::sync::Arc<T>) {
        self.memory.remember_issued(uid, issued);
    }

    /// What this process last issued for `uid`: newer than what a cache that has not caught up
    /// with the write shows.
    pub fn issued<T: std::any::Any + Send + Sync>(&self, uid: &str) -> Option<std::sync::Arc<T>> {
        self.memory.issued(uid)?.downcast::<T>().ok()
    }

    /// The Pod Identity associations of the cluster, when the operator knows its name.
    pub fn pod_identity(&self) -> Option<crate::aws::eks::PodIdentity> {
        let cluster = self.settings.eks_cluster.as_deref()?;
        Some(crate::aws::eks::PodIdentity::new(self.aws.eks(), self.aws.iam_limiter.clone(), cluster))
    }

    /// The cluster's OIDC issuer: the configured one, or the apiserver's discovery document.
    pub async fn oidc_issuer(&self) -> Result<String, String> {
        if let Some(issuer) = &self.settings.oidc_issuer {
            return Ok(issuer.clone());
        }
        self.issuer
            .get_or_try_init(|| async {
                let request = http::Request::get("/.well-known/openid-configuration")
                    .body(Vec::new())
                    .map_err(|e| e.to_string())?;
                let document: serde_json::Value = self.client.request(request).await.map_err(|e| e.to_string())?;
                document["issuer"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "the apiserver's discovery document has no issuer".to_owned())
            })
            .await
            .cloned()
    }

    /// What follows a status write with `transitions`: the time to Ready when they turned the
    /// object Ready, and their Event. Called only once the write is done, so a pass on a cache that
    /// has not caught up with this process's last write (which writes nothing) counts and
    /// announces nothing a second time.
    pub async fn announce_transitions(
        &self,
        kind: &'static str,
        meta: &kube::core::ObjectMeta,
        reference: &ObjectReference,
        transitions: &[Transition],
    ) {
        self.observe_readiness(kind, meta, transitions);
        self.publish_transitions(reference, transitions).await;
    }

    /// Records the time to Ready when `transitions` turn the object Ready.
    fn observe_readiness(&self, kind: &'static str, meta: &kube::core::ObjectMeta, transitions: &[Transition]) {
        let became_ready = transitions.iter().any(|t| {
            t.observed.type_ == crate::conditions::READY && t.observed.status == crate::conditions::Status::True
        });
        if let (true, Some(created)) = (became_ready, &meta.creation_timestamp) {
            let age = jiff::Timestamp::now().duration_since(created.0);
            self.metrics.became_ready(kind, std::time::Duration::try_from(age).unwrap_or_default());
        }
    }

    /// Publishes one Event for a reconcile's condition transitions: the Ready condition's, or the
    /// first other one. Failing to publish is logged, not fatal.
    async fn publish_transitions(&self, reference: &ObjectReference, transitions: &[Transition]) {
        let Some(transition) =
            transitions.iter().find(|t| t.observed.type_ == crate::conditions::READY).or(transitions.first())
        else {
            return;
        };
        let observed = &transition.observed;
        let type_ = if observed.status.is_false() { EventType::Warning } else { EventType::Normal };
        let note = format!("{} is {}: {}", observed.type_, observed.status.as_str(), observed.message);
        self.publish_event(reference, type_, observed.reason, note, "Reconcile").await;
    }

    /// Publishes an Event on `reference` (in its namespace). Each is written once, with no cache
    /// and no series: the operator publishes only on a transition, never the same Event in a loop.
    /// Failing to publish is logged, not fatal.
    pub async fn publish_event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: crate::reason::Reason,
        note: String,
        action: &str,
    ) {
        let event = event(reference, type_, reason, note, action, jiff::Timestamp::now());
        let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(%error, "failed to publish an event");
        }
    }
}

/// The Event this operator publishes on `reference` at `now`, under a name of its own.
pub fn event(
    reference: &ObjectReference,
    type_: EventType,
    reason: crate::reason::Reason,
    note: String,
    action: &str,
    now: jiff::Timestamp,
) -> Event {
    let namespace = reference.namespace.clone().unwrap_or_else(|| "default".to_owned());
    Event {
        metadata: kube::core::ObjectMeta {
            name: Some(format!(
                "{}.{:x}",
                reference.name.as_deref().unwrap_or(REPORTER),
                now.as_nanosecond() as u128 ^ u128::from(fastrand::u32(..))
            )),
            namespace: Some(namespace),
            ..Default::default()
        },
        action: Some(action.to_owned()),
        reason: Some(reason.as_str().to_owned()),
        note: Some(note),
        event_time: Some(MicroTime(now)),
        regarding: Some(reference.clone()),
        reporting_controller: Some(REPORTER.to_owned()),
        reporting_instance: Some(REPORTER.to_owned()),
        type_: Some(format!("{type_:?}")),
        ..Event::default()
    }
}

fn uid_and_version(object: &ObjectMeta) -> (&str, &str) {
    (object.uid.as_deref().unwrap_or_default(), object.resource_version.as_deref().unwrap_or_default())
}
