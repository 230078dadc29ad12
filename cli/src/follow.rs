//! `steward apply --wait`: follows every applied Container until it is
//! Ready, has Succeeded, or has failed (a pull that fails, a create that
//! fails, a crash loop, a Failed phase), one live line per object (pull
//! progress while pulling), and says which failed or did not finish.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use steward_schema::{Container, Phase};
use tokio::time::Instant;

use crate::client::{ListOptions, WatchEvent};
use crate::resource::qualified;
use crate::{emit, Context};

/// Waiting reasons that end the wait as a failure: the controller keeps
/// trying, but a person has to look.
const FAILING: &[&str] = &["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerError", "CrashLoopBackOff"];

/// Where one object stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Waiting(String),
    Ready,
    Succeeded,
    Failed(String),
}

impl Verdict {
    fn done(&self) -> bool {
        !matches!(self, Verdict::Waiting(_))
    }

    fn text(&self) -> String {
        match self {
            Verdict::Waiting(s) => s.clone(),
            Verdict::Ready => "Ready".into(),
            Verdict::Succeeded => "Succeeded".into(),
            Verdict::Failed(s) => format!("failed: {s}"),
        }
    }
}

/// The verdict on `c`, from a status that describes its current spec.
pub fn verdict(c: &Container) -> Verdict {
    let Some(st) = c.status.as_ref() else { return Verdict::Waiting("waiting for the controller".into()) };
    if st.observed_generation.unwrap_or(0) < c.metadata.generation {
        return Verdict::Waiting("waiting for the controller to see this version".into());
    }
    let state = st.state.as_ref();
    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        if FAILING.contains(&w.reason.as_str()) {
            return Verdict::Failed(if w.message.is_empty() { w.reason.clone() } else { format!("{}: {}", w.reason, w.message) });
        }
    }
    match st.phase {
        Some(Phase::Succeeded) => return Verdict::Succeeded,
        Some(Phase::Failed) => {
            let t = state.and_then(|s| s.terminated.as_ref());
            let why = t.map(|t| format!("{} (exit code {})", t.reason, t.exit_code)).unwrap_or_else(|| "Failed".into());
            return Verdict::Failed(why);
        }
        _ => {}
    }
    if st.condition("Ready").is_some_and(|r| r.status == "True") {
        return Verdict::Ready;
    }
    let line = match state.and_then(|s| s.waiting.as_ref()) {
        Some(w) if !w.message.is_empty() => format!("{}: {}", w.reason, w.message),
        Some(w) => w.reason.clone(),
        None => match st.condition("Ready") {
            Some(r) if !r.message.is_empty() => format!("{:?}, not ready: {}", st.phase.unwrap_or(Phase::Pending), r.message),
            Some(r) if !r.reason.is_empty() => format!("{:?}, not ready: {}", st.phase.unwrap_or(Phase::Pending), r.reason),
            _ => format!("{:?}", st.phase.unwrap_or(Phase::Pending)),
        },
    };
    Verdict::Waiting(line)
}

/// Follows `objects` (namespace, name) until each is done or `timeout`
/// passes; whether all became Ready or Succeeded.
pub async fn follow(ctx: &Context, objects: &[(String, String)], timeout: Duration) -> anyhow::Result<bool> {
    if objects.is_empty() {
        return Ok(true);
    }
    let deadline = Instant::now() + timeout;
    let live = std::io::stdout().is_terminal();
    let mut state: BTreeMap<(String, String), Verdict> =
        objects.iter().map(|k| (k.clone(), Verdict::Waiting("waiting for the controller".into()))).collect();
    let mut shown: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut drawn = 0usize;
    let namespaces: std::collections::BTreeSet<&str> = objects.iter().map(|(ns, _)| ns.as_str()).collect();
    let ns = if namespaces.len() == 1 { namespaces.iter().next().copied() } else { None };
    'outer: loop {
        let list = ctx.client.list(ns, &ListOptions::default()).await?;
        for c in &list.items {
            let k = (c.metadata.namespace.clone(), c.metadata.name.clone());
            if let Some(v) = state.get_mut(&k) {
                *v = verdict(c);
            }
        }
        drawn = render(&state, &mut shown, live, drawn)?;
        if state.values().all(Verdict::done) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut w = ctx.client.watch(ns, &ListOptions::default(), &list.metadata.resource_version, Some(left)).await?;
        loop {
            let next = tokio::time::timeout_at(deadline, w.next()).await;
            let ev = match next {
                Err(_) => break 'outer,
                Ok(Ok(Some(ev))) => ev,
                // Ended (its timeout) or broken: list again.
                Ok(Ok(None)) | Ok(Err(_)) => continue 'outer,
            };
            let (k, v) = match ev {
                WatchEvent::Added(c) | WatchEvent::Modified(c) => ((c.metadata.namespace.clone(), c.metadata.name.clone()), verdict(&c)),
                WatchEvent::Deleted(c) => ((c.metadata.namespace.clone(), c.metadata.name.clone()), Verdict::Failed("deleted".into())),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(_) => continue 'outer,
            };
            if let Some(slot) = state.get_mut(&k) {
                *slot = v;
                drawn = render(&state, &mut shown, live, drawn)?;
                if state.values().all(Verdict::done) {
                    break 'outer;
                }
            }
        }
    }
    let mut ok = true;
    for ((_, name), v) in &state {
        match v {
            Verdict::Ready | Verdict::Succeeded => {}
            Verdict::Failed(why) => {
                eprintln!("error: {}: {why}", qualified(name));
                ok = false;
            }
            Verdict::Waiting(why) => {
                eprintln!("error: {}: not ready after {}s: {why}", qualified(name), timeout.as_secs());
                ok = false;
            }
        }
    }
    Ok(ok)
}

/// Shows the objects' lines: on a terminal, redrawn in place; otherwise a
/// line per change. Returns how many lines are on screen.
fn render(
    state: &BTreeMap<(String, String), Verdict>,
    shown: &mut BTreeMap<(String, String), String>,
    live: bool,
    drawn: usize,
) -> anyhow::Result<usize> {
    let lines: Vec<((String, String), String)> =
        state.iter().map(|(k, v)| (k.clone(), format!("{} {}", qualified(&k.1), v.text()))).collect();
    if live {
        let mut out = String::new();
        if drawn > 0 {
            out.push_str(&format!("\x1b[{drawn}A"));
        }
        for (_, l) in &lines {
            out.push_str("\x1b[2K");
            out.push_str(l);
            out.push('\n');
        }
        emit(&out)?;
        return Ok(lines.len());
    }
    for (k, l) in lines {
        if shown.get(&k) != Some(&l) {
            emit(&format!("{l}\n"))?;
            shown.insert(k, l);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_schema::{Condition, ContainerState, ContainerStatus, StateTerminated, StateWaiting};

    fn with(status: ContainerStatus) -> Container {
        let mut c = Container::default();
        c.metadata.generation = 1;
        c.status = Some(ContainerStatus { observed_generation: Some(1), ..status });
        c
    }

    fn waiting(reason: &str, message: &str) -> Option<ContainerState> {
        Some(ContainerState { waiting: Some(StateWaiting { reason: reason.into(), message: message.into() }), ..Default::default() })
    }

    #[test]
    fn verdicts() {
        assert!(matches!(verdict(&Container::default()), Verdict::Waiting(_)));
        let pulling = with(ContainerStatus { phase: Some(Phase::Pending), state: waiting("ImagePulling", "pulling busybox: 1 MiB of 2 MiB"), ..Default::default() });
        assert_eq!(verdict(&pulling), Verdict::Waiting("ImagePulling: pulling busybox: 1 MiB of 2 MiB".into()));
        let bad = with(ContainerStatus { phase: Some(Phase::Pending), state: waiting("ErrImagePull", "not found"), ..Default::default() });
        assert_eq!(verdict(&bad), Verdict::Failed("ErrImagePull: not found".into()));
        let ready = with(ContainerStatus {
            phase: Some(Phase::Running),
            conditions: vec![Condition { type_: "Ready".into(), status: "True".into(), ..Default::default() }],
            ..Default::default()
        });
        assert_eq!(verdict(&ready), Verdict::Ready);
        let done = with(ContainerStatus { phase: Some(Phase::Succeeded), ..Default::default() });
        assert_eq!(verdict(&done), Verdict::Succeeded);
        let failed = with(ContainerStatus {
            phase: Some(Phase::Failed),
            state: Some(ContainerState {
                terminated: Some(StateTerminated { exit_code: 3, reason: "Error".into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(verdict(&failed), Verdict::Failed("Error (exit code 3)".into()));
        // A status of an older generation says nothing yet.
        let mut stale = ready.clone();
        stale.metadata.generation = 2;
        assert!(matches!(verdict(&stale), Verdict::Waiting(_)));
    }
}
