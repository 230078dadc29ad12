//! `exec`: a further process in a running container's task, through
//! containerd's Tasks API (Exec, Start, Wait, ResizePty, CloseIO, Kill,
//! DeleteProcess), as `ctr tasks exec` does it.
//!
//! The process gets the container's own process spec (user, env, cwd,
//! capabilities, ...) with other args. Its stdio are FIFOs steward makes
//! in a directory of its own, one per exec, removed afterwards. The shim
//! opens the other ends; the order is made deadlock-free like containerd's
//! `cio`:
//! - stdout/stderr: steward opens the read end non-blocking (no writer
//!   needed), then a writer of its own that it keeps until the process has
//!   exited, so reads never see EOF before the shim attached, and see it
//!   once the shim's copy has finished after the exit;
//! - stdin: steward opens it read-write (never blocks, never fails for
//!   want of a reader); closing stdin is dropping it, then CloseIO.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetRequest as GetTaskRequest, KillRequest, ResizePtyRequest,
    StartRequest, WaitRequest,
};
use containerd_client::tonic::Code;
use serde_json::Value;
use sha2::Digest;
use tokio::net::unix::pipe;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::errors::trim_runc_message;
use super::{ContainerdRuntime, Ctx};
use crate::actual::{TaskStatus, LABEL_MANAGED_BY, LABEL_UID, MANAGED_BY};

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// A Wait that failed (containerd restarted) is retried this often while
/// the process is still known.
const WAIT_RETRY: Duration = Duration::from_secs(1);

/// Why an exec could not run.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ExecError {
    /// No running task to exec into; says what there is instead.
    #[error("{0}")]
    NotRunning(String),
    /// Already [`ContainerdExec::new`]'s `max` sessions.
    #[error("{0}")]
    Busy(String),
    /// containerd failed, or refused the process (bad command, ...).
    #[error("{0}")]
    Failed(String),
}

/// What a started process needs to be asked for.
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Starts exec processes; bounds how many run at once. Cheap to clone.
#[derive(Clone)]
pub struct ContainerdExec {
    rt: ContainerdRuntime,
    dir: PathBuf,
    slots: Arc<Semaphore>,
    max: usize,
}

/// The steward ends of a process's FIFOs.
pub struct ExecStreams {
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// One exec process. Dropped without [`ExecProcess::cleanup`], it is
/// killed and removed in the background.
pub struct ExecProcess {
    ctx: Ctx,
    container_id: String,
    exec_id: String,
    fifo_dir: PathBuf,
    /// steward's own writers of stdout/stderr, held until the exit.
    keepalive: Mutex<Vec<std::fs::File>>,
    cleaned: AtomicBool,
    _slot: OwnedSemaphorePermit,
}

/// `exec-<16 hex>`, unique per process and call.
fn exec_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = sha2::Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.update(now.as_nanos().to_le_bytes());
    let mut random = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut random);
    }
    h.update(random);
    format!("exec-{}", &hex::encode(h.finalize())[..16])
}

/// The container's process spec with `command` as its args: same user,
/// env, cwd, capabilities and limits; a terminal if asked for (with
/// `TERM=xterm` unless the container sets TERM, as containerd's CRI does).
pub fn exec_process_spec(container_spec: &[u8], command: &[String], tty: bool) -> Result<Value, ExecError> {
    let spec: Value = serde_json::from_slice(container_spec)
        .map_err(|e| ExecError::Failed(format!("the container's OCI spec is not JSON: {e}")))?;
    let mut process = spec
        .get("process")
        .cloned()
        .filter(Value::is_object)
        .ok_or_else(|| ExecError::Failed("the container's OCI spec has no process".into()))?;
    process["args"] = Value::from(command.to_vec());
    process["terminal"] = Value::Bool(tty);
    if let Some(o) = process.as_object_mut() {
        o.remove("consoleSize");
    }
    if tty {
        let env = process.get("env").and_then(Value::as_array).cloned().unwrap_or_default();
        if !env.iter().any(|e| e.as_str().is_some_and(|e| e.starts_with("TERM="))) {
            let mut env = env;
            env.push(Value::from("TERM=xterm"));
            process["env"] = Value::Array(env);
        }
    }
    Ok(process)
}

/// A runc exec failure without containerd's wrapping.
fn start_error(msg: &str) -> String {
    let m = trim_runc_message(msg);
    let m = m.trim_start_matches("OCI runtime exec failed: ").trim_start_matches("exec failed: ");
    trim_runc_message(m)
}

/// `mkfifo(path, 0600)`.
fn mkfifo(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The FIFOs of one process, opened on steward's side.
struct Fifos {
    paths: [String; 3],
    streams: ExecStreams,
    keepalive: Vec<std::fs::File>,
}

fn make_fifos(dir: &Path, o: &ExecOptions) -> std::io::Result<Fifos> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let path = |name: &str| dir.join(name);
    let mut paths: [String; 3] = Default::default();
    let mut streams = ExecStreams { stdin: None, stdout: None, stderr: None };
    let mut keepalive = Vec::new();
    if o.stdin {
        let p = path("stdin");
        mkfifo(&p)?;
        streams.stdin = Some(pipe::OpenOptions::new().read_write(true).open_sender(&p)?);
        paths[0] = p.to_string_lossy().into_owned();
    }
    // A terminal has one output stream. Otherwise both exist, asked for
    // or not: containerd 1.6's shim fails on an empty stderr path when
    // stdout has one ("opening file \"\""); the caller discards the rest.
    let outputs = [(true, "stdout", 1), (!o.tty, "stderr", 2)];
    for (wanted, name, i) in outputs {
        if !wanted {
            continue;
        }
        let p = path(name);
        mkfifo(&p)?;
        let reader = pipe::OpenOptions::new().open_receiver(&p)?;
        let writer = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&p)?;
        keepalive.push(writer);
        if i == 1 {
            streams.stdout = Some(reader);
        } else {
            streams.stderr = Some(reader);
        }
        paths[i] = p.to_string_lossy().into_owned();
    }
    Ok(Fifos { paths, streams, keepalive })
}

impl ContainerdExec {
    /// Exec processes keep their FIFOs under `dir` (steward's own; emptied
    /// here: what is there was left by a previous run); at most `max` run
    /// at once.
    pub fn new(rt: ContainerdRuntime, dir: PathBuf, max: usize) -> Self {
        let _ = std::fs::remove_dir_all(&dir);
        ContainerdExec { rt, dir, slots: Arc::new(Semaphore::new(max.max(1))), max: max.max(1) }
    }

    /// The id of the containerd container of the object with this uid
    /// whose task runs.
    pub async fn running(&self, uid: &str) -> Result<String, ExecError> {
        let uid_q = uid.replace('\\', "\\\\").replace('"', "\\\"");
        let filter = format!("labels.\"{LABEL_MANAGED_BY}\"==\"{MANAGED_BY}\",labels.\"{LABEL_UID}\"==\"{uid_q}\"");
        let containers = self.rt.list_filtered(filter).await.map_err(|e| ExecError::Failed(e.to_string()))?;
        let mut states = Vec::new();
        for c in containers {
            match self.rt.get_task(&c.id).await.map_err(|e| ExecError::Failed(e.to_string()))? {
                Some(t) if t.status == TaskStatus::Running => return Ok(c.id),
                Some(t) => states.push(match t.exit_code {
                    Some(code) => format!("task {:?}, exit code {code}", t.status),
                    None => format!("task {:?}", t.status),
                }),
                None => states.push("no task".into()),
            }
        }
        if states.is_empty() {
            return Err(ExecError::NotRunning("no container created yet".into()));
        }
        Err(ExecError::NotRunning(states.join("; ").to_lowercase()))
    }

    /// Starts `o.command` in container `id`.
    pub async fn start(&self, id: &str, o: &ExecOptions) -> Result<(ExecProcess, ExecStreams), ExecError> {
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ExecError::Busy(format!("too many exec sessions at once (at most {})", self.max)))?;
        let container = self
            .rt
            .get_container(id)
            .await
            .map_err(|e| ExecError::Failed(e.to_string()))?
            .ok_or_else(|| ExecError::NotRunning(format!("container {id} is gone")))?;
        let spec = container.spec.map(|s| s.value).unwrap_or_default();
        let process = exec_process_spec(&spec, &o.command, o.tty)?;
        let exec_id = exec_id();
        let fifo_dir = self.dir.join(&exec_id);
        let mut fifos = make_fifos(&fifo_dir, o).map_err(|e| {
            let _ = std::fs::remove_dir_all(&fifo_dir);
            ExecError::Failed(format!("cannot make the exec FIFOs under {}: {e}", fifo_dir.display()))
        })?;
        let p = ExecProcess {
            ctx: self.rt.ctx.clone(),
            container_id: id.to_string(),
            exec_id: exec_id.clone(),
            fifo_dir,
            keepalive: Mutex::new(fifos.keepalive),
            cleaned: AtomicBool::new(false),
            _slot: slot,
        };
        let [stdin, stdout, stderr] = fifos.paths;
        let req = ExecProcessRequest {
            container_id: id.to_string(),
            stdin,
            stdout,
            stderr,
            terminal: o.tty,
            spec: Some(prost_types::Any {
                type_url: PROCESS_TYPE_URL.into(),
                value: serde_json::to_vec(&process).unwrap_or_default(),
            }),
            exec_id: exec_id.clone(),
        };
        let mut t = TasksClient::new(p.ctx.channel.clone());
        if let Err(s) = t.exec(p.ctx.req(req)).await {
            p.cleanup().await;
            return Err(match s.code() {
                Code::NotFound | Code::FailedPrecondition => ExecError::NotRunning(format!("container {id}: {}", s.message())),
                _ => ExecError::Failed(format!("exec in {id}: {}", start_error(s.message()))),
            });
        }
        if let Err(s) = t.start(p.ctx.req(StartRequest { container_id: id.to_string(), exec_id: exec_id.clone() })).await {
            p.cleanup().await;
            return Err(ExecError::Failed(start_error(s.message())));
        }
        // Output nobody asked for is read and dropped, so the process
        // never blocks on a full pipe.
        let unwanted = [(o.stdout || o.tty, &mut fifos.streams.stdout), (o.stderr, &mut fifos.streams.stderr)];
        for (wanted, stream) in unwanted {
            if let Some(mut r) = stream.take_if(|_| !wanted) {
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
                });
            }
        }
        tracing::debug!(container = id, exec_id, "exec process started");
        Ok((p, fifos.streams))
    }
}

impl ExecProcess {
    pub fn exec_id(&self) -> &str {
        &self.exec_id
    }

    fn tasks(&self) -> TasksClient<containerd_client::tonic::transport::Channel> {
        TasksClient::new(self.ctx.channel.clone())
    }

    fn failed(&self, op: &str, s: &containerd_client::tonic::Status) -> ExecError {
        ExecError::Failed(format!("{op} {}/{}: {}", self.container_id, self.exec_id, s.message()))
    }

    pub async fn resize(&self, width: u32, height: u32) -> Result<(), ExecError> {
        let req = ResizePtyRequest { container_id: self.container_id.clone(), exec_id: self.exec_id.clone(), width, height };
        self.tasks().resize_pty(self.ctx.req(req)).await.map(|_| ()).map_err(|s| self.failed("resize", &s))
    }

    /// Call after dropping the stdin sender: the process sees EOF once it
    /// has read what is in the FIFO.
    pub async fn close_stdin(&self) -> Result<(), ExecError> {
        let req = CloseIoRequest { container_id: self.container_id.clone(), exec_id: self.exec_id.clone(), stdin: true };
        self.tasks().close_io(self.ctx.req(req)).await.map(|_| ()).map_err(|s| self.failed("close stdin", &s))
    }

    /// Its exit status. Then steward's own FIFO writers are closed, so the
    /// output readers end once the shim has copied the rest.
    pub async fn wait(&self) -> Result<u32, ExecError> {
        let r = self.wait_inner().await;
        if let Ok(mut k) = self.keepalive.lock() {
            k.clear();
        }
        r
    }

    async fn wait_inner(&self) -> Result<u32, ExecError> {
        loop {
            let req = WaitRequest { container_id: self.container_id.clone(), exec_id: self.exec_id.clone() };
            // No deadline: a process may run for days.
            match self.tasks().wait(self.ctx.stream_req(req)).await {
                Ok(r) => return Ok(r.into_inner().exit_status),
                Err(s) if s.code() == Code::NotFound => return Err(self.failed("wait", &s)),
                Err(s) => {
                    tracing::warn!(exec_id = self.exec_id, error = %s.message(), "wait for the exec process failed; retrying")
                }
            }
            tokio::time::sleep(WAIT_RETRY).await;
            // Still there? (containerd restarted: it is; the task went: not.)
            let get = GetTaskRequest { container_id: self.container_id.clone(), exec_id: self.exec_id.clone() };
            match self.tasks().get(self.ctx.req(get)).await {
                Ok(r) => {
                    if let Some(p) = r.into_inner().process {
                        if p.status == containerd_client::types::v1::Status::Stopped as i32 {
                            return Ok(p.exit_status);
                        }
                    }
                }
                Err(s) if s.code() == Code::NotFound => return Err(self.failed("wait", &s)),
                Err(_) => {}
            }
        }
    }

    pub async fn kill(&self) -> Result<(), ExecError> {
        let req = KillRequest { container_id: self.container_id.clone(), exec_id: self.exec_id.clone(), signal: 9, all: false };
        match self.tasks().kill(self.ctx.req(req)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.failed("kill", &s)),
        }
    }

    /// Deletes the process from containerd and removes its FIFOs.
    pub async fn cleanup(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        delete_process(&self.ctx, &self.container_id, &self.exec_id, &self.fifo_dir).await;
    }
}

async fn delete_process(ctx: &Ctx, container_id: &str, exec_id: &str, fifo_dir: &Path) {
    let mut t = TasksClient::new(ctx.channel.clone());
    let req = DeleteProcessRequest { container_id: container_id.to_string(), exec_id: exec_id.to_string() };
    match t.delete_process(ctx.req(req)).await {
        Ok(_) => {}
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => tracing::warn!(container = container_id, exec_id, error = %s.message(), "delete exec process"),
    }
    if let Err(e) = std::fs::remove_dir_all(fifo_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %fifo_dir.display(), error = %e, "remove exec FIFOs");
        }
    }
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        let (ctx, container_id, exec_id, dir) =
            (self.ctx.clone(), self.container_id.clone(), self.exec_id.clone(), self.fifo_dir.clone());
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            let _ = std::fs::remove_dir_all(&dir);
            return;
        };
        handle.spawn(async move {
            let mut t = TasksClient::new(ctx.channel.clone());
            let kill = KillRequest { container_id: container_id.clone(), exec_id: exec_id.clone(), signal: 9, all: false };
            let _ = t.kill(ctx.req(kill)).await;
            let wait = WaitRequest { container_id: container_id.clone(), exec_id: exec_id.clone() };
            let _ = tokio::time::timeout(Duration::from_secs(10), t.wait(ctx.stream_req(wait))).await;
            delete_process(&ctx, &container_id, &exec_id, &dir).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_process_is_the_containers_with_other_args() {
        let spec = br#"{"ociVersion":"1.0.2","process":{"user":{"uid":1000,"gid":1000},"args":["sleep","3600"],
            "env":["PATH=/bin","A=b"],"cwd":"/work","capabilities":{"bounding":["CAP_KILL"]},"consoleSize":{"height":1,"width":1}},
            "root":{"path":"rootfs"}}"#;
        let p = exec_process_spec(spec, &["sh".into(), "-c".into(), "id".into()], false).unwrap();
        assert_eq!(p["args"], serde_json::json!(["sh", "-c", "id"]));
        assert_eq!((p["user"]["uid"].as_u64(), p["cwd"].as_str()), (Some(1000), Some("/work")));
        assert_eq!(p["capabilities"]["bounding"][0], "CAP_KILL");
        assert_eq!(p["terminal"], false);
        assert!(p.get("consoleSize").is_none());
        assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "A=b"]));
        let p = exec_process_spec(spec, &["sh".into()], true).unwrap();
        assert_eq!(p["terminal"], true);
        assert_eq!(p["env"][2], "TERM=xterm");
        assert!(exec_process_spec(b"{}", &["sh".into()], false).is_err());
        assert!(exec_process_spec(b"not json", &["sh".into()], false).is_err());
    }

    #[test]
    fn exec_ids_are_unique_and_valid() {
        let a = exec_id();
        let b = exec_id();
        assert_ne!(a, b);
        assert!(a.starts_with("exec-") && a.len() == 21 && a[5..].bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    }

    #[test]
    fn start_errors_say_what_runc_said() {
        let m = "failed to create shim task: OCI runtime exec failed: exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown";
        assert_eq!(start_error(m), "exec: \"nope\": executable file not found in $PATH");
    }

    /// The FIFO trick: the reader sees no EOF before a writer came and
    /// went, and sees it once every writer (ours included) is closed.
    #[tokio::test]
    async fn fifo_output_ends_only_after_the_keepalive_is_dropped() {
        use std::io::Write;
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let o = ExecOptions { command: vec![], stdin: true, stdout: true, stderr: false, tty: false };
        let mut f = make_fifos(&dir.path().join("x"), &o).unwrap();
        assert!(f.paths.iter().all(|p| !p.is_empty()), "stderr is made even when not asked for: {:?}", f.paths);
        let tty = ExecOptions { tty: true, ..o.clone() };
        let t = make_fifos(&dir.path().join("t"), &tty).unwrap();
        assert!(t.paths[2].is_empty() && t.streams.stderr.is_none(), "a terminal has no stderr");
        let mut out = f.streams.stdout.take().unwrap();
        let mut buf = [0u8; 16];
        // No shim yet: nothing to read, and no EOF.
        assert!(tokio::time::timeout(Duration::from_millis(100), out.read(&mut buf)).await.is_err());
        // The "shim" writes and closes.
        let mut shim = std::fs::OpenOptions::new().write(true).open(&f.paths[1]).unwrap();
        shim.write_all(b"hi").unwrap();
        drop(shim);
        assert_eq!(out.read(&mut buf).await.unwrap(), 2);
        assert!(tokio::time::timeout(Duration::from_millis(100), out.read(&mut buf)).await.is_err());
        f.keepalive.clear();
        assert_eq!(out.read(&mut buf).await.unwrap(), 0, "EOF once every writer is gone");
        // stdin opened read-write: writes never block for want of a reader.
        use tokio::io::AsyncWriteExt;
        f.streams.stdin.take().unwrap().write_all(b"x").await.unwrap();
    }
}
