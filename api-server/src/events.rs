//! The core/v1 Event kind (`/api/v1/namespaces/{ns}/events`): its
//! strategy for the generic registry, and the expiry that keeps events an
//! hour and bounded in number, as kube-apiserver's event TTL does.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use steward_schema::event::{event_field, validate_event, EVENT_RESOURCE, EVENT_SELECTABLE_FIELDS};
use steward_schema::manifest::{object_from_json, object_from_value};
use steward_schema::table::human_age;
use steward_schema::Event;
use steward_store::{Key, Object, Store, Stored, Write};

use crate::registry::{check_identity, yaml_body, Input, Kind, Strategy};
use crate::{ApiError, App};

/// core/v1 Events.
pub struct Events;

/// The largest Event stored: a record for people, not a payload.
const MAX_EVENT_BYTES: usize = 32 * 1024;

pub fn kind() -> Kind {
    Arc::new(Events)
}

impl Strategy for Events {
    fn base(&self) -> &'static str {
        "/api/v1"
    }
    fn api_version(&self) -> &'static str {
        "v1"
    }
    fn kind(&self) -> &'static str {
        "Event"
    }
    fn resource(&self) -> &'static str {
        EVENT_RESOURCE
    }
    fn selectable_fields(&self) -> &'static [&'static str] {
        EVENT_SELECTABLE_FIELDS
    }

    fn admit(&self, _app: &App, input: Input<'_>, ns: &str, url_name: Option<&str>) -> Result<Object, ApiError> {
        let mut e: Event = match input {
            Input::Body { media: "application/json", body } => object_from_json(body).map_err(ApiError::BadRequest)?,
            Input::Body { media, body } => object_from_value(yaml_body(media, body)?).map_err(ApiError::BadRequest)?,
            Input::Applied(doc) => {
                let yaml = serde_yaml::to_value(&doc).map_err(|e| ApiError::BadRequest(e.to_string()))?;
                object_from_value(yaml).map_err(ApiError::BadRequest)?
            }
            Input::Value(doc) => serde_json::from_value(doc).map_err(|e| ApiError::BadRequest(format!("the patched object is not an Event: {e}")))?,
        };
        check_identity(&mut e.metadata, ns, url_name)?;
        if e.involved_object.namespace.is_empty() {
            e.involved_object.namespace = e.metadata.namespace.clone();
        }
        e.apply_defaults();
        validate(&e)?;
        let size = serde_json::to_vec(&e).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_EVENT_BYTES {
            let mut errors = steward_schema::validate::FieldErrors::default();
            errors.invalid("", format!("an Event may be at most {MAX_EVENT_BYTES} bytes (this one is {size})"));
            return Err(ApiError::Invalid { kind: "Event", name: e.metadata.name.clone(), errors });
        }
        to_object(e)
    }

    fn field(&self, s: &Stored, field: &str) -> String {
        match field {
            "metadata.name" => s.key.name.clone(),
            "metadata.namespace" => s.key.namespace.clone(),
            f => event_field(&s.object.rest, f),
        }
    }

    fn columns(&self) -> Value {
        let col = |name: &str, description: &str, priority: u8| {
            json!({"name": name, "type": "string", "format": "", "description": description, "priority": priority})
        };
        json!([
            col("Last Seen", "When the event last happened", 0),
            col("Type", "Normal or Warning", 0),
            col("Reason", "Why, in one word", 0),
            col("Object", "What the event is about", 0),
            col("Message", "What happened", 0),
            col("Source", "Who reported it", 1),
            col("Count", "How many times it happened", 1),
            col("Name", "The event's name", 1),
        ])
    }

    fn cells(&self, object: &Value, now: chrono::DateTime<chrono::Utc>) -> Option<Vec<Value>> {
        let e: Event = serde_json::from_value(object.clone()).ok()?;
        let seen = e.last_seen().map_or_else(|| "<unknown>".to_string(), |t| human_age(now - t));
        let io = &e.involved_object;
        Some(vec![
            json!(seen),
            json!(e.type_),
            json!(e.reason),
            json!(format!("{}/{}", io.kind.to_ascii_lowercase(), io.name)),
            json!(e.message),
            json!(e.source.component),
            json!(e.count),
            json!(e.metadata.name),
        ])
    }
}

fn validate(e: &Event) -> Result<(), ApiError> {
    validate_event(e).map_err(|errors| ApiError::Invalid { kind: "Event", name: e.metadata.name.clone(), errors })
}

fn to_object(e: Event) -> Result<Object, ApiError> {
    let mut v = serde_json::to_value(&e).map_err(|err| ApiError::BadRequest(err.to_string()))?;
    let Some(map) = v.as_object_mut() else {
        return Err(ApiError::BadRequest("an Event must be an object".into()));
    };
    for k in ["apiVersion", "kind", "metadata"] {
        map.remove(k);
    }
    Ok(Object {
        api_version: e.api_version,
        kind: e.kind,
        metadata: e.metadata,
        spec: Value::Null,
        status: None,
        rest: std::mem::take(map),
    })
}

/// How long events are kept, and how many at most.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub ttl: Duration,
    pub max: usize,
    /// How often expired events are looked for.
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { ttl: Duration::from_secs(3600), max: 10_000, every: Duration::from_secs(60) }
    }
}

/// One pass: removes events last seen more than `ttl` ago, then the oldest
/// beyond `max`. Returns how many went.
pub async fn expire_once(store: &Store, r: Retention, now: chrono::DateTime<chrono::Utc>) -> usize {
    let page = store.list(EVENT_RESOURCE, None, None, 0, |_| true);
    let mut seen: Vec<(chrono::DateTime<chrono::Utc>, Key, String)> = page
        .items
        .iter()
        .map(|s| {
            let e: Option<Event> = serde_json::from_slice(&s.json).ok();
            // When it was last seen, as its writer says, but never later
            // than now: a timestamp in the future would keep an event for
            // ever. Such an event counts from when it was stored.
            let created = s.object.metadata.creation_timestamp.map(|t| t.0).unwrap_or(now);
            let seen = e.and_then(|e| e.last_seen()).filter(|t| *t <= now + chrono::Duration::minutes(5)).unwrap_or(created);
            (seen, s.key.clone(), s.object.metadata.resource_version.clone())
        })
        .collect();
    seen.sort();
    let ttl = chrono::Duration::from_std(r.ttl).unwrap_or(chrono::Duration::MAX);
    let expired = seen.iter().take_while(|(t, _, _)| now - *t > ttl).count();
    let over = seen.len().saturating_sub(expired).saturating_sub(r.max);
    let mut removed = 0;
    for (_, key, rv) in seen.into_iter().take(expired + over) {
        // As it was listed: one a repeat just refreshed is kept.
        let write = Write::Delete { key: key.clone(), resource_version: rv, uid: String::new(), grace_period_seconds: None };
        match store.write(write, false).await {
            Ok(_) => removed += 1,
            Err(steward_store::StoreError::NotFound { .. } | steward_store::StoreError::Conflict { .. }) => {}
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "expiring an event");
                break;
            }
        }
    }
    if removed > 0 {
        tracing::debug!(removed, expired, over, "events expired");
    }
    removed
}

/// Expires events every `r.every` until `stop` flips.
pub async fn expire(store: Store, r: Retention, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(r.every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        expire_once(&store, r, chrono::Utc::now()).await;
    }
}
