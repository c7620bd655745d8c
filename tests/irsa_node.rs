//! IRSA in pods on the real node: the upstream amazon-eks-pod-identity-webhook (built from its
//! module, tests/env/pod-identity-webhook, `tests/env/build.sh go`) runs as a host process and
//! mutates this test's pods (upstream's own MutatingWebhookConfiguration from its module, with
//! `clientConfig.url` https://127.0.0.1:PORT and a serving certificate signed by the environment's
//! CA, narrowed to the test's namespace). A host process because the apiserver runs on the host
//! and reaches 127.0.0.1 directly, with no Service (there is no kube-proxy on this node), no image
//! and no in-cluster certificate request; out of the cluster the webhook listens on all
//! interfaces at its port, which the test picks free. Pods of a ServiceAccount annotated with
//! `eks.amazonaws.com/role-arn` get the projected token (audience sts.amazonaws.com), AWS_ROLE_ARN
//! and AWS_WEB_IDENTITY_TOKEN_FILE. The apiserver's issuer is registered in moto's IAM as an OIDC
//! provider, and each Stack's store (implicit auth) is on moto's S3. The `verification.inPod`
//! check pod gets its credentials only through AssumeRoleWithWebIdentity: moto's request recorder
//! shows the pod's S3 write signed with an access key that moto issued for an
//! AssumeRoleWithWebIdentity call whose token the apiserver signed for that very pod.
//!
//! The webhook cannot know moto's address: a second webhook of this test (a few lines of Python)
//! adds AWS_ENDPOINT_URL_STS to the pods, as a cluster whose STS is not AWS's must (on EKS the SDKs'
//! default STS endpoint is right and nothing is added). It also plays the deployKF #79 trap: pods
//! of the ServiceAccount `preset` get AWS_ACCESS_KEY_ID as well.
//!
//! Cases: (good) the check pod; (wrong trust) a role whose trust policy does not admit the
//! ServiceAccount; (preset keys) AWS_ACCESS_KEY_ID beside the token; (argo) an Argo workflow whose
//! executor saves and loads through the role (Argo's install from tests/common/argo.rs). moto's
//! recorder is global: two runs of this test at once would stop each other's recording.
//!
//! Runs only where the node runs (root, `tests/env/node-up.sh`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use artifact_operator::api::Stack;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use common::conditions::{Wanted, status_reason_message, wait_for_condition};
use common::stacks::stack_object;
use common::{Operator, argo, repo, run, static_binary, test_env};

const AUDIENCE: &str = "sts.amazonaws.com";
const TOKEN_FILE: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token";
const PRESET_KEY: &str = "AKIAPRESETKEYS000001";

/// Base64 in either alphabet, padded or not.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    };
    let (mut out, mut bits, mut acc) = (Vec::new(), 0u32, 0u32);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        out.push_str(&"=".repeat(3 - chunk.len()));
    }
    out
}

/// The fields of an application/x-www-form-urlencoded body.
fn form(body: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

/// A serving certificate for 127.0.0.1 signed by the environment's CA (target/testenv/pki/ca).
fn serving_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let pki = pki();
    let (key, csr, crt, ext) = (dir.join("tls.key"), dir.join("tls.csr"), dir.join("tls.crt"), dir.join("tls.ext"));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    run(
        Command::new("openssl")
            .args(["req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-subj", "/CN=irsa-webhook", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr),
        "openssl req",
    );
    run(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(pki.join("ca.crt"))
            .arg("-CAkey")
            .arg(pki.join("ca.key"))
            .args(["-set_serial", &format!("0x{:016x}", fastrand::u64(..))])
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&crt),
        "openssl x509",
    );
    (crt, key)
}

/// The test's second webhook: AWS_ENDPOINT_URL_STS for every container (moto's STS, which the
/// pod-identity webhook cannot know), and, for pods of the ServiceAccount `preset`, access keys
/// in the environment as well.
const SHIM: &str = r#"
import json, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, cert, key, sts, preset_key = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        pod = review["request"]["object"]
        add = [{"name": "AWS_ENDPOINT_URL_STS", "value": sts}]
        if pod["spec"].get("serviceAccountName") == "preset":
            add += [{"name": "AWS_ACCESS_KEY_ID", "value": preset_key},
                    {"name": "AWS_SECRET_ACCESS_KEY", "value": "preset-secret-from-somewhere"}]
        patch = []
        for field in ("initContainers", "containers"):
            for i, container in enumerate(pod["spec"].get(field) or []):
                if container.get("env") is None:
                    patch.append({"op": "add", "path": f"/spec/{field}/{i}/env", "value": add})
                else:
                    patch += [{"op": "add", "path": f"/spec/{field}/{i}/env/-", "value": e} for e in add]
        import base64
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
            "uid": review["request"]["uid"], "allowed": True, "patchType": "JSONPatch",
            "patch": base64.b64encode(json.dumps(patch).encode()).decode()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("serving", flush=True)
server.serve_forever()
"#;

/// The webhooks' processes and their configuration, gone when dropped.
struct Webhooks {
    children: Vec<Child>,
    config: String,
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        let name = self.config.clone();
        common::clean_up_from_drop(|client| async move {
            let api: Api<kube::api::DynamicObject> = Api::all_with(client, &webhook_resource());
            let _ = api.delete(&name, &DeleteParams::default()).await;
        });
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn pki() -> PathBuf {
    Path::new(test_env().var("KUBECONFIG")).parent().unwrap().join("pki")
}

/// The webhook's registration as its module ships it (deploy/mutatingwebhook.yaml), as JSON.
fn webhook_manifest() -> Value {
    let dir = run(
        Command::new("go")
            .args(["list", "-m", "-f", "{{.Dir}}", "github.com/aws/amazon-eks-pod-identity-webhook"])
            .current_dir(repo().join("tests/env/pod-identity-webhook"))
            .env("GOPROXY", "off"),
        "go list -m (run tests/env/build.sh go first)",
    );
    let text = std::fs::read_to_string(Path::new(dir.trim()).join("deploy/mutatingwebhook.yaml")).unwrap();
    let manifest: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(manifest["webhooks"][0]["admissionReviewVersions"], json!(["v1beta1"]), "{manifest}");
    manifest
}

fn webhook_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
    ))
}

async fn wait_listening(port: u16, what: &str) {
    common::eventually(Duration::from_secs(30), what, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
}

/// Starts the pod-identity webhook and the shim, and registers both for pods of `ns`.
async fn webhooks(client: &Client, ns: &str, dir: &Path, pod_sts: &str) -> Webhooks {
    let (crt, key) = serving_certificate(dir);
    let (port, metrics, shim_port) = (common::free_port(), common::free_port(), common::free_port());
    let binary = PathBuf::from(test_env().var("AO_CACHE_DIR")).join("bin/pod-identity-webhook");
    assert!(binary.is_file(), "{} is missing: run tests/env/build.sh go", binary.display());
    let log = std::fs::File::create(dir.join("pod-identity-webhook.log")).unwrap();
    let webhook = Command::new(&binary)
        .args(["--in-cluster=false", "--kubeconfig", test_env().var("KUBECONFIG")])
        .args(["--port", &port.to_string(), "--metrics-port", &metrics.to_string()])
        .arg(format!("--tls-cert={}", crt.display()))
        .arg(format!("--tls-key={}", key.display()))
        .args(["--token-audience", AUDIENCE, "--annotation-prefix", "eks.amazonaws.com"])
        .args(["--service-account-lookup-grace-period", "3s", "--logtostderr"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("the pod-identity webhook starts");
    let shim = Command::new("python3")
        .args(["-c", SHIM, &shim_port.to_string()])
        .arg(&crt)
        .arg(&key)
        .args([pod_sts, PRESET_KEY])
        .stdout(Stdio::null())
        .spawn()
        .expect("the shim starts");
    let name = format!("irsa-node-{ns}");
    let hooks = Webhooks { children: vec![webhook, shim], config: name.clone() };
    wait_listening(port, "the pod-identity webhook listening").await;
    wait_listening(shim_port, "the STS-endpoint webhook listening").await;

    // Upstream's own registration (deploy/mutatingwebhook.yaml in its module: v1beta1 reviews, its
    // objectSelector, failurePolicy Ignore), pointed at the process and narrowed to this namespace.
    let ca = base64_encode(&std::fs::read(pki().join("ca.crt")).unwrap());
    let namespace = json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
    let mut upstream = webhook_manifest();
    let mut hook = upstream["webhooks"][0].take();
    hook["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}/mutate"), "caBundle": ca});
    hook["namespaceSelector"] = namespace.clone();
    hook["reinvocationPolicy"] = json!("IfNeeded");
    let shim = json!({"name": "sts-endpoint.irsa-node.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
        "failurePolicy": "Fail", "reinvocationPolicy": "IfNeeded", "timeoutSeconds": 10,
        "clientConfig": {"url": format!("https://127.0.0.1:{shim_port}/"), "caBundle": ca},
        "namespaceSelector": namespace,
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]});
    let config = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name}, "webhooks": [hook, shim]});
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &webhook_resource());
    api.patch(&name, &PatchParams::apply("irsa-node-test").force(), &Patch::Apply(&config)).await.unwrap();
    hooks
}

fn moto_config() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(test_env().var("AO_MOTO_ENDPOINT"))
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new("testing", "testing", None, None, "test"),
        ))
        .build()
}

fn issuer_host() -> String {
    test_env().var("AO_OIDC_ISSUER").trim_start_matches("https://").to_owned()
}

/// Registers the apiserver's issuer in moto's IAM (once: a second run finds it there).
async fn oidc_provider(iam: &aws_sdk_iam::Client) -> String {
    let created = iam
        .create_open_id_connect_provider()
        .url(test_env().var("AO_OIDC_ISSUER"))
        .client_id_list(AUDIENCE)
        .thumbprint_list("0".repeat(40))
        .send()
        .await;
    let arn = format!("arn:aws:iam::123456789012:oidc-provider/{}", issuer_host());
    match created {
        Ok(out) => assert_eq!(out.open_id_connect_provider_arn(), Some(arn.as_str())),
        Err(e) => {
            let e = e.into_service_error();
            assert!(e.is_entity_already_exists_exception(), "create_open_id_connect_provider: {e:?}");
        }
    }
    iam.get_open_id_connect_provider().open_id_connect_provider_arn(&arn).send().await.unwrap();
    arn
}

async fn role(iam: &aws_sdk_iam::Client, provider: &str, name: &str, subject: &str) -> String {
    let host = issuer_host();
    let trust = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Federated": provider}, "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {format!("{host}:sub"): subject, format!("{host}:aud"): AUDIENCE}}}]});
    let role = iam.create_role().role_name(name).assume_role_policy_document(trust.to_string()).send().await.unwrap();
    let policy =
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]});
    iam.put_role_policy().role_name(name).policy_name("s3").policy_document(policy.to_string()).send().await.unwrap();
    role.role().unwrap().arn().to_owned()
}

fn moto(path: &str, method: &str) -> String {
    let url = format!("{}{path}", test_env().var("AO_MOTO_ENDPOINT"));
    run(Command::new("curl").args(["-fsS", "--max-time", "30", "-X", method, &url]), &format!("{method} {path}"))
}

/// moto's request recorder, on for the test: it appends every request (headers and body) to
/// `moto_recording` in moto's working directory, which is removed when the test ends.
struct Recording;

impl Recording {
    fn start() -> Self {
        moto("/moto-api/recorder/start-recording", "POST");
        Recording
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = Command::new("curl")
            .args(["-fsS", "--max-time", "10", "-X", "POST"])
            .arg(format!("{}/moto-api/recorder/stop-recording", test_env().var("AO_MOTO_ENDPOINT")))
            .output();
        let pid = Path::new(test_env().var("KUBECONFIG")).parent().unwrap().join("pids/moto.pid");
        if let Ok(pid) = std::fs::read_to_string(pid) {
            let _ = std::fs::remove_file(format!("/proc/{}/cwd/moto_recording", pid.trim()));
        }
    }
}

/// Keeps every pod of `ns` seen, so the spec of a check pod outlives its Job.
fn watch_pods(client: &Client, ns: &str) -> Arc<Mutex<BTreeMap<String, Pod>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let (api, keep) = (Api::<Pod>::namespaced(client.clone(), ns), seen.clone());
    tokio::spawn(async move {
        loop {
            if let Ok(list) = api.list(&ListParams::default()).await {
                let mut keep = keep.lock().unwrap();
                for pod in list.items {
                    keep.insert(pod.name_any(), pod);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    seen
}

/// The Secrets a pod mounts (as volumes, or projected).
fn secret_volumes(pod: &Pod) -> Vec<String> {
    let volumes = pod.spec.as_ref().unwrap().volumes.iter().flatten();
    volumes
        .flat_map(|v| {
            let projected =
                v.projected.iter().flat_map(|p| p.sources.iter().flatten()).filter_map(|s| s.secret.as_ref());
            v.secret.iter().filter_map(|s| s.secret_name.clone()).chain(projected.map(|s| s.name.clone()))
        })
        .collect()
}

/// The check pods of Stack `stack` seen so far (the last state seen of each).
fn check_pods(pods: &Mutex<BTreeMap<String, Pod>>, stack: &str) -> Vec<Pod> {
    let pods = pods.lock().unwrap();
    pods.values()
        .filter(|p| p.labels().get("artifacts.dev/check").map(String::as_str) == Some(stack))
        .cloned()
        .collect()
}

/// The ServiceAccount `name`, annotated for IRSA with the role `role`.
fn irsa_service_account(name: &str, role: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": name, "annotations": {"eks.amazonaws.com/role-arn": role}}})
}

/// ArtifactStore `name` at `path` on moto's `endpoint`, whose pods assume `role` by IRSA as the
/// ServiceAccount `account`.
fn irsa_store(name: &str, path: &str, endpoint: &str, account: &str, role: &str) -> Value {
    common::store::store_object(
        name,
        json!({
            "path": path,
            "endpoint": {"url": endpoint, "addressingStyle": "Path"},
            "auth": {"implicit": {"serviceAccountName": account, "roleArn": role}},
        }),
    )
}

/// Waits until the Stack's `type_` condition is final for its generation (not Unknown); returns
/// its status, reason and message.
async fn settled(client: &Client, ns: &str, name: &str, type_: &str) -> (String, String, String) {
    let stack: Stack = wait_for_condition(client, ns, name, type_, Wanted::Settled, Duration::from_secs(240)).await;
    status_reason_message(&stack, type_).unwrap()
}

/// The environment of a container, by name (values only; valueFrom shows as "<from ...>").
fn container_env(container: &k8s_openapi::api::core::v1::Container) -> BTreeMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_else(|| "<valueFrom>".to_owned())))
        .collect()
}

/// What the recorder and moto's state say about the pod's S3 writes under `prefix`: for each,
/// the key, the access key it was signed with, and, when moto issued that key for an
/// AssumeRoleWithWebIdentity call, the call's role and the claims of its token.
struct Write {
    key: String,
    access_key: String,
    assumed: Option<(String, Value)>,
}

impl Write {
    /// The role and token claims of the AssumeRoleWithWebIdentity call that issued the write's
    /// key; panics when no such call issued it.
    fn assumed_role(&self, bucket: &str) -> (String, Value) {
        self.assumed.clone().unwrap_or_else(|| {
            panic!(
                "s3://{bucket}/{} was signed with {}, a key no AssumeRoleWithWebIdentity issued",
                self.key, self.access_key
            )
        })
    }
}

fn writes(bucket: &str, prefix: &str) -> Vec<Write> {
    let recording = moto("/moto-api/recorder/download-recording", "GET");
    let data: Value = serde_json::from_str(&moto("/moto-api/data.json", "GET")).unwrap();
    let assumed_roles = data["sts"]["AssumedRole"].as_array().cloned().unwrap_or_default();
    let mut calls = Vec::new();
    let mut puts = Vec::new();
    for line in recording.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else { continue };
        let body = entry["body"].as_str().unwrap_or_default();
        let body = if entry["body_encoded"] == true {
            String::from_utf8_lossy(&base64_decode(body)).into_owned()
        } else {
            body.to_owned()
        };
        let url = entry["url"].as_str().unwrap_or_default();
        if entry["method"] == "POST" && body.contains("Action=AssumeRoleWithWebIdentity") {
            calls.push(form(&body));
        } else if entry["method"] == "PUT" && url.contains(&format!("/{bucket}/{prefix}/")) {
            let authorization = entry["headers"]["Authorization"].as_str().unwrap_or_default();
            let access_key = authorization.split("Credential=").nth(1).and_then(|c| c.split('/').next());
            let key = url.split(&format!("/{bucket}/")).nth(1).unwrap_or_default().split('?').next().unwrap();
            puts.push((key.to_owned(), access_key.unwrap_or_default().to_owned()));
        }
    }
    puts.into_iter()
        .map(|(key, access_key)| {
            let role = assumed_roles.iter().find(|r| r["access_key_id"] == access_key.as_str());
            let assumed = role.and_then(|role| {
                let call = calls.iter().rev().find(|c| {
                    c.get("RoleSessionName").map(String::as_str) == role["session_name"].as_str()
                        && c.get("RoleArn").map(String::as_str) == role["role_arn"].as_str()
                })?;
                Some((call["RoleArn"].clone(), verified_claims(&call["WebIdentityToken"])))
            });
            Write { key, access_key, assumed }
        })
        .collect()
}

/// The claims of a token whose signature the apiserver's key (target/testenv/pki/sa.pub) verifies.
fn verified_claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data"), format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(dir.path().join("sig"), base64_decode(parts[2])).unwrap();
    let public = pki().join("sa.pub");
    run(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(public)
            .arg("-signature")
            .arg(dir.path().join("sig"))
            .arg(dir.path().join("data")),
        "verifying the token's signature with the apiserver's key",
    );
    serde_json::from_slice(&base64_decode(parts[1])).unwrap()
}

#[tokio::test]
async fn pods_get_irsa_credentials_from_their_own_projected_token() {
    let started = Instant::now();
    let node = common::node();
    let binary = static_binary();
    let sum = run(Command::new("sha256sum").arg(&binary), "sha256sum");
    let image = format!("ao-artifact-operator:{}", &sum[..12]);
    run(
        Command::new(repo().join("tests/env/build-image.sh")).arg("--import").arg(&binary).arg(&image),
        "building and importing the operator's image",
    );
    println!("node up, image built and imported: {:.1}s", started.elapsed().as_secs_f64());

    let (client, ns) = common::setup("irsa-node").await;
    let dir = repo().join("target/irsa-node").join(&ns);
    std::fs::create_dir_all(&dir).unwrap();
    let _recording = Recording::start();

    let iam: aws_sdk_iam::Client = aws_sdk_iam::Client::new(&moto_config());
    let s3: aws_sdk_s3::Client =
        aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&moto_config()).force_path_style(true).build());
    let provider = oidc_provider(&iam).await;
    let subject = |sa: &str| format!("system:serviceaccount:{ns}:{sa}");
    let good = role(&iam, &provider, &format!("irsa-good-{ns}"), &subject("runner")).await;
    let wrong = role(&iam, &provider, &format!("irsa-wrong-{ns}"), &subject("someone-else")).await;
    let preset = role(&iam, &provider, &format!("irsa-preset-{ns}"), &subject("preset")).await;
    let bucket = common::limited_bucket("irsa-node");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();

    for (sa, arn) in [("runner", &good), ("wrong", &wrong), ("preset", &preset)] {
        common::apply(&client, &ns, irsa_service_account(sa, arn)).await;
    }
    let _hooks = webhooks(&client, &ns, &dir, &node["AO_POD_MOTO_ENDPOINT"]).await;
    let pods = watch_pods(&client, &ns);

    for (name, sa, arn) in [("good", "runner", &good), ("wrong", "wrong", &wrong), ("preset", "preset", &preset)] {
        let store = irsa_store(name, &format!("s3://{bucket}/{name}"), &node["AO_POD_MOTO_ENDPOINT"], sa, arn);
        common::apply(&client, &ns, store).await;
        let spec = json!({
            "artifactStoreRef": {"name": name},
            "orchestrator": {"type": "Kubernetes", "serviceAccountName": sa},
            "verification": {"inPod": true},
        });
        common::apply(&client, &ns, stack_object(name, spec)).await;
    }
    let _operator = Operator::start_with(&ns, "10m", &["--check-image", &image]);

    // (good) The check pod: no key in its spec, the webhook's token, and a write under the prefix
    // with keys moto issued for its own token.
    let verified = settled(&client, &ns, "good", "WorkloadAccessVerified").await;
    let seen = pods.lock().unwrap().clone();
    let check_pod = |stack: &str| {
        seen.values()
            .find(|p| p.labels().get("artifacts.dev/check").map(String::as_str) == Some(stack))
            .cloned()
            .unwrap_or_else(|| panic!("no check pod of {stack} seen: {:?}", seen.keys()))
    };
    let pod = check_pod("good");
    assert_eq!(
        verified.0,
        "True",
        "{verified:?}\n{}",
        std::fs::read_to_string(dir.join("pod-identity-webhook.log")).unwrap_or_default()
    );
    let spec = pod.spec.as_ref().unwrap();
    let container = &spec.containers[0];
    let env = container_env(container);
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        assert!(!env.contains_key(key), "{key} in the pod's env: {env:?}");
    }
    assert_eq!(env.get("AWS_ROLE_ARN"), Some(&good), "the webhook set the role: {env:?}");
    assert_eq!(env.get("AWS_WEB_IDENTITY_TOKEN_FILE").map(String::as_str), Some(TOKEN_FILE));
    let sources = container.env_from.clone().unwrap_or_default();
    assert!(sources.iter().all(|s| s.secret_ref.is_none()), "no Secret in envFrom: {sources:?}");
    assert_eq!(secret_volumes(&pod), Vec::<String>::new(), "no Secret mounted in the check pod");
    let projected = spec
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.projected.as_ref()?.sources.iter().flatten().find_map(|s| s.service_account_token.clone()));
    assert_eq!(projected.as_ref().and_then(|t| t.audience.as_deref()), Some(AUDIENCE), "{projected:?}");
    // Nothing the Stack renders gets in the chain's way.
    for source in &sources {
        let name = &source.config_map_ref.as_ref().unwrap().name;
        let map = Api::<ConfigMap>::namespaced(client.clone(), &ns).get(name).await.unwrap();
        let keys: Vec<&String> = map.data.as_ref().unwrap().keys().collect();
        for key in artifact_operator::render::env::WEB_IDENTITY_CHAIN_BREAKERS {
            assert!(!keys.iter().any(|k| k == key), "the Stack's ConfigMap {name} renders {key}: {keys:?}");
        }
    }
    let pod_name = pod.name_any();
    let written = writes(&bucket, "good");
    assert!(!written.is_empty(), "no write of the check pod recorded under s3://{bucket}/good/");
    for write in &written {
        let (arn, claims) = write.assumed_role(&bucket);
        assert_eq!(arn, good);
        assert_eq!(claims["sub"], subject("runner"), "{claims}");
        assert_eq!(claims["aud"], json!([AUDIENCE]), "{claims}");
        assert_eq!(claims["iss"], test_env().var("AO_OIDC_ISSUER"), "{claims}");
        assert_eq!(
            claims["kubernetes.io"]["pod"]["name"],
            pod_name.as_str(),
            "the token of the check pod itself: {claims}"
        );
    }
    let keys: Vec<String> = written.iter().map(|w| format!("s3://{bucket}/{}", w.key)).collect();
    println!(
        "irsa case (good) pod {ns}/{pod_name} (ServiceAccount runner, role {good}): wrote {}; signed with {} from AssumeRoleWithWebIdentity with its own projected token (sub {}, pod {pod_name})",
        keys.join(", "),
        written[0].access_key,
        subject("runner"),
    );

    // (wrong) A role whose trust policy does not admit the ServiceAccount: the Stack says so and
    // publishes nothing, so no pod is started with a role it cannot assume.
    let (status, reason, message) = settled(&client, &ns, "wrong", "Ready").await;
    let wrong_subject = subject("wrong");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ArtifactStoreNotReady"), "{message}");
    assert!(
        message.contains("TrustPolicyMismatch") && message.contains(&wrong_subject) && message.contains(&wrong),
        "{message}"
    );
    assert!(common::stacks::config_map(&client, &ns, "wrong-stack").await.is_none(), "nothing published");
    let wrong_pods = check_pods(&pods, "wrong");
    assert!(wrong_pods.is_empty(), "no check pod for a Stack whose store is not ready: {wrong_pods:?}");
    println!(
        "irsa case (wrong trust) Stack {ns}/wrong (ServiceAccount wrong, role {wrong}): no pod started, wrote no key; Ready {reason}: {message}"
    );

    // (preset) Access keys in the pod's environment besides the token (deployKF #79): the check
    // pod refuses to go on, and the Stack's condition names the same cause.
    let (status, reason, message) = settled(&client, &ns, "preset", "WorkloadAccessVerified").await;
    let preset_pod = check_pods(&pods, "preset").pop().expect("a check pod of preset");
    let preset_env = container_env(&preset_pod.spec.as_ref().unwrap().containers[0]);
    assert_eq!(preset_env.get("AWS_ACCESS_KEY_ID").map(String::as_str), Some(PRESET_KEY), "{preset_env:?}");
    assert_eq!(preset_env.get("AWS_ROLE_ARN"), Some(&preset), "{preset_env:?}");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "WebIdentityShadowed"), "{message}");
    assert!(message.contains("AWS_ACCESS_KEY_ID") && message.contains(&preset), "{message}");
    assert!(!message.contains(PRESET_KEY), "the key's value is not said: {message}");
    let outcome = check_pods(&pods, "preset")
        .into_iter()
        .find_map(|p| p.status?.container_statuses?.into_iter().find_map(|c| c.state?.terminated?.message));
    if let Some(outcome) = &outcome {
        assert!(outcome.contains("\"reason\":\"WebIdentityShadowed\""), "the pod's outcome: {outcome}");
    }
    let preset_writes = writes(&bucket, "preset");
    assert!(preset_writes.is_empty(), "the check wrote nothing with the preset keys: {:?}", preset_writes.len());
    println!(
        "irsa case (preset keys) pod {ns}/{} (ServiceAccount preset, role {preset}, AWS_ACCESS_KEY_ID preset): wrote no key; pod outcome {}; Stack WorkloadAccessVerified {reason}: {message}",
        preset_pod.name_any(),
        outcome.as_deref().unwrap_or("(its termination message was gone with the Job)"),
    );

    // (argo) An Argo workflow whose steps' executor saves and loads through the role.
    let argo_started = Instant::now();
    let module = argo::argo_module();
    let controller = argo::cached_binary("workflow-controller");
    let executor = argo::cached_binary("argoexec");
    let controller_image = argo::image(
        "--workflow-controller",
        Some(&controller),
        argo::content_tag("ao-workflow-controller", &controller),
    );
    let executor_image = argo::image("--argoexec", Some(&executor), argo::content_tag("ao-argoexec", &executor));
    let step_image = argo::image("--busybox", None, argo::content_tag("ao-busybox", Path::new("/bin/busybox")));
    argo::install_argo_crds(&client, &module).await;
    let _controller = argo::Controller { namespace: ns.clone() };
    argo::install_controller(&client, &ns, &module, &node, &controller_image, &executor_image).await;
    argo::workflow_account(&client, &ns).await;
    let account = argo::WORKFLOW_ACCOUNT;
    let argo_role = role(&iam, &provider, &format!("irsa-argo-{ns}"), &subject(account)).await;
    common::apply(&client, &ns, irsa_service_account(account, &argo_role)).await;
    let store = irsa_store("argo", &format!("s3://{bucket}/argo"), &node["AO_POD_MOTO_ENDPOINT"], account, &argo_role);
    common::apply(&client, &ns, store).await;
    let spec = json!({
        "artifactStoreRef": {"name": "argo"},
        "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": account},
        "outputs": {"formats": ["Argo"]},
    });
    common::apply(&client, &ns, stack_object("argo", spec)).await;
    argo::controller_leads(&client, &ns).await;
    argo::stack_ready(&client, &ns, "argo").await;
    let repositories = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("artifact-repositories").await.unwrap();
    let rendered: Value = serde_yaml_ng::from_str(&repositories.data.unwrap()["argo"]).unwrap();
    assert_eq!(rendered["s3"]["useSDKCreds"], true, "{rendered}");
    for key in ["accessKeySecret", "secretKeySecret", "sessionTokenSecret"] {
        assert!(rendered["s3"].get(key).is_none(), "{key} in {rendered}");
    }
    let name = "irsa-argo";
    let payload = format!("irsa-node argo {:016x}", fastrand::u64(..));
    let object = argo::workflow(name, Some("argo"), &step_image, &payload);
    argo::workflows(&client, &ns)
        .create(&PostParams::default(), &serde_json::from_value(object).unwrap())
        .await
        .unwrap();
    let phase = common::eventually(Duration::from_secs(300), "the workflow to finish", || async {
        let workflow = argo::workflows(&client, &ns).get(name).await.unwrap();
        let phase = workflow.data["status"]["phase"].as_str().unwrap_or_default().to_owned();
        ["Succeeded", "Failed", "Error"].contains(&phase.as_str()).then_some((phase, workflow))
    })
    .await;
    let (phase, workflow) = phase;
    assert_eq!(phase, "Succeeded", "{}", argo::workflow_diagnosis(&client, &ns, name).await);
    let nodes: Vec<Value> = workflow.data["status"]["nodes"].as_object().unwrap().values().cloned().collect();
    let node_of = |template: &str| nodes.iter().find(|n| n["templateName"] == template).cloned().unwrap();
    let read_back = node_of("read")["outputs"]["parameters"][0]["value"].as_str().unwrap_or_default().to_owned();
    assert_eq!(read_back, payload, "the read step read what the write step saved");
    let workflow_pods: Vec<Pod> = pods
        .lock()
        .unwrap()
        .values()
        .filter(|p| p.labels().get("workflows.argoproj.io/workflow").map(String::as_str) == Some(name))
        .cloned()
        .collect();
    assert_eq!(workflow_pods.len(), 2, "two step pods seen");
    for pod in &workflow_pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(secret_volumes(pod), Vec::<String>::new(), "no Secret mounted in {}", pod.name_any());
        for container in spec.init_containers.iter().flatten().chain(&spec.containers) {
            let env = container_env(container);
            for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
                assert!(!env.contains_key(key), "{key} in {} of {}: {env:?}", container.name, pod.name_any());
            }
            assert!(
                container.env_from.iter().flatten().all(|s| s.secret_ref.is_none()),
                "no Secret in envFrom of {}",
                container.name
            );
            assert_eq!(env.get("AWS_ROLE_ARN"), Some(&argo_role), "{} of {}", container.name, pod.name_any());
        }
    }
    let written = writes(&bucket, "argo");
    assert!(!written.is_empty(), "no write of the workflow recorded under s3://{bucket}/argo/");
    let write_pod = node_of("write")["id"].as_str().unwrap().to_owned();
    let mut signers = Vec::new();
    for write in &written {
        let (arn, claims) = write.assumed_role(&bucket);
        assert_eq!(arn, argo_role);
        assert_eq!(claims["sub"], subject(account), "{claims}");
        let pod_name = claims["kubernetes.io"]["pod"]["name"].as_str().unwrap().to_owned();
        assert!(workflow_pods.iter().any(|p| p.name_any() == pod_name), "{pod_name} is a pod of the workflow");
        signers.push(pod_name);
    }
    let keys: Vec<String> = written.iter().map(|w| format!("s3://{bucket}/{}", w.key)).collect();
    println!(
        "irsa case (argo) workflow {ns}/{name} (ServiceAccount {account}, role {argo_role}, write node {write_pod}): wrote {}; signed with keys from AssumeRoleWithWebIdentity with the projected token of pod {}; the read step read the same {} bytes ({:.1}s)",
        keys.join(", "),
        signers.join(", "),
        payload.len(),
        argo_started.elapsed().as_secs_f64(),
    );
    println!("whole test {:.1}s", started.elapsed().as_secs_f64());
}
