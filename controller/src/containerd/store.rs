//! Storing one image into containerd from any blob source (a registry, an
//! archive): blobs into the content store with their GC labels, layers
//! unpacked into snapshots, then the image record. Runs under the caller's
//! lease so nothing is collected half-way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::content::{self, ContentError};
use super::image::{self, ImageConfigJson, ImageError, ManifestOrIndex, OciDescriptor};
use super::Ctx;
use crate::actual::{ImageConfig, PullProgress};

/// Where blobs come from. Errors are messages for the user.
pub(crate) trait BlobSource: Send + Sync {
    /// The whole blob, digest-checked (manifests, configs: small).
    fn fetch_bytes<'a>(&'a self, d: &'a OciDescriptor) -> BoxFuture<'a, Result<Vec<u8>, String>>;
    /// The blob as a stream (layers); containerd checks the digest at commit.
    fn fetch_stream<'a>(&'a self, d: &'a OciDescriptor) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, String>>, String>>;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The source failed (registry unreachable, blob missing in an archive).
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Image(#[from] ImageError),
    #[error("{0}")]
    Content(#[from] ContentError),
}

impl From<containerd_client::tonic::Status> for StoreError {
    fn from(s: containerd_client::tonic::Status) -> Self {
        StoreError::Image(ImageError::Status(s))
    }
}

/// Checks a fetched blob against its descriptor.
pub(crate) fn verify(d: &OciDescriptor, data: &[u8]) -> Result<(), String> {
    let got = image::sha256_digest(data);
    if got != d.digest {
        return Err(format!("digest mismatch for {}: got {got}", d.digest));
    }
    Ok(())
}

/// Stores the image whose top object (`top`, a manifest or an index) has
/// already been fetched as `top_bytes`, names it `name`, and returns what it
/// says about running it. `progress` sees bytes done over all blobs.
pub(crate) async fn store_image(
    ctx: &Ctx,
    src: &dyn BlobSource,
    name: &str,
    top: &OciDescriptor,
    top_bytes: Vec<u8>,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
) -> Result<ImageConfig, StoreError> {
    let invalid = |m: String| StoreError::Image(ImageError::Invalid(m));
    let top_parsed: ManifestOrIndex =
        serde_json::from_slice(&top_bytes).map_err(|e| invalid(format!("manifest {}: {e}", top.digest)))?;

    // An index (multi-platform): pick this machine's manifest.
    let (manifest_desc, manifest_bytes, manifest, index) = if top_parsed.is_index() {
        let Some(d) = image::pick_platform(&top_parsed).cloned() else {
            return Err(invalid(format!("{name} has no image for linux/{}", image::host_arch())));
        };
        let bytes = src.fetch_bytes(&d).await.map_err(StoreError::Source)?;
        let m: ManifestOrIndex = serde_json::from_slice(&bytes).map_err(|e| invalid(format!("manifest {}: {e}", d.digest)))?;
        (d, bytes, m, Some(top_parsed))
    } else {
        (top.clone(), top_bytes.clone(), top_parsed, None)
    };
    let Some(config_desc) = manifest.config.clone() else {
        return Err(invalid(format!("manifest {} has no config", manifest_desc.digest)));
    };
    let config_bytes = src.fetch_bytes(&config_desc).await.map_err(StoreError::Source)?;
    let config: ImageConfigJson =
        serde_json::from_slice(&config_bytes).map_err(|e| invalid(format!("image config {}: {e}", config_desc.digest)))?;
    let run = image::image_config(&top.digest, &config).map_err(|e| invalid(e.to_string()))?;
    let diff_ids = config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
    if diff_ids.len() != manifest.layers.len() {
        return Err(invalid(format!(
            "image config lists {} layers but the manifest has {}",
            diff_ids.len(),
            manifest.layers.len()
        )));
    }

    let total: u64 = manifest.layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>()
        + config_desc.size.max(0) as u64
        + manifest_bytes.len() as u64
        + if index.is_some() { top_bytes.len() as u64 } else { 0 };
    let done = AtomicU64::new(0);
    // At most every 256 KiB, so a status writer is not flooded.
    let last = AtomicU64::new(0);
    let report = |n: u64| {
        let d = done.fetch_add(n, Ordering::Relaxed) + n;
        if d >= total || d - last.load(Ordering::Relaxed) >= 256 * 1024 {
            last.store(d, Ordering::Relaxed);
            progress(PullProgress { done: d, total });
        }
    };
    progress(PullProgress { done: 0, total });

    // Layers first, manifest last: a manifest in the store promises children.
    for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
        let labels = HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]);
        if content::exists(ctx, &layer.digest).await? {
            image::label_blob(ctx, &layer.digest, labels).await?;
            report(layer.size.max(0) as u64);
            continue;
        }
        tracing::debug!(layer = %layer.digest, size = layer.size, "fetching layer");
        let stream = src.fetch_stream(layer).await.map_err(StoreError::Source)?;
        content::write_blob(ctx, &layer.digest, layer.size, labels, stream, &report).await.map_err(|e| match e {
            ContentError::Source(m) => StoreError::Source(m),
            ContentError::Status(s) if s.code() == containerd_client::tonic::Code::FailedPrecondition => {
                StoreError::Source(format!("layer {}: {}", layer.digest, s.message()))
            }
            other => other.into(),
        })?;
    }
    let top_chain = run.top_layer_chain_id.clone();
    let config_labels = HashMap::from([(format!("containerd.io/gc.ref.snapshot.{}", ctx.snapshotter), top_chain)]);
    content::write_bytes(ctx, &config_desc.digest, config_bytes, config_labels.clone()).await?;
    image::label_blob(ctx, &config_desc.digest, config_labels).await?;
    report(config_desc.size.max(0) as u64);

    let manifest_labels = image::manifest_gc_labels(&manifest);
    content::write_bytes(ctx, &manifest_desc.digest, manifest_bytes.clone(), manifest_labels.clone()).await?;
    image::label_blob(ctx, &manifest_desc.digest, manifest_labels).await?;
    report(manifest_bytes.len() as u64);
    if let Some(index) = &index {
        let labels = image::manifest_gc_labels(index);
        content::write_bytes(ctx, &top.digest, top_bytes.clone(), labels.clone()).await?;
        image::label_blob(ctx, &top.digest, labels).await?;
        report(top_bytes.len() as u64);
    }

    image::unpack(ctx, &manifest, &config).await?;
    let mut target = image::to_descriptor(top);
    if target.media_type.is_empty() {
        target.media_type = if index.is_some() { image::MEDIA_OCI_INDEX.into() } else { image::MEDIA_OCI_MANIFEST.into() };
    }
    image::put_record(ctx, name, target).await?;
    Ok(run)
}
