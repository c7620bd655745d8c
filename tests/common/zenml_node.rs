//! ZenML's pods on the real node (tests/env/node-up.sh): the runner image they run, built without
//! Docker by tests/env/zenml-image.sh (Debian bookworm's python3 with ZenML 0.98.0 and its
//! kubernetes and s3 integrations' requirements, pinned in tests/env/requirements-zenml-image.txt)
//! and pushed to the node's registry (the distribution registry node-up.sh starts), from which the
//! kubelet pulls it; and where pods reach that registry and the environment's ZenML server.
//!
//! ZenML's container registry takes a URI such as `localhost:5000` for a local one and refuses it
//! for a remote Kubernetes orchestrator: the URI pods and ZenML use is [`pod_registry`], the
//! gateway's IP and the registry's port.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The repository of the runner image in the node's registry.
pub const RUNNER_REPOSITORY: &str = "zenml-runner";

/// What a test needs to run ZenML's pods on the node.
pub struct ZenmlNode {
    /// The node's env file (tests/env/node-up.sh).
    pub node: BTreeMap<String, String>,
    /// The runner image as pods pull it: `<pod registry>/zenml-runner:<first 12 hex digits of its
    /// manifest digest>`.
    pub image: String,
    /// The registry as pods (and containerd) reach it, `<gateway>:<port>` ([`pod_registry`]).
    pub registry: String,
    /// The ZenML server as pods reach it, `http://<gateway>:<port>` ([`pod_zenml_url`]).
    pub zenml_url: String,
}

/// The registry's address for pods and for the node's containerd, `AO_POD_REGISTRY`: the pod
/// bridge's gateway and the registry's port (its relay there), e.g. `10.244.77.1:40123`. HTTPS,
/// with a certificate from the environment's cluster CA, which containerd trusts for this host.
pub fn pod_registry(node: &BTreeMap<String, String>) -> String {
    node_var(node, "AO_POD_REGISTRY")
}

/// The registry's address on this host, `AO_REGISTRY` (`127.0.0.1:<port>`), where images are
/// pushed; the same registry as [`pod_registry`].
pub fn host_registry(node: &BTreeMap<String, String>) -> String {
    node_var(node, "AO_REGISTRY")
}

/// The environment's ZenML server (tests/env/up.sh, `AO_ZENML_URL` on this host) as pods reach it
/// through the node's relay on the gateway, `AO_POD_ZENML_URL`: `http://<gateway>:<port>`.
pub fn pod_zenml_url(node: &BTreeMap<String, String>) -> String {
    node_var(node, "AO_POD_ZENML_URL")
}

fn node_var(node: &BTreeMap<String, String>, name: &str) -> String {
    node.get(name)
        .unwrap_or_else(|| panic!("{name} missing from the node's env file: restart the node (tests/env/node-down.sh)"))
        .clone()
}

/// Starts the node (a no-op when it runs), builds the runner image (cached: seconds once built)
/// and pushes it to the node's registry (nothing is sent when it is there already); blocking.
pub fn zenml_node_blocking() -> ZenmlNode {
    let node = super::node();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/env/zenml-image.sh");
    let output = Command::new(script).arg("--push").output().expect("tests/env/zenml-image.sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "building and pushing the ZenML runner image (tests/env/zenml-image.sh --push) failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let image = stdout.lines().last().expect("zenml-image.sh --push prints the reference").to_owned();
    let registry = pod_registry(&node);
    assert!(
        image.starts_with(&format!("{registry}/{RUNNER_REPOSITORY}:")),
        "{image} is not in the node's registry {registry}"
    );
    let zenml_url = pod_zenml_url(&node);
    ZenmlNode { node, image, registry, zenml_url }
}

/// [`zenml_node_blocking`] off the async runtime's threads (a cold build takes minutes).
pub async fn zenml_node() -> ZenmlNode {
    tokio::task::spawn_blocking(zenml_node_blocking).await.expect("the image build does not panic")
}

/// The runner image's reference, pullable by the node's pods: `<AO_POD_REGISTRY>/zenml-runner:<tag>`
/// (starts the node, builds and pushes the image when needed; see [`zenml_node`]).
pub async fn zenml_runner_image() -> String {
    zenml_node().await.image
}
