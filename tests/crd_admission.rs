//! The generated CRDs on the real apiserver: they become Established, valid samples are accepted,
//! and bad input is rejected at admission with a message that names the field.

mod common;

use artifact_operator::api::ArtifactStore;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Deserialize;
use serde_json::{Value, json};

fn store(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": name}, "spec": spec})
}

fn stack(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": spec})
}

fn dynamic_api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("artifacts.dev", "v1alpha1", kind));
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// The CRDs installed, a fresh namespace for `test`, and the API of `kind` objects in it.
async fn api_in_new_namespace(test: &str, kind: &str) -> Api<DynamicObject> {
    let (client, ns) = common::setup(test).await;
    dynamic_api(&client, &ns, kind)
}

async fn create(api: &Api<DynamicObject>, object: Value) -> Result<(), String> {
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.map(|_| ()).map_err(|e| e.to_string())
}

/// An ArtifactStore spec the CRD must refuse: a case of tests/cases/crd_admission/stores.yaml.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefusedStore {
    /// What the case tries.
    name: String,
    /// The whole spec of the store created.
    spec: Value,
    /// A part of the message the apiserver must refuse it with.
    error: String,
}

/// Fields of a Stack's spec the CRD must refuse: a case of
/// tests/cases/crd_admission/scoped_stacks.yaml.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefusedStack {
    /// The fields set on the spec of an otherwise valid Stack orchestrated by Kubernetes.
    extra: Value,
    /// A part of the message the apiserver must refuse it with.
    error: String,
}

/// The fixtures read without a cluster, no two stores share a name, and every extra is an object.
#[test]
fn the_refused_cases_are_well_formed() {
    let stores: Vec<RefusedStore> = common::cases("crd_admission/stores.yaml");
    let names = stores.iter().map(|case| case.name.as_str()).collect::<std::collections::BTreeSet<_>>();
    assert!(!stores.is_empty() && names.len() == stores.len(), "{} stores, {} names", stores.len(), names.len());
    let stacks: Vec<RefusedStack> = common::cases("crd_admission/scoped_stacks.yaml");
    assert!(!stacks.is_empty() && stacks.iter().all(|case| case.extra.is_object()));
}

#[tokio::test]
async fn valid_samples_are_accepted() {
    let (client, ns) = common::setup("crd-valid").await;
    let stores = dynamic_api(&client, &ns, "ArtifactStore");
    create(
        &stores,
        store("keys", json!({"path": "s3://ml-artifacts/team-a", "auth": {"secretRef": {"name": "creds"}}})),
    )
    .await
    .unwrap();
    // A bucket in an account-regional namespace, and the checksum setting of an S3-compatible server.
    create(
        &stores,
        store(
            "regional",
            json!({"path": "s3://ml-111122223333-us-west-2-an/runs", "region": "us-west-2", "provisioning": "Create",
                   "endpoint": {"url": "http://minio:9000", "checksums": "WhenSupported"},
                   "auth": {"secretRef": {"name": "creds"}}}),
        ),
    )
    .await
    .unwrap();
    create(
        &stores,
        store(
            "full",
            json!({
                "path": "s3://my.bucket-1",
                "region": "eu-west-1",
                "endpoint": {"url": "https://minio.storage:9000", "addressingStyle": "Path", "tls": {"caBundle": {"kind": "Secret", "name": "ca", "key": "ca.pem"}}},
                "auth": {"implicit": {"serviceAccountName": "runner", "roleArn": "arn:aws:iam::123456789012:role/ml"}},
                "client": {"retryMode": "adaptive", "maxAttempts": 5, "connectTimeoutSeconds": 5, "readTimeoutSeconds": 60, "signatureVersion": "s3v4"},
                "objectDefaults": {"serverSideEncryption": "aws:kms", "sseKmsKeyId": "alias/ml", "acl": "bucket-owner-full-control", "storageClass": "INTELLIGENT_TIERING"},
                "provisioning": "Create",
                "bucket": {"versioning": true, "tags": {"team": "a"}, "lifecycle": {"noncurrentVersionExpirationDays": 30, "abortIncompleteMultipartUploadDays": 7}},
                "deletionPolicy": "Delete",
                "verification": {"writeProbe": true}
            }),
        ),
    )
    .await
    .unwrap();
    let typed: Api<ArtifactStore> = Api::namespaced(client.clone(), &ns);
    let keys = typed.get("keys").await.unwrap();
    assert_eq!(
        keys.spec.provisioning,
        artifact_operator::api::artifact_store::Provisioning::Adopt,
        "defaults are applied"
    );
    assert_eq!(keys.spec.deletion_policy, artifact_operator::api::artifact_store::DeletionPolicy::Retain);

    let stacks = dynamic_api(&client, &ns, "Stack");
    let spec = json!({"artifactStoreRef": {"name": "keys"}, "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "argo"}, "outputs": {"formats": ["ZenML", "Argo", "KFP"], "argoDefaultRepository": true}});
    create(&stacks, stack("s", spec)).await.unwrap();
}

#[tokio::test]
async fn bad_input_is_rejected_with_a_message_naming_the_field() {
    let cases: Vec<RefusedStore> = common::cases("crd_admission/stores.yaml");
    let stores = api_in_new_namespace("crd-invalid", "ArtifactStore").await;
    let mut failures = Vec::new();
    for RefusedStore { name, spec, error: expected } in &cases {
        match create(&stores, store("bad", spec.clone())).await {
            Ok(()) => failures.push(format!("{name}: accepted")),
            Err(message) if !message.contains(expected) => {
                failures.push(format!("{name}: message {message:?} lacks {expected:?}"))
            }
            Err(message) => println!("{name}: rejected: {message}"),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[tokio::test]
async fn the_bucket_in_path_cannot_change_but_the_prefix_can() {
    let stores = api_in_new_namespace("crd-immutable", "ArtifactStore").await;
    create(&stores, store("s", json!({"path": "s3://first-bucket/a", "auth": {"secretRef": {"name": "c"}}})))
        .await
        .unwrap();
    let params = PatchParams::default();
    stores
        .patch("s", &params, &Patch::Merge(json!({"spec": {"path": "s3://first-bucket/b"}})))
        .await
        .expect("the prefix may change");
    let err = stores
        .patch("s", &params, &Patch::Merge(json!({"spec": {"path": "s3://other-bucket/b"}})))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("the bucket in path cannot change once set"), "{err}");
}

#[tokio::test]
async fn stack_rejects_unknown_orchestrator_and_missing_reference() {
    let stacks = api_in_new_namespace("crd-stack", "Stack").await;
    let base = |spec: Value| stack("s", spec);
    let err = create(
        &stacks,
        base(
            json!({"artifactStoreRef": {"name": "x"}, "orchestrator": {"type": "Airflow", "serviceAccountName": "a"}}),
        ),
    )
    .await
    .unwrap_err();
    assert!(err.contains("spec.orchestrator.type: Unsupported value: \"Airflow\""), "{err}");
    let err = create(&stacks, base(json!({"orchestrator": {"type": "Kubernetes", "serviceAccountName": "a"}})))
        .await
        .unwrap_err();
    assert!(err.contains("spec.artifactStoreRef: Required value"), "{err}");
    let err = create(&stacks, base(json!({"artifactStoreRef": {"name": "x"}, "orchestrator": {"type": "Kubernetes", "serviceAccountName": "a"}, "outputs": {"formats": ["Parquet"]}}))).await.unwrap_err();
    assert!(err.contains("spec.outputs.formats[0]: Unsupported value"), "{err}");
}

#[tokio::test]
async fn stack_zenml_is_checked_at_admission() {
    let stacks = api_in_new_namespace("crd-zenml", "Stack").await;
    let with = |orchestrator: &str, zenml: Value| {
        let spec = json!({"artifactStoreRef": {"name": "x"}, "orchestrator": {"type": orchestrator, "serviceAccountName": "a"},
            "zenml": zenml});
        stack("s", spec)
    };
    let good = json!({"url": "https://zenml.example.com", "apiKeySecretRef": {"name": "zenml-key"}, "stackName": "team-a.prod"});
    let cases = [
        ("ArgoWorkflows", good.clone(), "spec.zenml: Forbidden: zenml registers ZenML's kubernetes orchestrator"),
        (
            "Kubernetes",
            json!({"url": "zenml.example.com", "apiKeySecretRef": {"name": "k"}}),
            "zenml.url must be an http:// or https:// URL",
        ),
        (
            "Kubernetes",
            json!({"url": "https://zenml.example.com?x=1", "apiKeySecretRef": {"name": "k"}}),
            "zenml.url must be",
        ),
        ("Kubernetes", json!({"url": "https://zenml.example.com"}), "spec.zenml.apiKeySecretRef: Required value"),
        (
            "Kubernetes",
            json!({"url": "https://zenml.example.com", "apiKeySecretRef": {"name": "K"}}),
            "must be a Kubernetes object name",
        ),
        (
            "Kubernetes",
            json!({"url": "https://zenml.example.com", "apiKeySecretRef": {"name": "k"}, "stackName": "my stack"}),
            "must be a ZenML name",
        ),
        (
            "Kubernetes",
            json!({"url": "https://zenml.example.com", "apiKeySecretRef": {"name": "k", "key": "a/b"}}),
            "must be a Secret or ConfigMap key",
        ),
    ];
    for (orchestrator, zenml, expected) in cases {
        let err = create(&stacks, with(orchestrator, zenml.clone())).await.unwrap_err();
        assert!(err.contains(expected), "{zenml}: {err}");
    }
    create(&stacks, with("Kubernetes", good)).await.expect("a valid zenml is accepted");
}

#[tokio::test]
async fn stack_container_registry_is_checked_at_admission() {
    let stacks = api_in_new_namespace("crd-registry", "Stack").await;
    let with = |name: &str, orchestrator: &str, uri: &str| {
        let orchestrator = json!({"type": orchestrator, "serviceAccountName": "a", "containerRegistry": {"uri": uri}});
        stack(name, json!({"artifactStoreRef": {"name": "x"}, "orchestrator": orchestrator}))
    };
    let cases = [
        (
            "ArgoWorkflows",
            "ghcr.io/team",
            "spec.orchestrator.containerRegistry: Forbidden: containerRegistry is the registry of ZenML's kubernetes orchestrator",
        ),
        ("Kubernetes", "https://ghcr.io/team", "containerRegistry.uri must be a registry host"),
        ("Kubernetes", "ghcr.io/Team", "containerRegistry.uri must be a registry host"),
        ("Kubernetes", "ghcr.io/team/", "containerRegistry.uri must be a registry host"),
        ("Kubernetes", "localhost:5000", "ZenML treats containerRegistry.uri localhost:PORT as a local registry"),
    ];
    for (orchestrator, uri, expected) in cases {
        let err = create(&stacks, with("s", orchestrator, uri)).await.unwrap_err();
        assert!(err.contains(expected), "{orchestrator} {uri}: {err}");
    }
    for (name, uri) in [
        ("ecr", "123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
        ("ghcr", "ghcr.io/team/ml-images"),
        ("ip", "10.0.0.5:5000"),
    ] {
        create(&stacks, with(name, "Kubernetes", uri)).await.unwrap_or_else(|e| panic!("{uri} is accepted: {e}"));
    }
}

#[tokio::test]
async fn stack_credentials_are_checked_at_admission() {
    let cases: Vec<RefusedStack> = common::cases("crd_admission/scoped_stacks.yaml");
    let stacks = api_in_new_namespace("crd-scoped", "Stack").await;
    let with = |extra: Value| {
        let mut spec = json!({"artifactStoreRef": {"name": "x"}, "orchestrator": {"type": "Kubernetes", "serviceAccountName": "a"}});
        for (key, value) in extra.as_object().unwrap() {
            spec[key] = value.clone();
        }
        stack("s", spec)
    };
    for RefusedStack { extra, error: expected } in cases {
        let err = create(&stacks, with(extra.clone())).await.unwrap_err();
        assert!(err.contains(&expected), "{extra}: {err}");
    }
    let good = json!({"credentials": {"mode": "Scoped", "duration": "2h30m", "prefix": "team-a/runs",
                                      "access": "ReadOnly", "roleArn": "arn:aws:iam::123456789012:role/ml"}});
    create(&stacks, with(good)).await.expect("valid scoped credentials are accepted");
}
