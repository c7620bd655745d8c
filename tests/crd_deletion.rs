//! Deleting the ArtifactStore CRD deletes every ArtifactStore, but no bucket: neither under an
//! operator with cluster RBAC (which reads the CRD) nor under one with the chart's namespaced RBAC
//! (which cannot, and asks with a dry-run create). A test binary of its own that the test command
//! runs alone, before any other (`test = false` keeps it out of a plain `cargo test`), so no other
//! test loses its CRD meanwhile.

mod common;

use std::time::Duration;

use artifact_operator::api::ArtifactStore;
use common::conditions::is_true;
use common::store::{apply_store, minio_spec_at};
use common::{Operator, eventually};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

/// A store in `ns` whose operator creates `bucket` and would delete it with the store.
async fn deletable_store(client: &Client, ns: &str, bucket: &str) {
    let spec = minio_spec_at(&format!("s3://{bucket}"), json!({"provisioning": "Create", "deletionPolicy": "Delete"}));
    apply_store(client, ns, "ml", spec).await;
    let stores: Api<ArtifactStore> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(60), "the store to be Ready with its finalizer", || async {
        let store = stores.get("ml").await.unwrap();
        (is_true(&store, "Ready") && !store.metadata.finalizers.clone().unwrap_or_default().is_empty()).then_some(())
    })
    .await;
}

async fn retained_event(client: &Client, ns: &str) -> String {
    let events = Api::<Event>::namespaced(client.clone(), ns).list(&Default::default()).await.unwrap();
    let retained =
        events.items.iter().find(|e| e.reason.as_deref() == Some("BucketRetained")).expect("a BucketRetained Event");
    retained.message.clone().unwrap_or_default()
}

#[tokio::test]
async fn deleting_the_crd_deletes_no_bucket() {
    let client = common::client().await;
    common::install_crds(&client).await;
    let (_, cluster_ns, cluster_bucket) = common::setup_with_bucket("crd-delete").await;
    let (_, namespaced_ns, namespaced_bucket) = common::setup_with_bucket("crd-delete-nsrbac").await;
    let _cluster_operator = Operator::start(&cluster_ns, "10m");
    let (kubeconfig, _) = common::chart::namespaced_release(&client, &namespaced_ns).await;
    let _namespaced_operator = Operator::start_as(&kubeconfig, &namespaced_ns, "10m", &[]);
    deletable_store(&client, &cluster_ns, &cluster_bucket).await;
    deletable_store(&client, &namespaced_ns, &namespaced_bucket).await;

    // Stores left by earlier tests whose operators are gone would hold the CRD's deletion forever
    // with their finalizers: release them (only ours are watched by live operators).
    for leftover in Api::<ArtifactStore>::all(client.clone()).list(&Default::default()).await.unwrap() {
        let leftover_ns = leftover.metadata.namespace.clone().unwrap_or_default();
        let ours = leftover_ns == cluster_ns || leftover_ns == namespaced_ns;
        if !ours && leftover.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty()) {
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
    for bucket in [&cluster_bucket, &namespaced_bucket] {
        assert!(common::s3_root().head_bucket().bucket(bucket).send().await.is_ok(), "{bucket} survives the CRD");
    }
    for ns in [&cluster_ns, &namespaced_ns] {
        let message = retained_event(&client, ns).await;
        assert!(message.contains("CRD is being deleted"), "{ns}: {message}");
    }

    // Leave the CRDs installed for whatever runs next.
    for crd in artifact_operator::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("artifact-operator-tests").force(), &Patch::Apply(&crd)).await.unwrap();
    }
}
