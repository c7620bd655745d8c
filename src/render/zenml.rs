//! ZenML's S3 artifact store configuration (`S3ArtifactStoreConfig`): `path`, `client_kwargs`,
//! `config_kwargs` and `s3_additional_kwargs`, and a stack export around it. Credentials are never
//! part of them: pods get the keys from the published credentials Secret, or use their own identity.

use serde_json::{Map, Value, json};

use crate::resolve::ResolvedStore;

/// The `configuration` of ZenML's S3 artifact store component, loadable as is by
/// `S3ArtifactStoreConfig(**configuration)`.
pub fn artifact_store_config(store: &ResolvedStore) -> Value {
    let mut client_kwargs = Map::new();
    client_kwargs.insert("region_name".into(), json!(store.region));
    if let Some(endpoint) = &store.endpoint {
        client_kwargs.insert("endpoint_url".into(), json!(endpoint.url));
        if endpoint.insecure_skip_verify {
            client_kwargs.insert("verify".into(), json!(false));
        } else if let Some(path) = store.ca_bundle_path() {
            client_kwargs.insert("verify".into(), json!(path));
        }
    }

    let mut config_kwargs = Map::new();
    let mut retries = Map::new();
    if let Some(mode) = store.retry_mode() {
        retries.insert("mode".into(), json!(mode));
    }
    if let Some(attempts) = store.client.max_attempts {
        retries.insert("total_max_attempts".into(), json!(attempts));
    }
    if !retries.is_empty() {
        config_kwargs.insert("retries".into(), Value::Object(retries));
    }
    if let Some(seconds) = store.client.connect_timeout_seconds {
        config_kwargs.insert("connect_timeout".into(), json!(seconds));
    }
    if let Some(seconds) = store.client.read_timeout_seconds {
        config_kwargs.insert("read_timeout".into(), json!(seconds));
    }
    if store.client.signature_version.is_some() {
        config_kwargs.insert("signature_version".into(), json!("s3v4"));
    }
    if let Some(endpoint) = &store.endpoint {
        let style = if store.path_style() { "path" } else { "virtual" };
        config_kwargs.insert("s3".into(), json!({ "addressing_style": style }));
        // botocore's Config takes these since 1.36; s3fs hands config_kwargs to it.
        config_kwargs.insert("request_checksum_calculation".into(), json!(endpoint.checksums.sdk_value()));
        config_kwargs.insert("response_checksum_validation".into(), json!(endpoint.checksums.sdk_value()));
    }

    let additional = super::upload_args(store);

    json!({
        "path": store.path.to_string(),
        "client_kwargs": client_kwargs,
        "config_kwargs": config_kwargs,
        "s3_additional_kwargs": additional,
    })
}

/// The ZenML release whose `zenml stack export` shape [`stack_export`] follows; `zenml stack import`
/// refuses an export from another release unless given `--ignore-version-mismatch`.
pub const ZENML_VERSION: &str = "0.98.0";

/// A ZenML stack export, in the shape `zenml stack export` writes and `zenml stack import` reads:
/// each component type with a list of components (`type`, `flavor`, `name`, `configuration`), the
/// stack's name and the ZenML release: the S3 artifact store, the kubernetes orchestrator and,
/// given its URI, the container registry its pipelines' images come from.
/// Credentials are not part of it: pods get them from the env keys (the published credentials
/// Secret or the pod's own identity).
pub fn stack_export(
    stack_name: &str,
    store: &ResolvedStore,
    namespace: &str,
    service_account: &str,
    pod_settings: &Value,
    container_registry: Option<&str>,
) -> Value {
    let mut artifact_store = artifact_store_config(store);
    // The export holds only what was configured: empty settings are left out, as ZenML does.
    if let Some(fields) = artifact_store.as_object_mut() {
        fields.retain(|_, value| value.as_object().is_none_or(|map| !map.is_empty()));
    }
    let mut export = json!({
        "components": {
            "artifact_store": [{
                "configuration": artifact_store,
                "flavor": "s3",
                "name": store.name,
                "type": "artifact_store",
            }],
            "orchestrator": [{
                "configuration": orchestrator_config(namespace, service_account, pod_settings),
                "flavor": "kubernetes",
                "name": format!("{stack_name}-orchestrator"),
                "type": "orchestrator",
            }],
        },
        "stack_name": stack_name,
        "zenml_version": ZENML_VERSION,
    });
    if let Some(uri) = container_registry {
        export["components"]["container_registry"] = json!([{
            "configuration": container_registry_config(uri),
            "flavor": "default",
            "name": format!("{stack_name}-container-registry"),
            "type": "container_registry",
        }]);
    }
    export
}

/// The `configuration` of ZenML's `default` container registry flavor.
pub fn container_registry_config(uri: &str) -> Value {
    json!({ "uri": uri })
}

/// The `configuration` of ZenML's kubernetes orchestrator: it runs inside the cluster and starts
/// the orchestrator and step pods in `namespace` as `service_account`, both with `pod_settings`
/// (`KubernetesPodSettings`: `env_from`, `volumes` and `volume_mounts` in Kubernetes' JSON). ZenML
/// gives `pod_settings` to the step pods only; the orchestrator pod, which writes its logs to the
/// artifact store, takes `orchestrator_pod_settings`.
pub fn orchestrator_config(namespace: &str, service_account: &str, pod_settings: &Value) -> Value {
    json!({
        "incluster": true,
        "kubernetes_namespace": namespace,
        "service_account_name": service_account,
        "pod_settings": pod_settings,
        "orchestrator_pod_settings": pod_settings,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::ArtifactStore;

    #[test]
    fn the_export_has_zenml_s_shape_and_only_what_was_configured() {
        let store: ArtifactStore = serde_json::from_value(json!({
            "apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": "ml", "namespace": "team"},
            "spec": {"path": "s3://bucket/runs", "endpoint": {"url": "http://minio:9000"}, "auth": {"secretRef": {"name": "keys"}}},
        }))
        .unwrap();
        let store = ResolvedStore::new(&store, "us-east-1", false).unwrap();
        let pod_settings = json!({"env_from": [{"configMapRef": {"name": "prod-stack"}}]});
        let export_with = |registry| stack_export("prod", &store, "team", "runner", &pod_settings, registry);
        let export = export_with(None);
        assert_eq!(export["zenml_version"], ZENML_VERSION);
        assert!(export["components"].get("container_registry").is_none(), "no registry was given");
        let artifact_store = &export["components"]["artifact_store"][0];
        assert_eq!(artifact_store["type"], "artifact_store");
        assert_eq!(artifact_store["configuration"]["path"], "s3://bucket/runs");
        let config_kwargs = &artifact_store["configuration"]["config_kwargs"];
        assert_eq!(config_kwargs["request_checksum_calculation"], "when_required", "a custom endpoint's default");
        assert_eq!(config_kwargs["response_checksum_validation"], "when_required");
        assert!(artifact_store["configuration"].get("s3_additional_kwargs").is_none(), "nothing configured there");
        assert!(artifact_store.get("authentication_secret").is_none(), "a ZenML secret, not a Kubernetes one");
        let orchestrator = &export["components"]["orchestrator"][0]["configuration"];
        assert_eq!(orchestrator["service_account_name"], "runner");
        assert_eq!(orchestrator["pod_settings"], pod_settings);
        assert_eq!(orchestrator["orchestrator_pod_settings"], pod_settings, "the orchestrator pod's too");

        let with_registry = export_with(Some("10.0.0.5:5000/ml"));
        assert_eq!(
            with_registry["components"]["container_registry"],
            json!([{"configuration": {"uri": "10.0.0.5:5000/ml"}, "flavor": "default", "name": "prod-container-registry", "type": "container_registry"}])
        );
    }
}
