//! Images, a cluster-scoped read-only view of the container runtime's
//! images (`GET /apis/steward.dev/v1alpha1/images[/{name}]`, `DELETE` of an
//! unused one, `POST .../images/pull`), and
//! `POST /apis/steward.dev/v1alpha1/images/import`, which loads an OCI image
//! archive (`application/x-tar`) into the container runtime, for machines
//! without a registry (`steward image import FILE.tar`).
//!
//! An Image is named `sha256-<64 hex>` after the digest of the manifest (or
//! index) its references name; its `status` has the references
//! (`repoTags`), the digest, the size, when a container was last made from
//! it, and which Containers use it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::metrics::Verb;
use crate::{ApiError, AppState};

/// One image of the container runtime.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageInfo {
    pub digest: String,
    pub repo_tags: Vec<String>,
    pub size: u64,
    /// RFC 3339.
    pub created: Option<String>,
    pub last_used: Option<String>,
    /// `namespace/name` of the Containers using it.
    pub used_by: Vec<String>,
}

/// Why an image was not removed.
#[derive(Clone, Debug, PartialEq)]
pub enum RemoveError {
    NotFound,
    /// These Containers use it.
    InUse(Vec<String>),
    Failed(String),
}

/// The container runtime's images: the controller's runtime.
pub trait ImageImporter: Send + Sync {
    /// Imports the archive at `path`; returns the image names it held.
    fn import<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<Vec<String>, String>>;
    /// Every image.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ImageInfo>, String>>;
    /// Removes the image with this digest (every name of it).
    fn remove<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<Vec<String>, RemoveError>>;
    /// Pulls `reference` (always asking the registry); returns its digest.
    fn pull<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<String, String>>;
}

fn importer(app: &AppState) -> Result<std::sync::Arc<dyn ImageImporter>, ApiError> {
    app.config
        .images
        .clone()
        .ok_or_else(|| ApiError::NotFound("this server runs no container runtime (started with --no-controller)".into()))
}

/// `sha256-<hex>` for `sha256:<hex>`.
fn object_name(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The Containers of the store by the image their status says they run
/// (besides what the runtime says): a container being recreated counts.
fn store_users(app: &AppState) -> std::collections::HashMap<String, Vec<String>> {
    let mut users: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for o in app.store.list(steward_schema::RESOURCE, None, None, 0, |_| true).items {
        if let Some(d) = o.object.status.as_ref().and_then(|s| s.get("imageDigest")).and_then(serde_json::Value::as_str) {
            users.entry(d.to_string()).or_default().push(format!("{}/{}", o.object.metadata.namespace, o.object.metadata.name));
        }
    }
    users
}

fn image_json(i: &ImageInfo) -> serde_json::Value {
    let used_by: Vec<serde_json::Value> = i
        .used_by
        .iter()
        .map(|u| match u.split_once('/') {
            Some((ns, n)) => json!({"namespace": ns, "name": n}),
            None => json!({"name": u}),
        })
        .collect();
    json!({
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "Image",
        "metadata": {"name": object_name(&i.digest), "creationTimestamp": i.created},
        "status": {"digest": i.digest, "repoTags": i.repo_tags, "size": i.size, "lastUsed": i.last_used, "usedBy": used_by},
    })
}

fn json_response(code: StatusCode, verb: &'static str, body: serde_json::Value) -> Response {
    let mut r = (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    r.extensions_mut().insert(Verb(verb));
    r
}

async fn all_images(app: &AppState) -> Result<Vec<ImageInfo>, ApiError> {
    let mut images = importer(app)?.list().await.map_err(ApiError::Unavailable)?;
    let mut by_store = store_users(app);
    for i in &mut images {
        for u in by_store.remove(&i.digest).unwrap_or_default() {
            if !i.used_by.contains(&u) {
                i.used_by.push(u);
            }
        }
        i.used_by.sort();
    }
    Ok(images)
}

pub async fn list(State(app): State<AppState>) -> Result<Response, ApiError> {
    let items: Vec<serde_json::Value> = all_images(&app).await?.iter().map(image_json).collect();
    let body = json!({"apiVersion": "steward.dev/v1alpha1", "kind": "ImageList", "metadata": {}, "items": items});
    Ok(json_response(StatusCode::OK, "list", body))
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("images.steward.dev {name:?} not found"))
}

pub async fn read(State(app): State<AppState>, axum::extract::Path(name): axum::extract::Path<String>) -> Result<Response, ApiError> {
    let img = all_images(&app).await?.into_iter().find(|i| object_name(&i.digest) == name).ok_or_else(|| not_found(&name))?;
    Ok(json_response(StatusCode::OK, "get", image_json(&img)))
}

/// DELETE of an unused image: 409 naming the Containers while one uses it.
pub async fn delete(
    State(app): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let dry_run = crate::query::Params::parse(q.as_deref())?.dry_run;
    let img = all_images(&app).await?.into_iter().find(|i| object_name(&i.digest) == name).ok_or_else(|| not_found(&name))?;
    let in_use = |users: &[String]| {
        ApiError::Conflict(format!("image {name} ({}) is in use by Containers {}; delete them first", img.repo_tags.join(", "), users.join(", ")))
    };
    if !img.used_by.is_empty() {
        return Err(in_use(&img.used_by));
    }
    // dryRun=All: every check made, nothing removed.
    if dry_run {
        return Ok(json_response(StatusCode::OK, "delete", image_json(&img)));
    }
    match importer(&app)?.remove(&img.digest).await {
        Ok(_) => Ok(json_response(StatusCode::OK, "delete", image_json(&img))),
        Err(RemoveError::NotFound) => Err(not_found(&name)),
        Err(RemoveError::InUse(u)) => Err(in_use(&u)),
        Err(RemoveError::Failed(m)) => Err(ApiError::Unavailable(m)),
    }
}

/// `POST .../images/pull` with `{"image": "REF"}`: pulls it now.
pub async fn pull(State(app): State<AppState>, axum::extract::RawQuery(q): axum::extract::RawQuery, body: axum::body::Bytes) -> Result<Response, ApiError> {
    if crate::query::Params::parse(q.as_deref())?.dry_run {
        return Err(ApiError::BadRequest("dryRun is not supported for an image pull (it would have to fetch the image)".into()));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("the body must be {{\"image\": \"REF\"}}: {e}")))?;
    let reference = v.get("image").and_then(serde_json::Value::as_str).filter(|r| !r.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("the body must be {\"image\": \"REF\"}: image is required".into()))?;
    let digest = importer(&app)?.pull(reference).await.map_err(ApiError::Unprocessable)?;
    let img = all_images(&app).await?.into_iter().find(|i| i.digest == digest).ok_or_else(|| not_found(&object_name(&digest)))?;
    Ok(json_response(StatusCode::OK, "pull", image_json(&img)))
}

/// The slowest an image archive upload may arrive on average (bytes/s),
/// once [`RATE_GRACE`] has passed.
const MIN_UPLOAD_RATE: u64 = 64 * 1024;
const RATE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn import(State(app): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let Some(importer) = app.config.images.clone() else {
        return Err(ApiError::NotFound("this server runs no container runtime (started with --no-controller)".into()));
    };
    let dir = app.config.upload_dir.clone().unwrap_or_else(std::env::temp_dir);
    tokio::fs::create_dir_all(&dir).await.map_err(|e| ApiError::Unavailable(format!("{}: {e}", dir.display())))?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!("import-{}-{}.tar", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let result = async {
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| ApiError::Unavailable(format!("{}: {e}", path.display())))?;
        let mut stream = body.into_data_stream();
        let mut total = 0usize;
        // An archive may take long to arrive, but not stall or trickle:
        // each part must come within the body read timeout, and after the
        // first minute the upload must average MIN_UPLOAD_RATE (a client
        // trickling bytes holds a request slot).
        let idle = app.config.body_read_timeout;
        let started = tokio::time::Instant::now();
        loop {
            let next = tokio::time::timeout(idle, stream.next()).await.map_err(|_| {
                ApiError::RequestTimeout(format!(
                    "the image archive stalled: nothing received for {}s (after {total} bytes)",
                    idle.as_secs()
                ))
            })?;
            let elapsed = started.elapsed();
            if elapsed > RATE_GRACE && (total as f64) < MIN_UPLOAD_RATE as f64 * elapsed.as_secs_f64() {
                return Err(ApiError::RequestTimeout(format!(
                    "the image archive arrives too slowly: {total} bytes in {}s, below {} KiB/s",
                    elapsed.as_secs(),
                    MIN_UPLOAD_RATE / 1024
                )));
            }
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the archive: {e}")))?;
            total += chunk.len();
            if total > app.config.max_image_bytes {
                return Err(ApiError::TooLarge(format!("the archive is larger than the limit of {} bytes", app.config.max_image_bytes)));
            }
            file.write_all(&chunk).await.map_err(|e| ApiError::Unavailable(format!("{}: {e}", path.display())))?;
        }
        file.flush().await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let images = importer.import(&path).await.map_err(ApiError::BadRequest)?;
        Ok::<_, ApiError>((total, images))
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    let (bytes, images) = result?;
    tracing::info!(bytes, ?images, "image archive imported");
    let body = json!({"kind": "ImageImport", "apiVersion": "steward.dev/v1alpha1", "images": images});
    let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    r.extensions_mut().insert(Verb("import"));
    Ok(r)
}
