//! The resolved, secret-free description of an artifact store that every rendering reads. Built
//! from an ArtifactStore's spec and the region the operator resolved; no I/O.

use crate::api::artifact_store::{
    AddressingStyle, ArtifactStore, ArtifactStoreStatus, Auth, BucketSettings, CaBundleRef, Checksums, ClientSettings,
    Endpoint, ObjectDefaults, Provisioning, RetryMode,
};
use crate::owner::{Kind, Owner, Published};
use crate::s3path::{PathError, S3Path};

/// Where a CA bundle published in the store's ConfigMap is expected when that ConfigMap is mounted
/// as a volume at [`CONFIG_MOUNT_PATH`].
pub const CONFIG_MOUNT_PATH: &str = "/etc/artifact-store";
pub const CA_BUNDLE_KEY: &str = "ca-bundle.pem";
/// Where pods mount a Stack's Secret of scoped session credentials, and its keys: the output of
/// the credentials process (AWS's JSON) and the AWS config file that runs it.
pub const SESSION_MOUNT_PATH: &str = "/etc/artifact-store-credentials";
pub const SESSION_PROCESS_KEY: &str = "credentials.json";
pub const SESSION_CONFIG_KEY: &str = "config";

/// An ArtifactStore as everything past the top of a reconcile reads it: its spec parsed and
/// checked once (see [`ResolvedStore::of`]), never the raw spec again.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedStore {
    /// The ArtifactStore, as what it publishes and the messages about it name it.
    pub owner: Owner,
    /// Its name (the owner's), as the renderings use it.
    pub name: String,
    /// The generation of the spec resolved.
    pub generation: Option<i64>,
    pub path: S3Path,
    /// The bucket's region as the operator knows it: the store's status's (see [`status_region`]),
    /// or the one a verification found (see [`ResolvedStore::in_region`]).
    pub region: String,
    /// `spec.region`: where the user says the bucket is; None lets the operator find it.
    pub spec_region: Option<String>,
    pub endpoint: Option<ResolvedEndpoint>,
    pub auth: ResolvedAuth,
    pub client: ClientSettings,
    /// Options applied to every object written.
    pub object_defaults: ObjectDefaults,
    pub provisioning: Provisioning,
    /// `spec.bucket`: the settings of a bucket the operator creates (None: their defaults).
    pub bucket: Option<BucketSettings>,
    /// Whether proving access includes writing (and deleting) a probe object.
    pub write_probe: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedEndpoint {
    pub url: String,
    pub addressing_style: AddressingStyle,
    pub ca_bundle: Option<CaBundleRef>,
    pub insecure_skip_verify: bool,
    pub checksums: Checksums,
}

impl ResolvedEndpoint {
    fn new(endpoint: &Endpoint) -> Self {
        Self {
            url: endpoint_url(&endpoint.url),
            addressing_style: endpoint.addressing_style,
            ca_bundle: endpoint.tls.as_ref().and_then(|t| t.ca_bundle.clone()),
            insecure_skip_verify: endpoint.tls.as_ref().is_some_and(|t| t.insecure_skip_verify),
            checksums: endpoint.checksums,
        }
    }

    pub fn is_https(&self) -> bool {
        self.url.starts_with("https://")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ResolvedAuth {
    Implicit {
        service_account: Option<String>,
        role_arn: Option<String>,
    },
    Keys(KeyRefs),
    /// A Stack's scoped session credentials (`credentials.mode: Scoped`), in its own Secret.
    Session(SessionRefs),
}

/// Where a Stack's scoped session credentials live: a Secret with the credentials process's
/// output and config (mounted at [`SESSION_MOUNT_PATH`]) and the keys under AWS environment
/// variable names.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRefs {
    pub secret_name: String,
}

/// Where access keys live: the user's Secret and its key names, and the Secret the operator
/// publishes with the same values under AWS environment variable names. Never the values.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRefs {
    pub secret_name: String,
    pub access_key_id_key: String,
    pub secret_access_key_key: String,
    /// The key that may hold a session token.
    pub session_token_key: String,
    /// Whether the Secret holds a session token: known once it was read (see
    /// [`ResolvedStore::with_session_token`]); the renderings name the key only then.
    pub holds_session_token: bool,
    pub env_secret_name: String,
}

impl KeyRefs {
    /// The session token's key, when the Secret holds one.
    pub fn held_session_token_key(&self) -> Option<&str> {
        self.holds_session_token.then_some(self.session_token_key.as_str())
    }
}

/// How consumers' pods come to their credentials, whichever auth mode gives them: what the
/// renderings, the pods' wiring and the checks of the pods' identity go by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConsumerCredentials<'a> {
    /// Their own identity (IRSA, Pod Identity, the node's role), through `service_account` when
    /// the store names one; `role_arn` is the role it must be given.
    Ambient { service_account: Option<&'a str>, role_arn: Option<&'a str> },
    /// Long-lived keys: in the user's Secret under its own key names (`source`), and in
    /// `env_secret`, which the operator publishes under AWS environment variable names.
    Keys { source: SecretKeys<'a>, env_secret: &'a str },
    /// Session credentials the operator renews, in `secret`: under AWS environment variable names,
    /// and as the credentials process's files (mounted at [`SESSION_MOUNT_PATH`]).
    Session { secret: &'a str },
}

/// The keys of a Secret that hold an access key: never the values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SecretKeys<'a> {
    pub secret: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    /// The key with a session token, when the Secret holds one.
    pub session_token: Option<&'a str>,
}

impl<'a> ConsumerCredentials<'a> {
    /// The Secret and keys a consumer that reads an access key from a Secret is given: the user's
    /// own keys, or the session credentials under AWS names. None for the pods' own identity.
    pub fn secret_keys(self) -> Option<SecretKeys<'a>> {
        match self {
            ConsumerCredentials::Keys { source, .. } => Some(source),
            ConsumerCredentials::Session { secret } => Some(SecretKeys {
                secret,
                access_key_id: "AWS_ACCESS_KEY_ID",
                secret_access_key: "AWS_SECRET_ACCESS_KEY",
                session_token: Some("AWS_SESSION_TOKEN"),
            }),
            ConsumerCredentials::Ambient { .. } => None,
        }
    }
}

impl ResolvedAuth {
    /// How consumers' pods come to their credentials under this auth.
    pub fn consumer_credentials(&self) -> ConsumerCredentials<'_> {
        match self {
            ResolvedAuth::Implicit { service_account, role_arn } => ConsumerCredentials::Ambient {
                service_account: service_account.as_deref(),
                role_arn: role_arn.as_deref(),
            },
            ResolvedAuth::Keys(keys) => ConsumerCredentials::Keys {
                source: SecretKeys {
                    secret: &keys.secret_name,
                    access_key_id: &keys.access_key_id_key,
                    secret_access_key: &keys.secret_access_key_key,
                    session_token: keys.held_session_token_key(),
                },
                env_secret: &keys.env_secret_name,
            },
            ResolvedAuth::Session(session) => ConsumerCredentials::Session { secret: &session.secret_name },
        }
    }

    /// The Secret with the credentials of consumers' pods under AWS environment variable names:
    /// the one the store publishes with its keys, or a Stack's session credentials. None when the
    /// pods use their own identity.
    pub fn consumer_secret(&self) -> Option<&str> {
        match self.consumer_credentials() {
            ConsumerCredentials::Keys { env_secret, .. } => Some(env_secret),
            ConsumerCredentials::Session { secret } => Some(secret),
            ConsumerCredentials::Ambient { .. } => None,
        }
    }

    /// The Secret with keys the store reads (and the operator verifies with), if any.
    pub fn keys(&self) -> Option<&KeyRefs> {
        match self {
            ResolvedAuth::Keys(keys) => Some(keys),
            ResolvedAuth::Implicit { .. } | ResolvedAuth::Session(_) => None,
        }
    }

    /// The ServiceAccount the store reads, which must exist, if any.
    pub fn service_account(&self) -> Option<&str> {
        match self {
            ResolvedAuth::Implicit { service_account, .. } => service_account.as_deref(),
            ResolvedAuth::Keys(_) | ResolvedAuth::Session(_) => None,
        }
    }

    /// A Stack's scoped session credentials, in the Secret `secret_name`.
    pub fn session(secret_name: &str) -> Self {
        ResolvedAuth::Session(SessionRefs { secret_name: secret_name.to_owned() })
    }

    /// `spec.auth` of the store named `store`: keys when it names a Secret, the ambient identity
    /// otherwise.
    pub fn new(auth: &Auth, store: &str) -> Self {
        match (&auth.implicit, &auth.secret_ref) {
            (_, Some(secret)) => ResolvedAuth::Keys(KeyRefs {
                secret_name: secret.name.clone(),
                access_key_id_key: secret.access_key_id_key().to_owned(),
                secret_access_key_key: secret.secret_access_key_key().to_owned(),
                session_token_key: secret.session_token_key().to_owned(),
                holds_session_token: false,
                env_secret_name: STORE_ENV_SECRET.name(store),
            }),
            (implicit, None) => {
                let implicit = implicit.as_deref().cloned().unwrap_or_default();
                ResolvedAuth::Implicit { service_account: implicit.service_account_name, role_arn: implicit.role_arn }
            }
        }
    }
}

/// The ConfigMap an ArtifactStore publishes: `<store>-artifact-store`.
pub const STORE_CONFIG_MAP: Published = Published { kind: Kind::ConfigMap, suffix: "-artifact-store" };
/// The Secret with AWS environment variable names an ArtifactStore publishes: `<store>-aws-credentials`.
pub const STORE_ENV_SECRET: Published = Published { kind: Kind::Secret, suffix: "-aws-credentials" };

/// Whether clients put the bucket in the path, given the addressing style of a custom endpoint
/// (None: AWS's own endpoint, where the bucket goes in the host name).
pub fn path_style(custom_endpoint: Option<AddressingStyle>) -> bool {
    custom_endpoint.is_some_and(|style| style != AddressingStyle::VirtualHosted)
}

/// AWS S3's own host name in `region`.
pub fn aws_s3_host(region: &str) -> String {
    format!("s3.{region}.amazonaws.com")
}

/// The endpoint as messages and the status show it: the custom one (see [`endpoint_url`]), or
/// AWS S3's own in `region`.
pub fn endpoint_shown(custom: Option<&str>, region: &str) -> String {
    match custom {
        Some(url) => endpoint_url(url),
        None => format!("https://{}", aws_s3_host(region)),
    }
}

/// A custom endpoint's URL as every client gets it: without a trailing slash.
pub fn endpoint_url(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

/// The region used when neither the spec nor the bucket gives one (S3's own default).
pub const DEFAULT_REGION: &str = "us-east-1";

/// The bucket's region as a store's status last gave it, or [`DEFAULT_REGION`] before any.
pub fn status_region(status: Option<&ArtifactStoreStatus>) -> String {
    status.and_then(|s| s.region.as_deref()).unwrap_or(DEFAULT_REGION).to_owned()
}

impl ResolvedStore {
    /// Parses and checks `store`'s spec: what the top of a reconcile does, once. Its region is
    /// the one the store's status gives (see [`status_region`]).
    pub fn of(store: &ArtifactStore) -> Result<Self, PathError> {
        let spec = &store.spec;
        let name = store.metadata.name.clone().unwrap_or_default();
        Ok(Self {
            path: S3Path::parse(&spec.path)?,
            region: status_region(store.status.as_ref()),
            spec_region: spec.region.clone(),
            endpoint: spec.endpoint.as_deref().map(ResolvedEndpoint::new),
            auth: ResolvedAuth::new(&spec.auth, &name),
            client: spec.client.as_deref().cloned().unwrap_or_default(),
            object_defaults: spec.object_defaults.as_deref().cloned().unwrap_or_default(),
            provisioning: spec.provisioning,
            bucket: spec.bucket.as_deref().cloned(),
            write_probe: spec.verification.as_ref().is_some_and(|v| v.write_probe),
            owner: Owner::of(store),
            generation: store.metadata.generation,
            name,
        })
    }

    /// [`Self::of`], with the bucket in `region` and knowing whether the Secret holds a session
    /// token.
    pub fn new(store: &ArtifactStore, region: &str, has_session_token: bool) -> Result<Self, PathError> {
        Ok(Self::of(store)?.in_region(region).with_session_token(has_session_token))
    }

    /// The same store, with its bucket in `region`.
    pub fn in_region(&self, region: &str) -> Self {
        Self { region: region.to_owned(), ..self.clone() }
    }

    /// The same store, knowing whether its Secret holds a session token.
    pub fn with_session_token(mut self, held: bool) -> Self {
        if let ResolvedAuth::Keys(keys) = &mut self.auth {
            keys.holds_session_token = held;
        }
        self
    }

    /// Whether clients should put the bucket in the path: explicit `Path`, or `Auto` against a
    /// custom endpoint (what botocore does too).
    pub fn path_style(&self) -> bool {
        path_style(self.endpoint.as_ref().map(|e| e.addressing_style))
    }

    pub fn ca_bundle_path(&self) -> Option<String> {
        self.endpoint
            .as_ref()
            .and_then(|e| e.ca_bundle.as_ref())
            .map(|_| format!("{CONFIG_MOUNT_PATH}/{CA_BUNDLE_KEY}"))
    }

    pub fn retry_mode(&self) -> Option<&'static str> {
        self.client.retry_mode.map(|mode| match mode {
            RetryMode::Legacy => "legacy",
            RetryMode::Standard => "standard",
            RetryMode::Adaptive => "adaptive",
        })
    }
}

/// The unit tests' store: ArtifactStore `ml` with `spec`, resolved in `region`.
#[cfg(test)]
pub fn test_store(spec: serde_json::Value, region: &str) -> ResolvedStore {
    test_store_named("ml", spec, region, false)
}

/// [`test_store`] named `name`, with or without a session token in its Secret.
#[cfg(test)]
pub fn test_store_named(name: &str, spec: serde_json::Value, region: &str, has_session_token: bool) -> ResolvedStore {
    let store: ArtifactStore = serde_json::from_value(serde_json::json!({
        "apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": name, "namespace": "team"},
        "spec": spec,
    }))
    .expect("a test store deserializes");
    ResolvedStore::new(&store, region, has_session_token).expect("a test store resolves")
}
