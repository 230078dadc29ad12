//! The HTTP side of the client verbs: one small API client over reqwest,
//! Kubernetes `Status` errors, and the newline-delimited watch stream.
//!
//! Transport failures are turned into one short line naming the server
//! (`cannot reach steward at URL: connection refused`) instead of reqwest's
//! nested error chain, because that is all a user can act on.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use steward_schema::{Container, Status};

pub use steward_client::Error as ClientError;
pub use steward_client::status_from_body;

/// Used when neither `--server`, `STEWARD_SERVER` nor a kubeconfig names one.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7420";
/// Root of the steward API group.
pub const API_ROOT: &str = "/apis/steward.dev/v1alpha1";
/// Written into every apply, so a later server can track field ownership.
pub const FIELD_MANAGER: &str = "steward";
/// The server names the outcome of an apply in this response header
/// (`created`, `configured` or `unchanged`).
pub const APPLY_HEADER: &str = "x-steward-apply";
/// Page size of lists; larger lists are followed through `continue`.
const PAGE_SIZE: &str = "500";

/// Finds the API `Status` inside an anyhow error, if the error is one.
pub fn api_status(e: &anyhow::Error) -> Option<&Status> {
    e.downcast_ref::<ClientError>().and_then(ClientError::status)
}

/// Whether an error is the connection failing (as opposed to the server
/// refusing one request): then the next request would fail as well.
pub fn is_transport(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ClientError>().is_some_and(ClientError::is_transport)
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

/// One event of a watch stream of Containers.
pub type WatchEvent = steward_client::WatchEvent<Container>;

/// A running watch of Containers, each printed with its type meta.
pub struct WatchStream(steward_client::WatchStream<Container>);

impl WatchStream {
    /// The next event, or `None` when the server ended the watch (its
    /// `timeoutSeconds` passed, or it went away cleanly).
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        Ok(self.0.next().await?.map(|ev| {
            ev.map(|mut c| {
                fill_type_meta(&mut c);
                c
            })
        }))
    }
}

/// A client of one steward server: the Container verbs over the shared
/// client.
#[derive(Clone)]
pub struct Client {
    inner: steward_client::Client,
}

impl Client {
    pub fn new(config: &steward_client::Config) -> Result<Client, ClientError> {
        let inner = steward_client::Client::new(config, concat!("steward/", env!("CARGO_PKG_VERSION")))?;
        Ok(Client { inner })
    }

    pub fn server(&self) -> &str {
        self.inner.server()
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.inner.token()
    }

    /// The TLS configuration of an `https` server (exec's WebSocket).
    pub fn tls_config(&self) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        self.inner.tls_config()
    }

    /// `.../namespaces/{ns}/containers`, or `.../containers` across all
    /// namespaces when `ns` is `None`.
    fn collection_url(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) => self.inner.url(&format!("{API_ROOT}/namespaces/{ns}/containers")),
            None => self.inner.url(&format!("{API_ROOT}/containers")),
        }
    }

    fn object_url(&self, ns: &str, name: &str) -> String {
        format!("{}/{name}", self.collection_url(Some(ns)))
    }

    async fn send(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        self.inner.send(req).await
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, resp: Response) -> Result<T, ClientError> {
        self.inner.json(resp).await
    }

    fn request(&self, method: Method, url: String) -> RequestBuilder {
        self.inner.request(method, url)
    }

    /// Reads one object; `None` when the server says NotFound.
    pub async fn get(&self, ns: &str, name: &str) -> Result<Option<Container>, ClientError> {
        match self.send(self.request(Method::GET, self.object_url(ns, name))).await {
            Ok(resp) => {
                let mut c: Container = self.json(resp).await?;
                fill_type_meta(&mut c);
                Ok(Some(c))
            }
            Err(e) if e.is_not_found() => Ok(None),
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
        let req = self.inner.streaming(Method::GET, self.collection_url(ns)).query(&query);
        let response = self.send(req).await?;
        Ok(WatchStream(self.inner.watch_stream(response)))
    }

    /// Server-side apply of one object as field manager `steward`
    /// (`force`: taking fields other managers set).
    pub async fn apply(&self, obj: &Container, dry_run: bool, force: bool) -> Result<Applied, ClientError> {
        let body = serde_json::to_vec(obj).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut query = vec![("fieldManager", FIELD_MANAGER)];
        if force {
            query.push(("force", "true"));
        }
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
        let req = self.inner.streaming(Method::GET, format!("{}/log", self.object_url(ns, name))).query(query);
        self.send(req).await
    }

    /// `/api/v1/[namespaces/NS/]events`.
    fn events_url(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) => self.inner.url(&format!("/api/v1/namespaces/{ns}/events")),
            None => self.inner.url("/api/v1/events"),
        }
    }

    /// Events, in one namespace or all, matching `field_selector`; and the
    /// list's resourceVersion.
    pub async fn events(&self, ns: Option<&str>, field_selector: Option<&str>) -> Result<(Vec<steward_schema::Event>, String), ClientError> {
        #[derive(Deserialize)]
        struct EventList {
            #[serde(default)]
            metadata: ListMeta,
            #[serde(default)]
            items: Vec<steward_schema::Event>,
        }
        let mut req = self.request(Method::GET, self.events_url(ns));
        if let Some(s) = field_selector {
            req = req.query(&[("fieldSelector", s)]);
        }
        let list: EventList = self.json(self.send(req).await?).await?;
        Ok((list.items, list.metadata.resource_version))
    }

    /// A watch of events from `resource_version`.
    pub async fn watch_events(
        &self,
        ns: Option<&str>,
        field_selector: Option<&str>,
        resource_version: &str,
    ) -> Result<steward_client::WatchStream<steward_schema::Event>, ClientError> {
        let query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("resourceVersion", resource_version)];
        let mut req = self.inner.streaming(Method::GET, self.events_url(ns)).query(&query);
        if let Some(s) = field_selector {
            req = req.query(&[("fieldSelector", s)]);
        }
        Ok(self.inner.watch_stream(self.send(req).await?))
    }

    /// Uploads an OCI archive to the server's runtime; returns image names.
    pub async fn import_image(&self, file: tokio::fs::File) -> Result<Vec<String>, ClientError> {
        let body = reqwest::Body::wrap_stream(file_chunks(file));
        let req = self
            .inner
            .streaming(Method::POST, self.inner.url(&format!("{API_ROOT}/images/import")))
            .header("content-type", "application/x-tar")
            .body(body);
        let resp = self.send(req).await?;
        let v: serde_json::Value = self.json(resp).await?;
        Ok(v["images"].as_array().into_iter().flatten().filter_map(|i| i.as_str().map(String::from)).collect())
    }

    /// Every image of the server's runtime (the `ImageList`'s items).
    pub async fn list_images(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        let resp = self.send(self.request(Method::GET, self.inner.url(&format!("{API_ROOT}/images")))).await?;
        let v: serde_json::Value = self.json(resp).await?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// Removes an Image by object name (`sha256-<hex>`).
    pub async fn delete_image(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        let resp = self.send(self.request(Method::DELETE, self.inner.url(&format!("{API_ROOT}/images/{name}")))).await?;
        self.json(resp).await
    }

    /// Pulls `reference` now; the Image.
    pub async fn pull_image(&self, reference: &str) -> Result<serde_json::Value, ClientError> {
        let req = self.inner.streaming(Method::POST, self.inner.url(&format!("{API_ROOT}/images/pull"))).json(&serde_json::json!({"image": reference}));
        let resp = self.send(req).await?;
        self.json(resp).await
    }

    /// Maps a failure while reading a response body.
    pub fn body_error(&self, e: &reqwest::Error) -> ClientError {
        self.inner.transport_error(e)
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
