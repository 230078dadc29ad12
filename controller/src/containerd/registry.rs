//! A small Docker Registry HTTP API v2 client: image references, manifests
//! (OCI and Docker media types), blobs, mirrors and TLS as containerd's
//! `hosts.toml` configures them (see [`hosts`]), and authentication: the
//! token flow (Bearer challenge, token service) and Basic, with credentials
//! from Docker's `config.json` (see [`auth`]).
//!
//! A registry is spoken to over https (rustls, the system's roots plus the
//! CAs configured for it) unless it is a loopback host without TLS files,
//! or configured as `http://`; a certificate failure is reported as one,
//! never retried over http.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use sha2::{Digest, Sha256};

use super::auth;
use super::hosts::{self, Endpoint, Tls};
use super::image::{self, OciDescriptor};
use super::store::{verify, BlobSource};

/// Manifests, configs and tokens are small: the whole request gets this
/// deadline. Layers are streamed with a per-read timeout instead (the
/// client's `read_timeout`), so a slow but moving download is not cut.
const SMALL_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// `registry/repository[:tag][@digest]`, normalised as Docker does:
/// `busybox` = `docker.io/library/busybox:latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, String> {
        let s = s.trim();
        let bad = |why: &str| format!("invalid image reference {s:?}: {why}");
        if s.is_empty() || s.chars().any(|c| c.is_whitespace()) {
            return Err(format!("invalid image reference {s:?}"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        if let Some(d) = &digest {
            let hex = d.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(bad(&format!("bad digest {d:?} (sha256: and 64 lowercase hex digits)")));
            }
        }
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => (first.to_string(), path),
            _ => ("docker.io".to_string(), name),
        };
        // Docker Hub's names: index.docker.io is docker.io, and its
        // official images live under library/.
        let registry = if registry == "index.docker.io" { "docker.io".to_string() } else { registry };
        let repository = if registry == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path.to_string() };
        // Docker's grammar: a domain (host[:port]), path components of
        // lowercase letters and digits with separators, a tag of at most
        // 128 word characters, dots and dashes.
        let domain_ok = registry.split(':').next().is_some_and(|h| {
            !h.is_empty() && h.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-'))
        }) && registry.split_once(':').is_none_or(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !domain_ok {
            return Err(bad(&format!("bad registry {registry:?}")));
        }
        let component_ok = |c: &str| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
        };
        if repository.is_empty() || !repository.split('/').all(component_ok) {
            return Err(bad(&format!("bad repository {repository:?} (lowercase letters, digits and . _ - between /)")));
        }
        if let Some(t) = &tag {
            let b = t.as_bytes();
            if b.is_empty() || b.len() > 128 || !(b[0].is_ascii_alphanumeric() || b[0] == b'_') || !b.iter().all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-')) {
                return Err(bad(&format!("bad tag {t:?}")));
            }
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The normalised name, used as the containerd image record name.
    pub fn full_name(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn object(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

/// Where registry configuration lives (the `registry` section of the
/// configuration file, resolved).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// containerd's registry host directory (`DATA/certs.d` by default).
    pub config_path: PathBuf,
    /// Docker's `config.json`, if any (see [`auth::auth_file`]).
    pub auth_file: Option<PathBuf>,
}

/// HTTP clients, one per TLS setup (system roots plus an endpoint's own CAs,
/// client certificate, skip_verify), built on first use and reused.
pub struct Clients {
    cache: Mutex<HashMap<String, reqwest::Client>>,
}

impl Default for Clients {
    fn default() -> Self {
        Clients { cache: Mutex::new(HashMap::new()) }
    }
}

impl Clients {
    /// The client for `tls`, its files read now (a changed CA file makes a
    /// new client; an unreadable one is an error naming it).
    pub fn client(&self, tls: &Tls) -> Result<reqwest::Client, String> {
        let read = |p: &Path, what: &str| std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()));
        let mut key = Sha256::new();
        key.update(format!("{}|", tls.skip_verify));
        let mut cas = Vec::new();
        for ca in &tls.cas {
            let pem = read(ca, "CA file")?;
            key.update(&pem);
            cas.push((ca, pem));
        }
        let identity = match &tls.client {
            Some((cert, k)) => {
                let mut pem = read(cert, "client certificate")?;
                if let Some(k) = k {
                    pem.push(b'\n');
                    pem.extend(read(k, "client key")?);
                }
                key.update(b"|client|");
                key.update(&pem);
                Some((cert, pem))
            }
            None => None,
        };
        let key = hex::encode(key.finalize());
        if let Some(c) = self.cache.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(c);
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(std::time::Duration::from_secs(10))
            // A registry that stops sending mid-body must not hold a pull for ever.
            .read_timeout(std::time::Duration::from_secs(60));
        for (path, pem) in cas {
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("CA file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("CA file {}: no PEM certificate in it", path.display()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some((path, pem)) = identity {
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("client certificate {}: {e} (a PEM certificate and its PEM private key)", path.display()))?;
            b = b.identity(id);
        }
        if tls.skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        let c = b.build().map_err(|e| format!("http client: {e}"))?;
        if let Ok(mut m) = self.cache.lock() {
            m.insert(key, c.clone());
        }
        Ok(c)
    }
}

/// One endpoint of a registry with its client and authentication state.
struct Remote {
    ep: Endpoint,
    http: reqwest::Client,
    /// Bearer token from the last challenge, or the Basic credentials'
    /// header once the registry asked for them.
    authorization: Mutex<Option<String>>,
    /// Credentials for this endpoint's host, looked up on the first
    /// challenge.
    creds: tokio::sync::OnceCell<auth::Lookup>,
}

/// A registry client for one image reference: its mirrors (in order) and
/// itself, over TLS as configured, with credentials from Docker's config.
pub struct Registry {
    reference: Reference,
    remotes: Vec<Remote>,
    /// The remote that resolved the reference (blobs come from it too).
    active: Mutex<usize>,
    settings: Settings,
    /// The deadline of small requests ([`SMALL_REQUEST_TIMEOUT`]).
    small_timeout: std::time::Duration,
}

/// The chain of causes of an error, outermost first.
fn causes(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e;
    while let Some(next) = cur.source() {
        out.push(next.to_string());
        cur = next;
    }
    out
}

/// The innermost cause of a reqwest error, which is where "connection
/// refused" lives.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        return match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::TimedOut => "connection timed out".into(),
            _ => io.to_string(),
        };
    }
    cur.to_string()
}

impl Registry {
    /// The remotes for `reference` as `settings` configure them.
    pub fn connect(clients: &Clients, settings: &Settings, reference: Reference) -> Result<Registry, String> {
        let endpoints = hosts::endpoints(&settings.config_path, &reference.registry)?;
        let mut remotes = Vec::new();
        for ep in endpoints {
            let http = clients.client(&ep.tls).map_err(|e| format!("registry {} ({}): {e}", reference.registry, ep.url))?;
            remotes.push(Remote { ep, http, authorization: Mutex::new(None), creds: tokio::sync::OnceCell::new() });
        }
        Ok(Registry { reference, remotes, active: Mutex::new(0), settings: settings.clone(), small_timeout: SMALL_REQUEST_TIMEOUT })
    }

    /// Another deadline for manifests, configs and tokens.
    pub fn with_small_timeout(mut self, d: std::time::Duration) -> Self {
        self.small_timeout = d;
        self
    }

    fn transport_error(&self, r: &Remote, e: reqwest::Error) -> String {
        let host = &r.ep.host;
        let chain = causes(&e);
        let tls = chain.iter().find(|c| c.contains("certificate") || c.contains("UnknownIssuer") || c.contains("CertNotValid"));
        if let Some(t) = tls {
            // The host's directory: where the endpoint was configured (a
            // hosts.toml's folder, or a certs.d folder), else the one to make.
            let configured_by_hosts_toml = r.ep.source.as_ref().is_some_and(|f| f.ends_with("hosts.toml"));
            let dir = match &r.ep.source {
                Some(f) if configured_by_hosts_toml => f.parent().map(Path::to_path_buf).unwrap_or_else(|| f.clone()),
                Some(d) => d.clone(),
                None => self.settings.config_path.join(&self.reference.registry),
            };
            let what = if t.contains("NotValidForName") {
                format!("the certificate of {host} is not valid for that name")
            } else if t.contains("Expired") || t.contains("NotValidYet") {
                format!("the certificate of {host} is expired or not yet valid")
            } else {
                format!("the certificate of {host} is not trusted")
            };
            let fix = if configured_by_hosts_toml {
                format!("name the CA that signed it with `ca` under the entry for {} in {}/hosts.toml", r.ep.url, dir.display())
            } else {
                format!("put the CA that signed it in {}/ca.crt (or configure the host in {}/hosts.toml)", dir.display(), dir.display())
            };
            return format!("TLS: {what} ({}): {fix}", t.trim());
        }
        if chain.iter().any(|c| c.contains("InvalidContentType") || c.contains("corrupt message") || c.contains("received corrupt")) {
            return format!("TLS handshake with {host} failed: it may speak plain http (then say `http://{host}` in hosts.toml)");
        }
        if e.is_connect() {
            format!("cannot reach registry {host}: {}", root_cause(&e))
        } else if e.is_timeout() {
            format!("registry {host} timed out")
        } else {
            format!("registry {host}: {}", root_cause(&e))
        }
    }

    /// The credentials for a remote, looked up once.
    async fn creds<'a>(&self, r: &'a Remote) -> &'a auth::Lookup {
        r.creds
            .get_or_init(|| async {
                // The host that asks for them gets its own credentials (never
                // the registry's when hosts.toml points elsewhere); Docker
                // Hub's names count as one.
                auth::lookup(self.settings.auth_file.as_deref(), &r.ep.host).await
            })
            .await
    }

    /// GET with the current authorization (if any), answering one
    /// challenge: Bearer (token service, with credentials when there are
    /// some) or Basic (credentials needed). `small`: the whole request
    /// (body included) has a deadline.
    async fn get(&self, r: &Remote, url: &str, accept: Option<&str>, small: bool) -> Result<Response, String> {
        let mut answered = false;
        loop {
            let mut req = r.http.get(url);
            if small {
                req = req.timeout(self.small_timeout);
            }
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            for (k, v) in &r.ep.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let authorization = r.authorization.lock().map(|t| t.clone()).unwrap_or(None);
            if let Some(a) = &authorization {
                req = req.header(AUTHORIZATION, a.as_str());
            }
            let resp = req.send().await.map_err(|e| self.transport_error(r, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
            let lookup = self.creds(r).await;
            if answered {
                // Authenticated, and still no: wrong credentials, or (as
                // Docker Hub answers) no such repository for this user.
                let said = registry_said(&read_bounded(resp).await);
                return Err(match &lookup.credentials {
                    Some(c) => format!(
                        "unauthorized: {} refused {} to user {:?} from {}: the credentials are wrong, the repository does not exist, or the user may not pull it{said}",
                        r.ep.host, self.reference.repository, c.username, c.source
                    ),
                    None => format!("{}{said}", self.refused(r, lookup)),
                });
            }
            answered = true;
            let Some(c) = challenge else {
                return Err(self.refused(r, lookup));
            };
            let lower = c.to_ascii_lowercase();
            let value = if lower.starts_with("bearer ") {
                format!("Bearer {}", self.fetch_token(r, &c[7..], lookup).await?)
            } else if lower.starts_with("basic") {
                match &lookup.credentials {
                    Some(creds) => creds.basic(),
                    None => return Err(self.refused(r, lookup)),
                }
            } else {
                return Err(format!("registry {}: unsupported authentication challenge {c:?}", r.ep.host));
            };
            if let Ok(mut a) = r.authorization.lock() {
                *a = Some(value);
            }
        }
    }

    /// "unauthorized", saying which credentials were tried (never their value).
    fn refused(&self, r: &Remote, lookup: &auth::Lookup) -> String {
        match &lookup.credentials {
            Some(c) => format!(
                "unauthorized: {} refused the credentials of user {:?} from {}",
                r.ep.host, c.username, c.source
            ),
            None => format!(
                "unauthorized: {} needs credentials and there are none: {} (add them with `docker login {}`)",
                r.ep.host, lookup.none_because, r.ep.host
            ),
        }
    }

    /// The bearer-token flow: GET realm?service=..&scope=.. (with Basic
    /// credentials when there are some), or, for an identity token, the
    /// OAuth2 refresh-token POST.
    async fn fetch_token(&self, r: &Remote, challenge: &str, lookup: &auth::Lookup) -> Result<String, String> {
        let params = parse_challenge(challenge);
        let realm = params.get("realm").ok_or_else(|| format!("registry {}: auth challenge without realm", r.ep.host))?;
        let service = params.get("service").cloned().unwrap_or_default();
        let scope = params.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        let req = match &lookup.credentials {
            Some(c) if c.identity_token => r.http.post(realm).form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", c.secret()),
                ("service", service.as_str()),
                ("scope", scope.as_str()),
                ("client_id", "steward"),
            ]),
            Some(c) => {
                let mut q: Vec<(&str, &str)> = vec![("scope", scope.as_str()), ("account", c.username.as_str())];
                if !service.is_empty() {
                    q.push(("service", service.as_str()));
                }
                r.http.get(realm).query(&q).header(AUTHORIZATION, c.basic())
            }
            None => {
                let mut q: Vec<(&str, &str)> = vec![("scope", scope.as_str())];
                if !service.is_empty() {
                    q.push(("service", service.as_str()));
                }
                r.http.get(realm).query(&q)
            }
        };
        let mut resp = req.timeout(self.small_timeout).send().await.map_err(|e| self.transport_error(r, e))?;
        // Token services that do not take the OAuth2 POST (GCR, some
        // Artifactory and ACR setups) answer it with 400/401/404/405: ask
        // again the Docker way, a GET with the credentials, as containerd.
        if let Some(c) = lookup.credentials.as_ref().filter(|c| c.identity_token) {
            if matches!(resp.status().as_u16(), 400 | 401 | 404 | 405) {
                let mut q: Vec<(&str, &str)> = vec![("scope", scope.as_str())];
                if !service.is_empty() {
                    q.push(("service", service.as_str()));
                }
                resp = r
                    .http
                    .get(realm)
                    .query(&q)
                    .header(AUTHORIZATION, c.basic())
                    .timeout(self.small_timeout)
                    .send()
                    .await
                    .map_err(|e| self.transport_error(r, e))?;
            }
        }
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.refused(r, lookup));
        }
        if !status.is_success() {
            return Err(format!("registry {}: token service {realm} answered {status}", r.ep.host));
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| format!("registry {}: token: {e}", r.ep.host))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("registry {}: token response without a token", r.ep.host))
    }

    /// A non-2xx response as "what the registry said".
    async fn http_error(&self, r: &Remote, what: &str, resp: Response) -> String {
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let after = resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).unwrap_or("unknown").to_string();
            return format!("rate limited by {}: retry after {after} s (429 Too Many Requests)", r.ep.host);
        }
        let body = read_bounded(resp).await;
        let mut headline = match status {
            StatusCode::NOT_FOUND => format!("{what} unknown: {} not found on {}", self.reference.full_name(), r.ep.host),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => format!("unauthorized: {} denied access", r.ep.host),
            _ => format!("registry error on {what}"),
        };
        // The registry's own words, e.g. {"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}
        let said = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string));
        if let (Some(m), false) = (&said, status == StatusCode::NOT_FOUND) {
            headline = m.clone();
        }
        let detail: String = body.trim().chars().take(300).collect();
        format!("{headline} (registry said {}: {detail})", status.as_u16())
    }

    /// The manifest (or index) the reference names: descriptor and bytes,
    /// from the first remote that has it, mirrors first. As containerd: a
    /// tag is resolved only by hosts that may both pull and resolve, a
    /// digest by any that may pull.
    pub async fn fetch_top(&self) -> Result<(OciDescriptor, Vec<u8>), String> {
        let pinned = self.reference.digest.is_some();
        let mut errors = Vec::new();
        for (i, r) in self.remotes.iter().enumerate() {
            if !(r.ep.pull && (r.ep.resolve || pinned)) {
                continue;
            }
            match self.fetch_top_from(r).await {
                Ok(v) => {
                    if let Ok(mut a) = self.active.lock() {
                        *a = i;
                    }
                    if !errors.is_empty() {
                        tracing::info!(image = %self.reference.full_name(), from = %r.ep.url, skipped = ?errors, "resolved by a later endpoint");
                    }
                    return Ok(v);
                }
                Err(e) if self.remotes.len() > 1 => errors.push(format!("{}: {e}", r.ep.url)),
                Err(e) => return Err(e),
            }
        }
        if errors.is_empty() {
            return Err(format!("registry {}: no endpoint may resolve it (capabilities in hosts.toml)", self.reference.registry));
        }
        Err(errors.join("; "))
    }

    /// `?ns=<registry>` on requests to a host that is not the registry's
    /// own (a mirror), as containerd sends it: a pull-through cache serving
    /// several upstreams tells them apart by it.
    fn ns_query(&self, r: &Remote) -> String {
        if r.ep.host == hosts::default_server_host(&self.reference.registry) {
            String::new()
        } else {
            format!("?ns={}", self.reference.registry)
        }
    }

    async fn fetch_top_from(&self, r: &Remote) -> Result<(OciDescriptor, Vec<u8>), String> {
        let url = format!("{}/manifests/{}{}", r.ep.api_base(&self.reference.repository), self.reference.object(), self.ns_query(r));
        let resp = self.get(r, &url, Some(MANIFEST_ACCEPT), true).await?;
        if !resp.status().is_success() {
            return Err(self.http_error(r, "manifest", resp).await);
        }
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        let bytes = self.read_capped(r, resp).await?;
        let digest = image::sha256_digest(&bytes);
        if let Some(pinned) = &self.reference.digest {
            if pinned != &digest {
                return Err(format!("manifest digest mismatch: asked for {pinned}, got {digest}"));
            }
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                .unwrap_or_default()
        } else {
            media_type
        };
        Ok((OciDescriptor { media_type, digest, size: bytes.len() as i64, ..Default::default() }, bytes))
    }

    /// `small`: a manifest or config (read whole, under a total deadline),
    /// not a layer. From the remote that resolved the reference, then, on
    /// failure, from every other that may pull, in order (a mirror missing
    /// a blob falls back to the next, as containerd's fetcher does).
    async fn blob(&self, d: &OciDescriptor, manifest: bool, small: bool) -> Result<(Response, &Remote), String> {
        let first = self.active.lock().map(|a| *a).unwrap_or(0);
        let order = std::iter::once(first).chain((0..self.remotes.len()).filter(move |i| *i != first));
        let mut errors = Vec::new();
        for i in order {
            let Some(r) = self.remotes.get(i).filter(|r| r.ep.pull) else { continue };
            let kind = if manifest { "manifests" } else { "blobs" };
            let url = format!("{}/{kind}/{}{}", r.ep.api_base(&self.reference.repository), d.digest, self.ns_query(r));
            let resp = match self.get(r, &url, manifest.then_some(MANIFEST_ACCEPT), small).await {
                Ok(resp) if resp.status().is_success() => return Ok((resp, r)),
                Ok(resp) => self.http_error(r, if manifest { "manifest" } else { "blob" }, resp).await,
                Err(e) => e,
            };
            errors.push(if self.remotes.len() > 1 { format!("{}: {resp}", r.ep.url) } else { resp });
        }
        Err(errors.join("; "))
    }
}

/// The first 64 KiB of an error response (a registry, or a CDN it
/// redirected to, is not trusted with more of our memory).
async fn read_bounded(mut resp: Response) -> String {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        out.extend_from_slice(&chunk[..chunk.len().min(65536 - out.len())]);
        if out.len() >= 65536 {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// ` (registry said: ...)` from a registry's error body, if it says anything.
fn registry_said(body: &str) -> String {
    let said = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string));
    said.map(|m| format!(" (registry said: {m})")).unwrap_or_default()
}

/// Manifests, indexes and configs are small; a registry sending more is
/// not to be trusted with the memory (layers are streamed, never read whole).
const MAX_METADATA_BLOB: usize = 16 << 20;

impl Registry {
    async fn read_capped(&self, r: &Remote, mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
        let too_big = || format!("{}: a manifest or config larger than {MAX_METADATA_BLOB} bytes", r.ep.host);
        if resp.content_length().is_some_and(|n| n > MAX_METADATA_BLOB as u64) {
            return Err(too_big());
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(r, e))? {
            if out.len() + chunk.len() > MAX_METADATA_BLOB {
                return Err(too_big());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

fn is_manifest_type(m: &str) -> bool {
    m.contains("manifest") || m.contains("index")
}

impl BlobSource for Registry {
    fn fetch_bytes<'a>(&'a self, d: &'a OciDescriptor) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let (resp, r) = self.blob(d, is_manifest_type(&d.media_type), true).await?;
            let bytes = self.read_capped(r, resp).await?;
            verify(d, &bytes)?;
            Ok(bytes)
        })
    }

    fn fetch_stream<'a>(&'a self, d: &'a OciDescriptor) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, String>>, String>> {
        Box::pin(async move {
            let (resp, r) = self.blob(d, false, false).await?;
            let host = r.ep.host.clone();
            Ok(resp.bytes_stream().map_err(move |e| format!("registry {host}: download failed: {e}")).boxed())
        })
    }
}

/// `realm="https://auth",service="registry",scope="repository:x:pull"`.
fn parse_challenge(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else { break };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (v, after) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(k, v.to_string());
        rest = after.trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("me/app:v1", "docker.io/me/app:v1"),
            ("127.0.0.1:5000/busybox:1.36", "127.0.0.1:5000/busybox:1.36"),
            ("localhost/a/b", "localhost/a/b:latest"),
            ("ghcr.io/x/y@sha256:0000000000000000000000000000000000000000000000000000000000000000", "ghcr.io/x/y@sha256:0000000000000000000000000000000000000000000000000000000000000000"),
            ("127.0.0.1:5000/busybox", "127.0.0.1:5000/busybox:latest"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            ("index.docker.io/nginx:1", "docker.io/library/nginx:1"),
            ("docker.io/user/app", "docker.io/user/app:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(Reference::parse(input).unwrap().full_name(), want, "{input}");
        }
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("a b").is_err());
        assert!(Reference::parse("x@sha256:short").is_err());
        for bad in [
            "../x/y",
            "busybox@sha256:../../0000000000000000000000000000000000000000000000000000000000",
            "busybox:a?b",
            "Busybox",
            "r.io/a//b",
            "r.io:x/a",
            "busybox:",
            "x@sha256:000000000000000000000000000000000000000000000000000000000000000G",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    fn settings(dir: &Path) -> Settings {
        Settings { config_path: dir.join("certs.d"), auth_file: Some(dir.join("config.json")) }
    }

    #[tokio::test]
    async fn a_registry_that_never_answers_fails_within_the_deadline() {
        // Accepts connections and never says a word.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let reference = Reference::parse(&format!("{addr}/busybox:1")).unwrap();
        let d = tempfile::tempdir().unwrap();
        let reg = Registry::connect(&Clients::default(), &settings(d.path()), reference)
            .unwrap()
            .with_small_timeout(std::time::Duration::from_millis(300));
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), reg.fetch_top()).await.expect("no hang");
        let e = r.expect_err("a registry that never answers is an error");
        assert!(e.contains("timed out"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "{:?}", started.elapsed());
        held.abort();
    }

    #[test]
    fn parses_bearer_challenges() {
        let p = parse_challenge(r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#);
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
    }

    /// A one-route-at-a-time HTTP/1.1 server: `answer(request head)` gives
    /// (status line, extra headers, body). Closes each connection after
    /// one response.
    async fn serve(answer: impl Fn(&str) -> (String, Vec<String>, String) + Send + Sync + 'static) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let answer = std::sync::Arc::new(answer);
        let h = tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let (status, headers, body) = answer(&head);
                    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
                    for h in headers {
                        out.push_str(&h);
                        out.push_str("\r\n");
                    }
                    out.push_str("\r\n");
                    out.push_str(&body);
                    let _ = c.write_all(out.as_bytes()).await;
                });
            }
        });
        (addr, h)
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
    }

    /// The token flow of real registries: a Bearer challenge, then the
    /// token service with the user's Basic credentials (or an identity
    /// token by refresh), then the manifest with the token. Wrong
    /// credentials are named, not shown; a 429 says when to retry.
    #[tokio::test]
    async fn bearer_challenges_are_answered_with_credentials() {
        let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":1},"layers":[]}"#;
        let good = format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:pw"));
        let realm = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let r2 = realm.clone();
        let (addr, server) = serve(move |head| {
            let line = head.lines().next().unwrap_or_default().to_string();
            let auth = header(head, "authorization").unwrap_or_default();
            if line.starts_with("GET /token?") {
                let ok = auth == good && line.contains("scope=repository%3Ateam%2Fapp%3Apull") && line.contains("service=reg");
                return if ok { ("200 OK".into(), vec![], r#"{"token":"T0K"}"#.into()) } else { ("401 Unauthorized".into(), vec![], String::new()) };
            }
            // A token service without the OAuth2 POST: the GET with the
            // identity token as Basic password must follow.
            if line.starts_with("POST /token2") {
                return ("405 Method Not Allowed".into(), vec![], String::new());
            }
            if line.starts_with("GET /token2?") {
                let ok = auth == format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "<token>:refresh-me"));
                return if ok { ("200 OK".into(), vec![], r#"{"token":"T0K"}"#.into()) } else { ("401 Unauthorized".into(), vec![], String::new()) };
            }
            if line.starts_with("POST /token") {
                return ("200 OK".into(), vec![], r#"{"access_token":"T0K"}"#.into());
            }
            if line.contains("/v2/team/limited/") {
                return ("429 Too Many Requests".into(), vec!["Retry-After: 30".into()], String::new());
            }
            if auth == "Bearer T0K" {
                return ("200 OK".into(), vec!["Content-Type: application/vnd.oci.image.manifest.v1+json".into()], manifest.into());
            }
            let realm = if line.contains("/v2/team/app2/") { "token2" } else { "token" };
            let challenge = format!(r#"WWW-Authenticate: Bearer realm="http://{}/{realm}",service="reg",scope="repository:team/app:pull""#, r2.lock().unwrap());
            ("401 Unauthorized".into(), vec![challenge], String::new())
        })
        .await;
        *realm.lock().unwrap() = addr.clone();
        let d = tempfile::tempdir().unwrap();
        let set = settings(d.path());
        let conf = |auths: &str| std::fs::write(d.path().join("config.json"), format!(r#"{{"auths": {{"{addr}": {auths}}}}}"#)).unwrap();
        let reference = || Reference::parse(&format!("{addr}/team/app:1")).unwrap();
        let clients = Clients::default();

        conf(r#"{"username": "alice", "password": "pw"}"#);
        let (top, bytes) = Registry::connect(&clients, &set, reference()).unwrap().fetch_top().await.expect("pulled with a token");
        assert_eq!(bytes, manifest.as_bytes());
        assert_eq!(top.digest, image::sha256_digest(manifest.as_bytes()));

        conf(r#"{"username": "alice", "password": "nope"}"#);
        let e = Registry::connect(&clients, &set, reference()).unwrap().fetch_top().await.unwrap_err();
        assert!(e.contains("refused the credentials of user \"alice\"") && !e.contains("nope"), "{e}");

        conf(r#"{"identitytoken": "refresh-me"}"#);
        Registry::connect(&clients, &set, reference()).unwrap().fetch_top().await.expect("pulled with an identity token");
        let app2 = Reference::parse(&format!("{addr}/team/app2:1")).unwrap();
        Registry::connect(&clients, &set, app2).unwrap().fetch_top().await.expect("the refresh-token POST refused, the GET taken");

        let limited = Reference::parse(&format!("{addr}/team/limited:1")).unwrap();
        let e = Registry::connect(&clients, &set, limited).unwrap().fetch_top().await.unwrap_err();
        assert!(e.contains("rate limited") && e.contains("retry after 30 s"), "{e}");
        server.abort();
    }
}
