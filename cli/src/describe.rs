//! `steward describe container NAME...`: one object, for people.

use std::fmt::Write;
use std::process::ExitCode;

use anyhow::bail;
use chrono::{DateTime, Utc};
use steward_schema::{Container, ContainerState, Time};

use crate::resource::parse_targets;
use crate::table::{human_age, status_text};
use crate::{emit, Context};

#[derive(clap::Args, Debug)]
pub struct DescribeArgs {
    /// `container NAME...`, or `container/NAME...`.
    #[arg(required = true, value_name = "TYPE NAME...", add = clap_complete::engine::ArgValueCompleter::new(crate::completion::targets))]
    targets: Vec<String>,
}

pub async fn run(ctx: &Context, args: DescribeArgs) -> anyhow::Result<ExitCode> {
    let names = parse_targets(&args.targets)?;
    if names.is_empty() {
        bail!("name the container to describe: describe container NAME");
    }
    let mut failed = false;
    let mut first = true;
    for name in &names {
        match ctx.client.get(ctx.namespace(), name).await? {
            Some(c) => {
                let sep = if first { "" } else { "\n\n" };
                // As kubectl: the events of this object (this uid), and a
                // describe that cannot read them still describes.
                let selector = format!("involvedObject.name={},involvedObject.uid={}", c.metadata.name, c.metadata.uid);
                let events = match ctx.client.events(Some(&c.metadata.namespace), Some(&selector)).await {
                    Ok((events, _)) => events,
                    Err(e) => {
                        eprintln!("warning: cannot read events: {e}");
                        Vec::new()
                    }
                };
                let now = Utc::now();
                emit(&format!("{sep}{}{}", describe(&c, now), events_section(&events, now)))?;
                first = false;
            }
            None => {
                eprintln!("Error from server (NotFound): containers.steward.dev {name:?} not found");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn time(t: &Option<Time>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => format!("{} ({} ago)", t.0.format("%a, %d %b %Y %H:%M:%S %z"), human_age(now - t.0)),
        None => "<unset>".into(),
    }
}

fn map_lines(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "<none>".into();
    }
    // Continuation lines line up under the first value.
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(&format!("\n{:14}", ""))
}

fn or_none(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "<none>".into(),
    }
}

fn write_state(out: &mut String, title: &str, state: &ContainerState, now: DateTime<Utc>) {
    if let Some(w) = &state.waiting {
        let _ = writeln!(out, "{title:<14}Waiting");
        let _ = writeln!(out, "  Reason:     {}", w.reason);
        if !w.message.is_empty() {
            let _ = writeln!(out, "  Message:    {}", w.message);
        }
    } else if let Some(r) = &state.running {
        let _ = writeln!(out, "{title:<14}Running");
        let _ = writeln!(out, "  Started:    {}", time(&r.started_at, now));
    } else if let Some(t) = &state.terminated {
        let _ = writeln!(out, "{title:<14}Terminated");
        let _ = writeln!(out, "  Reason:     {}", t.reason);
        let _ = writeln!(out, "  Exit Code:  {}", t.exit_code);
        if let Some(sig) = t.signal {
            let _ = writeln!(out, "  Signal:     {sig}");
        }
        if !t.message.is_empty() {
            let _ = writeln!(out, "  Message:    {}", t.message);
        }
        let _ = writeln!(out, "  Started:    {}", time(&t.started_at, now));
        let _ = writeln!(out, "  Finished:   {}", time(&t.finished_at, now));
    } else {
        let _ = writeln!(out, "{title:<14}<none>");
    }
}

/// The text of `describe`, in kubectl's layout: aligned `Key:  value`
/// lines, nested sections indented by two.
pub fn describe(c: &Container, now: DateTime<Utc>) -> String {
    let mut o = String::new();
    let m = &c.metadata;
    let s = &c.spec;
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(o, "Name:         {}", m.name);
    let _ = writeln!(o, "Namespace:    {}", m.namespace);
    let _ = writeln!(o, "Labels:       {}", map_lines(&m.labels));
    let _ = writeln!(o, "Annotations:  {}", map_lines(&m.annotations));
    let _ = writeln!(o, "UID:          {}", or_none(Some(&m.uid)));
    let _ = writeln!(o, "Generation:   {}", m.generation);
    let _ = writeln!(o, "Created:      {}", time(&m.creation_timestamp, now));
    if m.deletion_timestamp.is_some() {
        let _ = writeln!(o, "Deleting:     {}", time(&m.deletion_timestamp, now));
    }
    if !m.finalizers.is_empty() {
        let _ = writeln!(o, "Finalizers:   {}", m.finalizers.join(", "));
    }
    let _ = writeln!(o, "Status:       {}", status_text(c));
    let _ = writeln!(o, "Spec:");
    let _ = writeln!(o, "  Image:              {}", s.image);
    let _ = writeln!(o, "  Image Pull Policy:  {}", or_none(s.image_pull_policy.map(|p| format!("{p:?}")).as_deref()));
    if !s.command.is_empty() {
        let _ = writeln!(o, "  Command:");
        for a in &s.command {
            let _ = writeln!(o, "    {a}");
        }
    }
    if !s.args.is_empty() {
        let _ = writeln!(o, "  Args:");
        for a in &s.args {
            let _ = writeln!(o, "    {a}");
        }
    }
    if let Some(wd) = &s.working_dir {
        let _ = writeln!(o, "  Working Dir:        {wd}");
    }
    if let Some(u) = &s.user {
        let _ = writeln!(o, "  User:               {u}");
    }
    let _ = writeln!(o, "  Restart Policy:     {}", or_none(s.restart_policy.map(|p| format!("{p:?}")).as_deref()));
    let _ = writeln!(o, "  Stop Signal:        {}", or_none(s.stop_signal.as_deref()));
    if let Some(g) = s.termination_grace_period_seconds {
        let _ = writeln!(o, "  Grace Period:       {g}s");
    }
    for (label, probe) in [("Startup", &s.startup_probe), ("Readiness", &s.readiness_probe), ("Liveness", &s.liveness_probe)] {
        if let Some(p) = probe {
            let _ = writeln!(o, "  {:<20}{}", format!("{label}:"), probe_text(p));
        }
    }
    let _ = writeln!(o, "  Network:            {}", or_none(s.network.as_deref()));
    if !s.ports.is_empty() {
        let _ = writeln!(o, "  Ports:");
        for p in &s.ports {
            let proto = p.protocol.map_or("TCP", |p| p.as_str());
            let name = p.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
            let published = match p.host_port {
                Some(hp) => format!(" published on {}:{hp}", p.host_ip.as_deref().unwrap_or("0.0.0.0")),
                None => String::new(),
            };
            let _ = writeln!(o, "    {}/{proto}{name}{published}", p.container_port);
        }
    }
    if let Some(l) = s.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        let _ = writeln!(o, "  Limits:");
        if let Some(v) = &l.memory {
            let _ = writeln!(o, "    memory:  {}", v.0);
        }
        if let Some(v) = &l.cpu {
            let _ = writeln!(o, "    cpu:     {}", v.0);
        }
        if let Some(v) = l.pids {
            let _ = writeln!(o, "    pids:    {v}");
        }
    }
    if s.env.is_empty() {
        let _ = writeln!(o, "  Environment:        <none>");
    } else {
        let _ = writeln!(o, "  Environment:");
        for e in &s.env {
            let _ = writeln!(o, "    {}: {}", e.name, e.value);
        }
    }
    if s.mounts.is_empty() {
        let _ = writeln!(o, "  Mounts:             <none>");
    } else {
        let _ = writeln!(o, "  Mounts:");
        for mt in &s.mounts {
            let kind = format!("{:?}", mt.mount_type).to_lowercase();
            let src = mt.source.as_deref().unwrap_or(kind.as_str());
            let ro = if mt.read_only { "ro" } else { "rw" };
            let size = mt.size_limit.as_ref().map(|q| format!(", size {}", q.0)).unwrap_or_default();
            let _ = writeln!(o, "    {} from {src} ({kind}, {ro}{size})", mt.target);
        }
    }
    match &c.status {
        None => {
            let _ = writeln!(o, "State:        <not yet observed>");
        }
        Some(st) => {
            let _ = writeln!(o, "Phase:        {}", or_none(st.phase.map(|p| format!("{p:?}")).as_deref()));
            match &st.state {
                Some(state) => write_state(&mut o, "State:", state, now),
                None => {
                    let _ = writeln!(o, "State:        <none>");
                }
            }
            if let Some(last) = &st.last_state {
                write_state(&mut o, "Last State:", last, now);
            }
            let _ = writeln!(o, "Restart Count: {}", st.restart_count);
            let _ = writeln!(o, "Container ID: {}", or_none(st.container_id.as_deref()));
            let _ = writeln!(o, "Image Digest: {}", or_none(st.image_digest.as_deref()));
            let _ = writeln!(o, "PID:          {}", st.pid.map_or_else(|| "<none>".into(), |p| p.to_string()));
            let _ = writeln!(o, "IP:           {}", st.ip.as_deref().unwrap_or("<none>"));
            let observed = st.observed_generation.map_or_else(|| "<none>".into(), |g| g.to_string());
            let _ = writeln!(o, "Observed Generation: {observed}");
            if st.conditions.is_empty() {
                let _ = writeln!(o, "Conditions:   <none>");
            } else {
                let _ = writeln!(o, "Conditions:");
                let mut rows = vec![["Type", "Status", "Reason", "Message"].map(String::from).to_vec()];
                for cond in &st.conditions {
                    rows.push(vec![cond.type_.clone(), cond.status.clone(), cond.reason.clone(), cond.message.clone()]);
                }
                for line in crate::table::TableWriter::default().render(&rows).lines() {
                    let _ = writeln!(o, "  {}", line.trim_end());
                }
            }
        }
    }
    o
}

/// kubectl's Events section: oldest first, `Age` as `10s (x3 over 2m)`
/// for repeats.
pub fn events_section(events: &[steward_schema::Event], now: DateTime<Utc>) -> String {
    if events.is_empty() {
        return "Events:       <none>\n".into();
    }
    let mut events: Vec<&steward_schema::Event> = events.iter().collect();
    events.sort_by_key(|e| e.last_seen());
    let mut rows = vec![
        vec!["Type".to_string(), "Reason".into(), "Age".into(), "From".into(), "Message".into()],
        vec!["----".to_string(), "------".into(), "----".into(), "----".into(), "-------".into()],
    ];
    for e in events {
        let last = e.last_seen().map_or_else(|| "<unknown>".to_string(), |t| human_age(now - t));
        let age = match (e.count, e.first_timestamp) {
            (n, Some(first)) if n > 1 => format!("{last} (x{n} over {})", human_age(now - first.0)),
            _ => last,
        };
        rows.push(vec![e.type_.clone(), e.reason.clone(), age, e.source.component.clone(), e.message.clone()]);
    }
    let mut o = String::from("Events:\n");
    for line in crate::table::TableWriter::default().render(&rows).lines() {
        let _ = writeln!(o, "  {}", line.trim_end());
    }
    o
}

/// A probe as kubectl describes one: `http-get http://:80/ready delay=0s
/// timeout=1s period=10s #success=1 #failure=3`.
fn probe_text(p: &steward_schema::Probe) -> String {
    let port = |r: &steward_schema::PortRef| match r {
        steward_schema::PortRef::Number(n) => n.to_string(),
        steward_schema::PortRef::Name(n) => n.clone(),
    };
    let how = if let Some(e) = &p.exec {
        format!("exec {:?}", e.command)
    } else if let Some(h) = &p.http_get {
        let scheme = if h.scheme == Some(steward_schema::Scheme::Https) { "https" } else { "http" };
        format!("http-get {scheme}://:{}{}", port(&h.port), h.path.as_deref().unwrap_or("/"))
    } else if let Some(t) = &p.tcp_socket {
        format!("tcp-socket :{}", port(&t.port))
    } else {
        "<none>".into()
    };
    format!(
        "{how} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds.unwrap_or(0),
        p.timeout_seconds.unwrap_or(1),
        p.period_seconds.unwrap_or(10),
        p.success_threshold.unwrap_or(1),
        p.failure_threshold.unwrap_or(3)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_are_described_as_kubectl_does() {
        let p = steward_schema::Probe {
            http_get: Some(steward_schema::HttpGetAction {
                path: Some("/ready".into()),
                port: steward_schema::PortRef::Name("http".into()),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        };
        assert_eq!(super::probe_text(&p), "http-get http://:http/ready delay=0s timeout=1s period=5s #success=1 #failure=3");
        let e = steward_schema::Probe { exec: Some(steward_schema::ExecAction { command: vec!["cat".into(), "/tmp/x".into()] }), ..Default::default() };
        assert!(super::probe_text(&e).starts_with("exec [\"cat\", \"/tmp/x\"] delay=0s"));
    }

    use super::*;
    use steward_schema::{Condition, ContainerStatus, Phase, StateRunning};

    #[test]
    fn describe_layout() {
        let now = Utc::now();
        let mut c = Container::default();
        c.metadata.name = "web".into();
        c.metadata.namespace = "default".into();
        c.metadata.labels.insert("app".into(), "web".into());
        c.metadata.labels.insert("tier".into(), "front".into());
        c.spec.image = "busybox:1.36".into();
        c.spec.args = vec!["sleep".into(), "3600".into()];
        c.apply_defaults();
        let text = describe(&c, now);
        assert!(text.contains("Name:         web\n"), "{text}");
        assert!(text.contains("Labels:       app=web\n              tier=front\n"), "{text}");
        assert!(text.contains("  Restart Policy:     Always\n"), "{text}");
        assert!(text.contains("State:        <not yet observed>\n"), "{text}");
        assert!(text.ends_with("State:        <not yet observed>\n"), "{text}");
        assert_eq!(events_section(&[], now), "Events:       <none>\n");
        let e = steward_schema::Event {
            type_: "Normal".into(),
            reason: "Pulled".into(),
            source: steward_schema::EventSource { component: "steward".into(), host: String::new() },
            message: "Container image \"busybox\" already present on machine".into(),
            count: 3,
            first_timestamp: Some(Time(now - chrono::Duration::minutes(2))),
            last_timestamp: Some(Time(now - chrono::Duration::seconds(10))),
            ..Default::default()
        };
        let section = events_section(&[e], now);
        assert_eq!(
            section,
            "Events:\n  Type     Reason   Age                From      Message\n  ----     ------   ----               ----      -------\n  \
             Normal   Pulled   10s (x3 over 2m)   steward   Container image \"busybox\" already present on machine\n",
            "{section}"
        );

        c.status = Some(ContainerStatus {
            phase: Some(Phase::Running),
            state: Some(ContainerState {
                running: Some(StateRunning { started_at: Some(Time(now)) }),
                ..Default::default()
            }),
            restart_count: 1,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Running".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let text = describe(&c, now);
        assert!(text.contains("State:        Running\n  Started:    "), "{text}");
        assert!(text.contains("Conditions:\n  Type    Status   Reason    Message\n  Ready   True     Running\n"), "{text}");
    }
}

