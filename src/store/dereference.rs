//! Dereference: everything the store points at, from its own namespace only.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::ResourceExt;

use crate::api::artifact_store::{CaBundleKind, CaBundleRef};
use crate::aws::StaticKeys;
use crate::controller::Context;
use crate::controller::caches::{Reference, version_of};
use crate::owner::Kind;
use crate::reason::{Failure, Reason};
use crate::resolve::{KeyRefs, ResolvedStore};

/// The store's referenced objects, resolved. Holds key material: never log or display it.
pub struct Inputs {
    pub keys: Option<StaticKeys>,
    pub has_session_token: bool,
    pub ca_pem: Option<String>,
    pub service_account: Option<Arc<ServiceAccount>>,
    /// Identifies this combination of spec and referenced objects (generation and resource
    /// versions, never content), so unchanged inputs need no full re-verification.
    pub fingerprint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {kind} {name}")]
    Read { kind: &'static str, name: String, source: kube::Error },
    #[error("{}", .0.message)]
    Invalid(Failure),
}

/// Whether a credential can travel in an HTTP header as the AWS SDKs send it: visible ASCII only.
/// A pasted newline, a control character or a non-ASCII letter would otherwise reach the SDK's
/// signer, which panics on a header value it cannot build.
pub fn is_header_safe(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_graphic())
}

fn value(secret: &Secret, key: &str) -> Option<String> {
    let from_data =
        secret.data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).trim().to_owned());
    let from_string = secret.string_data.as_ref().and_then(|d| d.get(key)).map(|s| s.trim().to_owned());
    from_data.or(from_string).filter(|v| !v.is_empty())
}

/// Reads what `resolved` names, through the caches (see [`crate::controller::reads`]).
pub async fn dereference(ctx: &Context, resolved: &ResolvedStore) -> Result<Inputs, Error> {
    let namespace = &resolved.owner.namespace;
    let mut versions = vec![resolved.generation.unwrap_or_default().to_string()];
    // The Secret first, then the CA bundle, then the ServiceAccount: the first failure is the
    // one reported, and the fingerprint lists their versions in this order.
    let mut keys = None;
    if let Some(refs) = resolved.auth.keys() {
        let secret = ctx.read::<Secret>(namespace, &refs.secret_name).await;
        let secret = secret.map_err(read("Secret", &refs.secret_name))?;
        let secret = secret.ok_or_else(|| Error::Invalid(secret_not_found(refs, namespace)))?;
        versions.push(secret.resource_version().unwrap_or_default());
        keys = Some(keys_in(&secret, refs).map_err(Error::Invalid)?);
    }
    let mut ca_pem = None;
    if let Some(ca) = resolved.endpoint.as_ref().and_then(|e| e.ca_bundle.as_ref()) {
        let (pem, version) = read_ca_bundle(ctx, namespace, ca).await?;
        ca_pem = Some(pem);
        versions.push(version.unwrap_or_default());
    }
    let mut service_account = None;
    if let Some(name) = resolved.auth.service_account() {
        let account = read_service_account(ctx, namespace, name).await?;
        versions.push(account.resource_version().unwrap_or_default());
        service_account = Some(account);
    }
    let has_session_token = keys.as_ref().is_some_and(|k| k.session_token.is_some());
    Ok(Inputs { keys, has_session_token, ca_pem, service_account, fingerprint: versions.join("/") })
}

/// Whether the inputs `fingerprint` names (see [`dereference`]) are those the caches hold now:
/// the same generation, and each object the store reads at the same resourceVersion, so that
/// nothing needs reading to know they did not change. False when the caches do not hold one of
/// them, and for a store with a CA bundle (whose PEM its ConfigMap carries, which only a read
/// tells).
pub fn unchanged_since(ctx: &Context, resolved: &ResolvedStore, fingerprint: &str) -> bool {
    let namespace = &resolved.owner.namespace;
    let Some(caches) = ctx.caches(namespace) else { return false };
    if resolved.endpoint.as_ref().is_some_and(|e| e.ca_bundle.is_some()) {
        return false;
    }
    let mut read = Vec::new();
    if let Some(refs) = resolved.auth.keys() {
        read.push(Reference::new(Kind::Secret, &refs.secret_name));
    }
    if let Some(name) = resolved.auth.service_account() {
        read.push(Reference::new(Kind::ServiceAccount, name));
    }
    let mut versions = fingerprint.split('/');
    let generation = resolved.generation.unwrap_or_default().to_string();
    versions.next() == Some(generation.as_str())
        && read.iter().all(|reference| {
            versions.next().is_some_and(|version| caches.version(namespace, reference) == Some(version_of(version)))
        })
        && versions.next().is_none()
}

/// A failed read of the `kind` named `name`.
fn read(kind: &'static str, name: &str) -> impl FnOnce(kube::Error) -> Error {
    let name = name.to_owned();
    move |source| Error::Read { kind, name, source }
}

/// The ServiceAccount `name` of `spec.auth.implicit`, which must exist.
async fn read_service_account(ctx: &Context, namespace: &str, name: &str) -> Result<Arc<ServiceAccount>, Error> {
    let account = ctx.service_account(namespace, name).await.map_err(read("ServiceAccount", name))?;
    account.ok_or_else(|| {
        Error::Invalid(Failure::new(
            Reason::ServiceAccountNotFound,
            format!(
                "ServiceAccount {name} (spec.auth.implicit.serviceAccountName) does not exist in namespace {namespace}"
            ),
        ))
    })
}

fn secret_not_found(auth: &KeyRefs, namespace: &str) -> Failure {
    Failure::new(
        Reason::SecretNotFound,
        format!(
            "Secret {} does not exist in namespace {namespace}; create it with the keys {} and {}",
            auth.secret_name, auth.access_key_id_key, auth.secret_access_key_key
        ),
    )
}

/// The keys that `auth` names in `secret`: both present, and each one sendable in a header.
fn keys_in(secret: &Secret, auth: &KeyRefs) -> Result<StaticKeys, Failure> {
    let missing = |key: &str| {
        Failure::new(
            Reason::SecretKeyMissing,
            format!(
                "Secret {} has no non-empty key {key}; add it, or name the key that holds it in spec.auth.secretRef",
                auth.secret_name
            ),
        )
    };
    let access_key_id = value(secret, &auth.access_key_id_key).ok_or_else(|| missing(&auth.access_key_id_key))?;
    let secret_access_key =
        value(secret, &auth.secret_access_key_key).ok_or_else(|| missing(&auth.secret_access_key_key))?;
    let session_token = value(secret, &auth.session_token_key);
    let named = [
        (auth.access_key_id_key.as_str(), Some(&access_key_id)),
        (auth.secret_access_key_key.as_str(), Some(&secret_access_key)),
        (auth.session_token_key.as_str(), session_token.as_ref()),
    ];
    if let Some((key, _)) = named.iter().find(|(_, v)| v.is_some_and(|v| !is_header_safe(v))) {
        return Err(Failure::new(
            Reason::SecretValueInvalid,
            format!(
                "Secret {} key {key} holds a character that cannot be sent to S3 (a line break, a space, a control or non-ASCII character; often a value pasted with a newline in the middle); put the bare value in the key",
                auth.secret_name
            ),
        ));
    }
    Ok(StaticKeys { access_key_id, secret_access_key, session_token })
}

/// The CA bundle that `ca` names, checked, and the resourceVersion of the object that holds it.
async fn read_ca_bundle(ctx: &Context, namespace: &str, ca: &CaBundleRef) -> Result<(String, Option<String>), Error> {
    let not_found = || {
        Error::Invalid(Failure::new(
            Reason::CaBundleNotFound,
            format!(
                "{:?} {} with key {} (endpoint.tls.caBundle) does not exist in namespace {namespace}",
                ca.kind, ca.name, ca.key
            ),
        ))
    };
    let (pem, version) = match ca.kind {
        CaBundleKind::ConfigMap => {
            let cm = ctx.read::<ConfigMap>(namespace, &ca.name).await.map_err(read("ConfigMap", &ca.name))?;
            let cm = cm.ok_or_else(not_found)?;
            (cm.data.as_ref().and_then(|d| d.get(&ca.key)).cloned(), cm.resource_version())
        }
        CaBundleKind::Secret => {
            let secret = ctx.read::<Secret>(namespace, &ca.name).await.map_err(read("Secret", &ca.name))?;
            let secret = secret.ok_or_else(not_found)?;
            (value(&secret, &ca.key), secret.resource_version())
        }
    };
    let bundle = crate::ca_bundle::parse(&pem.ok_or_else(not_found)?).map_err(|error| {
        Error::Invalid(Failure::new(
            Reason::CaBundleInvalid,
            format!(
                "{:?} {} key {} (endpoint.tls.caBundle) is not a usable CA bundle: {error}; put the PEM certificates of the CA that signed the endpoint's certificate there",
                ca.kind, ca.name, ca.key
            ),
        ))
    })?;
    Ok((bundle.pem().to_owned(), version))
}

#[cfg(test)]
mod tests {
    use super::is_header_safe;

    #[test]
    fn credentials_must_be_visible_ascii() {
        assert!(is_header_safe("AKIAIOSFODNN7EXAMPLE"));
        assert!(is_header_safe("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY+="));
        for bad in ["AKIA\nEXAMPLE", "AKIA EXAMPLE", "AKIA\u{7f}", "AKIA\tX", "clé", "AKIA\r"] {
            assert!(!is_header_safe(bad), "{bad:?}");
        }
    }
}
