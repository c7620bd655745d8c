//! Verification: proves that the bucket is there (creating it on the deploy path) and that the
//! credentials, or the IRSA wiring, really work.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::dereference::Inputs;
use crate::api::artifact_store::Provisioning;
use crate::api::validation::CREATED_BY_TAG;
use crate::aws::S3Connection;
use crate::aws::failure::{CallError, Target, classify_s3};
use crate::aws::s3::{Bucket, Created};
use crate::controller::Context;
use crate::identity::{Identity, Probe, account_of, caller_identity, check_workload_identity};
use crate::reason::{Failure, Reason};
use crate::resolve::{ConsumerCredentials, DEFAULT_REGION, ResolvedStore};

/// What verification found.
#[derive(Debug)]
pub struct Outcome {
    /// The bucket's region, once known.
    pub region: Option<String>,
    pub bucket: Result<BucketState, Failure>,
    pub credentials: Result<Identity, Failure>,
    /// When this pass recorded (in the status) that it asks S3 to create the bucket.
    pub create_requested: Option<Time>,
}

/// What the store's status remembers of the bucket's origin, from earlier passes.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    /// The operator said, in an earlier pass, that it created the bucket.
    pub created: bool,
    /// The operator recorded that it was about to create the bucket.
    pub create_requested: bool,
}

impl Outcome {
    /// The bucket failed, so the credentials cannot be judged either: for the same reason, or
    /// under `credentials_reason` with the same message.
    fn bucket_failed(region: Option<String>, failure: Failure, credentials_reason: Option<Reason>) -> Self {
        let credentials = match credentials_reason {
            Some(reason) => Failure::new(reason, failure.message.clone()),
            None => failure.clone(),
        };
        Self { region, bucket: Err(failure), credentials: Err(credentials), create_requested: None }
    }
}

#[derive(Debug, Clone, Default)]
pub struct BucketState {
    /// Whether this operator created the bucket (now or before, per the creator tag).
    pub created_by_operator: bool,
    pub created_now: bool,
    /// Settings the endpoint does not implement.
    pub skipped_settings: Vec<&'static str>,
}

/// How to reach `store`'s bucket in `region`, with the inputs' CA bundle and keys.
fn connection(store: &ResolvedStore, inputs: &Inputs, region: &str) -> S3Connection {
    let connection = S3Connection::to_store(store, inputs.ca_pem.clone(), inputs.keys.clone());
    S3Connection { region: region.to_owned(), ..connection }
}

fn bucket_client(ctx: &Context, connection: &S3Connection, store: &ResolvedStore) -> Result<Bucket, Failure> {
    let client = ctx.aws.s3(connection).map_err(|e| Failure::new(Reason::InvalidTlsSettings, e.to_string()))?;
    Ok(Bucket::new(client, ctx.aws.s3_limiter.clone(), connection.account_key(), store.path.clone()))
}

/// The cheap periodic check: one HeadBucket in the known region.
pub async fn quick_check(ctx: &Context, store: &ResolvedStore, inputs: &Inputs) -> Result<(), Failure> {
    let (path, region) = (&store.path, store.region.as_str());
    let connection = connection(store, inputs, region);
    let bucket = bucket_client(ctx, &connection, store)?;
    let endpoint = connection.endpoint_display();
    let target =
        Target { action: &format!("reach bucket {}", path.bucket), bucket: &path.bucket, region, endpoint: &endpoint };
    bucket.head(None).await.map(|_| ()).map_err(|e| classify_s3(&e, &target))
}

/// Full verification: who the credentials are → where the bucket is → adopt it, or create it on
/// the deploy path → prove access under the prefix. `record_create_request` writes, before
/// CreateBucket is sent, that the operator is about to create the bucket, and returns when.
pub async fn verify(
    ctx: &Context,
    store: &ResolvedStore,
    inputs: &Inputs,
    provenance: &Provenance,
    record_create_request: impl AsyncFnOnce() -> Result<Time, Failure>,
) -> Outcome {
    let path = &store.path;
    let identity = match who(ctx, store, inputs).await {
        Ok(identity) => identity,
        Err(failure) => {
            let pending = Failure::new(
                Reason::CredentialsInvalid,
                format!("the bucket is checked once the credentials work: {}", failure.message),
            );
            let region = store.spec_region.clone();
            return Outcome { region, bucket: Err(pending), credentials: Err(failure), create_requested: None };
        }
    };
    let Located { bucket, region, head } = match locate(ctx, store, inputs).await {
        Ok(located) => located,
        Err(failure) => return Outcome::bucket_failed(None, failure, None),
    };
    let endpoint = connection(store, inputs, &region).endpoint_display();
    let mut found = Found { store, bucket, provenance, uid: store.owner.uid.clone(), region, endpoint };
    let missing = |error: &CallError| error.http_status == Some(404) || error.code.as_deref() == Some("NoSuchBucket");
    let mut create_requested = None;
    let bucket = match head {
        Ok(reported) => found.adopt(reported, identity.as_deref()).await,
        Err(error) if missing(&error) && store.provisioning == Provisioning::Create => {
            match record_create_request().await {
                Ok(at) => create_requested = Some(at),
                Err(failure) => return Outcome::bucket_failed(Some(found.region), failure, None),
            }
            found.provision().await
        }
        Err(error) if missing(&error) => {
            Err(NotReady::judged(found.classify(&error, &format!("find bucket {}", path.bucket))))
        }
        Err(error) => Err(NotReady::judged(found.classify(&error, &format!("reach bucket {}", path.bucket)))),
    };
    let bucket = match bucket {
        Ok(state) => found.takes_the_acl().await.map(|()| state),
        Err(not_ready) => Err(not_ready),
    };
    let state = match bucket {
        Ok(state) => state,
        Err(NotReady { failure, credentials }) => {
            let region = Some(found.region);
            return Outcome { region, bucket: Err(failure), credentials: Err(credentials), create_requested };
        }
    };
    let credentials = prove_access(ctx, &found, inputs, identity).await;
    Outcome { region: Some(found.region.clone()), bucket: Ok(state), credentials, create_requested }
}

/// Why the bucket is not ready, and what the credentials condition says meanwhile.
struct NotReady {
    failure: Failure,
    credentials: Failure,
}

impl NotReady {
    /// The credentials fail for the same reason.
    fn both(failure: Failure) -> Self {
        Self { credentials: failure.clone(), failure }
    }

    /// The credentials wait under `reason`, with the same message.
    fn waiting(failure: Failure, reason: Reason) -> Self {
        Self { credentials: Failure::new(reason, failure.message.clone()), failure }
    }

    /// Refused keys are the credentials' failure too; anything else makes them wait for the bucket.
    fn judged(failure: Failure) -> Self {
        match failure.reason {
            Reason::AccessDenied
            | Reason::InvalidAccessKeyId
            | Reason::SignatureDoesNotMatch
            | Reason::ExpiredToken => Self::both(failure),
            _ => {
                let message = format!("access is checked once the bucket is ready: {}", failure.message);
                Self { credentials: Failure::new(Reason::BucketNotReady, message), failure }
            }
        }
    }
}

/// The located bucket, and what adopting or creating it needs.
struct Found<'a> {
    store: &'a ResolvedStore,
    bucket: Bucket,
    provenance: &'a Provenance,
    uid: String,
    /// The bucket's region as far as known (the one it reports, once adopted).
    region: String,
    endpoint: String,
}

impl Found<'_> {
    fn classify(&self, error: &CallError, action: &str) -> Failure {
        let target = Target { action, bucket: &self.store.path.bucket, region: &self.region, endpoint: &self.endpoint };
        classify_s3(error, &target)
    }

    /// With `objectDefaults.acl` set, that the bucket takes ACLs on writes: refused before any
    /// pod's write fails on a bucket with ACLs disabled. A server that does not say is not held up.
    async fn takes_the_acl(&self) -> Result<(), NotReady> {
        let Some(acl) = self.store.object_defaults.acl else { return Ok(()) };
        match self.bucket.takes_acls().await {
            Ok(Some(false)) => Err(NotReady::waiting(
                Failure::new(
                    Reason::AclNotSupported,
                    format!(
                        "bucket {} has ACLs disabled (Object Ownership BucketOwnerEnforced), so every write with objectDefaults.acl {} would fail with AccessControlListNotSupported: remove spec.objectDefaults.acl, or set the bucket's Object Ownership to BucketOwnerPreferred",
                        self.store.path.bucket,
                        acl.as_str()
                    ),
                ),
                Reason::BucketNotReady,
            )),
            Ok(_) => Ok(()),
            Err(error) => Err(NotReady::judged(
                self.classify(&error, &format!("read the Object Ownership of bucket {}", self.store.path.bucket)),
            )),
        }
    }

    /// An existing bucket: in the region the spec names, and on the deploy path one of this
    /// account's, with its settings completed if this store created it.
    async fn adopt(&mut self, reported: Option<String>, identity: Option<&str>) -> Result<BucketState, NotReady> {
        let actual = match reported {
            Some(reported) => Some(reported),
            None => self.bucket.location().await.ok().flatten(),
        };
        if let Some(actual) = actual {
            let wanted = self.store.spec_region.clone().filter(|wanted| *wanted != actual);
            self.region = actual;
            if let Some(wanted) = wanted {
                let (bucket, actual) = (&self.store.path.bucket, &self.region);
                let failure = Failure::new(
                    Reason::RegionMismatch,
                    format!(
                        "bucket {bucket} is in {actual}, but spec.region is {wanted}; set spec.region to {actual} or remove it"
                    ),
                );
                return Err(NotReady::waiting(failure, Reason::RegionMismatch));
            }
        }
        if self.store.provisioning != Provisioning::Create {
            return Ok(BucketState::default());
        }
        if let Some(account) = identity.and_then(account_of) {
            let bucket = &self.store.path.bucket;
            match self.bucket.owned_by(account).await {
                Ok(true) => {}
                Ok(false) => {
                    let failure = Failure::new(
                        Reason::BucketOwnedByAnotherAccount,
                        format!(
                            "bucket {bucket} belongs to another account than {account}; the operator never writes to it: choose another bucket name"
                        ),
                    );
                    return Err(NotReady::waiting(failure, Reason::BucketNotReady));
                }
                Err(error) => {
                    return Err(NotReady::both(self.classify(&error, &format!("check the owner of bucket {bucket}"))));
                }
            }
        }
        self.complete(self.provenance).await
    }

    /// No bucket yet, on the deploy path: create it (AWS takes the creator tag with the bucket
    /// itself; other S3 servers get it next) and apply its settings.
    async fn provision(&self) -> Result<BucketState, NotReady> {
        let tags = self.store.endpoint.is_none().then(|| creator_tags(self.store, &self.uid));
        let bucket = &self.store.path.bucket;
        if let Some((_, region)) = self.store.path.account_regional().filter(|(_, region)| *region != self.region) {
            return Err(NotReady::waiting(
                Failure::new(
                    Reason::RegionMismatch,
                    format!(
                        "bucket {bucket} is named for region {region} (an account-regional namespace) but would be created in {}: set spec.region to {region}",
                        self.region
                    ),
                ),
                Reason::BucketNotReady,
            ));
        }
        match self.bucket.create(&self.region, tags).await {
            Ok(Created::New) => {
                let mut state = BucketState { created_by_operator: true, created_now: true, ..BucketState::default() };
                let applied = apply_settings(self.store, &self.bucket, &self.uid, &mut state).await;
                applied.map(|()| state).map_err(NotReady::judged)
            }
            // Our own earlier request whose answer was lost, or a bucket made in this account
            // meanwhile: ours only if it is still empty and untagged.
            Ok(Created::AlreadyOwnedByYou) => {
                self.complete(&Provenance { create_requested: true, ..self.provenance.clone() }).await
            }
            Err(error) if error.code.as_deref() == Some("BucketAlreadyExists") => Err(NotReady::judged(Failure::new(
                Reason::BucketOwnedByAnotherAccount,
                format!(
                    "bucket {bucket} exists and belongs to another account; the operator never writes to it: choose another bucket name"
                ),
            ))),
            Err(error) => Err(NotReady::judged(self.classify(&error, &format!("create bucket {bucket}")))),
        }
    }

    /// Applies the settings of a bucket this store created; leaves anyone else's as it is.
    async fn complete(&self, provenance: &Provenance) -> Result<BucketState, NotReady> {
        let unreadable =
            |error: &CallError| self.classify(error, &format!("read the tags of bucket {}", self.store.path.bucket));
        complete_if_created_here(self.store, &self.bucket, &self.uid, provenance, BucketState::default(), unreadable)
            .await
            .map_err(NotReady::judged)
    }
}

/// Who the credentials are, by STS: on AWS, or for the operator's own identity. A custom endpoint
/// with keys has no STS to ask.
async fn who(ctx: &Context, store: &ResolvedStore, inputs: &Inputs) -> Result<Option<String>, Failure> {
    let ask = match store.auth.consumer_credentials() {
        ConsumerCredentials::Ambient { .. } => true,
        ConsumerCredentials::Keys { .. } | ConsumerCredentials::Session { .. } => store.endpoint.is_none(),
    };
    match ask {
        true => caller_identity(ctx, inputs.keys.as_ref(), store.endpoint.is_some()).await,
        false => Ok(None),
    }
}

/// The bucket's client in its region, and what HeadBucket said there.
struct Located {
    bucket: Bucket,
    region: String,
    head: Result<Option<String>, CallError>,
}

/// Finds the bucket: HeadBucket in the expected region, following the region the answer names
/// when spec.region leaves it open, and asking again where a HEAD answer (which has no body)
/// cannot name the problem.
async fn locate(ctx: &Context, store: &ResolvedStore, inputs: &Inputs) -> Result<Located, Failure> {
    let spec_region = &store.spec_region;
    let mut region =
        spec_region.clone().or_else(|| ctx.aws.ambient_region()).unwrap_or_else(|| DEFAULT_REGION.to_owned());
    let mut bucket = bucket_client(ctx, &connection(store, inputs, &region), store)?;
    let mut head = bucket.head(None).await;
    if let Err(error) = &head
        && let (Some(actual), None) = (&error.bucket_region, spec_region)
    {
        // The bucket lives elsewhere and the user let us discover the region: follow it.
        region = actual.clone();
        bucket = bucket_client(ctx, &connection(store, inputs, &region), store)?;
        head = bucket.head(None).await;
    }
    // HEAD answers carry no error body: ask again where the answer names the problem.
    if let Err(error) = &head {
        // 403: which refusal; 404 (the SDK's bare "NotFound"): a missing bucket, or (versitygw)
        // an unknown access key.
        let bare = error.code.is_none() || error.code.as_deref() == Some("NotFound");
        if bare && matches!(error.http_status, Some(403 | 404)) {
            if let Err(detailed) = bucket.read_probe().await {
                head = Err(detailed);
            }
        } else if error.code.is_none() && error.http_status == Some(400) && error.bucket_region.is_none() {
            // Signed for the wrong region: GetBucketLocation from the default region names the right one.
            let probe = self::connection(store, inputs, DEFAULT_REGION);
            if let Ok(located) = bucket_client(ctx, &probe, store)
                && let Ok(Some(actual)) = located.location().await
            {
                let mut located_error = error.clone();
                located_error.bucket_region = Some(actual);
                head = Err(located_error);
            }
        }
    }
    Ok(Located { bucket, region, head })
}

/// Proves access where the pods will work: a listing under the prefix (and, when asked, a write
/// and delete there), then whose access the pods will use.
async fn prove_access(
    ctx: &Context,
    found: &Found<'_>,
    inputs: &Inputs,
    identity: Option<String>,
) -> Result<Identity, Failure> {
    found.bucket.prove_access(found.store.write_probe).await.map_err(|(step, error)| found.classify(&error, &step))?;
    pod_identity(ctx, found.store, inputs, &found.region, identity).await
}

/// Whether this store created the bucket: its creator tag names the store, or it has no creator
/// tag yet but the status recorded the creation (or the request for it) and the bucket is empty,
/// which is where a stop between CreateBucket and the tagging leaves it.
async fn created_by_this_store(bucket: &Bucket, uid: &str, provenance: &Provenance) -> Result<bool, CallError> {
    match bucket.creator().await? {
        Some(creator) => Ok(creator == uid),
        None if provenance.created || provenance.create_requested => Ok(bucket.any_object().await?.is_none()),
        None => Ok(false),
    }
}

/// Applies the settings of a bucket this store created (see [`created_by_this_store`]) until they
/// hold; a bucket of someone else's is left as it is. `unreadable` says why the tags could not be read.
async fn complete_if_created_here(
    store: &ResolvedStore,
    bucket: &Bucket,
    uid: &str,
    provenance: &Provenance,
    mut state: BucketState,
    unreadable: impl Fn(&CallError) -> Failure,
) -> Result<BucketState, Failure> {
    match created_by_this_store(bucket, uid, provenance).await {
        Ok(true) => {
            state.created_by_operator = true;
            apply_settings(store, bucket, uid, &mut state).await.map(|()| state)
        }
        Ok(false) => Ok(state),
        Err(error) => Err(unreadable(&error)),
    }
}

/// The tags a created bucket carries: the creator tag first, then the user's.
fn creator_tags(store: &ResolvedStore, uid: &str) -> Vec<(String, String)> {
    let user_tags = store.bucket.as_ref().map(|b| b.tags.clone()).unwrap_or_default();
    std::iter::once((CREATED_BY_TAG.to_owned(), uid.to_owned())).chain(user_tags).collect()
}

async fn apply_settings(
    store: &ResolvedStore,
    bucket: &Bucket,
    uid: &str,
    state: &mut BucketState,
) -> Result<(), Failure> {
    let settings = store.bucket.clone().unwrap_or_default();
    let with_acls = store.object_defaults.acl.is_some();
    match bucket.apply_settings(&settings, uid, store.endpoint.is_some(), with_acls).await {
        Ok(skipped) => {
            state.skipped_settings = skipped;
            Ok(())
        }
        Err(error) => Err(Failure::new(
            Reason::BucketSettingsFailed,
            format!(
                "failed to apply the {} setting to bucket {}: {}{}; fix spec.bucket or remove the setting",
                error.setting,
                bucket.path.bucket,
                error.error.code.clone().unwrap_or_else(|| "no response".into()),
                error.error.aws_message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
            ),
        )),
    }
}

/// Whose access the pods will use, and whether it works for them.
async fn pod_identity(
    ctx: &Context,
    store: &ResolvedStore,
    inputs: &Inputs,
    region: &str,
    caller: Option<String>,
) -> Result<Identity, Failure> {
    let path = &store.path;
    let role_arn = match store.auth.consumer_credentials() {
        ConsumerCredentials::Keys { .. } | ConsumerCredentials::Session { .. } => {
            let who = caller
                .clone()
                .map_or_else(|| "the Secret's keys".to_owned(), |arn| format!("the Secret's keys ({arn})"));
            return Ok(Identity { arn: caller, summary: format!("{who} can list {path}") });
        }
        ConsumerCredentials::Ambient { role_arn, .. } => role_arn,
    };
    match &inputs.service_account {
        Some(account) => {
            let namespace = &store.owner.namespace;
            let permissions = crate::aws::iam::required_permissions(store);
            let connection = S3Connection { keys: None, ..connection(store, inputs, region) };
            let probe = Probe { connection, path, write: store.write_probe };
            check_workload_identity(ctx, namespace, account, role_arn, &permissions, probe).await
        }
        None => Ok(Identity {
            summary: format!(
                "the operator's own identity{} can list {path}",
                caller.as_deref().map(|a| format!(" ({a})")).unwrap_or_default()
            ),
            arn: caller,
        }),
    }
}

/// What deleting a created bucket came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// The creator tag names another store (or none): the bucket is kept.
    NotOurs,
}

/// Deletes the bucket only if its creator tag names this store and it holds nothing, not even old
/// versions. A missing bucket counts as deleted.
pub async fn delete_created_bucket(ctx: &Context, store: &ResolvedStore, inputs: &Inputs) -> Result<Deletion, Failure> {
    let (path, region) = (&store.path, store.region.as_str());
    let connection = connection(store, inputs, region);
    let bucket = bucket_client(ctx, &connection, store)?;
    let endpoint = connection.endpoint_display();
    let classify = |action: &str, error: &CallError| {
        classify_s3(error, &Target { action, bucket: &path.bucket, region, endpoint: &endpoint })
    };
    let gone = |error: &CallError| error.http_status == Some(404) || error.code.as_deref() == Some("NoSuchBucket");
    match bucket.creator().await {
        Ok(Some(uid)) if !store.owner.uid.is_empty() && uid == store.owner.uid => {}
        Ok(_) => return Ok(Deletion::NotOurs),
        Err(error) if gone(&error) => return Ok(Deletion::Deleted),
        Err(error) => return Err(classify("read the bucket's tags before deleting it", &error)),
    }
    match bucket.any_object().await {
        Ok(None) => {}
        Ok(Some(key)) => {
            return Err(Failure::new(
                Reason::BucketNotEmpty,
                format!(
                    "bucket {} still holds objects (for example {key:?}, counting old versions); empty it to let it be deleted, or set deletionPolicy to Retain to keep it",
                    path.bucket
                ),
            ));
        }
        Err(error) if gone(&error) => return Ok(Deletion::Deleted),
        Err(error) => return Err(classify("list the bucket before deleting it", &error)),
    }
    match bucket.delete().await {
        Ok(()) => Ok(Deletion::Deleted),
        Err(error) if gone(&error) => Ok(Deletion::Deleted),
        Err(error) => Err(classify("delete the bucket", &error)),
    }
}
