//! A small Docker Registry HTTP API v2 client: image references, manifests
//! (OCI and Docker media types), blobs, and the bearer-token challenge.
//!
//! Loopback registries (`127.0.0.1`, `localhost`, `[::1]`) are spoken to
//! over plain http, everything else over https. This build's reqwest has no
//! TLS backend, so an https registry fails with a message saying so instead
//! of an obscure transport error.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};

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
        if s.is_empty() || s.chars().any(|c| c.is_whitespace()) {
            return Err(format!("invalid image reference {s:?}"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        if let Some(d) = &digest {
            if !d.starts_with("sha256:") || d.len() != 71 {
                return Err(format!("invalid image reference {s:?}: bad digest {d:?}"));
            }
        }
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ if name.contains('/') => ("docker.io".to_string(), name.to_string()),
            _ => ("docker.io".to_string(), format!("library/{name}")),
        };
        if repository.is_empty() || tag.as_deref() == Some("") {
            return Err(format!("invalid image reference {s:?}"));
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

    /// Docker Hub's API lives on another host than its name.
    fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    pub fn is_loopback(&self) -> bool {
        let host = self.registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.registry);
        host == "localhost" || host == "[::1]" || host.starts_with("127.")
    }

    fn base_url(&self) -> String {
        let scheme = if self.is_loopback() { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", self.api_host(), self.repository)
    }
}

/// A registry client for one image reference.
pub struct Registry {
    http: reqwest::Client,
    reference: Reference,
    /// Bearer token from the last challenge (per scope = this repository).
    token: Mutex<Option<String>>,
    /// The deadline of small requests ([`SMALL_REQUEST_TIMEOUT`]).
    small_timeout: std::time::Duration,
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
    pub fn new(http: reqwest::Client, reference: Reference) -> Result<Registry, String> {
        if !reference.is_loopback() {
            return Err(format!(
                "registry {} needs https, and this build of steward has no TLS support; use a registry on \
                 127.0.0.1/localhost (plain http) or `steward image import` an OCI archive",
                reference.registry
            ));
        }
        Ok(Registry { http, reference, token: Mutex::new(None), small_timeout: SMALL_REQUEST_TIMEOUT })
    }

    /// Another deadline for manifests, configs and tokens.
    pub fn with_small_timeout(mut self, d: std::time::Duration) -> Self {
        self.small_timeout = d;
        self
    }

    fn transport_error(&self, e: reqwest::Error) -> String {
        if e.is_connect() {
            format!("cannot reach registry {}: {}", self.reference.registry, root_cause(&e))
        } else if e.is_timeout() {
            format!("registry {} timed out", self.reference.registry)
        } else {
            format!("registry {}: {}", self.reference.registry, root_cause(&e))
        }
    }

    /// GET with the token (if any), answering a bearer challenge once.
    /// `small`: the whole request (body included) has a deadline.
    async fn get(&self, url: &str, accept: Option<&str>, small: bool) -> Result<Response, String> {
        for attempt in 0..2 {
            let mut req = self.http.get(url);
            if small {
                req = req.timeout(self.small_timeout);
            }
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            let token = self.token.lock().map(|t| t.clone()).unwrap_or(None);
            if let Some(t) = token {
                req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            }
            let resp = req.send().await.map_err(|e| self.transport_error(e))?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
                if let Some(c) = challenge.filter(|c| c.to_ascii_lowercase().starts_with("bearer ")) {
                    let token = self.fetch_token(&c).await?;
                    if let Ok(mut t) = self.token.lock() {
                        *t = Some(token);
                    }
                    continue;
                }
            }
            return Ok(resp);
        }
        Err(format!("registry {}: authentication loop", self.reference.registry))
    }

    /// The bearer-token flow: GET realm?service=..&scope=.. (anonymous).
    async fn fetch_token(&self, challenge: &str) -> Result<String, String> {
        let params = parse_challenge(&challenge[7..]);
        let realm = params.get("realm").ok_or_else(|| format!("registry {}: auth challenge without realm", self.reference.registry))?;
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = params.get("service") {
            query.push(("service", s.clone()));
        }
        let scope = params.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        query.push(("scope", scope));
        let resp = self.http.get(realm).timeout(self.small_timeout).query(&query).send().await.map_err(|e| self.transport_error(e))?;
        if !resp.status().is_success() {
            return Err(format!("registry {}: token request failed: {}", self.reference.registry, resp.status()));
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| format!("registry token: {e}"))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("registry {}: token response without a token", self.reference.registry))
    }

    /// A non-2xx response as "what the registry said".
    async fn http_error(&self, what: &str, resp: Response) -> String {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let mut headline = match status {
            StatusCode::NOT_FOUND => format!("{what} unknown"),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "unauthorized: authentication required".to_string(),
            _ => format!("registry error on {what}"),
        };
        // The registry's own words, e.g. {"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}
        let said = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string));
        if let Some(m) = &said {
            headline = m.clone();
        }
        let detail: String = body.trim().chars().take(300).collect();
        format!("{headline} (registry said {}: {detail})", status.as_u16())
    }

    /// The manifest (or index) the reference names: descriptor and bytes.
    pub async fn fetch_top(&self) -> Result<(OciDescriptor, Vec<u8>), String> {
        let url = format!("{}/manifests/{}", self.reference.base_url(), self.reference.object());
        let resp = self.get(&url, Some(MANIFEST_ACCEPT), true).await?;
        if !resp.status().is_success() {
            return Err(self.http_error("manifest", resp).await);
        }
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        let bytes = self.read_capped(resp).await?;
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
    /// not a layer.
    async fn blob(&self, d: &OciDescriptor, manifest: bool, small: bool) -> Result<Response, String> {
        let kind = if manifest { "manifests" } else { "blobs" };
        let url = format!("{}/{kind}/{}", self.reference.base_url(), d.digest);
        let resp = self.get(&url, manifest.then_some(MANIFEST_ACCEPT), small).await?;
        if !resp.status().is_success() {
            return Err(self.http_error(if manifest { "manifest" } else { "blob" }, resp).await);
        }
        Ok(resp)
    }
}

/// Manifests, indexes and configs are small; a registry sending more is
/// not to be trusted with the memory (layers are streamed, never read whole).
const MAX_METADATA_BLOB: usize = 16 << 20;

impl Registry {
    async fn read_capped(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
        let too_big = || format!("{}: a manifest or config larger than {MAX_METADATA_BLOB} bytes", self.reference.base_url());
        if resp.content_length().is_some_and(|n| n > MAX_METADATA_BLOB as u64) {
            return Err(too_big());
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(e))? {
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
            let resp = self.blob(d, is_manifest_type(&d.media_type), true).await?;
            let bytes = self.read_capped(resp).await?;
            verify(d, &bytes)?;
            Ok(bytes)
        })
    }

    fn fetch_stream<'a>(&'a self, d: &'a OciDescriptor) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, String>>, String>> {
        Box::pin(async move {
            let resp = self.blob(d, false, false).await?;
            let registry = self.reference.registry.clone();
            Ok(resp.bytes_stream().map_err(move |e| format!("registry {registry}: download failed: {e}")).boxed())
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
        ];
        for (input, want) in cases {
            assert_eq!(Reference::parse(input).unwrap().full_name(), want, "{input}");
        }
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("a b").is_err());
        assert!(Reference::parse("x@sha256:short").is_err());
        assert!(Reference::parse("127.0.0.1:5000/x:1").unwrap().is_loopback());
        assert!(!Reference::parse("ghcr.io/x:1").unwrap().is_loopback());
    }

    #[test]
    fn https_registries_are_refused_clearly() {
        let e = Registry::new(reqwest::Client::new(), Reference::parse("ghcr.io/x:1").unwrap()).err().unwrap();
        assert!(e.contains("no TLS support") && e.contains("ghcr.io"), "{e}");
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
        let reg = Registry::new(reqwest::Client::new(), reference).unwrap().with_small_timeout(std::time::Duration::from_millis(300));
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
}
