//! The Container kind's strategy for the generic REST layer
//! ([`crate::registry`]): decoding with field paths, defaults,
//! validation against this server's networks and runtime handlers, the
//! status subresource, field selectors and `steward get`'s columns.

use std::sync::Arc;

use serde_json::Value;
use steward_schema::manifest::{container_from_json, container_from_value};
use steward_schema::validate::{validate_container, validate_status};
use steward_schema::{Container, ContainerStatus, RESOURCE};
use steward_store::{Key, Object, Stored};

use crate::registry::{check_identity, yaml_body, Input, Kind, Strategy};
use crate::{ApiError, App};

fn key(ns: &str, name: &str) -> Key {
    Key::new(RESOURCE, ns, name)
}

/// `steward.dev/v1alpha1` Containers.
pub struct Containers;

/// The Container kind, for handlers outside the generic layer (logs, exec).
pub fn kind() -> Kind {
    Arc::new(Containers)
}

impl Strategy for Containers {
    fn base(&self) -> &'static str {
        "/apis/steward.dev/v1alpha1"
    }
    fn api_version(&self) -> &'static str {
        steward_schema::API_VERSION
    }
    fn kind(&self) -> &'static str {
        steward_schema::KIND
    }
    fn resource(&self) -> &'static str {
        RESOURCE
    }
    fn selectable_fields(&self) -> &'static [&'static str] {
        steward_schema::selector::SELECTABLE_FIELDS
    }

    fn admit(&self, app: &App, input: Input<'_>, ns: &str, url_name: Option<&str>) -> Result<Object, ApiError> {
        let mut c = match input {
            Input::Body { media: "application/json", body } => container_from_json(body).map_err(ApiError::BadRequest)?,
            Input::Body { media, body } => container_from_value(yaml_body(media, body)?).map_err(ApiError::BadRequest)?,
            Input::Applied(doc) => {
                let yaml = serde_yaml::to_value(&doc).map_err(|e| ApiError::BadRequest(e.to_string()))?;
                container_from_value(yaml).map_err(ApiError::BadRequest)?
            }
            Input::Value(doc) => {
                let yaml = serde_yaml::to_value(&doc).map_err(|e| ApiError::BadRequest(e.to_string()))?;
                container_from_value(yaml).map_err(|e| ApiError::BadRequest(format!("the patched object is not a Container: {e}")))?
            }
        };
        admit(app, &mut c, ns, url_name)?;
        to_object(c)
    }

    fn has_status(&self) -> bool {
        true
    }

    fn status(&self, doc: Value) -> Result<Option<Value>, ApiError> {
        status_of(doc)
    }

    fn field(&self, s: &Stored, field: &str) -> String {
        match field {
            "metadata.name" => s.key.name.clone(),
            "metadata.namespace" => s.key.namespace.clone(),
            "status.phase" => s
                .object
                .status
                .as_ref()
                .and_then(|st| st.get("phase"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        }
    }

    fn columns(&self) -> Value {
        steward_schema::table::column_definitions()
    }

    fn cells(&self, object: &Value, now: chrono::DateTime<chrono::Utc>) -> Option<Vec<Value>> {
        let c: Container = serde_json::from_value(object.clone()).ok()?;
        Some(steward_schema::table::cells(&c, now).iter().map(|c| c.json()).collect())
    }
}

/// Defaults, URL consistency and validation, as every write of a whole
/// object goes through.
fn admit(app: &App, c: &mut Container, ns: &str, url_name: Option<&str>) -> Result<(), ApiError> {
    check_identity(&mut c.metadata, ns, url_name)?;
    // An update that leaves the network out keeps the stored one: objects
    // stored when `none` was the default stay on it (the default for new
    // objects is `bridge`).
    if c.spec.network.is_none() {
        if let Some(cur) = app.store.get(&key(&c.metadata.namespace, &c.metadata.name)) {
            c.spec.network = cur
                .object
                .spec
                .get("network")
                .and_then(Value::as_str)
                .map(String::from);
        }
    }
    c.apply_defaults();
    validate_container(c).map_err(|errors| ApiError::Invalid {
        kind: "Container",
        name: c.metadata.name.clone(),
        errors,
    })?;
    check_runtime_class(app, c)?;
    check_network(app, c)
}

/// A Container naming a network this server does not have is refused
/// (one that is stored with it already stays manageable).
fn check_network(app: &App, c: &Container) -> Result<(), ApiError> {
    let (Some(net), Some(known)) = (&c.spec.network, &app.config.networks) else {
        return Ok(());
    };
    if net == steward_schema::NETWORK_NONE || net == steward_schema::NETWORK_HOST {
        return Ok(());
    }
    let current = app.store.get(&key(&c.metadata.namespace, &c.metadata.name));
    let unchanged = current.is_some_and(|cur| {
        cur.object.spec.get("network").and_then(Value::as_str) == Some(net.as_str())
    });
    let known = known();
    if unchanged || known.iter().any(|n| n == net) {
        return Ok(());
    }
    let mut errors = steward_schema::validate::FieldErrors::default();
    errors.invalid(
        "spec.network",
        format!(
            "{net:?} is not a network of this server (none, host, {})",
            known.join(", ")
        ),
    );
    Err(ApiError::Invalid {
        kind: "Container",
        name: c.metadata.name.clone(),
        errors,
    })
}

/// A Container naming a runtime handler the configuration does not define
/// is refused when it is created or when it changes its handler (an
/// existing one whose handler was removed since stays manageable).
fn check_runtime_class(app: &App, c: &Container) -> Result<(), ApiError> {
    let (Some(rc), Some(known)) = (&c.spec.runtime_class_name, &app.config.runtime_handlers) else {
        return Ok(());
    };
    let current = app.store.get(&key(&c.metadata.namespace, &c.metadata.name));
    let unchanged = current.is_some_and(|cur| cur.object.spec.get("runtimeClassName").and_then(Value::as_str) == Some(rc.as_str()));
    let known = known();
    if unchanged || known.iter().any(|h| h == rc) {
        return Ok(());
    }
    let mut errors = steward_schema::validate::FieldErrors::default();
    errors.invalid(
        "spec.runtimeClassName",
        format!("{rc:?} is not a runtime handler of this server (runtimes.handlers: {})", known.join(", ")),
    );
    Err(ApiError::Invalid { kind: "Container", name: c.metadata.name.clone(), errors })
}

fn to_object(c: Container) -> Result<Object, ApiError> {
    let ser = |e: serde_json::Error| ApiError::BadRequest(e.to_string());
    Ok(Object {
        api_version: c.api_version,
        kind: c.kind,
        metadata: c.metadata,
        spec: serde_json::to_value(c.spec).map_err(ser)?,
        status: c.status.map(serde_json::to_value).transpose().map_err(ser)?,
        rest: Default::default(),
    })
}

/// The stored Container `ns/name`, or 404.
pub(crate) fn get_current(app: &App, ns: &str, name: &str) -> Result<Arc<Stored>, ApiError> {
    crate::registry::get_current(app, &kind(), ns, name)
}

/// Parses and validates the status of a whole-object document.
fn status_of(doc: Value) -> Result<Option<Value>, ApiError> {
    let Some(status) = doc.get("status").filter(|s| !s.is_null()).cloned() else {
        return Ok(None);
    };
    let typed: ContainerStatus = serde_path_to_status(status)?;
    validate_status(&typed).map_err(|errors| ApiError::Invalid {
        kind: "Container",
        name: doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().into(),
        errors,
    })?;
    Ok(Some(serde_json::to_value(typed).map_err(|e| ApiError::BadRequest(e.to_string()))?))
}

fn serde_path_to_status(v: Value) -> Result<ContainerStatus, ApiError> {
    let yaml = serde_yaml::to_value(v).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let wrapped = serde_yaml::Mapping::from_iter([("status".into(), yaml)]);
    let c = container_from_value(serde_yaml::Value::Mapping(wrapped)).map_err(ApiError::BadRequest)?;
    Ok(c.status.unwrap_or_default())
}

