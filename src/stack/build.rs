//! Build: the one ConfigMap a Stack publishes, with the renderings it asks for. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Resource;
use kube::core::ObjectMeta;

use crate::api::Stack;
use crate::api::stack::OutputFormat;
use crate::render::{self, argo, kfp};
use crate::resolve::ResolvedStore;
use crate::store::build::labels;

/// The annotation carrying the SHA-256 of the ConfigMap's data, so workloads can roll on change.
pub const CONTENT_HASH_ANNOTATION: &str = "artifacts.dev/content-hash";
/// The ConfigMap key with the ZenML stack description.
pub const ZENML_STACK_KEY: &str = "zenml-stack.json";

pub fn config_map_name(stack: &str) -> String {
    format!("{stack}-stack")
}

/// The Stack's ConfigMap and its content hash.
pub fn config_map(stack: &Stack, store: &ResolvedStore) -> (ConfigMap, String) {
    let name = stack.metadata.name.clone().unwrap_or_default();
    let namespace = stack.metadata.namespace.clone().unwrap_or_default();
    let orchestrator = &stack.spec.orchestrator;
    let mut data = render::env::render(store);
    data.insert("STACK_NAME".into(), name.clone());
    data.insert("ORCHESTRATOR_TYPE".into(), format!("{:?}", orchestrator.kind));
    data.insert("ORCHESTRATOR_SERVICE_ACCOUNT".into(), orchestrator.service_account_name.clone());
    let formats = &stack.spec.outputs.formats;
    if formats.contains(&OutputFormat::ZenML) {
        let description = render::zenml::stack(&name, store, &namespace, &orchestrator.service_account_name);
        data.insert(ZENML_STACK_KEY.into(), render::to_json(&description));
    }
    let mut annotations = BTreeMap::new();
    if formats.contains(&OutputFormat::Argo) {
        let repository =
            serde_yaml_ng::to_string(&argo::artifact_repository(store)).expect("JSON values serialize to YAML");
        data.insert(argo::KEY.into(), repository);
        if stack.spec.outputs.argo_default_repository {
            annotations.insert(argo::DEFAULT_REPOSITORY_ANNOTATION.to_owned(), argo::KEY.to_owned());
        }
    }
    if formats.contains(&OutputFormat::Kfp) {
        let launcher = serde_yaml_ng::to_string(&kfp::launcher_config(store)).expect("JSON values serialize to YAML");
        data.insert(kfp::KEY.into(), launcher);
    }
    let hash = render::content_hash(&data);
    annotations.insert(CONTENT_HASH_ANNOTATION.to_owned(), hash.clone());
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(&name)),
            namespace: Some(namespace),
            labels: Some(labels("stack", &name)),
            annotations: Some(annotations),
            owner_references: stack.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    };
    (config_map, hash)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::ArtifactStore;

    fn stack(formats: Value, default_repository: bool) -> Stack {
        serde_json::from_value(json!({
            "apiVersion": "artifacts.dev/v1alpha1", "kind": "Stack",
            "metadata": {"name": "prod", "namespace": "ml", "uid": "s-1"},
            "spec": {"artifactStoreRef": {"name": "store"}, "orchestrator": {"type": "ArgoWorkflows", "serviceAccountName": "argo"},
                     "outputs": {"formats": formats, "argoDefaultRepository": default_repository}},
        }))
        .unwrap()
    }

    fn store(auth: Value) -> ResolvedStore {
        let store: ArtifactStore = serde_json::from_value(json!({
            "apiVersion": "artifacts.dev/v1alpha1", "kind": "ArtifactStore", "metadata": {"name": "store", "namespace": "ml"},
            "spec": {"path": "s3://bucket/runs", "endpoint": {"url": "http://minio:9000"}, "auth": auth,
                     "objectDefaults": {"serverSideEncryption": "aws:kms", "sseKmsKeyId": "alias/ml"}},
        }))
        .unwrap();
        ResolvedStore::new(&store, "us-east-1", false).unwrap()
    }

    #[test]
    fn renders_only_the_formats_asked_for() {
        let (cm, _) = config_map(&stack(json!([]), false), &store(json!({"secretRef": {"name": "keys"}})));
        let data = cm.data.unwrap();
        assert_eq!(data["STACK_NAME"], "prod");
        assert_eq!(data["ARTIFACT_STORE_PATH"], "s3://bucket/runs");
        assert!(!data.contains_key(ZENML_STACK_KEY) && !data.contains_key(argo::KEY) && !data.contains_key(kfp::KEY));
    }

    #[test]
    fn renders_argo_kfp_and_zenml() {
        let (cm, hash) =
            config_map(&stack(json!(["ZenML", "Argo", "KFP"]), true), &store(json!({"secretRef": {"name": "keys"}})));
        let annotations = cm.metadata.annotations.unwrap();
        assert_eq!(annotations[argo::DEFAULT_REPOSITORY_ANNOTATION], argo::KEY);
        assert_eq!(annotations[CONTENT_HASH_ANNOTATION], hash);
        let data = cm.data.unwrap();
        let argo: Value = serde_yaml_ng::from_str(&data[argo::KEY]).unwrap();
        assert_eq!(argo["s3"]["endpoint"], "minio:9000");
        assert_eq!(argo["s3"]["insecure"], true);
        assert_eq!(argo["s3"]["keyFormat"], "runs/{{workflow.name}}/{{pod.name}}");
        assert_eq!(argo["s3"]["accessKeySecret"], json!({"name": "keys", "key": "aws_access_key_id"}));
        assert_eq!(argo["s3"]["encryptionOptions"], json!({"enableEncryption": true, "kmsKeyId": "alias/ml"}));
        let kfp: Value = serde_yaml_ng::from_str(&data[kfp::KEY]).unwrap();
        assert_eq!(kfp["defaultPipelineRoot"], "s3://bucket/runs");
        let providers: Value = serde_yaml_ng::from_str(kfp["providers"].as_str().unwrap()).unwrap();
        assert_eq!(providers["s3"]["default"]["credentials"]["secretRef"]["secretName"], "keys");
        assert_eq!(providers["s3"]["default"]["disableSSL"], true);
        let zenml: Value = serde_json::from_str(&data[ZENML_STACK_KEY]).unwrap();
        assert_eq!(zenml["components"]["orchestrator"]["configuration"]["service_account_name"], "argo");
        assert_eq!(zenml["components"]["artifact_store"]["authentication_secret"], "keys");
    }

    #[test]
    fn implicit_auth_uses_sdk_credentials_and_the_hash_follows_content() {
        let (cm, implicit_hash) = config_map(&stack(json!(["Argo", "KFP"]), false), &store(json!({"implicit": {}})));
        let data = cm.data.unwrap();
        let argo: Value = serde_yaml_ng::from_str(&data[argo::KEY]).unwrap();
        assert_eq!(argo["s3"]["useSDKCreds"], true);
        assert!(argo["s3"].get("accessKeySecret").is_none());
        let kfp: Value = serde_yaml_ng::from_str(&data[kfp::KEY]).unwrap();
        assert!(kfp["providers"].as_str().unwrap().contains("fromEnv: true"));
        let (_, keys_hash) =
            config_map(&stack(json!(["Argo", "KFP"]), false), &store(json!({"secretRef": {"name": "k"}})));
        assert_ne!(implicit_hash, keys_hash);
    }
}
