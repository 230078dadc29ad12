//! The generic REST storage layer, as kube-apiserver's generic registry:
//! one set of handlers (get, list, watch, create, update, patch, apply,
//! delete, the status subresource) for every kind, each kind bringing a
//! [`Strategy`]: how a body becomes a valid object of the kind (decoding,
//! defaults, validation), whether it has a status subresource, which fields
//! a field selector may name, and its table columns.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde_json::Value;
use steward_schema::manifest::yaml_value_bounded;
use steward_store::{EventType, Key, Object, Stored, StoreError, Write, WriteResult, MAX_DEPTH, MAX_OBJECT_BYTES, MAX_STORED_BYTES};
use tracing::Instrument;

use crate::metrics::Verb;
use crate::fields;
use steward_schema::meta::ManagedFields;
use crate::query::{ContinueToken, FieldValidation, Params};
use crate::{watch, ApiError, App, AppState};

/// How often a patch or apply is retried when a concurrent write moved the
/// object between its read and its write (only when the client set no
/// resourceVersion precondition of its own).
const CONFLICT_RETRIES: usize = 5;

/// Most operations in one JSON patch (kube-apiserver's
/// MaxJSONPatchOperations).
const MAX_JSON_PATCH_OPS: usize = 10_000;

/// How large (in memory, roughly) a YAML body may grow by expanding its
/// aliases: twice the largest object the store keeps.
pub const MAX_YAML_EXPANSION: usize = 2 * MAX_OBJECT_BYTES;

/// Bodies larger than this are decoded on the blocking pool: parsing a
/// large YAML body takes long enough to stall the runtime's few workers
/// (health probes, watches) otherwise. Small ones, the common case, stay
/// inline and cheap.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// What a write hands a strategy to make an object of.
pub enum Input<'a> {
    /// A whole-object body of this media type (`application/json` or a
    /// YAML type); the strategy decodes it, naming fields in its errors.
    Body { media: &'a str, body: &'a [u8] },
    /// A document already decoded and patched.
    Value(Value),
    /// A whole document decoded by the registry (an apply's result, or a
    /// body under `fieldValidation=Warn|Ignore`); errors as for a body.
    Applied(Value),
}

/// One kind's rules, as kube-apiserver's `RESTCreateStrategy` and friends.
pub trait Strategy: Send + Sync + 'static {
    /// The URL prefix of the kind's group version: `/apis/G/V` or `/api/v1`.
    fn base(&self) -> &'static str;
    /// `apiVersion`, e.g. `steward.dev/v1alpha1` or `v1`.
    fn api_version(&self) -> &'static str;
    fn kind(&self) -> &'static str;
    /// The resource (plural): the URL segment and the store's key.
    fn resource(&self) -> &'static str;
    /// Field paths a field selector may name.
    fn selectable_fields(&self) -> &'static [&'static str];
    /// The object `input` describes, defaulted and validated, in the
    /// store's shape; `ns` and `url_name` are the request's.
    fn admit(&self, app: &App, input: Input<'_>, ns: &str, url_name: Option<&str>) -> Result<Object, ApiError>;
    /// Whether the kind has a status subresource.
    fn has_status(&self) -> bool {
        false
    }
    /// The status subresource: the validated status of a whole-object
    /// document (`None` when the document has none).
    fn status(&self, _doc: Value) -> Result<Option<Value>, ApiError> {
        Err(ApiError::BadRequest(format!("{} have no status subresource", self.resource())))
    }
    /// The object's value of selectable field `field` ("" when unset).
    fn field(&self, s: &Stored, field: &str) -> String;
    /// The Table's column definitions.
    fn columns(&self) -> Value;
    /// One Table row's cells for the object (its stored JSON, parsed);
    /// `None` if it does not decode (never for what the store holds).
    fn cells(&self, object: &Value, now: chrono::DateTime<chrono::Utc>) -> Option<Vec<Value>>;
}

pub type Kind = Arc<dyn Strategy>;

fn key(kind: &Kind, ns: &str, name: &str) -> Key {
    Key::new(kind.resource(), ns, name)
}

pub fn span(verb: &'static str, ns: &str, name: &str) -> tracing::Span {
    tracing::info_span!("request", verb, key = %format!("{ns}/{name}"))
}

/// The object's JSON as the response body, with `code`.
fn object_response(code: StatusCode, verb: &'static str, stored: &Stored) -> Response {
    let mut r = (code, [(header::CONTENT_TYPE, "application/json")], Body::from(stored.json.clone())).into_response();
    r.extensions_mut().insert(Verb(verb));
    r
}

/// The media type of a whole-object body (create, replace, status): as
/// declared, or JSON when none is and the server takes tokens, as
/// kube-apiserver reads it (the official Python client's custom-object
/// create sends none). A token-less server keeps refusing it: a browser's
/// cross-site "simple request" carries no type, and no token is needed.
fn body_media_type(app: &App, headers: &HeaderMap) -> String {
    let m = media_type(headers);
    if m.is_empty() && app.config.token.is_some() {
        return "application/json".into();
    }
    m
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        // No default: a body without a declared type is what a browser's
        // cross-site "simple request" sends, and it is refused.
        .unwrap_or_default()
}

/// Reads the body, refusing more than the configured limit with 413.
pub async fn read_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = app.config.max_body_bytes;
    let too_large = || ApiError::TooLarge(format!("the request body is larger than the limit of {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let timeout = app.config.body_read_timeout;
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await.map_err(|_| {
        ApiError::RequestTimeout(format!("the request body was not received within {}s", timeout.as_secs_f64()))
    })?;
    read.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = s.source();
        }
        ApiError::BadRequest(format!("reading the request body: {e}"))
    })
}

/// A YAML body's value, its aliases bounded; or 415 for a type that is
/// neither JSON nor YAML. Strategies decode JSON bodies themselves.
pub fn yaml_body(media: &str, body: &[u8]) -> Result<serde_yaml::Value, ApiError> {
    match media {
        "application/yaml" | "application/x-yaml" | "text/yaml" | "application/apply-patch+yaml" => {
            let text = std::str::from_utf8(body).map_err(|e| ApiError::BadRequest(format!("body is not UTF-8: {e}")))?;
            // Aliases may not expand the document past what a body of the
            // largest size could hold.
            yaml_value_bounded(text, MAX_YAML_EXPANSION).map_err(ApiError::BadRequest)
        }
        "" => Err(ApiError::UnsupportedMediaType(
            "a Content-Type header is required: application/json or application/yaml".into(),
        )),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported content type {other:?}: send application/json or application/yaml"
        ))),
    }
}

/// [`Strategy::admit`] of a body, off the async workers when it is large.
async fn admit_body(app: &AppState, kind: &Kind, media: String, body: Bytes, ns: String, url_name: Option<String>) -> Result<Object, ApiError> {
    if body.len() <= INLINE_DECODE_BYTES {
        return kind.admit(app, Input::Body { media: &media, body: &body }, &ns, url_name.as_deref());
    }
    let (app, kind) = (app.clone(), kind.clone());
    tokio::task::spawn_blocking(move || kind.admit(&app, Input::Body { media: &media, body: &body }, &ns, url_name.as_deref()))
        .await
        .map_err(|e| ApiError::Store(StoreError::Internal(format!("decoding the body: {e}"))))?
}

/// The namespace and name of a whole object against the request's: filled
/// when left out, refused when different.
pub fn check_identity(meta: &mut steward_schema::ObjectMeta, ns: &str, url_name: Option<&str>) -> Result<(), ApiError> {
    // The URL's namespace becomes part of the key of every kind.
    steward_schema::validate::dns1123_label(ns).map_err(|m| ApiError::BadRequest(format!("namespace {ns:?} in the URL: {m}")))?;
    if meta.namespace.is_empty() {
        meta.namespace = ns.to_string();
    } else if meta.namespace != ns {
        return Err(ApiError::BadRequest(format!(
            "the namespace of the object ({}) does not match the namespace of the request ({ns})",
            meta.namespace
        )));
    }
    if url_name.is_none() && meta.name.is_empty() {
        generate_name(meta);
    }
    if let Some(name) = url_name {
        if meta.name.is_empty() {
            meta.name = name.to_string();
        } else if meta.name != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name in the URL ({name})",
                meta.name
            )));
        }
    }
    Ok(())
}

/// A name for an object created with only `metadata.generateName`, as
/// kube-apiserver makes one: the prefix and five random characters (the
/// kind's validation then judges the whole name).
fn generate_name(meta: &mut steward_schema::ObjectMeta) {
    if let Some(mut prefix) = meta.generate_name.clone().filter(|p| !p.is_empty()) {
        // As kube-apiserver: the prefix is cut to 58 characters, so the
        // name fits 63 with its suffix.
        if prefix.len() > 58 {
            let mut end = 58;
            while !prefix.is_char_boundary(end) {
                end -= 1;
            }
            prefix.truncate(end);
        }
        // Five characters of kube-apiserver's alphabet, from the uuid
        // generator the store already draws uids from.
        const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let raw = uuid::Uuid::new_v4().into_bytes();
        let suffix: String = raw[..5].iter().map(|b| char::from(CHARS[usize::from(*b) % CHARS.len()])).collect();
        meta.name = format!("{prefix}{suffix}");
    }
}

/// The stored object `ns/name` of `kind`, or 404.
pub fn get_current(app: &App, kind: &Kind, ns: &str, name: &str) -> Result<Arc<Stored>, ApiError> {
    app.store.get(&key(kind, ns, name)).ok_or_else(|| ApiError::Store(StoreError::NotFound { key: key(kind, ns, name) }))
}

/// The routes of `kind`: its collection (namespaced and across namespaces),
/// its objects, and its status subresource when it has one.
pub fn routes(router: Router<AppState>, kind: Kind) -> Router<AppState> {
    let base = kind.base();
    let plural = kind.resource();
    let k = kind.clone();
    let router = router.route(
        &format!("{base}/{plural}"),
        get(move |State(app): State<AppState>, RawQuery(q): RawQuery, h: HeaderMap| list_or_watch(app, k, None, q, h)),
    );
    let (k1, k2) = (kind.clone(), kind.clone());
    let router = router.route(
        &format!("{base}/namespaces/{{ns}}/{plural}"),
        get(move |State(app): State<AppState>, Path(ns): Path<String>, RawQuery(q): RawQuery, h: HeaderMap| {
            list_or_watch(app, k1, Some(ns), q, h)
        })
        .post(move |State(app): State<AppState>, Path(ns): Path<String>, RawQuery(q): RawQuery, h: HeaderMap, b: Body| {
            create(app, k2, ns, q, h, b)
        }),
    );
    let (k1, k2, k3, k4) = (kind.clone(), kind.clone(), kind.clone(), kind.clone());
    let router = router.route(
        &format!("{base}/namespaces/{{ns}}/{plural}/{{name}}"),
        get(move |State(app): State<AppState>, Path(p): Path<(String, String)>, RawQuery(q): RawQuery, h: HeaderMap| {
            read(app, k1, p, q, h)
        })
        .put(move |State(app): State<AppState>, Path(p): Path<(String, String)>, RawQuery(q): RawQuery, h: HeaderMap, b: Body| {
            replace(app, k2, p, q, h, b)
        })
        .patch(move |State(app): State<AppState>, Path(p): Path<(String, String)>, RawQuery(q): RawQuery, h: HeaderMap, b: Body| {
            patch(app, k3, p, q, h, b)
        })
        .delete(move |State(app): State<AppState>, Path(p): Path<(String, String)>, RawQuery(q): RawQuery, h: HeaderMap, b: Body| {
            delete(app, k4, p, q, h, b)
        }),
    );
    if !kind.has_status() {
        return router;
    }
    let (k1, k2, k3) = (kind.clone(), kind.clone(), kind);
    router.route(
        &format!("{base}/namespaces/{{ns}}/{plural}/{{name}}/status"),
        get(move |State(app): State<AppState>, Path(p): Path<(String, String)>, RawQuery(q): RawQuery, h: HeaderMap| {
            read(app, k1, p, q, h)
        })
        .put(move |State(app): State<AppState>, Path(p): Path<(String, String)>, RawQuery(q): RawQuery, h: HeaderMap, b: Body| {
            replace_status(app, k2, p, q, h, b)
        })
        .patch(move |State(app): State<AppState>, Path(p): Path<(String, String)>, RawQuery(q): RawQuery, h: HeaderMap, b: Body| {
            patch_status(app, k3, p, q, h, b)
        }),
    )
}

fn params(kind: &Kind, q: Option<&str>) -> Result<Params, ApiError> {
    Params::parse_for(q, kind.selectable_fields())
}

async fn read(app: AppState, kind: Kind, (ns, name): (String, String), q: Option<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let _s = span("get", &ns, &name).entered();
    let cur = get_current(&app, &kind, &ns, &name)?;
    if crate::table::wanted(&headers) {
        let include = crate::table::Include::from_query(q.as_deref());
        let rows = crate::table::row(kind.as_ref(), &cur.json, include, chrono::Utc::now()).into_iter().collect();
        let rv = cur.object.metadata.resource_version.clone();
        return Ok(table_response(crate::table::table(kind.as_ref(), rows, &rv, None, true), "get"));
    }
    Ok(object_response(StatusCode::OK, "get", &cur))
}

fn table_response(t: Value, verb: &'static str) -> Response {
    let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, crate::table::CONTENT_TYPE)], t.to_string()).into_response();
    r.extensions_mut().insert(Verb(verb));
    r
}

async fn create(app: AppState, kind: Kind, ns: String, q: Option<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let p = params(&kind, q.as_deref())?;
    let bytes = read_body(&app, &headers, body).await?;
    let media = body_media_type(&app, &headers);
    let mut dropped = Vec::new();
    let mut obj = match p.field_validation {
        FieldValidation::Strict => admit_body(&app, &kind, media, bytes, ns.clone(), None).await?,
        _ => admit_lenient(&app, &kind, decode_value(&media, &bytes)?, &ns, None, &mut dropped)?,
    };
    let warnings = warnings_of(p.field_validation, &dropped);
    let name = obj.metadata.name.clone();
    let manager = manager(&p, &headers);
    async {
        obj.metadata.managed_fields = fields::created(&obj, &manager, kind.api_version()).as_ref().and_then(ManagedFields::from_value);
        let r = app.store.write(Write::Create { key: key(&kind, &ns, &name), object: obj }, p.dry_run).await?;
        Ok(warn(object_response(StatusCode::CREATED, "create", &r.object), &warnings))
    }
    .instrument(span("create", &ns, &name))
    .await
}

/// The manager of a write that is not an apply: `fieldManager`, else the
/// client's name from its User-Agent (`kubectl/v1.32.0 (...)` → `kubectl`),
/// as kube-apiserver does.
fn manager(p: &Params, headers: &HeaderMap) -> String {
    p.field_manager.clone().unwrap_or_else(|| {
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.chars().take(128).collect())
            .unwrap_or_else(|| "unknown".into())
    })
}

fn to_json(obj: &Object) -> Result<Value, ApiError> {
    serde_json::to_value(obj).map_err(|e| ApiError::Store(StoreError::Internal(e.to_string())))
}

/// A body as a JSON value (JSON, or YAML read as JSON).
fn decode_value(media: &str, body: &[u8]) -> Result<Value, ApiError> {
    if media == "application/json" {
        return serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")));
    }
    serde_json::to_value(yaml_body(media, body)?).map_err(|e| ApiError::BadRequest(format!("the YAML is not a JSON object: {e}")))
}

/// [`Strategy::admit`] under `fieldValidation=Warn|Ignore`: an unknown
/// field is dropped (its path added to `dropped`) instead of refusing the
/// object.
fn admit_lenient(app: &App, kind: &Kind, mut doc: Value, ns: &str, url_name: Option<&str>, dropped: &mut Vec<String>) -> Result<Object, ApiError> {
    // Each pass drops one unknown field; a body has a bounded number.
    for _ in 0..256 {
        match kind.admit(app, Input::Applied(doc.clone()), ns, url_name) {
            Err(ApiError::BadRequest(m)) => {
                let Some(path) = unknown_field(&m) else { return Err(ApiError::BadRequest(m)) };
                if !remove_path(&mut doc, &path) {
                    return Err(ApiError::BadRequest(m));
                }
                dropped.push(path);
            }
            r => return r,
        }
    }
    Err(ApiError::BadRequest("too many unknown fields".into()))
}

/// The warnings of dropped unknown fields (none under Ignore).
fn warnings_of(v: FieldValidation, dropped: &[String]) -> Vec<String> {
    match v {
        FieldValidation::Warn => dropped.iter().map(|p| format!("unknown field {p:?}")).collect(),
        _ => Vec::new(),
    }
}

/// The path of the unknown field a decoding error names
/// (`spec.env[0].foo: unknown field `foo`, expected ...`).
fn unknown_field(message: &str) -> Option<String> {
    let (path, rest) = message.split_once(": ")?;
    rest.starts_with("unknown field `").then(|| path.to_string())
}

/// Removes `spec.env[0].foo` from `doc`; whether it was there. A key may
/// itself hold dots (`foo.bar`): the longest key present wins.
fn remove_path(doc: &mut Value, path: &str) -> bool {
    let segments: Vec<&str> = path.split('.').collect();
    remove_segments(doc, &segments)
}

fn remove_segments(cur: &mut Value, segments: &[&str]) -> bool {
    // The longest run of segments that is one key here.
    for take in (1..=segments.len()).rev() {
        let joined = segments[..take].join(".");
        let (name, indices) = match joined.find('[') {
            Some(at) if joined.ends_with(']') => (joined[..at].to_string(), joined[at..].to_string()),
            _ => (joined.clone(), String::new()),
        };
        let rest = &segments[take..];
        if rest.is_empty() && indices.is_empty() {
            if cur.as_object_mut().and_then(|m| m.remove(&name)).is_some() {
                return true;
            }
            continue;
        }
        if rest.is_empty() {
            continue;
        }
        let Some(child) = cur.as_object_mut().and_then(|m| m.get_mut(&name)) else { continue };
        if let Some(target) = descend(child, &indices) {
            if remove_segments(target, rest) {
                return true;
            }
        }
    }
    false
}

/// The element `[i][j]...` of `v`, if there is one.
fn descend<'a>(mut v: &'a mut Value, indices: &str) -> Option<&'a mut Value> {
    for idx in indices.split(']').filter_map(|s| s.strip_prefix('[')) {
        let i: usize = idx.parse().ok()?;
        v = v.as_array_mut()?.get_mut(i)?;
    }
    Some(v)
}

/// A response with `Warning` headers, as kube-apiserver sends them
/// (kubectl prints each as `Warning: ...`).
fn warn(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

async fn replace(app: AppState, kind: Kind, (ns, name): (String, String), q: Option<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let p = params(&kind, q.as_deref())?;
    let bytes = read_body(&app, &headers, body).await?;
    let media = body_media_type(&app, &headers);
    let manager = manager(&p, &headers);
    async {
        let mut dropped = Vec::new();
        let obj = match p.field_validation {
            FieldValidation::Strict => admit_body(&app, &kind, media, bytes, ns.clone(), Some(name.clone())).await?,
            _ => admit_lenient(&app, &kind, decode_value(&media, &bytes)?, &ns, Some(&name), &mut dropped)?,
        };
        let warnings = warnings_of(p.field_validation, &dropped);
        // The managed fields are computed against the object this write
        // replaces: a write without a resourceVersion of its own gets that
        // one's, and is retried if another write came in between.
        let explicit_rv = !obj.metadata.resource_version.is_empty();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let cur = get_current(&app, &kind, &ns, &name)?;
            let old: Value = serde_json::from_slice(&cur.json).map_err(|e| StoreError::Internal(e.to_string()))?;
            let mut obj = obj.clone();
            if !explicit_rv {
                obj.metadata.resource_version = cur.object.metadata.resource_version.clone();
            }
            obj.metadata.managed_fields =
                fields::after_update(Some(&old), &to_json(&obj)?, &manager, kind.api_version()).as_ref().and_then(ManagedFields::from_value);
            match app.store.write(Write::Update { key: key(&kind, &ns, &name), object: obj }, p.dry_run).await {
                Err(StoreError::Conflict { .. }) if !explicit_rv && attempt <= CONFLICT_RETRIES => continue,
                r => return Ok(warn(object_response(StatusCode::OK, "update", &r?.object), &warnings)),
            }
        }
    }
    .instrument(span("update", &ns, &name))
    .await
}

async fn delete(app: AppState, kind: Kind, (ns, name): (String, String), q: Option<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let mut p = params(&kind, q.as_deref())?;
    let bytes = read_body(&app, &headers, body).await?;
    let opts = crate::query::DeleteOptions::parse(&bytes, q.as_deref())?;
    if opts.dry_run {
        p.dry_run = true;
    }
    let write = Write::Delete {
        key: key(&kind, &ns, &name),
        resource_version: opts.resource_version,
        uid: opts.uid,
        grace_period_seconds: opts.grace_period_seconds,
    };
    let r = app.store.write(write, p.dry_run).instrument(span("delete", &ns, &name)).await?;
    Ok(object_response(StatusCode::OK, "delete", &r.object))
}

/// Which PATCH flavour a content type names.
enum PatchKind {
    Merge,
    Json,
    Apply,
}

fn patch_kind(media: &str) -> Result<PatchKind, ApiError> {
    match media {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => Ok(PatchKind::Merge),
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported patch content type {other:?}: use application/merge-patch+json, application/json-patch+json, \
             application/strategic-merge-patch+json or application/apply-patch+yaml"
        ))),
    }
}

/// Applies a merge or JSON patch to `doc`. Returns whether the patch itself
/// sets metadata.resourceVersion (then it is the client's precondition and
/// a conflict is not retried).
fn apply_patch(kind: &PatchKind, body: &[u8], doc: &mut Value) -> Result<bool, ApiError> {
    let bad = |e: String| ApiError::BadRequest(e);
    match kind {
        PatchKind::Merge => {
            let patch: Value = serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON merge patch: {e}")))?;
            if !patch.is_object() {
                return Err(bad("a merge patch must be a JSON object".into()));
            }
            json_patch::merge(doc, &patch);
            Ok(patch.pointer("/metadata/resourceVersion").is_some())
        }
        PatchKind::Json => {
            let ops: json_patch::Patch =
                serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON patch: {e}")))?;
            if ops.0.len() > MAX_JSON_PATCH_OPS {
                return Err(ApiError::TooLarge(format!(
                    "the JSON patch has {} operations, more than the limit of {MAX_JSON_PATCH_OPS}",
                    ops.0.len()
                )));
            }
            let explicit = ops.0.iter().any(|op| {
                !matches!(op, json_patch::PatchOperation::Test(_)) && op.path().as_str() == "/metadata/resourceVersion"
            });
            apply_json_patch(doc, &ops.0)?;
            Ok(explicit)
        }
        PatchKind::Apply => Err(bad("apply is not a document patch".into())),
    }
}

/// Applies a JSON patch one operation at a time, so that no operation can
/// grow the document past the stored-size cap or the depth limit (each
/// `copy` could otherwise double it). `doc` is a scratch copy: on error it
/// is left half-patched and must be dropped.
///
/// As evanphx/json-patch (Kubernetes): a `test` for `null` at an absent
/// path succeeds (kube-runtime's finalizer helper relies on it). An
/// operation that cannot be applied is 422.
fn apply_json_patch(doc: &mut Value, ops: &[json_patch::PatchOperation]) -> Result<(), ApiError> {
    use json_patch::PatchOperation as Op;
    let mut size = serialized_len(doc);
    // The store makes the final decision; this bound only stops a patch
    // from building an object that could never be stored. Finalizer
    // changes (a controller's add, kube-runtime's remove) may grow the
    // object to the store's ceiling for system writes, and no patch is
    // refused for keeping an object at the size it already has.
    let finalizers_only = ops.iter().all(|op| {
        matches!(op, Op::Test(_)) || op.path().as_str().starts_with("/metadata/finalizers")
    });
    let cap = if finalizers_only { MAX_STORED_BYTES } else { MAX_OBJECT_BYTES }.max(size);
    // Re-measuring the whole document is bounded too: a patch that keeps
    // the object at the cap (add, remove, add, ...) must not cost a
    // serialisation per operation.
    let mut recount_budget = 32 * MAX_OBJECT_BYTES;
    for (i, op) in ops.iter().enumerate() {
        let inserted = match op {
            // ... when the parent exists: as evanphx, a missing parent fails.
            Op::Test(t)
                if t.value.is_null()
                    && doc.pointer(t.path.as_str()).is_none()
                    && t.path.as_str().rsplit_once('/').is_some_and(|(parent, _)| doc.pointer(parent).is_some()) =>
            {
                continue
            }
            Op::Add(o) => Some(&o.value),
            Op::Replace(o) => Some(&o.value),
            Op::Copy(o) => doc.pointer(o.from.as_str()),
            Op::Move(o) => doc.pointer(o.from.as_str()),
            Op::Remove(_) | Op::Test(_) => None,
        };
        // A move only relocates a value: it may nest it deeper, but adds
        // no bytes beyond its new path.
        let grows = !matches!(op, Op::Move(_));
        if let Some(v) = inserted {
            let (bytes, depth) = measure(v);
            let at = op.path().count() + depth;
            if at > MAX_DEPTH {
                return Err(ApiError::Unprocessable(format!(
                    "JSON patch operation {i} ({}) would nest the object {at} levels deep, more than the limit of {MAX_DEPTH}",
                    op.path()
                )));
            }
            // An upper bound, made exact (one serialisation) only when it
            // passes the cap.
            size += if grows { bytes } else { 0 } + op.path().as_str().len();
        }
        json_patch::patch_unsafe(doc, std::slice::from_ref(op)).map_err(|e| {
            ApiError::Unprocessable(format!("JSON patch operation {i} ({}) cannot be applied: {}", op.path(), e.kind))
        })?;
        if size > cap {
            if recount_budget < cap {
                return Err(ApiError::TooLarge(format!(
                    "JSON patch operation {i} ({}): the patch keeps the object near the limit of {cap} bytes",
                    op.path()
                )));
            }
            size = serialized_len(doc);
            recount_budget = recount_budget.saturating_sub(size);
            if size > cap {
                return Err(ApiError::TooLarge(format!(
                    "JSON patch operation {i} ({}) makes the object larger than the limit of {cap} bytes",
                    op.path()
                )));
            }
        }
    }
    Ok(())
}

/// The serialised size of a value, without building the text.
fn serialized_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a Value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// An upper bound of a value's serialised size, and its nesting depth
/// (a scalar is 0). Values here come from a parsed body or from the
/// document, both of bounded depth.
fn measure(v: &Value) -> (usize, usize) {
    match v {
        Value::Null | Value::Bool(_) => (5, 0),
        Value::Number(_) => (24, 0),
        Value::String(s) => (s.len() * 6 + 2, 0),
        Value::Array(a) => a.iter().fold((2, 1), |(b, d), x| {
            let (xb, xd) = measure(x);
            (b + xb + 1, d.max(xd + 1))
        }),
        Value::Object(m) => m.iter().fold((2, 1), |(b, d), (k, x)| {
            let (xb, xd) = measure(x);
            (b + k.len() * 6 + 3 + xb + 1, d.max(xd + 1))
        }),
    }
}

async fn patch(app: AppState, kind: Kind, (ns, name): (String, String), q: Option<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let p = params(&kind, q.as_deref())?;
    let bytes = read_body(&app, &headers, body).await?;
    let flavour = patch_kind(&media_type(&headers))?;
    if let PatchKind::Apply = flavour {
        return apply(&app, &kind, &ns, &name, bytes, &p).instrument(span("apply", &ns, &name)).await;
    }
    let manager = manager(&p, &headers);
    let mut warnings = Vec::new();
    let to_write = |old: &Value, doc: Value| {
        let mut object = match p.field_validation {
            FieldValidation::Strict => kind.admit(&app, Input::Value(doc), &ns, Some(&name))?,
            v => {
                let mut dropped = Vec::new();
                let o = admit_lenient(&app, &kind, doc, &ns, Some(&name), &mut dropped)?;
                warnings = warnings_of(v, &dropped);
                o
            }
        };
        object.metadata.managed_fields =
            fields::after_update(Some(old), &to_json(&object)?, &manager, kind.api_version()).as_ref().and_then(ManagedFields::from_value);
        Ok(Write::Update { key: key(&kind, &ns, &name), object })
    };
    let r = patch_with(&app, &kind, &ns, &name, &flavour, &bytes, p.dry_run, to_write).instrument(span("patch", &ns, &name)).await?;
    Ok(warn(r, &warnings))
}

/// Read, patch, write: retried when a concurrent write moved the object in
/// between, unless the patch itself named the resourceVersion to expect.
#[allow(clippy::too_many_arguments)]
async fn patch_with(
    app: &App,
    kind: &Kind,
    ns: &str,
    name: &str,
    flavour: &PatchKind,
    body: &[u8],
    dry_run: bool,
    mut to_write: impl FnMut(&Value, Value) -> Result<Write, ApiError>,
) -> Result<Response, ApiError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cur = get_current(app, kind, ns, name)?;
        let old: Value = serde_json::from_slice(&cur.json).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut doc = old.clone();
        let explicit_rv = apply_patch(flavour, body, &mut doc)?;
        // Only a resourceVersion the patch sets to a value is the client's
        // precondition; one it removed or nulled is the read's, so a
        // concurrent write is a conflict to retry, never overwritten.
        let explicit_rv = explicit_rv && doc.pointer("/metadata/resourceVersion").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
        if !explicit_rv {
            fields::set(&mut doc, &["metadata".into(), "resourceVersion".into()], Value::String(cur.object.metadata.resource_version.clone()));
        }
        match app.store.write(to_write(&old, doc)?, dry_run).await {
            Err(StoreError::Conflict { .. }) if !explicit_rv && attempt <= CONFLICT_RETRIES => continue,
            r => return Ok(object_response(StatusCode::OK, "patch", &r?.object)),
        }
    }
}

/// Server-side apply: the manifest's fields become the manager's (its
/// `managedFields` entry, operation `Apply`); fields it applied before and
/// no longer does are removed unless another manager has them; a field
/// another manager set to another value is a 409 conflict naming both,
/// unless `force=true`, which takes it. Creates the object when absent. An
/// apply that changes nothing writes nothing. The `X-Steward-Apply`
/// header says which happened.
///
/// An object stored before steward tracked field ownership has no
/// managers: its first applier is taken to own all of it, so fields its
/// manifest no longer names go, as they did before.
async fn apply(app: &AppState, kind: &Kind, ns: &str, name: &str, body: Bytes, p: &Params) -> Result<Response, ApiError> {
    let Some(manager) = p.field_manager.clone() else {
        return Err(ApiError::BadRequest("fieldManager: Required value: is required for apply patch".into()));
    };
    let mut config = decode_value("application/apply-patch+yaml", &body)?;
    if !config.is_object() {
        return Err(ApiError::BadRequest("an apply patch must be an object".into()));
    }
    // Unknown fields of the manifest itself are dropped first: decoding
    // reports them before validation, which a partial manifest may fail
    // (that is judged after the merge).
    let mut dropped = Vec::new();
    if p.field_validation != FieldValidation::Strict {
        match admit_lenient(app, kind, config.clone(), ns, Some(name), &mut dropped) {
            Ok(_) | Err(ApiError::Invalid { .. }) => {}
            Err(e) => return Err(e),
        }
        for path in &dropped {
            remove_path(&mut config, path);
        }
    }
    let warnings = warnings_of(p.field_validation, &dropped);
    let explicit_rv = config.pointer("/metadata/resourceVersion").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cur = app.store.get(&key(kind, ns, name));
        let current: Option<Value> = match &cur {
            Some(c) => Some(serde_json::from_slice(&c.json).map_err(|e| StoreError::Internal(e.to_string()))?),
            None => None,
        };
        let current = current.map(|mut c| {
            if c.pointer("/metadata/managedFields").is_none() {
                // Stored before ownership was tracked: this applier's.
                let all: fields::FieldSet = fields::leaves(&c).into_keys().collect();
                let entry = fields::Entry {
                    manager: manager.clone(),
                    operation: fields::Operation::Apply,
                    api_version: kind.api_version().into(),
                    time: String::new(),
                    fields: all,
                };
                if let Some(mf) = fields::write(&[entry]) {
                    fields::set(&mut c, &["metadata".into(), "managedFields".into()], mf);
                }
            }
            c
        });
        let merged = match fields::apply(current.as_ref(), &config, &manager, kind.api_version(), p.force) {
            Ok(m) => m,
            Err(c) if current.as_ref().is_some_and(|cur| fields::from_client_side_apply(cur, &c)) => {
                fields::apply(current.as_ref(), &config, &manager, kind.api_version(), true).map_err(|c| fields::conflict_error(&c))?
            }
            Err(c) => return Err(fields::conflict_error(&c)),
        };
        let mut object = kind.admit(app, Input::Applied(merged.clone()), ns, Some(name))?;
        object.metadata.managed_fields = merged.pointer("/metadata/managedFields").and_then(ManagedFields::from_value);
        let created = cur.is_none();
        if let Some(c) = &cur {
            if !explicit_rv {
                object.metadata.resource_version = c.object.metadata.resource_version.clone();
            }
            // An apply that changes no value writes nothing when the only
            // news is fields no one else has (applying `get -o yaml` output,
            // its defaults included, stays a no-op). A new manager, or one
            // now sharing another's field, is written: without its entry,
            // the other could remove what it declared.
            let o = &c.object;
            let same_values = object.spec == o.spec
                && object.rest == o.rest
                && object.metadata.labels == o.metadata.labels
                && object.metadata.annotations == o.metadata.annotations;
            let must_record = current.as_ref().is_some_and(|cur| fields::ownership_matters(cur, &merged, &manager));
            if same_values && !must_record {
                object.metadata.managed_fields = o.metadata.managed_fields.clone();
            }
        }
        let write = if created { Write::Create { key: key(kind, ns, name), object } } else { Write::Update { key: key(kind, ns, name), object } };
        let retry = attempt <= CONFLICT_RETRIES && !explicit_rv;
        let WriteResult { object, event_type } = match app.store.write(write, p.dry_run).await {
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. } | StoreError::NotFound { .. }) if retry => continue,
            r => r?,
        };
        let (code, outcome) = match (created, event_type) {
            (true, _) => (StatusCode::CREATED, "created"),
            (false, None) => (StatusCode::OK, "unchanged"),
            (false, Some(EventType::Deleted)) => (StatusCode::OK, "deleted"),
            (false, Some(_)) => (StatusCode::OK, "configured"),
        };
        tracing::debug!(outcome, "applied");
        let mut r = object_response(code, "apply", &object);
        r.headers_mut().insert("x-steward-apply", HeaderValue::from_static(outcome));
        return Ok(warn(r, &warnings));
    }
}


async fn replace_status(app: AppState, kind: Kind, (ns, name): (String, String), q: Option<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let p = params(&kind, q.as_deref())?;
    let bytes = read_body(&app, &headers, body).await?;
    if body_media_type(&app, &headers) != "application/json" {
        return Err(ApiError::UnsupportedMediaType("status updates take application/json".into()));
    }
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    async {
        let body_name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(&name);
        if body_name != name {
            return Err(ApiError::BadRequest(format!("the name of the object ({body_name}) does not match the name in the URL ({name})")));
        }
        let rv = doc.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        let status = kind.status(doc)?;
        let r = app.store.write(Write::UpdateStatus { key: key(&kind, &ns, &name), status, resource_version: rv }, p.dry_run).await?;
        Ok(object_response(StatusCode::OK, "update", &r.object))
    }
    .instrument(span("update-status", &ns, &name))
    .await
}

async fn patch_status(app: AppState, kind: Kind, (ns, name): (String, String), q: Option<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let p = params(&kind, q.as_deref())?;
    let bytes = read_body(&app, &headers, body).await?;
    let flavour = patch_kind(&media_type(&headers))?;
    if let PatchKind::Apply = flavour {
        return Err(ApiError::UnsupportedMediaType("apply is not supported on the status subresource; use a merge patch".into()));
    }
    let to_write = |_: &Value, doc: Value| {
        let rv = doc.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        Ok(Write::UpdateStatus { key: key(&kind, &ns, &name), status: kind.status(doc)?, resource_version: rv })
    };
    patch_with(&app, &kind, &ns, &name, &flavour, &bytes, p.dry_run, to_write).instrument(span("patch-status", &ns, &name)).await
}

/// Whether `s` passes the request's label and field selectors.
pub fn matches(kind: &dyn Strategy, p: &Params, s: &Stored) -> bool {
    p.label_selector.matches(&s.object.metadata.labels) && p.field_selector.matches(|f| kind.field(s, f))
}

async fn list_or_watch(app: AppState, kind: Kind, ns: Option<String>, q: Option<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let p = params(&kind, q.as_deref())?;
    let table = crate::table::wanted(&headers).then(|| crate::table::Include::from_query(q.as_deref()));
    if p.watch {
        return watch::serve(app, kind, ns, p, table);
    }
    let resource = kind.resource();
    let token = p.continue_token.as_deref().map(ContinueToken::decode).transpose()?;
    let after = token.as_ref().map(|t| t.key(resource));
    // A later page is read at the first page's revision, so the pages form
    // one snapshot; once that revision is out of reach, 410 Expired.
    let page = match &token {
        None => app.store.list(resource, ns.as_deref(), after.as_ref(), p.limit, |s| matches(kind.as_ref(), &p, s)),
        Some(t) => app
            .store
            .list_at(resource, ns.as_deref(), after.as_ref(), p.limit, t.rv, |s| matches(kind.as_ref(), &p, s))
            .map_err(|e| match e {
                // Only this store makes tokens, and only of revisions it had.
                StoreError::TooNew { requested, current } => ApiError::BadRequest(format!(
                    "query parameter continue: the token's revision {requested} is newer than the store's ({current}); \
                     it was not issued by this server"
                )),
                e => e.into(),
            })?,
    };
    let revision = page.revision;
    let cont = page.next.map(|k| ContinueToken { rv: revision, ns: k.namespace, name: k.name }.encode());
    if let Some(include) = table {
        let now = chrono::Utc::now();
        let rows = page.items.iter().filter_map(|s| crate::table::row(kind.as_ref(), &s.json, include, now)).collect();
        return Ok(table_response(crate::table::table(kind.as_ref(), rows, &revision.to_string(), cont.as_deref(), true), "list"));
    }
    let mut body = Vec::with_capacity(128 + page.items.iter().map(|s| s.json.len() + 1).sum::<usize>());
    body.extend_from_slice(br#"{"apiVersion":""#);
    body.extend_from_slice(kind.api_version().as_bytes());
    body.extend_from_slice(br#"","kind":""#);
    body.extend_from_slice(kind.kind().as_bytes());
    body.extend_from_slice(br#"List","metadata":{"resourceVersion":""#);
    body.extend_from_slice(revision.to_string().as_bytes());
    body.push(b'"');
    if let Some(c) = cont {
        body.extend_from_slice(br#","continue":""#);
        body.extend_from_slice(c.as_bytes());
        body.push(b'"');
    }
    body.extend_from_slice(br#"},"items":["#);
    for (i, s) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&s.json);
    }
    body.extend_from_slice(b"]}");
    let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    r.extensions_mut().insert(Verb("list"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_removed_where_the_error_points() {
        let mut doc = json!({"spec": {"env": [{"name": "A", "foo": 1}], "foo.bar": 2, "image": "i"}});
        assert_eq!(unknown_field("spec.env[0].foo: unknown field `foo`, expected one of ..."), Some("spec.env[0].foo".into()));
        assert!(remove_path(&mut doc, "spec.env[0].foo"));
        assert!(remove_path(&mut doc, "spec.foo.bar"), "a key with a dot");
        assert!(!remove_path(&mut doc, "spec.nothing"));
        assert!(!remove_path(&mut doc, "spec.env[7].name"));
        assert_eq!(doc, json!({"spec": {"env": [{"name": "A"}], "image": "i"}}));
    }
}
