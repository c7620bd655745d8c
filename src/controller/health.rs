//! Process health for /readyz and /healthz, judged from what the process sees of the apiserver:
//! every answer it gets, the failures of its lease calls and watches, the lease reads of a standby,
//! and the controllers' caches.
//!
//! The apiserver counts as unreachable from the process start until its first answer, and from a
//! lease call or watch that got no answer until the next answer to any request. Failures are taken
//! only from the lease and the watches because both retry until they succeed, so a failure streak
//! always ends with the next answer; answers are seen on every request through [`AnswerLayer`],
//! because a watch that restarts in a quiet cluster yields no event to say so.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::leader::LEASE_DURATION;

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
        self.state().unreachable_since = None;
    }

    /// A lease call or a watch got no answer from the apiserver.
    pub fn apiserver_unreachable(&self, failure: &dyn std::error::Error) {
        let mut state = self.state();
        state.unreachable_since.get_or_insert_with(Instant::now);
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
/// and counts every request by verb.
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
        crate::metrics::count_kube_request(request.method(), request.uri().query());
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

    #[test]
    fn unhealthy_from_the_start_until_the_apiserver_first_answers() {
        let health = Health::new(10 * SECOND);
        let start = Instant::now();
        assert!(health.liveness(start + 9 * SECOND).is_ok());
        let why = health.liveness(start + 11 * SECOND).unwrap_err();
        assert_eq!(why, "cannot reach the apiserver for 11s (the limit is 10s): no answer yet");
        health.apiserver_answered();
        assert!(health.liveness(start + 11 * SECOND).is_ok());
    }

    #[test]
    fn unhealthy_only_after_failing_for_longer_than_the_limit() {
        let health = Health::new(10 * SECOND);
        health.apiserver_answered();
        health.apiserver_unreachable(&watch_failed());
        let failed = Instant::now();
        assert!(health.liveness(failed + 9 * SECOND).is_ok());
        let why = health.liveness(failed + 11 * SECOND).unwrap_err();
        assert_eq!(why, "cannot reach the apiserver for 11s (the limit is 10s): watch stream failed");
        health.apiserver_answered();
        assert!(health.liveness(failed + 11 * SECOND).is_ok());
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
}
