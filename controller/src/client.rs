//! A typed HTTP client for one kind, as any third-party controller would
//! write it: list (paged), watch (newline-delimited events), get, status
//! updates and finalizer patches. Implements the runtime's [`Source`] and
//! [`FinalizerApi`].

use std::marker::PhantomData;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use steward_client::{Client, Error};

use crate::runtime::finalizer::FinalizerApi;
use crate::runtime::{EventStream, Resource, Source, SourceError};

const API_ROOT: &str = "/apis/steward.dev/v1alpha1";
/// Watches are renewed this often (the server ends them), which also bounds
/// how long a half-open connection can go unnoticed.
const WATCH_TIMEOUT_SECS: u64 = 290;

pub struct Api<K> {
    client: Client,
    /// `None` = all namespaces (lists and watches).
    namespace: Option<String>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Api { client: self.client.clone(), namespace: self.namespace.clone(), _kind: PhantomData }
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

impl From<Error> for SourceError {
    fn from(e: Error) -> SourceError {
        match e {
            Error::Api(s) if s.code == 410 => SourceError::Gone(s.message.clone()),
            Error::Api(s) => SourceError::Api(format!("{} ({}): {}", s.reason, s.code, s.message)),
            e @ (Error::Unreachable { .. } | Error::Transport { .. }) => SourceError::Transport(e.to_string()),
            Error::Protocol(m) | Error::Config(m) => SourceError::Protocol(m),
        }
    }
}

impl<K: Resource> Api<K> {
    /// All namespaces, through `client`.
    pub fn new(client: Client) -> Self {
        Api { client, namespace: None, _kind: PhantomData }
    }

    /// All namespaces of a plain-HTTP server, without credentials (tests).
    pub fn all(server: &str) -> Self {
        let config = steward_client::Config { server: server.to_string(), ..Default::default() };
        match Client::new(&config, "steward-controller") {
            Ok(c) => Self::new(c),
            Err(e) => panic!("Api::all({server:?}): {e}"),
        }
    }

    /// The client underneath (for other kinds: events).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn collection(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) => self.client.url(&format!("{API_ROOT}/namespaces/{ns}/{}", K::PLURAL)),
            None => self.client.url(&format!("{API_ROOT}/{}", K::PLURAL)),
        }
    }

    fn object_url(&self, ns: &str, name: &str) -> String {
        format!("{}/{name}", self.collection(Some(ns)))
    }

    pub async fn get(&self, ns: &str, name: &str) -> Result<Option<K>, SourceError> {
        match self.client.send(self.client.request(Method::GET, self.object_url(ns, name))).await {
            Ok(r) => Ok(Some(self.client.json(r).await?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `obj`'s status through the status subresource, with its
    /// resourceVersion as precondition.
    pub async fn replace_status(&self, obj: &K) -> Result<K, SourceError>
    where
        K: serde::Serialize,
    {
        let m = obj.meta();
        let url = format!("{}/status", self.object_url(&m.namespace, &m.name));
        self.object_of(self.client.request(Method::PUT, url).json(obj)).await
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
        let req = self.client.request(Method::PATCH, url).header("content-type", "application/merge-patch+json").body(patch.to_string());
        self.object_of(req).await
    }

    /// Sends a request whose answer is one object.
    async fn object_of(&self, req: reqwest::RequestBuilder) -> Result<K, SourceError> {
        let r = self.client.send(req).await?;
        Ok(self.client.json(r).await?)
    }

    /// One consistent list, unpaged: steward serves lists from memory, so
    /// one response is cheap, and a paged list's later pages are newer than
    /// its revision (a watch from it would replay older versions of them).
    async fn list_all(&self) -> Result<(Vec<K>, String), SourceError> {
        let r = self.client.send(self.client.request(Method::GET, self.collection(self.namespace.as_deref()))).await?;
        let list: List<K> = self.client.json(r).await?;
        Ok((list.items, list.metadata.resource_version))
    }

    async fn open_watch(&self, rv: &str) -> Result<EventStream<K>, SourceError> {
        let timeout = WATCH_TIMEOUT_SECS.to_string();
        let req = self
            .client
            .streaming(Method::GET, self.collection(self.namespace.as_deref()))
            .query(&[("watch", "true"), ("resourceVersion", rv), ("allowWatchBookmarks", "true"), ("timeoutSeconds", &timeout)]);
        let stream = self.client.watch_stream::<K>(self.client.send(req).await?);
        let events = futures_util::stream::unfold(Some(stream), |state| async move {
            let mut stream = state?;
            match stream.next().await {
                Ok(Some(ev)) => Some((Ok(ev), Some(stream))),
                Ok(None) => None,
                Err(e) => Some((Err(SourceError::from(e)), None)),
            }
        });
        Ok(events.boxed())
    }
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
