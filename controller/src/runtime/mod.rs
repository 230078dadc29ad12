//! The controller runtime: streams and small state machines.
//!
//! - [`watcher`]: list, then watch from the list's revision; resume after a
//!   disconnect; relist on 410 Gone. An explicit state machine.
//! - [`queue`]: the work queue (dedup per key, earliest deadline wins, a
//!   key re-added while it runs runs again after, never concurrently).
//! - [`controller`]: joins them: watcher → cache + queue → bounded workers
//!   → reconcile → requeue / backoff; extra trigger streams; resync.
//! - [`finalizer`]: turns deletion into `Cleanup` and everything else into
//!   `Apply`, adding the finalizer first.

pub mod backoff;
pub mod controller;
pub mod finalizer;
pub mod queue;
pub mod watcher;

use std::fmt;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::de::DeserializeOwned;
use steward_schema::{Container, ObjectMeta};

/// A kind the runtime can watch.
pub trait Resource: DeserializeOwned + Clone + Send + Sync + 'static {
    /// Plural resource name in URLs (`containers`).
    const PLURAL: &'static str;
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    fn object_ref(&self) -> ObjectRef {
        ObjectRef { namespace: self.meta().namespace.clone(), name: self.meta().name.clone() }
    }
}

impl Resource for Container {
    const PLURAL: &'static str = steward_schema::RESOURCE;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Identifies an object: the work queue's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectRef { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One event of a watch stream, as the API sends it (the client's).
pub use steward_client::WatchEvent;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The revision is no longer retained: list again.
    #[error("watch expired: {0}")]
    Gone(String),
    #[error("API error: {0}")]
    Api(String),
    #[error("cannot reach the API: {0}")]
    Transport(String),
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

/// The events of one watch request.
pub type EventStream<K> = BoxStream<'static, Result<WatchEvent<K>, SourceError>>;

/// Where objects come from: a list and a watch. The HTTP API implements it
/// ([`crate::client::Api`]); tests use an in-memory one.
pub trait Source<K>: Send + Sync + 'static {
    /// Every object, and the revision the list was read at.
    fn list(&self) -> BoxFuture<'_, Result<(Vec<K>, String), SourceError>>;
    /// Changes after `revision`.
    fn watch(&self, revision: &str) -> BoxFuture<'_, Result<EventStream<K>, SourceError>>;
}
