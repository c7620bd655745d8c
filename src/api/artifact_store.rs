//! The `ArtifactStore` custom resource: an S3 path, how to reach it, how pods authenticate, and
//! what the operator may do with the bucket. Modelled on ZenML's S3 artifact store.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::{Condition, Word};
use super::validation;

/// ZenML's default Secret key names for access keys.
pub const DEFAULT_ACCESS_KEY_ID_KEY: &str = "aws_access_key_id";
pub const DEFAULT_SECRET_ACCESS_KEY_KEY: &str = "aws_secret_access_key";
pub const DEFAULT_SESSION_TOKEN_KEY: &str = "aws_session_token";

/// An S3 location for pipeline artifacts, verified by the operator and published as a ConfigMap
/// that orchestrator pods consume.
#[allow(clippy::duplicated_attributes)] // kube-derive takes one printcolumn(...) per column
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "artifacts.dev",
    version = "v1alpha1",
    kind = "ArtifactStore",
    plural = "artifactstores",
    shortname = "ast",
    category = "artifacts",
    namespaced,
    status = "ArtifactStoreStatus",
    doc = "An S3 artifact store for ML pipelines: an s3:// path, how to reach it, how pods authenticate, and whether the operator creates the bucket or adopts an existing one.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path"),
    printcolumn(name = "Region", type_ = "string", json_path = ".status.region"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint", priority = "1"),
    printcolumn(name = "ConfigMap", type_ = "string", json_path = ".status.configMapName", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = validation::name_length_rule()
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.deletionPolicy) || self.deletionPolicy != 'Delete' || (has(self.provisioning) && self.provisioning == 'Create')",
        "message": "deletionPolicy Delete requires provisioning Create: the operator only ever deletes a bucket it created",
        "fieldPath": ".deletionPolicy",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "has(self.provisioning) && self.provisioning == 'Create' || !has(self.bucket)",
        "message": "bucket settings apply only to a bucket the operator creates: set provisioning to Create or remove bucket",
        "fieldPath": ".bucket",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct ArtifactStoreSpec {
    /// Where artifacts live: `s3://bucket` or `s3://bucket/prefix`, as in ZenML. The bucket cannot
    /// change once set; the prefix can.
    #[schemars(length(min = 8, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.startsWith('s3://')", "message": "path must start with s3://, for example s3://my-bucket/pipelines"},
        {"rule": r"!self.matches('[\\x00-\\x1f\\x7f]')", "message": "path must not contain control characters (newline, tab, DEL...): remove them"},
        {"rule": r"!self.startsWith('s3://') || self.matches('[\\x00-\\x1f\\x7f]') || self.matches('^s3://[^/]{3,63}(/|$)')", "message": "the bucket name in path must be 3 to 63 characters long"},
        {"rule": r"!self.startsWith('s3://') || self.matches('[\\x00-\\x1f\\x7f]') || self.matches('^s3://[a-z0-9.-]*(/|$)')", "message": "the bucket name in path may contain only lowercase letters, digits, dots and hyphens"},
        {"rule": r"!self.startsWith('s3://') || self.matches('[\\x00-\\x1f\\x7f]') || self.matches('^s3://[a-z0-9]([^/]*[a-z0-9])?(/|$)')", "message": "the bucket name in path must start and end with a lowercase letter or a digit"},
        {"rule": "!self.matches('^s3://[^/]*[.][.]')", "message": "the bucket name in path must not contain two adjacent dots"},
        {"rule": "!self.matches('^s3://[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+(/|$)')", "message": "the bucket name in path must not be formatted as an IP address"},
        {"rule": "!self.startsWith('s3://xn--') && !self.startsWith('s3://sthree-') && !self.startsWith('s3://amzn-s3-demo-')", "message": "the bucket name in path must not start with the reserved prefixes xn--, sthree- or amzn-s3-demo-"},
        {"rule": "!self.matches('^s3://[^/]*(-s3alias|--ol-s3|[.]mrap|--x-s3|--table-s3)(/|$)')", "message": "the bucket name in path must not end with the reserved suffixes -s3alias, --ol-s3, .mrap, --x-s3 or --table-s3"},
        {"rule": "!self.startsWith('s3://') || !self.substring(5).contains('//')", "message": "the prefix in path must not contain empty segments (//)"},
        {"rule": "!self.matches('^s3://[^/]+/([^/]*/)*[.][.]?(/|$)')", "message": "the prefix in path must not contain . or .. segments: HTTP clients resolve them away, so objects would land under another key"},
        {"rule": "self.substring(5).split('/')[0] == oldSelf.substring(5).split('/')[0]", "message": "the bucket in path cannot change once set; create a new ArtifactStore for another bucket"}
    ]))]
    pub path: String,

    /// AWS region of the bucket, for example `eu-west-1`. When omitted, the operator discovers the
    /// bucket's region; when set and the bucket is elsewhere, the store reports RegionMismatch.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9-]+$"))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$')", "message": "region must start and end with a lowercase letter or a digit, for example eu-west-1: it becomes part of the S3 host name"}
    ]))]
    pub region: Option<String>,

    /// How to reach an S3-compatible service (MinIO, Ceph RGW, ...). Omit for AWS S3.
    pub endpoint: Option<Box<Endpoint>>,

    /// How pods (and the operator, to verify access) authenticate: exactly one of `implicit` or
    /// `secretRef`.
    pub auth: Auth,

    /// S3 client settings, rendered as ZenML's `config_kwargs` (botocore Config).
    pub client: Option<Box<ClientSettings>>,

    /// Options applied to every object written, rendered as ZenML's `s3_additional_kwargs`.
    pub object_defaults: Option<Box<ObjectDefaults>>,

    /// `Adopt` (default): the bucket must already exist and is never created or deleted. `Create`:
    /// the operator creates the bucket when it is missing (ZenML's deploy path).
    #[serde(default)]
    pub provisioning: Provisioning,

    /// Settings applied to a bucket the operator creates (`provisioning: Create`).
    pub bucket: Option<Box<BucketSettings>>,

    /// What happens to the bucket when this ArtifactStore is deleted. `Retain` (default) keeps it.
    /// `Delete` removes it only if the operator created it and it is empty; otherwise deletion waits
    /// and the status says why.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// How thoroughly the operator proves access.
    pub verification: Option<Verification>,
}

/// How to reach an S3-compatible endpoint.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.tls) || !has(self.tls.insecureSkipVerify) || !self.tls.insecureSkipVerify || self.url.startsWith('https://')",
        "message": "insecureSkipVerify applies only to an https:// endpoint: remove it or use an https:// url",
        "fieldPath": ".tls.insecureSkipVerify",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "!has(self.tls) || !has(self.tls.caBundle) || self.url.startsWith('https://')",
        "message": "caBundle applies only to an https:// endpoint: remove it or use an https:// url",
        "fieldPath": ".tls.caBundle",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": r"!has(self.addressingStyle) || self.addressingStyle != 'VirtualHosted' || !self.url.matches('^https?://([0-9]+[.][0-9]+[.][0-9]+[.][0-9]+(:|/|$)|\\[)')",
        "message": "addressingStyle VirtualHosted puts the bucket into the host name, which an IP address cannot take: use Path, or a DNS name in url",
        "fieldPath": ".addressingStyle",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct Endpoint {
    /// Base URL of the S3 API, for example `https://minio.storage.svc:9000`.
    #[schemars(length(min = 8, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^https?://[^/?#@]+(/|$)')", "message": "endpoint.url must be an http:// or https:// URL with a host, for example https://minio.example:9000"},
        {"rule": r"!self.matches('[ \\x00-\\x1f\\x7f]')", "message": "endpoint.url must not contain spaces or control characters"},
        {"rule": r"!self.matches('^https?://[^/?#@]+(/|$)') || self.matches('[ \\x00-\\x1f\\x7f]') || self.matches('^https?://([A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?([.][A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*[.]?|\\[[0-9A-Fa-f:.]+\\])(:[0-9]*)?(/|$)')", "message": "the host in endpoint.url may contain only letters, digits, '-', '_' and '.' (or be an IPv6 address in brackets), optionally followed by :port"},
        {"rule": r"!self.matches('^https?://[^/?#@]*:[0-9]*(/|$)') || self.matches('^https?://[^/?#@]*:0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])(/|$)')", "message": "the port in endpoint.url must be between 1 and 65535"}
    ]))]
    pub url: String,

    /// `Auto` (default) lets the client choose; `Path` puts the bucket in the URL path (MinIO, Ceph
    /// RGW); `VirtualHosted` puts it in the host name.
    #[serde(default)]
    pub addressing_style: AddressingStyle,

    /// TLS settings for an https endpoint.
    pub tls: Option<EndpointTls>,

    /// When clients add integrity checksums to requests and validate them in responses.
    /// `WhenRequired` (default): only for the operations that require one. The AWS SDKs released
    /// since 2025 otherwise add a CRC checksum to every upload, which many S3-compatible servers
    /// reject. `WhenSupported`: on every operation that supports one (the SDKs' default against
    /// AWS), for a server that implements them. Used by the operator's own client, and rendered for
    /// boto3, s3fs and the AWS CLI (`AWS_REQUEST_CHECKSUM_CALCULATION` and
    /// `AWS_RESPONSE_CHECKSUM_VALIDATION`) and into ZenML's `config_kwargs`.
    #[serde(default)]
    pub checksums: Checksums,
}

/// When S3 clients compute and validate integrity checksums.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Checksums {
    #[default]
    WhenRequired,
    WhenSupported,
}

impl Checksums {
    /// The value of the AWS SDKs' `request_checksum_calculation` and
    /// `response_checksum_validation` settings (and of their environment variables).
    pub fn sdk_value(self) -> &'static str {
        match self {
            Checksums::WhenRequired => "when_required",
            Checksums::WhenSupported => "when_supported",
        }
    }
}

/// Where S3 puts the bucket name in a request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AddressingStyle {
    #[default]
    Auto,
    Path,
    VirtualHosted,
}

/// TLS verification of the endpoint. Verification is on unless `insecureSkipVerify` is true.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointTls {
    /// A PEM CA bundle to trust in addition to the system roots, from a ConfigMap or Secret key in
    /// this namespace.
    pub ca_bundle: Option<CaBundleRef>,

    /// Skip TLS certificate verification. Off by default; never use it in production.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A key of a ConfigMap or Secret in the ArtifactStore's namespace holding PEM certificates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleRef {
    /// `ConfigMap` (default) or `Secret`.
    #[serde(default)]
    pub kind: CaBundleKind,
    /// Name of the ConfigMap or Secret, in the same namespace.
    #[schemars(transform = validation::object_name)]
    pub name: String,
    /// Key holding the PEM bundle. Defaults to `ca.crt`.
    #[serde(default = "default_ca_key")]
    #[schemars(transform = validation::data_key)]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// The kind of object a CA bundle is read from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CaBundleKind {
    #[default]
    ConfigMap,
    Secret,
}

/// How pods authenticate to S3. Exactly one method.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.implicit) != has(self.secretRef)", "message": "set exactly one of auth.implicit or auth.secretRef"}
]))]
pub struct Auth {
    /// Use the ambient AWS identity of the pod: IRSA (a ServiceAccount annotated with
    /// `eks.amazonaws.com/role-arn`), EKS Pod Identity, or the node's instance role.
    pub implicit: Option<Box<ImplicitAuth>>,

    /// Use access keys from a Secret in this namespace (ZenML's `authentication_secret`).
    pub secret_ref: Option<Box<SecretAuth>>,
}

/// The ambient AWS identity.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImplicitAuth {
    /// The ServiceAccount the consuming pods run as. With IRSA its `eks.amazonaws.com/role-arn`
    /// annotation names the role; the operator checks the role's trust policy and permissions.
    /// Without it, the operator checks its own ambient identity.
    #[schemars(transform = validation::object_name)]
    pub service_account_name: Option<String>,

    /// The IAM role the ServiceAccount is expected to assume; a different annotation is reported.
    #[schemars(length(min = 20, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": r"self.matches('^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\\w+=,.@/-]+$')", "message": "roleArn must be an IAM role ARN such as arn:aws:iam::123456789012:role/ml-pipelines; role names and paths may contain only letters, digits and + = , . @ _ / -"}
    ]))]
    pub role_arn: Option<String>,
}

/// Access keys in a Secret. Key names default to ZenML's.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretAuth {
    /// Name of the Secret, in the same namespace as the ArtifactStore.
    #[schemars(transform = validation::object_name)]
    pub name: String,
    /// Key holding the access key id. Defaults to `aws_access_key_id`.
    #[schemars(transform = validation::data_key)]
    pub access_key_id_key: Option<String>,
    /// Key holding the secret access key. Defaults to `aws_secret_access_key`.
    #[schemars(transform = validation::data_key)]
    pub secret_access_key_key: Option<String>,
    /// Key holding an optional session token. Defaults to `aws_session_token`; used when present.
    #[schemars(transform = validation::data_key)]
    pub session_token_key: Option<String>,
}

impl SecretAuth {
    pub fn access_key_id_key(&self) -> &str {
        self.access_key_id_key.as_deref().unwrap_or(DEFAULT_ACCESS_KEY_ID_KEY)
    }
    pub fn secret_access_key_key(&self) -> &str {
        self.secret_access_key_key.as_deref().unwrap_or(DEFAULT_SECRET_ACCESS_KEY_KEY)
    }
    pub fn session_token_key(&self) -> &str {
        self.session_token_key.as_deref().unwrap_or(DEFAULT_SESSION_TOKEN_KEY)
    }
}

/// S3 client settings (botocore `Config`, ZenML's `config_kwargs`).
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSettings {
    /// Retry mode: `legacy`, `standard` or `adaptive`.
    pub retry_mode: Option<RetryMode>,
    /// Total attempts per request, including the first.
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: Option<u32>,
    /// Seconds to wait for a connection.
    #[schemars(range(min = 1, max = 600))]
    pub connect_timeout_seconds: Option<u32>,
    /// Seconds to wait for a response.
    #[schemars(range(min = 1, max = 3600))]
    pub read_timeout_seconds: Option<u32>,
    /// Request signature version. Only `s3v4` (SigV4) is supported.
    pub signature_version: Option<SignatureVersion>,
}

/// botocore retry modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetryMode {
    Legacy,
    Standard,
    Adaptive,
}

/// Request signing.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SignatureVersion {
    #[serde(rename = "s3v4")]
    S3v4,
}

/// Options sent with every write (ZenML's `s3_additional_kwargs`).
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.sseKmsKeyId) || (has(self.serverSideEncryption) && self.serverSideEncryption != 'AES256')",
        "message": "sseKmsKeyId requires serverSideEncryption aws:kms or aws:kms:dsse",
        "fieldPath": ".sseKmsKeyId",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct ObjectDefaults {
    /// Server-side encryption for written objects.
    pub server_side_encryption: Option<ServerSideEncryption>,
    /// KMS key id or ARN, with `aws:kms` or `aws:kms:dsse`.
    #[schemars(transform = validation::kms_key_id)]
    pub sse_kms_key_id: Option<String>,
    /// Canned ACL for written objects.
    pub acl: Option<CannedAcl>,
    /// Storage class for written objects.
    pub storage_class: Option<StorageClass>,
}

/// S3 server-side encryption algorithms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServerSideEncryption {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
    #[serde(rename = "aws:kms:dsse")]
    AwsKmsDsse,
}

impl ServerSideEncryption {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aes256 => "AES256",
            Self::AwsKms => "aws:kms",
            Self::AwsKmsDsse => "aws:kms:dsse",
        }
    }
}

/// S3 canned ACLs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CannedAcl {
    Private,
    PublicRead,
    PublicReadWrite,
    AuthenticatedRead,
    AwsExecRead,
    BucketOwnerRead,
    BucketOwnerFullControl,
}

impl CannedAcl {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::PublicRead => "public-read",
            Self::PublicReadWrite => "public-read-write",
            Self::AuthenticatedRead => "authenticated-read",
            Self::AwsExecRead => "aws-exec-read",
            Self::BucketOwnerRead => "bucket-owner-read",
            Self::BucketOwnerFullControl => "bucket-owner-full-control",
        }
    }
}

/// S3 storage classes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StorageClass {
    Standard,
    ReducedRedundancy,
    StandardIa,
    OnezoneIa,
    IntelligentTiering,
    Glacier,
    DeepArchive,
    GlacierIr,
}

impl StorageClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "STANDARD",
            Self::ReducedRedundancy => "REDUCED_REDUNDANCY",
            Self::StandardIa => "STANDARD_IA",
            Self::OnezoneIa => "ONEZONE_IA",
            Self::IntelligentTiering => "INTELLIGENT_TIERING",
            Self::Glacier => "GLACIER",
            Self::DeepArchive => "DEEP_ARCHIVE",
            Self::GlacierIr => "GLACIER_IR",
        }
    }
}

/// Whether the operator may create the bucket.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Provisioning {
    /// The bucket must exist; the operator never creates or deletes it.
    #[default]
    Adopt,
    /// Create the bucket when it is missing, then apply `bucket` settings.
    Create,
}

/// What deleting the ArtifactStore does to the bucket.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the bucket and its objects.
    #[default]
    Retain,
    /// Delete the bucket if the operator created it and it is empty.
    Delete,
}

/// Settings for a bucket the operator creates.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketSettings {
    /// Keep every version of every object. On by default.
    #[serde(default = "default_true")]
    pub versioning: bool,
    /// Default encryption for the bucket. Defaults to AES256 (SSE-S3).
    pub default_encryption: Option<BucketEncryption>,
    /// Block all public access to the bucket. On by default.
    #[serde(default = "default_true")]
    pub block_public_access: bool,
    /// Tags applied to the bucket, besides the operator's own `artifacts.dev/created-by`: at most
    /// 49 (S3 takes 50 in all), keys of 1 to 128 and values of up to 256 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = validation::bucket_tags)]
    pub tags: BTreeMap<String, String>,
    /// Lifecycle rules, scoped to the store's prefix where they concern objects.
    pub lifecycle: Option<Lifecycle>,
}

impl Default for BucketSettings {
    fn default() -> Self {
        Self {
            versioning: true,
            default_encryption: None,
            block_public_access: true,
            tags: BTreeMap::new(),
            lifecycle: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Bucket default encryption.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.kmsKeyId) || self.algorithm != 'AES256'",
        "message": "kmsKeyId requires algorithm aws:kms or aws:kms:dsse",
        "fieldPath": ".kmsKeyId",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct BucketEncryption {
    /// `AES256`, `aws:kms` or `aws:kms:dsse`.
    pub algorithm: ServerSideEncryption,
    /// KMS key id or ARN for the KMS algorithms.
    #[schemars(transform = validation::kms_key_id)]
    pub kms_key_id: Option<String>,
}

/// Lifecycle rules for a created bucket.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// Days after which noncurrent object versions expire.
    #[schemars(range(min = 1, max = 36500))]
    pub noncurrent_version_expiration_days: Option<i32>,
    /// Days after which incomplete multipart uploads are aborted.
    #[schemars(range(min = 1, max = 36500))]
    pub abort_incomplete_multipart_upload_days: Option<i32>,
    /// Days after which objects under the prefix expire. Off unless set.
    #[schemars(range(min = 1, max = 36500))]
    pub expire_objects_after_days: Option<i32>,
}

/// How access is proven.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// Also put and delete a small marker object under the prefix to prove write access.
    #[serde(default)]
    pub write_probe: bool,
}

/// Observed state of an ArtifactStore.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactStoreStatus {
    /// The generation the status describes.
    pub observed_generation: Option<i64>,
    /// `Ready`, `BucketReady` and `CredentialsValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The bucket, from path.
    pub bucket: Option<Word>,
    /// The key prefix, from path (empty for the whole bucket).
    pub prefix: Option<String>,
    /// The bucket's region as resolved by the operator.
    pub region: Option<Word>,
    /// The S3 endpoint clients use.
    pub endpoint: Option<Word>,
    /// True when this operator created the bucket (and may delete it under deletionPolicy Delete).
    pub bucket_created: Option<bool>,
    /// When the operator asked S3 to create the bucket. Written before the request is sent, so that
    /// a bucket found afterwards, empty and without the creator tag (the operator stopped between
    /// creating and tagging it), is still recognised as this store's and completed.
    pub bucket_create_requested: Option<Time>,
    /// The ARN of the identity whose access was verified (never a key).
    pub identity_arn: Option<Word>,
    /// The ConfigMap holding the resolved configuration.
    pub config_map_name: Option<String>,
    /// The Secret holding the access keys under environment variable names (key auth only).
    pub credentials_secret_name: Option<String>,
    /// When access was verified with the result these conditions show. A periodic check that
    /// finds nothing changed does not rewrite the status.
    pub last_verified_time: Option<Time>,
    /// Fingerprint of the inputs last verified (spec and referenced objects' versions), so a restart
    /// need not re-verify unchanged stores at once.
    pub verified_inputs: Option<String>,
}
