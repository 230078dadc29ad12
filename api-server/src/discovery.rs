//! Health, version, discovery and the minimal OpenAPI document that
//! kubectl needs to send writes (see shared/notes/kubernetes-clients.md).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
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

/// What a discovery request's `Accept` asks for, in its order of
/// preference: kubectl 1.32 offers aggregated v2, then v2beta1, then plain
/// JSON; kubectl 1.28 only v2beta1. Answering a version the client did not
/// offer makes it see no resources at all, so the choice follows `Accept`.
#[derive(Debug, PartialEq)]
enum Discovery {
    Aggregated(&'static str),
    Plain,
}

fn negotiate(headers: &HeaderMap) -> Discovery {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    for range in accept.split(',') {
        let mut parts = range.split(';').map(|p| p.trim().to_ascii_lowercase().replace(' ', ""));
        let media = parts.next().unwrap_or_default();
        let params: Vec<String> = parts.collect();
        let has = |p: &str| params.iter().any(|x| x == p);
        if has("as=apigroupdiscoverylist") && has("g=apidiscovery.k8s.io") {
            if has("v=v2") {
                return Discovery::Aggregated("v2");
            }
            if has("v=v2beta1") {
                return Discovery::Aggregated("v2beta1");
            }
            continue;
        }
        if matches!(media.as_str(), "application/json" | "*/*" | "application/*") && !params.iter().any(|p| p.starts_with("as=")) {
            return Discovery::Plain;
        }
    }
    Discovery::Plain
}

const CONTAINER_VERBS: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];
const EVENT_VERBS: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];

/// The resources of a group version, in APIResourceList's shape.
fn resource_list(group_version: &str) -> Option<Value> {
    let resources = match group_version {
        "v1" => json!([
            {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event", "verbs": EVENT_VERBS, "shortNames": ["ev"]},
        ]),
        "steward.dev/v1alpha1" => json!([
            {"name": "containers", "singularName": "container", "namespaced": true, "kind": "Container",
             "shortNames": ["ct"], "verbs": CONTAINER_VERBS},
            {"name": "containers/status", "singularName": "", "namespaced": true, "kind": "Container",
             "verbs": ["get", "patch", "update"]},
            {"name": "containers/log", "singularName": "", "namespaced": true, "kind": "Container", "verbs": ["get"]},
            {"name": "containers/exec", "singularName": "", "namespaced": true, "kind": "Container", "verbs": ["create", "get"]},
        ]),
        _ => return None,
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

/// An APIResourceList's resources in aggregated discovery's shape: each
/// resource with its subresources folded in.
fn aggregated_resources(group: &str, version: &str) -> Value {
    let list = resource_list(&if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }).unwrap_or_default();
    let all = list["resources"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for r in all.iter().filter(|r| !r["name"].as_str().unwrap_or_default().contains('/')) {
        let name = r["name"].as_str().unwrap_or_default();
        let kind = |k: &Value| json!({"group": group, "version": version, "kind": k});
        let subresources: Vec<Value> = all
            .iter()
            .filter_map(|s| {
                let sub = s["name"].as_str()?.strip_prefix(&format!("{name}/"))?;
                Some(json!({"subresource": sub, "responseKind": kind(&s["kind"]), "verbs": s["verbs"]}))
            })
            .collect();
        let mut entry = json!({
            "resource": name,
            "responseKind": kind(&r["kind"]),
            "scope": if r["namespaced"] == true { "Namespaced" } else { "Cluster" },
            "singularResource": r["singularName"],
            "verbs": r["verbs"],
        });
        if let Some(short) = r.get("shortNames") {
            entry["shortNames"] = short.clone();
        }
        if !subresources.is_empty() {
            entry["subresources"] = json!(subresources);
        }
        out.push(entry);
    }
    json!(out)
}

fn aggregated(version: &'static str, items: Vec<Value>) -> Response {
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items});
    let ct = format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    ([(header::CONTENT_TYPE, ct), (header::VARY, "Accept".to_string())], body.to_string()).into_response()
}

fn plain(body: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json"), (header::VARY, "Accept")], body.to_string()).into_response()
}

/// `/api`: the core group (Events).
pub async fn core(headers: HeaderMap) -> Response {
    match negotiate(&headers) {
        Discovery::Aggregated(v) => aggregated(
            v,
            vec![json!({"metadata": {"creationTimestamp": null},
                        "versions": [{"version": "v1", "resources": aggregated_resources("", "v1"), "freshness": "Current"}]})],
        ),
        Discovery::Plain => plain(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})),
    }
}

/// `/api/v1`.
pub async fn core_v1() -> Response {
    plain(resource_list("v1").unwrap_or_default())
}

/// `/apis`: the steward.dev group.
pub async fn apis(headers: HeaderMap) -> Response {
    match negotiate(&headers) {
        Discovery::Aggregated(v) => aggregated(
            v,
            vec![json!({"metadata": {"name": "steward.dev", "creationTimestamp": null},
                        "versions": [{"version": "v1alpha1", "resources": aggregated_resources("steward.dev", "v1alpha1"), "freshness": "Current"}]})],
        ),
        Discovery::Plain => plain(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_body()]})),
    }
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

pub async fn resources() -> Response {
    plain(resource_list("steward.dev/v1alpha1").unwrap_or_default())
}

pub async fn openapi_root() -> Json<Value> {
    Json(json!({"paths": {
        "apis/steward.dev/v1alpha1": {"serverRelativeURL": format!("/openapi/v3/apis/steward.dev/v1alpha1?hash={STEWARD_VERSION}")},
        "api/v1": {"serverRelativeURL": format!("/openapi/v3/api/v1?hash={STEWARD_VERSION}")},
    }}))
}

/// One kind's OpenAPI: where it is served and what its schemas are called.
struct KindDoc {
    base: &'static str,
    plural: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    /// Prefix of its component names (`dev.steward.v1alpha1.`).
    prefix: &'static str,
    status: bool,
    description: &'static str,
}

const CONTAINERS: KindDoc = KindDoc {
    base: "/apis/steward.dev/v1alpha1",
    plural: "containers",
    group: "steward.dev",
    version: "v1alpha1",
    kind: "Container",
    prefix: "dev.steward.v1alpha1.",
    status: true,
    description: "A desired container (spec) and what a controller last observed of it (status).",
};

const EVENTS: KindDoc = KindDoc {
    base: "/api/v1",
    plural: "events",
    group: "",
    version: "v1",
    kind: "Event",
    prefix: "io.k8s.api.core.v1.",
    status: false,
    description: "Something that happened to an object, reported by a component.",
};

/// The group-version document: every operation of the kind, each with its
/// group-version-kind and action, `fieldValidation` on writes (without
/// it kubectl refuses to apply unless --validate=false), and every schema
/// as a component with its description (`kubectl explain`).
fn document(k: &KindDoc, root: Value) -> Value {
    let gvk = json!({"group": k.group, "version": k.version, "kind": k.kind});
    let list_gvk = json!({"group": k.group, "version": k.version, "kind": format!("{}List", k.kind)});
    let mut schemas = component_schemas(root, k.prefix, k.kind, &json!([gvk]), k.description);
    let obj_ref = json!({"$ref": format!("#/components/schemas/{}{}", k.prefix, k.kind)});
    schemas.insert(
        format!("{}{}List", k.prefix, k.kind),
        json!({
            "description": format!("A list of {}s.", k.kind),
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string", "description": "APIVersion of this list."},
                "kind": {"type": "string", "description": "Kind of this list."},
                "metadata": {"type": "object", "description": "The list's resourceVersion and continue token.",
                             "properties": {"resourceVersion": {"type": "string"}, "continue": {"type": "string"}}},
                "items": {"type": "array", "items": obj_ref.clone(), "description": format!("The {}s.", k.kind)},
            },
            "x-kubernetes-group-version-kind": [list_gvk],
        }),
    );
    let list_ref = json!({"$ref": format!("#/components/schemas/{}{}List", k.prefix, k.kind)});
    let q = |name: &str, description: &str, ty: &str| json!({"name": name, "in": "query", "description": description, "schema": {"type": ty}, "uniqueItems": true});
    let path_param = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}, "uniqueItems": true});
    let write_params = || {
        vec![
            q("dryRun", "All: validate and answer, store nothing.", "string"),
            q("fieldManager", "Who writes, for metadata.managedFields.", "string"),
            q("fieldValidation", "Strict (default), Warn or Ignore: what to do with unknown fields.", "string"),
        ]
    };
    let list_params = vec![
        q("labelSelector", "Only objects whose labels match.", "string"),
        q("fieldSelector", "Only objects whose fields match.", "string"),
        q("limit", "At most this many per page.", "integer"),
        q("continue", "The next page's token.", "string"),
        q("resourceVersion", "For a watch: changes after this revision.", "string"),
        q("watch", "Stream changes instead of a list.", "boolean"),
        q("allowWatchBookmarks", "Send BOOKMARK events.", "boolean"),
        q("timeoutSeconds", "End a watch after this long.", "integer"),
    ];
    let body = |schema: &Value, types: &[&str]| {
        let content: serde_json::Map<String, Value> = types.iter().map(|t| (t.to_string(), json!({"schema": schema}))).collect();
        json!({"required": true, "content": content})
    };
    let ok = |schema: &Value| json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}});
    let created = |schema: &Value| {
        json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
               "201": {"description": "Created", "content": {"application/json": {"schema": schema}}}})
    };
    let op = |action: &str, id: &str, params: Vec<Value>, request: Option<Value>, responses: Value, gvk: &Value| {
        let mut o = json!({
            "operationId": id,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
            "responses": responses,
        });
        if let Some(r) = request {
            o["requestBody"] = r;
        }
        o
    };
    let id = |verb: &str, suffix: &str| format!("{verb}Namespaced{}{suffix}", k.kind);
    let mut patch_params = write_params();
    patch_params.push(q("force", "An apply takes the fields of its conflicts.", "boolean"));
    let patch_types = ["application/merge-patch+json", "application/json-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"];
    let delete_options = json!({"type": "object", "description": "DeleteOptions: gracePeriodSeconds, preconditions, propagationPolicy, dryRun."});
    let collection = format!("{}/namespaces/{{namespace}}/{}", k.base, k.plural);
    let object = format!("{collection}/{{name}}");
    let mut paths = serde_json::Map::new();
    paths.insert(
        format!("{}/{}", k.base, k.plural),
        json!({"get": op("list", &format!("list{}ForAllNamespaces", k.kind), list_params.clone(), None, ok(&list_ref), &gvk)}),
    );
    paths.insert(
        collection,
        json!({
            "parameters": [path_param("namespace")],
            "get": op("list", &id("list", ""), list_params, None, ok(&list_ref), &gvk),
            "post": op("post", &id("create", ""), write_params(), Some(body(&obj_ref, &["application/json", "application/yaml"])), created(&obj_ref), &gvk),
        }),
    );
    paths.insert(
        object.clone(),
        json!({
            "parameters": [path_param("namespace"), path_param("name")],
            "get": op("get", &id("read", ""), vec![], None, ok(&obj_ref), &gvk),
            "put": op("put", &id("replace", ""), write_params(), Some(body(&obj_ref, &["application/json", "application/yaml"])), created(&obj_ref), &gvk),
            "patch": op("patch", &id("patch", ""), patch_params.clone(), Some(body(&json!({"type": "object"}), &patch_types)), created(&obj_ref), &gvk),
            "delete": op("delete", &id("delete", ""), vec![q("dryRun", "All: answer, delete nothing.", "string"), q("gracePeriodSeconds", "Seconds the object gets to stop.", "integer"), q("propagationPolicy", "Orphan, Background or Foreground.", "string")],
                         Some(json!({"content": {"application/json": {"schema": delete_options}}})), ok(&obj_ref), &gvk),
        }),
    );
    if k.status {
        paths.insert(
            format!("{object}/status"),
            json!({
                "parameters": [path_param("namespace"), path_param("name")],
                "get": op("get", &id("read", "Status"), vec![], None, ok(&obj_ref), &gvk),
                "put": op("put", &id("replace", "Status"), write_params(), Some(body(&obj_ref, &["application/json"])), ok(&obj_ref), &gvk),
                "patch": op("patch", &id("patch", "Status"), write_params(), Some(body(&json!({"type": "object"}), &patch_types[..3])), ok(&obj_ref), &gvk),
            }),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "steward", "version": STEWARD_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

pub async fn openapi_group_version() -> Response {
    let body = document(&CONTAINERS, steward_schema::Container::json_schema());
    ([(header::CONTENT_TYPE, "application/json")], Json(body)).into_response()
}

pub async fn openapi_core_v1() -> Response {
    let body = document(&EVENTS, steward_schema::Event::json_schema());
    ([(header::CONTENT_TYPE, "application/json")], Json(body)).into_response()
}

/// A kind's JSON Schema (from the schema crate: its doc comments are the
/// descriptions) as OpenAPI v3 `components.schemas`: each definition a
/// component of its own, every `$ref` pointing there, so `kubectl explain
/// containers.spec.resources` can walk it.
fn component_schemas(mut root: Value, prefix: &str, kind: &str, gvk: &Value, description: &str) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    let Some(o) = root.as_object_mut() else { return out };
    o.remove("$schema");
    o.remove("title");
    let defs = o.remove("definitions").or_else(|| o.remove("$defs"));
    if let Some(Value::Object(defs)) = defs {
        for (name, mut d) in defs {
            rewrite_refs(&mut d, prefix);
            out.insert(format!("{prefix}{name}"), d);
        }
    }
    rewrite_refs(&mut root, prefix);
    if let Some(o) = root.as_object_mut() {
        o.insert("x-kubernetes-group-version-kind".into(), gvk.clone());
        o.entry("description").or_insert_with(|| json!(description));
    }
    out.insert(format!("{prefix}{kind}"), root);
    out
}

/// JSON Schema (draft 7, as schemars writes it) → OpenAPI 3.0 as kubectl
/// reads it: `#/definitions/X` → `#/components/schemas/<prefix>X`;
/// `type: [T, null]` → `type: T, nullable`; `anyOf: [ref, null]` →
/// `allOf: [ref], nullable` (kube-apiserver's wrapping of a ref); a number
/// or a string (a port by number or name) → Kubernetes' int-or-string.
fn rewrite_refs(v: &mut Value, prefix: &str) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/definitions/").or_else(|| r.strip_prefix("#/$defs/")) {
                    *r = format!("#/components/schemas/{prefix}{name}");
                }
            }
            if let Some(Value::Array(types)) = o.get("type").cloned() {
                let real: Vec<Value> = types.iter().filter(|t| t.as_str() != Some("null")).cloned().collect();
                if real.len() == 1 {
                    o.insert("type".into(), real[0].clone());
                    if real.len() < types.len() {
                        o.insert("nullable".into(), json!(true));
                    }
                }
            }
            if let Some(Value::Array(any)) = o.get("anyOf").cloned() {
                let is_null = |s: &Value| s.get("type").and_then(Value::as_str) == Some("null");
                let rest: Vec<Value> = any.iter().filter(|s| !is_null(s)).cloned().collect();
                let types: Vec<&str> = rest.iter().filter_map(|s| s.get("type").and_then(Value::as_str)).collect();
                if rest.len() == 1 && rest.len() < any.len() {
                    o.remove("anyOf");
                    o.insert("allOf".into(), json!(rest));
                    o.insert("nullable".into(), json!(true));
                } else if types.len() == 2 && types.contains(&"integer") && types.contains(&"string") {
                    o.remove("anyOf");
                    o.insert("type".into(), json!("string"));
                    o.insert("format".into(), json!("int-or-string"));
                    o.insert("x-kubernetes-int-or-string".into(), json!(true));
                }
            }
            for (_, child) in o.iter_mut() {
                rewrite_refs(child, prefix);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(x, prefix)),
        _ => {}
    }
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("the server could not find the requested resource".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("the server does not allow this method on the requested resource".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_schema_becomes_openapi_v3_as_kubectl_reads_it() {
        let mut v = json!({
            "properties": {
                "a": {"type": ["string", "null"]},
                "b": {"anyOf": [{"$ref": "#/definitions/Resources"}, {"type": "null"}]},
                "c": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                "d": {"items": {"$ref": "#/definitions/EnvVar"}},
            }
        });
        rewrite_refs(&mut v, "dev.steward.v1alpha1.");
        let p = &v["properties"];
        assert_eq!(p["a"], json!({"type": "string", "nullable": true}));
        assert_eq!(p["b"], json!({"allOf": [{"$ref": "#/components/schemas/dev.steward.v1alpha1.Resources"}], "nullable": true}));
        assert_eq!(p["c"]["x-kubernetes-int-or-string"], true);
        assert_eq!(p["d"]["items"]["$ref"], "#/components/schemas/dev.steward.v1alpha1.EnvVar");
        // Every ref of the real documents points at a component they
        // have; every operation names its kind; writes take fieldValidation.
        for (k, root) in [(&CONTAINERS, steward_schema::Container::json_schema()), (&EVENTS, steward_schema::Event::json_schema())] {
            let doc = document(k, root);
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            let text = serde_json::to_string(&doc).unwrap_or_default();
            for r in text.split("\"$ref\":\"").skip(1) {
                let target = r.split('"').next().unwrap_or_default();
                let name = target.strip_prefix("#/components/schemas/").unwrap_or(target);
                assert!(schemas.contains_key(name), "{}: dangling {target}", k.kind);
            }
            assert!(!text.contains("#/definitions/") && !text.contains("\"null\""), "JSON Schema forms left");
            assert_eq!(schemas[&format!("{}{}", k.prefix, k.kind)]["x-kubernetes-group-version-kind"][0]["kind"], k.kind);
            assert!(schemas.contains_key(&format!("{}{}List", k.prefix, k.kind)));
            let mut writes = 0;
            for (_, item) in doc["paths"].as_object().unwrap() {
                for (verb, op) in item.as_object().unwrap().iter().filter(|(v, _)| *v != "parameters") {
                    assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], k.kind, "{verb}");
                    if matches!(verb.as_str(), "post" | "put" | "patch") {
                        writes += 1;
                        assert!(op["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"), "{verb}");
                    }
                }
            }
            assert!(writes >= 3, "{}: {writes} writes", k.kind);
        }
    }

    #[test]
    fn discovery_answers_the_version_the_client_offers() {
        let h = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, v.parse().unwrap());
            h
        };
        let k132 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(&h(k132)), Discovery::Aggregated("v2"));
        let k128 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(&h(k128)), Discovery::Aggregated("v2beta1"));
        assert_eq!(negotiate(&h("application/json")), Discovery::Plain);
        assert_eq!(negotiate(&HeaderMap::new()), Discovery::Plain);
        assert_eq!(negotiate(&h("application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList,application/json")), Discovery::Plain);
        let r = aggregated_resources("steward.dev", "v1alpha1");
        assert_eq!(r[0]["resource"], "containers");
        let subs: Vec<&str> = r[0]["subresources"].as_array().unwrap().iter().map(|s| s["subresource"].as_str().unwrap()).collect();
        assert_eq!(subs, ["status", "log", "exec"]);
        assert_eq!(aggregated_resources("", "v1")[0]["responseKind"], json!({"group": "", "version": "v1", "kind": "Event"}));
    }
}
