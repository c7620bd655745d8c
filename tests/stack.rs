//! The Stack reconciler end to end, and the consumer contract: what a pod gets from a Stack works
//! with each consumer's own code: boto3, ZenML's CLI and a ZenML pipeline, Argo Workflows' own Go
//! packages (repository types, namespace-default resolution, S3 driver) and the KFP launcher's
//! configuration, against the plain MinIO and the HTTPS one with its private CA (and against
//! versitygw's two, with `AO_S3_SERVER=versitygw`).

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use artifact_operator::api::Stack;
use common::stacks::{
    DEFAULT_ANNOTATION, REPOSITORIES, TIMEOUT, apply_as, config_map, delete_stack, message, namespace_with_store,
    ready_stack, service_account, stack, store, wait_for,
};
use common::store::{apply_store, private_ca_config_map, tls_spec_at};
use common::{
    Operator, apply, argo_uses_the_namespace_default, eventually, limited_bucket, setup, setup_with_absent_bucket,
    test_env, user_keys_secret,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};

fn argo_consumer() -> PathBuf {
    PathBuf::from(test_env().var("AO_CACHE_DIR")).join("bin/argo-consumer")
}

/// Runs a consumer program; returns its stdout, which it also prints.
fn run(mut command: std::process::Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what} runs: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    assert!(output.status.success(), "{what} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test]
async fn stack_follows_its_store_and_service_account_through_their_lifecycle() {
    let (client, ns, bucket) = common::setup_with_bucket("stk-life").await;
    let operator = Operator::start(&ns, "10m");

    apply(&client, &ns, stack("prod", "ml", json!(["ZenML"]), false)).await;
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
    assert!(data.contains_key("zenml-stack.yaml"));
    assert_eq!(cm.metadata.owner_references.unwrap()[0].kind, "Stack");
    assert!(
        config_map(&client, &ns, REPOSITORIES).await.is_none()
            && config_map(&client, &ns, "kfp-launcher").await.is_none()
    );

    // Asking for Argo and KFP puts each where its consumer looks; the stack's own hash is untouched.
    apply(&client, &ns, stack("prod", "ml", json!(["ZenML", "Argo", "KFP"]), true)).await;
    let changed = wait_for(&client, &ns, "prod", "True", "Ready").await;
    assert_eq!(changed.status.unwrap().content_hash, status.content_hash);
    assert!(changed.metadata.finalizers.unwrap().contains(&"artifacts.dev/argo-repository".to_owned()));
    let repositories = config_map(&client, &ns, REPOSITORIES).await.expect("artifact-repositories");
    assert_eq!(repositories.metadata.annotations.unwrap()[DEFAULT_ANNOTATION], "prod");
    assert!(repositories.data.unwrap()["prod"].contains("bucket: "));
    let launcher = config_map(&client, &ns, "kfp-launcher").await.expect("kfp-launcher");
    assert_eq!(launcher.data.unwrap()["defaultPipelineRoot"], format!("s3://{bucket}/pipelines"));

    // An unchanged stack costs no writes: the ConfigMaps keep their resourceVersions.
    let versions = |cms: [Option<ConfigMap>; 3]| cms.map(|cm| cm.unwrap().metadata.resource_version.unwrap());
    let before = versions([
        config_map(&client, &ns, "prod-stack").await,
        config_map(&client, &ns, REPOSITORIES).await,
        config_map(&client, &ns, "kfp-launcher").await,
    ]);
    let series = "artifact_operator_reconciles_total{kind=\"Stack\"}";
    let reconciled = operator.counter(series).await;
    let touch = json!({"metadata": {"labels": {"touched": "yes"}}});
    let stacks = Api::<Stack>::namespaced(client.clone(), &ns);
    stacks.patch("prod", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&touch)).await.unwrap();
    eventually(TIMEOUT, "the touched stack to be reconciled", || async {
        (operator.counter(series).await > reconciled).then_some(())
    })
    .await;
    let after = versions([
        config_map(&client, &ns, "prod-stack").await,
        config_map(&client, &ns, REPOSITORIES).await,
        config_map(&client, &ns, "kfp-launcher").await,
    ]);
    assert_eq!(before, after, "a reconcile of an unchanged stack wrote");

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

    // The stack is deleted: its key goes with the artifact-repositories the operator created for
    // it, and the real garbage collector removes the ConfigMaps it owns.
    delete_stack(&client, &ns, "prod").await;
    assert!(config_map(&client, &ns, REPOSITORIES).await.is_none(), "emptied and ours, so deleted");
    eventually(TIMEOUT, "the stack's ConfigMaps to be garbage-collected", || async {
        (config_map(&client, &ns, "prod-stack").await.is_none()
            && config_map(&client, &ns, "kfp-launcher").await.is_none())
        .then_some(())
    })
    .await;
}

/// Exactly what a pod gets, laid out on disk: the Stack's ConfigMap as files (the volume at
/// /etc/artifact-store, which the env keys and renderings name, is this directory), the env keys
/// (ConfigMap keys that are variable names, and the credentials Secret's keys), the namespace's
/// kfp-launcher as files, and the namespace's Secrets by name (what KFP's launcher reads).
struct Pod {
    files: tempfile::TempDir,
    launcher: tempfile::TempDir,
    secrets: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

const MOUNT: &str = "/etc/artifact-store";

async fn pod(client: &Client, ns: &str, stack: &str, store: &str) -> Pod {
    let data = config_map(client, ns, &format!("{stack}-stack")).await.unwrap().data.unwrap();
    let canary = test_env().var("AO_S3_USER_SECRET_KEY");
    assert!(!serde_json::to_string(&data).unwrap().contains(canary), "no secret value in the stack's ConfigMap");
    let files = tempfile::tempdir().unwrap();
    let mounted = |value: &str| value.replace(MOUNT, files.path().to_str().unwrap());
    let mut env = BTreeMap::new();
    for (key, value) in &data {
        std::fs::write(files.path().join(key), mounted(value)).unwrap();
        if key.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
            env.insert(key.clone(), mounted(value));
        }
    }
    let credentials =
        Api::<Secret>::namespaced(client.clone(), ns).get(&format!("{store}-aws-credentials")).await.unwrap();
    for (key, value) in credentials.data.unwrap() {
        env.insert(key, String::from_utf8(value.0).unwrap());
    }
    let launcher = tempfile::tempdir().unwrap();
    let launcher_data = config_map(client, ns, "kfp-launcher").await.and_then(|c| c.data).unwrap_or_default();
    assert!(!serde_json::to_string(&launcher_data).unwrap().contains(canary), "no secret value in kfp-launcher");
    for (key, value) in launcher_data {
        std::fs::write(launcher.path().join(key), value).unwrap();
    }
    let secrets = tempfile::tempdir().unwrap();
    for secret in Api::<Secret>::namespaced(client.clone(), ns).list(&Default::default()).await.unwrap() {
        let dir = secrets.path().join(secret.metadata.name.unwrap());
        std::fs::create_dir(&dir).unwrap();
        for (key, value) in secret.data.unwrap_or_default() {
            std::fs::write(dir.join(key), value.0).unwrap();
        }
    }
    Pod { files, launcher, secrets, env }
}

/// Runs the Python consumers (boto3, ZenML's CLI and a pipeline, KFP's launcher config) as the pod.
fn python_consumers(pod: &Pod) -> String {
    let mut command = std::process::Command::new(format!("{}/bin/python", test_env().var("AO_VENV")));
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consumers/consume.py"))
        .args([pod.files.path(), pod.launcher.path(), pod.secrets.path()])
        .env_clear()
        .envs(&pod.env)
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", pod.files.path())
        .env("ZENML_CONFIG_PATH", pod.files.path().join(".zenml-config"))
        .env("ZENML_ANALYTICS_OPT_IN", "false")
        .env("ZENML_LOGGING_COLORS_DISABLED", "true")
        .current_dir(pod.files.path());
    let stdout = run(command, "the Python consumers");
    for consumer in ["boto3:", "zenml: stack import", "zenml: pipeline", "zenml: the artifact store", "kfp:"] {
        assert!(stdout.contains(consumer), "{consumer} check missing:\n{stdout}");
    }
    stdout
}

/// `artifact-operator check` as the pod, with `overrides` on its environment: the exit status,
/// what it printed and the outcome it wrote for the pod's termination message.
fn check_as(pod: &Pod, overrides: &[(&str, &str)]) -> (bool, String, artifact_operator::check::Outcome) {
    let result = pod.files.path().join("termination-log");
    let _ = std::fs::remove_file(&result);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_artifact-operator"))
        .arg("check")
        .env_clear()
        .envs(&pod.env)
        .envs(overrides.iter().copied())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("ARTIFACT_STORE_CHECK_RESULT", &result)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let outcome =
        std::fs::read_to_string(&result).ok().and_then(|text| artifact_operator::check::Outcome::parse(&text));
    let outcome = outcome.unwrap_or_else(|| panic!("check wrote no outcome:\n{stdout}"));
    (output.status.success(), stdout, outcome)
}

/// The check proves the pod's access, and a wrong secret key fails it at the first write.
fn assert_check_proves_access(pod: &Pod) {
    let (passed, stdout, outcome) = check_as(pod, &[]);
    assert!(passed && outcome.step.is_none() && outcome.reason == "Verified", "{stdout}");
    for step in ["write s3://", "read s3://", "list s3://", "delete s3://"] {
        assert!(stdout.lines().any(|l| l.starts_with(step) && l.ends_with(": ok")), "no ok line for {step}:\n{stdout}");
    }
    let (passed, stdout, outcome) = check_as(pod, &[("AWS_SECRET_ACCESS_KEY", "not-the-secret-key")]);
    assert!(!passed, "{stdout}");
    assert_eq!(
        (outcome.step, outcome.reason.as_str()),
        (Some(artifact_operator::check::Step::Write), "SignatureDoesNotMatch")
    );
    assert!(
        !stdout.contains(test_env().var("AO_S3_USER_SECRET_KEY")) && !stdout.contains("not-the-secret-key"),
        "{stdout}"
    );
}

/// The objects the pod's consumers left under the store's prefix, as consume.py lists them last.
/// The checksum headers consume.py saw on the uploads of the consumer whose line starts with
/// `consumer`: "none", or their names.
fn upload_checksums<'a>(stdout: &'a str, consumer: &str) -> &'a str {
    let line =
        stdout.lines().find(|l| l.starts_with(consumer)).unwrap_or_else(|| panic!("no {consumer} line:\n{stdout}"));
    line.rsplit_once("upload checksums: ").map(|(_, said)| said).expect("the line says the upload checksums")
}

/// That boto3 (from the env keys) and ZenML's artifact store component (s3fs, from the rendered
/// config_kwargs) each put checksums on their uploads exactly when the store says so, and that a
/// client told to add them does: the look can see them.
fn assert_uploads_follow(stdout: &str, checksums_sent: bool) {
    for consumer in ["boto3: wrote", "zenml: the artifact store"] {
        let said = upload_checksums(stdout, consumer);
        assert_eq!(said != "none", checksums_sent, "{consumer}: upload checksums {said}:\n{stdout}");
    }
    assert_ne!(upload_checksums(stdout, "boto3 told when_supported"), "none", "{stdout}");
}

fn listed(stdout: &str) -> Vec<String> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("objects: ")).expect("consume.py lists the objects");
    line.split(' ').map(str::to_owned).collect()
}

fn assert_every_consumer_wrote(keys: &[String], prefix: &str) {
    let under = |part: &str| format!("{prefix}/{part}");
    for (consumer, part) in [("boto3", "boto3/"), ("kfp", "kfp/"), ("argo v3", "wf-v3/"), ("argo v4", "wf-v4/")] {
        assert!(
            keys.iter().any(|k| k.starts_with(&under(part))),
            "nothing from {consumer} under {}: {keys:?}",
            under(part)
        );
    }
    let zenml = keys.iter().filter(|k| k.starts_with(&under("produce/")) || k.starts_with(&under("consume/"))).count();
    assert!(zenml >= 2, "the ZenML pipeline's artifacts are under the prefix: {keys:?}");
    assert!(keys.iter().all(|k| k.starts_with(&under(""))), "everything stays under the store's prefix: {keys:?}");
}

#[tokio::test]
async fn a_pod_with_the_stack_config_uses_every_consumer_with_its_own_code() {
    // ZenML's kubernetes orchestrator with a registry, so that zenml-stack.yaml carries one too.
    let mut prod = stack("prod", "ml", json!(["ZenML", "Argo", "KFP"]), true);
    prod["spec"]["orchestrator"] =
        json!({"type": "Kubernetes", "serviceAccountName": "runner", "containerRegistry": {"uri": "10.0.0.5:5000/ml"}});
    let (client, ns, bucket, _operator) = ready_stack("stk-consumer", prod).await;

    let pod = pod(&client, &ns, "prod", "ml").await;
    assert_check_proves_access(&pod);
    argo_uses_the_namespace_default(&ns, "prod");
    let stdout = python_consumers(&pod);
    assert_every_consumer_wrote(&listed(&stdout), "pipelines");
    let imported = stdout.lines().find(|l| l.starts_with("zenml: stack import")).unwrap_or_default();
    assert!(imported.contains("container_registry prod-container-registry (default)"), "{imported}");
    // A custom endpoint: checksums only where an operation requires one, unless the store says otherwise.
    let env = config_map(&client, &ns, "prod-stack").await.unwrap().data.unwrap();
    assert_eq!(env["AWS_REQUEST_CHECKSUM_CALCULATION"], "when_required");
    assert_eq!(env["AWS_RESPONSE_CHECKSUM_VALIDATION"], "when_required");
    assert_uploads_follow(&stdout, false);
    let keys = common::s3_root().list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(keys.key_count(), Some(listed(&stdout).len() as i32), "consume.py listed the bucket as it is");
}

/// A process and every process it started in its group, killed together when dropped (also when
/// a test fails): MLflow's server runs uvicorn and job workers as children of its own.
struct ProcessGroup(std::process::Child);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// MLflow's own tracking server and clients with nothing but a Stack's keys as environment: one
/// server stores run artifacts at the rendered destination and proxies them (`mlflow-artifacts:/`),
/// another does not serve artifacts, so its client writes to S3 itself. Both artifacts are read
/// back through MLflow's API and found under the store's prefix. Returns the lines they printed.
async fn mlflow_consumers(pod: &Pod, s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mlflow =
        format!("{}/bin/mlflow", std::path::Path::new(test_env().var("AO_CACHE_DIR")).join("venv-mlflow").display());
    let destination = pod.env["MLFLOW_ARTIFACTS_DESTINATION"].clone();
    let mut lines = Vec::new();
    for (name, serving) in [
        ("proxied", ["--serve-artifacts", "--artifacts-destination"]),
        ("direct", ["--no-serve-artifacts", "--default-artifact-root"]),
    ] {
        let port = common::free_port();
        let server_dir = tempfile::tempdir().unwrap();
        let server = std::process::Command::new(&mlflow)
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}/mlflow.db", server_dir.path().display()))
            .args([serving[0], serving[1], &destination])
            .env_clear()
            .envs(&pod.env)
            .env("PATH", format!("{}:/usr/bin:/bin", std::path::Path::new(&mlflow).parent().unwrap().display()))
            .env("HOME", server_dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(server_dir.path().join("server.log")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let server = ProcessGroup(server);
        let mut command = std::process::Command::new(mlflow.replace("/bin/mlflow", "/bin/python"));
        command
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consumers/mlflow_client.py"))
            .args([format!("http://127.0.0.1:{port}"), format!("stack-{name}")])
            .env_clear()
            .envs(&pod.env)
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", pod.files.path())
            // A failure fails at once instead of after MLflow's minutes of retries.
            .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            .env("MLFLOW_HTTP_REQUEST_TIMEOUT", "30");
        let output = command.output().unwrap();
        drop(server);
        let said = String::from_utf8_lossy(&output.stdout).into_owned();
        let log = std::fs::read_to_string(server_dir.path().join("server.log")).unwrap_or_default();
        assert!(
            output.status.success(),
            "MLflow {name}: {said}{}\nserver log:\n{log}",
            String::from_utf8_lossy(&output.stderr)
        );
        println!("{}", said.trim_end());
        lines.push(said.trim_end().to_owned());
    }
    let keys = s3.list_objects_v2().bucket(bucket).prefix(format!("{prefix}/")).send().await.unwrap();
    let payloads = keys.contents().iter().filter_map(|o| o.key()).filter(|k| k.ends_with("/notes/payload.txt")).count();
    assert_eq!(payloads, 2, "both runs' artifacts under s3://{bucket}/{prefix}/");
    assert!(
        lines[0].contains("mlflow-artifacts:/") && lines[1].contains(&format!("s3://{bucket}/{prefix}/")),
        "{lines:?}"
    );
    lines
}

#[tokio::test]
async fn mlflow_s_server_and_clients_store_artifacts_with_only_the_stack_s_keys() {
    let tracking = stack("tracking", "ml", json!(["MLflow"]), false);
    let (client, ns, bucket, _operator) = ready_stack("stk-mlflow", tracking).await;
    let pod = pod(&client, &ns, "tracking", "ml").await;
    assert_eq!(pod.env["MLFLOW_ARTIFACTS_DESTINATION"], format!("s3://{bucket}/pipelines"));
    assert_eq!(pod.env["MLFLOW_S3_ENDPOINT_URL"], test_env().var("AO_S3_ENDPOINT"));
    mlflow_consumers(&pod, &common::s3_root(), &bucket, "pipelines").await;
}

/// An application written for Rook's bucket claims, pointed at a Stack with nothing but `envFrom`
/// of the Stack's ConfigMap and the store's credentials Secret, writes and reads under the prefix.
#[tokio::test]
async fn an_application_written_for_bucket_claims_uses_a_stack_unchanged() {
    let claim = stack("claim", "ml", json!(["BucketClaim"]), false);
    let (client, ns, bucket, _operator) = ready_stack("stk-claim", claim).await;

    let data = config_map(&client, &ns, "claim-stack").await.unwrap().data.unwrap();
    let endpoint = test_env().var("AO_S3_ENDPOINT");
    assert_eq!(format!("http://{}:{}", data["BUCKET_HOST"], data["BUCKET_PORT"]), endpoint, "host without scheme");
    assert_eq!((data["BUCKET_NAME"].as_str(), data["BUCKET_SUBREGION"].as_str()), (bucket.as_str(), ""));
    let secret = Api::<Secret>::namespaced(client.clone(), &ns).get("ml-aws-credentials").await.unwrap();
    let mut env: BTreeMap<String, String> = data.into_iter().filter(|(k, _)| !k.contains('.')).collect();
    env.extend(secret.data.unwrap().into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())));
    let mut command = std::process::Command::new(format!("{}/bin/python", test_env().var("AO_VENV")));
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consumers/bucket_claim.py"))
        .env_clear()
        .envs(&env)
        .env("PATH", "/usr/bin:/bin");
    let stdout = run(command, "the bucket claim consumer");
    let key = stdout.split(&format!("s3://{bucket}/")).nth(1).and_then(|rest| rest.split(' ').next()).unwrap();
    assert!(key.starts_with("pipelines/claim/"), "under the store's prefix: {stdout}");
    let object = common::s3_root().get_object().bucket(&bucket).key(key).send().await;
    assert!(object.is_ok(), "the object is in the bucket: {key}");
}

#[tokio::test]
async fn with_a_private_ca_every_consumer_trusts_the_endpoint_through_the_one_mount() {
    // The HTTPS MinIO is a separate server: the operator creates the bucket there.
    let (client, ns, bucket) = setup_with_absent_bucket("stk-ca", "stk-ca").await;
    private_ca_config_map(&client, &ns, "s3-ca").await;
    apply(&client, &ns, service_account("runner")).await;
    let mut spec = tls_spec_at(&format!("s3://{bucket}/pipelines"), json!({"name": "s3-ca"}));
    spec["endpoint"]["checksums"] = json!("WhenSupported");
    apply_store(&client, &ns, "ml", spec).await;
    apply(&client, &ns, stack("prod", "ml", json!(["ZenML", "Argo", "KFP", "MLflow"]), true)).await;
    let _operator = Operator::start(&ns, "10m");
    wait_for(&client, &ns, "prod", "True", "Ready").await;

    let data = config_map(&client, &ns, "prod-stack").await.unwrap().data.unwrap();
    assert_eq!(data["AWS_CA_BUNDLE"], format!("{MOUNT}/ca-bundle.pem"));
    assert!(!data.contains_key("MLFLOW_S3_IGNORE_TLS"), "MLflow trusts the CA, never both");
    assert!(data["ca-bundle.pem"].contains("BEGIN CERTIFICATE"), "the one mount carries the bundle its keys name");
    let repository: Value =
        serde_yaml_ng::from_str(&config_map(&client, &ns, REPOSITORIES).await.unwrap().data.unwrap()["prod"]).unwrap();
    assert_eq!(repository["s3"]["caSecret"], json!({"name": "prod-ca-bundle", "key": "ca-bundle.pem"}));
    assert_eq!(repository["s3"]["insecure"], false);

    let pod = pod(&client, &ns, "prod", "ml").await;
    assert_check_proves_access(&pod);
    let (passed, stdout, outcome) = check_as(&pod, &[("AWS_CA_BUNDLE", "")]);
    assert!(!passed && outcome.reason == "InvalidTlsSettings", "without the mounted bundle TLS fails: {stdout}");
    argo_uses_the_namespace_default(&ns, "prod");
    let stdout = python_consumers(&pod);
    assert_every_consumer_wrote(&listed(&stdout), "pipelines");
    // MLflow through the private CA, by the same mount (its server and its direct client).
    mlflow_consumers(&pod, &common::s3_root_tls(), &bucket, "pipelines").await;
    // This server takes the checksums the SDKs add by default, and the store says so.
    assert_eq!(data["AWS_REQUEST_CHECKSUM_CALCULATION"], "when_supported");
    assert_uploads_follow(&stdout, true);
}

/// Every shape of Argo rendering, decoded strictly into Argo's own types by both releases.
#[test]
fn every_argo_rendering_decodes_strictly_into_argo_types() {
    use artifact_operator::api::ArtifactStore;
    use artifact_operator::render::argo::{CaSecret, Options, artifact_repository};
    use artifact_operator::resolve::ResolvedStore;

    let spec = |endpoint: Value, auth: Value, extra: Value| {
        let mut spec = json!({"path": "s3://bucket/runs", "auth": auth});
        if !endpoint.is_null() {
            spec["endpoint"] = endpoint;
        }
        spec.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        let store: ArtifactStore =
            serde_json::from_value(json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore",
            "metadata": {"name": "store", "namespace": "ml"}, "spec": spec}))
            .unwrap();
        ResolvedStore::new(&store, "eu-west-1", true).unwrap()
    };
    let keys = json!({"secretRef": {"name": "keys"}});
    let ca = CaSecret { name: "prod-ca-bundle".into(), key: "ca-bundle.pem".into() };
    let renderings = [
        ("keys-minio", spec(json!({"url": "http://minio:9000"}), keys.clone(), json!({})), Options::default()),
        ("irsa-aws", spec(Value::Null, json!({"implicit": {}}), json!({})), Options::default()),
        (
            "ca-kms",
            spec(
                json!({"url": "https://rgw:8443", "addressingStyle": "Path"}),
                keys.clone(),
                json!({"objectDefaults": {"serverSideEncryption": "aws:kms", "sseKmsKeyId": "alias/ml"}}),
            ),
            Options { ca_secret: Some(ca), addressing_style: false },
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, store: &ResolvedStore, options: &Options| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_yaml_ng::to_string(&artifact_repository(store, options)).unwrap()).unwrap();
        path
    };
    let files: Vec<PathBuf> = renderings.iter().map(|(name, store, options)| write(name, store, options)).collect();
    let mut command = std::process::Command::new(argo_consumer());
    command.arg("decode").args(&files);
    let stdout = run(command, "argo-consumer decode");
    assert_eq!(stdout.matches("decodes strictly").count(), 2 * files.len(), "{stdout}");

    // addressingStyle, asked for by a Stack setting, is a field of Argo 4.1 on: the releases here
    // (3.7 and 4.0) refuse it when decoding strictly, which is why it is off by default.
    let virtual_hosted = spec(json!({"url": "https://rgw:8443", "addressingStyle": "VirtualHosted"}), keys, json!({}));
    let newer = write("addressing-style", &virtual_hosted, &Options { addressing_style: true, ..Options::default() });
    assert!(std::fs::read_to_string(&newer).unwrap().contains("addressingStyle: virtual-hosted"));
    let output = std::process::Command::new(argo_consumer()).arg("decode").arg(&newer).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(!output.status.success());
    assert_eq!(stdout.matches("unknown field \"addressingStyle\"").count(), 2, "{stdout}");
}

#[tokio::test]
async fn stacks_share_artifact_repositories_and_one_holds_the_default_and_kfp_launcher() {
    let (client, ns, _, _operator) = ready_stack("stk-shared", stack("a", "ml", json!(["Argo", "KFP"]), true)).await;
    apply(&client, &ns, stack("b", "ml", json!(["Argo"]), true)).await;
    let b = wait_for(&client, &ns, "b", "False", "DefaultRepositoryTaken").await;
    assert!(message(&b).contains("Stack a's key a"), "{}", message(&b));
    apply(&client, &ns, stack("k", "ml", json!(["KFP"]), false)).await;
    let k = wait_for(&client, &ns, "k", "False", "KfpLauncherTaken").await;
    assert!(message(&k).contains("belongs to Stack a"), "{}", message(&k));
    // A Stack that can take neither the launcher nor the default names both, and publishes
    // neither half: no key of its own either.
    apply(&client, &ns, stack("both", "ml", json!(["KFP", "Argo"]), true)).await;
    let both = wait_for(&client, &ns, "both", "False", "KfpLauncherTaken").await;
    for part in ["kfp-launcher", "belongs to Stack a", "default artifact repository is already Stack a's key a"] {
        assert!(message(&both).contains(part), "{part}: {}", message(&both));
    }
    delete_stack(&client, &ns, "both").await;

    // The user's own key lives beside the stacks' keys.
    apply_as(
        &client,
        &ns,
        "kubectl",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": REPOSITORIES},
        "data": {"mine": "s3:\n  bucket: elsewhere\n"}}),
    )
    .await;
    let shared = config_map(&client, &ns, REPOSITORIES).await.unwrap();
    let data = shared.data.clone().unwrap();
    assert!(data.contains_key("a") && data.contains_key("mine"), "{data:?}");
    assert!(!data.contains_key("b") && !data.contains_key("both"), "a refused Stack takes no key: {data:?}");
    assert_eq!(shared.metadata.annotations.unwrap()[DEFAULT_ANNOTATION], "a");

    // The holder goes: its key and annotation go, the others' stay, and the next in line takes over.
    delete_stack(&client, &ns, "a").await;
    wait_for(&client, &ns, "b", "True", "Ready").await;
    wait_for(&client, &ns, "k", "True", "Ready").await;
    let shared = config_map(&client, &ns, REPOSITORIES).await.unwrap();
    let data = shared.data.clone().unwrap();
    assert!(!data.contains_key("a") && data.contains_key("b"), "{data:?}");
    assert_eq!(data["mine"], "s3:\n  bucket: elsewhere\n");
    assert_eq!(shared.metadata.annotations.unwrap()[DEFAULT_ANNOTATION], "b");
    let launcher = config_map(&client, &ns, "kfp-launcher").await.unwrap();
    assert_eq!(launcher.metadata.owner_references.unwrap()[0].name, "k");

    // The last stack goes: the ConfigMap stays, since the user's key is in it.
    delete_stack(&client, &ns, "b").await;
    let shared = config_map(&client, &ns, REPOSITORIES).await.expect("kept for the user's key");
    assert_eq!(shared.data.unwrap().into_keys().collect::<Vec<_>>(), ["mine"]);
    let annotations = shared.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key(DEFAULT_ANNOTATION));
    // Each Stack's digest annotation went with its key.
    assert!(!annotations.keys().any(|key| key.starts_with("parts.artifacts.dev/")), "{annotations:?}");
}

#[tokio::test]
async fn config_maps_the_user_made_are_never_taken_over() {
    let (client, ns, _) = namespace_with_store("stk-users").await;
    let users_repositories = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": REPOSITORIES, "annotations": {DEFAULT_ANNOTATION: "mine"}},
        "data": {"mine": "s3:\n  bucket: elsewhere\n"}});
    apply_as(&client, &ns, "kubectl", users_repositories).await;
    let users_launcher = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kfp-launcher"},
        "data": {"defaultPipelineRoot": "s3://elsewhere"}});
    apply_as(&client, &ns, "kubectl", users_launcher).await;
    apply(&client, &ns, stack("argo", "ml", json!(["Argo"]), true)).await;
    apply(&client, &ns, stack("kfp", "ml", json!(["KFP"]), false)).await;
    let _operator = Operator::start(&ns, "10m");

    let argo = wait_for(&client, &ns, "argo", "False", "DefaultRepositoryTaken").await;
    assert!(message(&argo).contains("already key mine"), "{}", message(&argo));
    let kfp = wait_for(&client, &ns, "kfp", "False", "NameConflict").await;
    assert!(message(&kfp).contains("ConfigMap kfp-launcher already exists"), "{}", message(&kfp));
    let launcher = config_map(&client, &ns, "kfp-launcher").await.unwrap();
    assert_eq!(launcher.data.unwrap()["defaultPipelineRoot"], "s3://elsewhere");
    assert!(launcher.metadata.owner_references.is_none() && launcher.metadata.labels.is_none());

    // Refused the default, the stack takes nothing of the user's ConfigMap, not even a key.
    let shared = config_map(&client, &ns, REPOSITORIES).await.unwrap();
    assert_eq!(shared.data.unwrap().into_keys().collect::<Vec<_>>(), ["mine"]);
    // Asking for no default, it writes its key beside the user's; on deletion only it goes.
    apply(&client, &ns, stack("argo", "ml", json!(["Argo"]), false)).await;
    wait_for(&client, &ns, "argo", "True", "Ready").await;
    let shared = config_map(&client, &ns, REPOSITORIES).await.unwrap();
    assert!(shared.data.unwrap().contains_key("argo"));
    delete_stack(&client, &ns, "argo").await;
    let shared = config_map(&client, &ns, REPOSITORIES).await.unwrap();
    assert_eq!(shared.data.unwrap().into_keys().collect::<Vec<_>>(), ["mine"]);
    assert_eq!(shared.metadata.annotations.unwrap()[DEFAULT_ANNOTATION], "mine");
    assert!(shared.metadata.labels.is_none(), "nothing of ours was added to the user's ConfigMap");
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
    // The MLflow example's Deployment is checked, not run: its envFrom and mount are the Stack's.
    let mut deployments = Vec::new();
    for object in example_objects("mlflow.yaml") {
        if object["kind"] == "Deployment" {
            deployments.push(serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(object).unwrap());
        } else {
            apply(&client, &ns, object).await;
        }
    }
    user_keys_secret(&client, &ns, "minio-keys").await;
    let _operator = Operator::start(&ns, "10m");
    wait_for(&client, &ns, "minio", "True", "Ready").await;
    wait_for(&client, &ns, "mlflow", "True", "Ready").await;
    let published = config_map(&client, &ns, "mlflow-stack").await.unwrap().data.unwrap();
    let container = &deployments[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let sources: Vec<String> = container
        .env_from
        .iter()
        .flatten()
        .filter_map(|source| {
            source
                .config_map_ref
                .as_ref()
                .map(|c| c.name.clone())
                .or(source.secret_ref.as_ref().map(|s| s.name.clone()))
        })
        .collect();
    assert_eq!(sources, ["mlflow-stack", "mlflow-aws-credentials"]);
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns).get("mlflow-aws-credentials").await;
    assert!(secrets.is_ok(), "the Secret the Deployment names is the store's");
    let destination = container.args.iter().flatten().find_map(|a| a.strip_prefix("--artifacts-destination=")).unwrap();
    assert_eq!(destination, "$(MLFLOW_ARTIFACTS_DESTINATION)");
    assert!(
        published["MLFLOW_ARTIFACTS_DESTINATION"].ends_with("/mlflow")
            && published.contains_key("MLFLOW_S3_ENDPOINT_URL")
    );
    // argo-artifacts does not exist on the local MinIO: the stack waits for its store.
    let waiting = wait_for(&client, &ns, "argo", "False", "ArtifactStoreNotReady").await;
    assert!(message(&waiting).contains("ArtifactStore argo is not ready"), "{}", message(&waiting));
}
