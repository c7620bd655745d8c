//! Argo Workflows on the real node, for the tests that run workflows there (tests/argo_node.rs,
//! tests/irsa_node.rs): the workflow-controller and argoexec built from the pinned Argo module
//! (tests/env/argo), installed as Argo's namespace install does it, and two-step workflows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use artifact_operator::api::Stack;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::conditions::{Wanted, wait_for_condition};
use super::{repo, run, test_env};

/// The ServiceAccount the workflows' pods run as, named by every Stack.
pub const WORKFLOW_ACCOUNT: &str = "argo-workflow";
pub const ARGO_MODULE: &str = "github.com/argoproj/argo-workflows/v3";

/// The pinned Argo module's directory in the Go module cache (tests/env/argo/go.mod), where its
/// CRDs and install manifests are read from.
pub fn argo_module() -> PathBuf {
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
pub fn manifest(module: &Path, path: &str) -> Value {
    let text = std::fs::read_to_string(module.join("manifests").join(path))
        .unwrap_or_else(|e| panic!("{path} in Argo's module: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A binary `tests/env/build.sh go` built into the cache.
pub fn cached_binary(name: &str) -> PathBuf {
    let path = PathBuf::from(test_env().var("AO_CACHE_DIR")).join("bin").join(name);
    assert!(path.is_file(), "{} is missing: run tests/env/build.sh go", path.display());
    path
}

/// NAME:TAG with the tag from the content of `file`, so a changed binary is a new image.
pub fn content_tag(name: &str, file: &Path) -> String {
    let sum = run(Command::new("sha256sum").arg(file), "sha256sum");
    format!("{name}:{}", &sum[..12])
}

/// Builds an image with tests/env/build-image.sh (KIND is its flag) and imports it into the
/// node's containerd; returns its NAME:TAG.
pub fn image(kind: &str, binary: Option<&Path>, image: String) -> String {
    let mut command = Command::new(repo().join("tests/env/build-image.sh"));
    command.args(["--import", kind]);
    if let Some(binary) = binary {
        command.arg(binary);
    }
    run(command.arg(&image), &format!("building and importing {image}"));
    image
}

pub fn resource(object: &Value) -> ApiResource {
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((group, version)) => (group.to_owned(), version.to_owned()),
        None => (String::new(), object["apiVersion"].as_str().unwrap().to_owned()),
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, object["kind"].as_str().unwrap()))
}

/// Server-side applies a cluster-scoped object given as JSON.
pub async fn apply_cluster(client: &Client, object: &Value) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(object));
    let name = object["metadata"]["name"].as_str().unwrap();
    api.patch(name, &PatchParams::apply("argo-node-test").force(), &Patch::Apply(object))
        .await
        .unwrap_or_else(|e| panic!("applying {} {name}: {e}", object["kind"]));
}

/// Argo's CRDs, as its namespace install has them (manifests/base/crds/minimal), Established.
pub async fn install_argo_crds(client: &Client, module: &Path) {
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
pub fn json_patch(target: &mut Value, operations: &Value) {
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
pub fn apiserver_env(node: &BTreeMap<String, String>) -> Value {
    json!([
        {"name": "KUBERNETES_SERVICE_HOST", "value": node["AO_POD_KUBE_API_HOST"]},
        {"name": "KUBERNETES_SERVICE_PORT", "value": node["AO_POD_KUBE_API_PORT"]},
    ])
}

/// Argo's controller, installed in `ns` as its namespace install does (manifests/namespace-install:
/// the base Deployment, ServiceAccount and PriorityClass, the controller Role and RoleBinding, the
/// `--namespaced` overlay), with `workflow-controller-configmap` naming only the executor image.
pub async fn install_controller(
    client: &Client,
    ns: &str,
    module: &Path,
    node: &BTreeMap<String, String>,
    controller_image: &str,
    executor_image: &str,
) {
    let base = "base/workflow-controller";
    super::apply(client, ns, manifest(module, &format!("{base}/workflow-controller-sa.yaml"))).await;
    apply_cluster(client, &manifest(module, &format!("{base}/workflow-controller-priorityclass.yaml"))).await;
    let rbac = "namespace-install/workflow-controller-rbac";
    super::apply(client, ns, manifest(module, &format!("{rbac}/workflow-controller-role.yaml"))).await;
    let mut binding = manifest(module, &format!("{rbac}/workflow-controller-rolebinding.yaml"));
    // What `kubectl apply -n` (kustomize's namespace) makes of the subject.
    for subject in binding["subjects"].as_array_mut().unwrap() {
        subject["namespace"] = json!(ns);
    }
    super::apply(client, ns, binding).await;

    // The configuration: the executor's image, and the apiserver's address for its containers.
    // No artifactRepository: the repositories come from the Stacks alone.
    let executor = json!({"image": executor_image, "imagePullPolicy": "Never", "env": apiserver_env(node)});
    let mut config = manifest(module, &format!("{base}/workflow-controller-configmap.yaml"));
    config["data"] = json!({"executor": serde_yaml_ng::to_string(&executor).unwrap()});
    super::apply(client, ns, config).await;

    let mut deployment = manifest(module, &format!("{base}/workflow-controller-deployment.yaml"));
    json_patch(&mut deployment, &manifest(module, "namespace-install/overlays/workflow-controller-deployment.yaml"));
    let container = &mut deployment["spec"]["template"]["spec"]["containers"][0];
    container["image"] = json!(controller_image);
    container["imagePullPolicy"] = json!("Never");
    container["env"].as_array_mut().unwrap().extend(apiserver_env(node).as_array().unwrap().iter().cloned());
    super::apply(client, ns, deployment).await;
}

/// The images a workflow on the node needs, built from the cache and imported into the node's
/// containerd (NAME:TAG each).
pub struct Images {
    pub controller: String,
    pub executor: String,
    /// The steps' main containers' image (busybox).
    pub step: String,
}

/// Builds and imports [`Images`]: Argo's controller and executor from `tests/env/build.sh go`, the
/// steps' busybox from Debian's busybox-static.
pub fn images() -> Images {
    let controller = cached_binary("workflow-controller");
    let executor = cached_binary("argoexec");
    Images {
        controller: image(
            "--workflow-controller",
            Some(&controller),
            content_tag("ao-workflow-controller", &controller),
        ),
        executor: image("--argoexec", Some(&executor), content_tag("ao-argoexec", &executor)),
        step: image("--busybox", None, content_tag("ao-busybox", Path::new("/bin/busybox"))),
    }
}

/// Argo in `ns` as its namespace install has it ([`install_argo_crds`], [`install_controller`]
/// with `images`) and the workflows' ServiceAccount ([`workflow_account`]); the [`Controller`]
/// returned deletes the controller when dropped.
pub async fn install_argo(client: &Client, ns: &str, node: &BTreeMap<String, String>, images: &Images) -> Controller {
    let module = argo_module();
    install_argo_crds(client, &module).await;
    let controller = Controller { namespace: ns.to_owned() };
    install_controller(client, ns, &module, node, &images.controller, &images.executor).await;
    workflow_account(client, ns).await;
    controller
}

/// The controller's Lease held: it leads and runs its workers.
pub async fn controller_leads(client: &Client, ns: &str) -> String {
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
pub async fn controller_log(client: &Client, ns: &str) -> String {
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
pub struct Controller {
    pub namespace: String,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let ns = self.namespace.clone();
        super::clean_up_from_drop(|client| async move {
            let api: Api<Deployment> = Api::namespaced(client, &ns);
            let _ = api.delete("workflow-controller", &DeleteParams::background()).await;
        });
    }
}

/// The workflows' ServiceAccount with what Argo's executor needs (docs/workflow-rbac.md, the
/// minimum for 3.4 and later): create and patch WorkflowTaskResults. Nothing to read Secrets:
/// the controller mounts the repository's Secrets into the pod as volumes.
pub async fn workflow_account(client: &Client, ns: &str) {
    super::apply(
        client,
        ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": WORKFLOW_ACCOUNT}}),
    )
    .await;
    super::apply(
        client,
        ns,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "argo-executor"},
               "rules": [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}]}),
    )
    .await;
    super::apply(
        client,
        ns,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "argo-executor"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "argo-executor"},
               "subjects": [{"kind": "ServiceAccount", "name": WORKFLOW_ACCOUNT, "namespace": ns}]}),
    )
    .await;
}

/// Waits (up to 180 s) for the Stack's Ready=True for its generation.
pub async fn stack_ready(client: &Client, ns: &str, name: &str) -> Stack {
    wait_for_condition(client, ns, name, "Ready", Wanted::True, Duration::from_secs(180)).await
}

/// Two steps: `write` saves PAYLOAD as output artifact `out` (not archived, so the object is the
/// file's bytes); `read` gets it as input artifact `in`, prints it and returns it as output
/// parameter `read`. No repository anywhere but `reference` (a key of artifact-repositories).
pub fn workflow(name: &str, reference: Option<&str>, image: &str, payload: &str) -> Value {
    workflow_writing_after(name, reference, image, payload, None)
}

/// As [`workflow`], but with `not_before`, the write step's main container first waits (a poll
/// every 5 s) until that time and only then writes the file: its pod runs from before it, and its
/// wait container saves the artifact after it.
pub fn workflow_writing_after(
    name: &str,
    reference: Option<&str>,
    image: &str,
    payload: &str,
    not_before: Option<jiff::Timestamp>,
) -> Value {
    let step =
        |script: String| json!({"image": image, "imagePullPolicy": "Never", "command": ["sh", "-c"], "args": [script]});
    let wait = not_before.map_or(String::new(), |at| {
        format!(
            "echo \"started $(date -u +%FT%TZ), writing after {at}\"; \
             while [ \"$(date +%s)\" -lt {} ]; do sleep 5; done; echo \"writing $(date -u +%FT%TZ)\"; ",
            at.as_second()
        )
    });
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
             "container": step(format!("{wait}printf '%s' '{payload}' > /tmp/out.txt")),
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

pub fn workflows(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

/// What the workflow's pods and statuses show, for a failure message.
pub async fn workflow_diagnosis(client: &Client, ns: &str, name: &str) -> String {
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

/// An ArtifactStore `name` at `path` on `endpoint`, with the keys of Secret `minio-keys`, that
/// creates its bucket.
pub fn store(name: &str, path: &str, endpoint: Value) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": name}, "spec": {
        "path": path,
        "endpoint": endpoint,
        "auth": {"secretRef": {"name": "minio-keys"}},
        "provisioning": "Create",
    }})
}

/// A Stack `name` of Argo Workflows on `store`, its pods running as [`WORKFLOW_ACCOUNT`], with the
/// Argo format (the namespace default when `default_repository`) and `credentials` when given.
pub fn stack(name: &str, store: &str, default_repository: bool, credentials: Option<Value>) -> Value {
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
pub fn has_key(value: &Value, name: &str) -> bool {
    match value {
        Value::Object(fields) => fields.iter().any(|(k, v)| k == name || has_key(v, name)),
        Value::Array(items) => items.iter().any(|v| has_key(v, name)),
        _ => false,
    }
}

/// One case: the Stack whose repository the workflow should use, and where its objects land.
pub struct Case {
    pub label: &'static str,
    pub stack: &'static str,
    pub reference: Option<&'static str>,
    pub workflow: String,
    pub payload: String,
    pub bucket: String,
    /// The Stack's key prefix in the bucket (its store's path, narrowed for scoped credentials).
    pub prefix: String,
    /// The Stack's key of artifact-repositories.
    pub rendered: Value,
    /// A client that reads the bucket (the root user's).
    pub s3: aws_sdk_s3::Client,
}

/// Waits up to `within` for the case's workflow to finish and checks what it did; returns the line
/// to print.
pub async fn check_case(client: &Client, ns: &str, case: &Case, within: Duration) -> Result<String, String> {
    let api = workflows(client, ns);
    let finished = tokio::time::timeout(within, async {
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
        return Err(format!(
            "not finished in {} s\n{}",
            within.as_secs(),
            workflow_diagnosis(client, ns, &case.workflow).await
        ));
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

/// A payload for case `case`, distinct in every run.
pub fn payload(case: &str) -> String {
    format!("argo-node case {case} {:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
