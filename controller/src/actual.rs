//! Actual state, as the Container reconciler sees it: what a container
//! runtime (containerd) holds for a managed object, and the operations the
//! reconciler may perform on it. The containerd adapter implements
//! [`Runtime`]; reconciler tests use an in-memory fake.
//!
//! Every runtime object steward creates carries the labels below and an id
//! derived from the object's uid and spec hash, so anything a crash leaves
//! behind can be found by label and finished or removed.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use steward_schema::{ContainerSpec, Time};

pub const LABEL_MANAGED_BY: &str = "steward.dev/managed-by";
pub const LABEL_UID: &str = "steward.dev/uid";
pub const LABEL_NAMESPACE: &str = "steward.dev/namespace";
pub const LABEL_NAME: &str = "steward.dev/name";
pub const LABEL_SPEC_HASH: &str = "steward.dev/spec-hash";
/// The version of the spec hash in [`LABEL_SPEC_HASH`]; absent on
/// containers created before hashes were versioned (the legacy hash).
pub const LABEL_SPEC_HASH_VERSION: &str = "steward.dev/spec-hash-version";
/// The signal (number) and grace period (seconds) this container is
/// stopped with: its own, recorded at create, whatever the spec says later
/// (also by the garbage collector once its object is gone). Read them with
/// `container::plan::recorded_stop`.
pub const LABEL_STOP_SIGNAL: &str = "steward.dev/stop-signal";
pub const LABEL_STOP_GRACE: &str = "steward.dev/termination-grace-period-seconds";
/// The resource limits applied to the container (changed in place).
pub const LABEL_LIMITS: &str = "steward.dev/limits";
/// Set (RFC 3339) when steward sent the stop signal, so the grace period
/// survives a steward restart.
pub const LABEL_STOP_REQUESTED: &str = "steward.dev/stop-requested-at";
/// The runtime handler a container was created with, and the digest of
/// its definition then (see `containerd::handlers`).
pub const LABEL_RUNTIME_HANDLER: &str = "steward.dev/runtime-handler";
pub const LABEL_RUNTIME_DEFINITION: &str = "steward.dev/runtime-definition";
/// `sha256:<hex>` of the wrapper script, when the handler has one.
pub const LABEL_RUNTIME_WRAPPER: &str = "steward.dev/runtime-wrapper";
/// The network a container was attached to at create (bridge networks
/// only), and its published ports (`portmap`'s JSON).
pub const LABEL_NETWORK: &str = "steward.dev/network";
pub const LABEL_PORTS: &str = "steward.dev/ports";
pub const MANAGED_BY: &str = "steward";
/// The uid of the store whose object the container belongs to: several
/// stewards may share one containerd namespace, and each collects only its
/// own garbage (see `container::gc`).
pub const LABEL_STORE: &str = "steward.dev/store";

/// The identity of the store a steward serves (the `steward.dev/store`
/// label of every container it creates; garbage collection takes only
/// containers with it). Never empty: containers labelled with an empty
/// store would be every such steward's to collect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreUid(String);

#[derive(Debug, thiserror::Error)]
#[error("store uid: must not be empty (it labels every container this steward creates, and garbage collection takes only containers with it)")]
pub struct EmptyStoreUid;

impl StoreUid {
    pub fn new(uid: impl Into<String>) -> Result<Self, EmptyStoreUid> {
        let uid = uid.into();
        let uid = uid.trim();
        if uid.is_empty() {
            return Err(EmptyStoreUid);
        }
        Ok(StoreUid(uid.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StoreUid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The state of a task (the running process of a container).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskStatus {
    Created,
    Running,
    Paused,
    Stopped,
    Unknown,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub pid: u32,
    pub status: TaskStatus,
    /// Set once stopped.
    pub exit_code: Option<u32>,
    pub exited_at: Option<Time>,
    /// Stopped, and the kernel OOM-killed a process of it (its cgroup's
    /// oom_kill count) during this run.
    pub oom_killed: bool,
}

/// One managed runtime container.
#[derive(Clone, Debug, PartialEq)]
pub struct ActualContainer {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub task: Option<Task>,
    /// The image digest it was created from.
    pub image_digest: Option<String>,
    /// When containerd created it (unknown for fakes).
    pub created_at: Option<Time>,
    /// Its rootfs snapshot is gone (removed behind steward's back): a
    /// running task runs on a deleted upper dir, and no task can start.
    /// Only [`Runtime::find`] looks; elsewhere false.
    pub rootfs_missing: bool,
    /// Its address on its bridge network, while attached.
    pub ip: Option<String>,
}

impl ActualContainer {
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map(String::as_str).unwrap_or_default()
    }
}

/// What the image says about how to run it (entrypoint, cmd, ...).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageConfig {
    pub digest: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// The snapshot (chain id) a container's rootfs is prepared from.
    pub top_layer_chain_id: String,
}

/// An object whose logs are kept (its run attempts' files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOwner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Progress of an image pull, for `ImagePulling` status messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub done: u64,
    pub total: u64,
}

/// Why a runtime operation failed, as far as the reconciler cares.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not there and could not be fetched (`ErrImagePull`).
    #[error("{0}")]
    ImagePull(String),
    /// The image is not present and the pull policy is `Never`.
    #[error("{0}")]
    ImageNeverPull(String),
    /// Creating or starting the container failed (`CreateContainerError`):
    /// bad command, missing mount source, limits runc refuses, ...
    #[error("{0}")]
    Create(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A published host port is taken (`PortConflict`): waits, and is
    /// woken when the port is free.
    #[error("{0}")]
    PortConflict(String),
    /// containerd is unreachable or failed; retry with backoff.
    #[error("container runtime: {0}")]
    Unavailable(String),
}

/// What the reconciler asks of a container runtime. Every operation is
/// idempotent: repeating it after a crash finishes or no-ops.
pub trait Runtime: Send + Sync + 'static {
    /// Every container labelled as managed by steward.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ActualContainer>, RuntimeError>>;

    /// The managed containers of one object (label `steward.dev/uid`),
    /// with their tasks: what one reconcile pass reads.
    fn find<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<ActualContainer>, RuntimeError>>;

    /// One managed container by id, with its task (`None` if there is no
    /// such container, or it is not steward's).
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ActualContainer>, RuntimeError>> {
        Box::pin(async move { Ok(self.list().await?.into_iter().find(|c| c.id == id)) })
    }

    /// The definition digest of runtime handler `name` in the configuration
    /// now: `Some(None)` when it is not configured any more, `None` when
    /// this runtime cannot tell.
    fn handler_definition(&self, _name: &str) -> Option<Option<String>> {
        None
    }

    /// Releases container `id`'s network attachment (it has finished for
    /// good); a later start attaches it again.
    fn detach<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }

    /// Runs `command` in container `id`'s running task (an exec probe):
    /// its exit code, or an error once `timeout` has passed (the process
    /// is killed then).
    fn exec_probe<'a>(&'a self, _id: &'a str, _command: Vec<String>, _timeout: std::time::Duration) -> BoxFuture<'a, Result<i32, RuntimeError>> {
        Box::pin(async { Err(RuntimeError::Unavailable("this runtime runs no exec probes".into())) })
    }

    /// The configured default runtime handler, if this runtime knows one.
    fn default_handler(&self) -> Option<String> {
        None
    }

    /// Removes runtime wrapper scripts no containerd container of the
    /// namespace refers to (and older than a few minutes, so a create
    /// about to refer to one keeps it); how many went.
    fn collect_runtime_wrappers(&self) -> BoxFuture<'_, Result<usize, RuntimeError>> {
        Box::pin(async { Ok(0) })
    }

    /// Image garbage collection (the configured thresholds): removes
    /// unused images, least recently used first, when the image filesystem
    /// is fuller than the high threshold; never one a container uses or
    /// whose digest or name is in `keep`. The names removed.
    fn collect_images<'a>(&'a self, _keep: &'a std::collections::BTreeSet<String>) -> BoxFuture<'a, Result<Vec<String>, RuntimeError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Makes the image present (pulling per policy), reporting progress.
    fn ensure_image<'a>(
        &'a self,
        image: &'a str,
        policy: steward_schema::PullPolicy,
        progress: Box<dyn Fn(PullProgress) + Send + Sync + 'a>,
    ) -> BoxFuture<'a, Result<ImageConfig, RuntimeError>>;

    /// Creates container `id` (rootfs snapshot and OCI spec) with `labels`;
    /// its output goes to `log_path`. Does nothing if it exists.
    fn create<'a>(
        &'a self,
        id: &'a str,
        spec: &'a ContainerSpec,
        image: &'a ImageConfig,
        labels: BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Creates and starts the task of container `id`; returns its pid.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u32, RuntimeError>>;

    /// Sends `signal` to the task (all its processes when `all`).
    fn kill<'a>(&'a self, id: &'a str, signal: u32, all: bool) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Records when a stop was requested (label on the container).
    fn mark_stopping<'a>(&'a self, id: &'a str, at: Time) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Sets labels on container `id`; an empty value removes the label.
    /// Other labels are left alone.
    fn update_labels<'a>(&'a self, id: &'a str, labels: BTreeMap<String, String>) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Applies `spec`'s resource limits to container `id` in place: to its
    /// task if one runs (as `runc update`), and to its stored OCI spec (so
    /// the next start uses them); then records them in `labels`.
    fn resize<'a>(
        &'a self,
        id: &'a str,
        spec: &'a ContainerSpec,
        labels: BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Deletes a stopped task.
    fn delete_task<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Deletes the container and its snapshot (the task must be gone). Its
    /// logs stay (`logs --previous` after a spec change): they go with the
    /// object ([`Runtime::remove_logs`]).
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Removes every log of one object (all its run attempts, across the
    /// containers that replaced each other): when the object is deleted.
    fn remove_logs<'a>(&'a self, namespace: &'a str, name: &'a str, uid: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Removes the files of the old per-container-id log layout whose
    /// container is not in `keep` (left by a crash, or by an older
    /// steward); returns how many containers' logs went.
    fn collect_legacy_logs<'a>(&'a self, keep: &'a std::collections::HashSet<String>) -> BoxFuture<'a, Result<usize, RuntimeError>> {
        let _ = keep;
        Box::pin(async { Ok(0) })
    }

    /// The objects that have logs kept here.
    fn log_owners(&self) -> BoxFuture<'_, Result<Vec<LogOwner>, RuntimeError>>;

    /// Ids of containers whose task changed state (exit, start, OOM),
    /// re-subscribed across runtime restarts. Events are hints: the
    /// reconciler re-reads actual state.
    fn events(&self) -> BoxStream<'static, String>;

    /// Ids of containers just created in the namespace, by anyone (so a
    /// stray one is collected within seconds, not at the next sweep).
    /// Best effort: creates during an outage are left to the sweep.
    fn created(&self) -> BoxStream<'static, String> {
        futures_util::stream::pending().boxed()
    }
}

#[cfg(test)]
mod store_uid_tests {
    use super::*;

    #[test]
    fn an_empty_store_uid_is_refused() {
        for bad in ["", "   ", "\n"] {
            let e = StoreUid::new(bad).unwrap_err();
            assert!(e.to_string().starts_with("store uid: must not be empty"), "{e}");
        }
        assert_eq!(StoreUid::new(" 0123-abcd ").unwrap().as_str(), "0123-abcd");
    }
}
