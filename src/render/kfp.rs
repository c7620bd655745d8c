//! Kubeflow Pipelines' launcher configuration (the data of its `kfp-launcher` ConfigMap):
//! `defaultPipelineRoot` and, as a YAML string, `providers.s3`.

use serde_json::{Value, json};

use crate::resolve::{ResolvedAuth, ResolvedStore};

/// The ConfigMap key the launcher configuration is rendered under.
pub const KEY: &str = "kfp-launcher.yaml";

/// The `providers` document.
pub fn providers(store: &ResolvedStore) -> Value {
    let credentials = match &store.auth {
        ResolvedAuth::Keys(keys) => json!({"fromEnv": false, "secretRef": {
            "secretName": keys.secret_name,
            "accessKeyKey": keys.access_key_id_key,
            "secretKeyKey": keys.secret_access_key_key,
        }}),
        ResolvedAuth::Implicit { .. } => json!({"fromEnv": true}),
    };
    let mut default = json!({"region": store.region, "credentials": credentials});
    if let Some(endpoint) = &store.endpoint {
        let host = endpoint.url.split_once("://").map_or(endpoint.url.as_str(), |(_, rest)| rest);
        default["endpoint"] = json!(host.trim_end_matches('/'));
        default["disableSSL"] = json!(!endpoint.is_https());
        default["forcePathStyle"] = json!(store.path_style());
    }
    json!({"s3": {"default": default}})
}

/// The launcher ConfigMap's data: `defaultPipelineRoot` and `providers` (a YAML string).
pub fn launcher_config(store: &ResolvedStore) -> Value {
    let providers = serde_yaml_ng::to_string(&providers(store)).expect("a JSON value always serializes to YAML");
    json!({"defaultPipelineRoot": store.path.to_string(), "providers": providers})
}
