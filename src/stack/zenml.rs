//! The ZenML sync (`spec.zenml`), a step of the Stack reconcile once the store is usable: the
//! store's keys as a ZenML secret (key auth; with implicit auth the pods' own identity, so none),
//! the S3 artifact store and kubernetes orchestrator components, and the stack, created or updated
//! through the server's REST API only where they differ from what the Stack declares.
//!
//! What is ours is marked (a label on components and stacks, a value in the secret, as ZenML
//! secrets have no labels) and recorded in the status by id. A same-named object without our
//! mark is a conflict (`ZenmlNameConflict`), never taken over; removal deletes only what carries
//! our mark. The secret is public (`private: false`) so that every ZenML user's pipelines can use
//! the component, as `authentication_secret` requires for a secret its reader does not own.
//!
//! Declaring is pure ([`declare`]); [`sync`] and [`remove`] do the I/O.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};

use super::build::{pod_wiring, zenml_pod_settings};
use super::resolved::{ResolvedStack, ZenmlTarget};
use crate::api::Stack;
use crate::api::stack::{ApiKeySecretRef, ZenmlStatus};
use crate::aws::clients::StaticKeys;
use crate::controller::Context;
use crate::controller::Error;
use crate::controller::apply;
use crate::controller::context::EventType;
use crate::reason::{Failure, Reason};
use crate::resolve::ResolvedStore;
use crate::zenml::{Server, ZenmlError};

/// Held while the ZenML server may hold objects the Stack made.
pub const FINALIZER: &str = "artifacts.dev/zenml";
/// The label that marks a component or stack as the Stack's (its UID).
pub const OWNER_LABEL: &str = "artifacts.dev/stack-uid";
/// The secret value that marks a ZenML secret as the Stack's (its UID); ZenML's AWS secret schema
/// ignores keys it does not know.
pub const SECRET_OWNER_KEY: &str = "artifacts_dev_stack_uid";

/// Everything the Stack declares in the ZenML server. Holds the store's keys: never logged.
pub struct Declared {
    pub stack_name: String,
    pub labels: Value,
    /// The secret's name and values (key auth only).
    pub secret: Option<(String, Map<String, Value>)>,
    pub artifact_store: Value,
    pub orchestrator: Value,
    /// The container registry component's configuration (with `orchestrator.containerRegistry`).
    pub container_registry: Option<Value>,
}

/// The ZenML secret's name for the stack `name`.
pub fn secret_name(name: &str) -> String {
    format!("{name}-s3-keys")
}

/// What the Stack declares in ZenML. Pure.
pub fn declare(
    stack: &ResolvedStack,
    target: &ZenmlTarget,
    store: &ResolvedStore,
    keys: Option<&StaticKeys>,
) -> Declared {
    let name = target.stack_name.clone();
    let uid = &stack.owner.uid;
    let labels = json!({
        OWNER_LABEL: uid,
        "artifacts.dev/stack": format!("{}/{}", stack.namespace(), stack.name()),
        "app.kubernetes.io/managed-by": "artifact-operator",
    });
    let secret = keys.map(|keys| {
        let mut values = Map::new();
        values.insert("aws_access_key_id".into(), json!(keys.access_key_id));
        values.insert("aws_secret_access_key".into(), json!(keys.secret_access_key));
        if let Some(token) = &keys.session_token {
            values.insert("aws_session_token".into(), json!(token));
        }
        values.insert(SECRET_OWNER_KEY.into(), json!(uid));
        (secret_name(&name), values)
    });
    let mut artifact_store = crate::render::zenml::artifact_store_config(store);
    if let (Some((secret, _)), Some(fields)) = (&secret, artifact_store.as_object_mut()) {
        fields.insert("authentication_secret".into(), json!(secret));
    }
    let pod_settings = zenml_pod_settings(&pod_wiring(stack.name(), store));
    let orchestrator =
        crate::render::zenml::orchestrator_config(stack.namespace(), &stack.service_account, &pod_settings);
    let container_registry = stack.container_registry.as_deref().map(crate::render::zenml::container_registry_config);
    Declared { stack_name: name, labels, secret, artifact_store, orchestrator, container_registry }
}

/// The kinds of ZenML object the Stack makes, in the order they are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Stack,
    ArtifactStore,
    Orchestrator,
    ContainerRegistry,
    Secret,
}

impl Kind {
    /// The REST collection and, for components, the type to filter by.
    fn collection(self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::Stack => ("stacks", None),
            Self::ArtifactStore => ("components", Some("artifact_store")),
            Self::Orchestrator => ("components", Some("orchestrator")),
            Self::ContainerRegistry => ("components", Some("container_registry")),
            Self::Secret => ("secrets", None),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Stack => "stack",
            Self::ArtifactStore => "artifact_store component",
            Self::Orchestrator => "orchestrator component",
            Self::ContainerRegistry => "container_registry component",
            Self::Secret => "secret",
        }
    }

    /// Whether `object` (as GET by id returns it) carries the mark of the Stack `uid`.
    fn is_ours(self, object: &Value, uid: &str) -> bool {
        let mark = match self {
            Self::Secret => object.pointer(&format!("/body/values/{SECRET_OWNER_KEY}")),
            _ => object.pointer(&format!("/metadata/labels/{}", OWNER_LABEL.replace('/', "~1"))),
        };
        !uid.is_empty() && mark.and_then(Value::as_str) == Some(uid)
    }
}

/// Where an object of a kind and name stands in the server.
enum Found {
    /// Ours, as the server holds it.
    Ours(Value),
    Absent,
    /// Someone else's, under the name we would use.
    Taken,
}

/// Finds the Stack's object: by the id the status recorded (if it still carries our mark), else
/// by name.
async fn locate(server: &Server<'_>, kind: Kind, id: Option<&str>, name: &str, uid: &str) -> Result<Found, ZenmlError> {
    let (collection, type_) = kind.collection();
    if let Some(id) = id {
        match server.get(&format!("/api/v1/{collection}/{}", urlencoding::encode(id))).await {
            Ok(object) if kind.is_ours(&object, uid) => return Ok(Found::Ours(object)),
            Ok(_) | Err(ZenmlError::NotFound) => {}
            Err(error) => return Err(error),
        }
    }
    let mut query = format!("/api/v1/{collection}?name={}&size=10", urlencoding::encode(name));
    if let Some(type_) = type_ {
        query.push_str(&format!("&type={type_}"));
    }
    let listed = server.get(&query).await?;
    let Some(item) = listed.get("items").and_then(Value::as_array).and_then(|items| items.first()) else {
        return Ok(Found::Absent);
    };
    let Some(found_id) = item.get("id").and_then(Value::as_str) else {
        return Ok(Found::Absent);
    };
    // Lists leave out a secret's values (and need hydrating for labels): read it whole.
    let object = server.get(&format!("/api/v1/{collection}/{}", urlencoding::encode(found_id))).await?;
    Ok(if kind.is_ours(&object, uid) { Found::Ours(object) } else { Found::Taken })
}

fn id_of(object: &Value) -> Option<String> {
    object.get("id").and_then(Value::as_str).map(str::to_owned)
}

/// What the server holds of an object, in the shape its update request takes, to compare.
fn held(kind: Kind, object: &Value) -> Value {
    let name = object.get("name").cloned().unwrap_or(Value::Null);
    match kind {
        Kind::Secret => json!({
            "name": name,
            "private": object.pointer("/body/private").cloned().unwrap_or(Value::Null),
            "values": object.pointer("/body/values").cloned().unwrap_or(Value::Null),
        }),
        Kind::ArtifactStore | Kind::Orchestrator | Kind::ContainerRegistry => json!({
            "name": name,
            "configuration": object.pointer("/metadata/configuration").cloned().unwrap_or(Value::Null),
            "labels": object.pointer("/metadata/labels").cloned().unwrap_or(Value::Null),
            "connector": object.pointer("/metadata/connector/id").cloned().unwrap_or(Value::Null),
        }),
        Kind::Stack => {
            let components: Map<String, Value> = object
                .pointer("/metadata/components")
                .and_then(Value::as_object)
                .map(|by_type| {
                    by_type
                        .iter()
                        .map(|(type_, list)| {
                            let ids: Vec<Value> =
                                list.as_array().into_iter().flatten().filter_map(|c| c.get("id").cloned()).collect();
                            (type_.clone(), Value::Array(ids))
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "name": name,
                "components": components,
                "labels": object.pointer("/metadata/labels").cloned().unwrap_or(Value::Null),
            })
        }
    }
}

/// The update request for what is declared (compared with [`held`]); the create request adds
/// what cannot change.
fn wanted(kind: Kind, name: &str, declared: &Declared, ids: &Ids) -> Value {
    match kind {
        Kind::Secret => json!({
            "name": name,
            "private": false,
            "values": declared.secret.as_ref().map(|(_, values)| values.clone()).unwrap_or_default(),
        }),
        Kind::ArtifactStore => {
            json!({"name": name, "configuration": declared.artifact_store, "labels": declared.labels, "connector": null})
        }
        Kind::Orchestrator => {
            json!({"name": name, "configuration": declared.orchestrator, "labels": declared.labels, "connector": null})
        }
        Kind::ContainerRegistry => json!({
            "name": name,
            "configuration": declared.container_registry,
            "labels": declared.labels,
            "connector": null,
        }),
        Kind::Stack => {
            let mut components = json!({
                "artifact_store": [ids.artifact_store.clone().unwrap_or_default()],
                "orchestrator": [ids.orchestrator.clone().unwrap_or_default()],
            });
            if declared.container_registry.is_some() {
                components["container_registry"] = json!([ids.container_registry.clone().unwrap_or_default()]);
            }
            json!({"name": name, "components": components, "labels": declared.labels})
        }
    }
}

fn create_request(kind: Kind, mut update: Value) -> Value {
    if let Some(fields) = update.as_object_mut() {
        match kind {
            Kind::ArtifactStore => {
                fields.insert("type".into(), json!("artifact_store"));
                fields.insert("flavor".into(), json!("s3"));
            }
            Kind::Orchestrator => {
                fields.insert("type".into(), json!("orchestrator"));
                fields.insert("flavor".into(), json!("kubernetes"));
            }
            Kind::ContainerRegistry => {
                fields.insert("type".into(), json!("container_registry"));
                fields.insert("flavor".into(), json!("default"));
            }
            Kind::Secret | Kind::Stack => {}
        }
        fields.remove("connector");
    }
    update
}

/// The ids of what the Stack made, as the status records them.
#[derive(Default)]
struct Ids {
    stack: Option<String>,
    artifact_store: Option<String>,
    orchestrator: Option<String>,
    container_registry: Option<String>,
    secret: Option<String>,
}

impl Ids {
    fn of(status: Option<&ZenmlStatus>) -> Self {
        status.map_or_else(Self::default, |s| Self {
            stack: s.stack_id.clone(),
            artifact_store: s.artifact_store_id.clone(),
            orchestrator: s.orchestrator_id.clone(),
            container_registry: s.container_registry_id.clone(),
            secret: s.secret_id.clone(),
        })
    }

    fn get(&self, kind: Kind) -> Option<&str> {
        match kind {
            Kind::Stack => self.stack.as_deref(),
            Kind::ArtifactStore => self.artifact_store.as_deref(),
            Kind::Orchestrator => self.orchestrator.as_deref(),
            Kind::ContainerRegistry => self.container_registry.as_deref(),
            Kind::Secret => self.secret.as_deref(),
        }
    }

    fn set(&mut self, kind: Kind, id: Option<String>) {
        match kind {
            Kind::Stack => self.stack = id,
            Kind::ArtifactStore => self.artifact_store = id,
            Kind::Orchestrator => self.orchestrator = id,
            Kind::ContainerRegistry => self.container_registry = id,
            Kind::Secret => self.secret = id,
        }
    }
}

/// Makes the object of `kind` what is declared: creates it, updates it where it differs, or
/// reports the name taken. Returns its id.
async fn ensure(
    server: &Server<'_>,
    kind: Kind,
    name: &str,
    declared: &Declared,
    ids: &Ids,
    uid: &str,
) -> Result<String, Failure> {
    let (collection, _) = kind.collection();
    let sensitive = kind == Kind::Secret;
    let update = wanted(kind, name, declared, ids);
    match locate(server, kind, ids.get(kind), name, uid).await? {
        Found::Taken => Err(Failure::new(
            Reason::ZenmlNameConflict,
            format!(
                "the ZenML server at {} has a {} named {name} that this Stack did not make; rename or delete it there, or set spec.zenml.stackName",
                server.url(),
                kind.describe()
            ),
        )),
        Found::Absent => {
            let created =
                server.post(&format!("/api/v1/{collection}"), &create_request(kind, update), sensitive).await?;
            id_of(&created).ok_or_else(|| {
                Failure::new(
                    Reason::ZenmlRejected,
                    format!("the ZenML server created the {} without an id", kind.describe()),
                )
            })
        }
        Found::Ours(object) => {
            let id = id_of(&object).unwrap_or_default();
            if held(kind, &object) != update {
                let mut request = update;
                if let Some(fields) = request.as_object_mut() {
                    // Leaving the connector out of a component's update unlinks it.
                    fields.remove("connector");
                }
                server.put(&format!("/api/v1/{collection}/{}", urlencoding::encode(&id)), &request, sensitive).await?;
            }
            Ok(id)
        }
    }
}

/// Deletes the Stack's object of `kind`, if the server still holds it with our mark.
async fn delete_ours(server: &Server<'_>, kind: Kind, id: Option<&str>, uid: &str) -> Result<(), ZenmlError> {
    let Some(id) = id else { return Ok(()) };
    let (collection, _) = kind.collection();
    let path = format!("/api/v1/{collection}/{}", urlencoding::encode(id));
    match server.get(&path).await {
        Ok(object) if kind.is_ours(&object, uid) => server.delete(&path).await,
        Ok(_) | Err(ZenmlError::NotFound) => Ok(()),
        Err(error) => Err(error),
    }
}

impl From<ZenmlError> for Failure {
    fn from(error: ZenmlError) -> Self {
        failure(error)
    }
}

/// A ZenML error as a condition's failure.
pub fn failure(error: ZenmlError) -> Failure {
    // A server without a flavor's Python packages fails validating its configuration, every time.
    if let ZenmlError::Unavailable { detail, .. } = &error
        && detail.contains("No module named")
    {
        return Failure::new(
            Reason::ZenmlRejected,
            format!(
                "{error}; the server lacks a Python package of a ZenML integration: install it where the server runs (for the kubernetes orchestrator, `zenml integration install kubernetes`)"
            ),
        );
    }
    let reason = match &error {
        ZenmlError::Unreachable { .. } => Reason::ZenmlUnreachable,
        ZenmlError::Unauthorized { .. } => Reason::ZenmlUnauthorized,
        ZenmlError::VersionUnsupported { .. } => Reason::ZenmlVersionUnsupported,
        ZenmlError::NotFound | ZenmlError::Rejected { .. } => Reason::ZenmlRejected,
        ZenmlError::Unavailable { .. } => Reason::ZenmlUnavailable,
    };
    Failure::new(reason, error.to_string())
}

/// The API key from the Secret `reference` names in `namespace`.
async fn api_key(ctx: &Context, namespace: &str, reference: &ApiKeySecretRef) -> Result<String, Error> {
    let missing = |what: &str| {
        Failure::new(
            Reason::ZenmlApiKeyNotFound,
            format!(
                "{what} (spec.zenml.apiKeySecretRef); put a ZenML service account's API key there (zenml service-account create NAME)"
            ),
        )
    };
    let Some(secret) = ctx.read::<Secret>(namespace, &reference.name).await.map_err(Error::Dereference)? else {
        return Err(Error::Invalid(missing(&format!(
            "Secret {} does not exist in namespace {namespace}",
            reference.name
        ))));
    };
    let value = secret.data.as_ref().and_then(|data| data.get(reference.key()));
    let key = value.and_then(|v| std::str::from_utf8(&v.0).ok()).map(str::trim).unwrap_or_default();
    // An HTTP header carries it, as a store's keys do.
    if key.is_empty() || !crate::store::dereference::is_header_safe(key) {
        return Err(Error::Invalid(missing(&format!(
            "Secret {} holds no usable API key under {}",
            reference.name,
            reference.key()
        ))));
    }
    Ok(key.to_owned())
}

/// Makes the ZenML server at `target` hold what the Stack declares with `store`; returns what to
/// record in the status (`recorded`: what the status last recorded).
pub async fn sync(
    ctx: &Context,
    stack: &ResolvedStack,
    target: &ZenmlTarget,
    recorded: Option<&ZenmlStatus>,
    store: &ResolvedStore,
) -> Result<ZenmlStatus, Error> {
    let namespace = stack.namespace();
    let uid = stack.owner.uid.clone();
    let key = api_key(ctx, namespace, &target.api_key_secret_ref).await?;
    let keys = super::credentials::consumer_keys(ctx, namespace, store).await?;
    let declared = declare(stack, target, store, keys.as_ref());
    let previous = recorded.filter(|s| s.url == target.url);
    let result = async {
        let server = ctx.zenml.server(&target.url, &key).await?;
        ctx.zenml.remember(&uid, &server);
        let project = &target.project;
        if !server.has_project(project).await? {
            return Err(Failure::new(
                Reason::ZenmlProjectNotFound,
                format!("the ZenML server at {} has no project {project} (spec.zenml.project)", server.url()),
            ));
        }
        let mut ids = Ids::of(previous);
        let name = &declared.stack_name;
        let secret = declared.secret.as_ref().map(|(name, _)| name.clone());
        let mut steps = vec![(Kind::ArtifactStore, name.clone()), (Kind::Orchestrator, name.clone())];
        if declared.container_registry.is_some() {
            steps.push((Kind::ContainerRegistry, name.clone()));
        }
        steps.push((Kind::Stack, name.clone()));
        if let Some(secret) = &secret {
            steps.insert(0, (Kind::Secret, secret.clone()));
        }
        for (kind, object_name) in steps {
            ids.set(kind, Some(ensure(&server, kind, &object_name, &declared, &ids, &uid).await?));
        }
        // A store that moved from keys to implicit auth: the component no longer names the secret.
        if secret.is_none() && ids.secret.is_some() {
            delete_ours(&server, Kind::Secret, ids.secret.as_deref(), &uid).await?;
            ids.secret = None;
        }
        // A registry removed from the spec: the stack no longer lists the component.
        if declared.container_registry.is_none() && ids.container_registry.is_some() {
            delete_ours(&server, Kind::ContainerRegistry, ids.container_registry.as_deref(), &uid).await?;
            ids.container_registry = None;
        }
        Ok(ZenmlStatus {
            url: target.url.clone(),
            stack_id: ids.stack,
            stack_name: Some(name.clone()),
            artifact_store_id: ids.artifact_store,
            orchestrator_id: ids.orchestrator,
            container_registry_id: ids.container_registry,
            secret_id: ids.secret,
            api_key_secret_ref: target.api_key_secret_ref.clone(),
        })
    };
    // Every ZenML error is reported (see [`failure`]), not retried with a backoff.
    result.await.map_err(Error::Invalid)
}

/// What removing the Stack's ZenML objects came to.
pub enum Removal {
    /// Nothing of ours is left in the server.
    Done,
    /// It may pass: try again later (the server is unreachable or failed).
    Retry(Failure),
    /// It cannot be done by the operator: the objects stay; the message names them.
    Left(String),
}

/// Removes what the status records, in ZenML's order (the stack, its components, the secret),
/// and only what still carries the Stack's mark.
pub async fn remove(ctx: &Context, stack: &Stack, status: &ZenmlStatus) -> Result<Removal, Error> {
    let namespace = stack.namespace().unwrap_or_default();
    let uid = stack.uid().unwrap_or_default();
    let ids = Ids::of(Some(status));
    let what = format!(
        "stack {} ({}), its components and secret in the ZenML server at {}",
        status.stack_name.as_deref().unwrap_or("?"),
        status.stack_id.as_deref().unwrap_or("no id"),
        status.url
    );
    let server = match Error::split(api_key(ctx, &namespace, &status.api_key_secret_ref).await)? {
        Ok(key) => match ctx.zenml.server(&status.url, &key).await {
            Ok(server) => server,
            Err(error) => return Ok(removal_failed(error, &what)),
        },
        Err(failure) => match ctx.zenml.remembered(&uid) {
            Some(server) => server,
            None => return Ok(Removal::Left(format!("{what}: {}", failure.message))),
        },
    };
    for kind in [Kind::Stack, Kind::ArtifactStore, Kind::Orchestrator, Kind::ContainerRegistry, Kind::Secret] {
        if let Err(error) = delete_ours(&server, kind, ids.get(kind), &uid).await {
            return Ok(removal_failed(error, &what));
        }
    }
    ctx.zenml.forget(&uid);
    Ok(Removal::Done)
}

fn removal_failed(error: ZenmlError, what: &str) -> Removal {
    let failure = failure(error);
    if failure.is_transient() { Removal::Retry(failure) } else { Removal::Left(format!("{what}: {}", failure.message)) }
}

/// Removes what the Stack made in ZenML when it no longer asks for ZenML, or for that server
/// (what the old one holds goes, or is left with a Warning). None: there was nothing to remove.
pub async fn withdraw(ctx: &Context, object: &Stack, stack: &ResolvedStack) -> Result<Option<ZenmlReport>, Error> {
    let Some(target) = &stack.zenml else {
        return release(ctx, object).await;
    };
    let record = object.status.as_ref().and_then(|s| s.zenml.as_ref());
    if let Some(old) = record.filter(|r| r.url != target.url) {
        remove_record(ctx, object, old, false).await?;
    }
    Ok(None)
}

/// Removes what the Stack made in ZenML once it no longer asks for it (or goes), then drops the
/// finalizer. None: there was nothing to remove; Failed: an outage, retried.
pub async fn release(ctx: &Context, stack: &Stack) -> Result<Option<ZenmlReport>, Error> {
    let outcome = match stack.status.as_ref().and_then(|s| s.zenml.as_ref()) {
        Some(record) => Some(remove_record(ctx, stack, record, true).await?),
        None => None,
    };
    if matches!(outcome, Some(ZenmlReport::Failed(_))) {
        return Ok(outcome);
    }
    if apply::has_finalizer(stack, FINALIZER) {
        set_finalizer(ctx, stack, false).await?;
    }
    Ok(outcome)
}

/// Removes the objects `record` names, with an Event. What the operator cannot remove (the API
/// key is gone, the server refuses; with `retry` false, an outage too) is left, and the Warning
/// Event names it; with `retry`, an outage is reported as Failed, to try again.
async fn remove_record(ctx: &Context, stack: &Stack, record: &ZenmlStatus, retry: bool) -> Result<ZenmlReport, Error> {
    let left = match remove(ctx, stack, record).await? {
        Removal::Retry(failure) if retry => return Ok(ZenmlReport::Failed(failure)),
        Removal::Retry(failure) => format!("{}: {}", describe_record(record), failure.message),
        Removal::Left(why) => why,
        Removal::Done => {
            let note = format!("removed the {} from ZenML", describe_record(record));
            ctx.publish_event(&stack.object_ref(&()), EventType::Normal, Reason::ZenmlRemoved, note, "RemoveZenml")
                .await;
            return Ok(ZenmlReport::Gone);
        }
    };
    let note = format!("left in ZenML, to delete by hand: {left}");
    ctx.publish_event(&stack.object_ref(&()), EventType::Warning, Reason::ZenmlObjectsLeft, note, "RemoveZenml").await;
    Ok(ZenmlReport::Gone)
}

fn describe_record(record: &ZenmlStatus) -> String {
    format!(
        "stack {} and its components in the server at {}",
        record.stack_name.as_deref().unwrap_or_default(),
        record.url
    )
}

/// Adds the ZenML finalizer to `stack` or removes it.
pub async fn set_finalizer(ctx: &Context, stack: &Stack, present: bool) -> Result<(), Error> {
    let api: Api<Stack> = Api::namespaced(ctx.client.clone(), &stack.namespace().unwrap_or_default());
    // Either way the pass ends (adding) or the Stack is done with ZenML (removing): a Stack
    // already gone needs nothing more.
    apply::set_finalizer(&api, stack, FINALIZER, present).await.map(|_| ()).map_err(Error::Publish)
}

/// The ZenML sync's part of the status.
#[derive(Clone)]
pub enum ZenmlReport {
    /// Not reached in this pass: the last condition and record stay.
    Keep,
    Synced(ZenmlStatus),
    /// The record stays (it names what to remove later).
    Failed(Failure),
    /// Removed: no condition, no record.
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ArtifactStore;

    fn stack(zenml: Value) -> ResolvedStack {
        ResolvedStack::of(&crate::controller::fixtures::stack(
            "team",
            "u-1",
            json!({"artifactStoreRef": {"name": "ml"},
            "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"}, "zenml": zenml}),
        ))
        .expect("a valid Stack")
    }

    fn store(auth: Value) -> ResolvedStore {
        let store: ArtifactStore = serde_json::from_value(json!({
            "apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": "ml", "namespace": "team"},
            "spec": {"path": "s3://bucket/runs", "endpoint": {"url": "http://minio:9000"}, "auth": auth},
        }))
        .unwrap();
        ResolvedStore::new(&store, "us-east-1", false).unwrap()
    }

    fn keys() -> StaticKeys {
        StaticKeys { access_key_id: "AKID".into(), secret_access_key: "SECRET".into(), session_token: None }
    }

    #[test]
    fn key_auth_declares_a_marked_secret_the_artifact_store_names() {
        let stack = stack(json!({"url": "http://zenml", "apiKeySecretRef": {"name": "zk"}}));
        let target = stack.zenml.clone().unwrap();
        let declared = declare(&stack, &target, &store(json!({"secretRef": {"name": "keys"}})), Some(&keys()));
        assert_eq!(declared.stack_name, "team-prod");
        let (secret, values) = declared.secret.as_ref().unwrap();
        assert_eq!(secret, "team-prod-s3-keys");
        assert_eq!(values["aws_access_key_id"], "AKID");
        assert_eq!(values[SECRET_OWNER_KEY], "u-1");
        assert_eq!(declared.artifact_store["authentication_secret"], "team-prod-s3-keys");
        assert_eq!(declared.artifact_store["path"], "s3://bucket/runs");
        assert_eq!(declared.labels[OWNER_LABEL], "u-1");
        let orchestrator = &declared.orchestrator;
        assert_eq!(orchestrator["kubernetes_namespace"], "team");
        assert_eq!(orchestrator["service_account_name"], "runner");
        let env_from = &orchestrator["pod_settings"]["env_from"];
        assert_eq!(env_from[0]["configMapRef"]["name"], "prod-stack");
        assert_eq!(env_from[1]["secretRef"]["name"], "ml-aws-credentials");
        assert_eq!(orchestrator["pod_settings"]["volume_mounts"][0]["mountPath"], "/etc/artifact-store");
    }

    #[test]
    fn implicit_auth_declares_no_secret_and_a_named_stack() {
        let stack = stack(json!({"url": "http://zenml", "apiKeySecretRef": {"name": "zk"}, "stackName": "gpu"}));
        let target = stack.zenml.clone().unwrap();
        let declared = declare(&stack, &target, &store(json!({"implicit": {}})), None);
        assert_eq!(declared.stack_name, "gpu");
        assert!(declared.secret.is_none());
        assert!(declared.artifact_store.get("authentication_secret").is_none());
        assert_eq!(declared.orchestrator["pod_settings"]["env_from"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_container_registry_is_a_default_component_the_stack_lists() {
        let mut stack = stack(json!({"url": "http://zenml", "apiKeySecretRef": {"name": "zk"}}));
        let target = stack.zenml.clone().unwrap();
        let ids = Ids {
            artifact_store: Some("a".into()),
            orchestrator: Some("o".into()),
            container_registry: Some("r".into()),
            ..Ids::default()
        };
        let without = declare(&stack, &target, &store(json!({"implicit": {}})), None);
        assert!(without.container_registry.is_none());
        let listed = wanted(Kind::Stack, "team-prod", &without, &ids);
        assert!(listed["components"].get("container_registry").is_none(), "no registry, none listed: {listed}");

        stack.container_registry = Some("10.0.0.5:5000/ml".into());
        let declared = declare(&stack, &target, &store(json!({"implicit": {}})), None);
        assert_eq!(declared.container_registry, Some(json!({"uri": "10.0.0.5:5000/ml"})));
        let create =
            create_request(Kind::ContainerRegistry, wanted(Kind::ContainerRegistry, "team-prod", &declared, &ids));
        assert_eq!(create["type"], "container_registry");
        assert_eq!(create["flavor"], "default");
        assert_eq!(create["configuration"]["uri"], "10.0.0.5:5000/ml");
        assert_eq!(create["labels"][OWNER_LABEL], "u-1");
        let listed = wanted(Kind::Stack, "team-prod", &declared, &ids);
        assert_eq!(listed["components"]["container_registry"], json!(["r"]));
        let zenml_stack = json!({"id": "s", "name": "team-prod", "metadata": {"labels": declared.labels,
            "components": {"artifact_store": [{"id": "a"}], "orchestrator": [{"id": "o"}], "container_registry": [{"id": "r"}]}}});
        assert_eq!(held(Kind::Stack, &zenml_stack), listed);
    }

    #[test]
    fn ours_is_what_carries_the_stack_s_mark() {
        let component = json!({"id": "c", "metadata": {"labels": {OWNER_LABEL: "u-1"}}});
        assert!(Kind::ArtifactStore.is_ours(&component, "u-1"));
        assert!(!Kind::ArtifactStore.is_ours(&component, "u-2"));
        assert!(!Kind::ArtifactStore.is_ours(&json!({"id": "c", "metadata": {"labels": {}}}), "u-1"));
        assert!(!Kind::ArtifactStore.is_ours(&component, ""), "a Stack without a UID owns nothing");
        let secret = json!({"id": "s", "body": {"values": {SECRET_OWNER_KEY: "u-1"}}});
        assert!(Kind::Secret.is_ours(&secret, "u-1"));
        assert!(!Kind::Secret.is_ours(&component, "u-1"));
    }

    #[test]
    fn what_the_server_holds_compares_with_what_is_wanted() {
        let stack = stack(json!({"url": "http://zenml", "apiKeySecretRef": {"name": "zk"}}));
        let target = stack.zenml.clone().unwrap();
        let declared = declare(&stack, &target, &store(json!({"secretRef": {"name": "keys"}})), Some(&keys()));
        let ids = Ids { artifact_store: Some("a".into()), orchestrator: Some("o".into()), ..Ids::default() };
        let component = json!({"id": "a", "name": "team-prod",
            "metadata": {"configuration": declared.artifact_store, "labels": declared.labels, "connector": null}});
        assert_eq!(held(Kind::ArtifactStore, &component), wanted(Kind::ArtifactStore, "team-prod", &declared, &ids));
        let linked = json!({"id": "a", "name": "team-prod",
            "metadata": {"configuration": declared.artifact_store, "labels": declared.labels, "connector": {"id": "x"}}});
        assert_ne!(held(Kind::ArtifactStore, &linked), wanted(Kind::ArtifactStore, "team-prod", &declared, &ids));
        let zenml_stack = json!({"id": "s", "name": "team-prod", "metadata": {"labels": declared.labels,
            "components": {"artifact_store": [{"id": "a", "name": "x"}], "orchestrator": [{"id": "o"}]}}});
        assert_eq!(held(Kind::Stack, &zenml_stack), wanted(Kind::Stack, "team-prod", &declared, &ids));
        let create = create_request(Kind::Orchestrator, wanted(Kind::Orchestrator, "team-prod", &declared, &ids));
        assert_eq!(create["flavor"], "kubernetes");
        assert!(create.get("connector").is_none());
    }

    #[test]
    fn errors_become_reasons() {
        let unreachable = ZenmlError::Unreachable { url: "http://z".into(), why: "refused".into() };
        assert_eq!(failure(unreachable).reason, Reason::ZenmlUnreachable);
        let missing = ZenmlError::Unavailable {
            what: "POST /api/v1/components".into(),
            status: 500,
            detail: "RuntimeError: No module named 'kubernetes'".into(),
        };
        let missing = failure(missing);
        assert_eq!(missing.reason, Reason::ZenmlRejected, "not an outage: it fails until someone installs it");
        assert!(missing.message.contains("zenml integration install kubernetes"), "{}", missing.message);
        assert!(matches!(
            removal_failed(ZenmlError::Unauthorized { url: "u".into(), detail: "d".into() }, "x"),
            Removal::Left(_)
        ));
        assert!(matches!(
            removal_failed(ZenmlError::Unavailable { what: "GET".into(), status: 503, detail: String::new() }, "x"),
            Removal::Retry(_)
        ));
    }
}
