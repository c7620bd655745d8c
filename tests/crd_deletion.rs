//! Deleting the ArtifactStore CRD deletes every ArtifactStore, but no bucket. A test binary of its
//! own: cargo runs test binaries one at a time, so no other test loses its CRD meanwhile.

mod common;

use std::time::Duration;

use artifact_operator::api::ArtifactStore;
use common::{Operator, eventually, limited_bucket, test_env};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn deleting_the_crd_deletes_no_bucket() {
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::namespace(&client, "crd-delete").await;
    let env = test_env();
    let bucket = limited_bucket("crddel");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "minio-keys"},
        "stringData": {"aws_access_key_id": env.var("AO_S3_USER_ACCESS_KEY"), "aws_secret_access_key": env.var("AO_S3_USER_SECRET_KEY")},
    }))
    .unwrap();
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let _operator = Operator::start(&ns, "10m");
    let store = json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": "ml"}, "spec": {
        "path": format!("s3://{bucket}"),
        "endpoint": {"url": env.var("AO_S3_ENDPOINT"), "addressingStyle": "Path"},
        "auth": {"secretRef": {"name": "minio-keys"}},
        "provisioning": "Create",
        "deletionPolicy": "Delete",
    }});
    let stores: Api<ArtifactStore> = Api::namespaced(client.clone(), &ns);
    stores.patch("ml", &PatchParams::apply("tests"), &Patch::Apply(&store)).await.unwrap();
    eventually(Duration::from_secs(60), "the store to be Ready with its finalizer", || async {
        let store = stores.get("ml").await.unwrap();
        let ready = store.status.as_ref()?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && !store.metadata.finalizers.clone().unwrap_or_default().is_empty()).then_some(())
    })
    .await;

    // Stores left by earlier tests whose operators are gone would hold the CRD's deletion forever
    // with their finalizers: release them (only ours is watched by a live operator).
    for leftover in Api::<ArtifactStore>::all(client.clone()).list(&Default::default()).await.unwrap() {
        let leftover_ns = leftover.metadata.namespace.clone().unwrap_or_default();
        if leftover_ns != ns && leftover.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty()) {
            let api: Api<ArtifactStore> = Api::namespaced(client.clone(), &leftover_ns);
            let name = leftover.metadata.name.clone().unwrap();
            api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
                .await
                .unwrap();
        }
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("artifactstores.artifacts.dev", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(90), "the CRD to be gone", || async {
        crds.get_opt("artifactstores.artifacts.dev").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(common::s3_root().head_bucket().bucket(&bucket).send().await.is_ok(), "the bucket survives the CRD");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap();
    let retained =
        events.items.iter().find(|e| e.reason.as_deref() == Some("BucketRetained")).expect("a BucketRetained Event");
    assert!(retained.message.as_deref().unwrap_or_default().contains("CRD is being deleted"), "{:?}", retained.message);

    // Leave the CRDs installed for whatever runs next.
    for crd in artifact_operator::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("artifact-operator-tests").force(), &Patch::Apply(&crd)).await.unwrap();
    }
}
