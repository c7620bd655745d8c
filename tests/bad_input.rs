//! The bad-input suite: malformed ArtifactStores and Stacks, each created on the real apiserver
//! and refused at admission (422) with the field named and a message that says what to fix, and
//! valid edge cases next to them accepted, so the rules are not broader than S3 and Kubernetes.

mod common;

use serde::Deserialize;
use serde_json::{Value, json};

/// One manifest and what the apiserver must answer.
struct Case {
    name: String,
    object: Value,
    expected: Expected,
}

enum Expected {
    /// Refused with exactly one cause naming `field` with `message` in its text: one mistake, one
    /// message.
    Refused {
        field: String,
        message: String,
    },
    Accepted,
}

/// The field the apiserver names for a rule at the root of an object (`metadata` cannot be a
/// rule's fieldPath); such a rule's message names the field itself.
const ROOT: &str = "<nil>";

/// The note the apiserver adds when a schema error (a length, a count) kept it from evaluating
/// the rules; it is not a second complaint.
const RULES_SKIPPED: &str = "some validation rules were not checked because the object was invalid";

fn refused(name: &str, object: Value, field: &str, message: &str) -> Case {
    let expected = Expected::Refused { field: field.to_owned(), message: message.to_owned() };
    Case { name: name.to_owned(), object, expected }
}

fn accepted(name: &str, object: Value) -> Case {
    Case { name: name.to_owned(), object, expected: Expected::Accepted }
}

/// A case of tests/cases/bad_input/*.yaml.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListedCase {
    /// What the case tries.
    name: String,
    /// Merged into the valid object of the kind (`store_named`, `stack_named`) as by [`merged`].
    patch: Value,
    /// Where refused, what the one cause must say; the object is then named `bad`.
    refused: Option<Refusal>,
    /// Where accepted, the name of the object created.
    accepted: Option<String>,
}

/// The field the one cause of a refusal names, and a part of its message.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Refusal {
    field: String,
    message: String,
}

impl ListedCase {
    /// The case, its object made by `named(object name, patch)`.
    fn case(self, named: fn(&str, Value) -> Value) -> Case {
        let (object, expected) = match (self.refused, self.accepted) {
            (Some(Refusal { field, message }), None) => ("bad".to_owned(), Expected::Refused { field, message }),
            (None, Some(object)) => (object, Expected::Accepted),
            _ => panic!("tests/cases/bad_input: {:?} must say one of refused and accepted", self.name),
        };
        Case { name: self.name, object: named(&object, self.patch), expected }
    }
}

/// The cases of tests/cases/`file`, their objects made by `named`.
fn listed_cases(file: &str, named: fn(&str, Value) -> Value) -> Vec<Case> {
    common::cases::<ListedCase>(file).into_iter().map(|case| case.case(named)).collect()
}

/// `patch` merged into `base` as a JSON merge patch (RFC 7386): objects merge, null removes.
fn merged(mut base: Value, patch: Value) -> Value {
    if let (Some(target), Value::Object(changes)) = (base.as_object_mut(), &patch) {
        for (key, value) in changes {
            if value.is_null() {
                target.remove(key);
            } else {
                let current = target.remove(key).unwrap_or(Value::Null);
                target.insert(key.clone(), merged(current, value.clone()));
            }
        }
        base
    } else {
        patch
    }
}

/// An ArtifactStore named `name`: a valid store with keys from a Secret, changed by `patch`.
fn store_named(name: &str, patch: Value) -> Value {
    let valid = json!({"path": "s3://ml-artifacts/team-a", "auth": {"secretRef": {"name": "minio-keys"}}});
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": name}, "spec": merged(valid, patch)})
}

fn store(patch: Value) -> Value {
    store_named("bad", patch)
}

/// A store that creates its bucket with these tags.
fn store_tagged(name: &str, tags: Value) -> Value {
    store_named(name, json!({"provisioning": "Create", "bucket": {"tags": tags}}))
}

/// A Stack named `name`: a valid Kubernetes-orchestrated stack, changed by `patch`.
fn stack_named(name: &str, patch: Value) -> Value {
    let valid = json!({"artifactStoreRef": {"name": "ml"}, "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"}});
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": merged(valid, patch)})
}

/// `n` tags `t0`..: `v`.
fn many_tags(n: usize) -> Value {
    (0..n).map(|i| (format!("t{i}"), json!("v"))).collect::<serde_json::Map<_, _>>().into()
}

/// The cases at the limit of metadata.name, for an object made by `named(name, patch)`: 64
/// characters are refused, 63 accepted.
fn name_length_cases(named: fn(&str, Value) -> Value) -> Vec<Case> {
    vec![
        refused(
            "name of 64 characters",
            named(&"s".repeat(64), json!({})),
            ROOT,
            "metadata.name must be at most 63 characters",
        ),
        accepted("name of 63 characters", named(&"s".repeat(63), json!({}))),
    ]
}

/// Applies every case to a fresh namespace and fails, naming each case, when any answer differs
/// from the expected one.
async fn run(test: &str, cases: Vec<Case>) {
    let (client, ns) = common::setup(test).await;
    let mut failures = Vec::new();
    for case in &cases {
        let answer = common::try_create(&client, &ns, case.object.clone()).await;
        if let Some(problem) = judge(&case.expected, answer) {
            failures.push(format!("{}: {problem}", case.name));
        } else {
            println!("{}: as expected", case.name);
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// What is wrong with `answer`, if anything.
fn judge(expected: &Expected, answer: Result<(), kube::Error>) -> Option<String> {
    match (expected, answer) {
        (Expected::Accepted, Ok(())) => None,
        (Expected::Accepted, Err(error)) => Some(format!("refused: {error}")),
        (Expected::Refused { .. }, Ok(())) => Some("accepted".to_owned()),
        (Expected::Refused { field, message }, Err(kube::Error::Api(status))) => {
            let causes = status.details.as_ref().map(|d| d.causes.as_slice()).unwrap_or_default();
            let causes = causes.iter().filter(|c| !c.message.contains(RULES_SKIPPED)).collect::<Vec<_>>();
            let summary = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>();
            if status.code != 422 {
                Some(format!("answered {} rather than 422: {}", status.code, status.message))
            } else if causes.len() != 1 {
                Some(format!("{} causes rather than one: {summary:?}", causes.len()))
            } else if causes[0].field != *field || !causes[0].message.contains(message) {
                Some(format!("cause {summary:?} does not name {field:?} with {message:?}"))
            } else {
                None
            }
        }
        (Expected::Refused { .. }, Err(error)) => Some(format!("failed without an apiserver answer: {error}")),
    }
}

#[tokio::test]
async fn malformed_artifact_stores_are_refused_with_the_field_named() {
    // The cases made by length or count; tests/cases/bad_input/ spells out the others.
    let mut cases = name_length_cases(store_named);
    cases.extend([
        refused(
            "Secret name of 254 characters",
            store(json!({"auth": {"secretRef": {"name": "k".repeat(254)}}})),
            "spec.auth.secretRef.name",
            "253",
        ),
        refused(
            "tag key of 129 characters",
            store_tagged("bad", json!({"k".repeat(129): "v"})),
            "spec.bucket.tags",
            "bucket tag keys must be 1 to 128 characters long",
        ),
        refused(
            "tag value of 257 characters",
            store_tagged("bad", json!({"team": "v".repeat(257)})),
            "spec.bucket.tags.team",
            "256",
        ),
        refused(
            "50 tags besides the operator's",
            store_tagged("bad", many_tags(50)),
            "spec.bucket.tags",
            "must have at most 49 items",
        ),
        accepted(
            "tag key of 128 and value of 256 characters",
            store_tagged("long-tag", json!({"k".repeat(128): "v".repeat(256), "empty": ""})),
        ),
        accepted("49 tags", store_tagged("many-tags", many_tags(49))),
    ]);
    cases.extend(listed_cases("bad_input/stores.yaml", store_named));
    run("bad-input-stores", cases).await;
}

#[tokio::test]
async fn malformed_stacks_are_refused_with_the_field_named() {
    // The names made by length; tests/cases/bad_input/ spells out the other cases.
    let mut cases = name_length_cases(stack_named);
    cases.extend(listed_cases("bad_input/stacks.yaml", stack_named));
    run("bad-input-stacks", cases).await;
}

/// The fixture reads without a cluster, each case says one answer, and no two cases of a kind
/// share a name.
#[test]
fn the_listed_cases_are_well_formed() {
    let stores = listed_cases("bad_input/stores.yaml", store_named);
    let stacks = listed_cases("bad_input/stacks.yaml", stack_named);
    for cases in [stores, stacks] {
        let names = cases.iter().map(|case| case.name.as_str()).collect::<std::collections::BTreeSet<_>>();
        assert!(!cases.is_empty() && names.len() == cases.len(), "{} cases, {} names", cases.len(), names.len());
    }
}
