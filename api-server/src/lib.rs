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
pub mod events;
mod fields;
mod exec;
mod images;
mod io;
mod limits;
mod logs;
mod metrics;
pub mod pki;
mod query;
mod registry;
mod reload;
mod table;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use steward_store::Store;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use exec::{ExecError, ExecIo, ExecProcess, ExecRequest, Executor, Started};
pub use images::{ImageImporter, ImageInfo, RemoveError};
pub use metrics::Metrics;
pub use reload::{ReloadError, ReloadReport, Reloader, SharedReloader};

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
    /// Runs `exec` processes in containers (`None`: no container runtime).
    pub executor: Option<Arc<dyn Executor>>,
    /// Reloads the configuration on `POST /-/reload` (`None`: 404).
    pub reloader: Option<SharedReloader>,
    /// The runtime handlers a Container may name now (`None`: not
    /// checked, e.g. without a container runtime).
    pub runtime_handlers: Option<Arc<dyn Fn() -> Vec<String> + Send + Sync>>,
    /// The networks a Container may name besides `none` and `host`
    /// (`None`: not checked).
    pub networks: Option<Arc<dyn Fn() -> Vec<String> + Send + Sync>>,
    /// Where uploaded archives wait while they are imported.
    pub upload_dir: Option<std::path::PathBuf>,
    /// Largest image archive accepted.
    pub max_image_bytes: usize,
    /// The bearer token every request (but health and version) must carry;
    /// `None` serves without authentication (embedding, tests).
    pub token: Option<String>,
    /// Short requests served at once; more get 429 and `Retry-After`.
    pub max_requests_inflight: usize,
    /// Watches and followed logs open at once; more get 429.
    pub max_long_running_inflight: usize,
    /// A connection that has not sent a request's headers within this
    /// time is closed (stalled or slow-loris clients).
    pub header_read_timeout: Duration,
    /// A request body not received in full within this time is refused
    /// with 408 and its connection closed (clients trickling bytes).
    pub body_read_timeout: Duration,
    /// A connection whose peer accepts no bytes for this long while the
    /// server writes to it (a stalled watcher) is closed.
    pub write_timeout: Duration,
    /// How long shutdown waits for in-flight requests to finish before
    /// it drops their connections.
    pub shutdown_timeout: Duration,
    /// What `/readyz` also depends on, published by whoever watches it (the
    /// controller probes containerd): `Some(reason)` answers 503 with the
    /// reason. `None` here: only the server itself counts.
    pub not_ready: Option<tokio::sync::watch::Receiver<Option<String>>>,
    /// Serve HTTPS with this configuration (`None`: plain HTTP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long Events are kept, and how many.
    pub event_retention: events::Retention,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body_bytes: 3 * 1024 * 1024,
            bookmark_interval: Duration::from_secs(10),
            logs_dir: None,
            images: None,
            executor: None,
            reloader: None,
            runtime_handlers: None,
            networks: None,
            upload_dir: None,
            max_image_bytes: 4 << 30,
            token: None,
            max_requests_inflight: 400,
            max_long_running_inflight: 1000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            not_ready: None,
            tls: None,
            event_retention: events::Retention::default(),
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
    pub inflight: limits::Inflight,
}

pub type AppState = Arc<App>;

pub fn router(app: AppState) -> Router {
    let base = "/apis/steward.dev/v1alpha1";
    let router = Router::new()
        .route("/healthz", get(discovery::healthz))
        .route("/livez", get(discovery::healthz))
        .route("/readyz", get(discovery::readyz))
        .route("/metrics", get(metrics::render))
        .route("/version", get(discovery::version))
        .route("/version/", get(discovery::version))
        .route("/-/reload", axum::routing::post(reload::reload))
        .route("/api", get(discovery::core))
        .route("/api/v1", get(discovery::core_v1))
        .route("/apis", get(discovery::apis))
        .route("/apis/steward.dev", get(discovery::group))
        .route(base, get(discovery::resources))
        .route("/openapi/v3", get(discovery::openapi_root))
        .route("/openapi/v3/apis/steward.dev/v1alpha1", get(discovery::openapi_group_version))
        .route("/openapi/v3/api/v1", get(discovery::openapi_core_v1))
        .route(&format!("{base}/namespaces/{{ns}}/containers/{{name}}/log"), get(logs::get))
        .route(&format!("{base}/namespaces/{{ns}}/containers/{{name}}/exec"), get(exec::exec).post(exec::exec))
        .route(&format!("{base}/images/import"), axum::routing::post(images::import))
        .route(&format!("{base}/images/pull"), axum::routing::post(images::pull))
        .route(&format!("{base}/images"), get(images::list))
        .route(&format!("{base}/images/{{name}}"), get(images::read).delete(images::delete));
    // Every kind through the generic registry.
    let router = registry::routes(router, containers::kind());
    let router = registry::routes(router, events::kind());
    router
        .fallback(discovery::not_found)
        .method_not_allowed_fallback(discovery::method_not_allowed)
        // Layers run last-added first: metrics, then authentication, then
        // the in-flight bound, so unauthenticated requests get 401 and
        // never take a slot.
        .layer(axum::middleware::from_fn_with_state(app.clone(), limits::limit))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth::require_token))
        .layer(axum::middleware::from_fn_with_state(app.clone(), metrics::track))
        .with_state(app)
}

/// Serves the API on `listener` until `shutdown` resolves, then stops
/// accepting, ends open watches, lets in-flight requests finish, and shuts
/// the store down (every acknowledged write is already durable; queued
/// ones are finished).
///
/// Connections are served by hyper directly (not `axum::serve`) to set a
/// header read timeout: a client that never finishes its request headers
/// is disconnected instead of holding its connection for ever.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let inflight = limits::Inflight::new(config.max_requests_inflight, config.max_long_running_inflight);
    let header_timeout = config.header_read_timeout;
    let shutdown_timeout = config.shutdown_timeout;
    let write_timeout = config.write_timeout;
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    // Flips to `true` when shutdown has waited long enough: the remaining
    // connections are dropped.
    let (kill_tx, kill_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(events::expire(store.clone(), config.event_retention, rx.clone()));
    let app = Arc::new(App { store: store.clone(), config, metrics: Metrics::default(), shutdown: rx.clone(), inflight });
    let service = hyper_util::service::TowerToHyperService::new(router(app));
    // Every connection task holds a clone; when all are dropped, every
    // connection has finished.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Watch events and small responses must not wait for Nagle's algorithm.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let conn = Conn { service: service.clone(), stop: rx.clone(), kill: kill_rx.clone(), done: done_tx.clone(), header_timeout, peer };
        let io = io::WriteTimeout::new(tcp, write_timeout);
        match tls.clone() {
            None => {
                tokio::spawn(conn.run(io));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    // A plain HTTP request on the TLS port gets an answer it
                    // can print, as Go's servers give, instead of a reset.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(header_timeout, io.get_ref().peek(&mut first)).await {
                        Ok(Ok(1)) if first[0] != 0x16 => {
                            use tokio::io::AsyncWriteExt;
                            let mut io = io;
                            let body = "Client sent an HTTP request to an HTTPS server.\n";
                            let reply = format!(
                                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = io.write_all(reply.as_bytes()).await;
                            let _ = io.shutdown().await;
                            return;
                        }
                        Ok(Ok(_)) => {}
                        _ => return,
                    }
                    match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => conn.run(stream).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    tracing::info!("shutting down: no new connections, ending watches");
    drop(listener);
    let _ = tx.send(true);
    drop(done_tx);
    if tokio::time::timeout(shutdown_timeout, done_rx.recv()).await.is_err() {
        tracing::warn!(?shutdown_timeout, "requests still in flight at the shutdown deadline; dropping their connections");
        let _ = kill_tx.send(true);
        let _ = done_rx.recv().await;
    }
    store.shutdown().await;
    Ok(())
}

/// One accepted connection and what it needs to be served and stopped.
struct Conn {
    service: hyper_util::service::TowerToHyperService<Router>,
    stop: tokio::sync::watch::Receiver<bool>,
    kill: tokio::sync::watch::Receiver<bool>,
    /// Dropped when the connection is done.
    done: tokio::sync::mpsc::Sender<()>,
    header_timeout: Duration,
    peer: std::net::SocketAddr,
}

impl Conn {
    /// Serves HTTP/1.1 on `io` (a TCP or TLS stream) until the peer goes,
    /// or shutdown ends it gracefully, or the shutdown deadline drops it.
    async fn run<I>(mut self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let _done = self.done;
        let peer = self.peer;
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(self.header_timeout);
        let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), self.service).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            _ = self.stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
        }
        tokio::select! {
            r = conn.as_mut() => if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended");
            },
            _ = self.kill.wait_for(|k| *k) => tracing::warn!(%peer, "connection dropped: still busy at the shutdown deadline"),
        }
    }
}
