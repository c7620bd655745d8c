//! Nothing a Stack writes into a namespace's shared objects outlives it: not when it is deleted
//! during its first reconcile, not under churn, and not what an earlier operator left behind
//! (swept at the start and every resync, only what a deleted Stack's field manager owns).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use artifact_operator::api::Stack;
use common::stacks::{
    DEFAULT_ANNOTATION, REPOSITORIES, TIMEOUT, apply_as, config_map, namespace_with_store, service_account, stack,
    store, wait_for,
};
use common::{Operator, apply, eventually, setup_with_bucket};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

/// A namespace with ServiceAccount `runner`, store `ml` Ready and an operator resyncing every
/// `resync` (so the sweep runs at its start and then at that pace).
async fn prepared(test: &str, resync: &str) -> (Client, String, Operator) {
    let (client, ns, _) = namespace_with_store(test).await;
    let operator = Operator::start(&ns, resync);
    common::store::wait_for(&client, &ns, "ml", "Ready", "True", "Ready").await;
    (client, ns, operator)
}

async fn delete_now(client: &Client, ns: &str, name: &str) {
    let api: Api<Stack> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => panic!("deleting stack {name}: {error}"),
    }
}

/// Waits until no Stack of the namespace is left but `keep`.
async fn only_left(client: &Client, ns: &str, keep: &[&str]) {
    let api: Api<Stack> = Api::namespaced(client.clone(), ns);
    eventually(TIMEOUT, "the deleted Stacks to be gone", || async {
        let names: BTreeSet<String> = api
            .list_metadata(&ListParams::default())
            .await
            .unwrap()
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        (names == keep.iter().map(|k| k.to_string()).collect()).then_some(())
    })
    .await;
}

/// The keys of `artifact-repositories` and the Stack its default annotation names (none when
/// the ConfigMap is gone).
async fn repositories(client: &Client, ns: &str) -> (BTreeSet<String>, Option<String>) {
    let Some(shared) = config_map(client, ns, REPOSITORIES).await else { return (BTreeSet::new(), None) };
    let default = shared.metadata.annotations.unwrap_or_default().get(DEFAULT_ANNOTATION).cloned();
    (shared.data.unwrap_or_default().into_keys().collect(), default)
}

/// The names of the namespace's ConfigMaps and Secrets that the operator made for Stacks named
/// `prefix*`, until the garbage collector has removed those of deleted Stacks.
async fn owned_objects_of(client: &Client, ns: &str, prefix: &str) -> Vec<String> {
    let params = ListParams::default().labels("artifacts.dev/stack");
    let of_prefix = |meta: &kube::core::ObjectMeta| {
        let stack = meta.labels.as_ref().and_then(|l| l.get("artifacts.dev/stack")).cloned().unwrap_or_default();
        stack.starts_with(prefix).then(|| meta.name.clone().unwrap_or_default())
    };
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns).list_metadata(&params).await.unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), ns).list_metadata(&params).await.unwrap();
    config_maps
        .into_iter()
        .map(|o| o.metadata)
        .chain(secrets.into_iter().map(|o| o.metadata))
        .filter_map(|m| of_prefix(&m))
        .collect()
}

/// Waits out the reconciles still running for deleted Stacks, then checks what they left.
async fn assert_nothing_left(client: &Client, ns: &str, prefix: &str, what: &str) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (keys, default) = repositories(client, ns).await;
    let left: Vec<&String> = keys.iter().filter(|k| k.starts_with(prefix)).collect();
    println!("{what}: keys of deleted Stacks left in {REPOSITORIES}: {}, default annotation: {default:?}", left.len());
    assert!(left.is_empty(), "keys of deleted Stacks: {left:?}");
    assert!(!default.is_some_and(|d| d.starts_with(prefix)), "the default names a deleted Stack");
    let owned = eventually(TIMEOUT, "the deleted Stacks' own objects to be collected", || async {
        let owned = owned_objects_of(client, ns, prefix).await;
        owned.is_empty().then_some(owned)
    })
    .await;
    assert!(owned.is_empty());
}

#[tokio::test]
async fn a_stack_deleted_during_its_first_reconcile_leaves_nothing_behind() {
    // A long resync: only the race fix, not the sweep, can keep the ConfigMap clean here.
    let (client, ns, _operator) = prepared("stk-race", "10m").await;
    const RACES: usize = 40;
    for i in 0..RACES {
        let name = format!("race-{i}");
        apply(&client, &ns, stack(&name, "ml", json!(["Argo"]), true)).await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..400))).await;
        delete_now(&client, &ns, &name).await;
    }
    only_left(&client, &ns, &[]).await;
    assert_nothing_left(&client, &ns, "race-", &format!("after {RACES} create-delete races")).await;

    // The namespace default is free for the next Stack that asks.
    apply(&client, &ns, stack("after", "ml", json!(["Argo"]), true)).await;
    wait_for(&client, &ns, "after", "True", "Ready").await;
    assert_eq!(repositories(&client, &ns).await.1.as_deref(), Some("after"));
}

#[tokio::test]
async fn under_churn_no_key_of_a_deleted_stack_remains() {
    let (client, ns, _operator) = prepared("stk-churn", "10m").await;
    let keep = ["keep-0", "keep-1", "keep-2"];
    for name in keep {
        apply(&client, &ns, stack(name, "ml", json!(["Argo"]), false)).await;
    }
    const WORKERS: usize = 6;
    const CYCLES: usize = 20;
    let started = Instant::now();
    let workers = (0..WORKERS).map(|worker| {
        let (client, ns) = (client.clone(), ns.clone());
        tokio::spawn(async move {
            for cycle in 0..CYCLES {
                let name = format!("churn-{worker}-{cycle}");
                let formats = if cycle % 2 == 0 { json!(["Argo"]) } else { json!(["Argo", "KFP"]) };
                apply(&client, &ns, stack(&name, "ml", formats, worker == 0)).await;
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
                delete_now(&client, &ns, &name).await;
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker.unwrap();
    }
    let churned = started.elapsed();
    only_left(&client, &ns, &keep).await;
    println!(
        "churn: {} Stacks created and deleted in {:.1} s beside {} that stay",
        WORKERS * CYCLES,
        churned.as_secs_f64(),
        keep.len()
    );
    assert_nothing_left(&client, &ns, "churn-", "after churn").await;
    for name in keep {
        wait_for(&client, &ns, name, "True", "Ready").await;
    }
    let (keys, _) = repositories(&client, &ns).await;
    assert_eq!(keys, keep.iter().map(|k| k.to_string()).collect(), "the Stacks that stay keep their keys");
    assert!(config_map(&client, &ns, "kfp-launcher").await.is_none(), "no launcher of a deleted Stack");
}

#[tokio::test]
async fn what_deleted_stacks_left_is_swept_and_nothing_else() {
    let (client, ns, bucket) = setup_with_bucket("stk-sweep").await;
    apply(&client, &ns, service_account("runner")).await;
    apply(&client, &ns, store("ml", &bucket)).await;
    // Before the operator starts: the user's key, and the key and default that a Stack deleted
    // long ago left under its field manager.
    let users = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": REPOSITORIES},
                       "data": {"mine": "s3:\n  bucket: elsewhere\n"}});
    apply_as(&client, &ns, "kubectl", users).await;
    let ghost = json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": REPOSITORIES, "annotations": {DEFAULT_ANNOTATION: "ghost"}},
                       "data": {"ghost": "s3:\n  bucket: gone\n"}});
    apply_as(&client, &ns, "artifact-operator/stack/ghost", ghost).await;
    apply(&client, &ns, stack("alive", "ml", json!(["Argo"]), false)).await;

    let _operator = Operator::start(&ns, "3s");
    wait_for(&client, &ns, "alive", "True", "Ready").await;
    let swept = eventually(TIMEOUT, "the deleted Stack's key and default to be swept", || async {
        let (keys, default) = repositories(&client, &ns).await;
        (!keys.contains("ghost") && default.is_none()).then_some(keys)
    })
    .await;
    assert_eq!(swept, BTreeSet::from(["alive".to_owned(), "mine".to_owned()]), "the user's and the live Stack's stay");
    let shared = config_map(&client, &ns, REPOSITORIES).await.unwrap();
    assert_eq!(shared.data.unwrap()["mine"], "s3:\n  bucket: elsewhere\n");
    assert!(shared.metadata.labels.is_none(), "nothing of ours was added to the user's ConfigMap");

    // A leftover that turns up later (the ConfigMap's version changes) goes at the next resync.
    let late = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": REPOSITORIES},
                      "data": {"late": "s3:\n  bucket: gone\n"}});
    apply_as(&client, &ns, "artifact-operator/stack/late", late).await;
    eventually(TIMEOUT, "the late leftover to be swept at a resync", || async {
        (!repositories(&client, &ns).await.0.contains("late")).then_some(())
    })
    .await;

    // The default is free again for a Stack that asks.
    apply(&client, &ns, stack("next", "ml", json!(["Argo"]), true)).await;
    wait_for(&client, &ns, "next", "True", "Ready").await;
    assert_eq!(repositories(&client, &ns).await.1.as_deref(), Some("next"));
}
