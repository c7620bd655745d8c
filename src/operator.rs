//! The operator process: flags, logging, the HTTP endpoints, and the controllers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use crate::aws::AwsEdge;
use crate::aws::ratelimit::RateLimiter;
use crate::controller::Context;
use crate::controller::apply::FIELD_MANAGER;
use crate::controller::context::Settings;
use crate::controller::health::WATCH_FAILURE_LIMIT;
use crate::leader::LeaderElector;
use crate::metrics::Metrics;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Comma-separated namespaces to watch; empty watches all namespaces.
    #[arg(long, env = "AO_NAMESPACES", default_value = "")]
    pub namespaces: String,
    /// How often a Ready store is re-verified, e.g. 10m, 90s.
    #[arg(long, env = "AO_RESYNC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Objects reconciled at once.
    #[arg(long, env = "AO_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// IAM and STS calls per second per account (account-wide APIs with low quotas).
    #[arg(long, env = "AO_AWS_REQUESTS_PER_SECOND", default_value_t = 10.0)]
    pub aws_requests_per_second: f64,
    /// IAM and STS calls per account allowed in a burst.
    #[arg(long, env = "AO_AWS_BURST", default_value_t = 20)]
    pub aws_burst: u32,
    /// S3 calls per second per account (or per endpoint and access key).
    #[arg(long, env = "AO_S3_REQUESTS_PER_SECOND", default_value_t = 100.0)]
    pub s3_requests_per_second: f64,
    /// S3 calls per account allowed in a burst.
    #[arg(long, env = "AO_S3_BURST", default_value_t = 200)]
    pub s3_burst: u32,
    /// Log filter, e.g. info or artifact_operator=debug.
    #[arg(long, env = "AO_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format: json or text.
    #[arg(long, env = "AO_LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "AO_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// The cluster's OIDC issuer for IRSA trust checks; read from the apiserver when unset.
    #[arg(long, env = "AO_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Elect a leader through a Lease, so that of several replicas exactly one reconciles.
    #[arg(long, env = "AO_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "AO_LEASE_NAME", default_value = "artifact-operator")]
    pub lease_name: String,
    /// Namespace of the Lease; defaults to the pod's own (POD_NAMESPACE).
    #[arg(long, env = "AO_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Apply the CRDs at start (for local development; the chart installs them otherwise).
    #[arg(long)]
    pub install_crds: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Json,
    Text,
}

/// The namespaces to watch: `[None]` for all, or one entry per listed namespace.
pub fn watch_scopes(list: &str) -> Vec<Option<String>> {
    let mut namespaces: Vec<String> =
        list.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect();
    namespaces.sort();
    namespaces.dedup();
    if namespaces.is_empty() { vec![None] } else { namespaces.into_iter().map(Some).collect() }
}

/// Parses `90s`, `10m`, `1h` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 10m or 1h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" => value * 60,
        "h" => value * 3600,
        _ => return Err(format!("{text:?} has an unknown unit; use s, m or h")),
    };
    if seconds == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(seconds))
}

fn init_logging(args: &RunArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[derive(Clone)]
struct Endpoints {
    metrics: Metrics,
    health: Arc<crate::controller::health::Health>,
    /// True while this replica waits for the lease: a standby is ready without caches.
    standby: Arc<AtomicBool>,
}

async fn serve(addr: SocketAddr, endpoints: Endpoints) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|State(e): State<Endpoints>| async move { e.metrics.render() }))
        .route(
            "/healthz",
            get(|State(e): State<Endpoints>| async move {
                if e.health.is_healthy(WATCH_FAILURE_LIMIT) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::INTERNAL_SERVER_ERROR, "the watches have failed for too long")
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(e): State<Endpoints>| async move {
                if e.standby.load(Ordering::Relaxed) || e.health.is_ready() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "the caches have not synced yet")
                }
            }),
        )
        .with_state(endpoints);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

async fn install_crds(client: &Client) -> Result<(), kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd)).await?;
    }
    Ok(())
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> Result<(), String> {
    init_logging(&args);
    let client = Client::try_default().await.map_err(|e| format!("failed to configure the Kubernetes client: {e}"))?;
    if args.install_crds {
        install_crds(&client).await.map_err(|e| format!("failed to install the CRDs: {e}"))?;
    }
    let aws = AwsEdge::load(
        RateLimiter::new(args.s3_requests_per_second, args.s3_burst),
        RateLimiter::new(args.aws_requests_per_second, args.aws_burst),
    )
    .await;
    let metrics = Metrics::default();
    let settings = Settings { resync_interval: args.resync_interval, oidc_issuer: args.oidc_issuer.clone() };
    let ctx = Arc::new(Context::new(client, aws, settings, metrics.clone()));
    let standby = Arc::new(AtomicBool::new(false));
    let endpoints = Endpoints { metrics, health: ctx.health.clone(), standby: standby.clone() };
    let server = tokio::spawn(serve(args.http_addr, endpoints));
    let elector = if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .ok_or("leader election needs --lease-namespace or POD_NAMESPACE")?;
        let pod =
            std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "operator".into());
        let identity = format!("{pod}-{:08x}", fastrand::u32(..));
        let elector = LeaderElector::new(ctx.client.clone(), &namespace, &args.lease_name, identity);
        standby.store(true, Ordering::Relaxed);
        elector.acquire().await;
        standby.store(false, Ordering::Relaxed);
        Some(elector)
    } else {
        None
    };
    let scopes = watch_scopes(&args.namespaces);
    tracing::info!(namespaces = %args.namespaces, resync = ?args.resync_interval, "starting the controllers");
    // One controller per watched namespace: each needs list/watch only where it is allowed.
    let mut controllers: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
    for scope in scopes {
        controllers.push(Box::pin(crate::store::run(ctx.clone(), scope.clone(), args.concurrency)));
        controllers.push(Box::pin(crate::stack::run(ctx.clone(), scope, args.concurrency)));
    }
    ctx.health.controllers_started(controllers.len());
    match &elector {
        Some(elector) => {
            tokio::select! {
                _ = futures::future::join_all(controllers) => elector.release().await,
                () = elector.keep_renewing() => {
                    // Another replica may lead from now on: stop at once, writing nothing more.
                    tracing::error!("lost the lease; exiting");
                    std::process::exit(1);
                }
            }
        }
        None => {
            futures::future::join_all(controllers).await;
        }
    }
    server.abort();
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_watch_scopes() {
        assert_eq!(watch_scopes(""), vec![None]);
        assert_eq!(watch_scopes(" b, a ,b,"), vec![Some("a".to_owned()), Some("b".to_owned())]);
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
