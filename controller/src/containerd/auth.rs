//! Registry credentials from Docker's `config.json` (`registry.authFile`;
//! default `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`),
//! read afresh for every pull so a `docker login` applies at once:
//! `auths` entries (`auth` = base64 `user:password`, or `username` and
//! `password`, or an `identitytoken`), `credHelpers` (per host) and
//! `credsStore` (the default helper), which run
//! `docker-credential-NAME get` as Docker does.
//!
//! Secrets never reach a message or a log: [`Credentials`] prints as its
//! user name and where it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// Docker Hub's credentials are stored under this key.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    /// The password, or the identity (refresh) token when `identity_token`.
    secret: String,
    pub identity_token: bool,
    /// Where they came from, e.g. `auths["ghcr.io"] in /root/.docker/config.json`.
    pub source: String,
}

impl Credentials {
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// `Authorization: Basic ...` for these credentials.
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.secret);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, source: {:?}, secret: <redacted> }}", self.username, self.source)
    }
}

/// The credentials file steward reads: `configured`, else Docker's default.
pub fn auth_file(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".docker/config.json"))
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// What was looked up for a host, for messages when the registry says no.
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    pub credentials: Option<Credentials>,
    /// Why there are none (no file, no entry, a helper that failed).
    pub none_because: String,
}

/// `host` as Docker's config keys name it: the hostname of a key such as
/// `https://index.docker.io/v1/` or `ghcr.io`.
fn key_host(key: &str) -> &str {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn is_docker_hub(host: &str) -> bool {
    matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

fn same_host(key: &str, host: &str) -> bool {
    let k = key_host(key);
    k == host || (is_docker_hub(k) && is_docker_hub(host))
}

/// The credentials for registry host `host` (`host[:port]`; `docker.io`
/// for Docker Hub) from `file`.
pub async fn lookup(file: Option<&Path>, host: &str) -> Lookup {
    lookup_in(file, host, None).await
}

/// [`lookup`], finding credential helpers on `path` instead of `$PATH`.
async fn lookup_in(file: Option<&Path>, host: &str, path: Option<&std::ffi::OsStr>) -> Lookup {
    let Some(file) = file else {
        return Lookup { credentials: None, none_because: "no credentials file (neither registry.authFile, $DOCKER_CONFIG nor $HOME is set)".into() };
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Lookup { credentials: None, none_because: format!("no credentials file {}", file.display()) };
        }
        Err(e) => return Lookup { credentials: None, none_because: format!("cannot read {}: {e}", file.display()) },
    };
    let cfg: DockerConfig = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(e) => return Lookup { credentials: None, none_because: format!("{} is not a Docker config.json: {e}", file.display()) },
    };
    let helper = cfg
        .cred_helpers
        .iter()
        .find(|(k, _)| same_host(k, host))
        .map(|(_, v)| (v.clone(), "credHelpers"))
        .or_else(|| cfg.creds_store.clone().filter(|s| !s.is_empty()).map(|s| (s, "credsStore")));
    if let Some((name, from)) = helper {
        let server = if is_docker_hub(host) { DOCKER_HUB_KEY.to_string() } else { host.to_string() };
        return match run_helper(&name, &server, path).await {
            Ok(Some((user, secret))) => Lookup {
                credentials: Some(Credentials {
                    identity_token: user == "<token>",
                    username: user,
                    secret,
                    source: format!("credential helper docker-credential-{name} ({from} in {})", file.display()),
                }),
                none_because: String::new(),
            },
            Ok(None) => Lookup {
                credentials: None,
                none_because: format!("credential helper docker-credential-{name} ({from} in {}) has none for {server}", file.display()),
            },
            Err(e) => Lookup {
                credentials: None,
                none_because: format!("credential helper docker-credential-{name} ({from} in {}): {e}", file.display()),
            },
        };
    }
    // Exact key first, then any key naming the same host.
    let entry = cfg.auths.get(host).map(|e| (host.to_string(), e)).or_else(|| {
        cfg.auths.iter().find(|(k, _)| same_host(k, host)).map(|(k, e)| (k.clone(), e))
    });
    let Some((key, entry)) = entry else {
        return Lookup { credentials: None, none_because: format!("no entry for {host} in {} (auths)", file.display()) };
    };
    let source = format!("auths[{key:?}] in {}", file.display());
    match decode_entry(entry) {
        Ok(Some((username, secret, identity_token))) => {
            Lookup { credentials: Some(Credentials { username, secret, identity_token, source }), none_because: String::new() }
        }
        Ok(None) => Lookup { credentials: None, none_because: format!("{source} holds no credentials") },
        Err(e) => Lookup { credentials: None, none_because: format!("{source}: {e}") },
    }
}

/// (user, secret, is identity token).
fn decode_entry(e: &AuthEntry) -> Result<Option<(String, String, bool)>, String> {
    if let Some(t) = e.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        let user = e.username.clone().unwrap_or_else(|| "<token>".into());
        return Ok(Some((user, t.to_string(), true)));
    }
    if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|_| "`auth` is not base64 of user:password".to_string())?;
        let raw = String::from_utf8(raw).map_err(|_| "`auth` is not base64 of user:password".to_string())?;
        let (u, p) = raw.split_once(':').ok_or_else(|| "`auth` is not base64 of user:password".to_string())?;
        return Ok(Some((u.to_string(), p.to_string(), false)));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some((u.clone(), p.clone(), false))),
        _ => Ok(None),
    }
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// `docker-credential-NAME get` with the server on stdin: Some((user,
/// secret)), None when it has nothing for it.
async fn run_helper(name: &str, server: &str, path: Option<&std::ffi::OsStr>) -> Result<Option<(String, String)>, String> {
    use tokio::io::AsyncWriteExt;
    if name.contains('/') || name.chars().any(char::is_whitespace) {
        return Err(format!("{name:?} is not a helper name"));
    }
    let program = format!("docker-credential-{name}");
    let mut cmd = tokio::process::Command::new(&program);
    if let Some(p) = path {
        // The program is looked up on the child's PATH when it is set.
        cmd.env("PATH", p);
    }
    let mut child = cmd
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| if e.kind() == std::io::ErrorKind::NotFound { format!("{program} is not installed (not on PATH)") } else { format!("{program}: {e}") })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes()).await;
    }
    let out = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("{program} did not answer within {}s", HELPER_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{program}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Docker's helpers say this on stdout when they have nothing.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        // Only its stderr's first line: a broken helper's stdout may hold
        // the very secret (this message reaches the Container's status).
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said: String = stderr.lines().next().unwrap_or_default().chars().take(200).collect();
        return Err(format!("{program} failed ({}): {}", out.status, said.trim()));
    }
    let reply: HelperReply = serde_json::from_str(stdout.trim()).map_err(|e| format!("{program}: unreadable answer: {e}"))?;
    if reply.username.is_empty() && reply.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some((reply.username, reply.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let f = dir.join("config.json");
        std::fs::write(&f, text).unwrap();
        f
    }

    #[tokio::test]
    async fn auths_entries_match_their_host() {
        let d = tempfile::tempdir().unwrap();
        let alice = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let f = write(
            d.path(),
            &format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{alice}"}},
                   "127.0.0.1:5443": {{"username": "bob", "password": "pw"}},
                   "https://ghcr.io": {{"identitytoken": "refresh-me"}}}}}}"#
            ),
        );
        let hub = lookup(Some(&f), "docker.io").await.credentials.unwrap();
        assert_eq!((hub.username.as_str(), hub.secret(), hub.identity_token), ("alice", "s3cret", false));
        assert!(hub.source.contains("index.docker.io") && hub.source.contains("config.json"), "{}", hub.source);
        assert_eq!(hub.basic(), format!("Basic {alice}"));
        let local = lookup(Some(&f), "127.0.0.1:5443").await.credentials.unwrap();
        assert_eq!((local.username.as_str(), local.secret()), ("bob", "pw"));
        let gh = lookup(Some(&f), "ghcr.io").await.credentials.unwrap();
        assert!(gh.identity_token && gh.secret() == "refresh-me");
        let none = lookup(Some(&f), "quay.io").await;
        assert!(none.credentials.is_none() && none.none_because.contains("no entry for quay.io"), "{}", none.none_because);
        // The secret never prints.
        assert!(!format!("{hub:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn missing_and_broken_files_say_so() {
        let d = tempfile::tempdir().unwrap();
        let l = lookup(Some(&d.path().join("nope.json")), "x.io").await;
        assert!(l.none_because.contains("no credentials file"), "{}", l.none_because);
        let f = write(d.path(), "{not json");
        assert!(lookup(Some(&f), "x.io").await.none_because.contains("not a Docker config.json"));
        let f = write(d.path(), r#"{"auths": {"x.io": {"auth": "!!!"}}}"#);
        assert!(lookup(Some(&f), "x.io").await.none_because.contains("not base64"));
    }

    #[tokio::test]
    async fn credential_helpers_run_as_docker_runs_them() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // A helper that knows one server, and says it has none for others.
        let helper = bin.join("docker-credential-test");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread s\nif [ \"$s\" = reg.example ]; then echo '{\"ServerURL\":\"reg.example\",\"Username\":\"carol\",\"Secret\":\"pw2\"}'; \
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::ffi::OsString::from(format!("{}:/usr/bin:/bin", bin.display()));
        let path = Some(path.as_os_str());
        let f = write(d.path(), r#"{"credHelpers": {"reg.example": "test"}, "credsStore": "absent"}"#);
        let c = lookup_in(Some(&f), "reg.example", path).await.credentials.unwrap();
        assert_eq!((c.username.as_str(), c.secret()), ("carol", "pw2"));
        assert!(c.source.contains("docker-credential-test (credHelpers"), "{}", c.source);
        // Other hosts go to credsStore, which is not installed.
        let l = lookup_in(Some(&f), "other.example", path).await;
        assert!(l.none_because.contains("docker-credential-absent is not installed"), "{}", l.none_because);
        let f = write(d.path(), r#"{"credsStore": "test"}"#);
        let l = lookup_in(Some(&f), "other.example", path).await;
        assert!(l.credentials.is_none() && l.none_because.contains("has none for other.example"), "{}", l.none_because);
    }
}
