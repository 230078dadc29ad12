//! Object metadata shared by every kind.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A timestamp serialised as RFC 3339 in UTC with second precision, as
/// Kubernetes' `metav1.Time`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub DateTime<Utc>);

impl Time {
    pub fn now() -> Self {
        Time(Utc::now())
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339_opts(SecondsFormat::Secs, true))
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| Time(t.with_timezone(&Utc)))
            .map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 time {s:?}: {e}")))
    }
}

impl JsonSchema for Time {
    fn schema_name() -> String {
        "Time".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::InstanceType::String.into()),
            format: Some("date-time".into()),
            ..Default::default()
        }
        .into()
    }
}

/// Metadata of every stored object. Fields marked server-set are owned by
/// the store: whatever a client sends for them is ignored or checked as a
/// precondition, never stored as sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Server-set: unique per object incarnation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Server-set: the store revision of the last write to this object.
    /// On update it is a precondition: a stale value gives Conflict.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// Server-set: starts at 1, grows only when `spec` changes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    /// Server-set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Time>,
    /// A prefix the server completes into a unique name when `name` is
    /// left out (creates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    /// Server-set when a delete waits for finalizers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<Time>,
    /// Server-set from the delete's `gracePeriodSeconds`: how long the
    /// container gets to stop after its stop signal, instead of the spec's
    /// `terminationGracePeriodSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    /// Controllers that must clean up before the object goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    /// Owners of this object (stored; garbage collection comes later).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    /// Server-set: which field manager set which fields, and how (`Apply`
    /// or `Update`), as Kubernetes' `ManagedFieldsEntry` list in the
    /// `FieldsV1` format. What a client sends here is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub managed_fields: Option<ManagedFields>,
}

/// `metadata.managedFields`, kept as its compact JSON text: every stored
/// object carries one, and a text is a tenth of the memory of a parsed
/// tree. Read from any format (JSON, YAML), written as the JSON it is.
#[derive(Clone, Debug)]
pub struct ManagedFields(Box<serde_json::value::RawValue>);

impl ManagedFields {
    /// From a parsed value (`None` if it cannot be written as JSON).
    pub fn from_value(v: &serde_json::Value) -> Option<ManagedFields> {
        serde_json::value::to_raw_value(v).ok().map(ManagedFields)
    }

    /// The entries, parsed.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for ManagedFields {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Serialize for ManagedFields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ManagedFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        ManagedFields::from_value(&v).ok_or_else(|| serde::de::Error::custom("managedFields is not JSON"))
    }
}

/// A reference to an owning object, as Kubernetes' `OwnerReference`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    /// This owner is the managing controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    /// The owner cannot be deleted before this object (foreground deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl ObjectMeta {
    /// `namespace/name`, the key used in logs and the work queue.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
