//! Stacks with scoped credentials in tests: the store and Stack they start from, and the clients
//! that use the session credentials (the SDK with the Secret's keys, boto3 through the
//! credentials process).

use std::path::Path;
use std::time::Duration;

use artifact_operator::api::Stack;
use aws_sdk_s3::primitives::ByteStream;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};

use super::conditions::{Wanted, wait_for_condition};
use super::store::{apply_store, minio_spec};
use super::{Operator, apply, setup_with_bucket, test_env};

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A Stack `name` on store `ml`, with the ZenML format (whose pod settings show the wiring).
pub fn stack(name: &str, credentials: Value) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": {
        "artifactStoreRef": {"name": "ml"},
        "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"},
        "outputs": {"formats": ["ZenML"]},
        "credentials": credentials,
    }})
}

/// A namespace with ServiceAccount `runner` and store `ml` at `s3://BUCKET/team`.
pub async fn prepare(test: &str) -> (Client, String, String) {
    let (client, ns, bucket) = setup_with_bucket(test).await;
    apply(&client, &ns, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}})).await;
    let mut spec = minio_spec(&bucket, json!({}));
    spec["path"] = json!(format!("s3://{bucket}/team"));
    apply_store(&client, &ns, "ml", spec).await;
    (client, ns, bucket)
}

/// Waits for the Stack's Ready=True for its generation.
pub async fn ready(client: &Client, ns: &str, name: &str) -> Stack {
    wait_for_condition(client, ns, name, "Ready", Wanted::True, TIMEOUT).await
}

/// A Secret's value as text.
pub fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// The Stack's Secret of scoped credentials.
pub async fn scoped_secret(client: &Client, ns: &str, stack: &str) -> Secret {
    Api::<Secret>::namespaced(client.clone(), ns).get(&format!("{stack}-scoped-credentials")).await.unwrap()
}

/// An S3 client with the session credentials of `secret`.
pub fn s3_with(secret: &Secret) -> aws_sdk_s3::Client {
    let env = test_env();
    let credentials = aws_credential_types::Credentials::new(
        text(secret, "AWS_ACCESS_KEY_ID"),
        text(secret, "AWS_SECRET_ACCESS_KEY"),
        Some(text(secret, "AWS_SESSION_TOKEN")),
        None,
        "scoped",
    );
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(env.var("AO_S3_REGION").to_owned()))
        .endpoint_url(env.var("AO_S3_ENDPOINT"))
        .force_path_style(true)
        .credentials_provider(credentials)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The S3 error code of a put, or "ok".
pub async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> String {
    match s3.put_object().bucket(bucket).key(key).body(ByteStream::from_static(b"scoped")).send().await {
        Ok(_) => "ok".to_owned(),
        Err(error) => aws_sdk_s3::error::ProvideErrorMetadata::code(&error).unwrap_or("no code").to_owned(),
    }
}

/// The S3 error code of a list, or "ok".
pub async fn list(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> String {
    match s3.list_objects_v2().bucket(bucket).prefix(prefix).send().await {
        Ok(_) => "ok".to_owned(),
        Err(error) => aws_sdk_s3::error::ProvideErrorMetadata::code(&error).unwrap_or("no code").to_owned(),
    }
}

/// The STS calls the operator made so far.
pub async fn sts_calls(operator: &Operator) -> f64 {
    operator.counter("artifact_operator_aws_calls_total{service=\"sts\",outcome=\"ok\"}").await
}

/// Runs `tests/consumers/boto3_client.py` with only `config` as AWS configuration (and MinIO's
/// address); returns what it printed.
pub fn boto3(config: &Path, bucket: &str, key: &str, extra: &[&str]) -> String {
    let output = boto3_command(config, bucket, key, extra).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "boto3 failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The command that runs `tests/consumers/boto3_client.py` (see [`boto3`]).
pub fn boto3_command(config: &Path, bucket: &str, key: &str, extra: &[&str]) -> std::process::Command {
    let env = test_env();
    let mut command = std::process::Command::new(format!("{}/bin/python", env.var("AO_VENV")));
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consumers/boto3_client.py"))
        .args([bucket, key])
        .args(extra)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("AWS_CONFIG_FILE", config)
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_ENDPOINT_URL_S3", env.var("AO_S3_ENDPOINT"))
        .env("AWS_REGION", env.var("AO_S3_REGION"))
        .env("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required");
    command
}
