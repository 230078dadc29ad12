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

/// The longest an image archive upload may take.
const MAX_UPLOAD: std::time::Duration = std::time::Duration::from_secs(600);

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
        // An archive may take minutes to arrive, but not stall: each part
        // must come within the body read timeout, and the whole within
        // MAX_UPLOAD (a client trickling bytes holds a request slot).
        let idle = app.config.body_read_timeout;
        let deadline = tokio::time::Instant::now() + MAX_UPLOAD;
        loop {
            let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let next = tokio::time::timeout(wait, stream.next()).await.map_err(|_| {
                ApiError::RequestTimeout(format!(
                    "the image archive stalled: nothing received for {}s, or not complete within {}s (after {total} bytes)",
                    wait.as_secs(),
                    MAX_UPLOAD.as_secs()
                ))
            })?;
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
