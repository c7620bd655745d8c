//! Scoped credentials over a real 15-minute lifetime (MinIO's STS, the shortest it issues): the
//! Secret is renewed at two thirds of it, an operator restart in between renews neither early nor
//! late, and a boto3 client that runs throughout, reading the file a real kubelet keeps up to date
//! in a pod's volume, keeps working past the first credentials' expiry without a restart. It takes
//! 16 minutes: the test command runs it beside the other suites (`test = false` keeps it out of a
//! plain `cargo test`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::scoped::{TIMEOUT, boto3_command, prepare, ready, scoped_secret, stack, sts_calls, text};
use common::{Operator, apply, eventually, node};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
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
