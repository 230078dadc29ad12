//! A tiny busybox OCI image, built on the spot for steward's tests.
//!
//! The machines tests run on have no internet, so the image is made from
//! Debian's `busybox-static` (`/bin/busybox`): one gzip layer holding the
//! binary, a symlink in `/bin` for every applet it has, and a minimal `/etc`. The
//! result is an OCI image-layout tar archive (`oci-layout`, `index.json`,
//! `blobs/sha256/...`), the format of `steward image import` and of
//! `skopeo copy oci-archive:...`.
//!
//! A separate crate so the controller's integration tests and the e2e suite
//! share it without pulling each other in; it depends only on tar, flate2
//! and sha2.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// Where Debian's busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";
/// The image name recorded in the archive's `org.opencontainers.image.ref.name`.
pub const DEFAULT_REF: &str = "127.0.0.1:5000/busybox:1.36";

/// Every applet Debian's busybox-static offers (`busybox --list`), each
/// linked into `/bin` as a real busybox image does, so a manifest can run
/// `httpd`, `nc`, `wget` or `awk` by name.
pub fn applets() -> io::Result<Vec<String>> {
    let out = std::process::Command::new(BUSYBOX).arg("--list").output().map_err(busybox_missing)?;
    if !out.status.success() {
        return Err(io::Error::other(format!("`{BUSYBOX} --list` failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// What was built.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// The OCI archive.
    pub archive: PathBuf,
    /// `sha256:...` of the manifest (the image digest).
    pub manifest_digest: String,
    /// `sha256:...` of the uncompressed layer (its diff id = chain id).
    pub diff_id: String,
    /// Sum of the blob sizes (config + layer + manifest).
    pub total_size: u64,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn busybox_missing(e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{BUSYBOX} is needed to build the test image ({e}); install it with `apt-get install busybox-static`"),
    )
}

/// The uncompressed layer tar.
fn layer_tar(variant: Option<&str>) -> io::Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX).map_err(busybox_missing)?;
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, io::empty())
    };
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, path, data)
    };
    for (d, mode) in [("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700), ("home", 0o755), ("proc", 0o755), ("sys", 0o755), ("dev", 0o755), ("run", 0o755)] {
        dir(&mut b, d, mode)?;
    }
    file(&mut b, "bin/busybox", 0o755, &busybox)?;
    for applet in applets()? {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    file(&mut b, "etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/home:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")?;
    file(&mut b, "etc/group", 0o644, b"root:x:0:\nwww:x:33:\nstaff:x:50:www\nnogroup:x:65534:\n")?;
    if let Some(v) = variant {
        // A layer of its own: nothing is shared with another variant.
        file(&mut b, "etc/steward-variant", 0o644, v.as_bytes())?;
    }
    b.into_inner()
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data)?;
    e.finish()
}

/// Builds `dir/busybox-oci.tar` named [`DEFAULT_REF`]; see
/// [`build_busybox_oci_archive_named`].
pub fn build_busybox_oci_archive(dir: &Path) -> io::Result<PathBuf> {
    Ok(build_busybox_oci_archive_named(dir, DEFAULT_REF)?.archive)
}

/// Builds an OCI image-layout archive `dir/busybox-oci.tar` whose index
/// names the image `reference` (e.g. `127.0.0.1:5000/busybox:1.36`).
/// Image config: `Cmd ["sh"]`, `Env PATH=...`, `WorkingDir /`.
pub fn build_busybox_oci_archive_named(dir: &Path, reference: &str) -> io::Result<BuiltImage> {
    build_busybox_oci_archive_variant(dir, reference, None)
}

/// [`build_busybox_oci_archive_named`], with a `steward.test/variant` label
/// in the image config and an `/etc/steward-variant` file in the layer when
/// `variant` is given: another image sharing no blob with the others.
pub fn build_busybox_oci_archive_variant(dir: &Path, reference: &str, variant: Option<&str>) -> io::Result<BuiltImage> {
    let layer = layer_tar(variant)?;
    let diff_id = sha256(&layer);
    let layer_gz = gzip(&layer)?;
    let layer_digest = sha256(&layer_gz);

    let mut config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "steward-testimage"}],
    });
    if let Some(v) = variant {
        config["config"]["Labels"] = json!({"steward.test/variant": v});
    }
    let config = serde_json::to_vec(&config)?;
    let config_digest = sha256(&config);

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_gz.len()}],
    }))?;
    let manifest_digest = sha256(&manifest);

    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": reference},
            "platform": {"architecture": host_arch(), "os": "linux"},
        }],
    }))?;

    std::fs::create_dir_all(dir)?;
    let archive = dir.join("busybox-oci.tar");
    let mut b = tar::Builder::new(File::create(&archive)?);
    let mut add = |path: &str, data: &[u8]| -> io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, path, data)
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    for (digest, data) in [(&config_digest, &config), (&layer_digest, &layer_gz), (&manifest_digest, &manifest)] {
        let hex = digest.trim_start_matches("sha256:");
        add(&format!("blobs/sha256/{hex}"), data)?;
    }
    b.into_inner()?.sync_all()?;
    Ok(BuiltImage {
        archive,
        manifest_digest,
        diff_id,
        total_size: (config.len() + layer_gz.len() + manifest.len()) as u64,
    })
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
