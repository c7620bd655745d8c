//! The local S3 is real: MinIO enforces SigV4 with real keys, and the limited user is limited.

mod common;

use aws_credential_types::Credentials;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::primitives::ByteStream;

fn s3(access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let env = common::test_env();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(env.var("AO_S3_REGION").to_owned()))
        .endpoint_url(env.var("AO_S3_ENDPOINT"))
        .force_path_style(true)
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[tokio::test]
async fn a_bucket_can_be_created_written_and_read() {
    let env = common::test_env();
    let client = s3(env.var("AO_S3_ROOT_ACCESS_KEY"), env.var("AO_S3_ROOT_SECRET_KEY"));
    let bucket = format!("env-check-{}", fastrand::u32(..));
    client.create_bucket().bucket(&bucket).send().await.expect("bucket is created");
    client.put_object().bucket(&bucket).key("a/b.txt").body(ByteStream::from_static(b"hello")).send().await.unwrap();
    let object = client.get_object().bucket(&bucket).key("a/b.txt").send().await.unwrap();
    assert_eq!(object.body.collect().await.unwrap().into_bytes().as_ref(), b"hello");
}

#[tokio::test]
async fn wrong_keys_are_refused() {
    let env = common::test_env();
    let wrong_secret = s3(env.var("AO_S3_ROOT_ACCESS_KEY"), "not-the-secret-key");
    let err = wrong_secret.list_buckets().send().await.unwrap_err();
    assert_eq!(aws_sdk_s3::error::ProvideErrorMetadata::code(&err), Some("SignatureDoesNotMatch"));
    let unknown = s3("UNKNOWNACCESSKEY", "whatever-secret");
    let err = unknown.list_buckets().send().await.unwrap_err();
    assert_eq!(aws_sdk_s3::error::ProvideErrorMetadata::code(&err), Some("InvalidAccessKeyId"));
}

#[tokio::test]
async fn the_limited_user_cannot_touch_other_buckets() {
    let env = common::test_env();
    let root = s3(env.var("AO_S3_ROOT_ACCESS_KEY"), env.var("AO_S3_ROOT_SECRET_KEY"));
    let other = format!("other-{}", fastrand::u32(..));
    root.create_bucket().bucket(&other).send().await.unwrap();
    let limited = s3(env.var("AO_S3_USER_ACCESS_KEY"), env.var("AO_S3_USER_SECRET_KEY"));
    let err = limited.list_objects_v2().bucket(&other).send().await.unwrap_err();
    assert_eq!(aws_sdk_s3::error::ProvideErrorMetadata::code(&err), Some("AccessDenied"));
    let own = format!("limited-{}", fastrand::u32(..));
    limited.create_bucket().bucket(&own).send().await.expect("the limited user may create limited-* buckets");
}
