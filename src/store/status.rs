//! Status: conditions from what verification found (pure), and their write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::ArtifactStore;
use crate::api::artifact_store::ArtifactStoreStatus;
use crate::conditions::{self, BUCKET_READY, CREDENTIALS_VALID, Observed, READY};
use crate::controller::{Context, subject};
use crate::reason::{Failure, Reason};

use super::verify::BucketState;
use crate::identity::Identity;

/// The three conditions for a store that could not even be dereferenced (missing Secret, ...).
pub fn unresolved(failure: &Failure) -> Vec<Observed> {
    vec![
        Observed::failed(READY, failure.reason, failure.message.clone()),
        Observed::unknown(
            BUCKET_READY,
            Reason::CredentialsUnavailable,
            "the bucket is checked once the credentials can be read",
        ),
        Observed::failed(CREDENTIALS_VALID, failure.reason, failure.message.clone()),
    ]
}

/// The conditions for a verified (or failed) store.
pub fn observe(
    path: &str,
    region: Option<&str>,
    bucket: &Result<BucketState, Failure>,
    credentials: &Result<Identity, Failure>,
    publication: Option<&Failure>,
    config_map: &str,
) -> Vec<Observed> {
    let bucket_condition = match bucket {
        Ok(state) => {
            let how = if state.created_now {
                "created"
            } else if state.created_by_operator {
                "exists (created by this operator)"
            } else {
                "exists"
            };
            let skipped = if state.skipped_settings.is_empty() {
                String::new()
            } else {
                format!("; the endpoint does not implement: {}", state.skipped_settings.join(", "))
            };
            let reason = if state.created_now { Reason::BucketCreated } else { Reason::BucketExists };
            Observed::ok(BUCKET_READY, reason, format!("bucket {how} in {}{skipped}", region.unwrap_or("its region")))
        }
        Err(failure) => Observed::failed(BUCKET_READY, failure.reason, failure.message.clone()),
    };
    let credentials_condition = match credentials {
        Ok(identity) => Observed::ok(CREDENTIALS_VALID, Reason::Verified, identity.summary.clone()),
        Err(failure) => Observed::failed(CREDENTIALS_VALID, failure.reason, failure.message.clone()),
    };
    let ready = match (bucket, credentials, publication) {
        (Ok(_), Ok(_), None) => {
            Observed::ok(READY, Reason::Ready, format!("{path} is ready; pods use ConfigMap {config_map}"))
        }
        // A bucket that waits for the credentials says nothing of its own: Ready names why the
        // credentials failed, so that an STS outage reads as transient.
        (Err(waiting), Err(failure), _) if waiting.reason == Reason::CredentialsInvalid => {
            Observed::failed(READY, failure.reason, failure.message.clone())
        }
        (Err(failure), _, _) | (_, Err(failure), _) | (_, _, Some(failure)) => {
            Observed::failed(READY, failure.reason, failure.message.clone())
        }
    };
    vec![ready, bucket_condition, credentials_condition]
}

/// Writes the status, `observed` merged into its conditions and the other fields from `fields`
/// (its verified inputs kept unless `fields` names new ones), if anything but the verification
/// time changed; and publishes an Event per condition transition.
pub async fn write(
    store: &ArtifactStore,
    ctx: &Context,
    observed: &[Observed],
    fields: ArtifactStoreStatus,
) -> Result<(), kube::Error> {
    let previous = store.status.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let (merged, transitions) = conditions::merge(&previous.conditions, observed, store.metadata.generation, &now);
    let mut next = ArtifactStoreStatus {
        observed_generation: store.metadata.generation,
        conditions: merged,
        last_verified_time: previous.last_verified_time.clone(),
        verified_inputs: fields.verified_inputs.or_else(|| previous.verified_inputs.clone()),
        ..fields
    };
    if next == previous {
        return Ok(());
    }
    next.last_verified_time = Some(now);
    subject::write_status(ctx, store, &next, &transitions).await
}

/// Writes `ready` as the only condition and keeps every other status field as it was: for a pass
/// that judged neither the bucket nor the credentials (a deletion blocked, a reconcile that panicked).
pub async fn write_ready_only(store: &ArtifactStore, ctx: &Context, ready: Observed) -> Result<(), kube::Error> {
    write(store, ctx, &[ready], store.status.clone().unwrap_or_default()).await
}

/// Records in the status, before CreateBucket is sent, that this store is about to create its
/// bucket, so that a stop before the creator tag is set cannot leave the bucket unrecognised. A
/// request recorded by an earlier pass stands.
pub async fn record_create_request(store: &ArtifactStore, ctx: &Context) -> Result<Time, Failure> {
    let mut status = store.status.clone().unwrap_or_default();
    if let Some(at) = &status.bucket_create_requested {
        return Ok(at.clone());
    }
    let now = Time(jiff::Timestamp::now());
    status.bucket_create_requested = Some(now.clone());
    // A pass woken meanwhile would compute from this version, which the pass's last write
    // supersedes: without this it would see the bucket just created as one that exists.
    subject::write_intermediate_status(ctx, store, &status).await.map_err(|error| {
        Failure::new(
            Reason::StatusWriteFailed,
            format!("the bucket was not created, because recording that it is about to be failed: {error}"),
        )
    })?;
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::Status;

    #[test]
    fn ready_needs_both_bucket_and_credentials() {
        let ok =
            observe("s3://b", Some("us-east-1"), &Ok(BucketState::default()), &Ok(Identity::default()), None, "cm");
        assert_eq!(ok[0].status, Status::True);
        let denied = Failure::new(Reason::AccessDenied, "denied");
        let bad = observe("s3://b", Some("us-east-1"), &Ok(BucketState::default()), &Err(denied), None, "cm");
        assert_eq!((bad[0].status, bad[0].reason), (Status::False, Reason::AccessDenied));
        assert_eq!(bad[1].status, Status::True);
        assert_eq!(bad[2].reason, Reason::AccessDenied);
    }

    #[test]
    fn a_name_conflict_keeps_the_store_from_ready() {
        let conflict = Failure::new(Reason::NameConflict, "ConfigMap cm is not ours");
        let conditions =
            observe("s3://b", None, &Ok(BucketState::default()), &Ok(Identity::default()), Some(&conflict), "cm");
        assert_eq!((conditions[0].status, conditions[0].reason), (Status::False, Reason::NameConflict));
        assert_eq!((conditions[1].status, conditions[2].status), (Status::True, Status::True));
    }

    #[test]
    fn ready_names_why_the_credentials_failed_when_the_bucket_waits_for_them() {
        let waiting = Failure::new(Reason::CredentialsInvalid, "the bucket is checked once the credentials work");
        let outage = Failure::new(Reason::StsUnreachable, "could not reach AWS STS");
        let conditions = observe("s3://b", None, &Err(waiting), &Err(outage), None, "cm");
        assert_eq!(conditions[0].reason, Reason::StsUnreachable);
        assert_eq!(conditions[1].reason, Reason::CredentialsInvalid);
    }

    #[test]
    fn unresolved_marks_the_bucket_unknown() {
        let conditions = unresolved(&Failure::new(Reason::SecretNotFound, "no secret"));
        assert_eq!(conditions[1].status, Status::Unknown);
        assert_eq!(conditions[0].reason, Reason::SecretNotFound);
    }
}
