//! `steward delete containers NAME... | -f PATH [--wait] [--timeout D]`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use crate::client::is_transport;
use steward_config::parse_duration;
use crate::manifests;
use crate::resource::{parse_targets, qualified};
use crate::wait::{wait_for, Goal};
use crate::{emit, report, Context};

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// `containers NAME...`, or `container/NAME...`.
    #[arg(value_name = "TYPE NAME...", add = clap_complete::engine::ArgValueCompleter::new(crate::completion::targets))]
    targets: Vec<String>,
    /// Delete the objects named in these files or folders (`-` for stdin).
    #[arg(short = 'f', long = "filename", num_args = 1.., value_name = "PATH", conflicts_with = "targets")]
    files: Vec<String>,
    /// Wait until the objects are gone (finalizers done).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits in all.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

pub async fn run(ctx: &Context, args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let mut targets: Vec<(String, String)> = Vec::new();
    if !args.files.is_empty() {
        for doc in manifests::load(&args.files, ctx.namespace())? {
            let location = doc.location();
            match doc.result {
                Ok(c) => targets.push((c.metadata.namespace, c.metadata.name)),
                Err(msg) => {
                    eprintln!("error: {location}: {msg}");
                    failed = true;
                }
            }
        }
    } else {
        let names = parse_targets(&args.targets)?;
        if names.is_empty() {
            bail!("name the containers to delete (delete containers NAME...), or give -f PATH");
        }
        targets.extend(names.into_iter().map(|n| (ctx.namespace().to_string(), n)));
    }

    let mut deleted = Vec::new();
    for (ns, name) in targets {
        match ctx.client.delete(&ns, &name, false).await {
            Ok(()) => {
                emit(&format!("{} deleted\n", qualified(&name)))?;
                deleted.push((ns, name));
            }
            Err(e) => {
                let e = anyhow::Error::from(e);
                if is_transport(&e) {
                    return Err(e);
                }
                report(&e);
                failed = true;
            }
        }
    }

    if args.wait {
        // One deadline for all: --timeout bounds the whole command.
        let deadline = Instant::now() + args.timeout;
        for (ns, name) in &deleted {
            if let Err(e) = wait_for(&ctx.client, ns, name, &Goal::Deleted, deadline).await {
                if is_transport(&e) {
                    return Err(e);
                }
                report(&e);
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
