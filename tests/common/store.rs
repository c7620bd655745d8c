//! ArtifactStores in tests: a store on each S3 server (the plain one, the HTTPS one with its
//! private CA), applying one, and waiting for its conditions.

use std::time::Duration;

use artifact_operator::api::ArtifactStore;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::conditions::{Wanted, find, wait_for_condition};
use super::{Operator, test_env};

/// How long a store may take to reach a condition.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Server-side applies ArtifactStore `name` with `spec`.
pub async fn apply_store(client: &Client, ns: &str, name: &str, spec: Value) {
    Api::<ArtifactStore>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(&store_object(name, spec)))
        .await
        .unwrap();
}

/// The ArtifactStore `name` with `spec`, as JSON to apply.
pub fn store_object(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": name}, "spec": spec})
}

/// A store's spec at `s3://BUCKET/pipelines` on the plain S3 server, with the limited user's keys
/// in Secret `minio-keys`; `extra` adds top-level fields or replaces them.
pub fn minio_spec(bucket: &str, extra: Value) -> Value {
    minio_spec_at(&format!("s3://{bucket}/pipelines"), extra)
}

/// A store's spec at `path` (`s3://BUCKET/PREFIX`) on the plain S3 server, with the limited
/// user's keys in Secret `minio-keys`; `extra` adds top-level fields or replaces them.
pub fn minio_spec_at(path: &str, extra: Value) -> Value {
    with_fields(
        json!({
            "path": path,
            "endpoint": {"url": test_env().var("AO_S3_ENDPOINT"), "addressingStyle": "Path"},
            "auth": {"secretRef": {"name": "minio-keys"}},
        }),
        extra,
    )
}

/// A store's spec at `path` on the HTTPS S3 server, trusting the CA bundle `ca_bundle` (a
/// reference such as `{"name": "s3-ca"}`), with the limited user's keys in Secret `minio-keys`.
/// The operator creates the bucket (provisioning Create): that server is a separate one.
pub fn tls_spec_at(path: &str, ca_bundle: Value) -> Value {
    json!({
        "path": path,
        "endpoint": {"url": test_env().var("AO_S3_TLS_ENDPOINT"), "addressingStyle": "Path", "tls": {"caBundle": ca_bundle}},
        "auth": {"secretRef": {"name": "minio-keys"}},
        "provisioning": "Create",
    })
}

fn with_fields(mut spec: Value, extra: Value) -> Value {
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    spec
}

/// The private CA of the HTTPS S3 server, as PEM.
pub fn private_ca_pem() -> String {
    std::fs::read_to_string(test_env().var("AO_S3_CA_FILE")).unwrap()
}

/// Applies ConfigMap `name` with the HTTPS S3 server's private CA under `ca.crt` (what a store's
/// `endpoint.tls.caBundle` names); returns the PEM.
pub async fn private_ca_config_map(client: &Client, ns: &str, name: &str) -> String {
    let pem = private_ca_pem();
    let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"ca.crt": pem}});
    super::apply(client, ns, object).await;
    pem
}

/// [`super::setup_with_absent_bucket`] for `test` and `bucket`, an operator on the namespace, and
/// the store `ml` with [`minio_spec`] and `extra` (so with `"provisioning": "Create"` the operator
/// creates the bucket), once it is Ready; returns the client, the namespace, the bucket, the
/// operator and the store.
pub async fn ready_store(test: &str, bucket: &str, extra: Value) -> (Client, String, String, Operator, ArtifactStore) {
    let (client, ns, bucket) = super::setup_with_absent_bucket(test, bucket).await;
    let operator = Operator::start(&ns, "10m");
    apply_store(&client, &ns, "ml", minio_spec(&bucket, extra)).await;
    let store = wait_for(&client, &ns, "ml", "Ready", "True", "Ready").await;
    (client, ns, bucket, operator, store)
}

/// Waits until condition `type_` has `status` and `reason` for the current generation.
pub async fn wait_for(client: &Client, ns: &str, name: &str, type_: &str, status: &str, reason: &str) -> ArtifactStore {
    let store: ArtifactStore =
        wait_for_condition(client, ns, name, type_, Wanted::Is { status, reason }, TIMEOUT).await;
    super::capture_health_fixture(&store, ns);
    store
}

/// The condition `type_` of the store; panics when it has none.
pub fn condition<'a>(store: &'a ArtifactStore, type_: &str) -> &'a artifact_operator::api::Condition {
    find(store, type_).unwrap_or_else(|| panic!("no {type_} condition on {store:?}"))
}
