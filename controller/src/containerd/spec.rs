//! The OCI runtime spec of a container, as a pure function of the desired
//! [`ContainerSpec`], the image's config and a few facts about the host.
//!
//! No I/O happens here: everything the function needs (resolved user ids,
//! the host's rlimit ceilings, the container's hostname) is passed in, so the
//! whole mapping is covered by a table of unit tests. The defaults follow
//! what Docker and containerd's `oci.GenerateSpec` give a container: the same
//! capability set, masked and read-only paths and default mounts. Docker's
//! seccomp profile is not applied (yet).

use serde_json::{json, Value};
use steward_schema::{ContainerSpec, MountType, NETWORK_HOST};

use crate::actual::ImageConfig;

/// The PATH a container gets when neither the image nor the spec sets one
/// (Docker's and containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The smallest memory limit accepted. Measured here (runc 1.1.5, cgroup v1):
/// runc's init already uses 2-3 MiB when runc sets the limit, and the kernel
/// refuses a limit under current usage, so 64Ki..2Mi fail at Tasks.Create
/// with `unable to set memory limit to N (current usage: 2588672, ...)`
/// and 3Mi passes only sometimes. Docker's minimum, 6 MB, leaves a margin;
/// below it the error names the field before anything is created.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// The default CFS period; the quota is `cpu cores x period`.
const CPU_PERIOD_US: u64 = 100_000;

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from the container (Docker's / containerd's defaults).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the container may read but not write.
pub const READONLY_PATHS: &[&str] =
    &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The numeric identity the container's process runs as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Facts about the host the spec must respect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLimits {
    /// The hard RLIMIT_NOFILE of the runtime (containerd's shims inherit it).
    /// runc cannot raise an rlimit above it without CAP_SYS_RESOURCE, so the
    /// container's limit is capped there.
    pub nofile_hard: u64,
}

impl HostLimits {
    /// The limits of the current process (what a supervised containerd inherits).
    pub fn current() -> HostLimits {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit only writes into the struct we pass.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        let nofile_hard = if rc == 0 { lim.rlim_max } else { 1024 };
        HostLimits { nofile_hard }
    }
}

/// Everything the spec is a function of.
#[derive(Clone, Debug)]
pub struct SpecInputs<'a> {
    /// The containerd container id (also names the cgroup).
    pub id: &'a str,
    /// The containerd namespace (the cgroup parent, as containerd's default).
    pub namespace: &'a str,
    pub hostname: &'a str,
    pub spec: &'a ContainerSpec,
    pub image: &'a ImageConfig,
    pub user: UserIds,
    pub host: HostLimits,
    /// On a bridge network: the namespace steward made for the container,
    /// and the directory of its `hosts`, `resolv.conf` and `hostname`.
    pub bridge: Option<BridgeNet<'a>>,
}

#[derive(Clone, Copy, Debug)]
pub struct BridgeNet<'a> {
    pub netns: &'a std::path::Path,
    pub files: &'a std::path::Path,
}

/// Why no spec could be built; becomes a `CreateContainerError`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// The process arguments, with Kubernetes semantics: `command` replaces the
/// image's entrypoint AND drops its cmd; `args` alone replaces the cmd.
pub fn process_args(spec: &ContainerSpec, image: &ImageConfig) -> Result<Vec<String>, SpecError> {
    let args: Vec<String> = if !spec.command.is_empty() {
        spec.command.iter().chain(&spec.args).cloned().collect()
    } else {
        let cmd = if spec.args.is_empty() { &image.cmd } else { &spec.args };
        image.entrypoint.iter().chain(cmd).cloned().collect()
    };
    if args.is_empty() {
        return err("no command to run: the image has neither an entrypoint nor a cmd; set spec.command");
    }
    Ok(args)
}

/// The environment: the image's, then the spec's (a name set in both takes
/// the spec's value, in the image's position), and a default PATH.
pub fn process_env(spec: &ContainerSpec, image: &ImageConfig) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| match env.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((name.to_string(), value.to_string())),
    };
    for kv in &image.env {
        let (n, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(n, v);
    }
    for e in &spec.env {
        set(&e.name, &e.value);
    }
    if !env.iter().any(|(n, _)| n == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    env.into_iter().map(|(n, v)| format!("{n}={v}")).collect()
}

/// The working directory: the spec's, else the image's, else `/`.
pub fn process_cwd(spec: &ContainerSpec, image: &ImageConfig) -> Result<String, SpecError> {
    let cwd = match spec.working_dir.as_deref() {
        Some(d) if !d.is_empty() => d,
        _ if !image.working_dir.is_empty() => image.working_dir.as_str(),
        _ => "/",
    };
    if !cwd.starts_with('/') {
        return err(format!("spec.workingDir: {cwd:?} must be an absolute path"));
    }
    Ok(cwd.to_string())
}

/// The user string in effect: the spec's, else the image's (may be empty = root).
pub fn effective_user<'a>(spec: &'a ContainerSpec, image: &'a ImageConfig) -> &'a str {
    match spec.user.as_deref() {
        Some(u) if !u.is_empty() => u,
        _ => image.user.as_str(),
    }
}

/// Resolves `user[:group]` (names or numbers) to ids. `passwd` and `group`
/// are the contents of the image's `/etc/passwd` and `/etc/group`, when it
/// has them. As Docker: a numeric uid without a group takes the gid of its
/// passwd entry if there is one, else 0; additional gids are the primary
/// gid and the `/etc/group` memberships of the user's name.
pub fn resolve_user(user: &str, passwd: Option<&str>, group: Option<&str>) -> Result<UserIds, SpecError> {
    let user = user.trim();
    if user.is_empty() {
        return Ok(UserIds { uid: 0, gid: 0, additional_gids: vec![0] });
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // passwd: name:x:uid:gid:gecos:home:shell
    let passwd_entries: Vec<(&str, u32, u32)> = passwd
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((*f.first()?, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
        })
        .collect();
    // group: name:x:gid:member,member
    let group_entries: Vec<(&str, u32, Vec<&str>)> = group
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
            Some((*f.first()?, f.get(2)?.parse().ok()?, members))
        })
        .collect();

    let (uid, passwd_gid, name) = match u.parse::<u32>() {
        Ok(uid) => {
            let entry = passwd_entries.iter().find(|e| e.1 == uid);
            (uid, entry.map(|e| e.2), entry.map(|e| e.0))
        }
        Err(_) => match passwd_entries.iter().find(|e| e.0 == u) {
            Some(e) => (e.1, Some(e.2), Some(e.0)),
            None if passwd.is_none() => {
                return err(format!(
                    "user {u:?} is a name but the image has no /etc/passwd to resolve it; use a numeric uid[:gid]"
                ))
            }
            None => return err(format!("user {u:?} not found in the image's /etc/passwd")),
        },
    };
    let gid = match g {
        None | Some("") => passwd_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match group_entries.iter().find(|e| e.0 == g) {
                Some(e) => e.1,
                None if group.is_none() => {
                    return err(format!(
                        "group {g:?} is a name but the image has no /etc/group to resolve it; use a numeric gid"
                    ))
                }
                None => return err(format!("group {g:?} not found in the image's /etc/group")),
            },
        },
    };
    // As Docker: the primary group first, then the user's memberships.
    let mut additional_gids = vec![gid];
    if let Some(name) = name {
        for e in group_entries.iter().filter(|e| e.2.contains(&name)) {
            if !additional_gids.contains(&e.1) {
                additional_gids.push(e.1);
            }
        }
    }
    Ok(UserIds { uid, gid, additional_gids })
}

/// The mounts every container gets (containerd's default set).
fn default_mounts() -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ]
}

fn quantity_bytes(q: &steward_schema::quantity::Quantity, field: &str) -> Result<u64, SpecError> {
    let v = q.value().map_err(|e| SpecError(format!("{field}: {e}")))?;
    Ok(v.round() as u64)
}

/// The user's mounts, plus the host's resolver files under `network: host`.
fn user_mounts(spec: &ContainerSpec) -> Result<Vec<Value>, SpecError> {
    let mut out = Vec::new();
    for (i, m) in spec.mounts.iter().enumerate() {
        if !m.target.starts_with('/') {
            return err(format!("spec.mounts[{i}].target: {:?} must be an absolute path", m.target));
        }
        match m.mount_type {
            MountType::Bind => {
                let Some(source) = m.source.as_deref().filter(|s| !s.is_empty()) else {
                    return err(format!("spec.mounts[{i}].source: a bind mount needs a source"));
                };
                let rw = if m.read_only { "ro" } else { "rw" };
                out.push(json!({"destination": m.target, "type": "bind", "source": source,
                                "options": ["rbind", "rprivate", rw]}));
            }
            MountType::Tmpfs => {
                let mut options = vec!["nosuid".to_string(), "nodev".to_string(), "mode=1777".to_string()];
                if m.read_only {
                    options.push("ro".into());
                }
                if let Some(size) = &m.size_limit {
                    let bytes = quantity_bytes(size, &format!("spec.mounts[{i}].sizeLimit"))?;
                    if bytes == 0 {
                        return err(format!("spec.mounts[{i}].sizeLimit: must be above 0"));
                    }
                    options.push(format!("size={bytes}"));
                }
                out.push(json!({"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": options}));
            }
        }
    }
    if spec.network.as_deref() == Some(NETWORK_HOST) {
        for f in ["/etc/resolv.conf", "/etc/hosts"] {
            if !spec.mounts.iter().any(|m| m.target == f) {
                out.push(json!({"destination": f, "type": "bind", "source": f, "options": ["rbind", "rprivate", "ro"]}));
            }
        }
    }
    Ok(out)
}

/// `linux.resources` of the OCI spec for `spec`'s limits.
pub fn resources(spec: &ContainerSpec) -> Result<Value, SpecError> {
    let mut r = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let Some(limits) = spec.resources.as_ref().and_then(|r| r.limits.as_ref()) else {
        return Ok(r);
    };
    if let Some(mem) = &limits.memory {
        let bytes = quantity_bytes(mem, "spec.resources.limits.memory")?;
        if bytes < MIN_MEMORY_BYTES {
            return err(format!(
                "spec.resources.limits.memory: {} is below the minimum of 6Mi a container needs to start",
                mem.0
            ));
        }
        r["memory"] = json!({"limit": bytes});
    }
    if let Some(cpu) = &limits.cpu {
        let cores = cpu.value().map_err(|e| SpecError(format!("spec.resources.limits.cpu: {e}")))?;
        // The kernel's smallest CFS quota is 1 ms per period: 10m of a core.
        let quota = (cores * CPU_PERIOD_US as f64).round() as u64;
        if quota < 1000 {
            return err(format!("spec.resources.limits.cpu: {} is below the minimum of 10m", cpu.0));
        }
        r["cpu"] = json!({"quota": quota, "period": CPU_PERIOD_US});
    }
    if let Some(pids) = limits.pids {
        if pids < 1 {
            return err("spec.resources.limits.pids: must be at least 1");
        }
        r["pids"] = json!({"limit": pids});
    }
    Ok(r)
}

/// The `LinuxResources` of an in-place update (Tasks.Update): the limits of
/// [`resources`], with every limit the spec does not set lifted (runc
/// leaves a limit alone when the update omits it).
pub fn resources_update(spec: &ContainerSpec) -> Result<Value, SpecError> {
    let mut r = resources(spec)?;
    if let Some(o) = r.as_object_mut() {
        o.remove("devices");
        o.entry("memory").or_insert(json!({"limit": -1}));
        o.entry("cpu").or_insert(json!({"quota": -1, "period": CPU_PERIOD_US}));
        // runc update: -1 means no limit ("max"); 0 means "leave the
        // current limit alone", which would keep a removed limit.
        o.entry("pids").or_insert(json!({"limit": -1}));
    }
    Ok(r)
}

/// The OCI runtime spec (JSON) for one container.
pub fn build(inputs: &SpecInputs<'_>) -> Result<Value, SpecError> {
    let SpecInputs {
        id,
        namespace,
        hostname,
        spec,
        image,
        user,
        host,
        bridge,
    } = inputs;
    let args = process_args(spec, image)?;
    let env = process_env(spec, image);
    let cwd = process_cwd(spec, image)?;

    let mut mounts = default_mounts();
    mounts.extend(user_mounts(spec)?);

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    // A bridge network: the namespace steward made and attached, and the
    // resolver files written for it (unless the user mounts their own);
    // `none` = a network namespace of its own with only `lo`; `host` = no
    // network namespace at all.
    if let Some(b) = bridge {
        namespaces.push(json!({"type": "network", "path": b.netns}));
        for f in ["hosts", "resolv.conf", "hostname"] {
            let target = format!("/etc/{f}");
            if !spec.mounts.iter().any(|m| m.target == target) {
                mounts.push(json!({"destination": target, "type": "bind", "source": b.files.join(f), "options": ["rbind", "rprivate", "rw"]}));
            }
        }
    } else if spec.network.as_deref() != Some(NETWORK_HOST) {
        namespaces.push(json!({"type": "network"}));
    }

    // containerd's default is 1024:1024; cap both at what the shim may set.
    let nofile_soft = 1024.min(host.nofile_hard);
    let caps = DEFAULT_CAPABILITIES;
    Ok(json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": host.nofile_hard, "soft": nofile_soft}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "resources": resources(spec)?,
            "cgroupsPath": format!("/{namespace}/{id}"),
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }))
}

/// A hostname from the object name (labels) or the id, cut to the 63
/// characters a hostname may have.
pub fn hostname_for(name: Option<&str>, id: &str) -> String {
    let h = name.filter(|n| !n.is_empty()).unwrap_or(id);
    h.chars().take(63).collect()
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;
    use steward_schema::quantity::Quantity;
    use steward_schema::{EnvVar, Limits, Mount, Resources};

    fn image() -> ImageConfig {
        ImageConfig {
            digest: "sha256:abc".into(),
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default-cmd".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: "/work".into(),
            user: "".into(),
            top_layer_chain_id: "sha256:top".into(),
        }
    }

    fn inputs<'a>(spec: &'a ContainerSpec, image: &'a ImageConfig) -> SpecInputs<'a> {
        SpecInputs {
            id: "c1",
            namespace: "steward",
            hostname: "web",
            spec,
            image,
            user: UserIds::default(),
            host: HostLimits { nofile_hard: 20000 },
            bridge: None,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn args_follow_kubernetes_semantics() {
        let img = image();
        let no_entry = ImageConfig { entrypoint: vec![], ..image() };
        let empty = ImageConfig { entrypoint: vec![], cmd: vec![], ..image() };
        // (command, args, image, expected)
        let cases: Vec<(Vec<String>, Vec<String>, &ImageConfig, Result<Vec<String>, ()>)> = vec![
            (vec![], vec![], &img, Ok(s(&["/entry", "default-cmd"]))),
            (s(&["/bin/sh", "-c"]), vec![], &img, Ok(s(&["/bin/sh", "-c"]))),
            (s(&["/bin/sh", "-c"]), s(&["echo hi"]), &img, Ok(s(&["/bin/sh", "-c", "echo hi"]))),
            (vec![], s(&["x", "y"]), &img, Ok(s(&["/entry", "x", "y"]))),
            (vec![], vec![], &no_entry, Ok(s(&["default-cmd"]))),
            (vec![], s(&["sleep", "1"]), &no_entry, Ok(s(&["sleep", "1"]))),
            (vec![], vec![], &empty, Err(())),
        ];
        for (i, (command, args, image, want)) in cases.into_iter().enumerate() {
            let spec = ContainerSpec { command, args, ..Default::default() };
            let got = process_args(&spec, image).map_err(|_| ());
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn env_merges_image_then_spec_with_default_path() {
        let ev = |n: &str, v: &str| EnvVar { name: n.into(), value: v.into() };
        let cases: Vec<(Vec<String>, Vec<EnvVar>, Vec<String>)> = vec![
            (s(&["PATH=/bin", "A=image"]), vec![], s(&["PATH=/bin", "A=image"])),
            (s(&["PATH=/bin", "A=image"]), vec![ev("A", "spec"), ev("B", "b")], s(&["PATH=/bin", "A=spec", "B=b"])),
            (vec![], vec![ev("X", "1")], vec![format!("PATH={DEFAULT_PATH}"), "X=1".into()]),
            (s(&["NOVALUE"]), vec![ev("PATH", "/mine")], s(&["NOVALUE=", "PATH=/mine"])),
        ];
        for (i, (img_env, spec_env, want)) in cases.into_iter().enumerate() {
            let img = ImageConfig { env: img_env, ..image() };
            let spec = ContainerSpec { env: spec_env, ..Default::default() };
            assert_eq!(process_env(&spec, &img), want, "case {i}");
        }
    }

    #[test]
    fn cwd_spec_then_image_then_root() {
        let img = image();
        let bare = ImageConfig { working_dir: "".into(), ..image() };
        let cases: Vec<(Option<&str>, &ImageConfig, Result<&str, ()>)> = vec![
            (Some("/data"), &img, Ok("/data")),
            (None, &img, Ok("/work")),
            (Some(""), &img, Ok("/work")),
            (None, &bare, Ok("/")),
            (Some("relative"), &img, Err(())),
        ];
        for (i, (wd, img, want)) in cases.into_iter().enumerate() {
            let spec = ContainerSpec { working_dir: wd.map(String::from), ..Default::default() };
            assert_eq!(process_cwd(&spec, img).map_err(|_| ()), want.map(String::from), "case {i}");
        }
    }

    #[test]
    fn users_resolve_like_docker() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n";
        let group = "root:x:0:\ndata:x:34:\nextra:x:50:www,other\n";
        let ids = |uid, gid, add: &[u32]| Ok(UserIds { uid, gid, additional_gids: add.to_vec() });
        let cases: Vec<(&str, Option<&str>, Option<&str>, Result<UserIds, ()>)> = vec![
            ("", None, None, ids(0, 0, &[0])),
            ("1000", None, None, ids(1000, 0, &[0])),
            ("1000:1000", None, None, ids(1000, 1000, &[1000])),
            ("33", Some(passwd), Some(group), ids(33, 34, &[34, 50])),
            ("www", Some(passwd), Some(group), ids(33, 34, &[34, 50])),
            ("www:root", Some(passwd), Some(group), ids(33, 0, &[0, 50])),
            ("www:7", Some(passwd), Some(group), ids(33, 7, &[7, 50])),
            ("nobody", Some(passwd), Some(group), Err(())),
            ("www", None, None, Err(())),
            ("1:nogroup", Some(passwd), None, Err(())),
        ];
        for (i, (user, p, g, want)) in cases.into_iter().enumerate() {
            assert_eq!(resolve_user(user, p, g).map_err(|_| ()), want, "case {i}: {user}");
        }
        let e = resolve_user("www", None, None).unwrap_err();
        assert!(e.0.contains("no /etc/passwd"), "{e}");
    }

    fn limits(memory: Option<&str>, cpu: Option<&str>, pids: Option<i64>) -> ContainerSpec {
        ContainerSpec {
            resources: Some(Resources {
                limits: Some(Limits {
                    memory: memory.map(|m| Quantity(m.into())),
                    cpu: cpu.map(|c| Quantity(c.into())),
                    pids,
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn resources_map_to_cgroup_limits() {
        let img = image();
        let cases: Vec<(ContainerSpec, Result<Value, &str>)> = vec![
            (ContainerSpec::default(), Ok(json!({"devices": [{"allow": false, "access": "rwm"}]}))),
            (
                limits(Some("64Mi"), Some("500m"), Some(128)),
                Ok(json!({"devices": [{"allow": false, "access": "rwm"}],
                          "memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000},
                          "pids": {"limit": 128}})),
            ),
            (
                limits(None, Some("2"), None),
                Ok(json!({"devices": [{"allow": false, "access": "rwm"}], "cpu": {"quota": 200000, "period": 100000}})),
            ),
            (limits(Some("1Mi"), None, None), Err("below the minimum of 6Mi")),
            (limits(None, Some("1m"), None), Err("below the minimum of 10m")),
            (limits(None, None, Some(0)), Err("pids")),
            (limits(Some("lots"), None, None), Err("spec.resources.limits.memory")),
        ];
        for (i, (spec, want)) in cases.into_iter().enumerate() {
            let got = build(&inputs(&spec, &img)).map(|v| v["linux"]["resources"].clone());
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "case {i}"),
                (Err(e), Err(w)) => assert!(e.0.contains(w), "case {i}: {e}"),
                (g, w) => panic!("case {i}: got {g:?}, want {w:?}"),
            }
        }
    }

    /// An update lifts every limit the spec does not set: runc's
    /// "unlimited" values (-1), never 0 (which runc reads as "unchanged").
    #[test]
    fn resource_updates_lift_unset_limits() {
        let r = resources_update(&ContainerSpec::default()).unwrap();
        assert_eq!(
            r,
            json!({"memory": {"limit": -1}, "cpu": {"quota": -1, "period": 100000}, "pids": {"limit": -1}})
        );
        let r = resources_update(&limits(None, None, Some(32))).unwrap();
        assert_eq!(r["pids"], json!({"limit": 32}));
    }

    #[test]
    fn mounts_and_namespaces_by_network_mode() {
        let img = image();
        let bind = Mount {
            mount_type: MountType::Bind,
            source: Some("/srv".into()),
            target: "/data".into(),
            read_only: true,
            size_limit: None,
        };
        let tmpfs = Mount {
            mount_type: MountType::Tmpfs,
            source: None,
            target: "/tmp".into(),
            read_only: false,
            size_limit: Some(Quantity("16Mi".into())),
        };
        let spec = ContainerSpec {
            mounts: vec![bind, tmpfs],
            network: Some("none".into()),
            ..Default::default()
        };
        let v = build(&inputs(&spec, &img)).unwrap();
        let mounts = v["mounts"].as_array().unwrap();
        let find = |d: &str| mounts.iter().find(|m| m["destination"] == d).cloned();
        assert_eq!(
            find("/data").unwrap()["options"],
            json!(["rbind", "rprivate", "ro"])
        );
        assert_eq!(find("/data").unwrap()["source"], "/srv");
        assert_eq!(
            find("/tmp").unwrap()["options"],
            json!(["nosuid", "nodev", "mode=1777", "size=16777216"])
        );
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
        ] {
            assert!(find(d).is_some(), "default mount {d}");
        }
        assert_eq!(
            find("/sys").unwrap()["options"]
                .as_array()
                .unwrap()
                .last()
                .unwrap(),
            "ro"
        );
        assert!(find("/etc/resolv.conf").is_none());
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);

        let host = ContainerSpec {
            network: Some("host".into()),
            ..Default::default()
        };
        let v = build(&inputs(&host, &img)).unwrap();
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount"]);
        let mounts = v["mounts"].as_array().unwrap();
        for f in ["/etc/resolv.conf", "/etc/hosts"] {
            let m = mounts.iter().find(|m| m["destination"] == f).expect(f);
            assert_eq!(m["source"], f);
            assert_eq!(m["options"], json!(["rbind", "rprivate", "ro"]));
        }

        // A bridge network: steward's namespace by path, and its resolver
        // files, but not over a file the user mounts.
        let user_hosts = Mount {
            mount_type: MountType::Bind,
            source: Some("/srv/hosts".into()),
            target: "/etc/hosts".into(),
            read_only: true,
            size_limit: None,
        };
        let bridged = ContainerSpec {
            network: Some("bridge".into()),
            mounts: vec![user_hosts],
            ..Default::default()
        };
        let netns = std::path::Path::new("/run/steward/x/netns/c1");
        let files = std::path::Path::new("/var/lib/steward/cni/containers/c1");
        let mut inp = inputs(&bridged, &img);
        inp.bridge = Some(BridgeNet { netns, files });
        let v = build(&inp).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(
            ns.last().unwrap(),
            &json!({"type": "network", "path": "/run/steward/x/netns/c1"})
        );
        let mounts = v["mounts"].as_array().unwrap();
        let sources: Vec<(&str, &str)> = mounts
            .iter()
            .filter(|m| m["destination"].as_str().unwrap().starts_with("/etc/"))
            .map(|m| {
                (
                    m["destination"].as_str().unwrap(),
                    m["source"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            sources,
            [
                ("/etc/hosts", "/srv/hosts"),
                (
                    "/etc/resolv.conf",
                    "/var/lib/steward/cni/containers/c1/resolv.conf"
                ),
                (
                    "/etc/hostname",
                    "/var/lib/steward/cni/containers/c1/hostname"
                ),
            ]
        );
    }

    #[test]
    fn bad_mounts_are_errors_naming_the_field() {
        let img = image();
        let cases = vec![
            (Mount { mount_type: MountType::Bind, source: None, target: "/x".into(), read_only: false, size_limit: None }, "spec.mounts[0].source"),
            (Mount { mount_type: MountType::Bind, source: Some("/a".into()), target: "x".into(), read_only: false, size_limit: None }, "spec.mounts[0].target"),
            (Mount { mount_type: MountType::Tmpfs, source: None, target: "/t".into(), read_only: false, size_limit: Some(Quantity("0".into())) }, "spec.mounts[0].sizeLimit"),
        ];
        for (m, want) in cases {
            let spec = ContainerSpec { mounts: vec![m], ..Default::default() };
            let e = build(&inputs(&spec, &img)).unwrap_err();
            assert!(e.0.contains(want), "{e} should name {want}");
        }
    }

    #[test]
    fn process_security_defaults() {
        let img = image();
        let spec = ContainerSpec::default();
        let mut inp = inputs(&spec, &img);
        inp.user = UserIds { uid: 1000, gid: 100, additional_gids: vec![5] };
        inp.host = HostLimits { nofile_hard: 512 };
        let v = build(&inp).unwrap();
        let p = &v["process"];
        assert_eq!(p["user"], json!({"uid": 1000, "gid": 100, "additionalGids": [5]}));
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["capabilities"]["bounding"].as_array().unwrap().len(), 14);
        assert!(p["capabilities"].get("inheritable").is_none());
        // Never above the host's hard limit (runc cannot raise it).
        assert_eq!(p["rlimits"], json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 512}]));
        assert_eq!(v["hostname"], "web");
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["linux"]["cgroupsPath"], "/steward/c1");
        assert_eq!(v["linux"]["maskedPaths"].as_array().unwrap().len(), MASKED_PATHS.len());
        assert_eq!(v["linux"]["readonlyPaths"], json!(READONLY_PATHS));
    }

    #[test]
    fn effective_user_and_hostname() {
        let img = ImageConfig { user: "33".into(), ..image() };
        assert_eq!(effective_user(&ContainerSpec::default(), &img), "33");
        let spec = ContainerSpec { user: Some("1:2".into()), ..Default::default() };
        assert_eq!(effective_user(&spec, &img), "1:2");
        assert_eq!(hostname_for(Some("web"), "id"), "web");
        assert_eq!(hostname_for(None, &"x".repeat(80)).len(), 63);
    }
}
