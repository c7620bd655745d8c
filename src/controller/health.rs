//! Process health for /readyz and /healthz, judged from what the process sees of the apiserver:
//! every answer it gets, the failures of its probes, lease calls and watches, the lease reads of a
//! standby, and the controllers' caches.
//!
//! The apiserver counts as unreachable from the process start until its first answer, and from a
//! lease call, watch or probe that got no answer until the next answer to any request. Failures are
//! taken only from those because they retry until they succeed, so a failure streak always ends
//! with the next answer; answers are seen on every request through [`AnswerLayer`], because a watch
//! that restarts in a quiet cluster yields no event to say so.
//!
//! An apiserver that stops answering while its connections stay open (it hangs, or a proxy in front
//! of it does) fails no request: a watch on such a connection just waits, and an idle process sends
//! nothing else. So [`probe`] asks the apiserver for its version at a steady interval, and a probe
//! or lease call left unanswered for its timeout counts the apiserver unreachable from when it was
//! sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::Client;

use super::timing::LEASE_DURATION;

/// How long the apiserver may stay unreachable before /healthz fails, unless configured.
pub const DEFAULT_UNHEALTHY_AFTER: Duration = Duration::from_secs(120);

/// What this replica does, which decides what makes it ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Configuring itself: not ready yet.
    Starting,
    /// Waiting for the lease: ready while it can read the lease.
    Standby,
    /// Leading, or running without leader election: ready when its caches have synced.
    Active,
}

pub struct Health {
    /// How long the apiserver may stay unreachable before the process counts as unhealthy.
    unhealthy_after: Duration,
    /// How many watches run; zero until they start.
    watches: AtomicUsize,
    /// How many of them have a synced cache.
    synced: AtomicUsize,
    state: Mutex<State>,
}

struct State {
    role: Role,
    started: Instant,
    /// Since when the apiserver has not answered: None while it does.
    unreachable_since: Option<Instant>,
    /// When the apiserver last answered a request.
    last_answer: Option<Instant>,
    /// Why the last lease call or watch got no answer.
    last_failure: Option<String>,
    /// When this replica last read the lease.
    lease_read: Option<Instant>,
    /// Why the last attempt to read the lease failed, if it did.
    lease_failure: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(DEFAULT_UNHEALTHY_AFTER)
    }
}

impl Health {
    pub fn new(unhealthy_after: Duration) -> Self {
        let now = Instant::now();
        Self {
            unhealthy_after,
            watches: AtomicUsize::new(0),
            synced: AtomicUsize::new(0),
            state: Mutex::new(State {
                role: Role::Starting,
                started: now,
                unreachable_since: Some(now),
                last_answer: None,
                last_failure: None,
                lease_read: None,
                lease_failure: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_role(&self, role: Role) {
        self.state().role = role;
    }

    /// Records that `count` watches run, each of which reports [`Health::cache_synced`] once.
    pub fn watches_started(&self, count: usize) {
        self.watches.store(count, Ordering::SeqCst);
    }

    /// One watch's cache holds its first complete list.
    pub fn cache_synced(&self) {
        self.synced.fetch_add(1, Ordering::SeqCst);
    }

    fn caches_synced(&self) -> bool {
        let watches = self.watches.load(Ordering::SeqCst);
        watches > 0 && self.synced.load(Ordering::SeqCst) >= watches
    }

    /// The apiserver answered a request (with any status but a gateway error).
    pub fn apiserver_answered(&self) {
        let mut state = self.state();
        state.unreachable_since = None;
        state.last_answer = Some(Instant::now());
    }

    /// A lease call or a watch got no answer from the apiserver.
    pub fn apiserver_unreachable(&self, failure: &dyn std::error::Error) {
        self.apiserver_unanswered(Instant::now(), failure);
    }

    /// A request sent at `sent` got no answer: it failed, or its timeout ran out. The apiserver
    /// counts as unreachable from then on, or from its last answer when that came later (to another
    /// request: then only this one went unanswered, perhaps on a connection of its own that died).
    pub fn apiserver_unanswered(&self, sent: Instant, failure: &dyn std::error::Error) {
        let mut state = self.state();
        let since = state.last_answer.map_or(sent, |answered| answered.max(sent));
        state.unreachable_since = Some(state.unreachable_since.map_or(since, |earlier| earlier.min(since)));
        state.last_failure = Some(with_causes(failure));
    }

    pub fn lease_read(&self) {
        let mut state = self.state();
        state.lease_read = Some(Instant::now());
        state.lease_failure = None;
    }

    pub fn lease_call_failed(&self, error: &kube::Error) {
        if is_unreachable(error) {
            self.apiserver_unreachable(error);
        }
        self.state().lease_failure = Some(with_causes(error));
    }

    /// Lease calls that began at `sent` were still unanswered when their time ran out.
    pub fn lease_call_unanswered(&self, sent: Instant, failure: &NoAnswer) {
        self.apiserver_unanswered(sent, failure);
        self.state().lease_failure = Some(failure.to_string());
    }

    /// Ok while the process is alive by /healthz's measure, or why it is not.
    pub fn liveness(&self, now: Instant) -> Result<(), String> {
        let state = self.state();
        match state.unreachable_for(now) {
            Some(unreachable) if unreachable > self.unhealthy_after => Err(format!(
                "cannot reach the apiserver for {} (the limit is {}): {}",
                seconds(unreachable),
                seconds(self.unhealthy_after),
                state.last_failure()
            )),
            _ => Ok(()),
        }
    }

    /// Ok while the replica is ready by /readyz's measure, or why it is not. A standby is ready
    /// while it reads the lease; an active replica once its caches have synced, and not while the
    /// apiserver has been unreachable for longer than a standby may go without reading the lease
    /// (or than the liveness limit, when that is shorter: an unhealthy process is never ready).
    pub fn readiness(&self, now: Instant) -> Result<(), String> {
        let state = self.state();
        match state.role {
            Role::Starting => Err("the operator is starting".to_owned()),
            Role::Standby => {
                let last_read = state.lease_read.unwrap_or(state.started);
                let unread = now.saturating_duration_since(last_read);
                if state.lease_read.is_some() && unread <= LEASE_DURATION {
                    return Ok(());
                }
                let why = state.lease_failure.as_deref().unwrap_or("no answer yet");
                Err(format!("standing by, but could not read the lease for {}: {why}", seconds(unread)))
            }
            Role::Active => match state.unreachable_for(now) {
                Some(unreachable) if unreachable > LEASE_DURATION.min(self.unhealthy_after) => {
                    Err(format!("cannot reach the apiserver for {}: {}", seconds(unreachable), state.last_failure()))
                }
                _ if !self.caches_synced() => Err("the caches have not synced yet".to_owned()),
                _ => Ok(()),
            },
        }
    }
}

impl State {
    fn unreachable_for(&self, now: Instant) -> Option<Duration> {
        self.unreachable_since.map(|since| now.saturating_duration_since(since))
    }

    fn last_failure(&self) -> &str {
        self.last_failure.as_deref().unwrap_or("no answer yet")
    }
}

/// An error with the causes its message leaves out, e.g. `ServiceError: client error (Connect):
/// tcp connect error: Connection refused (os error 111)`.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let message = error.to_string();
        if !text.contains(&message) {
            text = format!("{text}: {message}");
        }
        cause = error.source();
    }
    text
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

/// A duration as the flags take it: whole seconds, or else milliseconds (`1500ms`).
fn flag_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 { seconds(duration) } else { format!("{}ms", duration.as_millis()) }
}

/// A request to the apiserver that got no answer before its time ran out.
#[derive(Debug, thiserror::Error)]
#[error("no answer to {request} within {}", flag_duration(*.within))]
pub struct NoAnswer {
    /// What was asked, e.g. `GET /version`.
    pub request: &'static str,
    pub within: Duration,
}

/// The path [`probe`] asks for: the apiserver's version, which every client may read (the
/// `system:public-info-viewer` role) and which the apiserver serves without reaching etcd.
const PROBE_PATH: &str = "/version";
/// The probe's request, as a [`NoAnswer`] names it.
const PROBE_REQUEST: &str = "GET /version";

/// Marks the probe's requests, which the request metric counts as `probe` rather than `get`.
#[derive(Clone, Copy, Debug)]
pub struct ProbeRequest;

/// How often [`probe`] asks: a quarter of the liveness limit, from 1 s to 10 s. A process whose
/// apiserver stops answering sends its next probe within this, so /healthz fails within the limit
/// plus this of the apiserver going silent.
pub fn probe_interval(unhealthy_after: Duration) -> Duration {
    (unhealthy_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// How long a probe waits for its answer: half the liveness limit, from 1 s to 10 s (never longer
/// than the limit, which is at least 1 s), so that it has failed before the limit runs out.
pub fn probe_timeout(unhealthy_after: Duration) -> Duration {
    (unhealthy_after / 2).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Asks the apiserver for its version every [`probe_interval`], for as long as the process runs,
/// so that `health` learns of an apiserver that stops answering even when nothing else is asked.
/// Failures are logged once a streak and reach `health` only: the process never exits on them.
pub async fn probe(client: Client, health: Arc<Health>) {
    let (every, within) = (probe_interval(health.unhealthy_after), probe_timeout(health.unhealthy_after));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        match probe_once(&client, &health, within).await {
            Ok(()) if std::mem::take(&mut failing) => tracing::info!("the apiserver answers again"),
            Ok(()) => {}
            Err(error) if !std::mem::replace(&mut failing, true) => {
                tracing::warn!(%error, "the apiserver does not answer")
            }
            Err(error) => tracing::debug!(%error, "the apiserver still does not answer"),
        }
    }
}

/// One probe: Ok when the apiserver answered within `within` (a refusal is an answer), or what
/// went wrong, which `health` is told of.
async fn probe_once(client: &Client, health: &Health, within: Duration) -> Result<(), String> {
    let request = http::Request::get(PROBE_PATH).extension(ProbeRequest).body(Vec::new()).expect("a valid request");
    let sent = Instant::now();
    match tokio::time::timeout(within, client.request_text(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) if !is_unreachable(&error) => Ok(()),
        Ok(Err(error)) => {
            health.apiserver_unanswered(sent, &error);
            Err(with_causes(&error))
        }
        Err(_) => {
            let error = NoAnswer { request: PROBE_REQUEST, within };
            health.apiserver_unanswered(sent, &error);
            Err(error.to_string())
        }
    }
}

/// Gateway errors come from a proxy or load balancer in front of the apiserver, not from it.
fn is_gateway_error(code: u16) -> bool {
    matches!(code, 502..=504)
}

/// Whether `error` means the apiserver did not answer, rather than answered with a refusal.
pub fn is_unreachable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => is_gateway_error(status.code),
        _ => true,
    }
}

/// Whether a watch failed because the apiserver did not answer.
pub fn is_unreachable_watch(error: &kube::runtime::watcher::Error) -> bool {
    use kube::runtime::watcher::Error;
    match error {
        Error::InitialListFailed(error) | Error::WatchStartFailed(error) | Error::WatchFailed(error) => {
            is_unreachable(error)
        }
        Error::WatchError(status) => is_gateway_error(status.code),
        Error::NoResourceVersion => false,
    }
}

/// A layer for the Kubernetes client that tells [`Health`] of every answer from the apiserver,
/// and counts every request by verb (the probe's as `probe`).
#[derive(Clone)]
pub struct AnswerLayer(pub Arc<Health>);

impl<S> tower::Layer<S> for AnswerLayer {
    type Service = AnswerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AnswerService { inner, health: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct AnswerService<S> {
    inner: S,
    health: Arc<Health>,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for AnswerService<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let health = self.health.clone();
        if request.extensions().get::<ProbeRequest>().is_some() {
            crate::metrics::count_kube_probe();
        } else {
            crate::metrics::count_kube_request(request.method(), request.uri().query());
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            if response.as_ref().is_ok_and(|r| !is_gateway_error(r.status().as_u16())) {
                health.apiserver_answered();
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Like hyper's connect error, whose message leaves its cause out.
    #[derive(Debug)]
    struct ConnectError(std::io::Error);

    impl std::fmt::Display for ConnectError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for ConnectError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn refused() -> kube::Error {
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        kube::Error::Service(Box::new(ConnectError(cause)))
    }

    fn watch_failed() -> std::io::Error {
        std::io::Error::other("watch stream failed")
    }

    fn forbidden() -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status::failure("leases is forbidden", "Forbidden").with_code(403)))
    }

    /// Alive up to the 10 s limit after `since`, dead past it for the reason `why`, and alive again
    /// once the apiserver answers.
    fn dead_past_the_limit_until_an_answer(health: &Health, since: Instant, why: &str) {
        assert!(health.liveness(since + 9 * SECOND).is_ok());
        let said = health.liveness(since + 11 * SECOND).unwrap_err();
        assert_eq!(said, format!("cannot reach the apiserver for 11s (the limit is 10s): {why}"));
        health.apiserver_answered();
        assert!(health.liveness(since + 11 * SECOND).is_ok());
    }

    #[test]
    fn unhealthy_from_the_start_until_the_apiserver_first_answers() {
        let health = Health::new(10 * SECOND);
        dead_past_the_limit_until_an_answer(&health, Instant::now(), "no answer yet");
    }

    #[test]
    fn unhealthy_only_after_failing_for_longer_than_the_limit() {
        let health = Health::new(10 * SECOND);
        health.apiserver_answered();
        health.apiserver_unreachable(&watch_failed());
        dead_past_the_limit_until_an_answer(&health, Instant::now(), "watch stream failed");
    }

    #[test]
    fn a_refusal_is_an_answer_but_a_gateway_error_is_not() {
        assert!(is_unreachable(&refused()));
        assert!(!is_unreachable(&forbidden()));
        let bad_gateway = kube::core::Status::failure("bad gateway", "BadGateway").with_code(502);
        assert!(is_unreachable(&kube::Error::Api(Box::new(bad_gateway))));
    }

    #[test]
    fn an_active_replica_is_ready_once_every_cache_has_synced() {
        let health = Health::default();
        let now = Instant::now();
        assert_eq!(health.readiness(now), Err("the operator is starting".to_owned()));
        health.set_role(Role::Active);
        health.apiserver_answered();
        health.watches_started(2);
        health.cache_synced();
        assert_eq!(health.readiness(now), Err("the caches have not synced yet".to_owned()));
        health.cache_synced();
        assert_eq!(health.readiness(now), Ok(()));
    }

    #[test]
    fn an_active_replica_is_not_ready_while_the_apiserver_is_unreachable() {
        let health = Health::new(300 * SECOND);
        health.set_role(Role::Active);
        health.watches_started(1);
        health.cache_synced();
        health.apiserver_answered();
        health.apiserver_unreachable(&watch_failed());
        let failed = Instant::now();
        assert!(health.readiness(failed + LEASE_DURATION - SECOND).is_ok(), "a short blip is tolerated");
        let why = health.readiness(failed + LEASE_DURATION + SECOND).unwrap_err();
        assert!(why.starts_with("cannot reach the apiserver for 16s: watch stream failed"), "{why}");

        let strict = Health::new(3 * SECOND);
        strict.set_role(Role::Active);
        assert!(strict.readiness(Instant::now() + 4 * SECOND).unwrap_err().contains("cannot reach"));
    }

    #[test]
    fn a_standby_is_ready_while_it_reads_the_lease() {
        let health = Health::default();
        health.set_role(Role::Standby);
        let start = Instant::now();
        health.lease_call_failed(&refused());
        let why = health.readiness(start + 40 * SECOND).unwrap_err();
        assert_eq!(
            why,
            "standing by, but could not read the lease for 40s: ServiceError: client error (Connect): Connection refused"
        );
        let read = Instant::now();
        health.lease_read();
        assert_eq!(health.readiness(read + LEASE_DURATION), Ok(()));
        assert!(health.readiness(read + LEASE_DURATION + SECOND).is_err());
    }

    #[test]
    fn a_forbidden_lease_makes_a_standby_unready_but_not_unhealthy() {
        let health = Health::new(SECOND);
        health.set_role(Role::Standby);
        health.apiserver_answered();
        health.lease_call_failed(&forbidden());
        let later = Instant::now() + 60 * SECOND;
        assert!(health.readiness(later).unwrap_err().contains("forbidden"));
        assert!(health.liveness(later).is_ok());
    }

    #[test]
    fn the_probe_asks_four_times_per_limit_and_fails_within_half_of_it() {
        let timing = |limit: u64| {
            let limit = Duration::from_secs(limit);
            (probe_interval(limit), probe_timeout(limit))
        };
        assert_eq!(timing(1), (SECOND, SECOND));
        assert_eq!(timing(3), (SECOND, 1500 * Duration::from_millis(1)));
        assert_eq!(timing(20), (5 * SECOND, 10 * SECOND));
        assert_eq!(timing(120), (10 * SECOND, 10 * SECOND));
        assert_eq!(timing(24 * 3600), (10 * SECOND, 10 * SECOND));
        for limit in [1, 2, 3, 7, 20, 120, 24 * 3600] {
            let (_, timeout) = timing(limit);
            assert!(timeout <= Duration::from_secs(limit), "a probe fails before the limit of {limit}s runs out");
        }
        let within = NoAnswer { request: PROBE_REQUEST, within: probe_timeout(3 * SECOND) };
        assert_eq!(within.to_string(), "no answer to GET /version within 1500ms");
    }

    #[test]
    fn an_unanswered_request_counts_from_when_it_was_sent() {
        let health = Health::new(10 * SECOND);
        health.apiserver_answered();
        let sent = Instant::now();
        // Found out only when its timeout runs out, later.
        health.apiserver_unanswered(sent, &NoAnswer { request: PROBE_REQUEST, within: 2 * SECOND });
        assert!(health.liveness(sent + 9 * SECOND).is_ok());
        let why = health.liveness(sent + 11 * SECOND).unwrap_err();
        assert_eq!(why, "cannot reach the apiserver for 11s (the limit is 10s): no answer to GET /version within 2s");
        health.apiserver_answered();
        assert!(health.liveness(sent + 11 * SECOND).is_ok());
    }

    #[test]
    fn an_unanswered_request_counts_from_the_last_answer_to_another_one_sent_later() {
        let health = Health::new(10 * SECOND);
        let sent = Instant::now();
        health.apiserver_answered();
        let answered = Instant::now();
        health.apiserver_unanswered(sent.checked_sub(5 * SECOND).unwrap(), &watch_failed());
        assert!(health.liveness(answered + 9 * SECOND).is_ok(), "not 14 s: another request was answered since");
        assert!(health.liveness(answered + 11 * SECOND).is_err());
        // A failure found out later does not move the start of the streak.
        health.apiserver_unreachable(&refused());
        assert!(health.liveness(answered + 11 * SECOND).unwrap_err().contains("Connection refused"));
    }

    type Apiserver = tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;

    /// A client whose requests reach the returned handle, which answers them or not.
    fn mock_client() -> (Client, Apiserver) {
        let (service, handle) = tower_test::mock::pair();
        (Client::new(service, "default"), handle)
    }

    fn response(status: u16, body: &str) -> http::Response<kube::client::Body> {
        http::Response::builder().status(status).body(kube::client::Body::from(body.as_bytes().to_vec())).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_left_unanswered_fails_at_its_timeout() {
        let health = Health::new(3 * SECOND);
        health.apiserver_answered();
        // Requests reach the handle, which never answers.
        let (client, _handle) = mock_client();
        let start = tokio::time::Instant::now();
        let sent = Instant::now();
        let why = probe_once(&client, &health, 1500 * Duration::from_millis(1)).await.unwrap_err();
        assert_eq!(why, "no answer to GET /version within 1500ms");
        assert_eq!(start.elapsed(), 1500 * Duration::from_millis(1));
        let why = health.liveness(sent + 4 * SECOND).unwrap_err();
        assert!(why.ends_with("(the limit is 3s): no answer to GET /version within 1500ms"), "{why}");
    }

    #[tokio::test]
    async fn a_probe_asks_for_the_version_and_takes_a_refusal_for_an_answer() {
        let health = Health::new(3 * SECOND);
        let (client, mut handle) = mock_client();
        for status in [200, 403] {
            let answer = async {
                let (request, respond) = handle.next_request().await.expect("a probe");
                assert_eq!((request.method(), request.uri().path()), (&http::Method::GET, "/version"));
                assert!(request.extensions().get::<ProbeRequest>().is_some(), "counted as a probe");
                let body = if status == 200 { r#"{"major":"1","minor":"33"}"# } else { r#"{"code":403}"# };
                respond.send_response(response(status, body));
            };
            let (probed, ()) = futures::join!(probe_once(&client, &health, 10 * SECOND), answer);
            assert_eq!(probed, Ok(()), "{status}");
        }
        let bad_gateway = async {
            let (_, respond) = handle.next_request().await.expect("a probe");
            respond.send_response(response(502, "Bad Gateway"));
        };
        health.apiserver_answered();
        let sent = Instant::now();
        let (probed, ()) = futures::join!(probe_once(&client, &health, 10 * SECOND), bad_gateway);
        assert!(probed.is_err(), "a gateway error is no answer");
        assert!(health.liveness(sent + 4 * SECOND).is_err());
    }
}
