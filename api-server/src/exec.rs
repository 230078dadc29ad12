//! `exec` into a running container:
//! `GET|POST .../namespaces/{ns}/containers/{name}/exec?command=...`,
//! upgraded to a WebSocket speaking Kubernetes' channel protocol
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`), as kubelet serves it.
//!
//! Every binary message starts with its channel: 0 stdin, 1 stdout, 2
//! stderr, 3 the final `Status` (error channel), 4 terminal resize (JSON
//! `{"Width":W,"Height":H}`), and in v5, 255 a close signal (`[255, 0]`:
//! the client's stdin has ended). When the process exits its output is
//! drained, the `Status` sent on channel 3, and the socket closed normally.
//!
//! This module knows the protocol, not containerd: the process runs through
//! an [`Executor`] the binary injects (the controller's containerd runtime).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path as UrlPath, RawQuery, Request, State};
use axum::http::Method;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::metrics::Verb;
use crate::{ApiError, AppState};

/// The subprotocols served, most preferred first.
pub const PROTOCOLS: [&str; 2] = [V5, V4];
const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` closes that channel (only stdin can be closed).
pub const CLOSE: u8 = 255;

/// Largest message accepted from a client (stdin chunks, resizes).
const MAX_MESSAGE: usize = 1 << 20;
/// Output is read and sent in chunks of at most this.
const CHUNK: usize = 32 * 1024;
/// Messages queued between the process and the socket, each way.
const QUEUE: usize = 8;
/// After the process exited, how long its output may take to drain (a
/// background child that keeps stdout open would otherwise hold the
/// session for ever).
const DRAIN: Duration = Duration::from_secs(10);
/// How long a killed process may take to be reported gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What to run, and which streams to attach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// A terminal: stderr is merged into stdout (as kubelet does).
    pub tty: bool,
}

/// Why an exec could not run.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ExecError {
    /// The container has no running process to exec into: 409.
    #[error("{0}")]
    NotRunning(String),
    /// Too many exec sessions at once: 429.
    #[error("{0}")]
    Busy(String),
    /// The runtime failed (or the command could not be started).
    #[error("{0}")]
    Failed(String),
}

/// The streams of a started process; `None` for those not asked for.
pub struct ExecIo {
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
}

/// One started exec process.
pub trait ExecProcess: Send + Sync {
    /// Resizes its terminal.
    fn resize(&self, width: u16, height: u16) -> BoxFuture<'_, Result<(), ExecError>>;
    /// Its stdin has ended (called after the stdin writer was dropped).
    fn close_stdin(&self) -> BoxFuture<'_, Result<(), ExecError>>;
    /// Waits for it to exit: its exit status. Once this returned, its
    /// output streams end when drained.
    fn wait(&self) -> BoxFuture<'_, Result<u32, ExecError>>;
    /// SIGKILL.
    fn kill(&self) -> BoxFuture<'_, Result<(), ExecError>>;
    /// Forgets the process and removes what it used (call once, last).
    fn cleanup(&self) -> BoxFuture<'_, ()>;
}

/// A started process and its streams.
pub type Started = (Arc<dyn ExecProcess>, ExecIo);

/// Runs processes in containers: the controller's runtime.
pub trait Executor: Send + Sync {
    /// The runtime id of the container of the Container with this uid
    /// whose task runs; [`ExecError::NotRunning`] says what it is instead.
    fn running<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<String, ExecError>>;
    /// Starts `req.command` in the runtime container `id`.
    fn start<'a>(&'a self, id: &'a str, req: &'a ExecRequest) -> BoxFuture<'a, Result<Started, ExecError>>;
}

impl ExecRequest {
    /// The query string, as Kubernetes' `PodExecOptions`: `command`
    /// repeated per argument, `stdin`, `stdout`, `stderr`, `tty` booleans
    /// (default false); unknown parameters are ignored.
    pub fn parse(raw: Option<&str>) -> Result<ExecRequest, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))?;
        let mut r = ExecRequest::default();
        let flag = |k: &str, v: &str| match v {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(ApiError::BadRequest(format!("query parameter {k}: {v:?} is not a boolean"))),
        };
        for (k, v) in pairs {
            match k.as_str() {
                "command" => r.command.push(v),
                "stdin" => r.stdin = flag(&k, &v)?,
                "stdout" => r.stdout = flag(&k, &v)?,
                "stderr" => r.stderr = flag(&k, &v)?,
                "tty" => r.tty = flag(&k, &v)?,
                _ => {}
            }
        }
        if r.command.is_empty() {
            return Err(ApiError::BadRequest(
                "query parameter command is required: give it once per argument (?command=ls&command=-l)".into(),
            ));
        }
        if !(r.stdin || r.stdout || r.stderr) {
            return Err(ApiError::BadRequest("you must specify at least one of stdin, stdout, or stderr".into()));
        }
        // A terminal has one output stream: stderr goes to it.
        if r.tty {
            r.stderr = false;
            r.stdout = true;
        }
        Ok(r)
    }
}

/// One message on `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 1);
    b.put_u8(channel);
    b.put_slice(data);
    b.freeze()
}

/// The channel-3 `Status` for how the process ended, as kubelet writes it.
pub fn exit_status(result: &Result<u32, ExecError>) -> Value {
    match result {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {e}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": e.to_string()}]},
            "code": 500,
        }),
    }
}

/// A terminal size from a channel-4 message.
pub fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    serde_json::from_slice::<Size>(data).ok().map(|s| (s.width, s.height))
}

/// What a Container's status says its state is, in a few words.
fn state_of(status: Option<&Value>) -> String {
    let state = status.and_then(|s| s.get("state"));
    if let Some(w) = state.and_then(|s| s.get("waiting")) {
        return format!("waiting: {}", w.get("reason").and_then(Value::as_str).unwrap_or("unknown reason"));
    }
    if let Some(t) = state.and_then(|s| s.get("terminated")) {
        let reason = t.get("reason").and_then(Value::as_str).unwrap_or("unknown reason");
        return match t.get("exitCode").and_then(Value::as_i64) {
            Some(c) => format!("terminated: {reason}, exit code {c}"),
            None => format!("terminated: {reason}"),
        };
    }
    if state.and_then(|s| s.get("running")).is_some() {
        return "running".into();
    }
    "not yet started".into()
}

pub async fn exec(
    State(app): State<AppState>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let exec = ExecRequest::parse(q.as_deref())?;
    let obj = crate::containers::get_current(&app, &ns, &name)?;
    let Some(executor) = app.config.executor.clone() else {
        return Err(ApiError::NotFound("this server runs no container runtime (started with --no-controller)".into()));
    };
    let uid = obj.object.metadata.uid.clone();
    let id = match executor.running(&uid).await {
        Ok(id) => id,
        Err(ExecError::NotRunning(why)) => {
            let state = state_of(obj.object.status.as_ref());
            return Err(ApiError::Conflict(format!(
                "cannot exec into container {name:?}: it is not running (state: {state}; runtime: {why})"
            )));
        }
        Err(ExecError::Busy(m)) => return Err(ApiError::TooManyRequests(m)),
        Err(ExecError::Failed(m)) => return Err(ApiError::Unavailable(m)),
    };
    // kubectl's older clients POST; the WebSocket handshake is a GET.
    let (mut parts, _body) = req.into_parts();
    if parts.method == Method::POST {
        parts.method = Method::GET;
    }
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::BadRequest(format!("Upgrade request required: exec is served over a WebSocket ({e})")))?;
    let ws = ws.protocols(PROTOCOLS).max_message_size(MAX_MESSAGE).max_frame_size(MAX_MESSAGE);
    let v5 = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(V5) => true,
        Some(_) => false,
        None => {
            let offered: Vec<String> =
                ws.requested_protocols().map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned()).collect();
            return Err(ApiError::BadRequest(format!(
                "none of the offered WebSocket subprotocols {offered:?} is supported: use {}",
                PROTOCOLS.join(" or ")
            )));
        }
    };
    let span = tracing::info_span!("exec", key = %format!("{ns}/{name}"), container = %id, tty = exec.tty);
    let shutdown = app.shutdown.clone();
    let mut r = ws.on_upgrade(move |socket| {
        async move {
            tracing::info!(command = ?exec.command, v5, "exec session");
            session(socket, v5, executor, id, exec, shutdown).await;
        }
        .instrument(span)
    });
    r.extensions_mut().insert(Verb("exec"));
    Ok(r)
}

/// Copies `from` to `to` as messages on `channel` until EOF.
async fn pump(mut from: Pin<Box<dyn AsyncRead + Send>>, channel: u8, to: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if to.send(frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(channel, error = %e, "exec output ended");
                return;
            }
        }
    }
}

/// Why the socket side ended early.
enum Ended {
    /// The client went away (closed, or the connection broke).
    Client,
    /// The server is shutting down.
    Shutdown,
}

/// Sends the final `Status` and closes the socket normally, waiting a
/// little for the client's close.
async fn finish(mut ws: WebSocket, status: &Value) {
    let body = serde_json::to_vec(status).unwrap_or_default();
    if ws.send(Message::Binary(frame(ERROR, &body))).await.is_err() {
        return;
    }
    let _ = ws.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = ws.recv().await {} }).await;
}

async fn session(
    mut ws: WebSocket,
    v5: bool,
    executor: Arc<dyn Executor>,
    id: String,
    req: ExecRequest,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (process, io) = match executor.start(&id, &req).await {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(error = %e, "exec could not start");
            finish(ws, &exit_status(&Err(e))).await;
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(QUEUE);
    let mut tasks = Vec::new();
    for (stream, channel) in [(io.stdout, STDOUT), (io.stderr, STDERR)] {
        if let Some(s) = stream {
            tasks.push(tokio::spawn(pump(s, channel, out_tx.clone())));
        }
    }
    drop(out_tx);
    // stdin: a writer task fed through a bounded queue; when the queue is
    // closed it drops the writer, then tells the runtime stdin ended.
    let (mut in_tx, stdin_task) = match io.stdin {
        Some(mut w) => {
            let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
            let p = process.clone();
            let task = tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if let Err(e) = w.write_all(&b).await {
                        tracing::debug!(error = %e, "exec stdin ended");
                        break;
                    }
                }
                drop(w);
                if let Err(e) = p.close_stdin().await {
                    tracing::debug!(error = %e, "closing exec stdin");
                }
            });
            (Some(tx), Some(task))
        }
        None => (None, None),
    };

    let wait = process.wait();
    tokio::pin!(wait);
    let mut exited: Option<Result<u32, ExecError>> = None;
    let mut outputs_done = false;
    let mut pending: Option<Bytes> = None;
    // Armed when the process exits.
    let drain = tokio::time::sleep(DRAIN);
    tokio::pin!(drain);
    let ended: Option<Ended> = loop {
        if exited.is_some() && outputs_done {
            break None;
        }
        let stdin_tx = in_tx.clone();
        tokio::select! {
            r = &mut wait, if exited.is_none() => {
                exited = Some(r);
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                // stdin is of no use any more; the writer may be stuck on
                // a pipe nobody reads.
                pending = None;
                in_tx = None;
            }
            out = out_rx.recv(), if !outputs_done => match out {
                Some(b) => {
                    if ws.send(Message::Binary(b)).await.is_err() {
                        break Some(Ended::Client);
                    }
                }
                None => outputs_done = true,
            },
            () = &mut drain, if exited.is_some() => {
                tracing::warn!("exec output still open {DRAIN:?} after the process exited (a background child holds it?); ending");
                break None;
            }
            permit = async move { stdin_tx?.reserve_owned().await.ok() }, if pending.is_some() => {
                match permit {
                    Some(p) => {
                        p.send(pending.take().unwrap_or_default());
                    }
                    // The writer is gone (the process closed its stdin).
                    None => { pending = None; in_tx = None; }
                }
            }
            msg = ws.recv(), if pending.is_none() && exited.is_none() => match msg {
                Some(Ok(Message::Binary(data))) => match data.first().copied() {
                    Some(STDIN) if data.len() > 1 && in_tx.is_some() => pending = Some(data.slice(1..)),
                    Some(RESIZE) if req.tty => match parse_resize(&data[1..]) {
                        Some((w, h)) => if let Err(e) = process.resize(w, h).await {
                            tracing::debug!(error = %e, "resize");
                        },
                        None => tracing::debug!("malformed resize message ignored"),
                    },
                    Some(CLOSE) if v5 && data.get(1) == Some(&STDIN) => in_tx = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break Some(Ended::Client),
                // Pings are answered by the socket itself; text is not part
                // of the protocol.
                Some(Ok(_)) => {}
            },
            () = async { let _ = shutdown.wait_for(|s| *s).await; }, if exited.is_none() => break Some(Ended::Shutdown),
        }
    };
    drop(in_tx);
    if let Some(why) = &ended {
        match why {
            Ended::Client => tracing::info!("exec client went away; killing the process"),
            Ended::Shutdown => tracing::info!("server shutting down; killing the exec process"),
        }
        if let Err(e) = process.kill().await {
            tracing::warn!(error = %e, "killing the exec process");
        }
        if exited.is_none() {
            exited = tokio::time::timeout(KILL_WAIT, &mut wait).await.ok();
        }
    }
    for t in tasks {
        t.abort();
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    let result = exited.unwrap_or_else(|| Err(ExecError::Failed("the process did not report its exit".into())));
    match &result {
        Ok(code) => tracing::info!(exit_code = code, "exec ended"),
        Err(e) => tracing::warn!(error = %e, "exec ended without an exit status"),
    }
    if matches!(ended, None | Some(Ended::Shutdown)) {
        finish(ws, &exit_status(&result)).await;
    }
    process.cleanup().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_parsed_as_kubernetes_does() {
        let r = ExecRequest::parse(Some("command=sh&command=-c&command=echo%20hi&stdout=true&stderr=1")).unwrap();
        assert_eq!(r.command, ["sh", "-c", "echo hi"]);
        assert!(r.stdout && r.stderr && !r.stdin && !r.tty);
        // kube clients may lead with `&` and add what steward ignores.
        let r = ExecRequest::parse(Some("&container=x&command=ls&stdin=true&tty=true&stderr=true")).unwrap();
        assert!(r.tty && r.stdin && r.stdout && !r.stderr, "a tty merges stderr into stdout: {r:?}");
        let e = ExecRequest::parse(Some("stdout=true")).unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)) && e.to_string().contains("command"), "{e}");
        let e = ExecRequest::parse(Some("command=ls")).unwrap_err();
        assert!(e.to_string().contains("stdin, stdout, or stderr"), "{e}");
        let e = ExecRequest::parse(Some("command=ls&stdout=yes")).unwrap_err();
        assert!(e.to_string().contains("stdout"), "{e}");
        assert!(ExecRequest::parse(None).is_err());
    }

    #[test]
    fn frames_carry_their_channel_first() {
        assert_eq!(&frame(STDOUT, b"hi\n")[..], b"\x01hi\n");
        assert_eq!(&frame(ERROR, b"")[..], b"\x03");
        assert_eq!(parse_resize(br#"{"Width":80,"Height":24}"#), Some((80, 24)));
        assert_eq!(parse_resize(b"{}"), None);
        assert_eq!(parse_resize(br#"{"Width":-1,"Height":24}"#), None);
    }

    #[test]
    fn the_final_status_is_kubelets() {
        assert_eq!(serde_json::to_string(&exit_status(&Ok(0))).unwrap(), r#"{"metadata":{},"status":"Success"}"#);
        let s = exit_status(&Ok(3));
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
        assert!(s["message"].as_str().unwrap().starts_with("command terminated with non-zero exit code"));
        let s = exit_status(&Err(ExecError::Failed("exec: \"nope\": executable file not found in $PATH".into())));
        assert_eq!((s["status"].as_str(), s["reason"].as_str()), (Some("Failure"), Some("InternalError")));
        assert!(s["message"].as_str().unwrap().contains("nope"));
    }

    #[test]
    fn the_state_named_in_a_conflict_comes_from_status() {
        let st = json!({"state": {"terminated": {"reason": "Completed", "exitCode": 0}}});
        assert_eq!(state_of(Some(&st)), "terminated: Completed, exit code 0");
        let st = json!({"state": {"waiting": {"reason": "ImagePullBackOff"}}});
        assert_eq!(state_of(Some(&st)), "waiting: ImagePullBackOff");
        assert_eq!(state_of(None), "not yet started");
    }
}
