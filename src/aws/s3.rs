//! The S3 calls the operator makes on one bucket, each rate-limited per account.

use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint, BucketNamespace,
    BucketVersioningStatus, CreateBucketConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleFilter, NoncurrentVersionExpiration, ObjectOwnership, OwnershipControls, OwnershipControlsRule,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag, Tagging, VersioningConfiguration,
};

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::failure::CallError;
use super::ratelimit::RateLimiter;
use crate::api::artifact_store::{BucketSettings, ServerSideEncryption as Sse};
use crate::api::validation::CREATED_BY_TAG;
use crate::s3path::S3Path;

/// Turns an S3 call's error into a [`CallError`]. (Every call is counted by the client itself,
/// see [`super::clients::CountCalls`].)
trait OrCallError<T> {
    fn or_call_error(self) -> Result<T, CallError>;
}

impl<T, E: ProvideErrorMetadata + std::error::Error + 'static> OrCallError<T> for Result<T, SdkError<E, HttpResponse>> {
    fn or_call_error(self) -> Result<T, CallError> {
        self.map_err(|e| CallError::from_sdk(&e))
    }
}

/// The object the opt-in write probe puts and deletes under the prefix.
pub const PROBE_OBJECT: &str = ".artifact-operator-probe";

pub struct Bucket {
    client: Client,
    limiter: Arc<RateLimiter>,
    account: String,
    pub path: S3Path,
}

/// Result of creating a bucket.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    New,
    AlreadyOwnedByYou,
}

/// A bucket setting that failed, and why.
#[derive(Debug)]
pub struct SettingError {
    pub setting: &'static str,
    pub error: CallError,
}

fn is_not_implemented(error: &CallError) -> bool {
    matches!(error.code.as_deref(), Some("NotImplemented" | "XNotImplemented")) || error.http_status == Some(501)
}

/// S3-compatible servers that lack an AWS-only API (MinIO has no public access block) often answer
/// it as a malformed request rather than as not implemented.
fn is_unsupported_elsewhere(error: &CallError) -> bool {
    is_not_implemented(error)
        || matches!(error.code.as_deref(), Some("MalformedXML" | "InvalidRequest" | "MethodNotAllowed"))
}

impl Bucket {
    pub fn new(client: Client, limiter: Arc<RateLimiter>, account: String, path: S3Path) -> Self {
        Self { client, limiter, account, path }
    }

    async fn permit(&self) {
        self.limiter.acquire(&self.account).await;
    }

    /// HeadBucket: the cheap existence and access check. Returns the bucket's region when the
    /// endpoint reports it.
    pub async fn head(&self, expected_owner: Option<&str>) -> Result<Option<String>, CallError> {
        self.permit().await;
        let output = self
            .client
            .head_bucket()
            .bucket(&self.path.bucket)
            .set_expected_bucket_owner(expected_owner.map(str::to_owned))
            .send()
            .await
            .or_call_error()?;
        Ok(output.bucket_region().map(str::to_owned))
    }

    /// Whether the bucket belongs to `account`: HeadBucket with ExpectedBucketOwner. S3 refuses that
    /// with 403 both for another owner and for no access, so a refusal is told apart by a plain
    /// HeadBucket: if that succeeds, the bucket is someone else's.
    pub async fn owned_by(&self, account: &str) -> Result<bool, CallError> {
        match self.head(Some(account)).await {
            Ok(_) => Ok(true),
            Err(error) if error.http_status == Some(403) => match self.head(None).await {
                Ok(_) => Ok(false),
                Err(_) => Err(error),
            },
            Err(error) => Err(error),
        }
    }

    /// The bucket's region from GetBucketLocation, for endpoints that do not send it on HeadBucket.
    pub async fn location(&self) -> Result<Option<String>, CallError> {
        self.permit().await;
        let output = self.client.get_bucket_location().bucket(&self.path.bucket).send().await.or_call_error()?;
        Ok(Some(match output.location_constraint() {
            None => crate::resolve::DEFAULT_REGION.to_owned(),
            Some(constraint) if constraint.as_str().is_empty() => crate::resolve::DEFAULT_REGION.to_owned(),
            Some(BucketLocationConstraint::Eu) => "eu-west-1".to_owned(),
            Some(constraint) => constraint.as_str().to_owned(),
        }))
    }

    /// CreateBucket in `region`, with `tags` set in the same request when given (AWS S3 takes tags
    /// at creation, so the bucket is recognisably ours from its first instant).
    pub async fn create(&self, region: &str, tags: Option<Vec<(String, String)>>) -> Result<Created, CallError> {
        self.permit().await;
        let mut request = self.client.create_bucket().bucket(&self.path.bucket);
        if self.path.account_regional().is_some() {
            request = request.bucket_namespace(BucketNamespace::AccountRegional);
        }
        // us-east-1 is the one region that must not be named as a location constraint.
        let location = (region != "us-east-1").then(|| BucketLocationConstraint::from(region));
        if location.is_some() || tags.is_some() {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .set_location_constraint(location)
                    .set_tags(tags.map(|tags| s3_tags(&tags)))
                    .build(),
            );
        }
        match request.send().await.or_call_error() {
            Ok(_) => Ok(Created::New),
            Err(error) if error.code.as_deref() == Some("BucketAlreadyOwnedByYou") => Ok(Created::AlreadyOwnedByYou),
            Err(error) => Err(error),
        }
    }

    /// Applies the settings of a created bucket. Settings the endpoint does not implement (MinIO has
    /// no public access block, for example) are returned as skipped rather than failing.
    /// `with_acls`: the store's writes carry an ACL, so the bucket must take them (S3 creates
    /// buckets with ACLs disabled since 2023): its Object Ownership becomes BucketOwnerPreferred.
    pub async fn apply_settings(
        &self,
        settings: &BucketSettings,
        creator_uid: &str,
        custom_endpoint: bool,
        with_acls: bool,
    ) -> Result<Vec<&'static str>, SettingError> {
        let mut skipped = Vec::new();
        self.apply_tags(settings, creator_uid, &mut skipped).await?;
        for setting in self.wanted(settings, with_acls) {
            self.permit().await;
            match self.put(&setting).await {
                Err(error) if custom_endpoint && setting.aws_only() && is_unsupported_elsewhere(&error) => {
                    skipped.push(setting.name())
                }
                result => check(setting.name(), result, &mut skipped)?,
            }
        }
        Ok(skipped)
    }

    /// Tags the bucket with its creator and the user's tags; whatever was wrong with the user's
    /// tags, the creator tag alone must hold, so that the bucket stays recognisable (and deletable
    /// under Delete) while the settings are fixed.
    async fn apply_tags(
        &self,
        settings: &BucketSettings,
        creator_uid: &str,
        skipped: &mut Vec<&'static str>,
    ) -> Result<(), SettingError> {
        let creator = vec![(CREATED_BY_TAG.to_owned(), creator_uid.to_owned())];
        let all: Vec<(String, String)> = creator.iter().cloned().chain(settings.tags.clone()).collect();
        if let Err(error) = self.put_tags(&all).await {
            if error.dispatch.is_none() && all.len() > 1 {
                let _ = self.put_tags(&creator).await;
            }
            check("tags", Err(error), skipped)?;
        }
        Ok(())
    }

    /// The settings after the tags, in the order they are applied.
    fn wanted(&self, settings: &BucketSettings, with_acls: bool) -> Vec<Setting> {
        let encryption = match &settings.default_encryption {
            Some(encryption) => Setting::DefaultEncryption(encryption.algorithm, encryption.kms_key_id.clone()),
            None => Setting::DefaultEncryption(Sse::Aes256, None),
        };
        [
            settings.versioning.then_some(Setting::Versioning),
            Some(encryption),
            settings.block_public_access.then_some(Setting::PublicAccessBlock),
            with_acls.then_some(Setting::ObjectOwnership),
            self.lifecycle_rules(settings).map(Setting::Lifecycle),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The one call that applies `setting`.
    async fn put(&self, setting: &Setting) -> Result<(), CallError> {
        let bucket = &self.path.bucket;
        let client = &self.client;
        match setting {
            Setting::Versioning => client
                .put_bucket_versioning()
                .bucket(bucket)
                .versioning_configuration(
                    VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build(),
                )
                .send()
                .await
                .or_call_error()
                .map(drop),
            Setting::DefaultEncryption(algorithm, kms_key) => client
                .put_bucket_encryption()
                .bucket(bucket)
                .server_side_encryption_configuration(encryption_configuration(*algorithm, kms_key.clone()))
                .send()
                .await
                .or_call_error()
                .map(drop),
            Setting::PublicAccessBlock => client
                .put_public_access_block()
                .bucket(bucket)
                .public_access_block_configuration(
                    PublicAccessBlockConfiguration::builder()
                        .block_public_acls(true)
                        .ignore_public_acls(true)
                        .block_public_policy(true)
                        .restrict_public_buckets(true)
                        .build(),
                )
                .send()
                .await
                .or_call_error()
                .map(drop),
            Setting::ObjectOwnership => client
                .put_bucket_ownership_controls()
                .bucket(bucket)
                .ownership_controls(bucket_owner_preferred())
                .send()
                .await
                .or_call_error()
                .map(drop),
            Setting::Lifecycle(rules) => client
                .put_bucket_lifecycle_configuration()
                .bucket(bucket)
                .lifecycle_configuration(
                    BucketLifecycleConfiguration::builder()
                        .set_rules(Some(rules.clone()))
                        .build()
                        .expect("rules are set"),
                )
                .send()
                .await
                .or_call_error()
                .map(drop),
        }
    }

    /// PutBucketTagging: replaces the bucket's whole tag set.
    async fn put_tags(&self, tags: &[(String, String)]) -> Result<(), CallError> {
        self.permit().await;
        let tagging = Tagging::builder().set_tag_set(Some(s3_tags(tags))).build().expect("the tag set is set");
        self.client
            .put_bucket_tagging()
            .bucket(&self.path.bucket)
            .tagging(tagging)
            .send()
            .await
            .or_call_error()
            .map(|_| ())
    }

    fn lifecycle_rules(&self, settings: &BucketSettings) -> Option<Vec<LifecycleRule>> {
        let lifecycle = settings.lifecycle.as_ref()?;
        let rule = |id: &str| {
            let filter = LifecycleRuleFilter::builder().prefix(self.path.key_prefix()).build();
            LifecycleRule::builder().id(id).status(ExpirationStatus::Enabled).filter(filter)
        };
        let rules: Vec<LifecycleRule> = [
            lifecycle.noncurrent_version_expiration_days.map(|days| {
                rule("artifact-operator-noncurrent-versions")
                    .noncurrent_version_expiration(NoncurrentVersionExpiration::builder().noncurrent_days(days).build())
            }),
            lifecycle.abort_incomplete_multipart_upload_days.map(|days| {
                rule("artifact-operator-abort-multipart").abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder().days_after_initiation(days).build(),
                )
            }),
            lifecycle.expire_objects_after_days.map(|days| {
                rule("artifact-operator-expire-objects").expiration(LifecycleExpiration::builder().days(days).build())
            }),
        ]
        .into_iter()
        .flatten()
        .map(|rule| rule.build().expect("status is set"))
        .collect();
        (!rules.is_empty()).then_some(rules)
    }

    /// Whether the bucket takes ACLs on writes: false when its Object Ownership is
    /// BucketOwnerEnforced (ACLs disabled), true when it has no ownership controls or they allow
    /// ACLs, None when the server does not say (it does not implement them, or the identity may not
    /// read them).
    pub async fn takes_acls(&self) -> Result<Option<bool>, CallError> {
        self.permit().await;
        let result = self.client.get_bucket_ownership_controls().bucket(&self.path.bucket).send().await.or_call_error();
        match result {
            Ok(output) => {
                let rules = output.ownership_controls().map(|c| c.rules()).unwrap_or_default();
                Ok(Some(!rules.iter().any(|r| r.object_ownership() == &ObjectOwnership::BucketOwnerEnforced)))
            }
            Err(error) if error.code.as_deref() == Some("OwnershipControlsNotFoundError") => Ok(Some(true)),
            Err(error) if is_unsupported_elsewhere(&error) || error.code.as_deref() == Some("AccessDenied") => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Proves access where the pods will work: a listing under the prefix and, with `write`, a
    /// probe object written and deleted there. On failure, the step that failed (for messages:
    /// "list s3://b/p", "write and delete a probe object under s3://b/p") and its error.
    pub async fn prove_access(&self, write: bool) -> Result<(), (String, CallError)> {
        let path = &self.path;
        self.read_probe().await.map_err(|error| (format!("list {path}"), error))?;
        if write {
            let step = || format!("write and delete a probe object under {path}");
            self.write_probe().await.map_err(|error| (step(), error))?;
        }
        Ok(())
    }

    /// Lists at most one key under the prefix: proves read access where the pods will read.
    pub async fn read_probe(&self) -> Result<(), CallError> {
        self.permit().await;
        self.client
            .list_objects_v2()
            .bucket(&self.path.bucket)
            .prefix(self.path.key_prefix())
            .max_keys(1)
            .send()
            .await
            .or_call_error()
            .map(|_| ())
    }

    /// Puts and deletes a small marker object under the prefix.
    pub async fn write_probe(&self) -> Result<(), CallError> {
        let key = self.path.key(PROBE_OBJECT);
        self.permit().await;
        self.client
            .put_object()
            .bucket(&self.path.bucket)
            .key(&key)
            .body(ByteStream::from_static(b"artifact-operator write probe\n"))
            .send()
            .await
            .or_call_error()?;
        self.permit().await;
        self.client.delete_object().bucket(&self.path.bucket).key(&key).send().await.or_call_error()?;
        Ok(())
    }

    /// The UID recorded in the creator tag, if any.
    pub async fn creator(&self) -> Result<Option<String>, CallError> {
        self.permit().await;
        match self.client.get_bucket_tagging().bucket(&self.path.bucket).send().await.or_call_error() {
            Ok(output) => Ok(output.tag_set().iter().find(|t| t.key() == CREATED_BY_TAG).map(|t| t.value().to_owned())),
            Err(error) if error.code.as_deref() == Some("NoSuchTagSet") || is_not_implemented(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Some key (or version) left in the bucket, or None when it is truly empty, old versions and
    /// delete markers included.
    pub async fn any_object(&self) -> Result<Option<String>, CallError> {
        self.permit().await;
        let output =
            self.client.list_object_versions().bucket(&self.path.bucket).max_keys(1).send().await.or_call_error()?;
        let version = output.versions().first().and_then(|v| v.key());
        let marker = output.delete_markers().first().and_then(|m| m.key());
        Ok(version.or(marker).map(str::to_owned))
    }

    pub async fn delete(&self) -> Result<(), CallError> {
        self.permit().await;
        self.client.delete_bucket().bucket(&self.path.bucket).send().await.or_call_error().map(|_| ())
    }
}

fn s3_tags(tags: &[(String, String)]) -> Vec<Tag> {
    tags.iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build().expect("key and value are set"))
        .collect()
}

/// A bucket setting after its tags, as [`Bucket::apply_settings`] applies it: each with its own call
/// and name, and whether S3-compatible servers may lack it.
enum Setting {
    Versioning,
    DefaultEncryption(Sse, Option<String>),
    PublicAccessBlock,
    ObjectOwnership,
    Lifecycle(Vec<LifecycleRule>),
}

impl Setting {
    fn name(&self) -> &'static str {
        match self {
            Self::Versioning => "versioning",
            Self::DefaultEncryption(..) => "default encryption",
            Self::PublicAccessBlock => "public access block",
            Self::ObjectOwnership => "object ownership",
            Self::Lifecycle(_) => "lifecycle",
        }
    }

    /// An AWS-only API, which a custom endpoint may answer as a malformed request: skipped there.
    fn aws_only(&self) -> bool {
        matches!(self, Self::PublicAccessBlock | Self::ObjectOwnership)
    }
}

fn encryption_configuration(algorithm: Sse, kms_key: Option<String>) -> ServerSideEncryptionConfiguration {
    let rule = ServerSideEncryptionRule::builder()
        .apply_server_side_encryption_by_default(
            ServerSideEncryptionByDefault::builder()
                .sse_algorithm(ServerSideEncryption::from(algorithm.as_str()))
                .set_kms_master_key_id(kms_key)
                .build()
                .expect("algorithm is set"),
        )
        .build();
    ServerSideEncryptionConfiguration::builder().rules(rule).build().expect("rules are set")
}

/// Object Ownership that takes the ACLs a store's writes carry.
fn bucket_owner_preferred() -> OwnershipControls {
    let rule = OwnershipControlsRule::builder()
        .object_ownership(ObjectOwnership::BucketOwnerPreferred)
        .build()
        .expect("ownership is set");
    OwnershipControls::builder().rules(rule).build().expect("rules are set")
}

fn check(
    setting: &'static str,
    result: Result<(), CallError>,
    skipped: &mut Vec<&'static str>,
) -> Result<(), SettingError> {
    match result {
        Ok(()) => Ok(()),
        Err(error) if is_not_implemented(&error) => {
            skipped.push(setting);
            Ok(())
        }
        Err(error) => Err(SettingError { setting, error }),
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::operation::head_bucket::HeadBucketOutput;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn bucket(client: Client) -> Bucket {
        Bucket::new(
            client,
            Arc::new(RateLimiter::new(100.0, 100)),
            "test".into(),
            S3Path::parse("s3://bucket/p").unwrap(),
        )
    }

    fn forbidden() -> HttpResponse {
        HttpResponse::new(StatusCode::try_from(403).unwrap(), SdkBody::empty())
    }

    #[tokio::test]
    async fn a_bucket_of_another_account_is_recognised() {
        let with_owner = mock!(Client::head_bucket)
            .match_requests(|r| r.expected_bucket_owner() == Some("111111111111"))
            .then_http_response(forbidden);
        let without_owner = mock!(Client::head_bucket)
            .match_requests(|r| r.expected_bucket_owner().is_none())
            .then_output(|| HeadBucketOutput::builder().build());
        let client = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&with_owner, &without_owner]);
        assert_eq!(bucket(client).owned_by("111111111111").await, Ok(false));
        assert_eq!((with_owner.num_calls(), without_owner.num_calls()), (1, 1));
    }

    #[tokio::test]
    async fn create_sends_the_creator_tag_with_the_bucket() {
        use aws_sdk_s3::operation::create_bucket::CreateBucketOutput;
        let tagged = mock!(Client::create_bucket)
            .match_requests(|r| {
                let configuration = r.create_bucket_configuration();
                let tags: Vec<_> =
                    configuration.map(|c| c.tags().iter().map(|t| (t.key(), t.value())).collect()).unwrap_or_default();
                tags == [(CREATED_BY_TAG, "uid-1"), ("team", "a")]
                    && configuration.and_then(|c| c.location_constraint()).is_none()
            })
            .then_output(|| CreateBucketOutput::builder().build());
        let client = mock_client!(aws_sdk_s3, [&tagged]);
        let tags = vec![(CREATED_BY_TAG.to_owned(), "uid-1".to_owned()), ("team".to_owned(), "a".to_owned())];
        assert_eq!(bucket(client).create("us-east-1", Some(tags)).await, Ok(Created::New));
        assert_eq!(tagged.num_calls(), 1);
    }

    #[tokio::test]
    async fn create_names_the_account_regional_namespace_only_for_its_buckets() {
        use aws_sdk_s3::operation::create_bucket::CreateBucketOutput;
        let regional = mock!(Client::create_bucket)
            .match_requests(|r| r.bucket_namespace() == Some(&BucketNamespace::AccountRegional))
            .then_output(|| CreateBucketOutput::builder().build());
        let global = mock!(Client::create_bucket)
            .match_requests(|r| r.bucket_namespace().is_none())
            .then_output(|| CreateBucketOutput::builder().build());
        let client = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&regional, &global]);
        let at = |bucket: &str| {
            let path = S3Path::parse(&format!("s3://{bucket}/p")).unwrap();
            Bucket::new(client.clone(), Arc::new(RateLimiter::new(100.0, 100)), "test".into(), path)
        };
        assert_eq!(at("ml-111122223333-us-west-2-an").create("us-west-2", None).await, Ok(Created::New));
        assert_eq!((regional.num_calls(), global.num_calls()), (1, 0));
        assert_eq!(at("ml-artifacts").create("us-west-2", None).await, Ok(Created::New));
        assert_eq!((regional.num_calls(), global.num_calls()), (1, 1));
    }

    #[tokio::test]
    async fn own_bucket_and_no_access_are_told_apart() {
        let own = mock!(Client::head_bucket).then_output(|| HeadBucketOutput::builder().build());
        let client = mock_client!(aws_sdk_s3, [&own]);
        assert_eq!(bucket(client).owned_by("222222222222").await, Ok(true));

        let denied = mock!(Client::head_bucket).then_http_response(forbidden);
        let client = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&denied]);
        let error = bucket(client).owned_by("222222222222").await.unwrap_err();
        assert_eq!(error.http_status, Some(403));
        assert_eq!(denied.num_calls(), 2, "asked with and without the expected owner");
    }
}
