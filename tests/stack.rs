//! The Stack reconciler end to end, and the consumer contract: what a pod gets from a Stack works
//! with boto3, s3fs, ZenML's config class, Argo Workflows' published model and the KFP launcher config.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use artifact_operator::api::Stack;
use common::{Operator, apply, eventually, limited_bucket, setup, test_env, user_keys_secret};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

fn store(name: &str, bucket: &str) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": name}, "spec": {
        "path": format!("s3://{bucket}/pipelines"),
        "endpoint": {"url": test_env().var("AO_S3_ENDPOINT"), "addressingStyle": "Path"},
        "auth": {"secretRef": {"name": "minio-keys"}},
    }})
}

fn stack(name: &str, store: &str, formats: Value) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": {
        "artifactStoreRef": {"name": store},
        "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "runner"},
        "outputs": {"formats": formats, "argoDefaultRepository": true},
    }})
}

fn service_account(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
}

/// Waits for the Stack's Ready condition to have `status` and `reason` for its generation.
async fn wait_for(client: &Client, ns: &str, name: &str, status: &str, reason: &str) -> Stack {
    let api: Api<Stack> = Api::namespaced(client.clone(), ns);
    eventually(TIMEOUT, &format!("stack {ns}/{name} Ready={status} ({reason})"), || async {
        let stack = api.get_opt(name).await.unwrap()?;
        let ready = stack.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
        (ready.status == status && ready.reason == reason && ready.observed_generation == stack.metadata.generation)
            .then_some(stack)
    })
    .await
}

fn message(stack: &Stack) -> String {
    stack.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().message.clone()
}

async fn config_map(client: &Client, ns: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await.unwrap()
}

#[tokio::test]
async fn stack_follows_its_store_and_service_account_through_their_lifecycle() {
    let (client, ns, bucket) = common::setup_with_bucket("stk-life").await;
    let _operator = Operator::start(&ns, "10m");

    apply(&client, &ns, stack("prod", "ml", json!(["ZenML"]))).await;
    let waiting = wait_for(&client, &ns, "prod", "False", "ArtifactStoreNotFound").await;
    assert!(message(&waiting).contains("ArtifactStore ml does not exist"));

    apply(&client, &ns, store("ml", &bucket)).await;
    let waiting = wait_for(&client, &ns, "prod", "False", "ServiceAccountNotFound").await;
    assert!(message(&waiting).contains("runner"));

    apply(&client, &ns, service_account("runner")).await;
    let ready = wait_for(&client, &ns, "prod", "True", "Ready").await;
    let status = ready.status.clone().unwrap();
    let cm = config_map(&client, &ns, "prod-stack").await.expect("the stack's ConfigMap");
    let annotations = cm.metadata.annotations.clone().unwrap();
    assert_eq!(annotations.get("artifacts.dev/content-hash"), status.content_hash.as_ref());
    assert_eq!(status.config_map_name.as_deref(), Some("prod-stack"));
    let data = cm.data.clone().unwrap();
    assert!(data.contains_key("zenml-stack.json") && !data.contains_key("argo-artifact-repository"));
    assert_eq!(cm.metadata.owner_references.unwrap()[0].kind, "Stack");

    // Changing the formats re-renders, and the hash follows.
    apply(&client, &ns, stack("prod", "ml", json!(["ZenML", "Argo", "KFP"]))).await;
    let changed = wait_for(&client, &ns, "prod", "True", "Ready").await;
    let new_hash = changed.status.unwrap().content_hash;
    assert_ne!(new_hash, status.content_hash);
    let cm = config_map(&client, &ns, "prod-stack").await.unwrap();
    let data = cm.data.unwrap();
    assert!(data.contains_key("argo-artifact-repository") && data.contains_key("kfp-launcher.yaml"));
    assert_eq!(
        cm.metadata.annotations.unwrap().get("workflows.argoproj.io/default-artifact-repository").map(String::as_str),
        Some("argo-artifact-repository")
    );

    // The store turns not ready: the stack says so, with the store's own reason.
    common::secret(
        &client,
        &ns,
        "minio-keys",
        &[("aws_access_key_id", test_env().var("AO_S3_USER_ACCESS_KEY")), ("aws_secret_access_key", "wrong-secret")],
    )
    .await;
    let not_ready = wait_for(&client, &ns, "prod", "False", "ArtifactStoreNotReady").await;
    assert!(message(&not_ready).contains("SignatureDoesNotMatch"), "{}", message(&not_ready));

    // The store is deleted.
    Api::<artifact_operator::api::ArtifactStore>::namespaced(client.clone(), &ns)
        .delete("ml", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(&client, &ns, "prod", "False", "ArtifactStoreNotFound").await;

    // The stack is deleted: the real garbage collector removes its ConfigMap.
    Api::<Stack>::namespaced(client.clone(), &ns).delete("prod", &DeleteParams::default()).await.unwrap();
    eventually(TIMEOUT, "the stack's ConfigMap to be garbage-collected", || async {
        config_map(&client, &ns, "prod-stack").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_pod_with_the_stack_config_writes_and_reads_artifacts_with_real_clients() {
    let (client, ns, bucket) = common::setup_with_bucket("stk-consumer").await;
    apply(&client, &ns, service_account("runner")).await;
    apply(&client, &ns, store("ml", &bucket)).await;
    apply(&client, &ns, stack("prod", "ml", json!(["ZenML", "Argo", "KFP"]))).await;
    let _operator = Operator::start(&ns, "10m");
    wait_for(&client, &ns, "prod", "True", "Ready").await;

    let data = config_map(&client, &ns, "prod-stack").await.unwrap().data.unwrap();
    let secret = Api::<Secret>::namespaced(client.clone(), &ns).get("ml-aws-credentials").await.unwrap();
    let canary = test_env().var("AO_S3_USER_SECRET_KEY");
    assert!(!serde_json::to_string(&data).unwrap().contains(canary), "no secret value in the stack's ConfigMap");

    // Exactly what a pod gets: envFrom of the ConfigMap (keys that are variable names) and of the
    // credentials Secret, and the ConfigMap mounted as files.
    let files = tempfile::tempdir().unwrap();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &data {
        std::fs::write(files.path().join(key), value).unwrap();
        if key.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
            env.insert(key.clone(), value.clone());
        }
    }
    for (key, value) in secret.data.unwrap() {
        env.insert(key, String::from_utf8(value.0).unwrap());
    }
    // The namespace's Secrets, by name, for Kubeflow's launcher, which reads the one it names.
    let secrets = tempfile::tempdir().unwrap();
    for secret in Api::<Secret>::namespaced(client.clone(), &ns).list(&Default::default()).await.unwrap() {
        let dir = secrets.path().join(secret.metadata.name.unwrap());
        std::fs::create_dir(&dir).unwrap();
        for (key, value) in secret.data.unwrap_or_default() {
            std::fs::write(dir.join(key), value.0).unwrap();
        }
    }
    let python = format!("{}/bin/python", test_env().var("AO_VENV"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consumers/consume.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(files.path())
        .arg(secrets.path())
        .env_clear()
        .envs(&env)
        .env("HOME", files.path())
        .env("ZENML_CONFIG_PATH", files.path().join("zenml-config"))
        .env("ZENML_ANALYTICS_OPT_IN", "false")
        .output()
        .expect("the consumer script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "consumer failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for client in ["boto3:", "s3fs:", "zenml:", "argo:", "kfp:"] {
        assert!(stdout.contains(client), "{client} check missing:\n{stdout}");
    }
    // The artifacts landed under the stack's prefix.
    let listed = common::s3_root().list_objects_v2().bucket(&bucket).prefix("pipelines/").send().await.unwrap();
    assert_eq!(listed.key_count(), Some(3), "one object each from boto3, s3fs and the KFP launcher config");
}

fn example_objects(file: &str) -> Vec<Value> {
    let path = format!("{}/deploy/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.replace("http://minio.storage.svc:9000", test_env().var("AO_S3_ENDPOINT"));
    let text = text.replace("s3://ml-artifacts/", &format!("s3://{}/", limited_bucket("example")));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .collect()
}

#[tokio::test]
async fn the_examples_are_accepted_and_the_minio_one_becomes_ready() {
    let (client, ns) = setup("stk-examples").await;
    for file in ["minio-keys.yaml", "argo-workflows.yaml"] {
        for object in example_objects(file) {
            apply(&client, &ns, object).await;
        }
    }
    // The EKS example points at AWS itself: applied where no operator watches, so nothing here
    // tries to reach AWS; admission is what is tested.
    let elsewhere = common::namespace(&client, "stk-examples-eks").await;
    for object in example_objects("eks-irsa.yaml") {
        apply(&client, &elsewhere, object).await;
    }
    user_keys_secret(&client, &ns, "minio-keys").await;
    let _operator = Operator::start(&ns, "10m");
    wait_for(&client, &ns, "minio", "True", "Ready").await;
    // argo-artifacts does not exist on the local MinIO: the stack waits for its store.
    let waiting = wait_for(&client, &ns, "argo", "False", "ArtifactStoreNotReady").await;
    assert!(message(&waiting).contains("ArtifactStore argo is not ready"), "{}", message(&waiting));
}
