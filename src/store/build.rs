//! Build: the objects an ArtifactStore publishes. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::core::ObjectMeta;

use crate::aws::StaticKeys;
use crate::owner::Owner;
use crate::render;
use crate::resolve::{CA_BUNDLE_KEY, ConsumerCredentials, ResolvedStore, STORE_CONFIG_MAP, STORE_ENV_SECRET};

/// The ConfigMap key with ZenML's S3 artifact store configuration.
pub const ZENML_KEY: &str = "zenml-artifact-store.json";

fn owned_meta(owner: &Owner, name: String) -> ObjectMeta {
    owner.owned_meta("artifact-store", name)
}

/// The store's ConfigMap: env keys, ZenML's config, the credentials' whereabouts (never values),
/// and the CA bundle when there is one.
pub fn config_map(resolved: &ResolvedStore, ca_pem: Option<&str>) -> ConfigMap {
    let mut data = render::env::render(resolved);
    data.insert(ZENML_KEY.to_owned(), render::to_json(&render::zenml::artifact_store_config(resolved)));
    if let ConsumerCredentials::Keys { source, .. } = resolved.auth.consumer_credentials() {
        data.insert("ARTIFACT_STORE_SECRET_NAME".into(), source.secret.to_owned());
        data.insert("ARTIFACT_STORE_SECRET_ACCESS_KEY_ID_KEY".into(), source.access_key_id.to_owned());
        data.insert("ARTIFACT_STORE_SECRET_SECRET_ACCESS_KEY_KEY".into(), source.secret_access_key.to_owned());
        if let Some(token) = source.session_token {
            data.insert("ARTIFACT_STORE_SECRET_SESSION_TOKEN_KEY".into(), token.to_owned());
        }
    }
    if let Some(pem) = ca_pem {
        data.insert(CA_BUNDLE_KEY.to_owned(), pem.to_owned());
    }
    let name = STORE_CONFIG_MAP.name(&resolved.name);
    ConfigMap { metadata: owned_meta(&resolved.owner, name), data: Some(data), ..ConfigMap::default() }
}

/// The owned Secret with the user's keys under the names AWS SDKs read, for `envFrom`.
pub fn env_secret(owner: &Owner, keys: &StaticKeys) -> Secret {
    let mut data = BTreeMap::from([
        ("AWS_ACCESS_KEY_ID".to_owned(), keys.access_key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), keys.secret_access_key.clone()),
    ]);
    if let Some(token) = &keys.session_token {
        data.insert("AWS_SESSION_TOKEN".to_owned(), token.clone());
    }
    Secret {
        metadata: owned_meta(owner, STORE_ENV_SECRET.name(&owner.name)),
        string_data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ArtifactStore;

    fn store(spec: serde_json::Value) -> ArtifactStore {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore",
            "metadata": {"name": "ml", "namespace": "team", "uid": "u-1"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn renders_env_and_zenml_without_secret_values() {
        let store = store(serde_json::json!({
            "path": "s3://bucket/runs", "auth": {"secretRef": {"name": "creds"}},
            "endpoint": {"url": "http://minio:9000", "addressingStyle": "Path"},
            "objectDefaults": {"serverSideEncryption": "AES256"},
            "client": {"retryMode": "standard", "maxAttempts": 4}
        }));
        let resolved = ResolvedStore::new(&store, "us-east-1", false).unwrap();
        let cm = config_map(&resolved, None);
        assert_eq!(cm.metadata.name.as_deref(), Some("ml-artifact-store"));
        assert_eq!(cm.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        let data = cm.data.unwrap();
        assert_eq!(data["AWS_ENDPOINT_URL_S3"], "http://minio:9000");
        assert_eq!(data["ARTIFACT_STORE_PATH"], "s3://bucket/runs");
        assert_eq!(data["AWS_MAX_ATTEMPTS"], "4");
        assert_eq!(data["ARTIFACT_STORE_CREDENTIALS_SECRET"], "ml-aws-credentials");
        assert_eq!(data["ARTIFACT_STORE_SECRET_ACCESS_KEY_ID_KEY"], "aws_access_key_id");
        let zenml: serde_json::Value = serde_json::from_str(&data[ZENML_KEY]).unwrap();
        assert_eq!(zenml["path"], "s3://bucket/runs");
        assert_eq!(zenml["client_kwargs"]["endpoint_url"], "http://minio:9000");
        assert_eq!(zenml["config_kwargs"]["s3"]["addressing_style"], "path");
        assert_eq!(zenml["config_kwargs"]["retries"]["mode"], "standard");
        assert_eq!(zenml["s3_additional_kwargs"]["ServerSideEncryption"], "AES256");
        assert!(zenml.get("key").is_none() && zenml.get("secret").is_none());
    }

    #[test]
    fn env_secret_uses_aws_names() {
        let store = store(serde_json::json!({"path": "s3://bucket", "auth": {"secretRef": {"name": "creds"}}}));
        let keys = StaticKeys { access_key_id: "AKID".into(), secret_access_key: "SECRET".into(), session_token: None };
        let secret = env_secret(&Owner::of(&store), &keys);
        let data = secret.string_data.unwrap();
        assert_eq!(data["AWS_ACCESS_KEY_ID"], "AKID");
        assert_eq!(data["AWS_SECRET_ACCESS_KEY"], "SECRET");
        assert!(!data.contains_key("AWS_SESSION_TOKEN"));
    }
}
