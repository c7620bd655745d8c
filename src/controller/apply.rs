//! Writes owned objects by server-side apply, but only when what is there differs from what we
//! want: an unchanged object costs one read and no write.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::core::ObjectMeta;

/// The one field manager for everything this operator writes.
pub const FIELD_MANAGER: &str = "artifact-operator";

fn same_meta(current: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let subset = |want: &Option<BTreeMap<String, String>>, have: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    subset(&desired.labels, &current.labels)
        && subset(&desired.annotations, &current.annotations)
        && desired.owner_references.iter().flatten().all(|o| current.owner_references.iter().flatten().any(|c| c == o))
}

/// Applies a ConfigMap unless the existing one already has this data, labels, annotations and owner.
/// Returns whether it wrote.
pub async fn config_map(api: &Api<ConfigMap>, desired: &ConfigMap) -> Result<bool, kube::Error> {
    let name = desired.metadata.name.as_deref().unwrap_or_default();
    if let Some(current) = api.get_opt(name).await? {
        if current.data == desired.data && same_meta(&current.metadata, &desired.metadata) {
            return Ok(false);
        }
    }
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired)).await?;
    Ok(true)
}

/// Applies a Secret unless the existing one already has this data, labels and owner.
pub async fn secret(api: &Api<Secret>, desired: &Secret) -> Result<bool, kube::Error> {
    let name = desired.metadata.name.as_deref().unwrap_or_default();
    if let Some(current) = api.get_opt(name).await? {
        let current_data: BTreeMap<_, _> = current.data.clone().unwrap_or_default();
        let desired_data: BTreeMap<_, _> = desired
            .string_data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
            .collect();
        if current_data == desired_data && same_meta(&current.metadata, &desired.metadata) {
            return Ok(false);
        }
    }
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired)).await?;
    Ok(true)
}

/// Writes a custom resource's status by server-side apply with the operator's field manager.
pub async fn status<K>(api: &Api<K>, name: &str, status: &impl serde::Serialize) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await.map(|_| ())
}
