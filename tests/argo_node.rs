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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use artifact_operator::api::Stack;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use common::{Operator, s3_root, test_env};

/// The ServiceAccount the workflows' pods run as, named by every Stack.
const WORKFLOW_ACCOUNT: &str = "argo-workflow";
const ARGO_MODULE: &str = "github.com/argoproj/argo-workflows/v3";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command and returns its stdout, failing the test with its output if it fails.
fn run(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{what} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The pinned Argo module's directory in the Go module cache (tests/env/argo/go.mod), where its
/// CRDs and install manifests are read from.
fn argo_module() -> PathBuf {
    let dir = run(
        Command::new("go")
            .args(["list", "-m", "-f", "{{.Dir}}", ARGO_MODULE])
            .current_dir(repo().join("tests/env/argo"))
            .env("GOPROXY", "off"),
        "go list -m (run tests/env/build.sh go first)",
    );
    PathBuf::from(dir.trim())
}

/// A YAML file of Argo's manifests (one document), as JSON.
fn manifest(module: &Path, path: &str) -> Value {
    let text = std::fs::read_to_string(module.join("manifests").join(path))
        .unwrap_or_else(|e| panic!("{path} in Argo's module: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A binary `tests/env/build.sh go` built into the cache.
fn cached_binary(name: &str) -> PathBuf {
    let path = PathBuf::from(test_env().var("AO_CACHE_DIR")).join("bin").join(name);
    assert!(path.is_file(), "{} is missing: run tests/env/build.sh go", path.display());
    path
}

/// NAME:TAG with the tag from the content of `file`, so a changed binary is a new image.
fn content_tag(name: &str, file: &Path) -> String {
    let sum = run(Command::new("sha256sum").arg(file), "sha256sum");
    format!("{name}:{}", &sum[..12])
}

/// Builds an image with tests/env/build-image.sh (KIND is its flag) and imports it into the
/// node's containerd; returns its NAME:TAG.
fn image(kind: &str, binary: Option<&Path>, image: String) -> String {
    let mut command = Command::new(repo().join("tests/env/build-image.sh"));
    command.args(["--import", kind]);
    if let Some(binary) = binary {
        command.arg(binary);
    }
    run(command.arg(&image), &format!("building and importing {image}"));
    image
}

fn resource(object: &Value) -> ApiResource {
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((group, version)) => (group.to_owned(), version.to_owned()),
        None => (String::new(), object["apiVersion"].as_str().unwrap().to_owned()),
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, object["kind"].as_str().unwrap()))
}

/// Server-side applies a cluster-scoped object given as JSON.
async fn apply_cluster(client: &Client, object: &Value) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(object));
    let name = object["metadata"]["name"].as_str().unwrap();
    api.patch(name, &PatchParams::apply("argo-node-test").force(), &Patch::Apply(object))
        .await
        .unwrap_or_else(|e| panic!("applying {} {name}: {e}", object["kind"]));
}

/// Argo's CRDs, as its namespace install has them (manifests/base/crds/minimal), Established.
async fn install_argo_crds(client: &Client, module: &Path) {
    let kustomization = manifest(module, "base/crds/minimal/kustomization.yaml");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in kustomization["resources"].as_array().unwrap() {
        let crd = manifest(module, &format!("base/crds/minimal/{}", file.as_str().unwrap()));
        apply_cluster(client, &crd).await;
        let name = crd["metadata"]["name"].as_str().unwrap().to_owned();
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} Established in time"))
        .unwrap();
    }
    // Discovery of a new CRD can lag a moment behind Established.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Applies a JSON patch of `add` operations, as kustomize applies Argo's overlays.
fn json_patch(target: &mut Value, operations: &Value) {
    for operation in operations.as_array().unwrap() {
        assert_eq!(operation["op"], "add", "only add operations: {operation}");
        let path = operation["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        let mut node = &mut *target;
        for part in parent.split('/').skip(1) {
            node = match part.parse::<usize>() {
                Ok(index) => &mut node[index],
                Err(_) => &mut node[part],
            };
        }
        match (node, last) {
            (Value::Array(items), "-") => items.push(operation["value"].clone()),
            (Value::Object(fields), key) => {
                fields.insert(key.to_owned(), operation["value"].clone());
            }
            (node, _) => panic!("cannot add at {path} in {node}"),
        }
    }
}

/// The pod environment that points a client at the apiserver: there is no kube-proxy on this node,
/// so the Service address the kubelet sets would lead nowhere.
fn apiserver_env(node: &BTreeMap<String, String>) -> Value {
    json!([
        {"name": "KUBERNETES_SERVICE_HOST", "value": node["AO_POD_KUBE_API_HOST"]},
        {"name": "KUBERNETES_SERVICE_PORT", "value": node["AO_POD_KUBE_API_PORT"]},
    ])
}

/// Argo's controller, installed in `ns` as its namespace install does (manifests/namespace-install:
/// the base Deployment, ServiceAccount and PriorityClass, the controller Role and RoleBinding, the
/// `--namespaced` overlay), with `workflow-controller-configmap` naming only the executor image.
async fn install_controller(
    client: &Client,
    ns: &str,
    module: &Path,
    node: &BTreeMap<String, String>,
    controller_image: &str,
    executor_image: &str,
) {
    let base = "base/workflow-controller";
    common::apply(client, ns, manifest(module, &format!("{base}/workflow-controller-sa.yaml"))).await;
    apply_cluster(client, &manifest(module, &format!("{base}/workflow-controller-priorityclass.yaml"))).await;
    let rbac = "namespace-install/workflow-controller-rbac";
    common::apply(client, ns, manifest(module, &format!("{rbac}/workflow-controller-role.yaml"))).await;
    let mut binding = manifest(module, &format!("{rbac}/workflow-controller-rolebinding.yaml"));
    // What `kubectl apply -n` (kustomize's namespace) makes of the subject.
    for subject in binding["subjects"].as_array_mut().unwrap() {
        subject["namespace"] = json!(ns);
    }
    common::apply(client, ns, binding).await;

    // The configuration: the executor's image, and the apiserver's address for its containers.
    // No artifactRepository: the repositories come from the Stacks alone.
    let executor = json!({"image": executor_image, "imagePullPolicy": "Never", "env": apiserver_env(node)});
    let mut config = manifest(module, &format!("{base}/workflow-controller-configmap.yaml"));
    config["data"] = json!({"executor": serde_yaml_ng::to_string(&executor).unwrap()});
    common::apply(client, ns, config).await;

    let mut deployment = manifest(module, &format!("{base}/workflow-controller-deployment.yaml"));
    json_patch(&mut deployment, &manifest(module, "namespace-install/overlays/workflow-controller-deployment.yaml"));
    let container = &mut deployment["spec"]["template"]["spec"]["containers"][0];
    container["image"] = json!(controller_image);
    container["imagePullPolicy"] = json!("Never");
    container["env"].as_array_mut().unwrap().extend(apiserver_env(node).as_array().unwrap().iter().cloned());
    common::apply(client, ns, deployment).await;
}

/// The controller's Lease held: it leads and runs its workers.
async fn controller_leads(client: &Client, ns: &str) -> String {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let waited = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            if let Some(holder) =
                leases.get_opt("workflow-controller").await.unwrap().and_then(|l| l.spec?.holder_identity)
            {
                return holder;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    match waited {
        Ok(holder) => holder,
        Err(_) => {
            panic!("the workflow-controller did not take its Lease in 180 s:\n{}", controller_log(client, ns).await)
        }
    }
}

/// The controller pod's log (its last lines), for failure messages.
async fn controller_log(client: &Client, ns: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = pods.list(&ListParams::default().labels("app=workflow-controller")).await.unwrap();
    let mut text = String::new();
    for pod in listed.items {
        let name = pod.name_any();
        let status = serde_json::to_string(&pod.status).unwrap();
        let log = pods
            .logs(&name, &LogParams { tail_lines: Some(60), ..Default::default() })
            .await
            .unwrap_or_else(|e| format!("(no log: {e})"));
        text += &format!("controller pod {name}: {status}\n{log}\n");
    }
    text
}

/// Deletes the controller's Deployment when dropped, so that no controller keeps running on the
/// node after the test, passed or failed.
struct Controller {
    namespace: String,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let ns = self.namespace.clone();
        // A runtime of its own: the test's is blocked in this drop.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let client = common::client().await;
                let api: Api<Deployment> = Api::namespaced(client, &ns);
                let _ = api.delete("workflow-controller", &DeleteParams::background()).await;
            })
        })
        .join();
    }
}

/// The workflows' ServiceAccount with what Argo's executor needs (docs/workflow-rbac.md, the
/// minimum for 3.4 and later): create and patch WorkflowTaskResults. Nothing to read Secrets:
/// the controller mounts the repository's Secrets into the pod as volumes.
async fn workflow_account(client: &Client, ns: &str) {
    common::apply(
        client,
        ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": WORKFLOW_ACCOUNT}}),
    )
    .await;
    common::apply(
        client,
        ns,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "argo-executor"},
               "rules": [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}]}),
    )
    .await;
    common::apply(
        client,
        ns,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "argo-executor"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "argo-executor"},
               "subjects": [{"kind": "ServiceAccount", "name": WORKFLOW_ACCOUNT, "namespace": ns}]}),
    )
    .await;
}

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

async fn stack_ready(client: &Client, ns: &str, name: &str) -> Stack {
    let api: Api<Stack> = Api::namespaced(client.clone(), ns);
    let mut last = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            if let Some(stack) = api.get_opt(name).await.unwrap() {
                let ready =
                    stack.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).cloned();
                if let Some(ready) = ready {
                    last = format!("{} ({}): {}", ready.status, ready.reason, ready.message);
                    if ready.status == "True" && ready.observed_generation == stack.metadata.generation {
                        return stack;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    ready.unwrap_or_else(|_| panic!("Stack {ns}/{name} not Ready in 180 s; last Ready={last}"))
}

/// Two steps: `write` saves PAYLOAD as output artifact `out` (not archived, so the object is the
/// file's bytes); `read` gets it as input artifact `in`, prints it and returns it as output
/// parameter `read`. No repository anywhere but `reference` (a key of artifact-repositories).
fn workflow(name: &str, reference: Option<&str>, image: &str, payload: &str) -> Value {
    let step =
        |script: String| json!({"image": image, "imagePullPolicy": "Never", "command": ["sh", "-c"], "args": [script]});
    let mut spec = json!({
        "entrypoint": "main",
        "serviceAccountName": WORKFLOW_ACCOUNT,
        "templates": [
            {"name": "main", "steps": [
                [{"name": "write", "template": "write"}],
                [{"name": "read", "template": "read",
                  "arguments": {"artifacts": [{"name": "in", "from": "{{steps.write.outputs.artifacts.out}}"}]}}],
            ]},
            {"name": "write",
             "container": step(format!("printf '%s' '{payload}' > /tmp/out.txt")),
             "outputs": {"artifacts": [{"name": "out", "path": "/tmp/out.txt", "archive": {"none": {}}}]}},
            {"name": "read",
             "inputs": {"artifacts": [{"name": "in", "path": "/tmp/in.txt"}]},
             "container": step("cat /tmp/in.txt && cp /tmp/in.txt /tmp/read.txt".to_owned()),
             "outputs": {"parameters": [{"name": "read", "valueFrom": {"path": "/tmp/read.txt"}}]}},
        ],
    });
    if let Some(key) = reference {
        spec["artifactRepositoryRef"] = json!({"configMap": "artifact-repositories", "key": key});
    }
    json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": name}, "spec": spec})
}

fn workflows(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
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

/// What the workflow's pods and statuses show, for a failure message.
async fn workflow_diagnosis(client: &Client, ns: &str, name: &str) -> String {
    let workflow = workflows(client, ns).get(name).await.map(|w| w.data["status"].clone()).unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("workflows.argoproj.io/workflow={name}");
    let mut text = format!("workflow {name} status: {workflow}\n");
    for pod in pods.list(&ListParams::default().labels(&selector)).await.unwrap().items {
        let pod_name = pod.name_any();
        text += &format!("pod {pod_name}: {}\n", serde_json::to_string(&pod.status).unwrap());
        for container in ["init", "wait", "main"] {
            let params =
                LogParams { container: Some(container.to_owned()), tail_lines: Some(30), ..Default::default() };
            let log = pods.logs(&pod_name, &params).await.unwrap_or_else(|e| format!("(no log: {e})"));
            text += &format!("--- {container}:\n{log}\n");
        }
    }
    text
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

/// An S3 client for the HTTPS MinIO, trusting its private CA, as MinIO's root user.
fn s3_tls() -> aws_sdk_s3::Client {
    let env = test_env();
    let pem = std::fs::read_to_string(env.var("AO_S3_CA_FILE")).unwrap();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(env.var("AO_S3_REGION").to_owned()))
        .endpoint_url(env.var("AO_S3_TLS_ENDPOINT"))
        .force_path_style(true)
        .http_client(artifact_operator::aws::clients::https_client_trusting(&pem).unwrap())
        .credentials_provider(aws_credential_types::Credentials::new(
            env.var("AO_S3_ROOT_ACCESS_KEY"),
            env.var("AO_S3_ROOT_SECRET_KEY"),
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
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
        ("c", "secure", Some("secure"), secure, "tls", s3_tls()),
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
