//! A stored object the operator cannot read (kept from an older schema, or written past the
//! apiserver's validation; here straight into etcd) gets a Warning Event, and the other objects,
//! in its namespace and in the Stacks' watch of ArtifactStores, carry on.

mod common;

use artifact_operator::api::{ArtifactStore, Stack};
use common::conditions::wait_for_condition;
use common::store::{apply_store, minio_spec, wait_for};
use common::{Operator, apply, eventually, setup_with_bucket};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use serde_json::json;

#[tokio::test]
async fn an_object_that_does_not_deserialize_gets_an_event_and_the_others_carry_on() {
    let (client, ns, bucket) = setup_with_bucket("malformed").await;
    // A provisioning value the schema has never admitted, stored before the operator starts, so
    // that its first list of ArtifactStores holds it.
    let uid = format!("{:08x}-0000-4000-8000-{:012x}", fastrand::u32(..), fastrand::u64(..) >> 16);
    let bad = json!({
        "apiVersion": "artifacts.dev/v1alpha1",
        "kind": "ArtifactStore",
        "metadata": {"name": "bad", "namespace": ns, "uid": uid, "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"path": format!("s3://{bucket}/bad"), "auth": {"secretRef": {"name": "minio-keys"}}, "provisioning": "Sometimes"},
    });
    let _bad = common::EtcdEntry::put(&format!("/registry/artifacts.dev/artifactstores/{ns}/bad"), &bad.to_string());
    let stores: Api<ArtifactStore> = Api::namespaced(client.clone(), &ns);
    let error = eventually(std::time::Duration::from_secs(30), "the apiserver to serve the stored object", || async {
        stores.get("bad").await.err()
    })
    .await;
    assert!(error.to_string().contains("Sometimes"), "it does not deserialize: {error}");
    let guarded: Api<DeserializeGuard<ArtifactStore>> = Api::namespaced(client.clone(), &ns);
    assert!(guarded.get("bad").await.unwrap().0.is_err());

    let operator = Operator::start(&ns, "10m");
    apply_store(&client, &ns, "good", minio_spec(&bucket, json!({}))).await;
    apply(&client, &ns, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}})).await;
    let stack = json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "prod"}, "spec": {
        "artifactStoreRef": {"name": "good"}, "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"}}});
    apply(&client, &ns, stack).await;
    wait_for(&client, &ns, "good", "Ready", "True", "Ready").await;
    // The stack beside the malformed store turns Ready.
    let ready = common::conditions::Wanted::True;
    wait_for_condition::<Stack>(&client, &ns, "prod", "Ready", ready, common::store::TIMEOUT).await;

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let note = eventually(common::store::TIMEOUT, "an InvalidObject Event on the malformed store", || async {
        let list = events.list(&ListParams::default().fields("involvedObject.name=bad")).await.unwrap();
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("InvalidObject")).and_then(|e| e.message)
    })
    .await;
    assert!(note.contains("Sometimes"), "the Event names what does not match: {note}");
    assert!(operator.log_text().contains("does not match the operator's schema"));
}
