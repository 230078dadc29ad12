//! The fault suite's tools: a seeded generator, the convergence invariant,
//! an external containerd the harness owns, and per-scenario figures.
//!
//! The invariant is read from outside steward: the API (through the CLI),
//! containerd (through `ctr`), the log directory and the SQLite file
//! (through the `sqlite3` CLI). It never asks steward's code what is true,
//! except for the spec hash function, which defines what "current" means.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{pids_mentioning, tail, Proc, Steward, INSTALL};

/// splitmix64: small, seedable, good enough to pick faults and delays.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?}: not a non-negative integer")))
}

/// The scenario's seed: `STEWARD_FAULT_SEED` replays one; otherwise a new
/// one from the clock. Printed either way.
pub fn seed(scenario: &str) -> u64 {
    let seed = env_u64("STEWARD_FAULT_SEED").unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
    });
    eprintln!("fault[{scenario}]: seed {seed} (replay with STEWARD_FAULT_SEED={seed})");
    seed
}

/// Rounds per scenario: `STEWARD_FAULT_ROUNDS`, else `default` (CI's few).
pub fn rounds(default: u64) -> u64 {
    env_u64("STEWARD_FAULT_ROUNDS").unwrap_or(default).max(1)
}

/// How long convergence may take after a round: `STEWARD_FAULT_CONVERGE_SECS`, default 20 s.
pub fn converge_bound() -> Duration {
    Duration::from_secs(env_u64("STEWARD_FAULT_CONVERGE_SECS").unwrap_or(20))
}

/// Per-round figures of one scenario.
pub struct Figures {
    scenario: String,
    seed: u64,
    rounds: Vec<(u64, Duration)>,
}

impl Figures {
    pub fn new(scenario: &str, seed: u64) -> Figures {
        Figures { scenario: scenario.into(), seed, rounds: Vec::new() }
    }

    pub fn round(&mut self, faults: u64, converged_in: Duration) {
        eprintln!(
            "fault[{}]: round {} faults {faults} converged in {:.2}s",
            self.scenario,
            self.rounds.len() + 1,
            converged_in.as_secs_f64()
        );
        self.rounds.push((faults, converged_in));
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    }

    /// One line: rounds, faults, convergence p50/p99/max.
    pub fn summary(&self) -> String {
        let mut t: Vec<Duration> = self.rounds.iter().map(|r| r.1).collect();
        t.sort();
        let faults: u64 = self.rounds.iter().map(|r| r.0).sum();
        format!(
            "fault[{}]: seed {} rounds {} faults {} converge p50 {:.2}s p99 {:.2}s max {:.2}s",
            self.scenario,
            self.seed,
            self.rounds.len(),
            faults,
            Self::percentile(&t, 0.5).as_secs_f64(),
            Self::percentile(&t, 0.99).as_secs_f64(),
            t.last().copied().unwrap_or_default().as_secs_f64()
        )
    }
}

impl Drop for Figures {
    fn drop(&mut self) {
        // Printed on failure too: the figures up to the failing round.
        eprintln!("{}", self.summary());
    }
}

/// What a test expects of one object, from the acknowledged writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Want {
    /// Present with env `GEN` = this value.
    Present(u64),
    /// Deleted (an acknowledged delete).
    Absent,
    /// A write whose outcome is unknown (the server died under it): either.
    Unknown,
}

/// The label a test puts on an object to say which state its restart
/// policy and command call for: `running` or `succeeded`.
pub const LABEL_EXPECT: &str = "fault.steward.dev/expect";

/// A containerd container as `ctr` shows it.
#[derive(Clone, Debug)]
pub struct CtrContainer {
    pub id: String,
    pub labels: BTreeMap<String, String>,
}

/// A containerd task as `ctr tasks ls` shows it.
#[derive(Clone, Debug)]
pub struct CtrTask {
    pub pid: u32,
    pub status: String,
}

/// Everything the invariant looks at, read once.
pub struct Observed {
    pub objects: Vec<Value>,
    pub containers: Vec<CtrContainer>,
    pub tasks: BTreeMap<String, CtrTask>,
    /// Active snapshots (key) of the overlayfs snapshotter.
    pub active_snapshots: BTreeSet<String>,
    pub log_files: Vec<String>,
    /// Container ids steward's networking holds something for: attachment
    /// records, per-container files, IPAM leases (`DATA/cni`).
    pub network_ids: BTreeMap<String, String>,
}

/// What `DATA/cni` holds, by container id: where it was found.
pub fn network_ids(data_dir: &Path) -> BTreeMap<String, String> {
    let cni = data_dir.join("cni");
    let mut out = BTreeMap::new();
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    };
    for f in names(&cni.join("results")) {
        if let Some(id) = f.strip_suffix(".json") {
            out.insert(id.to_string(), format!("attachment record cni/results/{f}"));
        }
    }
    for id in names(&cni.join("containers")) {
        out.entry(id.clone()).or_insert_with(|| format!("resolver files cni/containers/{id}"));
    }
    for net in names(&cni.join("networks")) {
        for lease in names(&cni.join("networks").join(&net)).into_iter().filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok()) {
            let owner = std::fs::read_to_string(cni.join("networks").join(&net).join(&lease)).unwrap_or_default();
            if let Some(id) = owner.lines().next().map(str::trim).filter(|l| !l.is_empty()) {
                out.entry(id.to_string()).or_insert_with(|| format!("IPAM lease {net}/{lease}"));
            }
        }
    }
    out
}

impl Observed {
    pub fn object(&self, name: &str) -> Option<&Value> {
        self.objects.iter().find(|o| o["metadata"]["name"] == name)
    }

    pub fn container_of(&self, uid: &str) -> Vec<&CtrContainer> {
        self.containers.iter().filter(|c| c.labels.get(LABEL_UID).map(String::as_str) == Some(uid)).collect()
    }
}

use steward_controller::actual::{LABEL_MANAGED_BY, LABEL_NAME, LABEL_NAMESPACE, LABEL_SPEC_HASH, LABEL_UID};

/// The spec hash the controller labels the container of `obj` with. The
/// one place the suite depends on steward's code: if the hash changes
/// (issue 7 item 12), this follows.
pub fn expected_spec_hash(obj: &Value) -> Result<String, String> {
    let c: steward_schema::Container =
        serde_json::from_value(obj.clone()).map_err(|e| format!("object does not parse as a Container: {e}"))?;
    Ok(steward_controller::container::plan::spec_hash(&c.spec))
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn gen_of(obj: &Value) -> Option<u64> {
    obj.pointer("/spec/env")?
        .as_array()?
        .iter()
        .find(|e| e["name"] == "GEN")
        .and_then(|e| e["value"].as_str())
        .and_then(|v| v.parse().ok())
}

/// Reads the invariant's inputs and checks them. Keeps state across calls:
/// the highest store revision seen (revisions never go back, across
/// crashes), and the container labels (immutable per id) already read.
pub struct Checker {
    pub last_revision: i64,
    labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

impl Checker {
    pub fn new() -> Checker {
        Checker { last_revision: 0, labels: BTreeMap::new() }
    }

    fn ctr(st: &Steward, args: &[&str]) -> Result<String, String> {
        let o = st.ctr_command(args).output().map_err(|e| format!("ctr: {e}; {INSTALL}"))?;
        if !o.status.success() {
            return Err(format!("ctr {args:?}: {}", String::from_utf8_lossy(&o.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Reads API, containerd and the log dir (in that order).
    pub fn observe(&mut self, st: &Steward) -> Result<Observed, String> {
        let o = st.cli(&["get", "containers", "-o", "json"]);
        if !o.status.success() {
            return Err(format!("steward get containers: {}", String::from_utf8_lossy(&o.stderr).trim()));
        }
        let list: Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("get containers -o json: {e}"))?;
        let objects = list["items"].as_array().cloned().unwrap_or_default();

        let ids: Vec<String> =
            Self::ctr(st, &["containers", "ls", "-q"])?.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        self.labels.retain(|id, _| ids.contains(id));
        let mut containers = Vec::new();
        for id in ids {
            if !self.labels.contains_key(&id) {
                let info = match Self::ctr(st, &["containers", "info", &id]) {
                    Ok(i) => i,
                    // Removed between the list and now.
                    Err(e) if e.contains("not found") => continue,
                    Err(e) => return Err(e),
                };
                let v: Value = serde_json::from_str(&info).map_err(|e| format!("ctr containers info {id}: {e}"))?;
                let labels = v["Labels"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                self.labels.insert(id.clone(), labels);
            }
            containers.push(CtrContainer { labels: self.labels[&id].clone(), id });
        }

        let mut tasks = BTreeMap::new();
        for line in Self::ctr(st, &["tasks", "ls"])?.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [id, pid, status, ..] = f[..] {
                tasks.insert(id.to_string(), CtrTask { pid: pid.parse().unwrap_or(0), status: status.to_string() });
            }
        }
        let mut active_snapshots = BTreeSet::new();
        for line in Self::ctr(st, &["snapshots", "--snapshotter", "overlayfs", "ls"])?.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // KEY PARENT KIND (PARENT may be empty).
            if f.last() == Some(&"Active") {
                active_snapshots.insert(f[0].to_string());
            }
        }
        let mut log_files: Vec<String> = std::fs::read_dir(st.data_dir.join("logs/steward"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        log_files.sort();
        let network_ids = network_ids(&st.data_dir);
        Ok(Observed { objects, containers, tasks, active_snapshots, log_files, network_ids })
    }

    /// `PRAGMA integrity_check` and the revision order, read from the
    /// database file with the `sqlite3` CLI (read-only; WAL readers do not
    /// block steward's writer). Call only while steward runs.
    pub fn check_store(&mut self, st: &Steward) -> Vec<String> {
        let db = st.data_dir.join("steward.db");
        let sql = "PRAGMA integrity_check; \
                   SELECT 'max', coalesce((SELECT max(rv) FROM events), 0), coalesce((SELECT max(rv) FROM objects), 0); \
                   SELECT 'ahead', count(*) FROM objects WHERE rv > coalesce((SELECT max(rv) FROM events), 0);";
        let o = match Command::new("sqlite3").args(["-readonly", "-batch", "-cmd", ".timeout 10000"]).arg(&db).arg(sql).output() {
            Ok(o) => o,
            Err(e) => return vec![format!("sqlite3: {e}; install it: apt-get install -y sqlite3 (or: make deps-e2e)")],
        };
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut problems = Vec::new();
        if !o.status.success() {
            problems.push(format!("sqlite3 {}: {}", db.display(), String::from_utf8_lossy(&o.stderr).trim()));
            return problems;
        }
        let mut lines = out.lines();
        if lines.next() != Some("ok") {
            problems.push(format!("PRAGMA integrity_check: {out}"));
            return problems;
        }
        for l in lines {
            let f: Vec<&str> = l.split('|').collect();
            match f[..] {
                ["max", ev, obj] => {
                    let rev = ev.parse::<i64>().unwrap_or(0).max(obj.parse().unwrap_or(0));
                    if rev < self.last_revision {
                        problems.push(format!("store revision went back: {rev} < {} seen before", self.last_revision));
                    }
                    self.last_revision = self.last_revision.max(rev);
                }
                ["ahead", n] if n != "0" => {
                    problems.push(format!("{n} objects carry a revision newer than the event log's last"));
                }
                _ => {}
            }
        }
        problems
    }

    /// Every way actual state differs from what the store and `want`
    /// say it must be; empty when converged.
    pub fn problems(&mut self, st: &Steward, want: &BTreeMap<String, Want>) -> Vec<String> {
        let seen = match self.observe(st) {
            Ok(s) => s,
            Err(e) => return vec![e],
        };
        let mut p = check(&seen, want);
        if p.is_empty() {
            p.extend(self.check_store(st));
        }
        p
    }

    /// Polls until the invariant holds, within `bound`; returns how long it
    /// took, or panics with every difference of the last look and the
    /// server's log.
    pub fn converge(&mut self, st: &Steward, want: &BTreeMap<String, Want>, bound: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let problems = self.problems(st, want);
            if problems.is_empty() {
                return start.elapsed();
            }
            if start.elapsed() >= bound {
                let mut msg = format!("not converged within {bound:?} ({} differences):\n", problems.len());
                for p in &problems {
                    let _ = writeln!(msg, "  - {p}");
                }
                let _ = write!(msg, "server log (tail):\n{}", tail(&st.proc.logs(), 60));
                panic!("{msg}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The invariant over one observation (pure, so its rules are unit-tested).
pub fn check(seen: &Observed, want: &BTreeMap<String, Want>) -> Vec<String> {
    let mut p = Vec::new();
    let mut live_uids = BTreeSet::new();
    let mut live_names = BTreeSet::new();
    for obj in &seen.objects {
        let name = str_at(obj, "/metadata/name");
        let ns = str_at(obj, "/metadata/namespace");
        let uid = str_at(obj, "/metadata/uid");
        if obj.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
            p.push(format!("{name}: still in the store, deleting (deletionTimestamp set)"));
            continue;
        }
        live_uids.insert(uid.to_string());
        if let Some(dir) = steward_logfile::object_dir_name(ns, name, uid) {
            live_names.insert(dir);
        }
        let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64);
        let observed = obj.pointer("/status/observedGeneration").and_then(Value::as_i64);
        if observed != generation {
            p.push(format!("{name}: status.observedGeneration {observed:?} != metadata.generation {generation:?}"));
        }
        let mine = seen.container_of(uid);
        let [c] = mine[..] else {
            let ids: Vec<&str> = mine.iter().map(|c| c.id.as_str()).collect();
            p.push(format!("{name}: {} containerd containers with its uid, want 1: {ids:?}", mine.len()));
            continue;
        };
        match expected_spec_hash(obj) {
            Ok(h) if c.labels.get(LABEL_SPEC_HASH) != Some(&h) => {
                p.push(format!("{name}: container {} has spec hash {:?}, the current spec's is {h}", c.id, c.labels.get(LABEL_SPEC_HASH)))
            }
            Ok(_) => {}
            Err(e) => p.push(format!("{name}: {e}")),
        }
        for (k, v) in [(LABEL_MANAGED_BY, "steward"), (LABEL_NAME, name), (LABEL_NAMESPACE, ns)] {
            if c.labels.get(k).map(String::as_str) != Some(v) {
                p.push(format!("{name}: container {} label {k}={:?}, want {v:?}", c.id, c.labels.get(k)));
            }
        }
        let status_id = str_at(obj, "/status/containerID");
        if status_id != format!("containerd://{}", c.id) {
            p.push(format!("{name}: status.containerID {status_id:?}, containerd has {}", c.id));
        }
        if !seen.active_snapshots.contains(&c.id) {
            p.push(format!("{name}: container {} has no active snapshot (rootfs) in containerd", c.id));
        }
        let task = seen.tasks.get(&c.id);
        let phase = str_at(obj, "/status/phase");
        let pid = obj.pointer("/status/pid").and_then(Value::as_u64);
        match obj.pointer(&format!("/metadata/labels/{}", LABEL_EXPECT.replace('/', "~1"))).and_then(Value::as_str) {
            Some("running") => match task {
                Some(t) if t.status == "RUNNING" => {
                    if phase != "Running" || pid != Some(u64::from(t.pid)) {
                        p.push(format!(
                            "{name}: task RUNNING pid {}, status says phase {phase:?} pid {pid:?}",
                            t.pid
                        ));
                    }
                }
                other => p.push(format!("{name}: should run; task {other:?}, status phase {phase:?}")),
            },
            Some("succeeded") => {
                if phase != "Succeeded" || pid.is_some() {
                    p.push(format!("{name}: should have succeeded; status phase {phase:?} pid {pid:?}"));
                }
                if let Some(t) = task.filter(|t| t.status != "STOPPED") {
                    p.push(format!("{name}: finished, but its task is {} (pid {})", t.status, t.pid));
                }
            }
            _ => {}
        }
    }
    for (name, w) in want {
        let obj = seen.object(name);
        match (w, obj) {
            (Want::Present(g), None) => p.push(format!("{name}: acknowledged (GEN={g}) but missing from the store")),
            (Want::Present(g), Some(o)) if gen_of(o) != Some(*g) => {
                p.push(format!("{name}: acknowledged GEN={g}, store has GEN={:?}", gen_of(o)))
            }
            (Want::Absent, Some(_)) => p.push(format!("{name}: acknowledged delete, still in the store")),
            _ => {}
        }
    }
    let ids: BTreeSet<&str> = seen.containers.iter().map(|c| c.id.as_str()).collect();
    for c in &seen.containers {
        let uid = c.labels.get(LABEL_UID).map(String::as_str).unwrap_or_default();
        if !live_uids.contains(uid) {
            p.push(format!(
                "leftover container {} (uid {uid:?}, name {:?}, task {:?}): no live object owns it",
                c.id,
                c.labels.get(LABEL_NAME),
                seen.tasks.get(&c.id)
            ));
        }
        if let Some(t) = seen.tasks.get(&c.id) {
            if t.status == "CREATED" || t.status == "UNKNOWN" || t.status == "PAUSED" {
                p.push(format!("container {}: task left {} (pid {})", c.id, t.status, t.pid));
            }
        }
    }
    for (id, t) in &seen.tasks {
        if !ids.contains(id.as_str()) {
            p.push(format!("task {id} (pid {}, {}) has no container: orphaned", t.pid, t.status));
        }
    }
    for s in &seen.active_snapshots {
        if !ids.contains(s.as_str()) {
            p.push(format!("leftover active snapshot {s}: no container uses it"));
        }
    }
    for (id, what) in &seen.network_ids {
        if !ids.contains(id.as_str()) {
            p.push(format!("leaked network attachment of {id} ({what}): no such container"));
        }
    }
    for f in &seen.log_files {
        let of_container = ids.iter().any(|id| f.starts_with(&format!("{id}.")));
        // An object's logs (every run attempt, across the containers that
        // replaced each other) live in its own directory until it is deleted.
        let of_live_object = live_names.contains(f);
        if !of_container && !of_live_object {
            p.push(format!("leftover log file {f}: no container or live object owns it"));
        }
    }
    p
}

/// A containerd the harness starts itself (for `--containerd-socket`),
/// with its own root, state and socket under `dir`.
pub struct ExternalContainerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    config: PathBuf,
    pub proc: Proc,
    /// Runs in a private mount namespace without `/sys/fs/cgroup/unified`
    /// (crun 1.8.1 refuses the hybrid cgroup layout otherwise).
    hide_unified: bool,
}

impl ExternalContainerd {
    pub fn start(dir: &Path) -> ExternalContainerd {
        Self::start_with(dir, false)
    }

    /// [`Self::start`] in a private mount namespace where the hybrid
    /// layout's `/sys/fs/cgroup/unified` is unmounted, so crun runs.
    pub fn start_for_crun(dir: &Path) -> ExternalContainerd {
        Self::start_with(dir, true)
    }

    fn start_with(dir: &Path, hide_unified: bool) -> ExternalContainerd {
        std::fs::create_dir_all(dir).expect("create the containerd dir");
        let d = dir.display();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
                 [debug]\n  address = \"{d}/debug.sock\"\n[metrics]\n  address = \"\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
            ),
        )
        .expect("write the containerd config");
        let socket = dir.join("containerd.sock");
        let proc = Self::spawn(&config, &socket, hide_unified);
        ExternalContainerd { dir: dir.to_path_buf(), socket, config, proc, hide_unified }
    }

    fn spawn(config: &Path, socket: &Path, hide_unified: bool) -> Proc {
        let proc = if hide_unified {
            let script = format!(
                "if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified || exit 1; fi; exec containerd --config '{}'",
                config.display()
            );
            Proc::spawn(Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]))
        } else {
            Proc::spawn(Command::new("containerd").arg("--config").arg(config))
        };
        let ready = || {
            Command::new("ctr").arg("--address").arg(socket).arg("version").output().ok().filter(|o| o.status.success())
        };
        crate::wait_for("the external containerd to answer", Duration::from_secs(20), ready);
        proc
    }

    /// SIGKILL; shims and containers live on.
    pub fn kill9(&mut self) {
        self.proc.kill();
    }

    pub fn restart(&mut self) {
        self.proc = Self::spawn(&self.config, &self.socket, self.hide_unified);
    }
}

/// Log lines steward writes right after a containerd call returned and
/// before the reconcile records it (status, finalizer): the windows
/// between containerd calls a kill -9 should land in.
pub const AFTER_CONTAINERD_CALL: [&str; 3] =
    ["steward_controller::container::reconciler: started", "steward_controller::container::reconciler: stopping", "steward_controller::container::reconciler: removed"];

/// Waits (polling every millisecond) until steward's log, past byte
/// `from`, has a line containing one of `needles`; returns it, or None
/// after `timeout`.
pub fn wait_log_line(st: &Steward, from: usize, needles: &[&str], timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(out) = st.proc.output.lock() {
            if let Some(l) = out.get(from..).and_then(|t| t.lines().find(|l| needles.iter().any(|n| l.contains(n)))) {
                return Some(l.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Bytes of steward's log so far (a `from` for [`wait_log_line`]).
pub fn log_len(st: &Steward) -> usize {
    st.proc.output.lock().map(|o| o.len()).unwrap_or(0)
}

/// SIGKILL to `pid`.
pub fn sigkill(pid: i32) {
    // SAFETY: kill(2) takes plain integers; no memory is shared.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The containerd serving `socket` (supervised by steward, or external).
pub fn containerd_pid(socket: &Path) -> Option<i32> {
    let config = socket.with_file_name("config.toml").to_string_lossy().into_owned();
    pids_mentioning(&config).into_iter().find(|&p| comm(p) == "containerd")
}

/// The runc shims of `namespace` on the containerd at `socket` (from
/// /proc cmdline: `containerd-shim-runc-v2 -namespace NS ... -address SOCKET`).
pub fn shim_pids(socket: &Path, namespace: &str) -> Vec<i32> {
    let sock = socket.to_string_lossy().into_owned();
    pids_mentioning(&sock)
        .into_iter()
        .filter(|&pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            args.first().is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                && args.windows(2).any(|w| w[0] == "-namespace" && w[1] == namespace)
                && args.windows(2).any(|w| w[0] == "-address" && w[1] == sock)
        })
        .collect()
}

/// A Container manifest for the fault suite. `expect` (`running` or
/// `succeeded`) picks the workload and restart policy; `generation` goes
/// in env `GEN` (a spec change when it moves).
pub fn manifest(name: &str, image: &str, expect: &str, generation: u64) -> String {
    let (policy, command) = match expect {
        "succeeded" => ("Never", "[/bin/sh, -c, \"echo done; exit 0\"]"),
        _ => ("Always", "[sleep, \"3600\"]"),
    };
    format!(
        "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\n  labels:\n    {LABEL_EXPECT}: {expect}\n\
         spec:\n  image: {image}\n  command: {command}\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 1\n\
         \x20 env: [{{name: GEN, value: \"{generation}\"}}]\n"
    )
}

/// Several manifests as one multi-document file.
pub fn manifests(docs: &[String]) -> String {
    docs.join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_generator_replays_from_its_seed() {
        let a: Vec<u64> = (0..5).scan(Rng::new(42), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..5).scan(Rng::new(42), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, (0..5).scan(Rng::new(43), |r, _| Some(r.next_u64())).collect::<Vec<_>>());
        let mut r = Rng::new(7);
        assert!((0..1000).all(|_| r.below(3) < 3));
    }

    fn obj(name: &str, uid: &str, expect: &str) -> Value {
        let mut o = json!({
            "apiVersion": "steward.dev/v1alpha1", "kind": "Container",
            "metadata": {"name": name, "namespace": "default", "uid": uid, "generation": 1,
                         "labels": {LABEL_EXPECT: expect}},
            "spec": {"image": "busybox", "command": ["sleep", "3600"], "env": [{"name": "GEN", "value": "1"}]},
            "status": {"observedGeneration": 1, "phase": "Running", "pid": 10, "containerID": format!("containerd://{name}-c")}
        });
        let mut c: steward_schema::Container = serde_json::from_value(o.clone()).expect("parse");
        c.apply_defaults();
        o["spec"] = serde_json::to_value(&c.spec).expect("spec");
        o
    }

    fn container(obj: &Value) -> CtrContainer {
        let name = str_at(obj, "/metadata/name");
        let labels = [
            (LABEL_UID, str_at(obj, "/metadata/uid").to_string()),
            (LABEL_NAME, name.to_string()),
            (LABEL_NAMESPACE, "default".to_string()),
            (LABEL_MANAGED_BY, "steward".to_string()),
            (LABEL_SPEC_HASH, expected_spec_hash(obj).expect("hash")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        CtrContainer { id: format!("{name}-c"), labels }
    }

    fn converged() -> Observed {
        let o = obj("a", "u1", "running");
        let c = container(&o);
        Observed {
            tasks: [(c.id.clone(), CtrTask { pid: 10, status: "RUNNING".into() })].into(),
            active_snapshots: [c.id.clone()].into(),
            log_files: vec![format!("{}.log", c.id)],
            network_ids: [(c.id.clone(), "attachment record".to_string())].into(),
            containers: vec![c],
            objects: vec![o],
        }
    }

    #[test]
    fn a_converged_observation_passes() {
        let want = [("a".to_string(), Want::Present(1)), ("gone".to_string(), Want::Absent)].into();
        assert_eq!(check(&converged(), &want), Vec::<String>::new());
    }

    #[test]
    fn every_kind_of_divergence_is_named() {
        let none = BTreeMap::new();
        type Tamper = Box<dyn Fn(&mut Observed)>;
        let cases: Vec<(&str, Tamper)> = vec![
            ("pid", Box::new(|s| s.tasks.get_mut("a-c").expect("task").pid = 11)),
            ("should run", Box::new(|s| s.tasks.get_mut("a-c").expect("task").status = "STOPPED".into())),
            ("spec hash", Box::new(|s| s.objects[0]["spec"]["env"][0]["value"] = json!("2"))),
            ("observedGeneration", Box::new(|s| s.objects[0]["metadata"]["generation"] = json!(2))),
            ("containerID", Box::new(|s| s.objects[0]["status"]["containerID"] = json!("containerd://x"))),
            ("2 containerd containers", Box::new(|s| {
                let mut c = s.containers[0].clone();
                c.id = "a-d".into();
                s.containers.push(c);
            })),
            ("leftover container", Box::new(|s| s.objects.clear())),
            ("no container: orphaned", Box::new(|s| {
                s.tasks.insert("zz".into(), CtrTask { pid: 5, status: "RUNNING".into() });
            })),
            ("leftover active snapshot", Box::new(|s| {
                s.active_snapshots.insert("extract-1".into());
            })),
            ("no active snapshot", Box::new(|s| s.active_snapshots.clear())),
            ("leftover log file", Box::new(|s| s.log_files.push("default.gone.123.log".into()))),
            ("leaked network attachment", Box::new(|s| {
                s.network_ids.insert("default.gone.123".into(), "IPAM lease bridge/10.88.0.9".into());
            })),
            ("deletionTimestamp", Box::new(|s| s.objects[0]["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z"))),
        ];
        for (want, tamper) in cases {
            let mut s = converged();
            tamper(&mut s);
            let p = check(&s, &none);
            assert!(p.iter().any(|m| m.contains(want)), "{want}: not reported in {p:#?}");
        }
        let s = converged();
        let acked = [("a".to_string(), Want::Present(2)), ("b".to_string(), Want::Present(1)), ("a2".to_string(), Want::Unknown)].into();
        let p = check(&s, &acked);
        assert!(p.iter().any(|m| m.contains("acknowledged GEN=2")), "{p:#?}");
        assert!(p.iter().any(|m| m.contains("b: acknowledged (GEN=1) but missing")), "{p:#?}");
        assert_eq!(p.len(), 2, "{p:#?}");
        let gone = [("a".to_string(), Want::Absent)].into();
        assert!(check(&s, &gone).iter().any(|m| m.contains("acknowledged delete")));
    }

    #[test]
    fn a_finished_container_must_stay_finished() {
        let mut o = obj("f", "u2", "succeeded");
        o["status"] = json!({"observedGeneration": 1, "phase": "Succeeded", "containerID": "containerd://f-c"});
        let c = container(&o);
        let mut s = Observed {
            tasks: [(c.id.clone(), CtrTask { pid: 12, status: "STOPPED".into() })].into(),
            active_snapshots: [c.id.clone()].into(),
            log_files: vec![],
            network_ids: BTreeMap::new(),
            containers: vec![c],
            objects: vec![o],
        };
        assert_eq!(check(&s, &BTreeMap::new()), Vec::<String>::new());
        s.tasks.get_mut("f-c").expect("task").status = "RUNNING".into();
        assert!(check(&s, &BTreeMap::new()).iter().any(|m| m.contains("finished, but its task is RUNNING")));
    }
}
