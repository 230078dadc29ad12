//! A private containerd for `steward serve` without `--containerd-socket`:
//! its own config, root, state and sockets under `DATA/containerd`, started,
//! watched and restarted (0.25 s doubling to 30 s; back to 0.25 s after
//! 10 s up) by steward.
//!
//! Stopping the supervisor stops containerd with SIGTERM, which leaves the
//! shims and so the containers running (invariant 5: containers outlive the
//! control plane). containerd runs in its own process group so a Ctrl-C
//! aimed at steward's terminal does not reach it. If a containerd already
//! answers on the socket (one left behind by a steward killed with -9), it is
//! adopted: watched, and replaced only once it stops answering.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_client::services::v1::version_client::VersionClient;
use tokio::sync::watch;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A containerd that answered and then ran this long resets the backoff:
/// one killed now and then (OOM, an operator's kill) is back within a
/// quarter second, as systemd's Restart=always would have it; only one that dies
/// soon after start (a crash loop) backs off toward MAX_BACKOFF.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{0} not found in PATH; install it with `apt-get install containerd runc`")]
    MissingBinary(&'static str),
    #[error("containerd data directory {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("containerd did not become ready within {0:?}; see {1}")]
    NotReady(Duration, PathBuf),
}

/// Paths of a private containerd under `DATA/containerd`.
#[derive(Clone, Debug)]
pub struct ContainerdPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl ContainerdPaths {
    pub fn new(data_dir: &Path) -> Self {
        let dir = data_dir.join("containerd");
        ContainerdPaths {
            config: dir.join("config.toml"),
            socket: dir.join("containerd.sock"),
            log: dir.join("containerd.log"),
            dir,
        }
    }

    /// The config (see notes/containerd.md): nothing on system paths, no CRI.
    pub fn config_toml(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
        )
    }
}

fn in_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// Whether containerd answers Version on `socket` within `timeout`.
pub async fn answers(socket: &Path, timeout: Duration) -> bool {
    let probe = async {
        let ch = containerd_client::connect(socket).await.ok()?;
        VersionClient::new(ch).version(()).await.ok()
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(_)))
}

/// A supervised containerd. Dropping it (or [`shutdown`](Self::shutdown))
/// stops containerd with SIGTERM; containers keep running.
pub struct Supervisor {
    paths: ContainerdPaths,
    stop: watch::Sender<bool>,
    pid: Arc<AtomicU32>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Supervisor {
    /// Writes the config, starts containerd and waits until it answers.
    pub async fn start(data_dir: &Path) -> Result<Supervisor, SupervisorError> {
        for bin in ["containerd", "runc", "containerd-shim-runc-v2"] {
            if !in_path(bin) {
                return Err(SupervisorError::MissingBinary(match bin {
                    "containerd" => "containerd",
                    "runc" => "runc",
                    _ => "containerd-shim-runc-v2",
                }));
            }
        }
        let paths = ContainerdPaths::new(data_dir);
        let io = |e| SupervisorError::Io(paths.dir.clone(), e);
        std::fs::create_dir_all(&paths.dir).map_err(io)?;
        std::fs::write(&paths.config, paths.config_toml()).map_err(io)?;

        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, mut ready_rx) = watch::channel(false);
        let pid = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn(supervise(paths.clone(), stop_rx, ready_tx, pid.clone()));
        let sup = Supervisor { paths: paths.clone(), stop, pid, task: Some(task) };
        let ready = tokio::time::timeout(READY_TIMEOUT, ready_rx.wait_for(|r| *r)).await;
        if !matches!(ready, Ok(Ok(_))) {
            return Err(SupervisorError::NotReady(READY_TIMEOUT, paths.log));
        }
        Ok(sup)
    }

    pub fn socket(&self) -> &Path {
        &self.paths.socket
    }

    pub fn paths(&self) -> &ContainerdPaths {
        &self.paths
    }

    /// The pid of the containerd we started (0 while none runs, or adopted).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 10 s) and waits.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // No runtime to wait on in drop: SIGTERM directly, containerd exits
        // on its own (shims and containers stay).
        let pid = self.pid.swap(0, Ordering::SeqCst);
        if pid != 0 {
            // SAFETY: kill(2) on a pid we started.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
}

/// Failed probes in a row after which an adopted containerd counts as gone.
const ADOPTED_MISSES: u32 = 5;

async fn supervise(paths: ContainerdPaths, mut stop: watch::Receiver<bool>, ready: watch::Sender<bool>, pid: Arc<AtomicU32>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if *stop.borrow() {
            return;
        }
        if answers(&paths.socket, Duration::from_secs(1)).await {
            // Someone else's (or a previous steward's) containerd: adopt it.
            tracing::warn!(socket = %paths.socket.display(), "containerd already running on the socket; adopting it");
            let _ = ready.send(true);
            // Only a containerd that stopped answering several times in a
            // row is gone: starting a second one on the same root while a
            // busy one still runs would be far worse than waiting.
            let mut missed = 0;
            while missed < ADOPTED_MISSES {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                if answers(&paths.socket, Duration::from_secs(2)).await {
                    missed = 0;
                } else {
                    missed += 1;
                }
            }
            continue;
        }
        let mut answered: Option<Instant> = None;
        match spawn(&paths) {
            Ok(mut child) => {
                let child_pid = child.id().unwrap_or(0);
                pid.store(child_pid, Ordering::SeqCst);
                tracing::info!(pid = child_pid, socket = %paths.socket.display(), "containerd started");
                // Ready when it answers; poll with a deadline, watching for an early exit.
                let deadline = Instant::now() + READY_TIMEOUT;
                while Instant::now() < deadline {
                    if answers(&paths.socket, Duration::from_millis(500)).await {
                        let _ = ready.send(true);
                        answered = Some(Instant::now());
                        break;
                    }
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::select! {
                    status = child.wait() => {
                        pid.store(0, Ordering::SeqCst);
                        if answered.is_some_and(|at| at.elapsed() > STABLE_AFTER) {
                            backoff = MIN_BACKOFF;
                        }
                        tracing::error!(?status, log = %paths.log.display(), "containerd exited; restarting in {backoff:?}");
                    }
                    _ = stop.changed() => {
                        terminate(&mut child).await;
                        pid.store(0, Ordering::SeqCst);
                        return;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot start containerd; retrying in {backoff:?}"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn spawn(paths: &ContainerdPaths) -> std::io::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&paths.log)?;
    let log2 = log.try_clone()?;
    tokio::process::Command::new("containerd")
        .arg("--config")
        .arg(&paths.config)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0)
        // Never kill containerd because a handle was dropped: it is stopped
        // deliberately with SIGTERM (see `terminate`).
        .kill_on_drop(false)
        .spawn()
}

async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}
