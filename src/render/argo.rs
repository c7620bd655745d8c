//! Argo Workflows' artifact repository (`ArtifactRepository` with an `s3` member), as the value of
//! a ConfigMap key that `artifactRepositoryRef` or the namespace default can point at.

use serde_json::{Value, json};

use crate::resolve::{ResolvedAuth, ResolvedStore};

/// The ConfigMap key the repository is rendered under.
pub const KEY: &str = "argo-artifact-repository";
/// The annotation that makes a ConfigMap key the namespace's default artifact repository.
pub const DEFAULT_REPOSITORY_ANNOTATION: &str = "workflows.argoproj.io/default-artifact-repository";

pub fn artifact_repository(store: &ResolvedStore) -> Value {
    let (endpoint, insecure) = match &store.endpoint {
        Some(endpoint) => {
            let rest = endpoint.url.split_once("://").map_or(endpoint.url.as_str(), |(_, rest)| rest);
            (rest.split('/').next().unwrap_or(rest).to_owned(), !endpoint.is_https())
        }
        None => (format!("s3.{}.amazonaws.com", store.region), false),
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
    match &store.auth {
        ResolvedAuth::Keys(keys) => {
            s3["accessKeySecret"] = json!({"name": keys.secret_name, "key": keys.access_key_id_key});
            s3["secretKeySecret"] = json!({"name": keys.secret_name, "key": keys.secret_access_key_key});
        }
        ResolvedAuth::Implicit { .. } => s3["useSDKCreds"] = json!(true),
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
