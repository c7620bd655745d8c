//! EKS Pod Identity: the IAM role that an association gives a ServiceAccount's pods, found through
//! the EKS API (associations live there, not on the ServiceAccount), and what the role's trust
//! policy must allow for it.

use std::sync::Arc;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::failure::CallError;
use super::iam;
use super::ratelimit::RateLimiter;
use crate::reason::{Failure, Reason};

/// The service principal EKS Pod Identity assumes roles as.
pub const POD_IDENTITY_PRINCIPAL: &str = "pods.eks.amazonaws.com";

/// A Pod Identity association of one ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Association {
    pub id: String,
    /// The role EKS assumes for the pods.
    pub role_arn: String,
    /// With a cross-account association, the role assumed next with the first one's
    /// credentials: the role the pods end up with.
    pub target_role_arn: Option<String>,
}

impl Association {
    /// The role whose permissions the pods use.
    pub fn effective_role(&self) -> &str {
        self.target_role_arn.as_deref().unwrap_or(&self.role_arn)
    }
}

/// The associations of one EKS cluster.
pub struct PodIdentity {
    client: aws_sdk_eks::Client,
    limiter: Arc<RateLimiter>,
    cluster: String,
}

impl PodIdentity {
    pub fn new(client: aws_sdk_eks::Client, limiter: Arc<RateLimiter>, cluster: &str) -> Self {
        Self { client, limiter, cluster: cluster.to_owned() }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The association of `service_account` in `namespace`, if the cluster has one.
    pub async fn association(&self, namespace: &str, service_account: &str) -> Result<Option<Association>, Failure> {
        let list = self
            .client
            .list_pod_identity_associations()
            .cluster_name(&self.cluster)
            .namespace(namespace)
            .service_account(service_account);
        let listed = self.send("eks:ListPodIdentityAssociations", list.send()).await?;
        let Some(id) = listed.associations().iter().find_map(|a| a.association_id()) else { return Ok(None) };
        let describe = self.client.describe_pod_identity_association().cluster_name(&self.cluster).association_id(id);
        let described = self.send("eks:DescribePodIdentityAssociation", describe.send()).await?;
        let association = described.association();
        Ok(Some(Association {
            id: id.to_owned(),
            role_arn: association.and_then(|a| a.role_arn()).unwrap_or_default().to_owned(),
            target_role_arn: association.and_then(|a| a.target_role_arn()).map(str::to_owned),
        }))
    }

    /// Makes the EKS call `action` once the rate limiter lets it.
    async fn send<T, E>(
        &self,
        action: &str,
        call: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T, Failure>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.limiter.acquire("ambient").await;
        call.await.map_err(|e| self.failure(&CallError::from_sdk(&e), action))
    }

    fn failure(&self, error: &CallError, action: &str) -> Failure {
        let cluster = &self.cluster;
        match error.code.as_deref() {
            Some("AccessDeniedException" | "AccessDenied") => Failure::new(
                Reason::EksAccessDenied,
                format!(
                    "the operator may not call {action} on EKS cluster {cluster}; grant its own role eks:ListPodIdentityAssociations and eks:DescribePodIdentityAssociation so it can check Pod Identity"
                ),
            ),
            Some("ResourceNotFoundException") => Failure::new(
                Reason::EksClusterNotFound,
                format!(
                    "EKS has no cluster {cluster} in the operator's region; give the operator this cluster's name (--eks-cluster-name)"
                ),
            ),
            _ if error.dispatch.is_some() => Failure::new(
                Reason::IamUnreachable,
                format!("could not reach EKS: {}", error.dispatch.clone().unwrap_or_default()),
            ),
            _ => Failure::new(
                Reason::IamError,
                format!("EKS {action} failed: {}", error.code.clone().unwrap_or_else(|| "no response".into())),
            ),
        }
    }
}

/// Checks a role's trust policy (JSON) for Pod Identity: an Allow statement for the service
/// principal `pods.eks.amazonaws.com` with both `sts:AssumeRole` and `sts:TagSession`. The error
/// says what is missing.
pub fn check_trust_policy(document: &str) -> Result<(), String> {
    let principal = POD_IDENTITY_PRINCIPAL;
    iam::check_trust(
        document,
        |statement| iam::as_strings(statement.get("Principal").and_then(|p| p.get("Service"))).contains(&principal),
        |statement| iam::allows_action(statement, "sts:AssumeRole") && iam::allows_action(statement, "sts:TagSession"),
        [
            format!(
                "the role's trust policy has no Allow statement for the service principal {principal} (sts:AssumeRole and sts:TagSession)"
            ),
            format!(
                "the role's trust policy lets {principal} in without both sts:AssumeRole and sts:TagSession; allow both"
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use aws_sdk_eks::operation::describe_pod_identity_association::DescribePodIdentityAssociationOutput;
    use aws_sdk_eks::operation::list_pod_identity_associations::ListPodIdentityAssociationsOutput;
    use aws_sdk_eks::types::{PodIdentityAssociation, PodIdentityAssociationSummary};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;

    fn pod_identity(client: aws_sdk_eks::Client) -> PodIdentity {
        PodIdentity::new(client, Arc::new(RateLimiter::new(100.0, 100)), "ml-cluster")
    }

    #[tokio::test]
    async fn finds_the_association_of_exactly_that_service_account() {
        let listed = mock!(aws_sdk_eks::Client::list_pod_identity_associations)
            .match_requests(|r| {
                r.cluster_name() == Some("ml-cluster")
                    && r.namespace() == Some("team")
                    && r.service_account() == Some("runner")
            })
            .then_output(|| {
                let summary = PodIdentityAssociationSummary::builder().association_id("a-1").build();
                ListPodIdentityAssociationsOutput::builder().associations(summary).build()
            });
        let none = mock!(aws_sdk_eks::Client::list_pod_identity_associations)
            .then_output(|| ListPodIdentityAssociationsOutput::builder().build());
        let described = mock!(aws_sdk_eks::Client::describe_pod_identity_association)
            .match_requests(|r| r.association_id() == Some("a-1"))
            .then_output(|| {
                let association = PodIdentityAssociation::builder()
                    .role_arn("arn:aws:iam::111122223333:role/ml")
                    .target_role_arn("arn:aws:iam::444455556666:role/ml-data")
                    .build();
                DescribePodIdentityAssociationOutput::builder().association(association).build()
            });
        let client = mock_client!(aws_sdk_eks, RuleMode::MatchAny, [&listed, &none, &described]);
        let eks = pod_identity(client);
        let found = eks.association("team", "runner").await.unwrap().expect("an association");
        assert_eq!(found.role_arn, "arn:aws:iam::111122223333:role/ml");
        assert_eq!(found.effective_role(), "arn:aws:iam::444455556666:role/ml-data", "the target role is the pods'");
        assert_eq!(eks.association("team", "someone-else").await.unwrap(), None);
        assert_eq!((listed.num_calls(), none.num_calls(), described.num_calls()), (1, 1, 1));
    }

    #[tokio::test]
    async fn a_refused_lookup_names_the_permissions_the_operator_needs() {
        use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
        use aws_smithy_runtime_api::http::StatusCode;
        use aws_smithy_types::body::SdkBody;
        let denied = mock!(aws_sdk_eks::Client::list_pod_identity_associations).then_http_response(|| {
            let body = r#"{"message":"not authorized"}"#;
            let mut response = HttpResponse::new(StatusCode::try_from(403).unwrap(), SdkBody::from(body));
            response.headers_mut().insert("x-amzn-errortype", "AccessDeniedException");
            response
        });
        let client = mock_client!(aws_sdk_eks, [&denied]);
        let failure = pod_identity(client).association("team", "runner").await.unwrap_err();
        assert_eq!(failure.reason, Reason::EksAccessDenied);
        assert!(failure.message.contains("eks:ListPodIdentityAssociations"), "{}", failure.message);
    }

    #[test]
    fn the_trust_policy_must_let_pod_identity_assume_and_tag() {
        let policy = |actions: serde_json::Value, service: &str| {
            serde_json::json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"Service": service}, "Action": actions}
            ]})
            .to_string()
        };
        assert!(
            check_trust_policy(&policy(
                serde_json::json!(["sts:AssumeRole", "sts:TagSession"]),
                POD_IDENTITY_PRINCIPAL
            ))
            .is_ok()
        );
        let untagged = check_trust_policy(&policy(serde_json::json!("sts:AssumeRole"), POD_IDENTITY_PRINCIPAL));
        assert!(untagged.unwrap_err().contains("sts:TagSession"));
        let elsewhere =
            check_trust_policy(&policy(serde_json::json!(["sts:AssumeRole", "sts:TagSession"]), "ec2.amazonaws.com"));
        assert!(elsewhere.unwrap_err().contains("no Allow statement for the service principal pods.eks.amazonaws.com"));
    }
}
