//! The ZenML runner image on the real node, pulled from a real registry: tests/env/zenml-image.sh
//! builds it without Docker (Debian bookworm, ZenML 0.98.0 and its kubernetes and s3 integrations'
//! requirements) and pushes it to the distribution registry that tests/env/node-up.sh runs; a pod
//! with `imagePullPolicy: Always` makes the kubelet pull it through containerd from the registry's
//! address on the pod gateway. In the pod, Python imports zenml, kubernetes, s3fs and boto3 and
//! reaches the environment's ZenML server through the node's relay (`AO_POD_ZENML_URL`).
//!
//! Runs only where the node runs (root, `tests/env/node-up.sh`, which the test starts). The image's
//! first build takes a few minutes (debootstrap and pip); later runs reuse it from the cache.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use serde_json::json;

use common::zenml_node::{RUNNER_REPOSITORY, zenml_node};

/// What the pod runs: the imports a ZenML step on this stack needs, ZenML's CLI, and the server's
/// health.
const SCRIPT: &str = r#"
import os, subprocess, urllib.request
import zenml, kubernetes, s3fs, boto3
print("zenml", zenml.__version__, "kubernetes", kubernetes.__version__, "s3fs", s3fs.__version__, "boto3", boto3.__version__)
cli = subprocess.run(["zenml", "version"], check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
print("cli", cli.stdout.strip().splitlines()[-1])
url = os.environ["ZENML_SERVER_URL"] + "/health"
with urllib.request.urlopen(url, timeout=30) as response:
    print("health", response.status, response.read().decode())
"#;

/// Deletes the test's namespace when dropped, passed or failed, so no pod of it stays on the node.
struct Cleanup {
    namespace: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ns = self.namespace.clone();
        // A runtime of its own: the test's is blocked in this drop.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let api: Api<Namespace> = Api::all(common::client().await);
                let _ = api.delete(&ns, &DeleteParams::background()).await;
            })
        })
        .join();
    }
}

#[tokio::test]
async fn the_zenml_runner_image_is_pulled_from_the_registry_and_reaches_the_zenml_server() {
    let started = Instant::now();
    let zenml = zenml_node().await;
    println!("node up, image {} built and pushed: {:.1}s", zenml.image, started.elapsed().as_secs_f64());

    let client = common::client().await;
    let ns = common::namespace(&client, "zenml-image-node").await;
    let _cleanup = Cleanup { namespace: ns.clone() };
    // The pod's ServiceAccount admission needs `default`, which the controller manager creates.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    common::eventually(Duration::from_secs(30), "ServiceAccount default", || async {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await;

    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "zenml-runner"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "runner",
                "image": zenml.image,
                "imagePullPolicy": "Always",
                "command": ["python3", "-c", SCRIPT],
                "env": [
                    {"name": "ZENML_SERVER_URL", "value": zenml.zenml_url},
                    {"name": "ZENML_ANALYTICS_OPT_IN", "value": "false"},
                ],
            }],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod_started = Instant::now();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let waited = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let pod = pods.get("zenml-runner").await.unwrap();
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                return pod;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let listed = events.list(&ListParams::default().fields("involvedObject.name=zenml-runner")).await.unwrap();
    let notes: Vec<String> = listed
        .items
        .iter()
        .map(|e| format!("{}: {}", e.reason.as_deref().unwrap_or(""), e.message.as_deref().unwrap_or("")))
        .collect();
    let log = pods.logs("zenml-runner", &LogParams::default()).await.unwrap_or_else(|e| format!("(no log: {e})"));
    let Ok(pod) = waited else {
        let status = pods.get("zenml-runner").await.map(|p| serde_json::to_string(&p.status).unwrap());
        panic!("the pod did not finish in 300 s: {status:?}\nevents: {notes:#?}\nlog:\n{log}");
    };
    println!(
        "pod finished {:.1}s after its creation\nevents: {notes:#?}\nlog:\n{log}",
        pod_started.elapsed().as_secs_f64()
    );

    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"), "events: {notes:#?}\nlog:\n{log}");
    assert!(log.contains("zenml 0.98.0 "), "{log}");
    assert!(log.contains("cli version: 0.98.0"), "`zenml version` runs: {log}");
    assert!(log.contains("health 200 ok"), "the ZenML server answers through the relay: {log}");

    // The kubelet pulled it from the registry: its events name the registry's reference, and the
    // image the container ran is the registry's, by digest.
    let pulling = format!("Pulling: Pulling image \"{}\"", zenml.image);
    assert!(notes.contains(&pulling), "{pulling} in {notes:#?}");
    assert!(
        notes.iter().any(|n| n.starts_with(&format!("Pulled: Successfully pulled image \"{}\"", zenml.image))),
        "a successful pull of {} in {notes:#?}",
        zenml.image
    );
    let container = &status.container_statuses.unwrap()[0];
    assert_eq!(container.image, zenml.image, "{container:?}");
    let from_registry = format!("{}/{RUNNER_REPOSITORY}@sha256:", zenml.registry);
    assert!(
        container.image_id.starts_with(&from_registry),
        "imageID {} is not from {from_registry}",
        container.image_id
    );
}
