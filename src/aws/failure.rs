//! Classification of AWS errors into condition reasons with messages that say what to fix. Messages
//! carry the bucket, region, endpoint and error code, never a credential.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::reason::{Failure, Reason};

/// What a failed call looked like, independent of the SDK's types, so classification is pure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallError {
    pub http_status: Option<u16>,
    pub code: Option<String>,
    pub aws_message: Option<String>,
    pub bucket_region: Option<String>,
    /// Set when no response came back (DNS, connection, TLS, timeout).
    pub dispatch: Option<String>,
}

impl CallError {
    pub fn from_sdk<E: ProvideErrorMetadata + std::error::Error + 'static>(err: &SdkError<E, HttpResponse>) -> Self {
        let response = err.raw_response();
        let dispatch = match err {
            // A call its server's bulkhead turned away says so in its own words.
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                Some(busy_in(err).map_or_else(|| source_chain(err), ToString::to_string))
            }
            _ => None,
        };
        Self {
            http_status: response.map(|r| r.status().as_u16()),
            code: err.code().map(str::to_owned),
            aws_message: err.message().map(str::to_owned),
            bucket_region: response.and_then(|r| r.headers().get("x-amz-bucket-region")).map(str::to_owned),
            dispatch,
        }
    }

    fn code_or_status(&self) -> String {
        match (&self.code, self.http_status) {
            (Some(code), _) => code.clone(),
            (None, Some(status)) => format!("HTTP {status}"),
            (None, None) => "no response".to_owned(),
        }
    }
}

/// The bulkhead's refusal among the error's sources, if that is why the call was not made.
fn busy_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a crate::bulkhead::Busy> {
    let mut source = Some(err);
    while let Some(error) = source {
        if let Some(busy) = error.downcast_ref::<crate::bulkhead::Busy>() {
            return Some(busy);
        }
        source = error.source();
    }
    None
}

/// The error and its sources, joined: the SDK's own Display is often just "dispatch failure".
pub fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = inner.source();
    }
    parts.join(": ")
}

/// Whether a call failed because TLS verification refused the endpoint's certificate (rustls:
/// "invalid peer certificate: UnknownIssuer", "... NotValidForName", an expired one...).
fn is_untrusted_certificate(cause: &str) -> bool {
    cause.contains("invalid peer certificate")
}

/// Where a call went, for messages.
pub struct Target<'a> {
    /// What was attempted, e.g. "read s3://bucket/prefix".
    pub action: &'a str,
    pub bucket: &'a str,
    pub region: &'a str,
    pub endpoint: &'a str,
}

/// A call that got no response: the endpoint's certificate is not trusted, or it is unreachable.
fn unanswered(cause: &str, target: &Target<'_>) -> Failure {
    let Target { action, endpoint, .. } = target;
    if is_untrusted_certificate(cause) {
        // Retrying cannot help: the endpoint's certificate is not signed by a CA we trust.
        return Failure::new(
            Reason::InvalidTlsSettings,
            format!(
                "{endpoint} presented a certificate that is not trusted ({cause}); put the PEM certificates of the CA that signed it in spec.endpoint.tls.caBundle"
            ),
        );
    }
    Failure::new(
        Reason::EndpointUnreachable,
        format!(
            "could not reach {endpoint} to {action}: {cause}; check endpoint.url, DNS, the network path from the operator and TLS settings"
        ),
    )
}

/// Classifies a failed S3 call.
pub fn classify_s3(error: &CallError, target: &Target<'_>) -> Failure {
    let Target { action, bucket, region, endpoint } = target;
    if let Some(cause) = &error.dispatch {
        return unanswered(cause, target);
    }
    let code = error.code.as_deref().unwrap_or_default();
    match (code, error.http_status) {
        ("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException", _) | (_, Some(301)) | ("", Some(400))
            if !code.is_empty() || error.bucket_region.is_some() || error.http_status == Some(301) =>
        {
            let actual = error.bucket_region.as_deref().unwrap_or("another region");
            Failure::new(
                Reason::RegionMismatch,
                format!("bucket {bucket} is in {actual}, not {region}; set spec.region to {actual} or remove it so the operator discovers it"),
            )
        }
        ("NoSuchBucket" | "NotFound", _) | ("", Some(404)) => Failure::new(
            Reason::BucketNotFound,
            format!("bucket {bucket} does not exist at {endpoint}; create it, fix the bucket in spec.path, or set provisioning to Create"),
        ),
        // versitygw names an unknown access key XAdminUserNotFound.
        ("InvalidAccessKeyId" | "XAdminUserNotFound", _) => Failure::new(
            Reason::InvalidAccessKeyId,
            format!("{endpoint} does not know the access key id in the referenced Secret; put a valid key in the Secret"),
        ),
        ("SignatureDoesNotMatch", _) => Failure::new(
            Reason::SignatureDoesNotMatch,
            format!("{endpoint} rejected the request signature: the secret access key in the referenced Secret does not belong to its access key id"),
        ),
        ("ExpiredToken" | "TokenRefreshRequired" | "ExpiredTokenException", _) => Failure::new(
            Reason::ExpiredToken,
            "the session token in the referenced Secret has expired; put fresh temporary credentials in the Secret, or use long-lived keys or implicit auth".to_owned(),
        ),
        ("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded", _) | (_, Some(429 | 503)) => Failure::new(
            Reason::Throttled,
            format!("{endpoint} throttled the request to {action} ({}); the operator retries with backoff", error.code_or_status()),
        ),
        ("AccessDenied" | "AllAccessDisabled" | "AccountProblem", _) | ("", Some(403)) => Failure::new(
            Reason::AccessDenied,
            format!(
                "access denied to {action} ({}); grant the identity s3:ListBucket on arn:aws:s3:::{bucket} and s3:GetObject, s3:PutObject and s3:DeleteObject under the prefix, or check the bucket policy and that the bucket belongs to your account",
                error.code_or_status()
            ),
        ),
        (_, Some(status)) if status >= 500 => Failure::new(
            Reason::S3Unavailable,
            format!("{endpoint} answered {} to {action}; the operator retries with backoff", error.code_or_status()),
        ),
        _ => Failure::new(
            Reason::S3Error,
            format!(
                "{endpoint} refused to {action}: {}{}",
                error.code_or_status(),
                error.aws_message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Target<'static> =
        Target { action: "read s3://b/p", bucket: "b", region: "us-west-2", endpoint: "https://s3.amazonaws.com" };

    fn status(code: Option<&str>, http_status: u16) -> CallError {
        CallError { http_status: Some(http_status), code: code.map(str::to_owned), ..CallError::default() }
    }

    #[test]
    fn maps_each_error_to_its_own_reason() {
        let cases = [
            (status(Some("AccessDenied"), 403), Reason::AccessDenied, false),
            (status(None, 403), Reason::AccessDenied, false),
            (status(Some("NoSuchBucket"), 404), Reason::BucketNotFound, false),
            (status(None, 404), Reason::BucketNotFound, false),
            (status(Some("PermanentRedirect"), 301), Reason::RegionMismatch, false),
            (status(Some("ExpiredToken"), 400), Reason::ExpiredToken, false),
            (status(Some("InvalidAccessKeyId"), 403), Reason::InvalidAccessKeyId, false),
            (status(Some("XAdminUserNotFound"), 404), Reason::InvalidAccessKeyId, false),
            (status(Some("SignatureDoesNotMatch"), 403), Reason::SignatureDoesNotMatch, false),
            (status(Some("SlowDown"), 503), Reason::Throttled, true),
            (status(Some("InternalError"), 500), Reason::S3Unavailable, true),
            (
                CallError { dispatch: Some("connection refused".into()), ..CallError::default() },
                Reason::EndpointUnreachable,
                true,
            ),
            (
                CallError {
                    dispatch: Some("dispatch failure: io error: invalid peer certificate: UnknownIssuer".into()),
                    ..CallError::default()
                },
                Reason::InvalidTlsSettings,
                false,
            ),
        ];
        for (error, reason, transient) in cases {
            let failure = classify_s3(&error, &TARGET);
            assert_eq!((failure.reason, failure.is_transient()), (reason, transient), "{error:?}");
        }
    }

    #[test]
    fn region_mismatch_names_both_regions() {
        let error = CallError { bucket_region: Some("eu-central-1".into()), ..status(None, 301) };
        let failure = classify_s3(&error, &TARGET);
        assert!(
            failure.message.contains("eu-central-1") && failure.message.contains("us-west-2"),
            "{}",
            failure.message
        );
    }
}
