//! Proof from inside (`spec.verification.inPod`): `artifact-operator check` runs as a short Job in
//! the Stack's namespace, as the orchestrator's ServiceAccount, with the Stack's ConfigMap (and the
//! store's credentials Secret) as a workload pod gets them, and its outcome (read back from the
//! pod's termination message) becomes the `WorkloadAccessVerified` condition. The check runs again
//! only when its inputs change; the Job is deleted once read.
//!
//! Building the Job and reading its verdict are pure; [`verify`] does the I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
    SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams, PropagationPolicy};

use super::build::pod_wiring;
use super::resolved::ResolvedStack;
use crate::api::stack::StackStatus;
use crate::check::{Outcome, Step};
use crate::conditions::{self, WORKLOAD_ACCESS_VERIFIED};
use crate::controller::Context;
use crate::controller::Error;
use crate::reason::{Failure, Reason};
use crate::resolve::ResolvedStore;

/// How long the check's pod may take, from scheduling to exit (an image that cannot be pulled
/// fails the Job after this).
pub const CHECK_DEADLINE_SECONDS: i64 = 120;
/// The label that marks the Jobs (and their pods) of a Stack's check.
const CHECK_LABEL: &str = "artifacts.dev/check";

/// What the check says about the Stack's pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The check passed: the message says who can do what where.
    Proven(String),
    /// The check's Job runs (or was just created).
    Running(String),
    Failed(Failure),
}

/// What the check runs with: the Stack's spec (its generation), the published ConfigMap's
/// content, the ServiceAccount, the credentials Secret and the image. A change of any of them runs
/// it again. Pure.
pub fn inputs(stack: &ResolvedStack, store: &ResolvedStore, config_map_hash: &str, image: &str) -> String {
    let credentials = store.auth.consumer_secret().unwrap_or_default();
    let parts = BTreeMap::from([
        ("generation".to_owned(), stack.generation.to_string()),
        ("configMap".to_owned(), config_map_hash.to_owned()),
        ("serviceAccount".to_owned(), stack.service_account.clone()),
        ("credentials".to_owned(), credentials.to_owned()),
        ("image".to_owned(), image.to_owned()),
    ]);
    crate::render::content_hash(&parts)
}

/// The Job's name for `inputs`: the Stack's name (cut so the whole stays a valid label value,
/// which the Job controller puts on its pods) and a piece of the hash.
pub fn job_name(stack: &str, inputs: &str) -> String {
    let stack: String = stack.chars().take(63 - "-check-".len() - 10).collect();
    format!("{}-check-{}", stack.trim_end_matches(['-', '.']), &inputs[..10])
}

/// The check's Job. Pure.
pub fn job(stack: &ResolvedStack, store: &ResolvedStore, inputs: &str, image: &str) -> Job {
    let name = stack.name();
    let mut meta = stack.owner.owned_meta("stack", job_name(name, inputs));
    meta.labels.get_or_insert_with(BTreeMap::new).insert(CHECK_LABEL.to_owned(), name.to_owned());
    let wiring = pod_wiring(name, store);
    let container = Container {
        name: "check".to_owned(),
        image: Some(image.to_owned()),
        args: Some(vec!["check".to_owned()]),
        env_from: Some(wiring.env_from),
        volume_mounts: Some(wiring.volume_mounts),
        termination_message_policy: Some("File".to_owned()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("10m".to_owned())),
                ("memory".to_owned(), Quantity("32Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("128Mi".to_owned()))])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Capabilities::default() }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let pod = PodSpec {
        service_account_name: Some(stack.service_account.clone()),
        restart_policy: Some("Never".to_owned()),
        containers: vec![container],
        volumes: Some(wiring.volumes),
        // Pod Security Standard "restricted", as the operator's own pod.
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..SeccompProfile::default() }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };
    Job {
        metadata: meta.clone(),
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(CHECK_DEADLINE_SECONDS),
            // A backstop: the operator deletes the Job once it has read the outcome.
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: meta.labels, ..ObjectMeta::default() }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// The verdict of a finished Job from its pods, or None while it runs. Pure.
pub fn verdict(job: &Job, pods: &[Pod], account: &str) -> Option<Verdict> {
    let status = job.status.as_ref()?;
    let finished = |type_: &str| {
        status.conditions.iter().flatten().find(|c| c.type_ == type_ && c.status == "True").map(|c| c.message.clone())
    };
    let complete = finished("Complete").is_some();
    let failed = finished("Failed");
    if !complete && failed.is_none() {
        return None;
    }
    let containers = pods.iter().filter_map(|p| p.status.as_ref()).flat_map(|s| s.container_statuses.iter().flatten());
    let outcome = containers.clone().find_map(|c| {
        let terminated = c.state.as_ref()?.terminated.as_ref()?;
        Outcome::parse(terminated.message.as_deref()?)
    });
    let job_name = job.name_any();
    Some(match (outcome, complete) {
        (Some(outcome), _) if outcome.step.is_none() => {
            Verdict::Proven(format!("a pod running as {account} proved: {}", outcome.message))
        }
        (None, true) => Verdict::Proven(format!("Job {job_name} running as {account} passed the check")),
        (Some(outcome), _) => {
            let reason = Reason::parse(&outcome.reason)
                .filter(|r| r.appears_on(crate::reason::Kind::Stack, WORKLOAD_ACCESS_VERIFIED))
                .unwrap_or(Reason::WorkloadCheckFailed);
            let step = outcome.step.map(Step::as_str).unwrap_or("check");
            Verdict::Failed(Failure::new(
                reason,
                format!("a pod running as {account} failed the check at {step}: {}", outcome.message),
            ))
        }
        (None, false) => {
            // The check never ran to its end: say what stopped the pod, if a container says.
            let waiting = containers
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                .find_map(|w| Some(format!("{}: {}", w.reason.as_deref()?, w.message.as_deref().unwrap_or_default())));
            let why = waiting.or(failed.flatten()).unwrap_or_else(|| "no outcome".to_owned());
            Verdict::Failed(Failure::new(
                Reason::WorkloadCheckFailed,
                format!(
                    "Job {job_name} (the check, as {account}) failed without an outcome ({why}); look at its pod's events: the image, the ServiceAccount, the volumes"
                ),
            ))
        }
    })
}

/// The verdict the status already records for `inputs`, if final: nothing to run again.
fn recorded(status: Option<&StackStatus>, inputs: &str) -> Option<Verdict> {
    let status = status?;
    if status.workload_check.as_deref() != Some(inputs) {
        return None;
    }
    let condition = conditions::find(&status.conditions, WORKLOAD_ACCESS_VERIFIED)?;
    let reason = Reason::parse(&condition.reason)?;
    match condition.status.as_str() {
        "True" => Some(Verdict::Proven(condition.message.to_string())),
        "False" if !reason.is_transient() => Some(Verdict::Failed(Failure::new(reason, condition.message.to_string()))),
        _ => None,
    }
}

/// Runs the check for `inputs` or reads its result: the recorded verdict when final, else the
/// Job's (created when missing, deleted once read).
/// (`status`: the Stack's, as last written.)
pub async fn verify(
    ctx: &Context,
    stack: &ResolvedStack,
    status: Option<&StackStatus>,
    store: &ResolvedStore,
    inputs: &str,
) -> Result<Verdict, Error> {
    if let Some(verdict) = recorded(status, inputs) {
        return Ok(verdict);
    }
    let account = &stack.service_account;
    let Some(image) = ctx.settings.check_image.as_deref() else {
        return Ok(Verdict::Failed(Failure::new(
            Reason::WorkloadCheckFailed,
            "the operator runs without --check-image, so it cannot start the check: set it (the chart sets its own image), or remove verification.inPod",
        )));
    };
    let namespace = stack.namespace();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let name = job_name(stack.name(), inputs);
    let Some(job) = jobs.get_opt(&name).await.map_err(Error::Dereference)? else {
        let wanted = self::job(stack, store, inputs, image);
        match jobs.create(&PostParams::default(), &wanted).await {
            Ok(_) => {}
            // An older Job of that name is still going away: wait for it.
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(error) => return Err(Error::Publish(error)),
        }
        return Ok(Verdict::Running(format!("the check runs as Job {name}, as ServiceAccount {account}")));
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Verdict::Running(format!("waiting for the previous check Job {name} to go")));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("job-name={name}");
    let pods = pods.list(&ListParams::default().labels(&selector)).await.map_err(Error::Dereference)?;
    let Some(verdict) = verdict(&job, &pods.items, account) else {
        return Ok(Verdict::Running(format!("the check runs as Job {name}, as ServiceAccount {account}")));
    };
    let delete = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() };
    match jobs.delete(&name, &delete).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(error) => return Err(Error::Publish(error)),
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use crate::resolve::CONFIG_MOUNT_PATH;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use serde_json::json;

    use super::*;
    use crate::controller::fixtures::{ApiServerVerifier, test_context_with_check_image};

    fn stack() -> ResolvedStack {
        ResolvedStack::of(&crate::controller::fixtures::stack(
            "ml",
            "s-1",
            json!({"artifactStoreRef": {"name": "store"},
            "orchestrator": {"type": "Kubernetes", "serviceAccountName": "runner"}, "verification": {"inPod": true}}),
        ))
        .expect("a valid Stack")
    }

    fn store(auth: serde_json::Value) -> ResolvedStore {
        crate::resolve::test_store_named("store", json!({"path": "s3://bucket/team", "auth": auth}), "us-east-1", false)
    }

    fn finished(type_: &str) -> Job {
        Job {
            metadata: ObjectMeta { name: Some("prod-check-0123456789".into()), ..ObjectMeta::default() },
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: type_.into(),
                    status: "True".into(),
                    message: Some("Job has reached the specified backoff limit".into()),
                    ..JobCondition::default()
                }]),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    fn pod(state: ContainerState) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "check".into(),
                    state: Some(state),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn exited(message: &str) -> Pod {
        pod(ContainerState {
            terminated: Some(ContainerStateTerminated { message: Some(message.into()), ..Default::default() }),
            ..Default::default()
        })
    }

    #[test]
    fn the_job_runs_the_check_as_the_stack_pods_would_run() {
        let keys = store(json!({"secretRef": {"name": "keys"}}));
        let job = job(&stack(), &keys, &"a".repeat(64), "registry/artifact-operator:1");
        let value = serde_json::to_value(&job).unwrap();
        let pod = &value["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "runner");
        assert_eq!(pod["containers"][0]["args"], json!(["check"]));
        assert_eq!(
            pod["containers"][0]["envFrom"],
            json!([{"configMapRef": {"name": "prod-stack", "optional": false}}, {"secretRef": {"name": "store-aws-credentials", "optional": false}}])
        );
        assert_eq!(pod["containers"][0]["volumeMounts"][0]["mountPath"], CONFIG_MOUNT_PATH);
        assert_eq!(value["spec"]["backoffLimit"], 0);
        assert_eq!(value["metadata"]["ownerReferences"][0]["kind"], "Stack");
        let implicit = self::job(&stack(), &store(json!({"implicit": {}})), &"a".repeat(64), "image");
        let env_from =
            serde_json::to_value(&implicit).unwrap()["spec"]["template"]["spec"]["containers"][0]["envFrom"].clone();
        assert_eq!(env_from.as_array().unwrap().len(), 1, "implicit auth: no keys, the pod's own identity");
    }

    #[test]
    fn job_names_stay_valid_labels_and_follow_the_inputs() {
        let long = "s".repeat(253);
        let name = job_name(&long, &"b".repeat(64));
        assert!(name.len() <= 63 && name.ends_with("-check-bbbbbbbbbb"), "{name}");
        let keys = store(json!({"secretRef": {"name": "keys"}}));
        assert_ne!(inputs(&stack(), &keys, "h1", "image"), inputs(&stack(), &keys, "h2", "image"));
        assert_ne!(inputs(&stack(), &keys, "h1", "image:1"), inputs(&stack(), &keys, "h1", "image:2"));
    }

    #[test]
    fn the_verdict_comes_from_the_pods_termination_message() {
        assert_eq!(verdict(&Job::default(), &[], "runner"), None, "a Job without status runs");
        let passed = exited(r#"{"reason":"Verified","message":"keys can write"}"#);
        assert!(
            matches!(verdict(&finished("Complete"), &[passed], "runner"), Some(Verdict::Proven(m)) if m.contains("keys can write"))
        );
        let denied = exited(r#"{"step":"write","reason":"AccessDenied","message":"access denied"}"#);
        let Some(Verdict::Failed(failure)) = verdict(&finished("Failed"), &[denied], "runner") else { panic!() };
        assert_eq!(failure.reason, Reason::AccessDenied);
        assert!(failure.message.contains("at write") && failure.message.contains("runner"), "{}", failure.message);
        let unknown = exited(r#"{"step":"read","reason":"SomethingNew","message":"?"}"#);
        let Some(Verdict::Failed(failure)) = verdict(&finished("Failed"), &[unknown], "runner") else { panic!() };
        assert_eq!(failure.reason, Reason::WorkloadCheckFailed);
    }

    const JOBS: &str = "/apis/batch/v1/namespaces/ml/jobs";

    fn keys_store() -> ResolvedStore {
        store(json!({"secretRef": {"name": "keys"}}))
    }

    #[tokio::test]
    async fn a_recorded_outcome_asks_nothing_of_the_apiserver() {
        use crate::api::Condition;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let (ctx, mut api) = test_context_with_check_image(Some("image:1"));
        let stack = stack();
        let inputs = inputs(&stack, &keys_store(), "hash", "image:1");
        let status = Some(crate::api::stack::StackStatus {
            workload_check: Some(inputs.clone()),
            conditions: vec![Condition {
                type_: WORKLOAD_ACCESS_VERIFIED.into(),
                status: "True".into(),
                reason: "Verified".into(),
                message: "proven".into(),
                observed_generation: None,
                last_transition_time: Time(jiff::Timestamp::now()),
            }],
            ..Default::default()
        });
        let verdict = verify(&ctx, &stack, status.as_ref(), &keys_store(), &inputs).await.unwrap();
        assert_eq!(verdict, Verdict::Proven("proven".into()));
        api.no_more_requests().await;
    }

    /// A check of new inputs with the image `image:1`, under way in a task: the API's handle, the
    /// check's Job name and the task that returns its verdict.
    fn first_check() -> (ApiServerVerifier, String, tokio::task::JoinHandle<Verdict>) {
        let (ctx, api) = test_context_with_check_image(Some("image:1"));
        let inputs = inputs(&stack(), &keys_store(), "hash", "image:1");
        let name = job_name("prod", &inputs);
        let verdict = tokio::spawn(async move { verify(&ctx, &stack(), None, &keys_store(), &inputs).await.unwrap() });
        (api, name, verdict)
    }

    #[tokio::test]
    async fn new_inputs_start_the_check_as_a_job() {
        let (mut api, name, verdict) = first_check();
        api.not_found(&format!("{JOBS}/{name}")).await;
        let (job, _) = api.handle(http::Method::POST, JOBS, |body| (201, body.clone())).await;
        assert_eq!(job["metadata"]["name"], name.as_str());
        assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["image"], "image:1");
        api.no_more_requests().await;
        assert!(matches!(verdict.await.unwrap(), Verdict::Running(m) if m.contains(&name)));
    }

    #[tokio::test]
    async fn a_finished_job_is_read_then_deleted() {
        let (mut api, name, verdict) = first_check();
        let mut job = finished("Failed");
        job.metadata.name = Some(name.clone());
        let job = serde_json::to_value(&job).unwrap();
        api.handle(http::Method::GET, &format!("{JOBS}/{name}"), |_| (200, job.clone())).await;
        let denied = exited(r#"{"step":"write","reason":"AccessDenied","message":"access denied"}"#);
        let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [serde_json::to_value(&denied).unwrap()]});
        let (_, query) = api.handle(http::Method::GET, "/api/v1/namespaces/ml/pods", |_| (200, pods)).await;
        assert!(query.contains(&format!("job-name%3D{name}")), "{query}");
        let (delete, _) = api.handle(http::Method::DELETE, &format!("{JOBS}/{name}"), |_| (200, job.clone())).await;
        assert_eq!(delete["propagationPolicy"], "Background", "its pod goes with it");
        api.no_more_requests().await;
        assert!(matches!(verdict.await.unwrap(), Verdict::Failed(f) if f.reason == Reason::AccessDenied));
    }

    #[test]
    fn a_pod_that_never_ran_the_check_says_why() {
        let pulling = pod(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ErrImagePull".into()),
                message: Some("not found".into()),
            }),
            ..Default::default()
        });
        let Some(Verdict::Failed(failure)) = verdict(&finished("Failed"), &[pulling], "runner") else { panic!() };
        assert_eq!(failure.reason, Reason::WorkloadCheckFailed);
        assert!(failure.message.contains("ErrImagePull: not found"), "{}", failure.message);
    }
}
