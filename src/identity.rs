//! Identity: who the operator or a store's keys are (STS), and whether a ServiceAccount's pods
//! can use a store through IRSA (annotation, role, trust policy, permissions). Both reconcilers
//! use it: the store for its own identity, the Stack for its orchestrator's.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;

use crate::aws::eks::{self, Association, PodIdentity};
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

/// How a ServiceAccount's pods get their AWS role.
enum Wiring {
    /// The `eks.amazonaws.com/role-arn` annotation.
    Irsa(String),
    PodIdentity {
        cluster: String,
        association: Association,
    },
}

/// The workload-identity checks for a ServiceAccount: its IRSA annotation or, when the operator
/// knows the EKS cluster, its Pod Identity association; the role that gives and its trust policy;
/// and the `permissions` the pods need (see [`iam::required_permissions`]).
pub async fn check_workload_identity(
    ctx: &Context,
    namespace: &str,
    account: &ServiceAccount,
    expected_role: Option<&str>,
    permissions: &[Permission],
) -> Result<Identity, Failure> {
    let iam = Iam::new(ctx.aws.iam(), ctx.aws.iam_limiter.clone());
    let wiring = Wired { namespace, account, expected_role, permissions };
    wiring.prove(&iam, ctx.pod_identity().as_ref(), async || ctx.oidc_issuer().await).await
}

/// One ServiceAccount's wiring, and what the store needs of it.
struct Wired<'a> {
    namespace: &'a str,
    account: &'a ServiceAccount,
    expected_role: Option<&'a str>,
    permissions: &'a [Permission],
}

impl Wired<'_> {
    async fn prove(
        &self,
        iam: &Iam,
        pod_identity: Option<&PodIdentity>,
        issuer: impl AsyncFnOnce() -> Result<String, String>,
    ) -> Result<Identity, Failure> {
        let name = self.account.name_any();
        let wiring = match self.account.annotations().get(ROLE_ARN_ANNOTATION) {
            Some(role_arn) => Wiring::Irsa(role_arn.clone()),
            None => {
                let Some(eks) = pod_identity else { return Err(self.unwired(None)) };
                match eks.association(self.namespace, &name).await? {
                    Some(association) => Wiring::PodIdentity { cluster: eks.cluster().to_owned(), association },
                    None => return Err(self.unwired(Some(eks.cluster()))),
                }
            }
        };
        let (role_arn, how) = match &wiring {
            Wiring::Irsa(role_arn) => (role_arn.as_str(), "annotated with"),
            Wiring::PodIdentity { association, .. } => {
                (association.effective_role(), "associated (EKS Pod Identity) with")
            }
        };
        if let Some(expected) = self.expected_role.filter(|expected| *expected != role_arn) {
            return Err(Failure::new(
                Reason::RoleArnMismatch,
                format!(
                    "ServiceAccount {name} is {how} role {role_arn}, but spec.auth.implicit.roleArn is {expected}; make them agree"
                ),
            ));
        }
        let trusted = match &wiring {
            Wiring::Irsa(role_arn) => {
                let issuer = issuer().await.map_err(|e| {
                    Failure::new(Reason::OidcIssuerUnknown, format!("cannot read the cluster's OIDC issuer: {e}"))
                })?;
                let trust = iam.trust_policy(role_arn).await?;
                iam::check_trust_policy(&trust, &issuer, self.namespace, &name).map_err(|message| {
                    Failure::new(Reason::TrustPolicyMismatch, format!("role {role_arn}: {message}"))
                })?;
                "which trusts this cluster's OIDC issuer".to_owned()
            }
            Wiring::PodIdentity { association, .. } => {
                let trust = iam.trust_policy(&association.role_arn).await?;
                eks::check_trust_policy(&trust).map_err(|message| {
                    Failure::new(Reason::TrustPolicyMismatch, format!("role {}: {message}", association.role_arn))
                })?;
                format!("whose role {} trusts {}", association.role_arn, eks::POD_IDENTITY_PRINCIPAL)
            }
        };
        let permissions = match iam.denied(role_arn, self.permissions).await? {
            None => " (the IAM endpoint cannot simulate policies, so permissions were not checked)".to_owned(),
            Some(denied) if denied.is_empty() => String::new(),
            Some(denied) => {
                return Err(Failure::new(
                    Reason::PermissionsDenied,
                    format!("role {role_arn} is not allowed: {}; add them to its policy", denied.join(", ")),
                ));
            }
        };
        let summary = match &wiring {
            Wiring::Irsa(_) => format!("ServiceAccount {name} assumes role {role_arn}, {trusted}{permissions}"),
            Wiring::PodIdentity { cluster, association } => format!(
                "ServiceAccount {name} gets role {role_arn} from Pod Identity association {} of EKS cluster {cluster}, {trusted}{permissions}",
                association.id
            ),
        };
        Ok(Identity { summary, arn: Some(role_arn.to_owned()) })
    }

    /// No role for the ServiceAccount: one failure that names every way to give it one.
    fn unwired(&self, cluster: Option<&str>) -> Failure {
        let (name, namespace) = (self.account.name_any(), self.namespace);
        let message = match cluster {
            Some(cluster) => format!(
                "ServiceAccount {name} has neither an {ROLE_ARN_ANNOTATION} annotation (IRSA) nor a Pod Identity association in EKS cluster {cluster}; annotate it with the IAM role its pods should assume, or associate one: aws eks create-pod-identity-association --cluster-name {cluster} --namespace {namespace} --service-account {name} --role-arn ROLE"
            ),
            None => format!(
                "ServiceAccount {name} has no {ROLE_ARN_ANNOTATION} annotation; annotate it with the IAM role its pods should assume (IRSA), or, for EKS Pod Identity, give the operator --eks-cluster-name so that it finds the association"
            ),
        };
        Failure::new(Reason::IrsaAnnotationMissing, message)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aws_sdk_eks::operation::describe_pod_identity_association::DescribePodIdentityAssociationOutput;
    use aws_sdk_eks::operation::list_pod_identity_associations::ListPodIdentityAssociationsOutput;
    use aws_sdk_eks::types::{PodIdentityAssociation, PodIdentityAssociationSummary};
    use aws_sdk_iam::operation::get_role::GetRoleOutput;
    use aws_sdk_iam::operation::simulate_principal_policy::SimulatePrincipalPolicyOutput;
    use aws_sdk_iam::types::{EvaluationResult, PolicyEvaluationDecisionType, Role};
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

    use super::*;
    use crate::aws::ratelimit::RateLimiter;

    const ROLE: &str = "arn:aws:iam::111122223333:role/ml";

    fn account(annotation: Option<&str>) -> ServiceAccount {
        let mut account = ServiceAccount::default();
        account.metadata.name = Some("runner".into());
        if let Some(role) = annotation {
            account.metadata.annotations = Some([(ROLE_ARN_ANNOTATION.to_owned(), role.to_owned())].into());
        }
        account
    }

    /// IAM answering GetRole with `trust` and allowing every simulated action.
    fn iam(trust: serde_json::Value) -> (Iam, Rule) {
        let document = trust.to_string();
        let get_role = mock!(aws_sdk_iam::Client::get_role).then_output(move || {
            let role = Role::builder()
                .path("/")
                .role_name("ml")
                .role_id("AROA")
                .arn(ROLE)
                .create_date(aws_smithy_types::DateTime::from_secs(0))
                .assume_role_policy_document(document.clone())
                .build()
                .unwrap();
            GetRoleOutput::builder().role(role).build()
        });
        let allowed = mock!(aws_sdk_iam::Client::simulate_principal_policy).then_output(|| {
            let result = EvaluationResult::builder()
                .eval_action_name("s3:GetObject")
                .eval_decision(PolicyEvaluationDecisionType::Allowed)
                .build()
                .unwrap();
            SimulatePrincipalPolicyOutput::builder().evaluation_results(result).build()
        });
        let client = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&get_role, &allowed]);
        (Iam::new(client, Arc::new(RateLimiter::new(100.0, 100))), get_role)
    }

    /// EKS whose cluster `ml-cluster` associates `runner` in `team` with [`ROLE`], and nothing else.
    fn eks() -> PodIdentity {
        let listed = mock!(aws_sdk_eks::Client::list_pod_identity_associations)
            .match_requests(|r| r.namespace() == Some("team") && r.service_account() == Some("runner"))
            .then_output(|| {
                let summary = PodIdentityAssociationSummary::builder().association_id("a-1").build();
                ListPodIdentityAssociationsOutput::builder().associations(summary).build()
            });
        let none = mock!(aws_sdk_eks::Client::list_pod_identity_associations)
            .then_output(|| ListPodIdentityAssociationsOutput::builder().build());
        let described = mock!(aws_sdk_eks::Client::describe_pod_identity_association).then_output(|| {
            let association = PodIdentityAssociation::builder().role_arn(ROLE).build();
            DescribePodIdentityAssociationOutput::builder().association(association).build()
        });
        let client = mock_client!(aws_sdk_eks, RuleMode::MatchAny, [&listed, &none, &described]);
        PodIdentity::new(client, Arc::new(RateLimiter::new(100.0, 100)), "ml-cluster")
    }

    fn pod_identity_trust(actions: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": actions}
        ]})
    }

    async fn prove(
        namespace: &str,
        account: &ServiceAccount,
        expected: Option<&str>,
        iam: &Iam,
        eks: Option<&PodIdentity>,
    ) -> Result<Identity, Failure> {
        let path = crate::s3path::S3Path::parse("s3://ml-bucket/team").unwrap();
        let spec: crate::api::artifact_store::ArtifactStoreSpec =
            serde_json::from_value(serde_json::json!({"path": "s3://ml-bucket/team", "auth": {"implicit": {}}}))
                .unwrap();
        let permissions = iam::required_permissions(&spec, &path);
        let wired = Wired { namespace, account, expected_role: expected, permissions: &permissions };
        wired.prove(iam, eks, async || Err("no issuer in this test".to_owned())).await
    }

    #[tokio::test]
    async fn a_pod_identity_association_is_a_role_like_an_annotation() {
        let (iam, get_role) = iam(pod_identity_trust(serde_json::json!(["sts:AssumeRole", "sts:TagSession"])));
        let identity = prove("team", &account(None), Some(ROLE), &iam, Some(&eks())).await.unwrap();
        assert_eq!(identity.arn.as_deref(), Some(ROLE));
        assert!(
            identity.summary.contains("Pod Identity association a-1 of EKS cluster ml-cluster")
                && identity.summary.contains("trusts pods.eks.amazonaws.com"),
            "{}",
            identity.summary
        );
        assert_eq!(get_role.num_calls(), 1, "the association's role went through the trust check");
    }

    #[tokio::test]
    async fn a_pod_identity_role_must_let_eks_tag_the_session() {
        let (iam, _) = iam(pod_identity_trust(serde_json::json!("sts:AssumeRole")));
        let failure = prove("team", &account(None), None, &iam, Some(&eks())).await.unwrap_err();
        assert_eq!(failure.reason, Reason::TrustPolicyMismatch);
        assert!(failure.message.contains("sts:TagSession"), "{}", failure.message);
    }

    #[tokio::test]
    async fn no_annotation_and_no_association_names_both_ways() {
        let (iam, _) = iam(pod_identity_trust(serde_json::json!("sts:AssumeRole")));
        let failure = prove("other", &account(None), None, &iam, Some(&eks())).await.unwrap_err();
        assert_eq!(failure.reason, Reason::IrsaAnnotationMissing);
        assert!(
            failure.message.contains(ROLE_ARN_ANNOTATION)
                && failure.message.contains("aws eks create-pod-identity-association --cluster-name ml-cluster --namespace other --service-account runner"),
            "{}",
            failure.message
        );
        let failure = prove("team", &account(None), None, &iam, None).await.unwrap_err();
        assert_eq!(failure.reason, Reason::IrsaAnnotationMissing);
        assert!(failure.message.contains("--eks-cluster-name"), "without the cluster: {}", failure.message);
    }

    #[tokio::test]
    async fn the_association_s_role_must_be_the_one_the_store_names() {
        let (iam, _) = iam(pod_identity_trust(serde_json::json!(["sts:AssumeRole", "sts:TagSession"])));
        let other = "arn:aws:iam::111122223333:role/other";
        let failure = prove("team", &account(None), Some(other), &iam, Some(&eks())).await.unwrap_err();
        assert_eq!(failure.reason, Reason::RoleArnMismatch);
        assert!(failure.message.contains("associated (EKS Pod Identity) with role"), "{}", failure.message);
    }

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
