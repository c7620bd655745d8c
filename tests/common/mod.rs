//! Shared scaffolding for the integration tests: the real local environment started by
//! `tests/env/up.sh` (kube-apiserver, etcd, kube-controller-manager, MinIO, moto).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
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
        let vars = text
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches(|c| c == '\'' || c == '"').to_owned()))
            .collect();
        TestEnv { vars }
    })
}

/// An admin client for the local apiserver.
pub async fn client() -> Client {
    let kubeconfig = Kubeconfig::read_from(test_env().var("KUBECONFIG")).expect("kubeconfig is readable");
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig is valid");
    Client::try_from(config).expect("client builds")
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
                await_condition(api.clone(), &name, conditions::is_crd_established()),
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
