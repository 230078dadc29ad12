//! Where and how to reach a registry, from containerd's own registry host
//! directory (`registry.configPath`, default `DATA/certs.d`), so existing
//! files work unchanged:
//!
//! - `<host[:port]>/hosts.toml` (or `_default/hosts.toml`): `server` (the
//!   upstream, default `https://<host>`), `[host."https://mirror"]` entries
//!   tried first in file order, each with `capabilities` (`pull`,
//!   `resolve`), `ca` (a file or a list), `skip_verify`, `client` (a
//!   `cert` file with its key inside, a `[cert, key]` pair, or a list of
//!   them) and `override_path`; the same keys at the top level apply to the
//!   server. Relative paths are relative to the host's directory.
//! - Without a `hosts.toml`, Docker's certs.d layout: `*.crt` files are CAs
//!   of the server, `NAME.cert` with `NAME.key` a client certificate.
//!
//! A host is spoken to over https unless its entry says `http://`, or it is
//! a loopback host without any TLS file (a local registry).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// How to verify and present TLS to one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tls {
    /// Extra CAs (besides the system's roots).
    pub cas: Vec<PathBuf>,
    pub skip_verify: bool,
    /// Client certificate and key files (the key may be inside the cert file).
    pub client: Option<(PathBuf, Option<PathBuf>)>,
}

/// One place to fetch a registry's content from: a mirror, or the registry
/// itself (the upstream).
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// `https://host[:port]`, or with a path when `override_path` is set
    /// (then the API lives there instead of at `/v2`).
    pub url: String,
    /// `host[:port]`: whose credentials are used.
    pub host: String,
    pub pull: bool,
    pub resolve: bool,
    pub tls: Tls,
    pub override_path: bool,
    /// The registry itself, not a mirror.
    pub upstream: bool,
    /// Where this endpoint was configured (for messages), if anywhere.
    pub source: Option<PathBuf>,
    /// Extra request headers (`header` in hosts.toml).
    pub headers: Vec<(String, String)>,
}

impl Endpoint {
    /// The base of the Docker Registry HTTP API v2 for `repository`.
    pub fn api_base(&self, repository: &str) -> String {
        let base = self.url.trim_end_matches('/');
        // As containerd: `/v2` is added unless the path ends in it already.
        if self.override_path || base.ends_with("/v2") {
            format!("{base}/{repository}")
        } else {
            format!("{base}/v2/{repository}")
        }
    }

    pub fn is_https(&self) -> bool {
        self.url.starts_with("https://")
    }
}

/// The host name's loopback test, as containerd's `IsLocalhost`:
/// `localhost`, or a loopback IP address (any port). A DNS name that
/// merely starts with `127.` is not.
pub fn is_loopback_host(host: &str) -> bool {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default().to_string()
    } else {
        host.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_else(|| host.to_string())
    };
    h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host a registry name is served from (Docker Hub's API is not on
/// `docker.io`).
pub fn default_server_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// The endpoints for `registry`, mirrors first, the upstream last.
pub fn endpoints(config_path: &Path, registry: &str) -> Result<Vec<Endpoint>, String> {
    let dir = [config_path.join(dir_name(registry)), config_path.join("_default")].into_iter().find(|d| d.is_dir());
    let Some(dir) = dir else {
        return Ok(vec![default_upstream(registry, Tls::default(), None)]);
    };
    let hosts_toml = dir.join("hosts.toml");
    if hosts_toml.is_file() {
        return from_hosts_toml(&hosts_toml, &dir, registry);
    }
    let tls = docker_certs_d(&dir)?;
    Ok(vec![default_upstream(registry, tls, Some(dir))])
}

/// containerd's directory name for a host: `host:port` as is (containerd
/// also accepts it; Docker's certs.d uses the same).
fn dir_name(registry: &str) -> &str {
    registry
}

fn default_upstream(registry: &str, tls: Tls, source: Option<PathBuf>) -> Endpoint {
    let host = default_server_host(registry).to_string();
    let has_tls_files = !tls.cas.is_empty() || tls.client.is_some() || tls.skip_verify;
    let scheme = if is_loopback_host(&host) && !has_tls_files { "http" } else { "https" };
    Endpoint {
        url: format!("{scheme}://{host}"),
        host,
        pull: true,
        resolve: true,
        tls,
        override_path: false,
        upstream: true,
        source,
        headers: Vec::new(),
    }
}

/// Docker's certs.d: `*.crt` CAs, `X.cert` + `X.key` client pairs.
fn docker_certs_d(dir: &Path) -> Result<Tls, String> {
    let mut tls = Tls::default();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: BTreeSet<PathBuf> = BTreeSet::new();
    for e in entries.flatten() {
        names.insert(e.path());
    }
    for p in &names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => tls.cas.push(p.clone()),
            Some("cert") => {
                let key = p.with_extension("key");
                if !names.contains(&key) {
                    return Err(format!("{}: client certificate without its key {}", p.display(), key.display()));
                }
                if tls.client.is_none() {
                    tls.client = Some((p.clone(), Some(key)));
                }
            }
            _ => {}
        }
    }
    Ok(tls)
}

fn from_hosts_toml(file: &Path, dir: &Path, registry: &str) -> Result<Vec<Endpoint>, String> {
    let at = |key: &str, m: String| format!("{}: {key}: {m}", file.display());
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| format!("{}: {}", file.display(), e.message()))?;
    for key in doc.keys() {
        if !matches!(key.as_str(), "server" | "host" | "capabilities" | "ca" | "skip_verify" | "client" | "override_path" | "header") {
            // containerd ignores keys it does not know (dial_timeout, newer
            // ones): so does steward, saying so.
            tracing::warn!(file = %file.display(), key, "hosts.toml: key not used by steward");
        }
    }
    let mut out = Vec::new();
    if let Some(hosts) = doc.get("host") {
        let hosts = hosts.as_table().ok_or_else(|| at("host", "must be a table of [host.\"URL\"] entries".into()))?;
        for (url, v) in hosts {
            let key = format!("host.\"{url}\"");
            let t = v.as_table().ok_or_else(|| at(&key, "must be a table".into()))?;
            out.push(endpoint(url, t, dir, false, &|k, m| at(&format!("{key}.{k}"), m)).map_err(|e| e.to_string())?);
        }
    }
    let server = match doc.get("server") {
        Some(v) => v.as_str().ok_or_else(|| at("server", "must be a URL string".into()))?.to_string(),
        None => format!("https://{}", default_server_host(registry)),
    };
    out.push(endpoint(&server, &doc, dir, true, &|k, m| at(k, m))?);
    for e in &mut out {
        e.source = Some(file.to_path_buf());
    }
    Ok(out)
}

fn endpoint(url: &str, t: &toml::Table, dir: &Path, upstream: bool, at: &dyn Fn(&str, String) -> String) -> Result<Endpoint, String> {
    // As containerd: no scheme means https.
    let owned;
    let url = if url.contains("://") {
        url
    } else {
        owned = format!("https://{url}");
        owned.as_str()
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| at("url", format!("{url:?}: needs a scheme (https:// or http://)")))?;
    if scheme != "https" && scheme != "http" {
        return Err(at("url", format!("{url:?}: the scheme must be https or http")));
    }
    let host = rest.split('/').next().unwrap_or_default().to_string();
    if host.is_empty() {
        return Err(at("url", format!("{url:?}: no host")));
    }
    let path = |v: &str| {
        let p = PathBuf::from(v);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    if !upstream {
        for k in t.keys() {
            if !matches!(k.as_str(), "capabilities" | "ca" | "skip_verify" | "client" | "override_path" | "header") {
                tracing::warn!(endpoint = url, key = %k, "hosts.toml: key not used by steward");
            }
        }
    }
    let mut e = Endpoint {
        url: url.trim_end_matches('/').to_string(),
        host,
        pull: true,
        resolve: true,
        tls: Tls::default(),
        override_path: false,
        upstream,
        source: None,
        headers: Vec::new(),
    };
    if let Some(v) = t.get("capabilities") {
        let caps = v.as_array().ok_or_else(|| at("capabilities", "must be a list such as [\"pull\", \"resolve\"]".into()))?;
        let caps: Vec<String> = caps.iter().filter_map(|c| c.as_str()).map(str::to_ascii_lowercase).collect();
        for c in &caps {
            if !matches!(c.as_str(), "pull" | "resolve" | "push") {
                return Err(at("capabilities", format!("{c:?} is not pull, resolve or push")));
            }
        }
        e.pull = caps.iter().any(|c| c == "pull");
        e.resolve = caps.iter().any(|c| c == "resolve");
    }
    match t.get("ca") {
        None => {}
        Some(toml::Value::String(s)) => e.tls.cas.push(path(s)),
        Some(toml::Value::Array(a)) => {
            for v in a {
                e.tls.cas.push(path(v.as_str().ok_or_else(|| at("ca", "must be a file or a list of files".into()))?));
            }
        }
        Some(_) => return Err(at("ca", "must be a file or a list of files".into())),
    }
    if let Some(v) = t.get("skip_verify") {
        e.tls.skip_verify = v.as_bool().ok_or_else(|| at("skip_verify", "must be true or false".into()))?;
    }
    // containerd's forms: "cert" (its key inside), ["cert", "key"], or a
    // list of those: a string in the list is a cert with its key inside;
    // an empty key means the same file.
    let bad_client = || at("client", "must be a file, a [cert, key] pair, or a list of them".into());
    let pair = |cert: &str, key: Option<&str>| (path(cert), key.filter(|k| !k.is_empty()).map(path));
    let mut clients = Vec::new();
    match t.get("client") {
        None => {}
        Some(toml::Value::String(c)) => clients.push(pair(c, None)),
        Some(toml::Value::Array(a)) => {
            if let [toml::Value::String(c), toml::Value::String(k)] = a.as_slice() {
                // A bare [cert, key] pair, unless both are certs with keys
                // inside (containerd reads a list of strings as such).
                if k.ends_with(".key") {
                    clients.push(pair(c, Some(k)));
                } else {
                    clients.push(pair(c, None));
                    clients.push(pair(k, None));
                }
            } else {
                for v in a {
                    match v {
                        toml::Value::String(c) => clients.push(pair(c, None)),
                        toml::Value::Array(p) => match p.as_slice() {
                            [toml::Value::String(c), toml::Value::String(k)] => clients.push(pair(c, Some(k))),
                            [toml::Value::String(c)] => clients.push(pair(c, None)),
                            _ => return Err(bad_client()),
                        },
                        _ => return Err(bad_client()),
                    }
                }
            }
        }
        Some(_) => return Err(bad_client()),
    }
    if clients.len() > 1 {
        tracing::warn!(endpoint = url, "hosts.toml: several client certificates; steward presents the first");
    }
    e.tls.client = clients.into_iter().next();
    if let Some(v) = t.get("header") {
        let bad = || at("header", "must be a table of NAME = \"value\" or [\"values\"]".into());
        for (name, v) in v.as_table().ok_or_else(bad)? {
            match v {
                toml::Value::String(s) => e.headers.push((name.clone(), s.clone())),
                toml::Value::Array(a) => {
                    for x in a {
                        e.headers.push((name.clone(), x.as_str().ok_or_else(bad)?.to_string()));
                    }
                }
                _ => return Err(bad()),
            }
        }
    }
    if let Some(v) = t.get("override_path") {
        e.override_path = v.as_bool().ok_or_else(|| at("override_path", "must be true or false".into()))?;
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_configuration_loopback_is_http_and_the_rest_https() {
        let d = tempfile::tempdir().unwrap();
        let e = endpoints(d.path(), "127.0.0.1:5000").unwrap();
        assert_eq!((e.len(), e[0].url.as_str(), e[0].upstream), (1, "http://127.0.0.1:5000", true));
        let e = endpoints(d.path(), "docker.io").unwrap();
        assert_eq!(e[0].url, "https://registry-1.docker.io");
        assert_eq!(e[0].api_base("library/busybox"), "https://registry-1.docker.io/v2/library/busybox");
        assert_eq!(endpoints(&d.path().join("missing"), "ghcr.io").unwrap()[0].url, "https://ghcr.io");
    }

    #[test]
    fn docker_certs_d_makes_a_loopback_registry_https() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("localhost:5443");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(h.join("ca.crt"), "x").unwrap();
        std::fs::write(h.join("client.cert"), "x").unwrap();
        std::fs::write(h.join("client.key"), "x").unwrap();
        let e = &endpoints(d.path(), "localhost:5443").unwrap()[0];
        assert_eq!(e.url, "https://localhost:5443");
        assert_eq!(e.tls.cas, [h.join("ca.crt")]);
        assert_eq!(e.tls.client, Some((h.join("client.cert"), Some(h.join("client.key")))));
        std::fs::remove_file(h.join("client.key")).unwrap();
        assert!(endpoints(d.path(), "localhost:5443").unwrap_err().contains("without its key"));
    }

    #[test]
    fn hosts_toml_mirrors_come_first_in_file_order() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("docker.io");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(
            h.join("hosts.toml"),
            r#"
server = "https://registry-1.docker.io"

[host."https://z-mirror.example:5000"]
  capabilities = ["pull", "resolve"]
  ca = "mirror-ca.pem"
  client = [["/etc/c.cert", "/etc/c.key"], "/etc/other.pem"]

[host."http://127.0.0.1:5000"]
  capabilities = ["Pull"]
  skip_verify = true
  dial_timeout = "3s"

[host."mirror.example/v2"]
  client = ["/etc/a.pem", "/etc/b.pem"]

[host."https://a-mirror.example/v2/proxy"]
  override_path = true
  header = { x-custom = "1", x-multi = ["a", "b"] }
"#,
        )
        .unwrap();
        let e = endpoints(d.path(), "docker.io").unwrap();
        let urls: Vec<&str> = e.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(
            urls,
            ["https://z-mirror.example:5000", "http://127.0.0.1:5000", "https://mirror.example/v2", "https://a-mirror.example/v2/proxy", "https://registry-1.docker.io"]
        );
        assert_eq!(e[2].api_base("library/busybox"), "https://mirror.example/v2/library/busybox");
        assert_eq!(e[2].tls.client, Some((PathBuf::from("/etc/a.pem"), None)));
        assert_eq!(e[0].tls.cas, [h.join("mirror-ca.pem")]);
        assert_eq!(e[0].tls.client, Some((PathBuf::from("/etc/c.cert"), Some(PathBuf::from("/etc/c.key")))));
        assert_eq!(e[0].host, "z-mirror.example:5000");
        assert!(e[1].pull && !e[1].resolve && e[1].tls.skip_verify);
        assert_eq!(e[3].api_base("library/busybox"), "https://a-mirror.example/v2/proxy/library/busybox");
        assert_eq!(e[3].headers, [("x-custom".into(), "1".into()), ("x-multi".into(), "a".into()), ("x-multi".into(), "b".into())]);
        assert!(e[4].upstream && !e[0].upstream);
    }

    #[test]
    fn hosts_toml_mistakes_name_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("r.example");
        std::fs::create_dir_all(&h).unwrap();
        for (text, want) in [
            ("[host.\"https://m\"]\ncapabilities = [\"pul\"]\n", "host.\"https://m\".capabilities: \"pul\" is not"),
            ("skip_verify = \"yes\"\n", "skip_verify: must be true or false"),
            ("server = [\n", "hosts.toml"),
        ] {
            std::fs::write(h.join("hosts.toml"), text).unwrap();
            let e = endpoints(d.path(), "r.example").unwrap_err();
            assert!(e.contains(want) && e.contains("hosts.toml"), "{text}: {e}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1:5000", "localhost", "localhost:5000", "[::1]:5000", "127.1.2.3"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["ghcr.io", "10.0.0.1:5000", "localhost.example.com", "[::2]:1", "127.evil.example", "127.0.0.1.nip.io:5000"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
