//! IRSA checks: the role exists, its trust policy lets the cluster's OIDC issuer federate the
//! ServiceAccount, and its policies allow the S3 actions the pods need.

use std::sync::Arc;

use serde_json::Value;

use super::failure::CallError;
use super::ratelimit::RateLimiter;
use crate::reason::{Failure, Reason};
use crate::resolve::ResolvedStore;

/// The annotation IRSA's pod identity webhook reads.
pub const ROLE_ARN_ANNOTATION: &str = "eks.amazonaws.com/role-arn";

/// An IAM action the pods need, on the resource it applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub action: &'static str,
    pub resource: String,
}

/// Every action the pods need on the store: listing the bucket and reading,
/// writing and deleting under the prefix always; on a versioned bucket, the version actions that
/// ZenML's deletes and listings call; with an ACL on writes, setting it; with an SSE-KMS key, the
/// key actions that reading and writing encrypted objects need.
pub fn required_permissions(store: &ResolvedStore) -> Vec<Permission> {
    let path = &store.path;
    let bucket = format!("arn:aws:s3:::{}", path.bucket);
    let objects = format!("arn:aws:s3:::{}/{}*", path.bucket, path.key_prefix());
    let on = |action: &'static str, resource: &str| Permission { action, resource: resource.to_owned() };
    let mut needed = vec![
        on("s3:ListBucket", &bucket),
        on("s3:GetObject", &objects),
        on("s3:PutObject", &objects),
        on("s3:DeleteObject", &objects),
    ];
    if store.bucket.as_ref().is_some_and(|b| b.versioning) {
        needed.push(on("s3:GetBucketVersioning", &bucket));
        needed.push(on("s3:ListBucketVersions", &bucket));
        needed.push(on("s3:DeleteObjectVersion", &objects));
    }
    let defaults = &store.object_defaults;
    if defaults.acl.is_some() {
        needed.push(on("s3:PutObjectAcl", &objects));
    }
    let bucket_key =
        store.bucket.as_ref().and_then(|b| b.default_encryption.as_ref()).and_then(|e| e.kms_key_id.as_deref());
    let mut keys: Vec<&str> = defaults.sse_kms_key_id.as_deref().into_iter().chain(bucket_key).collect();
    keys.dedup();
    for key in keys {
        // A key id or alias is not a resource IAM can name on its own: any key, then.
        let resource = if key.starts_with("arn:") { key } else { "*" };
        needed.push(on("kms:GenerateDataKey", resource));
        needed.push(on("kms:Decrypt", resource));
    }
    needed
}

/// The role name of a role ARN (`arn:aws:iam::123456789012:role/path/name` → `name`).
pub fn role_name(role_arn: &str) -> Option<&str> {
    let resource = role_arn.split(':').nth(5)?;
    let path = resource.strip_prefix("role/")?;
    path.rsplit('/').next().filter(|name| !name.is_empty())
}

/// `https://oidc.eks.region.amazonaws.com/id/X` → `oidc.eks.region.amazonaws.com/id/X`.
pub fn issuer_host_path(issuer: &str) -> &str {
    let rest = issuer.strip_prefix("https://").unwrap_or(issuer);
    rest.trim_end_matches('/')
}

/// A policy field that holds one string or a list of them.
pub(crate) fn as_strings(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The Allow statements of a role's trust policy (JSON), one statement or a list of them.
pub(crate) fn allow_statements(document: &str) -> Result<Vec<Value>, String> {
    let policy: Value =
        serde_json::from_str(document).map_err(|e| format!("the role's trust policy is not valid JSON ({e})"))?;
    let statements = match policy.get("Statement") {
        Some(Value::Array(items)) => items.clone(),
        Some(single @ Value::Object(_)) => vec![single.clone()],
        _ => Vec::new(),
    };
    Ok(statements.into_iter().filter(|s| s.get("Effect").and_then(Value::as_str) == Some("Allow")).collect())
}

/// Whether a statement's actions include `wanted` (itself, `sts:*` or `*`).
pub(crate) fn allows_action(statement: &Value, wanted: &str) -> bool {
    as_strings(statement.get("Action")).iter().any(|a| *a == wanted || *a == "sts:*" || *a == "*")
}

/// IAM's StringLike: `*` matches any run of characters, `?` one character.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Checks a role's trust policy (JSON): Ok when one Allow statement both trusts the principal
/// (`trusts`) and grants what it needs (`grants`). Otherwise the error is `[untrusted, ungranted]`'s
/// first when no Allow statement trusts the principal, its second when those that do fall short.
pub(crate) fn check_trust(
    document: &str,
    trusts: impl Fn(&Value) -> bool,
    grants: impl Fn(&Value) -> bool,
    [untrusted, ungranted]: [String; 2],
) -> Result<(), String> {
    let trusting: Vec<Value> = allow_statements(document)?.into_iter().filter(|s| trusts(s)).collect();
    match (trusting.is_empty(), trusting.iter().any(grants)) {
        (_, true) => Ok(()),
        (true, false) => Err(untrusted),
        (false, false) => Err(ungranted),
    }
}

/// Checks a role's trust policy (JSON) for IRSA: web identity from the cluster's OIDC issuer, for
/// the ServiceAccount's subject when the statement names subjects. The error says what it lacks.
pub fn check_trust_policy(document: &str, issuer: &str, namespace: &str, service_account: &str) -> Result<(), String> {
    let provider = issuer_host_path(issuer);
    let subject = format!("system:serviceaccount:{namespace}:{service_account}");
    let sub_key = format!("{provider}:sub");
    let federates_issuer = |statement: &Value| {
        let federated = as_strings(statement.get("Principal").and_then(|p| p.get("Federated")));
        allows_action(statement, "sts:AssumeRoleWithWebIdentity")
            && federated.iter().any(|f| f.ends_with(&format!(":oidc-provider/{provider}")))
    };
    let admits_subject = |statement: &Value| {
        let condition = statement.get("Condition");
        let equals = as_strings(condition.and_then(|c| c.get("StringEquals")).and_then(|c| c.get(&sub_key)));
        let like = as_strings(condition.and_then(|c| c.get("StringLike")).and_then(|c| c.get(&sub_key)));
        (equals.is_empty() && like.is_empty())
            || equals.contains(&subject.as_str())
            || like.iter().any(|pattern| glob_matches(pattern, &subject))
    };
    check_trust(
        document,
        federates_issuer,
        admits_subject,
        [
            format!(
                "the role's trust policy has no Allow statement for sts:AssumeRoleWithWebIdentity from the federated principal oidc-provider/{provider} (this cluster's OIDC issuer)"
            ),
            format!(
                "the role's trust policy does not allow the subject {subject}; add it to the {provider}:sub condition"
            ),
        ],
    )
}

pub struct Iam {
    client: aws_sdk_iam::Client,
    limiter: Arc<RateLimiter>,
}

/// Whether the IAM API answered that it does not implement an operation.
/// moto, for one, answers an action it lacks with a bare error page and no error code.
fn unsupported(error: &CallError) -> bool {
    matches!(error.code.as_deref(), Some("NotImplemented" | "InvalidAction"))
        || matches!(error.http_status, Some(501))
        || (error.code.is_none() && error.dispatch.is_none() && error.http_status.is_some())
}

impl Iam {
    pub fn new(client: aws_sdk_iam::Client, limiter: Arc<RateLimiter>) -> Self {
        Self { client, limiter }
    }

    /// The role's trust policy document, decoded.
    pub async fn trust_policy(&self, role_arn: &str) -> Result<String, Failure> {
        let name = role_name(role_arn).ok_or_else(|| {
            Failure::new(
                Reason::InvalidRoleArn,
                format!("{role_arn} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
            )
        })?;
        self.limiter.acquire("ambient").await;
        let result = self.client.get_role().role_name(name).send().await;
        let output = result.map_err(|err| {
            let error = CallError::from_sdk(&err);
            match error.code.as_deref() {
                Some("NoSuchEntity") => Failure::new(Reason::IamRoleNotFound, format!("IAM role {role_arn} does not exist; create it or fix the ServiceAccount's {ROLE_ARN_ANNOTATION} annotation")),
                Some("AccessDenied") => Failure::new(Reason::IamAccessDenied, "the operator may not call iam:GetRole; grant its own role iam:GetRole and iam:SimulatePrincipalPolicy so it can check IRSA roles"),
                _ if error.dispatch.is_some() => Failure::new(Reason::IamUnreachable, format!("could not reach IAM: {}", error.dispatch.unwrap_or_default())),
                _ => Failure::new(Reason::IamError, format!("IAM GetRole failed: {}", error.code.unwrap_or_else(|| "no response".into()))),
            }
        })?;
        let document = output.role().and_then(|r| r.assume_role_policy_document()).unwrap_or_default();
        Ok(urlencoding::decode(document).map(|d| d.into_owned()).unwrap_or_else(|_| document.to_owned()))
    }

    /// The `permissions` the role's policies do not allow, as "action on resource". `Ok(None)`
    /// when the IAM API does not implement the simulation.
    pub async fn denied(&self, role_arn: &str, permissions: &[Permission]) -> Result<Option<Vec<String>>, Failure> {
        let mut denied = Vec::new();
        for Permission { action, resource } in permissions {
            self.limiter.acquire("ambient").await;
            let output = self
                .client
                .simulate_principal_policy()
                .policy_source_arn(role_arn)
                .action_names(*action)
                .resource_arns(resource)
                .send()
                .await;
            let output = match output {
                Ok(output) => output,
                Err(err) => {
                    let error = CallError::from_sdk(&err);
                    if unsupported(&error) {
                        return Ok(None);
                    }
                    return Err(Failure::new(
                        Reason::IamError,
                        format!(
                            "IAM SimulatePrincipalPolicy failed: {}",
                            error.code.unwrap_or_else(|| "no response".into())
                        ),
                    ));
                }
            };
            let allowed = output.evaluation_results().iter().all(|r| r.eval_decision().as_str() == "allowed");
            if !allowed || output.evaluation_results().is_empty() {
                denied.push(format!("{action} on {resource}"));
            }
        }
        Ok(Some(denied))
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_iam::operation::simulate_principal_policy::SimulatePrincipalPolicyOutput;
    use aws_sdk_iam::types::{EvaluationResult, PolicyEvaluationDecisionType};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;

    fn decision(action: &str, decision: PolicyEvaluationDecisionType) -> SimulatePrincipalPolicyOutput {
        let result = EvaluationResult::builder().eval_action_name(action).eval_decision(decision).build().unwrap();
        SimulatePrincipalPolicyOutput::builder().evaluation_results(result).build()
    }

    #[tokio::test]
    async fn names_the_denied_actions_with_their_resources() {
        let put_denied = mock!(aws_sdk_iam::Client::simulate_principal_policy)
            .match_requests(|r| r.action_names() == ["s3:PutObject"])
            .then_output(|| decision("s3:PutObject", PolicyEvaluationDecisionType::ImplicitDeny));
        let others_allowed = mock!(aws_sdk_iam::Client::simulate_principal_policy)
            .then_output(|| decision("s3:GetObject", PolicyEvaluationDecisionType::Allowed));
        let client = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&put_denied, &others_allowed]);
        let iam = Iam::new(client, Arc::new(RateLimiter::new(100.0, 100)));
        let store = crate::resolve::test_store(
            serde_json::json!({"path": "s3://ml-bucket/team", "auth": {"implicit": {}}}),
            "us-east-1",
        );
        let permissions = required_permissions(&store);
        let denied = iam.denied("arn:aws:iam::123456789012:role/ml", &permissions).await.unwrap();
        assert_eq!(denied, Some(vec!["s3:PutObject on arn:aws:s3:::ml-bucket/team/*".to_owned()]));
        assert_eq!(put_denied.num_calls() + others_allowed.num_calls(), 4, "one simulation per required action");
    }

    #[test]
    fn the_permissions_follow_the_spec() {
        let store = crate::resolve::test_store(
            serde_json::json!({
            "path": "s3://ml-bucket/team",
            "auth": {"implicit": {}},
            "bucket": {"versioning": true, "defaultEncryption": {"algorithm": "aws:kms", "kmsKeyId": "arn:aws:kms:eu-west-1:123456789012:key/k1"}},
            "objectDefaults": {"acl": "bucket-owner-full-control", "serverSideEncryption": "aws:kms", "sseKmsKeyId": "alias/ml"},
            }),
            "us-east-1",
        );
        let said: Vec<String> =
            required_permissions(&store).iter().map(|p| format!("{} {}", p.action, p.resource)).collect();
        assert_eq!(
            said,
            [
                "s3:ListBucket arn:aws:s3:::ml-bucket",
                "s3:GetObject arn:aws:s3:::ml-bucket/team/*",
                "s3:PutObject arn:aws:s3:::ml-bucket/team/*",
                "s3:DeleteObject arn:aws:s3:::ml-bucket/team/*",
                "s3:GetBucketVersioning arn:aws:s3:::ml-bucket",
                "s3:ListBucketVersions arn:aws:s3:::ml-bucket",
                "s3:DeleteObjectVersion arn:aws:s3:::ml-bucket/team/*",
                "s3:PutObjectAcl arn:aws:s3:::ml-bucket/team/*",
                "kms:GenerateDataKey *",
                "kms:Decrypt *",
                "kms:GenerateDataKey arn:aws:kms:eu-west-1:123456789012:key/k1",
                "kms:Decrypt arn:aws:kms:eu-west-1:123456789012:key/k1",
            ]
        );
    }

    const ISSUER: &str = "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC";

    fn policy(condition: &str) -> String {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"Federated":"arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABC"}},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{condition}}}]}}"#
        )
    }

    #[test]
    fn accepts_exact_and_wildcard_subjects() {
        let exact = policy(
            r#"{"StringEquals":{"oidc.eks.eu-west-1.amazonaws.com/id/ABC:sub":"system:serviceaccount:ml:runner"}}"#,
        );
        assert_eq!(check_trust_policy(&exact, ISSUER, "ml", "runner"), Ok(()));
        let like =
            policy(r#"{"StringLike":{"oidc.eks.eu-west-1.amazonaws.com/id/ABC:sub":["system:serviceaccount:ml:*"]}}"#);
        assert_eq!(check_trust_policy(&like, ISSUER, "ml", "anything"), Ok(()));
    }

    #[test]
    fn names_the_missing_subject_or_issuer() {
        let exact = policy(
            r#"{"StringEquals":{"oidc.eks.eu-west-1.amazonaws.com/id/ABC:sub":"system:serviceaccount:ml:runner"}}"#,
        );
        let err = check_trust_policy(&exact, ISSUER, "ml", "other").unwrap_err();
        assert!(err.contains("system:serviceaccount:ml:other"), "{err}");
        let err = check_trust_policy(&exact, "https://oidc.other/id/X", "ml", "runner").unwrap_err();
        assert!(err.contains("oidc-provider/oidc.other/id/X"), "{err}");
    }

    #[test]
    fn parses_role_names_and_globs() {
        assert_eq!(role_name("arn:aws:iam::123456789012:role/ml/runner"), Some("runner"));
        assert_eq!(role_name("arn:aws:iam::123456789012:user/x"), None);
        assert!(glob_matches("a*c?", "abbbcd"));
        assert!(!glob_matches("a*c", "abd"));
    }
}
