//! `steward apply -f PATH... [--dry-run] [--prune -l SELECTOR]`.
//!
//! Every document is sent on its own as a server-side apply, so one bad
//! document is reported (file, document number, field) and the others
//! still apply.

use std::collections::{BTreeSet, HashSet};
use std::process::ExitCode;

use anyhow::bail;
use steward_schema::{Container, LabelSelector, Status};

use crate::client::{api_status, fill_type_meta, ListOptions};
use crate::manifests;
use crate::resource::qualified;
use crate::{emit, Context};

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// Files, folders (recursive: *.yaml, *.yml, *.json) or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1.., value_name = "PATH")]
    files: Vec<String>,
    /// Ask the server what would happen, without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Delete objects matching -l that the manifests no longer hold.
    #[arg(long, requires = "selector")]
    prune: bool,
    /// Label selector naming the objects --prune may delete.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Take the fields the manifests set from any other field manager
    /// (the manifests are the truth, as in a GitOps pipeline);
    /// `--force-conflicts=false` stops at such a conflict instead, naming
    /// the fields and their managers.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    force_conflicts: bool,
    /// Then follow every applied object until it is Ready, has Succeeded
    /// or has failed (one live line each); exit 1 naming the ones that
    /// failed or did not finish in --timeout.
    #[arg(long, conflicts_with = "dry_run")]
    wait: bool,
    /// How long --wait waits in all, e.g. 90s, 5m.
    #[arg(long, default_value = "5m", value_parser = steward_config::parse_duration, requires = "wait")]
    timeout: std::time::Duration,
}

/// The manifest as it is sent: what the user declares, without the
/// server-set fields a `get -o json` copy carries. A stale
/// `resourceVersion` would otherwise turn a declarative apply into a
/// conflict, and `status` is not the user's to write.
pub fn for_apply(mut c: Container) -> Container {
    fill_type_meta(&mut c);
    let m = &mut c.metadata;
    m.uid.clear();
    m.resource_version.clear();
    m.generation = 0;
    m.creation_timestamp = None;
    m.deletion_timestamp = None;
    m.managed_fields = None;
    c.status = None;
    c
}

/// The lines describing an API error about one document: each field
/// cause on its own (`spec.image: Required value`), else the message.
pub fn status_lines(s: &Status) -> Vec<String> {
    let causes = s.details.as_ref().map(|d| d.causes.as_slice()).unwrap_or_default();
    if causes.is_empty() {
        return vec![s.message.clone()];
    }
    causes
        .iter()
        .map(|c| if c.field.is_empty() { c.message.clone() } else { format!("{}: {}", c.field, c.message) })
        .collect()
}

/// Whether two versions of an object differ in what apply writes.
pub fn same_content(a: &Container, b: &Container) -> bool {
    a.spec == b.spec && a.metadata.labels == b.metadata.labels && a.metadata.annotations == b.metadata.annotations
}

pub async fn run(ctx: &Context, args: ApplyArgs) -> anyhow::Result<ExitCode> {
    if let Some(sel) = &args.selector {
        if !args.prune {
            bail!("-l/--selector is only used with --prune");
        }
        LabelSelector::parse(sel)?;
    }
    let docs = manifests::load(&args.files, ctx.namespace())?;
    if docs.is_empty() {
        bail!("no objects passed to apply");
    }
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    let mut failed = false;
    // Documents that could not be parsed hold objects we cannot name; a
    // prune then could delete what they were meant to keep.
    let mut unidentified = false;
    let mut applied: HashSet<(String, String)> = HashSet::new();
    let mut namespaces: BTreeSet<String> = ctx.namespace.iter().cloned().collect();
    let mut outcome_header = None;
    let mut to_follow: Vec<(String, String)> = Vec::new();

    for doc in docs {
        let location = doc.location();
        let obj = match doc.result {
            Ok(obj) => obj,
            Err(msg) => {
                eprintln!("error: {location}: {msg}");
                failed = true;
                unidentified = true;
                continue;
            }
        };
        let (ns, name) = (obj.metadata.namespace.clone(), obj.metadata.name.clone());
        namespaces.insert(ns.clone());
        applied.insert((ns.clone(), name.clone()));
        match apply_one(ctx, obj, args.dry_run, args.force_conflicts, &mut outcome_header).await {
            Ok(outcome) => {
                emit(&format!("{} {outcome}{suffix}\n", qualified(&name)))?;
                to_follow.push((ns, name));
            }
            Err(e) => match api_status(&e) {
                Some(status) => {
                    for line in status_lines(status) {
                        eprintln!("error: {location}: {line}");
                    }
                    failed = true;
                }
                // The server is gone: nothing after this would fare better.
                None => return Err(e),
            },
        }
    }

    if let (true, Some(selector)) = (args.prune, &args.selector) {
        if unidentified {
            eprintln!("error: not pruning: some documents could not be read, so the objects to keep are not known");
            failed = true;
        } else if !prune(ctx, selector, &namespaces, &applied, args.dry_run, suffix).await? {
            failed = true;
        }
    }
    if args.wait && !crate::follow::follow(ctx, &to_follow, args.timeout).await? {
        failed = true;
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Applies one object and names the outcome: `created`, `configured` or
/// `unchanged`. The server says which in `X-Steward-Apply`; a server that
/// does not is asked for the object first, and the outcome is inferred.
/// `outcome_header` remembers whether the server sends the header, so the
/// extra GET is made only until it is seen once.
async fn apply_one(
    ctx: &Context,
    obj: Container,
    dry_run: bool,
    force: bool,
    outcome_header: &mut Option<bool>,
) -> anyhow::Result<&'static str> {
    let obj = for_apply(obj);
    let before = if *outcome_header == Some(true) {
        None
    } else {
        ctx.client.get(&obj.metadata.namespace, &obj.metadata.name).await?
    };
    let r = ctx.client.apply(&obj, dry_run, force).await?;
    *outcome_header = Some(r.outcome.is_some());
    match r.outcome.as_deref() {
        Some("created") => return Ok("created"),
        Some("configured") => return Ok("configured"),
        Some("unchanged") => return Ok("unchanged"),
        _ => {}
    }
    Ok(match before {
        _ if r.created => "created",
        None => "created",
        Some(before) => {
            if before.metadata.resource_version != r.object.metadata.resource_version
                || !same_content(&before, &r.object)
            {
                "configured"
            } else {
                "unchanged"
            }
        }
    })
}

/// Deletes what matches `selector` in `namespaces` but was not applied.
/// Returns false if any delete failed.
async fn prune(
    ctx: &Context,
    selector: &str,
    namespaces: &BTreeSet<String>,
    applied: &HashSet<(String, String)>,
    dry_run: bool,
    suffix: &str,
) -> anyhow::Result<bool> {
    let mut ok = true;
    let opts = ListOptions { label_selector: Some(selector.to_string()), field_selector: None };
    for ns in namespaces {
        let list = ctx.client.list(Some(ns), &opts).await?;
        for c in list.items {
            let key = (c.metadata.namespace.clone(), c.metadata.name.clone());
            // Already being deleted: pruning it again would only repeat
            // the line on every apply until its finalizers are done.
            if applied.contains(&key) || c.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match ctx.client.delete(&key.0, &key.1, dry_run).await {
                Ok(()) => emit(&format!("{} pruned{suffix}\n", qualified(&key.1)))?,
                Err(e) => match e.status() {
                    Some(s) if s.code == 404 => {}
                    Some(_) => {
                        eprintln!("error: pruning {}/{}: {e}", key.0, key.1);
                        ok = false;
                    }
                    None => return Err(e.into()),
                },
            }
        }
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_schema::{StatusCause, StatusDetails, Time};

    #[test]
    fn server_set_fields_are_not_sent() {
        let mut c = Container::default();
        c.metadata.name = "a".into();
        c.metadata.resource_version = "7".into();
        c.metadata.uid = "u".into();
        c.metadata.generation = 3;
        c.metadata.creation_timestamp = Some(Time::now());
        c.metadata.labels.insert("app".into(), "web".into());
        c.status = Some(Default::default());
        let sent = for_apply(c);
        let v = serde_json::to_value(&sent).unwrap();
        assert_eq!(v["apiVersion"], "steward.dev/v1alpha1");
        assert_eq!(v["kind"], "Container");
        assert_eq!(v["metadata"], serde_json::json!({"name": "a", "labels": {"app": "web"}}));
        assert!(v.get("status").is_none());
    }

    #[test]
    fn error_lines_name_fields() {
        let s = Status::failure(422, "Invalid", "Container \"a\" is invalid").with_details(StatusDetails {
            causes: vec![
                StatusCause { field: "spec.image".into(), reason: "FieldValueRequired".into(), message: "Required value".into() },
                StatusCause { field: String::new(), reason: String::new(), message: "something else".into() },
            ],
            ..Default::default()
        });
        assert_eq!(status_lines(&s), ["spec.image: Required value", "something else"]);
        let s = Status::failure(409, "Conflict", "try again");
        assert_eq!(status_lines(&s), ["try again"]);
    }
}
