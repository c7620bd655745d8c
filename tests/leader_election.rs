//! Two replicas with leader election: exactly one reconciles; when it dies, the other takes over.

mod common;

use std::time::{Duration, Instant};

use artifact_operator::api::ArtifactStore;
use common::conditions::{Wanted, wait_for_condition};
use common::store::{minio_spec_at, store_object};
use common::{Operator, apply, eventually, setup};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

fn store(name: &str, bucket: &str) -> serde_json::Value {
    store_object(name, minio_spec_at(&format!("s3://{bucket}"), json!({})))
}

async fn ready(client: &kube::Client, ns: &str, name: &str) {
    wait_for_condition::<ArtifactStore>(client, ns, name, "Ready", Wanted::True, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn one_replica_leads_and_the_other_takes_over_when_it_dies() {
    let (client, ns, bucket) = common::setup_with_bucket("leader").await;
    let mut first = Operator::leading_replica(&ns).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let mut second = Operator::replica(&ns);
    apply(&client, &ns, store("before", &bucket)).await;
    ready(&client, &ns, "before").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let follower_log = second.log_text();
    assert!(!follower_log.contains("acquired the lease"), "the second replica waits");
    assert!(
        !follower_log.contains("starting the controllers"),
        "the follower runs no controller, so it writes nothing"
    );
    let holder = leases.get("artifact-operator").await.unwrap().spec.unwrap().holder_identity.unwrap();

    first.kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(30), "the second replica to take over", || async {
        second.log_text().contains("acquired the lease").then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    println!("takeover after the leader died: {takeover:?}");
    let lease = leases.get("artifact-operator").await.unwrap().spec.unwrap();
    assert_ne!(lease.holder_identity.unwrap(), holder);
    assert_eq!(lease.lease_transitions, Some(1));
    apply(&client, &ns, store("after", &bucket)).await;
    ready(&client, &ns, "after").await;
    second.kill();
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_hands_the_lease_over_without_waiting_for_expiry() {
    let (client, ns, bucket) = common::setup_with_bucket("leader-handover").await;
    let mut first = Operator::leading_replica(&ns).await;
    let second = Operator::replica(&ns);
    eventually(Duration::from_secs(30), "the second replica to stand by", || async {
        (second.status("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let stopped = Instant::now();
    let status = first.terminate();
    assert!(status.success(), "a graceful shutdown exits 0: {status}");
    assert!(first.log_text().contains("released the lease"), "the leader says it released the lease");
    eventually(Duration::from_secs(30), "the second replica to take over", || async {
        second.log_text().contains("acquired the lease").then_some(())
    })
    .await;
    let handover = stopped.elapsed();
    println!("handover after SIGTERM: {handover:?}");
    // Without the release the lease, renewed at most RENEW_INTERVAL before the stop, could not be
    // taken until LEASE_DURATION after that renewal.
    use artifact_operator::leader::{LEASE_DURATION, RENEW_INTERVAL};
    assert!(handover < LEASE_DURATION - RENEW_INTERVAL, "took {handover:?}");
    apply(&client, &ns, store("after", &bucket)).await;
    ready(&client, &ns, "after").await;
}

/// In a container the operator is PID 1, which SIGTERM does not stop unless it handles it: a
/// standby that did not would wait out the pod's grace period on every rollout and uninstall.
#[tokio::test]
async fn a_standby_stops_at_sigterm_without_taking_the_lease() {
    let (client, ns) = common::setup("standby-stop").await;
    let mut leader = Operator::leading_replica(&ns).await;
    let mut standby = Operator::replica(&ns);
    eventually(Duration::from_secs(30), "the standby to answer /readyz", || async {
        (standby.status("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let status = standby.terminate();
    assert!(status.success(), "the standby exits 0 at SIGTERM: {status}\n{}", standby.log_text());
    assert!(standby.log_text().contains("stopped while standing by"), "{}", standby.log_text());
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = leases.get("artifact-operator").await.unwrap().spec.unwrap().holder_identity.unwrap();
    assert!(!standby.log_text().contains(&holder), "the lease stays with the leader");
    leader.kill();
}

#[tokio::test]
async fn a_leader_that_loses_the_lease_stops_at_once() {
    let (client, ns) = setup("leader-lost").await;
    let mut leader = Operator::leading_replica(&ns).await;
    // Another holder takes the lease (as a replica that saw it expire would).
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let mut lease = leases.get("artifact-operator").await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("another-replica".into());
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now()));
    leases.replace("artifact-operator", &Default::default(), &lease).await.unwrap();
    let taken = Instant::now();
    eventually(Duration::from_secs(15), "the old leader to exit", || {
        let exited = leader.exited();
        async move { exited.then_some(()) }
    })
    .await;
    println!("old leader exited {:?} after losing the lease", taken.elapsed());
    assert!(leader.log_text().contains("lost the lease"));
}
