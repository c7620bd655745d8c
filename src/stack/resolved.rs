//! The Stack as a value: its spec read once, at the top of a reconcile, with its defaults filled
//! in and what the schema could not check checked (objects created before a rule existed). Every
//! step below takes a [`ResolvedStack`]; this is the one module that reads `spec`. Pure.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::api::Stack;
use crate::api::stack::{Access, ApiKeySecretRef, CredentialsMode, OrchestratorKind, OutputFormat, StackSpec};
use crate::owner::Owner;
use crate::reason::{Failure, Reason};

/// The scoped credentials' lifetime unless `spec.credentials.duration` says otherwise.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(3600);
/// The project a Stack's pipelines run in unless `spec.zenml.project` says otherwise.
const DEFAULT_ZENML_PROJECT: &str = "default";

/// A Stack, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedStack {
    /// Whose objects it publishes: its name, namespace, UID and owner reference.
    pub owner: Owner,
    pub generation: i64,
    /// The ArtifactStore, in the Stack's namespace.
    pub store: String,
    pub orchestrator: OrchestratorKind,
    /// The ServiceAccount the orchestrator's pods run as.
    pub service_account: String,
    /// The container registry ZenML's kubernetes orchestrator pulls from.
    pub container_registry: Option<String>,
    /// The renderings asked for, besides the env keys.
    pub formats: BTreeSet<OutputFormat>,
    /// With Argo: be the namespace's default repository, and render `addressingStyle`.
    pub argo_default_repository: bool,
    pub argo_addressing_style: bool,
    pub asks: Asks,
    /// Which credentials the pods get.
    pub credentials: PodCredentials,
    /// Where the Stack registers itself in ZenML.
    pub zenml: Option<ZenmlTarget>,
}

/// What the Stack asks for that keeps a condition in its status: read without validating, so a
/// status written for a Stack that does not resolve keeps them too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Asks {
    /// `verification.inPod`: the check from inside a pod.
    pub in_pod_check: bool,
    /// `credentials.mode: Scoped`.
    pub scoped_credentials: bool,
}

impl Asks {
    pub fn of(spec: &StackSpec) -> Self {
        Self {
            in_pod_check: spec.verification.as_ref().is_some_and(|v| v.in_pod),
            scoped_credentials: spec.credentials.as_ref().is_some_and(|c| c.mode == CredentialsMode::Scoped),
        }
    }
}

/// The credentials the Stack's pods get.
#[derive(Clone, Debug, PartialEq)]
pub enum PodCredentials {
    /// The store's own keys (or identity).
    Shared,
    /// Session credentials of their own, below the store's path.
    Scoped(ScopeRequest),
}

/// What scoped credentials are asked for, before the store they narrow is known.
#[derive(Clone, Debug, PartialEq)]
pub struct ScopeRequest {
    pub access: Access,
    pub duration: Duration,
    /// A literal key prefix below the store's path, without leading or trailing `/`.
    pub prefix: Option<String>,
    pub role_arn: Option<String>,
}

/// A ZenML server, and the names the Stack's objects get there.
#[derive(Clone, Debug, PartialEq)]
pub struct ZenmlTarget {
    pub url: String,
    pub api_key_secret_ref: ApiKeySecretRef,
    pub project: String,
    /// The ZenML stack's name, and its components': `spec.zenml.stackName`, or `NAMESPACE-NAME`.
    pub stack_name: String,
}

impl ResolvedStack {
    /// The Stack's spec, resolved; or what the user must fix in it.
    pub fn of(stack: &Stack) -> Result<Self, Failure> {
        let spec = &stack.spec;
        let owner = Owner::of(stack);
        let credentials = match spec.credentials.as_deref() {
            Some(scoped) if scoped.mode == CredentialsMode::Scoped => PodCredentials::Scoped(ScopeRequest {
                access: scoped.access,
                duration: duration(scoped.duration.as_deref())?,
                prefix: prefix(scoped.prefix.as_deref())?,
                role_arn: scoped.role_arn.clone(),
            }),
            _ => PodCredentials::Shared,
        };
        let zenml = spec.zenml.as_deref().map(|zenml| ZenmlTarget {
            url: zenml.url.clone(),
            api_key_secret_ref: zenml.api_key_secret_ref.clone(),
            project: zenml.project.clone().unwrap_or_else(|| DEFAULT_ZENML_PROJECT.to_owned()),
            stack_name: zenml.stack_name.clone().unwrap_or_else(|| format!("{}-{}", owner.namespace, owner.name)),
        });
        Ok(Self {
            generation: stack.metadata.generation.unwrap_or_default(),
            store: spec.artifact_store_ref.name.clone(),
            orchestrator: spec.orchestrator.kind,
            service_account: spec.orchestrator.service_account_name.clone(),
            container_registry: spec.orchestrator.container_registry.as_ref().map(|r| r.uri.clone()),
            formats: spec.outputs.formats.iter().copied().collect(),
            argo_default_repository: spec.outputs.argo_default_repository,
            argo_addressing_style: spec.outputs.argo_addressing_style,
            asks: Asks::of(spec),
            credentials,
            zenml,
            owner,
        })
    }

    /// Whether the Stack asks for the consumer format `format`.
    pub fn wants(&self, format: OutputFormat) -> bool {
        self.formats.contains(&format)
    }

    pub fn name(&self) -> &str {
        &self.owner.name
    }

    pub fn namespace(&self) -> &str {
        &self.owner.namespace
    }
}

/// The characters IAM reads as a pattern (`*` and `?` in a resource ARN and in `StringLike`) or
/// as the start of a policy variable (`$`): none of them may reach a policy from a user's value.
const PATTERN_CHARACTERS: [char; 3] = ['*', '?', '$'];

/// The first character of `text` that IAM would not read literally in a policy.
pub fn pattern_character(text: &str) -> Option<char> {
    text.chars().find(|c| PATTERN_CHARACTERS.contains(c))
}

fn unsupported(message: String) -> Failure {
    Failure::new(Reason::ScopedCredentialsUnsupported, message)
}

/// `spec.credentials.duration`, from 15 minutes to 12 hours.
fn duration(text: Option<&str>) -> Result<Duration, Failure> {
    let Some(text) = text else { return Ok(DEFAULT_DURATION) };
    crate::controller::timing::parse_duration(text, Duration::from_secs(15 * 60), Duration::from_secs(12 * 3600))
        .map_err(|why| unsupported(format!("spec.credentials.duration {text:?} is {why}")))
}

/// `spec.credentials.prefix`: a literal key prefix (admission checks it too; anything past it must
/// not reach a policy).
fn prefix(text: Option<&str>) -> Result<Option<String>, Failure> {
    let Some(below) = text.map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) else { return Ok(None) };
    if below.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(unsupported(format!("spec.credentials.prefix {below:?} is not a plain key prefix")));
    }
    if let Some(pattern) = pattern_character(below) {
        return Err(unsupported(format!(
            "spec.credentials.prefix {below:?} contains {pattern:?}, which IAM reads as a pattern or a variable in a policy: the credentials would reach more than the prefix; use a literal prefix"
        )));
    }
    Ok(Some(below.to_owned()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn resolve(spec: serde_json::Value) -> Result<ResolvedStack, Failure> {
        ResolvedStack::of(&crate::controller::fixtures::stack("ml", "s-1", spec))
    }

    #[test]
    fn defaults_are_filled_in_once() {
        let stack = resolve(json!({"artifactStoreRef": {"name": "store"},
            "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"},
            "zenml": {"url": "https://zenml.example.com", "apiKeySecretRef": {"name": "zenml"}},
            "credentials": {"mode": "Scoped"}}))
        .unwrap();
        let zenml = stack.zenml.as_ref().unwrap();
        assert_eq!((zenml.project.as_str(), zenml.stack_name.as_str()), ("default", "ml-prod"));
        assert_eq!(zenml.api_key_secret_ref.key(), "api-key");
        let PodCredentials::Scoped(scope) = &stack.credentials else { panic!("scoped") };
        assert_eq!(
            (scope.duration, scope.prefix.as_deref(), scope.access),
            (DEFAULT_DURATION, None, Access::ReadWrite)
        );
        assert_eq!(stack.asks, Asks { in_pod_check: false, scoped_credentials: true });
        assert_eq!((stack.name(), stack.namespace(), stack.owner.uid.as_str()), ("prod", "ml", "s-1"));
    }

    #[test]
    fn what_admission_would_refuse_is_refused_here_too() {
        let scoped = |credentials: serde_json::Value| {
            resolve(json!({"artifactStoreRef": {"name": "store"},
                "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "argo"}, "credentials": credentials}))
        };
        for credentials in [
            json!({"mode": "Scoped", "duration": "5m"}),
            json!({"mode": "Scoped", "prefix": "a/../b"}),
            json!({"mode": "Scoped", "prefix": "team-*"}),
        ] {
            assert_eq!(
                scoped(credentials.clone()).unwrap_err().reason,
                Reason::ScopedCredentialsUnsupported,
                "{credentials}"
            );
        }
        // Shared credentials ignore what only scoped ones use.
        assert_eq!(scoped(json!({"mode": "Shared", "duration": "5m"})).unwrap().credentials, PodCredentials::Shared);
        let trimmed = scoped(json!({"mode": "Scoped", "prefix": "/team-a/"})).unwrap();
        let PodCredentials::Scoped(scope) = trimmed.credentials else { panic!("scoped") };
        assert_eq!(scope.prefix.as_deref(), Some("team-a"));
    }
}
