//! Kubeflow Pipelines' launcher configuration: the data of the namespace's `kfp-launcher`
//! ConfigMap, where KFP's launcher reads it: `defaultPipelineRoot` and, as a YAML string,
//! `providers` with `s3.default`. The provider has no CA field: a private CA reaches the launcher
//! through `AWS_CA_BUNDLE` and the mounted bundle, which the AWS SDK reads.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::resolve::{ConsumerCredentials, ResolvedStore};

/// The ConfigMap the launcher reads, in the pipeline's namespace.
pub const CONFIG_MAP: &str = "kfp-launcher";

/// The `providers` document.
pub fn providers(store: &ResolvedStore) -> Value {
    let credentials = match store.auth.consumer_credentials() {
        ConsumerCredentials::Keys { source, .. } => json!({"fromEnv": false, "secretRef": {
            "secretName": source.secret,
            "accessKeyKey": source.access_key_id,
            "secretKeyKey": source.secret_access_key,
        }}),
        // Admission refuses KFP with scoped credentials (the launcher takes no session token);
        // the pod's environment is the nearest it can get.
        ConsumerCredentials::Ambient { .. } | ConsumerCredentials::Session { .. } => json!({"fromEnv": true}),
    };
    // The launcher defaults forcePathStyle to true when it is absent: always say it.
    let mut default = json!({"region": store.region, "credentials": credentials, "forcePathStyle": store.path_style()});
    if let Some(endpoint) = &store.endpoint {
        let host = endpoint.url.split_once("://").map_or(endpoint.url.as_str(), |(_, rest)| rest);
        default["endpoint"] = json!(host.trim_end_matches('/'));
        default["disableSSL"] = json!(!endpoint.is_https());
    }
    // The launcher hands maxRetries to the AWS SDK as its maximum number of attempts.
    if let Some(attempts) = store.client.max_attempts {
        default["maxRetries"] = json!(attempts);
    }
    json!({"s3": {"default": default}})
}

/// The launcher ConfigMap's data: `defaultPipelineRoot` and `providers` (a YAML string).
pub fn launcher_data(store: &ResolvedStore) -> BTreeMap<String, String> {
    let providers = serde_yaml_ng::to_string(&providers(store)).expect("a JSON value always serializes to YAML");
    BTreeMap::from([("defaultPipelineRoot".to_owned(), store.path.to_string()), ("providers".to_owned(), providers)])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn resolved(spec: serde_json::Value) -> ResolvedStore {
        crate::resolve::test_store(spec, "eu-west-1")
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
        assert!(default.get("maxRetries").is_none(), "the launcher's own default stands");
    }

    #[test]
    fn max_attempts_become_max_retries() {
        let store =
            resolved(json!({"path": "s3://bucket/runs", "auth": {"implicit": {}}, "client": {"maxAttempts": 7}}));
        assert_eq!(providers(&store)["s3"]["default"]["maxRetries"], 7);
        let data = launcher_data(&store);
        assert_eq!(data["defaultPipelineRoot"], "s3://bucket/runs");
        assert!(data["providers"].contains("maxRetries: 7"));
    }
}
