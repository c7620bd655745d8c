//! One bad object never takes the operator down, and nothing of the user's is taken or leaked:
//! malformed credentials and CA bundles, a panic injected into one reconcile, published names that
//! clash with the user's own objects, and an operator killed at each S3 call of bucket creation.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use artifact_operator::api::{ArtifactStore, Stack};
use common::store::{apply_store, condition, minio_spec, private_ca_pem, tls_spec_at, wait_for};
use common::{
    Operator, apply, eventually, limited_bucket, secret, setup, setup_with_absent_bucket, setup_with_bucket, test_env,
    user_keys_secret,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Keys that are valid but for one character an HTTP header cannot carry.
#[tokio::test]
async fn malformed_credentials_are_refused_by_key_name_and_the_operator_keeps_going() {
    let (client, ns, bucket) = setup_with_bucket("rb-keys").await;
    let mut operator = Operator::start(&ns, "10m");
    let env = test_env();
    let (id, key) = (env.var("AO_S3_USER_ACCESS_KEY"), env.var("AO_S3_USER_SECRET_KEY"));
    // (store and Secret name, the key holding the bad value, the Secret's values)
    let cases = [
        ("newline-id", "aws_access_key_id", ["AKIA\nCANARYONE", key, ""]),
        ("del-secret", "aws_secret_access_key", [id, "CANARY\u{7f}TWO", ""]),
        ("token-newline", "aws_session_token", [id, key, "CANARY\nTHREE"]),
        ("non-ascii-id", "aws_access_key_id", ["CANARYFÖUR", key, ""]),
        ("space-secret", "aws_secret_access_key", [id, "CANARY FIVE", ""]),
    ];
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for (name, _, [id, secret_key, token]) in &cases {
        let mut data = json!({"aws_access_key_id": id, "aws_secret_access_key": secret_key});
        if !token.is_empty() {
            data["aws_session_token"] = json!(token);
        }
        // Created as JSON: server-side apply decodes YAML, which refuses control characters itself.
        let object = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
        secrets.create(&PostParams::default(), &object).await.unwrap();
        apply_store(&client, &ns, name, minio_spec(&bucket, json!({"auth": {"secretRef": {"name": name}}}))).await;
    }
    apply_store(&client, &ns, "good", minio_spec(&bucket, json!({}))).await;
    wait_for(&client, &ns, "good", "Ready", "True", "Ready").await;
    for (name, bad_key, _) in &cases {
        let store = wait_for(&client, &ns, name, "Ready", "False", "SecretValueInvalid").await;
        let message = &condition(&store, "Ready").message;
        assert!(message.contains(&format!("Secret {name} key {bad_key} ")), "{name}: {message}");
        assert!(!message.contains("CANARY"), "{name}: the value leaked: {message}");
    }
    assert!(!operator.exited(), "the operator is still running");
    let log = operator.log_text();
    assert!(!log.contains("CANARY"), "a bad value reached the log");
    assert!(!log.contains("panicked"), "nothing panicked");
}

fn ca_config_map(name: &str, pem: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"ca.crt": pem}})
}

fn tls_spec(bucket: &str, ca: Value) -> Value {
    tls_spec_at(&format!("s3://{bucket}"), ca)
}

/// A CA bundle is parsed by the operator before a TLS library sees it, and only its certificates
/// are ever used or published.
#[tokio::test]
async fn broken_ca_bundles_are_refused_and_only_certificates_are_published() {
    let (client, ns) = setup("rb-ca").await;
    user_keys_secret(&client, &ns, "minio-keys").await;
    let mut operator = Operator::start(&ns, "10m");
    let pem = private_ca_pem();
    let cases = [
        ("no-end", pem.replace("-----END CERTIFICATE-----", ""), "malformed"),
        (
            "bad-base64",
            "-----BEGIN CERTIFICATE-----\n%%%not*base64\n-----END CERTIFICATE-----\n".to_owned(),
            "malformed",
        ),
        (
            "garbage-der",
            "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n".to_owned(),
            "not a valid X.509",
        ),
        ("empty-block", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_owned(), "not a valid X.509"),
        ("no-pem", "just a note, no certificate".to_owned(), "no PEM block"),
        (
            "key-only",
            "-----BEGIN PRIVATE KEY-----\nUFJJVkFURUtFWUNBTkFSWQ==\n-----END PRIVATE KEY-----\n".to_owned(),
            "no CERTIFICATE",
        ),
    ];
    for (name, bundle, _) in &cases {
        apply(&client, &ns, ca_config_map(&format!("ca-{name}"), bundle)).await;
        let spec = tls_spec(&limited_bucket("rb-ca"), json!({"name": format!("ca-{name}")}));
        apply_store(&client, &ns, name, spec).await;
    }
    // A Secret holding the CA certificate and a private key pasted with it.
    let private_key = "-----BEGIN PRIVATE KEY-----\nUFJJVkFURUtFWUNBTkFSWQ==\n-----END PRIVATE KEY-----\n";
    secret(&client, &ns, "ca-with-key", &[("ca.crt", &format!("{private_key}{pem}"))]).await;
    let bucket = limited_bucket("rb-ca");
    apply_store(&client, &ns, "good", tls_spec(&bucket, json!({"kind": "Secret", "name": "ca-with-key"}))).await;

    wait_for(&client, &ns, "good", "Ready", "True", "Ready").await;
    let published = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("good-artifact-store").await.unwrap();
    let published = &published.data.unwrap()["ca-bundle.pem"];
    assert!(published.contains("-----BEGIN CERTIFICATE-----"), "{published}");
    assert!(!published.contains("PRIVATE KEY") && !published.contains("UFJJVkFURUtFWUNBTkFSWQ"), "{published}");
    let body = |text: &str| text.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
    assert_eq!(body(published), body(&pem), "the certificate itself is published unchanged");

    for (name, _, why) in &cases {
        let store = wait_for(&client, &ns, name, "Ready", "False", "CaBundleInvalid").await;
        let message = &condition(&store, "Ready").message;
        assert!(message.contains(&format!("ConfigMap ca-{name} key ca.crt")), "{name}: {message}");
        assert!(message.contains(why), "{name}: {message}");
        assert!(!message.contains("UFJJVk"), "{name}: {message}");
    }
    assert!(!operator.exited(), "the operator is still running");
    assert!(!operator.log_text().contains("panicked"), "nothing panicked");
}

/// With the fail point armed for one store, its reconciles panic: it alone is not Ready, backed
/// off, and the process and the other store carry on.
#[tokio::test]
async fn a_panic_in_one_reconcile_is_contained_to_its_object() {
    let (client, ns, bucket) = setup_with_bucket("rb-panic").await;
    let failpoint = format!("reconcile-panic=return(ArtifactStore/{ns}/victim)");
    let mut operator = Operator::start_with_env(&ns, "10m", &[], &[("FAILPOINTS", &failpoint)]);
    apply_store(&client, &ns, "victim", minio_spec(&bucket, json!({}))).await;
    apply_store(&client, &ns, "bystander", minio_spec(&bucket, json!({}))).await;
    wait_for(&client, &ns, "bystander", "Ready", "True", "Ready").await;
    let store = wait_for(&client, &ns, "victim", "Ready", "False", "ReconcilePanicked").await;
    assert!(condition(&store, "Ready").message.contains("retries with backoff"));

    let panics = "artifact_operator_reconcile_errors_total{kind=\"ArtifactStore\",category=\"panic\"}";
    let first = eventually(Duration::from_secs(20), "a panic to be counted", || async {
        let count = operator.counter(panics).await;
        (count >= 1.0).then_some(count)
    })
    .await;
    // Backoff: 2.5-5 s, then 5-10 s, ...: a few retries in 12 s, not a hot loop.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let later = operator.counter(panics).await;
    assert!(later > first && later <= first + 4.0, "retried with backoff: {first} then {later}");

    // The other store still works: a change to it is reconciled.
    apply_store(&client, &ns, "bystander", minio_spec(&bucket, json!({"region": "us-east-1"}))).await;
    wait_for(&client, &ns, "bystander", "Ready", "True", "Ready").await;
    assert!(!operator.exited(), "the process never exits on a panic in a reconcile");
    let log = operator.log_text();
    assert!(log.contains("the reconcile panicked"), "the panic is logged");
    assert!(!log.contains("injected by the reconcile-panic fail point"), "a panic's message is never logged");
}

/// The published ConfigMap and Secret names, and the Stack's ConfigMap, taken by the user's own
/// objects: each store or stack reports NameConflict and the user's object stays exactly as it was.
#[tokio::test]
async fn published_names_taken_by_the_users_objects_are_conflicts_not_takeovers() {
    let (client, ns, bucket) = setup_with_bucket("rb-names").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mine = |name: &str| {
        serde_json::from_value::<ConfigMap>(json!({"metadata": {"name": name}, "data": {"mine": "yes"}})).unwrap()
    };
    let users_config_map = config_maps.create(&PostParams::default(), &mine("ml-artifact-store")).await.unwrap();
    let users_stack_map = config_maps.create(&PostParams::default(), &mine("prod-stack")).await.unwrap();
    let users_secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "keyed-aws-credentials"}, "stringData": {"mine": "yes"}}))
            .unwrap();
    let users_secret = secrets.create(&PostParams::default(), &users_secret).await.unwrap();
    apply(&client, &ns, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}})).await;

    let _operator = Operator::start(&ns, "10m");
    apply_store(&client, &ns, "ml", minio_spec(&bucket, json!({}))).await;
    apply_store(&client, &ns, "keyed", minio_spec(&bucket, json!({}))).await;
    apply_store(&client, &ns, "good", minio_spec(&bucket, json!({}))).await;
    let stack = json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "prod"}, "spec": {
        "artifactStoreRef": {"name": "good"}, "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"}}});
    apply(&client, &ns, stack).await;

    let store = wait_for(&client, &ns, "ml", "Ready", "False", "NameConflict").await;
    assert!(condition(&store, "Ready").message.contains("ConfigMap ml-artifact-store already exists"));
    let store = wait_for(&client, &ns, "keyed", "Ready", "False", "NameConflict").await;
    assert!(condition(&store, "Ready").message.contains("Secret keyed-aws-credentials already exists"));
    let stacks: Api<Stack> = Api::namespaced(client.clone(), &ns);
    let message = eventually(Duration::from_secs(60), "the stack's NameConflict", || async {
        let stack = stacks.get("prod").await.unwrap();
        let ready = stack.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
        if ready.reason != "NameConflict" {
            return None;
        }
        common::capture_health_fixture(&stack, &ns);
        Some(ready.message)
    })
    .await;
    assert!(message.contains("ConfigMap prod-stack already exists"), "{message}");

    // Give the operator time for more passes; then the user's objects must be exactly as made.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for original in [&users_config_map, &users_stack_map] {
        let now = config_maps.get(original.metadata.name.as_deref().unwrap()).await.unwrap();
        assert_eq!(now.metadata.resource_version, original.metadata.resource_version, "never written");
        assert!(now.metadata.owner_references.is_none() && now.metadata.labels.is_none());
    }
    let now = secrets.get("keyed-aws-credentials").await.unwrap();
    assert_eq!(now.metadata.resource_version, users_secret.metadata.resource_version, "never written");

    // Deleting the stores leaves the user's objects (no owner reference for the GC to follow).
    let stores: Api<ArtifactStore> = Api::namespaced(client.clone(), &ns);
    stores.delete("keyed", &DeleteParams::default()).await.unwrap();
    // Removing the clashing ConfigMap lets the store publish at once, as its own.
    config_maps.delete("ml-artifact-store", &DeleteParams::default()).await.unwrap();
    wait_for(&client, &ns, "ml", "Ready", "True", "Ready").await;
    let published = config_maps.get("ml-artifact-store").await.unwrap();
    assert!(published.metadata.owner_references.is_some_and(|o| o[0].name == "ml"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = secrets.get("keyed-aws-credentials").await.unwrap();
    assert_eq!(now.metadata.resource_version, users_secret.metadata.resource_version, "kept after the store went");
}

/// Whether an HTTP request line is the bucket call `trigger` names, given as `PUT /<bucket><call>`
/// (`<call>` a query such as `?tagging`, or a space for the bare bucket). The SDK may put a slash
/// after the bucket.
fn matches(line: &str, trigger: &str) -> bool {
    // After "PUT /": where the bucket ends and the call begins.
    let Some(split) = trigger.get(5..).and_then(|t| t.find(['?', ' '].as_slice())).map(|i| i + 5) else {
        return false;
    };
    let (bucket, call) = trigger.split_at(split);
    line.strip_prefix(bucket).is_some_and(|rest| rest.strip_prefix('/').unwrap_or(rest).starts_with(call))
}

/// A TCP forwarder to MinIO that SIGKILLs the operator at the first request whose request line
/// matches `trigger`: after forwarding it (S3 makes the change, the operator never hears back), or
/// without forwarding it (the change is never made).
struct KillSwitch {
    address: SocketAddr,
    armed: Arc<Mutex<Option<(String, u32, bool)>>>,
    fired: Arc<Mutex<Vec<String>>>,
}

impl KillSwitch {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let armed: Arc<Mutex<Option<(String, u32, bool)>>> = Arc::default();
        let fired: Arc<Mutex<Vec<String>>> = Arc::default();
        let (armed_in, fired_in) = (armed.clone(), fired.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut server_read, &mut client_write).await });
                let (armed, fired) = (armed_in.clone(), fired_in.clone());
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(read) = client_read.read(&mut buffer).await {
                        if read == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buffer[..read]).into_owned();
                        let victim = {
                            let mut armed = armed.lock().unwrap();
                            let hit = armed.as_ref().and_then(|(trigger, pid, forward)| {
                                text.lines().find(|line| matches(line, trigger)).map(|l| (l.to_owned(), *pid, *forward))
                            });
                            if hit.is_some() {
                                *armed = None;
                            }
                            hit
                        };
                        let forward = victim.as_ref().is_none_or(|(_, _, forward)| *forward);
                        if forward && server_write.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                        if let Some((line, pid, _)) = victim {
                            let _ = server_write.flush().await;
                            std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
                            fired.lock().unwrap().push(line);
                        }
                    }
                });
            }
        });
        Self { address, armed, fired }
    }

    /// Kills `pid` at the first request line matching `trigger`, after sending the request on to
    /// S3 when `forward`, or instead of sending it.
    fn arm(&self, trigger: &str, pid: u32, forward: bool) {
        *self.armed.lock().unwrap() = Some((trigger.to_owned(), pid, forward));
    }

    fn fired(&self) -> Vec<String> {
        self.fired.lock().unwrap().clone()
    }
}

/// Creates a store whose bucket the operator creates through the kill switch, kills the operator
/// at the request line starting `PUT /<bucket><call>` (after or instead of forwarding it), restarts
/// it, and checks that the bucket is recognised as the store's, completed (tags, versioning,
/// encryption, lifecycle) and deleted with the store under `deletionPolicy: Delete`.
async fn killed_while_creating(test: &str, call: &str, forward: bool) {
    let (client, ns, bucket) = setup_with_absent_bucket(test, test).await;
    let minio: SocketAddr = test_env().var("AO_S3_ENDPOINT").trim_start_matches("http://").parse().unwrap();
    let switch = KillSwitch::start(minio).await;
    let spec = json!({
        "path": format!("s3://{bucket}/runs"),
        "endpoint": {"url": format!("http://{}", switch.address), "addressingStyle": "Path"},
        "auth": {"secretRef": {"name": "minio-keys"}},
        "provisioning": "Create",
        "deletionPolicy": "Delete",
        "bucket": {"versioning": true, "tags": {"team": "a"}, "lifecycle": {"noncurrentVersionExpirationDays": 30}},
    });
    let mut first = Operator::start(&ns, "10m");
    switch.arm(&format!("PUT /{bucket}{call}"), first.pid(), forward);
    apply_store(&client, &ns, "ml", spec).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !first.exited() {
        assert!(std::time::Instant::now() < deadline, "the operator was not killed at PUT /{bucket}{call}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(switch.fired().len(), 1, "killed once, at {call:?}: {:?}", switch.fired());
    let s3 = common::s3_root();
    // The request was forwarded before the kill; MinIO may still be finishing it.
    eventually(Duration::from_secs(10), "the bucket created before the kill", || async {
        s3.head_bucket().bucket(&bucket).send().await.ok().map(|_| ())
    })
    .await;
    let stores: Api<ArtifactStore> = Api::namespaced(client.clone(), &ns);
    let killed = stores.get("ml").await.unwrap();
    assert!(
        killed.status.as_ref().is_some_and(|s| s.bucket_create_requested.is_some()),
        "the creation was recorded before CreateBucket was sent"
    );

    let _second = Operator::start(&ns, "10m");
    let store = wait_for(&client, &ns, "ml", "Ready", "True", "Ready").await;
    let status = store.status.clone().unwrap();
    assert_eq!(status.bucket_created, Some(true), "recognised as created by this store after {call:?}");
    let tags = s3.get_bucket_tagging().bucket(&bucket).send().await.unwrap();
    let tag = |key: &str| tags.tag_set().iter().find(|t| t.key() == key).map(|t| t.value().to_owned());
    assert_eq!(tag("artifacts.dev/created-by"), store.metadata.uid.clone());
    assert_eq!(tag("team").as_deref(), Some("a"));
    let versioning = s3.get_bucket_versioning().bucket(&bucket).send().await.unwrap();
    assert_eq!(versioning.status().map(|s| s.as_str()), Some("Enabled"));
    // MinIO without a KMS does not implement default encryption: then the store says it skipped it.
    let skipped = condition(&store, "BucketReady").message.contains("does not implement: default encryption");
    let encryption = s3.get_bucket_encryption().bucket(&bucket).send().await;
    let rules = encryption.ok().and_then(|e| e.server_side_encryption_configuration().map(|c| c.rules().len()));
    assert!(rules == Some(1) || skipped, "default encryption is set or reported skipped: {rules:?}");
    let lifecycle = s3.get_bucket_lifecycle_configuration().bucket(&bucket).send().await.unwrap();
    assert!(lifecycle.rules().iter().any(|r| r.id() == Some("artifact-operator-noncurrent-versions")));

    stores.delete("ml", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(60), "the store and its bucket to be deleted", || async {
        let store_gone = stores.get_opt("ml").await.unwrap().is_none();
        let bucket_gone = s3.head_bucket().bucket(&bucket).send().await.is_err();
        (store_gone && bucket_gone).then_some(())
    })
    .await;
}

#[test]
fn request_lines_are_told_apart() {
    assert!(matches("PUT /b-1 HTTP/1.1", "PUT /b-1 "));
    assert!(matches("PUT /b-1/ HTTP/1.1", "PUT /b-1 "));
    assert!(matches("PUT /b-1/?tagging HTTP/1.1", "PUT /b-1?tagging"));
    assert!(matches("PUT /b-1?tagging= HTTP/1.1", "PUT /b-1?tagging"));
    assert!(!matches("PUT /b-1/runs/probe HTTP/1.1", "PUT /b-1 "));
    assert!(!matches("PUT /b-1?versioning HTTP/1.1", "PUT /b-1?tagging"));
    assert!(!matches("PUT /b-10 HTTP/1.1", "PUT /b-1 "));
}

/// One test for each kill point: `name(test, call, forward);` declares the test `name`, which runs
/// `killed_while_creating(test, call, forward)`.
macro_rules! killed_while_creating_tests {
    ($($(#[$attribute:meta])* $name:ident($test:literal, $call:literal, $forward:literal);)*) => {
        $(
            $(#[$attribute])*
            #[tokio::test]
            async fn $name() {
                killed_while_creating($test, $call, $forward).await;
            }
        )*
    };
}

killed_while_creating_tests! {
    /// S3 creates the bucket; the operator dies before it can tag it.
    killed_at_create_bucket_the_bucket_is_recognised_completed_and_deletable("rb-kill-create", " ", true);
    /// The tagging never reaches S3: the bucket is left without its creator tag.
    killed_at_tagging_the_bucket_is_recognised_completed_and_deletable("rb-kill-tags", "?tagging", false);
    killed_at_versioning_the_bucket_is_recognised_completed_and_deletable("rb-kill-versioning", "?versioning", true);
    killed_at_encryption_the_bucket_is_recognised_completed_and_deletable("rb-kill-encryption", "?encryption", true);
    killed_at_lifecycle_the_bucket_is_recognised_completed_and_deletable("rb-kill-lifecycle", "?lifecycle", true);
}

/// The Secret a store's keys come from must not block the others: fixing it makes the store Ready.
#[tokio::test]
async fn fixing_a_malformed_key_makes_the_store_ready() {
    let (client, ns, bucket) = setup_with_bucket("rb-fix").await;
    let _operator = Operator::start(&ns, "10m");
    let env = test_env();
    let key = env.var("AO_S3_USER_SECRET_KEY");
    let pasted = format!("{}\n{}", env.var("AO_S3_USER_ACCESS_KEY"), "x");
    secret(&client, &ns, "pasted", &[("aws_access_key_id", &pasted), ("aws_secret_access_key", key)]).await;
    apply_store(&client, &ns, "ml", minio_spec(&bucket, json!({"auth": {"secretRef": {"name": "pasted"}}}))).await;
    wait_for(&client, &ns, "ml", "Ready", "False", "SecretValueInvalid").await;
    secret(
        &client,
        &ns,
        "pasted",
        &[("aws_access_key_id", env.var("AO_S3_USER_ACCESS_KEY")), ("aws_secret_access_key", key)],
    )
    .await;
    wait_for(&client, &ns, "ml", "Ready", "True", "Ready").await;
}

/// A created bucket whose requested setting S3 refuses (MinIO has no rule to abort incomplete
/// multipart uploads, and says so as malformed XML): the store stays `BucketSettingsFailed` pass
/// after pass, never Ready, the bucket keeps its creator tag, and fixing the spec completes it.
#[tokio::test]
async fn a_refused_bucket_setting_keeps_the_store_from_ready_until_fixed() {
    let (client, ns, bucket) = setup_with_absent_bucket("rb-settings", "rb-settings").await;
    let _operator = Operator::start(&ns, "10m");
    let settings = |lifecycle: Value| json!({"provisioning": "Create", "deletionPolicy": "Delete", "bucket": {"tags": {"team": "a"}, "lifecycle": lifecycle}});
    let refused = json!({"abortIncompleteMultipartUploadDays": 7});
    apply_store(&client, &ns, "ml", minio_spec(&bucket, settings(refused))).await;
    let store = wait_for(&client, &ns, "ml", "Ready", "False", "BucketSettingsFailed").await;
    let message = &condition(&store, "Ready").message;
    assert!(message.contains("lifecycle") && message.contains("fix spec.bucket"), "{message}");
    // Several backed-off passes later it still is not Ready.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let store = wait_for(&client, &ns, "ml", "Ready", "False", "BucketSettingsFailed").await;
    let tags = common::s3_root().get_bucket_tagging().bucket(&bucket).send().await.unwrap();
    let creator = tags.tag_set().iter().find(|t| t.key() == "artifacts.dev/created-by").map(|t| t.value().to_owned());
    assert_eq!(creator, store.metadata.uid, "the bucket is recognisably this store's meanwhile");

    apply_store(&client, &ns, "ml", minio_spec(&bucket, settings(json!({"noncurrentVersionExpirationDays": 30}))))
        .await;
    let store = wait_for(&client, &ns, "ml", "Ready", "True", "Ready").await;
    assert_eq!(store.status.unwrap().bucket_created, Some(true));
}

/// An operator without any AWS identity of its own says so, as something to fix, for a store
/// that needs it (implicit auth on AWS), rather than waiting for STS as for an outage.
#[tokio::test]
async fn an_operator_without_aws_credentials_says_what_to_give_it() {
    let (client, ns) = setup("rb-no-creds").await;
    let spec = json!({"path": "s3://some-team-bucket/pipelines", "region": "us-east-1", "auth": {"implicit": {}}});
    apply_store(&client, &ns, "aws", spec).await;
    // No keys in the environment, no profile (no HOME), no instance metadata: the SDK's default
    // chain finds nothing.
    let _operator =
        Operator::start_with_env(&ns, "10m", &[], &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")]);
    let store = wait_for(&client, &ns, "aws", "CredentialsValid", "False", "OperatorCredentialsMissing").await;
    let message = &condition(&store, "CredentialsValid").message;
    assert!(message.contains("IRSA") && message.contains("AWS_ACCESS_KEY_ID"), "{message}");
    assert_eq!(condition(&store, "Ready").reason, "OperatorCredentialsMissing");
}
