//! Leader election on a coordination.k8s.io Lease: one replica reconciles, the others wait and take
//! over when the leader stops renewing. A leader that cannot renew in time exits at once, so it
//! never writes after another replica may have taken over.
//!
//! Every attempt on the lease has a time limit: an apiserver that stops answering while its
//! connections stay open would otherwise hold a leader in its call past the renew deadline, and a
//! standby out of its readiness, for as long as it hangs.
//!
//! Replicas run on different nodes, whose clocks differ. A standby therefore judges expiry twice:
//! by the Lease's renewTime on its own clock, with [`CLOCK_SKEW_GRACE`] added (a standby whose
//! clock runs ahead by less than that never takes a lease still being renewed); and by how long it
//! has itself seen the Lease unchanged, on its monotonic clock (a standby whose clock runs behind
//! still takes over a leader that stopped, as late as the lease's duration plus the grace).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::controller::health::{Health, NoAnswer};
pub use crate::controller::timing::LEASE_DURATION;

/// How often the leader renews, and how often a follower retries.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// A leader that has not renewed for this long gives up (before the lease can expire).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How far two replicas' clocks may differ: a lease counts as expired only this long after its
/// duration has run out. With [`RENEW_DEADLINE`] that leaves a leader that lost the apiserver
/// 7 s of margin between its exit and the earliest takeover.
pub const CLOCK_SKEW_GRACE: Duration = Duration::from_secs(2);
/// How long a standby's attempt on the lease, or a release, may wait for the apiserver.
pub const LEASE_CALL_TIMEOUT: Duration = RENEW_INTERVAL;
/// The least time a leader's renewal gets: an attempt that starts at the renew deadline (the one
/// before failed at once) may still renew. A leader that cannot renew exits by [`RENEW_DEADLINE`],
/// or this much after it, still well before a standby may take over.
pub const LAST_TRY: Duration = Duration::from_secs(1);

/// Why an attempt on the lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseCallError {
    #[error(transparent)]
    Failed(#[from] kube::Error),
    #[error(transparent)]
    Unanswered(#[from] NoAnswer),
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// Told of every lease read and failed lease call: a standby is ready while it reads the lease.
    health: Arc<Health>,
    /// The other holder's record (identity and renewTime) as last read, and when this replica
    /// first read it so: a record unchanged for longer than the lease lasts was not renewed.
    observed: Mutex<Option<(Record, tokio::time::Instant)>>,
}

/// What tells one renewal of a Lease from the next: its holder and renewTime.
type Record = (Option<String>, Option<jiff::Timestamp>);

/// What the Lease says about who may lead.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Mine,
    Free,
    HeldByOther,
}

/// Who may lead, by `lease` as read `now` (on this replica's clock) after this replica has seen
/// it unchanged for `unchanged_for`.
fn verdict(lease: &LeaseSpec, identity: &str, now: jiff::Timestamp, unchanged_for: Duration) -> Verdict {
    if lease.holder_identity.as_deref() == Some(identity) {
        return Verdict::Mine;
    }
    let duration = lease.lease_duration_seconds.map_or(LEASE_DURATION.as_secs() as i64, i64::from);
    let lasts = Duration::from_secs(duration.max(0) as u64) + CLOCK_SKEW_GRACE;
    let expired_by_renew_time = match &lease.renew_time {
        Some(MicroTime(renewed)) => now.duration_since(*renewed).try_into().is_ok_and(|age: Duration| age > lasts),
        None => true,
    };
    let expired = expired_by_renew_time || unchanged_for > lasts;
    if lease.holder_identity.as_deref().unwrap_or_default().is_empty() || expired {
        Verdict::Free
    } else {
        Verdict::HeldByOther
    }
}

/// How long a renewal may wait when the lease was last renewed `since_renewal` ago: until the
/// renew deadline, and at least [`LAST_TRY`].
fn renewal_time_left(since_renewal: Duration) -> Duration {
    RENEW_DEADLINE.saturating_sub(since_renewal).max(LAST_TRY)
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: String, health: Arc<Health>) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity,
            health,
            observed: Mutex::new(None),
        }
    }

    /// How long this replica has seen `lease` with the same holder and renewTime.
    fn unchanged_for(&self, lease: &LeaseSpec) -> Duration {
        let record: Record = (lease.holder_identity.clone(), lease.renew_time.as_ref().map(|t| t.0));
        let now = tokio::time::Instant::now();
        let mut observed = self.observed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match observed.as_ref() {
            Some((seen, since)) if *seen == record => now.duration_since(*since),
            _ => {
                *observed = Some((record, now));
                Duration::ZERO
            }
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to take or renew the lease within `within`, told to `health`. Ok(true) when this
    /// replica holds it now.
    async fn try_acquire_or_renew(&self, within: Duration) -> Result<bool, LeaseCallError> {
        let sent = std::time::Instant::now();
        match tokio::time::timeout(within, self.read_then_take_or_renew()).await {
            Ok(Ok(held)) => Ok(held),
            Ok(Err(error)) => {
                self.health.lease_call_failed(&error);
                Err(error.into())
            }
            Err(_) => {
                let error = NoAnswer { request: "the lease calls", within };
                self.health.lease_call_unanswered(sent, &error);
                Err(error.into())
            }
        }
    }

    async fn read_then_take_or_renew(&self) -> Result<bool, kube::Error> {
        let lease = self.api.get_opt(&self.name).await?;
        self.health.lease_read();
        let Some(mut lease) = lease else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let unchanged_for = self.unchanged_for(&current);
        let spec = match verdict(&current, &self.identity, jiff::Timestamp::now(), unchanged_for) {
            Verdict::HeldByOther => return Ok(false),
            Verdict::Mine => self.spec(current.lease_transitions.unwrap_or_default(), current.acquire_time.clone()),
            Verdict::Free => self.spec(current.lease_transitions.unwrap_or_default() + 1, None),
        };
        lease.spec = Some(spec);
        // replace carries the resourceVersion: two replicas racing for a free lease cannot both win.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew(LEASE_CALL_TIMEOUT).await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired the lease; leading");
                    return;
                }
                Ok(false) => tracing::debug!(lease = %self.name, "another replica leads; waiting"),
                Err(error) => tracing::warn!(%error, "failed to read or take the lease"),
            }
            tokio::time::sleep(RENEW_INTERVAL).await;
        }
    }

    /// Gives the lease up on a graceful shutdown, so that a standby takes over at its next try
    /// instead of waiting for the lease to expire. Failing to is logged: the lease expires anyway.
    pub async fn release(&self) {
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(false) };
            let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(&self.identity))
            else {
                return Ok(false);
            };
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
            // The resourceVersion in `lease` makes this fail rather than free a lease taken meanwhile.
            self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| true)
        };
        let result = match tokio::time::timeout(LEASE_CALL_TIMEOUT, release).await {
            Ok(result) => result.map_err(LeaseCallError::from),
            Err(_) => Err(NoAnswer { request: "the lease calls", within: LEASE_CALL_TIMEOUT }.into()),
        };
        match result {
            Ok(true) => tracing::info!(lease = %self.name, "released the lease"),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, lease = %self.name, "failed to release the lease; it will expire"),
        }
    }

    /// Renews the lease until it cannot; returns when leadership is lost (the caller must stop).
    /// Each attempt may wait until the renew deadline (at least [`LAST_TRY`]).
    pub async fn keep_renewing(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_INTERVAL).await;
            let within = renewal_time_left(last_renewal.elapsed());
            match self.try_acquire_or_renew(within).await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.name, "another replica took the lease");
                    return;
                }
                Err(error) => tracing::warn!(%error, "failed to renew the lease"),
            }
            if last_renewal.elapsed() >= RENEW_DEADLINE {
                tracing::error!(lease = %self.name, "could not renew the lease in time");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease renewed `renewed_secs_ago` before [`now`] (negative: after it).
    fn lease(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now() - jiff::SignedDuration::from_secs(renewed_secs_ago))),
            ..LeaseSpec::default()
        }
    }

    const JUST_READ: Duration = Duration::ZERO;

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// What "me" makes at [`now`] of a lease `holder` renewed `renewed_secs_ago`, just read.
    fn verdict_on(holder: &str, renewed_secs_ago: i64) -> Verdict {
        verdict(&lease(holder, renewed_secs_ago), "me", now(), JUST_READ)
    }

    #[test]
    fn a_lease_is_free_only_when_expired_or_unheld() {
        assert_eq!(verdict_on("me", 100), Verdict::Mine);
        assert_eq!(verdict_on("other", 3), Verdict::HeldByOther);
        assert_eq!(verdict_on("other", 18), Verdict::Free);
        assert_eq!(verdict_on("", 0), Verdict::Free);
    }

    #[test]
    fn a_standby_whose_clock_runs_ahead_waits_out_the_grace() {
        // Renewed 16 s ago by this replica's clock, which may run up to 2 s ahead of the leader's.
        let verdicts = [16, 17, 18].map(|secs_ago| verdict_on("other", secs_ago));
        assert_eq!(verdicts, [Verdict::HeldByOther, Verdict::HeldByOther, Verdict::Free]);
    }

    #[test]
    fn a_standby_whose_clock_runs_behind_still_takes_over_a_stopped_leader() {
        // The leader's clock is a minute ahead: its last renewTime looks like the future here.
        let from_the_future = lease("other", -60);
        let verdicts = [5, 17, 18].map(|secs| verdict(&from_the_future, "me", now(), Duration::from_secs(secs)));
        assert_eq!(verdicts, [Verdict::HeldByOther, Verdict::HeldByOther, Verdict::Free]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_counts_as_unchanged_from_when_this_replica_first_read_it() {
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        // No request is made: a client whose calls would go to a mock nobody answers.
        let (service, _handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = Client::new(service, "default");
        let elector = LeaderElector::new(client, "ns", "lease", "me".to_owned(), health);
        let first = lease("other", 1);
        assert_eq!(elector.unchanged_for(&first), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(elector.unchanged_for(&first), Duration::from_secs(7));
        // A renewal is a new record: counted from now.
        let renewed = lease("other", 0);
        assert_eq!(elector.unchanged_for(&renewed), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(elector.unchanged_for(&renewed), Duration::from_secs(3));
    }

    #[test]
    fn a_renewal_may_wait_until_the_deadline_and_at_least_a_last_try() {
        assert_eq!(renewal_time_left(Duration::ZERO), RENEW_DEADLINE);
        assert_eq!(renewal_time_left(RENEW_INTERVAL), RENEW_DEADLINE - RENEW_INTERVAL);
        assert_eq!(renewal_time_left(Duration::from_millis(9500)), LAST_TRY);
        assert_eq!(renewal_time_left(RENEW_DEADLINE + Duration::from_millis(20)), LAST_TRY);
        // Even the last try ends well before a standby may take over.
        assert!(RENEW_DEADLINE + LAST_TRY + Duration::from_secs(5) < LEASE_DURATION + CLOCK_SKEW_GRACE);
    }

    /// An elector whose apiserver takes every request and never answers (while the handle lives).
    fn unanswered_elector(
        health: Arc<Health>,
    ) -> (LeaderElector, tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>)
    {
        let (service, handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        (LeaderElector::new(client, "ns", "lease", "me".to_owned(), health), handle)
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_apiserver_stops_answering_gives_up_at_the_renew_deadline() {
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let (elector, _handle) = unanswered_elector(health.clone());
        let start = tokio::time::Instant::now();
        elector.keep_renewing().await;
        assert_eq!(start.elapsed(), RENEW_DEADLINE);
        health.set_role(crate::controller::health::Role::Standby);
        let why = health.readiness(std::time::Instant::now()).unwrap_err();
        assert!(why.ends_with(": no answer to the lease calls within 5s"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_whose_apiserver_stops_answering_keeps_trying_and_says_why() {
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        health.set_role(crate::controller::health::Role::Standby);
        let (elector, _handle) = unanswered_elector(health.clone());
        let waited = tokio::time::timeout(Duration::from_secs(60), elector.acquire()).await;
        assert!(waited.is_err(), "no lease without an answer");
        let why = health.readiness(std::time::Instant::now()).unwrap_err();
        assert!(why.starts_with("standing by, but could not read the lease for "), "{why}");
        assert!(why.ends_with(": no answer to the lease calls within 5s"), "{why}");
    }
}
