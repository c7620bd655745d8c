//! Identity: who the operator or a store's keys are (STS), and whether a ServiceAccount's pods
//! can use a store through IRSA (annotation, role, trust policy, permissions). Both reconcilers
//! use it: the store for its own identity, the Stack for its orchestrator's.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;

use crate::aws::failure::{CallError, source_chain};
use crate::aws::iam::{self, Iam, Permission, ROLE_ARN_ANNOTATION};
use crate::aws::{Failure, StaticKeys};
use crate::controller::Context;
use crate::reason::Reason;

/// Whose access a store's consumers use, and what was proven of it.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub arn: Option<String>,
    pub summary: String,
}

/// Whether a failed call's error chain says no credentials could be loaded (the SDK's default
/// chain found none), rather than that AWS could not be reached or refused them. Pure.
fn lacks_credentials(chain: &str) -> bool {
    let chain = chain.to_lowercase();
    ["no credentials", "failed to load credentials", "credential provider was not enabled", "credentials not loaded"]
        .iter()
        .any(|phrase| chain.contains(phrase))
}

/// The account id of an ARN (`arn:aws:sts::123456789012:assumed-role/...` → `123456789012`).
pub fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|account| account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()))
}

/// STS GetCallerIdentity with a store's keys, or the operator's ambient identity. On a custom
/// endpoint (S3 that is not AWS) the identity is informative only, and STS failing is no failure.
pub async fn caller_identity(
    ctx: &Context,
    keys: Option<&StaticKeys>,
    custom_endpoint: bool,
) -> Result<Option<String>, Failure> {
    ctx.aws.iam_limiter.acquire(&crate::aws::clients::account_key(keys)).await;
    let result = ctx.aws.sts(keys).get_caller_identity().send().await;
    match result {
        Ok(output) => Ok(output.arn().map(str::to_owned)),
        Err(err) => {
            let error = CallError::from_sdk(&err);
            if custom_endpoint {
                // Identity is informative only when S3 is not AWS: do not fail on STS.
                return Ok(None);
            }
            if keys.is_none() && error.code.is_none() && lacks_credentials(&source_chain(&err)) {
                // Not an outage: the operator has no identity, and retrying will not give it one.
                return Err(Failure::new(
                    Reason::OperatorCredentialsMissing,
                    "the operator has no AWS credentials (the SDK's default chain found none); give its ServiceAccount an IAM role (IRSA or Pod Identity), or its pod AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                ));
            }
            Err(match error.code.as_deref() {
                Some("InvalidClientTokenId") => Failure::new(
                    Reason::InvalidAccessKeyId,
                    "AWS STS does not know the access key id in the referenced Secret; put a valid key in the Secret",
                ),
                Some("SignatureDoesNotMatch") => Failure::new(
                    Reason::SignatureDoesNotMatch,
                    "AWS STS rejected the signature: the secret access key in the referenced Secret does not belong to its access key id",
                ),
                Some("ExpiredToken") => Failure::new(
                    Reason::ExpiredToken,
                    "the session token in the referenced Secret has expired; put fresh credentials in the Secret",
                ),
                _ if error.dispatch.is_some() => Failure::new(
                    Reason::StsUnreachable,
                    format!("could not reach AWS STS: {}", error.dispatch.unwrap_or_default()),
                ),
                _ => Failure::new(
                    Reason::StsError,
                    format!(
                        "AWS STS GetCallerIdentity failed: {}",
                        error.code.unwrap_or_else(|| "no credentials available".into())
                    ),
                ),
            })
        }
    }
}

/// The IRSA checks for a ServiceAccount: annotation, role, trust policy, and the `permissions` the
/// pods need (see [`iam::required_permissions`]).
pub async fn check_irsa(
    ctx: &Context,
    namespace: &str,
    account: &ServiceAccount,
    expected_role: Option<&str>,
    permissions: &[Permission],
) -> Result<Identity, Failure> {
    let name = account.name_any();
    let Some(role_arn) = account.annotations().get(ROLE_ARN_ANNOTATION).cloned() else {
        return Err(Failure::new(
            Reason::IrsaAnnotationMissing,
            format!(
                "ServiceAccount {name} has no {ROLE_ARN_ANNOTATION} annotation; annotate it with the IAM role its pods should assume"
            ),
        ));
    };
    if let Some(expected) = expected_role {
        if expected != role_arn {
            return Err(Failure::new(
                Reason::RoleArnMismatch,
                format!(
                    "ServiceAccount {name} is annotated with role {role_arn}, but spec.auth.implicit.roleArn is {expected}; make them agree"
                ),
            ));
        }
    }
    let issuer = ctx
        .oidc_issuer()
        .await
        .map_err(|e| Failure::new(Reason::OidcIssuerUnknown, format!("cannot read the cluster's OIDC issuer: {e}")))?;
    let iam = Iam::new(ctx.aws.iam(), ctx.aws.iam_limiter.clone());
    let trust = iam.trust_policy(&role_arn).await?;
    iam::check_trust_policy(&trust, &issuer, namespace, &name)
        .map_err(|message| Failure::new(Reason::TrustPolicyMismatch, format!("role {role_arn}: {message}")))?;
    let permissions = match iam.denied(&role_arn, permissions).await? {
        None => " (the IAM endpoint cannot simulate policies, so permissions were not checked)".to_owned(),
        Some(denied) if denied.is_empty() => String::new(),
        Some(denied) => {
            return Err(Failure::new(
                Reason::PermissionsDenied,
                format!("role {role_arn} is not allowed: {}; add them to its policy", denied.join(", ")),
            ));
        }
    };
    Ok(Identity {
        summary: format!(
            "ServiceAccount {name} assumes role {role_arn}, which trusts this cluster's OIDC issuer{permissions}"
        ),
        arn: Some(role_arn),
    })
}

#[cfg(test)]
mod tests {
    use super::{account_of, lacks_credentials};

    #[test]
    fn tells_missing_credentials_from_an_outage() {
        let chain = "dispatch failure: other: an error occurred while loading credentials: the credential provider was not enabled: no credentials found in chain";
        assert!(lacks_credentials(chain));
        assert!(!lacks_credentials("dispatch failure: io error: Connection refused (os error 111)"));
    }

    #[test]
    fn reads_the_account_of_an_arn() {
        assert_eq!(account_of("arn:aws:sts::123456789012:assumed-role/ml/session"), Some("123456789012"));
        assert_eq!(account_of("arn:aws:iam::123456789012:user/ci"), Some("123456789012"));
        assert_eq!(account_of("not-an-arn"), None);
    }
}
