//! Admission rules shared by the custom resources' fields: names and keys as Kubernetes accepts
//! them and KMS key ids as S3 accepts them, so a mistake is refused with the field named rather
//! than failing at run time. Each rule bounds the field's length, which keeps its CEL cost within
//! the apiserver's budget.

use schemars::Schema;
use serde_json::json;

/// The bucket tag that records which ArtifactStore (by UID) created a bucket. Deletion requires it,
/// so `spec.bucket.tags` may not set it.
pub const CREATED_BY_TAG: &str = "artifacts.dev/created-by";

/// A Kubernetes object name (a DNS-1123 subdomain), as Secrets, ConfigMaps, ServiceAccounts and
/// the operator's own kinds take.
pub fn object_name(schema: &mut Schema) {
    bounded(schema, 1, 253);
    add_rule(
        schema,
        r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
        "must be a Kubernetes object name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, for example minio-keys",
    );
}

/// A key of a Secret's or ConfigMap's data, as Kubernetes' `IsConfigMapKey` accepts it.
pub fn data_key(schema: &mut Schema) {
    bounded(schema, 1, 253);
    add_rule(
        schema,
        r"self.matches('^[-._a-zA-Z0-9]+$') && self != '.' && !self.startsWith('..')",
        "must be a Secret or ConfigMap key: letters, digits, '-', '_' and '.', not . or starting with .., for example aws_access_key_id",
    );
}

/// A name in a ZenML server (a stack, a component, a project), kept to what its CLI takes as an
/// argument without quoting.
pub fn zenml_name(schema: &mut Schema) {
    bounded(schema, 1, 128);
    add_rule(
        schema,
        r"self.matches('^[A-Za-z0-9][-_.A-Za-z0-9]*$')",
        "must be a ZenML name: letters, digits, '-', '_' and '.', starting with a letter or digit, for example team-a-prod",
    );
}

/// A KMS key id, key ARN, alias name or alias ARN.
pub fn kms_key_id(schema: &mut Schema) {
    bounded(schema, 1, 2048);
    add_rule(
        schema,
        r"self.matches('^[A-Za-z0-9:/_.+=@-]+$')",
        "must be a KMS key id, key ARN, alias/name or alias ARN: letters, digits and : / _ . + = @ - only, no spaces",
    );
}

/// Bucket tags as S3 accepts them, besides the operator's own creator tag: S3 takes at most 50
/// tags, keys of 1 to 128 and values of up to 256 characters from a limited set, and keys
/// starting with `aws:` are AWS's.
pub fn bucket_tags(schema: &mut Schema) {
    schema.insert("maxProperties".into(), json!(49));
    if let Some(values) = schema.get_mut("additionalProperties").and_then(|v| v.as_object_mut()) {
        values.insert("maxLength".into(), json!(256));
    }
    add_rule(
        schema,
        "self.all(k, k.size() >= 1 && k.size() <= 128)",
        "bucket tag keys must be 1 to 128 characters long",
    );
    add_rule(
        schema,
        r"self.all(k, k.matches('^[\\p{L}\\p{Z}\\p{N}_.:/=+@-]*$') && self[k].matches('^[\\p{L}\\p{Z}\\p{N}_.:/=+@-]*$'))",
        "bucket tag keys and values may contain only letters, digits, spaces and _ . : / = + - @",
    );
    add_rule(
        schema,
        &format!("!('{CREATED_BY_TAG}' in self)"),
        &format!("{CREATED_BY_TAG} is reserved: the operator records under it which ArtifactStore created the bucket"),
    );
    add_rule(
        schema,
        "self.all(k, !k.lowerAscii().startsWith('aws:'))",
        "bucket tag keys must not start with aws:, which AWS reserves",
    );
}

/// The metadata.name rule of every kind: the operator puts the name into label values, which
/// Kubernetes limits to 63 characters, and derives object names from it. The message names the
/// field, as a rule may not point its fieldPath into metadata.
pub fn name_length_rule() -> kube::core::Rule {
    kube::core::Rule::new("self.metadata.name.size() <= 63")
        .message("metadata.name must be at most 63 characters: the operator puts it into label values, which Kubernetes limits to 63")
}

fn bounded(schema: &mut Schema, min: u32, max: u32) {
    schema.insert("minLength".into(), json!(min));
    schema.insert("maxLength".into(), json!(max));
}

fn add_rule(schema: &mut Schema, rule: &str, message: &str) {
    let rules = schema.ensure_object().entry("x-kubernetes-validations").or_insert_with(|| json!([]));
    if let Some(rules) = rules.as_array_mut() {
        rules.push(json!({"rule": rule, "message": message}));
    }
}
