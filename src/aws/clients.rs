//! Building SDK clients for one store: its region, endpoint, TLS trust and credentials.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use super::ratelimit::RateLimiter;
use crate::api::artifact_store::Checksums;
use crate::resolve::{ResolvedEndpoint, ResolvedStore};

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
    /// How to reach `store`'s S3, trusting `ca_pem` and signing with `keys` (None: the ambient
    /// identity).
    pub fn to_store(store: &ResolvedStore, ca_pem: Option<String>, keys: Option<StaticKeys>) -> Self {
        Self {
            region: store.region.clone(),
            endpoint: store.endpoint.clone(),
            path_style: store.path_style(),
            ca_pem,
            keys,
        }
    }

    /// The endpoint as shown in messages.
    pub fn endpoint_display(&self) -> String {
        crate::resolve::endpoint_shown(self.endpoint.as_ref().map(|e| e.url.as_str()), &self.region)
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

/// Counts every attempt of every AWS call (retries too) in `aws_calls_total`, by service and
/// outcome: an attempt that got a 2xx answer is ok, any other answer or none is an error.
#[derive(Debug)]
pub struct CountCalls(pub &'static str);

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "CountCalls"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let ok = context.response().is_some_and(|response| response.status().is_success());
        crate::metrics::count_aws_call(self.0, ok);
        Ok(())
    }
}

/// S3 clients by connection setting (region, endpoint, TLS trust, keys), so that the stores that
/// share one reuse its client, its connection pool and its TLS configuration.
#[derive(Default)]
struct S3Clients {
    clients: std::sync::Mutex<HashMap<[u8; 32], (Instant, aws_sdk_s3::Client)>>,
}

/// A client unused for this long is dropped (every store's client is used at least once a
/// resync, at most a day apart).
const IDLE_CLIENT: Duration = Duration::from_secs(25 * 3600);

impl S3Clients {
    /// The connection's identity: a hash of every setting, keys included (never kept in clear).
    fn key(connection: &S3Connection) -> [u8; 32] {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        let endpoint = connection.endpoint.as_ref();
        let keys = connection.keys.as_ref();
        for part in [
            Some(connection.region.as_str()),
            endpoint.map(|e| e.url.as_str()),
            Some(if connection.path_style { "path" } else { "virtual" }),
            Some(if endpoint.is_some_and(|e| e.insecure_skip_verify) { "insecure" } else { "verify" }),
            endpoint.map(|e| e.checksums.sdk_value()),
            connection.ca_pem.as_deref(),
            keys.map(|k| k.access_key_id.as_str()),
            keys.map(|k| k.secret_access_key.as_str()),
            keys.and_then(|k| k.session_token.as_deref()),
        ] {
            // Length-prefixed, so that no two different settings hash alike.
            let part = part.unwrap_or("\u{0}none");
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        hash.finalize().into()
    }

    fn get_or_build(
        &self,
        connection: &S3Connection,
        build: impl FnOnce() -> Result<aws_sdk_s3::Client, ConnectError>,
    ) -> Result<aws_sdk_s3::Client, ConnectError> {
        let key = Self::key(connection);
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((used, client)) = clients.get_mut(&key) {
            *used = now;
            return Ok(client.clone());
        }
        let client = build()?;
        clients.retain(|_, (used, _)| now.saturating_duration_since(*used) < IDLE_CLIENT);
        clients.insert(key, (now, client.clone()));
        Ok(client)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.lock().unwrap().len()
    }
}

/// An HTTPS client that trusts the certificates of `pem` besides the system's roots.
pub fn https_client_trusting(pem: &str) -> Result<SharedHttpClient, ConnectError> {
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ConnectError::InvalidCaBundle);
    }
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(pem.as_bytes()))
        .build()
        .map_err(|_| ConnectError::InvalidCaBundle)?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
}

/// `client` with each attempt of each call holding a place in its server's bulkhead
/// ([`crate::bulkhead`]): an attempt whose server has its share of the reconcile
/// workers waiting fails (a dispatch failure the retry policy does not repeat) once those calls
/// have waited longer than a prompt answer takes.
pub fn bulkheaded(client: SharedHttpClient) -> SharedHttpClient {
    SharedHttpClient::new(Bulkheaded(client))
}

#[derive(Debug)]
struct Bulkheaded(SharedHttpClient);

impl HttpClient for Bulkheaded {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(BulkheadedConnector(self.0.http_connector(settings, components)))
    }
}

#[derive(Debug)]
struct BulkheadedConnector(SharedHttpConnector);

impl HttpConnector for BulkheadedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let place = crate::bulkhead::enter(request.uri());
        let connector = self.0.clone();
        HttpConnectorFuture::new(async move {
            let permit = place.await.map_err(|busy| ConnectorError::other(Box::new(busy), None))?;
            let answer = connector.call(request).await;
            if answer.is_ok() {
                permit.answered();
            }
            answer
        })
    }
}

/// The SDK's default HTTPS client (rustls with aws-lc, a proxy from the environment), as the SDK
/// builds it when given none, but bulkheaded.
fn default_https_client() -> SharedHttpClient {
    use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig};
    let client = Builder::new().build_with_connector_fn(|settings, components| {
        let mut builder =
            ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc));
        builder.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            builder.set_sleep_impl(components.sleep_impl());
        }
        builder.set_proxy_config(Some(ProxyConfig::from_env()));
        builder.build()
    });
    bulkheaded(client)
}

/// Shared AWS state: the operator's ambient configuration and the per-account rate limiters.
pub struct AwsEdge {
    ambient: SdkConfig,
    s3_clients: S3Clients,
    /// S3 calls, per account: S3 serves thousands of requests a second per prefix.
    pub s3_limiter: Arc<RateLimiter>,
    /// IAM and STS calls, per account: account-wide APIs with low quotas shared with other tools.
    pub iam_limiter: Arc<RateLimiter>,
}

/// Timeouts for the operator's own calls: short, so that a dead endpoint does not hold a worker
/// long (and the bulkheads keep it from holding many).
fn operator_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(crate::bulkhead::CONNECT_TIMEOUT)
        .read_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(30))
        .build()
}

impl AwsEdge {
    /// Loads the ambient configuration (environment, web identity/IRSA, Pod Identity, instance role).
    pub async fn load(s3_limiter: RateLimiter, iam_limiter: RateLimiter) -> Self {
        let ambient = aws_config::defaults(BehaviorVersion::latest())
            .http_client(default_https_client())
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .timeout_config(operator_timeouts())
            .load()
            .await;
        Self {
            ambient,
            s3_clients: S3Clients::default(),
            s3_limiter: Arc::new(s3_limiter),
            iam_limiter: Arc::new(iam_limiter),
        }
    }

    /// An edge with a fixed region and no ambient credentials, for tests that make no AWS call.
    #[cfg(test)]
    pub fn offline() -> Self {
        let ambient = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(crate::resolve::DEFAULT_REGION))
            .build();
        let limiter = || Arc::new(RateLimiter::new(100.0, 100));
        Self { ambient, s3_clients: S3Clients::default(), s3_limiter: limiter(), iam_limiter: limiter() }
    }

    pub fn ambient_region(&self) -> Option<String> {
        self.ambient.region().map(|r| r.to_string())
    }

    /// The S3 client for `connection`: built once per distinct setting, then reused.
    pub fn s3(&self, connection: &S3Connection) -> Result<aws_sdk_s3::Client, ConnectError> {
        self.s3_clients.get_or_build(connection, || self.build_s3(connection))
    }

    /// A client for `connection` that is not kept: for credentials used once, such as the
    /// session credentials of a role assumed to prove access.
    pub fn s3_once(&self, connection: &S3Connection) -> Result<aws_sdk_s3::Client, ConnectError> {
        self.build_s3(connection)
    }

    fn build_s3(&self, connection: &S3Connection) -> Result<aws_sdk_s3::Client, ConnectError> {
        let mut builder = aws_sdk_s3::config::Builder::from(&self.ambient)
            .region(Region::new(connection.region.clone()))
            .interceptor(CountCalls("s3"));
        if let Some(endpoint) = &connection.endpoint {
            builder = builder
                .endpoint_url(&endpoint.url)
                .force_path_style(connection.path_style)
                .request_checksum_calculation(match endpoint.checksums {
                    Checksums::WhenRequired => RequestChecksumCalculation::WhenRequired,
                    Checksums::WhenSupported => RequestChecksumCalculation::WhenSupported,
                })
                .response_checksum_validation(match endpoint.checksums {
                    Checksums::WhenRequired => ResponseChecksumValidation::WhenRequired,
                    Checksums::WhenSupported => ResponseChecksumValidation::WhenSupported,
                });
            if endpoint.insecure_skip_verify && endpoint.is_https() {
                let http = bulkheaded(super::insecure::insecure_https_client());
                return Ok(aws_sdk_s3::Client::from_conf(with_keys(builder, connection).http_client(http).build()));
            }
        }
        if let Some(pem) = &connection.ca_pem {
            builder = builder.http_client(bulkheaded(https_client_trusting(pem)?));
        }
        Ok(aws_sdk_s3::Client::from_conf(with_keys(builder, connection).build()))
    }

    /// STS with the given keys, or the ambient identity.
    pub fn sts(&self, keys: Option<&StaticKeys>) -> aws_sdk_sts::Client {
        let mut builder = aws_sdk_sts::config::Builder::from(&self.ambient).interceptor(CountCalls("sts"));
        if self.ambient.region().is_none() {
            builder = builder.region(Region::new(crate::resolve::DEFAULT_REGION));
        }
        if let Some(keys) = keys {
            builder = builder.credentials_provider(keys.credentials());
        }
        aws_sdk_sts::Client::from_conf(builder.build())
    }

    /// STS where `connection`'s S3 is: an S3-compatible server's own STS at its endpoint (MinIO
    /// has one), or AWS's in its region; signing with its keys and trusting its CA, as the S3
    /// client does.
    pub fn sts_at(&self, connection: &S3Connection) -> Result<aws_sdk_sts::Client, ConnectError> {
        let mut builder = aws_sdk_sts::config::Builder::from(&self.ambient)
            .region(Region::new(connection.region.clone()))
            .interceptor(CountCalls("sts"));
        if let Some(keys) = &connection.keys {
            builder = builder.credentials_provider(keys.credentials());
        }
        if let Some(endpoint) = &connection.endpoint {
            builder = builder.endpoint_url(&endpoint.url);
            if endpoint.insecure_skip_verify && endpoint.is_https() {
                let builder = builder.http_client(bulkheaded(super::insecure::insecure_https_client()));
                return Ok(aws_sdk_sts::Client::from_conf(builder.build()));
            }
        }
        if let Some(pem) = &connection.ca_pem {
            builder = builder.http_client(bulkheaded(https_client_trusting(pem)?));
        }
        Ok(aws_sdk_sts::Client::from_conf(builder.build()))
    }

    /// EKS with the ambient identity, in the operator's region (Pod Identity lookups).
    pub fn eks(&self) -> aws_sdk_eks::Client {
        let mut builder = aws_sdk_eks::config::Builder::from(&self.ambient).interceptor(CountCalls("eks"));
        if self.ambient.region().is_none() {
            builder = builder.region(Region::new(crate::resolve::DEFAULT_REGION));
        }
        aws_sdk_eks::Client::from_conf(builder.build())
    }

    /// IAM with the ambient identity (IAM is global; its region is us-east-1 unless overridden).
    pub fn iam(&self) -> aws_sdk_iam::Client {
        let mut builder = aws_sdk_iam::config::Builder::from(&self.ambient).interceptor(CountCalls("iam"));
        if self.ambient.region().is_none() {
            builder = builder.region(Region::new(crate::resolve::DEFAULT_REGION));
        }
        aws_sdk_iam::Client::from_conf(builder.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(keys: Option<(&str, &str)>, ca_pem: Option<&str>) -> S3Connection {
        S3Connection {
            region: "us-east-1".into(),
            endpoint: None,
            path_style: false,
            ca_pem: ca_pem.map(str::to_owned),
            keys: keys.map(|(id, secret)| StaticKeys {
                access_key_id: id.into(),
                secret_access_key: secret.into(),
                session_token: None,
            }),
        }
    }

    #[test]
    fn one_client_per_distinct_connection_setting() {
        let edge = AwsEdge::offline();
        let a = connection(Some(("AKIA1", "secret-1")), None);
        edge.s3(&a).unwrap();
        edge.s3(&a.clone()).unwrap();
        assert_eq!(edge.s3_clients.len(), 1, "the same setting reuses its client");
        edge.s3(&connection(Some(("AKIA1", "secret-2")), None)).unwrap();
        edge.s3(&connection(None, None)).unwrap();
        assert_eq!(edge.s3_clients.len(), 3, "rotated keys or another identity get a client of their own");
        assert!(edge.s3(&connection(None, Some("not a certificate"))).is_err());
        assert_eq!(edge.s3_clients.len(), 3, "a setting that fails to build keeps nothing");
    }

    #[test]
    fn a_custom_endpoint_s_client_adds_checksums_only_when_told() {
        use crate::api::artifact_store::AddressingStyle;
        let edge = AwsEdge::offline();
        let at = |checksums| S3Connection {
            endpoint: Some(ResolvedEndpoint {
                url: "http://minio:9000".into(),
                addressing_style: AddressingStyle::Path,
                ca_bundle: None,
                insecure_skip_verify: false,
                checksums,
            }),
            path_style: true,
            ..connection(None, None)
        };
        let required = edge.s3(&at(Checksums::WhenRequired)).unwrap();
        assert_eq!(required.config().request_checksum_calculation(), Some(&RequestChecksumCalculation::WhenRequired));
        assert_eq!(required.config().response_checksum_validation(), Some(&ResponseChecksumValidation::WhenRequired));
        let supported = edge.s3(&at(Checksums::WhenSupported)).unwrap();
        assert_eq!(supported.config().request_checksum_calculation(), Some(&RequestChecksumCalculation::WhenSupported));
        assert_eq!(edge.s3_clients.len(), 2, "the checksum setting is part of the client's identity");
    }
}

#[cfg(test)]
mod bulkhead_tests {
    use super::*;
    use crate::aws::failure::{CallError, Target, classify_s3};
    use crate::bulkhead::{Pool, within};
    use crate::reason::Reason;

    /// An HTTP client whose server never answers.
    #[derive(Debug)]
    struct Silent;

    impl HttpClient for Silent {
        fn http_connector(&self, _: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
            SharedHttpConnector::new(Silent)
        }
    }

    impl HttpConnector for Silent {
        fn call(&self, _: HttpRequest) -> HttpConnectorFuture {
            HttpConnectorFuture::new(std::future::pending())
        }
    }

    fn client() -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url("http://silent.example:9000")
            .force_path_style(true)
            .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
            .http_client(bulkheaded(SharedHttpClient::new(Silent)))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    #[tokio::test]
    async fn an_s3_call_to_a_server_with_its_share_waiting_fails_at_once_as_unreachable() {
        // Two workers: the silent server may keep one waiting.
        let pool = Pool::new(2);
        let s3 = client();
        let waiting = tokio::spawn(within(pool.clone(), {
            let s3 = s3.clone();
            async move { s3.head_bucket().bucket("b").send().await }
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused =
            tokio::time::timeout(Duration::from_secs(5), within(pool.clone(), s3.head_bucket().bucket("b").send()))
                .await
                .expect("refused at once, not waiting for the server")
                .expect_err("no place for a second call");
        let error = CallError::from_sdk(&refused);
        let dispatch = error.dispatch.clone().unwrap_or_default();
        assert!(
            dispatch.starts_with("http://silent.example:9000 has not yet answered 1 of this operator's requests"),
            "{dispatch}"
        );
        let target =
            Target { action: "read s3://b", bucket: "b", region: "us-east-1", endpoint: "http://silent.example:9000" };
        let failure = classify_s3(&error, &target);
        assert_eq!(failure.reason, Reason::EndpointUnreachable, "transient: retried with backoff");
        // Outside a reconcile, and on another controller's workers, the call goes out.
        let other_pool = Pool::new(2);
        let elsewhere =
            tokio::time::timeout(Duration::from_millis(200), within(other_pool, s3.head_bucket().bucket("b").send()))
                .await;
        assert!(elsewhere.is_err(), "admitted: it waits on the silent server");
        waiting.abort();
    }
}
