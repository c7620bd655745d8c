//! State shared by every reconcile.

use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::aws::AwsEdge;
use crate::conditions::Transition;

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a Ready store is re-verified (with ±10% jitter).
    pub resync_interval: Duration,
    /// The cluster's service-account issuer, for IRSA trust checks. None: read from the apiserver.
    pub oidc_issuer: Option<String>,
}

pub struct Context {
    pub client: Client,
    pub aws: AwsEdge,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: crate::metrics::Metrics,
    pub health: std::sync::Arc<super::health::Health>,
    /// Per-object memory of this process: failures for backoff, verification times.
    memory: super::memory::Memory,
    issuer: tokio::sync::OnceCell<String>,
}

impl Context {
    pub fn new(client: Client, aws: AwsEdge, settings: Settings, metrics: crate::metrics::Metrics) -> Self {
        let memory = super::memory::Memory::new(settings.resync_interval);
        let recorder =
            Recorder::new(client.clone(), Reporter { controller: "artifact-operator".into(), instance: None });
        Self {
            client,
            aws,
            settings,
            recorder,
            metrics,
            health: std::sync::Arc::default(),
            memory,
            issuer: tokio::sync::OnceCell::new(),
        }
    }

    /// Records a failure and returns the count so far.
    pub fn record_failure(&self, key: &str) -> u32 {
        self.memory.record_failure(key, Instant::now())
    }

    pub fn record_success(&self, key: &str) {
        self.memory.record_success(key);
    }

    /// When this process last verified `uid` with `inputs`.
    pub fn last_verified(&self, uid: &str, inputs: &str) -> Option<Instant> {
        self.memory.last_verified(uid, inputs)
    }

    pub fn mark_verified(&self, uid: &str, inputs: &str, at: Instant) {
        self.memory.mark_verified(uid, inputs, at);
    }

    pub fn forget(&self, uid: &str, key: &str) {
        self.memory.forget(uid, key);
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

    /// Records the time to Ready when `transitions` turn the object Ready.
    pub fn observe_readiness(&self, kind: &'static str, meta: &kube::core::ObjectMeta, transitions: &[Transition]) {
        let became_ready = transitions.iter().any(|t| {
            t.observed.type_ == crate::conditions::READY && t.observed.status == crate::conditions::Status::True
        });
        if let (true, Some(created)) = (became_ready, &meta.creation_timestamp) {
            let age = jiff::Timestamp::now().duration_since(created.0);
            self.metrics.became_ready(kind, std::time::Duration::try_from(age).unwrap_or_default());
        }
    }

    /// Publishes an Event per condition transition. Failing to publish is logged, not fatal.
    pub async fn publish_transitions(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        transitions: &[Transition],
    ) {
        for transition in transitions {
            let observed = &transition.observed;
            let event = Event {
                type_: if observed.status.is_false() { EventType::Warning } else { EventType::Normal },
                reason: observed.reason.as_str().into(),
                note: Some(format!("{} is {}: {}", observed.type_, observed.status.as_str(), observed.message)),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(error) = self.recorder.publish(&event, reference).await {
                tracing::warn!(%error, "failed to publish an event");
            }
        }
    }
}
