//! Stacks in tests: the store and Stack objects they start from, waiting for a Stack's Ready, and
//! the namespace's shared ConfigMaps.

use std::time::Duration;

use artifact_operator::api::Stack;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::conditions::{Wanted, wait_for_condition};
use super::eventually;
use super::store::minio_spec;

pub const TIMEOUT: Duration = Duration::from_secs(60);
pub const REPOSITORIES: &str = "artifact-repositories";
pub const DEFAULT_ANNOTATION: &str = "workflows.argoproj.io/default-artifact-repository";

/// ArtifactStore `name` on the plain MinIO at `s3://BUCKET/pipelines`, with the limited user's keys.
pub fn store(name: &str, bucket: &str) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": name},
           "spec": minio_spec(bucket, json!({"client": {"maxAttempts": 4}}))})
}

/// The Stack `name` with `spec`, as JSON to apply.
pub fn stack_object(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": spec})
}

/// Stack `name` on `store` for Argo's pods (ServiceAccount `runner`), publishing `formats`.
pub fn stack(name: &str, store: &str, formats: Value, default_repository: bool) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": {
        "artifactStoreRef": {"name": store},
        "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "runner"},
        "outputs": {"formats": formats, "argoDefaultRepository": default_repository},
    }})
}

/// A fresh namespace for `test` with a bucket, ServiceAccount `runner` and [`store`] `ml` on that
/// bucket; returns the client, the namespace and the bucket.
pub async fn namespace_with_store(test: &str) -> (Client, String, String) {
    let (client, ns, bucket) = super::setup_with_bucket(test).await;
    super::apply(&client, &ns, service_account("runner")).await;
    super::apply(&client, &ns, store("ml", &bucket)).await;
    (client, ns, bucket)
}

/// [`namespace_with_store`], plus `stack` (a Stack on `ml`) applied and an operator on the
/// namespace that has made it Ready; returns the client, the namespace, the bucket and the
/// operator.
pub async fn ready_stack(test: &str, stack: Value) -> (Client, String, String, super::Operator) {
    let (client, ns, bucket) = namespace_with_store(test).await;
    let name = stack["metadata"]["name"].as_str().unwrap().to_owned();
    super::apply(&client, &ns, stack).await;
    let operator = super::Operator::start(&ns, "10m");
    wait_for(&client, &ns, &name, "True", "Ready").await;
    (client, ns, bucket, operator)
}

/// The ServiceAccount `name`, as JSON to apply.
pub fn service_account(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
}

/// Waits for the Stack's Ready condition to have `status` and `reason` for its generation.
pub async fn wait_for(client: &Client, ns: &str, name: &str, status: &str, reason: &str) -> Stack {
    let stack: Stack = wait_for_condition(client, ns, name, "Ready", Wanted::Is { status, reason }, TIMEOUT).await;
    super::capture_health_fixture(&stack, ns);
    stack
}

/// The message of the Stack's Ready condition.
pub fn message(stack: &Stack) -> String {
    super::conditions::message(stack, "Ready")
}

pub async fn config_map(client: &Client, ns: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await.unwrap()
}

/// Deletes the Stack and waits until it is gone (its finalizers done).
pub async fn delete_stack(client: &Client, ns: &str, name: &str) {
    let api = Api::<Stack>::namespaced(client.clone(), ns);
    api.delete(name, &DeleteParams::default()).await.unwrap();
    eventually(TIMEOUT, &format!("stack {name} to be gone"), || async {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

/// Server-side applies a ConfigMap as field manager `manager` (a user's `kubectl`, say).
pub async fn apply_as(client: &Client, ns: &str, manager: &str, object: Value) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let params = PatchParams::apply(manager);
    api.patch(&name, &params, &Patch::Apply(&object)).await.unwrap();
}
