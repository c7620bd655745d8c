//! ArtifactStores in tests: apply one, and wait for its conditions.

use std::time::Duration;

use artifact_operator::api::ArtifactStore;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::test_env;

/// How long a store may take to reach a condition.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub async fn apply_store(client: &Client, ns: &str, name: &str, spec: Value) {
    let object = json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": name}, "spec": spec});
    Api::<ArtifactStore>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(&object))
        .await
        .unwrap();
}

pub fn minio_spec(bucket: &str, extra: Value) -> Value {
    let mut spec = json!({
        "path": format!("s3://{bucket}/pipelines"),
        "endpoint": {"url": test_env().var("AO_S3_ENDPOINT"), "addressingStyle": "Path"},
        "auth": {"secretRef": {"name": "minio-keys"}},
    });
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    spec
}

/// Waits until condition `type_` has `status` and `reason` for the current generation.
pub async fn wait_for(client: &Client, ns: &str, name: &str, type_: &str, status: &str, reason: &str) -> ArtifactStore {
    let api: Api<ArtifactStore> = Api::namespaced(client.clone(), ns);
    let mut last = String::new();
    let what = format!("{ns}/{name} {type_}={status} ({reason})");
    let found = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(store) = api.get_opt(name).await.unwrap() {
                let conditions = store.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
                if let Some(c) = conditions.iter().find(|c| c.type_ == type_) {
                    last = format!("{}={} ({}): {}", c.type_, c.status, c.reason, c.message);
                    if c.status == status && c.reason == reason && c.observed_generation == store.metadata.generation {
                        super::capture_health_fixture(&store, ns);
                        return store;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}; last seen {last}"))
}

pub fn condition<'a>(store: &'a ArtifactStore, type_: &str) -> &'a artifact_operator::api::Condition {
    store.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == type_).unwrap()
}
