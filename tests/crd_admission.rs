//! The generated CRDs on the real apiserver: they become Established, valid samples are accepted,
//! and bad input is rejected at admission with a message that names the field.

mod common;

use artifact_operator::api::ArtifactStore;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

fn store(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": name}, "spec": spec})
}

fn dynamic_api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("artifacts.dev", "v1alpha1", kind));
    Api::namespaced_with(client.clone(), ns, &resource)
}

async fn create(api: &Api<DynamicObject>, object: Value) -> Result<(), String> {
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn valid_samples_are_accepted() {
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::namespace(&client, "crd-valid").await;
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
    let stack = json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "s"},
        "spec": {"artifactStoreRef": {"name": "keys"}, "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "argo"}, "outputs": {"formats": ["ZenML", "Argo", "KFP"], "argoDefaultRepository": true}}});
    create(&stacks, stack).await.unwrap();
}

#[tokio::test]
async fn bad_input_is_rejected_with_a_message_naming_the_field() {
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::namespace(&client, "crd-invalid").await;
    let stores = dynamic_api(&client, &ns, "ArtifactStore");
    let keys = json!({"secretRef": {"name": "creds"}});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("missing path", json!({"auth": keys}), "spec.path: Required value"),
        ("no scheme", json!({"path": "my-bucket/x", "auth": keys}), "path must start with s3://"),
        ("short bucket", json!({"path": "s3://ab", "auth": keys}), "must be 3 to 63 characters long"),
        (
            "long bucket",
            json!({"path": format!("s3://{}", "a".repeat(64)), "auth": keys}),
            "must be 3 to 63 characters long",
        ),
        (
            "uppercase bucket",
            json!({"path": "s3://MyBucket", "auth": keys}),
            "only lowercase letters, digits, dots and hyphens",
        ),
        (
            "underscore bucket",
            json!({"path": "s3://my_bucket", "auth": keys}),
            "only lowercase letters, digits, dots and hyphens",
        ),
        (
            "hyphen at end",
            json!({"path": "s3://bucket-", "auth": keys}),
            "must start and end with a lowercase letter or a digit",
        ),
        ("adjacent dots", json!({"path": "s3://my..bucket", "auth": keys}), "two adjacent dots"),
        ("ip address", json!({"path": "s3://192.168.10.1/p", "auth": keys}), "formatted as an IP address"),
        (
            "unknown checksums",
            json!({"path": "s3://bucket", "auth": keys, "endpoint": {"url": "http://minio:9000", "checksums": "Never"}}),
            "supported values: \"WhenRequired\", \"WhenSupported\"",
        ),
        ("xn-- prefix", json!({"path": "s3://xn--bucket", "auth": keys}), "reserved prefixes"),
        ("-s3alias suffix", json!({"path": "s3://bucket-s3alias", "auth": keys}), "reserved suffixes"),
        ("empty segment", json!({"path": "s3://bucket//p", "auth": keys}), "empty segments"),
        (
            "two auth methods",
            json!({"path": "s3://bucket", "auth": {"implicit": {}, "secretRef": {"name": "c"}}}),
            "spec.auth: Invalid value",
        ),
        (
            "no auth method",
            json!({"path": "s3://bucket", "auth": {}}),
            "set exactly one of auth.implicit or auth.secretRef",
        ),
        (
            "Delete with Adopt",
            json!({"path": "s3://bucket", "auth": keys, "deletionPolicy": "Delete"}),
            "spec.deletionPolicy: Forbidden: deletionPolicy Delete requires provisioning Create",
        ),
        (
            "bucket settings with Adopt",
            json!({"path": "s3://bucket", "auth": keys, "bucket": {"versioning": true}}),
            "spec.bucket: Forbidden",
        ),
        (
            "endpoint scheme",
            json!({"path": "s3://bucket", "auth": keys, "endpoint": {"url": "ftp://minio:9000"}}),
            "endpoint.url must be an http:// or https:// URL",
        ),
        (
            "unknown addressing style",
            json!({"path": "s3://bucket", "auth": keys, "endpoint": {"url": "http://minio:9000", "addressingStyle": "Dns"}}),
            "spec.endpoint.addressingStyle: Unsupported value: \"Dns\"",
        ),
        (
            "unknown provisioning",
            json!({"path": "s3://bucket", "auth": keys, "provisioning": "Maybe"}),
            "spec.provisioning: Unsupported value",
        ),
        (
            "unknown encryption",
            json!({"path": "s3://bucket", "auth": keys, "objectDefaults": {"serverSideEncryption": "rot13"}}),
            "spec.objectDefaults.serverSideEncryption: Unsupported value",
        ),
        (
            "kms key without kms",
            json!({"path": "s3://bucket", "auth": keys, "objectDefaults": {"serverSideEncryption": "AES256", "sseKmsKeyId": "k"}}),
            "sseKmsKeyId requires serverSideEncryption aws:kms",
        ),
        (
            "bad role arn",
            json!({"path": "s3://bucket", "auth": {"implicit": {"roleArn": "role/ml"}}}),
            "spec.auth.implicit.roleArn",
        ),
        (
            "too many attempts",
            json!({"path": "s3://bucket", "auth": keys, "client": {"maxAttempts": 100}}),
            "spec.client.maxAttempts",
        ),
    ];
    let mut failures = Vec::new();
    for (name, spec, expected) in &cases {
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
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::namespace(&client, "crd-immutable").await;
    let stores = dynamic_api(&client, &ns, "ArtifactStore");
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
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::namespace(&client, "crd-stack").await;
    let stacks = dynamic_api(&client, &ns, "Stack");
    let base = |spec: Value| json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "s"}, "spec": spec});
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
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::namespace(&client, "crd-zenml").await;
    let stacks = dynamic_api(&client, &ns, "Stack");
    let with = |orchestrator: &str, zenml: Value| {
        json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "s"}, "spec": {
            "artifactStoreRef": {"name": "x"}, "orchestrator": {"type": orchestrator, "serviceAccountName": "a"},
            "zenml": zenml}})
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
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::namespace(&client, "crd-registry").await;
    let stacks = dynamic_api(&client, &ns, "Stack");
    let with = |name: &str, orchestrator: &str, uri: &str| {
        json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": {
            "artifactStoreRef": {"name": "x"},
            "orchestrator": {"type": orchestrator, "serviceAccountName": "a", "containerRegistry": {"uri": uri}}}})
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
    let client = common::client().await;
    common::install_crds(&client).await;
    let ns = common::namespace(&client, "crd-scoped").await;
    let stacks = dynamic_api(&client, &ns, "Stack");
    let with = |extra: Value| {
        let mut spec = json!({"artifactStoreRef": {"name": "x"}, "orchestrator": {"type": "Kubernetes", "serviceAccountName": "a"}});
        for (key, value) in extra.as_object().unwrap() {
            spec[key] = value.clone();
        }
        json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "s"}, "spec": spec})
    };
    let scoped = |fields: Value| {
        let mut credentials = json!({"mode": "Scoped"});
        for (key, value) in fields.as_object().unwrap() {
            credentials[key] = value.clone();
        }
        json!({"credentials": credentials})
    };
    let cases = [
        (scoped(json!({"duration": "5m"})), "duration must be like 15m, 1h or 2h30m, from 15m to 12h"),
        (scoped(json!({"duration": "13h"})), "from 15m to 12h"),
        (scoped(json!({"duration": "1 hour"})), "duration must be like"),
        (scoped(json!({"prefix": "../other"})), "without . or .. parts"),
        (scoped(json!({"prefix": "/a"})), "prefix must be key parts"),
        (scoped(json!({"prefix": "a//b"})), "prefix must be key parts"),
        // IAM reads these as a wildcard, one character and a policy variable: never a scope.
        (scoped(json!({"prefix": "t*"})), "IAM reads them as patterns"),
        (scoped(json!({"prefix": "*"})), "IAM reads them as patterns"),
        (scoped(json!({"prefix": "team-?"})), "IAM reads them as patterns"),
        (scoped(json!({"prefix": "${aws:username}"})), "IAM reads them as patterns"),
        (scoped(json!({"access": "Admin"})), "Unsupported value: \"Admin\""),
        (scoped(json!({"roleArn": "arn:aws:iam::12:role/x"})), "roleArn must be an IAM role ARN"),
        (
            json!({"credentials": {"mode": "Scoped"}, "outputs": {"formats": ["KFP"]}}),
            "Kubeflow Pipelines' launcher takes no session token",
        ),
        (
            json!({"credentials": {"mode": "Scoped"}, "verification": {"inPod": true}}),
            "the in-pod check's image has no shell",
        ),
    ];
    for (extra, expected) in cases {
        let err = create(&stacks, with(extra.clone())).await.unwrap_err();
        assert!(err.contains(expected), "{extra}: {err}");
    }
    let good = scoped(json!({"duration": "2h30m", "prefix": "team-a/runs", "access": "ReadOnly",
                              "roleArn": "arn:aws:iam::123456789012:role/ml"}));
    create(&stacks, with(good)).await.expect("valid scoped credentials are accepted");
}
