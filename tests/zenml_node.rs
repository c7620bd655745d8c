//! ZenML's kubernetes orchestrator on the real node, running a pipeline on the stack a Stack
//! registered in the environment's ZenML server, from nothing but what the Stack published:
//!
//! - the runner image (Debian's python3 with ZenML 0.98.0 and its kubernetes and s3 integrations'
//!   packages, built without Docker) is pushed to the node's registry (the distribution registry of
//!   tests/env/node-up.sh), which the Stack names as `orchestrator.containerRegistry`, and the
//!   kubelet pulls it from there;
//! - a ZenML client runs in a pod as the Stack's ServiceAccount (a team submitting from inside the
//!   cluster, as the registered orchestrator's `incluster` expects), logged into the server with
//!   another service account's API key: it activates the registered stack and runs the real
//!   two-step pipeline with ZenML's own settings for a prebuilt image (`DockerSettings` with
//!   `parent_image` and `skip_build`); its code reaches the pods through the artifact store;
//! - ZenML's orchestrator Job and its step Jobs run on the node, with the pod settings the Stack
//!   registered (`envFrom` of the Stack's ConfigMap and the store's credentials Secret);
//! - the artifacts land under the store's prefix, and a ZenML client on this host reads the
//!   produced one back through the server.
//!
//! Needs root for the node (tests/env/node-up.sh) and what `tests/env/build.sh` provides.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, LogParams, PostParams};
use serde_json::{Value, json};

use common::zenml_node::zenml_node;
use common::{Operator, apply, s3_root, test_env};

/// The ServiceAccount ZenML's orchestrator and step pods, and the submitting client, run as.
const ACCOUNT: &str = "pipelines";

/// What ZenML's kubernetes orchestrator does with the namespace's API: the client creates the
/// orchestrator's Job and a Secret with its token; the orchestrator pod creates a Job per step,
/// follows their pods and logs, and removes them.
fn pipelines_role() -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": ACCOUNT}, "rules": [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get", "patch", "delete"]},
    ]})
}

fn binding() -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT}]})
}

/// The client pod: the runner image, the Stack's ServiceAccount, the script and pipeline from a
/// ConfigMap, and the ZenML server's URL and an API key; nothing about S3.
fn submit_pod(image: &str, zenml_url: &str, zenml_stack: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "submit"}, "spec": {
        "serviceAccountName": ACCOUNT,
        "restartPolicy": "Never",
        "containers": [{
            "name": "client",
            "image": image,
            "imagePullPolicy": "Always",
            "command": ["python3", "/pipeline/zenml_kubernetes.py", zenml_stack, image],
            "env": [
                {"name": "ZENML_STORE_URL", "value": zenml_url},
                {"name": "ZENML_STORE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "zenml-client", "key": "api-key"}}},
                {"name": "HOME", "value": "/tmp"},
                {"name": "ZENML_CONFIG_PATH", "value": "/tmp/zenml"},
                {"name": "ZENML_ANALYTICS_OPT_IN", "value": "false"},
                {"name": "ZENML_LOGGING_COLORS_DISABLED", "value": "true"},
            ],
            "volumeMounts": [{"name": "pipeline", "mountPath": "/pipeline"}],
        }],
        "volumes": [{"name": "pipeline", "configMap": {"name": "pipeline"}}],
    }})
}

/// The pods of the namespace, with their logs' tails, for a failure's message.
async fn diagnosis(client: &Client, ns: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut out = String::new();
    for pod in pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = serde_json::to_string(&pod.status).unwrap_or_default();
        let params = LogParams { tail_lines: Some(40), ..LogParams::default() };
        let log = pods.logs(&name, &params).await.unwrap_or_else(|e| format!("(no log: {e})"));
        out.push_str(&format!("--- pod {name}: {status}\n{log}\n"));
    }
    out
}

#[tokio::test]
async fn zenml_s_kubernetes_orchestrator_runs_a_pipeline_on_the_node_from_what_the_stack_registered() {
    let started = Instant::now();
    let zenml = zenml_node().await;
    println!("node up, runner image {} in the registry: {:.1}s", zenml.image, started.elapsed().as_secs_f64());
    let (client, ns, bucket) = common::setup_with_bucket("zenml-node").await;

    // The store at the address pods reach (the gateway's relay to MinIO), the Stack's identity and
    // its RBAC, the operator's API key for the server, and the other team's for the client pod.
    let endpoint = json!({"url": zenml.node["AO_POD_S3_ENDPOINT"], "addressingStyle": "Path"});
    apply(&client, &ns, common::argo::store("ml", &format!("s3://{bucket}/pipelines"), endpoint)).await;
    apply(&client, &ns, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}})).await;
    apply(&client, &ns, pipelines_role()).await;
    apply(&client, &ns, binding()).await;
    common::secret(&client, &ns, "zenml-api-key", &[("api-key", test_env().var("AO_ZENML_API_KEY"))]).await;
    common::secret(&client, &ns, "zenml-client", &[("api-key", test_env().var("AO_ZENML_OTHER_API_KEY"))]).await;
    let zenml_stack = format!("ao-{ns}");
    apply(&client, &ns, json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "prod"}, "spec": {
        "artifactStoreRef": {"name": "ml"},
        "orchestrator": {"type": "Kubernetes", "serviceAccountName": ACCOUNT, "containerRegistry": {"uri": zenml.registry}},
        "zenml": {"url": zenml.zenml_url, "apiKeySecretRef": {"name": "zenml-api-key"}, "stackName": zenml_stack},
    }}))
    .await;
    let _operator = Operator::start(&ns, "1m");
    let stack = common::argo::stack_ready(&client, &ns, "prod").await;
    let record = stack.status.as_ref().and_then(|s| s.zenml.clone()).expect("the Stack registered its ZenML stack");
    assert!(record.container_registry_id.is_some(), "the registered stack has the container registry: {record:?}");
    println!("Stack ready, ZenML stack {zenml_stack} registered: {:.1}s", started.elapsed().as_secs_f64());

    let consumers = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consumers");
    let data: serde_json::Map<String, Value> = ["zenml_kubernetes.py", "two_steps.py"]
        .iter()
        .map(|file| (file.to_string(), json!(std::fs::read_to_string(format!("{consumers}/{file}")).unwrap())))
        .collect();
    apply(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pipeline"}, "data": data}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(submit_pod(&zenml.image, &zenml.zenml_url, &zenml_stack)).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let phase = tokio::time::timeout(Duration::from_secs(900), async {
        loop {
            let phase = pods.get("submit").await.ok().and_then(|p| p.status?.phase).unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                return phase;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await;
    let log = pods.logs("submit", &LogParams::default()).await.unwrap_or_default();
    if phase.as_deref() != Ok("Succeeded") {
        panic!("the client pod ended {phase:?}:\n{log}\n{}", diagnosis(&client, &ns).await);
    }
    println!("pipeline submitted and completed: {:.1}s", started.elapsed().as_secs_f64());
    let line = log
        .lines()
        .find(|l| l.starts_with("zenml-kubernetes: pipeline run"))
        .unwrap_or_else(|| panic!("no run line in the client's log:\n{log}"));
    let described = log.lines().find(|l| l.starts_with("zenml-kubernetes: stack")).unwrap_or_default();
    assert!(described.contains("container_registry") && described.contains("(kubernetes)"), "{described}");
    let run_id = line.split(['(', ')']).nth(1).expect("the run's id").to_owned();
    let payload = line.split("payload ").nth(1).and_then(|rest| rest.split(';').next()).unwrap().to_owned();

    // ZenML's own pods ran on the node: the orchestrator's and one per step, from the registry's
    // image, as the Stack's ServiceAccount, with the pod settings the Stack registered.
    let node_name = zenml.node["AO_NODE_NAME"].clone();
    let ran: Vec<Pod> = pods.list(&ListParams::default()).await.unwrap().items;
    let zenml_pods: Vec<&Pod> = ran.iter().filter(|p| p.metadata.name.as_deref() != Some("submit")).collect();
    assert!(zenml_pods.len() >= 3, "an orchestrator pod and two step pods: {}", diagnosis(&client, &ns).await);
    for pod in &zenml_pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(node_name.as_str()), "{name} ran on the node");
        assert_eq!(spec.service_account_name.as_deref(), Some(ACCOUNT), "{name}'s identity");
        let main = &spec.containers[0];
        assert_eq!(main.image.as_deref(), Some(zenml.image.as_str()), "{name}'s image");
        let env_from = serde_json::to_value(&main.env_from).unwrap();
        assert_eq!(env_from[0]["configMapRef"]["name"], "prod-stack", "{name} has the Stack's ConfigMap: {env_from}");
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        assert_eq!(phase, "Succeeded", "{name} succeeded");
        let image_id = pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].image_id.clone();
        assert!(image_id.starts_with(&zenml.registry), "{name}'s image was pulled from the registry: {image_id}");
    }

    // The artifacts are under the store's prefix, and the server's client reads the payload back.
    let listed = s3_root().list_objects_v2().bucket(&bucket).prefix("pipelines/").send().await.unwrap();
    let keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
    let uris: Vec<&str> = line.split("artifacts at ").nth(1).unwrap().split(' ').collect();
    for uri in &uris {
        let key = uri.strip_prefix(&format!("s3://{bucket}/")).unwrap_or_else(|| panic!("{uri} is not in {bucket}"));
        assert!(key.starts_with("pipelines/"), "{uri} is under the prefix");
        assert!(keys.iter().any(|k| k.starts_with(key)), "{uri} holds objects: {keys:?}");
    }
    // Read back through the server by ZenML's own client on this host, as the other service account.
    let reader = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consumers/zenml_read_run.py");
    let read = common::zenml_client(std::path::Path::new(reader), &[&run_id]);
    assert!(read.contains(&format!("= {payload}")), "{read}");
    assert!(read.contains("completed"), "{read}");
    let names: Vec<String> = zenml_pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
    println!(
        "zenml case: {} in {ns} (stack {zenml_stack}, image {}; pods {}) wrote {}",
        line.trim_start_matches("zenml-kubernetes: ").split(" completed").next().unwrap_or_default(),
        zenml.image,
        names.join(", "),
        uris.join(" ")
    );
    println!("total: {:.1}s", started.elapsed().as_secs_f64());
}
