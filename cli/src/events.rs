//! `steward events [-A] [--for container/NAME] [-w]`: what happened to
//! containers, as `kubectl events` prints it (oldest first; with `-w`,
//! each new or repeated event as it happens).

use std::process::ExitCode;

use chrono::Utc;
use steward_client::WatchEvent;
use steward_schema::Event;

use crate::table::{human_age, TableWriter};
use crate::{emit, Context};

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Events of every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Only the events of this container (`container/NAME` or `NAME`).
    #[arg(long = "for", value_name = "container/NAME")]
    for_: Option<String>,
    /// After the list, print events as they happen.
    #[arg(short = 'w', long)]
    watch: bool,
}

pub async fn run(ctx: &Context, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let ns = if args.all_namespaces { None } else { Some(ctx.namespace()) };
    let selector = match &args.for_ {
        Some(t) => {
            let name = t.strip_prefix("container/").or_else(|| t.strip_prefix("containers/")).unwrap_or(t);
            steward_schema::validate::dns1123_label(name).map_err(|m| anyhow::anyhow!("--for {t:?}: {m}"))?;
            Some(format!("involvedObject.kind=Container,involvedObject.name={name}"))
        }
        None => None,
    };
    let (mut events, rv) = ctx.client.events(ns, selector.as_deref()).await?;
    events.sort_by_key(|e| e.last_seen());
    let mut w = TableWriter::default();
    let header = header(args.all_namespaces);
    if events.is_empty() && !args.watch {
        match ns {
            Some(ns) => eprintln!("No events found in {ns} namespace."),
            None => eprintln!("No events found."),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    let mut rows = vec![header];
    rows.extend(events.iter().map(|e| row(e, args.all_namespaces, now)));
    emit(&w.render(&rows))?;
    if !args.watch {
        return Ok(ExitCode::SUCCESS);
    }
    let mut stream = ctx.client.watch_events(ns, selector.as_deref(), &rv).await?;
    while let Some(ev) = stream.next().await? {
        let e = match ev {
            WatchEvent::Added(e) | WatchEvent::Modified(e) => e,
            WatchEvent::Deleted(_) | WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(s) => return Err(steward_client::Error::Api(Box::new(s)).into()),
        };
        emit(&w.render(&[row(&e, args.all_namespaces, Utc::now())]))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn header(namespaces: bool) -> Vec<String> {
    let mut h: Vec<String> = Vec::new();
    if namespaces {
        h.push("NAMESPACE".into());
    }
    h.extend(["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"].map(String::from));
    h
}

fn row(e: &Event, namespaces: bool, now: chrono::DateTime<Utc>) -> Vec<String> {
    let mut r = Vec::new();
    if namespaces {
        r.push(e.metadata.namespace.clone());
    }
    let seen = e.last_seen().map_or_else(|| "<unknown>".to_string(), |t| human_age(now - t));
    let seen = if e.count > 1 { format!("{seen} (x{})", e.count) } else { seen };
    let io = &e.involved_object;
    r.extend([seen, e.type_.clone(), e.reason.clone(), format!("{}/{}", io.kind.to_ascii_lowercase(), io.name), e.message.clone()]);
    r
}
