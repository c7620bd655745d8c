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
    // The launcher defaults forcePathStyle to true when it is absent: always say it.
    let mut default = json!({"region": store.region, "credentials": credentials, "forcePathStyle": store.path_style()});
    if let Some(endpoint) = &store.endpoint {
        let host = endpoint.url.split_once("://").map_or(endpoint.url.as_str(), |(_, rest)| rest);
        default["endpoint"] = json!(host.trim_end_matches('/'));
        default["disableSSL"] = json!(!endpoint.is_https());
    }
    json!({"s3": {"default": default}})
}

/// The launcher ConfigMap's data: `defaultPipelineRoot` and `providers` (a YAML string).
pub fn launcher_config(store: &ResolvedStore) -> Value {
    let providers = serde_yaml_ng::to_string(&providers(store)).expect("a JSON value always serializes to YAML");
    json!({"defaultPipelineRoot": store.path.to_string(), "providers": providers})
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::ArtifactStore;

    fn resolved(spec: serde_json::Value) -> ResolvedStore {
        let store: ArtifactStore = serde_json::from_value(json!({
            "apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore",
            "metadata": {"name": "store", "namespace": "ml"}, "spec": spec,
        }))
        .unwrap();
        ResolvedStore::new(&store, "eu-west-1", false).unwrap()
    }

    #[test]
    fn aws_gets_virtual_hosted_addressing_said_out_loud() {
        let store = resolved(json!({"path": "s3://bucket/runs", "auth": {"implicit": {}}}));
        let default = &providers(&store)["s3"]["default"];
        assert_eq!(default["forcePathStyle"], false, "the launcher would default to path style");
        assert_eq!(default["region"], "eu-west-1");
        assert_eq!(default["credentials"], json!({"fromEnv": true}));
        assert!(default.get("endpoint").is_none() && default.get("disableSSL").is_none());
    }

    #[test]
    fn an_endpoint_becomes_host_scheme_and_path_style() {
        let store = resolved(json!({"path": "s3://bucket/runs", "auth": {"secretRef": {"name": "keys"}},
                                    "endpoint": {"url": "https://rgw.example:8443/"}}));
        let default = &providers(&store)["s3"]["default"];
        assert_eq!(default["endpoint"], "rgw.example:8443");
        assert_eq!(default["disableSSL"], false);
        assert_eq!(default["forcePathStyle"], true);
        assert_eq!(default["credentials"]["secretRef"]["secretName"], "keys");
    }
}
