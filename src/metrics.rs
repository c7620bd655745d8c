//! Prometheus metrics. Labels are static categories, never error text or object names.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
}

/// Counts one call to an AWS service.
pub fn count_aws_call(service: &'static str) {
    AWS_CALLS.get_or_create(&ServiceLabel { service }).inc();
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
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
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed, by category", errors.clone());
        registry.register("reconcile_duration_seconds", "Reconcile duration", duration.clone());
        registry.register("aws_calls", "Calls made to AWS services (S3, STS, IAM)", AWS_CALLS.clone());
        registry.register("store_verifications", "Successful store verifications", verifications.clone());
        Self { registry: Arc::new(registry), reconciles, errors, duration, verifications }
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
