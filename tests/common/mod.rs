//! Shared scaffolding for the integration tests: the real local environment started by
//! `tests/env/up.sh` (kube-apiserver, etcd, kube-controller-manager, MinIO, versitygw, moto).
#![allow(dead_code)]

pub mod argo;
pub mod chart;
pub mod conditions;
pub mod scoped;
pub mod stacks;
pub mod store;
pub mod zenml_node;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use kube::{Client, Config};
use tokio::sync::OnceCell;

/// The variables of the running environment's env file.
pub struct TestEnv {
    pub vars: HashMap<String, String>,
}

impl TestEnv {
    pub fn var(&self, name: &str) -> &str {
        self.vars.get(name).unwrap_or_else(|| panic!("{name} missing from the test environment's env file"))
    }
}

fn env_file() -> PathBuf {
    match std::env::var_os("ARTIFACT_OPERATOR_ENV") {
        Some(dir) => PathBuf::from(dir).join("env"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/testenv/env"),
    }
}

static ENV: std::sync::OnceLock<TestEnv> = std::sync::OnceLock::new();

/// The running environment. Start it with `tests/env/up.sh` (the test command does).
pub fn test_env() -> &'static TestEnv {
    ENV.get_or_init(|| {
        let path = env_file();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("cannot read {} ({e}); start the environment with tests/env/up.sh", path.display())
        });
        let mut vars: HashMap<String, String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches(|c| c == '\'' || c == '"').to_owned()))
            .collect();
        if s3_server() == S3Server::Versitygw {
            // The suites' S3 (plain, HTTPS, and both pairs of keys) is versitygw's root account.
            for (suite, versitygw) in [
                ("AO_S3_ENDPOINT", "AO_VGW_ENDPOINT"),
                ("AO_S3_TLS_ENDPOINT", "AO_VGW_TLS_ENDPOINT"),
                ("AO_S3_ROOT_ACCESS_KEY", "AO_VGW_ACCESS_KEY"),
                ("AO_S3_ROOT_SECRET_KEY", "AO_VGW_SECRET_KEY"),
                ("AO_S3_USER_ACCESS_KEY", "AO_VGW_ACCESS_KEY"),
                ("AO_S3_USER_SECRET_KEY", "AO_VGW_SECRET_KEY"),
            ] {
                let value =
                    vars.get(versitygw).unwrap_or_else(|| panic!("{versitygw} missing from {}", path.display()));
                vars.insert(suite.to_owned(), value.clone());
            }
        }
        TestEnv { vars }
    })
}

/// The S3 implementation behind the suites' `AO_S3_*` variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Server {
    MinIO,
    /// The Versity S3 Gateway on a plain directory; chosen with `AO_S3_SERVER=versitygw`.
    Versitygw,
}

/// The server the store and stack suites run against this time (tests/run-all.sh runs them once
/// per server): MinIO unless `AO_S3_SERVER=versitygw`.
pub fn s3_server() -> S3Server {
    match std::env::var("AO_S3_SERVER").as_deref() {
        Ok("versitygw") => S3Server::Versitygw,
        Ok("minio") | Err(_) => S3Server::MinIO,
        Ok(other) => panic!("AO_S3_SERVER={other}: the suites run against minio or versitygw"),
    }
}

/// An admin client for the local apiserver.
pub async fn client() -> Client {
    let kubeconfig = Kubeconfig::read_from(test_env().var("KUBECONFIG")).expect("kubeconfig is readable");
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig is valid");
    Client::try_from(config).expect("client builds")
}

/// A copy of the test kubeconfig (same credentials) whose clusters are at `server`, e.g.
/// `https://127.0.0.1:1234`, written under the target's test directory as `<name>.kubeconfig`.
pub fn kubeconfig_with_server(name: &str, server: &str) -> PathBuf {
    let mut kubeconfig = Kubeconfig::read_from(test_env().var("KUBECONFIG")).expect("kubeconfig is readable");
    for cluster in &mut kubeconfig.clusters {
        cluster.cluster.as_mut().expect("the kubeconfig names its cluster").server = Some(server.to_owned());
    }
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_yaml_ng::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

/// The host and port of the test apiserver, e.g. `127.0.0.1:6443`.
pub fn apiserver_address() -> std::net::SocketAddr {
    let kubeconfig = Kubeconfig::read_from(test_env().var("KUBECONFIG")).expect("kubeconfig is readable");
    let server = kubeconfig.clusters[0].cluster.as_ref().unwrap().server.clone().unwrap();
    let uri: http::Uri = server.parse().expect("the server is a URL");
    format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap_or(443))
        .parse()
        .expect("the server is at an IP address")
}

static CRDS: OnceCell<()> = OnceCell::const_new();

/// Applies the operator's CRDs (as generated from the Rust types) and waits until they are
/// Established. Idempotent across the tests of one binary.
pub async fn install_crds(client: &Client) {
    CRDS.get_or_init(|| async {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in artifact_operator::api::crds() {
            let name = crd.metadata.name.clone().unwrap();
            api.patch(&name, &PatchParams::apply("artifact-operator-tests").force(), &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("CRD {name} is rejected: {e}"));
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(api.clone(), &name, kube::runtime::wait::conditions::is_crd_established()),
            )
            .await
            .expect("CRD becomes Established in time")
            .expect("watching the CRD works");
        }
        // Discovery of a new CRD can lag a moment behind Established.
        tokio::time::sleep(Duration::from_millis(500)).await;
    })
    .await;
}

/// With `CAPTURE_HEALTH_FIXTURES=DIR` set, writes `object` (an ArtifactStore or a Stack as the
/// apiserver returned it, from namespace `ns`) to DIR as a fixture for the Argo CD health scripts,
/// named after its kind and Ready reason, with what the script must show for it: Healthy for
/// Ready, Progressing for a transient reason, Degraded otherwise (tests/chart/test-argocd-health.sh).
pub fn capture_health_fixture(object: &impl serde::Serialize, ns: &str) {
    use artifact_operator::reason::Reason;
    let Some(dir) = std::env::var_os("CAPTURE_HEALTH_FIXTURES") else { return };
    let mut object = serde_json::to_value(object).unwrap();
    let metadata = object["metadata"].as_object_mut().unwrap();
    for volatile in ["uid", "resourceVersion", "managedFields", "creationTimestamp"] {
        metadata.remove(volatile);
    }
    let kind = object["kind"].as_str().unwrap().to_lowercase();
    let conditions = object["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let Some(ready) = conditions.iter().find(|c| c["type"] == "Ready") else { return };
    let reason = ready["reason"].as_str().unwrap();
    let expected = match (ready["status"].as_str(), Reason::parse(reason)) {
        (Some("True"), _) => "Healthy",
        (_, Some(reason)) if reason.is_transient() => "Progressing",
        _ => "Degraded",
    };
    let fixture = serde_json::json!({
        "script": kind,
        "expect": {"status": expected, "message": ready["message"]},
        "object": object,
    });
    // Namespaces are random per run: one name keeps the captured files stable.
    let text = serde_json::to_string_pretty(&fixture).unwrap().replace(ns, "team-a");
    // Tests run in parallel and may capture the same reason: the last complete file wins.
    let path = PathBuf::from(dir).join(format!("captured-{kind}-{reason}.json"));
    let partial = path.with_extension(format!("{}.partial", fastrand::u64(..)));
    std::fs::write(&partial, text + "\n").unwrap();
    std::fs::rename(&partial, &path).unwrap();
}

/// A value written under `key` straight into the environment's etcd, past the apiserver and its
/// validation: how an object the operator cannot read gets stored. Removed again when dropped, so
/// that no other test, listing every object of its kind, meets it.
pub struct EtcdEntry {
    key: String,
}

impl EtcdEntry {
    pub fn put(key: &str, value: &str) -> Self {
        etcd_call("put", serde_json::json!({"key": base64(key), "value": base64(value)}));
        Self { key: key.to_owned() }
    }
}

impl Drop for EtcdEntry {
    fn drop(&mut self) {
        etcd_call("deleterange", serde_json::json!({"key": base64(&self.key)}));
    }
}

fn base64(text: &str) -> String {
    aws_smithy_types::base64::encode(text)
}

/// One call of etcd's JSON gateway (`/v3/kv/<call>`).
fn etcd_call(call: &str, body: serde_json::Value) {
    let ports = std::fs::read_to_string(env_file().with_file_name("ports")).expect("the environment's ports file");
    let port = ports.lines().find_map(|line| line.strip_prefix("ETCD_PORT=")).expect("ETCD_PORT").trim_matches('"');
    let url = format!("http://127.0.0.1:{port}/v3/kv/{call}");
    let output = std::process::Command::new("curl")
        .args(["-fsS", "-X", "POST", &url, "-d", &body.to_string()])
        .output()
        .expect("curl runs");
    assert!(output.status.success(), "etcd {call} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// The repository's root, where Cargo.toml is.
pub fn repo() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cases of the YAML fixture tests/cases/`file`: a list, one `T` a case, in the format `T`
/// documents. Panics naming the file, and where in it, when it does not read.
pub fn cases<T: serde::de::DeserializeOwned>(file: &str) -> Vec<T> {
    let path = repo().join("tests/cases").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a command and returns its stdout, failing the test with its output if it fails.
pub fn run(command: &mut std::process::Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{what} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The operator's static (musl) binary that the node's image carries: `AO_STATIC_BINARY`, or
/// what tests/env/build-static.sh builds.
pub fn static_binary() -> PathBuf {
    let path = std::env::var_os("AO_STATIC_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/musl/x86_64-unknown-linux-musl/release/artifact-operator"));
    assert!(path.is_file(), "{} is missing: build it with tests/env/build-static.sh", path.display());
    path
}

/// Runs `clean_up` with an admin client on a runtime of its own, in a thread of its own, and waits
/// for it: how a `Drop` reaches the apiserver while the test's runtime is blocked in that drop.
pub fn clean_up_from_drop<F, Fut>(clean_up: F)
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async { clean_up(client().await).await })
    })
    .join();
}

/// A fresh namespace named after the test.
pub async fn namespace(client: &Client, test: &str) -> String {
    let name = format!("{}-{}", test.replace('_', "-"), fastrand::u32(..) % 1_000_000);
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &Namespace { metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() }, ..Default::default() },
    )
    .await
    .expect("namespace is created");
    name
}

/// Polls `check` until it returns Some, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A running operator process watching one namespace, its output captured to a file.
pub struct Operator {
    child: std::process::Child,
    pub log: PathBuf,
    pub http_port: u16,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that nothing listens on (until something binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Operator {
    /// Starts `artifact-operator run` on `namespace`, with the operator's ambient AWS identity set
    /// to MinIO's root user (moto accepts any keys for IAM and STS).
    pub fn start(namespace: &str, resync: &str) -> Self {
        Self::start_with(namespace, resync, &[])
    }

    /// Like [`Operator::start`], with extra flags.
    pub fn start_with(namespace: &str, resync: &str, extra: &[&str]) -> Self {
        Self::start_as(std::path::Path::new(test_env().var("KUBECONFIG")), namespace, resync, extra)
    }

    /// Like [`Operator::start_with`], authenticating with the given kubeconfig.
    pub fn start_as(kubeconfig: &std::path::Path, namespace: &str, resync: &str, extra: &[&str]) -> Self {
        let binary = std::process::Command::new(env!("CARGO_BIN_EXE_artifact-operator"));
        Self::start_command(binary, kubeconfig, namespace, resync, extra)
    }

    /// Starts `artifact-operator run` through `command` (the binary, or a wrapper that runs it)
    /// with the test environment's AWS identity and the log captured to a file.
    pub fn start_command(
        command: std::process::Command,
        kubeconfig: &std::path::Path,
        namespace: &str,
        resync: &str,
        extra: &[&str],
    ) -> Self {
        Self::start_command_with_env(command, kubeconfig, namespace, resync, extra, &[])
    }

    /// Like [`Operator::start_with`], with extra environment variables (e.g. `FAILPOINTS`).
    pub fn start_with_env(namespace: &str, resync: &str, extra: &[&str], vars: &[(&str, &str)]) -> Self {
        let binary = std::process::Command::new(env!("CARGO_BIN_EXE_artifact-operator"));
        let kubeconfig = std::path::Path::new(test_env().var("KUBECONFIG"));
        Self::start_command_with_env(binary, kubeconfig, namespace, resync, extra, vars)
    }

    /// [`Operator::start_command`] with extra environment variables.
    pub fn start_command_with_env(
        mut command: std::process::Command,
        kubeconfig: &std::path::Path,
        namespace: &str,
        resync: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Self {
        let env = test_env();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "operator-{}-{}.log",
            namespace.replace(',', "+"),
            fastrand::u32(..)
        ));
        let file = std::fs::File::create(&log).unwrap();
        // A free port unless the test gives its own --http-addr.
        let given_port = extra.iter().position(|a| *a == "--http-addr").map(|i| {
            let addr: std::net::SocketAddr = extra[i + 1].parse().expect("--http-addr is an address");
            addr.port()
        });
        let http_port = given_port.unwrap_or_else(free_port);
        let http_addr = match given_port {
            Some(_) => vec![],
            None => vec!["--http-addr".to_owned(), format!("127.0.0.1:{http_port}")],
        };
        // Tests log everything (to prove no secret reaches any level) unless told otherwise.
        let log_level = if extra.contains(&"--log-level") { &[][..] } else { &["--log-level", "trace"][..] };
        let child = command
            .args(["run", "--namespaces", namespace, "--resync-interval", resync, "--log-format", "text"])
            .args(http_addr)
            .args(log_level)
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("AWS_ACCESS_KEY_ID", env.var("AO_S3_ROOT_ACCESS_KEY"))
            .env("AWS_SECRET_ACCESS_KEY", env.var("AO_S3_ROOT_SECRET_KEY"))
            .env("AWS_REGION", env.var("AO_S3_REGION"))
            .env("AWS_ENDPOINT_URL_IAM", env.var("AO_MOTO_ENDPOINT"))
            .env("AWS_ENDPOINT_URL_STS", env.var("AO_MOTO_ENDPOINT"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(vars.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("the operator starts");
        Self { child, log, http_port }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as Kubernetes does on a rolling update, and waits up to 30 s for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -TERM works");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the operator did not exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.exit_status().is_some()
    }

    /// How the process exited, or None while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// A replica with leader election on the Lease `artifact-operator` in `ns`.
    pub fn replica(ns: &str) -> Self {
        Self::start_with(
            ns,
            "10m",
            &["--leader-election", "--lease-namespace", ns, "--lease-name", "artifact-operator"],
        )
    }

    /// The first replica (see [`Operator::replica`]), once it leads.
    pub async fn leading_replica(ns: &str) -> Self {
        let first = Self::replica(ns);
        eventually(Duration::from_secs(30), "the first replica to lead", || async {
            first.log_text().contains("acquired the lease").then_some(())
        })
        .await;
        first
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The operator's /metrics text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await
    }

    /// The raw HTTP/1.0 response (status line, headers, body) of GET `path` on the operator, or
    /// nothing when its port is not open.
    pub async fn get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Empty while the process is still starting and its port is closed.
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await else {
            return String::new();
        };
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        body
    }

    /// The status code and body of GET `path` on the operator.
    pub async fn status(&self, path: &str) -> (u16, String) {
        let response = self.get(path).await;
        let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
        (code, body)
    }

    /// The sum of every series of the metric `name` in /metrics, whatever their labels; 0 when
    /// there is none.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            // Not sum(): the sum of no floats is -0.
            .fold(0.0, |total, value| total + value)
    }

    /// The value of a counter line (`name{labels} value`) in /metrics, 0 when absent.
    pub async fn counter(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// An S3 client for MinIO with its root user.
pub fn s3_root() -> aws_sdk_s3::Client {
    let env = test_env();
    s3_client(env.var("AO_S3_ROOT_ACCESS_KEY"), env.var("AO_S3_ROOT_SECRET_KEY"))
}

/// An S3 client for the HTTPS S3 server (`AO_S3_TLS_ENDPOINT`), trusting its private CA, as its
/// root user.
pub fn s3_root_tls() -> aws_sdk_s3::Client {
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

pub fn s3_client(access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let env = test_env();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(env.var("AO_S3_REGION").to_owned()))
        .endpoint_url(env.var("AO_S3_ENDPOINT"))
        .force_path_style(true)
        .credentials_provider(aws_credential_types::Credentials::new(access_key, secret_key, None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A unique bucket name the limited MinIO user may use.
pub fn limited_bucket(test: &str) -> String {
    format!("limited-{}-{}", test.replace('_', "-"), fastrand::u32(..) % 1_000_000)
}

/// A client, the CRDs, and a fresh namespace for `test`.
pub async fn setup(test: &str) -> (Client, String) {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, test).await;
    (client, ns)
}

/// [`setup`], plus a fresh bucket the limited MinIO user may use and that user's keys in the
/// Secret `minio-keys`.
pub async fn setup_with_bucket(test: &str) -> (Client, String, String) {
    let (client, ns) = setup(test).await;
    let bucket = limited_bucket(test);
    s3_root().create_bucket().bucket(&bucket).send().await.unwrap();
    user_keys_secret(&client, &ns, "minio-keys").await;
    (client, ns, bucket)
}

/// [`setup`], plus the limited MinIO user's keys in the Secret `minio-keys` and a fresh name,
/// after `bucket`, of a bucket that does not exist (yet): for a store that creates it, or that
/// finds it missing.
pub async fn setup_with_absent_bucket(test: &str, bucket: &str) -> (Client, String, String) {
    let (client, ns) = setup(test).await;
    user_keys_secret(&client, &ns, "minio-keys").await;
    (client, ns, limited_bucket(bucket))
}

/// Server-side applies a Secret with these string values.
pub async fn secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
    });
    apply(client, ns, object).await;
}

/// The limited MinIO user's keys under ZenML's key names.
pub async fn user_keys_secret(client: &Client, ns: &str, name: &str) {
    let env = test_env();
    let keys = [
        ("aws_access_key_id", env.var("AO_S3_USER_ACCESS_KEY")),
        ("aws_secret_access_key", env.var("AO_S3_USER_SECRET_KEY")),
    ];
    secret(client, ns, name, &keys).await;
}

/// The API of a namespaced object given as JSON (apiVersion, kind).
fn api_for(client: &Client, ns: &str, object: &serde_json::Value) -> Api<kube::core::DynamicObject> {
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((group, version)) => (group.to_owned(), version.to_owned()),
        None => (String::new(), object["apiVersion"].as_str().unwrap().to_owned()),
    };
    let gvk = kube::core::GroupVersionKind::gvk(&group, &version, object["kind"].as_str().unwrap());
    Api::namespaced_with(client.clone(), ns, &kube::core::ApiResource::from_gvk(&gvk))
}

/// Creates a namespaced object given as JSON and returns the apiserver's answer. Unlike an apply
/// patch, which the apiserver decodes as YAML, JSON carries every control character to admission.
pub async fn try_create(client: &Client, ns: &str, object: serde_json::Value) -> Result<(), kube::Error> {
    let api = api_for(client, ns, &object);
    let object: kube::core::DynamicObject = serde_json::from_value(object).expect("the object has metadata");
    api.create(&PostParams::default(), &object).await.map(|_| ())
}

/// Server-side applies any namespaced object given as JSON (apiVersion, kind, metadata.name).
pub async fn apply(client: &Client, ns: &str, object: serde_json::Value) {
    let api = api_for(client, ns, &object);
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    api.patch(&name, &PatchParams::apply("tests").force(), &Patch::Apply(&object))
        .await
        .unwrap_or_else(|e| panic!("applying {} {name}: {e}", object["kind"]));
}

/// Runs `tests/env/minio-limited-user.py` against the plain MinIO as its root user, with `vars`
/// (the user's keys, a policy, a status: see the script) on top.
pub fn minio_admin(vars: &[(&str, &str)]) {
    let env = test_env();
    let output = std::process::Command::new(format!("{}/bin/python", env.var("AO_VENV")))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/env/minio-limited-user.py"))
        .env("AO_S3_ADMIN_ENDPOINT", env.var("AO_S3_ENDPOINT"))
        .env("AO_S3_ROOT_ACCESS_KEY", env.var("AO_S3_ROOT_ACCESS_KEY"))
        .env("AO_S3_ROOT_SECRET_KEY", env.var("AO_S3_ROOT_SECRET_KEY"))
        .envs(vars.iter().copied())
        .output()
        .expect("the environment's Python runs");
    assert!(output.status.success(), "minio-limited-user.py failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Runs the ZenML client `script` (a file: ZenML takes its source root from the main module's)
/// with `args` in the environment's venv, logged into the environment's ZenML server as the other
/// team's service account, with nothing from this process's environment but that URL and key, in
/// a fresh config directory; returns what it printed, after asserting it succeeded.
pub fn zenml_client(script: &std::path::Path, args: &[&str]) -> String {
    let config = tempfile::tempdir().unwrap();
    let env = test_env();
    let output = std::process::Command::new(format!("{}/bin/python", env.var("AO_VENV")))
        .arg(script)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", config.path())
        .env("ZENML_CONFIG_PATH", config.path().join("zenml"))
        .env("ZENML_STORE_URL", env.var("AO_ZENML_URL"))
        .env("ZENML_STORE_API_KEY", env.var("AO_ZENML_OTHER_API_KEY"))
        .env("ZENML_ANALYTICS_OPT_IN", "false")
        .env("ZENML_LOGGING_COLORS_DISABLED", "true")
        .current_dir(config.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the ZenML client {} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Starts the node (tests/env/node-up.sh; a no-op when it runs) and returns its env file's
/// variables.
pub fn node() -> std::collections::BTreeMap<String, String> {
    let up = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/env/node-up.sh"))
        .output()
        .expect("node-up.sh runs");
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(up.status.success(), "node-up.sh failed:\n{stdout}\n{}", String::from_utf8_lossy(&up.stderr));
    let file = stdout.lines().last().expect("node-up.sh prints its env file");
    std::fs::read_to_string(file)
        .expect("the node's env file")
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// Argo's own code (`argo-consumer use`, Argo 3.7 and 4.0) resolves the namespace default of `ns`
/// to the key `key` of `artifact-repositories` and saves and loads an artifact with it; returns what
/// it printed.
pub fn argo_uses_the_namespace_default(ns: &str, key: &str) -> String {
    let output = std::process::Command::new(PathBuf::from(test_env().var("AO_CACHE_DIR")).join("bin/argo-consumer"))
        .args(["use", ns, key])
        // Nothing from this process's environment (system CA settings among it): only the kubeconfig.
        .env_clear()
        .env("KUBECONFIG", test_env().var("KUBECONFIG"))
        .output()
        .expect("argo-consumer runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    assert!(
        output.status.success(),
        "argo-consumer use failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("resolved the namespace default").count(), 2, "{stdout}");
    stdout
}

/// A fresh token (TokenRequest, valid an hour) of ServiceAccount `namespace/account` for
/// `audiences` (none: the apiserver's own).
pub async fn service_account_token(client: &Client, namespace: &str, account: &str, audiences: &[&str]) -> String {
    let request = k8s_openapi::api::authentication::v1::TokenRequest {
        spec: k8s_openapi::api::authentication::v1::TokenRequestSpec {
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), namespace);
    accounts.create_token_request(account, &PostParams::default(), &request).await.unwrap().status.unwrap().token
}
