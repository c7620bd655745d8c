//! Argo Workflows on the real node, consuming Stacks: the workflow-controller and argoexec built
//! from the pinned Argo module (tests/env/argo, `tests/env/build.sh go`), installed as Argo's
//! namespace install does it (its CRDs, its RBAC and its Deployment, read from the module, with
//! `--namespaced`), the executor image named by `workflow-controller-configmap`, and workflows
//! whose first step writes an output artifact and whose second step reads it as an input
//! artifact, their pods on the node (tests/env/node-up.sh) reaching MinIO through the gateway:
//!
//! - (a) no `artifactRepositoryRef`: the namespace default of a Stack with `argoDefaultRepository`;
//! - (b) `artifactRepositoryRef` to a second Stack's key;
//! - (c) the HTTPS MinIO with its private CA, through the rendered `caSecret`;
//! - (d) a Stack with `credentials.mode: Scoped` (session keys from MinIO's STS).
//!
//! Case (d) across a renewal, a write step that saves after the first session credentials expired,
//! is in tests/credential_renewal.rs, beside the other test that waits through their lifetime.
//!
//! Each case asserts that the object landed under its Stack's prefix, that the second step read
//! the same bytes, and that nothing but the Stack's rendering configured the repository.
//!
//! Needs root for the node, the Argo binaries and Debian's busybox-static (`tests/env/build.sh go`
//! and `build.sh node`).

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

use common::argo::{
    Case, check_case, controller_leads, controller_log, images, install_argo, payload, stack, stack_ready, store,
    workflow, workflows,
};
use common::{Operator, s3_root};

#[tokio::test]
async fn argo_workflows_on_the_node_save_and_load_artifacts_through_stacks() {
    let started = Instant::now();
    let node = common::node();
    println!("node up: {:.1}s", started.elapsed().as_secs_f64());
    let images_built = Instant::now();
    let images = images();
    println!("images built and imported: {:.1}s", images_built.elapsed().as_secs_f64());

    let (client, ns) = common::setup("argo-node").await;
    let _controller = install_argo(&client, &ns, &node, &images).await;

    // The stores: two buckets on the plain MinIO, one on the HTTPS MinIO with its private CA, all
    // at the addresses the pods reach (the gateway's relays), which this host reaches too.
    common::user_keys_secret(&client, &ns, "minio-keys").await;
    common::store::private_ca_config_map(&client, &ns, "s3-ca").await;
    let (first, second, secure) =
        (common::limited_bucket("argo-a"), common::limited_bucket("argo-b"), common::limited_bucket("argo-tls"));
    let plain = json!({"url": node["AO_POD_S3_ENDPOINT"], "addressingStyle": "Path"});
    let tls = json!({"url": node["AO_POD_S3_TLS_ENDPOINT"], "addressingStyle": "Path", "tls": {"caBundle": {"name": "s3-ca"}}});
    common::apply(&client, &ns, store("ml", &format!("s3://{first}/pipelines"), plain.clone())).await;
    common::apply(&client, &ns, store("other", &format!("s3://{second}/second"), plain)).await;
    common::apply(&client, &ns, store("secure-store", &format!("s3://{secure}/tls"), tls)).await;
    common::apply(&client, &ns, stack("prod", "ml", true, None)).await;
    common::apply(&client, &ns, stack("second", "other", false, None)).await;
    common::apply(&client, &ns, stack("secure", "secure-store", false, None)).await;
    let scoped = json!({"mode": "Scoped", "prefix": "scoped", "duration": "15m"});
    common::apply(&client, &ns, stack("scoped", "ml", false, Some(scoped))).await;
    let _operator = Operator::start(&ns, "1m");

    let holder = controller_leads(&client, &ns).await;
    println!("workflow-controller {holder} leads: {:.1}s", started.elapsed().as_secs_f64());
    for name in ["prod", "second", "secure", "scoped"] {
        stack_ready(&client, &ns, name).await;
    }
    println!("Stacks Ready: {:.1}s", started.elapsed().as_secs_f64());

    // Nothing but the Stacks configures a repository: the controller's ConfigMap has none.
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("workflow-controller-configmap").await.unwrap();
    let keys: Vec<&String> = config.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["executor"], "the controller's configuration names no artifact repository");
    let repositories = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("artifact-repositories").await.unwrap();
    let rendered = repositories.data.unwrap();
    let secure_repository: Value = serde_yaml_ng::from_str(&rendered["secure"]).unwrap();
    assert_eq!(secure_repository["s3"]["caSecret"]["name"], "secure-ca-bundle", "{secure_repository}");
    let scoped_repository: Value = serde_yaml_ng::from_str(&rendered["scoped"]).unwrap();
    assert_eq!(
        scoped_repository["s3"]["sessionTokenSecret"]["name"], "scoped-scoped-credentials",
        "{scoped_repository}"
    );
    assert_eq!(scoped_repository["s3"]["keyFormat"], "pipelines/scoped/{{workflow.name}}/{{pod.name}}");

    let cases = [
        ("a", "prod", None, first.clone(), "pipelines", s3_root()),
        ("b", "second", Some("second"), second, "second", s3_root()),
        ("c", "secure", Some("secure"), secure, "tls", common::s3_root_tls()),
        ("d", "scoped", Some("scoped"), first, "pipelines/scoped", s3_root()),
    ];
    let cases: Vec<Case> = cases
        .into_iter()
        .map(|(label, stack, reference, bucket, prefix, s3)| Case {
            label,
            stack,
            reference,
            workflow: format!("case-{label}-{stack}"),
            payload: payload(label),
            bucket,
            prefix: prefix.to_owned(),
            rendered: serde_yaml_ng::from_str(&rendered[stack]).unwrap(),
            s3,
        })
        .collect();
    let submitted = Instant::now();
    for case in &cases {
        let object = workflow(&case.workflow, case.reference, &images.step, &case.payload);
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        workflows(&client, &ns).create(&PostParams::default(), &object).await.unwrap();
    }
    let mut failures = Vec::new();
    for case in &cases {
        match check_case(&client, &ns, case, Duration::from_secs(300)).await {
            Ok(line) => println!("{line}"),
            Err(error) => {
                println!("argo case ({}) workflow {ns}/{} FAILED: {error}", case.label, case.workflow);
                failures.push(format!("({}) {}", case.label, error.lines().next().unwrap_or_default()));
            }
        }
    }
    println!(
        "workflows done: {:.1}s after submission; whole test {:.1}s",
        submitted.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        println!("{}", controller_log(&client, &ns).await);
    }
    assert!(failures.is_empty(), "cases failed: {failures:?}");
}
