//! `steward network prune`: tears down the network attachments (CNI DEL,
//! namespaces, IPAM leases, port mappings, resolver files) of containers
//! containerd no longer has, without a server: what a running steward's
//! collector does within seconds, for when steward is stopped (containers
//! removed by hand, an uninstall).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use steward_controller::containerd::{ContainerdConfig, ContainerdRuntime};

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// The data dir of the steward whose networks to prune (it must not be
    /// running).
    #[arg(long, env = "STEWARD_DATA_DIR", default_value = "/var/lib/steward")]
    pub data_dir: PathBuf,
    /// Its configuration file (default: /etc/steward/config.yaml if it
    /// exists).
    #[arg(long, env = "STEWARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// The containerd it used (default: the one it recorded, which must be
    /// running); a mismatch with the record is refused.
    #[arg(long, env = "STEWARD_CONTAINERD_SOCKET")]
    pub containerd_socket: Option<PathBuf>,
    /// Its containerd namespace (default: the recorded one).
    #[arg(long)]
    pub containerd_namespace: Option<String>,
}

pub async fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let data_dir = std::fs::canonicalize(&args.data_dir).with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    let lock_path = data_dir.join("steward.lock");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    lock.try_lock()
        .map_err(|_| anyhow::anyhow!("--data-dir {}: steward is running; it collects its own leaks", data_dir.display()))?;
    let path = args.config.clone().or_else(|| Some(PathBuf::from(steward_config::DEFAULT_PATH)).filter(|p| p.exists()));
    let config = match &path {
        Some(p) => steward_config::Config::load(p).map_err(|e| anyhow::anyhow!("--config: {e}"))?,
        None => steward_config::Config::default(),
    };
    // The containerd the attachments belong to: asking another (or another
    // namespace) would find none of their containers and tear down the
    // network of running ones.
    let Some((rec_socket, rec_ns)) = steward_controller::network::Networks::recorded_runtime(&data_dir) else {
        crate::emit("no network attachments recorded in this data dir\n")?;
        return Ok(ExitCode::SUCCESS);
    };
    if let Some(ns) = args.containerd_namespace.as_ref().filter(|ns| **ns != rec_ns) {
        anyhow::bail!("--containerd-namespace {ns}: the attachments in {} belong to containerd namespace {rec_ns}", data_dir.display());
    }
    if let Some(sock) = args.containerd_socket.as_ref().filter(|s| **s != rec_socket) {
        anyhow::bail!(
            "--containerd-socket {}: the attachments in {} belong to the containerd at {}",
            sock.display(),
            data_dir.display(),
            rec_socket.display()
        );
    }
    let nets = crate::serve::open_networks(&config, &data_dir, path.as_deref())?;
    let socket = rec_socket;
    let mut cfg = ContainerdConfig::new(&socket, data_dir.join("logs"));
    cfg.namespace = rec_ns;
    cfg.networks = Some(std::sync::Arc::new(nets));
    let rt = ContainerdRuntime::connect(cfg).await.with_context(|| format!("connecting to containerd at {}", socket.display()))?;
    let n = rt.collect_networks().await?;
    crate::emit(&format!("{n} network attachment(s) of gone containers removed\n"))?;
    Ok(ExitCode::SUCCESS)
}
