//! `Stack.spec.zenml` end to end against the real ZenML server the test environment runs (PyPI's
//! `zenml[server]`, its own SQLite store): a Stack applied to the apiserver appears there, a real
//! ZenML client with no AWS keys runs a pipeline on it with the server's credentials, the
//! steady state writes nothing, a store change reaches the component, a same-named object of a
//! user is a conflict and never touched, deleting the Stack removes only what it made, and a
//! wrong API key is `ZenmlUnauthorized`.

mod common;

use std::time::Duration;

use artifact_operator::api::Stack;
use artifact_operator::zenml::{Sessions, ZenmlError};
use common::conditions::{self, Wanted, wait_for_condition};
use common::store::{apply_store, minio_spec};
use common::{Operator, apply, eventually, secret, setup_with_bucket, test_env};
use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);

/// A registry URI for the stack's container registry component (only ZenML reads it here).
const REGISTRY: &str = "10.0.0.5:5000/ml-images";

fn zenml_url() -> &'static str {
    test_env().var("AO_ZENML_URL")
}

fn stack(name: &str, zenml_stack: &str, key_secret: &str) -> Value {
    json!({"apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": {
        "artifactStoreRef": {"name": "ml"},
        "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"},
        "zenml": {"url": zenml_url(), "apiKeySecretRef": {"name": key_secret}, "stackName": zenml_stack},
    }})
}

/// The store `ml` over the limited MinIO user's keys, with `prefix` under `bucket`.
async fn store_at(client: &Client, ns: &str, bucket: &str, prefix: &str) {
    let mut spec = minio_spec(bucket, json!({}));
    spec["path"] = json!(format!("s3://{bucket}/{prefix}"));
    apply_store(client, ns, "ml", spec).await;
}

/// A namespace for `test` with the API key `key` in Secret `zenml-api-key`, ServiceAccount `runner`
/// and store `ml` at `s3://BUCKET/runs`; returns the client, the namespace and the bucket.
async fn prepare(test: &str, key: &str) -> (Client, String, String) {
    let (client, ns, bucket) = setup_with_bucket(test).await;
    secret(&client, &ns, "zenml-api-key", &[("api-key", key)]).await;
    apply(&client, &ns, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}})).await;
    store_at(&client, &ns, &bucket, "runs").await;
    (client, ns, bucket)
}

/// Waits for the Stack's condition `type_` to have `status` and `reason` for its generation.
async fn wait_for(client: &Client, ns: &str, name: &str, type_: &str, status: &str, reason: &str) -> Stack {
    wait_for_condition(client, ns, name, type_, Wanted::Is { status, reason }, TIMEOUT).await
}

/// GET `path` on the ZenML server as the service account of `key`.
async fn zenml_get(key: &str, path: &str) -> Result<Value, ZenmlError> {
    Sessions::default().server(zenml_url(), key).await?.get(path).await
}

async fn component(id: &str) -> Result<Value, ZenmlError> {
    zenml_get(test_env().var("AO_ZENML_API_KEY"), &format!("/api/v1/components/{id}")).await
}

/// The ZenML client (`tests/consumers/zenml_server.py`), as the other team's service account,
/// with nothing from this process's environment but the server's URL and that API key.
fn run_pipeline(zenml_stack: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consumers/zenml_server.py");
    common::zenml_client(std::path::Path::new(script), &[zenml_stack])
}

async fn zenml_writes(operator: &Operator) -> f64 {
    let mut total = 0.0;
    for verb in ["create", "update", "delete"] {
        total += operator.counter(&format!("artifact_operator_zenml_requests_total{{verb=\"{verb}\"}}")).await;
    }
    total
}

#[tokio::test]
async fn a_stack_appears_in_zenml_and_a_pipeline_runs_on_it_with_the_server_s_credentials() {
    let key = test_env().var("AO_ZENML_API_KEY");
    let (client, ns, bucket) = prepare("zenml-sync", key).await;
    let zenml_stack = format!("ao-{ns}");
    let operator = Operator::start(&ns, "3s");
    let mut declared = stack("prod", &zenml_stack, "zenml-api-key");
    declared["spec"]["orchestrator"]["containerRegistry"] = json!({"uri": REGISTRY});
    apply(&client, &ns, declared).await;

    let ready = wait_for(&client, &ns, "prod", "Ready", "True", "Ready").await;
    let synced = conditions::message(&ready, "ZenmlSynced");
    assert!(synced.contains(&zenml_stack) && !synced.contains("no container registry"), "{synced}");
    let record = ready.status.as_ref().unwrap().zenml.clone().expect("the status records what was made");
    assert!(ready.metadata.finalizers.iter().flatten().any(|f| f == "artifacts.dev/zenml"));

    // What the server holds: the stack with our two components, the artifact store with the path,
    // the endpoint and the secret that holds the keys, the orchestrator wired to the Stack's objects.
    let zenml = zenml_get(key, &format!("/api/v1/stacks/{}", record.stack_id.as_deref().unwrap())).await.unwrap();
    assert_eq!(zenml["name"], zenml_stack.as_str());
    let artifact_store = component(record.artifact_store_id.as_deref().unwrap()).await.unwrap();
    let configuration = &artifact_store["metadata"]["configuration"];
    assert_eq!(configuration["path"], format!("s3://{bucket}/runs"));
    assert_eq!(configuration["client_kwargs"]["endpoint_url"], test_env().var("AO_S3_ENDPOINT"));
    assert_eq!(configuration["authentication_secret"], format!("{zenml_stack}-s3-keys"));
    assert!(
        configuration.get("key").is_none_or(Value::is_null) && configuration.get("secret").is_none_or(Value::is_null)
    );
    let orchestrator = component(record.orchestrator_id.as_deref().unwrap()).await.unwrap();
    let orchestrator = &orchestrator["metadata"]["configuration"];
    assert_eq!(orchestrator["kubernetes_namespace"], ns.as_str());
    assert_eq!(orchestrator["service_account_name"], "runner");
    assert_eq!(orchestrator["pod_settings"]["env_from"][0]["configMapRef"]["name"], "prod-stack");
    assert_eq!(orchestrator["orchestrator_pod_settings"], orchestrator["pod_settings"], "the orchestrator pod's too");
    // The container registry ZenML's kubernetes orchestrator requires, listed in the stack.
    let registry_id = record.container_registry_id.clone().expect("the status records the registry");
    let registry = component(&registry_id).await.unwrap();
    assert_eq!(registry["body"]["flavor_name"], "default", "{registry}");
    assert_eq!(registry["metadata"]["configuration"]["uri"], REGISTRY);
    assert_eq!(zenml["metadata"]["components"]["container_registry"][0]["id"], registry_id.as_str());
    // No key in the operator's log, the Stack's status or its Events.
    let user_secret = test_env().var("AO_S3_USER_SECRET_KEY");
    assert!(!operator.log_text().contains(user_secret) && !operator.log_text().contains(key));
    assert!(!serde_json::to_string(&ready.status).unwrap().contains(user_secret));

    // Another team's ZenML client, with no AWS keys, finds the stack and runs a pipeline on its
    // artifact store; the artifacts land under the prefix in MinIO.
    let stdout = run_pipeline(&zenml_stack);
    assert!(stdout.contains(&format!("zenml: stack {zenml_stack}")), "{stdout}");
    assert!(stdout.contains("produce's output loaded back: True"), "{stdout}");
    let listed = common::s3_root().list_objects_v2().bucket(&bucket).prefix("runs/").send().await.unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert!(keys.len() >= 2, "the pipeline's artifacts are under runs/: {keys:?}");

    // Steady state: three resyncs look at the server and write nothing, there or in Kubernetes.
    let (writes, reads) =
        (zenml_writes(&operator).await, operator.counter("artifact_operator_zenml_requests_total{verb=\"get\"}").await);
    let updated = artifact_store["body"]["updated"].clone();
    let version = ready.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let later_reads = operator.counter("artifact_operator_zenml_requests_total{verb=\"get\"}").await;
    assert_eq!(zenml_writes(&operator).await, writes, "no ZenML writes in the steady state");
    assert!(later_reads > reads, "the resyncs looked at the server ({reads} → {later_reads} GETs)");
    println!("steady state: {} ZenML GETs in 10 s (resync 3 s), 0 writes", later_reads - reads);
    let now = component(record.artifact_store_id.as_deref().unwrap()).await.unwrap();
    assert_eq!(now["body"]["updated"], updated, "the component was not rewritten");
    let api: Api<Stack> = Api::namespaced(client.clone(), &ns);
    assert_eq!(api.get("prod").await.unwrap().metadata.resource_version, version, "no status write either");

    // The registry taken out of the spec: the stack no longer lists it, the component goes, and
    // the condition says what the stack now lacks.
    apply(&client, &ns, stack("prod", &zenml_stack, "zenml-api-key")).await;
    let without = eventually(TIMEOUT, "the registry to leave the stack", || async {
        let stack = api.get("prod").await.ok()?;
        let synced = conditions::message(&stack, "ZenmlSynced");
        (stack.status.as_ref()?.zenml.as_ref()?.container_registry_id.is_none()
            && synced.contains("no container registry"))
        .then_some(synced)
    })
    .await;
    assert!(without.contains("set spec.orchestrator.containerRegistry.uri"), "{without}");
    let zenml = zenml_get(key, &format!("/api/v1/stacks/{}", record.stack_id.as_deref().unwrap())).await.unwrap();
    assert!(zenml["metadata"]["components"].get("container_registry").is_none(), "{}", zenml["metadata"]);
    assert_eq!(component(&registry_id).await.err(), Some(ZenmlError::NotFound), "the registry component is removed");

    // A changed prefix reaches the component.
    store_at(&client, &ns, &bucket, "moved").await;
    eventually(TIMEOUT, "the component's path follows the store", || async {
        let now = component(record.artifact_store_id.as_deref().unwrap()).await.ok()?;
        (now["metadata"]["configuration"]["path"] == format!("s3://{bucket}/moved")).then_some(())
    })
    .await;

    // Deleting the Stack removes what it made, and only that.
    api.delete("prod", &DeleteParams::default()).await.unwrap();
    eventually(TIMEOUT, "the Stack to be gone", || async {
        api.get_opt("prod").await.unwrap().is_none().then_some(())
    })
    .await;
    for id in [&record.stack_id, &record.artifact_store_id, &record.orchestrator_id] {
        let path = match id == &record.stack_id {
            true => format!("/api/v1/stacks/{}", id.as_deref().unwrap()),
            false => format!("/api/v1/components/{}", id.as_deref().unwrap()),
        };
        assert_eq!(zenml_get(key, &path).await.err(), Some(ZenmlError::NotFound), "{path} is removed");
    }
    let secret_path = format!("/api/v1/secrets/{}", record.secret_id.as_deref().unwrap());
    assert_eq!(zenml_get(key, &secret_path).await.err(), Some(ZenmlError::NotFound), "the secret is removed");
}

#[tokio::test]
async fn a_user_s_same_named_component_is_a_conflict_and_survives_the_stack() {
    let key = test_env().var("AO_ZENML_API_KEY");
    let (client, ns, bucket) = prepare("zenml-clash", key).await;
    // Another team made an artifact store component by hand, under the name the Stack would use.
    let zenml_stack = format!("hand-{ns}");
    let other = Sessions::default();
    let other = other.server(zenml_url(), test_env().var("AO_ZENML_OTHER_API_KEY")).await.unwrap();
    let by_hand = other
        .post(
            "/api/v1/components",
            &json!({"name": zenml_stack, "type": "artifact_store", "flavor": "s3",
                    "configuration": {"path": format!("s3://{bucket}/theirs")}}),
            false,
        )
        .await
        .unwrap();
    let by_hand_id = by_hand["id"].as_str().unwrap().to_owned();

    let _operator = Operator::start(&ns, "10m");
    apply(&client, &ns, stack("prod", &zenml_stack, "zenml-api-key")).await;
    let stack = wait_for(&client, &ns, "prod", "ZenmlSynced", "False", "ZenmlNameConflict").await;
    let message = conditions::message(&stack, "ZenmlSynced");
    assert!(message.contains(&zenml_stack) && message.contains("did not make"), "{message}");
    assert_eq!(conditions::message(&stack, "Ready"), message, "Ready says the same");

    let api: Api<Stack> = Api::namespaced(client.clone(), &ns);
    api.delete("prod", &DeleteParams::default()).await.unwrap();
    eventually(TIMEOUT, "the Stack to be gone", || async {
        api.get_opt("prod").await.unwrap().is_none().then_some(())
    })
    .await;
    let kept = component(&by_hand_id).await.expect("the user's component is still there");
    assert_eq!(kept["metadata"]["configuration"]["path"], format!("s3://{bucket}/theirs"), "and unchanged");
    other.delete(&format!("/api/v1/components/{by_hand_id}")).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_a_wrong_key_and_a_missing_project_each_say_what_to_fix() {
    let wrong = "ZENKEY_eyJpZCI6ICI1YjBkMmYwZS02ZjZiLTRjNTktOWE0My0xZjFkMWE3YjJjM2QiLCAia2V5IjogIm5vdC10aGUta2V5In0=";
    let (client, ns, _) = prepare("zenml-key", wrong).await;
    let operator = Operator::start(&ns, "10m");
    let zenml_stack = format!("key-{ns}");

    // Nothing listens there: an outage, retried.
    let mut declared = stack("prod", &zenml_stack, "zenml-api-key");
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    declared["spec"]["zenml"]["url"] = json!(closed);
    apply(&client, &ns, declared.clone()).await;
    let stack = wait_for(&client, &ns, "prod", "Ready", "False", "ZenmlUnreachable").await;
    assert!(conditions::message(&stack, "Ready").contains(&closed));

    // The server, with a key it does not know.
    declared["spec"]["zenml"]["url"] = json!(zenml_url());
    apply(&client, &ns, declared.clone()).await;
    let stack = wait_for(&client, &ns, "prod", "Ready", "False", "ZenmlUnauthorized").await;
    let message = conditions::message(&stack, "Ready");
    assert!(message.contains(zenml_url()) && !message.contains(wrong), "{message}");
    assert!(!operator.log_text().contains(wrong), "the key stays out of the log");
    assert!(!operator.log_text().contains("panicked"));

    // The right key in the Secret (its change wakes the Stack), but a project the server lacks.
    declared["spec"]["zenml"]["project"] = json!("no-such-project");
    apply(&client, &ns, declared.clone()).await;
    secret(&client, &ns, "zenml-api-key", &[("api-key", test_env().var("AO_ZENML_API_KEY"))]).await;
    let stack = wait_for(&client, &ns, "prod", "Ready", "False", "ZenmlProjectNotFound").await;
    assert!(conditions::message(&stack, "Ready").contains("no-such-project"));

    // The default project: synced.
    declared["spec"]["zenml"].as_object_mut().unwrap().remove("project");
    apply(&client, &ns, declared).await;
    let stack = wait_for(&client, &ns, "prod", "ZenmlSynced", "True", "ZenmlSynced").await;
    assert!(stack.status.unwrap().zenml.unwrap().stack_id.is_some());

    // Removing spec.zenml removes the ZenML objects and the finalizer, and keeps the Stack.
    let mut plain = crate::stack("prod", "unused", "zenml-api-key");
    plain["spec"].as_object_mut().unwrap().remove("zenml");
    apply(&client, &ns, plain).await;
    let api: Api<Stack> = Api::namespaced(client.clone(), &ns);
    let stack = eventually(TIMEOUT, "spec.zenml's objects removed", || async {
        let stack = api.get("prod").await.unwrap();
        let status = stack.status.clone()?;
        let gone = status.zenml.is_none()
            && conditions::find(&stack, "ZenmlSynced").is_none()
            && !stack.metadata.finalizers.iter().flatten().any(|f| f == "artifacts.dev/zenml");
        gone.then_some(stack)
    })
    .await;
    assert!(conditions::is_true(&stack, "Ready"));
}

#[tokio::test]
async fn deleting_the_namespace_removes_the_stack_s_zenml_objects_though_its_api_key_goes_too() {
    let key = test_env().var("AO_ZENML_API_KEY");
    let (client, ns, _) = prepare("zenml-ns", key).await;
    let _operator = Operator::start(&ns, "10m");
    apply(&client, &ns, stack("prod", &format!("ns-{ns}"), "zenml-api-key")).await;
    let stack = wait_for(&client, &ns, "prod", "ZenmlSynced", "True", "ZenmlSynced").await;
    let record = stack.status.unwrap().zenml.unwrap();

    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
    let stack_path = format!("/api/v1/stacks/{}", record.stack_id.as_deref().unwrap());
    eventually(TIMEOUT, "the ZenML stack to be removed", || async {
        (zenml_get(key, &stack_path).await.err() == Some(ZenmlError::NotFound)).then_some(())
    })
    .await;
    for id in [&record.artifact_store_id, &record.orchestrator_id] {
        assert_eq!(component(id.as_deref().unwrap()).await.err(), Some(ZenmlError::NotFound));
    }
}
