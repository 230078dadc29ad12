//! Images as steward shows them (the read-only `Image` view): containerd's
//! image records grouped by the manifest they name, with their size, when a
//! container was last made from them, and which containers use them; their
//! removal; and image garbage collection as the kubelet's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::{DeleteImageRequest, ListImagesRequest, PluginsRequest};
use steward_schema::Time;

use super::errors::from_status;
use super::{image, ContainerdRuntime};
use crate::actual::{RuntimeError, LABEL_NAME, LABEL_NAMESPACE};

/// One image: every name containerd holds for one target digest.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageInfo {
    /// The target (manifest or index) digest.
    pub digest: String,
    /// The names (references) that point at it.
    pub names: Vec<String>,
    /// Bytes of content: the target, the manifest for this platform, its
    /// config and layers (compressed, as stored).
    pub size: u64,
    pub created: Option<Time>,
    /// When a container was last made from it (since steward started), else
    /// when its record last changed.
    pub last_used: Option<Time>,
    /// `namespace/name` of the objects whose containers use it.
    pub used_by: Vec<String>,
}

/// When containers were last made from each image (by target digest).
#[derive(Default)]
pub struct LastUsed(Mutex<HashMap<String, Time>>);

impl LastUsed {
    pub fn touch(&self, digest: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(digest.to_string(), Time::now());
        }
    }

    fn get(&self, digest: &str) -> Option<Time> {
        self.0.lock().ok().and_then(|m| m.get(digest).copied())
    }
}

fn to_time(t: &Option<prost_types::Timestamp>) -> Option<Time> {
    t.as_ref().and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)).map(Time)
}

impl ContainerdRuntime {
    /// Every image of the namespace, by target digest, sorted by name.
    pub async fn images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        let records = self.image_records(None).await?;
        let users = self.image_users().await?;
        let mut by_digest: BTreeMap<String, ImageInfo> = BTreeMap::new();
        for r in records {
            let Some(target) = r.target.clone() else { continue };
            let e = by_digest.entry(target.digest.clone()).or_insert_with(|| ImageInfo {
                digest: target.digest.clone(),
                names: Vec::new(),
                size: 0,
                created: None,
                last_used: None,
                used_by: users.get(&target.digest).map(|u| u.iter().cloned().collect()).unwrap_or_default(),
            });
            e.names.push(r.name.clone());
            let created = to_time(&r.created_at);
            e.created = match (e.created, created) {
                (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
                (a, b) => a.or(b),
            };
            let updated = to_time(&r.updated_at);
            e.last_used = match (e.last_used, updated) {
                (Some(a), Some(b)) => Some(if a.0 > b.0 { a } else { b }),
                (a, b) => a.or(b),
            };
            if e.size == 0 {
                e.size = target.size.max(0) as u64;
                if let Ok(Some((m, _))) = image::load_local(&self.ctx, &target).await {
                    e.size += m.config.as_ref().map(|d| d.size.max(0) as u64).unwrap_or(0);
                    e.size += m.layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>();
                }
            }
        }
        let mut out: Vec<ImageInfo> = by_digest.into_values().collect();
        for i in &mut out {
            i.names.sort();
            if let Some(t) = self.last_used.get(&i.digest) {
                i.last_used = Some(t);
            }
        }
        out.sort_by(|a, b| a.names.first().cmp(&b.names.first()));
        Ok(out)
    }

    /// The image records (every one, or those whose target is `digest`).
    async fn image_records(&self, digest: Option<&str>) -> Result<Vec<containerd_client::services::v1::Image>, RuntimeError> {
        let mut c = ImagesClient::new(self.ctx.channel.clone());
        let filters = digest.map(|d| vec![format!("target.digest=={d}")]).unwrap_or_default();
        Ok(c.list(self.ctx.req(ListImagesRequest { filters }))
            .await
            .map_err(|s| from_status("list images", "", &s))?
            .into_inner()
            .images)
    }

    /// Which objects' containers use which image (by target digest).
    async fn image_users(&self) -> Result<HashMap<String, BTreeSet<String>>, RuntimeError> {
        let mut users: HashMap<String, BTreeSet<String>> = HashMap::new();
        for ctr in self.list_all_containers().await? {
            let labels = &ctr.labels;
            if let Some(d) = labels.get(crate::containerd::LABEL_IMAGE_DIGEST) {
                let who = match (labels.get(LABEL_NAMESPACE), labels.get(LABEL_NAME)) {
                    (Some(ns), Some(n)) => format!("{ns}/{n}"),
                    _ => format!("container {}", ctr.id),
                };
                users.entry(d.clone()).or_default().insert(who);
            }
        }
        Ok(users)
    }

    /// Removes every name of the image with target `digest` (its content
    /// goes with containerd's garbage collection). Refused while a
    /// container uses it: `Err(Ok(users))`.
    pub async fn remove_image(&self, digest: &str) -> Result<Vec<String>, Result<Vec<String>, RuntimeError>> {
        let names: Vec<String> = self.image_records(Some(digest)).await.map_err(Err)?.into_iter().map(|r| r.name).collect();
        if names.is_empty() {
            return Err(Err(RuntimeError::NotFound(format!("image {digest}"))));
        }
        if let Some(users) = self.image_users().await.map_err(Err)?.remove(digest) {
            return Err(Ok(users.into_iter().collect()));
        }
        let mut c = ImagesClient::new(self.ctx.channel.clone());
        for name in &names {
            match c.delete(self.ctx.req(DeleteImageRequest { name: name.clone(), sync: true, ..Default::default() })).await {
                Ok(_) => {}
                Err(s) if s.code() == containerd_client::tonic::Code::NotFound => {}
                Err(s) => return Err(Err(from_status("delete image", name, &s))),
            }
        }
        tracing::info!(digest, ?names, "image removed");
        Ok(names)
    }

    /// The directory holding containerd's content store (its image
    /// filesystem), from containerd's introspection.
    pub async fn content_root(&self) -> Result<PathBuf, RuntimeError> {
        let mut c = IntrospectionClient::new(self.ctx.channel.clone());
        let plugins = c
            .plugins(self.ctx.req(PluginsRequest { filters: vec!["type==io.containerd.content.v1".into()] }))
            .await
            .map_err(|s| from_status("introspect plugins", "", &s))?
            .into_inner()
            .plugins;
        plugins
            .iter()
            .find_map(|p| p.exports.get("root").cloned())
            .map(PathBuf::from)
            .ok_or_else(|| RuntimeError::Unavailable("containerd does not say where its content store is".into()))
    }

    /// Image garbage collection, as the kubelet's: when the image
    /// filesystem is more than `high` percent used, unused images go,
    /// least recently used first, until it is below `low`. `keep` are
    /// digests and names live objects refer to (besides what containers
    /// use). Returns the removed images' names.
    pub async fn collect_images_above(&self, gc: &steward_config::ImageGc, keep: &BTreeSet<String>) -> Result<Vec<String>, RuntimeError> {
        let (high, low) = (gc.high_threshold_percent, gc.low_threshold_percent);
        let young = |i: &ImageInfo| {
            i.last_used.or(i.created).is_none_or(|t| (Time::now().0 - t.0).to_std().unwrap_or_default() < gc.minimum_age)
        };
        let root = self.content_root().await?;
        let usage = || fs_usage_percent(&root);
        let Some(used) = usage() else { return Ok(Vec::new()) };
        if used <= f64::from(high) {
            return Ok(Vec::new());
        }
        let mut candidates: Vec<ImageInfo> = self
            .images()
            .await?
            .into_iter()
            .filter(|i| i.used_by.is_empty() && !young(i) && !keep.contains(&i.digest) && !i.names.iter().any(|n| keep.contains(n)))
            .collect();
        candidates.sort_by_key(|i| i.last_used.map(|t| t.0));
        tracing::info!(used_percent = used, high, low, candidates = candidates.len(), "image filesystem above the high threshold");
        let mut removed = Vec::new();
        for img in candidates {
            if usage().is_some_and(|u| u < f64::from(low)) {
                break;
            }
            if let Ok(names) = self.remove_image(&img.digest).await {
                removed.extend(names);
            }
        }
        Ok(removed)
    }
}

/// Percent of the filesystem holding `path` in use (as `df`).
fn fs_usage_percent(path: &std::path::Path) -> Option<f64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs(3) on a NUL-terminated path, into a zeroed struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 || s.f_blocks == 0 {
        return None;
    }
    let used = (s.f_blocks - s.f_bfree) as f64;
    let avail = s.f_bavail as f64;
    Some(100.0 * used / (used + avail))
}
