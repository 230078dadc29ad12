//! The core/v1 `Event` kind, as Kubernetes has it: a record of something
//! that happened to an object (pulled its image, started, was killed),
//! written by controllers, read by `kubectl describe` and `steward
//! describe`, `kubectl get events` and `steward events`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, Time};
use crate::validate::FieldErrors;

/// `apiVersion` of Events: the core group.
pub const EVENT_API_VERSION: &str = "v1";
pub const EVENT_KIND: &str = "Event";
/// The resource (plural) Events are stored and served under.
pub const EVENT_RESOURCE: &str = "events";
/// `type` of an event that is routine.
pub const EVENT_NORMAL: &str = "Normal";
/// `type` of an event that says something went wrong.
pub const EVENT_WARNING: &str = "Warning";
/// Longest `message` kept (kube-apiserver's limit is 1 KiB of note in
/// events.k8s.io; client-go truncates core messages to the same).
pub const MAX_EVENT_MESSAGE: usize = 1024;

/// A reference to the object an event is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field_path: String,
}

/// Which component reported an event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub component: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

/// A core/v1 Event. Fields steward does not use (series, related, action)
/// are kept as given, so a client's own events round-trip.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The object this event is about.
    #[serde(default)]
    pub involved_object: ObjectReference,
    /// Why, in UpperCamelCase (`Pulling`, `Started`, `BackOff`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default)]
    pub source: EventSource,
    /// When this event was first seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_timestamp: Option<Time>,
    /// When this event was last seen (repeats raise `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<Time>,
    /// How many times it happened.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: i32,
    /// `Normal` or `Warning`.
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub type_: String,
    /// When it happened, in microseconds (events.k8s.io writers set this
    /// instead of the timestamps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reporting_component: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reporting_instance: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// Anything else a client sent (series, related, ...), kept verbatim.
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl Event {
    /// The JSON Schema of the kind (for the OpenAPI document).
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Event)).unwrap_or_default()
    }

    /// When this event last happened: `lastTimestamp`, else `eventTime`,
    /// else when it was stored.
    pub fn last_seen(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.last_timestamp
            .map(|t| t.0)
            .or_else(|| self.event_time.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.to_utc()))
            .or(self.first_timestamp.map(|t| t.0))
            .or(self.metadata.creation_timestamp.map(|t| t.0))
    }

    /// Fills what a writer may leave out, as kube-apiserver and client-go
    /// do: the type meta, `count` 1, the timestamps, the source from the
    /// reporting component.
    pub fn apply_defaults(&mut self) {
        if self.api_version.is_empty() {
            self.api_version = EVENT_API_VERSION.into();
        }
        if self.kind.is_empty() {
            self.kind = EVENT_KIND.into();
        }
        if self.count == 0 {
            self.count = 1;
        }
        if self.first_timestamp.is_none() && self.event_time.is_none() {
            self.first_timestamp = Some(Time::now());
        }
        if self.last_timestamp.is_none() {
            self.last_timestamp = self.first_timestamp;
        }
        if self.source.component.is_empty() && !self.reporting_component.is_empty() {
            self.source.component = self.reporting_component.clone();
        }
        if self.message.len() > MAX_EVENT_MESSAGE {
            let mut end = MAX_EVENT_MESSAGE - 3;
            while !self.message.is_char_boundary(end) {
                end -= 1;
            }
            self.message.truncate(end);
            self.message.push_str("...");
        }
    }
}

/// A DNS-1123 subdomain (event names carry dots: `web.17c0...`), or why not.
fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!("must be no more than 253 characters (is {})", s.len()));
    }
    if s.split('.').all(|part| crate::validate::dns1123_label(part).is_ok()) {
        Ok(())
    } else {
        Err(format!("{s:?} must be a lowercase RFC 1123 subdomain: labels of [a-z0-9-] separated by '.'"))
    }
}

/// What kube-apiserver checks of an event: names, the namespace of the
/// object it is about, a known type, a reason and a reporter.
pub fn validate_event(e: &Event) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    if !e.api_version.is_empty() && e.api_version != EVENT_API_VERSION {
        errs.invalid("apiVersion", format!("must be \"v1\", not {:?}", e.api_version));
    }
    if !e.kind.is_empty() && e.kind != EVENT_KIND {
        errs.invalid("kind", format!("must be \"Event\", not {:?}", e.kind));
    }
    match e.metadata.name.as_str() {
        "" => errs.invalid("metadata.name", "Required value"),
        n => {
            if let Err(m) = dns1123_subdomain(n) {
                errs.invalid("metadata.name", m);
            }
        }
    }
    let ns = &e.metadata.namespace;
    let io = &e.involved_object;
    if io.name.is_empty() {
        errs.invalid("involvedObject.name", "Required value");
    }
    if io.kind.is_empty() {
        errs.invalid("involvedObject.kind", "Required value");
    }
    if !io.namespace.is_empty() && io.namespace != *ns {
        errs.invalid("involvedObject.namespace", format!("{:?} does not match the event's namespace {ns:?}", io.namespace));
    }
    if !e.type_.is_empty() && e.type_ != EVENT_NORMAL && e.type_ != EVENT_WARNING {
        errs.invalid("type", format!("{:?}: must be Normal or Warning", e.type_));
    }
    if e.reason.len() > 128 {
        errs.invalid("reason", "must be no more than 128 characters");
    }
    if e.count < 0 {
        errs.invalid("count", "must be 0 or more");
    }
    if e.source.component.is_empty() && e.reporting_component.is_empty() {
        errs.invalid("source.component", "Required value: who reports the event (or reportingComponent)");
    }
    errs.into_result()
}

/// Field paths an event field selector may name (kube-apiserver's).
pub const EVENT_SELECTABLE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// An event's value of a selectable field ("" when unset), from its
/// top-level fields.
pub fn event_field(e: &serde_json::Map<String, serde_json::Value>, field: &str) -> String {
    let path: Vec<&str> = if field == "source" { vec!["source", "component"] } else { field.split('.').collect() };
    let mut cur = path.first().and_then(|k| e.get(*k));
    for k in path.iter().skip(1) {
        cur = cur.and_then(|v| v.get(*k));
    }
    cur.and_then(serde_json::Value::as_str).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        let mut e = Event::default();
        e.metadata.name = "web.17c0a1b2c3d4e5f6".into();
        e.metadata.namespace = "default".into();
        e.involved_object = ObjectReference { kind: "Container".into(), name: "web".into(), namespace: "default".into(), ..Default::default() };
        e.reason = "Started".into();
        e.source.component = "steward".into();
        e
    }

    #[test]
    fn defaults_and_validation() {
        let mut e = event();
        e.message = "é".repeat(MAX_EVENT_MESSAGE);
        e.apply_defaults();
        assert_eq!((e.api_version.as_str(), e.kind.as_str(), e.count), ("v1", "Event", 1));
        assert!(e.first_timestamp.is_some() && e.last_timestamp == e.first_timestamp);
        assert!(e.message.len() <= MAX_EVENT_MESSAGE && e.message.ends_with("..."));
        validate_event(&e).unwrap();
        let mut bad = event();
        bad.involved_object.namespace = "other".into();
        bad.type_ = "Odd".into();
        bad.source.component.clear();
        bad.metadata.name = "Web".into();
        let errs = validate_event(&bad).unwrap_err().to_string();
        for f in ["involvedObject.namespace", "type", "source.component", "metadata.name"] {
            assert!(errs.contains(f), "{f}: {errs}");
        }
    }

    #[test]
    fn unknown_fields_round_trip_and_fields_select() {
        let v = serde_json::json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "a", "namespace": "default"},
            "involvedObject": {"kind": "Container", "name": "web", "uid": "u1"}, "source": {"component": "me"},
            "series": {"count": 3}, "reason": "X"});
        let e: Event = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(e.other["series"], serde_json::json!({"count": 3}));
        assert_eq!(serde_json::to_value(&e).unwrap()["series"]["count"], 3);
        let top = v.as_object().unwrap();
        assert_eq!(event_field(top, "involvedObject.uid"), "u1");
        assert_eq!(event_field(top, "source"), "me");
        assert_eq!(event_field(top, "type"), "");
    }
}
