//! `POST /-/reload`: the server's owner reloads its configuration (parse
//! and validate the file in full, then swap it in as one value). The token
//! is required as for every other request; the request has no body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use serde_json::json;

use crate::error::ApiError;
use crate::metrics::Verb;
use crate::AppState;

/// What a successful reload reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadReport {
    /// `sha256:...` of the configuration now in force (of the file, as
    /// `steward config check` prints it).
    pub digest: String,
    /// Keys that changed but apply only after a restart.
    pub restart_required: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// There is no configuration file to reload (409).
    #[error("{0}")]
    NoFile(String),
    /// The file is invalid: names the file, the key and the problem (422).
    #[error("{0}")]
    Invalid(String),
    /// The file could not be read (500).
    #[error("{0}")]
    Unreadable(String),
}

/// Reloads the configuration; counts what it did for `/metrics`.
pub trait Reloader: Send + Sync {
    /// On `Err` the configuration in force is unchanged.
    fn reload(&self) -> BoxFuture<'_, Result<ReloadReport, ReloadError>>;
    /// Reloads so far: (succeeded, failed), whatever asked for them.
    fn counts(&self) -> (u64, u64);
}

pub type SharedReloader = Arc<dyn Reloader>;

pub async fn reload(State(app): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let Some(reloader) = app.config.reloader.clone() else {
        return Err(ApiError::NotFound("this server has no configuration to reload".into()));
    };
    if !body.is_empty() {
        return Err(ApiError::BadRequest("POST /-/reload takes no body: it rereads the configuration file".into()));
    }
    let report = reloader.reload().await.map_err(|e| match e {
        ReloadError::NoFile(m) => ApiError::Conflict(m),
        ReloadError::Invalid(m) => ApiError::Unprocessable(m),
        ReloadError::Unreadable(m) => ApiError::Internal(m),
    })?;
    let message = if report.restart_required.is_empty() {
        "configuration reloaded".to_string()
    } else {
        format!(
            "configuration reloaded; these keys changed but apply only after a restart: {}",
            report.restart_required.join(", ")
        )
    };
    let body = json!({
        "kind": "ConfigReload",
        "apiVersion": "steward.dev/v1alpha1",
        "digest": report.digest,
        "restartRequired": report.restart_required,
        "message": message,
    });
    let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    r.extensions_mut().insert(Verb("reload"));
    Ok(r)
}
