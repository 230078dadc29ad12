//! Container networks: bridge networks through the standard CNI plugins
//! (`bridge` + `host-local`, `portmap`, `firewall`, `loopback`), run as the
//! CNI spec says, the way nerdctl runs them; network namespaces steward
//! makes and owns; names through a DNS responder on each gateway.
//!
//! A container's attachment lives as long as its containerd container
//! (across restarts of its task): [`Networks::attach`] before a task is
//! created, [`Networks::detach`] before the container is removed. Every
//! attachment is recorded in a cache file *before* its CNI ADD, so one a
//! crash cut short is still found: [`Networks::collect`] tears down every
//! attachment, namespace and file whose container is gone.

pub mod cni;
pub mod dns;
pub mod netns;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use cni::CniError;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A published port is taken (by another container or process).
    #[error("{0}")]
    PortConflict(String),
    #[error("network {0:?} is not configured (networks: {1})")]
    Unknown(String, String),
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    /// The configuration cannot work on this host.
    #[error("{0}")]
    Config(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |err| NetworkError::Io { what, err }
}

/// One published port, as `portmap` takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Empty: every address.
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The published ports of `spec`, in `portmap`'s terms.
pub fn port_mappings(spec: &steward_schema::ContainerSpec) -> Vec<PortMapping> {
    spec.ports
        .iter()
        .filter_map(|p| {
            Some(PortMapping {
                host_port: u16::try_from(p.host_port?).ok()?,
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: p
                    .protocol
                    .unwrap_or(steward_schema::Protocol::Tcp)
                    .as_str()
                    .to_ascii_lowercase(),
                // 0.0.0.0 is every address, as an empty hostIP.
                host_ip: p.host_ip.clone().filter(|ip| ip != "0.0.0.0").unwrap_or_default(),
            })
        })
        .collect()
}

/// A configured bridge network, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkDef {
    pub name: String,
    pub bridge: String,
    pub subnet: (Ipv4Addr, u8),
    pub gateway: Ipv4Addr,
}

impl NetworkDef {
    pub fn subnet_string(&self) -> String {
        format!("{}/{}", self.subnet.0, self.subnet.1)
    }

    /// The network configuration list the plugins run.
    fn conflist(&self, ipam_dir: &Path) -> Value {
        json!({
            "cniVersion": cni::CNI_VERSION,
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet_string(), "gateway": self.gateway.to_string()}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": ipam_dir.display().to_string(),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                {"type": "firewall", "backend": "iptables"},
            ],
        })
    }
}

/// What [`Networks::attach`] needs to know of the container.
#[derive(Clone, Debug)]
pub struct AttachRequest<'a> {
    pub network: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub hostname: &'a str,
    pub ports: &'a [PortMapping],
}

/// A container's attachment, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub network: String,
    pub ip: Ipv4Addr,
}

/// The cache file of one attachment: written before the ADD (with no
/// result), completed after it, removed after the DEL.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    network: String,
    namespace: String,
    name: String,
    config: Value,
    #[serde(default)]
    ports: Vec<PortMapping>,
    #[serde(default)]
    result: Option<Value>,
}

impl Entry {
    fn ip(&self) -> Option<Ipv4Addr> {
        self.result
            .as_ref()
            .and_then(cni::container_ipv4)
            .map(|(ip, _)| ip)
    }

    fn runtime_config(&self) -> Value {
        json!({"portMappings": self.ports})
    }
}

/// A host port held open by steward while a container publishes it, so
/// no other process (or steward) binds it meanwhile (the kubelet's
/// hostport reservation).
#[allow(dead_code)]
enum Hold {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

struct Published {
    id: String,
    owner: String,
    host_ip: String,
    _hold: Hold,
}

#[derive(Default)]
struct Ports {
    /// (protocol, host port) → who publishes it.
    held: HashMap<(String, u16), Vec<Published>>,
    /// Containers refused a port, woken when it is released.
    waiters: HashMap<(String, u16), BTreeSet<String>>,
}

/// Whether two host addresses a port is published on overlap (empty and
/// 0.0.0.0 are every address).
fn overlaps(a: &str, b: &str) -> bool {
    let any = |x: &str| x.is_empty() || x == "0.0.0.0";
    any(a) || any(b) || a == b
}

fn hold(p: &PortMapping) -> std::io::Result<Hold> {
    let ip: Ipv4Addr = if p.host_ip.is_empty() {
        Ipv4Addr::UNSPECIFIED
    } else {
        p.host_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
    };
    let addr = std::net::SocketAddr::from((ip, p.host_port));
    if p.protocol == "udp" {
        std::net::UdpSocket::bind(addr).map(Hold::Udp)
    } else {
        std::net::TcpListener::bind(addr).map(Hold::Tcp)
    }
}

/// Every bridge network of one steward, and what is attached to them.
pub struct Networks {
    plugins: cni::Plugins,
    /// `DATA/cni/results/<id>.json`
    cache_dir: PathBuf,
    /// host-local's leases: `DATA/cni/networks/<network>/`.
    ipam_dir: PathBuf,
    /// Per container `hosts`, `resolv.conf`, `hostname`.
    files_dir: PathBuf,
    /// `RUN/netns/<id>`
    netns_dir: PathBuf,
    defs: BTreeMap<String, NetworkDef>,
    /// The bridges' locks, held for the life of the process.
    _locks: Vec<std::fs::File>,
    ports: Mutex<Ports>,
    id_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    dns: dns::Dns,
    woken: tokio::sync::broadcast::Sender<String>,
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networks")
            .field("defs", &self.defs)
            .field("netns_dir", &self.netns_dir)
            .finish_non_exhaustive()
    }
}

/// Where bridge locks live: one directory for every steward on the host.
pub const LOCK_DIR: &str = "/run/steward/locks";

/// The defaults tried, in order, for a `bridge` network without a subnet.
fn default_subnets() -> impl Iterator<Item = (Ipv4Addr, u8)> {
    (88u8..=127).map(|b| (Ipv4Addr::new(10, b, 0, 0), 16))
}

/// The host's IPv4 routes: (interface, destination, prefix length).
fn host_routes() -> Vec<(String, Ipv4Addr, u8)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // The kernel prints the address's network-order bytes as a
            // native u32.
            let dest = Ipv4Addr::from(dest.to_ne_bytes());
            let len = mask.count_ones() as u8;
            Some((f[0].to_string(), dest, len))
        })
        .filter(|(_, _, len)| *len > 0)
        .collect()
}

impl Networks {
    /// Resolves `config`'s networks (choosing and recording a subnet for
    /// `bridge` if it has none), takes each bridge's host-wide lock (a
    /// second steward with the same bridge is refused: two IPAM stores
    /// would hand out the same addresses), and loads the attachments a
    /// previous run left (their ports and names).
    pub fn open(
        config: &steward_config::Config,
        data_dir: &Path,
        run_dir: &Path,
        plugin_dir: &Path,
    ) -> Result<Networks, NetworkError> {
        let root = data_dir.join("cni");
        let cache_dir = root.join("results");
        for d in [&cache_dir, &root.join("networks"), &root.join("containers")] {
            std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
        }
        // Left by a crash during a write; nothing writes them now.
        if let Ok(rd) = std::fs::read_dir(&cache_dir) {
            for e in rd.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let routes = host_routes();
        let mut defs = BTreeMap::new();
        // Host-wide: each subnet (and below, each bridge) is one steward's.
        let mut locks = Vec::new();
        let nets = config.networks();
        let explicit: Vec<(Ipv4Addr, u8)> = nets
            .values()
            .filter_map(|n| n.subnet.as_deref())
            .filter_map(|s| steward_config::parse_cidr(s).ok())
            .collect();
        for (name, n) in &nets {
            let bridge = n.bridge_name(name);
            locks.push(host_lock(&format!("bridge-{bridge}"), data_dir)?.map_err(|holder| {
                NetworkError::Config(format!(
                    "networks.{name}.bridge: bridge {bridge} is in use by another steward ({holder}); give this one another bridge and subnet in its configuration (two IPAM stores would hand out the same addresses)"
                ))
            })?);
            let foreign = |cidr: (Ipv4Addr, u8)| {
                routes
                    .iter()
                    .find(|(dev, dest, len)| {
                        *dev != bridge && steward_config::cidrs_overlap((*dest, *len), cidr)
                    })
                    .cloned()
            };
            let subnet = match &n.subnet {
                Some(s) => {
                    let cidr = steward_config::parse_cidr(s).map_err(|m| {
                        NetworkError::Config(format!("networks.{name}.subnet: {m}"))
                    })?;
                    if let Some((dev, dest, len)) = foreign(cidr) {
                        return Err(NetworkError::Config(format!(
                            "networks.{name}.subnet: {s} overlaps the host's route to {dest}/{len} on {dev}; choose another subnet"
                        )));
                    }
                    locks.push(host_lock(&subnet_lock_name(cidr), data_dir)?.map_err(|holder| {
                        NetworkError::Config(format!("networks.{name}.subnet: {s} is in use by another steward ({holder}); choose another subnet"))
                    })?);
                    cidr
                }
                None => {
                    let file = root.join(format!("subnet-{name}"));
                    let recorded = std::fs::read_to_string(&file)
                        .ok()
                        .and_then(|s| steward_config::parse_cidr(s.trim()).ok());
                    match recorded {
                        Some(c) => {
                            locks.push(host_lock(&subnet_lock_name(c), data_dir)?.map_err(|holder| {
                                NetworkError::Config(format!(
                                    "networks.{name}.subnet: {}/{} (chosen earlier, in {}) is in use by another steward ({holder}); set another subnet",
                                    c.0,
                                    c.1,
                                    file.display()
                                ))
                            })?);
                            c
                        }
                        None => {
                            // The first default no host route, no other
                            // network here and no other steward has.
                            let mut chosen = None;
                            for c in default_subnets() {
                                if foreign(c).is_some() || explicit.iter().any(|e| steward_config::cidrs_overlap(*e, c)) {
                                    continue;
                                }
                                if let Ok(l) = host_lock(&subnet_lock_name(c), data_dir)? {
                                    locks.push(l);
                                    chosen = Some(c);
                                    break;
                                }
                            }
                            let c = chosen.ok_or_else(|| NetworkError::Config(format!("networks.{name}.subnet: every default subnet (10.88.0.0/16 to 10.127.0.0/16) overlaps a host route or is another steward's; set one")))?;
                            write_atomic(&file, format!("{}/{}\n", c.0, c.1).as_bytes())?;
                            c
                        }
                    }
                }
            };
            let gateway = Ipv4Addr::from(u32::from(subnet.0) + 1);
            defs.insert(
                name.clone(),
                NetworkDef {
                    name: name.clone(),
                    bridge,
                    subnet,
                    gateway,
                },
            );
        }
        let (woken, _) = tokio::sync::broadcast::channel(1024);
        let nets = Networks {
            plugins: cni::Plugins {
                dir: plugin_dir.to_path_buf(),
            },
            cache_dir,
            ipam_dir: root.join("networks"),
            files_dir: root.join("containers"),
            netns_dir: run_dir.join("netns"),
            defs,
            _locks: locks,
            ports: Mutex::new(Ports::default()),
            id_locks: Mutex::new(HashMap::new()),
            dns: dns::Dns::default(),
            woken,
        };
        for (id, e) in nets.entries() {
            if let Some(ip) = e.ip() {
                nets.dns.add(&e.network, &e.namespace, &e.name, ip);
                if let Err(m) = nets.reserve(&id, &e.namespace, &e.name, &e.ports) {
                    tracing::warn!(container = %id, "{m}");
                }
            }
        }
        Ok(nets)
    }

    /// Records which containerd (socket, namespace) the attachments under
    /// `data_dir` belong to, for `steward network prune`.
    pub fn record_runtime(data_dir: &Path, socket: &Path, namespace: &str) -> Result<(), NetworkError> {
        let v = json!({"socket": socket, "namespace": namespace});
        write_atomic(&data_dir.join("cni/containerd.json"), v.to_string().as_bytes())
    }

    /// What [`Networks::record_runtime`] recorded: (socket, namespace).
    pub fn recorded_runtime(data_dir: &Path) -> Option<(PathBuf, String)> {
        let v: Value = serde_json::from_slice(&std::fs::read(data_dir.join("cni/containerd.json")).ok()?).ok()?;
        Some((PathBuf::from(v["socket"].as_str()?), v["namespace"].as_str()?.to_string()))
    }

    pub fn defs(&self) -> &BTreeMap<String, NetworkDef> {
        &self.defs
    }

    /// Whether `network` is one of steward's bridge networks.
    pub fn is_bridge(&self, network: &str) -> bool {
        self.defs.contains_key(network)
    }

    /// The namespace file of container `id`.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.netns_dir.join(id)
    }

    /// The directory of container `id`'s `hosts`, `resolv.conf`, `hostname`.
    pub fn files_dir(&self, id: &str) -> PathBuf {
        self.files_dir.join(id)
    }

    /// Ids whose containers are refused a port and should look again.
    pub fn woken(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.woken.subscribe()
    }

    /// Starts the DNS responder of every network whose bridge is up.
    pub async fn start_dns(&self) {
        for d in self.defs.values() {
            if let Err(e) = self.dns.listen(&d.name, d.gateway).await {
                tracing::debug!(network = %d.name, error = %e, "DNS responder waits for the bridge");
            }
        }
    }

    fn cache_path(&self, id: &str) -> PathBuf {
        self.cache_dir.join(format!("{id}.json"))
    }

    fn read_entry(&self, id: &str) -> Option<Entry> {
        let bytes = std::fs::read(self.cache_path(id)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(container = id, error = %e, "unreadable network cache entry");
                None
            }
        }
    }

    /// Every cached attachment (complete or not).
    fn entries(&self) -> Vec<(String, Entry)> {
        self.cached_ids()
            .into_iter()
            .filter_map(|id| self.read_entry(&id).map(|e| (id, e)))
            .collect()
    }

    /// The ids of every cache entry (readable or not).
    pub fn cached_ids(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.cache_dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(String::from)
            })
            .collect()
    }

    /// Every id something of steward's networking is left for: cache
    /// entries, namespace files and per-container files.
    pub fn known_ids(&self) -> BTreeSet<String> {
        let mut ids: BTreeSet<String> = self.cached_ids().into_iter().collect();
        for dir in [&self.netns_dir, &self.files_dir] {
            if let Ok(rd) = std::fs::read_dir(dir) {
                ids.extend(
                    rd.filter_map(|e| e.ok())
                        .filter_map(|e| e.file_name().to_str().map(String::from)),
                );
            }
        }
        ids
    }

    /// The attachment of container `id`, if it has a complete one.
    pub fn attachment(&self, id: &str) -> Option<Attachment> {
        let e = self.read_entry(id)?;
        Some(Attachment {
            ip: e.ip()?,
            network: e.network,
        })
    }

    fn id_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.id_locks.lock().unwrap_or_else(|p| p.into_inner());
        // Drop the locks nobody holds, so the map stays as small as the
        // operations in flight.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(id.to_string()).or_default().clone()
    }

    /// Attaches container `id` to `req.network`, or finds it attached as
    /// asked (a restart of its task): its namespace exists, the ADD is
    /// recorded, its ports are its own. Anything less is torn down and
    /// done again.
    pub async fn attach(
        &self,
        id: &str,
        req: &AttachRequest<'_>,
    ) -> Result<Attachment, NetworkError> {
        let def = self.defs.get(req.network).ok_or_else(|| {
            NetworkError::Unknown(
                req.network.to_string(),
                self.defs.keys().cloned().collect::<Vec<_>>().join(", "),
            )
        })?;
        let lock = self.id_lock(id);
        let _held = lock.lock().await;
        let ns_path = self.netns_path(id);
        if let Some(e) = self.read_entry(id) {
            let same = e.network == req.network && e.ports == req.ports;
            // Its namespace there and its ADD complete: reuse it. (Not the
            // plugins' CHECK: portmap 1.1.1's looks for an IPv6 chain an
            // IPv4 network never has, so every restart of a container
            // publishing a port would get a new address.)
            let intact = match (same, netns::is_mounted(&ns_path)) {
                (true, true) => e.ip(),
                _ => None,
            };
            if let Some(ip) = intact {
                self.reserve(id, req.namespace, req.name, req.ports)?;
                self.write_files(id, def, ip, req.hostname)?;
                self.dns.add(req.network, req.namespace, req.name, ip);
                if let Err(err) = self.dns.listen(&def.name, def.gateway).await {
                    tracing::warn!(network = %def.name, error = %err, "DNS responder not listening");
                }
                return Ok(Attachment {
                    network: e.network,
                    ip,
                });
            }
            tracing::info!(
                container = id,
                "network attachment incomplete or changed; setting it up again"
            );
            self.teardown(id, Some(e)).await?;
        }
        self.plugins
            .require(&["bridge", "host-local", "portmap", "firewall", "loopback"])?;
        self.reserve(id, req.namespace, req.name, req.ports)?;
        let made = self.add(id, def, req, &ns_path).await;
        match made {
            Ok(ip) => {
                self.write_files(id, def, ip, req.hostname)?;
                self.dns.add(req.network, req.namespace, req.name, ip);
                if let Err(err) = self.dns.listen(&def.name, def.gateway).await {
                    tracing::warn!(network = %def.name, error = %err, "DNS responder not listening");
                }
                tracing::info!(container = id, network = req.network, %ip, "attached");
                Ok(Attachment {
                    network: req.network.to_string(),
                    ip,
                })
            }
            Err(e) => {
                // Nothing half-made stays: no entry, no namespace, no port.
                let _ = self.teardown(id, self.read_entry(id)).await;
                Err(e)
            }
        }
    }

    async fn add(
        &self,
        id: &str,
        def: &NetworkDef,
        req: &AttachRequest<'_>,
        ns_path: &Path,
    ) -> Result<Ipv4Addr, NetworkError> {
        blocking(ns_path, "create network namespace", netns::create).await?;
        let mut entry = Entry {
            network: req.network.to_string(),
            namespace: req.namespace.to_string(),
            name: req.name.to_string(),
            config: def.conflist(&self.ipam_dir),
            ports: req.ports.to_vec(),
            result: None,
        };
        // Recorded before the ADD: a crash during it leaves an entry the
        // collector finds.
        self.write_entry(id, &entry)?;
        let netns = ns_path.display().to_string();
        let inv = cni::Invocation {
            container_id: id,
            netns: &netns,
            if_name: cni::IF_NAME,
        };
        let lo = json!({"cniVersion": cni::CNI_VERSION, "name": "lo", "type": "loopback"});
        self.plugins
            .exec(
                cni::Command::Add,
                &lo,
                &cni::Invocation {
                    if_name: "lo",
                    ..inv.clone()
                },
            )
            .await?;
        let result = self
            .plugins
            .add_list(&entry.config, &entry.runtime_config(), &inv)
            .await?;
        entry.result = Some(result);
        let recorded = entry
            .ip()
            .ok_or_else(|| NetworkError::Config(format!("the {} network's plugins gave container {id} no IPv4 address", def.name)))
            .and_then(|ip| self.write_entry(id, &entry).map(|()| ip));
        if recorded.is_err() {
            // Undo the ADD now, with its result (the firewall plugin finds
            // its rules only through it): the caller's teardown has only
            // the record of intent (a full disk refused the result).
            if let Err(d) = self.plugins.del_list(&entry.config, &entry.runtime_config(), entry.result.as_ref(), &inv).await {
                tracing::warn!(container = id, error = %d, "undoing an ADD that could not be recorded");
            }
        }
        recorded
    }

    /// Detaches container `id`: DEL, then its namespace, files, ports and
    /// name go. Nothing attached: done.
    pub async fn detach(&self, id: &str) -> Result<(), NetworkError> {
        let lock = self.id_lock(id);
        let _held = lock.lock().await;
        let e = self.read_entry(id);
        self.teardown(id, e).await
    }

    async fn teardown(&self, id: &str, e: Option<Entry>) -> Result<(), NetworkError> {
        let ns_path = self.netns_path(id);
        if let Some(e) = &e {
            let netns = if netns::is_mounted(&ns_path) {
                ns_path.display().to_string()
            } else {
                String::new()
            };
            let inv = cni::Invocation {
                container_id: id,
                netns: &netns,
                if_name: cni::IF_NAME,
            };
            self.plugins
                .del_list(&e.config, &e.runtime_config(), e.result.as_ref(), &inv)
                .await?;
            if let Some(ip) = e.ip() {
                self.dns.remove(ip);
            }
        }
        blocking(&ns_path, "remove network namespace", netns::remove).await?;
        let files = self.files_dir(id);
        match std::fs::remove_dir_all(&files) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("remove {}", files.display()))(err))
            }
            _ => {}
        }
        match std::fs::remove_file(self.cache_path(id)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("remove a network cache entry")(err))
            }
            _ => {}
        }
        self.release(id);
        if e.is_some() {
            tracing::info!(container = id, "detached");
        }
        Ok(())
    }

    /// Claims `ports` for `id`: each must be free of other containers'
    /// (else PortConflict naming the owner) and bindable on the host (else
    /// PortConflict naming the port). Claims already `id`'s are kept.
    fn reserve(
        &self,
        id: &str,
        namespace: &str,
        name: &str,
        ports: &[PortMapping],
    ) -> Result<(), NetworkError> {
        let mut t = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        for p in ports {
            let key = (p.protocol.clone(), p.host_port);
            let taken = t.held.get(&key).and_then(|v| {
                v.iter()
                    .find(|h| h.id != id && overlaps(&h.host_ip, &p.host_ip))
            });
            if let Some(h) = taken {
                let msg = format!(
                    "host port {}/{} is published by {} already; waiting for it to be free",
                    p.host_port,
                    p.protocol.to_ascii_uppercase(),
                    h.owner
                );
                t.waiters.entry(key).or_default().insert(id.to_string());
                return Err(NetworkError::PortConflict(msg));
            }
        }
        // Bind every new port first, and record them only once all are
        // bound: a failure drops (closes) what this call bound, and
        // leaves the table as it was.
        let mut bound = Vec::new();
        for p in ports {
            let key = (p.protocol.clone(), p.host_port);
            if t.held.get(&key).is_some_and(|v| v.iter().any(|h| h.id == id && h.host_ip == p.host_ip)) {
                continue;
            }
            match hold(p) {
                Ok(h) => bound.push((key, p.host_ip.clone(), h)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    return Err(NetworkError::Config(format!(
                        "spec.ports: hostIP {} is not an address of this host ({e})",
                        p.host_ip
                    )));
                }
                Err(e) => {
                    t.waiters.entry(key).or_default().insert(id.to_string());
                    return Err(NetworkError::PortConflict(format!(
                        "host port {}/{} is in use on the host ({e}); waiting for it to be free",
                        p.host_port,
                        p.protocol.to_ascii_uppercase()
                    )));
                }
            }
        }
        let owner = format!("{namespace}/{name}");
        for (key, host_ip, h) in bound {
            t.held.entry(key).or_default().push(Published { id: id.into(), owner: owner.clone(), host_ip, _hold: h });
        }
        Ok(())
    }

    /// Frees `id`'s ports and wakes whoever waits for them.
    fn release(&self, id: &str) {
        let mut t = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        let mut freed = Vec::new();
        for (k, v) in t.held.iter_mut() {
            let before = v.len();
            v.retain(|h| h.id != id);
            if v.len() != before {
                freed.push(k.clone());
            }
        }
        t.held.retain(|_, v| !v.is_empty());
        for k in freed {
            for w in t.waiters.remove(&k).unwrap_or_default() {
                let _ = self.woken.send(w);
            }
        }
        for v in t.waiters.values_mut() {
            v.remove(id);
        }
    }

    fn write_entry(&self, id: &str, e: &Entry) -> Result<(), NetworkError> {
        let bytes = serde_json::to_vec_pretty(e)
            .map_err(|err| io("encode a network cache entry")(std::io::Error::other(err)))?;
        write_atomic(&self.cache_path(id), &bytes)
    }

    /// The container's `/etc/hosts`, `/etc/resolv.conf` (the gateway's
    /// responder; the host's search domains and options) and
    /// `/etc/hostname`.
    fn write_files(
        &self,
        id: &str,
        def: &NetworkDef,
        ip: Ipv4Addr,
        hostname: &str,
    ) -> Result<(), NetworkError> {
        let dir = self.files_dir(id);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n{ip}\t{hostname}\n"
        );
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut resolv = format!("nameserver {}\n", def.gateway);
        for l in host_resolv.lines().map(str::trim) {
            if l.starts_with("search ") || l.starts_with("domain ") || l.starts_with("options ") {
                resolv.push_str(l);
                resolv.push('\n');
            }
        }
        for (f, text) in [
            ("hosts", hosts),
            ("resolv.conf", resolv),
            ("hostname", format!("{hostname}\n")),
        ] {
            let p = dir.join(f);
            if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
                write_atomic(&p, text.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Tears down what is left for containers that are gone: `known` ids
    /// (read with [`Networks::known_ids`] *before* `live` was listed) not
    /// in `live`, each rechecked by `gone` under its lock. The number torn
    /// down.
    pub async fn collect<F, Fut>(
        &self,
        known: BTreeSet<String>,
        live: &BTreeSet<String>,
        gone: F,
    ) -> Result<usize, NetworkError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut n = 0;
        let mut first_err = None;
        for id in known.into_iter().filter(|id| !live.contains(id)) {
            let lock = self.id_lock(&id);
            let _held = lock.lock().await;
            if !gone(id.clone()).await {
                continue;
            }
            let e = self.read_entry(&id);
            tracing::info!(container = %id, "collecting the network attachment of a container that is gone");
            // One that cannot be torn down (yet) does not hold up the rest.
            match self.teardown(&id, e).await {
                Ok(()) => n += 1,
                Err(err) => {
                    tracing::warn!(container = %id, error = %err, "collecting a network attachment failed; retrying later");
                    first_err.get_or_insert(err);
                }
            }
        }
        match first_err {
            Some(e) if n == 0 => Err(e),
            _ => Ok(n),
        }
    }
}

/// Takes bridge `d`'s host-wide lock, or says who holds it.
/// Runs namespace operation `f` on `path` off the async workers (mount
/// syscalls, a thread of its own for a create).
async fn blocking(path: &Path, what: &str, f: fn(&Path) -> std::io::Result<()>) -> Result<(), NetworkError> {
    let owned = path.to_path_buf();
    let what = format!("{what} {}", path.display());
    match tokio::task::spawn_blocking(move || f(&owned)).await {
        Ok(r) => r.map_err(io(what)),
        Err(e) => Err(NetworkError::Io { what, err: std::io::Error::other(e) }),
    }
}

/// Takes host-wide lock `name` (held while the file is open), or says who
/// holds it.
fn host_lock(name: &str, data_dir: &Path) -> Result<Result<std::fs::File, String>, NetworkError> {
    std::fs::create_dir_all(LOCK_DIR).map_err(io(format!("create {LOCK_DIR}")))?;
    let path = Path::new(LOCK_DIR).join(format!("{name}.lock"));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(format!("open {}", path.display())))?;
    if f.try_lock().is_err() {
        return Ok(Err(std::fs::read_to_string(&path).unwrap_or_default().trim().to_string()));
    }
    f.set_len(0).map_err(io(format!("write {}", path.display())))?;
    let _ = writeln!(f, "pid {}, data dir {}", std::process::id(), data_dir.display());
    Ok(Ok(f))
}

fn subnet_lock_name(c: (Ipv4Addr, u8)) -> String {
    format!("subnet-{}-{}", c.0, c.1)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NetworkError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(io(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ports_come_from_specs_with_host_ports() {
        let spec: steward_schema::ContainerSpec = serde_json::from_value(json!({
            "image": "x",
            "ports": [
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"},
                {"containerPort": 9090, "name": "metrics"},
            ]
        }))
        .expect("spec");
        assert_eq!(
            port_mappings(&spec),
            vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                    host_ip: String::new()
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: "udp".into(),
                    host_ip: "127.0.0.1".into()
                },
            ]
        );
    }

    #[test]
    fn the_conflist_chains_bridge_portmap_and_firewall_with_leases_in_the_data_dir() {
        let d = NetworkDef {
            name: "bridge".into(),
            bridge: "steward0".into(),
            subnet: (Ipv4Addr::new(10, 88, 0, 0), 16),
            gateway: Ipv4Addr::new(10, 88, 0, 1),
        };
        let c = d.conflist(Path::new("/var/lib/steward/cni/networks"));
        let types: Vec<&str> = c["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "firewall"]);
        assert_eq!(
            c["plugins"][0]["ipam"]["dataDir"],
            "/var/lib/steward/cni/networks"
        );
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.88.0.0/16"
        );
        assert_eq!(c["plugins"][0]["bridge"], "steward0");
    }

    #[test]
    fn host_routes_are_read_from_proc() {
        // Every host has a route for its own interfaces' subnets or a
        // default route; both parse to a device and a prefix.
        let routes = host_routes();
        assert!(
            !routes.is_empty()
                && routes
                    .iter()
                    .all(|(dev, _, len)| !dev.is_empty() && *len <= 32),
            "{routes:?}"
        );
    }
}
