//! Bulkheads between external servers. A reconcile that calls a ZenML server, an S3 endpoint, STS,
//! IAM or EKS holds one of its controller's workers until the answer comes: forty Stacks naming
//! one server that accepts connections and never answers would hold every worker for the call's
//! whole timeout, and the objects of every other server and namespace would wait behind them.
//!
//! So each server (its scheme, host and port) may keep at most a share of a controller's workers
//! waiting at once, a quarter of them; and the servers that keep a call waiting longer than a
//! prompt answer takes may keep at most half of them all together, so that a few silent servers
//! cannot take every worker either (a server with nothing in flight still gets its first call:
//! nothing says yet that it will not answer). Every call to an external server takes a place in
//! its server's share first ([`enter`]) and gives it back when its answer, error or timeout comes (the
//! [`Permit`] drops). When the share is taken by calls that have waited longer than a prompt
//! answer takes, the call is not made and the reconcile does not wait for a place: it fails at
//! once with [`Busy`], which each caller reports as its server's transient reason
//! (`ZenmlUnreachable`, `EndpointUnreachable`, ...), and retries with backoff. When the calls
//! that take the share are younger than that, nothing says yet that the server does not answer:
//! the call waits until one of them is answered (then there is a place) or has waited that long
//! (then it is refused), so that a burst of calls to a server that answers (the re-verifications
//! that fall due together) is not turned away.
//!
//! A server that answers promptly never holds a worker long, however many calls it has in
//! flight: while its last prompt answer is recent, it may take more than its share (one S3
//! endpoint behind thousands of stores is not turned away for being busy). One that does not
//! answer, or answers slowly, is held to its share.
//!
//! The shares are per controller (kind and watched namespace), as its workers are: the reconciles
//! run inside [`within`] their controller's [`Pool`]. Calls made elsewhere (the in-pod check, the
//! tests) have no pool and no limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an external call may take to connect (ZenML, and AWS through its timeout settings).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer within this time is prompt.
const PROMPT: Duration = Duration::from_secs(1);
/// A server whose last prompt answer is this recent answers: it may take more than its share.
const RECENT: Duration = Duration::from_secs(1);

/// The share of one controller's workers that each server may keep waiting.
pub struct Pool {
    /// The controller's workers (0: no limit).
    workers: usize,
    /// How many of them one server may keep waiting.
    share: usize,
    /// How many of them the servers with a call waiting longer than [`PROMPT`] may keep waiting
    /// together.
    slow_share: usize,
    servers: Mutex<HashMap<String, Server>>,
    /// Woken when a call leaves or is answered: a call waiting for a place looks again.
    changed: tokio::sync::Notify,
}

/// A server's calls in flight from one pool.
#[derive(Default)]
struct Server {
    /// When each of its calls in flight started.
    started: Vec<Instant>,
    /// When it last answered a call promptly.
    prompt: Option<Instant>,
}

/// Why a call was not made: its server's share of the workers is taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{server} has not yet answered {waiting} of this operator's requests, and {held}; this pass sent none and is retried shortly"
)]
pub struct Busy {
    /// The server, as [`server_of`] names it.
    pub server: String,
    /// Its calls in flight.
    pub waiting: usize,
    /// Which share is taken, in words.
    pub held: String,
}

/// A place in a server's share, held while its call is in flight; given back when dropped.
pub struct Permit {
    /// The pool and server of the place (None: a call without a pool, which holds none).
    held: Option<(Arc<Pool>, String)>,
    started: Instant,
}

impl Pool {
    /// The pool of a controller with `workers` workers (0: unlimited, as kube-runtime reads it).
    pub fn new(workers: u16) -> Arc<Self> {
        let workers = usize::from(workers);
        let (share, slow_share) =
            if workers == 0 { (usize::MAX, usize::MAX) } else { ((workers / 4).max(1), (workers / 2).max(1)) };
        Arc::new(Self { workers, share, slow_share, servers: Mutex::default(), changed: tokio::sync::Notify::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Server>> {
        self.servers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for a call to `server` (as [`server_of`] names it), if its share has one.
    pub fn try_enter(self: &Arc<Self>, server: &str) -> Result<Permit, Busy> {
        self.try_enter_at(server, Instant::now())
    }

    /// A place for a call to `server`: at once if its share has one; otherwise, while the calls
    /// that hold the share are younger than [`PROMPT`], once one of them is answered or leaves;
    /// refused with [`Busy`] as soon as one of them has waited [`PROMPT`] unanswered.
    pub async fn enter(self: &Arc<Self>, server: &str) -> Result<Permit, Busy> {
        loop {
            // Registered before looking, so that a call leaving in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            let busy = match self.try_enter_at(server, now) {
                Ok(permit) => return Ok(permit),
                Err(busy) => busy,
            };
            let Some(judged_at) = self.undecided_until(server, now) else { return Err(busy) };
            // Either a place comes free, or the oldest call becomes one that waited too long.
            let _ = tokio::time::timeout_at(judged_at.into(), changed).await;
        }
    }

    /// While every call in flight to `server` is younger than [`PROMPT`]: when the oldest one
    /// reaches that age. None when one already has, or none is in flight.
    fn undecided_until(&self, server: &str, now: Instant) -> Option<Instant> {
        let oldest = self.lock().get(server)?.started.iter().min().copied()?;
        Some(oldest + PROMPT).filter(|at| *at > now)
    }

    fn try_enter_at(self: &Arc<Self>, server: &str, now: Instant) -> Result<Permit, Busy> {
        let mut servers = self.lock();
        let answering = |entry: &Server| entry.prompt.is_some_and(|at| now.saturating_duration_since(at) < RECENT);
        let stuck = |entry: &Server| entry.started.iter().any(|at| now.saturating_duration_since(*at) >= PROMPT);
        let waiting = servers.get(server).map_or(0, |entry| entry.started.len());
        if !servers.get(server).is_some_and(answering) {
            let slow: usize = servers.values().filter(|entry| stuck(entry)).map(|entry| entry.started.len()).sum();
            let held = if waiting >= self.share {
                Some(format!("one server may keep {} of its {} reconcile workers waiting", self.share, self.workers))
            } else if servers.get(server).is_some_and(stuck) && slow >= self.slow_share {
                Some(format!(
                    "servers that do not answer promptly keep {slow} of its {} reconcile workers waiting, as many as they may together",
                    self.workers
                ))
            } else {
                None
            };
            if let Some(held) = held {
                return Err(Busy { server: server.to_owned(), waiting, held });
            }
        }
        servers.entry(server.to_owned()).or_default().started.push(now);
        Ok(Permit { held: Some((self.clone(), server.to_owned())), started: now })
    }

    fn answered(&self, server: &str, started: Instant, now: Instant) {
        if now.saturating_duration_since(started) < PROMPT
            && let Some(entry) = self.lock().get_mut(server)
        {
            entry.prompt = Some(now);
        }
        self.changed.notify_waiters();
    }

    fn leave(&self, server: &str, started: Instant) {
        let mut servers = self.lock();
        if let Some(entry) = servers.get_mut(server) {
            if let Some(at) = entry.started.iter().position(|at| *at == started) {
                entry.started.swap_remove(at);
            }
            // With nothing in flight, any call finds a place: the entry has nothing to remember.
            if entry.started.is_empty() {
                servers.remove(server);
            }
        }
        drop(servers);
        self.changed.notify_waiters();
    }

    #[cfg(test)]
    fn waiting(&self, server: &str) -> usize {
        self.lock().get(server).map_or(0, |s| s.started.len())
    }
}

impl Permit {
    /// The server answered the call (whatever it said): a prompt answer shows it answers.
    pub fn answered(&self) {
        if let Some((pool, server)) = &self.held {
            pool.answered(server, self.started, Instant::now());
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((pool, server)) = &self.held {
            pool.leave(server, self.started);
        }
    }
}

tokio::task_local! {
    /// The pool of the controller whose reconcile this is.
    static POOL: Arc<Pool>;
}

/// Runs `future` (a reconcile) with its calls to external servers counted in `pool`.
pub fn within<F: std::future::Future>(pool: Arc<Pool>, future: F) -> impl std::future::Future<Output = F::Output> {
    POOL.scope(pool, future)
}

/// A place for a call to the server of `url` in the current reconcile's pool (see
/// [`Pool::enter`]); any call outside a reconcile gets one at once. The pool is taken when this
/// is called, so the future may be awaited elsewhere.
pub fn enter(url: &str) -> impl std::future::Future<Output = Result<Permit, Busy>> + Send + 'static {
    let server = server_of(url);
    let pool = POOL.try_with(Arc::clone).ok();
    async move {
        match pool {
            Some(pool) => pool.enter(&server).await,
            None => Ok(Permit { held: None, started: Instant::now() }),
        }
    }
}

/// The server of `url`: its scheme, host and port (the scheme's default when not given), e.g.
/// `https://s3.eu-west-1.amazonaws.com:443`. What does not parse as a URL is its own server.
pub fn server_of(url: &str) -> String {
    let Ok(uri) = url.trim().parse::<http::Uri>() else { return url.trim().to_owned() };
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else { return url.trim().to_owned() };
    let scheme = scheme.to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if scheme == "http" { 80 } else { 443 });
    format!("{scheme}://{}:{port}", host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SILENT: &str = "http://127.0.0.1:9999";
    const OTHER: &str = "https://s3.example.com:443";

    #[test]
    fn a_server_keeps_at_most_its_share_of_the_workers_waiting() {
        let pool = Pool::new(16);
        let now = Instant::now();
        let held: Vec<Permit> = (0..4).map(|_| pool.try_enter_at(SILENT, now).expect("a place")).collect();
        let busy = pool.try_enter_at(SILENT, now).err().expect("the share of 4 of 16 is taken");
        assert_eq!(busy.waiting, 4);
        assert!(busy.to_string().contains(SILENT) && busy.to_string().contains("4 of its 16"), "{busy}");
        assert_eq!(pool.waiting(SILENT), 4, "a refused call takes no place");
        drop(held);
    }

    #[tokio::test]
    async fn a_burst_to_a_server_that_answers_waits_for_a_place_rather_than_failing() {
        let pool = Pool::new(16);
        let held: Vec<Permit> = (0..4).map(|_| pool.try_enter(OTHER).expect("a place")).collect();
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.enter(OTHER).await.map(|_| Instant::now()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the share is taken by calls just made: the fifth waits");
        let answered_at = Instant::now();
        held[0].answered();
        drop(held);
        let entered = waiting.await.unwrap().expect("a place once the server answered");
        assert!(
            entered.duration_since(answered_at) < PROMPT,
            "entered at the answer, not after a prompt answer's time"
        );
    }

    #[test]
    fn a_place_goes_back_when_its_permit_drops() {
        let pool = Pool::new(2);
        let first = pool.try_enter(SILENT).unwrap();
        assert!(pool.try_enter(SILENT).is_err());
        drop(first);
        assert_eq!(pool.waiting(SILENT), 0);
        let again = pool.try_enter(SILENT).expect("the place came back");
        drop(again);
        assert!(pool.lock().is_empty(), "a server with nothing in flight is forgotten");
    }

    #[test]
    fn servers_have_shares_of_their_own() {
        let pool = Pool::new(4);
        let _silent = pool.try_enter(SILENT).unwrap();
        assert!(pool.try_enter(SILENT).is_err());
        let other = pool.try_enter(OTHER).expect("another server is not held back");
        assert!(pool.try_enter(OTHER).is_err());
        drop(other);
        assert!(pool.try_enter(SILENT).is_err(), "freeing another server's place frees none of this one's");
        let other_pool = Pool::new(2);
        let _elsewhere = other_pool.try_enter(SILENT).expect("another controller's workers are its own");
    }

    #[test]
    fn a_server_that_answers_promptly_may_take_more_than_its_share() {
        let pool = Pool::new(8);
        let start = Instant::now();
        let fast = pool.try_enter_at(OTHER, start).unwrap();
        let _second = pool.try_enter_at(OTHER, start).unwrap();
        pool.answered(OTHER, fast.started, start + Duration::from_millis(20));
        let third = pool.try_enter_at(OTHER, start + Duration::from_millis(30));
        assert!(third.is_ok(), "it answers: the worker is not held long");
        // Once its answers stop (or come slowly), it is held to its share again.
        assert!(pool.try_enter_at(OTHER, start + Duration::from_millis(1100)).is_err());
        let slow = pool.try_enter_at(SILENT, start).unwrap();
        let _waiting = pool.try_enter_at(SILENT, start).unwrap();
        pool.answered(SILENT, slow.started, start + Duration::from_secs(3));
        assert!(pool.try_enter_at(SILENT, start + Duration::from_secs(3)).is_err(), "a slow answer is no sign");
    }

    #[test]
    fn silent_servers_together_keep_at_most_half_of_the_workers() {
        let pool = Pool::new(16);
        let silent: Vec<String> = (0..3).map(|port| format!("http://127.0.0.1:{}", 9000 + port)).collect();
        let start = Instant::now();
        let mut held = Vec::new();
        for server in &silent[..2] {
            while let Ok(permit) = pool.try_enter_at(server, start) {
                held.push(permit);
            }
        }
        assert_eq!(held.len(), 8, "two servers, a quarter each: half of the 16 workers");
        let later = start + Duration::from_secs(2);
        let first = pool.try_enter_at(&silent[2], later).expect("a third server's first call: it may answer");
        let busy = pool.try_enter_at(&silent[2], later + Duration::from_secs(2)).err().expect("then it is stuck too");
        assert!(busy.to_string().contains("do not answer promptly keep 9 of its 16"), "{busy}");
        drop(first);
        let prompt = pool.try_enter_at(OTHER, later).unwrap();
        pool.answered(OTHER, prompt.started, later + Duration::from_millis(10));
        let again = pool.try_enter_at(OTHER, later + Duration::from_millis(20));
        assert!(again.is_ok(), "a server that answers is held back by none");
    }

    #[test]
    fn a_pool_of_unlimited_workers_limits_nothing_and_one_worker_gets_one_place() {
        let unlimited = Pool::new(0);
        let held: Vec<Permit> = (0..100).map(|_| unlimited.try_enter(SILENT).unwrap()).collect();
        drop(held);
        let single = Pool::new(1);
        let _one = single.try_enter(SILENT).unwrap();
        assert!(single.try_enter(SILENT).is_err());
    }

    #[tokio::test]
    async fn calls_inside_a_reconcile_count_in_its_pool_and_others_in_none() {
        let pool = Pool::new(2);
        let mut outside = Vec::new();
        for _ in 0..5 {
            outside.push(enter(SILENT).await.unwrap());
        }
        assert_eq!(pool.waiting(SILENT), 0, "outside a reconcile nothing is counted");
        drop(outside);
        let started = Instant::now();
        let inside = within(pool.clone(), async {
            let first = enter("http://127.0.0.1:9999/api/v1/version").await.unwrap();
            (first, enter("HTTP://127.0.0.1:9999/api/v1/login").await)
        })
        .await;
        assert!(inside.1.is_err(), "the same server under another path and case");
        assert!(started.elapsed() >= PROMPT, "refused once the first call waited a prompt answer's time");
        assert_eq!(pool.waiting(SILENT), 1);
    }

    #[test]
    fn a_server_is_its_scheme_host_and_port() {
        assert_eq!(server_of("https://S3.Example.com/bucket/key?x=1"), "https://s3.example.com:443");
        assert_eq!(server_of("http://minio:9000"), "http://minio:9000");
        assert_eq!(server_of("http://zenml.example.com/"), "http://zenml.example.com:80");
        assert_eq!(server_of("https://[::1]:8443/"), "https://[::1]:8443");
        assert_eq!(server_of("not a url"), "not a url");
    }
}
