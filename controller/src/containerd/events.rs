//! Task events (exit, start, OOM, delete, pause, resume), container deletes and
//! rootfs snapshot removals as a stream of container ids that
//! survives containerd restarts.
//!
//! Contract: the stream yields the id of every container whose task
//! started, exited, was OOM-killed, deleted, paused or resumed, and of every
//! container deleted or whose snapshot was removed. containerd does not replay
//! events, so after every (re)subscription (including the first) the stream
//! also yields the id of EVERY managed container, once the subscription is
//! known to be live: an exit during an outage then still reaches the
//! reconciler, which re-reads actual state for each id anyway. The stream
//! never ends on its own; it stops when dropped.

use std::time::Duration;

use containerd_client::events::{ContainerCreate, ContainerDelete, SnapshotRemove, TaskDelete, TaskExit, TaskOom, TaskPaused, TaskResumed, TaskStart};
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use prost::Message;
use tokio::sync::mpsc;

use super::ContainerdRuntime;

const TOPICS: &[&str] = &[
    "/tasks/exit",
    "/tasks/start",
    "/tasks/oom",
    "/tasks/delete",
    "/tasks/paused",
    "/tasks/resumed",
    "/containers/delete",
    "/snapshot/remove",
];
const CREATE_TOPICS: &[&str] = &["/containers/create"];
/// Our own marker event: seeing it proves the subscription is registered.
const SYNC_TOPIC: &str = "/steward/sync";

pub(crate) fn stream(rt: ContainerdRuntime) -> BoxStream<'static, String> {
    subscription(rt, TOPICS, true)
}

/// Ids of containers deleted (by anyone).
pub(crate) fn deleted_stream(rt: ContainerdRuntime) -> BoxStream<'static, String> {
    subscription(rt, &["/containers/delete"], false)
}

/// Ids of containers created in the namespace (by anyone), across
/// containerd restarts; no resync (creates missed during an outage are
/// left to the garbage collector's sweep).
pub(crate) fn created_stream(rt: ContainerdRuntime) -> BoxStream<'static, String> {
    subscription(rt, CREATE_TOPICS, false)
}

fn subscription(rt: ContainerdRuntime, topics: &'static [&'static str], resync: bool) -> BoxStream<'static, String> {
    let (tx, rx) = mpsc::channel::<String>(1024);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match subscribe_once(&rt, &tx, topics, resync).await {
                // The receiver is gone: nobody wants events any more.
                Ok(()) => return,
                Err(e) => {
                    if tx.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "containerd event stream lost; re-subscribing");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|id| (id, rx)) }).boxed()
}

/// One subscription, until containerd goes away (Err) or the receiver does (Ok).
async fn subscribe_once(
    rt: &ContainerdRuntime,
    tx: &mpsc::Sender<String>,
    topics: &[&str],
    resync: bool,
) -> Result<(), String> {
    let ns = rt.ctx.namespace.clone();
    let mut filters: Vec<String> = topics.iter().map(|t| format!("namespace==\"{ns}\",topic==\"{t}\"")).collect();
    filters.push(format!("namespace==\"{ns}\",topic==\"{SYNC_TOPIC}\""));
    let mut client = EventsClient::new(rt.ctx.channel.clone());
    // Subscribe resolves only when the first event arrives, so it runs in
    // its own task while we publish a marker event to make one arrive.
    let sub = {
        // A stream for as long as containerd lives: no deadline on it.
        let req = rt.ctx.stream_req(SubscribeRequest { filters });
        tokio::spawn(async move { client.subscribe(req).await })
    };
    let publisher = {
        let rt = rt.clone();
        tokio::spawn(async move {
            let mut p = EventsClient::new(rt.ctx.channel.clone());
            // Repeat until the subscription sees one (it may not be registered
            // yet when the first is published).
            for _ in 0..50 {
                let ev = prost_types::Any { type_url: "steward.dev/Sync".into(), value: Vec::new() };
                let _ = p.publish(rt.ctx.req(PublishRequest { topic: SYNC_TOPIC.into(), event: Some(ev) })).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let result = async {
        let mut events = sub.await.map_err(|e| e.to_string())?.map_err(|s| s.to_string())?.into_inner();
        let mut synced = false;
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|s| s.to_string())?;
            if ev.topic == SYNC_TOPIC {
                if !synced {
                    synced = true;
                    publisher.abort();
                    if !resync {
                        tracing::debug!(?topics, "containerd events subscribed");
                        continue;
                    }
                    // Live now: whatever happened before is in actual state.
                    let all = rt.list_ids().await.map_err(|e| e.to_string())?;
                    tracing::info!(containers = all.len(), "containerd events subscribed; resyncing all");
                    for id in all {
                        if tx.send(id).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                continue;
            }
            let Some(any) = ev.event else { continue };
            let id = match ev.topic.as_str() {
                "/tasks/exit" => TaskExit::decode(any.value.as_slice()).map(|e| e.container_id),
                "/tasks/start" => TaskStart::decode(any.value.as_slice()).map(|e| e.container_id),
                "/tasks/oom" => TaskOom::decode(any.value.as_slice()).map(|e| e.container_id),
                "/tasks/delete" => TaskDelete::decode(any.value.as_slice()).map(|e| e.container_id),
                "/tasks/paused" => TaskPaused::decode(any.value.as_slice()).map(|e| e.container_id),
                "/tasks/resumed" => TaskResumed::decode(any.value.as_slice()).map(|e| e.container_id),
                "/containers/create" => ContainerCreate::decode(any.value.as_slice()).map(|e| e.id),
                // Deleted behind steward's back (or by it): its object's
                // reconcile decides whether it must be made again.
                "/containers/delete" => ContainerDelete::decode(any.value.as_slice()).map(|e| e.id),
                // A container's rootfs is keyed by its id; removed behind
                // steward's back, its object's reconcile replaces or
                // re-prepares it. Unpacks' own `extract-*` keys are not ours.
                "/snapshot/remove" => match SnapshotRemove::decode(any.value.as_slice()) {
                    // Only keys that can be a container's (an image's layer
                    // snapshots, `extract-*` or `sha256:*`, are not).
                    Ok(e) if !steward_schema::validate::is_runtime_id(&e.key) || e.key.starts_with("extract-") => continue,
                    r => r.map(|e| e.key),
                },
                _ => continue,
            };
            match id {
                Ok(id) if !id.is_empty() => {
                    tracing::debug!(container = %id, topic = %ev.topic, "task event");
                    if tx.send(id).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(topic = %ev.topic, error = %e, "undecodable containerd event"),
            }
        }
        Err("event stream ended".to_string())
    }
    .await;
    publisher.abort();
    result
}
