//! What the store keeps: kind-agnostic objects with typed metadata.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use steward_schema::ObjectMeta;

/// An object of any kind. The store owns `metadata`'s server-set fields and
/// keeps `spec` (written by users) apart from `status` (written by
/// controllers through the status path).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    /// What users write, for kinds that have a spec (Containers).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub spec: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    /// The top-level fields of kinds without a spec (an Event's
    /// `involvedObject`, `reason`, ...), written by users like a spec.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// Identifies one object: its resource (plural, e.g. `containers`),
/// namespace and name. Orders by resource, then namespace, then name, which
/// is the order of lists and of `continue` tokens.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(resource: &str, namespace: &str, name: &str) -> Self {
        Key {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.resource, self.namespace, self.name)
    }
}

/// A committed object together with its serialised JSON, made once by the
/// writer and shared by every read, list and watch event.
#[derive(Debug)]
pub struct Stored {
    pub key: Key,
    pub object: Object,
    pub json: bytes::Bytes,
    pub revision: i64,
}

impl Stored {
    pub fn new(key: Key, object: Object) -> Result<Arc<Self>, serde_json::Error> {
        let json = bytes::Bytes::from(serde_json::to_vec(&object)?);
        let revision = object.metadata.resource_version.parse().unwrap_or(0);
        Ok(Arc::new(Stored { key, object, json, revision }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADDED" => EventType::Added,
            "MODIFIED" => EventType::Modified,
            "DELETED" => EventType::Deleted,
            _ => return None,
        })
    }
}

/// One committed change. `revision` is the store revision of the write;
/// `object` is the object after it (for `Deleted`, its last state, with
/// the deletion's revision as resourceVersion). `prev` is the object
/// before it, when known (live events; replayed events lack it).
#[derive(Clone, Debug)]
pub struct Event {
    pub revision: i64,
    pub event_type: EventType,
    pub object: Arc<Stored>,
    pub prev: Option<Arc<Stored>>,
}
