//! steward's configuration file (`steward serve --config PATH`): one typed,
//! immutable value, parsed and validated in full before anything uses it.
//! Unknown keys are refused with their path (`runtimes.handlers.x.runtim`),
//! as are values that cannot work (a default handler that is not defined,
//! thresholds out of order). Every key has a default, so an empty file is
//! a valid configuration.
//!
//! Which keys apply on a live reload and which need a restart is said by
//! [`Config::restart_only_changes`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod duration;

pub use duration::{format_duration, parse_duration};

/// Where `steward serve` looks when `--config` is not given (used only when
/// the file exists).
pub const DEFAULT_PATH: &str = "/etc/steward/config.yaml";

/// The largest configuration file read (a config is a few KB; this bounds
/// what a mistaken path can cost).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {err}")]
    Read { file: String, err: std::io::Error },
    #[error("{file}: larger than {MAX_FILE_BYTES} bytes; is it a configuration file?")]
    TooLarge { file: String },
    /// The YAML does not parse, or a key is unknown or of the wrong type.
    #[error("{file}: {key}: {message}")]
    Parse { file: String, key: String, message: String },
    /// Parsed, but a value cannot work.
    #[error("{file}: {key}: {message}")]
    Invalid { file: String, key: String, message: String },
}

impl ConfigError {
    /// The key path the error is about (`.` for the whole file).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => key,
            _ => ".",
        }
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub registry: Registry,
    pub runtimes: Runtimes,
    pub images: Images,
    pub controller: Controller,
    pub log: Log,
    pub store: Store,
    /// Container networks by name (`spec.network`), besides `none` and
    /// `host`. `bridge`, the default network, is always there (on Linux
    /// bridge `steward0` unless configured otherwise); see
    /// [`Config::networks`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Network>,
}

/// The name of the default network (`spec.network: bridge`).
pub const DEFAULT_NETWORK: &str = "bridge";
/// The Linux bridge of the default network unless configured otherwise.
pub const DEFAULT_BRIDGE: &str = "steward0";

/// A bridge network: containers attached to Linux bridge `bridge` with
/// addresses from `subnet` (host-local IPAM), NAT to the outside, ports
/// published through `portmap`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// The Linux bridge (at most 15 characters). Default: `steward0` for
    /// `bridge`, `stw-<name>` (cut to 15) for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// IPv4 CIDR, prefix /8 to /28. Default (for `bridge` only): the first
    /// of 10.88.0.0/16, 10.89.0.0/16, ... that no host route overlaps,
    /// chosen once and kept in the data dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
}

impl Network {
    /// The Linux bridge of network `name`.
    pub fn bridge_name(&self, name: &str) -> String {
        match &self.bridge {
            Some(b) => b.clone(),
            None if name == DEFAULT_NETWORK => DEFAULT_BRIDGE.into(),
            None => format!("stw-{name}").chars().take(15).collect(),
        }
    }
}

/// An IPv4 CIDR: `(network address, prefix length)`.
pub fn parse_cidr(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: not a CIDR (e.g. 10.88.0.0/16)"))?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{s:?}: {len:?} is not a prefix length"))?;
    if !(8..=28).contains(&len) {
        return Err(format!("{s:?}: the prefix length must be between 8 and 28"));
    }
    let mask = u32::MAX << (32 - u32::from(len));
    if u32::from(addr) & !mask != 0 {
        return Err(format!(
            "{s:?}: host bits are set (the network is {}/{len})",
            std::net::Ipv4Addr::from(u32::from(addr) & mask)
        ));
    }
    Ok((addr, len))
}

/// Whether two CIDRs share an address.
pub fn cidrs_overlap(a: (std::net::Ipv4Addr, u8), b: (std::net::Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = u32::MAX << (32 - u32::from(len));
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

fn is_interface_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s != "."
        && s != ".."
}

/// How images are pulled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Registry {
    /// containerd's registry host directory (`<host[:port]>/hosts.toml`,
    /// `ca.crt`, client certificate pairs). Default: `DATA/certs.d`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_path: Option<PathBuf>,
    /// Docker's `config.json` with registry credentials. Default:
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_file: Option<PathBuf>,
}

/// The OCI runtimes containers may run with (`spec.runtimeClassName`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Runtimes {
    /// The handler of containers that name none.
    pub default: String,
    pub handlers: BTreeMap<String, Handler>,
}

impl Default for Runtimes {
    fn default() -> Self {
        Runtimes {
            default: "runc".into(),
            handlers: BTreeMap::from([
                ("runc".to_string(), Handler { runtime: "runc".into(), ..Default::default() }),
                ("crun".to_string(), Handler { runtime: "crun".into(), ..Default::default() }),
            ]),
        }
    }
}

/// One runtime handler: an OCI runtime binary with extra global arguments
/// and environment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Handler {
    /// A name looked up on PATH, or an absolute path.
    pub runtime: String,
    /// Global arguments before the runtime's command (the shim adds its own
    /// `--log` after them, so a `--log` here has no effect).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Images {
    pub gc: ImageGc,
}

/// Image garbage collection, as the kubelet's: past `highThresholdPercent`
/// of the image filesystem in use, unused images go, least recently used
/// first, until below `lowThresholdPercent`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ImageGc {
    pub high_threshold_percent: u8,
    pub low_threshold_percent: u8,
    /// An image used (or pulled) more recently than this is never
    /// collected (the kubelet's imageMinimumGCAge): a Container between
    /// its pull and its container, here or in another steward on the same
    /// containerd, is not robbed of it.
    #[serde(with = "duration::serde_str")]
    pub minimum_age: Duration,
}

impl Default for ImageGc {
    fn default() -> Self {
        ImageGc { high_threshold_percent: 85, low_threshold_percent: 80, minimum_age: Duration::from_secs(120) }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Controller {
    /// Reconciles running at once.
    pub concurrency: usize,
    /// How often every object is reconciled even without an event.
    #[serde(with = "duration::serde_str")]
    pub resync_period: Duration,
}

impl Default for Controller {
    fn default() -> Self {
        Controller { concurrency: 4, resync_period: Duration::from_secs(300) }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Log {
    /// A `tracing` filter: `info`, `debug`, `steward_controller=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into(), format: LogFormat::Text }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Store {
    /// How long the event log keeps changes for watches to resume from.
    #[serde(with = "duration::serde_str")]
    pub compaction_window: Duration,
}

impl Default for Store {
    fn default() -> Self {
        Store { compaction_window: Duration::from_secs(600) }
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        let file = path.display().to_string();
        let read_err = |err| ConfigError::Read { file: file.clone(), err };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        // Not a device, FIFO or directory: reading one could block for
        // ever or never end.
        if !meta.is_file() {
            return Err(read_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
        }
        // Bounded whatever the size said (it may grow meanwhile).
        let mut bytes = Vec::new();
        std::fs::File::open(path).map_err(read_err)?.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ConfigError::TooLarge { file });
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")))?;
        Config::parse(&text, &file)
    }

    /// Parses and validates the text of a configuration file named `file`
    /// (for messages).
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        // An empty file (or one of only comments) is the defaults.
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok(Config::default());
        }
        // The linear pre-scan request bodies get (nesting, node count):
        // serde_yaml is quadratic in nesting depth.
        steward_schema::manifest::check_yaml_shape(text)
            .map_err(|message| ConfigError::Parse { file: file.to_string(), key: ".".into(), message })?;
        let de = serde_yaml::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key.is_empty() { ".".to_string() } else { key };
            // serde_yaml starts with the path of the mapping (already in
            // `key`) and ends with "at line N column M" (kept: it helps).
            let mut message = e.inner().to_string();
            if let Some((prefix, rest)) = message.split_once(": ") {
                if !prefix.contains(' ') && key.starts_with(prefix) {
                    message = rest.to_string();
                }
            }
            ConfigError::Parse { file: file.to_string(), key, message }
        })?;
        config.validate().map_err(|(key, message)| ConfigError::Invalid { file: file.to_string(), key, message })?;
        Ok(config)
    }

    /// What cannot work: `(key path, problem)`.
    fn validate(&self) -> Result<(), (String, String)> {
        let r = &self.runtimes;
        if r.handlers.is_empty() {
            return Err(("runtimes.handlers".into(), "at least one handler is needed".into()));
        }
        if !r.handlers.contains_key(&r.default) {
            return Err((
                "runtimes.default".into(),
                format!("{:?} is not one of runtimes.handlers ({})", r.default, names(r.handlers.keys())),
            ));
        }
        for (name, h) in &r.handlers {
            let key = format!("runtimes.handlers.{name}");
            if !is_handler_name(name) {
                return Err((
                    key,
                    "a handler name is a DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
                        .into(),
                ));
            }
            if h.runtime.trim().is_empty() {
                return Err((format!("{key}.runtime"), "must name the runtime binary (a name on PATH or an absolute path)".into()));
            }
            if h.runtime.contains('/') && !h.runtime.starts_with('/') {
                return Err((format!("{key}.runtime"), format!("{:?}: a path must be absolute", h.runtime)));
            }
            if h.runtime.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err((format!("{key}.runtime"), format!("{:?}: no whitespace or control characters", h.runtime)));
            }
            for (i, a) in h.args.iter().enumerate() {
                if a.contains('\0') {
                    return Err((format!("{key}.args[{i}]"), "must not contain NUL".into()));
                }
            }
            for (k, v) in &h.env {
                let name_ok = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !name_ok || v.contains('\0') {
                    return Err((format!("{key}.env.{k}"), "an environment variable name is letters, digits and _ (not starting with a digit); no NUL in values".into()));
                }
            }
        }
        let gc = &self.images.gc;
        if gc.high_threshold_percent > 100 {
            return Err(("images.gc.highThresholdPercent".into(), format!("{} is more than 100", gc.high_threshold_percent)));
        }
        if gc.low_threshold_percent >= gc.high_threshold_percent {
            return Err((
                "images.gc.lowThresholdPercent".into(),
                format!(
                    "{} must be below highThresholdPercent ({})",
                    gc.low_threshold_percent, gc.high_threshold_percent
                ),
            ));
        }
        if self.controller.concurrency == 0 || self.controller.concurrency > 256 {
            return Err((
                "controller.concurrency".into(),
                format!("{} is not between 1 and 256", self.controller.concurrency),
            ));
        }
        if self.controller.resync_period < Duration::from_secs(1)
            || self.controller.resync_period > Duration::from_secs(24 * 3600)
        {
            return Err((
                "controller.resyncPeriod".into(),
                "must be between 1s and 24h".into(),
            ));
        }
        for (key, p) in [
            ("registry.configPath", &self.registry.config_path),
            ("registry.authFile", &self.registry.auth_file),
        ] {
            if let Some(p) = p.as_ref().filter(|p| !p.is_absolute()) {
                return Err((
                    key.into(),
                    format!(
                        "{}: must be an absolute path (a service's working directory is /)",
                        p.display()
                    ),
                ));
            }
        }
        let mut bridges: BTreeMap<String, &str> = BTreeMap::new();
        let mut subnets: Vec<(&str, (std::net::Ipv4Addr, u8))> = Vec::new();
        for (name, n) in &self.networks {
            let key = format!("networks.{name}");
            if !is_handler_name(name) || name == "none" || name == "host" {
                return Err((key, "a network name is a DNS label (at most 63 lowercase letters, digits and '-'), and not none or host".into()));
            }
            let bridge = n.bridge_name(name);
            if !is_interface_name(&bridge) {
                return Err((
                    format!("{key}.bridge"),
                    format!(
                        "{bridge:?}: an interface name is 1 to 15 letters, digits, '-', '_' or '.'"
                    ),
                ));
            }
            if let Some(other) = bridges.insert(bridge.clone(), name) {
                return Err((
                    format!("{key}.bridge"),
                    format!("bridge {bridge} is networks.{other}'s too"),
                ));
            }
            match &n.subnet {
                Some(s) => {
                    let cidr = parse_cidr(s).map_err(|m| (format!("{key}.subnet"), m))?;
                    if let Some((other, _)) = subnets.iter().find(|(_, c)| cidrs_overlap(*c, cidr))
                    {
                        return Err((
                            format!("{key}.subnet"),
                            format!("{s} overlaps networks.{other}.subnet"),
                        ));
                    }
                    subnets.push((name, cidr));
                }
                None if name != DEFAULT_NETWORK => {
                    return Err((
                        format!("{key}.subnet"),
                        "required (an IPv4 CIDR, e.g. 10.89.0.0/24); only bridge has a default"
                            .into(),
                    ));
                }
                None => {}
            }
        }
        if self.log.level.trim().is_empty() {
            return Err((
                "log.level".into(),
                "must not be empty (e.g. info, debug, steward_controller=debug,info)".into(),
            ));
        }
        if self.store.compaction_window < Duration::from_secs(1)
            || self.store.compaction_window > Duration::from_secs(30 * 24 * 3600)
        {
            return Err((
                "store.compactionWindow".into(),
                "must be between 1s and 720h (30 days)".into(),
            ));
        }
        Ok(())
    }

    /// Every network, `bridge` (the default) included.
    pub fn networks(&self) -> BTreeMap<String, Network> {
        let mut n = self.networks.clone();
        n.entry(DEFAULT_NETWORK.to_string()).or_default();
        n
    }

    /// `sha256:<hex>` of the configuration's canonical JSON: two files that
    /// mean the same have the same digest.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("sha256:{}", hex::encode(Sha256::digest(&json)))
    }

    /// The keys that differ from `old` and apply only after a restart.
    pub fn restart_only_changes(&self, old: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.controller.concurrency != old.controller.concurrency {
            out.push("controller.concurrency");
        }
        if self.controller.resync_period != old.controller.resync_period {
            out.push("controller.resyncPeriod");
        }
        if self.log != old.log {
            out.push("log");
        }
        if self.networks() != old.networks() {
            out.push("networks");
        }
        if self.store != old.store {
            out.push("store.compactionWindow");
        }
        out
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    it.map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// A DNS-1123 label, as Kubernetes' RuntimeClass handler names.
pub fn is_handler_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        for text in ["", "\n# nothing\n", "{}"] {
            let c = Config::parse(text, "c.yaml").unwrap();
            assert_eq!(c, Config::default());
        }
        let c = Config::default();
        assert_eq!(c.runtimes.default, "runc");
        assert_eq!((c.images.gc.high_threshold_percent, c.images.gc.low_threshold_percent), (85, 80));
        assert_eq!(c.controller.concurrency, 4);
        assert_eq!(c.controller.resync_period, Duration::from_secs(300));
        assert_eq!(c.store.compaction_window, Duration::from_secs(600));
    }

    #[test]
    fn a_full_file_parses() {
        let text = r#"
registry:
  configPath: /etc/steward/certs.d
  authFile: /root/.docker/config.json
runtimes:
  default: crun
  handlers:
    crun: {runtime: crun}
    runc-debug: {runtime: /usr/sbin/runc, args: ["--debug"], env: {RUNC_X: "1"}}
images:
  gc: {highThresholdPercent: 90, lowThresholdPercent: 70}
controller: {concurrency: 8, resyncPeriod: 10m}
log: {level: debug, format: json}
store: {compactionWindow: 1h}
"#;
        let c = Config::parse(text, "c.yaml").unwrap();
        assert_eq!(c.registry.config_path.as_deref(), Some(Path::new("/etc/steward/certs.d")));
        assert_eq!(c.runtimes.handlers["runc-debug"].args, ["--debug"]);
        assert_eq!(c.controller.resync_period, Duration::from_secs(600));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.store.compaction_window, Duration::from_secs(3600));
        // The digest is of the meaning, not the text.
        let same = Config::parse(&text.replace("{concurrency: 8, resyncPeriod: 10m}", "{resyncPeriod: 600s, concurrency: 8}"), "d").unwrap();
        assert_eq!(c.digest(), same.digest());
        assert_ne!(c.digest(), Config::default().digest());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_path() {
        let cases = [
            ("registry:\n  configPat: /x\n", "registry.configPat", "unknown field `configPat`, expected `configPath` or `authFile`"),
            ("runtimes:\n  handlers:\n    runc: {runtim: runc}\n", "runtimes.handlers.runc.runtim", "unknown field `runtim`"),
            ("controller: {concurrency: many}\n", "controller.concurrency", "invalid type"),
            ("controller: {resyncPeriod: 5 minutes}\n", "controller.resyncPeriod", "invalid duration"),
            ("log: {format: xml}\n", "log.format", "unknown variant `xml`"),
            ("imagez: {}\n", "imagez", "unknown field `imagez`"),
            ("runtimes: {default: kata}\n", "runtimes.default", "\"kata\" is not one of runtimes.handlers (crun, runc)"),
            ("runtimes: {handlers: {Bad_Name: {runtime: runc}}, default: Bad_Name}\n", "runtimes.handlers.Bad_Name", "DNS label"),
            ("runtimes: {handlers: {x: {runtime: bin/runc}}, default: x}\n", "runtimes.handlers.x.runtime", "must be absolute"),
            ("images: {gc: {highThresholdPercent: 50}}\n", "images.gc.lowThresholdPercent", "must be below"),
            ("images: {gc: {highThresholdPercent: 101, lowThresholdPercent: 1}}\n", "images.gc.highThresholdPercent", "more than 100"),
            ("controller: {concurrency: 0}\n", "controller.concurrency", "not between"),
            ("controller: {resyncPeriod: 1000000000000h}\n", "controller.resyncPeriod", "between 1s and 24h"),
            ("store: {compactionWindow: 18446744073709551615}\n", "store.compactionWindow", "between 1s and 720h"),
            ("registry: {authFile: docker/config.json}\n", "registry.authFile", "must be an absolute path"),
            ("- a\n- b\n", ".", "invalid type"),
            (&format!("runtimes: {{handlers: {{x: {{runtime: runc, args: {}a{}}}}}}}\n", "[".repeat(200), "]".repeat(200)), ".", "nests more than"),
        ];
        for (text, key, msg) in cases {
            let e = Config::parse(text, "c.yaml").expect_err(text);
            assert_eq!(e.key(), key, "{text}: {e}");
            assert!(e.to_string().contains(msg), "{text}: {e}");
            assert!(e.to_string().starts_with("c.yaml: "), "{e}");
        }
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let d = std::env::temp_dir().join(format!("steward-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for p in [Path::new("/dev/zero"), d.as_path()] {
            let e = Config::load(p).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        let big = d.join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(Config::load(&big), Err(ConfigError::TooLarge { .. })));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn restart_only_keys_are_told_apart() {
        let old = Config::default();
        let mut new = old.clone();
        new.runtimes.handlers.insert("x".into(), Handler { runtime: "runc".into(), ..Default::default() });
        new.images.gc.high_threshold_percent = 95;
        assert!(new.restart_only_changes(&old).is_empty());
        new.controller.concurrency = 9;
        new.log.level = "debug".into();
        assert_eq!(new.restart_only_changes(&old), ["controller.concurrency", "log"]);
    }
}
