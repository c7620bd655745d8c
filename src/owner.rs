//! Who owns what the operator publishes: an ArtifactStore or a Stack, as the objects it owns and
//! the messages about them name it. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::ObjectMeta;

use crate::reason::{Failure, Reason};

/// The label on everything the operator makes, and its selector for watches.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "artifact-operator");
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=artifact-operator";

/// The labels of what the operator makes for an owner: [`MANAGED_BY`], and the owner's name under
/// `artifacts.dev/<owner_label>` (`artifact-store` or `stack`).
fn labels(owner_label: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (format!("artifacts.dev/{owner_label}"), name.to_owned()),
    ])
}

/// Who owns what the operator publishes for an ArtifactStore or a Stack.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The controller reference its objects carry.
    reference: Option<OwnerReference>,
}

impl Owner {
    pub fn of<K: kube::Resource<DynamicType = ()>>(object: &K) -> Self {
        let meta = object.meta();
        Self {
            kind: K::kind(&()).into_owned(),
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            reference: object.controller_owner_ref(&()),
        }
    }

    /// Its key in per-object memory and logs (see [`key`]).
    pub fn key(&self) -> String {
        key(&self.kind, &self.namespace, &self.name)
    }

    /// The metadata of an object named `name` that this owner owns: in its namespace, with its
    /// labels and a controller reference to it, so the garbage collector removes it with the owner.
    pub fn owned_meta(&self, owner_label: &str, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels(owner_label, &self.name)),
            owner_references: self.reference.clone().map(|reference| vec![reference]),
            ..ObjectMeta::default()
        }
    }

    /// The failure of a `kind` named `name` that exists and is not this owner's.
    pub fn name_conflict(&self, kind: &str, name: &str) -> Failure {
        Failure::new(
            Reason::NameConflict,
            format!(
                "{kind} {name} already exists and was not created by artifact-operator for {} {}; the operator never takes over an object it did not create: rename or delete that {kind}, or rename the {}",
                self.kind, self.name, self.kind,
            ),
        )
    }
}

/// A kind of object that a store or a Stack names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ArtifactStore,
    ConfigMap,
    Secret,
    ServiceAccount,
}

/// Objects of one kind that a store or a Stack publishes under a name made from its own:
/// `{publisher}{suffix}`.
#[derive(Clone, Copy, Debug)]
pub struct Published {
    pub kind: Kind,
    pub suffix: &'static str,
}

impl Published {
    /// The name of what `publisher` publishes.
    pub fn name(&self, publisher: &str) -> String {
        format!("{publisher}{}", self.suffix)
    }

    /// Whose it would be, by its name, when `kind` `name` is such an object.
    pub fn publisher<'a>(&self, kind: Kind, name: &'a str) -> Option<&'a str> {
        if kind != self.kind {
            return None;
        }
        name.strip_suffix(self.suffix).filter(|publisher| !publisher.is_empty())
    }
}

/// An object's key in per-object memory and logs: `Kind/namespace/name`, so that a Stack and an
/// ArtifactStore of the same name never share a failure count.
pub fn key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}
