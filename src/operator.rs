//! The operator process: flags, logging, the HTTP endpoints, and the controllers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::future::BoxFuture;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use crate::api::{ArtifactStore, Stack, kind};
use crate::aws::AwsEdge;
use crate::aws::ratelimit::RateLimiter;
use crate::controller::Context;
use crate::controller::apply::FIELD_MANAGER;
use crate::controller::caches::Caches;
use crate::controller::context::Settings;
use crate::controller::health::{AnswerLayer, Health, Role};
use crate::controller::timing::parse_duration;
use crate::leader::LeaderElector;
use crate::metrics::Metrics;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Comma-separated namespaces to watch; empty watches all namespaces.
    #[arg(long, env = "AO_NAMESPACES", default_value = "")]
    pub namespaces: String,
    /// How often a Ready store is re-verified, e.g. 10m, 90s, 1h30m. From 1s to 24h: at least
    /// daily, so that revoked credentials or a deleted bucket show within a day.
    #[arg(long, env = "AO_RESYNC_INTERVAL", default_value = "10m", value_parser = parse_resync_interval)]
    pub resync_interval: Duration,
    /// How long the apiserver may be unreachable (probes, lease calls and watches unanswered)
    /// before /healthz fails and the kubelet restarts the process; from 1s to 24h. The default
    /// rides out an apiserver restart or a control-plane upgrade, restarting only a process that
    /// stays cut off; it is far above the leader's 10 s renew deadline, after which a leader exits
    /// anyway.
    #[arg(long, env = "AO_UNHEALTHY_AFTER", default_value = "2m", value_parser = parse_unhealthy_after)]
    pub unhealthy_after: Duration,
    /// Objects reconciled at once, per kind and watched namespace. A reconcile mostly waits on
    /// the apiserver and S3, so enough of them in flight keep both busy when thousands of
    /// objects arrive at once; the steady state reconciles few.
    #[arg(long, env = "AO_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// IAM and STS calls per second per account (account-wide APIs with low quotas).
    #[arg(long, env = "AO_AWS_REQUESTS_PER_SECOND", default_value_t = 10.0)]
    pub aws_requests_per_second: f64,
    /// IAM and STS calls per account allowed in a burst.
    #[arg(long, env = "AO_AWS_BURST", default_value_t = 20)]
    pub aws_burst: u32,
    /// S3 calls per second per account (or per endpoint and access key). S3 serves thousands of
    /// requests a second per prefix; 10,000 stores re-verified every minute need about 170.
    #[arg(long, env = "AO_S3_REQUESTS_PER_SECOND", default_value_t = 1000.0)]
    pub s3_requests_per_second: f64,
    /// S3 calls per account allowed in a burst.
    #[arg(long, env = "AO_S3_BURST", default_value_t = 2000)]
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
    /// The EKS cluster's name, in the operator's AWS region: a ServiceAccount without an IRSA
    /// annotation is then looked up among its Pod Identity associations.
    #[arg(long, env = "AO_EKS_CLUSTER_NAME")]
    pub eks_cluster_name: Option<String>,
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
    /// The image of the Jobs that run `artifact-operator check` for Stacks with
    /// `verification.inPod` (the chart sets the operator's own image).
    #[arg(long, env = "AO_CHECK_IMAGE")]
    pub check_image: Option<String>,
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

/// The shortest duration flag: a shorter resync would hammer S3 and IAM, a shorter liveness limit
/// would fail on any blip.
const MIN_DURATION: Duration = Duration::from_secs(1);
/// The longest duration flag: a longer resync would leave revoked credentials or a deleted bucket
/// unnoticed for more than a day, a longer liveness limit would never restart a cut-off process.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

fn parse_resync_interval(text: &str) -> Result<Duration, String> {
    parse_duration(text, MIN_DURATION, MAX_DURATION)
}

fn parse_unhealthy_after(text: &str) -> Result<Duration, String> {
    parse_duration(text, MIN_DURATION, MAX_DURATION)
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
    health: Arc<Health>,
}

/// Binds the HTTP address at once, so that a taken port stops the process before it does anything.
async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|error| format!("cannot listen on {addr}: {error}"))
}

async fn serve(listener: tokio::net::TcpListener, endpoints: Endpoints) {
    let app = Router::new()
        .route("/metrics", get(|State(e): State<Endpoints>| async move { e.metrics.render() }))
        .route(
            "/healthz",
            get(|State(e): State<Endpoints>| async move {
                probe(e.health.liveness(Instant::now()), StatusCode::INTERNAL_SERVER_ERROR)
            }),
        )
        .route(
            "/readyz",
            get(|State(e): State<Endpoints>| async move {
                probe(e.health.readiness(Instant::now()), StatusCode::SERVICE_UNAVAILABLE)
            }),
        )
        .with_state(endpoints);
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "the HTTP server stopped");
    }
}

/// A probe's answer: 200 and "ok", or `failing` and why.
fn probe(outcome: Result<(), String>, failing: StatusCode) -> (StatusCode, String) {
    match outcome {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(why) => (failing, why),
    }
}

/// A Kubernetes client from the usual sources (in-cluster, KUBECONFIG) that tells `health` of
/// every answer from the apiserver.
async fn client(health: &Arc<Health>) -> Result<Client, kube::Error> {
    let config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    Ok(kube::client::ClientBuilder::try_from(config)?.with_layer(&AnswerLayer(health.clone())).build())
}

/// Applies the CRDs, then waits (up to 30 s each) until the apiserver serves them: the watches
/// that start next would otherwise fail on a kind not served yet, and retry.
async fn install_crds(client: &Client) -> Result<(), kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for crd in crate::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd)).await?;
        names.push(name);
    }
    for name in names {
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        match tokio::time::timeout(std::time::Duration::from_secs(30), established).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(crd = %name, %error, "could not watch the CRD until it is established"),
            Err(_) => tracing::warn!(crd = %name, "the CRD is not established after 30 s; its watch retries"),
        }
    }
    Ok(())
}

/// Returns on SIGTERM or Ctrl-C.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> Result<(), String> {
    init_logging(&args);
    crate::controller::install_panic_hook();
    let listener = listen(args.http_addr).await?;
    let health = Arc::new(Health::new(args.unhealthy_after));
    let client = client(&health).await.map_err(|e| format!("failed to configure the Kubernetes client: {e}"))?;
    // Whatever the replica does, /healthz learns of an apiserver that stops answering.
    tokio::spawn(crate::controller::health::probe(client.clone(), health.clone()));
    let metrics = Metrics::default();
    let server = tokio::spawn(serve(listener, Endpoints { metrics: metrics.clone(), health: health.clone() }));
    if args.install_crds {
        install_crds(&client).await.map_err(|e| format!("failed to install the CRDs: {e}"))?;
    }
    let aws = AwsEdge::load(
        RateLimiter::new(args.s3_requests_per_second, args.s3_burst),
        RateLimiter::new(args.aws_requests_per_second, args.aws_burst),
    )
    .await;
    let mut ctx = Context::new(client, aws, settings(&args), metrics);
    ctx.health = health.clone();
    let ctx = Arc::new(ctx);
    let Some(leading) = lead(&args, &ctx.client, &health).await? else {
        server.abort();
        tracing::info!("stopped while standing by");
        return Ok(());
    };
    health.set_role(Role::Active);
    let scopes = watch_scopes(&args.namespaces);
    tracing::info!(namespaces = %args.namespaces, resync = ?args.resync_interval, "starting the controllers");
    // One set of watches and controllers per watched namespace: each needs list/watch only where
    // it is allowed.
    let (controllers, all_caches): (Vec<_>, Vec<_>) =
        scopes.iter().map(|scope| start_controllers(&ctx, scope, args.concurrency)).unzip();
    ctx.set_caches(all_caches);
    ctx.health.watches_started(scopes.len() * crate::controller::caches::WATCHES_PER_SCOPE);
    match leading {
        Leading::Elected(elector) => {
            tokio::select! {
                _ = futures::future::join_all(controllers) => elector.release().await,
                () = elector.keep_renewing() => {
                    // Another replica may lead from now on: stop at once, writing nothing more.
                    tracing::error!("lost the lease; exiting");
                    std::process::exit(1);
                }
            }
        }
        Leading::Alone => {
            futures::future::join_all(controllers).await;
        }
    }
    server.abort();
    tracing::info!("stopped");
    Ok(())
}

/// What the reconcilers are told of the process's flags.
fn settings(args: &RunArgs) -> Settings {
    Settings {
        resync_interval: args.resync_interval,
        oidc_issuer: args.oidc_issuer.clone(),
        check_image: args.check_image.clone().filter(|image| !image.trim().is_empty()),
        eks_cluster: args.eks_cluster_name.clone().filter(|name| !name.trim().is_empty()),
    }
}

/// How this replica came to reconcile.
enum Leading {
    /// Leader election is off.
    Alone,
    /// It holds the lease, and must keep renewing it.
    Elected(Box<LeaderElector>),
}

/// Waits, with leader election, until this replica holds the lease; None when SIGTERM or Ctrl-C
/// came first.
async fn lead(args: &RunArgs, client: &Client, health: &Arc<Health>) -> Result<Option<Leading>, String> {
    if !args.leader_election {
        return Ok(Some(Leading::Alone));
    }
    let namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .ok_or("leader election needs --lease-namespace or POD_NAMESPACE")?;
    let pod = std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "operator".into());
    let identity = format!("{pod}-{:08x}", fastrand::u32(..));
    let elector = LeaderElector::new(client.clone(), &namespace, &args.lease_name, identity, health.clone());
    health.set_role(Role::Standby);
    // A standby stops at SIGTERM too (in a container it is PID 1, which the kernel sends no
    // default action: ignored, the kubelet would wait out the grace period and kill it).
    tokio::select! {
        () = elector.acquire() => Ok(Some(Leading::Elected(Box::new(elector)))),
        () = terminated() => Ok(None),
    }
}

/// The watches of one scope (a namespace, or all), and its two controllers and the sweep of what
/// deleted Stacks left, which start once every cache of the scope is listed (changes meanwhile
/// wait in the queues) and run until shutdown.
fn start_controllers(
    ctx: &Arc<Context>,
    scope: &Option<String>,
    concurrency: u16,
) -> (BoxFuture<'static, ()>, (Option<String>, Caches)) {
    let (caches, queues) = crate::controller::caches::watch(&ctx.client, scope, &ctx.health);
    ctx.metrics.count_ready_in(kind::<ArtifactStore>(), caches.stores.clone());
    ctx.metrics.count_ready_in(kind::<Stack>(), caches.stacks.clone());
    let (ctx, synced) = (ctx.clone(), caches.clone());
    let (stores, stacks) = (caches.stores.clone(), caches.stacks.clone());
    let sweep = crate::stack::sweep::run(ctx.clone(), scope.clone(), caches.clone(), queues.deleted_stacks);
    let controllers = Box::pin(async move {
        tokio::select! {
            () = synced.synced() => {}
            () = terminated() => return,
        }
        // The sweep runs beside the controllers, and stops with them.
        let controllers = futures::future::join(
            crate::controller::run(
                ctx.clone(),
                stores,
                queues.stores,
                concurrency,
                crate::store::reconcile,
                crate::store::error_policy,
            ),
            crate::controller::run(
                ctx,
                stacks,
                queues.stacks,
                concurrency,
                crate::stack::reconcile,
                crate::stack::error_policy,
            ),
        );
        tokio::select! {
            _ = controllers => {}
            () = sweep => {}
        }
    });
    (controllers, (scope.clone(), caches))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_watch_scopes() {
        assert_eq!(watch_scopes(""), vec![None]);
        assert_eq!(watch_scopes(" b, a ,b,"), vec![Some("a".to_owned()), Some("b".to_owned())]);
    }

    fn resync(text: &str) -> Result<Duration, String> {
        parse_resync_interval(text)
    }

    #[test]
    fn parses_durations() {
        assert_eq!(resync("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(resync("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(resync("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(resync("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(resync(" 2 "), Ok(Duration::from_secs(2)));
        assert_eq!(resync("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_unhealthy_after("2m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn refuses_malformed_durations() {
        for text in ["", "s", "-5s", "1.5h", "5 s", "1m30", "h1"] {
            assert_eq!(resync(text), Err("not a duration such as 90s, 10m, 1h30m or 1500ms".to_owned()), "{text:?}");
        }
        assert_eq!(resync("5d"), Err(r#"unknown unit "d"; use ms, s, m or h"#.to_owned()));
        assert_eq!(resync("1hm"), Err(r#"unknown unit "hm"; use ms, s, m or h"#.to_owned()));
        assert_eq!(resync("0s"), Err("shorter than the minimum of 1s".to_owned()));
        assert_eq!(resync("999ms"), Err("shorter than the minimum of 1s".to_owned()));
    }

    #[test]
    fn refuses_durations_past_the_maximum_without_overflowing() {
        for text in [
            "24h1ms",
            "86401",
            "18446744073709551615s",
            "18446744073709551615",
            "18446744073709551616ms",
            "307445734561825861m",
            "5124095576030432h",
            "99999999999999999999999999999h",
            "18446744073709551615ms18446744073709551615ms",
        ] {
            assert_eq!(resync(text), Err("longer than the maximum of 24h".to_owned()), "{text:?}");
        }
    }
}
