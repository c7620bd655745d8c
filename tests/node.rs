//! The operator as users run it: `helm install` of the chart onto a real node (a kubelet with
//! containerd, started by tests/env/node-up.sh), the image built from the static binary the
//! Dockerfile builds, its pods Ready through their real probes, real stores and Stacks reconciled
//! from inside the cluster, `artifact-operator check` proving a workload pod's own access, the
//! Stack's in-pod verification as a Job, `helm upgrade` rolling the pods, leader election handing
//! over between them, and `helm uninstall` leaving every bucket.
//!
//! Needs the static binary (tests/env/build-static.sh; `AO_STATIC_BINARY` names another) and root
//! for the node. The test command builds both.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use artifact_operator::api::Stack;
use artifact_operator::check::{Outcome, Step};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use common::conditions::{Wanted, find, message, wait_for_condition};
use common::{eventually, repo, run, static_binary, test_env};

/// The helm release of one run: uninstalled when dropped, so a failed run leaves no cluster-wide
/// object behind for the next.
struct Release {
    name: String,
    namespace: String,
    uninstalled: bool,
}

impl Release {
    fn new(namespace: &str) -> Self {
        Self { name: format!("ao{}", fastrand::u32(..) % 100_000), namespace: namespace.to_owned(), uninstalled: false }
    }

    /// The Deployment's, the Lease's and the ClusterRole's name.
    fn fullname(&self) -> String {
        format!("{}-artifact-operator", self.name)
    }

    fn uninstall(&mut self) {
        helm(&["uninstall", &self.name, "-n", &self.namespace, "--wait", "--timeout", "2m"]);
        self.uninstalled = true;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstalled {
            let helm = format!("{}/bin/helm", test_env().var("AO_CACHE_DIR"));
            let _ = Command::new(helm)
                .args(["uninstall", &self.name, "-n", &self.namespace])
                .env("KUBECONFIG", test_env().var("KUBECONFIG"))
                .output();
        }
    }
}
const IMAGE: &str = "artifact-operator:node-test";

/// Starts the node (a no-op when it runs) and returns its env file's variables.
fn node() -> BTreeMap<String, String> {
    common::node()
}

fn helm(args: &[&str]) -> String {
    let helm = format!("{}/bin/helm", test_env().var("AO_CACHE_DIR"));
    run(Command::new(helm).args(args).env("KUBECONFIG", test_env().var("KUBECONFIG")), &format!("helm {}", args[0]))
}

/// The chart's values for this node: the local image, the apiserver and moto at the pod gateway
/// (no kube-proxy here), and only what a user sets besides.
fn values(node: &BTreeMap<String, String>, watched: &str) -> Vec<String> {
    let (repository, tag) = IMAGE.split_once(':').unwrap();
    let env = json!([
        {"name": "KUBERNETES_SERVICE_HOST", "value": node["AO_POD_KUBE_API_HOST"]},
        {"name": "KUBERNETES_SERVICE_PORT", "value": node["AO_POD_KUBE_API_PORT"]},
        {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "operator-aws", "key": "access-key-id"}}},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "operator-aws", "key": "secret-access-key"}}},
    ]);
    [
        format!("image.repository={repository}"),
        format!("image.tag={tag}"),
        "image.pullPolicy=Never".to_owned(),
        // The other tests of this environment installed the CRDs already (from the same types).
        "crds.install=false".to_owned(),
        format!("watchNamespaces={{{watched}}}"),
        format!("rbac.secretWriteNamespaces={{{watched}}}"),
        "resyncInterval=1m".to_owned(),
        "log.format=text".to_owned(),
        format!("aws.region={}", test_env().var("AO_S3_REGION")),
        format!("aws.endpoints.sts={}", node["AO_POD_MOTO_ENDPOINT"]),
        format!("aws.endpoints.iam={}", node["AO_POD_MOTO_ENDPOINT"]),
    ]
    .into_iter()
    .flat_map(|value| ["--set".to_owned(), value])
    .chain(["--set-json".to_owned(), format!("extraEnv={env}")])
    .collect()
}

async fn apply(client: &Client, ns: &str, object: Value) {
    common::apply(client, ns, object).await;
}

/// Waits until the Stack's condition `type_` has `status` and `reason` for its generation;
/// returns its message.
async fn stack_condition(client: &Client, ns: &str, name: &str, type_: &str, status: &str, reason: &str) -> String {
    let wanted = Wanted::Is { status, reason };
    let stack: Stack = wait_for_condition(client, ns, name, type_, wanted, Duration::from_secs(180)).await;
    if type_ == "Ready" {
        common::capture_health_fixture(&stack, ns);
    }
    message(&stack, type_)
}

/// What the Stack's status records of its in-pod check: the inputs it ran with, and when its
/// condition last changed.
async fn check_record(client: &Client, ns: &str, name: &str) -> (String, jiff::Timestamp) {
    let stack = Api::<Stack>::namespaced(client.clone(), ns).get(name).await.unwrap();
    let changed = find(&stack, "WorkloadAccessVerified").unwrap().last_transition_time.0;
    (stack.status.unwrap().workload_check.unwrap(), changed)
}

/// The operator's pods of the release, by name.
async fn operator_pods(client: &Client, release: &Release) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace);
    let selector = format!("app.kubernetes.io/instance={}", release.name);
    pods.list(&ListParams::default().labels(&selector)).await.unwrap().items
}

async fn ready_pod_names(client: &Client, release: &Release) -> Vec<String> {
    let mut names: Vec<String> = operator_pods(client, release)
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// The pod that holds the release's Lease.
async fn leader(client: &Client, release: &Release) -> String {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release.namespace);
    eventually(Duration::from_secs(60), "a holder of the Lease", || async {
        let holder = leases.get(&release.fullname()).await.ok()?.spec?.holder_identity?;
        // The identity is the pod's name and a random suffix.
        Some(holder.rsplit_once('-').map(|(pod, _)| pod.to_owned()).unwrap_or(holder))
    })
    .await
}

/// A workload pod as a user runs the check (`kubectl run`): the Stack's ConfigMap as env and as
/// files, `env_secret` as env, running as `account`. Returns the outcome from its termination
/// message and whether it succeeded.
async fn check_pod(client: &Client, ns: &str, name: &str, account: &str, env_secret: &str) -> (bool, Outcome) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": account,
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "check", "image": IMAGE, "imagePullPolicy": "Never", "args": ["check"],
                "envFrom": [{"configMapRef": {"name": "prod-stack"}}, {"secretRef": {"name": env_secret}}],
                "volumeMounts": [{"name": "artifact-store", "mountPath": "/etc/artifact-store", "readOnly": true}],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "artifact-store", "configMap": {"name": "prod-stack"}}],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually(Duration::from_secs(120), &format!("check pod {name} to finish"), || async {
        let pod = pods.get(name).await.ok()?;
        let status = pod.status?;
        let phase = status.phase?;
        if phase != "Succeeded" && phase != "Failed" {
            return None;
        }
        let state = status.container_statuses?.first()?.state.clone()?;
        let message = state.terminated?.message?;
        let outcome = Outcome::parse(&message).unwrap_or_else(|| panic!("not an outcome: {message}"));
        Some((phase == "Succeeded", outcome))
    })
    .await
}

/// An operator pod that cannot reach the apiserver runs, but its readiness probe fails (the
/// kubelet's own Event says so) and the pod is not Ready.
async fn a_pod_without_the_apiserver_is_not_ready(client: &Client, ns: &str, node: &BTreeMap<String, String>) {
    use k8s_openapi::api::events::v1::Event;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "cut-off"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "operator", "image": IMAGE, "imagePullPolicy": "Never",
                "args": ["run", "--http-addr=0.0.0.0:8080"],
                // A port on the gateway where nothing listens: the apiserver never answers.
                "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": node["AO_POD_GATEWAY"]}, {"name": "KUBERNETES_SERVICE_PORT", "value": "9"}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1},
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let probe = eventually(Duration::from_secs(60), "the kubelet to report the failing readiness probe", || async {
        let listed = events.list(&ListParams::default()).await.ok()?;
        listed.items.into_iter().find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("cut-off")
                && e.reason.as_deref() == Some("Unhealthy")
                && e.note.as_deref().is_some_and(|n| n.starts_with("Readiness probe failed"))
        })
    })
    .await;
    let status = pods.get("cut-off").await.unwrap().status.unwrap();
    let ready = status.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((status.phase.as_deref(), ready.status.as_str()), (Some("Running"), "False"), "{probe:?}");
    let restarts = status.container_statuses.unwrap()[0].restart_count;
    assert_eq!(restarts, 0, "the process waits for the apiserver rather than exiting: {probe:?}");
    pods.delete("cut-off", &DeleteParams::default()).await.unwrap();
}

/// The uid a running `artifact-operator run` process of this node has, from /proc: the
/// container's process is a process of this machine.
fn operator_process_uids() -> Vec<u32> {
    let mut uids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_operator = args.first().is_some_and(|a| a.ends_with(b"/usr/local/bin/artifact-operator"))
            && args.get(1) == Some(&&b"run"[..]);
        if !is_operator {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        if let Some(uid) = status.lines().find_map(|l| l.strip_prefix("Uid:")) {
            uids.push(uid.split_whitespace().next().unwrap().parse().unwrap());
        }
    }
    uids
}

/// A MinIO user (made through MinIO's admin API) that may list and read `bucket`, not write it.
fn read_only_user(bucket: &str) -> (String, String) {
    let user = format!("aoreadonly{}", fastrand::u32(..));
    let secret = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let policy = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject"],
        "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
    }]});
    common::minio_admin(&[
        ("AO_S3_USER_ACCESS_KEY", &user),
        ("AO_S3_USER_SECRET_KEY", &secret),
        ("AO_S3_USER_POLICY_NAME", &format!("read-{bucket}")),
        ("AO_S3_USER_POLICY", &policy.to_string()),
    ]);
    (user, secret)
}

/// ArtifactStore `name` at `s3://BUCKET/pipelines` on `endpoint`, with the keys of Secret `secret`.
fn store(name: &str, bucket: &str, endpoint: &str, secret: &str, provisioning: &str) -> Value {
    common::store::store_object(
        name,
        json!({
            "path": format!("s3://{bucket}/pipelines"),
            "endpoint": {"url": endpoint, "addressingStyle": "Path"},
            "auth": {"secretRef": {"name": secret}},
            "provisioning": provisioning,
        }),
    )
}

fn stack(name: &str, store: &str) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": {
        "artifactStoreRef": {"name": store},
        "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"},
        "outputs": {"formats": ["ZenML"]},
        "verification": {"inPod": true},
    }})
}

#[tokio::test]
async fn the_chart_runs_on_a_real_node_and_pods_prove_their_own_access() {
    let started = Instant::now();
    let node = node();
    println!("node up: {:.1}s", started.elapsed().as_secs_f64());
    let image = Instant::now();
    run(
        Command::new(repo().join("tests/env/build-image.sh")).args(["--import"]).arg(static_binary()).arg(IMAGE),
        "building and importing the image",
    );
    println!("image built and imported: {:.1}s", image.elapsed().as_secs_f64());

    let (client, watched) = common::setup("node").await;
    let system = common::namespace(&client, "node-system").await;
    let env = test_env();
    common::secret(
        &client,
        &system,
        "operator-aws",
        &[("access-key-id", env.var("AO_S3_ROOT_ACCESS_KEY")), ("secret-access-key", env.var("AO_S3_ROOT_SECRET_KEY"))],
    )
    .await;

    // Install: the pods turn Ready through their real probes, as UID 65532.
    let install = Instant::now();
    let chart = repo().join("charts/artifact-operator");
    let mut release = Release::new(&system);
    let mut args = vec!["install", &release.name, chart.to_str().unwrap(), "-n", &system, "--wait", "--timeout", "4m"];
    let values = values(&node, &watched);
    args.extend(values.iter().map(String::as_str));
    helm(&args);
    println!("helm install to Ready: {:.1}s", install.elapsed().as_secs_f64());
    let deployment: Deployment = Api::namespaced(client.clone(), &system).get(&release.fullname()).await.unwrap();
    assert_eq!(deployment.status.unwrap().ready_replicas, Some(2), "both replicas Ready");
    let uids = operator_process_uids();
    assert!(!uids.is_empty() && uids.iter().all(|&uid| uid == 65532), "operator processes run as 65532: {uids:?}");
    let first_leader = leader(&client, &release).await;
    a_pod_without_the_apiserver_is_not_ready(&client, &watched, &node).await;

    // A store and a Stack reconciled by the pod; the Stack proves its pods' access with a Job.
    let bucket = common::limited_bucket("node");
    common::user_keys_secret(&client, &watched, "minio-keys").await;
    apply(&client, &watched, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}}))
        .await;
    apply(&client, &watched, store("ml", &bucket, &node["AO_POD_S3_ENDPOINT"], "minio-keys", "Create")).await;
    apply(&client, &watched, stack("prod", "ml")).await;
    let ready = Instant::now();
    let proven = stack_condition(&client, &watched, "prod", "WorkloadAccessVerified", "True", "Verified").await;
    assert!(proven.contains("runner") && proven.contains(&bucket), "{proven}");
    stack_condition(&client, &watched, "prod", "Ready", "True", "Ready").await;
    println!("store, Stack and in-pod check Ready: {:.1}s", ready.elapsed().as_secs_f64());
    let checked = check_record(&client, &watched, "prod").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &watched);
    eventually(Duration::from_secs(30), "the check's Job to be deleted", || async {
        jobs.list(&ListParams::default()).await.unwrap().items.is_empty().then_some(())
    })
    .await;

    // The user's own check pod: with the store's keys it passes, with a wrong Secret it fails at
    // the first write, naming the reason; no secret in what it says.
    let (passed, outcome) = check_pod(&client, &watched, "check-keys", "runner", "ml-aws-credentials").await;
    assert!(passed && outcome.step.is_none() && outcome.reason == "Verified", "{outcome:?}");
    common::secret(
        &client,
        &watched,
        "wrong-keys",
        &[("AWS_ACCESS_KEY_ID", env.var("AO_S3_USER_ACCESS_KEY")), ("AWS_SECRET_ACCESS_KEY", "not-the-secret-key")],
    )
    .await;
    let (passed, outcome) = check_pod(&client, &watched, "check-wrong", "runner", "wrong-keys").await;
    assert!(!passed, "{outcome:?}");
    assert_eq!((outcome.step, outcome.reason.as_str()), (Some(Step::Write), "SignatureDoesNotMatch"));
    assert!(!outcome.message.contains("not-the-secret-key"), "{outcome:?}");
    println!("check pods, passing and failing: {:.1}s", ready.elapsed().as_secs_f64());

    // Keys that may read but not write: the store is Ready (the operator only reads), and only
    // the check from a pod finds that its pods cannot write.
    let read_only_bucket = common::limited_bucket("node-ro");
    common::s3_root().create_bucket().bucket(&read_only_bucket).send().await.unwrap();
    let (user, secret) = read_only_user(&read_only_bucket);
    common::secret(&client, &watched, "ro-keys", &[("aws_access_key_id", &user), ("aws_secret_access_key", &secret)])
        .await;
    apply(&client, &watched, store("ro", &read_only_bucket, &node["AO_POD_S3_ENDPOINT"], "ro-keys", "Adopt")).await;
    apply(&client, &watched, stack("readonly", "ro")).await;
    let denied =
        stack_condition(&client, &watched, "readonly", "WorkloadAccessVerified", "False", "AccessDenied").await;
    assert!(denied.contains("at write"), "{denied}");
    stack_condition(&client, &watched, "readonly", "Ready", "False", "AccessDenied").await;
    println!("read-only keys found by the in-pod check: {:.1}s", ready.elapsed().as_secs_f64());

    // Upgrade: new pods replace the old ones, one at a time, and the Stack stays Ready.
    let before = ready_pod_names(&client, &release).await;
    let upgrade = Instant::now();
    let mut args = vec!["upgrade", &release.name, chart.to_str().unwrap(), "-n", &system, "--wait", "--timeout", "4m"];
    args.extend(values.iter().map(String::as_str));
    args.extend(["--set", "podAnnotations.rollout=upgrade"]);
    helm(&args);
    let after = eventually(Duration::from_secs(60), "two Ready pods after the upgrade", || async {
        let names = ready_pod_names(&client, &release).await;
        (names.len() == 2 && names.iter().all(|n| !before.contains(n))).then_some(names)
    })
    .await;
    println!("helm upgrade rolled {before:?} to {after:?} in {:.1}s", upgrade.elapsed().as_secs_f64());
    assert!(!after.contains(&first_leader));
    stack_condition(&client, &watched, "prod", "Ready", "True", "Ready").await;

    // Handover: the leader's pod goes, the other takes the Lease and reconciles.
    let leading = eventually(Duration::from_secs(60), "one of the new pods to lead", || async {
        let holder = leader(&client, &release).await;
        after.contains(&holder).then_some(holder)
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &system);
    pods.delete(&leading, &DeleteParams::default()).await.unwrap();
    let handover = Instant::now();
    let next = eventually(Duration::from_secs(90), "another pod to take the Lease", || async {
        let holder = leader(&client, &release).await;
        (holder != leading).then_some(holder)
    })
    .await;
    println!("leader handover {leading} -> {next}: {:.1}s", handover.elapsed().as_secs_f64());
    apply(&client, &watched, stack("after-handover", "ml")).await;
    stack_condition(&client, &watched, "after-handover", "Ready", "True", "Ready").await;
    // Two new operator pods and a handover read the recorded outcome: the check did not run again.
    assert_eq!(check_record(&client, &watched, "prod").await, checked, "no rerun without a change");
    // A change of the Stack runs it again.
    let mut changed = stack("prod", "ml");
    changed["spec"]["outputs"]["formats"] = json!(["ZenML", "KFP"]);
    apply(&client, &watched, changed).await;
    stack_condition(&client, &watched, "prod", "WorkloadAccessVerified", "True", "Verified").await;
    let rechecked = check_record(&client, &watched, "prod").await;
    assert!(
        rechecked.0 != checked.0 && rechecked.1 > checked.1,
        "a new check for the new spec: {checked:?} -> {rechecked:?}"
    );
    println!("a Stack Ready after the handover: {:.1}s", handover.elapsed().as_secs_f64());
    let uninstall = Instant::now();

    // Uninstall: the operator goes, every bucket stays.
    release.uninstall();
    eventually(Duration::from_secs(60), "the operator pods to go", || async {
        operator_pods(&client, &release).await.is_empty().then_some(())
    })
    .await;
    println!("helm uninstall, pods gone: {:.1}s", uninstall.elapsed().as_secs_f64());
    for bucket in [&bucket, &read_only_bucket] {
        common::s3_root().head_bucket().bucket(bucket).send().await.unwrap_or_else(|e| panic!("{bucket} is kept: {e}"));
    }
    println!("whole test: {:.1}s", started.elapsed().as_secs_f64());
}

/// The instructions of the Dockerfile's final stage, as (instruction, rest) pairs, read here
/// independently of tests/env/build-image.py.
fn final_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(i, rest)| (i.to_uppercase(), rest.trim().to_owned()))
        .collect();
    let last_from = instructions.iter().rposition(|(i, _)| i == "FROM").unwrap();
    instructions[last_from..].to_vec()
}

fn instruction(stage: &[(String, String)], name: &str) -> String {
    stage.iter().rev().find(|(i, _)| i == name).map(|(_, rest)| rest.clone()).unwrap_or_else(|| panic!("no {name}"))
}

/// The image the node test installs is the Dockerfile's final stage: its entrypoint, command and
/// user, the binary (byte for byte the static build) where COPY puts it with its owner and mode,
/// and the base's passwd entry for 65532 and CA bundle.
#[test]
fn the_image_is_the_final_stage_of_the_dockerfile() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("image.tar");
    run(
        Command::new(repo().join("tests/env/build-image.sh"))
            .arg("--output")
            .arg(&tarball)
            .arg(static_binary())
            .arg(IMAGE),
        "building the image",
    );
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(&layout), "unpacking the image");
    let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let json = |path: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap() };
    let index = json(layout.join("index.json"));
    let manifest = json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = json(blob(manifest["config"]["digest"].as_str().unwrap()));

    let stage = final_stage();
    let exec_form = |name: &str| -> Value { serde_json::from_str(&instruction(&stage, name)).unwrap() };
    assert_eq!(config["config"]["Entrypoint"], exec_form("ENTRYPOINT"));
    assert_eq!(config["config"]["Cmd"], exec_form("CMD"));
    assert_eq!(config["config"]["User"], instruction(&stage, "USER"));
    let copy = instruction(&stage, "COPY");
    let destination = copy.split_whitespace().last().unwrap().trim_start_matches('/').to_owned();
    assert!(copy.contains("--chown=0:0") && copy.contains("--chmod=0555"), "{copy}");

    let mut files = BTreeMap::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let listing =
            run(Command::new("tar").arg("-tvf").arg(blob(layer["digest"].as_str().unwrap())), "listing a layer");
        for line in listing.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = fields.last().unwrap().trim_start_matches("./").trim_end_matches('/').to_owned();
            files.insert(name, (fields[0].to_owned(), fields[1].to_owned()));
        }
        let unpacked = dir.path().join("rootfs");
        std::fs::create_dir_all(&unpacked).unwrap();
        run(
            Command::new("tar").arg("-xf").arg(blob(layer["digest"].as_str().unwrap())).arg("-C").arg(&unpacked),
            "unpacking a layer",
        );
    }
    assert_eq!(files.get(&destination), Some(&("-r-xr-xr-x".to_owned(), "0/0".to_owned())), "{files:?}");
    let rootfs = dir.path().join("rootfs");
    let digest = |path: &Path| Sha256::digest(std::fs::read(path).unwrap());
    assert_eq!(digest(&rootfs.join(&destination)), digest(&static_binary()), "the image carries the static build");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("nonroot:x:65532:65532:")), "{passwd}");
    let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 50, "the CA bundle has the public roots");
    let tmp = &files["tmp"];
    assert!(tmp.0.starts_with("drwxrwxrwt"), "/tmp is sticky and world-writable: {tmp:?}");
}
