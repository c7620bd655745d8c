//! Building SDK clients for one store: its region, endpoint, TLS trust and credentials.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_s3::config::Region;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use super::ratelimit::RateLimiter;
use crate::resolve::ResolvedEndpoint;

/// Access keys read from a user's Secret. Debug never prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl StaticKeys {
    fn credentials(&self) -> Credentials {
        Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            self.session_token.clone(),
            None,
            "artifact-store-secret",
        )
    }
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticKeys(redacted)")
    }
}

/// Everything needed to talk to one store's S3.
#[derive(Clone, Debug)]
pub struct S3Connection {
    pub region: String,
    pub endpoint: Option<ResolvedEndpoint>,
    pub path_style: bool,
    pub ca_pem: Option<String>,
    /// None: the operator's ambient identity.
    pub keys: Option<StaticKeys>,
}

impl S3Connection {
    /// The endpoint as shown in messages.
    pub fn endpoint_display(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => endpoint.url.clone(),
            None => format!("https://s3.{}.amazonaws.com", self.region),
        }
    }

    /// The rate-limiting key of this connection's identity.
    pub fn account_key(&self) -> String {
        account_key(self.keys.as_ref())
    }
}

/// The rate-limiting key of an identity: one per access key, or the ambient identity. The access
/// key id is not a secret, but only a hash of it is kept.
pub fn account_key(keys: Option<&StaticKeys>) -> String {
    match keys {
        Some(keys) => {
            format!(
                "key:{}",
                &crate::render::content_hash(&[("id".to_owned(), keys.access_key_id.clone())].into())[..16]
            )
        }
        None => "ambient".to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the CA bundle is not a valid PEM certificate bundle")]
    InvalidCaBundle,
}

/// The store's keys, when it has any; otherwise the ambient identity stays.
fn with_keys(builder: aws_sdk_s3::config::Builder, connection: &S3Connection) -> aws_sdk_s3::config::Builder {
    match &connection.keys {
        Some(keys) => builder.credentials_provider(keys.credentials()),
        None => builder,
    }
}

/// Shared AWS state: the operator's ambient configuration and the per-account rate limiters.
pub struct AwsEdge {
    ambient: SdkConfig,
    /// S3 calls, per account: S3 serves thousands of requests a second per prefix.
    pub s3_limiter: Arc<RateLimiter>,
    /// IAM and STS calls, per account: account-wide APIs with low quotas shared with other tools.
    pub iam_limiter: Arc<RateLimiter>,
}

/// Timeouts for the operator's own calls: short, so that a dead endpoint does not hold a worker.
fn operator_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(30))
        .build()
}

impl AwsEdge {
    /// Loads the ambient configuration (environment, web identity/IRSA, Pod Identity, instance role).
    pub async fn load(s3_limiter: RateLimiter, iam_limiter: RateLimiter) -> Self {
        let ambient = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .timeout_config(operator_timeouts())
            .load()
            .await;
        Self { ambient, s3_limiter: Arc::new(s3_limiter), iam_limiter: Arc::new(iam_limiter) }
    }

    /// An edge with a fixed region and no ambient credentials, for tests that make no AWS call.
    #[cfg(test)]
    pub fn offline() -> Self {
        let ambient = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(crate::resolve::DEFAULT_REGION))
            .build();
        let limiter = || Arc::new(RateLimiter::new(100.0, 100));
        Self { ambient, s3_limiter: limiter(), iam_limiter: limiter() }
    }

    pub fn ambient_region(&self) -> Option<String> {
        self.ambient.region().map(|r| r.to_string())
    }

    pub fn s3(&self, connection: &S3Connection) -> Result<aws_sdk_s3::Client, ConnectError> {
        let mut builder =
            aws_sdk_s3::config::Builder::from(&self.ambient).region(Region::new(connection.region.clone()));
        if let Some(endpoint) = &connection.endpoint {
            builder = builder.endpoint_url(&endpoint.url).force_path_style(connection.path_style);
            if endpoint.insecure_skip_verify && endpoint.is_https() {
                return Ok(aws_sdk_s3::Client::from_conf(
                    with_keys(builder, connection).http_client(super::insecure::insecure_https_client()).build(),
                ));
            }
        }
        if let Some(pem) = &connection.ca_pem {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConnectError::InvalidCaBundle);
            }
            let context = TlsContext::builder()
                .with_trust_store(TrustStore::default().with_pem_certificate(pem.as_bytes()))
                .build()
                .map_err(|_| ConnectError::InvalidCaBundle)?;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
                .tls_context(context)
                .build_https();
            builder = builder.http_client(http);
        }
        Ok(aws_sdk_s3::Client::from_conf(with_keys(builder, connection).build()))
    }

    /// STS with the given keys, or the ambient identity.
    pub fn sts(&self, keys: Option<&StaticKeys>) -> aws_sdk_sts::Client {
        let mut builder = aws_sdk_sts::config::Builder::from(&self.ambient);
        if self.ambient.region().is_none() {
            builder = builder.region(Region::new(crate::resolve::DEFAULT_REGION));
        }
        if let Some(keys) = keys {
            builder = builder.credentials_provider(keys.credentials());
        }
        aws_sdk_sts::Client::from_conf(builder.build())
    }

    /// IAM with the ambient identity (IAM is global; its region is us-east-1 unless overridden).
    pub fn iam(&self) -> aws_sdk_iam::Client {
        let mut builder = aws_sdk_iam::config::Builder::from(&self.ambient);
        if self.ambient.region().is_none() {
            builder = builder.region(Region::new(crate::resolve::DEFAULT_REGION));
        }
        aws_sdk_iam::Client::from_conf(builder.build())
    }
}
