//! OCI image-layout tar archives (`steward image import FILE.tar`, for
//! air-gapped machines) as a blob source.
//!
//! One pass over the tar records where each blob's bytes start; blobs are
//! then read by seeking, so a large archive is never held in memory and its
//! blobs can be streamed into containerd in any order.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::image::OciDescriptor;
use super::store::{verify, BlobSource};

/// The annotation naming an image in an OCI layout's index.json.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's own export writes the full name here (and only the tag in `REF_NAME`).
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

pub(crate) struct Archive {
    path: PathBuf,
    /// digest -> (offset of the data in the tar, size)
    blobs: HashMap<String, (u64, u64)>,
    pub index: Vec<u8>,
}

impl Archive {
    /// Scans the archive (blocking I/O: call from `spawn_blocking`).
    pub fn open(path: &Path) -> Result<Archive, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        let mut tar = tar::Archive::new(file);
        let mut blobs = HashMap::new();
        let mut index = None;
        let bad = |e: std::io::Error| format!("{}: not a readable tar archive: {e}", path.display());
        for entry in tar.entries_with_seek().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let name = entry.path().map_err(bad)?.to_string_lossy().trim_start_matches("./").to_string();
            if name == "index.json" {
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf).map_err(bad)?;
                index = Some(buf);
            } else if let Some(rest) = name.strip_prefix("blobs/") {
                if let Some((alg, hex)) = rest.split_once('/') {
                    blobs.insert(format!("{alg}:{hex}"), (entry.raw_file_position(), entry.size()));
                }
            }
        }
        let index = index.ok_or_else(|| format!("{}: no index.json (not an OCI image layout archive)", path.display()))?;
        Ok(Archive { path: path.to_path_buf(), blobs, index })
    }

    /// The images the index names: (name annotation, descriptor).
    pub fn named_images(&self) -> Result<Vec<(String, OciDescriptor)>, String> {
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<OciDescriptor>,
        }
        let idx: Index = serde_json::from_slice(&self.index).map_err(|e| format!("index.json: {e}"))?;
        let mut out = Vec::new();
        for d in idx.manifests {
            let name = d.annotations.get(CONTAINERD_NAME).or_else(|| d.annotations.get(REF_NAME)).cloned();
            match name {
                Some(n) => out.push((n, d)),
                None => tracing::warn!(digest = %d.digest, "archive: image without a name annotation skipped"),
            }
        }
        if out.is_empty() {
            return Err(format!(
                "{}: index.json names no image (no {REF_NAME} annotation)",
                self.path.display()
            ));
        }
        Ok(out)
    }

    fn locate(&self, digest: &str) -> Result<(u64, u64), String> {
        self.blobs
            .get(digest)
            .copied()
            .ok_or_else(|| format!("{}: blob {digest} is missing from the archive", self.path.display()))
    }
}

/// Manifests, indexes and configs are small; a larger one is not to be
/// trusted with an allocation of its claimed size.
const MAX_METADATA_BLOB: u64 = 16 << 20;

fn read_range(path: &Path, offset: u64, size: u64) -> Result<Vec<u8>, String> {
    if size > MAX_METADATA_BLOB {
        return Err(format!("{}: a {size}-byte manifest or config is too large (limit {MAX_METADATA_BLOB})", path.display()));
    }
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0; size as usize];
    f.read_exact(&mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(buf)
}

impl BlobSource for Archive {
    fn fetch_bytes<'a>(&'a self, d: &'a OciDescriptor) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let (offset, size) = self.locate(&d.digest)?;
            let path = self.path.clone();
            let data = tokio::task::spawn_blocking(move || read_range(&path, offset, size))
                .await
                .map_err(|e| e.to_string())??;
            verify(d, &data)?;
            Ok(data)
        })
    }

    fn fetch_stream<'a>(&'a self, d: &'a OciDescriptor) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, String>>, String>> {
        Box::pin(async move {
            let (offset, size) = self.locate(&d.digest)?;
            let path = self.path.clone();
            let mut f = tokio::fs::File::open(&path).await.map_err(|e| format!("{}: {e}", path.display()))?;
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            f.seek(SeekFrom::Start(offset)).await.map_err(|e| format!("{}: {e}", path.display()))?;
            let stream = futures_util::stream::unfold((f, size), move |(mut f, left)| async move {
                if left == 0 {
                    return None;
                }
                let mut buf = vec![0u8; (left as usize).min(super::content::CHUNK)];
                match f.read_exact(&mut buf).await {
                    Ok(_) => {
                        let n = buf.len() as u64;
                        Some((Ok(Bytes::from(buf)), (f, left - n)))
                    }
                    Err(e) => Some((Err(format!("archive read: {e}")), (f, 0))),
                }
            });
            Ok(stream.boxed())
        })
    }
}
