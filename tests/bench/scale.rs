//! The scale benchmark: N ArtifactStores and as many Stacks spread over M namespaces, against the
//! real local apiserver and MinIO, with the operator watching every namespace: the static (musl)
//! binary the image ships when `AO_STATIC_BINARY` names it (tests/bench/run.sh does), else the
//! release binary cargo built. In one run it prints the raw write floor of the same writes made by
//! a plain client, the time until every store is Ready and its ratio to that floor and to the full
//! floor (the stores' own applies, then the floor's writes: every write of the ramp, by a plain
//! client), the same for the Stacks (each with ZenML and Argo outputs, so that the Stacks of a
//! namespace share its `artifact-repositories`) with their reads and writes per Stack,
//! apply-to-Ready percentiles, the operator's memory (idle, peak, steady) and CPU next to the
//! apiserver's and etcd's, the apiserver's own count of reads and writes per object per resync in
//! the steady state, S3 calls per store per resync, and what a restart costs. It asserts only that
//! the work it measures was done, never a speed.
//!
//! `tests/bench/run.sh` runs it after the footprint benchmark; its arguments come here:
//! `--stores N` (200), `--namespaces M` (10), `--resync SECONDS` (60), `--profile` (a CPU profile
//! of the operator during the ramp, with perf), `--concurrency N` (the operator's, when not its
//! default).

#[path = "../common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use artifact_operator::api::{ArtifactStore, Stack};
use artifact_operator::conditions::{HasConditions, READY, find};
use artifact_operator::controller::claims;
use artifact_operator::controller::context::{self, EventType};
use artifact_operator::reason::Reason;
use common::{Operator, apply, eventually, test_env, user_keys_secret};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

/// Requests a driver (the floor's client, the applier) keeps in flight.
const IN_FLIGHT: usize = 32;
/// Resyncs the steady state is watched for.
const STEADY_RESYNCS: u32 = 3;

struct Args {
    stores: usize,
    namespaces: usize,
    resync: Duration,
    profile: bool,
    /// The operator's `--concurrency`, when not its default.
    concurrency: Option<u64>,
}

fn args() -> Args {
    let mut args =
        Args { stores: 200, namespaces: 10, resync: Duration::from_secs(60), profile: false, concurrency: None };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut number = || given.next().and_then(|v| v.parse::<u64>().ok()).expect("a number after the flag");
        match arg.as_str() {
            "--stores" => args.stores = number() as usize,
            "--namespaces" => args.namespaces = number() as usize,
            "--resync" => args.resync = Duration::from_secs(number()),
            "--profile" => args.profile = true,
            "--concurrency" => args.concurrency = Some(number()),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    assert!(args.namespaces >= 1 && args.stores >= args.namespaces, "at least one store per namespace");
    args
}

fn main() {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(run(args()));
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Resident memory and CPU seconds (user + system) of a process, from /proc.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
    (ticks(11) + ticks(12)) / 100.0
}

fn pid_of(name: &str) -> u32 {
    let output = std::process::Command::new("pgrep").args(["-o", "-x", name]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or_else(|_| panic!("{name} is running"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Samples a process's resident memory until dropped, keeping the peak.
struct PeakMemory {
    peak: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakMemory {
    fn watch(pid: u32) -> Self {
        let peak = Arc::new(Mutex::new(0));
        let sampled = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                let now = rss(pid);
                {
                    let mut peak = sampled.lock().unwrap();
                    *peak = (*peak).max(now);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { peak, task }
    }

    fn peak(&self) -> u64 {
        *self.peak.lock().unwrap()
    }
}

impl Drop for PeakMemory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The first time each object of kind `K` labelled `bench=<run>` was seen Ready, by
/// namespace/name, from a watch (a list of thousands of objects every few milliseconds would
/// load the apiserver it measures).
fn watch_ready<K>(client: &Client, run: &str) -> (Arc<Mutex<HashMap<String, Instant>>>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + HasConditions
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let api: Api<K> = Api::all(client.clone());
    let config = watcher::Config::default().labels(&format!("bench={run}"));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let mut objects = watcher(api, config).default_backoff().applied_objects().boxed();
        while let Ok(Some(object)) = objects.try_next().await {
            if find(object.conditions(), READY).is_some_and(|c| c.status == "True") {
                let key = format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any());
                record.lock().unwrap().entry(key).or_insert_with(Instant::now);
            }
        }
    });
    (seen, task)
}

/// Waits until `count` objects are in `seen`; returns each one's time from its apply.
async fn wait_ready(seen: &Mutex<HashMap<String, Instant>>, applied: &HashMap<String, Instant>) -> Vec<Duration> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let ready = seen.lock().unwrap().len();
        if ready >= applied.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {ready} of {} Ready after 30 minutes", applied.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap();
    let mut latencies: Vec<Duration> =
        applied.iter().map(|(key, at)| seen[key].saturating_duration_since(*at)).collect();
    latencies.sort();
    latencies
}

/// Applies every object `IN_FLIGHT` at a time; returns when each was applied, by namespace/name.
async fn apply_all(client: &Client, objects: Vec<(String, serde_json::Value)>) -> HashMap<String, Instant> {
    futures::stream::iter(objects)
        .map(|(ns, object)| async move {
            let key = format!("{ns}/{}", object["metadata"]["name"].as_str().unwrap());
            let at = Instant::now();
            apply(client, &ns, object).await;
            (key, at)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

/// The apiserver's own count of requests for the kinds the operator reads and writes, by verb
/// (watches left out): `apiserver_request_total` from its /metrics.
async fn apiserver_requests(client: &Client) -> BTreeMap<String, f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.expect("the apiserver's metrics");
    let resources = ["artifactstores", "stacks", "configmaps", "secrets", "serviceaccounts", "events"];
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let label = |name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            Some(&line[start..start + line[start..].find('"')?])
        };
        let (Some(resource), Some(verb)) = (label("resource"), label("verb")) else { continue };
        if !resources.contains(&resource) || verb == "WATCH" {
            continue;
        }
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *counts.entry(verb.to_owned()).or_insert(0.0) += value;
    }
    counts
}

/// One ramp's figures: when all its objects were Ready, against the floors, and what it cost.
struct Ramp<'a> {
    /// What was applied, for the report's first line.
    what: String,
    /// The object's kind, as the report names one.
    kind: &'a str,
    all_ready: Duration,
    /// The raw write floor, and the objects' own applies with nobody reconciling them: the full
    /// floor is the two one after the other.
    floor: Duration,
    applies: Duration,
    /// The floor's writes per object.
    floor_writes: usize,
    latencies: &'a [Duration],
    /// CPU seconds (operator, apiserver, etcd) before and after.
    cpu: ((f64, f64, f64), (f64, f64, f64)),
}

impl Ramp<'_> {
    /// Prints the ramp's figures for `count` objects, with the apiserver's `requests` meanwhile.
    fn report(&self, count: usize, requests: BTreeMap<String, f64>) {
        let (kind, ready) = (self.kind, self.all_ready.as_secs_f64());
        println!(
            "{}: all Ready in {ready:.1} s = {:.2}x the write floor, {:.2}x the full floor (the {} writes of the applies and the floor's, one after the other); apply to Ready p50 {:.2} s, p99 {:.2} s",
            self.what,
            ready / self.floor.as_secs_f64(),
            ready / (self.applies + self.floor).as_secs_f64(),
            count * (1 + self.floor_writes),
            percentile(self.latencies, 0.5).as_secs_f64(),
            percentile(self.latencies, 0.99).as_secs_f64(),
        );
        let ((operator, apiserver, etcd), after) = self.cpu;
        println!(
            "CPU seconds during that ramp: operator {:.1}, apiserver {:.1}, etcd {:.1}",
            after.0 - operator,
            after.1 - apiserver,
            after.2 - etcd
        );
        let (reads, writes) = reads_and_writes(&requests);
        println!(
            "apiserver requests until all were Ready: {reads} reads, {writes} writes = {:.2} reads and {:.2} writes per {kind} besides its own apply (the floor makes {} writes) {requests:?}",
            reads / count as f64,
            (writes - count as f64) / count as f64,
            self.floor_writes
        );
    }
}

fn difference(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(verb, n)| (verb.clone(), n - before.get(verb).unwrap_or(&0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

fn reads_and_writes(counts: &BTreeMap<String, f64>) -> (f64, f64) {
    let reads = ["GET", "LIST"].iter().map(|v| counts.get(*v).unwrap_or(&0.0)).sum();
    let writes = ["POST", "PUT", "PATCH", "APPLY", "DELETE"].iter().map(|v| counts.get(*v).unwrap_or(&0.0)).sum();
    (reads, writes)
}

/// The operator's own count of its apiserver requests, by verb (watches left out).
async fn operator_requests(operator: &Operator) -> BTreeMap<String, f64> {
    let mut counts = BTreeMap::new();
    for verb in ["get", "create", "update", "patch", "delete"] {
        let series = format!("artifact_operator_kube_requests_total{{verb=\"{verb}\"}}");
        counts.insert(verb.to_owned(), operator.counter(&series).await);
    }
    counts
}

async fn create_namespace(client: &Client, name: &str) {
    let namespace =
        Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await.unwrap();
}

/// The ArtifactStore the benchmark applies as store `i`, labelled `bench: <label>`.
fn store_object(label: &str, bucket: &str, endpoint: &str, i: usize) -> serde_json::Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore",
        "metadata": {"name": format!("store-{i}"), "labels": {"bench": label}},
        "spec": {"path": format!("s3://{bucket}/team-{i}"), "endpoint": {"url": endpoint, "addressingStyle": "Path"},
                 "auth": {"secretRef": {"name": "minio-keys"}}}})
}

/// What the apiserver does on this machine with no operator running.
struct Floor {
    /// A plain client making, per store, the writes the operator makes: create a ConfigMap and a
    /// Secret of the same size, write a Ready status of the same shape to the store by server-side
    /// apply, and create its Ready Event, `IN_FLIGHT` at a time, in namespaces of their own.
    writes: Duration,
    /// Applying the stores themselves, as the ramp does, with nobody reconciling them: no ramp can
    /// end before its own applies do.
    applies: Duration,
    /// The same client making, per Stack (ZenML and Argo outputs), the writes the operator makes:
    /// create its ConfigMap, add its finalizer, write its key of the namespace's shared
    /// `artifact-repositories` by server-side apply under a field manager of its own, write its
    /// Ready status and create its Ready Event.
    stack_writes: Duration,
    /// Applying the Stacks themselves, with nobody reconciling them.
    stack_applies: Duration,
    /// CPU seconds of the apiserver and etcd while the client made the Stacks' writes.
    stack_cpu: (f64, f64),
}

/// The writes per store and per Stack of [`Floor::writes`] and [`Floor::stack_writes`].
const STORE_FLOOR_WRITES: usize = 4;
const STACK_FLOOR_WRITES: usize = 5;

/// Creates the Event the operator publishes when `kind` `name` turns Ready.
async fn ready_event(client: &Client, ns: &str, kind: &str, name: &str, message: &str) {
    let regarding = ObjectReference {
        api_version: Some("artifacts.dev/v1alpha1".to_owned()),
        kind: Some(kind.to_owned()),
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        ..Default::default()
    };
    let note = format!("Ready is True: {message}");
    let event = context::event(&regarding, EventType::Normal, Reason::Ready, note, "Reconcile", jiff::Timestamp::now());
    Api::<Event>::namespaced(client.clone(), ns).create(&PostParams::default(), &event).await.unwrap();
}

/// A Stack of the ramp: ZenML's and Argo's outputs from store `i`.
fn stack_object(label: &str, i: usize) -> serde_json::Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack",
        "metadata": {"name": format!("stack-{i}"), "labels": {"bench": label}},
        "spec": {"artifactStoreRef": {"name": format!("store-{i}")},
                 "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "runner"},
                 "outputs": {"formats": ["ZenML", "Argo"]}}})
}

/// The message of a Ready store's Ready condition, and of its Ready Event.
fn store_ready_message(bucket: &str, i: usize) -> String {
    format!("s3://{bucket}/team-{i} is ready; pods use ConfigMap store-{i}-artifact-store")
}

/// The status the operator writes to a Ready store, for the floor's client to write alike.
fn ready_status(bucket: &str, endpoint: &str, i: usize) -> serde_json::Value {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let condition = |type_: &str, reason: &str, message: String| {
        json!({"type": type_, "status": "True", "reason": reason, "message": message,
               "lastTransitionTime": now, "observedGeneration": 1})
    };
    json!({
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "Ready", store_ready_message(bucket, i)),
            condition("BucketReady", "BucketExists", "bucket exists in us-east-1".to_owned()),
            condition("CredentialsValid", "Verified", format!("the Secret's keys can list s3://{bucket}/team-{i}")),
        ],
        "bucket": bucket, "prefix": format!("team-{i}"), "region": "us-east-1", "endpoint": endpoint,
        "bucketCreated": false, "configMapName": format!("store-{i}-artifact-store"),
        "credentialsSecretName": format!("store-{i}-aws-credentials"), "lastVerifiedTime": now,
        "verifiedInputs": "1/1234567",
    })
}

/// Measures the [`Floor`], then deletes what it made and waits until the namespace controller has
/// removed it all, so that the ramp does not share the apiserver with that cleanup.
async fn floor(client: &Client, run: &str, stores: usize, namespaces: usize) -> Floor {
    let names: Vec<String> = (0..namespaces).map(|n| format!("floor-{run}-{n}")).collect();
    for name in &names {
        create_namespace(client, name).await;
    }
    let endpoint = test_env().var("AO_S3_ENDPOINT");
    let objects = (0..stores)
        .map(|i| (names[i % namespaces].clone(), store_object(&format!("floor-{run}"), "floor", endpoint, i)))
        .collect();
    let started = Instant::now();
    let applied = apply_all(client, objects).await;
    let applies = started.elapsed();
    assert_eq!(applied.len(), stores, "every store applied");

    let data: BTreeMap<String, String> = (0..8).map(|k| (format!("KEY_{k}"), "x".repeat(60))).collect();
    let started = Instant::now();
    futures::stream::iter(0..stores)
        .map(|i| {
            let ns = names[i % namespaces].clone();
            let data = data.clone();
            async move {
                let meta = ObjectMeta { name: Some(format!("store-{i}-artifact-store")), ..Default::default() };
                let config_map = ConfigMap { metadata: meta, data: Some(data.clone()), ..Default::default() };
                Api::<ConfigMap>::namespaced(client.clone(), &ns)
                    .create(&PostParams::default(), &config_map)
                    .await
                    .unwrap();
                let meta = ObjectMeta { name: Some(format!("store-{i}-aws-credentials")), ..Default::default() };
                let secret = Secret { metadata: meta, string_data: Some(data), ..Default::default() };
                Api::<Secret>::namespaced(client.clone(), &ns).create(&PostParams::default(), &secret).await.unwrap();
                let status = json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore",
                    "status": ready_status("floor", endpoint, i)});
                let params = PatchParams::apply("artifact-operator").force();
                Api::<ArtifactStore>::namespaced(client.clone(), &ns)
                    .patch_status(&format!("store-{i}"), &params, &Patch::Apply(&status))
                    .await
                    .unwrap();
                let message = store_ready_message("floor", i);
                ready_event(client, &ns, "ArtifactStore", &format!("store-{i}"), &message).await;
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let writes = started.elapsed();

    let objects =
        (0..stores).map(|i| (names[i % namespaces].clone(), stack_object(&format!("floor-{run}"), i))).collect();
    let started = Instant::now();
    assert_eq!(apply_all(client, objects).await.len(), stores, "every Stack applied");
    let stack_applies = started.elapsed();
    let (apiserver, etcd) = (pid_of("kube-apiserver"), pid_of("etcd"));
    let cpu_before = (cpu_seconds(apiserver), cpu_seconds(etcd));
    let started = Instant::now();
    futures::stream::iter(0..stores)
        .map(|i| {
            let ns = names[i % namespaces].clone();
            let data = data.clone();
            async move { stack_floor_writes(client, &ns, i, data).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let stack_writes = started.elapsed();
    let stack_cpu = (cpu_seconds(apiserver) - cpu_before.0, cpu_seconds(etcd) - cpu_before.1);

    // Nobody reconciles the floor's Stacks: their finalizers go by hand, or the namespaces stay.
    futures::stream::iter(0..stores)
        .map(|i| {
            let stacks = Api::<Stack>::namespaced(client.clone(), &names[i % namespaces]);
            async move {
                let none =
                    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"finalizers": []}});
                let params = PatchParams::apply("artifact-operator").force();
                stacks.patch(&format!("stack-{i}"), &params, &Patch::Apply(&none)).await.unwrap();
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;

    let namespaces_api = Api::<Namespace>::all(client.clone());
    for name in &names {
        let _ = namespaces_api.delete(name, &DeleteParams::default()).await;
    }
    eventually(Duration::from_secs(900), "the floor's namespaces to be gone", || async {
        let listed = namespaces_api.list(&kube::api::ListParams::default()).await.ok()?;
        (!listed.items.iter().any(|n| n.name_any().starts_with(&format!("floor-{run}-")))).then_some(())
    })
    .await;
    Floor { writes, applies, stack_writes, stack_applies, stack_cpu }
}

/// The writes the operator makes for one Ready Stack with ZenML and Argo outputs (see
/// [`Floor::stack_writes`]), made by a plain client.
async fn stack_floor_writes(client: &Client, ns: &str, i: usize, data: BTreeMap<String, String>) {
    let name = format!("stack-{i}");
    let config_map_name = artifact_operator::stack::build::CONFIG_MAP.name(&name);
    let meta = ObjectMeta { name: Some(config_map_name.clone()), ..Default::default() };
    let config_map = ConfigMap { metadata: meta, data: Some(data), ..Default::default() };
    Api::<ConfigMap>::namespaced(client.clone(), ns).create(&PostParams::default(), &config_map).await.unwrap();
    let stacks = Api::<Stack>::namespaced(client.clone(), ns);
    let finalizer = json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack",
        "metadata": {"finalizers": [artifact_operator::stack::outputs::FINALIZER]}});
    stacks.patch(&name, &PatchParams::apply("artifact-operator").force(), &Patch::Apply(&finalizer)).await.unwrap();
    let repository = format!(
        "s3:\n  bucket: floor\n  keyFormat: team-{i}/{{{{workflow.name}}}}/{{{{pod.name}}}}\n  endpoint: 127.0.0.1:9000\n  insecure: true\n  accessKeySecret:\n    name: store-{i}-aws-credentials\n    key: AWS_ACCESS_KEY_ID\n"
    );
    let digest = claims::part_digest_annotation(&name);
    let key = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "artifact-repositories", "annotations": {digest: claims::digest_value(i as u64)}},
        "data": {&name: repository}});
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch("artifact-repositories", &PatchParams::apply(&claims::part_manager(&name)), &Patch::Apply(&key))
        .await
        .unwrap();
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let message =
        format!("pods running as runner can use s3://floor/team-{i}; configuration in ConfigMap {config_map_name}");
    let status = json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "status": {
        "observedGeneration": 1, "configMapName": config_map_name, "contentHash": "0123456789abcdef",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "lastTransitionTime": now, "observedGeneration": 1,
            "message": message}]}});
    stacks.patch_status(&name, &PatchParams::apply("artifact-operator").force(), &Patch::Apply(&status)).await.unwrap();
    ready_event(client, ns, "Stack", &name, &message).await;
}

/// A CPU profile of `pid` for `seconds`, with perf; its report's top entries.
fn profile(pid: u32, seconds: u64) -> std::process::Child {
    let output = std::env::temp_dir().join(format!("artifact-operator-{pid}.perf"));
    std::process::Command::new("perf")
        .args(["record", "-F", "99", "-g", "-p", &pid.to_string(), "-o"])
        .arg(&output)
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("perf runs")
}

fn profile_report(pid: u32) {
    let output = std::env::temp_dir().join(format!("artifact-operator-{pid}.perf"));
    let report = std::process::Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--percent-limit", "2", "-g", "none", "-i"])
        .arg(&output)
        .output()
        .expect("perf report runs");
    println!("CPU profile of the operator during the ramp ({}):", output.display());
    for line in
        String::from_utf8_lossy(&report.stdout).lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).take(20)
    {
        println!("  {line}");
    }
}

/// The operator under test, watching every namespace: the binary the image ships when
/// `AO_STATIC_BINARY` names it, else cargo's release build.
fn start_operator(resync: &str, concurrency: Option<u64>) -> Operator {
    let concurrency = concurrency.map(|n| n.to_string());
    let mut extra = vec!["--log-level", "warn"];
    extra.extend(concurrency.as_deref().map(|n| ["--concurrency", n]).into_iter().flatten());
    match std::env::var_os("AO_STATIC_BINARY") {
        Some(binary) => {
            let kubeconfig = std::path::Path::new(test_env().var("KUBECONFIG"));
            Operator::start_command(std::process::Command::new(binary), kubeconfig, "", resync, &extra)
        }
        None => Operator::start_with("", resync, &extra),
    }
}

/// How long until the operator's /readyz answers 200.
async fn ready_in(operator: &Operator) -> Duration {
    let started = Instant::now();
    eventually(Duration::from_secs(120), "the operator to be ready", || async {
        (operator.status("/readyz").await.0 == 200).then_some(())
    })
    .await;
    started.elapsed()
}

async fn run(args: Args) {
    let Args { stores, namespaces, resync, profile: profiled, concurrency } = args;
    let client = common::client().await;
    common::install_crds(&client).await;
    let run = format!("{:06}", fastrand::u32(..) % 1_000_000);
    println!(
        "artifact-operator scale benchmark: {stores} ArtifactStores and {stores} Stacks in {namespaces} namespaces, resync {} s",
        resync.as_secs()
    );
    match std::env::var("AO_STATIC_BINARY") {
        Ok(binary) => println!("operator: the static binary the image ships ({binary})"),
        Err(_) => println!("operator: cargo's release build (AO_STATIC_BINARY names the static one)"),
    }
    if let Some(concurrency) = concurrency {
        println!("operator: --concurrency {concurrency}");
    }

    let Floor { writes: floor, applies, stack_writes: stack_floor, stack_applies, stack_cpu } =
        floor(&client, &run, stores, namespaces).await;
    println!(
        "raw write floor, a plain client, {} writes (per store a ConfigMap, a Secret, its Ready status and its Ready Event; {IN_FLIGHT} in flight): {:.1} s ({:.0} writes/s)",
        stores * STORE_FLOOR_WRITES,
        floor.as_secs_f64(),
        (stores * STORE_FLOOR_WRITES) as f64 / floor.as_secs_f64()
    );
    println!(
        "the {stores} stores' own applies, nobody reconciling them: {:.1} s = {:.2}x the write floor (no ramp ends sooner)",
        applies.as_secs_f64(),
        applies.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "raw write floor of the Stacks, the same client, {} writes (per Stack its ConfigMap, its finalizer, its key of artifact-repositories, its Ready status and its Ready Event): {:.1} s; CPU seconds: apiserver {:.1}, etcd {:.1}",
        stores * STACK_FLOOR_WRITES,
        stack_floor.as_secs_f64(),
        stack_cpu.0,
        stack_cpu.1
    );
    println!(
        "the {stores} Stacks' own applies, nobody reconciling them: {:.1} s = {:.2}x their write floor (no ramp ends sooner)",
        stack_applies.as_secs_f64(),
        stack_applies.as_secs_f64() / stack_floor.as_secs_f64()
    );

    let bucket = common::limited_bucket("bench-scale");
    common::s3_root().create_bucket().bucket(&bucket).send().await.unwrap();
    let names: Vec<String> = (0..namespaces).map(|n| format!("scale-{run}-{n}")).collect();
    for name in &names {
        create_namespace(&client, name).await;
        user_keys_secret(&client, name, "minio-keys").await;
        apply(&client, name, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}}))
            .await;
    }

    // The operator watches every namespace: what other runs left in this cluster would be
    // reconciled too, and counted in every figure below.
    let others = (
        Api::<ArtifactStore>::all(client.clone()).list_metadata(&Default::default()).await.unwrap().items.len(),
        Api::<Stack>::all(client.clone()).list_metadata(&Default::default()).await.unwrap().items.len(),
    );
    if others != (0, 0) {
        println!(
            "WARNING: {} ArtifactStores and {} Stacks of other runs are in the cluster; their reconciles count in the figures below (tests/bench/run.sh starts a fresh environment)",
            others.0, others.1
        );
    }
    let resync_flag = format!("{}s", resync.as_secs());
    let mut operator = start_operator(&resync_flag, concurrency);
    ready_in(&operator).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = operator.pid();
    let (apiserver, etcd) = (pid_of("kube-apiserver"), pid_of("etcd"));
    println!("operator memory, idle (watching every namespace): {}", mib(rss(pid)));

    let peak = PeakMemory::watch(pid);
    let cpu = || (cpu_seconds(pid), cpu_seconds(apiserver), cpu_seconds(etcd));
    let (store_ready, store_watch) = watch_ready::<ArtifactStore>(&client, &run);
    let (stack_ready, stack_watch) = watch_ready::<Stack>(&client, &run);
    let endpoint = test_env().var("AO_S3_ENDPOINT");
    let store_objects: Vec<(String, serde_json::Value)> =
        (0..stores).map(|i| (names[i % namespaces].clone(), store_object(&run, &bucket, endpoint, i))).collect();
    let perf = profiled.then(|| profile(pid, 60));
    let cpu_before = cpu();
    let requests_before = apiserver_requests(&client).await;
    let started = Instant::now();
    let applied = apply_all(&client, store_objects).await;
    let applied_in = started.elapsed();
    let latencies = wait_ready(&store_ready, &applied).await;
    let all_ready = started.elapsed();
    Ramp {
        what: format!("{stores} ArtifactStores applied at once ({:.1} s to apply)", applied_in.as_secs_f64()),
        kind: "store",
        all_ready,
        floor,
        applies,
        floor_writes: STORE_FLOOR_WRITES,
        latencies: &latencies,
        cpu: (cpu_before, cpu()),
    }
    .report(stores, difference(&apiserver_requests(&client).await, &requests_before));
    if let Some(mut perf) = perf {
        let _ = perf.wait();
        profile_report(pid);
    }

    let stack_objects: Vec<(String, serde_json::Value)> =
        (0..stores).map(|i| (names[i % namespaces].clone(), stack_object(&run, i))).collect();
    let requests_before = apiserver_requests(&client).await;
    let cpu_before = cpu();
    let started = Instant::now();
    let applied = apply_all(&client, stack_objects).await;
    let latencies = wait_ready(&stack_ready, &applied).await;
    let all_ready = started.elapsed();
    Ramp {
        what: format!("{stores} Stacks (ZenML and Argo, {} per namespace) applied at once", stores / namespaces),
        kind: "Stack",
        all_ready,
        floor: stack_floor,
        applies: stack_applies,
        floor_writes: STACK_FLOOR_WRITES,
        latencies: &latencies,
        cpu: (cpu_before, cpu()),
    }
    .report(stores, difference(&apiserver_requests(&client).await, &requests_before));
    store_watch.abort();
    stack_watch.abort();

    // The steady state: one resync for the passes that follow the last writes, then count.
    tokio::time::sleep(resync + resync / 5).await;
    let s3 = "artifact_operator_aws_calls_total{service=\"s3\",outcome=\"ok\"}";
    let (requests_before, s3_before, cpu_before) =
        (apiserver_requests(&client).await, operator.counter(s3).await, cpu());
    let own_before = operator_requests(&operator).await;
    let window = resync * STEADY_RESYNCS;
    tokio::time::sleep(window).await;
    let requests = difference(&apiserver_requests(&client).await, &requests_before);
    let s3_calls = operator.counter(s3).await - s3_before;
    let own = difference(&operator_requests(&operator).await, &own_before);
    let cpu_after = cpu();
    let (reads, writes) = reads_and_writes(&requests);
    let per_object_resync = |n: f64| n / (2 * stores) as f64 / f64::from(STEADY_RESYNCS);
    println!(
        "steady state over {STEADY_RESYNCS} resyncs ({} s), apiserver's count: {reads} reads and {writes} writes = {:.3} reads and {:.3} writes per object per resync {requests:?}",
        window.as_secs(),
        per_object_resync(reads),
        per_object_resync(writes),
    );
    println!("steady state, the operator's own count of its requests: {own:?}");
    let watched = stores + others.0;
    println!(
        "steady state: {s3_calls} S3 calls for {watched} stores = {:.2} per store per resync; CPU seconds: operator {:.1}, apiserver {:.1}",
        s3_calls / watched as f64 / f64::from(STEADY_RESYNCS),
        cpu_after.0 - cpu_before.0,
        cpu_after.1 - cpu_before.1,
    );
    let steady = rss(pid);
    println!(
        "operator memory with {stores} stores and {stores} Stacks Ready: steady {}, peak {} ({:.2}x steady)",
        mib(steady),
        mib(peak.peak()),
        peak.peak() as f64 / steady as f64
    );
    drop(peak);

    // A restart: the new process lists everything and writes nothing.
    operator.terminate();
    let requests_before = apiserver_requests(&client).await;
    let operator = start_operator(&resync_flag, concurrency);
    let restart_peak = PeakMemory::watch(operator.pid());
    let readyz = ready_in(&operator).await;
    tokio::time::sleep(resync.saturating_sub(readyz)).await;
    let requests = difference(&apiserver_requests(&client).await, &requests_before);
    let (reads, writes) = reads_and_writes(&requests);
    let restarted_s3 = operator.counter(s3).await;
    let own = operator_requests(&operator).await;
    println!(
        "restart: /readyz after {:.1} s; in its first resync ({} s): {writes} writes, {reads} reads, {restarted_s3} S3 calls ({:.2}% of stores)",
        readyz.as_secs_f64(),
        resync.as_secs(),
        restarted_s3 / stores as f64 * 100.0
    );
    println!("restart, the operator's own count of its requests: {own:?} {requests:?}");
    println!(
        "operator memory after the restart, Ready: {}, peak {} ({:.2}x steady)",
        mib(rss(operator.pid())),
        mib(restart_peak.peak()),
        restart_peak.peak() as f64 / steady as f64
    );
    // The second resync: trusted at the start, each store reads its inputs and checks S3 when its
    // check falls due, those checks spread over this interval.
    let requests_before = apiserver_requests(&client).await;
    tokio::time::sleep(resync).await;
    let requests = difference(&apiserver_requests(&client).await, &requests_before);
    let (reads, writes) = reads_and_writes(&requests);
    let checked_s3 = operator.counter(s3).await - restarted_s3;
    println!(
        "restart, its second resync ({} s), as the stores' checks fall due: {writes} writes, {reads} reads, {checked_s3} S3 calls ({:.2} per store) {requests:?}",
        resync.as_secs(),
        checked_s3 / stores as f64
    );
    let errors = operator.metric_sum("artifact_operator_reconcile_errors_total").await;
    println!("reconcile errors after the restart: {errors}");

    for name in &names {
        let _ = Api::<Namespace>::all(client.clone()).delete(name, &DeleteParams::default()).await;
    }
}
