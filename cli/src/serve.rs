//! `steward serve`: the API server on a durable store, in one process.
//!
//! Controllers (and the supervised containerd) join this process in the
//! next step; until then `serve` runs the API alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Where steward keeps its state (the SQLite store, later logs and containerd).
    #[arg(long, env = "STEWARD_DATA_DIR", default_value = "/var/lib/steward")]
    pub data_dir: PathBuf,
    /// Address the HTTP API listens on (port 0 picks a free one).
    #[arg(long, env = "STEWARD_LISTEN", default_value = "127.0.0.1:7420")]
    pub listen: SocketAddr,
    /// Run without controllers (API and store only).
    #[arg(long)]
    pub no_controller: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How long the event log keeps history for watches (e.g. 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = crate::duration::parse_duration)]
    pub event_retention: Duration,
    /// Most events the event log keeps.
    #[arg(long, default_value_t = 100_000)]
    pub event_retention_count: i64,
    /// Events a watcher may fall behind before it is ended with 410 Expired.
    #[arg(long, default_value_t = 10_000)]
    pub watch_buffer: usize,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("--data-dir {}: cannot create", args.data_dir.display()))?;
    // One server per data dir: two would each believe their in-memory view.
    let lock_path = args.data_dir.join("steward.lock");
    let lock = std::fs::File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!("--data-dir {}: another steward is already serving from it", args.data_dir.display())
    })?;

    let mut cfg = steward_store::Config::new(args.data_dir.join("steward.db"));
    cfg.retention.max_age = args.event_retention;
    cfg.retention.max_events = args.event_retention_count;
    cfg.watch_buffer = args.watch_buffer;
    let store = steward_store::Store::open(cfg)
        .await
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let addr = listener.local_addr()?;
    if !args.no_controller {
        tracing::warn!("controllers are not part of this build yet; serving the API only");
    }
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "steward serving");
    // The one line on stdout: scripts and tests wait for it.
    println!("listening on {addr}");

    let api = steward_apiserver::Config { max_body_bytes: args.max_body_bytes, ..Default::default() };
    steward_apiserver::serve(listener, store, api, shutdown_signal()).await?;
    drop(lock);
    tracing::info!("steward stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => tracing::info!("SIGINT received"),
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGINT"),
        },
    }
}
