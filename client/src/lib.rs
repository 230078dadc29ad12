//! The one client of steward's API, shared by the `steward` CLI and the
//! controllers (as kube-client is shared by kubectl's plugins and
//! kube-runtime): where the server is and how to trust it (a kubeconfig,
//! or flags), the bearer token, TLS with the cluster's CA, Kubernetes
//! `Status` errors as a typed [`Error`], and newline-delimited watch
//! streams.
//!
//! Transport failures become one short line naming the server (`cannot
//! reach steward at URL: connection refused`) instead of reqwest's nested
//! error chain, because that is all a user can act on.

pub mod kubeconfig;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use steward_schema::Status;

pub use kubeconfig::{Kubeconfig, Overrides};

/// Deadline of ordinary requests (not watches, logs or exec, which run
/// until the server ends them or the caller's own deadline).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a server is and how to talk to it: what a kubeconfig context
/// resolves to, after flags.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `https://HOST:PORT` (or `http://` for a `--plain-http` server).
    pub server: String,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// PEM certificates to trust for an `https` server; `None` trusts the
    /// system's roots (Debian's ca-certificates).
    pub ca_pem: Option<Vec<u8>>,
    /// Where `ca_pem` came from, for error messages.
    pub ca_source: String,
    /// Do not check the server's certificate at all.
    pub insecure_skip_tls_verify: bool,
    /// The context's namespace, if it names one.
    pub namespace: Option<String>,
}

/// Errors a user can act on, each printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached at all (refused, no route, TLS
    /// handshake failed).
    #[error("cannot reach steward at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The connection broke during a request or a stream.
    #[error("lost connection to steward at {server}: {reason}")]
    Transport { server: String, reason: String },
    /// The server answered with a `Status` error.
    #[error("{}", api_line(.0))]
    Api(Box<Status>),
    /// The server answered something that is not what the API promises.
    #[error("unexpected answer from steward: {0}")]
    Protocol(String),
    /// The client's own configuration is wrong (a kubeconfig, a CA file, a
    /// flag); the message names it.
    #[error("{0}")]
    Config(String),
}

/// kubectl's spelling of a server error: `Error from server (NotFound): ...`.
fn api_line(s: &Status) -> String {
    if s.reason.is_empty() {
        format!("Error from server: {}", s.message)
    } else {
        format!("Error from server ({}): {}", s.reason, s.message)
    }
}

impl Error {
    /// The Status of an API error, if this is one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Api(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is the server saying NotFound.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api(s) if s.code == 404 && s.reason == "NotFound")
    }

    /// Whether the connection failed (as opposed to the server refusing
    /// one request): then the next request would fail as well.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Transport { .. })
    }
}

/// A client of one steward server. Cheap to clone: clones share the
/// connection pool.
#[derive(Clone)]
pub struct Client {
    server: String,
    http: reqwest::Client,
    /// Sent by clients other than `http` (exec's WebSocket).
    token: Option<String>,
    /// For clients other than `http` (exec's WebSocket); `None` for plain HTTP.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// A client for `config`, identifying itself as `user_agent`.
    pub fn new(config: &Config, user_agent: &str) -> Result<Client, Error> {
        let server = config.server.trim_end_matches('/').to_string();
        let https = server.starts_with("https://");
        if !https && !server.starts_with("http://") {
            return Err(Error::Config(format!("server {server:?}: the URL must start with https:// (or http:// for a --plain-http server)")));
        }
        match reqwest::Url::parse(&server) {
            Ok(u) if u.username().is_empty() && u.password().is_none() && u.host().is_some() => {}
            Ok(_) => return Err(Error::Config(format!("server {server:?}: the URL must name a host and no user (credentials go in the kubeconfig)"))),
            Err(e) => return Err(Error::Config(format!("server {server:?}: {e}"))),
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = &config.token {
            let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Error::Config("the API token contains characters a header cannot carry".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // The server closes connections idle for 10 s (its header read
            // timeout); drop ours first so no request races that close.
            .pool_idle_timeout(Duration::from_secs(5))
            .user_agent(user_agent)
            .default_headers(headers)
            // A token must not follow a redirect to somewhere else.
            .redirect(reqwest::redirect::Policy::none());
        let tls = if https { Some(tls::client_config(config)?) } else { None };
        if let Some(tls) = &tls {
            builder = builder.use_preconfigured_tls((**tls).clone());
        }
        let http = builder.build().map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { server, http, token: config.token.clone(), tls })
    }

    /// The server's base URL, without a trailing slash.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The TLS configuration `https` connections use (for WebSockets).
    pub fn tls_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    /// A request with the ordinary deadline.
    pub fn request(&self, method: Method, url: impl reqwest::IntoUrl) -> RequestBuilder {
        self.http.request(method, url).timeout(REQUEST_TIMEOUT)
    }

    /// A request without a deadline: a watch, a followed log, an upload.
    pub fn streaming(&self, method: Method, url: impl reqwest::IntoUrl) -> RequestBuilder {
        self.http.request(method, url)
    }

    /// Sends a request; any non-2xx answer becomes [`Error::Api`].
    pub async fn send(&self, req: RequestBuilder) -> Result<Response, Error> {
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status();
        let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        Err(Error::Api(Box::new(status_from_body(code, &body))))
    }

    /// Reads a response body as JSON.
    pub async fn json<T: DeserializeOwned>(&self, resp: Response) -> Result<T, Error> {
        let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// A watch stream of `T` from an accepted watch response.
    pub fn watch_stream<T: DeserializeOwned>(&self, response: Response) -> WatchStream<T> {
        WatchStream { response, buf: Vec::new(), server: self.server.clone(), _kind: std::marker::PhantomData }
    }

    /// Maps a reqwest failure (sending, or reading a body).
    pub fn transport_error(&self, e: &reqwest::Error) -> Error {
        let reason = root_reason(e);
        if e.is_connect() {
            Error::Unreachable { server: self.server.clone(), reason }
        } else if e.is_timeout() {
            Error::Transport { server: self.server.clone(), reason: "timed out".into() }
        } else {
            Error::Transport { server: self.server.clone(), reason }
        }
    }
}

/// Most a configuration file (kubeconfig, CA, token, certificate) may hold.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads a configuration file: a regular file (not a device or a FIFO, which
/// could be read for ever) of at most [`MAX_FILE_BYTES`].
pub fn read_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut out = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok(out)
}

/// [`read_file`] as UTF-8 text.
pub fn read_text(path: &std::path::Path) -> std::io::Result<String> {
    String::from_utf8(read_file(path)?).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// The innermost cause of an error, stated briefly: reqwest wraps the
/// useful part ("connection refused", "invalid peer certificate:
/// UnknownIssuer") in two or three generic layers.
pub fn root_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    loop {
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            // A TLS failure travels inside an io::Error (or two), whose
            // source() skips it.
            let mut inner = io.get_ref();
            while let Some(e) = inner {
                if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                    return tls::explain(tls);
                }
                inner = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
            }
            use std::io::ErrorKind::*;
            let text = match io.kind() {
                ConnectionRefused => "connection refused",
                ConnectionReset => "connection reset by peer",
                ConnectionAborted => "connection aborted",
                TimedOut => "timed out",
                UnexpectedEof => "connection closed",
                _ => "",
            };
            if !text.is_empty() {
                return text.to_string();
            }
        }
        if let Some(tls) = cur.downcast_ref::<rustls::Error>() {
            return tls::explain(tls);
        }
        match cur.source() {
            Some(next) => cur = next,
            None => break,
        }
    }
    let text = cur.to_string();
    // "Connection refused (os error 111)" -> "connection refused".
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "unknown error".into(),
    }
}

/// A `Status` from an error response; a body that is not one (a proxy's
/// HTML page, say) still becomes one, with its HTTP code.
pub fn status_from_body(code: StatusCode, body: &[u8]) -> Status {
    if let Ok(s) = serde_json::from_slice::<Status>(body) {
        if s.kind == "Status" {
            return Status { code: if s.code == 0 { code.as_u16() } else { s.code }, ..s };
        }
    }
    let text = String::from_utf8_lossy(body).trim().to_string();
    let message = if text.is_empty() || text.len() > 500 {
        format!("the server responded with HTTP {code}")
    } else {
        text
    };
    Status::failure(code.as_u16(), canonical_reason(code.as_u16()), message)
}

fn canonical_reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// One event of a watch stream.
// Moved once from the stream to the watcher; boxing the rare variant
// would cost more than it saves.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    /// Nothing changed, but the watch has seen up to this revision.
    Bookmark(String),
    /// The watch ended with an error; code 410 means "relist".
    Error(Status),
}

impl<K: DeserializeOwned> WatchEvent<K> {
    /// Parses one line of a watch stream.
    pub fn parse(line: &[u8]) -> Result<WatchEvent<K>, String> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "type")]
            type_: String,
            #[serde(default)]
            object: serde_json::Value,
        }
        let raw: Raw = serde_json::from_slice(line).map_err(|e| format!("bad watch event: {e}"))?;
        let object = |v: serde_json::Value| -> Result<K, String> {
            serde_json::from_value(v).map_err(|e| format!("bad object in {} event: {e}", raw.type_))
        };
        match raw.type_.as_str() {
            "ADDED" => Ok(WatchEvent::Added(object(raw.object)?)),
            "MODIFIED" => Ok(WatchEvent::Modified(object(raw.object)?)),
            "DELETED" => Ok(WatchEvent::Deleted(object(raw.object)?)),
            "BOOKMARK" => {
                let rv = raw.object.pointer("/metadata/resourceVersion").and_then(|v| v.as_str());
                Ok(WatchEvent::Bookmark(rv.unwrap_or_default().to_string()))
            }
            "ERROR" => serde_json::from_value(raw.object)
                .map(WatchEvent::Error)
                .map_err(|e| format!("bad Status in ERROR event: {e}")),
            other => Err(format!("unknown watch event type {other:?}")),
        }
    }

    /// The same event with its object mapped.
    pub fn map<L>(self, f: impl FnOnce(K) -> L) -> WatchEvent<L> {
        match self {
            WatchEvent::Added(k) => WatchEvent::Added(f(k)),
            WatchEvent::Modified(k) => WatchEvent::Modified(f(k)),
            WatchEvent::Deleted(k) => WatchEvent::Deleted(f(k)),
            WatchEvent::Bookmark(rv) => WatchEvent::Bookmark(rv),
            WatchEvent::Error(s) => WatchEvent::Error(s),
        }
    }
}

/// A running watch: newline-delimited JSON events over a chunked response.
pub struct WatchStream<K> {
    response: Response,
    buf: Vec<u8>,
    server: String,
    _kind: std::marker::PhantomData<fn() -> K>,
}

impl<K: DeserializeOwned> WatchStream<K> {
    /// The next event, or `None` when the server ended the watch (its
    /// `timeoutSeconds` passed, or it went away cleanly).
    pub async fn next(&mut self) -> Result<Option<WatchEvent<K>>, Error> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return WatchEvent::parse(line).map(Some).map_err(Error::Protocol);
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => {
                    // A last event without its newline still counts.
                    let rest = std::mem::take(&mut self.buf);
                    let rest = rest.trim_ascii();
                    if rest.is_empty() {
                        return Ok(None);
                    }
                    return WatchEvent::parse(rest).map(Some).map_err(Error::Protocol);
                }
                Err(e) => {
                    let reason = root_reason(&e);
                    return Err(Error::Transport { server: self.server.clone(), reason });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[test]
    fn watch_event_parsing() {
        let ev = WatchEvent::<serde_json::Value>::parse(br#"{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"3"}}}"#).unwrap();
        assert!(matches!(ev, WatchEvent::Added(v) if v["metadata"]["name"] == "a"));
        let ev = WatchEvent::<serde_json::Value>::parse(br#"{"type":"BOOKMARK","object":{"kind":"Container","metadata":{"resourceVersion":"9"}}}"#).unwrap();
        assert!(matches!(ev, WatchEvent::Bookmark(rv) if rv == "9"));
        let ev = WatchEvent::<serde_json::Value>::parse(
            br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old","reason":"Expired","code":410}}"#,
        )
        .unwrap();
        assert!(matches!(ev, WatchEvent::Error(s) if s.code == 410));
        assert!(WatchEvent::<serde_json::Value>::parse(b"{\"type\":\"WHAT\"}").is_err());
        assert!(WatchEvent::<serde_json::Value>::parse(b"not json").is_err());
    }

    #[test]
    fn status_bodies() {
        let s = status_from_body(
            StatusCode::NOT_FOUND,
            br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"containers \"x\" not found","reason":"NotFound","code":404}"#,
        );
        assert_eq!(s.reason, "NotFound");
        let e = Error::Api(Box::new(s));
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "Error from server (NotFound): containers \"x\" not found");
        let s = status_from_body(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(s.code, 502);
        assert_eq!(s.message, "<html>bad gateway</html>");
        let s = status_from_body(StatusCode::CONFLICT, b"");
        assert_eq!(s.reason, "Conflict");
    }

    #[test]
    fn root_reason_of_io_error() {
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl fmt::Display for Wrap {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("tcp connect error")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Wrap(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(root_reason(&e), "connection refused");
        let e = Wrap(std::io::Error::other("Name or service not known"));
        assert_eq!(root_reason(&e), "name or service not known");
    }

    #[test]
    fn urls_other_than_http_are_refused_naming_the_server() {
        let e = Client::new(&Config { server: "ftp://x".into(), ..Default::default() }, "t").err().unwrap();
        assert!(e.to_string().contains("ftp://x"), "{e}");
        assert!(Client::new(&Config { server: "http://127.0.0.1:1".into(), ..Default::default() }, "t").is_ok());
        let e = Client::new(&Config { server: "http://127.0.0.1:1@evil:2".into(), ..Default::default() }, "t").err().unwrap();
        assert!(e.to_string().contains("no user"), "{e}");
    }
}
