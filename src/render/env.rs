//! Keys for `envFrom`: the variables boto3, s3fs and the AWS CLI read, plus the store's location.
//! Against a custom endpoint they include when checksums are computed, which the AWS SDKs of
//! every language read from the same two variables.

use std::collections::BTreeMap;

use crate::api::artifact_store::AddressingStyle;
use crate::resolve::{ConsumerCredentials, ResolvedStore, SESSION_CONFIG_KEY, SESSION_MOUNT_PATH};

/// The variables that, set in a pod, would come before IRSA's web identity in the SDKs' credential
/// chains (keys, a profile, a credentials file, the container endpoint) or send its
/// AssumeRoleWithWebIdentity elsewhere (a global or STS endpoint). Implicit auth renders none of
/// them: the pod's ServiceAccount decides, not the Stack.
pub const WEB_IDENTITY_CHAIN_BREAKERS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_STS",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
];

/// The key with the custom endpoint's addressing style, in botocore's words.
pub const ADDRESSING_STYLE: &str = "ARTIFACT_STORE_ADDRESSING_STYLE";

/// An addressing style as botocore's `addressing_style` names it.
pub fn addressing_style_value(style: AddressingStyle) -> &'static str {
    match style {
        AddressingStyle::Auto => "auto",
        AddressingStyle::Path => "path",
        AddressingStyle::VirtualHosted => "virtual",
    }
}

/// The addressing style [`addressing_style_value`] wrote.
pub fn parse_addressing_style(value: &str) -> Option<AddressingStyle> {
    [AddressingStyle::Auto, AddressingStyle::Path, AddressingStyle::VirtualHosted]
        .into_iter()
        .find(|&style| addressing_style_value(style) == value)
}

pub fn render(store: &ResolvedStore) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |key: &str, value: String| {
        env.insert(key.to_owned(), value);
    };
    set("ARTIFACT_STORE_NAME", store.name.clone());
    set("ARTIFACT_STORE_PATH", store.path.to_string());
    set("ARTIFACT_STORE_BUCKET", store.path.bucket.clone());
    set("ARTIFACT_STORE_PREFIX", store.path.prefix.clone());
    set("AWS_REGION", store.region.clone());
    set("AWS_DEFAULT_REGION", store.region.clone());
    if let Some(endpoint) = &store.endpoint {
        set("AWS_ENDPOINT_URL_S3", endpoint.url.clone());
        set(ADDRESSING_STYLE, addressing_style_value(endpoint.addressing_style).to_owned());
        set("AWS_REQUEST_CHECKSUM_CALCULATION", endpoint.checksums.sdk_value().to_owned());
        set("AWS_RESPONSE_CHECKSUM_VALIDATION", endpoint.checksums.sdk_value().to_owned());
    }
    if let Some(path) = store.ca_bundle_path() {
        set("AWS_CA_BUNDLE", path);
    }
    if let Some(mode) = store.retry_mode() {
        set("AWS_RETRY_MODE", mode.to_owned());
    }
    if let Some(attempts) = store.client.max_attempts {
        set("AWS_MAX_ATTEMPTS", attempts.to_string());
    }
    match store.auth.consumer_credentials() {
        ConsumerCredentials::Keys { env_secret, .. } => set("ARTIFACT_STORE_CREDENTIALS_SECRET", env_secret.to_owned()),
        ConsumerCredentials::Session { secret } => {
            set("ARTIFACT_STORE_CREDENTIALS_SECRET", secret.to_owned());
            // The SDKs take credential_process from this file (Go's SDK v1 only when told to).
            set("AWS_CONFIG_FILE", format!("{SESSION_MOUNT_PATH}/{SESSION_CONFIG_KEY}"));
            set("AWS_SDK_LOAD_CONFIG", "1".to_owned());
        }
        ConsumerCredentials::Ambient { .. } => {}
    }
    env
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn env_of(spec: serde_json::Value) -> BTreeMap<String, String> {
        render(&crate::resolve::test_store(spec, "us-east-1"))
    }

    #[test]
    fn checksums_are_said_for_a_custom_endpoint_only() {
        let minio = env_of(
            json!({"path": "s3://bucket/runs", "endpoint": {"url": "http://minio:9000"}, "auth": {"implicit": {}}}),
        );
        assert_eq!(minio["AWS_REQUEST_CHECKSUM_CALCULATION"], "when_required", "the default for a custom endpoint");
        assert_eq!(minio["AWS_RESPONSE_CHECKSUM_VALIDATION"], "when_required");
        let told = env_of(json!({"path": "s3://bucket/runs", "auth": {"implicit": {}},
            "endpoint": {"url": "http://minio:9000", "checksums": "WhenSupported"}}));
        assert_eq!(told["AWS_REQUEST_CHECKSUM_CALCULATION"], "when_supported");
        let aws = env_of(json!({"path": "s3://bucket/runs", "auth": {"implicit": {}}}));
        assert!(!aws.contains_key("AWS_REQUEST_CHECKSUM_CALCULATION"), "AWS takes the SDKs' default");
    }

    #[test]
    fn implicit_auth_leaves_the_web_identity_chain_alone() {
        let env = env_of(json!({"path": "s3://bucket/runs", "endpoint": {"url": "http://minio:9000"},
            "auth": {"implicit": {"serviceAccountName": "runner", "roleArn": "arn:aws:iam::123456789012:role/ml"}}}));
        for key in WEB_IDENTITY_CHAIN_BREAKERS.iter().chain(&["ARTIFACT_STORE_CREDENTIALS_SECRET"]) {
            assert!(!env.contains_key(*key), "{key} is rendered: {env:?}");
        }
        assert_eq!(env["AWS_ENDPOINT_URL_S3"], "http://minio:9000", "the endpoint is S3's alone");
    }
}
