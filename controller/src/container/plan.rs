//! The Container reconciler's brain: a pure function of (desired object,
//! actual containers, now) to the one step to take and the status to
//! report, as the kubelet's `computePodActions`. No I/O here; the table of
//! cases in the tests is the specification.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use steward_schema::quantity::Quantity;
use steward_schema::validate::is_runtime_id;
use steward_schema::{
    Condition, Container, ContainerSpec, ContainerState, ContainerStatus, MountType, Phase,
    RestartPolicy, RuntimeHandlerStatus, StateRunning, StateTerminated, StateWaiting, Time,
};

use super::probes::{Outcome, ProbeView};
use crate::actual::{
    ActualContainer, TaskStatus, LABEL_LIMITS, LABEL_RUNTIME_DEFINITION, LABEL_RUNTIME_HANDLER,
    LABEL_RUNTIME_WRAPPER, LABEL_SPEC_HASH, LABEL_SPEC_HASH_VERSION, LABEL_STOP_GRACE,
    LABEL_STOP_REQUESTED, LABEL_STOP_SIGNAL,
};

/// The kubelet's restart backoff: 10 s doubling to 5 min...
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// ...reset once a container ran this long.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

pub const REASON_CREATING: &str = "ContainerCreating";
pub const REASON_PULLING: &str = "ImagePulling";
pub const REASON_ERR_PULL: &str = "ErrImagePull";
/// `spec.image` is not a valid image reference (the kubelet's name).
pub const REASON_INVALID_IMAGE_NAME: &str = "InvalidImageName";
pub const REASON_PULL_BACKOFF: &str = "ImagePullBackOff";
pub const REASON_CRASH_LOOP: &str = "CrashLoopBackOff";
pub const REASON_CREATE_ERROR: &str = "CreateContainerError";
/// A published host port is another container's (or process's).
pub const REASON_PORT_CONFLICT: &str = "PortConflict";
/// The kubelet's word for a container whose state cannot be known: a task
/// that vanished without an observed exit, or one containerd cannot report.
pub const REASON_STATUS_UNKNOWN: &str = "ContainerStatusUnknown";
pub const REASON_PAUSED: &str = "Paused";
pub const REASON_OOM_KILLED: &str = "OOMKilled";
/// A condition (as the kubelet's pod condition) saying new limits could not
/// be applied in place; it goes once they are.
pub const CONDITION_RESIZE_PENDING: &str = "ResizePending";
/// The exit code reported for an exit that was not observed (the kubelet's).
pub const UNKNOWN_EXIT_CODE: i32 = 137;
/// How often a paused or unknown task is looked at again (a safety net: a
/// resume is an event, an unknown state may end without one).
pub const RECHECK: Duration = Duration::from_secs(10);

/// One idempotent step toward the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// In sync, or waiting (a backoff, a grace period): check again after
    /// `requeue`, or on the next event.
    Nothing { requeue: Option<Duration> },
    /// Make the image present, then create the container.
    Create { id: String },
    /// Create and start the task.
    Start { id: String },
    /// Send the stop signal and record when; look again after `grace`.
    Stop { id: String, signal: u32, grace: Duration },
    /// The grace period is over: SIGKILL every process.
    Kill { id: String },
    /// Release a finished container's network (address, published ports,
    /// name): it runs no more, and its ports may be someone else's now.
    Detach { id: String },
    /// Send the stop signal to a container that stays wanted (a failed
    /// liveness probe: it restarts per policy); look again after `grace`.
    /// When it was sent is in the `Unhealthy` condition.
    Signal { id: String, signal: u32, grace: Duration },
    /// Delete a stopped task (its exit is in status already).
    DeleteTask { id: String },
    /// Delete container and snapshot (no task left).
    Remove { id: String },
    /// Set these labels on the container (an empty value removes one).
    Relabel { id: String, labels: BTreeMap<String, String> },
    /// Apply the spec's resource limits in place (running task and stored
    /// OCI spec) and record them in its labels.
    Resize { id: String },
    /// Prepare the container's removed rootfs snapshot again from `image`
    /// (pinned to the digest it was made from), without a pull policy's
    /// status: the image is used if present, pulled by digest if not.
    RepairRootfs { id: String, image: String },
}

/// `image` pinned to `digest` (`repo:tag@sha256:...`), when known.
pub fn pinned_image(image: &str, digest: Option<&str>) -> String {
    match digest {
        Some(d) if d.starts_with("sha256:") => {
            let base = image.split_once('@').map(|(b, _)| b).unwrap_or(image);
            format!("{base}@{d}")
        }
        _ => image.to_string(),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub step: Step,
    /// Status to write (if it differs) before the step is taken.
    pub status: ContainerStatus,
}

/// A stable 64-bit FNV-1a hash, hex: the same spec gives the same hash on
/// every build and machine (std's hasher promises neither).
pub fn fnv_hex(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The version of [`spec_hash`], recorded on every container in
/// [`LABEL_SPEC_HASH_VERSION`]. Bump it only with a new `spec_shape`, and
/// keep the previous function to adopt what it labelled.
pub const SPEC_HASH_VERSION: &str = "2";

/// What a container is made from, as an explicit, versioned value: only the
/// fields that shape its OCI spec or rootfs, each in a fixed encoding, so a
/// new optional field, a serde attribute or a new default elsewhere in the
/// spec does not change it. Left out on purpose: `restartPolicy`,
/// `terminationGracePeriodSeconds` and `stopSignal` (read when needed, the
/// latter two recorded as labels), `imagePullPolicy` (how to fetch, not
/// what), `resources.limits` (changed in place, see [`limits_label`]).
fn spec_shape(spec: &ContainerSpec) -> serde_json::Value {
    let mounts: Vec<serde_json::Value> = spec
        .mounts
        .iter()
        .map(|m| {
            let kind = match m.mount_type {
                MountType::Bind => "bind",
                MountType::Tmpfs => "tmpfs",
            };
            serde_json::json!([kind, m.source, m.target, m.read_only, m.size_limit.as_ref().map(canonical_quantity)])
        })
        .collect();
    // Unset means `none` here: only objects stored before networks were
    // defaulted lack it, and they ran without one.
    let network = spec
        .network
        .as_deref()
        .unwrap_or(steward_schema::NETWORK_NONE);
    let mut shape = serde_json::json!([
        format!("steward.dev/spec-shape/v{SPEC_HASH_VERSION}"),
        spec.image,
        spec.command,
        spec.args,
        spec.env.iter().map(|e| [e.name.as_str(), e.value.as_str()]).collect::<Vec<_>>(),
        spec.working_dir,
        spec.user,
        mounts,
        network,
    ]);
    // Appended only when set, so the hashes of specs without it (every
    // container made before it existed) stay what they were.
    if let (Some(rc), Some(a)) = (&spec.runtime_class_name, shape.as_array_mut()) {
        a.push(serde_json::json!(["runtimeClassName", rc]));
    }
    if let (false, Some(a)) = (spec.ports.is_empty(), shape.as_array_mut()) {
        let ports: Vec<serde_json::Value> = spec
            .ports
            .iter()
            .map(|p| {
                serde_json::json!([
                    p.name,
                    p.container_port,
                    p.host_port,
                    p.protocol.map(|p| p.as_str()).unwrap_or("TCP"),
                    p.host_ip
                ])
            })
            .collect();
        a.push(serde_json::json!(["ports", ports]));
    }
    shape
}

/// `64Mi` and `67108864` are the same quantity.
fn canonical_quantity(q: &Quantity) -> String {
    match q.value() {
        Ok(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Ok(v) => format!("{v}"),
        Err(_) => q.0.clone(),
    }
}

/// The hash of what shapes the container (version [`SPEC_HASH_VERSION`]):
/// when it changes, the container is replaced.
pub fn spec_hash(spec: &ContainerSpec) -> String {
    fnv_hex(spec_shape(spec).to_string().as_bytes())
}

/// The hash steward wrote before hashes were versioned (every field of the
/// spec as serde serialised it). Kept only to adopt containers labelled
/// with it (no [`LABEL_SPEC_HASH_VERSION`]) without restarting them.
pub fn legacy_spec_hash(spec: &ContainerSpec) -> String {
    fnv_hex(&serde_json::to_vec(spec).unwrap_or_default())
}

/// The resource limits a container runs with, canonical, as recorded in
/// [`LABEL_LIMITS`]; a change is applied in place (Tasks.Update).
pub fn limits_label(spec: &ContainerSpec) -> String {
    let l = spec.resources.as_ref().and_then(|r| r.limits.as_ref());
    let memory = l.and_then(|l| l.memory.as_ref()).map(canonical_quantity).unwrap_or_default();
    let cpu = l.and_then(|l| l.cpu.as_ref()).map(canonical_quantity).unwrap_or_default();
    let pids = l.and_then(|l| l.pids).map(|p| p.to_string()).unwrap_or_default();
    format!("memory={memory},cpu={cpu},pids={pids}")
}

/// Whether container `c` was made from `spec` (by this version's hash, or
/// the legacy one for a container without a hash version label).
pub fn made_from(c: &ActualContainer, spec: &ContainerSpec) -> bool {
    match c.labels.get(LABEL_SPEC_HASH_VERSION) {
        Some(v) if v == SPEC_HASH_VERSION => c.label(LABEL_SPEC_HASH) == spec_hash(spec),
        // Another (newer) version's hash: not ours to interpret.
        Some(_) => false,
        None => c.label(LABEL_SPEC_HASH) == legacy_spec_hash(spec),
    }
}

/// The labels recording how a container of `spec` is made and stopped.
pub fn spec_labels(spec: &ContainerSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SPEC_HASH.to_string(), spec_hash(spec)),
        (LABEL_SPEC_HASH_VERSION.to_string(), SPEC_HASH_VERSION.to_string()),
        (LABEL_STOP_SIGNAL.to_string(), spec_signal(spec).to_string()),
        (LABEL_STOP_GRACE.to_string(), spec_grace(spec).as_secs().to_string()),
        (LABEL_LIMITS.to_string(), limits_label(spec)),
    ])
}

/// The stop signal and grace period of a spec that sets neither.
pub const DEFAULT_STOP_SIGNAL: u32 = 15;
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

fn spec_signal(spec: &ContainerSpec) -> u32 {
    spec.stop_signal.as_deref().map_or(DEFAULT_STOP_SIGNAL, signal_number)
}

fn spec_grace(spec: &ContainerSpec) -> Duration {
    spec.termination_grace_period_seconds.map_or(DEFAULT_STOP_GRACE, |s| Duration::from_secs(s.max(0) as u64))
}

/// The stop signal ([`LABEL_STOP_SIGNAL`], a number) and grace period
/// ([`LABEL_STOP_GRACE`], seconds) recorded on container `c` at create,
/// each if present and readable. The one reader of these labels.
pub fn recorded_stop(c: &ActualContainer) -> (Option<u32>, Option<Duration>) {
    let signal = c.labels.get(LABEL_STOP_SIGNAL).and_then(|s| s.parse().ok());
    let grace = c.labels.get(LABEL_STOP_GRACE).and_then(|s| s.parse().ok()).map(Duration::from_secs);
    (signal, grace)
}

/// How to stop container `c`: with the signal and grace recorded on it at
/// create (its own, even when the spec has moved on), else `spec`'s, else
/// (no object any more: garbage) the defaults.
pub fn stop_params(c: &ActualContainer, spec: Option<&ContainerSpec>) -> (u32, Duration) {
    let (signal, grace) = recorded_stop(c);
    (
        signal.unwrap_or_else(|| spec.map_or(DEFAULT_STOP_SIGNAL, spec_signal)),
        grace.unwrap_or_else(|| spec.map_or(DEFAULT_STOP_GRACE, spec_grace)),
    )
}

/// The containerd id of the container for (object, spec hash):
/// deterministic, so a crash at any point leaves nothing unfindable, and
/// readable (`ns.name.tag`) when containerd's identifier rule allows it;
/// a long name or one with `--` gets `steward.<hash>` (the labels still
/// say whose it is).
pub fn container_id(obj: &Container, hash: &str) -> String {
    let m = &obj.metadata;
    let tag = fnv_hex(format!("{}/{hash}", m.uid).as_bytes());
    let readable = format!("{}.{}.{}", m.namespace, m.name, &tag[..12]);
    if is_runtime_id(&readable) {
        readable
    } else {
        format!("steward.{tag}")
    }
}

pub fn signal_number(name: &str) -> u32 {
    let n = name.trim_start_matches("SIG");
    match n {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "CONT" => 18,
        "STOP" => 19,
        "WINCH" => 28,
        "PWR" => 30,
        _ => n.parse().unwrap_or(15),
    }
}

fn since(t: &Time, now: &Time) -> Duration {
    (now.0 - t.0).to_std().unwrap_or_default()
}

fn add(t: &Time, d: Duration) -> Time {
    Time(t.0 + chrono::Duration::from_std(d).unwrap_or_default())
}

/// The restart delay after `recent` restarts without a long run: none for
/// the first, then 10 s doubling to 5 min.
pub fn restart_delay(recent: i32) -> Duration {
    if recent <= 0 {
        return Duration::ZERO;
    }
    let exp = (recent - 1).min(10) as u32;
    (BACKOFF_BASE * 2u32.pow(exp)).min(BACKOFF_MAX)
}

/// Tears one container down a step at a time: signal, grace, SIGKILL,
/// delete task, remove.
pub fn teardown(c: &ActualContainer, signal: u32, grace: Duration, now: &Time) -> Step {
    let id = c.id.clone();
    match &c.task {
        None => Step::Remove { id },
        Some(t) if t.status == TaskStatus::Stopped => Step::DeleteTask { id },
        // Never started: nothing to be graceful with.
        Some(t) if t.status == TaskStatus::Created => Step::Kill { id },
        Some(_) => {
            let requested = c
                .labels
                .get(LABEL_STOP_REQUESTED)
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| Time(t.with_timezone(&Utc)));
            match requested {
                None => Step::Stop { id, signal, grace },
                Some(at) if since(&at, now) >= grace => Step::Kill { id },
                Some(at) => Step::Nothing { requeue: Some(grace - since(&at, now)) },
            }
        }
    }
}

fn waiting(reason: &str, message: String) -> ContainerState {
    ContainerState { waiting: Some(StateWaiting { reason: reason.into(), message }), ..Default::default() }
}

fn waiting_reason(s: &ContainerStatus) -> &str {
    s.state.as_ref().and_then(|st| st.waiting.as_ref()).map(|w| w.reason.as_str()).unwrap_or_default()
}

fn last_finished(s: &ContainerStatus) -> Option<Time> {
    s.last_state.as_ref().and_then(|st| st.terminated.as_ref()).and_then(|t| t.finished_at)
}

/// Sets the Ready condition, moving lastTransitionTime only on a change.
fn set_ready(s: &mut ContainerStatus, ready: bool, reason: &str, now: &Time) {
    set_ready_because(s, ready, reason, "", now)
}

/// [`set_ready`] with a message.
fn set_ready_because(s: &mut ContainerStatus, ready: bool, reason: &str, message: &str, now: &Time) {
    let value = if ready { "True" } else { "False" };
    let prev = s.conditions.iter().find(|c| c.type_ == "Ready").cloned();
    let transition = match &prev {
        Some(p) if p.status == value => p.last_transition_time,
        _ => Some(*now),
    };
    s.conditions.retain(|c| c.type_ != "Ready");
    s.conditions.push(Condition {
        type_: "Ready".into(),
        status: value.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: transition,
    });
}

/// The labels of `current` to change (an empty value removes one): adopt a
/// legacy container into this hash version, follow in-place changes of
/// stop signal and grace, and forget a stop request once the container is
/// wanted again (before its task starts).
fn relabel(c: &ActualContainer, spec: &ContainerSpec) -> BTreeMap<String, String> {
    let mut want = spec_labels(spec);
    if c.labels.contains_key(LABEL_SPEC_HASH_VERSION) {
        // Limits change through Resize, which records them when applied.
        want.remove(LABEL_LIMITS);
    }
    // A legacy container was made from exactly this spec (its hash covered
    // the limits too), so all of `want` is true of it.
    let mut diff: BTreeMap<String, String> = want.into_iter().filter(|(k, v)| c.labels.get(k) != Some(v)).collect();
    if c.labels.contains_key(LABEL_STOP_REQUESTED) {
        diff.insert(LABEL_STOP_REQUESTED.into(), String::new());
    }
    diff
}

/// The exit a terminated state describes, for status.
fn terminated_state(exit_code: i32, oom_killed: bool, started_at: Option<Time>, finished: Time) -> StateTerminated {
    let reason = if oom_killed {
        REASON_OOM_KILLED
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    StateTerminated {
        exit_code,
        // 128+N is how a shell and runc report death by signal N.
        signal: (129..=128 + 64).contains(&exit_code).then_some(exit_code - 128),
        reason: reason.into(),
        message: String::new(),
        started_at,
        finished_at: Some(finished),
    }
}

fn restarts(policy: RestartPolicy, exit_code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

/// The status of a container that stays terminated.
fn terminal(status: &mut ContainerStatus, t: StateTerminated, now: &Time) {
    status.pid = None;
    status.phase = Some(if t.exit_code == 0 { Phase::Succeeded } else { Phase::Failed });
    set_ready(status, false, &t.reason.clone(), now);
    status.state = Some(ContainerState { terminated: Some(t), ..Default::default() });
}

/// A restart after exit `t` (recorded in lastState): wait out the backoff
/// (counted from `t.finished_at`, so the same status gives the same answer
/// after a steward restart), then count it and take `step`.
fn restart_after(status: &mut ContainerStatus, prior: &ContainerStatus, t: StateTerminated, step: Step, now: &Time) -> Step {
    let finished = t.finished_at.unwrap_or(*now);
    let exit_code = t.exit_code;
    status.pid = None;
    status.phase = Some(Phase::Running);
    set_ready(status, false, REASON_CRASH_LOOP, now);
    let ran = t.started_at.map(|s| since(&s, &finished)).unwrap_or_default();
    // A run of 10 minutes forgives the crashes before it.
    let recent = if ran >= BACKOFF_RESET { 0 } else { prior.recent_restarts };
    let delay = restart_delay(recent);
    let due = add(&finished, delay);
    status.last_state = Some(ContainerState { terminated: Some(t), ..Default::default() });
    if now.0 < due.0 {
        status.state = Some(waiting(
            REASON_CRASH_LOOP,
            format!("back-off {}s restarting failed container (exit code {exit_code})", delay.as_secs()),
        ));
        return Step::Nothing { requeue: Some(since(now, &due)) };
    }
    status.restart_count = prior.restart_count + 1;
    status.recent_restarts = recent + 1;
    status.state = Some(waiting(REASON_CREATING, "restarting".into()));
    step
}

/// Set while containerd reports a task it cannot describe; its transition
/// time is when that began.
pub const CONDITION_TASK_UNKNOWN: &str = "TaskStatusUnknown";
/// How long a task may stay unknown before it is deleted and restarted per
/// policy.
pub const UNKNOWN_GRACE: Duration = Duration::from_secs(30);
/// As [`UNKNOWN_GRACE`], for a task never seen running.
pub const UNKNOWN_GRACE_NEVER_RAN: Duration = Duration::from_secs(3);
/// How the unknown condition's message says the task never ran.
const NEVER_RAN: &str = " (never seen running)";

/// What a container that has finished for good still needs: its network
/// released (the kubelet frees a terminated pod's host ports), else
/// nothing.
fn finished_step(current: &ActualContainer) -> Step {
    if current.ip.is_some() {
        Step::Detach { id: current.id.clone() }
    } else {
        Step::Nothing { requeue: None }
    }
}

/// Set while a run is being stopped after a failed liveness (or startup)
/// probe: its message is the probe's failure and the pid stopped
/// (`... [pid N]`), its transition time when the stop signal went.
pub const CONDITION_UNHEALTHY: &str = "Unhealthy";

/// The probe failure `cond` records for the run of `pid`, if it is that
/// run's.
fn unhealthy_for(cond: Option<&Condition>, pid: Option<u32>) -> Option<(String, Time)> {
    let c = cond?;
    let pid = pid.filter(|p| *p != 0)?;
    let message = c.message.strip_suffix(&format!(" [pid {pid}]"))?;
    Some((message.to_string(), c.last_transition_time?))
}

/// Plans the next step for a live (not deleting) object, without probe
/// outcomes (a container without probes).
pub fn plan(obj: &Container, actual: &[ActualContainer], now: &Time) -> Plan {
    plan_with(obj, actual, &ProbeView::default(), now)
}

/// Plans the next step for a live (not deleting) object, given the
/// outcomes of its current run's probes.
pub fn plan_with(obj: &Container, actual: &[ActualContainer], probes: &ProbeView, now: &Time) -> Plan {
    let spec = &obj.spec;
    let prior = obj.status.clone().unwrap_or_default();
    let mut status = prior.clone();
    status.observed_generation = Some(obj.metadata.generation);
    // Set again below while the task stays unknown, or while a stop after
    // a failed probe is under way.
    status.conditions.retain(|c| c.type_ != CONDITION_TASK_UNKNOWN && c.type_ != CONDITION_UNHEALTHY);
    let policy = spec.restart_policy.unwrap_or(RestartPolicy::Always);
    let current = actual.iter().find(|c| made_from(c, spec));

    // Containers of another spec go first (a spec change = stop, remove,
    // create; a container is never rebuilt in place), each stopped with
    // its own signal and grace.
    if let Some(old) = actual
        .iter()
        .find(|c| Some(c.id.as_str()) != current.map(|c| c.id.as_str()))
    {
        status.phase = Some(Phase::Pending);
        status.state = Some(waiting(
            REASON_CREATING,
            format!("replacing container {} after a spec change", old.id),
        ));
        status.pid = None;
        status.ip = None;
        status.ips = Vec::new();
        set_ready(&mut status, false, REASON_CREATING, now);
        let (signal, grace) = stop_params(old, Some(spec));
        return Plan {
            step: teardown(old, signal, grace, now),
            status,
        };
    }

    let Some(current) = current else {
        // Nothing yet: create. Keep a pull/create error on display while
        // retrying, so a user sees why it is not running.
        if !matches!(
            waiting_reason(&prior),
            REASON_ERR_PULL
                | REASON_PULL_BACKOFF
                | REASON_CREATE_ERROR
                | REASON_PULLING
                | REASON_INVALID_IMAGE_NAME
        ) {
            status.state = Some(waiting(REASON_CREATING, String::new()));
        }
        status.phase = Some(Phase::Pending);
        status.container_id = None;
        status.runtime_handler = None;
        status.pid = None;
        status.ip = None;
        status.ips = Vec::new();
        // A new container (first, or for a new spec) starts its backoff
        // afresh, as the kubelet's is keyed by the container's spec.
        status.recent_restarts = 0;
        set_ready(&mut status, false, REASON_CREATING, now);
        return Plan { step: Step::Create { id: container_id(obj, &spec_hash(spec)) }, status };
    };
    let id = current.id.clone();

    let container_ref = format!("containerd://{id}");
    let same_container = prior.container_id.as_deref() == Some(container_ref.as_str());
    status.container_id = Some(container_ref);
    status.ip = current.ip.clone();
    status.ips = current.ip.iter().cloned().collect();
    let handler = current.label(LABEL_RUNTIME_HANDLER);
    status.runtime_handler = (!handler.is_empty()).then(|| RuntimeHandlerStatus {
        name: handler.to_string(),
        definition: current.label(LABEL_RUNTIME_DEFINITION).to_string(),
        wrapper: Some(current.label(LABEL_RUNTIME_WRAPPER).to_string()).filter(|w| !w.is_empty()),
    });
    if current.image_digest.is_some() {
        status.image_digest = current.image_digest.clone();
    }
    if current.rootfs_missing {
        // Its rootfs snapshot was removed behind steward's back. A task
        // running on it keeps its mount and is left alone (killing it would
        // end a Never job, or count a crash that did not happen); the
        // snapshot is prepared again, from the very image the container was
        // made from, for its next start. Status stays as it is.
        let image = pinned_image(&spec.image, current.image_digest.as_deref());
        return Plan { step: Step::RepairRootfs { id, image }, status };
    }
    let labels = relabel(current, spec);
    if !labels.is_empty() {
        return Plan { step: Step::Relabel { id, labels }, status };
    }
    if current.label(LABEL_LIMITS) != limits_label(spec) {
        return Plan { step: Step::Resize { id }, status };
    }
    status.conditions.retain(|c| c.type_ != CONDITION_RESIZE_PENDING);

    let task = match &current.task {
        None => None,
        Some(t) if t.status == TaskStatus::Created => None,
        Some(t) => Some(t),
    };
    let Some(task) = task else {
        // What status last said of this container decides whether a task
        // that is not there was lost (host reboot, dead shim, deleted
        // behind our back) or never started.
        let prior_state = prior.state.clone().unwrap_or_default();
        let lost_exit = if current.task.is_some() {
            None
        } else if let Some(t) = prior_state.terminated.clone() {
            // It had finished: the exit is known.
            Some(t)
        } else if let (REASON_CRASH_LOOP, Some(t)) =
            (waiting_reason(&prior), prior.last_state.as_ref().and_then(|s| s.terminated.clone()))
        {
            // Lost while backing off: the exit is known, the backoff goes on.
            Some(t)
        } else if let (Some(r), true) = (prior_state.running.as_ref(), same_container) {
            // It was running and its exit was never observed.
            Some(StateTerminated {
                exit_code: UNKNOWN_EXIT_CODE,
                signal: None,
                reason: REASON_STATUS_UNKNOWN.into(),
                message: "the task could not be found (host reboot, shim died, or deleted outside steward): its exit was not observed".into(),
                started_at: r.started_at,
                finished_at: Some(*now),
            })
        } else {
            None
        };
        if let Some(t) = lost_exit {
            if !restarts(policy, t.exit_code) {
                terminal(&mut status, t, now);
                return Plan { step: finished_step(current), status };
            }
            let step = restart_after(&mut status, &prior, t, Step::Start { id }, now);
            return Plan { step, status };
        }
        if !matches!(
            waiting_reason(&prior),
            REASON_CREATE_ERROR | REASON_PORT_CONFLICT
        ) {
            status.state = Some(waiting(REASON_CREATING, String::new()));
        }
        if status.phase.is_none() || status.phase == Some(Phase::Succeeded) || status.phase == Some(Phase::Failed) {
            status.phase = Some(Phase::Pending);
        }
        status.pid = None;
        set_ready(&mut status, false, REASON_CREATING, now);
        return Plan { step: Step::Start { id }, status };
    };

    if task.status != TaskStatus::Stopped {
        // Running, paused or unknown: keep the start time we recorded for this pid.
        let started = prior
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .filter(|_| prior.pid == Some(task.pid))
            .and_then(|r| r.started_at)
            .unwrap_or(*now);
        let running = ContainerState { running: Some(StateRunning { started_at: Some(started) }), ..Default::default() };
        status.pid = Some(task.pid).filter(|p| *p != 0);
        match task.status {
            TaskStatus::Paused => {
                // The process exists but does not run (frozen): its state is
                // still `running` (as `docker ps` says "Up (Paused)"), but it
                // serves nothing, so it is not Ready. The resume comes as a
                // containerd event (`/tasks/resumed`); the recheck is a
                // safety net for a missed one.
                status.state = Some(running);
                status.phase = Some(Phase::Running);
                set_ready(&mut status, false, REASON_PAUSED, now);
                return Plan { step: Step::Nothing { requeue: Some(RECHECK) }, status };
            }
            TaskStatus::Unknown => {
                // containerd cannot say (a shim not answering, or one left
                // without its task by a containerd killed mid-create):
                // claim nothing (as the kubelet's ContainerStatusUnknown),
                // keep the phase, and look again. Still so after
                // UNKNOWN_GRACE: the task is deleted (refused while a live
                // process holds it) and its end taken as an unknown exit,
                // which the restart policy decides on.
                let known = prior.condition(CONDITION_TASK_UNKNOWN);
                let unknown_since = known.and_then(|c| c.last_transition_time).unwrap_or(*now);
                // A task never seen running (when it became unknown) is one
                // whose create was cut short, containerd killed meanwhile:
                // no process to wait for, so it goes after a short settle.
                let never_ran = match known {
                    Some(c) => c.message.ends_with(NEVER_RAN),
                    None => prior.pid.is_none(),
                };
                let grace = if never_ran { UNKNOWN_GRACE_NEVER_RAN } else { UNKNOWN_GRACE };
                if since(&unknown_since, now) >= grace {
                    let t = StateTerminated {
                        exit_code: UNKNOWN_EXIT_CODE,
                        signal: None,
                        reason: REASON_STATUS_UNKNOWN.into(),
                        message: format!(
                            "containerd could not describe the task for {}s (its shim is gone, hung or empty); the task was deleted",
                            UNKNOWN_GRACE.as_secs()
                        ),
                        started_at: prior.state.as_ref().and_then(|s| s.running.as_ref()).and_then(|r| r.started_at),
                        finished_at: Some(*now),
                    };
                    if !restarts(policy, t.exit_code) {
                        terminal(&mut status, t, now);
                        return Plan { step: Step::DeleteTask { id }, status };
                    }
                    let step = restart_after(&mut status, &prior, t, Step::DeleteTask { id }, now);
                    return Plan { step, status };
                }
                status.state = Some(waiting(REASON_STATUS_UNKNOWN, format!("containerd reports task {id} in an unknown state")));
                if status.phase.is_none() {
                    status.phase = Some(Phase::Pending);
                }
                set_ready(&mut status, false, REASON_STATUS_UNKNOWN, now);
                status.conditions.push(Condition {
                    type_: CONDITION_TASK_UNKNOWN.into(),
                    status: "True".into(),
                    reason: REASON_STATUS_UNKNOWN.into(),
                    message: format!("containerd cannot describe task {id}{}", if never_ran { NEVER_RAN } else { "" }),
                    last_transition_time: Some(unknown_since),
                });
                return Plan { step: Step::Nothing { requeue: Some(RECHECK.min(grace)) }, status };
            }
            _ => {
                status.state = Some(running);
                status.phase = Some(Phase::Running);
                // A failed liveness probe (or a startup probe that never
                // passed): stop this run with its own signal and grace,
                // then SIGKILL; its exit restarts it per policy. Recorded
                // in status first, so a steward restart carries on.
                let pending = unhealthy_for(prior.condition(CONDITION_UNHEALTHY), Some(task.pid));
                let failed = match (&probes.startup, &probes.liveness) {
                    (Outcome::Failure(m), _) if spec.startup_probe.is_some() => Some(m.clone()),
                    (_, Outcome::Failure(m)) => Some(m.clone()),
                    _ => None,
                };
                if let Some((message, since_at)) = pending.clone().or_else(|| failed.map(|m| (m, *now))) {
                    let reason = if message.starts_with("Startup") { "StartupProbeFailed" } else { "LivenessProbeFailed" };
                    set_ready_because(&mut status, false, reason, &message, now);
                    status.conditions.push(Condition {
                        type_: CONDITION_UNHEALTHY.into(),
                        status: "True".into(),
                        reason: reason.into(),
                        message: format!("{message} [pid {}]", task.pid),
                        last_transition_time: Some(since_at),
                    });
                    let (signal, grace) = stop_params(current, Some(spec));
                    let step = match pending {
                        None => Step::Signal { id, signal, grace },
                        Some(_) if since(&since_at, now) >= grace => Step::Kill { id },
                        Some(_) => Step::Nothing { requeue: Some(grace - since(&since_at, now)) },
                    };
                    return Plan { step, status };
                }
                let started = spec.startup_probe.is_none() || probes.startup == Outcome::Success;
                if !started {
                    set_ready_because(&mut status, false, "StartupProbePending", "the startup probe has not passed yet", now);
                } else if spec.readiness_probe.is_some() {
                    match &probes.readiness {
                        Outcome::Success => set_ready(&mut status, true, "Running", now),
                        Outcome::Failure(m) => set_ready_because(&mut status, false, "ReadinessProbeFailed", m, now),
                        Outcome::Unknown => set_ready_because(&mut status, false, "ReadinessProbePending", "the readiness probe has not passed yet", now),
                    }
                } else {
                    set_ready(&mut status, true, "Running", now);
                }
                return Plan { step: Step::Nothing { requeue: None }, status };
            }
        }
    }

    // The task exited.
    let exit_code = task.exit_code.unwrap_or(0) as i32;
    let finished = task.exited_at.unwrap_or(*now);
    let started_at = prior.state.as_ref().and_then(|s| s.running.as_ref()).and_then(|r| r.started_at).or_else(|| {
        // Already recorded (restart pending, or a previous pass).
        [prior.state.as_ref(), prior.last_state.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.terminated.as_ref())
            .find(|t| t.finished_at == Some(finished))
            .and_then(|t| t.started_at)
    });
    let mut terminated = terminated_state(exit_code, task.oom_killed, started_at, finished);
    // Stopped after a failed probe: say so.
    if let Some((message, _)) = unhealthy_for(prior.condition(CONDITION_UNHEALTHY), prior.pid) {
        terminated.message = message;
    }
    if !restarts(policy, exit_code) {
        terminal(&mut status, terminated, now);
        return Plan { step: finished_step(current), status };
    }
    let recorded = last_finished(&prior) == Some(finished);
    if recorded && waiting_reason(&prior) != REASON_CRASH_LOOP {
        // This exit was already counted as a restart; a crash came between
        // writing that and deleting the task. Finish the restart.
        status.pid = None;
        status.phase = Some(Phase::Running);
        set_ready(&mut status, false, REASON_CRASH_LOOP, now);
        return Plan { step: Step::DeleteTask { id }, status };
    }
    let step = restart_after(&mut status, &prior, terminated, Step::DeleteTask { id }, now);
    Plan { step, status }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::actual::{Task, LABEL_UID};

    fn obj(policy: RestartPolicy) -> Container {
        let mut c = Container::default();
        c.metadata.name = "web".into();
        c.metadata.namespace = "default".into();
        c.metadata.uid = "u-1".into();
        c.metadata.generation = 3;
        c.spec.image = "busybox".into();
        c.spec.restart_policy = Some(policy);
        c.apply_defaults();
        c
    }

    fn t(secs: i64) -> Time {
        Time(chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap())
    }

    /// The container the reconciler creates for `o` (labels as at create).
    fn actual(o: &Container, task: Option<Task>) -> ActualContainer {
        let mut labels = spec_labels(&o.spec);
        labels.insert(LABEL_UID.to_string(), o.metadata.uid.clone());
        ActualContainer {
            id: container_id(o, &spec_hash(&o.spec)),
            labels,
            task,
            image_digest: Some("sha256:abc".into()),
            created_at: None,
            rootfs_missing: false,
            ip: None,
        }
    }

    fn task(pid: u32, status: TaskStatus) -> Option<Task> {
        Some(Task { pid, status, exit_code: None, exited_at: None, oom_killed: false })
    }

    fn running(pid: u32) -> Option<Task> {
        task(pid, TaskStatus::Running)
    }

    fn exited(code: u32, at: i64) -> Option<Task> {
        Some(Task { pid: 0, status: TaskStatus::Stopped, exit_code: Some(code), exited_at: Some(t(at)), oom_killed: false })
    }

    fn reason(p: &Plan) -> &str {
        waiting_reason(&p.status)
    }

    #[test]
    fn missing_container_is_created() {
        let o = obj(RestartPolicy::Always);
        let p = plan(&o, &[], &t(0));
        assert_eq!(p.step, Step::Create { id: container_id(&o, &spec_hash(&o.spec)) });
        assert_eq!((p.status.phase, reason(&p)), (Some(Phase::Pending), REASON_CREATING));
        assert_eq!(p.status.observed_generation, Some(3));
    }

    #[test]
    fn ids_are_deterministic_and_change_with_spec_and_uid() {
        let a = obj(RestartPolicy::Always);
        let mut b = a.clone();
        assert_eq!(container_id(&a, &spec_hash(&a.spec)), container_id(&b, &spec_hash(&b.spec)));
        b.spec.args = vec!["x".into()];
        assert_ne!(spec_hash(&a.spec), spec_hash(&b.spec));
        let mut c = a.clone();
        c.metadata.uid = "u-2".into();
        assert_ne!(container_id(&a, "h"), container_id(&c, "h"));
        assert!(container_id(&a, "h").starts_with("default.web."));
        // Names containerd would refuse as part of an id get a hashed id.
        let mut long = a.clone();
        long.metadata.name = "n".repeat(63);
        let mut dashes = a.clone();
        dashes.metadata.name = "my--app".into();
        for o in [long, dashes] {
            let id = container_id(&o, "h");
            assert!(id.starts_with("steward.") && is_runtime_id(&id), "{id}");
        }
        assert!(is_runtime_id("default.web.0123456789ab"));
        assert!(!is_runtime_id("a..b") && !is_runtime_id("a--b") && !is_runtime_id(&"a".repeat(77)));
    }

    #[test]
    fn container_without_task_is_started_and_running_is_reported() {
        let o = obj(RestartPolicy::Always);
        let c = actual(&o, None);
        assert_eq!(plan(&o, std::slice::from_ref(&c), &t(0)).step, Step::Start { id: c.id.clone() });
        let p = plan(&o, &[actual(&o, running(42))], &t(5));
        assert_eq!(p.step, Step::Nothing { requeue: None });
        assert_eq!((p.status.phase, p.status.pid), (Some(Phase::Running), Some(42)));
        assert_eq!(p.status.condition("Ready").unwrap().status, "True");
        assert_eq!(p.status.container_id.as_deref(), Some(format!("containerd://{}", c.id).as_str()));
        // The start time survives later passes.
        let mut o2 = o.clone();
        o2.status = Some(p.status.clone());
        let p2 = plan(&o2, &[actual(&o, running(42))], &t(100));
        assert_eq!(p2.status, p.status, "a second pass changed status");
    }

    #[test]
    fn exit_with_each_restart_policy() {
        for (policy, code, restarts, phase) in [
            (RestartPolicy::OnFailure, 0, false, Phase::Succeeded),
            (RestartPolicy::Never, 0, false, Phase::Succeeded),
            (RestartPolicy::Never, 1, false, Phase::Failed),
            (RestartPolicy::OnFailure, 1, true, Phase::Running),
            (RestartPolicy::Always, 0, true, Phase::Running),
        ] {
            let o = obj(policy);
            let p = plan(&o, &[actual(&o, exited(code, 10))], &t(11));
            assert_eq!(p.status.phase, Some(phase), "{policy:?} exit {code}");
            if restarts {
                // First restart is immediate, and counted.
                assert!(matches!(p.step, Step::DeleteTask { .. }), "{policy:?} {code}: {:?}", p.step);
                assert_eq!(p.status.restart_count, 1);
                assert_eq!(p.status.last_state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, code as i32);
            } else {
                assert_eq!(p.step, Step::Nothing { requeue: None });
                assert_eq!(p.status.state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, code as i32);
            }
        }
    }

    #[test]
    fn crash_loop_backs_off_from_status_alone() {
        let mut o = obj(RestartPolicy::Always);
        // Restarted twice already; the last run lasted 2 s.
        o.status = Some(ContainerStatus {
            restart_count: 2,
            recent_restarts: 2,
            state: Some(ContainerState { running: Some(StateRunning { started_at: Some(t(8)) }), ..Default::default() }),
            pid: Some(7),
            ..Default::default()
        });
        let p = plan(&o, &[actual(&o, exited(1, 10))], &t(11));
        // Third restart waits 20 s after the exit.
        assert_eq!(p.step, Step::Nothing { requeue: Some(Duration::from_secs(19)) });
        assert_eq!(reason(&p), REASON_CRASH_LOOP);
        assert_eq!(p.status.restart_count, 2);
        // A steward restart later: the same status gives the same answer.
        let mut o2 = o.clone();
        o2.status = Some(p.status.clone());
        let p2 = plan(&o2, &[actual(&o, exited(1, 10))], &t(20));
        assert_eq!(p2.step, Step::Nothing { requeue: Some(Duration::from_secs(10)) });
        // Due: restart, counted once.
        let p3 = plan(&o2, &[actual(&o, exited(1, 10))], &t(30));
        assert!(matches!(p3.step, Step::DeleteTask { .. }));
        assert_eq!(p3.status.restart_count, 3);
        // A crash after writing that status but before the delete: no double count.
        let mut o3 = o.clone();
        o3.status = Some(p3.status.clone());
        let p4 = plan(&o3, &[actual(&o, exited(1, 10))], &t(31));
        assert!(matches!(p4.step, Step::DeleteTask { .. }));
        assert_eq!(p4.status.restart_count, 3);
    }

    #[test]
    fn backoff_doubles_caps_and_resets_after_ten_minutes() {
        let s = |n| restart_delay(n).as_secs();
        assert_eq!([s(0), s(1), s(2), s(3), s(6), s(9)], [0, 10, 20, 40, 300, 300]);
        // After a 10-minute run the count starts over: the restart is
        // immediate and the next crash waits 10 s, not 5 min.
        let mut o = obj(RestartPolicy::Always);
        o.status = Some(ContainerStatus {
            restart_count: 40,
            recent_restarts: 9,
            state: Some(ContainerState { running: Some(StateRunning { started_at: Some(t(0)) }), ..Default::default() }),
            pid: Some(7),
            ..Default::default()
        });
        let p = plan(&o, &[actual(&o, exited(1, 700))], &t(701));
        assert!(matches!(p.step, Step::DeleteTask { .. }), "{:?}", p.step);
        assert_eq!((p.status.restart_count, p.status.recent_restarts), (41, 1));
    }

    #[test]
    fn spec_change_tears_the_old_container_down_with_its_own_signal_and_grace() {
        let mut old = obj(RestartPolicy::Always);
        old.spec.termination_grace_period_seconds = Some(30);
        old.spec.stop_signal = Some("SIGINT".into());
        let mut new = old.clone();
        new.spec.args = vec!["changed".into()];
        // The new spec would stop differently; the old container keeps its own way.
        new.spec.termination_grace_period_seconds = Some(1);
        new.spec.stop_signal = Some("SIGUSR1".into());
        let mut c = actual(&old, running(9));
        let p = plan(&new, &[c.clone()], &t(0));
        assert_eq!(p.step, Step::Stop { id: c.id.clone(), signal: 2, grace: Duration::from_secs(30) });
        assert_eq!(reason(&p), REASON_CREATING);
        c.labels.insert(LABEL_STOP_REQUESTED.into(), "2027-01-15T08:00:00Z".into());
        let at = Time(chrono::DateTime::parse_from_rfc3339("2027-01-15T08:00:10Z").unwrap().with_timezone(&Utc));
        assert_eq!(plan(&new, &[c.clone()], &at).step, Step::Nothing { requeue: Some(Duration::from_secs(20)) });
        let late = Time(chrono::DateTime::parse_from_rfc3339("2027-01-15T08:00:31Z").unwrap().with_timezone(&Utc));
        assert_eq!(plan(&new, &[c.clone()], &late).step, Step::Kill { id: c.id.clone() });
        c.task = exited(137, 0);
        assert_eq!(plan(&new, &[c.clone()], &late).step, Step::DeleteTask { id: c.id.clone() });
        c.task = None;
        assert_eq!(plan(&new, &[c.clone()], &late).step, Step::Remove { id: c.id.clone() });
        // Old one gone: create the new one.
        assert!(matches!(plan(&new, &[], &late).step, Step::Create { .. }));
        // A container without the labels (made by an older steward) is
        // stopped the spec's way.
        let mut bare = actual(&old, running(9));
        bare.labels.retain(|k, _| k != LABEL_STOP_SIGNAL && k != LABEL_STOP_GRACE);
        assert_eq!(stop_params(&bare, Some(&new.spec)), (10, Duration::from_secs(1)));
        // No object any more (garbage): its own labels, else the defaults.
        assert_eq!(recorded_stop(&c), (Some(2), Some(Duration::from_secs(30))));
        assert_eq!(stop_params(&c, None), (2, Duration::from_secs(30)));
        assert_eq!(stop_params(&bare, None), (DEFAULT_STOP_SIGNAL, DEFAULT_STOP_GRACE));
        // A value it cannot read counts as not recorded.
        bare.labels.insert(LABEL_STOP_SIGNAL.into(), "SIGTERM".into());
        assert_eq!(recorded_stop(&bare), (None, None));
    }

    #[test]
    fn created_but_never_started_task_is_started() {
        let o = obj(RestartPolicy::Always);
        let c = actual(&o, task(5, TaskStatus::Created));
        assert_eq!(plan(&o, std::slice::from_ref(&c), &t(0)).step, Step::Start { id: c.id });
    }

    #[test]
    fn pull_errors_stay_visible_while_retrying() {
        let mut o = obj(RestartPolicy::Always);
        o.status = Some(ContainerStatus { state: Some(waiting(REASON_PULL_BACKOFF, "manifest unknown".into())), ..Default::default() });
        let p = plan(&o, &[], &t(0));
        assert!(matches!(p.step, Step::Create { .. }));
        assert_eq!(reason(&p), REASON_PULL_BACKOFF);
    }

    fn with_status(o: &Container, status: ContainerStatus) -> Container {
        let mut o = o.clone();
        o.status = Some(status);
        o
    }

    fn state_terminated(code: i32, reason: &str, at: i64) -> ContainerState {
        ContainerState {
            terminated: Some(StateTerminated {
                exit_code: code,
                reason: reason.into(),
                started_at: Some(t(at - 5)),
                finished_at: Some(t(at)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn was_running(o: &Container, pid: u32, since: i64) -> ContainerStatus {
        ContainerStatus {
            phase: Some(Phase::Running),
            container_id: Some(format!("containerd://{}", container_id(o, &spec_hash(&o.spec)))),
            pid: Some(pid),
            state: Some(ContainerState { running: Some(StateRunning { started_at: Some(t(since)) }), ..Default::default() }),
            ..Default::default()
        }
    }

    fn exec_probe() -> steward_schema::Probe {
        steward_schema::Probe { exec: Some(steward_schema::ExecAction { command: vec!["check".into()] }), ..Default::default() }
    }

    fn ready_of(p: &Plan) -> (String, String, String) {
        let c = p.status.condition("Ready").expect("Ready");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn readiness_and_startup_outcomes_decide_ready() {
        let mut o = obj(RestartPolicy::Always);
        o.spec.readiness_probe = Some(exec_probe());
        o.status = Some(was_running(&o, 42, 0));
        let a = actual(&o, running(42));
        let with = |view: ProbeView| plan_with(&o, std::slice::from_ref(&a), &view, &t(5));
        let p = with(ProbeView::default());
        assert_eq!(p.step, Step::Nothing { requeue: None });
        assert_eq!(ready_of(&p).0, "False");
        assert_eq!(ready_of(&p).1, "ReadinessProbePending");
        let p = with(ProbeView { readiness: Outcome::Success, ..Default::default() });
        assert_eq!(ready_of(&p), ("True".into(), "Running".into(), String::new()));
        let p = with(ProbeView { readiness: Outcome::Failure("Readiness probe failed: HTTP 503".into()), ..Default::default() });
        assert_eq!(ready_of(&p), ("False".into(), "ReadinessProbeFailed".into(), "Readiness probe failed: HTTP 503".into()));
        // Readiness never fails a container: it runs on.
        assert_eq!(p.step, Step::Nothing { requeue: None });
        // A startup probe that has not passed holds Ready, whatever readiness says.
        o.spec.startup_probe = Some(exec_probe());
        let p = plan_with(&o, std::slice::from_ref(&a), &ProbeView { readiness: Outcome::Success, ..Default::default() }, &t(5));
        assert_eq!(ready_of(&p).1, "StartupProbePending");
        // No probes: running is ready, as before.
        let mut plain = obj(RestartPolicy::Always);
        plain.status = Some(was_running(&plain, 42, 0));
        let p = plan(&plain, &[actual(&plain, running(42))], &t(5));
        assert_eq!(ready_of(&p).0, "True");
    }

    #[test]
    fn a_failed_liveness_probe_stops_then_kills_then_restarts_counted_with_the_reason() {
        let mut o = obj(RestartPolicy::Always);
        o.spec.liveness_probe = Some(exec_probe());
        o.spec.termination_grace_period_seconds = Some(5);
        o.status = Some(was_running(&o, 42, 0));
        let a = actual(&o, running(42));
        let failed = ProbeView { liveness: Outcome::Failure("Liveness probe failed: command [\"check\"] exited with 1".into()), ..Default::default() };
        // 1. The stop signal, recorded in the Unhealthy condition.
        let p = plan_with(&o, std::slice::from_ref(&a), &failed, &t(10));
        let Step::Signal { id, signal, grace } = &p.step else { panic!("{:?}", p.step) };
        assert_eq!((id.as_str(), *signal, *grace), (a.id.as_str(), 15, Duration::from_secs(5)));
        let cond = p.status.condition(CONDITION_UNHEALTHY).expect("Unhealthy").clone();
        assert_eq!(cond.message, "Liveness probe failed: command [\"check\"] exited with 1 [pid 42]");
        assert_eq!(cond.last_transition_time, Some(t(10)));
        assert_eq!(ready_of(&p).0, "False");
        // 2. Within the grace period: wait (even with the outcome lost to a
        //    steward restart); past it: SIGKILL.
        o.status = Some(p.status.clone());
        let p2 = plan_with(&o, std::slice::from_ref(&a), &ProbeView::default(), &t(12));
        assert_eq!(p2.step, Step::Nothing { requeue: Some(Duration::from_secs(3)) });
        assert!(p2.status.condition(CONDITION_UNHEALTHY).is_some());
        let p3 = plan_with(&o, std::slice::from_ref(&a), &ProbeView::default(), &t(15));
        assert_eq!(p3.step, Step::Kill { id: a.id.clone() });
        // 3. It exits: the exit names the probe, and the restart is counted.
        o.status = Some(p3.status.clone());
        let p4 = plan(&o, &[actual(&o, exited(137, 16))], &t(16));
        let last = last_terminated(&p4);
        assert_eq!((last.exit_code, last.message.as_str()), (137, "Liveness probe failed: command [\"check\"] exited with 1"));
        assert_eq!(p4.status.restart_count, 1);
        assert!(p4.status.condition(CONDITION_UNHEALTHY).is_none(), "consumed by the exit");
        // 4. The next run (another pid) is not touched by the old condition.
        let mut again = o.clone();
        let mut st = was_running(&o, 43, 20);
        st.conditions.push(cond);
        again.status = Some(st);
        let p5 = plan_with(&again, &[actual(&again, running(43))], &ProbeView::default(), &t(21));
        assert_eq!(p5.step, Step::Nothing { requeue: None });
        assert!(p5.status.condition(CONDITION_UNHEALTHY).is_none());
    }

    #[test]
    fn a_finished_container_releases_its_network() {
        let mut o = obj(RestartPolicy::Never);
        o.status = Some(was_running(&o, 42, 0));
        let mut a = actual(&o, exited(0, 5));
        a.ip = Some("10.88.0.7".into());
        let p = plan(&o, std::slice::from_ref(&a), &t(6));
        assert_eq!(p.status.phase, Some(Phase::Succeeded));
        assert_eq!(p.step, Step::Detach { id: a.id.clone() });
        // Once detached, nothing more to do.
        o.status = Some(p.status.clone());
        a.ip = None;
        assert_eq!(plan(&o, &[a], &t(7)).step, Step::Nothing { requeue: None });
    }

    #[test]
    fn a_startup_probe_that_fails_restarts_and_liveness_waits_for_it() {
        let mut o = obj(RestartPolicy::Always);
        o.spec.startup_probe = Some(exec_probe());
        o.spec.liveness_probe = Some(exec_probe());
        o.status = Some(was_running(&o, 42, 0));
        let a = actual(&o, running(42));
        let p = plan_with(&o, std::slice::from_ref(&a), &ProbeView { startup: Outcome::Failure("Startup probe failed: x".into()), ..Default::default() }, &t(3));
        assert!(matches!(p.step, Step::Signal { .. }), "{:?}", p.step);
        assert_eq!(p.status.condition(CONDITION_UNHEALTHY).map(|c| c.reason.as_str()), Some("StartupProbeFailed"));
    }

    fn last_terminated(p: &Plan) -> StateTerminated {
        p.status.last_state.as_ref().and_then(|s| s.terminated.clone()).expect("lastState.terminated")
    }

    /// A task that is gone (host reboot, dead shim, deleted behind our
    /// back) while the container is there: what status said decides.
    #[test]
    fn lost_task_follows_the_restart_policy() {
        // (policy, status before, expected step is a restart, phase after)
        for (policy, exit) in [(RestartPolicy::Never, 0), (RestartPolicy::Never, 1), (RestartPolicy::OnFailure, 0)] {
            // It had finished: it stays finished, nothing runs again.
            let o = obj(policy);
            let reason = if exit == 0 { "Completed" } else { "Error" };
            let phase = if exit == 0 { Phase::Succeeded } else { Phase::Failed };
            let status = ContainerStatus {
                phase: Some(phase),
                container_id: Some(format!("containerd://{}", container_id(&o, &spec_hash(&o.spec)))),
                state: Some(state_terminated(exit, reason, 10)),
                ..Default::default()
            };
            let o = with_status(&o, status.clone());
            let p = plan(&o, &[actual(&o, None)], &t(100));
            assert_eq!(p.step, Step::Nothing { requeue: None }, "{policy:?} exit {exit}");
            assert_eq!(p.status.phase, Some(phase), "{policy:?} exit {exit}");
            assert_eq!(p.status.state, status.state, "{policy:?} exit {exit}: the recorded exit changed");
            assert_eq!(p.status.restart_count, 0);
        }

        // It was running and the exit was not observed.
        let o = obj(RestartPolicy::Never);
        let o = with_status(&o, was_running(&o, 42, 0));
        let p = plan(&o, &[actual(&o, None)], &t(100));
        assert_eq!(p.step, Step::Nothing { requeue: None }, "Never must not run again");
        assert_eq!(p.status.phase, Some(Phase::Failed));
        let st = p.status.state.as_ref().and_then(|s| s.terminated.clone()).expect("terminated");
        assert_eq!((st.exit_code, st.reason.as_str()), (UNKNOWN_EXIT_CODE, REASON_STATUS_UNKNOWN));
        assert!(st.message.contains("not observed"), "{}", st.message);
        assert_eq!((p.status.pid, p.status.restart_count), (None, 0));
        // And a later pass keeps it so.
        let again = plan(&with_status(&o, p.status.clone()), &[actual(&o, None)], &t(200));
        assert_eq!((again.step, again.status), (Step::Nothing { requeue: None }, p.status.clone()));

        for policy in [RestartPolicy::Always, RestartPolicy::OnFailure] {
            let o = obj(policy);
            let o = with_status(&o, was_running(&o, 42, 0));
            let c = actual(&o, None);
            let p = plan(&o, std::slice::from_ref(&c), &t(100));
            // Restarted at once (first restart), and counted.
            assert_eq!(p.step, Step::Start { id: c.id.clone() }, "{policy:?}");
            assert_eq!((p.status.restart_count, p.status.recent_restarts), (1, 1), "{policy:?}");
            let last = last_terminated(&p);
            assert_eq!((last.exit_code, last.reason.as_str()), (UNKNOWN_EXIT_CODE, REASON_STATUS_UNKNOWN));
            assert_eq!(last.started_at, Some(t(0)));
            assert_eq!(p.status.phase, Some(Phase::Running));
            assert_eq!(p.status.condition("Ready").map(|c| c.status.as_str()), Some("False"));
            // The next pass (status written, task not yet started) does not count again.
            let p2 = plan(&with_status(&o, p.status.clone()), std::slice::from_ref(&c), &t(101));
            assert_eq!(p2.step, Step::Start { id: c.id.clone() });
            assert_eq!(p2.status.restart_count, 1);
        }
    }

    #[test]
    fn lost_task_restarts_back_off_and_count_once() {
        // Crashed twice recently; the task then vanished while running.
        let o = obj(RestartPolicy::Always);
        let mut s = was_running(&o, 42, 90);
        s.restart_count = 2;
        s.recent_restarts = 2;
        let o = with_status(&o, s);
        let c = actual(&o, None);
        let p = plan(&o, std::slice::from_ref(&c), &t(100));
        assert_eq!(p.step, Step::Nothing { requeue: Some(Duration::from_secs(20)) });
        assert_eq!((reason(&p), p.status.restart_count), (REASON_CRASH_LOOP, 2));
        assert_eq!(last_terminated(&p).reason, REASON_STATUS_UNKNOWN);
        // Later passes count the backoff from the same recorded exit.
        let o2 = with_status(&o, p.status.clone());
        assert_eq!(plan(&o2, std::slice::from_ref(&c), &t(110)).step, Step::Nothing { requeue: Some(Duration::from_secs(10)) });
        let due = plan(&o2, std::slice::from_ref(&c), &t(121));
        assert_eq!(due.step, Step::Start { id: c.id.clone() });
        assert_eq!((due.status.restart_count, due.status.recent_restarts), (3, 3));
        assert_eq!(last_terminated(&due).finished_at, Some(t(100)));

        // Lost while already backing off from an observed crash: the
        // backoff goes on, and the crash's exit stays in lastState.
        let backing_off = ContainerStatus {
            phase: Some(Phase::Running),
            container_id: Some(format!("containerd://{}", c.id)),
            restart_count: 1,
            recent_restarts: 1,
            state: Some(waiting(REASON_CRASH_LOOP, "back-off 10s".into())),
            last_state: Some(state_terminated(3, "Error", 5)),
            ..Default::default()
        };
        let o3 = with_status(&o, backing_off);
        let p = plan(&o3, std::slice::from_ref(&c), &t(8));
        assert_eq!((p.step.clone(), reason(&p)), (Step::Nothing { requeue: Some(Duration::from_secs(7)) }, REASON_CRASH_LOOP));
        assert_eq!((last_terminated(&p).exit_code, p.status.restart_count), (3, 1));
        let p = plan(&o3, std::slice::from_ref(&c), &t(15));
        assert_eq!(p.step, Step::Start { id: c.id.clone() });
        assert_eq!((p.status.restart_count, p.status.recent_restarts), (2, 2));
        assert_eq!(last_terminated(&p).exit_code, 3);
    }

    #[test]
    fn a_fresh_container_is_started_without_counting() {
        for prior in [
            ContainerStatus::default(),
            ContainerStatus { state: Some(waiting(REASON_CREATING, String::new())), ..Default::default() },
            ContainerStatus { state: Some(waiting(REASON_CREATE_ERROR, "bad".into())), ..Default::default() },
            // A restart in progress: the task was deleted on purpose.
            ContainerStatus { restart_count: 4, state: Some(waiting(REASON_CREATING, "restarting".into())), ..Default::default() },
        ] {
            let o = with_status(&obj(RestartPolicy::Never), prior.clone());
            let c = actual(&o, None);
            let p = plan(&o, std::slice::from_ref(&c), &t(0));
            assert_eq!(p.step, Step::Start { id: c.id.clone() }, "{prior:?}");
            assert_eq!(p.status.restart_count, prior.restart_count);
        }
        // Running status of ANOTHER container (replaced after a spec
        // change) says nothing about this one.
        let o = obj(RestartPolicy::Never);
        let mut s = was_running(&o, 42, 0);
        s.container_id = Some("containerd://default.web.000000000000".into());
        let o = with_status(&o, s);
        assert!(matches!(plan(&o, &[actual(&o, None)], &t(1)).step, Step::Start { .. }));
    }

    #[test]
    fn paused_and_unknown_tasks_are_not_ready() {
        let o = obj(RestartPolicy::Always);
        let o = with_status(&o, plan(&o, &[actual(&o, running(42))], &t(0)).status);
        assert_eq!(o.status.as_ref().unwrap().condition("Ready").unwrap().status, "True");
        // (task status, phase, state, Ready reason)
        for (ts, phase, state, ready_reason) in [
            (TaskStatus::Paused, Phase::Running, "running", REASON_PAUSED),
            (TaskStatus::Unknown, Phase::Running, "waiting", REASON_STATUS_UNKNOWN),
            (TaskStatus::Running, Phase::Running, "running", "Running"),
        ] {
            let p = plan(&o, &[actual(&o, task(42, ts))], &t(5));
            let ready = p.status.condition("Ready").unwrap();
            assert_eq!(ready.status == "True", ts == TaskStatus::Running, "{ts:?}");
            assert_eq!(ready.reason, ready_reason, "{ts:?}");
            assert_eq!(p.status.phase, Some(phase), "{ts:?}");
            let st = p.status.state.as_ref().unwrap();
            let got = if st.running.is_some() { "running" } else if st.waiting.is_some() { "waiting" } else { "terminated" };
            assert_eq!(got, state, "{ts:?}");
            if ts == TaskStatus::Running {
                assert_eq!(p.step, Step::Nothing { requeue: None });
            } else {
                // Looked at again (safety net for a missed resume event).
                assert_eq!(p.step, Step::Nothing { requeue: Some(RECHECK) }, "{ts:?}");
            }
            if ts == TaskStatus::Paused {
                // Still the same run: pid and start time kept.
                assert_eq!(p.status.pid, Some(42));
                assert_eq!(st.running.as_ref().unwrap().started_at, Some(t(0)));
            }
        }
        // Unknown before ever seen running: Pending, and deleted after a
        // short settle (a create cut short has no process to wait for).
        let fresh = obj(RestartPolicy::Always);
        let unknown = actual(&fresh, task(0, TaskStatus::Unknown));
        let p = plan(&fresh, std::slice::from_ref(&unknown), &t(0));
        assert_eq!((p.status.phase, reason(&p), p.status.pid), (Some(Phase::Pending), REASON_STATUS_UNKNOWN, None));
        assert_eq!(p.step, Step::Nothing { requeue: Some(UNKNOWN_GRACE_NEVER_RAN) });
        let fresh = with_status(&fresh, p.status);
        let p = plan(&fresh, std::slice::from_ref(&unknown), &t(3));
        assert_eq!(p.step, Step::DeleteTask { id: unknown.id.clone() });
    }

    #[test]
    fn a_task_unknown_past_the_grace_is_deleted_and_ends_per_policy() {
        for policy in [RestartPolicy::Always, RestartPolicy::Never] {
            let o = obj(policy);
            let o = with_status(&o, plan(&o, &[actual(&o, running(42))], &t(0)).status);
            let unknown = actual(&o, task(0, TaskStatus::Unknown));
            // Seen unknown at 10 s: waits, remembering since when.
            let first = plan(&o, std::slice::from_ref(&unknown), &t(10));
            assert_eq!(first.step, Step::Nothing { requeue: Some(RECHECK) });
            let since = first.status.condition(CONDITION_TASK_UNKNOWN).and_then(|c| c.last_transition_time);
            assert_eq!(since, Some(t(10)));
            let o = with_status(&o, first.status);
            // 29 s later: still waiting, the same since.
            let p = plan(&o, std::slice::from_ref(&unknown), &t(39));
            assert_eq!(p.step, Step::Nothing { requeue: Some(RECHECK) }, "{policy:?}");
            assert_eq!(p.status.condition(CONDITION_TASK_UNKNOWN).and_then(|c| c.last_transition_time), Some(t(10)));
            // 30 s: deleted; Always restarts it (counted), Never ends Failed.
            let p = plan(&o, std::slice::from_ref(&unknown), &t(40));
            assert!(matches!(&p.step, Step::DeleteTask { .. } | Step::Nothing { .. }), "{policy:?}: {:?}", p.step);
            match policy {
                RestartPolicy::Never => {
                    assert_eq!(p.step, Step::DeleteTask { id: unknown.id.clone() });
                    assert_eq!(p.status.phase, Some(Phase::Failed));
                    assert_eq!(p.status.state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.reason.as_str()), Some(REASON_STATUS_UNKNOWN));
                }
                _ => {
                    assert_eq!(p.status.restart_count, 1, "{p:?}");
                    assert_eq!(last_terminated(&p).reason, REASON_STATUS_UNKNOWN);
                }
            }
            assert!(p.status.condition(CONDITION_TASK_UNKNOWN).is_none());
            // Back to known: the condition goes.
            let ok = plan(&o, &[actual(&o, running(42))], &t(41));
            assert!(ok.status.condition(CONDITION_TASK_UNKNOWN).is_none());
        }
    }

    #[test]
    fn oom_kills_and_signals_are_reported() {
        // (exit code, OOM-killed, reason, signal)
        for (code, oom, want_reason, signal) in [
            (137, true, REASON_OOM_KILLED, Some(9)),
            (137, false, "Error", Some(9)),
            (143, false, "Error", Some(15)),
            (1, false, "Error", None),
            (0, false, "Completed", None),
            (128, false, "Error", None),
            (255, false, "Error", None),
        ] {
            let o = obj(RestartPolicy::Never);
            let mut c = actual(&o, exited(code, 10));
            if let Some(t) = c.task.as_mut() {
                t.oom_killed = oom;
            }
            let p = plan(&o, &[c], &t(11));
            let term = p.status.state.as_ref().and_then(|s| s.terminated.clone()).expect("terminated");
            assert_eq!((term.reason.as_str(), term.signal), (want_reason, signal), "exit {code} oom {oom}");
            // With a restart, lastState says the same.
            let o = obj(RestartPolicy::Always);
            let mut c = actual(&o, exited(code, 10));
            if let Some(t) = c.task.as_mut() {
                t.oom_killed = oom;
            }
            let last = last_terminated(&plan(&o, &[c], &t(11)));
            assert_eq!((last.reason.as_str(), last.signal), (want_reason, signal), "exit {code} oom {oom}");
        }
    }

    /// A named change to a spec, for the hash tables.
    type Change = (&'static str, Box<dyn Fn(&mut ContainerSpec)>);

    fn base_spec() -> ContainerSpec {
        let spec = ContainerSpec {
            image: "127.0.0.1:5000/busybox:1.36".into(),
            command: vec!["sh".into(), "-c".into()],
            args: vec!["sleep 1".into()],
            env: vec![steward_schema::EnvVar { name: "A".into(), value: "b".into() }],
            working_dir: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            mounts: vec![steward_schema::Mount {
                mount_type: MountType::Tmpfs,
                source: None,
                target: "/scratch".into(),
                read_only: false,
                size_limit: Some(Quantity("64Mi".into())),
            }],
            // What every object stored before bridge networks has (new
            // objects default to `bridge`, a container of another shape).
            network: Some("none".into()),
            ..Default::default()
        };
        let mut c = Container { spec, ..Default::default() };
        c.apply_defaults();
        c.spec
    }

    #[test]
    fn spec_hash_covers_only_what_shapes_the_container() {
        let base = base_spec();
        let h = spec_hash(&base);
        // Changed in place or only read when needed: same hash, same container.
        let same: Vec<Change> = vec![
            ("restartPolicy", Box::new(|s| s.restart_policy = Some(RestartPolicy::Never))),
            ("terminationGracePeriodSeconds", Box::new(|s| s.termination_grace_period_seconds = Some(99))),
            ("stopSignal", Box::new(|s| s.stop_signal = Some("SIGINT".into()))),
            ("imagePullPolicy", Box::new(|s| s.image_pull_policy = Some(steward_schema::PullPolicy::Always))),
            (
                "resources.limits",
                Box::new(|s| {
                    s.resources = Some(steward_schema::Resources {
                        limits: Some(steward_schema::Limits { memory: Some(Quantity("1Gi".into())), cpu: None, pids: Some(9) }),
                    })
                }),
            ),
            // `none` spelled out, or left out (only objects stored before
            // networks were defaulted lack it).
            ("network unset", Box::new(|s| s.network = None)),
            // The same size in another unit.
            ("sizeLimit unit", Box::new(|s| s.mounts[0].size_limit = Some(Quantity("67108864".into())))),
        ];
        for (field, change) in same {
            let mut s = base.clone();
            change(&mut s);
            assert_eq!(spec_hash(&s), h, "{field} must not replace the container");
        }
        let differ: Vec<Change> = vec![
            ("image", Box::new(|s| s.image = "other:1".into())),
            ("command", Box::new(|s| s.command = vec!["sh".into()])),
            ("args", Box::new(|s| s.args = vec!["sleep 2".into()])),
            ("env", Box::new(|s| s.env[0].value = "c".into())),
            ("workingDir", Box::new(|s| s.working_dir = None)),
            ("user", Box::new(|s| s.user = Some("0".into()))),
            ("mounts", Box::new(|s| s.mounts[0].read_only = true)),
            (
                "mount size",
                Box::new(|s| s.mounts[0].size_limit = Some(Quantity("65Mi".into()))),
            ),
            (
                "runtimeClassName",
                Box::new(|s| s.runtime_class_name = Some("crun".into())),
            ),
            ("network", Box::new(|s| s.network = Some("host".into()))),
            (
                "network bridge",
                Box::new(|s| s.network = Some("bridge".into())),
            ),
            (
                "ports",
                Box::new(|s| {
                    s.ports = vec![steward_schema::ContainerPort {
                        container_port: 80,
                        host_port: Some(8080),
                        ..Default::default()
                    }]
                }),
            ),
            // Moving a value between command and args changes the process.
            (
                "command/args split",
                Box::new(|s| {
                    s.command = vec!["sh".into(), "-c".into(), "sleep 1".into()];
                    s.args = vec![];
                }),
            ),
        ];
        for (field, change) in differ {
            let mut s = base.clone();
            change(&mut s);
            assert_ne!(spec_hash(&s), h, "{field} must replace the container");
        }
        // Limits are tracked on their own.
        let mut s = base.clone();
        s.resources = Some(steward_schema::Resources {
            limits: Some(steward_schema::Limits { memory: Some(Quantity("64Mi".into())), cpu: Some(Quantity("0.5".into())), pids: None }),
        });
        assert_eq!(limits_label(&s), "memory=67108864,cpu=0.5,pids=");
        assert_eq!(limits_label(&base), "memory=,cpu=,pids=");
    }

    /// The hashes are a contract with containers already running: a build
    /// that changes either value would replace (v2) or fail to adopt
    /// (legacy) every container on upgrade.
    #[test]
    fn spec_hashes_are_stable_across_builds() {
        let s = base_spec();
        assert_eq!(spec_hash(&s), "9116a00e2acb21f7", "the v{SPEC_HASH_VERSION} hash changed: bump SPEC_HASH_VERSION instead");
        // main at 85f1c0c hashed `fnv_hex(serde_json::to_vec(spec))`.
        assert_eq!(legacy_spec_hash(&s), "b18784b2fb7443f6", "the legacy hash must stay what old containers carry");
    }

    #[test]
    fn containers_of_the_legacy_hash_are_adopted_without_a_restart() {
        let o = obj(RestartPolicy::Always);
        let o = with_status(&o, plan(&o, &[actual(&o, running(42))], &t(0)).status);
        // As created by steward before hash versions: only the legacy hash.
        let legacy_hash = legacy_spec_hash(&o.spec);
        let mut c = ActualContainer {
            id: container_id(&o, &legacy_hash),
            labels: BTreeMap::from([
                (LABEL_SPEC_HASH.to_string(), legacy_hash.clone()),
                (LABEL_UID.to_string(), o.metadata.uid.clone()),
            ]),
            task: running(42),
            image_digest: Some("sha256:abc".into()),
            created_at: None,
            rootfs_missing: false,
            ip: None,
        };
        assert!(made_from(&c, &o.spec));
        let p = plan(&o, std::slice::from_ref(&c), &t(1));
        // Relabelled into this version (with how it is stopped and its
        // limits: the legacy hash covered them), not replaced.
        let Step::Relabel { id, labels } = &p.step else { panic!("{:?}", p.step) };
        assert_eq!(id, &c.id);
        assert_eq!(labels, &spec_labels(&o.spec));
        c.labels.extend(labels.clone());
        let p = plan(&o, std::slice::from_ref(&c), &t(2));
        assert_eq!(p.step, Step::Nothing { requeue: None });
        assert_eq!((p.status.pid, p.status.restart_count), (Some(42), 0));
        assert_eq!(p.status.container_id, Some(format!("containerd://{}", c.id)));
        // From now on restartPolicy and the like change nothing...
        let mut o2 = o.clone();
        o2.spec.restart_policy = Some(RestartPolicy::OnFailure);
        assert_eq!(plan(&o2, std::slice::from_ref(&c), &t(3)).step, Step::Nothing { requeue: None });
        // ...and a real change replaces it.
        o2.spec.args = vec!["x".into()];
        assert!(matches!(plan(&o2, std::slice::from_ref(&c), &t(3)).step, Step::Stop { .. }));

        // A legacy container of another spec is replaced.
        let mut other = o.clone();
        other.spec.args = vec!["old".into()];
        let mut stale = c.clone();
        stale.labels = BTreeMap::from([(LABEL_SPEC_HASH.to_string(), legacy_spec_hash(&other.spec))]);
        assert!(!made_from(&stale, &o.spec));
        assert!(matches!(plan(&o, &[stale], &t(1)).step, Step::Stop { .. }));
        // A hash of an unknown (newer) version is not interpreted.
        let mut newer = actual(&o, running(42));
        newer.labels.insert(LABEL_SPEC_HASH_VERSION.into(), "3".into());
        assert!(!made_from(&newer, &o.spec));
    }

    #[test]
    fn in_place_changes_relabel_or_resize_without_replacing() {
        let o = obj(RestartPolicy::Always);
        let o = with_status(&o, plan(&o, &[actual(&o, running(42))], &t(0)).status);
        let c = actual(&o, running(42));
        // Stop signal and grace follow the spec for the current container.
        let mut o2 = o.clone();
        o2.spec.stop_signal = Some("SIGQUIT".into());
        o2.spec.termination_grace_period_seconds = Some(3);
        let p = plan(&o2, std::slice::from_ref(&c), &t(1));
        assert_eq!(
            p.step,
            Step::Relabel {
                id: c.id.clone(),
                labels: BTreeMap::from([(LABEL_STOP_GRACE.into(), "3".into()), (LABEL_STOP_SIGNAL.into(), "3".into())])
            }
        );
        // Limits: resized in place.
        let mut o3 = o.clone();
        o3.spec.resources = Some(steward_schema::Resources {
            limits: Some(steward_schema::Limits { memory: Some(Quantity("32Mi".into())), cpu: None, pids: None }),
        });
        assert_eq!(plan(&o3, std::slice::from_ref(&c), &t(1)).step, Step::Resize { id: c.id.clone() });
        let mut resized = c.clone();
        resized.labels.insert(LABEL_LIMITS.into(), limits_label(&o3.spec));
        let p = plan(&o3, &[resized], &t(2));
        assert_eq!((p.step, p.status.pid), (Step::Nothing { requeue: None }, Some(42)));
    }

    #[test]
    fn a_stop_request_is_forgotten_before_the_task_starts() {
        let o = obj(RestartPolicy::Always);
        let mut c = actual(&o, None);
        c.labels.insert(LABEL_STOP_REQUESTED.into(), "2027-01-15T08:00:00Z".into());
        let p = plan(&o, std::slice::from_ref(&c), &t(0));
        assert_eq!(
            p.step,
            Step::Relabel { id: c.id.clone(), labels: BTreeMap::from([(LABEL_STOP_REQUESTED.into(), String::new())]) }
        );
        c.labels.remove(LABEL_STOP_REQUESTED);
        assert_eq!(plan(&o, std::slice::from_ref(&c), &t(0)).step, Step::Start { id: c.id.clone() });
    }
    #[test]
    fn a_removed_rootfs_is_prepared_again_and_nothing_else_moves() {
        let o = obj(RestartPolicy::Never);
        let o = with_status(&o, plan(&o, &[actual(&o, running(42))], &t(0)).status);
        let mut c = actual(&o, running(42));
        c.rootfs_missing = true;
        let pinned = format!("{}@sha256:abc", o.spec.image);
        // Under a running task: the snapshot is prepared again from the
        // image it was made from; the task and status are left alone.
        let p = plan(&o, &[c.clone()], &t(1));
        assert_eq!(p.step, Step::RepairRootfs { id: c.id.clone(), image: pinned.clone() });
        assert_eq!(p.status, o.status.clone().unwrap(), "status does not move");
        // A finished Never container: the same repair; it stays Succeeded
        // and is not started.
        c.task = Some(Task { pid: 42, status: TaskStatus::Stopped, exit_code: Some(0), exited_at: Some(t(2)), oom_killed: false });
        let done = with_status(&o, plan(&o, &[actual(&o, c.task.clone())], &t(3)).status);
        assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded));
        let p = plan(&done, &[c.clone()], &t(4));
        assert_eq!(p.step, Step::RepairRootfs { id: c.id.clone(), image: pinned.clone() });
        assert_eq!(p.status.phase, Some(Phase::Succeeded));
        // Repaired: back to what it was (nothing to do).
        c.rootfs_missing = false;
        assert_eq!(plan(&done, &[c.clone()], &t(5)).step, Step::Nothing { requeue: None });
        assert_eq!(pinned_image("r/x:1@sha256:old", Some("sha256:new")), "r/x:1@sha256:new");
        assert_eq!(pinned_image("r/x:1", None), "r/x:1");
    }
}
