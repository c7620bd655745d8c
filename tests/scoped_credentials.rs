//! `Stack.spec.credentials.mode: Scoped` against the real MinIO and its STS: the session
//! credentials reach the Stack's prefix and nothing else (AccessDenied one prefix over and in
//! another bucket, no writes when ReadOnly), pods get them as a `credential_process` file and no
//! long-lived key, boto3 uses that file, the steady state writes nothing, back to Shared the
//! Secret is emptied, and a renewal STS refuses is a condition while the current credentials last.
//! (Renewal over a real lifetime: tests/credential_renewal.rs.)

mod common;

use std::time::Duration;

use artifact_operator::api::Stack;
use common::conditions::{find, status_reason_message};
use common::scoped::{TIMEOUT, boto3, list, prepare, put, ready, s3_with, scoped_secret, stack, sts_calls, text};
use common::{Operator, apply, eventually, limited_bucket, s3_root, test_env};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use serde_json::{Value, json};

#[tokio::test]
async fn scoped_credentials_reach_their_prefix_and_nothing_else() {
    let (client, ns, bucket) = prepare("scoped").await;
    let other = limited_bucket("scoped-other");
    s3_root().create_bucket().bucket(&other).send().await.unwrap();
    let operator = Operator::start(&ns, "3s");
    apply(&client, &ns, stack("rw", json!({"mode": "Scoped", "prefix": "a", "duration": "15m"}))).await;
    apply(&client, &ns, stack("ro", json!({"mode": "Scoped", "access": "ReadOnly"}))).await;
    let rw = ready(&client, &ns, "rw").await;
    ready(&client, &ns, "ro").await;

    let record = rw.status.as_ref().unwrap().credentials.clone().expect("the status says what the pods have");
    assert_eq!(record.path, format!("s3://{bucket}/team/a"));
    let secret = scoped_secret(&client, &ns, "rw").await;
    let key_id = text(&secret, "AWS_ACCESS_KEY_ID");
    assert_ne!(key_id, test_env().var("AO_S3_USER_ACCESS_KEY"), "not the store's own key");
    assert_eq!(record.access_key_id, key_id);
    let lifetime = record.expires_at.parse::<jiff::Timestamp>().unwrap().duration_since(jiff::Timestamp::now());
    assert!(lifetime.as_secs() > 800 && lifetime.as_secs() <= 900, "15 minutes: {lifetime:?}");
    let annotations = secret.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["artifacts.dev/renew-at"], record.renew_at);
    println!("issued {key_id}: expires at {}, renewed at {}", record.expires_at, record.renew_at);

    // What the pods get: the narrowed path, a config file with the credentials process, no keys.
    let config_map =
        Api::<ConfigMap>::namespaced(client.clone(), &ns).get("rw-stack").await.unwrap().data.unwrap_or_default();
    assert_eq!(config_map["ARTIFACT_STORE_PATH"], format!("s3://{bucket}/team/a"));
    assert_eq!(config_map["AWS_CONFIG_FILE"], "/etc/artifact-store-credentials/config");
    assert!(!config_map.values().any(|v| v.contains(&key_id)), "no key in the ConfigMap");
    let export: Value = serde_yaml_ng::from_str(&config_map["zenml-stack.yaml"]).unwrap();
    let pod_settings = &export["components"]["orchestrator"][0]["configuration"]["pod_settings"];
    assert_eq!(pod_settings["env_from"].as_array().unwrap().len(), 1, "the ConfigMap only, no key Secret");
    assert_eq!(pod_settings["volumes"][1]["secret"]["secretName"], "rw-scoped-credentials");

    // The session policy, enforced by MinIO: the prefix, and nothing one prefix over or elsewhere.
    let s3 = s3_with(&secret);
    let evidence = [
        ("put team/a/x", put(&s3, &bucket, "team/a/x").await, "ok"),
        ("list team/a/", list(&s3, &bucket, "team/a/").await, "ok"),
        ("put team/b/x", put(&s3, &bucket, "team/b/x").await, "AccessDenied"),
        ("put team/x", put(&s3, &bucket, "team/x").await, "AccessDenied"),
        ("list team/", list(&s3, &bucket, "team/").await, "AccessDenied"),
        ("put in another bucket", put(&s3, &other, "team/a/x").await, "AccessDenied"),
    ];
    let read_only = s3_with(&scoped_secret(&client, &ns, "ro").await);
    let read = read_only.get_object().bucket(&bucket).key("team/a/x").send().await.map(|_| "ok").unwrap_or("failed");
    let evidence = evidence.into_iter().chain([
        ("ReadOnly get team/a/x", read.to_owned(), "ok"),
        ("ReadOnly put team/a/y", put(&read_only, &bucket, "team/a/y").await, "AccessDenied"),
    ]);
    for (what, got, expected) in evidence {
        println!("{what}: {got}");
        assert_eq!(got, expected, "{what}");
    }
    // The store's own user may write one prefix over: the session policy is what stops it.
    let user = common::s3_client(test_env().var("AO_S3_USER_ACCESS_KEY"), test_env().var("AO_S3_USER_SECRET_KEY"));
    assert_eq!(put(&user, &bucket, "team/b/x").await, "ok");

    // boto3 with nothing but the config file (its credential_process reads the Secret's JSON).
    let files = tempfile::tempdir().unwrap();
    let process = files.path().join("credentials.json");
    std::fs::write(&process, text(&secret, "credentials.json")).unwrap();
    let config = files.path().join("config");
    std::fs::write(&config, format!("[default]\ncredential_process = cat {}\n", process.display())).unwrap();
    let said = boto3(&config, &bucket, "team/a/boto3", &[]);
    assert!(said.contains(&format!("wrote team/a/boto3 as {key_id}")), "{said}");

    // Steady state: resyncs every 3 s write nothing and call STS no more.
    let api: Api<Stack> = Api::namespaced(client.clone(), &ns);
    let (calls, stack_version, secret_version) = (
        sts_calls(&operator).await,
        api.get("rw").await.unwrap().metadata.resource_version,
        secret.metadata.resource_version.clone(),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(sts_calls(&operator).await, calls, "no STS call between renewals");
    assert_eq!(api.get("rw").await.unwrap().metadata.resource_version, stack_version);
    assert_eq!(scoped_secret(&client, &ns, "rw").await.metadata.resource_version, secret_version);

    // Back to Shared: no key stays in the Secret, and the status forgets it.
    let mut shared = stack("rw", json!({"mode": "Shared"}));
    shared["spec"].as_object_mut().unwrap().remove("credentials");
    apply(&client, &ns, shared).await;
    eventually(TIMEOUT, "the scoped Secret to be emptied", || async {
        let secret = Api::<Secret>::namespaced(client.clone(), &ns).get("rw-scoped-credentials").await.unwrap();
        let empty = secret.data.unwrap_or_default().is_empty();
        let stack = api.get("rw").await.unwrap();
        (empty && stack.status.as_ref()?.credentials.is_none()).then_some(())
    })
    .await;
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("rw-stack").await.unwrap().data.unwrap();
    assert!(!config_map.contains_key("AWS_CONFIG_FILE"), "the env keys are the store's again");
}

/// Adds a MinIO user of its own (the limited-buckets policy) and returns its keys.
fn new_minio_user() -> (String, String) {
    let (access_key, secret_key) = (format!("aofail{}", fastrand::u32(..)), format!("{:032x}", fastrand::u128(..)));
    common::minio_admin(&[("AO_S3_USER_ACCESS_KEY", &access_key), ("AO_S3_USER_SECRET_KEY", &secret_key)]);
    (access_key, secret_key)
}

/// Switches the MinIO user `access_key` on or off.
fn set_minio_user(access_key: &str, status: &str) {
    common::minio_admin(&[
        ("AO_S3_USER_ACCESS_KEY", access_key),
        ("AO_S3_USER_SECRET_KEY", "unused-when-switching"),
        ("AO_S3_USER_STATUS", status),
    ]);
}

/// The Stack's ScopedCredentials condition: (status, reason, message).
async fn scoped_condition(api: &Api<Stack>, name: &str) -> Option<(String, String, String)> {
    status_reason_message(&api.get(name).await.unwrap(), "ScopedCredentials")
}

#[tokio::test]
async fn a_failed_renewal_is_a_condition_while_the_current_credentials_last() {
    // A MinIO user of this test's own, which the test switches off: the store keeps its Ready
    // (verified once per 10 minutes), while STS refuses to renew.
    let (client, ns) = common::setup("scoped-fail").await;
    let bucket = limited_bucket("scoped-fail");
    s3_root().create_bucket().bucket(&bucket).send().await.unwrap();
    let (access_key, secret_key) = new_minio_user();
    common::secret(
        &client,
        &ns,
        "minio-keys",
        &[("aws_access_key_id", &access_key), ("aws_secret_access_key", &secret_key)],
    )
    .await;
    apply(&client, &ns, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}})).await;
    let mut spec = common::store::minio_spec(&bucket, json!({}));
    spec["path"] = json!(format!("s3://{bucket}/team"));
    common::store::apply_store(&client, &ns, "ml", spec).await;
    let mut operator = Operator::start(&ns, "10m");
    apply(&client, &ns, stack("prod", json!({"mode": "Scoped", "duration": "15m"}))).await;
    let first = ready(&client, &ns, "prod").await.status.unwrap().credentials.unwrap();
    // A new process, which knows only what the Secret says, and a renewal made due at once.
    operator.kill();
    let _operator = Operator::start(&ns, "10m");
    set_minio_user(&access_key, "disabled");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let due_now = json!({"metadata": {"annotations": {"artifacts.dev/renew-at": "2026-01-01T00:00:00Z"}}});
    secrets
        .patch("prod-scoped-credentials", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&due_now))
        .await
        .unwrap();

    let api: Api<Stack> = Api::namespaced(client.clone(), &ns);
    let (_, _, message) = eventually(TIMEOUT, "CredentialsRenewalFailed", || async {
        scoped_condition(&api, "prod")
            .await
            .filter(|(status, reason, _)| status == "False" && reason == "CredentialsRenewalFailed")
    })
    .await;
    println!("{message}");
    assert!(message.contains(&first.expires_at), "says when the current ones expire: {message}");
    let stack = api.get("prod").await.unwrap();
    let ready = find(&stack, "Ready").unwrap();
    assert_eq!(ready.status, "True", "the current credentials still work: {}", ready.message);

    // STS answers again: the retry renews.
    set_minio_user(&access_key, "enabled");
    let (_, _, message) = eventually(TIMEOUT, "the renewal after the outage", || async {
        scoped_condition(&api, "prod").await.filter(|(status, _, _)| status == "True")
    })
    .await;
    let renewed = api.get("prod").await.unwrap().status.unwrap().credentials.unwrap();
    assert_ne!(renewed.access_key_id, first.access_key_id, "{message}");
}

#[tokio::test]
async fn argo_s_own_code_saves_and_loads_with_the_scoped_session_credentials() {
    let (client, ns, bucket) = prepare("scoped-argo").await;
    let operator = Operator::start(&ns, "10m");
    let mut argo = stack("prod", json!({"mode": "Scoped", "prefix": "argo", "duration": "15m"}));
    argo["spec"]["outputs"] = json!({"formats": ["Argo"], "argoDefaultRepository": true});
    apply(&client, &ns, argo).await;
    ready(&client, &ns, "prod").await;
    let repositories =
        Api::<ConfigMap>::namespaced(client.clone(), &ns).get("artifact-repositories").await.unwrap().data.unwrap();
    let repository: Value = serde_yaml_ng::from_str(&repositories["prod"]).unwrap();
    assert_eq!(repository["s3"]["sessionTokenSecret"]["name"], "prod-scoped-credentials");
    assert_eq!(repository["s3"]["keyFormat"], "team/argo/{{workflow.name}}/{{pod.name}}");
    // Argo's S3 driver signs with the session keys the Secret holds, under the Stack's prefix.
    let stdout = common::argo_uses_the_namespace_default(&ns, "prod");
    assert!(stdout.contains(&format!("s3://{bucket}/team/argo/")), "{stdout}");
    drop(operator);
}

/// The escalation once reported: a Stack over `s3://BUCKET/team` asking for the prefix `t*` (or `*`)
/// got session credentials that read every team's objects. Now such a prefix is refused at
/// admission; a store whose path carries a pattern gets no session at all (STS is never asked);
/// and a literal prefix reaches its own team only, as MinIO enforces the session policy.
#[tokio::test]
async fn a_scoped_prefix_is_literal_so_no_stack_reaches_another_team() {
    let (client, ns, bucket) = prepare("scoped-literal").await;
    for key in ["team/team-a/runs.txt", "team/team-b/secret.txt"] {
        put(&s3_root(), &bucket, key).await;
    }
    let operator = Operator::start(&ns, "3s");
    for prefix in ["t*", "*", "team-?", "${aws:username}"] {
        let wild = stack("wild", json!({"mode": "Scoped", "access": "ReadOnly", "prefix": prefix}));
        let refused = common::try_create(&client, &ns, wild).await.expect_err(prefix).to_string();
        assert!(refused.contains("IAM reads them as patterns"), "{prefix}: {refused}");
    }

    apply(&client, &ns, stack("team-a", json!({"mode": "Scoped", "access": "ReadOnly", "prefix": "team-a"}))).await;
    ready(&client, &ns, "team-a").await;
    let s3 = s3_with(&scoped_secret(&client, &ns, "team-a").await);
    let get = |key: &'static str| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            match s3.get_object().bucket(&bucket).key(key).send().await {
                Ok(_) => "ok".to_owned(),
                Err(error) => aws_sdk_s3::error::ProvideErrorMetadata::code(&error).unwrap_or("no code").to_owned(),
            }
        }
    };
    let evidence = [
        ("list team/team-a/", list(&s3, &bucket, "team/team-a/").await, "ok"),
        ("get team/team-a/runs.txt", get("team/team-a/runs.txt").await, "ok"),
        ("list team/team-b/", list(&s3, &bucket, "team/team-b/").await, "AccessDenied"),
        ("get team/team-b/secret.txt", get("team/team-b/secret.txt").await, "AccessDenied"),
        ("list team/", list(&s3, &bucket, "team/").await, "AccessDenied"),
    ];
    for (what, got, expected) in evidence {
        println!("team-a's session on MinIO, {what}: {got}");
        assert_eq!(got, expected, "{what}");
    }

    // Admission lets a store's path carry any key character: the pattern is refused where the
    // scope is built, before STS is asked.
    let calls = sts_calls(&operator).await;
    let mut spec = common::store::minio_spec(&bucket, json!({}));
    spec["path"] = json!(format!("s3://{bucket}/t*"));
    common::store::apply_store(&client, &ns, "wild", spec).await;
    common::store::wait_for(&client, &ns, "wild", "Ready", "True", "Ready").await;
    let mut via_store = stack("via-store", json!({"mode": "Scoped", "access": "ReadOnly"}));
    via_store["spec"]["artifactStoreRef"]["name"] = json!("wild");
    apply(&client, &ns, via_store).await;
    let refused = common::stacks::wait_for(&client, &ns, "via-store", "False", "ScopedCredentialsUnsupported").await;
    let message = common::stacks::message(&refused);
    assert!(message.contains("path of ArtifactStore wild") && message.contains("'*'"), "{message}");
    let secret = Api::<Secret>::namespaced(client.clone(), &ns).get_opt("via-store-scoped-credentials").await.unwrap();
    assert!(secret.is_none_or(|s| s.data.unwrap_or_default().is_empty()), "no session credentials were issued");
    assert_eq!(sts_calls(&operator).await, calls, "STS was not asked");
}

/// The session policy the operator builds, read by moto's IAM evaluator (the code moto's server
/// runs when its IAM authentication is on): a literal prefix allows its own objects and nothing one
/// character or one prefix over. (moto does not evaluate `StringLike` conditions, so listing is
/// shown on MinIO above.) The control: the same policy with the prefix `t*`, as it was built before
/// such prefixes were refused, lets moto read another team's object, so the refusal is what keeps
/// the escalation out.
#[test]
fn moto_reads_the_operator_s_session_policy_as_one_literal_prefix() {
    use artifact_operator::api::stack::Access;
    use artifact_operator::stack::credentials::{Scope, session_policy};
    use artifact_operator::stack::resolved::{DEFAULT_DURATION, ScopeRequest};
    let store: artifact_operator::api::ArtifactStore = serde_json::from_value(json!({
        "apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": "ml", "namespace": "t"},
        "spec": {"path": "s3://bucket/teams", "auth": {"secretRef": {"name": "keys"}}, "endpoint": {"url": "http://s3:9000"}},
    }))
    .unwrap();
    let resolved = artifact_operator::resolve::ResolvedStore::new(&store, "us-east-1", false).unwrap();
    let request = ScopeRequest {
        access: Access::ReadWrite,
        duration: DEFAULT_DURATION,
        prefix: Some("team-a".to_owned()),
        role_arn: None,
    };
    let policy = session_policy(&Scope::of(&request, &resolved).unwrap(), "us-east-1").unwrap();
    let requests = [
        ("s3:GetObject", "teams/team-a/model.pkl", "PERMITTED"),
        ("s3:PutObject", "teams/team-a/runs/1", "PERMITTED"),
        ("s3:GetObject", "teams/team-b/secret.txt", "NEUTRAL"),
        ("s3:PutObject", "teams/team-ab/x", "NEUTRAL"),
        ("s3:GetObject", "teams/x", "NEUTRAL"),
        ("s3:DeleteBucket", "", "NEUTRAL"),
    ];
    for (line, (action, key, expected)) in moto_evaluates(&policy, &requests).lines().zip(requests) {
        println!("moto, the operator's policy for team-a: {line}");
        assert!(line.starts_with(action) && line.contains(key), "{line}");
        assert!(line.ends_with(expected), "{action} {key}: {line}");
    }

    let wildcard = serde_json::to_string(&policy).unwrap().replace("teams/team-a", "teams/t*");
    let control = moto_evaluates(&serde_json::from_str(&wildcard).unwrap(), &requests[2..3]);
    println!("moto, the same policy with the prefix t*: {control}");
    assert!(control.trim_end().ends_with("PERMITTED"), "{control}");
}

/// Runs `tests/consumers/iam_evaluate.py` on `policy` for (action, key in `bucket`) requests.
fn moto_evaluates(policy: &Value, requests: &[(&str, &str, &str)]) -> String {
    use std::io::Write;
    let requests: Vec<Value> = requests
        .iter()
        .map(|(action, key, _)| {
            let resource =
                if key.is_empty() { "arn:aws:s3:::bucket".to_owned() } else { format!("arn:aws:s3:::bucket/{key}") };
            json!({"action": action, "resource": resource})
        })
        .collect();
    let mut child = std::process::Command::new(format!("{}/bin/python", test_env().var("AO_VENV")))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consumers/iam_evaluate.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({"policy": policy, "requests": requests}).to_string();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "moto's evaluator failed");
    String::from_utf8(output.stdout).unwrap()
}

/// A bucket claim's consumer reads two keys, and session credentials need a third: a Stack asking
/// for both is refused with the setting to change, and publishes no claim keys.
#[tokio::test]
async fn bucket_claim_keys_are_refused_for_session_credentials() {
    let (client, ns, _bucket) = prepare("scoped-claim").await;
    let _operator = Operator::start(&ns, "10m");
    let mut claim = stack("claim", json!({"mode": "Scoped", "access": "ReadOnly"}));
    claim["spec"]["outputs"] = json!({"formats": ["BucketClaim"]});
    apply(&client, &ns, claim).await;
    let refused = common::stacks::wait_for(&client, &ns, "claim", "False", "FormatUnsupported").await;
    let message = common::stacks::message(&refused);
    assert!(message.contains("spec.credentials.mode") && message.contains("AWS_SESSION_TOKEN"), "{message}");
    let published = Api::<ConfigMap>::namespaced(client.clone(), &ns).get_opt("claim-stack").await.unwrap();
    assert!(published.is_none_or(|c| !c.data.unwrap_or_default().contains_key("BUCKET_HOST")), "no claim keys");
}
