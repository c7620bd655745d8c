//! The bad-input suite: malformed ArtifactStores and Stacks, each created on the real apiserver
//! and refused at admission (422) with the field named and a message that says what to fix, and
//! valid edge cases next to them accepted, so the rules are not broader than S3 and Kubernetes.

mod common;

use serde_json::{Value, json};

/// One manifest and what the apiserver must answer.
struct Case {
    name: &'static str,
    object: Value,
    expected: Expected,
}

enum Expected {
    /// Refused with exactly one cause naming `field` with `message` in its text: one mistake, one
    /// message.
    Refused {
        field: &'static str,
        message: &'static str,
    },
    Accepted,
}

/// The field the apiserver names for a rule at the root of an object (`metadata` cannot be a
/// rule's fieldPath); such a rule's message names the field itself.
const ROOT: &str = "<nil>";

/// The note the apiserver adds when a schema error (a length, a count) kept it from evaluating
/// the rules; it is not a second complaint.
const RULES_SKIPPED: &str = "some validation rules were not checked because the object was invalid";

fn refused(name: &'static str, object: Value, field: &'static str, message: &'static str) -> Case {
    Case { name, object, expected: Expected::Refused { field, message } }
}

fn accepted(name: &'static str, object: Value) -> Case {
    Case { name, object, expected: Expected::Accepted }
}

/// `patch` merged into `base` as a JSON merge patch (RFC 7386): objects merge, null removes.
fn merged(mut base: Value, patch: Value) -> Value {
    if let (Some(target), Value::Object(changes)) = (base.as_object_mut(), &patch) {
        for (key, value) in changes {
            if value.is_null() {
                target.remove(key);
            } else {
                let current = target.remove(key).unwrap_or(Value::Null);
                target.insert(key.clone(), merged(current, value.clone()));
            }
        }
        base
    } else {
        patch
    }
}

/// An ArtifactStore named `name`: a valid store with keys from a Secret, changed by `patch`.
fn store_named(name: &str, patch: Value) -> Value {
    let valid = json!({"path": "s3://ml-artifacts/team-a", "auth": {"secretRef": {"name": "minio-keys"}}});
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": name}, "spec": merged(valid, patch)})
}

fn store(patch: Value) -> Value {
    store_named("bad", patch)
}

/// A store with an endpoint whose url is `url`.
fn store_at(url: &str) -> Value {
    store(json!({"endpoint": {"url": url}}))
}

/// A store that creates its bucket with these tags.
fn store_tagged(name: &str, tags: Value) -> Value {
    store_named(name, json!({"provisioning": "Create", "bucket": {"tags": tags}}))
}

/// A Stack named `name`: a valid Kubernetes-orchestrated stack, changed by `patch`.
fn stack_named(name: &str, patch: Value) -> Value {
    let valid = json!({"artifactStoreRef": {"name": "ml"}, "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"}});
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": merged(valid, patch)})
}

fn stack(patch: Value) -> Value {
    stack_named("bad", patch)
}

/// `n` tags `t0`..: `v`.
fn many_tags(n: usize) -> Value {
    (0..n).map(|i| (format!("t{i}"), json!("v"))).collect::<serde_json::Map<_, _>>().into()
}

/// Applies every case to a fresh namespace and fails, naming each case, when any answer differs
/// from the expected one.
async fn run(test: &str, cases: Vec<Case>) {
    let (client, ns) = common::setup(test).await;
    let mut failures = Vec::new();
    for case in &cases {
        let answer = common::try_create(&client, &ns, case.object.clone()).await;
        if let Some(problem) = judge(&case.expected, answer) {
            failures.push(format!("{}: {problem}", case.name));
        } else {
            println!("{}: as expected", case.name);
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// What is wrong with `answer`, if anything.
fn judge(expected: &Expected, answer: Result<(), kube::Error>) -> Option<String> {
    match (expected, answer) {
        (Expected::Accepted, Ok(())) => None,
        (Expected::Accepted, Err(error)) => Some(format!("refused: {error}")),
        (Expected::Refused { .. }, Ok(())) => Some("accepted".to_owned()),
        (Expected::Refused { field, message }, Err(kube::Error::Api(status))) => {
            let causes = status.details.as_ref().map(|d| d.causes.as_slice()).unwrap_or_default();
            let causes = causes.iter().filter(|c| !c.message.contains(RULES_SKIPPED)).collect::<Vec<_>>();
            let summary = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>();
            if status.code != 422 {
                Some(format!("answered {} rather than 422: {}", status.code, status.message))
            } else if causes.len() != 1 {
                Some(format!("{} causes rather than one: {summary:?}", causes.len()))
            } else if causes[0].field != *field || !causes[0].message.contains(message) {
                Some(format!("cause {summary:?} does not name {field:?} with {message:?}"))
            } else {
                None
            }
        }
        (Expected::Refused { .. }, Err(error)) => Some(format!("failed without an apiserver answer: {error}")),
    }
}

#[tokio::test]
async fn malformed_artifact_stores_are_refused_with_the_field_named() {
    let object_name = "must be a Kubernetes object name";
    let data_key = "must be a Secret or ConfigMap key";
    let control = "path must not contain control characters";
    let port = "the port in endpoint.url must be between 1 and 65535";
    let host = "the host in endpoint.url may contain only";
    let tag_chars = "may contain only letters, digits, spaces and _ . : / = + - @";
    let cases = vec![
        refused(
            "name of 64 characters",
            store_named(&"s".repeat(64), json!({})),
            ROOT,
            "metadata.name must be at most 63 characters",
        ),
        // The bucket and prefix in path.
        refused(
            "reserved bucket prefix amzn-s3-demo-",
            store(json!({"path": "s3://amzn-s3-demo-bucket/x"})),
            "spec.path",
            "reserved prefixes xn--, sthree- or amzn-s3-demo-",
        ),
        refused(
            "reserved bucket suffix --table-s3",
            store(json!({"path": "s3://analytics--table-s3"})),
            "spec.path",
            "reserved suffixes -s3alias, --ol-s3, .mrap, --x-s3 or --table-s3",
        ),
        refused(
            "prefix segment .",
            store(json!({"path": "s3://ml-artifacts/./team-a"})),
            "spec.path",
            "must not contain . or .. segments",
        ),
        refused(
            "prefix segment ..",
            store(json!({"path": "s3://ml-artifacts/team-a/../team-b"})),
            "spec.path",
            "must not contain . or .. segments",
        ),
        refused(
            "prefix ending in ..",
            store(json!({"path": "s3://ml-artifacts/team-a/.."})),
            "spec.path",
            "must not contain . or .. segments",
        ),
        refused(
            "trailing empty segment",
            store(json!({"path": "s3://ml-artifacts/team-a//"})),
            "spec.path",
            "must not contain empty segments",
        ),
        refused("newline in the prefix", store(json!({"path": "s3://ml-artifacts/team\na"})), "spec.path", control),
        refused("tab in the prefix", store(json!({"path": "s3://ml-artifacts/team\ta"})), "spec.path", control),
        refused("DEL in the prefix", store(json!({"path": "s3://ml-artifacts/team\u{7f}"})), "spec.path", control),
        refused("newline in the bucket", store(json!({"path": "s3://ml-arti\nfacts/team-a"})), "spec.path", control),
        refused(
            "carriage return after the bucket",
            store(json!({"path": "s3://ml-artifacts\r"})),
            "spec.path",
            control,
        ),
        // References to Secrets, ConfigMaps and ServiceAccounts, and keys in their data.
        refused(
            "Secret name with capitals and _",
            store(json!({"auth": {"secretRef": {"name": "Minio_Keys"}}})),
            "spec.auth.secretRef.name",
            object_name,
        ),
        refused(
            "Secret name with a space",
            store(json!({"auth": {"secretRef": {"name": "my key"}}})),
            "spec.auth.secretRef.name",
            object_name,
        ),
        refused(
            "Secret name with a slash",
            store(json!({"auth": {"secretRef": {"name": "a/b"}}})),
            "spec.auth.secretRef.name",
            object_name,
        ),
        refused(
            "Secret name starting with -",
            store(json!({"auth": {"secretRef": {"name": "-keys"}}})),
            "spec.auth.secretRef.name",
            object_name,
        ),
        refused(
            "Secret name of 254 characters",
            store(json!({"auth": {"secretRef": {"name": "k".repeat(254)}}})),
            "spec.auth.secretRef.name",
            "253",
        ),
        refused(
            "access key id key with a space",
            store(json!({"auth": {"secretRef": {"accessKeyIdKey": "my key"}}})),
            "spec.auth.secretRef.accessKeyIdKey",
            data_key,
        ),
        refused(
            "secret access key key with a slash",
            store(json!({"auth": {"secretRef": {"secretAccessKeyKey": "a/b"}}})),
            "spec.auth.secretRef.secretAccessKeyKey",
            data_key,
        ),
        refused(
            "session token key starting with ..",
            store(json!({"auth": {"secretRef": {"sessionTokenKey": "..token"}}})),
            "spec.auth.secretRef.sessionTokenKey",
            data_key,
        ),
        refused(
            "access key id key .",
            store(json!({"auth": {"secretRef": {"accessKeyIdKey": "."}}})),
            "spec.auth.secretRef.accessKeyIdKey",
            data_key,
        ),
        refused(
            "ServiceAccount name with capitals",
            store(json!({"auth": {"secretRef": null, "implicit": {"serviceAccountName": "Runner"}}})),
            "spec.auth.implicit.serviceAccountName",
            object_name,
        ),
        refused(
            "role ARN with a space",
            store(
                json!({"auth": {"secretRef": null, "implicit": {"roleArn": "arn:aws:iam::123456789012:role/ml pipelines"}}}),
            ),
            "spec.auth.implicit.roleArn",
            "roleArn must be an IAM role ARN",
        ),
        refused(
            "CA bundle name with a space",
            store(json!({"endpoint": {"url": "https://minio:9000", "tls": {"caBundle": {"name": "ca bundle"}}}})),
            "spec.endpoint.tls.caBundle.name",
            object_name,
        ),
        refused(
            "CA bundle key with a slash",
            store(
                json!({"endpoint": {"url": "https://minio:9000", "tls": {"caBundle": {"name": "ca", "key": "certs/ca.crt"}}}}),
            ),
            "spec.endpoint.tls.caBundle.key",
            data_key,
        ),
        // The endpoint.
        refused("port 0", store_at("http://minio:0"), "spec.endpoint.url", port),
        refused("port 70000", store_at("https://minio.storage:70000/"), "spec.endpoint.url", port),
        refused("port 65536", store_at("http://10.0.0.1:65536"), "spec.endpoint.url", port),
        refused("empty port", store_at("http://minio:"), "spec.endpoint.url", port),
        refused("port on an IPv6 host out of range", store_at("http://[fd00::1]:99999"), "spec.endpoint.url", port),
        refused(
            "host with a space",
            store_at("http://minio storage:9000"),
            "spec.endpoint.url",
            "must not contain spaces or control characters",
        ),
        refused(
            "newline in the url path",
            store_at("http://minio:9000/s3\n"),
            "spec.endpoint.url",
            "must not contain spaces or control characters",
        ),
        refused("host with %", store_at("http://minio%2estorage:9000"), "spec.endpoint.url", host),
        refused("host with !", store_at("https://minio!/"), "spec.endpoint.url", host),
        refused("port that is not a number", store_at("http://minio:ninety"), "spec.endpoint.url", host),
        refused(
            "insecureSkipVerify with http",
            store(json!({"endpoint": {"url": "http://minio:9000", "tls": {"insecureSkipVerify": true}}})),
            "spec.endpoint.tls.insecureSkipVerify",
            "insecureSkipVerify applies only to an https:// endpoint",
        ),
        refused(
            "CA bundle with http",
            store(json!({"endpoint": {"url": "http://minio:9000", "tls": {"caBundle": {"name": "ca"}}}})),
            "spec.endpoint.tls.caBundle",
            "caBundle applies only to an https:// endpoint",
        ),
        refused(
            "virtual-hosted style on an IP address",
            store(json!({"endpoint": {"url": "http://10.0.0.1:9000", "addressingStyle": "VirtualHosted"}})),
            "spec.endpoint.addressingStyle",
            "an IP address cannot take",
        ),
        refused(
            "region starting with -",
            store(json!({"region": "-eu-west-1"})),
            "spec.region",
            "region must start and end with a lowercase letter or a digit",
        ),
        // Bucket tags.
        refused(
            "tag key of 129 characters",
            store_tagged("bad", json!({"k".repeat(129): "v"})),
            "spec.bucket.tags",
            "bucket tag keys must be 1 to 128 characters long",
        ),
        refused(
            "empty tag key",
            store_tagged("bad", json!({"": "v"})),
            "spec.bucket.tags",
            "bucket tag keys must be 1 to 128 characters long",
        ),
        refused(
            "tag value of 257 characters",
            store_tagged("bad", json!({"team": "v".repeat(257)})),
            "spec.bucket.tags.team",
            "256",
        ),
        refused(
            "50 tags besides the operator's",
            store_tagged("bad", many_tags(50)),
            "spec.bucket.tags",
            "must have at most 49 items",
        ),
        refused(
            "the operator's creator tag",
            store_tagged("bad", json!({"artifacts.dev/created-by": "someone"})),
            "spec.bucket.tags",
            "artifacts.dev/created-by is reserved",
        ),
        refused(
            "tag key starting with aws:",
            store_tagged("bad", json!({"aws:cloudformation:stack-name": "x"})),
            "spec.bucket.tags",
            "must not start with aws:",
        ),
        refused(
            "tag key starting with AWS:",
            store_tagged("bad", json!({"AWS:team": "x"})),
            "spec.bucket.tags",
            "must not start with aws:",
        ),
        refused("tag key with #", store_tagged("bad", json!({"team#a": "x"})), "spec.bucket.tags", tag_chars),
        refused(
            "tag value with a newline",
            store_tagged("bad", json!({"team": "a\nb"})),
            "spec.bucket.tags",
            tag_chars,
        ),
        // KMS keys.
        refused(
            "object KMS key with a space",
            store(json!({"objectDefaults": {"serverSideEncryption": "aws:kms", "sseKmsKeyId": "alias/ml key"}})),
            "spec.objectDefaults.sseKmsKeyId",
            "must be a KMS key id",
        ),
        refused(
            "bucket KMS key with AES256",
            store(
                json!({"provisioning": "Create", "bucket": {"defaultEncryption": {"algorithm": "AES256", "kmsKeyId": "alias/ml"}}}),
            ),
            "spec.bucket.defaultEncryption.kmsKeyId",
            "kmsKeyId requires algorithm aws:kms",
        ),
        refused(
            "bucket KMS key with a newline",
            store(
                json!({"provisioning": "Create", "bucket": {"defaultEncryption": {"algorithm": "aws:kms", "kmsKeyId": "alias/ml\n"}}}),
            ),
            "spec.bucket.defaultEncryption.kmsKeyId",
            "must be a KMS key id",
        ),
        // Valid edge cases next to the rules.
        accepted("name of 63 characters", store_named(&"s".repeat(63), json!({}))),
        accepted("port 65535", store_named("ports", json!({"endpoint": {"url": "https://minio.storage.svc:65535"}}))),
        accepted("port 1 on an IPv6 host", store_named("ipv6", json!({"endpoint": {"url": "http://[fd00::1]:1/s3"}}))),
        accepted(
            "insecureSkipVerify with https",
            store_named(
                "insecure",
                json!({"endpoint": {"url": "https://10.0.0.1:9000", "tls": {"insecureSkipVerify": true}}}),
            ),
        ),
        accepted(
            "CA bundle with https, dotted names",
            store_named(
                "ca",
                json!({"endpoint": {"url": "https://minio_1.storage.svc.:9000", "addressingStyle": "VirtualHosted", "tls": {"caBundle": {"kind": "Secret", "name": "ca.bundle-1", "key": "tls_ca.crt"}}}}),
            ),
        ),
        accepted(
            "keys with dots, dashes and underscores",
            store_named(
                "keys",
                json!({"auth": {"secretRef": {"name": "minio.keys", "accessKeyIdKey": "AWS.access_key-id", "secretAccessKeyKey": "secret", "sessionTokenKey": ".token"}}}),
            ),
        ),
        accepted(
            "dots inside prefix segments",
            store_named("dots", json!({"path": "s3://ml.artifacts/.hidden/a..b/.../"})),
        ),
        accepted(
            "tag key of 128 and value of 256 characters",
            store_tagged("long-tag", json!({"k".repeat(128): "v".repeat(256), "empty": ""})),
        ),
        accepted("49 tags", store_tagged("many-tags", many_tags(49))),
        accepted(
            "tags with spaces, accents and symbols",
            store_tagged("symbol-tags", json!({"Équipe ML": "α/β: x=y+z @ 1.0_-", "aws-team": "awsome"})),
        ),
        accepted(
            "role ARN with a path, KMS alias",
            store_named(
                "irsa",
                json!({"auth": {"secretRef": null, "implicit": {"serviceAccountName": "runner.v2", "roleArn": "arn:aws-us-gov:iam::123456789012:role/service/ml+pipelines@team=a,b"}}, "objectDefaults": {"serverSideEncryption": "aws:kms", "sseKmsKeyId": "arn:aws:kms:eu-west-1:123456789012:alias/ml_keys"}}),
            ),
        ),
    ];
    run("bad-input-stores", cases).await;
}

#[tokio::test]
async fn malformed_stacks_are_refused_with_the_field_named() {
    let object_name = "must be a Kubernetes object name";
    let argo_only = "argoDefaultRepository applies only with the Argo format";
    let cases = vec![
        refused(
            "name of 64 characters",
            stack_named(&"s".repeat(64), json!({})),
            ROOT,
            "metadata.name must be at most 63 characters",
        ),
        refused(
            "store name with capitals and _",
            stack(json!({"artifactStoreRef": {"name": "My_Store"}})),
            "spec.artifactStoreRef.name",
            object_name,
        ),
        refused(
            "store name with a slash",
            stack(json!({"artifactStoreRef": {"name": "team/ml"}})),
            "spec.artifactStoreRef.name",
            object_name,
        ),
        refused(
            "ServiceAccount name with a space",
            stack(json!({"orchestrator": {"serviceAccountName": "argo workflow"}})),
            "spec.orchestrator.serviceAccountName",
            object_name,
        ),
        refused(
            "ServiceAccount name ending with .",
            stack(json!({"orchestrator": {"serviceAccountName": "argo."}})),
            "spec.orchestrator.serviceAccountName",
            object_name,
        ),
        refused(
            "argoDefaultRepository without formats",
            stack(json!({"outputs": {"argoDefaultRepository": true}})),
            "spec.outputs.argoDefaultRepository",
            argo_only,
        ),
        refused(
            "argoDefaultRepository without Argo",
            stack(json!({"outputs": {"formats": ["ZenML", "KFP"], "argoDefaultRepository": true}})),
            "spec.outputs.argoDefaultRepository",
            argo_only,
        ),
        accepted("name of 63 characters", stack_named(&"s".repeat(63), json!({}))),
        accepted(
            "argoDefaultRepository with Argo",
            stack_named(
                "argo",
                json!({"orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "argo.workflow"}, "outputs": {"formats": ["Argo"], "argoDefaultRepository": true}}),
            ),
        ),
        accepted(
            "argoDefaultRepository false without Argo",
            stack_named("zenml", json!({"outputs": {"formats": ["ZenML"], "argoDefaultRepository": false}})),
        ),
    ];
    run("bad-input-stacks", cases).await;
}
