//! The ArtifactStore reconciler end to end: a real operator process against the real apiserver,
//! MinIO and moto.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use artifact_operator::api::{ArtifactStore, Stack};
use aws_sdk_s3::primitives::ByteStream;
use common::conditions::{Wanted, wait_for_condition};
use common::store::{
    TIMEOUT, apply_store, condition, minio_spec, private_ca_config_map, ready_store, tls_spec_at, wait_for,
};
use common::{
    Operator, S3Server, eventually, limited_bucket, secret, setup, setup_with_absent_bucket, test_env, user_keys_secret,
};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

async fn bucket_exists(bucket: &str) -> bool {
    common::s3_root().head_bucket().bucket(bucket).send().await.is_ok()
}

#[tokio::test]
async fn adopted_bucket_with_keys_becomes_ready_and_publishes_secret_free_config() {
    let (client, ns, bucket) = common::setup_with_bucket("ast-adopt").await;
    let operator = Operator::start(&ns, "10m");
    let started = std::time::Instant::now();
    apply_store(&client, &ns, "ml", minio_spec(&bucket, json!({"verification": {"writeProbe": true}}))).await;
    let store = wait_for(&client, &ns, "ml", "Ready", "True", "Ready").await;
    println!("apply to Ready: {:?}", started.elapsed());
    assert_eq!(condition(&store, "CredentialsValid").status, "True");
    let status = store.status.clone().unwrap();
    assert_eq!(status.region.as_deref(), Some("us-east-1"), "the region is discovered from the bucket");
    assert_eq!(status.bucket_created, Some(false));
    assert_eq!(status.config_map_name.as_deref(), Some("ml-artifact-store"));

    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("ml-artifact-store").await.unwrap();
    let data = cm.data.unwrap();
    assert_eq!(data["ARTIFACT_STORE_PATH"], format!("s3://{bucket}/pipelines"));
    assert_eq!(data["AWS_ENDPOINT_URL_S3"], test_env().var("AO_S3_ENDPOINT"));
    assert_eq!(data["AWS_REGION"], "us-east-1");
    assert_eq!(data["ARTIFACT_STORE_SECRET_NAME"], "minio-keys");
    let zenml: Value = serde_json::from_str(&data["zenml-artifact-store.json"]).unwrap();
    assert_eq!(zenml["path"], format!("s3://{bucket}/pipelines"));
    let owner = &cm.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("ArtifactStore", Some(true)));

    let env_secret = Api::<Secret>::namespaced(client.clone(), &ns).get("ml-aws-credentials").await.unwrap();
    let keys = env_secret.data.unwrap();
    assert_eq!(keys["AWS_SECRET_ACCESS_KEY"].0, test_env().var("AO_S3_USER_SECRET_KEY").as_bytes());

    // The write probe left nothing behind.
    let listed = common::s3_root().list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0));

    // The secret value (the canary) is nowhere but in Secrets: not in ConfigMaps, status, Events, logs.
    let canary = test_env().var("AO_S3_USER_SECRET_KEY");
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
    assert!(!serde_json::to_string(&cms).unwrap().contains(canary), "a ConfigMap holds the secret");
    assert!(!serde_json::to_string(&store).unwrap().contains(canary), "the store holds the secret");
    let events = Api::<Event>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
    assert!(!events.items.is_empty(), "transitions are published as Events");
    assert!(!serde_json::to_string(&events).unwrap().contains(canary), "an Event holds the secret");
    let log = operator.log_text();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "the operator logs at trace level");
    assert!(!log.contains(canary), "the operator's log holds the secret");
}

#[tokio::test]
async fn create_provisions_the_bucket_with_its_settings() {
    let settings = json!({"provisioning": "Create", "bucket": {"versioning": true, "tags": {"team": "a"}, "lifecycle": {"noncurrentVersionExpirationDays": 30, "expireObjectsAfterDays": 365}}});
    let (_, _, bucket, _operator, store) = ready_store("ast-create", "create", settings).await;
    assert_eq!(condition(&store, "BucketReady").reason, "BucketCreated");
    assert_eq!(store.status.as_ref().unwrap().bucket_created, Some(true));
    let s3 = common::s3_root();
    let versioning = s3.get_bucket_versioning().bucket(&bucket).send().await.unwrap();
    assert_eq!(versioning.status().map(|s| s.as_str()), Some("Enabled"));
    let tags = s3.get_bucket_tagging().bucket(&bucket).send().await.unwrap();
    let tags: BTreeMap<_, _> = tags.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect();
    assert_eq!(tags.get("team").map(String::as_str), Some("a"));
    assert_eq!(tags.get("artifacts.dev/created-by"), store.metadata.uid.as_ref());
    let lifecycle = s3.get_bucket_lifecycle_configuration().bucket(&bucket).send().await;
    let bucket_ready = condition(&store, "BucketReady").message.clone();
    match common::s3_server() {
        S3Server::MinIO => {
            let lifecycle = lifecycle.unwrap();
            let rules: Vec<_> = lifecycle.rules().iter().filter_map(|r| r.id()).collect();
            assert!(
                rules.contains(&"artifact-operator-noncurrent-versions")
                    && rules.contains(&"artifact-operator-expire-objects"),
                "{rules:?}"
            );
            // MinIO (without a KMS) has no default encryption or public access block API.
            assert!(
                bucket_ready.ends_with("the endpoint does not implement: default encryption, public access block"),
                "{bucket_ready}"
            );
        }
        S3Server::Versitygw => {
            // versitygw has no lifecycle, default encryption or public access block API: the store
            // is Ready and says which settings the server lacks.
            let code = lifecycle.unwrap_err().into_service_error().meta().code().map(str::to_owned);
            assert_eq!(code.as_deref(), Some("NotImplemented"));
            assert!(
                bucket_ready
                    .ends_with("the endpoint does not implement: default encryption, public access block, lifecycle"),
                "{bucket_ready}"
            );
        }
    }
}

/// moto's S3, which implements S3's Object Ownership (MinIO does not), with moto's any-key identity.
fn moto_s3() -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(test_env().var("AO_MOTO_ENDPOINT"))
        .force_path_style(true)
        .credentials_provider(aws_credential_types::Credentials::new("testing", "testing", None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn object_ownership(s3: &aws_sdk_s3::Client, bucket: &str) -> Option<String> {
    let controls = s3.get_bucket_ownership_controls().bucket(bucket).send().await.ok()?;
    Some(controls.ownership_controls()?.rules().first()?.object_ownership().as_str().to_owned())
}

#[tokio::test]
async fn an_acl_on_a_bucket_with_acls_disabled_is_refused_and_a_created_bucket_takes_it() {
    use aws_sdk_s3::types::{ObjectOwnership, OwnershipControls, OwnershipControlsRule};
    let (client, ns) = setup("ast-acl").await;
    secret(&client, &ns, "moto-keys", &[("aws_access_key_id", "testing"), ("aws_secret_access_key", "testing")]).await;
    let s3 = moto_s3();
    let enforced = limited_bucket("acl-enforced");
    s3.create_bucket().bucket(&enforced).object_ownership(ObjectOwnership::BucketOwnerEnforced).send().await.unwrap();
    let spec = |bucket: &str, extra: Value| {
        let mut spec = json!({
            "path": format!("s3://{bucket}/pipelines"),
            "endpoint": {"url": test_env().var("AO_MOTO_ENDPOINT"), "addressingStyle": "Path"},
            "auth": {"secretRef": {"name": "moto-keys"}},
            "objectDefaults": {"acl": "bucket-owner-full-control"},
        });
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        spec
    };
    let _operator = Operator::start(&ns, "2s");
    apply_store(&client, &ns, "enforced", spec(&enforced, json!({}))).await;
    let store = wait_for(&client, &ns, "enforced", "BucketReady", "False", "AclNotSupported").await;
    let message = &condition(&store, "BucketReady").message;
    assert!(message.contains("BucketOwnerEnforced") && message.contains("remove spec.objectDefaults.acl"), "{message}");
    assert_eq!(condition(&store, "Ready").reason, "AclNotSupported");

    // The bucket's owner lets ACLs in: the store is Ready without anyone touching it.
    let preferred =
        OwnershipControlsRule::builder().object_ownership(ObjectOwnership::BucketOwnerPreferred).build().unwrap();
    let controls = OwnershipControls::builder().rules(preferred).build().unwrap();
    s3.put_bucket_ownership_controls().bucket(&enforced).ownership_controls(controls).send().await.unwrap();
    wait_for(&client, &ns, "enforced", "Ready", "True", "Ready").await;

    // A bucket the store creates takes the ACL its writes carry.
    let created = limited_bucket("acl-created");
    apply_store(&client, &ns, "created", spec(&created, json!({"provisioning": "Create"}))).await;
    wait_for(&client, &ns, "created", "Ready", "True", "Ready").await;
    assert_eq!(object_ownership(&s3, &created).await.as_deref(), Some("BucketOwnerPreferred"));
}

#[tokio::test]
async fn missing_bucket_is_reported_and_never_created_when_adopting() {
    let (client, ns, bucket) = setup_with_absent_bucket("ast-missing", "missing").await;
    let _operator = Operator::start(&ns, "10m");
    apply_store(&client, &ns, "ml", minio_spec(&bucket, json!({}))).await;
    let store = wait_for(&client, &ns, "ml", "BucketReady", "False", "BucketNotFound").await;
    assert!(condition(&store, "BucketReady").message.contains(&bucket));
    assert_eq!(condition(&store, "Ready").status, "False");
    assert!(!bucket_exists(&bucket).await, "Adopt never creates a bucket");
    let events = Api::<Event>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
    assert!(
        events.items.iter().any(|e| e.reason.as_deref() == Some("BucketNotFound")),
        "a Warning Event names the reason"
    );
}

#[tokio::test]
async fn wrong_keys_are_reported_without_the_key() {
    let (client, ns) = setup("ast-wrong-keys").await;
    let bucket = limited_bucket("wrong");
    common::s3_root().create_bucket().bucket(&bucket).send().await.unwrap();
    secret(
        &client,
        &ns,
        "minio-keys",
        &[
            ("aws_access_key_id", test_env().var("AO_S3_USER_ACCESS_KEY")),
            ("aws_secret_access_key", "canary-wrong-secret-value"),
        ],
    )
    .await;
    let operator = Operator::start(&ns, "10m");
    apply_store(&client, &ns, "ml", minio_spec(&bucket, json!({}))).await;
    let store = wait_for(&client, &ns, "ml", "CredentialsValid", "False", "SignatureDoesNotMatch").await;
    assert!(!serde_json::to_string(&store).unwrap().contains("canary-wrong-secret-value"));
    assert!(!operator.log_text().contains("canary-wrong-secret-value"));

    // An access key the server does not know is named as such, not as a missing bucket.
    secret(
        &client,
        &ns,
        "unknown-keys",
        &[("aws_access_key_id", "aounknownkey0000"), ("aws_secret_access_key", "canary-unknown-secret-value")],
    )
    .await;
    let mut spec = minio_spec(&bucket, json!({}));
    spec["auth"] = json!({"secretRef": {"name": "unknown-keys"}});
    apply_store(&client, &ns, "unknown", spec).await;
    let store = wait_for(&client, &ns, "unknown", "CredentialsValid", "False", "InvalidAccessKeyId").await;
    assert_eq!(condition(&store, "BucketReady").reason, "InvalidAccessKeyId");
    assert!(!serde_json::to_string(&store).unwrap().contains("canary-unknown-secret-value"));
}

#[tokio::test]
async fn missing_secret_key_is_named_and_fixing_the_secret_makes_the_store_ready() {
    let (client, ns) = setup("ast-fix-secret").await;
    let bucket = limited_bucket("fix");
    common::s3_root().create_bucket().bucket(&bucket).send().await.unwrap();
    secret(&client, &ns, "minio-keys", &[("aws_access_key_id", test_env().var("AO_S3_USER_ACCESS_KEY"))]).await;
    let _operator = Operator::start(&ns, "10m");
    apply_store(&client, &ns, "ml", minio_spec(&bucket, json!({}))).await;
    let store = wait_for(&client, &ns, "ml", "CredentialsValid", "False", "SecretKeyMissing").await;
    assert!(condition(&store, "CredentialsValid").message.contains("aws_secret_access_key"));
    let generation = store.metadata.generation;
    user_keys_secret(&client, &ns, "minio-keys").await;
    let store = wait_for(&client, &ns, "ml", "Ready", "True", "Ready").await;
    assert_eq!(store.metadata.generation, generation, "the store itself was not touched");
}

#[tokio::test]
async fn region_mismatch_names_both_regions() {
    let (client, ns, bucket) = common::setup_with_bucket("ast-region").await;
    let _operator = Operator::start(&ns, "10m");
    apply_store(&client, &ns, "ml", minio_spec(&bucket, json!({"region": "eu-west-3"}))).await;
    let store = wait_for(&client, &ns, "ml", "BucketReady", "False", "RegionMismatch").await;
    let message = &condition(&store, "BucketReady").message;
    assert!(message.contains("eu-west-3") && message.contains("us-east-1"), "{message}");
}

#[tokio::test]
async fn custom_ca_is_trusted_verification_is_on_by_default_and_can_be_skipped() {
    // The TLS MinIO is a separate server: the operator creates the bucket there.
    let (client, ns, bucket) = setup_with_absent_bucket("ast-tls", "tls").await;
    let pem = private_ca_config_map(&client, &ns, "s3-ca").await;
    let _operator = Operator::start(&ns, "10m");
    let spec = tls_spec_at(&format!("s3://{bucket}"), json!({"name": "s3-ca"}));
    apply_store(&client, &ns, "ml", spec.clone()).await;
    wait_for(&client, &ns, "ml", "Ready", "True", "Ready").await;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("ml-artifact-store").await.unwrap();
    assert_eq!(cm.data.as_ref().unwrap()["ca-bundle.pem"], pem);
    // Without the CA the endpoint is not trusted: TLS verification is on.
    let mut insecure = spec.clone();
    insecure["endpoint"]["tls"] = json!({"insecureSkipVerify": true});
    apply_store(&client, &ns, "insecure", insecure).await;
    wait_for(&client, &ns, "insecure", "Ready", "True", "Ready").await;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("insecure-artifact-store").await.unwrap();
    let zenml: Value = serde_json::from_str(&cm.data.unwrap()["zenml-artifact-store.json"]).unwrap();
    assert_eq!(zenml["client_kwargs"]["verify"], json!(false), "pods are told to skip verification too");
    let mut untrusted = spec;
    untrusted["endpoint"]["tls"] = json!({});
    apply_store(&client, &ns, "untrusted", untrusted).await;
    // Not a passing outage: the fix is the CA bundle.
    let store = wait_for(&client, &ns, "untrusted", "BucketReady", "False", "InvalidTlsSettings").await;
    assert!(
        condition(&store, "BucketReady").message.contains("certificate that is not trusted")
            && condition(&store, "BucketReady").message.contains("spec.endpoint.tls.caBundle"),
        "{}",
        condition(&store, "BucketReady").message
    );
}

async fn moto_role(name: &str, trust: Value) -> String {
    let env = test_env();
    let config = aws_sdk_iam::Config::builder()
        .behavior_version(aws_sdk_iam::config::BehaviorVersion::latest())
        .region(aws_sdk_iam::config::Region::new("us-east-1"))
        .endpoint_url(env.var("AO_MOTO_ENDPOINT"))
        .credentials_provider(aws_credential_types::Credentials::new("testing", "testing", None, None, "test"))
        .build();
    let iam = aws_sdk_iam::Client::from_conf(config);
    let role = iam.create_role().role_name(name).assume_role_policy_document(trust.to_string()).send().await.unwrap();
    role.role().unwrap().arn().to_owned()
}

fn trust_policy(subject: &str) -> Value {
    let provider = test_env().var("AO_OIDC_ISSUER").trim_start_matches("https://").to_owned();
    json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": {"Federated": format!("arn:aws:iam::123456789012:oidc-provider/{provider}")},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {format!("{provider}:sub"): subject, format!("{provider}:aud"): "sts.amazonaws.com"}}
    }]})
}

async fn service_account(client: &Client, ns: &str, name: &str, role_arn: Option<&str>) {
    let mut account = json!({"metadata": {"name": name}});
    if let Some(arn) = role_arn {
        account["metadata"]["annotations"] = json!({"eks.amazonaws.com/role-arn": arn});
    }
    let account: ServiceAccount = serde_json::from_value(account).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), ns).create(&PostParams::default(), &account).await.unwrap();
}

/// IRSA end to end against moto's IAM, STS and S3 and the real apiserver's tokens: the trust
/// policy is read, then the operator requests a token of the ServiceAccount (audience
/// sts.amazonaws.com), assumes the role with it and lists the prefix with the role's credentials.
/// MinIO, which does not trust AWS STS, refuses those credentials, though it takes the operator's
/// own: the listing is done with the role's.
#[tokio::test]
async fn irsa_wiring_is_checked_against_iam_and_proven_by_assuming_the_role() {
    let (client, ns) = setup("ast-irsa").await;
    let bucket = limited_bucket("irsa");
    moto_s3().create_bucket().bucket(&bucket).send().await.unwrap();
    common::s3_root().create_bucket().bucket(&bucket).send().await.unwrap();
    let good = moto_role(&format!("good-{ns}"), trust_policy(&format!("system:serviceaccount:{ns}:runner"))).await;
    let wrong =
        moto_role(&format!("wrong-{ns}"), trust_policy(&format!("system:serviceaccount:{ns}:someone-else"))).await;
    service_account(&client, &ns, "runner", Some(&good)).await;
    service_account(&client, &ns, "other", Some(&wrong)).await;
    service_account(&client, &ns, "plain", None).await;
    let operator = Operator::start(&ns, "10m");
    let spec = |account: &str, endpoint: &str| {
        json!({
            "path": format!("s3://{bucket}/irsa"),
            "endpoint": {"url": test_env().var(endpoint), "addressingStyle": "Path"},
            "auth": {"implicit": {"serviceAccountName": account}},
            "verification": {"writeProbe": true},
        })
    };
    apply_store(&client, &ns, "good", spec("runner", "AO_MOTO_ENDPOINT")).await;
    apply_store(&client, &ns, "minio", spec("runner", "AO_S3_ENDPOINT")).await;
    apply_store(&client, &ns, "wrong-subject", spec("other", "AO_MOTO_ENDPOINT")).await;
    apply_store(&client, &ns, "no-annotation", spec("plain", "AO_MOTO_ENDPOINT")).await;
    let store = wait_for(&client, &ns, "good", "CredentialsValid", "True", "Verified").await;
    let message = condition(&store, "CredentialsValid").message.clone();
    assert!(
        message.contains(&format!(
            "assuming it with the ServiceAccount's token, the operator listed, wrote and deleted under s3://{bucket}/irsa"
        )),
        "{message}"
    );
    assert_eq!(store.status.unwrap().identity_arn.as_deref(), Some(good.as_str()));
    let listed = moto_s3().list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0), "the write probe deleted what it wrote");

    let store = wait_for(&client, &ns, "minio", "CredentialsValid", "False", "RoleCredentialsRejected").await;
    let message = condition(&store, "CredentialsValid").message.clone();
    assert!(message.contains(&good) && message.contains("spec.auth.secretRef"), "{message}");
    assert_eq!(condition(&store, "BucketReady").status, "True", "the operator's own keys reach the bucket");

    let store = wait_for(&client, &ns, "wrong-subject", "CredentialsValid", "False", "TrustPolicyMismatch").await;
    assert!(condition(&store, "CredentialsValid").message.contains(&format!("system:serviceaccount:{ns}:other")));
    let store = wait_for(&client, &ns, "no-annotation", "CredentialsValid", "False", "IrsaAnnotationMissing").await;
    assert!(condition(&store, "CredentialsValid").message.contains("eks.amazonaws.com/role-arn"));

    // The ServiceAccount tokens went to STS only: not to the log, which the tests write at trace
    // level, nor to a status or an Event. Every token this apiserver issues for STS starts with the
    // same two texts: its header (the signing key's ID) and its audience claim. A bare "eyJ" is
    // not searched for: moto's random request IDs, which the trace log holds, sometimes contain it.
    let markers = token_markers(&client, &ns, "runner").await;
    let log = operator.log_text();
    let stores = Api::<ArtifactStore>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
    let events = Api::<Event>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
    let published = serde_json::to_string(&(stores, events)).unwrap();
    for marker in &markers {
        assert!(!log.contains(marker.as_str()), "a token reached the operator's log: {marker}");
        assert!(!published.contains(marker.as_str()), "a token reached a status or Event: {marker}");
    }
}

/// The two texts every STS token of `account` starts with, as the operator requests them: the
/// encoded header (which names the apiserver's signing key) and the encoded audience claim.
async fn token_markers(client: &Client, ns: &str, account: &str) -> [String; 2] {
    let token = common::service_account_token(client, ns, account, &["sts.amazonaws.com"]).await;
    let mut parts = token.split('.');
    let header = parts.next().unwrap().to_owned();
    let payload = parts.next().unwrap();
    // The claims start {"aud":["sts.amazonaws.com"],... : their first 27 bytes encode to 36
    // characters that do not depend on what follows.
    assert!(
        header.len() > 30 && payload.starts_with("eyJhdWQiOlsic3RzLmFtYXpvbmF3cy5jb20i"),
        "an STS token of another form"
    );
    [header, payload[..36].to_owned()]
}

async fn delete_store(client: &Client, ns: &str, name: &str) {
    Api::<ArtifactStore>::namespaced(client.clone(), ns).delete(name, &DeleteParams::default()).await.unwrap();
}

async fn gone(client: &Client, ns: &str, name: &str) {
    let api: Api<ArtifactStore> = Api::namespaced(client.clone(), ns);
    eventually(TIMEOUT, &format!("{ns}/{name} to be deleted"), || async {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn delete_policy_deletes_only_an_empty_created_bucket() {
    let (client, ns) = setup("ast-delete").await;
    let (empty, full) = (limited_bucket("empty"), limited_bucket("full"));
    user_keys_secret(&client, &ns, "minio-keys").await;
    let _operator = Operator::start(&ns, "10m");
    let spec = |bucket: &str| minio_spec(bucket, json!({"provisioning": "Create", "deletionPolicy": "Delete"}));
    apply_store(&client, &ns, "empty", spec(&empty)).await;
    apply_store(&client, &ns, "full", spec(&full)).await;
    wait_for(&client, &ns, "empty", "Ready", "True", "Ready").await;
    wait_for(&client, &ns, "full", "Ready", "True", "Ready").await;
    common::s3_root()
        .put_object()
        .bucket(&full)
        .key("pipelines/model.pkl")
        .body(ByteStream::from_static(b"weights"))
        .send()
        .await
        .unwrap();

    delete_store(&client, &ns, "empty").await;
    gone(&client, &ns, "empty").await;
    assert!(!bucket_exists(&empty).await, "the empty bucket the operator created is deleted");

    delete_store(&client, &ns, "full").await;
    let api: Api<ArtifactStore> = Api::namespaced(client.clone(), &ns);
    let store = eventually(TIMEOUT, "the deletion to be blocked", || async {
        let store = api.get("full").await.unwrap();
        store.status.as_ref()?.conditions.iter().any(|c| c.reason == "BucketNotEmpty").then_some(store)
    })
    .await;
    assert!(condition(&store, "Ready").message.contains("model.pkl"), "the message names what is left");
    assert!(bucket_exists(&full).await, "a bucket with objects is kept");
    assert!(store.metadata.finalizers.unwrap().contains(&"artifacts.dev/bucket-deletion".to_owned()));

    // Switching to Retain lets the store go and keeps the bucket.
    apply_store(&client, &ns, "full", minio_spec(&full, json!({"provisioning": "Create", "deletionPolicy": "Retain"})))
        .await;
    gone(&client, &ns, "full").await;
    assert!(bucket_exists(&full).await);
}

#[tokio::test]
async fn retain_keeps_the_bucket_and_needs_no_finalizer() {
    let (client, ns, bucket, _operator, store) =
        ready_store("ast-retain", "retain", json!({"provisioning": "Create"})).await;
    assert!(store.metadata.finalizers.unwrap_or_default().is_empty());
    delete_store(&client, &ns, "ml").await;
    gone(&client, &ns, "ml").await;
    assert!(bucket_exists(&bucket).await);
}

#[tokio::test]
async fn deleting_the_namespace_deletes_no_bucket() {
    let deletable = json!({"provisioning": "Create", "deletionPolicy": "Delete"});
    let (client, ns, bucket, _operator, _) = ready_store("ast-namespace", "nsdel", deletable).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(90), "the namespace to be gone", || async {
        namespaces.get_opt(&ns).await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        bucket_exists(&bucket).await,
        "even an empty, operator-created bucket under Delete survives namespace deletion"
    );
}

/// The number of requests of `verb` the operator has sent the apiserver.
async fn kube_requests(operator: &Operator, verb: &str) -> f64 {
    operator.counter(&format!("artifact_operator_kube_requests_total{{verb=\"{verb}\"}}")).await
}

#[tokio::test]
async fn steady_state_makes_no_kubernetes_requests_and_one_s3_call_per_resync() {
    let (client, ns, bucket) = common::setup_with_bucket("ast-steady").await;
    let operator = Operator::start(&ns, "2s");
    apply_store(&client, &ns, "ml", minio_spec(&bucket, json!({}))).await;
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}});
    let stack = json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "ml"}, "spec": {
        "artifactStoreRef": {"name": "ml"},
        "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "runner"},
        "outputs": {"formats": ["ZenML", "Argo"]},
    }});
    let params = PatchParams::apply("test").force();
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .patch("runner", &params, &Patch::Apply(&account))
        .await
        .unwrap();
    Api::<Stack>::namespaced(client.clone(), &ns).patch("ml", &params, &Patch::Apply(&stack)).await.unwrap();
    wait_for(&client, &ns, "ml", "Ready", "True", "Ready").await;
    wait_for_condition::<Stack>(&client, &ns, "ml", "Ready", Wanted::True, TIMEOUT).await;
    // The passes that follow the last writes (each write is seen once more) settle within a resync.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let versions = || async {
        let store = Api::<ArtifactStore>::namespaced(client.clone(), &ns).get("ml").await.unwrap();
        let stack = Api::<Stack>::namespaced(client.clone(), &ns).get("ml").await.unwrap();
        let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
        let mut versions = vec![store.metadata.resource_version, stack.metadata.resource_version];
        versions.extend(config_maps.items.into_iter().map(|o| o.metadata.resource_version));
        versions.extend(secrets.items.into_iter().map(|o| o.metadata.resource_version));
        versions
    };
    let before = versions().await;
    let verbs = ["get", "create", "update", "patch", "delete"];
    let mut requests_before = Vec::new();
    for verb in verbs {
        requests_before.push(kube_requests(&operator, verb).await);
    }
    let s3_before = operator.counter("artifact_operator_aws_calls_total{service=\"s3\",outcome=\"ok\"}").await;
    let window = Duration::from_secs(12);
    tokio::time::sleep(window).await;
    let s3_after = operator.counter("artifact_operator_aws_calls_total{service=\"s3\",outcome=\"ok\"}").await;
    let mut requests = Vec::new();
    for (verb, before) in verbs.iter().zip(&requests_before) {
        requests.push((*verb, kube_requests(&operator, verb).await - before));
    }
    assert_eq!(versions().await, before, "no status, metadata or published object written at steady state");
    println!("steady state over {window:?} at a 2s resync: apiserver requests {requests:?}");
    assert!(requests.iter().all(|(_, count)| *count == 0.0), "no read and no write at steady state: {requests:?}");
    let calls = s3_after - s3_before;
    // 12s at a 2s resync (±10%) allows at most 7 periods: one HeadBucket each.
    println!("steady state: {calls} S3 calls in {window:?} at a 2s resync");
    assert!((3.0..=7.0).contains(&calls), "{calls} S3 calls");
}

#[tokio::test]
async fn stores_re_verified_together_on_one_endpoint_stay_ready_without_a_write() {
    // Twenty-four stores on one S3 endpoint fall due together at each resync: more quick checks
    // at once than one server's share of the reconcile workers (4 of 16). A server that answers
    // is not turned away for that: no store flips to EndpointUnreachable and back.
    let (client, ns, bucket) = common::setup_with_bucket("ast-burst").await;
    let operator = Operator::start(&ns, "2s");
    let names: Vec<String> = (0..24).map(|i| format!("burst-{i}")).collect();
    for name in &names {
        let mut spec = minio_spec(&bucket, json!({}));
        spec["path"] = json!(format!("s3://{bucket}/{name}"));
        apply_store(&client, &ns, name, spec).await;
    }
    for name in &names {
        wait_for(&client, &ns, name, "Ready", "True", "Ready").await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stores = Api::<ArtifactStore>::namespaced(client.clone(), &ns);
    let versions = || async {
        let listed = stores.list(&ListParams::default()).await.unwrap();
        listed.items.into_iter().map(|s| (s.metadata.name.unwrap(), s.metadata.resource_version)).collect::<Vec<_>>()
    };
    let before = versions().await;
    let s3_before = operator.counter("artifact_operator_aws_calls_total{service=\"s3\",outcome=\"ok\"}").await;
    let window = Duration::from_secs(16);
    tokio::time::sleep(window).await;
    let calls = operator.counter("artifact_operator_aws_calls_total{service=\"s3\",outcome=\"ok\"}").await - s3_before;
    let events = Api::<Event>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
    let unreachable: Vec<String> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("EndpointUnreachable"))
        .map(|e| {
            format!("{}: {}", e.involved_object.name.clone().unwrap_or_default(), e.message.clone().unwrap_or_default())
        })
        .collect();
    println!("24 stores over {window:?} at a 2s resync: {calls} S3 calls; EndpointUnreachable events {unreachable:?}");
    assert!(calls >= 24.0, "the window spans at least one re-verification of every store: {calls} S3 calls");
    assert!(unreachable.is_empty(), "a server that answers is never reported unreachable: {unreachable:?}");
    assert_eq!(versions().await, before, "no status written while the stores stay Ready");
}

#[tokio::test]
async fn one_operator_watches_exactly_the_listed_namespaces() {
    let (client, first) = setup("ast-list-a").await;
    let second = common::namespace(&client, "ast-list-b").await;
    let unwatched = common::namespace(&client, "ast-list-c").await;
    let bucket = limited_bucket("list");
    common::s3_root().create_bucket().bucket(&bucket).send().await.unwrap();
    for ns in [&first, &second, &unwatched] {
        user_keys_secret(&client, ns, "minio-keys").await;
        apply_store(&client, ns, "ml", minio_spec(&bucket, json!({}))).await;
    }
    let _operator = Operator::start(&format!("{first},{second}"), "10m");
    wait_for(&client, &first, "ml", "Ready", "True", "Ready").await;
    wait_for(&client, &second, "ml", "Ready", "True", "Ready").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let untouched = Api::<ArtifactStore>::namespaced(client.clone(), &unwatched).get("ml").await.unwrap();
    assert!(untouched.status.is_none(), "a store outside the watched namespaces is left alone");
}

#[tokio::test]
async fn metrics_show_reconciles_aws_calls_and_readiness() {
    let (client, ns, bucket) = common::setup_with_bucket("ast-metrics").await;
    let operator = Operator::start(&ns, "10m");
    apply_store(&client, &ns, "ready", minio_spec(&bucket, json!({}))).await;
    apply_store(&client, &ns, "missing", minio_spec(&limited_bucket("absent"), json!({}))).await;
    wait_for(&client, &ns, "ready", "Ready", "True", "Ready").await;
    wait_for(&client, &ns, "missing", "BucketReady", "False", "BucketNotFound").await;
    // The status is written before a reconcile returns and records its metrics, and the gauge
    // counts the cache, which sees the status after the test does: wait for both stores in both.
    // (The missing bucket's store alone may reconcile twice before the other returns.)
    let metrics = eventually(Duration::from_secs(15), "both stores to be counted", || async {
        let metrics = operator.metrics().await;
        let series =
            |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok());
        let reconciles = series("artifact_operator_reconciles_total{kind=\"ArtifactStore\"}");
        let ready = series("artifact_operator_objects{kind=\"ArtifactStore\",ready=\"True\"}");
        let failed = series("artifact_operator_objects{kind=\"ArtifactStore\",ready=\"False\"}");
        let verified = series("artifact_operator_store_verifications_total");
        (reconciles >= Some(2.0) && ready == Some(1.0) && failed == Some(1.0) && verified >= Some(1.0))
            .then_some(metrics)
    })
    .await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(value("artifact_operator_reconciles_total{kind=\"ArtifactStore\"}") >= 2.0, "{metrics}");
    assert!(value("artifact_operator_aws_calls_total{service=\"s3\",outcome=\"ok\"}") >= 1.0, "{metrics}");
    assert!(value("artifact_operator_aws_calls_total{service=\"s3\",outcome=\"error\"}") >= 1.0, "{metrics}");
    assert_eq!(value("artifact_operator_time_to_ready_seconds_count{kind=\"ArtifactStore\"}"), 1.0, "{metrics}");
    assert_eq!(value("artifact_operator_objects{kind=\"ArtifactStore\",ready=\"True\"}"), 1.0, "{metrics}");
    assert_eq!(value("artifact_operator_objects{kind=\"ArtifactStore\",ready=\"False\"}"), 1.0, "{metrics}");
    assert!(metrics.contains("artifact_operator_reconcile_duration_seconds_bucket"), "{metrics}");
    for path in ["/readyz", "/healthz"] {
        assert_eq!(operator.status(path).await, (200, "ok".to_owned()), "{path}");
    }
    // A store deleted without a finalizer is never reconciled again: it leaves the gauge anyway.
    delete_store(&client, &ns, "missing").await;
    eventually(Duration::from_secs(15), "the deleted store to leave the gauge", || async {
        let metrics = operator.metrics().await;
        (metrics.contains("artifact_operator_objects{kind=\"ArtifactStore\",ready=\"False\"} 0\n")
            && metrics.contains("artifact_operator_objects{kind=\"ArtifactStore\",ready=\"True\"} 1\n"))
        .then_some(())
    })
    .await;
}
