//! Kubernetes conditions: `lastTransitionTime` moves only when a condition's status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{Condition, Word};
use crate::reason::Reason;

pub use crate::api::condition::{
    BUCKET_READY, CREDENTIALS_VALID, READY, SCOPED_CREDENTIALS, WORKLOAD_ACCESS_VERIFIED, ZENML_SYNCED,
};

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
    pub fn is_false(self) -> bool {
        self == Self::False
    }
}

/// A condition as computed by a reconciler, before it is merged into the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: Status,
    pub reason: Reason,
    pub message: String,
}

impl Observed {
    pub fn ok(type_: &'static str, reason: Reason, message: impl Into<String>) -> Self {
        Self { type_, status: Status::True, reason, message: message.into() }
    }
    pub fn unknown(type_: &'static str, reason: Reason, message: impl Into<String>) -> Self {
        Self { type_, status: Status::Unknown, reason, message: message.into() }
    }
    pub fn failed(type_: &'static str, reason: Reason, message: impl Into<String>) -> Self {
        Self { type_, status: Status::False, reason, message: message.into() }
    }
}

/// A change worth an Event: a condition appeared or its status or reason changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub observed: Observed,
}

/// Merges observed conditions into `previous`, keeping `lastTransitionTime` of conditions whose
/// status did not change. Returns the new list (in the order observed) and the transitions.
pub fn merge(
    previous: &[Condition],
    observed: &[Observed],
    generation: Option<i64>,
    now: &Time,
) -> (Vec<Condition>, Vec<Transition>) {
    let mut transitions = Vec::new();
    let merged = observed
        .iter()
        .map(|o| {
            let status = o.status.as_str();
            let old = previous.iter().find(|c| c.type_ == o.type_);
            let last_transition_time = match old {
                Some(old) if old.status == status => old.last_transition_time.clone(),
                _ => now.clone(),
            };
            if old.is_none_or(|old| old.status != status || old.reason != o.reason.as_str()) {
                transitions.push(Transition { observed: o.clone() });
            }
            Condition {
                type_: Word::new(o.type_),
                status: Word::new(status),
                reason: Word::new(o.reason.as_str()),
                message: Word::new(&o.message),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    (merged, transitions)
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The Ready condition's status as a static label: True, False, or Unknown when absent or unknown.
pub fn ready_label(conditions: &[Condition]) -> &'static str {
    match find(conditions, READY).map(|c| c.status.as_str()) {
        Some("True") => "True",
        Some("False") => "False",
        _ => "Unknown",
    }
}

/// A resource whose status carries conditions.
pub trait HasConditions {
    /// The status conditions; empty before the first status write.
    fn conditions(&self) -> &[Condition];
}

impl HasConditions for crate::api::ArtifactStore {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

/// A watched object that did not deserialize has no conditions we can read.
impl<K: HasConditions> HasConditions for kube::core::DeserializeGuard<K> {
    fn conditions(&self) -> &[Condition] {
        self.0.as_ref().map_or(&[], HasConditions::conditions)
    }
}

impl HasConditions for crate::api::Stack {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

/// Whether `type_` is True and describes `generation`.
pub fn is_true_for(conditions: &[Condition], type_: &str, generation: Option<i64>) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True" && c.observed_generation == generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn keeps_transition_time_when_status_is_unchanged() {
        let (first, transitions) =
            merge(&[], &[Observed::failed(READY, Reason::BucketNotFound, "m")], Some(1), &time(10));
        assert_eq!(transitions.len(), 1);
        let (second, transitions) =
            merge(&first, &[Observed::failed(READY, Reason::BucketNotFound, "m2")], Some(2), &time(20));
        assert!(transitions.is_empty());
        assert_eq!(second[0].last_transition_time, time(10));
        assert_eq!(second[0].observed_generation, Some(2));
        assert_eq!(second[0].message, "m2");
    }

    #[test]
    fn moves_transition_time_and_reports_on_change() {
        let (first, _) = merge(&[], &[Observed::failed(READY, Reason::BucketNotFound, "m")], Some(1), &time(10));
        let (second, transitions) = merge(&first, &[Observed::ok(READY, Reason::Ready, "ok")], Some(1), &time(20));
        assert_eq!(second[0].last_transition_time, time(20));
        assert_eq!(second[0].status, "True");
        assert_eq!(transitions, vec![Transition { observed: Observed::ok(READY, Reason::Ready, "ok") }]);
        let (_, transitions) =
            merge(&second, &[Observed::failed(READY, Reason::AccessDenied, "x")], Some(1), &time(30));
        assert_eq!(transitions.len(), 1);
        assert!(is_true_for(&second, READY, Some(1)));
        assert!(!is_true_for(&second, READY, Some(2)));
    }
}
