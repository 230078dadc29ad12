//! The containerd adapter: [`ContainerdRuntime`] implements
//! [`crate::actual::Runtime`] over containerd's gRPC API (containerd-client,
//! tonic, a unix socket), for containerd 1.6.
//!
//! Module map:
//! - [`spec`]: the OCI runtime spec, a pure function (table-tested);
//! - [`registry`]: a small registry v2 client; [`archive`]: OCI layout tars;
//!   [`store`]: either one into containerd (content, GC labels, unpack, record);
//! - [`logdriver`]: the `binary://` log driver and log reading;
//! - [`events`]: task events across containerd restarts;
//! - [`supervisor`]: a private containerd, restarted when it dies.
//!
//! Every request carries the namespace as gRPC metadata; work that creates
//! unreferenced content or snapshots runs under a lease (`containerd-lease`
//! header) so containerd's GC cannot collect it half-way.

pub mod archive;
pub mod auth;
pub(crate) mod content;
pub mod errors;
pub mod exec;
pub mod handlers;
pub mod hosts;
mod events;
pub mod image;
pub mod images;
pub mod logdriver;
pub mod registry;
pub mod spec;
pub(crate) mod store;
pub mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime as ContainerRuntimeInfo;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest, GetContainerRequest,
    GetRequest as GetTaskRequest, KillRequest, ListContainersRequest, ResumeTaskRequest, StartRequest,
    UpdateContainerRequest, UpdateTaskRequest,
};
use containerd_client::tonic::metadata::MetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use containerd_client::types::Mount;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use steward_schema::{ContainerSpec, MountType, PullPolicy, Time};
use tracing::Instrument;

use crate::actual::{
    ActualContainer, ImageConfig, LogOwner, PullProgress, Runtime, RuntimeError, Task, TaskStatus,
    LABEL_MANAGED_BY, LABEL_NAME, LABEL_NAMESPACE, LABEL_NETWORK, LABEL_PORTS,
    LABEL_RUNTIME_DEFINITION, LABEL_RUNTIME_HANDLER, LABEL_RUNTIME_WRAPPER, LABEL_STOP_REQUESTED,
    LABEL_UID, MANAGED_BY,
};
use errors::{create_error, from_status};
use logdriver::LogDriverConfig;
use prost::Message;

/// The label recording which image digest a container was created from.
pub const LABEL_IMAGE_DIGEST: &str = "steward.dev/image-digest";
const RUNC_V2: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// Leases expire on their own if steward dies holding one.
const LEASE_TTL: chrono::Duration = chrono::Duration::hours(1);
/// The deadline of one containerd call (unary calls, and each message of a
/// streaming one): a hung containerd fails the reconcile, never holds its
/// slot for ever.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Unpacking one layer (Diff.Apply) reads and writes the whole layer.
const UNPACK_TIMEOUT: Duration = Duration::from_secs(600);
/// The readiness probe: containerd must answer Version within this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach containerd and where container output goes.
#[derive(Clone, Debug)]
pub struct ContainerdConfig {
    pub socket: PathBuf,
    /// The containerd namespace (`steward` by default).
    pub namespace: String,
    pub snapshotter: String,
    /// Logs: `LOG_ROOT/<namespace>/<id>.log` (+ rotation settings).
    pub logs: LogDriverConfig,
    /// The executable the shim runs as log driver (`exe log-driver ARG`):
    /// steward itself by default.
    pub log_driver_exe: PathBuf,
    /// The deadline of every containerd call ([`DEFAULT_CALL_TIMEOUT`]).
    pub call_timeout: Duration,
    /// What a configuration reload may change (registries, runtime
    /// handlers, image garbage collection): its value at start.
    pub live: Live,
    /// The bridge networks containers may be attached to (`None`: only
    /// `none` and `host`).
    pub networks: Option<Arc<crate::network::Networks>>,
}

impl ContainerdConfig {
    pub fn new(socket: impl Into<PathBuf>, log_root: impl Into<PathBuf>) -> Self {
        ContainerdConfig {
            socket: socket.into(),
            namespace: "steward".into(),
            snapshotter: "overlayfs".into(),
            logs: LogDriverConfig::new(log_root),
            log_driver_exe: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("/usr/bin/steward")),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            live: Live::new(
                &steward_config::Config::default(),
                Path::new("/var/lib/steward"),
            ),
            networks: None,
        }
    }
}

/// What every request needs: the channel, the namespace, optionally a lease.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub channel: Channel,
    pub namespace: String,
    pub snapshotter: String,
    pub lease: Option<String>,
    /// The deadline of one call, or of one message of a stream.
    pub timeout: Duration,
}

impl Ctx {
    /// A unary request: namespace, lease, and the call deadline (sent as
    /// `grpc-timeout`, which tonic's channel also enforces client-side, so
    /// a containerd that never answers fails the call).
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = self.stream_req(msg);
        req.set_timeout(self.timeout);
        req
    }

    /// A unary request with a deadline of its own (long operations).
    pub fn req_within<T>(&self, msg: T, timeout: Duration) -> Request<T> {
        let mut req = self.stream_req(msg);
        req.set_timeout(timeout);
        req
    }

    /// A streaming request: no deadline on the whole stream (containerd
    /// would end it at the deadline); callers bound each message with
    /// [`Ctx::next`].
    pub fn stream_req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        // Validated at construction, so these parse.
        if let Ok(v) = MetadataValue::try_from(self.namespace.as_str()) {
            req.metadata_mut().insert("containerd-namespace", v);
        }
        if let Some(lease) = &self.lease {
            if let Ok(v) = MetadataValue::try_from(lease.as_str()) {
                // NOT `containerd.lease`, which containerd silently ignores.
                req.metadata_mut().insert("containerd-lease", v);
            }
        }
        req
    }

    /// Awaits one step of a stream (or a streaming call) within the call
    /// deadline; a step that takes longer is a `DeadlineExceeded` status.
    pub async fn within<F: std::future::Future>(&self, what: &str, f: F) -> Result<F::Output, containerd_client::tonic::Status> {
        tokio::time::timeout(self.timeout, f).await.map_err(|_| {
            containerd_client::tonic::Status::deadline_exceeded(format!(
                "{what}: containerd did not answer within {:?}",
                self.timeout
            ))
        })
    }
}

/// The containerd [`Runtime`]. Cheap to clone.
#[derive(Clone)]
pub struct ContainerdRuntime {
    pub(crate) ctx: Ctx,
    cfg: Arc<ContainerdConfig>,
    registries: Arc<registry::Clients>,
    /// What a configuration reload changes, swapped whole: a pull or a
    /// create uses the value it started with; a container keeps the
    /// handler it was created with.
    live: Arc<arc_swap::ArcSwap<Live>>,
    /// When containers were last made from each image.
    last_used: Arc<images::LastUsed>,
    /// Creates hold it (read) from choosing a wrapper until their container
    /// names it; the wrapper collector holds it (write) while it decides.
    wrappers: Arc<tokio::sync::RwLock<()>>,
}

/// The part of the configuration the container runtime reads live.
#[derive(Clone, Debug, PartialEq)]
pub struct Live {
    pub registry: registry::Settings,
    pub handlers: handlers::Handlers,
    pub image_gc: steward_config::ImageGc,
}

impl Live {
    /// `config`'s live part, resolved against the data dir: registry hosts
    /// under `DATA/certs.d` and Docker's credentials file unless the
    /// configuration names others, wrappers under `DATA/runtimes`.
    pub fn new(config: &steward_config::Config, data_dir: &Path) -> Live {
        Live {
            registry: registry::Settings {
                config_path: config.registry.config_path.clone().unwrap_or_else(|| data_dir.join("certs.d")),
                auth_file: auth::auth_file(config.registry.auth_file.as_deref()),
            },
            handlers: handlers::Handlers::new(&config.runtimes, data_dir.join("runtimes")),
            image_gc: config.images.gc.clone(),
        }
    }
}

/// A random-enough 64-bit value for exec ids (time and a counter, hashed).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default());
    h.finish()
}

fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 76
        && ns.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl ContainerdRuntime {
    /// Connects (and checks the connection with Version).
    pub async fn connect(cfg: ContainerdConfig) -> Result<Self, RuntimeError> {
        if !valid_namespace(&cfg.namespace) {
            return Err(RuntimeError::Unavailable(format!("invalid containerd namespace {:?}", cfg.namespace)));
        }
        let channel = containerd_client::connect(&cfg.socket).await.map_err(|e| {
            RuntimeError::Unavailable(format!("cannot connect to containerd at {}: {e}", cfg.socket.display()))
        })?;
        let rt = ContainerdRuntime {
            ctx: Ctx {
                channel,
                namespace: cfg.namespace.clone(),
                snapshotter: cfg.snapshotter.clone(),
                lease: None,
                timeout: cfg.call_timeout,
            },
            live: Arc::new(arc_swap::ArcSwap::from_pointee(cfg.live.clone())),
            last_used: Arc::new(images::LastUsed::default()),
            wrappers: Arc::new(tokio::sync::RwLock::new(())),
            cfg: Arc::new(cfg),
            registries: Arc::new(registry::Clients::default()),
        };
        rt.version().await?;
        Ok(rt)
    }

    pub fn config(&self) -> &ContainerdConfig {
        &self.cfg
    }

    /// The live part of the configuration, for a reload to swap.
    pub fn live(&self) -> Arc<arc_swap::ArcSwap<Live>> {
        self.live.clone()
    }

    /// containerd's version (also a liveness check).
    pub async fn version(&self) -> Result<String, RuntimeError> {
        self.version_within(self.ctx.timeout).await
    }

    async fn version_within(&self, timeout: Duration) -> Result<String, RuntimeError> {
        let mut v = VersionClient::new(self.ctx.channel.clone());
        let r = v.version(self.ctx.req_within((), timeout)).await.map_err(|s| from_status("version", "", &s))?;
        Ok(r.into_inner().version)
    }

    /// Whether containerd answers now (within a short deadline): `Err`
    /// says why not. What `/readyz` reports.
    pub async fn probe(&self) -> Result<(), String> {
        self.version_within(PROBE_TIMEOUT).await.map(|_| ()).map_err(|e| match e {
            RuntimeError::Unavailable(m) => m,
            other => other.to_string(),
        })
    }

    /// Probes containerd every `every` and publishes the verdict (`None` =
    /// ready, `Some(reason)` = not), until every receiver is gone.
    pub async fn watch_readiness(&self, tx: tokio::sync::watch::Sender<Option<String>>, every: Duration) {
        loop {
            let verdict = self.probe().await.err().map(|e| format!("containerd at {}: {e}", self.cfg.socket.display()));
            if verdict != *tx.borrow() {
                match &verdict {
                    Some(r) => tracing::warn!(reason = %r, "not ready"),
                    None => tracing::info!("containerd answers again; ready"),
                }
            }
            if tx.send(verdict).is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Runs `f` under a fresh lease, deleted afterwards (it expires on its
    /// own if we die first).
    async fn with_lease<T, F, Fut>(&self, f: F) -> Result<T, RuntimeError>
    where
        F: FnOnce(Ctx) -> Fut,
        Fut: std::future::Future<Output = Result<T, RuntimeError>>,
    {
        let id = format!("steward-{}", image::unique_suffix());
        let expire = (chrono::Utc::now() + LEASE_TTL).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut leases = LeasesClient::new(self.ctx.channel.clone());
        leases
            .create(self.ctx.req(CreateLeaseRequest {
                id: id.clone(),
                labels: HashMap::from([("containerd.io/gc.expire".to_string(), expire)]),
            }))
            .await
            .map_err(|s| from_status("create lease", &id, &s))?;
        let ctx = Ctx { lease: Some(id.clone()), ..self.ctx.clone() };
        let result = f(ctx).await;
        if let Err(s) = leases.delete(self.ctx.req(DeleteLeaseRequest { id: id.clone(), sync: false })).await {
            tracing::warn!(lease = %id, error = %s, "could not delete lease (it expires on its own)");
        }
        result
    }

    /// The image as stored locally, if complete (unpacking again if its
    /// snapshots were removed).
    async fn local_image(&self, name: &str, digest: Option<&str>) -> Result<Option<ImageConfig>, RuntimeError> {
        let pull_err = |e: String| RuntimeError::ImagePull(format!("image {name}: {e}"));
        let mut target = image::get_record(&self.ctx, name).await.map_err(|s| from_status("get image", name, &s))?;
        if let (None, Some(d)) = (&target, digest) {
            // Pinned by digest: the same content under any name will do.
            target = image::find_by_target(&self.ctx, d).await.map_err(|s| from_status("list images", name, &s))?;
        }
        let Some(target) = target else {
            return Ok(None);
        };
        let Some((manifest, config)) = image::load_local(&self.ctx, &target).await.map_err(|e| pull_err(e.to_string()))? else {
            return Ok(None);
        };
        let cfg = image::image_config(&target.digest, &config).map_err(pull_err)?;
        if !image::snapshot_exists(&self.ctx, &cfg.top_layer_chain_id).await.map_err(|s| from_status("stat snapshot", name, &s))? {
            self.with_lease(|ctx| async move {
                image::unpack(&ctx, &manifest, &config).await.map_err(|e| pull_err(e.to_string()))
            })
            .await?;
        }
        Ok(Some(cfg))
    }

    async fn pull(&self, image: &str, name: &str, progress: &(dyn Fn(PullProgress) + Send + Sync)) -> Result<ImageConfig, RuntimeError> {
        let reference = registry::Reference::parse(image).map_err(RuntimeError::ImagePull)?;
        let perr = |e: String| RuntimeError::ImagePull(format!("pull {image}: {e}"));
        let live = self.live.load_full();
        let reg = registry::Registry::connect(&self.registries, &live.registry, reference).map_err(perr)?;
        let started = std::time::Instant::now();
        let (top, top_bytes) = reg.fetch_top().await.map_err(perr)?;
        let cfg = self
            .with_lease(|ctx| async move {
                store::store_image(&ctx, &reg, name, &top, top_bytes, progress).await.map_err(|e| store_error(image, e))
            })
            .await?;
        tracing::info!(image, digest = %cfg.digest, elapsed = ?started.elapsed(), "pulled");
        Ok(cfg)
    }

    /// Imports every image of an OCI image-layout tar archive; returns the
    /// names given to them (normalised, e.g. `docker.io/library/busybox:1.36`).
    pub async fn import_archive(&self, path: &Path) -> Result<Vec<String>, RuntimeError> {
        let p = path.to_path_buf();
        let archive = tokio::task::spawn_blocking(move || archive::Archive::open(&p))
            .await
            .map_err(|e| RuntimeError::ImagePull(e.to_string()))?
            .map_err(RuntimeError::ImagePull)?;
        let images = archive.named_images().map_err(RuntimeError::ImagePull)?;
        let archive = &archive;
        let mut names = Vec::new();
        for (annotated, desc) in images {
            let name = registry::Reference::parse(&annotated)
                .map_err(|e| RuntimeError::ImagePull(format!("{}: {e}", path.display())))?
                .full_name();
            let top_bytes = store::BlobSource::fetch_bytes(archive, &desc).await.map_err(RuntimeError::ImagePull)?;
            let n = name.clone();
            self.with_lease(|ctx| async move {
                store::store_image(&ctx, archive, &n, &desc, top_bytes, &|_| {}).await.map_err(|e| store_error(&n, e))
            })
            .await?;
            tracing::info!(image = %name, archive = %path.display(), "imported");
            names.push(name);
        }
        Ok(names)
    }

    /// Ids of all managed containers.
    pub(crate) async fn list_ids(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.list_containers().await?.into_iter().map(|c| c.id).collect())
    }

    async fn list_containers(&self) -> Result<Vec<Container>, RuntimeError> {
        self.list_filtered(format!("labels.\"{LABEL_MANAGED_BY}\"==\"{MANAGED_BY}\"")).await
    }

    /// Containers matching one containerd filter (comma = AND).
    /// Every container of the namespace, whoever made it.
    async fn list_all_containers(&self) -> Result<Vec<Container>, RuntimeError> {
        let mut c = ContainersClient::new(self.ctx.channel.clone());
        let r = c
            .list(self.ctx.req(ListContainersRequest { filters: Vec::new() }))
            .await
            .map_err(|s| from_status("list containers", "", &s))?;
        Ok(r.into_inner().containers)
    }

    async fn list_filtered(&self, filter: String) -> Result<Vec<Container>, RuntimeError> {
        let mut c = ContainersClient::new(self.ctx.channel.clone());
        let r = c
            .list(self.ctx.req(ListContainersRequest { filters: vec![filter] }))
            .await
            .map_err(|s| from_status("list containers", "", &s))?;
        Ok(r.into_inner().containers)
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, RuntimeError> {
        let mut t = TasksClient::new(self.ctx.channel.clone());
        match t.get(self.ctx.req(GetTaskRequest { container_id: id.to_string(), exec_id: String::new() })).await {
            Ok(r) => Ok(r.into_inner().process.map(|p| {
                use containerd_client::types::v1::Status as S;
                let status = match S::try_from(p.status) {
                    Ok(S::Created) => TaskStatus::Created,
                    Ok(S::Running) => TaskStatus::Running,
                    Ok(S::Stopped) => TaskStatus::Stopped,
                    Ok(S::Paused) | Ok(S::Pausing) => TaskStatus::Paused,
                    _ => TaskStatus::Unknown,
                };
                let stopped = status == TaskStatus::Stopped;
                Task {
                    pid: p.pid,
                    status,
                    exit_code: stopped.then_some(p.exit_status),
                    exited_at: p.exited_at.filter(|_| stopped).and_then(|t| {
                        chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32).map(Time)
                    }),
                    // The cgroup lives until the task is deleted, so the
                    // count is there for as long as the exit is.
                    oom_killed: stopped && oom_kills(Path::new(CGROUP_ROOT), &self.ctx.namespace, id) > 0,
                }
            })),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(from_status("get task", id, &s)),
        }
    }

    async fn get_container(&self, id: &str) -> Result<Option<Container>, RuntimeError> {
        let mut c = ContainersClient::new(self.ctx.channel.clone());
        match c.get(self.ctx.req(GetContainerRequest { id: id.to_string() })).await {
            Ok(r) => Ok(r.into_inner().container),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(from_status("get container", id, &s)),
        }
    }

    /// The container's rootfs snapshot, prepared if missing; its mounts.
    async fn ensure_snapshot(&self, ctx: &Ctx, id: &str, parent: &str, labels: &BTreeMap<String, String>) -> Result<Vec<Mount>, RuntimeError> {
        let mut s = SnapshotsClient::new(ctx.channel.clone());
        let req = PrepareSnapshotRequest {
            snapshotter: ctx.snapshotter.clone(),
            key: id.to_string(),
            parent: parent.to_string(),
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        match s.prepare(ctx.req(req)).await {
            Ok(r) => Ok(r.into_inner().mounts),
            Err(st) if st.code() == Code::AlreadyExists => self.snapshot_mounts(id).await,
            Err(st) if st.code() == Code::NotFound => Err(RuntimeError::ImagePull(format!(
                "the image's layers ({parent}) are not unpacked any more; pull the image again"
            ))),
            Err(st) => Err(from_status("prepare snapshot", id, &st)),
        }
    }

    async fn snapshot_mounts(&self, id: &str) -> Result<Vec<Mount>, RuntimeError> {
        let mut s = SnapshotsClient::new(self.ctx.channel.clone());
        let r = s
            .mounts(self.ctx.req(MountsRequest { snapshotter: self.ctx.snapshotter.clone(), key: id.to_string() }))
            .await
            .map_err(|st| from_status("snapshot mounts", id, &st))?;
        Ok(r.into_inner().mounts)
    }

    async fn create_inner(&self, id: &str, spec: &ContainerSpec, image: &ImageConfig, mut labels: BTreeMap<String, String>) -> Result<(), RuntimeError> {
        if let Some(c) = self.get_container(id).await? {
            // Finish a create that crashed between container and snapshot,
            // or prepare a removed rootfs again: from the image the
            // container was made from, never another one under its tag.
            let made_from = c.labels.get(LABEL_IMAGE_DIGEST).map(String::as_str).unwrap_or_default();
            if !made_from.is_empty() && made_from != image.digest {
                return Err(RuntimeError::Create(format!(
                    "container {id} was made from image {made_from}; its rootfs cannot be prepared from {}",
                    image.digest
                )));
            }
            let ctx = self.ctx.clone();
            self.ensure_snapshot(&ctx, id, &image.top_layer_chain_id, &labels).await?;
            return Ok(());
        }
        // A bind source that does not exist would otherwise surface from
        // runc as an opaque mount error, and only at start.
        for (i, m) in spec.mounts.iter().enumerate() {
            if m.mount_type == MountType::Bind {
                if let Some(src) = m.source.as_deref() {
                    if let Err(e) = std::fs::metadata(src) {
                        return Err(RuntimeError::Create(format!(
                            "spec.mounts[{i}].source: bind mount source {src:?} does not exist on the host ({e})"
                        )));
                    }
                }
            }
        }
        labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
        labels.insert(LABEL_IMAGE_DIGEST.into(), image.digest.clone());
        self.last_used.touch(&image.digest);
        // The handler as configured now; the container keeps it for life.
        let _wrapper_in_use = self.wrappers.read().await;
        let handler = handlers::resolve(
            &self.live.load().handlers,
            spec.runtime_class_name.as_deref(),
        )
        .map_err(RuntimeError::Create)?;
        labels.insert(LABEL_RUNTIME_HANDLER.into(), handler.name.clone());
        labels.insert(LABEL_RUNTIME_DEFINITION.into(), handler.definition.clone());
        if let Some(w) = &handler.wrapper {
            labels.insert(LABEL_RUNTIME_WRAPPER.into(), w.clone());
        }
        let runtime_options = RuncOptions {
            binary_name: handler.binary.to_string_lossy().into_owned(),
        };
        let hostname = spec::hostname_for(labels.get(LABEL_NAME).map(String::as_str), id);
        let network = spec
            .network
            .as_deref()
            .unwrap_or(steward_schema::NETWORK_NONE);
        let nets = match network {
            steward_schema::NETWORK_NONE | steward_schema::NETWORK_HOST => None,
            name => match &self.cfg.networks {
                Some(n) if n.is_bridge(name) => Some(n.clone()),
                n => {
                    let known: Vec<String> =
                        n.iter().flat_map(|n| n.defs().keys().cloned()).collect();
                    return Err(RuntimeError::Create(format!(
                        "spec.network: {name:?} is not a network of this steward (none, host{}{})",
                        if known.is_empty() { "" } else { ", " },
                        known.join(", ")
                    )));
                }
            },
        };
        if nets.is_some() {
            labels.insert(LABEL_NETWORK.into(), network.to_string());
            let ports = crate::network::port_mappings(spec);
            labels.insert(
                LABEL_PORTS.into(),
                serde_json::to_string(&ports).unwrap_or_else(|_| "[]".into()),
            );
        }
        let netns = nets.as_ref().map(|n| n.netns_path(id));
        let net_files = nets.as_ref().map(|n| n.files_dir(id));
        let host = spec::HostLimits::current();
        self.with_lease(|ctx| async move {
            let mounts = self
                .ensure_snapshot(&ctx, id, &image.top_layer_chain_id, &labels)
                .await?;
            let user_str = spec::effective_user(spec, image);
            let user = if user_str.split(':').all(|p| p.parse::<u32>().is_ok()) {
                spec::resolve_user(user_str, None, None)
            } else {
                let (passwd, group) = read_user_db(&mounts);
                spec::resolve_user(user_str, passwd.as_deref(), group.as_deref())
            }
            .map_err(|e| RuntimeError::Create(e.0))?;
            let bridge = match (&netns, &net_files) {
                (Some(netns), Some(files)) => Some(spec::BridgeNet { netns, files }),
                _ => None,
            };
            let inputs = spec::SpecInputs {
                id,
                namespace: &ctx.namespace,
                hostname: &hostname,
                spec,
                image,
                user,
                host,
                bridge,
            };
            let oci = spec::build(&inputs).map_err(|e| RuntimeError::Create(e.0))?;
            let spec_bytes =
                serde_json::to_vec(&oci).map_err(|e| RuntimeError::Create(e.to_string()))?;
            let container = Container {
                id: id.to_string(),
                labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                image: String::new(),
                runtime: Some(ContainerRuntimeInfo {
                    name: RUNC_V2.into(),
                    options: Some(prost_types::Any {
                        type_url: RUNC_OPTIONS_TYPE_URL.into(),
                        value: runtime_options.encode_to_vec(),
                    }),
                }),
                spec: Some(prost_types::Any {
                    type_url: SPEC_TYPE_URL.into(),
                    value: spec_bytes,
                }),
                snapshotter: ctx.snapshotter.clone(),
                snapshot_key: id.to_string(),
                ..Default::default()
            };
            let mut c = ContainersClient::new(ctx.channel.clone());
            match c
                .create(ctx.req(CreateContainerRequest {
                    container: Some(container),
                }))
                .await
            {
                Ok(_) => Ok(()),
                Err(s) if s.code() == Code::AlreadyExists => Ok(()),
                Err(s) => Err(from_status("create container", id, &s)),
            }
        })
        .await
    }

    async fn start_inner(&self, id: &str) -> Result<u32, RuntimeError> {
        if let Some(task) = self.get_task(id).await? {
            match task.status {
                TaskStatus::Running | TaskStatus::Paused => return Ok(task.pid),
                TaskStatus::Created => return self.start_task(id).await,
                // A stopped task must be deleted first (the reconciler does).
                _ => {
                    return Err(RuntimeError::Create(format!(
                        "container {id} has a {:?} task; delete it before starting again",
                        task.status
                    )))
                }
            }
        }
        let Some(container) = self.get_container(id).await? else {
            return Err(RuntimeError::NotFound(format!("container {id}")));
        };
        self.attach_network(id, &container.labels).await?;
        let rootfs = self.snapshot_mounts(id).await?;
        let log_dir = self.cfg.logs.root.join(&self.ctx.namespace);
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| RuntimeError::Create(format!("cannot create log directory {}: {e}", log_dir.display())))?;
        // Logs go to the object's directory, one file per run attempt.
        let mut logs = self.cfg.logs.clone();
        logs.dir = object_log_dir(&container.labels);
        // stdout and stderr must both be set (an empty stderr crashes the
        // 1.6 shim); with binary:// one driver gets both streams.
        let uri = logs.binary_uri(&self.cfg.log_driver_exe);
        let mut t = TasksClient::new(self.ctx.channel.clone());
        let req = CreateTaskRequest {
            container_id: id.to_string(),
            rootfs,
            stdout: uri.clone(),
            stderr: uri,
            ..Default::default()
        };
        match t.create(self.ctx.req(req.clone())).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists && self.get_task(id).await?.is_none() => {
                // containerd was killed during a Tasks.Create: restarted, it
                // holds the shim it had started, with no task in it (Get
                // says "container not created"), and refuses every create.
                // Deleting the task shuts that shim down and removes its
                // bundle (the shim's NotFound is what containerd expects).
                tracing::warn!(container = id, "containerd holds a shim without a task (it died during a create); deleting it");
                match t.delete(self.ctx.req(DeleteTaskRequest { container_id: id.to_string() })).await {
                    Ok(_) => {}
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => return Err(from_status("delete empty task", id, &s)),
                }
                t.create(self.ctx.req(req)).await.map_err(|s| create_error(id, &s))?;
            }
            Err(s) if stale_bundle(s.message(), &self.ctx.namespace, id).is_some() && self.get_task(id).await?.is_none() => {
                // containerd was killed while it started the task's shim:
                // restarted, it holds no shim for it, but the shim's bundle
                // directory is still there, and every create fails on its
                // mkdir. Unmount and remove it as containerd's own clean-up
                // of a dead shim would, then create again.
                let bundle = stale_bundle(s.message(), &self.ctx.namespace, id).unwrap_or_default();
                tracing::warn!(container = id, bundle = %bundle.display(), "a task bundle left by a containerd killed during a create; removing it");
                remove_stale_bundle(&bundle).map_err(|e| RuntimeError::Unavailable(format!("remove the stale task bundle {}: {e}", bundle.display())))?;
                t.create(self.ctx.req(req)).await.map_err(|s| create_error(id, &s))?;
            }
            Err(s) => return Err(create_error(id, &s)),
        }
        self.start_task(id).await
    }

    /// Runs `command` in container `id`'s task with the container's own
    /// process settings (user, environment, working dir, capabilities),
    /// no stdio, and waits at most `timeout` for its exit code; a process
    /// still running then is killed. The exec is deleted on every path.
    async fn exec_probe_inner(&self, id: &str, command: Vec<String>, timeout: Duration) -> Result<i32, RuntimeError> {
        use containerd_client::services::v1::{DeleteProcessRequest, ExecProcessRequest, WaitRequest};
        let Some(container) = self.get_container(id).await? else {
            return Err(RuntimeError::NotFound(format!("container {id}")));
        };
        let spec: serde_json::Value = container
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .ok_or_else(|| RuntimeError::Create(format!("container {id} has no readable OCI spec")))?;
        let mut process = spec.get("process").cloned().unwrap_or_default();
        process["args"] = serde_json::json!(command);
        process["terminal"] = serde_json::json!(false);
        let process = serde_json::to_vec(&process).map_err(|e| RuntimeError::Create(e.to_string()))?;
        let exec_id = format!("probe-{:016x}", rand_u64());
        let mut t = TasksClient::new(self.ctx.channel.clone());
        let req = ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.clone(),
            spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.into(), value: process }),
            ..Default::default()
        };
        t.exec(self.ctx.req(req)).await.map_err(|s| from_status("exec probe", id, &s))?;
        let run = async {
            if let Err(s) = t.clone().start(self.ctx.req(StartRequest { container_id: id.to_string(), exec_id: exec_id.clone() })).await {
                return Ok(Err(s));
            }
            let mut w = t.clone();
            let waited = w.wait(self.ctx.req_within(WaitRequest { container_id: id.to_string(), exec_id: exec_id.clone() }, timeout + Duration::from_secs(5)));
            tokio::time::timeout(timeout, waited).await.map(|r| r.map(|r| r.into_inner().exit_status))
        };
        let result = match run.await {
            Ok(Ok(code)) => Ok(code as i32),
            Ok(Err(s)) => Err(RuntimeError::Unavailable(format!("command {command:?}: {}", s.message()))),
            Err(_) => {
                let _ = t.kill(self.ctx.req(KillRequest { container_id: id.to_string(), exec_id: exec_id.clone(), signal: 9, all: false })).await;
                Err(RuntimeError::Unavailable(format!("command {command:?} did not finish within {}s", timeout.as_secs())))
            }
        };
        // Deleting an exec still running fails: wait a moment for the kill.
        for _ in 0..20 {
            match t.delete_process(self.ctx.req(DeleteProcessRequest { container_id: id.to_string(), exec_id: exec_id.clone() })).await {
                Err(s) if s.code() == Code::FailedPrecondition => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => break,
            }
        }
        result
    }

    /// Attaches container `id` to the bridge network its labels name (none:
    /// nothing to do), or finds it attached.
    async fn attach_network(
        &self,
        id: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let Some(network) = labels.get(LABEL_NETWORK) else {
            return Ok(());
        };
        let Some(nets) = &self.cfg.networks else {
            return Err(RuntimeError::Create(format!(
                "container {id} is on network {network:?}, and this steward has no bridge networks"
            )));
        };
        let ports: Vec<crate::network::PortMapping> = match labels.get(LABEL_PORTS) {
            Some(p) => serde_json::from_str(p).map_err(|e| {
                RuntimeError::Create(format!(
                    "container {id}: unreadable {LABEL_PORTS} label: {e}"
                ))
            })?,
            None => Vec::new(),
        };
        let label = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
        let hostname = spec::hostname_for(labels.get(LABEL_NAME).map(String::as_str), id);
        let req = crate::network::AttachRequest {
            network,
            namespace: label(LABEL_NAMESPACE),
            name: label(LABEL_NAME),
            hostname: &hostname,
            ports: &ports,
        };
        match nets.attach(id, &req).await {
            Ok(_) => Ok(()),
            Err(crate::network::NetworkError::PortConflict(m)) => {
                Err(RuntimeError::PortConflict(m))
            }
            Err(e) => Err(RuntimeError::Create(format!(
                "attach to network {network}: {e}"
            ))),
        }
    }

    /// Tears down what is left of the network attachments of containers
    /// that are gone (a crash between ADD and create, a container removed
    /// behind steward's back). The number collected.
    pub async fn collect_networks(&self) -> Result<usize, RuntimeError> {
        let Some(nets) = &self.cfg.networks else {
            return Ok(0);
        };
        // What exists first, then the containers: an attachment made after
        // this listing is not looked at, one made before has its container
        // in the listing below.
        let known = nets.known_ids();
        if known.is_empty() {
            return Ok(0);
        }
        let live: std::collections::BTreeSet<String> = self.list_ids().await?.into_iter().collect();
        nets.collect(known, &live, |id| async move {
            matches!(self.get_container(&id).await, Ok(None))
        })
        .await
        .map_err(|e| RuntimeError::Unavailable(format!("collecting network attachments: {e}")))
    }

    /// Collects leaked network attachments at start, within a second of a
    /// container's deletion (by anyone), and every `every`.
    pub fn spawn_network_gc(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let nets = self.cfg.networks.clone()?;
        let rt = self.clone();
        Some(tokio::spawn(async move {
            nets.start_dns().await;
            let mut deleted = events::deleted_stream(rt.clone());
            let mut next = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    Some(_) = futures_util::StreamExt::next(&mut deleted) => {
                        // A burst of deletes is one pass.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                next = tokio::time::Instant::now() + every;
                match rt.collect_networks().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        collected = n,
                        "network attachments of gone containers collected"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "network garbage collection failed");
                        next = tokio::time::Instant::now() + Duration::from_secs(5);
                    }
                }
            }
        }))
    }

    async fn start_task(&self, id: &str) -> Result<u32, RuntimeError> {
        let mut t = TasksClient::new(self.ctx.channel.clone());
        match t.start(self.ctx.req(StartRequest { container_id: id.to_string(), exec_id: String::new() })).await {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => {
                // Leave no half-started task behind: the next attempt creates anew.
                let _ = t.delete(self.ctx.req(DeleteTaskRequest { container_id: id.to_string() })).await;
                Err(create_error(id, &s))
            }
        }
    }

    async fn remove_inner(&self, id: &str) -> Result<(), RuntimeError> {
        // containerd 1.6 lets a container be deleted under a live task,
        // orphaning it (notes/containerd.md): refuse instead.
        if let Some(task) = self.get_task(id).await? {
            return Err(RuntimeError::Unavailable(format!(
                "container {id} still has a {:?} task (pid {}); stop and delete it first",
                task.status, task.pid
            )));
        }
        // Its network first: a crash after leaves the container, whose
        // removal detaches again (a no-op).
        if let Some(nets) = &self.cfg.networks {
            nets.detach(id).await.map_err(|e| {
                RuntimeError::Unavailable(format!("detach {id} from its network: {e}"))
            })?;
        }
        // The snapshot first, then the container: a crash in between leaves
        // a labelled container, which the next pass finds and removes
        // again; the other order could leave a snapshot without a container,
        // which no pass looks for (the fault suite's kill -9 soak found one).
        let mut s = SnapshotsClient::new(self.ctx.channel.clone());
        match s.remove(self.ctx.req(RemoveSnapshotRequest { snapshotter: self.ctx.snapshotter.clone(), key: id.to_string() })).await {
            Ok(_) => {}
            Err(st) if st.code() == Code::NotFound => {}
            Err(st) => return Err(from_status("remove snapshot", id, &st)),
        }
        let mut c = ContainersClient::new(self.ctx.channel.clone());
        match c.delete(self.ctx.req(DeleteContainerRequest { id: id.to_string() })).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(from_status("delete container", id, &s)),
        }
        // Logs of the old layout (per container id) go with the container;
        // per-object logs stay for `logs --previous` (see Runtime::remove).
        let base = logdriver::log_path(&self.cfg.logs.root, &self.ctx.namespace, id);
        logdriver::remove_logs(&base).map_err(|e| RuntimeError::Unavailable(format!("remove logs of {id}: {e}")))?;
        Ok(())
    }

    async fn update_labels_inner(&self, id: &str, labels: BTreeMap<String, String>) -> Result<(), RuntimeError> {
        if labels.is_empty() {
            return Ok(());
        }
        // With a mask of `labels.<key>`, containerd sets the key from the
        // map, or deletes it when the map lacks it.
        let mask = prost_types::FieldMask { paths: labels.keys().map(|k| format!("labels.{k}")).collect() };
        let container = Container {
            id: id.to_string(),
            labels: labels.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
            ..Default::default()
        };
        let mut c = ContainersClient::new(self.ctx.channel.clone());
        c.update(self.ctx.req(UpdateContainerRequest { container: Some(container), update_mask: Some(mask) }))
            .await
            .map_err(|s| from_status("update container", id, &s))?;
        Ok(())
    }

    async fn resize_inner(&self, id: &str, spec: &ContainerSpec, labels: BTreeMap<String, String>) -> Result<(), RuntimeError> {
        let update = spec::resources_update(spec).map_err(|e| RuntimeError::Create(e.0))?;
        let full = spec::resources(spec).map_err(|e| RuntimeError::Create(e.0))?;
        // The running task first (as `runc update`): if the kernel refuses
        // (a memory limit below what it uses), nothing is recorded.
        if let Some(task) = self.get_task(id).await? {
            if matches!(task.status, TaskStatus::Running | TaskStatus::Paused | TaskStatus::Created) {
                let value = serde_json::to_vec(&update).map_err(|e| RuntimeError::Create(e.to_string()))?;
                let mut t = TasksClient::new(self.ctx.channel.clone());
                let req = UpdateTaskRequest {
                    container_id: id.to_string(),
                    resources: Some(prost_types::Any { type_url: RESOURCES_TYPE_URL.into(), value }),
                    annotations: HashMap::new(),
                };
                t.update(self.ctx.req(req)).await.map_err(|s| match s.code() {
                    // The kernel or runc refused the limits (e.g. memory
                    // below what the container uses): the user's to fix.
                    Code::Unknown | Code::InvalidArgument | Code::FailedPrecondition => {
                        RuntimeError::Create(format!("cannot apply the new limits to container {id}: {}", s.message()))
                    }
                    _ => from_status("update task resources", id, &s),
                })?;
            }
        }
        // Then the stored OCI spec, so a restart keeps the new limits.
        let Some(mut container) = self.get_container(id).await? else {
            return Err(RuntimeError::NotFound(format!("container {id}")));
        };
        let mut oci: serde_json::Value = container
            .spec
            .as_ref()
            .and_then(|a| serde_json::from_slice(&a.value).ok())
            .ok_or_else(|| RuntimeError::Unavailable(format!("container {id} has no readable OCI spec")))?;
        oci["linux"]["resources"] = full;
        let value = serde_json::to_vec(&oci).map_err(|e| RuntimeError::Create(e.to_string()))?;
        container.spec = Some(prost_types::Any { type_url: SPEC_TYPE_URL.into(), value });
        let mut paths = vec!["spec".to_string()];
        for (k, v) in labels {
            paths.push(format!("labels.{k}"));
            container.labels.insert(k, v);
        }
        let mask = prost_types::FieldMask { paths };
        let mut c = ContainersClient::new(self.ctx.channel.clone());
        c.update(self.ctx.req(UpdateContainerRequest { container: Some(container), update_mask: Some(mask) }))
            .await
            .map_err(|s| from_status("update container", id, &s))?;
        Ok(())
    }

    /// The current log file of container `id` (rotated files are `.1`,
    /// `.2`, ...): its object's newest run attempt, or the old layout's
    /// per-id file.
    pub async fn log_path(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let labels = self.get_container(id).await?.map(|c| c.labels).unwrap_or_default();
        if let Some(dir) = object_log_dir(&labels) {
            let dir = self.cfg.logs.root.join(&self.ctx.namespace).join(dir);
            if let (Some(current), _) = steward_logfile::current_and_previous(&dir) {
                return Ok(current);
            }
        }
        Ok(logdriver::log_path(&self.cfg.logs.root, &self.ctx.namespace, id))
    }

    fn logs_root(&self) -> PathBuf {
        self.cfg.logs.root.join(&self.ctx.namespace)
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How many times the kernel OOM-killed a process in the memory cgroup of
/// container `id` (`cgroupsPath` = `/<namespace>/<id>`, see spec.rs): the
/// `oom_kill` line of `memory.oom_control` (cgroup v1) or `memory.events`
/// (v2). 0 when the cgroup is gone or unreadable.
pub fn oom_kills(root: &Path, namespace: &str, id: &str) -> u64 {
    let v1 = root.join("memory").join(namespace).join(id).join("memory.oom_control");
    let v2 = root.join(namespace).join(id).join("memory.events");
    [v1, v2]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()))
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or(0)
}

/// `/etc/passwd` and `/etc/group` of a prepared rootfs, read straight from
/// the overlay layers (upper first, then lower dirs top to bottom) so no
/// mount is needed. Whiteouts are ignored: good enough for user lookup.
fn read_user_db(mounts: &[Mount]) -> (Option<String>, Option<String>) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for m in mounts {
        if m.r#type == "bind" {
            dirs.push(PathBuf::from(&m.source));
        } else if m.r#type == "overlay" {
            for o in &m.options {
                if let Some(u) = o.strip_prefix("upperdir=") {
                    dirs.insert(0, PathBuf::from(u));
                } else if let Some(l) = o.strip_prefix("lowerdir=") {
                    dirs.extend(l.split(':').map(PathBuf::from));
                }
            }
        }
    }
    let find = |rel: &str| dirs.iter().find_map(|d| std::fs::read_to_string(d.join(rel)).ok());
    (find("etc/passwd"), find("etc/group"))
}

/// The log directory name of the object a container belongs to (its
/// labels), if they name one.
fn object_log_dir(labels: &HashMap<String, String>) -> Option<String> {
    let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
    steward_logfile::object_dir_name(get(LABEL_NAMESPACE), get(LABEL_NAME), get(LABEL_UID))
}

/// A failed image store as an `ErrImagePull` message.
/// `containerd.runc.v1.Options` (runtime/v2/runc/options/oci.proto), of
/// which steward sets only the runc binary the shim runs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuncOptions {
    #[prost(string, tag = "6")]
    pub binary_name: String,
}

pub const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// The bundle directory named by a Tasks.Create failure of the form
/// `failed to start shim: mkdir <state>/io.containerd.runtime.v2.task/<ns>/<id>: file exists`,
/// when it is exactly this container's.
fn stale_bundle(msg: &str, namespace: &str, id: &str) -> Option<PathBuf> {
    let rest = msg.split("mkdir ").nth(1)?;
    let (path, tail) = rest.split_once(": ")?;
    if !tail.starts_with("file exists") {
        return None;
    }
    let p = PathBuf::from(path);
    let suffix = Path::new("io.containerd.runtime.v2.task").join(namespace).join(id);
    (p.is_absolute() && p.ends_with(&suffix) && !path.contains("/../")).then_some(p)
}

/// What containerd's `Bundle.Delete` does: the rootfs mount (if any) goes,
/// then the work directory the bundle links to, then the bundle.
fn remove_stale_bundle(bundle: &Path) -> std::io::Result<()> {
    let rootfs = bundle.join("rootfs");
    if let Ok(c) = std::ffi::CString::new(rootfs.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2(2) on a NUL-terminated path we own; failure (not
        // mounted, gone) is fine.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
    if let Ok(work) = std::fs::read_link(bundle.join("work")) {
        if work.is_absolute() && work.ends_with(bundle.iter().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<PathBuf>()) {
            let _ = std::fs::remove_dir_all(&work);
        }
    }
    match std::fs::remove_dir_all(bundle) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn store_error(image: &str, e: store::StoreError) -> RuntimeError {
    match e {
        store::StoreError::Image(image::ImageError::Status(s)) if s.code() == Code::Unavailable => {
            from_status("pull", image, &s)
        }
        other => RuntimeError::ImagePull(format!("pull {image}: {other}")),
    }
}

impl ContainerdRuntime {
    /// Containers with their tasks (Tasks.Get each: Tasks.List ignores
    /// filters and leaves `container_id` empty on 1.6).
    /// Whether the container's rootfs snapshot is gone.
    async fn rootfs_missing(&self, c: &Container) -> Result<bool, RuntimeError> {
        if c.snapshot_key.is_empty() {
            return Ok(false);
        }
        let mut s = SnapshotsClient::new(self.ctx.channel.clone());
        let req = StatSnapshotRequest { snapshotter: c.snapshotter.clone(), key: c.snapshot_key.clone() };
        match s.stat(self.ctx.req(req)).await {
            Ok(_) => Ok(false),
            Err(st) if st.code() == Code::NotFound => Ok(true),
            Err(st) => Err(from_status("stat snapshot", &c.id, &st)),
        }
    }

    /// The containers with their tasks; with `rootfs`, also whether each
    /// one's snapshot is still there (one more call each: only the
    /// reconciler's per-object read pays it).
    async fn with_tasks(
        &self,
        containers: Vec<Container>,
        rootfs: bool,
    ) -> Result<Vec<ActualContainer>, RuntimeError> {
        let mut out = Vec::new();
        for c in containers {
            let task = self.get_task(&c.id).await?;
            let rootfs_missing = rootfs && self.rootfs_missing(&c).await?;
            let labels: BTreeMap<String, String> = c.labels.into_iter().collect();
            let image_digest = labels
                .get(LABEL_IMAGE_DIGEST)
                .cloned()
                .filter(|d| !d.is_empty());
            let created_at = c.created_at.and_then(|t| {
                chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32).map(Time)
            });
            // Only containers made for a bridge network have an attachment
            // record to read (every find reads actual state).
            let ip = match (&self.cfg.networks, labels.contains_key(LABEL_NETWORK)) {
                (Some(n), true) => n.attachment(&c.id).map(|a| a.ip.to_string()),
                _ => None,
            };
            out.push(ActualContainer {
                id: c.id,
                labels,
                task,
                image_digest,
                created_at,
                rootfs_missing,
                ip,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

impl Runtime for ContainerdRuntime {
    fn handler_definition(&self, name: &str) -> Option<Option<String>> {
        Some(self.live.load().handlers.definition_digest(name))
    }

    fn default_handler(&self) -> Option<String> {
        Some(self.live.load().handlers.default.clone())
    }

    fn collect_images<'a>(&'a self, keep: &'a std::collections::BTreeSet<String>) -> BoxFuture<'a, Result<Vec<String>, RuntimeError>> {
        Box::pin(async move {
            let gc = self.live.load().image_gc.clone();
            self.collect_images_above(&gc, keep).await
        })
    }

    fn collect_runtime_wrappers(&self) -> BoxFuture<'_, Result<usize, RuntimeError>> {
        Box::pin(async move {
            let _no_create_in_between = self.wrappers.write().await;
            let dir = self.live.load().handlers.dir.clone();
            let candidates = handlers::wrappers(&dir);
            if candidates.is_empty() {
                return Ok(0);
            }
            // Every container of the namespace, steward's or not: any may
            // name a wrapper in its runtime options.
            // By file name (the content's digest), however the data dir
            // was spelled when a container was made.
            let in_use: std::collections::HashSet<std::ffi::OsString> = self
                .list_all_containers()
                .await?
                .iter()
                .filter_map(|c| c.runtime.as_ref()?.options.as_ref())
                .filter(|o| o.type_url == RUNC_OPTIONS_TYPE_URL)
                .filter_map(|o| RuncOptions::decode(o.value.as_slice()).ok())
                .filter_map(|o| PathBuf::from(o.binary_name).file_name().map(|f| f.to_os_string()))
                .collect();
            let mut removed = 0;
            for w in candidates {
                let old = std::fs::metadata(&w).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a > handlers::WRAPPER_MIN_AGE);
                let named = w.file_name().is_some_and(|f| in_use.contains(f));
                if old && !named && std::fs::remove_file(&w).is_ok() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ActualContainer>, RuntimeError>> {
        Box::pin(async move { self.with_tasks(self.list_containers().await?, false).await })
    }

    fn find<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<ActualContainer>, RuntimeError>> {
        Box::pin(
            async move {
                let uid_q = uid.replace('\\', "\\\\").replace('"', "\\\"");
                let filter = format!(
                    "labels.\"{LABEL_MANAGED_BY}\"==\"{MANAGED_BY}\",labels.\"{LABEL_UID}\"==\"{uid_q}\""
                );
                self.with_tasks(self.list_filtered(filter).await?, true).await
            }
            .instrument(tracing::debug_span!("find", uid)),
        )
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<ActualContainer>, RuntimeError>> {
        Box::pin(async move {
            let Some(c) = self.get_container(id).await? else { return Ok(None) };
            if c.labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
                return Ok(None);
            }
            Ok(self.with_tasks(vec![c], false).await?.pop())
        })
    }

    fn ensure_image<'a>(
        &'a self,
        image: &'a str,
        policy: PullPolicy,
        progress: Box<dyn Fn(PullProgress) + Send + Sync + 'a>,
    ) -> BoxFuture<'a, Result<ImageConfig, RuntimeError>> {
        Box::pin(
            async move {
                let reference = registry::Reference::parse(image).map_err(RuntimeError::ImagePull)?;
                let name = reference.full_name();
                if policy != PullPolicy::Always {
                    if let Some(cfg) = self.local_image(&name, reference.digest.as_deref()).await? {
                        return Ok(cfg);
                    }
                    if policy == PullPolicy::Never {
                        return Err(RuntimeError::ImageNeverPull(format!(
                            "image {image} is not present and imagePullPolicy is Never"
                        )));
                    }
                }
                self.pull(image, &name, &*progress).await
            }
            .instrument(tracing::info_span!("ensure_image", image)),
        )
    }

    fn create<'a>(
        &'a self,
        id: &'a str,
        spec: &'a ContainerSpec,
        image: &'a ImageConfig,
        labels: BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.create_inner(id, spec, image, labels).instrument(tracing::info_span!("create", container = id)))
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u32, RuntimeError>> {
        Box::pin(self.start_inner(id).instrument(tracing::info_span!("start", container = id)))
    }

    fn kill<'a>(&'a self, id: &'a str, signal: u32, all: bool) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(
            async move {
                let mut t = TasksClient::new(self.ctx.channel.clone());
                t.kill(self.ctx.req(KillRequest { container_id: id.to_string(), exec_id: String::new(), signal, all }))
                    .await
                    .map_err(|s| from_status("kill", id, &s))?;
                // A frozen (paused) task does not die of SIGKILL until it is
                // thawed (cgroup v1's freezer): thaw it, as Docker does.
                if signal == 9 && self.get_task(id).await?.is_some_and(|t| t.status == TaskStatus::Paused) {
                    match t.resume(self.ctx.req(ResumeTaskRequest { container_id: id.to_string() })).await {
                        Ok(_) => tracing::info!(container = id, "resumed the paused task so that SIGKILL takes effect"),
                        // Gone or no longer paused meanwhile: the signal is
                        // delivered; a still frozen task is killed (and
                        // thawed) again on the next pass.
                        Err(s) => tracing::debug!(container = id, error = %s.message(), "resume after SIGKILL"),
                    }
                }
                Ok(())
            }
            .instrument(tracing::info_span!("kill", container = id, signal)),
        )
    }

    fn mark_stopping<'a>(&'a self, id: &'a str, at: Time) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(
            async move {
                let value = at.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                self.update_labels_inner(id, BTreeMap::from([(LABEL_STOP_REQUESTED.to_string(), value)])).await
            }
            .instrument(tracing::info_span!("mark_stopping", container = id)),
        )
    }

    fn update_labels<'a>(&'a self, id: &'a str, labels: BTreeMap<String, String>) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.update_labels_inner(id, labels).instrument(tracing::info_span!("update_labels", container = id)))
    }

    fn resize<'a>(
        &'a self,
        id: &'a str,
        spec: &'a ContainerSpec,
        labels: BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.resize_inner(id, spec, labels).instrument(tracing::info_span!("resize", container = id)))
    }

    fn created(&self) -> BoxStream<'static, String> {
        events::created_stream(self.clone())
    }

    fn remove_logs<'a>(&'a self, namespace: &'a str, name: &'a str, uid: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let Some(dir) = steward_logfile::object_dir_name(namespace, name, uid) else { return Ok(()) };
            let path = self.logs_root().join(dir);
            steward_logfile::remove_object_logs(&path)
                .map_err(|e| RuntimeError::Unavailable(format!("remove logs {}: {e}", path.display())))
        })
    }

    fn collect_legacy_logs<'a>(&'a self, keep: &'a std::collections::HashSet<String>) -> BoxFuture<'a, Result<usize, RuntimeError>> {
        Box::pin(async move {
            let root = self.logs_root();
            let keep = keep.clone();
            let ns = self.ctx.namespace.clone();
            let logs_root = self.cfg.logs.root.clone();
            tokio::task::spawn_blocking(move || {
                let mut n = 0;
                for id in steward_logfile::legacy_log_ids(&root).into_iter().filter(|id| !keep.contains(id)) {
                    logdriver::remove_logs(&logdriver::log_path(&logs_root, &ns, &id))
                        .map_err(|e| RuntimeError::Unavailable(format!("remove logs of {id}: {e}")))?;
                    tracing::info!(container = %id, "collected the logs of a container that is gone");
                    n += 1;
                }
                Ok(n)
            })
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("collecting old logs: {e}")))?
        })
    }

    fn log_owners(&self) -> BoxFuture<'_, Result<Vec<LogOwner>, RuntimeError>> {
        Box::pin(async move {
            let root = self.logs_root();
            let dirs = tokio::task::spawn_blocking(move || steward_logfile::object_dirs(&root))
                .await
                .map_err(|e| RuntimeError::Unavailable(format!("listing log directories: {e}")))?;
            Ok(dirs.into_iter().map(|(_, (namespace, name, uid))| LogOwner { namespace, name, uid }).collect())
        })
    }

    fn delete_task<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(
            async move {
                let mut t = TasksClient::new(self.ctx.channel.clone());
                match t.delete(self.ctx.req(DeleteTaskRequest { container_id: id.to_string() })).await {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == Code::NotFound => Ok(()),
                    Err(s) => Err(from_status("delete task", id, &s)),
                }
            }
            .instrument(tracing::info_span!("delete_task", container = id)),
        )
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.remove_inner(id).instrument(tracing::info_span!("remove", container = id)))
    }

    fn detach<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(
            async move {
                // Never under a live process: only a stopped (or no) task.
                if let Some(t) = self.get_task(id).await? {
                    if !matches!(t.status, TaskStatus::Stopped) {
                        return Err(RuntimeError::Unavailable(format!("container {id} has a {:?} task; not detaching", t.status)));
                    }
                }
                match &self.cfg.networks {
                    Some(nets) => nets.detach(id).await.map_err(|e| RuntimeError::Unavailable(format!("detach {id} from its network: {e}"))),
                    None => Ok(()),
                }
            }
            .instrument(tracing::info_span!("detach", container = id)),
        )
    }

    fn exec_probe<'a>(&'a self, id: &'a str, command: Vec<String>, timeout: Duration) -> BoxFuture<'a, Result<i32, RuntimeError>> {
        Box::pin(self.exec_probe_inner(id, command, timeout).instrument(tracing::debug_span!("exec_probe", container = id)))
    }

    fn events(&self) -> BoxStream<'static, String> {
        let events = events::stream(self.clone());
        let Some(nets) = &self.cfg.networks else {
            return events;
        };
        // Containers refused a host port look again when it is freed.
        let woken = futures_util::stream::unfold(nets.woken(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(id) => return Some((id, rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        futures_util::StreamExt::boxed(futures_util::stream::select(events, woken))
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_bundles_are_recognised_only_for_this_container() {
        let msg = "failed to start shim: mkdir /d/containerd/state/io.containerd.runtime.v2.task/steward/default.c26.30ca80031267: file exists";
        assert_eq!(
            stale_bundle(msg, "steward", "default.c26.30ca80031267"),
            Some(PathBuf::from("/d/containerd/state/io.containerd.runtime.v2.task/steward/default.c26.30ca80031267"))
        );
        assert_eq!(stale_bundle(msg, "steward", "default.other.1"), None);
        assert_eq!(stale_bundle(msg, "other-ns", "default.c26.30ca80031267"), None);
        assert_eq!(stale_bundle(&msg.replace("file exists", "permission denied"), "steward", "default.c26.30ca80031267"), None);
        assert_eq!(stale_bundle("failed to start shim: mkdir x/io.containerd.runtime.v2.task/steward/a: file exists", "steward", "a"), None);
        assert_eq!(stale_bundle("exec: not found", "steward", "a"), None);
    }

    #[test]
    fn a_stale_bundle_and_its_work_dir_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let bundle = d.path().join("state/io.containerd.runtime.v2.task/steward/c1");
        let work = d.path().join("root/io.containerd.runtime.v2.task/steward/c1");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(bundle.join("config.json"), "{}").unwrap();
        std::os::unix::fs::symlink(&work, bundle.join("work")).unwrap();
        remove_stale_bundle(&bundle).unwrap();
        assert!(!bundle.exists() && !work.exists());
        // Gone already: fine.
        remove_stale_bundle(&bundle).unwrap();
    }
}
