//! A status condition as the caches hold it, ten thousands of times over: its type, status,
//! reason and message are [`Word`]s, each text kept once however many conditions carry it.
//! On the wire and in the CRD it is exactly Kubernetes' `Condition`. The condition types the
//! operator writes are named here, below both the conditions and the reasons that appear on them.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

pub const READY: &str = "Ready";
pub const BUCKET_READY: &str = "BucketReady";
pub const CREDENTIALS_VALID: &str = "CredentialsValid";
/// A Stack's: `artifact-operator check` passed in a pod running as the Stack's ServiceAccount.
pub const WORKLOAD_ACCESS_VERIFIED: &str = "WorkloadAccessVerified";
/// A Stack's, with `spec.zenml`: the ZenML server holds the stack as declared.
pub const ZENML_SYNCED: &str = "ZenmlSynced";
/// A Stack's, with `credentials.mode: Scoped`: its pods have valid session credentials.
pub const SCOPED_CREDENTIALS: &str = "ScopedCredentials";

/// A condition of an object's status, as `metav1.Condition`.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub last_transition_time: Time,
    pub message: Word,
    pub observed_generation: Option<i64>,
    pub reason: Word,
    pub status: Word,
    #[serde(rename = "type")]
    pub type_: Word,
}

/// The schema is Kubernetes' own, so the CRDs do not change with the type.
impl JsonSchema for Condition {
    fn schema_name() -> Cow<'static, str> {
        <k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as JsonSchema>::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        <k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as JsonSchema>::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        <k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as JsonSchema>::json_schema(generator)
    }

    fn inline_schema() -> bool {
        <k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as JsonSchema>::inline_schema()
    }
}

/// A text that many objects carry alike (a condition's type, status, reason, often its message):
/// the words in use are kept in one table, and every copy shares its text. Reads and compares
/// as a `str`; serializes as a string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Word(Arc<str>);

/// The texts of the words in use. A text no word holds any longer is swept once the table has
/// doubled since the last sweep, so it never holds more than twice the words in use.
struct Table {
    words: HashSet<Arc<str>>,
    sweep_at: usize,
}

const FIRST_SWEEP: usize = 256;

static TABLE: LazyLock<Mutex<Table>> =
    LazyLock::new(|| Mutex::new(Table { words: HashSet::new(), sweep_at: FIRST_SWEEP }));

impl Word {
    pub fn new(text: &str) -> Self {
        let mut table = TABLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(word) = table.words.get(text) {
            return Self(word.clone());
        }
        if table.words.len() >= table.sweep_at {
            // Only the table holds a text whose count is one, and only the table (under this
            // lock) could hand out another copy of it.
            table.words.retain(|word| Arc::strong_count(word) > 1);
            table.words.shrink_to_fit();
            table.sweep_at = (2 * table.words.len()).max(FIRST_SWEEP);
        }
        let word: Arc<str> = Arc::from(text);
        table.words.insert(word.clone());
        Self(word)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Word {
    fn default() -> Self {
        Self::new("")
    }
}

impl std::ops::Deref for Word {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Word {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for Word {
    fn from(text: String) -> Self {
        Self::new(&text)
    }
}

impl PartialEq<str> for Word {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Word {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl Serialize for Word {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Word {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Word;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Word, E> {
                Ok(Word::new(text))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

impl JsonSchema for Word {
    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        String::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        String::json_schema(generator)
    }

    fn inline_schema() -> bool {
        String::inline_schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_share_one_copy() {
        let (a, b) = (Word::new("BucketExists"), Word::from("BucketExists".to_owned()));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, "BucketExists");
        assert_ne!(a, Word::new("Verified"));
        let decoded: Vec<Word> = serde_json::from_str(r#"["BucketExists", "Bucket\u0045xists"]"#).unwrap();
        assert!(decoded.iter().all(|w| Arc::ptr_eq(&w.0, &a.0)), "decoded words share it too");
        assert_eq!(serde_json::to_string(&a).unwrap(), r#""BucketExists""#);
    }

    #[test]
    fn texts_no_longer_used_are_swept() {
        let kept = Word::new("kept while in use");
        for i in 0..10 * FIRST_SWEEP {
            drop(Word::new(&format!("once {i}")));
        }
        let table = TABLE.lock().unwrap();
        assert!(table.words.contains("kept while in use"));
        // Other tests intern a few words of their own meanwhile.
        assert!(table.words.len() < 2 * FIRST_SWEEP + 64, "{} words kept", table.words.len());
        drop(table);
        assert_eq!(kept, "kept while in use");
    }

    #[test]
    fn a_condition_reads_and_writes_as_kubernetes_does() {
        let json = serde_json::json!({
            "type": "Ready", "status": "True", "reason": "Ready", "message": "s3://b/p is ready",
            "lastTransitionTime": "2026-11-29T10:00:00Z", "observedGeneration": 3
        });
        let ours: Condition = serde_json::from_value(json.clone()).unwrap();
        let theirs: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition =
            serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&ours).unwrap(), serde_json::to_value(&theirs).unwrap());
        assert_eq!((ours.type_.as_str(), ours.observed_generation), ("Ready", Some(3)));
        let generator = &mut schemars::SchemaGenerator::default();
        assert_eq!(
            Condition::json_schema(generator),
            <k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as JsonSchema>::json_schema(generator)
        );
    }
}
