//! `steward image ls | pull REF | rm REF... | prune | import FILE.tar`: the
//! server's container runtime's images (the `Image` view).

use std::process::ExitCode;

use anyhow::Context as _;

use crate::{emit, Context};

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// List images: references, digest, size, last use, users.
    #[command(alias = "list")]
    Ls,
    /// Pull an image now (e.g. docker.io/library/busybox:1.36).
    Pull {
        reference: String,
    },
    /// Remove images by reference (e.g. docker.io/library/busybox:1.36,
    /// busybox:1.36) or digest (sha256:... or sha256-...); refused while a
    /// Container uses one.
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove every image no Container uses.
    Prune,
    /// Import an OCI image-layout archive (as `skopeo copy ... oci-archive:FILE` writes).
    Import {
        /// The archive.
        file: std::path::PathBuf,
    },
}

/// `docker.io/library/busybox:1.36` for `busybox:1.36`: the name the
/// server gives the image (the controller's reference parser).
fn normalise(r: &str) -> String {
    steward_controller::containerd::registry::Reference::parse(r).map(|r| r.full_name()).unwrap_or_else(|_| r.trim().to_string())
}

fn size(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1}MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1}KiB", b as f64 / 1024.0)
    }
}

pub async fn run(ctx: &Context, args: ImageArgs) -> anyhow::Result<ExitCode> {
    let str_of = |v: &serde_json::Value, p: &str| v.pointer(p).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
    let users = |v: &serde_json::Value| -> Vec<String> {
        v.pointer("/status/usedBy")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .map(|u| format!("{}/{}", u["namespace"].as_str().unwrap_or_default(), u["name"].as_str().unwrap_or_default()))
            .collect()
    };
    match args.command {
        ImageCommand::Ls => {
            let mut rows = vec![["IMAGE".to_string(), "DIGEST".into(), "SIZE".into(), "LAST USED".into(), "USED BY".into()]];
            for i in ctx.client.list_images().await? {
                let tags: Vec<String> = i.pointer("/status/repoTags").and_then(serde_json::Value::as_array).into_iter().flatten().filter_map(|t| t.as_str().map(String::from)).collect();
                let digest = str_of(&i, "/status/digest");
                let short = digest.get(..19).unwrap_or(&digest).to_string();
                let u = users(&i);
                rows.push([
                    tags.join(","),
                    short,
                    size(i.pointer("/status/size").and_then(serde_json::Value::as_u64).unwrap_or(0)),
                    str_of(&i, "/status/lastUsed"),
                    if u.is_empty() { "-".into() } else { u.join(",") },
                ]);
            }
            let widths: Vec<usize> = (0..5).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
            let mut out = String::new();
            for r in rows {
                let line: Vec<String> = r.iter().enumerate().map(|(c, v)| format!("{v:<w$}", w = widths[c])).collect();
                out.push_str(line.join("   ").trim_end());
                out.push('\n');
            }
            emit(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Pull { reference } => {
            let i = ctx.client.pull_image(&reference).await?;
            emit(&format!("image {} pulled ({})\n", normalise(&reference), str_of(&i, "/status/digest")))?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Rm { images } => {
            let all = ctx.client.list_images().await?;
            let mut failed = false;
            for want in images {
                let as_digest = want.replacen("sha256-", "sha256:", 1);
                let norm = normalise(&want);
                let found = all.iter().find(|i| {
                    str_of(i, "/status/digest") == as_digest
                        || i.pointer("/status/repoTags").and_then(serde_json::Value::as_array).is_some_and(|t| t.iter().any(|t| t.as_str() == Some(norm.as_str())))
                });
                let Some(img) = found else {
                    crate::report(&anyhow::anyhow!("image {want:?} not found (`steward image ls` lists them)"));
                    failed = true;
                    continue;
                };
                match ctx.client.delete_image(&str_of(img, "/metadata/name")).await {
                    Ok(_) => emit(&format!("image {want} removed\n"))?,
                    Err(e) => {
                        crate::report(&e.into());
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        ImageCommand::Prune => {
            let mut n = 0;
            for i in ctx.client.list_images().await?.iter().filter(|i| users(i).is_empty()) {
                let name = str_of(i, "/metadata/name");
                match ctx.client.delete_image(&name).await {
                    Ok(_) => {
                        n += 1;
                        emit(&format!("image {} removed\n", str_of(i, "/status/repoTags/0")))?;
                    }
                    // Taken into use meanwhile: not garbage.
                    Err(e) => crate::report(&e.into()),
                }
            }
            emit(&format!("{n} image(s) removed\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Import { file } => {
            let f = tokio::fs::File::open(&file).await.with_context(|| format!("{}", file.display()))?;
            let images = ctx.client.import_image(f).await?;
            for i in images {
                emit(&format!("image {i} imported\n"))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
