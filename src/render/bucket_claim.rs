//! The keys an ObjectBucketClaim's ConfigMap carries (Rook, NooBaa), for applications written
//! against bucket claims: `BUCKET_HOST` (the endpoint's host, no scheme), `BUCKET_PORT` (its own
//! key), `BUCKET_NAME`, `BUCKET_REGION` and `BUCKET_SUBREGION` (empty, as Rook leaves it). They
//! pair with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` in the store's credentials Secret.
//!
//! What a claim's consumer cannot learn from these keys: whether to speak TLS (Rook's examples
//! take `http://` for granted; `ARTIFACT_STORE_ENDPOINT_SCHEME` says), which CA to trust
//! (`AWS_CA_BUNDLE`), and the prefix below which to write (`ARTIFACT_STORE_PREFIX`), since a
//! claim owns a whole bucket.

use std::collections::BTreeMap;

use crate::api::artifact_store::AddressingStyle;
use crate::resolve::{ConsumerCredentials, ResolvedStore};

/// The key that says the scheme a claim's consumer must use with `BUCKET_HOST`.
pub const SCHEME_KEY: &str = "ARTIFACT_STORE_ENDPOINT_SCHEME";

/// The claim's keys for `store`, or what keeps a claim's consumer from using it (a sentence that
/// names the setting to change).
pub fn render(store: &ResolvedStore) -> Result<BTreeMap<String, String>, String> {
    match store.auth.consumer_credentials() {
        ConsumerCredentials::Keys { .. } => {}
        ConsumerCredentials::Ambient { .. } => {
            return Err(format!(
                "a bucket claim's consumer reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from a Secret, and ArtifactStore {} uses implicit auth (spec.auth.implicit): give the store keys (spec.auth.secretRef) or remove BucketClaim from spec.outputs.formats",
                store.name
            ));
        }
        ConsumerCredentials::Session { .. } => {
            return Err("a bucket claim's consumer reads only AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and session credentials (spec.credentials.mode Scoped) also need AWS_SESSION_TOKEN: set spec.credentials.mode to Shared or remove BucketClaim from spec.outputs.formats".to_owned());
        }
    }
    let (scheme, host, port) = match &store.endpoint {
        Some(endpoint) => {
            if endpoint.addressing_style == AddressingStyle::VirtualHosted {
                return Err(format!(
                    "a bucket claim's consumer names the bucket in the path (BUCKET_HOST:BUCKET_PORT/BUCKET_NAME), and ArtifactStore {} asks for virtual-hosted addressing (spec.endpoint.addressingStyle): set it to Path or Auto, or remove BucketClaim from spec.outputs.formats",
                    store.name
                ));
            }
            endpoint_parts(&endpoint.url)
                .ok_or_else(|| format!("the endpoint {} of ArtifactStore {} has no host", endpoint.url, store.name))?
        }
        None => {
            let domain = if store.region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" };
            ("https".to_owned(), format!("s3.{}.{domain}", store.region), 443)
        }
    };
    Ok(BTreeMap::from([
        ("BUCKET_HOST".to_owned(), host),
        ("BUCKET_PORT".to_owned(), port.to_string()),
        ("BUCKET_NAME".to_owned(), store.path.bucket.clone()),
        ("BUCKET_REGION".to_owned(), store.region.clone()),
        ("BUCKET_SUBREGION".to_owned(), String::new()),
        (SCHEME_KEY.to_owned(), scheme),
    ]))
}

/// The scheme, host (without brackets for IPv6, as a claim's host has none) and port of `url`,
/// the port defaulting to the scheme's.
fn endpoint_parts(url: &str) -> Option<(String, String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(if scheme == "http" { 80 } else { 443 });
    Some((scheme, host, port))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn claim(spec: Value) -> Result<BTreeMap<String, String>, String> {
        render(&crate::resolve::test_store(spec, "eu-west-1"))
    }

    const KEYS: &str = r#"{"secretRef": {"name": "keys"}}"#;

    #[test]
    fn the_host_has_no_scheme_and_the_port_is_its_own_key() {
        let keys: Value = serde_json::from_str(KEYS).unwrap();
        let minio =
            claim(json!({"path": "s3://bucket/runs", "auth": keys, "endpoint": {"url": "http://minio.storage:9000"}}));
        let minio = minio.unwrap();
        assert_eq!((minio["BUCKET_HOST"].as_str(), minio["BUCKET_PORT"].as_str()), ("minio.storage", "9000"));
        assert_eq!((minio["BUCKET_NAME"].as_str(), minio["BUCKET_REGION"].as_str()), ("bucket", "eu-west-1"));
        assert_eq!((minio["BUCKET_SUBREGION"].as_str(), minio[SCHEME_KEY].as_str()), ("", "http"));
        let tls =
            claim(json!({"path": "s3://bucket", "auth": keys, "endpoint": {"url": "https://[fd00::1]/"}})).unwrap();
        assert_eq!(
            (tls["BUCKET_HOST"].as_str(), tls["BUCKET_PORT"].as_str(), tls[SCHEME_KEY].as_str()),
            ("fd00::1", "443", "https")
        );
        let aws = claim(json!({"path": "s3://bucket", "auth": keys})).unwrap();
        assert_eq!((aws["BUCKET_HOST"].as_str(), aws["BUCKET_PORT"].as_str()), ("s3.eu-west-1.amazonaws.com", "443"));
    }

    #[test]
    fn what_a_claim_s_consumer_cannot_use_is_refused_naming_the_setting() {
        let keys: Value = serde_json::from_str(KEYS).unwrap();
        let implicit = claim(json!({"path": "s3://bucket", "auth": {"implicit": {}}})).unwrap_err();
        assert!(implicit.contains("spec.auth.implicit"), "{implicit}");
        let virtual_hosted = claim(json!({"path": "s3://bucket", "auth": keys,
            "endpoint": {"url": "https://s3.example.com", "addressingStyle": "VirtualHosted"}}));
        assert!(virtual_hosted.unwrap_err().contains("spec.endpoint.addressingStyle"));
    }
}
