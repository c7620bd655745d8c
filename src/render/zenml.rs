//! ZenML's S3 artifact store configuration (`S3ArtifactStoreConfig`): `path`, `client_kwargs`,
//! `config_kwargs` and `s3_additional_kwargs`. Credentials are never part of it: with key auth,
//! the component names the Secret (`authentication_secret`) and pods get the keys from the
//! published credentials Secret.

use serde_json::{Map, Value, json};

use crate::resolve::{ResolvedAuth, ResolvedStore};

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
    if store.endpoint.is_some() {
        let style = if store.path_style() { "path" } else { "virtual" };
        config_kwargs.insert("s3".into(), json!({ "addressing_style": style }));
    }

    let mut additional = Map::new();
    let defaults = &store.object_defaults;
    if let Some(sse) = defaults.server_side_encryption {
        additional.insert("ServerSideEncryption".into(), json!(sse.as_str()));
    }
    if let Some(key) = &defaults.sse_kms_key_id {
        additional.insert("SSEKMSKeyId".into(), json!(key));
    }
    if let Some(acl) = defaults.acl {
        additional.insert("ACL".into(), json!(acl.as_str()));
    }
    if let Some(class) = defaults.storage_class {
        additional.insert("StorageClass".into(), json!(class.as_str()));
    }

    json!({
        "path": store.path.to_string(),
        "client_kwargs": client_kwargs,
        "config_kwargs": config_kwargs,
        "s3_additional_kwargs": additional,
    })
}

/// The artifact store as a ZenML stack component (flavor `s3`).
pub fn artifact_store_component(store: &ResolvedStore) -> Value {
    let mut component = json!({
        "name": store.name,
        "type": "artifact_store",
        "flavor": "s3",
        "configuration": artifact_store_config(store),
    });
    if let ResolvedAuth::Keys(keys) = &store.auth {
        component["authentication_secret"] = json!(keys.secret_name);
    }
    component
}

/// A ZenML stack description, in the shape `zenml stack export` writes and `zenml stack import`
/// reads: the S3 artifact store and the kubernetes orchestrator.
pub fn stack(stack_name: &str, store: &ResolvedStore, namespace: &str, service_account: &str) -> Value {
    json!({
        "stack_name": stack_name,
        "components": {
            "artifact_store": artifact_store_component(store),
            "orchestrator": {
                "name": format!("{stack_name}-orchestrator"),
                "type": "orchestrator",
                "flavor": "kubernetes",
                "configuration": {
                    "kubernetes_namespace": namespace,
                    "service_account_name": service_account,
                    "incluster": true,
                },
            },
        },
    })
}
