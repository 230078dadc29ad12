//! Events about Containers (`Pulling`, `Pulled`, `Created`, `Started`,
//! `Killing`, `BackOff`, `Failed`, `Unhealthy`), recorded as client-go's
//! event recorder records them: off the reconcile path (a queue and a
//! task of their own, dropped when the queue is full, never blocking a
//! reconcile), and a repeat of the same event raising its `count` and
//! `lastTimestamp` instead of writing another.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::json;
use steward_client::Client;
use steward_schema::Container;
use tokio::sync::mpsc;

/// The component events say they come from.
pub const COMPONENT: &str = "steward";
/// Events waiting to be written; more are dropped (and logged).
const QUEUE: usize = 1024;
/// Repeats remembered for counting; beyond this the memory starts over.
const REMEMBERED: usize = 4096;

#[derive(Debug)]
struct Record {
    namespace: String,
    name: String,
    uid: String,
    resource_version: String,
    type_: &'static str,
    reason: &'static str,
    message: String,
}

/// Sends events; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Record>>,
}

impl Recorder {
    /// A recorder writing through `client`, with its task started.
    pub fn new(client: Client) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(client, rx));
        Recorder { tx: Some(tx) }
    }

    /// A recorder that records nothing.
    pub fn disabled() -> Recorder {
        Recorder { tx: None }
    }

    /// A `Normal` event about `obj`.
    pub fn normal(&self, obj: &Container, reason: &'static str, message: impl Into<String>) {
        self.send(obj, steward_schema::event::EVENT_NORMAL, reason, message.into());
    }

    /// A `Warning` event about `obj`.
    pub fn warning(&self, obj: &Container, reason: &'static str, message: impl Into<String>) {
        self.send(obj, steward_schema::event::EVENT_WARNING, reason, message.into());
    }

    fn send(&self, obj: &Container, type_: &'static str, reason: &'static str, message: String) {
        let Some(tx) = &self.tx else { return };
        let m = &obj.metadata;
        let r = Record {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            uid: m.uid.clone(),
            resource_version: m.resource_version.clone(),
            type_,
            reason,
            message,
        };
        if let Err(mpsc::error::TrySendError::Full(r)) = tx.try_send(r) {
            tracing::warn!(key = %format!("{}/{}", r.namespace, r.name), reason = r.reason, "event queue full; event dropped");
        }
    }
}

/// What makes two events the same one (client-go's aggregation key).
type Same = (String, &'static str, &'static str, String);

async fn run(client: Client, mut rx: mpsc::Receiver<Record>) {
    // Same event → (its name, its count).
    let mut seen: HashMap<Same, (String, i64)> = HashMap::new();
    while let Some(r) = rx.recv().await {
        let key = format!("{}/{}", r.namespace, r.name);
        let same: Same = (r.uid.clone(), r.type_, r.reason, r.message.clone());
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let collection = client.url(&format!("/api/v1/namespaces/{}/events", r.namespace));
        if let Some((name, count)) = seen.get(&same).cloned() {
            let patch = json!({"count": count + 1, "lastTimestamp": now});
            let req = client
                .request(Method::PATCH, format!("{collection}/{name}"))
                .header("content-type", "application/merge-patch+json")
                .body(patch.to_string());
            match client.send(req).await {
                Ok(_) => {
                    seen.insert(same, (name, count + 1));
                    continue;
                }
                // Expired meanwhile: write it anew.
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::debug!(%key, error = %e, "event not updated");
                    continue;
                }
            }
        }
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let name = format!("{}.{:x}", r.name, nanos);
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": r.namespace},
            "involvedObject": {
                "apiVersion": steward_schema::API_VERSION, "kind": steward_schema::KIND,
                "namespace": r.namespace, "name": r.name, "uid": r.uid, "resourceVersion": r.resource_version,
            },
            "reason": r.reason,
            "message": r.message,
            "type": r.type_,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        match client.send(client.request(Method::POST, collection).json(&event)).await {
            Ok(_) => {
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
                seen.insert(same, (name, 1));
            }
            Err(e) => tracing::debug!(%key, reason = r.reason, error = %e, "event not written"),
        }
    }
}
