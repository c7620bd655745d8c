//! Argo Workflows on the real node, consuming Stacks: the workflow-controller and argoexec built
//! from the pinned Argo module (tests/env/argo, `tests/env/build.sh go`), installed as Argo's
//! namespace install does it (its CRDs, its RBAC and its Deployment, read from the module, with
//! `--namespaced`), the executor image named by `workflow-controller-configmap`, and workflows
//! whose first step writes an output artifact and whose second step reads it as an input
//! artifact, their pods on the node (tests/env/node-up.sh) reaching MinIO through the gateway:
//!
//! - (a) no `artifactRepositoryRef`: the namespace default of a Stack with `argoDefaultRepository`;
//! - (b) `artifactRepositoryRef` to a second Stack's key;
//! - (c) the HTTPS MinIO with its private CA, through the rendered `caSecret`;
//! - (d) a Stack with `credentials.mode: Scoped` (session keys from MinIO's STS).
//!
//! Each case asserts that the object landed under its Stack's prefix, that the second step read
//! the same bytes, and that nothing but the Stack's rendering configured the repository.
//!
//! Needs root for the node, the Argo binaries and Debian's busybox-static (`tests/env/build.sh go`
//! and `build.sh node`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

use common::argo::{
    Controller, WORKFLOW_ACCOUNT, argo_module, cached_binary, content_tag, controller_leads, controller_log, image,
    install_argo_crds, install_controller, stack_ready, workflow, workflow_account, workflow_diagnosis, workflows,
};
use common::{Operator, s3_root, test_env};

fn store(name: &str, path: &str, endpoint: Value) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": name}, "spec": {
        "path": path,
        "endpoint": endpoint,
        "auth": {"secretRef": {"name": "minio-keys"}},
        "provisioning": "Create",
    }})
}

fn stack(name: &str, store: &str, default_repository: bool, credentials: Option<Value>) -> Value {
    let mut stack = json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": {
        "artifactStoreRef": {"name": store},
        "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": WORKFLOW_ACCOUNT},
        "outputs": {"formats": ["Argo"], "argoDefaultRepository": default_repository},
    }});
    if let Some(credentials) = credentials {
        stack["spec"]["credentials"] = credentials;
    }
    stack
}

/// Whether `value` has a key `name` anywhere.
fn has_key(value: &Value, name: &str) -> bool {
    match value {
        Value::Object(fields) => fields.iter().any(|(k, v)| k == name || has_key(v, name)),
        Value::Array(items) => items.iter().any(|v| has_key(v, name)),
        _ => false,
    }
}

/// One case: the Stack whose repository the workflow should use, and where its objects land.
struct Case {
    label: &'static str,
    stack: &'static str,
    reference: Option<&'static str>,
    workflow: String,
    payload: String,
    bucket: String,
    /// The Stack's key prefix in the bucket (its store's path, narrowed for scoped credentials).
    prefix: String,
    /// The Stack's key of artifact-repositories.
    rendered: Value,
    s3: aws_sdk_s3::Client,
}

/// Waits for the case's workflow to finish and checks what it did; returns the line to print.
async fn check_case(client: &Client, ns: &str, case: &Case) -> Result<String, String> {
    let api = workflows(client, ns);
    let finished = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let workflow = api.get(&case.workflow).await.unwrap();
            let phase = workflow.data["status"]["phase"].as_str().unwrap_or_default().to_owned();
            if ["Succeeded", "Failed", "Error"].contains(&phase.as_str()) {
                return (phase, workflow);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    let Ok((phase, workflow)) = finished else {
        return Err(format!("not finished in 300 s\n{}", workflow_diagnosis(client, ns, &case.workflow).await));
    };
    if phase != "Succeeded" {
        return Err(format!("{phase}\n{}", workflow_diagnosis(client, ns, &case.workflow).await));
    }
    let status = &workflow.data["status"];

    // Only the Stack configured the repository: the workflow names none (at most the Stack's
    // key), and Argo resolved the Stack's key of artifact-repositories, not its own default.
    if has_key(&workflow.data["spec"], "s3") {
        return Err(format!("the workflow's spec has an s3 field: {}", workflow.data["spec"]));
    }
    let resolved = &status["artifactRepositoryRef"];
    if resolved["configMap"] != "artifact-repositories" || resolved["key"] != case.stack || resolved["default"] == true
    {
        return Err(format!("Argo resolved {resolved}, not key {} of artifact-repositories", case.stack));
    }
    // ... and used it as the Stack rendered it.
    if resolved["artifactRepository"] != case.rendered {
        return Err(format!("Argo used {}, the Stack rendered {}", resolved["artifactRepository"], case.rendered));
    }

    let nodes: Vec<&Value> = status["nodes"].as_object().unwrap().values().collect();
    let node = |template: &str| nodes.iter().find(|n| n["templateName"] == template).copied();
    let (Some(write), Some(read)) = (node("write"), node("read")) else {
        return Err(format!("no write and read nodes in {status}"));
    };
    let Some(key) = write["outputs"]["artifacts"][0]["s3"]["key"].as_str() else {
        return Err(format!("the write step saved no S3 artifact: {}", write["outputs"]));
    };
    let under = format!("{}/{}/", case.prefix, case.workflow);
    if !key.starts_with(&under) {
        return Err(format!("artifact key {key} is not under {under}"));
    }
    let read_back = read["outputs"]["parameters"][0]["value"].as_str().unwrap_or_default();
    if read_back != case.payload {
        return Err(format!("the read step read {read_back:?}, not {:?}", case.payload));
    }
    let listed =
        case.s3.list_objects_v2().bucket(&case.bucket).prefix(&under).send().await.map_err(|e| format!("{e:?}"))?;
    let keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
    if !keys.iter().any(|k| k == key) {
        return Err(format!("{key} is not listed under {under}: {keys:?}"));
    }
    let object = case.s3.get_object().bucket(&case.bucket).key(key).send().await.map_err(|e| format!("{e:?}"))?;
    let bytes = object.body.collect().await.map_err(|e| e.to_string())?.into_bytes();
    if bytes.as_ref() != case.payload.as_bytes() {
        return Err(format!("s3://{}/{key} holds {:?}, not the payload", case.bucket, String::from_utf8_lossy(&bytes)));
    }
    let keys: Vec<String> = keys.iter().map(|k| format!("s3://{}/{k}", case.bucket)).collect();
    Ok(format!(
        "argo case ({}) workflow {ns}/{} (Stack {}, {}): wrote {}; the read step read the same {} bytes",
        case.label,
        case.workflow,
        case.stack,
        case.reference.map_or("the namespace default".to_owned(), |k| format!("artifactRepositoryRef key {k}")),
        keys.join(", "),
        bytes.len(),
    ))
}

fn payload(case: &str) -> String {
    format!("argo-node case {case} {:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[tokio::test]
async fn argo_workflows_on_the_node_save_and_load_artifacts_through_stacks() {
    let started = Instant::now();
    let node = common::node();
    println!("node up: {:.1}s", started.elapsed().as_secs_f64());
    let module = argo_module();
    let images = Instant::now();
    let controller = cached_binary("workflow-controller");
    let executor = cached_binary("argoexec");
    let controller_image =
        image("--workflow-controller", Some(&controller), content_tag("ao-workflow-controller", &controller));
    let executor_image = image("--argoexec", Some(&executor), content_tag("ao-argoexec", &executor));
    let step_image = image("--busybox", None, content_tag("ao-busybox", Path::new("/bin/busybox")));
    println!("images built and imported: {:.1}s", images.elapsed().as_secs_f64());

    let (client, ns) = common::setup("argo-node").await;
    install_argo_crds(&client, &module).await;
    let _controller = Controller { namespace: ns.clone() };
    install_controller(&client, &ns, &module, &node, &controller_image, &executor_image).await;
    workflow_account(&client, &ns).await;

    // The stores: two buckets on the plain MinIO, one on the HTTPS MinIO with its private CA, all
    // at the addresses the pods reach (the gateway's relays), which this host reaches too.
    common::user_keys_secret(&client, &ns, "minio-keys").await;
    let pem = std::fs::read_to_string(test_env().var("AO_S3_CA_FILE")).unwrap();
    common::apply(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s3-ca"}, "data": {"ca.crt": pem}}),
    )
    .await;
    let (first, second, secure) =
        (common::limited_bucket("argo-a"), common::limited_bucket("argo-b"), common::limited_bucket("argo-tls"));
    let plain = json!({"url": node["AO_POD_S3_ENDPOINT"], "addressingStyle": "Path"});
    let tls = json!({"url": node["AO_POD_S3_TLS_ENDPOINT"], "addressingStyle": "Path", "tls": {"caBundle": {"name": "s3-ca"}}});
    common::apply(&client, &ns, store("ml", &format!("s3://{first}/pipelines"), plain.clone())).await;
    common::apply(&client, &ns, store("other", &format!("s3://{second}/second"), plain)).await;
    common::apply(&client, &ns, store("secure-store", &format!("s3://{secure}/tls"), tls)).await;
    common::apply(&client, &ns, stack("prod", "ml", true, None)).await;
    common::apply(&client, &ns, stack("second", "other", false, None)).await;
    common::apply(&client, &ns, stack("secure", "secure-store", false, None)).await;
    let scoped = json!({"mode": "Scoped", "prefix": "scoped", "duration": "15m"});
    common::apply(&client, &ns, stack("scoped", "ml", false, Some(scoped))).await;
    let _operator = Operator::start(&ns, "1m");

    let holder = controller_leads(&client, &ns).await;
    println!("workflow-controller {holder} leads: {:.1}s", started.elapsed().as_secs_f64());
    for name in ["prod", "second", "secure", "scoped"] {
        stack_ready(&client, &ns, name).await;
    }
    println!("Stacks Ready: {:.1}s", started.elapsed().as_secs_f64());

    // Nothing but the Stacks configures a repository: the controller's ConfigMap has none.
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("workflow-controller-configmap").await.unwrap();
    let keys: Vec<&String> = config.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["executor"], "the controller's configuration names no artifact repository");
    let repositories = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("artifact-repositories").await.unwrap();
    let rendered = repositories.data.unwrap();
    let secure_repository: Value = serde_yaml_ng::from_str(&rendered["secure"]).unwrap();
    assert_eq!(secure_repository["s3"]["caSecret"]["name"], "secure-ca-bundle", "{secure_repository}");
    let scoped_repository: Value = serde_yaml_ng::from_str(&rendered["scoped"]).unwrap();
    assert_eq!(
        scoped_repository["s3"]["sessionTokenSecret"]["name"], "scoped-scoped-credentials",
        "{scoped_repository}"
    );
    assert_eq!(scoped_repository["s3"]["keyFormat"], "pipelines/scoped/{{workflow.name}}/{{pod.name}}");

    let cases = [
        ("a", "prod", None, first.clone(), "pipelines", s3_root()),
        ("b", "second", Some("second"), second, "second", s3_root()),
        ("c", "secure", Some("secure"), secure, "tls", common::s3_root_tls()),
        ("d", "scoped", Some("scoped"), first, "pipelines/scoped", s3_root()),
    ];
    let cases: Vec<Case> = cases
        .into_iter()
        .map(|(label, stack, reference, bucket, prefix, s3)| Case {
            label,
            stack,
            reference,
            workflow: format!("case-{label}-{stack}"),
            payload: payload(label),
            bucket,
            prefix: prefix.to_owned(),
            rendered: serde_yaml_ng::from_str(&rendered[stack]).unwrap(),
            s3,
        })
        .collect();
    let submitted = Instant::now();
    for case in &cases {
        let object = workflow(&case.workflow, case.reference, &step_image, &case.payload);
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        workflows(&client, &ns).create(&PostParams::default(), &object).await.unwrap();
    }
    let mut failures = Vec::new();
    for case in &cases {
        match check_case(&client, &ns, case).await {
            Ok(line) => println!("{line}"),
            Err(error) => {
                println!("argo case ({}) workflow {ns}/{} FAILED: {error}", case.label, case.workflow);
                failures.push(format!("({}) {}", case.label, error.lines().next().unwrap_or_default()));
            }
        }
    }
    println!(
        "workflows done: {:.1}s after submission; whole test {:.1}s",
        submitted.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        println!("{}", controller_log(&client, &ns).await);
    }
    assert!(failures.is_empty(), "cases failed: {failures:?}");
}
