//! Bulkheads between external servers: forty Stacks whose ZenML server accepts connections and
//! never answers keep at most their server's share of the reconcile workers waiting, so a Stack
//! of another namespace (and one of theirs, which shares their workers) turns Ready about as fast
//! as alone, and each of the forty gets a Ready condition that names the silent server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use artifact_operator::api::Stack;
use common::conditions::{find, status_reason_message};
use common::store::{apply_store, minio_spec};
use common::{Operator, apply, eventually, secret, setup_with_bucket, test_env};
use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

/// Stacks naming the silent server.
const SILENT_STACKS: usize = 40;
/// The Stack controller's workers (`--concurrency`'s default) and the share one server may keep
/// waiting: a quarter.
const WORKERS: usize = 16;
const SHARE: usize = WORKERS / 4;

/// A server that accepts TCP connections, reads what comes and never answers; it counts the
/// connections open at once.
struct Silent {
    url: String,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

async fn silent_server() -> Silent {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (open, peak, accepted) = (Arc::default(), Arc::default(), Arc::default());
    let counters = (Arc::clone(&open), Arc::clone(&peak), Arc::clone(&accepted));
    tokio::spawn(async move {
        let (open, peak, accepted): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) = counters;
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            accepted.fetch_add(1, Ordering::SeqCst);
            peak.fetch_max(open.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            let open = open.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Silent { url, open, peak, accepted }
}

/// A Stack of store `ml` run as ServiceAccount `runner`, with ZenML at `zenml_url` if given.
fn stack(name: &str, zenml_url: Option<&str>) -> Value {
    let mut stack = json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": {
        "artifactStoreRef": {"name": "ml"},
        "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"},
    }});
    if let Some(url) = zenml_url {
        stack["spec"]["zenml"] = json!({"url": url, "apiKeySecretRef": {"name": "zenml-api-key"}});
    }
    stack
}

/// A namespace with the ServiceAccount `runner`, the ZenML key Secret and store `ml` (not yet
/// Ready: see [`store_ready`]).
async fn prepare(test: &str) -> (Client, String) {
    let (client, ns, bucket) = setup_with_bucket(test).await;
    secret(&client, &ns, "zenml-api-key", &[("api-key", test_env().var("AO_ZENML_API_KEY"))]).await;
    apply(&client, &ns, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}})).await;
    apply_store(&client, &ns, "ml", minio_spec(&bucket, json!({}))).await;
    (client, ns)
}

async fn store_ready(client: &Client, ns: &str) {
    common::store::wait_for(client, ns, "ml", "Ready", "True", "Ready").await;
}

/// The Stack's Ready condition as (status, reason, message), for its generation.
fn ready(stack: &Stack) -> Option<(String, String, String)> {
    let condition = find(stack, "Ready")?;
    (condition.observed_generation == stack.metadata.generation).then(|| status_reason_message(stack, "Ready").unwrap())
}

/// Applies the Stack `name` (no ZenML) and returns how long it took to turn Ready.
async fn ready_after_apply(client: &Client, ns: &str, name: &str) -> Duration {
    let api: Api<Stack> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    apply(client, ns, stack(name, None)).await;
    let is_ready = |stack: Option<&Stack>| stack.and_then(ready).is_some_and(|(status, _, _)| status == "True");
    tokio::time::timeout(Duration::from_secs(120), kube::runtime::wait::await_condition(api, name, is_ready))
        .await
        .unwrap_or_else(|_| panic!("stack {ns}/{name} did not turn Ready within 120 s"))
        .unwrap();
    started.elapsed()
}

#[tokio::test]
async fn forty_stacks_on_a_silent_server_hold_back_no_other_stack_and_each_says_so() {
    let silent = silent_server().await;
    let (client, busy) = prepare("bulkhead-silent").await;
    let (_, other) = prepare("bulkhead-other").await;
    let _operator = Operator::start(&format!("{busy},{other}"), "10m");
    store_ready(&client, &busy).await;
    store_ready(&client, &other).await;

    // Alone: what a Stack's own reconcile takes, in each namespace.
    let alone_other = ready_after_apply(&client, &other, "alone").await;
    let alone_same = ready_after_apply(&client, &busy, "alone").await;
    println!("other namespace Ready in {:.2} s alone", alone_other.as_secs_f64());
    println!("silent server's namespace Ready in {:.2} s alone", alone_same.as_secs_f64());

    // Forty Stacks name the silent server, at once.
    let applied = Instant::now();
    futures::future::join_all(
        (0..SILENT_STACKS).map(|n| apply(&client, &busy, stack(&format!("silent-{n:02}"), Some(&silent.url)))),
    )
    .await;
    eventually(Duration::from_secs(60), "the operator to wait on the silent server", || async {
        (silent.open.load(Ordering::SeqCst) >= SHARE).then_some(())
    })
    .await;

    // Now a Stack of another namespace, and one beside the forty (which share their workers).
    let (with_other, with_same) =
        tokio::join!(ready_after_apply(&client, &other, "other"), ready_after_apply(&client, &busy, "neighbour"));
    println!("other namespace Ready in {:.2} s with 40 silent-server Stacks", with_other.as_secs_f64());
    println!("silent server's namespace Ready in {:.2} s with 40 silent-server Stacks", with_same.as_secs_f64());

    // Each of the forty says that the server did not answer, and names it.
    let api: Api<Stack> = Api::namespaced(client.clone(), &busy);
    let said = eventually(Duration::from_secs(90), "a Ready condition on each of the forty", || async {
        let mut said = Vec::new();
        for n in 0..SILENT_STACKS {
            let stack = api.get(&format!("silent-{n:02}")).await.unwrap();
            said.push(ready(&stack)?);
        }
        Some(said)
    })
    .await;
    let conditioned = applied.elapsed();
    println!(
        "all {SILENT_STACKS} silent-server Stacks had a Ready condition {:.1} s after they were applied",
        conditioned.as_secs_f64()
    );
    let (peak, accepted) = (silent.peak.load(Ordering::SeqCst), silent.accepted.load(Ordering::SeqCst));
    println!("the silent server held at most {peak} connections at once ({accepted} in all)");
    for (status, reason, message) in &said {
        assert_eq!((status.as_str(), reason.as_str()), ("False", "ZenmlUnreachable"), "{message}");
        assert!(message.contains(&silent.url), "the message names the server: {message}");
    }
    let examples: std::collections::BTreeSet<&str> = said.iter().map(|(_, _, m)| m.as_str()).collect();
    println!("their messages: {examples:#?}");

    // The bounds: a Stack elsewhere waits about its own reconcile; the forty keep at most their
    // share of the workers on the server and have their condition within the call's timeout (15 s).
    let bound = |alone: Duration| alone + Duration::from_secs(2);
    assert!(with_other <= bound(alone_other), "other namespace: {with_other:?} (alone {alone_other:?})");
    assert!(with_same <= bound(alone_same), "the forty's namespace: {with_same:?} (alone {alone_same:?})");
    assert!(peak <= SHARE, "{peak} calls waited on the silent server at once; the share is {SHARE} of {WORKERS}");
    assert!(conditioned <= Duration::from_secs(35), "{conditioned:?}");

    // The forty go (with nothing made in ZenML, nothing to remove there).
    for n in 0..SILENT_STACKS {
        api.delete(&format!("silent-{n:02}"), &DeleteParams::default()).await.unwrap();
    }
    eventually(Duration::from_secs(60), "the forty to be gone", || async {
        let left = api.list(&Default::default()).await.unwrap();
        left.items.iter().all(|s| s.spec.zenml.is_none()).then_some(())
    })
    .await;
}
