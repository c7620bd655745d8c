//! Scoped credentials (`spec.credentials.mode: Scoped`): session credentials from STS AssumeRole,
//! limited by a session policy to the Stack's prefix and access, kept in a Secret the Stack owns,
//! and renewed at two thirds of their lifetime (jittered), never while nothing is due. When they
//! are due is in the status and the Secret's annotations, so a restarted operator renews neither
//! early nor late.
//!
//! Pods never see the store's own keys: they mount the Secret and read the credentials through
//! `credential_process` (a config file `AWS_CONFIG_FILE` names), which boto3, s3fs, the AWS CLI
//! and the AWS SDKs run again when the credentials they hold near their expiry. The kubelet
//! refreshes the mounted Secret, so a renewal reaches a running pod without a restart.
//!
//! The scope, the policy, the Secret and the schedule are pure; [`ensure`] does the I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

use super::resolved::{ResolvedStack, ScopeRequest, pattern_character};
use crate::api::Stack;
use crate::api::stack::{Access, CredentialsStatus, StackStatus};
use crate::aws::clients::{S3Connection, StaticKeys};
use crate::aws::failure::{CallError, source_chain};
use crate::controller::Context;
use crate::controller::Error;
use crate::controller::apply;
use crate::owner::{Kind, Owner, Published};
use crate::reason::{Failure, Reason};
use crate::resolve::{ResolvedAuth, ResolvedStore};
use crate::s3path::S3Path;

/// Where pods mount the Secret with the session credentials.
pub const MOUNT_PATH: &str = "/etc/artifact-store-credentials";
/// The Secret's key with the `credential_process` output (AWS's JSON, version 1).
pub const PROCESS_KEY: &str = "credentials.json";
/// The Secret's key with the AWS config file that runs the process.
pub const CONFIG_KEY: &str = "config";
/// The annotations that say when the credentials expire and are renewed (RFC 3339), and for which
/// scope ([`Scope::digest`]).
pub const EXPIRES_AT_ANNOTATION: &str = "artifacts.dev/expires-at";
pub const RENEW_AT_ANNOTATION: &str = "artifacts.dev/renew-at";
pub const SCOPE_ANNOTATION: &str = "artifacts.dev/credentials-scope";
/// The role a session is assumed for on an S3-compatible server whose STS assumes the caller's
/// own user (MinIO takes and ignores it; the SDK requires one).
const OWN_USER_ROLE: &str = "arn:aws:iam::000000000000:role/artifact-operator-own-user";

/// The Secret with the Stack's session credentials: `<stack>-scoped-credentials`.
pub const SECRET: Published = Published { kind: Kind::Secret, suffix: "-scoped-credentials" };

/// What the credentials are for. Its digest changes when they must be issued anew.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    /// The path the credentials reach: the store's path, or the prefix below it.
    pub path: S3Path,
    pub access: Access,
    pub duration: Duration,
    /// The role to assume; None against a server that assumes the store's own user (MinIO).
    pub role_arn: Option<String>,
}

impl Scope {
    /// The scope `request` asks for on `store`. The request's prefix is literal; the store's path
    /// is checked here, as anything that reaches a policy must be.
    pub fn of(request: &ScopeRequest, store: &ResolvedStore) -> Result<Self, Failure> {
        let unsupported = |message: String| Failure::new(Reason::ScopedCredentialsUnsupported, message);
        if store.auth.keys().is_none() {
            return Err(unsupported(format!(
                "ArtifactStore {} uses implicit auth: scoped credentials are assumed with a store's keys (spec.auth.secretRef); give the pods an IAM role instead (IRSA or Pod Identity), or set spec.credentials.mode to Shared",
                store.name
            )));
        }
        if store.endpoint.is_none() && request.role_arn.is_none() {
            return Err(unsupported(
                "on AWS, scoped credentials come from a role the store's keys may assume: set spec.credentials.roleArn"
                    .to_owned(),
            ));
        }
        let mut path = store.path.clone();
        if let Some(below) = &request.prefix {
            path.prefix = if path.prefix.is_empty() { below.to_owned() } else { format!("{}/{below}", path.prefix) };
        }
        if let Some(pattern) = pattern_character(&path.prefix) {
            return Err(unsupported(format!(
                "the path of ArtifactStore {} ({}) contains {pattern:?}, which IAM reads as a pattern or a variable in a policy: scoped credentials need a literal key prefix; use a store whose path has none of * ? $, or set spec.credentials.mode to Shared",
                store.name, store.path
            )));
        }
        Ok(Self { path, access: request.access, duration: request.duration, role_arn: request.role_arn.clone() })
    }

    /// Identifies the scope, to tell when the credentials no longer match it.
    pub fn digest(&self) -> String {
        let parts = BTreeMap::from([
            ("path".to_owned(), self.path.to_string()),
            ("access".to_owned(), format!("{:?}", self.access)),
            ("duration".to_owned(), self.duration.as_secs().to_string()),
            ("role".to_owned(), self.role_arn.clone().unwrap_or_default()),
        ]);
        crate::render::content_hash(&parts)[..16].to_owned()
    }
}

/// The ARN partition of `region`.
fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// The session policy: listing only under the prefix, and reading (and with ReadWrite writing
/// and deleting) only the objects under it. A bucket or prefix IAM would read as a pattern is
/// refused here too ([`Scope::of`] refuses it first, with the field to fix), so that nothing but
/// a literal prefix ever reaches STS.
pub fn session_policy(scope: &Scope, region: &str) -> Result<Value, Failure> {
    let literal = [scope.path.bucket.as_str(), scope.path.prefix.as_str()];
    if let Some(pattern) = literal.into_iter().find_map(pattern_character) {
        return Err(Failure::new(
            Reason::ScopedCredentialsUnsupported,
            format!(
                "the scoped path {} contains {pattern:?}, which a session policy would read as a pattern",
                scope.path
            ),
        ));
    }
    let arn = format!("arn:{}:s3:::{}", partition(region), scope.path.bucket);
    let prefix = &scope.path.prefix;
    let mut list = json!({"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [arn]});
    if !prefix.is_empty() {
        list["Condition"] = json!({"StringLike": {"s3:prefix": [prefix, format!("{prefix}/*")]}});
    }
    let objects = format!("{arn}/{}*", scope.path.key_prefix());
    let actions = match scope.access {
        Access::ReadOnly => json!(["s3:GetObject"]),
        Access::ReadWrite => json!([
            "s3:GetObject",
            "s3:PutObject",
            "s3:DeleteObject",
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts"
        ]),
    };
    Ok(json!({
        "Version": "2012-10-17",
        "Statement": [
            list,
            {"Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": [arn]},
            {"Effect": "Allow", "Action": actions, "Resource": [objects]},
        ],
    }))
}

/// When credentials issued at `issued` for `lifetime` are renewed: at two thirds of the lifetime,
/// moved by `jitter` (from -1 to 1) times a thirtieth of it, so Stacks issued together do not
/// renew together.
pub fn renew_at(issued: Timestamp, lifetime: Duration, jitter: f64) -> Timestamp {
    let seconds = lifetime.as_secs_f64() * (2.0 / 3.0 + jitter.clamp(-1.0, 1.0) / 30.0);
    let at = issued.checked_add(Duration::from_secs_f64(seconds.clamp(0.0, 1e9))).unwrap_or(issued);
    // Whole seconds, as the annotations and the status show it.
    Timestamp::from_second(at.as_second()).unwrap_or(at)
}

/// Session credentials as STS issued them. Debug never prints them.
pub struct Issued {
    pub keys: StaticKeys,
    pub expires_at: Timestamp,
}

/// The AWS config file that runs `cat` on the mounted credentials (every image with a shell has
/// it); boto3 and the SDKs run it again when the credentials they hold near their expiry.
pub fn config_file() -> String {
    format!("[default]\ncredential_process = cat {MOUNT_PATH}/{PROCESS_KEY}\n")
}

/// The Secret with `issued`. Pure.
pub fn secret(owner: &Owner, issued: &Issued, held: &Held) -> Secret {
    let process = json!({
        "Version": 1,
        "AccessKeyId": issued.keys.access_key_id,
        "SecretAccessKey": issued.keys.secret_access_key,
        "SessionToken": issued.keys.session_token,
        "Expiration": issued.expires_at.to_string(),
    });
    let mut meta = owner.owned_meta("stack", SECRET.name(&owner.name));
    meta.annotations = Some(BTreeMap::from([
        (EXPIRES_AT_ANNOTATION.to_owned(), held.expires_at.to_string()),
        (RENEW_AT_ANNOTATION.to_owned(), held.renew_at.to_string()),
        (SCOPE_ANNOTATION.to_owned(), held.scope.clone()),
    ]));
    let mut data = BTreeMap::from([
        (PROCESS_KEY.to_owned(), process.to_string()),
        (CONFIG_KEY.to_owned(), config_file()),
        // For consumers that take keys from a Secret by name (a ZenML secret, the env of a pod
        // that lives shorter than the credentials).
        ("AWS_ACCESS_KEY_ID".to_owned(), issued.keys.access_key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), issued.keys.secret_access_key.clone()),
    ]);
    if let Some(token) = &issued.keys.session_token {
        data.insert("AWS_SESSION_TOKEN".to_owned(), token.clone());
    }
    apply::secret_with_data(Secret { metadata: meta, string_data: Some(data), ..Secret::default() })
}

/// The credentials a Stack's Secret holds: their key id, when they expire and are renewed, and
/// for which scope.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub access_key_id: String,
    pub expires_at: Timestamp,
    pub renew_at: Timestamp,
    pub scope: String,
}

impl Held {
    /// What `secret` says it holds, from its annotations and key id. Pure.
    pub fn of(secret: &Secret) -> Option<Self> {
        let annotations = secret.metadata.annotations.as_ref()?;
        let time = |key: &str| annotations.get(key)?.parse::<Timestamp>().ok();
        let access_key_id = secret.data.as_ref()?.get("AWS_ACCESS_KEY_ID")?;
        Some(Self {
            access_key_id: String::from_utf8(access_key_id.0.clone()).ok()?,
            expires_at: time(EXPIRES_AT_ANNOTATION)?,
            renew_at: time(RENEW_AT_ANNOTATION)?,
            scope: annotations.get(SCOPE_ANNOTATION)?.clone(),
        })
    }

    /// The status record of these credentials, issued for `scope`.
    fn record(&self, scope: &Scope, secret: &str) -> CredentialsStatus {
        CredentialsStatus {
            secret_name: secret.to_owned(),
            path: scope.path.to_string(),
            access: scope.access,
            access_key_id: self.access_key_id.clone(),
            expires_at: self.expires_at.to_string(),
            renew_at: self.renew_at.to_string(),
            scope: self.scope.clone(),
        }
    }
}

/// What the held credentials call for now.
#[derive(Debug, PartialEq)]
pub enum Due {
    /// Valid, for this scope, and not yet due: nothing to do.
    Fresh,
    /// Due for renewal; the current ones stay valid until they expire.
    Renew,
    /// None yet, expired, or for another scope: issue now.
    Issue,
}

pub fn due(held: Option<&Held>, digest: &str, now: Timestamp) -> Due {
    match held {
        Some(held) if held.scope == digest && held.expires_at > now => {
            if held.renew_at > now {
                Due::Fresh
            } else {
                Due::Renew
            }
        }
        _ => Due::Issue,
    }
}

/// How long until the Stack's credentials are due for renewal, as its status says (None: it has
/// none). The status may lag behind a renewal: the pass it brings finds nothing due.
pub fn until_renewal(stack: &Stack) -> Option<Duration> {
    until(&stack.status.as_ref()?.credentials.as_ref()?.renew_at)
}

/// How long until `renew_at` (RFC 3339), zero once it is past (None: not a time).
pub fn until(renew_at: &str) -> Option<Duration> {
    let renew = renew_at.parse::<Timestamp>().ok()?;
    Some(Duration::try_from(renew.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO))
}

/// What [`ensure`] came to.
pub enum Outcome {
    /// Valid session credentials: the record for the status, and the store as the Stack's pods
    /// see it (the narrowed path, the Secret). `renewal` says why a due renewal failed.
    Scoped { record: CredentialsStatus, store: Box<ResolvedStore>, renewal: Option<Failure> },
    /// No valid credentials.
    Failed(Failure),
}

/// Issues or renews the Stack's session credentials when due (the Stack asks for them). What is
/// held comes from the Secret, or from what this process issued last when a cache has not shown
/// that write yet, so a renewal is never repeated.
pub async fn ensure(
    ctx: &Context,
    stack: &ResolvedStack,
    request: &ScopeRequest,
    store: &ResolvedStore,
    ca_pem: Option<String>,
    keys: Option<StaticKeys>,
) -> Result<Outcome, Error> {
    let scope = match Scope::of(request, store) {
        Ok(scope) => scope,
        Err(failure) => return Ok(Outcome::Failed(failure)),
    };
    let Some(keys) = keys else {
        return Ok(Outcome::Failed(Failure::new(
            Reason::CredentialsSecretNotFound,
            format!("the keys of ArtifactStore {} are not published yet", store.name),
        )));
    };
    let digest = scope.digest();
    let owner = &stack.owner;
    let name = SECRET.name(&owner.name);
    let uid = &owner.uid;
    let now = Timestamp::now();
    let current = ctx.read::<Secret>(&owner.namespace, &name).await.map_err(Error::Dereference)?;
    let owned = owner.owned_meta("stack", name.clone());
    let ours = current.as_deref().filter(|s| apply::is_ours(&s.metadata, &owned));
    if current.is_some() && ours.is_none() {
        return Ok(Outcome::Failed(owner.name_conflict("Secret", &name)));
    }
    let held = newest(ours.and_then(Held::of), ours.and(ctx.issued::<Held>(uid)).as_deref());
    let narrowed = narrowed(store, &scope, &name);
    let due = due(held.as_ref(), &digest, now);
    if let (Due::Fresh, Some(held)) = (&due, &held) {
        return Ok(Outcome::Scoped { record: held.record(&scope, &name), store: narrowed, renewal: None });
    }
    let issued = match assume(ctx, store, &scope, ca_pem, &keys, owner).await {
        Ok(issued) => issued,
        Err(failure) => {
            return Ok(match (&due, held) {
                (Due::Renew, Some(held)) => {
                    let renewal = Some(renewal_failed(&failure, &held, &name));
                    Outcome::Scoped { record: held.record(&scope, &name), store: narrowed, renewal }
                }
                _ => Outcome::Failed(failure),
            });
        }
    };
    let lifetime = Duration::try_from(issued.expires_at.duration_since(now)).unwrap_or(scope.duration);
    let held = Held {
        access_key_id: issued.keys.access_key_id.clone(),
        expires_at: issued.expires_at,
        renew_at: renew_at(now, lifetime, fastrand::f64() * 2.0 - 1.0),
        scope: digest,
    };
    match apply::publish(ctx, &secret(owner, &issued, &held)).await.map_err(Error::Publish)? {
        apply::Applied::NotOurs => return Ok(Outcome::Failed(owner.name_conflict("Secret", &name))),
        apply::Applied::Written | apply::Applied::Unchanged => {}
    }
    ctx.remember_issued(uid, std::sync::Arc::new(held.clone()));
    Ok(Outcome::Scoped { record: held.record(&scope, &name), store: narrowed, renewal: None })
}

/// What is held: what the Secret holds, or what this process issued last when it is newer (a
/// cache may not show that write yet).
fn newest(in_secret: Option<Held>, remembered: Option<&Held>) -> Option<Held> {
    match (in_secret, remembered) {
        (Some(held), Some(newer)) if newer.renew_at > held.renew_at => Some(newer.clone()),
        (None, Some(newer)) => Some(newer.clone()),
        (held, _) => held,
    }
}

/// A due renewal that failed while `held` is still valid.
fn renewal_failed(failure: &Failure, held: &Held, secret_name: &str) -> Failure {
    Failure::new(
        Reason::CredentialsRenewalFailed,
        format!(
            "renewing the session credentials failed ({}: {}); the current ones in Secret {secret_name} expire at {}; retried with backoff",
            failure.reason, failure.message, held.expires_at
        ),
    )
}

/// Empties the Stack's Secret of scoped credentials once it no longer asks for them (`Shared`):
/// no key stays behind. (The operator may not delete Secrets; the empty one goes with the Stack.)
/// (`status`: the Stack's, as last written.)
pub async fn retire(ctx: &Context, owner: &Owner, status: Option<&StackStatus>) -> Result<(), Error> {
    if status.and_then(|s| s.credentials.as_ref()).is_none() {
        return Ok(());
    }
    let meta = owner.owned_meta("stack", SECRET.name(&owner.name));
    let empty = Secret { metadata: meta, data: Some(BTreeMap::new()), ..Secret::default() };
    // Another's Secret of that name (NotOurs) is never touched.
    apply::publish(ctx, &empty).await.map_err(Error::Publish)?;
    Ok(())
}

/// The store as the Stack's pods see it: the scope's path, and the session credentials' Secret.
fn narrowed(store: &ResolvedStore, scope: &Scope, secret: &str) -> Box<ResolvedStore> {
    let mut narrowed = Box::new(store.clone());
    narrowed.path = scope.path.clone();
    narrowed.auth = ResolvedAuth::session(secret);
    narrowed
}

/// STS AssumeRole with the store's keys, at the store's endpoint (its STS) or AWS's.
async fn assume(
    ctx: &Context,
    store: &ResolvedStore,
    scope: &Scope,
    ca_pem: Option<String>,
    keys: &StaticKeys,
    owner: &Owner,
) -> Result<Issued, Failure> {
    let connection = S3Connection::to_store(store, ca_pem, Some(keys.clone()));
    let sts = ctx.aws.sts_at(&connection).map_err(|e| Failure::new(Reason::InvalidTlsSettings, e.to_string()))?;
    let policy = session_policy(scope, &store.region)?.to_string();
    // At most 64 characters of [\w+=,.@-]: the namespace and name fit, cut if need be.
    let session: String = format!("ao.{}.{}", owner.namespace, owner.name).chars().take(64).collect();
    ctx.aws.iam_limiter.acquire(&connection.account_key()).await;
    let answer = sts
        .assume_role()
        .role_arn(scope.role_arn.as_deref().unwrap_or(OWN_USER_ROLE))
        .role_session_name(session)
        .duration_seconds(i32::try_from(scope.duration.as_secs()).unwrap_or(3600))
        .policy(policy)
        .send()
        .await;
    let output = match answer {
        Ok(output) => output,
        Err(error) => return Err(assume_failure(&CallError::from_sdk(&error), &source_chain(&error), store)),
    };
    let Some(credentials) = output.credentials() else {
        return Err(Failure::new(Reason::StsError, "STS AssumeRole answered without credentials"));
    };
    let expires_at = Timestamp::from_second(credentials.expiration().secs()).unwrap_or_else(|_| Timestamp::now());
    // Credentials that are gone before a pod could use them would be issued again at once, again
    // and again: a failure instead.
    if expires_at.duration_since(Timestamp::now()) < jiff::SignedDuration::from_mins(5) {
        return Err(Failure::new(
            Reason::StsError,
            format!("STS issued credentials that expire at {expires_at}, less than 5 minutes from now"),
        ));
    }
    Ok(Issued {
        keys: StaticKeys {
            access_key_id: credentials.access_key_id().to_owned(),
            secret_access_key: credentials.secret_access_key().to_owned(),
            session_token: Some(credentials.session_token().to_owned()),
        },
        expires_at,
    })
}

/// An AssumeRole failure as a condition's. Pure.
fn assume_failure(error: &CallError, chain: &str, store: &ResolvedStore) -> Failure {
    let at = crate::resolve::endpoint_shown(store.endpoint.as_ref().map(|e| e.url.as_str()), &store.region);
    if let Some(cause) = &error.dispatch {
        return Failure::new(Reason::StsUnreachable, format!("could not reach STS at {at}: {cause}"));
    }
    let code = error.code.clone().unwrap_or_else(|| format!("HTTP {}", error.http_status.unwrap_or_default()));
    let said = error.aws_message.clone().unwrap_or_default();
    match code.as_str() {
        "AccessDenied" | "AccessDeniedException" => Failure::new(
            Reason::AssumeRoleDenied,
            format!("STS at {at} refused AssumeRole with the store's keys: {code}: {said}"),
        ),
        _ if error.http_status.is_some_and(|s| s >= 500) => {
            Failure::new(Reason::StsError, format!("STS at {at} failed AssumeRole: {code}: {said}"))
        }
        _ if error.http_status.is_none() && error.code.is_none() => {
            Failure::new(Reason::StsError, format!("STS AssumeRole at {at} failed: {chain}"))
        }
        _ => Failure::new(Reason::AssumeRoleDenied, format!("STS at {at} refused AssumeRole: {code}: {said}")),
    }
}

/// The keys the Stack's consumers get, read from the Secret that holds them under AWS
/// environment variable names: the one the store publishes, or the Stack's session credentials.
/// None with implicit auth.
pub async fn consumer_keys(ctx: &Context, namespace: &str, store: &ResolvedStore) -> Result<Option<StaticKeys>, Error> {
    let Some(name) = store.auth.consumer_secret() else { return Ok(None) };
    let secret = ctx.read::<Secret>(namespace, name).await.map_err(Error::Dereference)?;
    let data = secret.as_ref().and_then(|s| s.data.as_ref());
    let value = |key: &str| {
        data.and_then(|d| d.get(key)).and_then(|v| String::from_utf8(v.0.clone()).ok()).filter(|v| !v.is_empty())
    };
    match (value("AWS_ACCESS_KEY_ID"), value("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Ok(Some(StaticKeys { access_key_id, secret_access_key, session_token: value("AWS_SESSION_TOKEN") }))
        }
        _ => Err(Error::Invalid(Failure::new(
            Reason::CredentialsSecretNotFound,
            format!("Secret {name}, which holds the keys for the Stack's pods, is not complete yet"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::resolved::{DEFAULT_DURATION, PodCredentials};

    fn store(auth: Value, endpoint: bool) -> ResolvedStore {
        let mut spec = json!({"path": "s3://bucket/team", "auth": auth});
        if endpoint {
            spec["endpoint"] = json!({"url": "http://minio:9000"});
        }
        crate::resolve::test_store(spec, "us-east-1")
    }

    /// The scope of a Stack with `credentials` on `store`, as a pass comes to it.
    fn scope_of(credentials: Value, store: &ResolvedStore) -> Result<Scope, Failure> {
        let stack = crate::controller::fixtures::stack(
            "ml",
            "s-1",
            json!({"artifactStoreRef": {"name": "store"},
            "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "argo"}, "credentials": credentials}),
        );
        let PodCredentials::Scoped(request) = ResolvedStack::of(&stack)?.credentials else { panic!("scoped") };
        Scope::of(&request, store)
    }

    #[test]
    fn the_scope_narrows_the_store_s_path_and_keeps_its_bounds() {
        let keys = json!({"secretRef": {"name": "k"}});
        let scope = scope_of(json!({"mode": "Scoped", "prefix": "a/b"}), &store(keys.clone(), true)).unwrap();
        assert_eq!(scope.path.to_string(), "s3://bucket/team/a/b");
        assert_eq!(scope.duration, DEFAULT_DURATION);
        assert_eq!(scope.access, Access::ReadWrite);
        let fifteen = scope_of(json!({"mode": "Scoped", "duration": "15m"}), &store(keys.clone(), true)).unwrap();
        assert_eq!(
            (fifteen.path.to_string(), fifteen.duration),
            ("s3://bucket/team".to_owned(), Duration::from_secs(900))
        );
        assert_ne!(scope.digest(), fifteen.digest());
        let short = scope_of(json!({"mode": "Scoped", "duration": "5m"}), &store(keys.clone(), true));
        assert_eq!(short.unwrap_err().reason, Reason::ScopedCredentialsUnsupported);
        let climbing = scope_of(json!({"mode": "Scoped", "prefix": "../x"}), &store(keys.clone(), true));
        assert!(climbing.is_err());
        let implicit = scope_of(json!({"mode": "Scoped"}), &store(json!({"implicit": {}}), true));
        assert!(implicit.unwrap_err().message.contains("implicit auth"));
        let aws = scope_of(json!({"mode": "Scoped"}), &store(keys, false));
        assert!(aws.unwrap_err().message.contains("roleArn"));
    }

    #[test]
    fn the_policy_allows_only_the_prefix() {
        let keys = json!({"secretRef": {"name": "k"}});
        let read_write = scope_of(json!({"mode": "Scoped", "prefix": "a"}), &store(keys.clone(), true)).unwrap();
        let policy = session_policy(&read_write, "us-east-1").unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements[0]["Resource"][0], "arn:aws:s3:::bucket");
        assert_eq!(statements[0]["Condition"]["StringLike"]["s3:prefix"], json!(["team/a", "team/a/*"]));
        assert_eq!(statements[2]["Resource"][0], "arn:aws:s3:::bucket/team/a/*");
        assert!(statements[2]["Action"].as_array().unwrap().contains(&json!("s3:PutObject")));
        let read_only = scope_of(json!({"mode": "Scoped", "access": "ReadOnly"}), &store(keys, true)).unwrap();
        let policy = session_policy(&read_only, "cn-north-1").unwrap();
        assert_eq!(policy["Statement"][2]["Action"], json!(["s3:GetObject"]));
        assert_eq!(policy["Statement"][2]["Resource"][0], "arn:aws-cn:s3:::bucket/team/*");
    }

    #[test]
    fn no_pattern_or_variable_reaches_the_session_policy() {
        let keys = json!({"secretRef": {"name": "k"}});
        for prefix in ["t*", "*", "team-?", "${aws:username}", "a/b*c"] {
            let scope = scope_of(json!({"mode": "Scoped", "prefix": prefix}), &store(keys.clone(), true));
            let failure = scope.unwrap_err();
            assert_eq!(failure.reason, Reason::ScopedCredentialsUnsupported, "{prefix}");
            assert!(failure.message.contains("spec.credentials.prefix"), "{}", failure.message);
        }
        // From the store's path, which admission lets carry any key character.
        let mut wild = store(keys.clone(), true);
        wild.path = S3Path::parse("s3://bucket/te*ms").unwrap();
        let failure = scope_of(json!({"mode": "Scoped", "prefix": "a"}), &wild).unwrap_err();
        assert!(failure.message.contains("path of ArtifactStore ml"), "{}", failure.message);
        // And again where the policy is built, whatever built the scope.
        let mut scope = scope_of(json!({"mode": "Scoped", "prefix": "a"}), &store(keys, true)).unwrap();
        scope.path.prefix = "team/*".to_owned();
        assert_eq!(session_policy(&scope, "us-east-1").unwrap_err().reason, Reason::ScopedCredentialsUnsupported);
    }

    #[test]
    fn renewal_comes_at_two_thirds_of_the_lifetime_within_its_jitter() {
        let issued: Timestamp = "2026-11-29T10:00:00Z".parse().unwrap();
        let hour = Duration::from_secs(3600);
        assert_eq!(renew_at(issued, hour, 0.0).to_string(), "2026-11-29T10:40:00Z");
        assert_eq!(renew_at(issued, hour, 1.0).to_string(), "2026-11-29T10:42:00Z");
        assert_eq!(renew_at(issued, hour, -1.0).to_string(), "2026-11-29T10:38:00Z");
        assert_eq!(renew_at(issued, hour, 7.0), renew_at(issued, hour, 1.0), "clamped");
        let forever = Duration::from_secs(u64::MAX / 4);
        assert!(renew_at(issued, forever, 0.0) >= issued, "a lifetime past the calendar does not overflow");
    }

    #[test]
    fn what_is_due_follows_the_held_times_and_scope() {
        let now: Timestamp = "2026-11-29T10:30:00Z".parse().unwrap();
        let held = |renew: &str, expires: &str, scope: &str| Held {
            access_key_id: "ASIA".into(),
            renew_at: renew.parse().unwrap(),
            expires_at: expires.parse().unwrap(),
            scope: scope.into(),
        };
        assert_eq!(due(None, "s", now), Due::Issue);
        assert_eq!(due(Some(&held("2026-11-29T10:40:00Z", "2026-11-29T11:00:00Z", "s")), "s", now), Due::Fresh);
        assert_eq!(due(Some(&held("2026-11-29T10:20:00Z", "2026-11-29T11:00:00Z", "s")), "s", now), Due::Renew);
        assert_eq!(due(Some(&held("2026-11-29T10:20:00Z", "2026-11-29T10:29:00Z", "s")), "s", now), Due::Issue);
        assert_eq!(due(Some(&held("2026-11-29T10:40:00Z", "2026-11-29T11:00:00Z", "old")), "s", now), Due::Issue);
    }

    #[test]
    fn the_secret_holds_the_process_output_and_its_config_and_says_when() {
        let stack: Stack = serde_json::from_value(json!({
            "apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "prod", "namespace": "t", "uid": "u"},
            "spec": {"artifactStoreRef": {"name": "ml"}, "orchestrator": {"type": "Kubernetes", "serviceAccountName": "r"}},
        }))
        .unwrap();
        let expires: Timestamp = "2026-11-29T11:00:00Z".parse().unwrap();
        let issued = Issued {
            keys: StaticKeys {
                access_key_id: "ASIA".into(),
                secret_access_key: "S".into(),
                session_token: Some("T".into()),
            },
            expires_at: expires,
        };
        let held = Held {
            access_key_id: "ASIA".into(),
            expires_at: expires,
            renew_at: "2026-11-29T10:40:00Z".parse().unwrap(),
            scope: "s".into(),
        };
        let secret = secret(&Owner::of(&stack), &issued, &held);
        assert_eq!(Held::of(&secret), Some(held), "the Secret says what it holds");
        assert_eq!(secret.metadata.name.as_deref(), Some("prod-scoped-credentials"));
        let annotations = secret.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[EXPIRES_AT_ANNOTATION], "2026-11-29T11:00:00Z");
        assert_eq!(annotations[RENEW_AT_ANNOTATION], "2026-11-29T10:40:00Z");
        let data = secret.data.as_ref().unwrap();
        let process: Value = serde_json::from_slice(&data[PROCESS_KEY].0).unwrap();
        assert_eq!(process["Version"], 1);
        assert_eq!(process["SessionToken"], "T");
        assert_eq!(process["Expiration"], "2026-11-29T11:00:00Z");
        let config = String::from_utf8(data[CONFIG_KEY].0.clone()).unwrap();
        assert!(config.contains(&format!("credential_process = cat {MOUNT_PATH}/{PROCESS_KEY}")));
        assert!(secret.metadata.owner_references.is_some(), "owned by the Stack");
    }

    #[test]
    fn assume_role_failures_say_what_to_fix() {
        let keys = json!({"secretRef": {"name": "k"}});
        let minio = store(keys, true);
        let denied = CallError { http_status: Some(403), code: Some("AccessDenied".into()), ..CallError::default() };
        assert_eq!(assume_failure(&denied, "", &minio).reason, Reason::AssumeRoleDenied);
        let down = CallError { dispatch: Some("connection refused".into()), ..CallError::default() };
        let failure = assume_failure(&down, "", &minio);
        assert_eq!(failure.reason, Reason::StsUnreachable);
        assert!(failure.message.contains("http://minio:9000"));
        let broken =
            CallError { http_status: Some(503), code: Some("ServiceUnavailable".into()), ..CallError::default() };
        assert!(assume_failure(&broken, "", &minio).is_transient());
    }
}
