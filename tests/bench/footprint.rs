//! The footprint benchmark: binary sizes, memory idle and under load, time to Ready for many
//! stores and stacks at once, and the steady state's Kubernetes writes and S3 calls. It runs the
//! release binary against the real local environment, and the static (musl) binary in an empty
//! root as UID 65532, as the image runs it. It prints its figures; it asserts only that the work
//! it measures was done (every object Ready), never a speed.
//!
//! Run it with `tests/bench/run.sh`, which starts the environment and builds the static binary.

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use artifact_operator::api::{ArtifactStore, Stack};
use artifact_operator::conditions::{HasConditions, READY, find};
use common::{Operator, apply, eventually, test_env};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::json;

/// Stores applied at once, and one Stack for every `STACK_EVERY` of them (ZenML and Argo: one
/// namespace has one kfp-launcher, which one Stack at most can hold).
const STORES: usize = 200;
const STACK_EVERY: usize = 4;
/// The resync interval under load, and how many of them the steady state is watched for.
const RESYNC: Duration = Duration::from_secs(20);
const STEADY_RESYNCS: u32 = 3;

fn main() {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(run());
}

async fn run() {
    let static_binary = PathBuf::from(
        std::env::var("AO_STATIC_BINARY").expect("AO_STATIC_BINARY: the static binary; run tests/bench/run.sh"),
    );
    println!("artifact-operator footprint benchmark");
    sizes(Path::new(env!("CARGO_BIN_EXE_artifact-operator")), &static_binary);
    load().await;
    static_image(&static_binary).await;
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn sizes(release: &Path, static_binary: &Path) {
    let size = |path: &Path| std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).len();
    let program_headers =
        String::from_utf8(std::process::Command::new("readelf").arg("-lW").arg(static_binary).output().unwrap().stdout)
            .unwrap();
    assert!(!program_headers.contains("INTERP"), "the static binary asks for a dynamic loader");
    println!("binary, release (glibc, stripped):      {}", mib(size(release)));
    println!("binary, static (musl, stripped, image): {}", mib(size(static_binary)));
}

/// Resident memory of a process, from /proc.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ready<K: HasConditions>(object: &K) -> bool {
    find(object.conditions(), READY).is_some_and(|c| c.status == "True")
}

/// Applies `count` objects made by `object`, then waits until all are Ready; returns each one's
/// time from its own apply to the first time it was seen Ready.
async fn apply_and_wait<K>(
    client: &Client,
    ns: &str,
    count: usize,
    object: impl Fn(usize) -> serde_json::Value,
) -> Vec<Duration>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + HasConditions
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut applied = BTreeMap::new();
    for i in 0..count {
        let value = object(i);
        applied.insert(value["metadata"]["name"].as_str().unwrap().to_owned(), Instant::now());
        apply(client, ns, value).await;
    }
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut latencies = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while latencies.len() < count {
        assert!(Instant::now() < deadline, "only {} of {count} Ready after 10 minutes", latencies.len());
        for object in api.list(&ListParams::default()).await.unwrap() {
            let name = object.meta().name.clone().unwrap();
            if ready(&object) && !latencies.contains_key(&name) {
                latencies.insert(name.clone(), applied[&name].elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut latencies: Vec<Duration> = latencies.into_values().collect();
    latencies.sort();
    latencies
}

fn report(what: &str, took: Duration, latencies: &[Duration]) {
    println!(
        "{what}: all Ready in {:.1} s; apply to Ready p50 {:.2} s, p95 {:.2} s, max {:.2} s",
        took.as_secs_f64(),
        percentile(latencies, 0.5).as_secs_f64(),
        percentile(latencies, 0.95).as_secs_f64(),
        latencies.last().unwrap().as_secs_f64()
    );
}

/// Every object's resourceVersion in the namespace that the operator writes to.
async fn resource_versions(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let mut versions = BTreeMap::new();
    let params = ListParams::default();
    for o in Api::<ArtifactStore>::namespaced(client.clone(), ns).list(&params).await.unwrap() {
        versions.insert(format!("ArtifactStore/{}", o.metadata.name.unwrap()), o.metadata.resource_version.unwrap());
    }
    for o in Api::<Stack>::namespaced(client.clone(), ns).list(&params).await.unwrap() {
        versions.insert(format!("Stack/{}", o.metadata.name.unwrap()), o.metadata.resource_version.unwrap());
    }
    for o in Api::<ConfigMap>::namespaced(client.clone(), ns).list(&params).await.unwrap() {
        versions.insert(format!("ConfigMap/{}", o.metadata.name.unwrap()), o.metadata.resource_version.unwrap());
    }
    for o in Api::<Secret>::namespaced(client.clone(), ns).list(&params).await.unwrap() {
        versions.insert(format!("Secret/{}", o.metadata.name.unwrap()), o.metadata.resource_version.unwrap());
    }
    versions
}

async fn load() {
    let (client, ns, bucket) = common::setup_with_bucket("bench-load").await;
    apply(&client, &ns, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}})).await;
    let resync = format!("{}s", RESYNC.as_secs());
    let operator = Operator::start_with(&ns, &resync, &["--log-level", "info"]);
    eventually(Duration::from_secs(30), "the operator to be ready", || async {
        (operator.status("/readyz").await.0 == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("memory, idle, no objects:               {}", mib(rss(operator.pid())));

    let endpoint = test_env().var("AO_S3_ENDPOINT").to_owned();
    let started = Instant::now();
    let stores = apply_and_wait::<ArtifactStore>(&client, &ns, STORES, |i| {
        json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": format!("store-{i}")},
               "spec": {"path": format!("s3://{bucket}/team-{i}"), "endpoint": {"url": endpoint, "addressingStyle": "Path"},
                        "auth": {"secretRef": {"name": "minio-keys"}}}})
    })
    .await;
    report(&format!("{STORES} ArtifactStores"), started.elapsed(), &stores);
    let stacks_count = STORES / STACK_EVERY;
    let started = Instant::now();
    let stacks = apply_and_wait::<Stack>(&client, &ns, stacks_count, |i| {
        json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": format!("stack-{i}")},
               "spec": {"artifactStoreRef": {"name": format!("store-{}", i * STACK_EVERY)},
                        "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "runner"},
                        "outputs": {"formats": ["ZenML", "Argo"]}}})
    })
    .await;
    report(&format!("{stacks_count} Stacks"), started.elapsed(), &stacks);
    println!("memory, {STORES} stores and {stacks_count} stacks Ready:     {}", mib(rss(operator.pid())));

    // Steady state: let the first wave of re-verifications pass, then count.
    tokio::time::sleep(RESYNC + RESYNC / 5).await;
    let series = "artifact_operator_aws_calls_total{service=\"s3\",outcome=\"ok\"}";
    let versions = resource_versions(&client, &ns).await;
    let s3_before = operator.counter(series).await;
    let window = RESYNC * STEADY_RESYNCS;
    tokio::time::sleep(window).await;
    let s3_calls = operator.counter(series).await - s3_before;
    let changed = resource_versions(&client, &ns)
        .await
        .into_iter()
        .filter(|(key, version)| versions.get(key) != Some(version))
        .count();
    println!(
        "steady state over {} s ({STEADY_RESYNCS} resyncs of {} s): {changed} Kubernetes writes, {s3_calls} S3 calls = {:.2} per store per resync",
        window.as_secs(),
        RESYNC.as_secs(),
        s3_calls / STORES as f64 / f64::from(STEADY_RESYNCS)
    );
    println!("memory, steady state:                   {}", mib(rss(operator.pid())));
    let reconcile_errors = operator.metric_sum("artifact_operator_reconcile_errors_total").await;
    println!("reconcile errors during the run:        {reconcile_errors}");
}

/// The static binary as the image runs it: alone in a root with only CA certificates, a passwd
/// entry and the kubeconfig, as UID/GID 65532, with every directory read-only to that user.
async fn static_image(static_binary: &Path) {
    let root = tempfile::tempdir().unwrap();
    let install = |from: &Path, to: &str, mode: u32| {
        let target = root.path().join(to.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from, &target).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    install(static_binary, "/usr/local/bin/artifact-operator", 0o555);
    install(Path::new("/etc/ssl/certs/ca-certificates.crt"), "/etc/ssl/certs/ca-certificates.crt", 0o444);
    install(Path::new(test_env().var("KUBECONFIG")), "/kubeconfig", 0o444);
    let passwd = root.path().join("passwd.tmp");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .unwrap();
    install(&passwd, "/etc/passwd", 0o444);
    std::fs::remove_file(passwd).unwrap();
    for dir in ["usr/local/bin", "usr/local", "usr", "etc/ssl/certs", "etc/ssl", "etc", ""] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.path().join(dir), std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let entries: Vec<String> = walk(root.path());
    println!("static image root: {}", entries.join(" "));

    let (client, ns, bucket) = common::setup_with_bucket("bench-static").await;
    let mut chroot = std::process::Command::new("chroot");
    chroot.arg("--userspec=65532:65532").arg(root.path()).arg("/usr/local/bin/artifact-operator");
    let operator = Operator::start_command(chroot, Path::new("/kubeconfig"), &ns, "10m", &["--log-level", "info"]);
    let started = Instant::now();
    let latencies = apply_and_wait::<ArtifactStore>(&client, &ns, 1, |_| {
        json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": "ml"},
               "spec": {"path": format!("s3://{bucket}/pipelines"),
                        "endpoint": {"url": test_env().var("AO_S3_ENDPOINT"), "addressingStyle": "Path"},
                        "auth": {"secretRef": {"name": "minio-keys"}}}})
    })
    .await;
    let pid = child_pid(operator.pid());
    println!(
        "static binary in that root as 65532: a store Ready {:.2} s after apply ({:.1} s after start); memory {}",
        latencies[0].as_secs_f64(),
        started.elapsed().as_secs_f64(),
        mib(rss(pid))
    );
    let uid_line = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_owned();
    assert!(uid_line.split_whitespace().skip(1).all(|id| id == "65532"), "runs as 65532: {uid_line}");
}

/// The files under `root`, relative to it.
fn walk(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(format!("/{}", path.strip_prefix(root).unwrap().display()));
            }
        }
    }
    files.sort();
    files
}

/// chroot execs the operator in place, so the process it started is the operator itself.
fn child_pid(pid: u32) -> u32 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.ends_with("artifact-operator"), "chroot exec'd the operator: {}", exe.display());
    pid
}
