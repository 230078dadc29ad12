//! A typed HTTP client for one kind, as any third-party controller would
//! write it: list (paged), watch (newline-delimited events), get, status
//! updates and finalizer patches. Implements the runtime's [`Source`] and
//! [`FinalizerApi`].

use std::marker::PhantomData;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use steward_schema::Status;

use crate::runtime::finalizer::FinalizerApi;
use crate::runtime::{EventStream, Resource, Source, SourceError, WatchEvent};

const API_ROOT: &str = "/apis/steward.dev/v1alpha1";
/// Watches are renewed this often (the server ends them), which also bounds
/// how long a half-open connection can go unnoticed.
const WATCH_TIMEOUT_SECS: u64 = 290;

pub struct Api<K> {
    http: reqwest::Client,
    server: String,
    /// `None` = all namespaces (lists and watches).
    namespace: Option<String>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Api { http: self.http.clone(), server: self.server.clone(), namespace: self.namespace.clone(), _kind: PhantomData }
    }
}

#[derive(Deserialize)]
struct List<K> {
    metadata: ListMeta,
    items: Vec<K>,
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
}

fn transport(e: reqwest::Error) -> SourceError {
    SourceError::Transport(e.to_string())
}

async fn status_error(r: reqwest::Response) -> SourceError {
    let code = r.status();
    let text = r.text().await.unwrap_or_default();
    match serde_json::from_str::<Status>(&text) {
        Ok(s) if code == 410 => SourceError::Gone(s.message),
        Ok(s) => SourceError::Api(format!("{} ({}): {}", s.reason, s.code, s.message)),
        Err(_) => SourceError::Protocol(format!("HTTP {code}: {text}")),
    }
}

impl<K: Resource> Api<K> {
    /// All namespaces, without credentials.
    pub fn all(server: &str) -> Self {
        Self::all_with_token(server, None)
    }

    /// All namespaces, sending `token` as the bearer token.
    pub fn all_with_token(server: &str, token: Option<&str>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(v) = token.and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // The server closes connections idle for 10 s (its header read
            // timeout); drop ours first so no request races that close.
            .pool_idle_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()
            .unwrap_or_default();
        Api { http, server: server.trim_end_matches('/').to_string(), namespace: None, _kind: PhantomData }
    }

    fn collection(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) => format!("{}{API_ROOT}/namespaces/{ns}/{}", self.server, K::PLURAL),
            None => format!("{}{API_ROOT}/{}", self.server, K::PLURAL),
        }
    }

    fn object_url(&self, ns: &str, name: &str) -> String {
        format!("{}/{name}", self.collection(Some(ns)))
    }

    pub async fn get(&self, ns: &str, name: &str) -> Result<Option<K>, SourceError> {
        let r = self.http.get(self.object_url(ns, name)).send().await.map_err(transport)?;
        if r.status() == 404 {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(status_error(r).await);
        }
        r.json().await.map(Some).map_err(|e| SourceError::Protocol(e.to_string()))
    }

    /// Writes `obj`'s status through the status subresource, with its
    /// resourceVersion as precondition.
    pub async fn replace_status(&self, obj: &K) -> Result<K, SourceError>
    where
        K: serde::Serialize,
    {
        let m = obj.meta();
        let url = format!("{}/status", self.object_url(&m.namespace, &m.name));
        self.object_of(self.http.put(url).json(obj)).await
    }

    /// Merge-patches the status subresource (no precondition: for progress
    /// messages and waiting reasons, the newest word on the state).
    pub async fn patch_status(&self, ns: &str, name: &str, patch: &Value) -> Result<K, SourceError> {
        self.patch_merge_at(format!("{}/status", self.object_url(ns, name)), patch).await
    }

    pub async fn merge_patch(&self, ns: &str, name: &str, patch: &Value) -> Result<K, SourceError> {
        self.patch_merge_at(self.object_url(ns, name), patch).await
    }

    async fn patch_merge_at(&self, url: String, patch: &Value) -> Result<K, SourceError> {
        let req = self.http.patch(url).header("content-type", "application/merge-patch+json").body(patch.to_string());
        self.object_of(req).await
    }

    /// Sends a request whose answer is one object.
    async fn object_of(&self, req: reqwest::RequestBuilder) -> Result<K, SourceError> {
        let r = req.send().await.map_err(transport)?;
        if !r.status().is_success() {
            return Err(status_error(r).await);
        }
        r.json().await.map_err(|e| SourceError::Protocol(e.to_string()))
    }

    /// One consistent list, unpaged: steward serves lists from memory, so
    /// one response is cheap, and a paged list's later pages are newer than
    /// its revision (a watch from it would replay older versions of them).
    async fn list_all(&self) -> Result<(Vec<K>, String), SourceError> {
        let r = self.http.get(self.collection(self.namespace.as_deref())).send().await.map_err(transport)?;
        if !r.status().is_success() {
            return Err(status_error(r).await);
        }
        let list: List<K> = r.json().await.map_err(|e| SourceError::Protocol(e.to_string()))?;
        Ok((list.items, list.metadata.resource_version))
    }

    async fn open_watch(&self, rv: &str) -> Result<EventStream<K>, SourceError> {
        let timeout = WATCH_TIMEOUT_SECS.to_string();
        let r = self
            .http
            .get(self.collection(self.namespace.as_deref()))
            .query(&[("watch", "true"), ("resourceVersion", rv), ("allowWatchBookmarks", "true"), ("timeoutSeconds", &timeout)])
            .send()
            .await
            .map_err(transport)?;
        if !r.status().is_success() {
            return Err(status_error(r).await);
        }
        let bytes = r.bytes_stream();
        let lines = futures_util::stream::unfold((bytes, BytesMut::new(), false), |(mut bytes, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line = buf.split_to(i + 1);
                    return Some((parse_event::<K>(line.chunk()), (bytes, buf, false)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(transport(e)), (bytes, buf, true))),
                    None => return None,
                }
            }
        });
        Ok(lines.boxed())
    }
}

fn parse_event<K: Resource>(line: &[u8]) -> Result<WatchEvent<K>, SourceError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "type")]
        type_: String,
        object: Value,
    }
    let bad = |e: String| SourceError::Protocol(format!("bad watch event: {e}"));
    let raw: Raw = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
    let obj = |v: Value| serde_json::from_value::<K>(v).map_err(|e| bad(e.to_string()));
    Ok(match raw.type_.as_str() {
        "ADDED" => WatchEvent::Added(obj(raw.object)?),
        "MODIFIED" => WatchEvent::Modified(obj(raw.object)?),
        "DELETED" => WatchEvent::Deleted(obj(raw.object)?),
        "BOOKMARK" => WatchEvent::Bookmark(
            raw.object.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default().to_string(),
        ),
        "ERROR" => WatchEvent::Error(serde_json::from_value(raw.object).map_err(|e| bad(e.to_string()))?),
        other => return Err(bad(format!("unknown type {other:?}"))),
    })
}

impl<K: Resource> Source<K> for Api<K> {
    fn list(&self) -> BoxFuture<'_, Result<(Vec<K>, String), SourceError>> {
        Box::pin(self.list_all())
    }
    fn watch(&self, revision: &str) -> BoxFuture<'_, Result<EventStream<K>, SourceError>> {
        let rv = revision.to_string();
        Box::pin(async move { self.open_watch(&rv).await })
    }
}

impl<K: Resource> FinalizerApi<K> for Api<K> {
    fn set_finalizers<'a>(&'a self, obj: &'a K, finalizers: Vec<String>) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            let m = obj.meta();
            let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": m.resource_version}});
            self.merge_patch(&m.namespace, &m.name, &patch).await.map(|_| ())
        })
    }
}
