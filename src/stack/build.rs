//! Build: what a Stack publishes, with the renderings it asks for. Pure.
//!
//! - ConfigMap `<stack>-stack`: the env keys, `zenml-stack.yaml`, and `ca-bundle.pem` when the
//!   store has a private CA, so that `envFrom` plus one volume at `/etc/artifact-store` gives pods
//!   every file the env keys and renderings point at.
//! - ConfigMap `kfp-launcher` (KFP): where Kubeflow Pipelines' launcher reads its configuration.
//! - The key `<stack>` of the shared ConfigMap `artifact-repositories` (Argo), and with a CA from a
//!   ConfigMap the Secret `<stack>-ca-bundle` that Argo's `caSecret` names.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, EnvFromSource, Secret, SecretEnvSource, SecretVolumeSource,
    Volume, VolumeMount,
};
use kube::core::ObjectMeta;

use super::resolved::ResolvedStack;
use crate::api::artifact_store::CaBundleKind;
use crate::api::stack::OutputFormat;
use crate::owner::{Kind, Owner, Published};
use crate::reason::{Failure, Reason};
use crate::render::{self, argo, kfp};
use crate::resolve::{CA_BUNDLE_KEY, CONFIG_MOUNT_PATH, ConsumerCredentials, ResolvedStore, SESSION_MOUNT_PATH};

/// The annotation carrying the SHA-256 of the ConfigMap's data, so workloads can roll on change.
pub const CONTENT_HASH_ANNOTATION: &str = "artifacts.dev/content-hash";
/// The ConfigMap key with the ZenML stack export.
pub const ZENML_STACK_KEY: &str = "zenml-stack.yaml";

/// The Stack's ConfigMap: `<stack>-stack`.
pub const CONFIG_MAP: Published = Published { kind: Kind::ConfigMap, suffix: "-stack" };
/// The Secret holding the CA bundle for Argo's `caSecret`, when the store's CA is in a ConfigMap:
/// `<stack>-ca-bundle`.
pub const CA_SECRET: Published = Published { kind: Kind::Secret, suffix: "-ca-bundle" };

/// What a pod needs to use the stack: the env keys (the Stack's ConfigMap and, with key auth, the
/// store's credentials Secret) and the ConfigMap as files where the env keys point (the CA file).
/// The in-pod check's Job and ZenML's kubernetes orchestrator pods get the same.
pub struct PodWiring {
    pub env_from: Vec<EnvFromSource>,
    pub volumes: Vec<Volume>,
    pub volume_mounts: Vec<VolumeMount>,
}

/// The names of [`PodWiring`]'s volumes: the Stack's ConfigMap, and its scoped credentials.
const WIRING_VOLUME: &str = "artifact-store";
const SESSION_VOLUME: &str = "artifact-store-credentials";

pub fn pod_wiring(stack: &str, store: &ResolvedStore) -> PodWiring {
    let config_map = CONFIG_MAP.name(stack);
    let mut env_from = vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource { name: config_map.clone(), optional: Some(false) }),
        ..EnvFromSource::default()
    }];
    let mut volumes = vec![Volume {
        name: WIRING_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource { name: config_map, ..ConfigMapVolumeSource::default() }),
        ..Volume::default()
    }];
    let mut volume_mounts = vec![VolumeMount {
        name: WIRING_VOLUME.to_owned(),
        mount_path: CONFIG_MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    match store.auth.consumer_credentials() {
        ConsumerCredentials::Keys { env_secret, .. } => env_from.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource { name: env_secret.to_owned(), optional: Some(false) }),
            ..EnvFromSource::default()
        }),
        // Not as environment: a file the kubelet refreshes, which the SDKs read again.
        ConsumerCredentials::Session { secret } => {
            volumes.push(Volume {
                name: SESSION_VOLUME.to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.to_owned()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            volume_mounts.push(VolumeMount {
                name: SESSION_VOLUME.to_owned(),
                mount_path: SESSION_MOUNT_PATH.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        ConsumerCredentials::Ambient { .. } => {}
    }
    PodWiring { env_from, volumes, volume_mounts }
}

/// ZenML's `KubernetesPodSettings` (`pod_settings` of the kubernetes orchestrator) that give its
/// pods the [`PodWiring`], in Kubernetes' JSON as ZenML hands it on.
pub fn zenml_pod_settings(wiring: &PodWiring) -> serde_json::Value {
    serde_json::json!({
        "env_from": wiring.env_from,
        "volumes": wiring.volumes,
        "volume_mounts": wiring.volume_mounts,
    })
}

fn owned_meta(owner: &Owner, name: String) -> ObjectMeta {
    owner.owned_meta("stack", name)
}

/// What a format that adds keys to the Stack's ConfigMap renders: its keys, or the setting of the
/// store it cannot serve.
type FormatKeys = fn(&ResolvedStore) -> Result<BTreeMap<String, String>, String>;

/// The keys of the formats the Stack asks for that add to its ConfigMap (BucketClaim, MLflow), or
/// one failure naming each of them that cannot serve the store as it is.
fn format_keys(stack: &ResolvedStack, store: &ResolvedStore) -> Result<BTreeMap<String, String>, Failure> {
    let formats: [(OutputFormat, &str, FormatKeys); 2] = [
        (OutputFormat::BucketClaim, "BucketClaim", render::bucket_claim::render),
        (OutputFormat::Mlflow, "MLflow", render::mlflow::render),
    ];
    let mut keys = BTreeMap::new();
    let mut refused = Vec::new();
    for (_, name, render) in formats.into_iter().filter(|(format, _, _)| stack.wants(*format)) {
        match render(store) {
            Ok(rendered) => keys.extend(rendered),
            Err(why) => refused.push(format!("{name}: {why}")),
        }
    }
    if refused.is_empty() { Ok(keys) } else { Err(Failure::new(Reason::FormatUnsupported, refused.join("; and "))) }
}

/// The Stack's ConfigMap and its content hash, or why a format it asks for cannot serve the store.
/// `ca_pem` is the bundle the store publishes.
pub fn config_map(
    stack: &ResolvedStack,
    store: &ResolvedStore,
    ca_pem: Option<&str>,
) -> Result<(ConfigMap, String), Failure> {
    let format_keys = format_keys(stack, store)?;
    let name = stack.name();
    let mut data = render::env::render(store);
    data.insert("STACK_NAME".into(), name.to_owned());
    data.insert("ORCHESTRATOR_TYPE".into(), format!("{:?}", stack.orchestrator));
    data.insert("ORCHESTRATOR_SERVICE_ACCOUNT".into(), stack.service_account.clone());
    if let (Some(pem), Some(_)) = (ca_pem, store.ca_bundle_path()) {
        data.insert(CA_BUNDLE_KEY.to_owned(), pem.to_owned());
    }
    data.extend(format_keys);
    if stack.wants(OutputFormat::ZenML) {
        let pod_settings = zenml_pod_settings(&pod_wiring(name, store));
        let export = render::zenml::stack_export(
            name,
            store,
            stack.namespace(),
            &stack.service_account,
            &pod_settings,
            stack.container_registry.as_deref(),
        );
        data.insert(ZENML_STACK_KEY.into(), serde_yaml_ng::to_string(&export).expect("JSON values serialize to YAML"));
    }
    let hash = render::content_hash(&data);
    let mut meta = owned_meta(&stack.owner, CONFIG_MAP.name(name));
    meta.annotations = Some(BTreeMap::from([(CONTENT_HASH_ANNOTATION.to_owned(), hash.clone())]));
    Ok((ConfigMap { metadata: meta, data: Some(data), ..ConfigMap::default() }, hash))
}

/// The namespace's `kfp-launcher` ConfigMap, owned by this Stack.
pub fn kfp_launcher(stack: &ResolvedStack, store: &ResolvedStore) -> ConfigMap {
    ConfigMap {
        metadata: owned_meta(&stack.owner, kfp::CONFIG_MAP.to_owned()),
        data: Some(kfp::launcher_data(store)),
        ..ConfigMap::default()
    }
}

/// Where Argo's `caSecret` points: the user's Secret as is, or, for a CA in a ConfigMap, the
/// Secret [`ca_secret`] publishes.
pub fn argo_ca(stack: &ResolvedStack, store: &ResolvedStore) -> Option<argo::CaSecret> {
    let ca = store.endpoint.as_ref()?.ca_bundle.as_ref()?;
    Some(match ca.kind {
        CaBundleKind::Secret => argo::CaSecret { name: ca.name.clone(), key: ca.key.clone() },
        CaBundleKind::ConfigMap => argo::CaSecret { name: CA_SECRET.name(stack.name()), key: CA_BUNDLE_KEY.to_owned() },
    })
}

/// The Secret with the store's CA certificates, for Argo's `caSecret`.
pub fn ca_secret(owner: &Owner, pem: &str) -> Secret {
    Secret {
        metadata: owned_meta(owner, CA_SECRET.name(&owner.name)),
        data: Some(BTreeMap::from([(CA_BUNDLE_KEY.to_owned(), k8s_openapi::ByteString(pem.as_bytes().to_vec()))])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The Stack's Argo artifact repository, as the YAML value of its key in `artifact-repositories`.
pub fn argo_repository(stack: &ResolvedStack, store: &ResolvedStore) -> String {
    let options = argo::Options { ca_secret: argo_ca(stack, store), addressing_style: stack.argo_addressing_style };
    serde_yaml_ng::to_string(&argo::artifact_repository(store, &options)).expect("JSON values serialize to YAML")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn stack(formats: Value) -> ResolvedStack {
        let stack = crate::controller::fixtures::stack(
            "ml",
            "s-1",
            json!({"artifactStoreRef": {"name": "store"},
            "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "argo"}, "outputs": {"formats": formats}}),
        );
        ResolvedStack::of(&stack).expect("a valid Stack")
    }

    fn store(auth: Value, endpoint: Value) -> ResolvedStore {
        let spec = json!({"path": "s3://bucket/runs", "endpoint": endpoint, "auth": auth,
                          "objectDefaults": {"serverSideEncryption": "aws:kms", "sseKmsKeyId": "alias/ml"}});
        crate::resolve::test_store(spec, "us-east-1")
    }

    fn keys() -> Value {
        json!({"secretRef": {"name": "keys"}})
    }

    fn minio() -> Value {
        json!({"url": "http://minio:9000"})
    }

    #[test]
    fn renders_only_the_formats_asked_for() {
        let (cm, _) = config_map(&stack(json!([])), &store(keys(), minio()), None).unwrap();
        let data = cm.data.unwrap();
        assert_eq!(data["STACK_NAME"], "prod");
        assert_eq!(data["ARTIFACT_STORE_PATH"], "s3://bucket/runs");
        assert!(!data.contains_key(ZENML_STACK_KEY) && !data.contains_key(CA_BUNDLE_KEY));
        assert_eq!(cm.metadata.owner_references.unwrap()[0].kind, "Stack");
    }

    #[test]
    fn the_stack_config_map_carries_the_ca_bundle_its_keys_point_at() {
        let ca = json!({"url": "https://minio:9000", "tls": {"caBundle": {"name": "ca", "key": "ca.crt"}}});
        let (cm, hash) = config_map(&stack(json!(["ZenML"])), &store(keys(), ca), Some("PEM")).unwrap();
        assert_eq!(cm.metadata.annotations.unwrap()[CONTENT_HASH_ANNOTATION], hash);
        let data = cm.data.unwrap();
        let path = format!("/etc/artifact-store/{CA_BUNDLE_KEY}");
        assert_eq!(data["AWS_CA_BUNDLE"], path);
        assert_eq!(data[CA_BUNDLE_KEY], "PEM");
        let zenml: Value = serde_yaml_ng::from_str(&data[ZENML_STACK_KEY]).unwrap();
        assert_eq!(zenml["components"]["artifact_store"][0]["configuration"]["client_kwargs"]["verify"], path);
    }

    #[test]
    fn argo_gets_a_ca_secret_from_a_secret_as_is_and_from_a_config_map_by_copy() {
        let from = |kind: &str| json!({"url": "https://minio:9000", "tls": {"caBundle": {"kind": kind, "name": "ca", "key": "ca.crt"}}});
        let repository: Value =
            serde_yaml_ng::from_str(&argo_repository(&stack(json!(["Argo"])), &store(keys(), from("Secret")))).unwrap();
        assert_eq!(repository["s3"]["caSecret"], json!({"name": "ca", "key": "ca.crt"}));
        let copied = store(keys(), from("ConfigMap"));
        let repository: Value = serde_yaml_ng::from_str(&argo_repository(&stack(json!(["Argo"])), &copied)).unwrap();
        assert_eq!(repository["s3"]["caSecret"], json!({"name": "prod-ca-bundle", "key": CA_BUNDLE_KEY}));
        let secret = ca_secret(&stack(json!(["Argo"])).owner, "PEM");
        assert_eq!(secret.metadata.name.as_deref(), Some("prod-ca-bundle"));
        assert_eq!(secret.data.unwrap()[CA_BUNDLE_KEY].0, b"PEM");
    }

    #[test]
    fn argo_and_kfp_render_for_their_consumers() {
        let repository: Value =
            serde_yaml_ng::from_str(&argo_repository(&stack(json!(["Argo"])), &store(keys(), minio()))).unwrap();
        assert_eq!(repository["s3"]["endpoint"], "minio:9000");
        assert_eq!(repository["s3"]["insecure"], true);
        assert_eq!(repository["s3"]["keyFormat"], "runs/{{workflow.name}}/{{pod.name}}");
        assert_eq!(repository["s3"]["accessKeySecret"], json!({"name": "keys", "key": "aws_access_key_id"}));
        assert_eq!(repository["s3"]["encryptionOptions"], json!({"enableEncryption": true, "kmsKeyId": "alias/ml"}));
        let launcher = kfp_launcher(&stack(json!(["KFP"])), &store(json!({"implicit": {}}), minio()));
        assert_eq!(launcher.metadata.name.as_deref(), Some("kfp-launcher"));
        let data = launcher.data.unwrap();
        assert_eq!(data["defaultPipelineRoot"], "s3://bucket/runs");
        assert!(data["providers"].contains("fromEnv: true"));
    }
}
