//! Status conditions in tests: reading an ArtifactStore's or a Stack's conditions, and waiting
//! until one of them shows what a test expects for the object's current generation.

use std::fmt;
use std::time::Duration;

use artifact_operator::api::{ArtifactStore, Condition, Stack};
use kube::api::Api;
use kube::core::NamespaceResourceScope;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

/// How often a wait reads the object again.
const POLL: Duration = Duration::from_millis(200);

/// An object whose status carries conditions: an ArtifactStore or a Stack.
pub trait WithConditions:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug
{
    /// The status conditions; empty before the operator's first status write.
    fn conditions(&self) -> &[Condition];
}

impl WithConditions for ArtifactStore {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl WithConditions for Stack {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

/// The condition `type_` of `object`, if its status has one.
pub fn find<'a, K: WithConditions>(object: &'a K, type_: &str) -> Option<&'a Condition> {
    object.conditions().iter().find(|c| c.type_ == type_)
}

/// Whether `object`'s condition `type_` is True (for whichever generation it was written).
pub fn is_true<K: WithConditions>(object: &K, type_: &str) -> bool {
    find(object, type_).is_some_and(|c| c.status == "True")
}

/// The message of `object`'s condition `type_`; panics when it has none.
pub fn message<K: WithConditions>(object: &K, type_: &str) -> String {
    find(object, type_).unwrap_or_else(|| panic!("no {type_} condition on {object:?}")).message.to_string()
}

/// The status, reason and message of `object`'s condition `type_`, if it has one.
pub fn status_reason_message<K: WithConditions>(object: &K, type_: &str) -> Option<(String, String, String)> {
    find(object, type_).map(|c| (c.status.to_string(), c.reason.to_string(), c.message.to_string()))
}

/// What a condition must show, for the object's current generation, to end a wait.
#[derive(Clone, Copy, Debug)]
pub enum Wanted<'a> {
    /// This status with this reason.
    Is { status: &'a str, reason: &'a str },
    /// True, whatever the reason.
    True,
    /// Final: True or False, no longer Unknown.
    Settled,
}

impl Wanted<'_> {
    fn is_met_by(&self, condition: &Condition) -> bool {
        match *self {
            Wanted::Is { status, reason } => condition.status == status && condition.reason == reason,
            Wanted::True => condition.status == "True",
            Wanted::Settled => condition.status != "Unknown",
        }
    }
}

impl fmt::Display for Wanted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wanted::Is { status, reason } => write!(f, "={status} ({reason})"),
            Wanted::True => write!(f, "=True"),
            Wanted::Settled => write!(f, " settled (not Unknown)"),
        }
    }
}

/// Waits until the condition `type_` of the object `ns/name` shows what `wanted` says, written
/// for the object's current generation, and returns the object. Reads it every 200 ms; a read
/// that fails is tried again. After `timeout` it panics naming what it waited for and the
/// condition (or the error) as last seen.
pub async fn wait_for_condition<K: WithConditions>(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    wanted: Wanted<'_>,
    timeout: Duration,
) -> K {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut last = String::from("nothing");
    let reached = tokio::time::timeout(timeout, async {
        loop {
            match api.get_opt(name).await {
                Ok(Some(object)) => {
                    if let Some(c) = find(&object, type_) {
                        last = format!("{}={} ({}): {}", c.type_, c.status, c.reason, c.message);
                        if wanted.is_met_by(c) && c.observed_generation == object.meta().generation {
                            return object;
                        }
                    }
                }
                Ok(None) => last = "no such object".to_owned(),
                Err(error) => last = format!("an error reading it: {error}"),
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    reached.unwrap_or_else(|_| {
        let kind = K::kind(&());
        panic!("timed out after {timeout:?} waiting for {kind} {ns}/{name} {type_}{wanted}; last seen {last}")
    })
}
