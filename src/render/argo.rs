//! Argo Workflows' artifact repository (`ArtifactRepository` with an `s3` member), as the value of
//! a key of the namespace's ConfigMap `artifact-repositories`, where Argo's controller looks for
//! `artifactRepositoryRef`s and for the namespace default. Renders only fields that Argo 3.6, 3.7
//! and 4.x all read, unless asked for `addressingStyle` (4.1 and later).

use serde_json::{Value, json};

use crate::api::artifact_store::AddressingStyle;
use crate::resolve::ResolvedStore;

/// The ConfigMap in which Argo looks for artifact repositories.
pub const CONFIG_MAP: &str = "artifact-repositories";
/// The annotation naming the key of [`CONFIG_MAP`] that is the namespace's default repository.
pub const DEFAULT_REPOSITORY_ANNOTATION: &str = "workflows.argoproj.io/default-artifact-repository";

/// How the repository reaches a private CA: a Secret key (Argo reads `caSecret` only from Secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaSecret {
    pub name: String,
    pub key: String,
}

/// Which optional fields to render.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub ca_secret: Option<CaSecret>,
    /// Render `addressingStyle` (Argo 4.1 and later).
    pub addressing_style: bool,
}

pub fn artifact_repository(store: &ResolvedStore, options: &Options) -> Value {
    let (endpoint, insecure) = match &store.endpoint {
        Some(endpoint) => {
            let rest = endpoint.url.split_once("://").map_or(endpoint.url.as_str(), |(_, rest)| rest);
            (rest.split('/').next().unwrap_or(rest).to_owned(), !endpoint.is_https())
        }
        None => (crate::resolve::aws_s3_host(&store.region), false),
    };
    let key_format = match store.path.prefix.as_str() {
        "" => "{{workflow.name}}/{{pod.name}}".to_owned(),
        prefix => format!("{prefix}/{{{{workflow.name}}}}/{{{{pod.name}}}}"),
    };
    let mut s3 = json!({
        "bucket": store.path.bucket,
        "endpoint": endpoint,
        "insecure": insecure,
        "region": store.region,
        "keyFormat": key_format,
    });
    // Argo's executor reads the Secret when a step starts; session credentials stay valid for a
    // third of their lifetime at least.
    match store.auth.consumer_credentials().secret_keys() {
        Some(keys) => {
            s3["accessKeySecret"] = json!({"name": keys.secret, "key": keys.access_key_id});
            s3["secretKeySecret"] = json!({"name": keys.secret, "key": keys.secret_access_key});
            if let Some(token) = keys.session_token {
                s3["sessionTokenSecret"] = json!({"name": keys.secret, "key": token});
            }
        }
        None => s3["useSDKCreds"] = json!(true),
    }
    if let Some(ca) = &options.ca_secret {
        s3["caSecret"] = json!({"name": ca.name, "key": ca.key});
    }
    if options.addressing_style {
        let style = match store.endpoint.as_ref().map(|e| e.addressing_style) {
            // Argo's own detection (minio-go's): virtual-hosted for AWS, path style elsewhere.
            None | Some(AddressingStyle::Auto) => None,
            Some(AddressingStyle::Path) => Some("path"),
            Some(AddressingStyle::VirtualHosted) => Some("virtual-hosted"),
        };
        if let Some(style) = style {
            s3["addressingStyle"] = json!(style);
        }
    }
    if let Some(sse) = store.object_defaults.server_side_encryption {
        let mut options = json!({"enableEncryption": true});
        if let (Some(key), true) = (&store.object_defaults.sse_kms_key_id, sse.as_str().starts_with("aws:kms")) {
            options["kmsKeyId"] = json!(key);
        }
        s3["encryptionOptions"] = options;
    }
    json!({ "s3": s3 })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn resolved(endpoint: serde_json::Value) -> ResolvedStore {
        let spec = json!({"path": "s3://bucket/runs", "endpoint": endpoint, "auth": {"secretRef": {"name": "keys"}}});
        crate::resolve::test_store_named("ml", spec, "us-east-1", true)
    }

    #[test]
    fn a_ca_is_a_secret_reference_and_addressing_style_only_when_asked() {
        let store = resolved(json!({"url": "https://rgw.example:8443", "addressingStyle": "VirtualHosted"}));
        let plain = artifact_repository(&store, &Options::default());
        assert!(plain["s3"].get("caSecret").is_none() && plain["s3"].get("addressingStyle").is_none());
        assert_eq!(plain["s3"]["insecure"], false);
        assert_eq!(plain["s3"]["sessionTokenSecret"], json!({"name": "keys", "key": "aws_session_token"}));
        let ca = CaSecret { name: "prod-ca-bundle".into(), key: "ca-bundle.pem".into() };
        let options = Options { ca_secret: Some(ca), addressing_style: true };
        let newer = artifact_repository(&store, &options);
        assert_eq!(newer["s3"]["caSecret"], json!({"name": "prod-ca-bundle", "key": "ca-bundle.pem"}));
        assert_eq!(newer["s3"]["addressingStyle"], "virtual-hosted");
        let auto = resolved(json!({"url": "http://minio:9000"}));
        let options = Options { addressing_style: true, ..Options::default() };
        assert!(artifact_repository(&auto, &options)["s3"].get("addressingStyle").is_none());
    }
}
