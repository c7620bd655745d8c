//! Every reason the operator puts on a condition or an Event, where it appears, whether it resolves
//! without anyone acting, and what to fix. Conditions, Events, the README's table and the Argo CD
//! health scripts (`artifact-operator generate`) all derive from this one table. A [`Failure`] is
//! one of them with a message for humans: what every layer returns when a check fails.

use crate::api::condition::{
    BUCKET_READY, CREDENTIALS_VALID, READY, SCOPED_CREDENTIALS, WORKLOAD_ACCESS_VERIFIED, ZENML_SYNCED,
};
use crate::api::{ArtifactStore, Stack, kind};

/// What a reason tells whoever watches the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meaning {
    /// All is well: a True condition, or a Normal Event.
    Fine,
    /// It resolves without anyone acting: the operator retries (Argo CD: Progressing).
    Transient,
    /// Someone must act, as the fix says (Argo CD: Degraded).
    Action,
}

/// The kinds whose objects carry reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ArtifactStore,
    Stack,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::ArtifactStore, Kind::Stack];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ArtifactStore => kind::<ArtifactStore>(),
            Self::Stack => kind::<Stack>(),
        }
    }
}

/// Where a reason appears: a condition of a kind, or an Event on it. A reconcile that changes
/// conditions also publishes one Event with a condition's reason (Ready's, or the first that
/// changed), so `Event` marks only the reasons no condition carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Condition(Kind, &'static str),
    Event(Kind),
}

const STORE_READY: Place = Place::Condition(Kind::ArtifactStore, READY);
const STORE_BUCKET: Place = Place::Condition(Kind::ArtifactStore, BUCKET_READY);
const STORE_CREDENTIALS: Place = Place::Condition(Kind::ArtifactStore, CREDENTIALS_VALID);
const STORE_ALL: &[Place] = &[STORE_READY, STORE_BUCKET, STORE_CREDENTIALS];
/// What S3 answers the store's checks, and a workload pod's check too (`verification.inPod`).
const STORE_ALL_AND_CHECK: &[Place] = &[STORE_READY, STORE_BUCKET, STORE_CREDENTIALS, STACK_WORKLOAD, STACK_READY];
const STORE_EVENT: Place = Place::Event(Kind::ArtifactStore);
const STACK_READY: Place = Place::Condition(Kind::Stack, READY);
const STACK_EVENT: Place = Place::Event(Kind::Stack);
const STACK_WORKLOAD: Place = Place::Condition(Kind::Stack, WORKLOAD_ACCESS_VERIFIED);
const STACK_ZENML: Place = Place::Condition(Kind::Stack, ZENML_SYNCED);
/// What the ZenML sync meets: the Stack is Ready only once its ZenML stack is as declared.
const STACK_ZENML_AND_READY: &[Place] = &[STACK_ZENML, STACK_READY];
const STACK_SCOPED: Place = Place::Condition(Kind::Stack, SCOPED_CREDENTIALS);
/// What issuing scoped credentials meets: without them the pods cannot use the store.
const STACK_SCOPED_AND_READY: &[Place] = &[STACK_SCOPED, STACK_READY];
/// What STS answers the store's check, and a Stack's scoped credentials.
const STS_ALL: &[Place] = &[STORE_CREDENTIALS, STORE_READY, STACK_READY, STACK_SCOPED];

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident: $meaning:ident, $places:expr, $fix:literal;)*) => {
        /// A condition or Event reason. Its name is the reason string users and tests match on.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])* $name,)*
        }

        impl Reason {
            pub const ALL: &[Reason] = &[$(Reason::$name,)*];

            /// The reason as written to conditions and Events.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)*
                }
            }

            pub fn meaning(self) -> Meaning {
                match self {
                    $(Self::$name => Meaning::$meaning,)*
                }
            }

            /// Where the operator puts it.
            pub fn places(self) -> &'static [Place] {
                match self {
                    $(Self::$name => $places,)*
                }
            }

            /// What to do about it, in one line.
            pub fn fix(self) -> &'static str {
                match self {
                    $(Self::$name => $fix,)*
                }
            }
        }
    };
}

reasons! {
    /// The object is verified and its configuration published.
    Ready: Fine, &[STORE_READY, STACK_READY], "nothing to fix";
    /// The operator created the bucket in this pass.
    BucketCreated: Fine, &[STORE_BUCKET], "nothing to fix";
    /// The bucket exists (adopted, or created earlier).
    BucketExists: Fine, &[STORE_BUCKET], "nothing to fix";
    /// The credentials (or the IRSA wiring) can use the path.
    Verified: Fine, &[STORE_CREDENTIALS, STACK_WORKLOAD], "nothing to fix";
    /// The store went and the operator deleted its empty bucket (deletionPolicy Delete).
    BucketDeleted: Fine, &[STORE_EVENT], "nothing to fix";
    /// The store went and its bucket was kept; the Event says why.
    BucketRetained: Fine, &[STORE_EVENT], "nothing to fix: the bucket is kept on purpose";

    /// spec.path does not parse (an object created before admission checked it).
    InvalidPath: Action, &[STORE_READY, STORE_CREDENTIALS, STACK_WORKLOAD, STACK_READY], "set spec.path to s3://bucket or s3://bucket/prefix";
    /// The Secret of spec.auth.secretRef is missing.
    SecretNotFound: Action, &[STORE_READY, STORE_CREDENTIALS], "create the Secret named in spec.auth.secretRef, in the store's namespace";
    /// The Secret lacks a key it should hold, or holds it empty.
    SecretKeyMissing: Action, &[STORE_READY, STORE_CREDENTIALS], "add the named key to the Secret, or name the key that holds it in spec.auth.secretRef";
    /// A key's value holds a character an HTTP header cannot carry.
    SecretValueInvalid: Action, &[STORE_READY, STORE_CREDENTIALS], "put the bare value, without line breaks or spaces, in the named key";
    /// The CA bundle's ConfigMap or Secret, or its key, is missing.
    CaBundleNotFound: Action, &[STORE_READY, STORE_CREDENTIALS, STACK_WORKLOAD, STACK_READY], "create the object and key named in spec.endpoint.tls.caBundle";
    /// The CA bundle holds no usable PEM certificate.
    CaBundleInvalid: Action, &[STORE_READY, STORE_CREDENTIALS, STACK_WORKLOAD, STACK_READY], "put the PEM certificates of the endpoint's CA in the named key";
    /// The ServiceAccount named by the store (or the Stack's orchestrator) is missing.
    ServiceAccountNotFound: Action, &[STORE_READY, STORE_CREDENTIALS, STACK_READY], "create the ServiceAccount, or fix its name in the spec";
    /// The bucket waits for the credentials, which cannot be read yet.
    CredentialsUnavailable: Action, &[STORE_BUCKET], "fix what CredentialsValid says";
    /// The bucket waits for credentials that STS refused (CredentialsValid and Ready say why).
    CredentialsInvalid: Action, &[STORE_BUCKET], "fix what CredentialsValid says";
    /// The credentials wait for the bucket (BucketReady says why).
    BucketNotReady: Action, &[STORE_CREDENTIALS], "fix what BucketReady says";
    /// The TLS settings cannot build an S3 client.
    InvalidTlsSettings: Action, STORE_ALL_AND_CHECK, "fix spec.endpoint.tls";
    /// The bucket is in another region than spec.region (or than the request was signed for).
    RegionMismatch: Action, STORE_ALL_AND_CHECK, "set spec.region to the bucket's region, or remove it so the operator discovers it";
    /// The bucket does not exist.
    BucketNotFound: Action, STORE_ALL_AND_CHECK, "create the bucket, fix the bucket in spec.path, or set provisioning to Create";
    /// The bucket belongs to another account.
    BucketOwnedByAnotherAccount: Action, &[STORE_BUCKET, STORE_READY], "choose another bucket name";
    /// objectDefaults.acl is set, but the bucket has ACLs disabled (Object Ownership
    /// BucketOwnerEnforced): every write with an ACL would fail with AccessControlListNotSupported.
    AclNotSupported: Action, &[STORE_BUCKET, STORE_READY], "remove spec.objectDefaults.acl (the bucket owner owns every object), or set the bucket's Object Ownership to BucketOwnerPreferred";
    /// A spec.bucket setting could not be applied to the created bucket.
    BucketSettingsFailed: Action, &[STORE_BUCKET, STORE_READY], "fix spec.bucket or remove the setting the endpoint refuses";
    /// S3 or STS does not know the access key id.
    InvalidAccessKeyId: Action, STORE_ALL_AND_CHECK, "put a valid access key id in the Secret";
    /// The secret access key does not belong to the access key id.
    SignatureDoesNotMatch: Action, STORE_ALL_AND_CHECK, "put the secret access key that belongs to the access key id in the Secret";
    /// The session token has expired.
    ExpiredToken: Action, STORE_ALL_AND_CHECK, "put fresh temporary credentials in the Secret, or use long-lived keys or implicit auth";
    /// The identity may not list, read or write the path.
    AccessDenied: Action, STORE_ALL_AND_CHECK, "grant s3:ListBucket on the bucket and s3:GetObject, s3:PutObject, s3:DeleteObject under the prefix, or fix the bucket policy";
    /// S3 refused the request for another reason.
    S3Error: Action, STORE_ALL_AND_CHECK, "read the S3 error code in the message and fix the request it names";
    /// No response from the S3 endpoint (DNS, connection, TLS, timeout).
    EndpointUnreachable: Transient, STORE_ALL_AND_CHECK, "nothing, if the outage passes; otherwise check spec.endpoint.url, DNS, the network path and TLS settings";
    /// S3 throttled the request.
    Throttled: Transient, STORE_ALL_AND_CHECK, "nothing: the operator retries with backoff";
    /// S3 answered with a server error.
    S3Unavailable: Transient, STORE_ALL_AND_CHECK, "nothing: the operator retries with backoff";
    /// Recording the coming CreateBucket in the status failed; no bucket was created.
    StatusWriteFailed: Transient, STORE_ALL, "nothing: the operator retries with backoff";
    /// No response from AWS STS.
    StsUnreachable: Transient, STS_ALL, "nothing, if the outage passes; otherwise check the network path to STS";
    /// The operator itself has no AWS credentials (implicit auth on AWS needs its own identity).
    OperatorCredentialsMissing: Action, &[STORE_CREDENTIALS, STORE_READY], "give the operator's ServiceAccount an IAM role (IRSA or Pod Identity), or its pod AWS access keys";
    /// STS GetCallerIdentity or AssumeRoleWithWebIdentity failed otherwise.
    StsError: Transient, STS_ALL, "nothing, if it passes; otherwise give the operator credentials STS accepts";
    /// The ServiceAccount has no eks.amazonaws.com/role-arn annotation (IRSA) and, where the
    /// operator knows the EKS cluster, no Pod Identity association either.
    IrsaAnnotationMissing: Action, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "annotate the ServiceAccount with the IAM role its pods should assume (IRSA), or associate one through EKS Pod Identity (the operator finds it with --eks-cluster-name)";
    /// The ServiceAccount's role differs from spec.auth.implicit.roleArn.
    RoleArnMismatch: Action, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "make the annotation and spec.auth.implicit.roleArn agree";
    /// The annotated role is not an IAM role ARN.
    InvalidRoleArn: Action, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "annotate the ServiceAccount with arn:aws:iam::ACCOUNT:role/NAME";
    /// The annotated IAM role does not exist.
    IamRoleNotFound: Action, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "create the role, or fix the ServiceAccount's annotation";
    /// The operator may not read the role.
    IamAccessDenied: Action, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "grant the operator's role iam:GetRole and iam:SimulatePrincipalPolicy";
    /// No response from IAM.
    IamUnreachable: Transient, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "nothing, if the outage passes; otherwise check the network path to IAM";
    /// IAM answered with an error.
    IamError: Transient, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "nothing: the operator retries with backoff";
    /// The operator may not read the cluster's Pod Identity associations.
    EksAccessDenied: Action, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "grant the operator's role eks:ListPodIdentityAssociations and eks:DescribePodIdentityAssociation";
    /// EKS has no cluster of the name given with --eks-cluster-name.
    EksClusterNotFound: Action, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "give the operator this cluster's name (--eks-cluster-name, chart value aws.eksClusterName) and region";
    /// The cluster's OIDC issuer could not be read.
    OidcIssuerUnknown: Transient, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "nothing, if the apiserver answers again; otherwise give the operator --oidc-issuer";
    /// The role's trust policy does not admit the ServiceAccount (IRSA) or EKS Pod Identity.
    TrustPolicyMismatch: Action, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "let the role's trust policy admit system:serviceaccount:NAMESPACE:NAME from this cluster's OIDC issuer (IRSA), or pods.eks.amazonaws.com with sts:AssumeRole and sts:TagSession (Pod Identity)";
    /// The role's policies do not allow the named actions on the path, or S3 refused the role's
    /// own credentials what the policy simulation allowed (a bucket policy, a boundary, an SCP).
    PermissionsDenied: Action, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "allow the named actions in the role's policy, or where the message says they are denied";
    /// The apiserver would not issue a token for the ServiceAccount (other than for lack of
    /// permission, which only skips the proof by assuming the role).
    TokenRequestFailed: Transient, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "nothing: the operator retries with backoff";
    /// STS did not accept the ServiceAccount's token: the cluster's OIDC issuer is not an IAM
    /// identity provider of the role's account, or the token's claims are refused.
    IdentityTokenRejected: Action, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "register the cluster's OIDC issuer as an IAM OIDC identity provider with audience sts.amazonaws.com";
    /// The S3 endpoint does not accept the temporary credentials STS issued for the role.
    RoleCredentialsRejected: Action, &[STORE_CREDENTIALS, STORE_READY, STACK_READY], "use a Secret's keys (spec.auth.secretRef) for an S3 server that does not trust AWS STS";
    /// A ConfigMap or Secret the operator would publish exists and is not its own.
    NameConflict: Action, &[STORE_READY, STACK_READY, STACK_SCOPED], "rename or delete that object, or rename the ArtifactStore or Stack";
    /// The store is being deleted, and its bucket cannot be deleted yet.
    DeletionBlocked: Action, &[STORE_READY], "fix what the message names so the operator can reach the bucket";
    /// The bucket to delete still holds objects or old versions.
    BucketNotEmpty: Action, &[STORE_READY], "empty the bucket, or set deletionPolicy to Retain to keep it";
    /// The object does not deserialize into the operator's types (stored under an older schema,
    /// or written past the apiserver's validation); the others carry on.
    InvalidObject: Action, &[STORE_EVENT, STACK_EVENT], "fix or recreate the object: the field the Event names does not match the CRD";
    /// An internal error in one reconcile; retried with backoff.
    ReconcilePanicked: Action, &[STORE_READY, STACK_READY], "report it with the operator's log";
    /// The Stack's ArtifactStore does not exist.
    ArtifactStoreNotFound: Action, &[STACK_READY], "create the ArtifactStore, or fix spec.artifactStoreRef";
    /// The Stack waits for its ArtifactStore, whose own conditions say whether someone must act.
    ArtifactStoreNotReady: Transient, &[STACK_READY], "nothing on the Stack: fix what the ArtifactStore's conditions say";
    /// The Stack waits for the Secret its ArtifactStore publishes.
    CredentialsSecretNotFound: Transient, STACK_SCOPED_AND_READY, "nothing: the ArtifactStore publishes it";
    /// Another Stack provides the namespace's kfp-launcher.
    KfpLauncherTaken: Action, &[STACK_READY], "remove KFP from one of the two Stacks";
    /// A format in spec.outputs.formats cannot be served with the store as it is.
    FormatUnsupported: Action, &[STACK_READY], "change the setting the message names, or remove that format from spec.outputs.formats";
    /// Another Stack holds the namespace's default Argo artifact repository.
    DefaultRepositoryTaken: Action, &[STACK_READY], "set argoDefaultRepository on one Stack only";
    /// The in-pod check (verification.inPod) runs as a Job; Ready waits for it.
    WorkloadCheckRunning: Transient, &[STACK_WORKLOAD, STACK_READY], "nothing: the check's Job runs";
    /// The in-pod check's Job ended without an outcome (image, scheduling, deadline).
    WorkloadCheckFailed: Action, &[STACK_WORKLOAD, STACK_READY], "read the message and the check pod's events: the image, the ServiceAccount, the volumes";
    /// The ZenML server holds the stack, its components and secret as the Stack declares them.
    ZenmlSynced: Fine, &[STACK_ZENML], "nothing to fix";
    /// The ZenML objects the operator made for the Stack are removed (the Stack or its zenml
    /// field went).
    ZenmlRemoved: Fine, &[STACK_EVENT], "nothing to fix";
    /// The Secret of spec.zenml.apiKeySecretRef, or its key, is missing.
    ZenmlApiKeyNotFound: Action, STACK_ZENML_AND_READY, "create the Secret named in spec.zenml.apiKeySecretRef with the service account's API key under the named key";
    /// No answer from the ZenML server (DNS, connection, TLS, timeout).
    ZenmlUnreachable: Transient, STACK_ZENML_AND_READY, "nothing, if the outage passes; otherwise check spec.zenml.url and the network path to the server";
    /// The ZenML server refused the API key.
    ZenmlUnauthorized: Action, STACK_ZENML_AND_READY, "put a valid API key of an active ZenML service account in the Secret (zenml service-account api-key NAME create)";
    /// The server runs a ZenML release whose REST API the operator does not speak.
    ZenmlVersionUnsupported: Action, STACK_ZENML_AND_READY, "run ZenML 0.90 or later (0.x) on the server";
    /// spec.zenml.project does not exist on the server.
    ZenmlProjectNotFound: Action, STACK_ZENML_AND_READY, "create the project (zenml project register NAME) or fix spec.zenml.project";
    /// A ZenML stack, component or secret of the name the operator would use exists and is not
    /// this Stack's.
    ZenmlNameConflict: Action, STACK_ZENML_AND_READY, "rename or delete that ZenML object, or set spec.zenml.stackName";
    /// The ZenML server refused a request (the message quotes its answer).
    ZenmlRejected: Action, STACK_ZENML_AND_READY, "read the server's answer in the message and fix what it names";
    /// The ZenML server answered with a server error.
    ZenmlUnavailable: Transient, STACK_ZENML_AND_READY, "nothing: the operator retries with backoff";
    /// The Stack went while its ZenML objects could not be removed (the API key is gone or the
    /// server refused); they are left in the server.
    ZenmlObjectsLeft: Action, &[STACK_EVENT], "delete the ZenML stack, components and secret the Event names by hand";
    /// The Stack's pods have session credentials limited to its prefix (credentials.mode Scoped).
    CredentialsIssued: Fine, &[STACK_SCOPED], "nothing to fix";
    /// Renewing the scoped credentials failed; the current ones stay valid until they expire,
    /// and the operator retries with backoff.
    CredentialsRenewalFailed: Transient, &[STACK_SCOPED], "nothing, if it passes before the current credentials expire; otherwise fix what the message names";
    /// Scoped credentials cannot be issued for this store (implicit auth; on AWS, no role).
    ScopedCredentialsUnsupported: Action, STACK_SCOPED_AND_READY, "use a store with key auth (spec.auth.secretRef), set spec.credentials.roleArn on AWS, or set spec.credentials.mode to Shared";
    /// STS refused AssumeRole with the store's keys.
    AssumeRoleDenied: Action, STACK_SCOPED_AND_READY, "let the store's keys assume the role (sts:AssumeRole in their policy and the role's trust policy) or fix spec.credentials.roleArn; the role (or, on MinIO, the store's user) must allow what the scope asks for";
    /// `artifact-operator check` found no credentials in the workload pod.
    NoCredentials: Action, &[STACK_WORKLOAD, STACK_READY], "give the pods the store's credentials Secret (envFrom) or an IAM role (IRSA, Pod Identity)";
    /// `artifact-operator check` found access keys in a pod whose ServiceAccount has a web identity
    /// (IRSA): the SDKs take the keys first and never assume the role (deployKF #79).
    WebIdentityShadowed: Action, &[STACK_WORKLOAD, STACK_READY], "remove AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the pods' environment (a preset env, a webhook or an envFrom Secret sets them): the SDKs take them before the ServiceAccount's web identity token";
}

impl Reason {
    /// The reason named `name`, as a condition or Event carries it.
    pub fn parse(name: &str) -> Option<Reason> {
        Self::ALL.iter().copied().find(|r| r.as_str() == name)
    }

    pub fn is_transient(self) -> bool {
        self.meaning() == Meaning::Transient
    }

    /// Whether it appears on `kind`'s condition `type_`.
    pub fn appears_on(self, kind: Kind, type_: &str) -> bool {
        self.places().iter().any(|p| matches!(p, Place::Condition(k, t) if *k == kind && *t == type_))
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a check failed: a condition reason and a message for humans. The reason says whether
/// retrying without any change can help (network trouble, throttling) or someone must act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
    pub fn is_transient(&self) -> bool {
        self.reason.is_transient()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_place_and_a_fix() {
        for reason in Reason::ALL {
            assert!(!reason.places().is_empty(), "{reason}");
            assert!(!reason.fix().is_empty(), "{reason}");
            assert!(reason.as_str().bytes().all(|b| b.is_ascii_alphanumeric()), "{reason}");
        }
    }

    #[test]
    fn store_all_is_the_three_store_conditions() {
        assert_eq!(&Reason::Throttled.places()[..3], STORE_ALL);
        assert!(Reason::Throttled.appears_on(Kind::Stack, WORKLOAD_ACCESS_VERIFIED), "the in-pod check meets S3 too");
        assert!(Reason::Throttled.is_transient());
        assert!(Reason::ServiceAccountNotFound.appears_on(Kind::Stack, READY));
        assert!(Reason::StsUnreachable.appears_on(Kind::Stack, READY), "a Stack's role is assumed through STS");
        assert!(!Reason::OperatorCredentialsMissing.appears_on(Kind::Stack, READY));
        assert_eq!(Reason::parse("KfpLauncherTaken"), Some(Reason::KfpLauncherTaken));
        assert_eq!(Reason::parse("Reconciling"), None);
    }
}
