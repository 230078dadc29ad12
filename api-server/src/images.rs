//! `POST /apis/steward.dev/v1alpha1/images/import`: loads an OCI image
//! archive (`application/x-tar`) into the container runtime, for machines
//! without a registry (`steward image import FILE.tar`).

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

/// What imports an archive: the controller's container runtime.
pub trait ImageImporter: Send + Sync {
    /// Imports the archive at `path`; returns the image names it held.
    fn import<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<Vec<String>, String>>;
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
