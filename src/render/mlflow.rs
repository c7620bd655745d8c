//! The environment MLflow reads for S3 (its tracking server with `--artifacts-destination`, and
//! its clients when the server does not proxy artifacts): the endpoint, the addressing style, TLS,
//! and the store's per-write options as upload extra args. The AWS variables boto3 reads itself
//! (region, CA bundle, retries, checksums, credentials) are the env keys every Stack publishes.

use std::collections::BTreeMap;

use super::env::addressing_style_value;
use crate::resolve::ResolvedStore;

/// The key with the value of the tracking server's `--artifacts-destination`: the store's path.
pub const DESTINATION_KEY: &str = "MLFLOW_ARTIFACTS_DESTINATION";

/// MLflow's keys for `store`, or the setting MLflow has no variable for (a sentence that names it).
pub fn render(store: &ResolvedStore) -> Result<BTreeMap<String, String>, String> {
    // MLflow builds its boto3 client with a Config of its own: only its variables reach it, and
    // botocore has none for timeouts.
    let unsupported = [
        (store.client.connect_timeout_seconds.is_some(), "spec.client.connectTimeoutSeconds"),
        (store.client.read_timeout_seconds.is_some(), "spec.client.readTimeoutSeconds"),
    ];
    if let Some((_, setting)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(format!(
            "MLflow has no variable for {setting} of ArtifactStore {}: MLflow's S3 client takes its own timeouts; remove the setting or remove MLflow from spec.outputs.formats",
            store.name
        ));
    }
    let mut keys = BTreeMap::from([(DESTINATION_KEY.to_owned(), store.path.to_string())]);
    if let Some(endpoint) = &store.endpoint {
        keys.insert("MLFLOW_S3_ENDPOINT_URL".to_owned(), endpoint.url.clone());
        let style = addressing_style_value(endpoint.addressing_style);
        keys.insert("MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE".to_owned(), style.to_owned());
        // Never beside a CA bundle: MLflow's documentation says one or the other.
        if endpoint.insecure_skip_verify {
            keys.insert("MLFLOW_S3_IGNORE_TLS".to_owned(), "true".to_owned());
        }
        // A proxying server hands its clients presigned URLs for large uploads and for downloads,
        // which they fetch with `requests`: that reads neither AWS_CA_BUNDLE nor MLFLOW_S3_IGNORE_TLS,
        // so against a private CA every such transfer fails TLS verification. Through the server,
        // which trusts the CA, they work.
        if endpoint.ca_bundle.is_some() || endpoint.insecure_skip_verify {
            keys.insert("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD".to_owned(), "false".to_owned());
            keys.insert("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD".to_owned(), "false".to_owned());
        }
    }
    let upload = super::upload_args(store);
    if !upload.is_empty() {
        keys.insert("MLFLOW_S3_UPLOAD_EXTRA_ARGS".to_owned(), serde_json::Value::Object(upload).to_string());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn mlflow(spec: Value) -> Result<BTreeMap<String, String>, String> {
        render(&crate::resolve::test_store(spec, "eu-west-1"))
    }

    #[test]
    fn the_server_needs_only_the_destination_and_the_endpoint() {
        let keys = mlflow(json!({"path": "s3://bucket/runs", "auth": {"implicit": {}},
            "endpoint": {"url": "http://minio:9000", "addressingStyle": "Path"},
            "objectDefaults": {"serverSideEncryption": "AES256", "storageClass": "STANDARD_IA"}}))
        .unwrap();
        assert_eq!(keys[DESTINATION_KEY], "s3://bucket/runs");
        assert_eq!(keys["MLFLOW_S3_ENDPOINT_URL"], "http://minio:9000");
        assert_eq!(keys["MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE"], "path");
        let extra: Value = serde_json::from_str(&keys["MLFLOW_S3_UPLOAD_EXTRA_ARGS"]).unwrap();
        assert_eq!(extra, json!({"ServerSideEncryption": "AES256", "StorageClass": "STANDARD_IA"}));
        assert!(!keys.contains_key("MLFLOW_S3_IGNORE_TLS"));
        assert!(
            !keys.contains_key("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"),
            "presigned URLs work without a private CA"
        );
        let private_ca = mlflow(json!({"path": "s3://bucket", "auth": {"implicit": {}},
            "endpoint": {"url": "https://minio:9000", "tls": {"caBundle": {"name": "ca"}}}}))
        .unwrap();
        assert_eq!(private_ca["MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"], "false");
        assert_eq!(private_ca["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"], "false");
        assert!(!private_ca.contains_key("MLFLOW_S3_IGNORE_TLS"), "one or the other, never both");
        let aws = mlflow(json!({"path": "s3://bucket", "auth": {"implicit": {}}})).unwrap();
        assert_eq!(aws.keys().collect::<Vec<_>>(), [DESTINATION_KEY], "on AWS boto3 finds the rest itself");
    }

    #[test]
    fn a_setting_mlflow_has_no_variable_for_is_named() {
        let refused =
            mlflow(json!({"path": "s3://bucket", "auth": {"implicit": {}}, "client": {"readTimeoutSeconds": 30}}));
        assert!(refused.unwrap_err().contains("spec.client.readTimeoutSeconds"));
    }
}
