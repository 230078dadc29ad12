//! `steward logs NAME [-f] [--tail N] [--since D] [--timestamps] [--previous]`.

use std::process::ExitCode;

use futures_util::StreamExt;

use crate::{emit, Context};

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The container (`NAME` or `container/NAME`).
    #[arg(add = clap_complete::engine::ArgValueCompleter::new(crate::completion::targets))]
    pub name: String,
    /// Keep streaming new output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u64>,
    /// Only lines newer than this (e.g. 10s, 5m, 1h).
    #[arg(long, value_parser = steward_config::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(long)]
    pub timestamps: bool,
    /// The previous run's output (before the last restart).
    #[arg(short = 'p', long)]
    pub previous: bool,
}

pub async fn run(ctx: &Context, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.strip_prefix("container/").unwrap_or(&args.name);
    let mut query: Vec<(&str, String)> = Vec::new();
    if args.follow {
        query.push(("follow", "true".into()));
    }
    if let Some(n) = args.tail {
        query.push(("tailLines", n.to_string()));
    }
    if let Some(d) = args.since {
        query.push(("sinceSeconds", d.as_secs().max(1).to_string()));
    }
    if args.timestamps {
        query.push(("timestamps", "true".into()));
    }
    if args.previous {
        query.push(("previous", "true".into()));
    }
    let resp = ctx.client.logs(ctx.namespace(), name, &query).await?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ctx.client.body_error(&e))?;
        emit(&String::from_utf8_lossy(&chunk))?;
    }
    Ok(ExitCode::SUCCESS)
}
