//! The `Stack` custom resource: an ArtifactStore combined with an orchestrator, rendered into one
//! ConfigMap that the orchestrator's pods consume.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;
use super::validation;

/// An artifact store combined with an orchestrator, as ZenML's stacks are.
#[allow(clippy::duplicated_attributes)] // kube-derive takes one printcolumn(...) per column
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "artifacts.dev",
    version = "v1alpha1",
    kind = "Stack",
    plural = "stacks",
    shortname = "stk",
    category = "artifacts",
    namespaced,
    status = "StackStatus",
    doc = "An ArtifactStore combined with an orchestrator. The operator renders one ConfigMap with the configuration each consumer (env, ZenML, Argo Workflows, Kubeflow Pipelines) needs.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Store", type_ = "string", json_path = ".spec.artifactStoreRef.name"),
    printcolumn(name = "Orchestrator", type_ = "string", json_path = ".spec.orchestrator.type"),
    printcolumn(name = "ConfigMap", type_ = "string", json_path = ".status.configMapName", priority = "1"),
    printcolumn(name = "ZenML", type_ = "string", json_path = ".status.zenml.stackName", priority = "1"),
    printcolumn(name = "Credentials", type_ = "string", json_path = ".status.credentials.expiresAt", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = validation::name_length_rule()
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.credentials) || self.credentials.mode != 'Scoped' || !has(self.outputs) || !has(self.outputs.formats) || !('KFP' in self.outputs.formats)",
        "message": "Kubeflow Pipelines' launcher takes no session token: remove KFP from outputs.formats, or use credentials.mode Shared",
        "fieldPath": ".credentials.mode",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "!has(self.credentials) || self.credentials.mode != 'Scoped' || !has(self.verification) || !has(self.verification.inPod) || !self.verification.inPod",
        "message": "the in-pod check's image has no shell to run the credentials process of Scoped credentials: remove verification.inPod, or use credentials.mode Shared",
        "fieldPath": ".credentials.mode",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "!has(self.zenml) || self.orchestrator.type == 'Kubernetes'",
        "message": "zenml registers ZenML's kubernetes orchestrator: set orchestrator.type to Kubernetes, or remove zenml",
        "fieldPath": ".zenml",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct StackSpec {
    /// The ArtifactStore, in this namespace.
    pub artifact_store_ref: ArtifactStoreRef,
    /// The orchestrator whose pods use the store.
    pub orchestrator: Orchestrator,
    /// Which consumer formats to render. Env keys are always rendered.
    #[serde(default)]
    pub outputs: Outputs,
    /// Extra proof that the orchestrator's pods can use the store.
    pub verification: Option<Verification>,
    /// Register the stack in a ZenML server: its S3 artifact store (with the store's keys in a
    /// ZenML secret, or none with implicit auth), its kubernetes orchestrator and the stack. The
    /// operator keeps them as declared and removes them when the Stack goes or this field does.
    pub zenml: Option<Box<Zenml>>,
    /// Which credentials the orchestrator's pods get: the store's own (`Shared`, the default) or
    /// short-lived ones of their own, limited to a prefix (`Scoped`).
    pub credentials: Option<Box<ScopedCredentials>>,
}

impl StackSpec {
    /// Whether the Stack asks for the consumer format `format`.
    pub fn wants(&self, format: OutputFormat) -> bool {
        self.outputs.formats.contains(&format)
    }
}

/// The credentials the Stack's pods get.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScopedCredentials {
    /// `Shared` (default): the store's own keys (or identity). `Scoped`: session credentials from
    /// STS AssumeRole with the store's keys, limited by a session policy to `prefix` and `access`,
    /// in Secret `<stack>-scoped-credentials`, renewed at two thirds of `duration`. Pods read them
    /// through a `credential_process` file that their SDK runs again before they expire.
    #[serde(default)]
    pub mode: CredentialsMode,
    /// `ReadWrite` (default): list, read, write and delete under the prefix. `ReadOnly`: list and
    /// read.
    #[serde(default)]
    pub access: Access,
    /// The credentials' lifetime, from `15m` to `12h`. Defaults to `1h`. Argo steps read them when
    /// they start: keep it at least three times the longest step.
    #[schemars(length(min = 2, max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^([0-9]{1,3}h)?([0-9]{1,4}m)?([0-9]{1,6}s)?$') && self != '' && duration(self) >= duration('15m') && duration(self) <= duration('12h')", "message": "duration must be like 15m, 1h or 2h30m, from 15m to 12h"}
    ]))]
    pub duration: Option<String>,
    /// The prefix below the store's path that the credentials reach, for example `team-a`: a
    /// literal key prefix (no `*`, `?` or `$`, which IAM reads as patterns). Defaults to the
    /// store's path itself.
    #[schemars(length(min = 1, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": r"self.matches('^[A-Za-z0-9!_.()-]+(/[A-Za-z0-9!_.()-]+)*$') && !self.split('/').exists(p, p == '.' || p == '..')", "message": "prefix must be key parts of letters, digits and ! _ . ( ) - joined by /, without . or .. parts or a leading or trailing /; * ? and $ are refused because IAM reads them as patterns in the session policy"}
    ]))]
    pub prefix: Option<String>,
    /// On AWS: the IAM role the store's keys assume (its policies, cut down by the session
    /// policy). Unset against an S3-compatible server whose STS issues sessions of the store's own
    /// user (MinIO).
    #[schemars(length(min = 20, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": r"self.matches('^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\\w+=,.@/-]+$')", "message": "roleArn must be an IAM role ARN such as arn:aws:iam::123456789012:role/ml-pipelines"}
    ]))]
    pub role_arn: Option<String>,
}

/// Whose credentials the Stack's pods use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CredentialsMode {
    #[default]
    Shared,
    Scoped,
}

/// What scoped credentials may do under their prefix.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Access {
    #[default]
    ReadWrite,
    ReadOnly,
}

/// A ZenML server and the names the stack and its components get there.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Zenml {
    /// The ZenML server's URL, for example `https://zenml.example.com`.
    #[schemars(length(min = 8, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^https?://[^/?#@ ]+(/[^?# ]*)?$')", "message": "zenml.url must be an http:// or https:// URL with a host and no query, for example https://zenml.example.com"}
    ]))]
    pub url: String,
    /// The Secret, in this namespace, holding the API key of a ZenML service account
    /// (`zenml service-account create`).
    pub api_key_secret_ref: ApiKeySecretRef,
    /// The ZenML project the stack's pipelines run in; it must exist. Defaults to `default`.
    /// (ZenML 0.98 keeps stacks, components and secrets server-wide, not per project.)
    #[schemars(transform = validation::zenml_name)]
    pub project: Option<String>,
    /// The ZenML stack's name, and that of its artifact store and orchestrator components.
    /// Defaults to `NAMESPACE-NAME` of this Stack.
    #[schemars(transform = validation::zenml_name)]
    pub stack_name: Option<String>,
}

/// A key of a Secret in the Stack's namespace.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ApiKeySecretRef {
    /// Name of the Secret.
    #[schemars(transform = validation::object_name)]
    pub name: String,
    /// The key holding the API key. Defaults to `api-key`.
    #[schemars(transform = validation::data_key)]
    pub key: Option<String>,
}

impl ApiKeySecretRef {
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("api-key")
    }
}

/// How the operator proves that the orchestrator's pods can use the store.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// Run `artifact-operator check` as a short Job in this namespace, as
    /// `orchestrator.serviceAccountName`, with the Stack's ConfigMap (and the store's credentials
    /// Secret) as a workload pod gets them: it writes, reads, lists and deletes one object under
    /// the prefix with the pod's own credentials. The result is the `WorkloadAccessVerified`
    /// condition, and the Stack is Ready only once it passed. It runs again when the Stack, its
    /// store or what they publish change, never on a plain resync.
    #[serde(default)]
    pub in_pod: bool,
}

/// A reference to an ArtifactStore in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ArtifactStoreRef {
    /// Name of the ArtifactStore.
    #[schemars(transform = validation::object_name)]
    pub name: String,
}

/// The orchestrator and the identity its pods run as.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.containerRegistry) || self.type == 'Kubernetes'",
        "message": "containerRegistry is the registry of ZenML's kubernetes orchestrator: set type to Kubernetes, or remove containerRegistry",
        "fieldPath": ".containerRegistry",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct Orchestrator {
    /// `Kubernetes` (ZenML's kubernetes orchestrator), `ArgoWorkflows` or `KubeflowPipelines`.
    #[serde(rename = "type")]
    pub kind: OrchestratorKind,
    /// The ServiceAccount the orchestrator's pods run as, in this namespace. The operator checks
    /// that this identity can use the store.
    #[schemars(transform = validation::object_name)]
    pub service_account_name: String,
    /// The container registry ZenML's kubernetes orchestrator takes its pipelines' images from
    /// (`type: Kubernetes` only). ZenML runs no pipeline on a stack without one (`Missing stack
    /// components {CONTAINER_REGISTRY}`): with it, the registered stack and `zenml-stack.yaml` carry
    /// a `default` container registry component with this URI. The nodes pull from it as the
    /// ServiceAccount's `imagePullSecrets` allow.
    pub container_registry: Option<ContainerRegistry>,
}

/// A container registry, as ZenML's `default` container registry flavor names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ContainerRegistry {
    /// The registry's URI without a scheme, for example `123456789012.dkr.ecr.eu-west-1.amazonaws.com`,
    /// `ghcr.io/team` or `10.0.0.5:5000/ml`. ZenML refuses `localhost:PORT` for a cluster's
    /// orchestrator, as the nodes cannot reach it.
    #[schemars(length(min = 1, max = 255))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$')", "message": "containerRegistry.uri must be a registry host with an optional port and path and no scheme, for example ghcr.io/team or 10.0.0.5:5000"},
        {"rule": "!self.matches('^localhost:[0-9]{4,5}$')", "message": "ZenML treats containerRegistry.uri localhost:PORT as a local registry and refuses it for a kubernetes orchestrator: use an address the cluster's nodes pull from"}
    ]))]
    pub uri: String,
}

/// Supported orchestrators.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OrchestratorKind {
    Kubernetes,
    ArgoWorkflows,
    KubeflowPipelines,
}

/// Renderings of the stack's configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.argoDefaultRepository) || !self.argoDefaultRepository || (has(self.formats) && 'Argo' in self.formats)",
        "message": "argoDefaultRepository applies only with the Argo format: add Argo to formats or remove it",
        "fieldPath": ".argoDefaultRepository",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct Outputs {
    /// Formats to render besides the env keys: `ZenML`, `Argo`, `KFP`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set", "maxItems" = 4))]
    pub formats: Vec<OutputFormat>,
    /// With `Argo`, make the stack's key of ConfigMap `artifact-repositories` the namespace's
    /// default artifact repository (its `workflows.argoproj.io/default-artifact-repository`
    /// annotation), used by workflows without an `artifactRepositoryRef`. One stack per namespace.
    #[serde(default)]
    pub argo_default_repository: bool,
    /// With `Argo`, also render `addressingStyle` (`path` or `virtual-hosted`, from the store's
    /// endpoint), which Argo Workflows reads from 4.1 on. Off by default: earlier versions
    /// (3.6, 3.7, 4.0) do not know the field and fall back to their own detection.
    #[serde(default)]
    pub argo_addressing_style: bool,
}

/// A consumer format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum OutputFormat {
    /// Keys for `envFrom` (always rendered).
    Env,
    /// A ZenML stack export (`zenml-stack.yaml`: S3 artifact store and kubernetes orchestrator),
    /// for `zenml stack import`.
    ZenML,
    /// An Argo Workflows artifact repository: the key named after the stack in the namespace's
    /// ConfigMap `artifact-repositories`.
    Argo,
    /// Kubeflow Pipelines' launcher configuration: the namespace's ConfigMap `kfp-launcher`
    /// (one stack per namespace).
    #[serde(rename = "KFP")]
    Kfp,
    /// The keys of an ObjectBucketClaim's ConfigMap (Rook, NooBaa) in the stack's ConfigMap:
    /// `BUCKET_HOST` (no scheme), `BUCKET_PORT`, `BUCKET_NAME`, `BUCKET_REGION`,
    /// `BUCKET_SUBREGION`, for applications written against bucket claims; they pair with the
    /// store's credentials Secret. Needs key auth and path-style addressing.
    BucketClaim,
    /// The variables MLflow reads for S3 (`MLFLOW_S3_ENDPOINT_URL`,
    /// `MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE`, `MLFLOW_S3_IGNORE_TLS`,
    /// `MLFLOW_S3_UPLOAD_EXTRA_ARGS`) in the stack's ConfigMap, and `MLFLOW_ARTIFACTS_DESTINATION`
    /// for the tracking server's `--artifacts-destination`.
    #[serde(rename = "MLflow")]
    Mlflow,
}

/// Observed state of a Stack.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackStatus {
    /// The generation the status describes.
    pub observed_generation: Option<i64>,
    /// `Ready`, and with `verification.inPod` `WorkloadAccessVerified`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The ConfigMap holding the renderings.
    pub config_map_name: Option<String>,
    /// SHA-256 of the ConfigMap's data, also set as its `artifacts.dev/content-hash` annotation.
    pub content_hash: Option<String>,
    /// With `verification.inPod`: what the `WorkloadAccessVerified` condition's check ran with (a
    /// hash of the ConfigMap, the ServiceAccount, the credentials and the image), so that the check
    /// runs again only when one of them changes.
    pub workload_check: Option<String>,
    /// With `zenml`: what the operator made in the ZenML server.
    pub zenml: Option<Box<ZenmlStatus>>,
    /// With `credentials.mode: Scoped`: the session credentials the pods have, and when they are
    /// renewed.
    pub credentials: Option<Box<CredentialsStatus>>,
}

/// The Stack's session credentials (never their secret parts).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsStatus {
    /// The Secret that holds them.
    pub secret_name: String,
    /// The path they reach.
    pub path: String,
    pub access: Access,
    /// Their access key id (not a secret), to find them in the S3 server's logs.
    pub access_key_id: String,
    /// When they expire (RFC 3339).
    pub expires_at: String,
    /// When the operator renews them (RFC 3339).
    pub renew_at: String,
    /// What they were issued for (a digest of the path, access, duration and role): another
    /// scope issues new ones at once.
    pub scope: String,
}

/// The ZenML objects the operator made for the Stack, and what it needs to remove them.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZenmlStatus {
    /// The server they are in.
    pub url: String,
    /// The ZenML stack's id.
    pub stack_id: Option<String>,
    /// The stack's name in ZenML (`zenml stack set NAME`).
    pub stack_name: Option<String>,
    /// The S3 artifact store component's id.
    pub artifact_store_id: Option<String>,
    /// The kubernetes orchestrator component's id.
    pub orchestrator_id: Option<String>,
    /// The container registry component's id (with `orchestrator.containerRegistry`).
    pub container_registry_id: Option<String>,
    /// The ZenML secret holding the store's keys (key auth only).
    pub secret_id: Option<String>,
    /// The API key the objects were made with, to remove them once `spec.zenml` is gone.
    pub api_key_secret_ref: ApiKeySecretRef,
}
