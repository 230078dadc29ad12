//! `steward serve`: the API server on a durable store and the controllers,
//! in one process. Without `--containerd-socket` it starts and supervises
//! its own containerd under `DATA/containerd`. Stopping steward never stops
//! containers: containerd's shims keep them, and the next start adopts them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use futures_util::future::BoxFuture;
use steward_controller::actual::StoreUid;
use steward_controller::container::plan::fnv_hex;
use steward_controller::containerd::supervisor::Supervisor;
use steward_controller::containerd::{ContainerdConfig, ContainerdRuntime};
use steward_controller::manager::{self, ManagerConfig};
use tokio::net::TcpListener;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Where steward keeps its state (the SQLite store, later logs and containerd).
    #[arg(long, env = "STEWARD_DATA_DIR", default_value = "/var/lib/steward")]
    pub data_dir: PathBuf,
    /// Address the HTTP API listens on (port 0 picks a free one).
    #[arg(long, env = "STEWARD_LISTEN", default_value = "127.0.0.1:7420")]
    pub listen: SocketAddr,
    /// Run without controllers (API and store only).
    #[arg(long)]
    pub no_controller: bool,
    /// Use this containerd instead of starting one under DATA/containerd.
    #[arg(long, env = "STEWARD_CONTAINERD_SOCKET")]
    pub containerd_socket: Option<PathBuf>,
    /// The containerd namespace steward's containers live in.
    #[arg(long, default_value = "steward")]
    pub containerd_namespace: String,
    /// The configuration file (YAML; see the README). Default:
    /// /etc/steward/config.yaml when it exists, else built-in defaults.
    /// Flags override what it says.
    #[arg(long, env = "STEWARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Reconciles running at once (config: controller.concurrency, 4).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The API's bearer token; created (random, mode 0600) if missing.
    /// Default: DATA/token.
    #[arg(long, env = "STEWARD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve without the token: anyone who can reach the port then has
    /// root on this machine (loopback only, unless --insecure-allow-remote).
    #[arg(long)]
    pub no_auth: bool,
    /// Serve plain HTTP instead of HTTPS (loopback only, unless
    /// --insecure-allow-remote). kubectl sends no token over plain HTTP.
    #[arg(long, conflicts_with_all = ["tls_cert_file", "tls_private_key_file", "tls_san"])]
    pub plain_http: bool,
    /// Allow --plain-http or --no-auth on a non-loopback address, where
    /// the token (or nothing) guards root on this machine in clear.
    #[arg(long)]
    pub insecure_allow_remote: bool,
    /// The serving certificate (PEM, with its chain) to present instead of
    /// one from steward's CA under DATA/pki; read again when it changes.
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// More names and addresses the serving certificate steward makes is
    /// valid for (besides localhost, 127.0.0.1, ::1 and the --listen
    /// address); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// How long the serving certificates steward issues are valid; each is
    /// renewed, without a restart, when a third of that is left.
    #[arg(long, hide = true, default_value = "8760h", value_parser = steward_config::parse_duration)]
    pub tls_cert_validity: Duration,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How long the event log keeps history for watches, e.g. 10m, 1h
    /// (config: store.compactionWindow, 10m).
    #[arg(long, value_parser = steward_config::parse_duration)]
    pub event_retention: Option<Duration>,
    /// Most events the event log keeps.
    #[arg(long, default_value_t = 100_000)]
    pub event_retention_count: i64,
    /// How often the event log is compacted (events past --event-retention
    /// or --event-retention-count are removed).
    #[arg(long, default_value = "10s", value_parser = steward_config::parse_duration)]
    pub compact_interval: Duration,
    /// Events a watcher may fall behind before it is ended with 410 Expired.
    #[arg(long, default_value_t = 10_000)]
    pub watch_buffer: usize,
    /// Requests (other than watches and followed logs) served at once;
    /// more get 429 with Retry-After.
    #[arg(long, default_value_t = 400)]
    pub max_requests_inflight: usize,
    /// Watches and followed logs open at once; more get 429.
    #[arg(long, default_value_t = 1000)]
    pub max_long_running_inflight: usize,
    /// How often runtime containers are checked for garbage (default 5m;
    /// also at start, and at once for every container created).
    #[arg(long, value_parser = steward_config::parse_duration)]
    pub gc_interval: Option<Duration>,
}

/// How often containerd is probed for `/readyz`.
const READINESS_PROBE_EVERY: Duration = Duration::from_secs(2);
/// How often leaked network attachments are looked for without an event.
const NETWORK_GC_EVERY: Duration = Duration::from_secs(60);

/// The configuration `serve` runs with: `--config`, else the default file
/// when it exists, else the built-in defaults; flags then override it.
pub struct LoadedConfig {
    /// The file's configuration with the flags' overrides.
    pub config: steward_config::Config,
    pub path: Option<PathBuf>,
    /// The digest of the file's own configuration (what `steward config
    /// check` prints for it), before any flag overrides it.
    pub file_digest: String,
    /// The flags that overrode the file.
    pub overrides: Vec<&'static str>,
}

pub fn load_config(args: &ServeArgs) -> anyhow::Result<LoadedConfig> {
    let path = match &args.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(steward_config::DEFAULT_PATH)).filter(|p| p.exists()),
    };
    let mut config = match &path {
        Some(p) => steward_config::Config::load(p).map_err(|e| anyhow::anyhow!("--config: {e}"))?,
        None => steward_config::Config::default(),
    };
    let file_digest = config.digest();
    if let Some(n) = args.concurrency.filter(|n| *n == 0 || *n > 256) {
        anyhow::bail!("--concurrency {n}: must be between 1 and 256");
    }
    if args.event_retention.is_some_and(|d| d.is_zero()) {
        anyhow::bail!("--event-retention must be longer than 0");
    }
    let overrides = apply_flags(&mut config, args.concurrency, args.event_retention);
    check_log_level(&config).map_err(|e| anyhow::anyhow!("--config: {e}"))?;
    Ok(LoadedConfig { config, path, file_digest, overrides })
}

/// The flags that override the file (checked already), applied to
/// `config`, at start and at every reload; the ones that did.
pub fn apply_flags(config: &mut steward_config::Config, concurrency: Option<usize>, event_retention: Option<Duration>) -> Vec<&'static str> {
    let mut overrides = Vec::new();
    if let Some(n) = concurrency {
        config.controller.concurrency = n;
        overrides.push("--concurrency");
    }
    if let Some(d) = event_retention {
        config.store.compaction_window = d;
        overrides.push("--event-retention");
    }
    overrides
}

/// What the config crate cannot check itself: `log.level` must be a
/// filter `tracing` understands.
pub fn check_log_level(c: &steward_config::Config) -> anyhow::Result<()> {
    tracing_subscriber::EnvFilter::try_new(&c.log.level).map_err(|e| anyhow::anyhow!("log.level: {:?}: {e}", c.log.level))?;
    Ok(())
}

pub async fn run(mut args: ServeArgs, loaded: LoadedConfig) -> anyhow::Result<()> {
    let hup = crate::live::catch_sighup();
    let LoadedConfig { config, path, file_digest, overrides } = loaded;
    match &path {
        Some(p) => tracing::info!(file = %p.display(), digest = %file_digest, ?overrides, "configuration loaded"),
        None => tracing::info!(digest = %file_digest, ?overrides, "no configuration file; built-in defaults"),
    }
    if !args.listen.ip().is_loopback() && !args.insecure_allow_remote && (args.plain_http || args.no_auth) {
        let what = if args.plain_http { "--plain-http would send its token in clear" } else { "--no-auth would let anyone run it" };
        anyhow::bail!(
            "--listen {}: steward's API runs containers as root, and {what}; listen on loopback, or pass \
             --insecure-allow-remote to accept that",
            args.listen
        );
    }
    if args.tls_cert_validity < Duration::from_secs(30) {
        anyhow::bail!("--tls-cert-validity must be at least 30s");
    }
    if args.compact_interval.is_zero() {
        anyhow::bail!("--compact-interval must be longer than 0");
    }
    owner_only_dir(&args.data_dir)?;
    // One spelling of the data dir for everything recorded under it
    // (wrapper paths in containerd, log dirs): absolute, symlinks resolved.
    args.data_dir = std::fs::canonicalize(&args.data_dir).with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    // One server per data dir: two would each believe their in-memory view.
    let lock_path = args.data_dir.join("steward.lock");
    let lock = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&lock_path)
    }
    .with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!("--data-dir {}: another steward is already serving from it", args.data_dir.display())
    })?;
    // Temporary files of whole-file writes a crash cut short (the lock
    // says no other steward is writing them).
    for dir in [args.data_dir.clone(), args.data_dir.join("pki")] {
        remove_stale_temporaries(&dir);
    }

    let mut cfg = steward_store::Config::new(args.data_dir.join("steward.db"));
    // The store's identity lives in the store; a store made by a steward
    // that kept it in DATA/store-uid takes that one over, once.
    cfg.adopt_uid = legacy_store_uid(&args.data_dir)?;
    cfg.retention.max_age = config.store.compaction_window;
    cfg.retention.max_events = args.event_retention_count;
    cfg.compact_interval = args.compact_interval;
    cfg.watch_buffer = args.watch_buffer;
    let store = steward_store::Store::open(cfg)
        .await
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let store_uid = StoreUid::new(store.uid()).context("the store's identity")?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let addr = listener.local_addr()?;
    let token = if args.no_auth {
        tracing::warn!("--no-auth: any local user who can reach {} can run root containers", args.listen);
        None
    } else {
        let token_file = args.token_file.clone().unwrap_or_else(|| args.data_dir.join("token"));
        Some(load_or_create_token(&token_file)?)
    };
    let tls = if args.plain_http {
        tracing::warn!("--plain-http: the API and its token travel in clear");
        None
    } else {
        Some(start_tls(&args, addr)?)
    };
    let url = server_url(addr, tls.is_some());
    // One file for kubectl, client libraries and steward's own CLI.
    let ca_pem = tls.as_ref().and_then(|t| t.ca_pem.clone());
    let kubeconfig = steward_client::Kubeconfig::single(&url, ca_pem.as_deref().map(str::as_bytes), token.as_deref());
    let kubeconfig_path = args.data_dir.join("kubeconfig");
    // Written when it changed (a new port or token); a full disk with an
    // unchanged kubeconfig does not stop a start.
    let text = kubeconfig.to_yaml();
    if std::fs::read(&kubeconfig_path).ok().as_deref() != Some(text.as_bytes()) {
        if let Err(e) = steward_apiserver::pki::write_atomic(&kubeconfig_path, text.as_bytes(), 0o600) {
            tracing::warn!(error = %format!("{:#}", anyhow::Error::from(e)), "kubeconfig not written; clients keep the old one");
        }
    }
    let mut api = steward_apiserver::Config {
        tls: tls.as_ref().map(|t| t.server.clone()),
        max_body_bytes: args.max_body_bytes,
        token: token.clone(),
        max_requests_inflight: args.max_requests_inflight,
        max_long_running_inflight: args.max_long_running_inflight,
        ..Default::default()
    };

    // The runtime first: the API serves logs and image imports through it.
    let mut supervisor = None;
    let mut runtime = None;
    if !args.no_controller {
        // Networks first: a bridge another steward holds refuses the start
        // before anything is started.
        let nets = open_networks(&config, &args.data_dir, path.as_deref())?;
        let socket = match &args.containerd_socket {
            Some(s) => s.clone(),
            None => {
                let sup = Supervisor::start(&args.data_dir).await.context("starting containerd")?;
                let s = sup.socket().to_path_buf();
                supervisor = Some(sup);
                s
            }
        };
        let log_root = args.data_dir.join("logs");
        let mut cfg = ContainerdConfig::new(&socket, &log_root);
        cfg.namespace = args.containerd_namespace.clone();
        cfg.live = steward_controller::containerd::Live::new(&config, &args.data_dir);
        tracing::info!(
            hosts = %cfg.live.registry.config_path.display(),
            credentials = %cfg.live.registry.auth_file.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()),
            "registry configuration"
        );
        for d in nets.defs().values() {
            tracing::info!(network = %d.name, bridge = %d.bridge, subnet = %d.subnet_string(), "network");
        }
        let names: Vec<String> = nets.defs().keys().cloned().collect();
        api.networks = Some(Arc::new(move || names.clone()));
        cfg.networks = Some(Arc::new(nets));
        steward_controller::network::Networks::record_runtime(&args.data_dir, &socket, &args.containerd_namespace)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let rt = ContainerdRuntime::connect(cfg).await.context("connecting to containerd")?;
        rt.spawn_network_gc(NETWORK_GC_EVERY);
        // /readyz answers 503 while containerd does not answer.
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(None);
        api.not_ready = Some(ready_rx);
        tokio::spawn({
            let rt = rt.clone();
            async move { rt.watch_readiness(ready_tx, READINESS_PROBE_EVERY).await }
        });
        api.logs_dir = Some(log_root.join(&args.containerd_namespace));
        api.images = Some(Arc::new(Importer(rt.clone())));
        let exec = steward_controller::containerd::exec::ContainerdExec::new(
            rt.clone(),
            args.data_dir.join("exec"),
            crate::serve_exec::MAX_EXEC_SESSIONS,
        );
        api.executor = Some(Arc::new(crate::serve_exec::ContainerdExecutor(exec)));
        // A Container naming a handler the configuration (as reloaded)
        // does not define is refused at apply.
        let live = rt.live();
        api.runtime_handlers = Some(Arc::new(move || live.load().handlers.handlers.keys().cloned().collect()));
        // Uploads a crash left half-written are of no use to anyone.
        let tmp = args.data_dir.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        api.upload_dir = Some(tmp);
        runtime = Some(Arc::new(rt));
    }

    // The configuration in force, reloaded by SIGHUP and POST /-/reload.
    let live = Arc::new(crate::live::LiveConfig::new(&args, path.clone(), &config, runtime.as_ref().map(|rt| rt.live())));
    api.reloader = Some(live.clone());
    crate::live::reload_on_sighup(live, hup);

    tracing::info!(%url, kubeconfig = %kubeconfig_path.display(), data_dir = %args.data_dir.display(), controllers = runtime.is_some(), "steward serving");
    // The one line on stdout: scripts and tests wait for it.
    println!("listening on {url}");

    // On a signal the controllers stop first (finishing reconciles in
    // flight, which talk to the API), then the API server.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (controllers_done_tx, controllers_done) = tokio::sync::oneshot::channel::<()>();
    if let Some(rt) = runtime {
        // The controllers are a client like any other, over the same TLS.
        let client = steward_client::Client::new(
            &steward_client::Config {
                server: url.clone(),
                token: token.clone(),
                ca_pem: ca_pem.map(String::into_bytes),
                ca_source: "DATA/pki/ca.crt".into(),
                // A certificate of the operator's need not name the
                // loopback address the controllers use; theirs is a
                // connection within this machine.
                insecure_skip_tls_verify: tls.as_ref().is_some_and(|t| t.ca_pem.is_none()),
                namespace: None,
            },
            concat!("steward-controller/", env!("CARGO_PKG_VERSION")),
        )?;
        let mut cfg = ManagerConfig::new(store_uid);
        cfg.controller.concurrency = config.controller.concurrency;
        cfg.controller.resync = Some(config.controller.resync_period);
        if let Some(every) = args.gc_interval {
            cfg.gc_interval = every;
        }
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            manager::run(client, rt, cfg, stop).await;
            let _ = controllers_done_tx.send(());
        });
    } else {
        drop(controllers_done_tx);
    }
    let api_stop = {
        let stop = stopped(stop_rx);
        async move {
            stop.await;
            let _ = controllers_done.await;
        }
    };
    steward_apiserver::serve(listener, store, api, api_stop).await?;
    if let Some(sup) = supervisor {
        sup.shutdown().await;
    }
    drop(lock);
    tracing::info!("steward stopped; containers keep running");
    Ok(())
}

/// The API's TLS: the server configuration, and the CA that signed its
/// certificate when steward made it (for the kubeconfig).
struct Tls {
    server: Arc<rustls::ServerConfig>,
    ca_pem: Option<String>,
}

/// The URL clients on this machine use for a server bound to `addr`: an
/// unspecified address is reached on loopback.
fn server_url(addr: SocketAddr, https: bool) -> String {
    let scheme = if https { "https" } else { "http" };
    let ip = match addr.ip() {
        std::net::IpAddr::V4(a) if a.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(a) if a.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// Sets up HTTPS: the operator's certificate files (watched for changes),
/// or a serving certificate from steward's CA (renewed before it expires).
fn start_tls(args: &ServeArgs, addr: SocketAddr) -> anyhow::Result<Tls> {
    use steward_apiserver::pki;
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_private_key_file) {
        let load = |cert: &std::path::Path, key: &std::path::Path| -> anyhow::Result<rustls::sign::CertifiedKey> {
            let c = steward_client::read_file(cert).with_context(|| format!("--tls-cert-file {}", cert.display()))?;
            let k = steward_client::read_file(key).with_context(|| format!("--tls-private-key-file {}", key.display()))?;
            Ok(pki::certified_key(&c, &k, cert, key)?)
        };
        let slot = pki::CertSlot::new(load(cert, key)?);
        let server = pki::server_config(slot.clone())?;
        // Reloaded when either file changes (a renewal by the operator's
        // tooling); a bad pair is logged and the old one kept.
        let (cert, key) = (cert.clone(), key.clone());
        tokio::spawn(async move {
            let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut seen = (stamp(&cert), stamp(&key));
            loop {
                tokio::time::sleep(CERT_FILE_CHECK_EVERY).await;
                let now = (stamp(&cert), stamp(&key));
                if now == seen {
                    continue;
                }
                seen = now;
                match load(&cert, &key) {
                    Ok(ck) => {
                        slot.replace(ck);
                        tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "serving certificate not reloaded; keeping the old one"),
                }
            }
        });
        return Ok(Tls { server, ca_pem: None });
    }
    let dir = args.data_dir.join("pki");
    let ca = pki::Ca::load_or_create(&dir)?;
    for san in &args.tls_san {
        pki::check_name(san).map_err(|m| anyhow::anyhow!("--tls-san {san:?}: {m}"))?;
    }
    if ca.not_after.is_some_and(|end| end <= std::time::SystemTime::now()) {
        anyhow::bail!(
            "{}: the API's CA has expired; remove {} to make a new one (kubeconfigs then need the new CA)",
            dir.join("ca.crt").display(),
            dir.display()
        );
    }
    ca.check_pair(&dir)?;
    if let Some(end) = ca.not_after {
        if end < std::time::SystemTime::now() + Duration::from_secs(90 * 86400) {
            tracing::warn!(ca = %dir.join("ca.crt").display(), "the API's CA expires within 90 days; remove DATA/pki to make a new one (kubeconfigs then need the new CA)");
        }
    }
    let names = pki::serving_names(addr.ip(), &args.tls_san);
    tracing::info!(sans = ?names, dir = %dir.display(), "serving certificates are issued for these names");
    let validity = args.tls_cert_validity;
    let issue = {
        let dir = dir.clone();
        move |ca: &pki::Ca| -> anyhow::Result<(rustls::sign::CertifiedKey, std::time::SystemTime)> {
            let issued = ca.issue(&names, validity)?;
            // The files are for people to inspect; the server presents the
            // certificate from memory, so a full disk does not stop a start.
            let written = pki::write_atomic(&dir.join("serving.key"), issued.key_pem.as_bytes(), 0o600)
                .and_then(|()| pki::write_atomic(&dir.join("serving.crt"), issued.cert_pem.as_bytes(), 0o644));
            if let Err(e) = written {
                tracing::warn!(error = %format!("{:#}", anyhow::Error::from(e)), "serving certificate not written to DATA/pki; serving it from memory");
            }
            let ck = pki::certified_key(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes(), &dir.join("serving.crt"), &dir.join("serving.key"))?;
            Ok((ck, issued.not_after))
        }
    };
    let (first, mut not_after) = issue(&ca)?;
    let slot = pki::CertSlot::new(first);
    let server = pki::server_config(slot.clone())?;
    let ca_pem = Some(ca.cert_pem.clone());
    // Renewed when a third of its life is left, while serving: clients
    // trust the CA, so they never notice.
    tokio::spawn(async move {
        loop {
            let renew_at = not_after.checked_sub(validity / 3).unwrap_or(not_after);
            let wait = renew_at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
            // In steps, so a wall clock that jumps is noticed.
            tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
            if std::time::SystemTime::now() < renew_at {
                continue;
            }
            match issue(&ca) {
                // The CA ends first: a new certificate would end no later
                // than the one served. Say so, hourly, instead of renewing
                // in a loop.
                Ok((_, end)) if end <= not_after => {
                    tracing::error!(
                        ca = %dir.join("ca.crt").display(),
                        "the API's CA expires before the serving certificate could be renewed; remove DATA/pki and restart to make a new CA (kubeconfigs then need the new one)"
                    );
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Ok((ck, end)) => {
                    slot.replace(ck);
                    not_after = end;
                    tracing::info!(not_after = %chrono::DateTime::<chrono::Utc>::from(end).to_rfc3339(), "serving certificate renewed");
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "serving certificate not renewed; trying again in a minute");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        }
    });
    Ok(Tls { server, ca_pem })
}

/// How often `--tls-cert-file` and `--tls-private-key-file` are checked
/// for changes.
const CERT_FILE_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Reads the API token, or makes one: 32 random bytes as hex, in a file
/// only its owner can read. An existing file must be a regular file (not a
/// symlink) that nobody else can read or write, holding a token that can
/// travel in a header; a new one is written whole (temp file, fsync,
/// rename), so a crash never leaves a short or empty token behind.
/// The bridge networks of the steward of `data_dir`: their namespaces
/// under a run directory of this data dir's own (`/run/steward/<hash>`),
/// their bridges locked host-wide.
pub fn open_networks(
    config: &steward_config::Config,
    data_dir: &std::path::Path,
    file: Option<&std::path::Path>,
) -> anyhow::Result<steward_controller::network::Networks> {
    let run_dir = PathBuf::from("/run/steward").join(&fnv_hex(data_dir.to_string_lossy().as_bytes())[..12]);
    steward_controller::network::Networks::open(config, data_dir, &run_dir, steward_controller::network::cni::default_plugin_dir())
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.map(|p| p.display().to_string()).unwrap_or_else(|| "configuration".into())))
}

fn load_or_create_token(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let what = || format!("--token-file {}", path.display());
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            if !m.file_type().is_file() {
                anyhow::bail!("{}: not a regular file", what());
            }
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if m.uid() != me || m.permissions().mode() & 0o077 != 0 {
                anyhow::bail!("{}: must be owned by uid {me} and not readable or writable by others (chmod 600)", what());
            }
            let token = std::fs::read_to_string(path).with_context(what)?.trim().to_string();
            let printable = token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic());
            if !printable {
                anyhow::bail!("{}: the token must be at least 16 printable characters without spaces", what());
            }
            return Ok(token);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(what),
    }
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom for a new API token")?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(what)?;
    steward_apiserver::pki::write_atomic(path, token.as_bytes(), 0o600).with_context(what)?;
    tracing::info!(path = %path.display(), "created a new API token");
    Ok(token)
}

/// Removes `.NAME.PID` files [`steward_apiserver::pki::write_atomic`]
/// left in `dir` when it was killed mid-write.
fn remove_stale_temporaries(dir: &std::path::Path) {
    const WRITTEN: &[&str] = &["kubeconfig", "token", "ca.key", "ca.crt", "serving.key", "serving.crt"];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name.strip_prefix('.').and_then(|n| n.rsplit_once('.')).is_some_and(|(base, pid)| {
            WRITTEN.contains(&base) && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
        });
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Creates the data dir owner-only (0700): it holds every spec and env
/// value, the token and the logs. An existing dir with a looser mode is
/// tightened, with a warning.
fn owner_only_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let what = || format!("--data-dir {}", dir.display());
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("{}: cannot create", what()))?;
    let mode = std::fs::metadata(dir).with_context(what)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "data dir readable by others; setting 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("{}: cannot set mode 0700", what()))?;
    }
    Ok(())
}

/// The store identity an older steward kept in `DATA/store-uid` (before it
/// lived in the store), if that file is there: the store adopts it when it
/// has none yet, so that steward's containers stay this store's.
fn legacy_store_uid(data_dir: &std::path::Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join("store-uid");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let uid = s.trim().to_string();
            let valid = uid.len() >= 16 && uid.len() <= 63 && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !valid {
                anyhow::bail!("{}: not a store uid ({uid:?}); restore it from a backup, or remove the file", path.display());
            }
            Ok(Some(uid))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| path.display().to_string()),
    }
}

/// Image archives uploaded to the API go into containerd.
struct Importer(ContainerdRuntime);

fn image_info(i: steward_controller::containerd::images::ImageInfo) -> steward_apiserver::ImageInfo {
    let rfc = |t: Option<steward_schema::Time>| t.map(|t| t.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    steward_apiserver::ImageInfo {
        digest: i.digest,
        repo_tags: i.names,
        size: i.size,
        created: rfc(i.created),
        last_used: rfc(i.last_used),
        used_by: i.used_by,
    }
}

impl steward_apiserver::ImageImporter for Importer {
    fn import<'a>(&'a self, path: &'a std::path::Path) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move { self.0.import_archive(path).await.map_err(|e| e.to_string()) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<steward_apiserver::ImageInfo>, String>> {
        Box::pin(async move { Ok(self.0.images().await.map_err(|e| e.to_string())?.into_iter().map(image_info).collect()) })
    }

    fn remove<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<Vec<String>, steward_apiserver::RemoveError>> {
        use steward_apiserver::RemoveError;
        Box::pin(async move {
            self.0.remove_image(digest).await.map_err(|e| match e {
                Ok(users) => RemoveError::InUse(users),
                Err(steward_controller::actual::RuntimeError::NotFound(_)) => RemoveError::NotFound,
                Err(e) => RemoveError::Failed(e.to_string()),
            })
        })
    }

    fn pull<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<String, String>> {
        use steward_controller::actual::Runtime;
        Box::pin(async move {
            let cfg = self.0.ensure_image(reference, steward_schema::PullPolicy::Always, Box::new(|_| {})).await.map_err(|e| e.to_string())?;
            Ok(cfg.digest)
        })
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => tracing::info!("SIGINT received"),
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGINT"),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_temporaries_of_whole_file_writes_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        for f in [".kubeconfig.123", ".ca.key.9", ".kubeconfig.abc", ".notes.1", "kubeconfig"] {
            std::fs::write(tmp.path().join(f), "x").unwrap();
        }
        super::remove_stale_temporaries(tmp.path());
        let mut left: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, [".kubeconfig.abc", ".notes.1", "kubeconfig"]);
    }

    #[test]
    fn data_dir_is_owner_only_also_when_it_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let fresh = tmp.path().join("a/b");
        super::owner_only_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        super::owner_only_dir(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);
    }
}
