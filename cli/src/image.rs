//! `steward image import FILE.tar`: loads an OCI image archive into the
//! server's container runtime, for machines without a registry.

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
    /// Import an OCI image-layout archive (as `skopeo copy ... oci-archive:FILE` writes).
    Import {
        /// The archive.
        file: std::path::PathBuf,
    },
}

pub async fn run(ctx: &Context, args: ImageArgs) -> anyhow::Result<ExitCode> {
    match args.command {
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
