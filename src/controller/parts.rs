//! The parts of a shared ConfigMap: Argo's `artifact-repositories` holds a key a Stack, each
//! written by server-side apply with that Stack's own field manager, beside other Stacks' keys and
//! the user's. What a field manager owns says whose a part is. With its key, each part applies an
//! annotation of its own holding the digest of what it applied: as long as its manager owns both,
//! nobody has changed either since (a change by anyone else takes the field from it), so the
//! metadata watch alone tells a restarted process that the part still holds what it wrote
//! ([`claims`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::core::ObjectMeta;
use serde_json::Value;

use super::caches::FIELD_MANAGER;

/// The field manager of part `part` (a Stack's name).
pub fn manager(part: &str) -> String {
    format!("{FIELD_MANAGER}/stack/{part}")
}

/// The part a field manager writes, if it is a part's manager.
fn part_of(manager: &str) -> Option<&str> {
    manager.strip_prefix(FIELD_MANAGER)?.strip_prefix("/stack/").filter(|part| !part.is_empty())
}

/// The annotation holding the digest of what part `part` applied (a Stack's name fits an
/// annotation's name: at most 63 characters, a DNS label's).
pub fn digest_annotation(part: &str) -> String {
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
        let Some(fields) = entry.fields_v1.as_ref().map(|f| &f.0) else { continue };
        owned.data_keys.extend(names(fields.get("f:data")));
        owned.annotations.extend(names(fields.pointer("/f:metadata/f:annotations")));
    }
    owned
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

/// The parts whose managers own something of the ConfigMap `meta` describes: only this
/// operator's per-part managers, never a user's.
pub fn parts_with_fields(meta: &ObjectMeta) -> Vec<String> {
    let mut parts: Vec<String> =
        applies(meta).filter_map(|entry| part_of(entry.manager.as_deref()?)).map(str::to_owned).collect();
    parts.sort();
    parts.dedup();
    parts
}

/// The part whose manager owns key `key`, if one does.
pub fn part_owning_key(meta: &ObjectMeta, key: &str) -> Option<String> {
    let parts = parts_with_fields(meta);
    parts.into_iter().find(|part| owned(meta, &manager(part)).key(key))
}

/// What a part's manager holds of the ConfigMap, as the metadata watch sees it, when it still
/// holds its own key (the part's name) and its digest annotation: the digest it applied, and
/// which other annotations it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    pub digest: u64,
    pub annotations: Box<[Box<str>]>,
}

/// Every part of the ConfigMap `meta` describes (whose manager owns something there), with its
/// claim where it has one (see [`Claim`]).
pub fn claims(meta: &ObjectMeta) -> Vec<(Box<str>, Option<Claim>)> {
    let values = meta.annotations.as_ref();
    let claim = |part: &str| {
        let fields = owned(meta, &manager(part));
        let annotation = digest_annotation(part);
        if !fields.key(part) || !fields.annotation(&annotation) {
            return None;
        }
        let digest = u64::from_str_radix(values?.get(&annotation)?, 16).ok()?;
        let others = fields.annotations.iter().filter(|a| **a != annotation).map(|a| a.as_str().into()).collect();
        Some(Claim { digest, annotations: others })
    };
    parts_with_fields(meta).into_iter().map(|part| (part.as_str().into(), claim(&part))).collect()
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
        let mut annotations = json!({ format!("f:{}", digest_annotation(name)): {} });
        for annotation in extra {
            annotations[format!("f:{annotation}")] = json!({});
        }
        let fields = json!({"f:data": { format!("f:{name}"): {} }, "f:metadata": {"f:annotations": annotations}});
        entry(&manager(name), "Apply", fields)
    }

    #[test]
    fn a_part_is_claimed_only_while_its_manager_holds_its_key_and_its_digest() {
        let default = "workflows.argoproj.io/default-artifact-repository";
        let meta = shared(
            vec![
                part("prod", &[default]),
                // A user's edit took dev's key from its manager.
                entry(
                    &manager("dev"),
                    "Apply",
                    json!({"f:metadata": {"f:annotations": {"f:parts.artifacts.dev/dev": {}}}}),
                ),
                entry("kubectl-edit", "Update", json!({"f:data": {"f:dev": {}}})),
                // Stage applied before digests; qa's digest is not one.
                entry(&manager("stage"), "Apply", json!({"f:data": {"f:stage": {}}})),
                part("qa", &[]),
                entry("helm", "Apply", json!({"f:data": {"f:mine": {}}})),
            ],
            &[
                (&digest_annotation("prod"), &digest_value(255)),
                (&digest_annotation("dev"), &digest_value(1)),
                (&digest_annotation("qa"), "not hex"),
                (default, "prod"),
            ],
        );
        let prod = Claim { digest: 255, annotations: vec![default.into()].into() };
        let claims = claims(&meta);
        let expected = [("dev", None), ("prod", Some(prod)), ("qa", None), ("stage", None)];
        assert_eq!(claims, expected.map(|(part, claim)| (part.into(), claim)));
        assert_eq!(parts_with_fields(&meta), ["dev", "prod", "qa", "stage"], "never a user's manager");
        assert_eq!(part_owning_key(&meta, "stage").as_deref(), Some("stage"));
        assert_eq!(part_owning_key(&meta, "mine"), None, "the user's key");
        assert!(owned(&meta, &manager("prod")).annotation(default));
        assert!(!owned(&meta, &manager("other")).anything());
    }
}
