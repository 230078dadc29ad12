//! Health, version, discovery and the minimal OpenAPI document that
//! kubectl needs to send writes (see shared/notes/kubernetes-clients.md).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::{ApiError, AppState, STEWARD_VERSION};

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(app): State<AppState>) -> Response {
    if *app.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let reason = app.config.not_ready.as_ref().and_then(|rx| rx.borrow().clone());
    match reason {
        Some(r) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {r}")).into_response(),
        None => "ok".into_response(),
    }
}

pub async fn version() -> Json<Value> {
    // `minor` picks the kubectl binary on machines with the kubectl
    // dispatcher; 32 is the kubectl these machines run.
    Json(json!({
        "major": "1",
        "minor": "32",
        "gitVersion": format!("v1.32.0-steward.{STEWARD_VERSION}"),
        "gitCommit": "",
        "gitTreeState": "clean",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        "stewardVersion": STEWARD_VERSION,
    }))
}

pub async fn apis() -> Json<Value> {
    Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group_body()],
    }))
}

fn group_body() -> Value {
    let gv = json!({"groupVersion": "steward.dev/v1alpha1", "version": "v1alpha1"});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": "steward.dev",
        "versions": [gv.clone()],
        "preferredVersion": gv,
    })
}

pub async fn group() -> Json<Value> {
    Json(group_body())
}

pub async fn resources() -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "steward.dev/v1alpha1",
        "resources": [
            {"name": "containers", "singularName": "container", "namespaced": true, "kind": "Container",
             "shortNames": ["ct"],
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
            {"name": "containers/status", "singularName": "", "namespaced": true, "kind": "Container",
             "verbs": ["get", "patch", "update"]},
            {"name": "containers/log", "singularName": "", "namespaced": true, "kind": "Container", "verbs": ["get"]},
            {"name": "containers/exec", "singularName": "", "namespaced": true, "kind": "Container", "verbs": ["create", "get"]},
        ],
    }))
}

pub async fn openapi_root() -> Json<Value> {
    Json(json!({"paths": {"apis/steward.dev/v1alpha1": {
        "serverRelativeURL": format!("/openapi/v3/apis/steward.dev/v1alpha1?hash={STEWARD_VERSION}")}}}))
}

/// Enough for kubectl to trust the server with validation
/// (`fieldValidation=Strict`) and for `kubectl explain`.
pub async fn openapi_group_version() -> Response {
    let gvk = json!([{"group": "steward.dev", "version": "v1alpha1", "kind": "Container"}]);
    let mut schema = steward_schema::Container::json_schema();
    if let Some(o) = schema.as_object_mut() {
        o.remove("$schema");
        o.remove("definitions");
        o.insert("x-kubernetes-group-version-kind".into(), gvk.clone());
    }
    let body = json!({
        "openapi": "3.0.0",
        "info": {"title": "steward", "version": STEWARD_VERSION},
        "paths": {"/apis/steward.dev/v1alpha1/namespaces/{namespace}/containers/{name}": {
            "patch": {
                "x-kubernetes-group-version-kind": gvk[0],
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}},
            }
        }},
        "components": {"schemas": {"dev.steward.v1alpha1.Container": schema}},
    });
    ([(header::CONTENT_TYPE, "application/json")], Json(body)).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("the server could not find the requested resource".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("the server does not allow this method on the requested resource".into())
}
