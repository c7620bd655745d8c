//! Identity: who the operator or a store's keys are (STS), and whether a ServiceAccount's pods
//! can use a store through IRSA or EKS Pod Identity (annotation or association, role, trust
//! policy, permissions, and for IRSA the proof by assuming the role). Both reconcilers use it: the
//! store for its own identity, the Stack for its orchestrator's.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use crate::aws::StaticKeys;
use crate::aws::clients::S3Connection;
use crate::aws::eks::{self, Association, PodIdentity};
use crate::aws::failure::{CallError, Target, classify_s3, source_chain};
use crate::aws::iam::{self, Iam, Permission, ROLE_ARN_ANNOTATION};
use crate::aws::s3::Bucket;
use crate::controller::Context;
use crate::reason::{Failure, Reason};
use crate::s3path::S3Path;

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

/// Where the pods will work, for the proof by assuming the role: the store's S3 connection
/// (without keys: the role's are used), its path, and whether the write probe is asked for.
pub struct Probe<'a> {
    pub connection: S3Connection,
    pub path: &'a S3Path,
    pub write: bool,
}

/// The workload-identity checks for a ServiceAccount: its IRSA annotation or, when the operator
/// knows the EKS cluster, its Pod Identity association; the role that gives and its trust policy;
/// the `permissions` the pods need (see [`iam::required_permissions`]); and, for IRSA, the proof:
/// the role assumed with a token of the ServiceAccount, and `probe` performed with its credentials.
pub async fn check_workload_identity(
    ctx: &Context,
    namespace: &str,
    account: &ServiceAccount,
    expected_role: Option<&str>,
    permissions: &[Permission],
    probe: Probe<'_>,
) -> Result<Identity, Failure> {
    let iam = Iam::new(ctx.aws.iam(), ctx.aws.iam_limiter.clone());
    let wiring = Wired { namespace, account, expected_role, permissions };
    let name = account.name_any();
    let assume = async |role_arn: &str, simulated: bool| {
        let proof = Proof { namespace, account: &name, role_arn, simulated };
        proof.run(ctx, &probe).await
    };
    wiring.prove(&iam, ctx.pod_identity().as_ref(), async || ctx.oidc_issuer().await, assume).await
}

/// The audience of the tokens IRSA's pods present to STS.
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";
/// How long the token and the role's session last: the least each allows.
const TOKEN_SECONDS: i64 = 600;
const SESSION_SECONDS: i32 = 900;

/// The proof that a ServiceAccount's pods can use the store through IRSA: what the pods do
/// themselves, done by the operator. It covers what IAM's simulation cannot see (bucket policies,
/// permissions boundaries, service control policies, the S3 server's own view of the credentials).
struct Proof<'a> {
    namespace: &'a str,
    account: &'a str,
    role_arn: &'a str,
    /// Whether IAM simulated the role's policies (and allowed every action) before the proof.
    simulated: bool,
}

impl Proof<'_> {
    /// Requests a token for the ServiceAccount, assumes the role with it, and performs `probe`
    /// with the role's credentials. Returns what was proven, for the summary.
    async fn run(&self, ctx: &Context, probe: &Probe<'_>) -> Result<String, Failure> {
        let Some(token) = self.token(ctx).await? else {
            return Ok(" (the operator may not request ServiceAccount tokens, so it did not assume the role to prove access: grant it create on serviceaccounts/token)".to_owned());
        };
        let keys = self.assume(ctx, &token).await?;
        let connection = S3Connection { keys: Some(keys), ..probe.connection.clone() };
        let client =
            ctx.aws.s3_once(&connection).map_err(|e| Failure::new(Reason::InvalidTlsSettings, e.to_string()))?;
        let bucket = Bucket::new(client, ctx.aws.s3_limiter.clone(), self.rate_limit_key(), probe.path.clone());
        let endpoint = connection.endpoint_display();
        bucket
            .prove_access(probe.write)
            .await
            .map_err(|(step, error)| self.probe_failure(&error, &step, probe, &endpoint))?;
        let done = if probe.write { "listed, wrote and deleted under" } else { "listed" };
        Ok(format!("; assuming it with the ServiceAccount's token, the operator {done} {}", probe.path))
    }

    /// The rate-limiting key of the role's calls: its account, not its session (each proof has
    /// new keys).
    fn rate_limit_key(&self) -> String {
        format!("role:{}", account_of(self.role_arn).unwrap_or("unknown"))
    }

    /// A short-lived token for the ServiceAccount with STS's audience, as its pods get. None when
    /// the operator may not request one (its RBAC leaves the proof out).
    async fn token(&self, ctx: &Context) -> Result<Option<String>, Failure> {
        let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), self.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![STS_AUDIENCE.to_owned()],
                expiration_seconds: Some(TOKEN_SECONDS),
                bound_object_ref: None,
            },
            ..TokenRequest::default()
        };
        match api.create_token_request(self.account, &PostParams::default(), &request).await {
            Ok(answer) => Ok(answer.status.map(|status| status.token).filter(|token| !token.is_empty())),
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(None),
            Err(kube::Error::Api(status)) if status.code == 404 => Err(Failure::new(
                Reason::ServiceAccountNotFound,
                format!("ServiceAccount {} does not exist in namespace {}", self.account, self.namespace),
            )),
            Err(error) => Err(Failure::new(
                Reason::TokenRequestFailed,
                format!("the apiserver did not issue a token for ServiceAccount {}: {error}", self.account),
            )),
        }
    }

    /// The role's session credentials for `token`, from STS (AssumeRoleWithWebIdentity, which
    /// needs no credentials of the operator's).
    async fn assume(&self, ctx: &Context, token: &str) -> Result<StaticKeys, Failure> {
        ctx.aws.iam_limiter.acquire(&self.rate_limit_key()).await;
        let answer = ctx
            .aws
            .sts(None)
            .assume_role_with_web_identity()
            .role_arn(self.role_arn)
            .role_session_name(session_name(self.namespace, self.account))
            .web_identity_token(token)
            .duration_seconds(SESSION_SECONDS)
            .send()
            .await;
        match answer {
            Ok(output) => output
                .credentials()
                .map(|c| StaticKeys {
                    access_key_id: c.access_key_id().to_owned(),
                    secret_access_key: c.secret_access_key().to_owned(),
                    session_token: Some(c.session_token().to_owned()),
                })
                .ok_or_else(|| Failure::new(Reason::StsError, "STS AssumeRoleWithWebIdentity returned no credentials")),
            Err(err) => {
                let mut error = CallError::from_sdk(&err);
                // STS does not echo the token, but a message never carries it, whatever answers.
                error.aws_message = error.aws_message.map(|m| m.replace(token, "<token>"));
                Err(self.assume_failure(&error))
            }
        }
    }

    /// Why STS would not let the ServiceAccount assume the role. Pure.
    fn assume_failure(&self, error: &CallError) -> Failure {
        let (account, role_arn, namespace) = (self.account, self.role_arn, self.namespace);
        let said = format!(
            "{}{}",
            error.code.as_deref().unwrap_or("no error code"),
            error.aws_message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        );
        match error.code.as_deref() {
            _ if error.dispatch.is_some() => Failure::new(
                Reason::StsUnreachable,
                format!(
                    "could not reach AWS STS to assume role {role_arn}: {}",
                    error.dispatch.as_deref().unwrap_or_default()
                ),
            ),
            Some("AccessDenied") => Failure::new(
                Reason::TrustPolicyMismatch,
                format!(
                    "STS refused to let ServiceAccount {account} assume role {role_arn} with its token ({said}); the role's trust policy must admit system:serviceaccount:{namespace}:{account} with audience {STS_AUDIENCE}"
                ),
            ),
            Some("InvalidIdentityToken" | "IDPRejectedClaim" | "IDPCommunicationError") => Failure::new(
                Reason::IdentityTokenRejected,
                format!(
                    "STS did not accept ServiceAccount {account}'s token for role {role_arn} ({said}); register this cluster's OIDC issuer as an IAM OIDC identity provider of the role's account, with audience {STS_AUDIENCE}"
                ),
            ),
            _ => Failure::new(
                Reason::StsError,
                format!("STS AssumeRoleWithWebIdentity for role {role_arn} failed ({said})"),
            ),
        }
    }

    /// Why the role's own credentials could not do what the pods will do. Pure.
    fn probe_failure(&self, error: &CallError, action: &str, probe: &Probe<'_>, endpoint: &str) -> Failure {
        let role = format!("role {}, assumed with ServiceAccount {}'s token,", self.role_arn, self.account);
        let code = error.code.as_deref().unwrap_or_default();
        if matches!(code, "AccessDenied" | "AllAccessDisabled") || (code.is_empty() && error.http_status == Some(403)) {
            let simulation = if self.simulated {
                "although IAM's simulation of its policies allows every action the store needs"
            } else {
                "and IAM cannot simulate its policies here"
            };
            return Failure::new(
                Reason::PermissionsDenied,
                format!(
                    "{role} may not {action} ({}), {simulation}: a bucket policy, a permissions boundary, a service control policy or a VPC endpoint policy denies it; allow the role there",
                    error.code.as_deref().unwrap_or("HTTP 403")
                ),
            );
        }
        if matches!(code, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "InvalidClientTokenId") {
            return Failure::new(
                Reason::RoleCredentialsRejected,
                format!(
                    "{endpoint} does not accept the temporary credentials STS issued for {role} ({code}): pods with IRSA credentials can use only AWS S3 or a server that trusts AWS STS; use spec.auth.secretRef with keys this server knows"
                ),
            );
        }
        let target = Target { action, bucket: &probe.path.bucket, region: &probe.connection.region, endpoint };
        classify_s3(error, &target)
    }
}

/// The session name STS records for the proof (CloudTrail shows it): `ao-proof-NAMESPACE-NAME`,
/// cut to STS's 64 characters of `[\w+=,.@-]`.
fn session_name(namespace: &str, account: &str) -> String {
    format!("ao-proof-{namespace}-{account}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) { c } else { '-' })
        .take(64)
        .collect()
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
        assume: impl AsyncFnOnce(&str, bool) -> Result<String, Failure>,
    ) -> Result<Identity, Failure> {
        let name = self.account.name_any();
        let wiring = self.wiring(pod_identity).await?;
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
        let trusted = self.trusted(iam, &wiring, issuer).await?;
        let (permissions, simulated) = match iam.denied(role_arn, self.permissions).await? {
            None => (" (the IAM endpoint cannot simulate policies, so permissions were not checked)".to_owned(), false),
            Some(denied) if denied.is_empty() => (String::new(), true),
            Some(denied) => {
                return Err(Failure::new(
                    Reason::PermissionsDenied,
                    format!("role {role_arn} is not allowed: {}; add them to its policy", denied.join(", ")),
                ));
            }
        };
        // The simulation names what the policies deny; the proof finds what it cannot see. Pod
        // Identity's credentials come from the EKS Auth API, which only a pod can call.
        let proven = match &wiring {
            Wiring::Irsa(_) => assume(role_arn, simulated).await?,
            Wiring::PodIdentity { .. } => String::new(),
        };
        let summary = match &wiring {
            Wiring::Irsa(_) => format!("ServiceAccount {name} assumes role {role_arn}, {trusted}{permissions}{proven}"),
            Wiring::PodIdentity { cluster, association } => format!(
                "ServiceAccount {name} gets role {role_arn} from Pod Identity association {} of EKS cluster {cluster}, {trusted}{permissions}",
                association.id
            ),
        };
        Ok(Identity { summary, arn: Some(role_arn.to_owned()) })
    }

    /// How the ServiceAccount gets its role: its IRSA annotation, or else its Pod Identity
    /// association.
    async fn wiring(&self, pod_identity: Option<&PodIdentity>) -> Result<Wiring, Failure> {
        if let Some(role_arn) = self.account.annotations().get(ROLE_ARN_ANNOTATION) {
            return Ok(Wiring::Irsa(role_arn.clone()));
        }
        let Some(eks) = pod_identity else { return Err(self.unwired(None)) };
        match eks.association(self.namespace, &self.account.name_any()).await? {
            Some(association) => Ok(Wiring::PodIdentity { cluster: eks.cluster().to_owned(), association }),
            None => Err(self.unwired(Some(eks.cluster()))),
        }
    }

    /// Whether the role trusts the way the ServiceAccount's pods come to it; says how, for the
    /// summary.
    async fn trusted(
        &self,
        iam: &Iam,
        wiring: &Wiring,
        issuer: impl AsyncFnOnce() -> Result<String, String>,
    ) -> Result<String, Failure> {
        let name = self.account.name_any();
        Ok(match wiring {
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
        })
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
        let store = crate::resolve::test_store(
            serde_json::json!({"path": "s3://ml-bucket/team", "auth": {"implicit": {}}}),
            "us-east-1",
        );
        let permissions = iam::required_permissions(&store);
        let wired = Wired { namespace, account, expected_role: expected, permissions: &permissions };
        let never = async |_: &str, _: bool| -> Result<String, Failure> { panic!("only IRSA assumes the role") };
        wired.prove(iam, eks, async || Err("no issuer in this test".to_owned()), never).await
    }

    const ISSUER: &str = "https://oidc.example.test/cluster";

    fn irsa_trust(subject: &str) -> serde_json::Value {
        serde_json::json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": "arn:aws:iam::111122223333:oidc-provider/oidc.example.test/cluster"},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {"oidc.example.test/cluster:sub": subject}}
        }]})
    }

    #[tokio::test]
    async fn irsa_is_proven_by_assuming_the_role_after_the_simulation_allows() {
        let (iam, _) = iam(irsa_trust("system:serviceaccount:team:runner"));
        let account = account(Some(ROLE));
        let store = crate::resolve::test_store(
            serde_json::json!({"path": "s3://ml-bucket/p", "auth": {"implicit": {}}}),
            "us-east-1",
        );
        let permissions = iam::required_permissions(&store);
        let wired = Wired { namespace: "team", account: &account, expected_role: None, permissions: &permissions };
        let seen = std::sync::Mutex::new(None);
        let assume = async |role: &str, simulated: bool| {
            *seen.lock().unwrap() = Some((role.to_owned(), simulated));
            Ok("; proven".to_owned())
        };
        let identity = wired.prove(&iam, None, async || Ok(ISSUER.to_owned()), assume).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), Some((ROLE.to_owned(), true)), "assumed once the simulation allowed all");
        assert!(identity.summary.ends_with("; proven"), "{}", identity.summary);

        let refused =
            async |_: &str, _: bool| Err(Failure::new(Reason::PermissionsDenied, "denied by a bucket policy"));
        let failure = wired.prove(&iam, None, async || Ok(ISSUER.to_owned()), refused).await.unwrap_err();
        assert_eq!(failure.reason, Reason::PermissionsDenied, "the proof's failure is the answer");
    }

    fn proof() -> Proof<'static> {
        Proof { namespace: "team", account: "runner", role_arn: ROLE, simulated: true }
    }

    fn error(code: &str, status: u16) -> CallError {
        CallError { http_status: Some(status), code: Some(code.to_owned()), ..CallError::default() }
    }

    #[test]
    fn sts_refusals_say_what_to_fix() {
        let failure = proof().assume_failure(&error("AccessDenied", 403));
        assert_eq!(failure.reason, Reason::TrustPolicyMismatch);
        assert!(failure.message.contains("system:serviceaccount:team:runner"), "{}", failure.message);
        let failure = proof().assume_failure(&error("InvalidIdentityToken", 400));
        assert_eq!(failure.reason, Reason::IdentityTokenRejected);
        assert!(failure.message.contains("OIDC identity provider"), "{}", failure.message);
        let unreachable = CallError { dispatch: Some("connection refused".into()), ..CallError::default() };
        assert_eq!(proof().assume_failure(&unreachable).reason, Reason::StsUnreachable);
        assert!(proof().assume_failure(&error("Throttling", 400)).is_transient());
    }

    #[test]
    fn a_denial_the_simulation_did_not_see_names_the_policies_it_cannot_read() {
        let path = crate::s3path::S3Path::parse("s3://ml-bucket/p").unwrap();
        let connection =
            S3Connection { region: "us-east-1".into(), endpoint: None, path_style: false, ca_pem: None, keys: None };
        let probe = Probe { connection, path: &path, write: false };
        let failure = proof().probe_failure(&error("AccessDenied", 403), "list s3://ml-bucket/p", &probe, "AWS S3");
        assert_eq!(failure.reason, Reason::PermissionsDenied);
        assert!(
            failure.message.contains("bucket policy") && failure.message.contains("simulation of its policies allows"),
            "{}",
            failure.message
        );
        let failure =
            proof().probe_failure(&error("InvalidAccessKeyId", 403), "list s3://ml-bucket/p", &probe, "MinIO");
        assert_eq!(failure.reason, Reason::RoleCredentialsRejected);
        assert!(failure.message.contains("spec.auth.secretRef"), "{}", failure.message);
        let failure = proof().probe_failure(&error("NoSuchBucket", 404), "list s3://ml-bucket/p", &probe, "AWS S3");
        assert_eq!(failure.reason, Reason::BucketNotFound, "what is not about the credentials is S3's usual answer");
    }

    #[test]
    fn the_session_name_is_one_sts_takes() {
        assert_eq!(session_name("team", "runner"), "ao-proof-team-runner");
        let long = session_name(&"n".repeat(63), "runner");
        assert_eq!(long.len(), 64);
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
