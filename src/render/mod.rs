//! Renderings of a [`ResolvedStore`](crate::resolve::ResolvedStore) for each consumer. Pure
//! functions: the same input always gives the same bytes, and no secret value is ever an input.

pub mod argo;
pub mod bucket_claim;
pub mod env;
pub mod kfp;
pub mod mlflow;
pub mod zenml;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// SHA-256 over ConfigMap data, in key order.
pub fn content_hash(data: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in data {
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Pretty JSON with a trailing newline, as it is stored in ConfigMaps.
pub fn to_json(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// The store's per-write options as boto3's `ExtraArgs` of an upload (`ServerSideEncryption`,
/// `SSEKMSKeyId`, `ACL`, `StorageClass`): ZenML's `s3_additional_kwargs` and MLflow's
/// `MLFLOW_S3_UPLOAD_EXTRA_ARGS`.
pub fn upload_args(store: &crate::resolve::ResolvedStore) -> serde_json::Map<String, serde_json::Value> {
    let mut args = serde_json::Map::new();
    let defaults = &store.object_defaults;
    if let Some(sse) = defaults.server_side_encryption {
        args.insert("ServerSideEncryption".into(), sse.as_str().into());
    }
    if let Some(key) = &defaults.sse_kms_key_id {
        args.insert("SSEKMSKeyId".into(), key.as_str().into());
    }
    if let Some(acl) = defaults.acl {
        args.insert("ACL".into(), acl.as_str().into());
    }
    if let Some(class) = defaults.storage_class {
        args.insert("StorageClass".into(), class.as_str().into());
    }
    args
}
