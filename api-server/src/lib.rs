//! steward's HTTP API.
//!
//! Owns the Kubernetes-shaped REST and watch API over the store: routes,
//! query parameters, content types (JSON, merge patch, JSON patch, apply),
//! `Status` errors, request limits, discovery, health, metrics and graceful
//! shutdown. It validates objects with `steward-schema` and persists them
//! through `steward-store`; it never touches SQLite or containerd itself.

mod auth;
mod containers;
mod discovery;
mod error;
mod images;
mod logs;
mod metrics;
mod query;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use steward_store::Store;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use images::ImageImporter;
pub use metrics::Metrics;

/// Version of this build, reported by `/version`.
pub const STEWARD_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone)]
pub struct Config {
    /// Largest request body accepted; larger gets 413.
    pub max_body_bytes: usize,
    /// How often a watch that asked for bookmarks gets one when idle.
    pub bookmark_interval: Duration,
    /// Where the container log driver writes (`None`: no controller, no logs).
    pub logs_dir: Option<std::path::PathBuf>,
    /// Imports image archives (`None`: no container runtime).
    pub images: Option<Arc<dyn ImageImporter>>,
    /// Where uploaded archives wait while they are imported.
    pub upload_dir: Option<std::path::PathBuf>,
    /// Largest image archive accepted.
    pub max_image_bytes: usize,
    /// The bearer token every request (but health and version) must carry;
    /// `None` serves without authentication (embedding, tests).
    pub token: Option<String>,
    /// What `/readyz` also depends on, published by whoever watches it (the
    /// controller probes containerd): `Some(reason)` answers 503 with the
    /// reason. `None` here: only the server itself counts.
    pub not_ready: Option<tokio::sync::watch::Receiver<Option<String>>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body_bytes: 3 * 1024 * 1024,
            bookmark_interval: Duration::from_secs(10),
            logs_dir: None,
            images: None,
            upload_dir: None,
            max_image_bytes: 4 << 30,
            token: None,
            not_ready: None,
        }
    }
}

/// Shared by every handler.
pub struct App {
    pub store: Store,
    pub config: Config,
    pub metrics: Metrics,
    /// Flips to `true` when the server starts shutting down; open watches
    /// end cleanly when they see it.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

pub type AppState = Arc<App>;

pub fn router(app: AppState) -> Router {
    let base = "/apis/steward.dev/v1alpha1";
    Router::new()
        .route("/healthz", get(discovery::healthz))
        .route("/livez", get(discovery::healthz))
        .route("/readyz", get(discovery::readyz))
        .route("/metrics", get(metrics::render))
        .route("/version", get(discovery::version))
        .route("/apis", get(discovery::apis))
        .route("/apis/steward.dev", get(discovery::group))
        .route(base, get(discovery::resources))
        .route("/openapi/v3", get(discovery::openapi_root))
        .route("/openapi/v3/apis/steward.dev/v1alpha1", get(discovery::openapi_group_version))
        .route(&format!("{base}/containers"), get(containers::list_all))
        .route(
            &format!("{base}/namespaces/{{ns}}/containers"),
            get(containers::list).post(containers::create),
        )
        .route(
            &format!("{base}/namespaces/{{ns}}/containers/{{name}}"),
            get(containers::read)
                .put(containers::replace)
                .patch(containers::patch)
                .delete(containers::delete),
        )
        .route(
            &format!("{base}/namespaces/{{ns}}/containers/{{name}}/status"),
            get(containers::read).put(containers::replace_status).patch(containers::patch_status),
        )
        .route(&format!("{base}/namespaces/{{ns}}/containers/{{name}}/log"), get(logs::get))
        .route(&format!("{base}/images/import"), axum::routing::post(images::import))
        .fallback(discovery::not_found)
        .method_not_allowed_fallback(discovery::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth::require_token))
        .layer(axum::middleware::from_fn_with_state(app.clone(), metrics::track))
        .with_state(app)
}

/// Serves the API on `listener` until `shutdown` resolves, then stops
/// accepting, ends open watches, lets in-flight requests finish, and shuts
/// the store down (every acknowledged write is already durable; queued
/// ones are finished).
pub async fn serve(
    listener: TcpListener,
    store: Store,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let app = Arc::new(App { store: store.clone(), config, metrics: Metrics::default(), shutdown: rx });
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, ending watches");
        let _ = tx.send(true);
    };
    // Watch events and small responses must not wait for Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    let result = axum::serve(listener, router(app)).with_graceful_shutdown(signal).await;
    store.shutdown().await;
    result
}
