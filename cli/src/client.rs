//! The HTTP side of the client verbs: one small API client over reqwest,
//! Kubernetes `Status` errors, and the newline-delimited watch stream.
//!
//! Transport failures are turned into one short line naming the server
//! (`cannot reach steward at URL: connection refused`) instead of reqwest's
//! nested error chain, because that is all a user can act on.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use steward_schema::{Container, Status};

/// Used when neither `--server` nor `STEWARD_SERVER` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7420";
/// Root of the steward API group.
pub const API_ROOT: &str = "/apis/steward.dev/v1alpha1";
/// Written into every apply, so a later server can track field ownership.
pub const FIELD_MANAGER: &str = "steward";
/// The server names the outcome of an apply in this response header
/// (`created`, `configured` or `unchanged`).
pub const APPLY_HEADER: &str = "x-steward-apply";
/// Page size of lists; larger lists are followed through `continue`.
const PAGE_SIZE: &str = "500";
/// Deadline of ordinary requests (not watches, which run until the server
/// ends them or the caller's own deadline).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors a user can act on, each printed as one line.
// `Status` makes the Api variant large; errors are rare and short-lived.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ClientError {
    /// The server could not be reached at all.
    Unreachable { server: String, reason: String },
    /// The connection broke during a request or a stream.
    Transport { server: String, reason: String },
    /// The server answered with a `Status` error.
    Api(Status),
    /// The server answered something that is not what the API promises.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { server, reason } => {
                write!(f, "cannot reach steward at {server}: {reason}")
            }
            ClientError::Transport { server, reason } => {
                write!(f, "lost connection to steward at {server}: {reason}")
            }
            ClientError::Api(s) if s.reason.is_empty() => write!(f, "Error from server: {}", s.message),
            ClientError::Api(s) => write!(f, "Error from server ({}): {}", s.reason, s.message),
            ClientError::Protocol(m) => write!(f, "unexpected answer from steward: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// The Status of an API error, if this is one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Api(s) => Some(s),
            _ => None,
        }
    }
}

/// Finds the API `Status` inside an anyhow error, if the error is one.
pub fn api_status(e: &anyhow::Error) -> Option<&Status> {
    e.downcast_ref::<ClientError>().and_then(ClientError::status)
}

/// Whether an error is the connection failing (as opposed to the server
/// refusing one request): then the next request would fail as well.
pub fn is_transport(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<ClientError>(), Some(ClientError::Unreachable { .. } | ClientError::Transport { .. }))
}

/// `ContainerList` as the server sends it and `get -o json` prints it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerList {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<Container>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub resource_version: String,
    #[serde(default, rename = "continue", skip_serializing_if = "String::is_empty")]
    pub continue_: String,
}

impl ContainerList {
    /// A list in the shape the API returns, every item carrying its
    /// `apiVersion` and `kind` so that the list can be applied again.
    pub fn new(resource_version: String, mut items: Vec<Container>) -> Self {
        for c in &mut items {
            fill_type_meta(c);
        }
        ContainerList {
            api_version: steward_schema::API_VERSION.into(),
            kind: steward_schema::LIST_KIND.into(),
            metadata: ListMeta { resource_version, continue_: String::new() },
            items,
        }
    }
}

/// Lists and watches leave `apiVersion`/`kind` out in some servers; printed
/// objects always carry them.
pub fn fill_type_meta(c: &mut Container) {
    if c.api_version.is_empty() {
        c.api_version = steward_schema::API_VERSION.into();
    }
    if c.kind.is_empty() {
        c.kind = steward_schema::KIND.into();
    }
}

/// Selectors and resume point of a list or watch.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
}

/// What an apply returned.
pub struct Applied {
    pub object: Container,
    /// 201: the apply created the object.
    pub created: bool,
    /// The server's own verdict, from the `X-Steward-Apply` header.
    pub outcome: Option<String>,
}

/// One event of a watch stream.
#[derive(Debug)]
pub enum WatchEvent {
    Added(Container),
    Modified(Container),
    Deleted(Container),
    /// Nothing changed, but the watch has seen up to this revision.
    Bookmark(String),
    /// The watch ended with an error; code 410 means "relist".
    Error(Status),
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    object: serde_json::Value,
}

impl WatchEvent {
    /// Parses one line of a watch stream.
    pub fn parse(line: &[u8]) -> Result<WatchEvent, String> {
        let raw: RawEvent = serde_json::from_slice(line).map_err(|e| format!("bad watch event: {e}"))?;
        let container = |v: serde_json::Value| -> Result<Container, String> {
            let mut c: Container =
                serde_json::from_value(v).map_err(|e| format!("bad object in {} event: {e}", raw.type_))?;
            fill_type_meta(&mut c);
            Ok(c)
        };
        match raw.type_.as_str() {
            "ADDED" => Ok(WatchEvent::Added(container(raw.object)?)),
            "MODIFIED" => Ok(WatchEvent::Modified(container(raw.object)?)),
            "DELETED" => Ok(WatchEvent::Deleted(container(raw.object)?)),
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
}

/// A running watch: newline-delimited JSON events over a chunked response.
pub struct WatchStream {
    response: Response,
    buf: Vec<u8>,
    server: String,
}

impl WatchStream {
    /// The next event, or `None` when the server ended the watch (its
    /// `timeoutSeconds` passed, or it went away cleanly).
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return WatchEvent::parse(line).map(Some).map_err(ClientError::Protocol);
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
                    return WatchEvent::parse(rest).map(Some).map_err(ClientError::Protocol);
                }
                Err(e) => return Err(transport_error(&self.server, &e)),
            }
        }
    }
}

/// A client of one steward server.
#[derive(Clone)]
pub struct Client {
    server: String,
    http: reqwest::Client,
    /// Sent by clients other than `http` (exec's WebSocket).
    token: Option<String>,
}

impl Client {
    pub fn new(server: &str, token: Option<&str>) -> anyhow::Result<Client> {
        let server = server.trim_end_matches('/').to_string();
        // reqwest is built without TLS: say so up front rather than failing
        // with an obscure "scheme not supported" on the first request.
        if !server.starts_with("http://") {
            anyhow::bail!("server URL {server:?} must start with http:// (https is not supported yet)");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| anyhow::anyhow!("the API token contains characters a header cannot carry"))?;
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // The server closes connections idle for 10 s (its header read
            // timeout); drop ours first so no request races that close.
            .pool_idle_timeout(Duration::from_secs(5))
            .user_agent(concat!("steward/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build HTTP client: {e}"))?;
        Ok(Client { server, http, token: token.map(String::from) })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `.../namespaces/{ns}/containers`, or `.../containers` across all
    /// namespaces when `ns` is `None`.
    fn collection_url(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) => format!("{}{API_ROOT}/namespaces/{ns}/containers", self.server),
            None => format!("{}{API_ROOT}/containers", self.server),
        }
    }

    fn object_url(&self, ns: &str, name: &str) -> String {
        format!("{}/{name}", self.collection_url(Some(ns)))
    }

    /// Sends a request; any non-2xx answer becomes `ClientError::Api`.
    async fn send(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let resp = req.send().await.map_err(|e| transport_error(&self.server, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status();
        let body = resp.bytes().await.map_err(|e| transport_error(&self.server, &e))?;
        Err(ClientError::Api(status_from_body(code, &body)))
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, resp: Response) -> Result<T, ClientError> {
        let body = resp.bytes().await.map_err(|e| transport_error(&self.server, &e))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    fn request(&self, method: Method, url: String) -> RequestBuilder {
        self.http.request(method, url).timeout(REQUEST_TIMEOUT)
    }

    /// Reads one object; `None` when the server says NotFound.
    pub async fn get(&self, ns: &str, name: &str) -> Result<Option<Container>, ClientError> {
        match self.send(self.request(Method::GET, self.object_url(ns, name))).await {
            Ok(resp) => {
                let mut c: Container = self.json(resp).await?;
                fill_type_meta(&mut c);
                Ok(Some(c))
            }
            Err(ClientError::Api(s)) if s.code == 404 && s.reason == "NotFound" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists every matching object, following `metadata.continue` pages.
    /// The list's resourceVersion is the first page's: watching from there
    /// can only replay changes, never miss one made while paging.
    pub async fn list(&self, ns: Option<&str>, opts: &ListOptions) -> Result<ContainerList, ClientError> {
        let mut items = Vec::new();
        let mut resource_version = None;
        let mut cont = String::new();
        loop {
            let mut query = vec![("limit", PAGE_SIZE.to_string())];
            if let Some(s) = &opts.label_selector {
                query.push(("labelSelector", s.clone()));
            }
            if let Some(s) = &opts.field_selector {
                query.push(("fieldSelector", s.clone()));
            }
            if !cont.is_empty() {
                query.push(("continue", cont.clone()));
            }
            let req = self.request(Method::GET, self.collection_url(ns)).query(&query);
            let page: ContainerList = self.json(self.send(req).await?).await?;
            resource_version.get_or_insert(page.metadata.resource_version);
            items.extend(page.items);
            if page.metadata.continue_.is_empty() {
                break;
            }
            cont = page.metadata.continue_;
        }
        Ok(ContainerList::new(resource_version.unwrap_or_default(), items))
    }

    /// Starts a watch from `resource_version`. `timeout` asks the server to
    /// end the stream after that long, so a dropped peer is noticed.
    pub async fn watch(
        &self,
        ns: Option<&str>,
        opts: &ListOptions,
        resource_version: &str,
        timeout: Option<Duration>,
    ) -> Result<WatchStream, ClientError> {
        let mut query = vec![
            ("watch", "true".to_string()),
            ("allowWatchBookmarks", "true".to_string()),
            ("resourceVersion", resource_version.to_string()),
        ];
        if let Some(s) = &opts.label_selector {
            query.push(("labelSelector", s.clone()));
        }
        if let Some(s) = &opts.field_selector {
            query.push(("fieldSelector", s.clone()));
        }
        if let Some(t) = timeout {
            // At least one second: 0 would mean "the server's default".
            query.push(("timeoutSeconds", t.as_secs().max(1).to_string()));
        }
        // No request timeout here: a watch is meant to stay open.
        let req = self.http.get(self.collection_url(ns)).query(&query);
        let response = self.send(req).await?;
        Ok(WatchStream { response, buf: Vec::new(), server: self.server.clone() })
    }

    /// Server-side apply of one object: creates it when absent, otherwise
    /// replaces its spec, labels and annotations.
    pub async fn apply(&self, obj: &Container, dry_run: bool) -> Result<Applied, ClientError> {
        let body = serde_json::to_vec(obj).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut query = vec![("fieldManager", FIELD_MANAGER)];
        if dry_run {
            query.push(("dryRun", "All"));
        }
        let req = self
            .request(Method::PATCH, self.object_url(&obj.metadata.namespace, &obj.metadata.name))
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "application/apply-patch+yaml")
            .body(body);
        let resp = self.send(req).await?;
        let created = resp.status() == StatusCode::CREATED;
        let outcome = resp
            .headers()
            .get(APPLY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        let mut object: Container = self.json(resp).await?;
        fill_type_meta(&mut object);
        Ok(Applied { object, created, outcome })
    }

    /// Deletes one object; the answer is the object as it was (with
    /// `deletionTimestamp` while finalizers remain), when the server sends it.
    pub async fn delete(&self, ns: &str, name: &str, dry_run: bool) -> Result<(), ClientError> {
        let mut req = self.request(Method::DELETE, self.object_url(ns, name));
        if dry_run {
            req = req.query(&[("dryRun", "All")]);
        }
        self.send(req).await.map(|_| ())
    }
}

impl Client {
    /// Opens the container's log (`text/plain`), streamed when following.
    pub async fn logs(&self, ns: &str, name: &str, query: &[(&str, String)]) -> Result<Response, ClientError> {
        // No request timeout: a followed log is open-ended.
        let req = self.http.get(format!("{}/log", self.object_url(ns, name))).query(query);
        self.send(req).await
    }

    /// Uploads an OCI archive to the server's runtime; returns image names.
    pub async fn import_image(&self, file: tokio::fs::File) -> Result<Vec<String>, ClientError> {
        let body = reqwest::Body::wrap_stream(file_chunks(file));
        let req = self
            .http
            .post(format!("{}{API_ROOT}/images/import", self.server))
            .header("content-type", "application/x-tar")
            .body(body);
        let resp = self.send(req).await?;
        let v: serde_json::Value = self.json(resp).await?;
        Ok(v["images"].as_array().into_iter().flatten().filter_map(|i| i.as_str().map(String::from)).collect())
    }

    /// Every image of the server's runtime (the `ImageList`'s items).
    pub async fn list_images(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        let resp = self.send(self.http.get(format!("{}{API_ROOT}/images", self.server))).await?;
        let v: serde_json::Value = self.json(resp).await?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// Removes an Image by object name (`sha256-<hex>`).
    pub async fn delete_image(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        let resp = self.send(self.http.delete(format!("{}{API_ROOT}/images/{name}", self.server))).await?;
        self.json(resp).await
    }

    /// Pulls `reference` now; the Image.
    pub async fn pull_image(&self, reference: &str) -> Result<serde_json::Value, ClientError> {
        let req = self.http.post(format!("{}{API_ROOT}/images/pull", self.server)).json(&serde_json::json!({"image": reference}));
        let resp = self.send(req).await?;
        self.json(resp).await
    }

    /// Maps a failure while reading a response body.
    pub fn body_error(&self, e: &reqwest::Error) -> ClientError {
        transport_error(&self.server, e)
    }
}

/// A transport failure as one line, with the innermost cause in words.
fn transport_error(server: &str, e: &reqwest::Error) -> ClientError {
    let reason = root_reason(e);
    if e.is_connect() {
        ClientError::Unreachable { server: server.to_string(), reason }
    } else if e.is_timeout() {
        ClientError::Transport { server: server.to_string(), reason: "timed out".into() }
    } else {
        ClientError::Transport { server: server.to_string(), reason }
    }
}

/// The innermost cause of an error, stated briefly: reqwest wraps the
/// useful part ("connection refused") in two or three generic layers.
fn root_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    loop {
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
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

/// A file as a stream of chunks, for streaming uploads.
fn file_chunks(file: tokio::fs::File) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_event_parsing() {
        let ev = WatchEvent::parse(
            br#"{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"3"},"spec":{"image":"i"}}}"#,
        )
        .unwrap();
        match ev {
            WatchEvent::Added(c) => {
                assert_eq!(c.metadata.name, "a");
                assert_eq!(c.kind, "Container");
            }
            other => panic!("{other:?}"),
        }
        let ev = WatchEvent::parse(br#"{"type":"BOOKMARK","object":{"kind":"Container","metadata":{"resourceVersion":"9"}}}"#).unwrap();
        assert!(matches!(ev, WatchEvent::Bookmark(rv) if rv == "9"));
        let ev = WatchEvent::parse(
            br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old","reason":"Expired","code":410}}"#,
        )
        .unwrap();
        assert!(matches!(ev, WatchEvent::Error(s) if s.code == 410));
        assert!(WatchEvent::parse(b"{\"type\":\"WHAT\"}").is_err());
        assert!(WatchEvent::parse(b"not json").is_err());
    }

    #[test]
    fn status_bodies() {
        let s = status_from_body(
            StatusCode::NOT_FOUND,
            br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"containers \"x\" not found","reason":"NotFound","code":404}"#,
        );
        assert_eq!(s.reason, "NotFound");
        assert_eq!(ClientError::Api(s).to_string(), "Error from server (NotFound): containers \"x\" not found");
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
}

