//! Images: OCI/Docker manifests and configs, the image record, GC labels and
//! unpacking layers into snapshots. Shared by registry pulls and archive
//! imports, which differ only in where blobs come from.

use std::collections::HashMap;

use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest};
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{ApplyRequest, CreateImageRequest, GetImageRequest, Image, ListImagesRequest, UpdateImageRequest};
use containerd_client::services::v1::{Info as ContentInfo, UpdateRequest as ContentUpdateRequest};
use containerd_client::tonic::{Code, Status};
use containerd_client::types::Descriptor;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Ctx;
use crate::actual::ImageConfig;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor, as in manifests and indexes.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciDescriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image manifest or an index (manifest list); which one is decided by
/// which fields are present, since Docker's schema 2 and OCI differ only in
/// media types.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestOrIndex {
    #[serde(default)]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<OciDescriptor>,
    #[serde(default)]
    pub config: Option<OciDescriptor>,
    #[serde(default)]
    pub layers: Vec<OciDescriptor>,
}

impl ManifestOrIndex {
    pub fn is_index(&self) -> bool {
        self.config.is_none() && !self.manifests.is_empty()
            || self.media_type == MEDIA_OCI_INDEX
            || self.media_type == MEDIA_DOCKER_LIST
    }
}

/// The parts of an image config steward uses.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ImageConfigJson {
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Status(#[from] Status),
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The OCI name of this machine's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// From an index, the manifest for linux on this machine's architecture.
pub fn pick_platform(index: &ManifestOrIndex) -> Option<&OciDescriptor> {
    let arch = host_arch();
    let matches = |d: &&OciDescriptor| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch);
    index.manifests.iter().find(matches).or_else(|| {
        // An index without platforms (single-image OCI layouts) has one choice.
        (index.manifests.len() == 1 && index.manifests[0].platform.is_none()).then(|| &index.manifests[0])
    })
}

/// The run config and layer chain of a parsed manifest + config.
pub fn image_config(digest: &str, config: &ImageConfigJson) -> Result<ImageConfig, String> {
    let diff_ids = config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
    let top = chain_ids(&diff_ids).pop().ok_or("image config lists no layers (rootfs.diff_ids is empty)")?;
    let run = config.config.clone().unwrap_or_default();
    Ok(ImageConfig {
        digest: digest.to_string(),
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.unwrap_or_default(),
        user: run.user.unwrap_or_default(),
        top_layer_chain_id: top,
    })
}

/// The GC labels that keep a manifest's children alive.
pub fn manifest_gc_labels(manifest: &ManifestOrIndex) -> HashMap<String, String> {
    let mut l = HashMap::new();
    if let Some(c) = &manifest.config {
        l.insert("containerd.io/gc.ref.content.config".into(), c.digest.clone());
    }
    for (i, layer) in manifest.layers.iter().enumerate() {
        l.insert(format!("containerd.io/gc.ref.content.l.{i}"), layer.digest.clone());
    }
    for (i, m) in manifest.manifests.iter().enumerate() {
        l.insert(format!("containerd.io/gc.ref.content.m.{i}"), m.digest.clone());
    }
    l
}

/// Sets labels on a blob that may have existed before (without them).
pub(crate) async fn label_blob(ctx: &Ctx, digest: &str, labels: HashMap<String, String>) -> Result<(), Status> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let mut c = ContentClient::new(ctx.channel.clone());
    c.update(ctx.req(ContentUpdateRequest {
        info: Some(ContentInfo { digest: digest.to_string(), labels, ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths }),
    }))
    .await?;
    Ok(())
}

pub(crate) fn to_descriptor(d: &OciDescriptor) -> Descriptor {
    Descriptor { media_type: d.media_type.clone(), digest: d.digest.clone(), size: d.size, annotations: HashMap::new() }
}

/// Creates or moves the image record `name` to `target`.
pub(crate) async fn put_record(ctx: &Ctx, name: &str, target: Descriptor) -> Result<(), Status> {
    let mut c = ImagesClient::new(ctx.channel.clone());
    let image = Image { name: name.to_string(), target: Some(target), ..Default::default() };
    match c.create(ctx.req(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None })).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => {
            let mask = prost_types::FieldMask { paths: vec!["target".into()] };
            c.update(ctx.req(UpdateImageRequest { image: Some(image), update_mask: Some(mask), source_date_epoch: None }))
                .await?;
            Ok(())
        }
        Err(s) => Err(s),
    }
}

/// The image record's target, if the record exists.
pub(crate) async fn get_record(ctx: &Ctx, name: &str) -> Result<Option<Descriptor>, Status> {
    let mut c = ImagesClient::new(ctx.channel.clone());
    match c.get(ctx.req(GetImageRequest { name: name.to_string() })).await {
        Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

/// The target of any image record whose target is `digest` (an image
/// pinned by digest may be held under a tag's name).
pub(crate) async fn find_by_target(ctx: &Ctx, digest: &str) -> Result<Option<Descriptor>, Status> {
    let mut c = ImagesClient::new(ctx.channel.clone());
    let filter = format!("target.digest=={digest}");
    let r = c.list(ctx.req(ListImagesRequest { filters: vec![filter] })).await?;
    Ok(r.into_inner().images.into_iter().filter_map(|i| i.target).find(|t| t.digest == digest))
}

/// Reads the image that `target` (a manifest or an index) describes from
/// the content store: the chosen manifest and the parsed config. `None` if
/// any blob is missing (collected, or never fully pulled).
pub(crate) async fn load_local(ctx: &Ctx, target: &Descriptor) -> Result<Option<(ManifestOrIndex, ImageConfigJson)>, ImageError> {
    let read = |d: String| async move {
        match super::content::read_all(ctx, &d).await {
            Ok(b) => Ok(Some(b)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ImageError::Status(s)),
        }
    };
    let Some(bytes) = read(target.digest.clone()).await? else { return Ok(None) };
    let mut m: ManifestOrIndex = serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid(format!("manifest {}: {e}", target.digest)))?;
    if m.is_index() {
        let Some(d) = pick_platform(&m) else {
            return Err(ImageError::Invalid(format!("image index {} has no linux/{} manifest", target.digest, host_arch())));
        };
        let Some(bytes) = read(d.digest.clone()).await? else { return Ok(None) };
        m = serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid(format!("manifest {}: {e}", d.digest)))?;
    }
    let Some(cfg_desc) = m.config.clone() else {
        return Err(ImageError::Invalid(format!("manifest {} has no config", target.digest)));
    };
    let Some(bytes) = read(cfg_desc.digest.clone()).await? else { return Ok(None) };
    let cfg: ImageConfigJson = serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid(format!("image config {}: {e}", cfg_desc.digest)))?;
    Ok(Some((m, cfg)))
}

/// Whether a snapshot exists.
pub(crate) async fn snapshot_exists(ctx: &Ctx, key: &str) -> Result<bool, Status> {
    let mut s = SnapshotsClient::new(ctx.channel.clone());
    match s.stat(ctx.req(StatSnapshotRequest { snapshotter: ctx.snapshotter.clone(), key: key.to_string() })).await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Code::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Unpacks the manifest's layers into committed snapshots named by chain
/// id, skipping those present. Must run under a lease (`ctx.lease`), or a GC
/// between Prepare and Commit collects the half-made snapshot.
pub(crate) async fn unpack(ctx: &Ctx, manifest: &ManifestOrIndex, config: &ImageConfigJson) -> Result<String, ImageError> {
    let diff_ids = config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
    if diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::Invalid(format!(
            "image config lists {} layers but the manifest has {}",
            diff_ids.len(),
            manifest.layers.len()
        )));
    }
    let chains = chain_ids(&diff_ids);
    let mut snaps = SnapshotsClient::new(ctx.channel.clone());
    let mut diff = DiffClient::new(ctx.channel.clone());
    let mut parent = String::new();
    for ((layer, diff_id), chain) in manifest.layers.iter().zip(&diff_ids).zip(&chains) {
        if snapshot_exists(ctx, chain).await? {
            parent = chain.clone();
            continue;
        }
        let key = format!("extract-{}-{}", unique_suffix(), chain);
        let mounts = snaps
            .prepare(ctx.req(PrepareSnapshotRequest {
                snapshotter: ctx.snapshotter.clone(),
                key: key.clone(),
                parent: parent.clone(),
                labels: HashMap::new(),
            }))
            .await?
            .into_inner()
            .mounts;
        let applied = diff
            .apply(ctx.req_within(
                ApplyRequest { diff: Some(to_descriptor(layer)), mounts, payloads: HashMap::new(), sync_fs: false },
                super::UNPACK_TIMEOUT.max(ctx.timeout),
            ))
            .await;
        let result = match applied {
            Ok(r) => match r.into_inner().applied {
                Some(d) if &d.digest == diff_id => Ok(()),
                Some(d) => Err(ImageError::Invalid(format!(
                    "layer {} unpacked to {} but the image config says {diff_id}",
                    layer.digest, d.digest
                ))),
                None => Err(ImageError::Invalid(format!("layer {}: containerd returned no digest", layer.digest))),
            },
            Err(s) => Err(ImageError::Status(s)),
        };
        let result = match result {
            Ok(()) => {
                let commit = snaps
                    .commit(ctx.req(CommitSnapshotRequest {
                        snapshotter: ctx.snapshotter.clone(),
                        name: chain.clone(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    }))
                    .await;
                match commit {
                    // Someone else unpacked the same layer meanwhile.
                    Err(s) if s.code() == Code::AlreadyExists => Err(None),
                    Err(s) => Err(Some(ImageError::Status(s))),
                    Ok(_) => Ok(()),
                }
            }
            Err(e) => Err(Some(e)),
        };
        if let Err(e) = result {
            let _ = snaps.remove(ctx.req(RemoveSnapshotRequest { snapshotter: ctx.snapshotter.clone(), key })).await;
            if let Some(e) = e {
                return Err(e);
            }
        }
        parent = chain.clone();
    }
    Ok(parent)
}

/// Unique enough for temporary keys and lease ids.
pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{nanos}-{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = |s: &str| s.to_string();
        assert_eq!(chain_ids(&[d("sha256:a")]), vec!["sha256:a"]);
        let two = chain_ids(&[d("sha256:a"), d("sha256:b")]);
        assert_eq!(two[1], sha256_digest(b"sha256:a sha256:b"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn picks_the_host_platform_from_an_index() {
        let idx: ManifestOrIndex = serde_json::from_value(serde_json::json!({
            "mediaType": MEDIA_DOCKER_LIST,
            "manifests": [
                {"digest": "sha256:arm", "size": 1, "platform": {"architecture": "arm64", "os": "linux"}},
                {"digest": "sha256:win", "size": 1, "platform": {"architecture": host_arch(), "os": "windows"}},
                {"digest": "sha256:me", "size": 1, "platform": {"architecture": host_arch(), "os": "linux"}},
            ]
        }))
        .unwrap();
        assert!(idx.is_index());
        assert_eq!(pick_platform(&idx).unwrap().digest, "sha256:me");
    }

    #[test]
    fn image_config_reads_the_run_config() {
        let cfg: ImageConfigJson = serde_json::from_value(serde_json::json!({
            "config": {"Entrypoint": ["/e"], "Cmd": ["c"], "Env": ["A=1"], "WorkingDir": "/w", "User": "33"},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:a", "sha256:b"]}
        }))
        .unwrap();
        let ic = image_config("sha256:m", &cfg).unwrap();
        assert_eq!(ic.entrypoint, ["/e"]);
        assert_eq!(ic.user, "33");
        assert_eq!(ic.top_layer_chain_id, sha256_digest(b"sha256:a sha256:b"));
        assert!(image_config("x", &ImageConfigJson::default()).is_err());
    }
}
