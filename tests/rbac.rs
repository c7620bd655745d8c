//! Least privilege, proven: the chart's RBAC applied to the real apiserver, and the operator run
//! with a token of the chart's ServiceAccount reconciles stores and stacks with no Forbidden error;
//! in namespaced mode the same kind of token cannot read Secrets outside its namespaces.

mod common;

use std::time::Duration;

use artifact_operator::api::Stack;
use artifact_operator::store::FINALIZER;
use common::chart::{account_and_lease, apply_all, client_for, namespaced_release, render, token_kubeconfig};
use common::conditions::{Wanted, is_true, wait_for_condition};
use common::store::{apply_store, minio_spec_at};
use common::{Operator, apply, eventually, limited_bucket, user_keys_secret};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// A store's spec at `s3://BUCKET/p` whose operator creates the bucket and deletes it with the store.
fn deletable_spec(bucket: &str) -> Value {
    minio_spec_at(&format!("s3://{bucket}/p"), json!({"provisioning": "Create", "deletionPolicy": "Delete"}))
}

#[tokio::test]
async fn the_operator_works_with_exactly_the_charts_permissions() {
    let (client, ns) = common::setup("rbac-cluster").await;
    let operator_ns = common::namespace(&client, "rbac-operator").await;
    // A release of its own: cluster-scoped names (ClusterRole, binding) must not collide with
    // other tests that install the chart.
    let release = format!("artifact-operator-{}", fastrand::u32(..) % 1_000_000);
    let objects = render(&release, &operator_ns, &[format!("rbac.secretWriteNamespaces={{{ns}}}")]);
    assert!(objects.iter().any(|o| o["kind"] == "ClusterRole"));
    apply_all(&client, &objects, &operator_ns).await;

    let kubeconfig = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{ns}.kubeconfig"));
    let (account, lease) = account_and_lease(&objects);
    token_kubeconfig(&client, &operator_ns, &account, &kubeconfig).await;
    // The operator creates the bucket (provisioning Create), so that deletion can remove it too.
    let bucket = limited_bucket("rbac");
    user_keys_secret(&client, &ns, "minio-keys").await;
    apply(&client, &ns, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}})).await;
    apply_store(&client, &ns, "ml", deletable_spec(&bucket)).await;
    apply(
        &client,
        &ns,
        json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "prod"}, "spec": {
        "artifactStoreRef": {"name": "ml"}, "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"},
        "outputs": {"formats": ["ZenML", "Argo", "KFP"]}}}),
    )
    .await;

    let flags = ["--leader-election", "--lease-namespace", &operator_ns, "--lease-name", &lease];
    let operator = Operator::start_as(&kubeconfig, &ns, "10m", &flags);
    // Ready under the chart's RBAC.
    wait_for_condition::<Stack>(&client, &ns, "prod", "Ready", Wanted::True, Duration::from_secs(60)).await;
    // Deleting the store exercises the finalizer, the namespace and CRD checks and bucket deletion.
    Api::<artifact_operator::api::ArtifactStore>::namespaced(client.clone(), &ns)
        .delete("ml", &Default::default())
        .await
        .unwrap();
    let stores: Api<artifact_operator::api::ArtifactStore> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(60), "the store to be deleted", || async {
        stores.get_opt("ml").await.unwrap().is_none().then_some(())
    })
    .await;
    let log = operator.log_text();
    assert!(
        log.contains("acquired the lease") && log.contains("published the store's configuration"),
        "the operator did its work"
    );
    assert!(
        common::s3_root().head_bucket().bucket(&bucket).send().await.is_err(),
        "the created, empty bucket was deleted"
    );
    assert!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "the operator hit a permission it lacks:\n{}",
        log.lines().filter(|l| l.to_lowercase().contains("forbidden")).take(5).collect::<Vec<_>>().join("\n")
    );

    // What the token must not do: write Secrets where it was not granted, or anywhere cluster-wide.
    let as_operator = client_for(&kubeconfig).await;
    let elsewhere = common::namespace(&client, "rbac-elsewhere").await;
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "x"}, "stringData": {"k": "v"}})).unwrap();
    let err = Api::<Secret>::namespaced(as_operator.clone(), &elsewhere)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err}");
}

#[tokio::test]
async fn in_namespaced_mode_the_token_cannot_read_secrets_of_other_namespaces() {
    let (client, watched) = common::setup("rbac-ns-watched").await;
    let other = common::namespace(&client, "rbac-ns-other").await;
    let (kubeconfig, objects) = namespaced_release(&client, &watched).await;
    assert!(
        !objects.iter().any(|o| o["kind"] == "ClusterRole" || o["kind"] == "ClusterRoleBinding"),
        "no cluster-wide grant"
    );
    common::secret(&client, &watched, "readable", &[("k", "v")]).await;
    common::secret(&client, &other, "hidden", &[("k", "v")]).await;
    let as_operator = client_for(&kubeconfig).await;
    Api::<Secret>::namespaced(as_operator.clone(), &watched)
        .get("readable")
        .await
        .expect("secrets of a watched namespace are readable");
    let err = Api::<Secret>::namespaced(as_operator.clone(), &other).get("hidden").await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err}");
    let err = Api::<Secret>::all(as_operator).list(&Default::default()).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err}");

    // /readyz waits for the caches: an operator pointed at a namespace its Role does not cover
    // never syncs them and stays unready, while the one on its own namespace turns ready.
    let wrong = Operator::start_as(&kubeconfig, &other, "10m", &[]);
    let right = Operator::start_as(&kubeconfig, &watched, "10m", &[]);
    eventually(Duration::from_secs(30), "the operator on its own namespace to be ready", || async {
        (right.status("/readyz").await.0 == 200).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the forbidden list to be logged", || async {
        wrong.log_text().contains("403").then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(wrong.status("/readyz").await, (503, "the caches have not synced yet".to_owned()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(wrong.status("/healthz").await.0, 200, "failing watches are tolerated for a while");
}

#[tokio::test]
async fn the_rendered_manifests_in_deploy_apply() {
    let client = common::client().await;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/artifact-operator.yaml")).unwrap();
    let objects: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .filter_map(|document| serde::Deserialize::deserialize(document).ok())
        .filter(|value: &Value| value.is_object())
        .collect();
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        &kinds[..3],
        ["CustomResourceDefinition", "CustomResourceDefinition", "Namespace"],
        "CRDs and the Namespace come first"
    );
    assert!(kinds.contains(&"Deployment") && kinds.contains(&"ClusterRole"));
    apply_all(&client, &objects, "artifact-operator").await;
}

#[tokio::test]
async fn in_namespaced_mode_deleting_a_store_deletes_its_bucket_and_deleting_the_namespace_keeps_it() {
    let (client, watched) = common::setup("rbac-nsdel").await;
    let (kubeconfig, _) = namespaced_release(&client, &watched).await;
    user_keys_secret(&client, &watched, "minio-keys").await;
    let (gone_bucket, kept_bucket) = (limited_bucket("rbac-gone"), limited_bucket("rbac-kept"));
    for (name, bucket) in [("gone", &gone_bucket), ("kept", &kept_bucket)] {
        apply_store(&client, &watched, name, deletable_spec(bucket)).await;
    }
    let _operator = Operator::start_as(&kubeconfig, &watched, "10m", &[]);
    let stores: Api<artifact_operator::api::ArtifactStore> = Api::namespaced(client.clone(), &watched);
    for name in ["gone", "kept"] {
        eventually(Duration::from_secs(60), &format!("{name} to be Ready with its finalizer"), || async {
            let store = stores.get(name).await.ok()?;
            (is_true(&store, "Ready") && store.metadata.finalizers.is_some_and(|f| !f.is_empty())).then_some(())
        })
        .await;
    }
    let bucket_exists =
        |bucket: String| async move { common::s3_root().head_bucket().bucket(bucket).send().await.is_ok() };

    // Without reading the Namespace or the CRD, the operator still tells that this deletion is
    // the store's own: the bucket it created goes with it.
    stores.delete("gone", &Default::default()).await.unwrap();
    eventually(Duration::from_secs(60), "the store to be deleted", || async {
        stores.get_opt("gone").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(!bucket_exists(gone_bucket).await, "the store's own deletion deleted its empty bucket");

    // Deleting the namespace deletes the operator's Role in it, usually before the stores (built-in
    // kinds go first), so the operator can no longer release its finalizer: the namespace waits for
    // an admin to remove it, as the README says. When the operator sees the store's deletion first,
    // it releases the finalizer itself (the namespace is terminating: the bucket is retained). The
    // bucket is never at risk either way.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces.delete(&watched, &Default::default()).await.unwrap();
    let waits_for_admin = eventually(
        Duration::from_secs(60),
        "the namespace to wait on the store's finalizer, or the operator to release it",
        || async {
            let released = stores
                .get_opt("kept")
                .await
                .ok()
                .flatten()
                .is_none_or(|s| s.metadata.finalizers.is_none_or(|f| f.is_empty()));
            if released {
                return Some(false);
            }
            let namespace = namespaces.get(&watched).await.unwrap();
            let conditions = namespace.status?.conditions?;
            conditions
                .iter()
                .any(|c| {
                    c.type_ == "NamespaceFinalizersRemaining"
                        && c.message.as_deref().unwrap_or_default().contains(FINALIZER)
                })
                .then_some(true)
        },
    )
    .await;
    assert!(bucket_exists(kept_bucket.clone()).await, "the bucket is kept while the namespace goes");
    if waits_for_admin {
        stores
            .patch("kept", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(120), "the namespace to be gone", || async {
        namespaces.get_opt(&watched).await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(bucket_exists(kept_bucket).await, "deleting the namespace deleted no bucket");
}
