//! Scoped credentials over a real 15-minute lifetime (MinIO's STS, the shortest it issues): the
//! Secret is renewed at two thirds of it, an operator restart in between renews neither early nor
//! late, and a boto3 client that runs throughout, reading the file a real kubelet keeps up to date
//! in a pod's volume, keeps working past the first credentials' expiry without a restart; and an
//! Argo workflow on the node whose write step runs across the renewal and the first credentials'
//! expiry still saves its artifact, which the next step loads. The two tests run side by side
//! (`--test-threads 2`) and take about 17 minutes: the test command runs them beside the other
//! suites (`test = false` keeps them out of a plain `cargo test`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::argo::{self, Case, check_case};
use common::scoped::{TIMEOUT, boto3_command, prepare, put, ready, s3_with, scoped_secret, stack, sts_calls, text};
use common::{Operator, apply, eventually, node};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// The annotations' renewal time of the Stack's Secret.
async fn renew_at(client: &Client, ns: &str) -> jiff::Timestamp {
    let secret = scoped_secret(client, ns, "prod").await;
    secret.metadata.annotations.unwrap()["artifacts.dev/renew-at"].parse().unwrap()
}

#[tokio::test]
async fn scoped_credentials_are_renewed_on_time_across_a_restart_and_a_running_client_keeps_working() {
    let node = node();
    let (client, ns, bucket) = prepare("scoped-renew").await;
    let mut operator = Operator::start(&ns, "20s");
    apply(&client, &ns, stack("prod", json!({"mode": "Scoped", "duration": "15m"}))).await;
    let issued_at = jiff::Timestamp::now();
    ready(&client, &ns, "prod").await;
    let first = scoped_secret(&client, &ns, "prod").await;
    let first_key = text(&first, "AWS_ACCESS_KEY_ID");
    let expires: jiff::Timestamp =
        first.metadata.annotations.clone().unwrap()["artifacts.dev/expires-at"].parse().unwrap();
    let renew = renew_at(&client, &ns).await;
    let at = renew.duration_since(issued_at).as_secs_f64();
    assert!((565.0..=645.0).contains(&at), "renewal at two thirds of 15 minutes (±30 s), not {at} s");
    println!("issued {first_key} at {issued_at}: renewal due at {renew} ({at:.0} s), expiry at {expires}");

    // A pod as the orchestrator's are wired (the rendered ZenML pod settings), on the real node:
    // its kubelet keeps the Secret volume up to date. The pause image only holds the volume.
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("prod-stack").await.unwrap();
    let export: Value = serde_yaml_ng::from_str(&config_map.data.unwrap()["zenml-stack.yaml"]).unwrap();
    let pod_settings = export["components"]["orchestrator"][0]["configuration"]["pod_settings"].clone();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "holder"},
        "spec": {
            "nodeName": node["AO_NODE_NAME"], "serviceAccountName": "runner", "automountServiceAccountToken": false,
            "containers": [{"name": "pause", "image": node["AO_PAUSE_IMAGE"], "imagePullPolicy": "Never",
                            "envFrom": pod_settings["env_from"], "volumeMounts": pod_settings["volume_mounts"]}],
            "volumes": pod_settings["volumes"],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let volume = Path::new(&node["AO_KUBELET_DIR"])
        .join(format!("pods/{uid}/volumes/kubernetes.io~secret/artifact-store-credentials"));
    eventually(Duration::from_secs(120), "the pod's Secret volume", || async {
        volume.join("credentials.json").is_file().then_some(())
    })
    .await;

    // The client runs throughout: a write every 15 s through the file in the pod's volume.
    let files = tempfile::tempdir().unwrap();
    let config = files.path().join("config");
    std::fs::write(
        &config,
        format!("[default]\ncredential_process = cat {}\n", volume.join("credentials.json").display()),
    )
    .unwrap();
    let stop = files.path().join("stop");
    let log = files.path().join("client.log");
    let mut client_process =
        boto3_command(&config, &bucket, "team/long", &["--every", "15", "--until", stop.to_str().unwrap()])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();

    // Five minutes in, the operator restarts; the new one renews neither early nor late.
    tokio::time::sleep(Duration::from_secs(300)).await;
    let version = scoped_secret(&client, &ns, "prod").await.metadata.resource_version;
    operator.kill();
    let operator = Operator::start(&ns, "20s");
    eventually(TIMEOUT, "the new operator Ready", || async {
        (operator.status("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let calls = sts_calls(&operator).await;

    let renewed = eventually(Duration::from_secs(480), "the renewal", || async {
        let secret = scoped_secret(&client, &ns, "prod").await;
        (secret.metadata.resource_version != version).then_some((jiff::Timestamp::now(), secret))
    })
    .await;
    let (seen_at, second) = renewed;
    let second_key = text(&second, "AWS_ACCESS_KEY_ID");
    let late = seen_at.duration_since(renew).as_secs_f64();
    println!(
        "renewed to {second_key} at {seen_at}: {late:.1} s after it was due; the new operator called STS {} time(s)",
        sts_calls(&operator).await - calls
    );
    assert!((0.0..30.0).contains(&late), "renewed {late:.1} s after it was due");
    assert_ne!(second_key, first_key);
    assert_eq!(sts_calls(&operator).await - calls, 1.0, "one AssumeRole for the renewal, none before");

    // The client keeps working past the first credentials' expiry, with the new ones.
    let after_expiry = Duration::try_from(expires.duration_since(jiff::Timestamp::now())).unwrap_or_default()
        + Duration::from_secs(40);
    tokio::time::sleep(after_expiry).await;
    std::fs::write(&stop, "").unwrap();
    let status = client_process.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    println!("{said}");
    assert!(status.success(), "the client failed:\n{said}");
    let writes: Vec<&str> = said.lines().filter(|l| l.starts_with("wrote")).collect();
    assert!(writes.iter().any(|l| l.contains(&first_key)) && writes.iter().any(|l| l.contains(&second_key)), "{said}");
    let last = writes.last().unwrap();
    let last_at: jiff::Timestamp = last.rsplit(" at ").next().unwrap().parse().unwrap();
    assert!(last_at > expires && last.contains(&second_key), "a write after {expires} with the new key: {last}");
    pods.delete("holder", &DeleteParams::default()).await.unwrap();
}

/// The Stack of the Argo case, and the prefix its scoped credentials are narrowed to.
const ARGO_STACK: &str = "renewing";
const ARGO_PREFIX: &str = "across-renewal";

/// A Secret-backed value as a running pod sees it: the file the kubelet keeps in the pod's Secret
/// volume `volume` on the node (None while it is not there).
fn mounted(
    node: &std::collections::BTreeMap<String, String>,
    pod_uid: &str,
    volume: &str,
    key: &str,
) -> Option<String> {
    let path = Path::new(&node["AO_KUBELET_DIR"])
        .join(format!("pods/{pod_uid}/volumes/kubernetes.io~secret/{volume}"))
        .join(key);
    std::fs::read_to_string(path).ok()
}

/// Argo Workflows' own controller and executor (v3.7.9, as tests/argo_node.rs installs them in a
/// namespace of their own) with a Stack of `credentials.mode: Scoped` and `duration: 15m`: the
/// write step's pod starts with the first session credentials in its volume, its main container
/// stays up past the renewal and past those credentials' expiry (until the Secret's `expires-at`
/// plus 60 s) and only then writes its output, which argoexec's wait container saves; the read
/// step loads it. Case (d) of tests/argo_node.rs, across a renewal.
///
/// Why the save uses the renewed keys: the controller mounts each Secret the repository names
/// (`accessKeySecret`, `secretKeySecret`, `sessionTokenSecret`) into the wait container as a whole
/// Secret volume at `/argo/secret/<name>` (workflow/controller/workflowpod.go,
/// `createSecretVolumesAndMounts`: `items`, no `subPath`), which the kubelet refreshes when the
/// Secret changes; and argoexec reads the three files again for every artifact it saves or loads,
/// when it builds the S3 driver (workflow/executor/executor.go `saveArtifactFromFile` calls
/// `InitDriver`, whose `artifacts.newDriver` reads each key with `GetSecret`, an `os.ReadFile` of
/// `/argo/secret/<name>/<key>`, not cached and not an API call; the memoized `GetSecrets` is not on
/// this path). The first credentials have expired by the save, so MinIO would refuse them.
///
/// Nothing in Argo bounds the step's 16 minutes: without `activeDeadlineSeconds` the executor's
/// deadline is zero (no deadline monitor fires) and the controller sets no pod timeout.
#[tokio::test]
async fn an_argo_workflow_saves_across_a_renewal_with_the_renewed_credentials() {
    let started = Instant::now();
    let node = node();
    let (client, ns) = common::setup("argo-renewal").await;

    // The Stack first, so its credentials' lifetime runs while Argo is installed.
    common::user_keys_secret(&client, &ns, "minio-keys").await;
    let bucket = common::limited_bucket("argo-renewal");
    let endpoint = json!({"url": node["AO_POD_S3_ENDPOINT"], "addressingStyle": "Path"});
    apply(&client, &ns, argo::store("ml", &format!("s3://{bucket}/pipelines"), endpoint)).await;
    let scoped = json!({"mode": "Scoped", "prefix": ARGO_PREFIX, "duration": "15m"});
    apply(&client, &ns, argo::stack(ARGO_STACK, "ml", false, Some(scoped))).await;
    let _operator = Operator::start(&ns, "1m");

    let images = argo::images();
    let _controller = argo::install_argo(&client, &ns, &node, &images).await;
    argo::controller_leads(&client, &ns).await;
    argo::stack_ready(&client, &ns, ARGO_STACK).await;
    println!("argo renewal: Argo installed and Stack Ready: {:.1}s", started.elapsed().as_secs_f64());

    let first = scoped_secret(&client, &ns, ARGO_STACK).await;
    let first_key = text(&first, "AWS_ACCESS_KEY_ID");
    let annotations = first.metadata.annotations.clone().unwrap();
    let expires: jiff::Timestamp = annotations["artifacts.dev/expires-at"].parse().unwrap();
    let renew: jiff::Timestamp = annotations["artifacts.dev/renew-at"].parse().unwrap();
    let repositories = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("artifact-repositories").await.unwrap();
    let rendered: Value = serde_yaml_ng::from_str(&repositories.data.unwrap()[ARGO_STACK]).unwrap();
    let secret_name = first.name_any();
    for (field, key) in [
        ("accessKeySecret", "AWS_ACCESS_KEY_ID"),
        ("secretKeySecret", "AWS_SECRET_ACCESS_KEY"),
        ("sessionTokenSecret", "AWS_SESSION_TOKEN"),
    ] {
        assert_eq!(rendered["s3"][field], json!({"name": secret_name, "key": key}), "{rendered}");
    }

    // The write step's main container writes a minute after the first credentials' expiry.
    let write_after = expires + jiff::SignedDuration::from_secs(60);
    let case = Case {
        label: "d, across a renewal",
        stack: ARGO_STACK,
        reference: Some(ARGO_STACK),
        workflow: "case-d-across-a-renewal".to_owned(),
        payload: argo::payload("d-across-a-renewal"),
        bucket,
        prefix: format!("pipelines/{ARGO_PREFIX}"),
        rendered,
        s3: common::s3_root(),
    };
    let object =
        argo::workflow_writing_after(&case.workflow, case.reference, &images.step, &case.payload, Some(write_after));
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    argo::workflows(&client, &ns).create(&PostParams::default(), &object).await.unwrap();

    // Its pod starts with the first credentials, before the renewal.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = format!("workflows.argoproj.io/workflow={}", case.workflow);
    let write_pod = eventually(Duration::from_secs(180), "the write step's pod running", || async {
        let listed = pods.list(&ListParams::default().labels(&selector)).await.unwrap();
        listed.items.into_iter().find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    let uid = write_pod.metadata.uid.clone().unwrap();
    let in_volume = || mounted(&node, &uid, &secret_name, "AWS_ACCESS_KEY_ID");
    let at_start = eventually(Duration::from_secs(60), "the write pod's Secret volume", || async { in_volume() }).await;
    let running_at = jiff::Timestamp::now();
    assert_eq!(at_start, first_key, "the write pod starts with the first credentials");
    assert!(running_at < renew, "the write pod runs at {running_at}, before the renewal due at {renew}");
    println!(
        "argo renewal: write pod {} runs with {first_key} at {running_at}; renewal due at {renew}, expiry at {expires}, the write after {write_after}",
        write_pod.name_any()
    );

    // The renewal reaches the running pod's volume.
    let until_renewal = Duration::try_from(renew.duration_since(jiff::Timestamp::now())).unwrap_or_default();
    let (renewed_at, second_key) = eventually(until_renewal + Duration::from_secs(120), "the renewal", || async {
        let key = text(&scoped_secret(&client, &ns, ARGO_STACK).await, "AWS_ACCESS_KEY_ID");
        (key != first_key).then(|| (jiff::Timestamp::now(), key))
    })
    .await;
    let refreshed_at = eventually(Duration::from_secs(180), "the renewed keys in the write pod's volume", || async {
        (in_volume().as_deref() == Some(second_key.as_str())).then(jiff::Timestamp::now)
    })
    .await;
    println!("argo renewal: renewed to {second_key} at {renewed_at}; in the write pod's volume at {refreshed_at}");

    // The save, after the expiry, and the load.
    let within = Duration::try_from(write_after.duration_since(jiff::Timestamp::now())).unwrap_or_default()
        + Duration::from_secs(300);
    let checked = check_case(&client, &ns, &case, within).await;
    let line = checked.unwrap_or_else(|error| panic!("argo case ({}) FAILED: {error}", case.label));
    // The first credentials no longer work: the save used others.
    let expired = put(&s3_with(&first), &case.bucket, &format!("{}/expired", case.prefix)).await;
    assert_ne!(expired, "ok", "MinIO still takes the first credentials after their expiry at {expires}");
    let at_save = text(&scoped_secret(&client, &ns, ARGO_STACK).await, "AWS_ACCESS_KEY_ID");
    assert_ne!(at_save, first_key, "the Secret holds other keys than the first at the save");
    assert_eq!(at_save, second_key, "one renewal in the write step's lifetime");
    let workflow = argo::workflows(&client, &ns).get(&case.workflow).await.unwrap();
    let nodes = workflow.data["status"]["nodes"].as_object().unwrap();
    let write = nodes.values().find(|n| n["templateName"] == "write").unwrap();
    let time = |field: &str| write[field].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let (write_started, write_finished) = (time("startedAt"), time("finishedAt"));
    let pod_node = write_pod.annotations().get("workflows.argoproj.io/node-id").cloned();
    assert_eq!(write["id"].as_str(), pod_node.as_deref(), "the write step ran in the pod watched");
    assert!(write_started < renew, "the write step started at {write_started}, before the renewal at {renew}");
    // Argo records whole seconds, and the step writes once `write_after` (a whole second) has come.
    assert!(
        write_finished >= write_after,
        "the write step (its save) finished at {write_finished}, before {write_after}, a minute past the first credentials' expiry at {expires}"
    );
    println!(
        "{line}; the write step ran {write_started} to {write_finished} in pod {}, saved with {second_key} after {first_key} expired at {expires} (which MinIO now refuses: {expired}) ({:.0} s)",
        write_pod.name_any(),
        started.elapsed().as_secs_f64()
    );
}
