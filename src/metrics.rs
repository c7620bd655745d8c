//! Prometheus metrics. Labels are static categories, never error text or object names.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    kind: &'static str,
    category: &'static str,
}

/// AWS calls by service, process-wide: the AWS edge counts without a handle on the registry.
static AWS_CALLS: std::sync::LazyLock<Family<ServiceLabel, Counter>> = std::sync::LazyLock::new(Family::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: &'static str,
    outcome: &'static str,
}

/// Counts one call to an AWS service and whether it succeeded.
pub fn count_aws_call(service: &'static str, ok: bool) {
    AWS_CALLS.get_or_create(&ServiceLabel { service, outcome: if ok { "ok" } else { "error" } }).inc();
}

static KUBE_REQUESTS: std::sync::LazyLock<Family<VerbLabel, Counter>> = std::sync::LazyLock::new(Family::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabel {
    verb: &'static str,
}

/// Counts one request to the apiserver: `watch`, `get` (a read or a list), `create`, `update`,
/// `patch` or `delete`.
pub fn count_kube_request(method: &http::Method, query: Option<&str>) {
    let verb = match *method {
        http::Method::GET if query.is_some_and(|q| q.split('&').any(|p| p == "watch=true")) => "watch",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    };
    KUBE_REQUESTS.get_or_create(&VerbLabel { verb }).inc();
}

/// Counts one health probe of the apiserver (a GET of /version) as `probe`, apart from the reads
/// of objects.
pub fn count_kube_probe() {
    KUBE_REQUESTS.get_or_create(&VerbLabel { verb: "probe" }).inc();
}

static ZENML_REQUESTS: std::sync::LazyLock<Family<VerbLabel, Counter>> = std::sync::LazyLock::new(Family::default);

/// Counts one request to a ZenML server: `get`, `create`, `update`, `delete` or `login`.
pub fn count_zenml_request(verb: &'static str) {
    ZENML_REQUESTS.get_or_create(&VerbLabel { verb }).inc();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabel {
    kind: &'static str,
    ready: &'static str,
}

/// One controller cache's objects, as Ready labels.
struct ReadyCount {
    kind: &'static str,
    count: Box<dyn Fn() -> Vec<&'static str> + Send + Sync>,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    time_to_ready: Family<KindLabel, Histogram>,
    by_ready: Family<ReadyLabel, Gauge>,
    /// The controllers' caches, read at each scrape to derive `by_ready`: an object deleted while
    /// no reconcile ran leaves the cache, so the gauge never counts it.
    caches: Arc<Mutex<Vec<ReadyCount>>>,
    reconciles: Family<KindLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    duration: Family<KindLabel, Histogram>,
    verifications: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("artifact_operator");
        let reconciles = Family::<KindLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let verifications = Counter::default();
        let time_to_ready =
            Family::<KindLabel, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.25, 2.0, 14)));
        let by_ready = Family::<ReadyLabel, Gauge>::default();
        registry.register("time_to_ready_seconds", "From creation to the first Ready=True", time_to_ready.clone());
        registry.register("objects", "ArtifactStores and Stacks by their Ready condition", by_ready.clone());
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed, by category", errors.clone());
        registry.register("reconcile_duration_seconds", "Reconcile duration", duration.clone());
        registry.register("aws_calls", "Calls made to AWS services (S3, STS, IAM)", AWS_CALLS.clone());
        registry.register("kube_requests", "Requests made to the Kubernetes apiserver, by verb", KUBE_REQUESTS.clone());
        registry.register("zenml_requests", "Requests made to ZenML servers, by verb", ZENML_REQUESTS.clone());
        registry.register("store_verifications", "Successful store verifications", verifications.clone());
        Self {
            registry: Arc::new(registry),
            time_to_ready,
            by_ready,
            caches: Arc::default(),
            reconciles,
            errors,
            duration,
            verifications,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, kind: &'static str, took: Duration) {
        self.reconciles.get_or_create(&KindLabel { kind }).inc();
        self.duration.get_or_create(&KindLabel { kind }).observe(took.as_secs_f64());
    }

    pub fn reconcile_error(&self, kind: &'static str, category: &'static str) {
        self.errors.get_or_create(&ErrorLabel { kind, category }).inc();
    }

    pub fn verified(&self) {
        self.verifications.inc();
    }

    /// Counts the objects in `cache` by their Ready condition at every scrape.
    pub fn count_ready_in<K>(&self, kind: &'static str, cache: kube::runtime::reflector::Store<K>)
    where
        K: crate::conditions::HasConditions + kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let count = move || {
            cache.state().iter().map(|object| crate::conditions::ready_label(object.conditions())).collect::<Vec<_>>()
        };
        self.caches.lock().unwrap_or_else(|p| p.into_inner()).push(ReadyCount { kind, count: Box::new(count) });
    }

    fn update_by_ready(&self) {
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        let kinds: std::collections::BTreeSet<&'static str> = caches.iter().map(|c| c.kind).collect();
        for kind in kinds {
            let labels: Vec<&'static str> =
                caches.iter().filter(|c| c.kind == kind).flat_map(|c| (c.count)()).collect();
            for ready in ["True", "False", "Unknown"] {
                let count = labels.iter().filter(|l| **l == ready).count();
                self.by_ready.get_or_create(&ReadyLabel { kind, ready }).set(count as i64);
            }
        }
    }

    /// An object turned Ready `age` after its creation.
    pub fn became_ready(&self, kind: &'static str, age: Duration) {
        self.time_to_ready.get_or_create(&KindLabel { kind }).observe(age.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.update_by_ready();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
