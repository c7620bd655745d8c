//! What the operator knows from an object's metadata alone (what its watches see) about what it
//! wrote there: that a whole object still holds what it published ([`published`]), and that a
//! part of a shared one still does ([`parts`]).
//!
//! A shared ConfigMap's parts: Argo's `artifact-repositories` holds a key a Stack, each
//! written by server-side apply with that Stack's own field manager, beside other Stacks' keys and
//! the user's. What a field manager owns says whose a part is. With its key, each part applies an
//! annotation of its own holding the digest of what it applied: as long as its manager owns both,
//! nobody has changed either since (a change by anyone else takes the field from it), so the
//! metadata watch alone tells a restarted process that the part still holds what it wrote
//! ([`parts`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::core::ObjectMeta;
use serde_json::Value;

/// The one field manager for everything this operator writes.
pub const FIELD_MANAGER: &str = "artifact-operator";

/// The annotation with the digest of what the operator published an object as (hex): with the
/// field managers, what tells a restarted process, from the watch alone, that the object still
/// holds what it wrote.
pub const PUBLISHED_DIGEST_ANNOTATION: &str = "artifacts.dev/published-digest";

/// The digest an object was published with ([`PUBLISHED_DIGEST_ANNOTATION`]), when
/// every field manager that wrote it is this operator's: a user's change to it (an edit, an
/// apply, a replace) adds a manager of theirs, and then it is read whole again.
pub fn published(meta: &ObjectMeta) -> Option<u64> {
    let digest = meta.annotations.as_ref()?.get(PUBLISHED_DIGEST_ANNOTATION)?;
    let managers = meta.managed_fields.as_deref().filter(|entries| !entries.is_empty())?;
    managers
        .iter()
        .all(|entry| entry.manager.as_deref() == Some(FIELD_MANAGER))
        .then(|| u64::from_str_radix(digest, 16).ok())
        .flatten()
}

/// The field manager of part `part` (a Stack's name).
pub fn part_manager(part: &str) -> String {
    format!("{FIELD_MANAGER}/stack/{part}")
}

/// The part a field manager writes, if it is a part's manager.
fn part_of(manager: &str) -> Option<&str> {
    manager.strip_prefix(FIELD_MANAGER)?.strip_prefix("/stack/").filter(|part| !part.is_empty())
}

/// The annotation holding the digest of what part `part` applied (a Stack's name fits an
/// annotation's name: at most 63 characters, a DNS label's).
pub fn part_digest_annotation(part: &str) -> String {
    format!("parts.artifacts.dev/{part}")
}

/// The annotation's value for `digest`.
pub fn digest_value(digest: u64) -> String {
    format!("{digest:016x}")
}

/// What one field manager owns of a shared ConfigMap, by its applies.
#[derive(Debug, Default, PartialEq)]
pub struct Fields {
    pub data_keys: Vec<String>,
    pub annotations: Vec<String>,
}

impl Fields {
    pub fn key(&self, key: &str) -> bool {
        self.data_keys.iter().any(|k| k == key)
    }

    pub fn annotation(&self, annotation: &str) -> bool {
        self.annotations.iter().any(|a| a == annotation)
    }

    pub fn anything(&self) -> bool {
        !self.data_keys.is_empty() || !self.annotations.is_empty()
    }
}

fn applies(meta: &ObjectMeta) -> impl Iterator<Item = &ManagedFieldsEntry> {
    meta.managed_fields.iter().flatten().filter(|e| e.operation.as_deref() == Some("Apply"))
}

/// What `manager`'s applies own of the ConfigMap `meta` describes.
pub fn owned(meta: &ObjectMeta, manager: &str) -> Fields {
    let mut owned = Fields::default();
    for entry in applies(meta).filter(|e| e.manager.as_deref() == Some(manager)) {
        owned.add(entry);
    }
    owned
}

impl Fields {
    /// Adds what `entry` owns of the data and the annotations.
    fn add(&mut self, entry: &ManagedFieldsEntry) {
        let Some(fields) = entry.fields_v1.as_ref().map(|f| &f.0) else { return };
        self.data_keys.extend(names(fields.get("f:data")));
        self.annotations.extend(names(fields.pointer("/f:metadata/f:annotations")));
    }
}

/// The names of a managedFields map's fields (`f:NAME`).
fn names(fields: Option<&Value>) -> impl Iterator<Item = String> + '_ {
    fields
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|map| map.keys())
        .filter_map(|k| k.strip_prefix("f:"))
        .map(str::to_owned)
}

/// What each part's manager owns, by part, in one pass over the managed fields: only this
/// operator's per-part managers, never a user's.
fn fields_by_part(meta: &ObjectMeta) -> BTreeMap<&str, Fields> {
    let mut by_part: BTreeMap<&str, Fields> = BTreeMap::new();
    for entry in applies(meta) {
        if let Some(part) = entry.manager.as_deref().and_then(part_of) {
            by_part.entry(part).or_default().add(entry);
        }
    }
    by_part
}

/// The parts whose managers own something of the ConfigMap `meta` describes, in order.
pub fn parts_with_fields(meta: &ObjectMeta) -> Vec<String> {
    fields_by_part(meta).into_keys().map(str::to_owned).collect()
}

/// The part whose manager owns key `key`, if one does.
pub fn part_owning_key(meta: &ObjectMeta, key: &str) -> Option<String> {
    fields_by_part(meta).into_iter().find(|(_, fields)| fields.key(key)).map(|(part, _)| part.to_owned())
}

/// What a part's manager holds of the ConfigMap, as the metadata watch sees it, when it still
/// holds its own key (the part's name) and its digest annotation: the digest it applied, and
/// which other annotations it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct PartClaim {
    pub digest: u64,
    pub annotations: Box<[Box<str>]>,
}

/// The claim of part `part`, which owns `fields` of the ConfigMap `meta` describes.
fn claim(meta: &ObjectMeta, part: &str, fields: &Fields) -> Option<PartClaim> {
    let annotation = part_digest_annotation(part);
    if !fields.key(part) || !fields.annotation(&annotation) {
        return None;
    }
    let digest = u64::from_str_radix(meta.annotations.as_ref()?.get(&annotation)?, 16).ok()?;
    let others = fields.annotations.iter().filter(|a| **a != annotation).map(|a| a.as_str().into()).collect();
    Some(PartClaim { digest, annotations: others })
}

/// The claim of part `part` of the ConfigMap `meta` describes, if it has one.
pub fn part_claim(meta: &ObjectMeta, part: &str) -> Option<PartClaim> {
    claim(meta, part, &owned(meta, &part_manager(part)))
}

/// Every part of the ConfigMap `meta` describes (whose manager owns something there), with its
/// claim where it has one (see [`PartClaim`]).
pub fn parts(meta: &ObjectMeta) -> Vec<(Box<str>, Option<PartClaim>)> {
    fields_by_part(meta).iter().map(|(part, fields)| ((*part).into(), claim(meta, part, fields))).collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
    use serde_json::json;

    use super::*;

    fn entry(manager: &str, operation: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            operation: Some(operation.to_owned()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    fn shared(entries: Vec<ManagedFieldsEntry>, annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            managed_fields: Some(entries),
            annotations: Some(annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..ObjectMeta::default()
        }
    }

    fn part(name: &str, extra: &[&str]) -> ManagedFieldsEntry {
        let mut annotations = json!({ format!("f:{}", part_digest_annotation(name)): {} });
        for annotation in extra {
            annotations[format!("f:{annotation}")] = json!({});
        }
        let fields = json!({"f:data": { format!("f:{name}"): {} }, "f:metadata": {"f:annotations": annotations}});
        entry(&part_manager(name), "Apply", fields)
    }

    fn meta(managers: &[&str], digest: Option<&str>) -> ObjectMeta {
        serde_json::from_value(json!({
            "name": "ml-stack",
            "annotations": digest.map(|d| json!({PUBLISHED_DIGEST_ANNOTATION: d})),
            "managedFields": managers.iter().map(|m| json!({"manager": m, "operation": "Update"})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn only_what_nobody_else_wrote_is_claimed() {
        assert_eq!(published(&meta(&[FIELD_MANAGER], Some("00000000000000ff"))), Some(255));
        assert_eq!(published(&meta(&[FIELD_MANAGER, "kubectl-edit"], Some("ff"))), None, "a user's edit");
        assert_eq!(published(&meta(&["kubectl-client-side-apply"], Some("ff"))), None, "copied by someone else");
        assert_eq!(published(&meta(&[FIELD_MANAGER], None)), None, "written before digests");
        assert_eq!(published(&meta(&[], Some("ff"))), None, "no record of who wrote it");
        assert_eq!(published(&meta(&[FIELD_MANAGER], Some("not hex"))), None);
    }

    #[test]
    fn a_part_is_claimed_only_while_its_manager_holds_its_key_and_its_digest() {
        let default = "workflows.argoproj.io/default-artifact-repository";
        let meta = shared(
            vec![
                part("prod", &[default]),
                // A user's edit took dev's key from its manager.
                entry(
                    &part_manager("dev"),
                    "Apply",
                    json!({"f:metadata": {"f:annotations": {"f:parts.artifacts.dev/dev": {}}}}),
                ),
                entry("kubectl-edit", "Update", json!({"f:data": {"f:dev": {}}})),
                // Stage applied before digests; qa's digest is not one.
                entry(&part_manager("stage"), "Apply", json!({"f:data": {"f:stage": {}}})),
                part("qa", &[]),
                entry("helm", "Apply", json!({"f:data": {"f:mine": {}}})),
            ],
            &[
                (&part_digest_annotation("prod"), &digest_value(255)),
                (&part_digest_annotation("dev"), &digest_value(1)),
                (&part_digest_annotation("qa"), "not hex"),
                (default, "prod"),
            ],
        );
        let prod = PartClaim { digest: 255, annotations: vec![default.into()].into() };
        let claims = parts(&meta);
        let expected = [("dev", None), ("prod", Some(prod.clone())), ("qa", None), ("stage", None)];
        assert_eq!(claims, expected.map(|(part, claim)| (part.into(), claim)));
        assert_eq!(part_claim(&meta, "prod"), Some(prod));
        assert_eq!(part_claim(&meta, "dev"), None);
        assert_eq!(parts_with_fields(&meta), ["dev", "prod", "qa", "stage"], "never a user's manager");
        assert_eq!(part_owning_key(&meta, "stage").as_deref(), Some("stage"));
        assert_eq!(part_owning_key(&meta, "mine"), None, "the user's key");
        assert!(owned(&meta, &part_manager("prod")).annotation(default));
        assert!(!owned(&meta, &part_manager("other")).anything());
    }
}
