//! `steward exec NAME [-i] [-t] -- COMMAND [ARGS...]`: runs a command in a
//! running container over the API's WebSocket (Kubernetes'
//! `v5.channel.k8s.io`, else `v4.channel.k8s.io`), as `kubectl exec`.
//!
//! The remote stdout and stderr go to ours, apart (with `-t` the terminal
//! merges them, as in Kubernetes); the remote exit code becomes ours. With
//! `-i` our stdin is sent, and its end closes the remote stdin (v5). With
//! `-t` the local terminal is in raw mode (restored on every way out), so
//! Ctrl-C is a byte for the remote; its size is sent at start and on every
//! SIGWINCH. Without `-t`, SIGINT ends this client, and the server kills
//! the remote process.

use std::io::Write;
use std::process::ExitCode;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::client::{status_from_body, ClientError};
use crate::Context;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
/// Largest message accepted from the server.
const MAX_MESSAGE: usize = 4 << 20;
/// stdin is read and sent in chunks of at most this.
const CHUNK: usize = 32 * 1024;

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// The container (`NAME` or `container/NAME`).
    #[arg(add = clap_complete::engine::ArgValueCompleter::new(crate::completion::targets))]
    pub name: String,
    /// Send stdin to the command (its end closes the command's stdin).
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Give the command a terminal (stdin must be one; stderr is merged).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments, after `--`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// How the remote command ended, from the channel-3 `Status`.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(u8),
    Failed(String),
}

/// Kubelet's Status: `Success`, or `NonZeroExitCode` with the code as an
/// `ExitCode` cause, or another failure with its message.
pub fn outcome(status: &[u8]) -> Outcome {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(status) else {
        return Outcome::Failed(format!("malformed exit status from the server: {}", String::from_utf8_lossy(status)));
    };
    if v["status"] == "Success" {
        return Outcome::Exited(0);
    }
    if v["reason"] == "NonZeroExitCode" {
        let code = v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse::<u32>().ok());
        if let Some(code) = code {
            // An exit status is 0-255; anything else still means failure.
            return Outcome::Exited(u8::try_from(code).unwrap_or(1).max(1));
        }
    }
    let message = v["message"].as_str().filter(|m| !m.is_empty()).unwrap_or("the command failed");
    Outcome::Failed(message.to_string())
}

/// The WebSocket URL of the exec endpoint.
pub fn exec_url(server: &str, ns: &str, name: &str, args: &ExecArgs, tty: bool) -> anyhow::Result<String> {
    let ws = if let Some(rest) = server.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = server.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        // Client::new already refuses anything else.
        anyhow::bail!("server URL {server:?} must start with https:// or http://");
    };
    let mut url = reqwest::Url::parse(&format!("{ws}/apis/steward.dev/v1alpha1/namespaces/{ns}/containers/{name}/exec"))
        .map_err(|e| anyhow::anyhow!("server URL {server:?}: {e}"))?;
    {
        let mut q = url.query_pairs_mut();
        for c in &args.command {
            q.append_pair("command", c);
        }
        if args.stdin {
            q.append_pair("stdin", "true");
        }
        q.append_pair("stdout", "true");
        // A terminal has one output stream.
        q.append_pair("stderr", if tty { "false" } else { "true" });
        if tty {
            q.append_pair("tty", "true");
        }
    }
    Ok(url.into())
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

fn resize_message(cols: u16, rows: u16) -> Message {
    frame(RESIZE, serde_json::json!({"Width": cols, "Height": rows}).to_string().as_bytes())
}

/// The local terminal in raw mode; restored when dropped (also on errors
/// and panics, which unwind through it).
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: i32) -> std::io::Result<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open for the process's life; `saved` is valid.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: as above.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// The terminal's size (columns, rows), if `fd` is one.
fn terminal_size(fd: i32) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it or fails.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: `ws` is a valid winsize for the ioctl to write.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

fn is_terminal(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Reads stdin on a thread of its own (a blocked read must not keep the
/// process from exiting), in chunks, into a bounded queue; `None` at EOF.
fn read_stdin() -> tokio::sync::mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = tx.blocking_send(None);
    });
    rx
}

fn write_all(to: &mut dyn Write, data: &[u8]) -> anyhow::Result<()> {
    match to.write_all(data).and_then(|()| to.flush()) {
        Ok(()) => Ok(()),
        // `steward exec web -- yes | head`: the reader is gone; so is the
        // connection, and with it the remote process.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(crate::StdoutClosed.into()),
        Err(e) => Err(anyhow::anyhow!("cannot write the command's output: {e}")),
    }
}

/// A byte stream to the server: TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Connects to the server of `url` (`ws://` or `wss://`), with the
/// client's TLS configuration (its CA) for `wss`.
async fn connect(ctx: &Context, url: &str) -> anyhow::Result<Box<dyn Io>> {
    let server = || ctx.client.server().to_string();
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("exec URL {url}: {e}"))?;
    let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let unreachable = |e: &std::io::Error| ClientError::Unreachable { server: server(), reason: steward_client::root_reason(e) };
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| ClientError::Unreachable { server: server(), reason: "timed out".into() })?
        .map_err(|e| unreachable(&e))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = ctx.client.tls_config().filter(|_| parsed.scheme() == "wss") else {
        return Ok(Box::new(tcp));
    };
    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| anyhow::anyhow!("server {}: {e}", server()))?;
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| unreachable(&e))?;
    Ok(Box::new(stream))
}

pub async fn run(ctx: &Context, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.strip_prefix("container/").unwrap_or(&args.name).to_string();
    steward_schema::validate::dns1123_label(&name).map_err(|m| anyhow::anyhow!("invalid container name {name:?}: {m}"))?;
    let mut tty = args.tty;
    if tty && !is_terminal(0) {
        // As kubectl: say so, and go on without one.
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
        tty = false;
    }
    let url = exec_url(ctx.client.server(), ctx.namespace(), &name, &args, tty)?;
    let mut request = url.as_str().into_client_request().map_err(|e| anyhow::anyhow!("exec URL {url}: {e}"))?;
    let headers = request.headers_mut();
    headers.insert("Sec-WebSocket-Protocol", HeaderValue::from_static("v5.channel.k8s.io, v4.channel.k8s.io"));
    if let Some(t) = ctx.client.token() {
        let v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| anyhow::anyhow!("the API token contains characters a header cannot carry"))?;
        headers.insert("Authorization", v);
    }
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let stream = connect(ctx, &url).await?;
    let (mut ws, response) = match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
        Ok(c) => c,
        Err(WsError::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let code = reqwest::StatusCode::from_u16(resp.status().as_u16()).unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
            return Err(ClientError::Api(Box::new(status_from_body(code, &body))).into());
        }
        Err(e) => return Err(ClientError::Transport { server: ctx.client.server().to_string(), reason: e.to_string() }.into()),
    };
    let v5 = match response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()) {
        Some(V5) => true,
        Some(V4) => false,
        other => anyhow::bail!("the server chose no supported exec protocol (it answered {other:?})"),
    };

    // From here on the terminal is raw (when -t) until `_raw` drops.
    let _raw = if tty {
        Some(RawMode::enter(0).map_err(|e| anyhow::anyhow!("cannot put the terminal in raw mode: {e}"))?)
    } else {
        None
    };
    if tty {
        if let Some((cols, rows)) = terminal_size(0).or_else(|| terminal_size(1)) {
            ws.send(resize_message(cols, rows)).await.map_err(|e| anyhow::anyhow!("sending the terminal size: {e}"))?;
        }
    }
    let mut stdin = if args.stdin { Some(read_stdin()) } else { None };
    use tokio::signal::unix::{signal, SignalKind};
    let mut winch = if tty { Some(signal(SignalKind::window_change())?) } else { None };
    // In raw mode the terminal sends no SIGINT; these still come, and must
    // not leave it raw.
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;

    let mut result: Option<Outcome> = None;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(data))) => match data.first().copied() {
                    Some(STDOUT) => write_all(&mut stdout, &data[1..])?,
                    Some(STDERR) => write_all(&mut stderr, &data[1..])?,
                    Some(ERROR) => result = Some(outcome(&data[1..])),
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if result.is_some() {
                        break;
                    }
                    return Err(ClientError::Transport { server: ctx.client.server().to_string(), reason: e.to_string() }.into());
                }
            },
            chunk = async { stdin.as_mut()?.recv().await }, if stdin.is_some() => match chunk.flatten() {
                Some(data) => ws.send(frame(STDIN, &data)).await.map_err(|e| anyhow::anyhow!("sending stdin: {e}"))?,
                None => {
                    stdin = None;
                    if v5 {
                        ws.send(Message::Binary(vec![CLOSE, STDIN].into())).await.map_err(|e| anyhow::anyhow!("closing stdin: {e}"))?;
                    }
                }
            },
            _ = async { winch.as_mut()?.recv().await }, if winch.is_some() => {
                if let Some((cols, rows)) = terminal_size(0) {
                    ws.send(resize_message(cols, rows)).await.map_err(|e| anyhow::anyhow!("sending the terminal size: {e}"))?;
                }
            }
            _ = term.recv() => return Ok(ExitCode::from(143)),
            _ = hup.recv() => return Ok(ExitCode::from(129)),
        }
    }
    let _ = ws.close(None).await;
    drop(_raw);
    match result {
        Some(Outcome::Exited(code)) => Ok(ExitCode::from(code)),
        Some(Outcome::Failed(message)) => anyhow::bail!("{message}"),
        None => anyhow::bail!("the connection closed before the command's exit status arrived"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: ExecArgs,
    }

    fn parse(argv: &[&str]) -> ExecArgs {
        Cmd::try_parse_from(std::iter::once("exec").chain(argv.iter().copied())).unwrap().args
    }

    #[test]
    fn the_command_is_everything_after_the_name_or_the_dashes() {
        let a = parse(&["web", "-it", "--", "sh", "-c", "echo hi"]);
        assert_eq!((a.name.as_str(), a.stdin, a.tty), ("web", true, true));
        assert_eq!(a.command, ["sh", "-c", "echo hi"]);
        let a = parse(&["-i", "web", "--", "ls", "-l", "--", "-x"]);
        assert_eq!(a.command, ["ls", "-l", "--", "-x"]);
        assert!(a.stdin && !a.tty);
        let a = parse(&["web", "ls", "-l"]);
        assert_eq!(a.command, ["ls", "-l"]);
        assert!(Cmd::try_parse_from(["exec", "web"]).is_err(), "a command is required");
        assert!(Cmd::try_parse_from(["exec", "web", "--"]).is_err(), "a command is required");
    }

    #[test]
    fn the_url_carries_the_command_and_streams() {
        let a = parse(&["web", "-i", "--", "sh", "-c", "echo a&b=c"]);
        let u = exec_url("http://127.0.0.1:7420", "default", "web", &a, false).unwrap();
        assert_eq!(
            u,
            "ws://127.0.0.1:7420/apis/steward.dev/v1alpha1/namespaces/default/containers/web/exec?\
             command=sh&command=-c&command=echo+a%26b%3Dc&stdin=true&stdout=true&stderr=true"
        );
        let u = exec_url("http://h:1", "ns", "web", &a, true).unwrap();
        assert!(u.ends_with("&stdout=true&stderr=false&tty=true"), "{u}");
        assert!(exec_url("https://h:1", "ns", "web", &a, false).unwrap().starts_with("wss://h:1/apis/"));
        assert!(exec_url("ftp://h:1", "ns", "web", &a, false).is_err());
    }

    #[test]
    fn the_exit_code_comes_from_the_status() {
        assert_eq!(outcome(br#"{"metadata":{},"status":"Success"}"#), Outcome::Exited(0));
        let s = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(outcome(s), Outcome::Exited(3));
        let s =
            br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"300"}]}}"#;
        assert_eq!(outcome(s), Outcome::Exited(1));
        let s =
            br#"{"status":"Failure","message":"Internal error occurred: exec: \"nope\": not found","reason":"InternalError"}"#;
        assert_eq!(outcome(s), Outcome::Failed("Internal error occurred: exec: \"nope\": not found".into()));
        assert!(matches!(outcome(b"garbage"), Outcome::Failed(_)));
    }

    #[test]
    fn frames_start_with_their_channel() {
        assert_eq!(frame(STDIN, b"ab"), Message::Binary(vec![0, b'a', b'b'].into()));
        assert_eq!(resize_message(80, 24), Message::Binary([&[4u8][..], br#"{"Width":80,"Height":24}"#].concat().into()));
    }
}
