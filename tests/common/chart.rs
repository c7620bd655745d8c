//! The chart as the tests install it: rendered by the real helm, applied to the real apiserver,
//! and a kubeconfig with a token of the chart's ServiceAccount (TokenRequest).

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use serde_json::{Value, json};

use super::test_env;

fn helm() -> String {
    format!("{}/bin/helm", test_env().var("AO_CACHE_DIR"))
}

/// `helm template` of the chart with these `--set` values, as YAML documents.
pub fn render(release: &str, release_namespace: &str, sets: &[String]) -> Vec<Value> {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/artifact-operator");
    let mut command = std::process::Command::new(helm());
    command.args(["template", release, chart, "--namespace", release_namespace, "--set", "crds.install=false"]);
    for set in sets {
        command.args(["--set", set]);
    }
    let output = command.output().expect("helm runs");
    assert!(output.status.success(), "helm template failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .filter_map(|document| serde::Deserialize::deserialize(document).ok())
        .filter(|value: &Value| value.is_object())
        .collect()
}

/// The name of the rendered ServiceAccount and the Lease name the Deployment passes.
pub fn account_and_lease(objects: &[Value]) -> (String, String) {
    let account = objects.iter().find(|o| o["kind"] == "ServiceAccount").unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap();
    let lease = args.iter().filter_map(Value::as_str).find_map(|a| a.strip_prefix("--lease-name=")).unwrap().to_owned();
    (account, lease)
}

/// Server-side applies every object in order: each first as a dry run, then for real (so a
/// Namespace exists before the objects in it are tried).
pub async fn apply_all(client: &Client, objects: &[Value], release_namespace: &str) {
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    for object in objects {
        let object: DynamicObject = serde_json::from_value(object.clone()).unwrap();
        let gvk = kube::core::GroupVersionKind::try_from(object.types.as_ref().unwrap()).unwrap();
        let (resource, capabilities) = discovery.resolve_gvk(&gvk).unwrap_or_else(|| panic!("unknown kind {gvk:?}"));
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                object.metadata.namespace.as_deref().unwrap_or(release_namespace),
                &resource,
            ),
        };
        let name = object.metadata.name.clone().unwrap();
        for dry_run in [true, false] {
            let mut params = PatchParams::apply("rbac-test").force();
            params.dry_run = dry_run;
            api.patch(&name, &params, &Patch::Apply(&object))
                .await
                .unwrap_or_else(|e| panic!("{} {name} rejected (dry run: {dry_run}): {e}", gvk.kind));
        }
    }
}

/// A kubeconfig that authenticates with a fresh token of `namespace/account` (TokenRequest).
pub async fn token_kubeconfig(client: &Client, namespace: &str, account: &str, path: &std::path::Path) {
    let token = super::service_account_token(client, namespace, account, &[]).await;
    let admin: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(test_env().var("KUBECONFIG")).unwrap()).unwrap();
    let cluster = admin["clusters"][0]["cluster"].clone();
    let config = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
    });
    std::fs::write(path, serde_json::to_string(&config).unwrap()).unwrap();
}

pub async fn client_for(kubeconfig: &std::path::Path) -> Client {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

/// Installs the chart in namespaced mode for `watched` (a release of its own in a new namespace)
/// and returns a kubeconfig with a token of its ServiceAccount, and the rendered objects.
pub async fn namespaced_release(client: &Client, watched: &str) -> (std::path::PathBuf, Vec<Value>) {
    let operator_ns = super::namespace(client, &format!("{watched}-operator")).await;
    let release = format!("artifact-operator-{}", fastrand::u32(..) % 1_000_000);
    let objects =
        render(&release, &operator_ns, &["rbac.namespaced=true".into(), format!("watchNamespaces={{{watched}}}")]);
    apply_all(client, &objects, &operator_ns).await;
    let kubeconfig = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{watched}.kubeconfig"));
    token_kubeconfig(client, &operator_ns, &account_and_lease(&objects).0, &kubeconfig).await;
    (kubeconfig, objects)
}
