//! What one reconcile of an ArtifactStore asks of the apiserver, request by request, against a
//! mock: the finalizer `deletionPolicy: Delete` needs, a status written only when it changed, and
//! the Retain path of a deletion.

use std::sync::Arc;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use serde_json::{Value, json};

use super::{FINALIZER, reconcile};
use crate::api::{ArtifactStore, ArtifactStoreStatus};
use crate::controller::fixtures::{ApiServerVerifier, test_context};

const STORE: &str = "/apis/artifacts.dev/v1alpha1/namespaces/team-a/artifactstores/ml";

fn store(deletion_policy: &str, finalizers: &[&str]) -> ArtifactStore {
    let spec = serde_json::from_value(json!({
        "path": "s3://acme-ml-artifacts/team-a",
        "auth": {"secretRef": {"name": "s3-keys"}},
        "provisioning": "Create",
        "deletionPolicy": deletion_policy,
    }))
    .unwrap();
    let mut store = ArtifactStore::new("ml", spec);
    store.metadata.namespace = Some("team-a".into());
    store.metadata.uid = Some("6f1c1c1e-0000-4000-8000-000000000001".into());
    store.metadata.generation = Some(1);
    store.metadata.resource_version = Some("7".into());
    store.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
    store
}

async fn run(store: ArtifactStore, verify: impl AsyncFnOnce(&mut ApiServerVerifier)) -> crate::controller::Next {
    let (ctx, mut verifier) = test_context();
    let reconciled = tokio::spawn(reconcile(Arc::new(DeserializeGuard(Ok(store))), ctx));
    verify(&mut verifier).await;
    verifier.no_more_requests().await;
    reconciled.await.expect("the reconcile did not panic").expect("the reconcile succeeded")
}

/// The apiserver's answer to a write: the object (the reconcile does not read it).
fn object(store: &ArtifactStore) -> impl Fn(&Value) -> (u16, Value) + use<> {
    let object = serde_json::to_value(store).unwrap();
    move |_| (200, object.clone())
}

#[tokio::test]
async fn delete_adds_the_finalizer_then_reports_a_missing_secret_once_in_one_event() {
    let mut written = Value::Null;
    let answer = object(&store("Delete", &[]));
    run(store("Delete", &[]), async |api: &mut ApiServerVerifier| {
        let (patch, _) = api.handle(Method::PATCH, STORE, &answer).await;
        assert_eq!(patch, json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "7"}}));
        api.not_found("/api/v1/namespaces/team-a/secrets/s3-keys").await;
        let (status, query) = api.handle(Method::PATCH, &format!("{STORE}/status"), &answer).await;
        assert!(query.contains("fieldManager=artifact-operator") && query.contains("force=true"), "{query}");
        let reasons: Vec<&str> =
            status["status"]["conditions"].as_array().unwrap().iter().map(|c| c["reason"].as_str().unwrap()).collect();
        assert_eq!(reasons, ["SecretNotFound", "CredentialsUnavailable", "SecretNotFound"]);
        // One Event for the reconcile, the Ready condition's, not one per condition.
        let event = api.event("team-a").await;
        assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("SecretNotFound")));
        assert!(
            event["note"].as_str().unwrap().starts_with("Ready is False: Secret s3-keys does not exist"),
            "{event}"
        );
        written = status["status"].clone();
    })
    .await;

    // The same inputs again: the status already says so, and nothing is written.
    let mut again = store("Delete", &[FINALIZER]);
    again.status = Some(serde_json::from_value::<ArtifactStoreStatus>(written).unwrap());
    run(again, async |api: &mut ApiServerVerifier| {
        api.not_found("/api/v1/namespaces/team-a/secrets/s3-keys").await;
    })
    .await;
}

#[tokio::test]
async fn retain_deletion_keeps_the_bucket_and_only_removes_the_finalizer() {
    let mut deleted = store("Retain", &[FINALIZER, "example.com/other"]);
    deleted.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    deleted.status = Some(ArtifactStoreStatus {
        bucket: Some("acme-ml-artifacts".into()),
        bucket_created: Some(true),
        ..ArtifactStoreStatus::default()
    });
    let answer = object(&deleted);
    let action = run(deleted, async |api: &mut ApiServerVerifier| {
        let event = api.event("team-a").await;
        assert_eq!(event["reason"], "BucketRetained");
        assert!(event["note"].as_str().unwrap().contains("bucket acme-ml-artifacts is kept: deletionPolicy is Retain"));
        let (patch, _) = api.handle(Method::PATCH, STORE, &answer).await;
        assert_eq!(patch, json!({"metadata": {"finalizers": ["example.com/other"], "resourceVersion": "7"}}));
    })
    .await;
    assert_eq!(action, crate::controller::Next::await_change());
}
