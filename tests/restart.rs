//! A restarted operator knows from its watches alone that what it published still holds what it
//! wrote (each object carries the digest it was published with, and its field managers say nobody
//! else wrote it), so it reads none of it back, nor the inputs the last process verified (they are
//! read when each store's check falls due); and a change a user made while it was down is still
//! seen and undone.

mod common;

use std::time::Duration;

use common::store::minio_spec;
use common::{Operator, apply, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const STORES: usize = 6;
const TIMEOUT: Duration = Duration::from_secs(90);

/// Whether every store and Stack is Ready for its generation.
async fn all_ready(client: &Client, ns: &str) -> bool {
    let mut ready = 0;
    for kind in ["ArtifactStore", "Stack"] {
        let api = common::argo::resource(&json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": kind}));
        let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), ns, &api);
        for object in api.list(&Default::default()).await.unwrap() {
            let conditions = object.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let generation = object.metadata.generation;
            ready += conditions
                .iter()
                .filter(|c| {
                    c["type"] == "Ready" && c["status"] == "True" && c["observedGeneration"].as_i64() == generation
                })
                .count();
        }
    }
    ready == 2 * STORES
}

async fn gets(operator: &Operator) -> f64 {
    operator.counter("artifact_operator_kube_requests_total{verb=\"get\"}").await
}

#[tokio::test]
async fn a_restart_reads_back_nothing_it_published_and_still_undoes_a_user_s_edit() {
    let (client, ns, bucket) = common::setup_with_bucket("restart").await;
    apply(&client, &ns, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}})).await;
    for i in 0..STORES {
        let mut spec = minio_spec(&bucket, json!({}));
        spec["path"] = json!(format!("s3://{bucket}/team-{i}"));
        apply(
            &client,
            &ns,
            json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore",
            "metadata": {"name": format!("ml-{i}")}, "spec": spec}),
        )
        .await;
        apply(
            &client,
            &ns,
            json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack",
            "metadata": {"name": format!("ml-{i}")}, "spec": {
                "artifactStoreRef": {"name": format!("ml-{i}")},
                "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"},
                // Every Stack owns a key of the namespace's `artifact-repositories`, the first
                // also its default annotation.
                "outputs": {"formats": ["ZenML", "Argo"], "argoDefaultRepository": i == 0},
            }}),
        )
        .await;
    }
    let first = Operator::start(&ns, "10m");
    eventually(TIMEOUT, "every store and Stack Ready", || async { all_ready(&client, &ns).await.then_some(()) }).await;
    // What the first process published: each store's ConfigMap and Secret, each Stack's ConfigMap.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let published = config_maps.get("ml-0-stack").await.unwrap();
    let digest = published.metadata.annotations.clone().unwrap_or_default();
    assert!(digest.contains_key("artifacts.dev/published-digest"), "published with its digest: {digest:?}");
    let repositories = config_maps.get("artifact-repositories").await.unwrap();
    let annotations = repositories.metadata.annotations.clone().unwrap_or_default();
    for i in 0..STORES {
        let part = format!("parts.artifacts.dev/ml-{i}");
        assert!(annotations.contains_key(&part), "each Stack's part with its digest: {annotations:?}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(first);

    // A restart with nothing changed: the new process lists, and reads back none of the 3 x 6
    // objects it published, nor the shared `artifact-repositories` its 6 Stacks wrote into. The stores' status says Ready with the keys' Secret at the version
    // the watch shows: the keys are read when the first check falls due (10 minutes and more from
    // now), not at the start.
    let second = Operator::start(&ns, "10m");
    eventually(TIMEOUT, "the new process's /readyz", || async {
        (second.status("/readyz").await.0 == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reads = gets(&second).await;
    let writes = second.counter("artifact_operator_kube_requests_total{verb=\"update\"}").await
        + second.counter("artifact_operator_kube_requests_total{verb=\"create\"}").await
        + second.counter("artifact_operator_kube_requests_total{verb=\"patch\"}").await;
    println!("restart with {} published objects: {reads} GETs, {writes} writes", 3 * STORES);
    // GETs count lists too, but the environment's apiserver streams the watches' first lists (they
    // are watches), and the sweep lists no shared ConfigMap the caches say is absent. None of the
    // 18 published objects, not the Secret of keys, and not the ServiceAccount the Stacks name
    // (its watch keeps what is read of it).
    assert_eq!(reads, 0.0, "{reads} GETs after a restart");
    assert_eq!(writes, 0.0, "nothing written after a restart");
    drop(second);

    // A user edits published objects while no operator runs: a Stack's ConfigMap, a store's
    // ConfigMap, a store's env Secret, and a Stack's key of `artifact-repositories` (removed). The
    // next process sees each edit and restores what was published, without waiting for the
    // store's check to fall due.
    let store_published = config_maps.get("ml-1-artifact-store").await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let env_published = secrets.get("ml-2-aws-credentials").await.unwrap();
    let by_hand = PatchParams { field_manager: Some("kubectl-edit".into()), ..Default::default() };
    let edit = json!({"data": {"AWS_REGION": "edited-by-hand"}});
    for name in ["ml-0-stack", "ml-1-artifact-store"] {
        config_maps.patch(name, &by_hand, &Patch::Merge(&edit)).await.unwrap();
    }
    let edit = json!({"stringData": {"AWS_ACCESS_KEY_ID": "edited-by-hand"}});
    secrets.patch("ml-2-aws-credentials", &by_hand, &Patch::Merge(&edit)).await.unwrap();
    let removed = json!({"data": {"ml-3": null}});
    config_maps.patch("artifact-repositories", &by_hand, &Patch::Merge(&removed)).await.unwrap();
    let keys = |config_map: ConfigMap| config_map.data.unwrap_or_default().into_keys().collect::<Vec<_>>();
    let left = keys(config_maps.get("artifact-repositories").await.unwrap());
    assert!(!left.contains(&"ml-3".to_owned()) && left.len() == STORES - 1, "removed by hand: {left:?}");
    // (A short resync: the stores' first checks fall due within seconds.)
    let third = Operator::start(&ns, "4s");
    eventually(TIMEOUT, "the edits undone", || async {
        let stack = config_maps.get("ml-0-stack").await.ok()?.data == published.data;
        let store = config_maps.get("ml-1-artifact-store").await.ok()?.data == store_published.data;
        let env = secrets.get("ml-2-aws-credentials").await.ok()?.data == env_published.data;
        let argo = config_maps.get("artifact-repositories").await.ok()?.data == repositories.data;
        (stack && store && env && argo).then_some(())
    })
    .await;
    // Trusted at the start, each store reads its keys and checks S3 when its check falls due,
    // and stays Ready.
    eventually(TIMEOUT, "every store checked again", || async {
        let checked = third.counter("artifact_operator_store_verifications_total").await;
        (checked >= STORES as f64).then_some(())
    })
    .await;
    assert!(all_ready(&client, &ns).await, "every store and Stack still Ready");
    println!(
        "a user's edit made while the operator was down: undone by the next process ({} GETs)",
        gets(&third).await
    );
}
