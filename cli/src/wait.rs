//! `steward wait container/NAME --for=condition=Ready|--for=delete
//! [--timeout D]`, and the waiting that `delete --wait` shares.
//!
//! Waiting is a GET followed by a watch narrowed to the one name
//! (`fieldSelector=metadata.name=NAME`), so a change is seen as it happens
//! rather than at the next poll; an expired or ended watch starts over
//! from a fresh GET.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use steward_schema::Container;
use tokio::time::Instant;

use crate::client::{is_transport, Client, ClientError, ListOptions, WatchEvent};
use steward_config::parse_duration;
use crate::resource::{parse_targets, qualified};
use crate::{emit, report, Context};

#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// `container/NAME...`, or `container NAME...`.
    #[arg(required = true, value_name = "container/NAME", add = clap_complete::engine::ArgValueCompleter::new(crate::completion::targets))]
    targets: Vec<String>,
    /// `condition=TYPE` (status "True"), `condition=TYPE=STATUS`, or `delete`.
    #[arg(long = "for", value_name = "condition=TYPE|delete", value_parser = parse_goal)]
    goal: Goal,
    /// How long to wait in all, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

/// What to wait for.
#[derive(Clone, Debug, PartialEq)]
pub enum Goal {
    /// `status.conditions` holds `type_` with this `status`.
    Condition { type_: String, status: String },
    /// The object is gone (404, or replaced by a new incarnation).
    Deleted,
}

pub fn parse_goal(s: &str) -> Result<Goal, String> {
    if s == "delete" {
        return Ok(Goal::Deleted);
    }
    let Some(cond) = s.strip_prefix("condition=") else {
        return Err(format!("{s:?}: use --for=condition=TYPE or --for=delete"));
    };
    let (type_, status) = match cond.split_once('=') {
        Some((t, v)) => (t, v),
        None => (cond, "True"),
    };
    if type_.is_empty() || status.is_empty() {
        return Err(format!("{s:?}: use --for=condition=TYPE or --for=condition=TYPE=STATUS"));
    }
    Ok(Goal::Condition { type_: type_.to_string(), status: status.to_string() })
}

fn condition_met(c: &Container, type_: &str, status: &str) -> bool {
    c.status
        .as_ref()
        .and_then(|s| s.condition(type_))
        .is_some_and(|cond| cond.status.eq_ignore_ascii_case(status))
}

pub async fn run(ctx: &Context, args: WaitArgs) -> anyhow::Result<ExitCode> {
    let names = parse_targets(&args.targets)?;
    if names.is_empty() {
        bail!("name the container to wait for: container/NAME");
    }
    let deadline = Instant::now() + args.timeout;
    let mut failed = false;
    for name in &names {
        match wait_for(&ctx.client, ctx.namespace(), name, &args.goal, deadline).await {
            Ok(()) => emit(&format!("{} condition met\n", qualified(name)))?,
            // Another name may still succeed; report and go on.
            Err(e) if !is_transport(&e) => {
                report(&e);
                failed = true;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Waits until `goal` holds for `ns/name` or `deadline` passes.
pub async fn wait_for(client: &Client, ns: &str, name: &str, goal: &Goal, deadline: Instant) -> anyhow::Result<()> {
    let waiting = async {
        // The uid seen first: a new object under the same name means the
        // one we waited on is gone.
        let mut uid: Option<String> = None;
        let opts = ListOptions { label_selector: None, field_selector: Some(format!("metadata.name={name}")) };
        loop {
            let current = client.get(ns, name).await?;
            let rv = match (goal, current) {
                (Goal::Deleted, None) => return Ok(()),
                (Goal::Deleted, Some(c)) => {
                    if uid.as_ref().is_some_and(|u| *u != c.metadata.uid) {
                        return Ok(());
                    }
                    uid.get_or_insert(c.metadata.uid);
                    c.metadata.resource_version
                }
                (Goal::Condition { .. }, None) => {
                    bail!("containers.steward.dev {name:?} not found")
                }
                (Goal::Condition { type_, status }, Some(c)) => {
                    if condition_met(&c, type_, status) {
                        return Ok(());
                    }
                    c.metadata.resource_version
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let started = Instant::now();
            let mut stream = client.watch(Some(ns), &opts, &rv, Some(remaining + Duration::from_secs(1))).await?;
            while let Some(event) = stream.next().await? {
                match (event, goal) {
                    // A new incarnation under the same name: ours is gone.
                    (WatchEvent::Added(c) | WatchEvent::Modified(c), Goal::Deleted)
                        if c.metadata.name == name && uid.as_ref().is_some_and(|u| *u != c.metadata.uid) =>
                    {
                        return Ok(())
                    }
                    (WatchEvent::Added(c) | WatchEvent::Modified(c), Goal::Condition { type_, status })
                        if c.metadata.name == name && condition_met(&c, type_, status) =>
                    {
                        return Ok(())
                    }
                    (WatchEvent::Deleted(c), Goal::Deleted) if c.metadata.name == name => return Ok(()),
                    (WatchEvent::Deleted(c), Goal::Condition { .. }) if c.metadata.name == name => {
                        bail!("{} was deleted while waiting", qualified(name))
                    }
                    (WatchEvent::Error(s), _) if s.code == 410 => break,
                    (WatchEvent::Error(s), _) => return Err(ClientError::Api(Box::new(s)).into()),
                    _ => {}
                }
            }
            // A watch the server ends at once (a proxy, an old server)
            // would otherwise turn this into a busy loop of GETs.
            if started.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    match tokio::time::timeout_at(deadline, waiting).await {
        Ok(result) => result,
        Err(_) => Err(anyhow!("timed out waiting for the condition on {}", qualified(name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_schema::{Condition, ContainerStatus};

    #[test]
    fn goals() {
        assert_eq!(parse_goal("delete"), Ok(Goal::Deleted));
        assert_eq!(
            parse_goal("condition=Ready"),
            Ok(Goal::Condition { type_: "Ready".into(), status: "True".into() })
        );
        assert_eq!(
            parse_goal("condition=Ready=False"),
            Ok(Goal::Condition { type_: "Ready".into(), status: "False".into() })
        );
        assert!(parse_goal("jsonpath={.status.phase}=Running").is_err());
        assert!(parse_goal("condition=").is_err());
    }

    #[test]
    fn conditions() {
        let mut c = Container::default();
        assert!(!condition_met(&c, "Ready", "True"));
        c.status = Some(ContainerStatus {
            conditions: vec![Condition { type_: "Ready".into(), status: "True".into(), ..Default::default() }],
            ..Default::default()
        });
        assert!(condition_met(&c, "Ready", "True"));
        assert!(!condition_met(&c, "Ready", "False"));
        assert!(!condition_met(&c, "Other", "True"));
    }
}
