//! Validation that reports every problem at once, each with its field path
//! (`spec.env[2].name: must be a C identifier`).

use std::collections::BTreeSet;
use std::fmt;

use crate::container::{Container, ContainerState, ContainerStatus, MountType};

/// One problem with one field. `reason` is Kubernetes' cause type
/// (`FieldValueRequired`, `FieldValueInvalid`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one object.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct FieldErrors(pub Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&parts.join(", "))
    }
}

impl FieldErrors {
    fn required(&mut self, field: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        });
    }
    pub fn invalid(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: message.into(),
        });
    }
    fn duplicate(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: "FieldValueDuplicate",
            message: message.into(),
        });
    }
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// The DNS-1123 label rule for names and namespaces, or why not.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err(format!("must be no more than 63 characters (is {})", s.len()));
    }
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} must be a lowercase RFC 1123 label: lowercase letters, digits and '-', \
             starting and ending with a letter or digit (regex [a-z0-9]([-a-z0-9]*[a-z0-9])?)"
        ))
    }
}

fn label_value_ok(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| dns1123_label(part).is_ok())
    });
    prefix_ok && !name.is_empty() && label_value_ok(name)
}

/// containerd's identifier rule, which runtime container ids follow: at
/// most 76 characters of `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`. Such an id is
/// also a safe file name (no `/`, no leading dot, no `..`).
pub fn is_runtime_id(id: &str) -> bool {
    id.len() <= 76
        && !id.is_empty()
        && id.split(['.', '_', '-']).all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()))
}

const SIGNALS: &[&str] = &[
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGWINCH",
    "SIGPWR", "SIGSTOP", "SIGCONT",
];

/// Checks metadata that every kind shares.
pub fn validate_meta(meta: &crate::ObjectMeta, errs: &mut FieldErrors) {
    if meta.name.is_empty() {
        errs.required("metadata.name");
    } else if let Err(m) = dns1123_label(&meta.name) {
        errs.invalid("metadata.name", m);
    }
    if !meta.namespace.is_empty() {
        if let Err(m) = dns1123_label(&meta.namespace) {
            errs.invalid("metadata.namespace", m);
        }
    }
    for (k, v) in &meta.labels {
        if !label_key_ok(k) {
            errs.invalid(
                format!("metadata.labels[{k}]"),
                "invalid label key: [prefix/]name, name at most 63 characters of [A-Za-z0-9._-] starting and ending alphanumeric",
            );
        }
        if !label_value_ok(v) {
            errs.invalid(
                format!("metadata.labels[{k}]"),
                format!("invalid label value {v:?}: at most 63 characters of [A-Za-z0-9._-], starting and ending alphanumeric"),
            );
        }
    }
    let total: usize = meta.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > 256 * 1024 {
        errs.invalid("metadata.annotations", "annotations may not exceed 256 KiB in total");
    }
    for (i, f) in meta.finalizers.iter().enumerate() {
        if !label_key_ok(f) {
            errs.invalid(format!("metadata.finalizers[{i}]"), format!("{f:?} is not a qualified name"));
        }
    }
    let mut controllers = 0;
    for (i, o) in meta.owner_references.iter().enumerate() {
        let f = |name: &str| format!("metadata.ownerReferences[{i}].{name}");
        for (name, v) in [("apiVersion", &o.api_version), ("kind", &o.kind), ("name", &o.name), ("uid", &o.uid)] {
            if v.trim().is_empty() {
                errs.required(f(name));
            }
        }
        if o.controller == Some(true) {
            controllers += 1;
            if controllers > 1 {
                errs.invalid(f("controller"), "only one owner reference can be a controller");
            }
        }
    }
}

/// Validates a whole `Container` (after defaulting). Every problem is
/// returned, each with its field path.
pub fn validate_container(c: &Container) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    if !c.api_version.is_empty() && c.api_version != crate::API_VERSION {
        errs.invalid("apiVersion", format!("must be {:?}, not {:?}", crate::API_VERSION, c.api_version));
    }
    if !c.kind.is_empty() && c.kind != crate::container::KIND {
        errs.invalid("kind", format!("must be \"Container\", not {:?}", c.kind));
    }
    validate_meta(&c.metadata, &mut errs);
    let s = &c.spec;
    if s.image.trim().is_empty() {
        errs.required("spec.image");
    } else if s.image.chars().any(char::is_whitespace) {
        errs.invalid("spec.image", "must not contain whitespace");
    }
    let mut names = BTreeSet::new();
    for (i, e) in s.env.iter().enumerate() {
        let f = format!("spec.env[{i}].name");
        let ident = e.name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && e.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if e.name.is_empty() {
            errs.required(f);
        } else if !ident {
            errs.invalid(f, format!("{:?} must be a C identifier ([A-Za-z_][A-Za-z0-9_]*)", e.name));
        } else if !names.insert(e.name.as_str()) {
            errs.duplicate(f, format!("{:?} is set twice", e.name));
        }
    }
    if let Some(wd) = &s.working_dir {
        if !wd.starts_with('/') {
            errs.invalid("spec.workingDir", format!("{wd:?} must be an absolute path"));
        }
    }
    if let Some(u) = &s.user {
        let mut parts = u.splitn(2, ':');
        let ok = parts.all(|p| p.parse::<u32>().is_ok());
        if !ok {
            errs.invalid("spec.user", format!("{u:?} must be uid or uid:gid, numeric"));
        }
    }
    if let Some(sig) = &s.stop_signal {
        let known = SIGNALS.contains(&sig.as_str())
            || SIGNALS.contains(&format!("SIG{sig}").as_str())
            || sig.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n));
        if !known {
            errs.invalid("spec.stopSignal", format!("{sig:?} is not a signal (e.g. SIGTERM, SIGINT, 15)"));
        }
    }
    if let Some(rc) = &s.runtime_class_name {
        if let Err(m) = dns1123_label(rc) {
            errs.invalid("spec.runtimeClassName", format!("{rc:?}: a runtime handler name {m}"));
        }
    }
    if let Some(n) = &s.network {
        if let Err(m) = dns1123_label(n) {
            errs.invalid(
                "spec.network",
                format!("{n:?}: none, host, bridge or a configured network's name, which {m}"),
            );
        }
    }
    validate_ports(s, &mut errs);
    for (field, probe) in [("spec.startupProbe", &s.startup_probe), ("spec.readinessProbe", &s.readiness_probe), ("spec.livenessProbe", &s.liveness_probe)] {
        if let Some(p) = probe {
            validate_probe(s, field, p, &mut errs);
        }
    }
    if let Some(g) = s.termination_grace_period_seconds {
        if g < 0 {
            errs.invalid("spec.terminationGracePeriodSeconds", "must be >= 0");
        }
    }
    if let Some(l) = s.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        if let Some(m) = &l.memory {
            match m.value() {
                Err(e) => errs.invalid("spec.resources.limits.memory", e),
                Ok(v) if v < 1.0 => errs.invalid("spec.resources.limits.memory", "must be at least 1 byte"),
                Ok(_) => {}
            }
        }
        if let Some(cpu) = &l.cpu {
            match cpu.value() {
                Err(e) => errs.invalid("spec.resources.limits.cpu", e),
                Ok(v) if v < 0.001 => errs.invalid("spec.resources.limits.cpu", "must be at least 1m"),
                Ok(_) => {}
            }
        }
        if let Some(p) = l.pids {
            if p < 1 {
                errs.invalid("spec.resources.limits.pids", "must be >= 1");
            }
        }
    }
    let mut targets = BTreeSet::new();
    for (i, m) in s.mounts.iter().enumerate() {
        let p = format!("spec.mounts[{i}]");
        if !m.target.starts_with('/') {
            errs.invalid(format!("{p}.target"), format!("{:?} must be an absolute path", m.target));
        } else if !targets.insert(m.target.as_str()) {
            errs.duplicate(format!("{p}.target"), format!("{:?} is mounted twice", m.target));
        }
        match m.mount_type {
            MountType::Bind => match &m.source {
                None => errs.required(format!("{p}.source")),
                Some(src) if !src.starts_with('/') => {
                    errs.invalid(format!("{p}.source"), format!("{src:?} must be an absolute host path"))
                }
                Some(_) => {}
            },
            MountType::Tmpfs => {
                if m.source.is_some() {
                    errs.invalid(format!("{p}.source"), "not allowed for type tmpfs");
                }
            }
        }
        if let Some(q) = &m.size_limit {
            if m.mount_type != MountType::Tmpfs {
                errs.invalid(format!("{p}.sizeLimit"), "only allowed for type tmpfs");
            } else if let Err(e) = q.value() {
                errs.invalid(format!("{p}.sizeLimit"), e);
            }
        }
    }
    errs.into_result()
}

fn validate_state(s: &ContainerState, path: &str, errs: &mut FieldErrors) {
    let set = [s.waiting.is_some(), s.running.is_some(), s.terminated.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        errs.invalid(path, "exactly one of waiting, running, terminated may be set");
    }
}

/// Validates a status written through the status subresource.
/// An IANA service name, as Kubernetes' port names.
fn iana_svc_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 15 {
        return Err("must be 1 to 15 characters".into());
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    {
        return Err("must be lowercase letters, digits and '-'".into());
    }
    if !b.iter().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain a letter".into());
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' || s.contains("--") {
        return Err("must not start or end with '-' nor contain '--'".into());
    }
    Ok(())
}

fn validate_probe(s: &crate::ContainerSpec, f: &str, p: &crate::Probe, errs: &mut FieldErrors) {
    let handlers = [p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some()].iter().filter(|h| **h).count();
    if handlers != 1 {
        errs.invalid(f, "must have exactly one of exec, httpGet, tcpSocket");
    }
    let mut port = |field: String, r: &crate::PortRef| match r {
        crate::PortRef::Number(n) if !(1..=65535).contains(n) => errs.invalid(field, format!("{n} must be between 1 and 65535")),
        crate::PortRef::Name(n) if s.resolve_port(r).is_none() => {
            errs.invalid(field, format!("{n:?} is not the name of one of spec.ports"))
        }
        _ => {}
    };
    if let Some(h) = &p.http_get {
        port(format!("{f}.httpGet.port"), &h.port);
    }
    if let Some(t) = &p.tcp_socket {
        port(format!("{f}.tcpSocket.port"), &t.port);
    }
    if let Some(e) = &p.exec {
        if e.command.is_empty() || e.command[0].is_empty() {
            errs.invalid(format!("{f}.exec.command"), "must name a command");
        }
    }
    if let Some(h) = &p.http_get {
        if let Some(path) = &h.path {
            if !path.starts_with('/') || path.chars().any(|c| c.is_control() || c == ' ') {
                errs.invalid(format!("{f}.httpGet.path"), format!("{path:?} must be an absolute path without spaces"));
            }
        }
        for (i, hd) in h.http_headers.iter().enumerate() {
            let token = !hd.name.is_empty() && hd.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                errs.invalid(format!("{f}.httpGet.httpHeaders[{i}].name"), format!("{:?} is not an HTTP header name", hd.name));
            }
            if hd.value.chars().any(|c| c.is_control() && c != '\t') {
                errs.invalid(format!("{f}.httpGet.httpHeaders[{i}].value"), "must not contain control characters");
            }
        }
    }
    if (p.http_get.is_some() || p.tcp_socket.is_some()) && s.network.as_deref() == Some(crate::NETWORK_NONE) {
        errs.invalid(f, "with network: none the container has no address to probe: use exec, or a bridge network");
    }
    let nums = [
        ("initialDelaySeconds", p.initial_delay_seconds, 0),
        ("periodSeconds", p.period_seconds, 1),
        ("timeoutSeconds", p.timeout_seconds, 1),
        ("successThreshold", p.success_threshold, 1),
        ("failureThreshold", p.failure_threshold, 1),
    ];
    for (name, v, min) in nums {
        if let Some(v) = v {
            if v < min || v > 86400 {
                errs.invalid(format!("{f}.{name}"), format!("{v} must be between {min} and 86400"));
            }
        }
    }
    if f != "spec.readinessProbe" && p.success_threshold.is_some_and(|v| v != 1) {
        errs.invalid(format!("{f}.successThreshold"), "must be 1 for liveness and startup probes");
    }
}

/// The most ports one container may list: each published one holds a
/// socket and iptables rules, and the published ones are recorded in a
/// containerd label, which holds at most 4096 bytes (about 75 bytes a
/// port with a hostIP).
const MAX_PORTS: usize = 50;

fn validate_ports(s: &crate::ContainerSpec, errs: &mut FieldErrors) {
    let network = s.network.as_deref().unwrap_or(crate::NETWORK_BRIDGE);
    if s.ports.len() > MAX_PORTS {
        errs.invalid("spec.ports", format!("{} ports: at most {MAX_PORTS}", s.ports.len()));
        return;
    }
    let mut names = std::collections::BTreeSet::new();
    let mut published: Vec<(i32, &str, String)> = Vec::new();
    for (i, p) in s.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        if !(1..=65535).contains(&p.container_port) {
            errs.invalid(
                format!("{f}.containerPort"),
                format!("{} must be between 1 and 65535", p.container_port),
            );
        }
        if let Some(name) = &p.name {
            if let Err(m) = iana_svc_name(name) {
                errs.invalid(format!("{f}.name"), format!("{name:?}: a port name {m}"));
            } else if !names.insert(name.clone()) {
                errs.duplicate(format!("{f}.name"), format!("{name:?} is set twice"));
            }
        }
        if let Some(ip) = &p.host_ip {
            if ip.parse::<std::net::Ipv4Addr>().is_err() {
                errs.invalid(
                    format!("{f}.hostIP"),
                    format!("{ip:?} is not an IPv4 address"),
                );
            } else if p.host_port.is_none() {
                errs.invalid(format!("{f}.hostIP"), "only with hostPort");
            }
        }
        let Some(hp) = p.host_port else { continue };
        if !(1..=65535).contains(&hp) {
            errs.invalid(
                format!("{f}.hostPort"),
                format!("{hp} must be between 1 and 65535"),
            );
            continue;
        }
        match network {
            crate::NETWORK_NONE => errs.invalid(
                format!("{f}.hostPort"),
                "a container with network: none has no network to publish from; use bridge",
            ),
            crate::NETWORK_HOST if hp != p.container_port => errs.invalid(
                format!("{f}.hostPort"),
                format!("with network: host the container listens on the host itself: hostPort must equal containerPort ({})", p.container_port),
            ),
            _ => {}
        }
        let proto = p.protocol.unwrap_or(crate::Protocol::Tcp);
        // No hostIP and 0.0.0.0 are every address: they overlap any other.
        let ip = p.host_ip.clone().filter(|ip| ip != "0.0.0.0").unwrap_or_default();
        let clash = published.iter().any(|(h, pr, i): &(i32, &str, String)| {
            *h == hp && *pr == proto.as_str() && (i.is_empty() || ip.is_empty() || *i == ip)
        });
        if clash {
            errs.duplicate(format!("{f}.hostPort"), format!("{hp}/{} is published twice (on overlapping host addresses)", proto.as_str()));
        }
        published.push((hp, proto.as_str(), ip));
    }
}

pub fn validate_status(s: &ContainerStatus) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    if let Some(st) = &s.state {
        validate_state(st, "status.state", &mut errs);
    }
    if let Some(st) = &s.last_state {
        validate_state(st, "status.lastState", &mut errs);
    }
    if s.restart_count < 0 {
        errs.invalid("status.restartCount", "must be >= 0");
    }
    if s.recent_restarts < 0 {
        errs.invalid("status.recentRestarts", "must be >= 0");
    }
    if let Some(id) = &s.container_id {
        if !id.strip_prefix("containerd://").is_some_and(is_runtime_id) {
            errs.invalid("status.containerID", format!("{id:?} must be containerd://<id> with a containerd identifier"));
        }
    }
    for (i, c) in s.conditions.iter().enumerate() {
        if c.type_.is_empty() {
            errs.required(format!("status.conditions[{i}].type"));
        }
        if !matches!(c.status.as_str(), "True" | "False" | "Unknown") {
            errs.invalid(format!("status.conditions[{i}].status"), "must be True, False or Unknown");
        }
    }
    errs.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::*;

    fn valid() -> Container {
        let mut c = Container::default();
        c.metadata.name = "web".into();
        c.spec.image = "busybox".into();
        c.apply_defaults();
        c
    }

    #[test]
    fn accepts_a_valid_container() {
        assert_eq!(validate_container(&valid()), Ok(()));
    }

    #[test]
    fn reports_every_error_with_its_path() {
        let mut c = valid();
        c.metadata.name = "Web_1".into();
        c.spec.image = String::new();
        c.spec.env = vec![
            EnvVar { name: "OK".into(), value: "1".into() },
            EnvVar { name: "OK".into(), value: "2".into() },
            EnvVar { name: "1bad".into(), value: String::new() },
        ];
        c.spec.working_dir = Some("relative".into());
        c.spec.mounts = vec![Mount {
            mount_type: MountType::Bind,
            source: None,
            target: "/data".into(),
            read_only: false,
            size_limit: None,
        }];
        let errs = validate_container(&c).unwrap_err();
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.image",
                "spec.env[1].name",
                "spec.env[2].name",
                "spec.workingDir",
                "spec.mounts[0].source"
            ]
        );
        assert!(errs.to_string().contains("spec.env[2].name: \"1bad\" must be a C identifier"), "{errs}");
    }

    #[test]
    fn owner_references_are_typed_and_checked() {
        let yaml = "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: web\n  ownerReferences:\n  - {apiVersion: v1, kind: Thing, name: a, uid: u1, controller: true}\n  - {apiVersion: v1, kind: Thing, name: '', uid: u2, controller: true}\nspec: {image: busybox}\n";
        let mut c = crate::manifest::container_from_value(serde_yaml::from_str(yaml).unwrap()).unwrap();
        c.apply_defaults();
        let errs = validate_container(&c).unwrap_err();
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["metadata.ownerReferences[1].name", "metadata.ownerReferences[1].controller"]);
        // Anything that is not an OwnerReference is refused when decoding.
        let nested = "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: web\n  ownerReferences:\n  - {a: {b: {c: 1}}}\nspec: {image: busybox}\n";
        let e = crate::manifest::container_from_value(serde_yaml::from_str(nested).unwrap()).unwrap_err();
        assert!(e.contains("ownerReferences"), "{e}");
    }

    fn errors_of(yaml_spec: &str) -> Vec<String> {
        let yaml = format!("apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata: {{name: web}}\nspec:\n  image: busybox\n{yaml_spec}");
        let mut c: Container = serde_yaml::from_str(&yaml).expect("parses");
        c.apply_defaults();
        match validate_container(&c) {
            Ok(()) => vec![],
            Err(e) => e.0.iter().map(|f| format!("{}: {}", f.field, f.message)).collect(),
        }
    }

    #[test]
    fn ports_and_probes_are_checked_with_their_paths() {
        assert_eq!(errors_of("  ports: [{name: http, containerPort: 80, hostPort: 8080}]\n  readinessProbe: {httpGet: {port: http}}\n"), Vec::<String>::new());
        // No hostIP, 0.0.0.0 and a specific address all overlap.
        let e = errors_of("  ports: [{containerPort: 80, hostPort: 8080}, {containerPort: 81, hostPort: 8080, hostIP: 127.0.0.1}]\n");
        assert!(e.iter().any(|m| m.starts_with("spec.ports[1].hostPort: 8080/TCP is published twice")), "{e:?}");
        let e = errors_of("  ports: [{containerPort: 80, hostPort: 8080, hostIP: 0.0.0.0}, {containerPort: 81, hostPort: 8080}]\n");
        assert!(e.iter().any(|m| m.starts_with("spec.ports[1].hostPort")), "{e:?}");
        // Other protocols and other specific addresses do not.
        assert_eq!(errors_of("  ports: [{containerPort: 53, hostPort: 53}, {containerPort: 53, hostPort: 53, protocol: UDP}]\n"), Vec::<String>::new());
        let e = errors_of("  ports: [{containerPort: 0, hostPort: 70000, hostIP: nope}]\n");
        assert!(e.iter().any(|m| m.starts_with("spec.ports[0].containerPort")) && e.iter().any(|m| m.starts_with("spec.ports[0].hostIP")), "{e:?}");
        let many: String = (1..=51).map(|i| format!("{{containerPort: {i}, hostPort: {}}}", 20000 + i)).collect::<Vec<_>>().join(", ");
        let e = errors_of(&format!("  ports: [{many}]\n"));
        assert!(e.iter().any(|m| m.starts_with("spec.ports: 51 ports: at most 50")), "{e:?}");
        let e = errors_of("  network: none\n  ports: [{containerPort: 80, hostPort: 8080}]\n");
        assert!(e.iter().any(|m| m.contains("network: none")), "{e:?}");
        let e = errors_of("  network: Bad_Name\n");
        assert!(e.iter().any(|m| m.starts_with("spec.network")), "{e:?}");
        // Probes: one handler, a known port name, sane numbers, exec-only without a network.
        let e = errors_of("  livenessProbe: {exec: {command: [x]}, tcpSocket: {port: 80}}\n");
        assert!(e.iter().any(|m| m.starts_with("spec.livenessProbe: must have exactly one")), "{e:?}");
        let e = errors_of("  readinessProbe: {httpGet: {port: metrics, path: nope}}\n");
        assert!(e.iter().any(|m| m.starts_with("spec.readinessProbe.httpGet.port")) && e.iter().any(|m| m.starts_with("spec.readinessProbe.httpGet.path")), "{e:?}");
        let e = errors_of("  livenessProbe: {exec: {command: [x]}, successThreshold: 2, periodSeconds: 0}\n");
        assert!(e.iter().any(|m| m.starts_with("spec.livenessProbe.successThreshold")) && e.iter().any(|m| m.starts_with("spec.livenessProbe.periodSeconds")), "{e:?}");
        let e = errors_of("  network: none\n  readinessProbe: {tcpSocket: {port: 80}}\n");
        assert!(e.iter().any(|m| m.contains("no address to probe")), "{e:?}");
        assert_eq!(errors_of("  network: none\n  readinessProbe: {exec: {command: [true]}}\n"), Vec::<String>::new());
    }

    #[test]
    fn runtime_ids_follow_containerds_rule() {
        assert!(is_runtime_id("default.web.0123456789ab"));
        for bad in ["", "/etc/passwd", "../../x", "a/../b", ".hidden", "a b", "x..y", "a--b"] {
            assert!(!is_runtime_id(bad), "{bad}");
        }
        assert!(!is_runtime_id(&"a".repeat(77)));
    }

    #[test]
    fn dns1123() {
        assert!(dns1123_label("a").is_ok());
        assert!(dns1123_label("web-1").is_ok());
        assert!(dns1123_label(&"a".repeat(63)).is_ok());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b"] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_with_two_states_is_invalid() {
        let s = ContainerStatus {
            state: Some(ContainerState {
                waiting: Some(StateWaiting::default()),
                running: Some(StateRunning::default()),
                terminated: None,
            }),
            ..Default::default()
        };
        assert_eq!(validate_status(&s).unwrap_err().0[0].field, "status.state");
    }
}
