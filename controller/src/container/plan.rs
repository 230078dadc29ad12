//! The Container reconciler's brain: a pure function of (desired object,
//! actual containers, now) to the one step to take and the status to
//! report, as the kubelet's `computePodActions`. No I/O here; the table of
//! cases in the tests is the specification.

use std::time::Duration;

use chrono::Utc;
use steward_schema::validate::is_runtime_id;
use steward_schema::{
    Condition, Container, ContainerSpec, ContainerState, ContainerStatus, Phase, RestartPolicy, StateRunning,
    StateTerminated, StateWaiting, Time,
};

use crate::actual::{ActualContainer, TaskStatus, LABEL_SPEC_HASH, LABEL_STOP_REQUESTED};

/// The kubelet's restart backoff: 10 s doubling to 5 min...
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// ...reset once a container ran this long.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

pub const REASON_CREATING: &str = "ContainerCreating";
pub const REASON_PULLING: &str = "ImagePulling";
pub const REASON_ERR_PULL: &str = "ErrImagePull";
pub const REASON_PULL_BACKOFF: &str = "ImagePullBackOff";
pub const REASON_CRASH_LOOP: &str = "CrashLoopBackOff";
pub const REASON_CREATE_ERROR: &str = "CreateContainerError";

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
    /// Send the stop signal and record when.
    Stop { id: String, signal: u32 },
    /// The grace period is over: SIGKILL every process.
    Kill { id: String },
    /// Delete a stopped task (its exit is in status already).
    DeleteTask { id: String },
    /// Delete container and snapshot (no task left).
    Remove { id: String },
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

/// The hash of a (defaulted) spec: any change means a new container.
pub fn spec_hash(spec: &ContainerSpec) -> String {
    fnv_hex(&serde_json::to_vec(spec).unwrap_or_default())
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
                None => Step::Stop { id, signal },
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
        message: String::new(),
        last_transition_time: transition,
    });
}

/// Plans the next step for a live (not deleting) object.
pub fn plan(obj: &Container, actual: &[ActualContainer], now: &Time) -> Plan {
    let spec = &obj.spec;
    let prior = obj.status.clone().unwrap_or_default();
    let mut status = prior.clone();
    status.observed_generation = Some(obj.metadata.generation);
    let hash = spec_hash(spec);
    let id = container_id(obj, &hash);
    let signal = signal_number(spec.stop_signal.as_deref().unwrap_or("SIGTERM"));
    let grace = Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(10).max(0) as u64);

    // Containers of an older spec go first (a spec change = stop, remove,
    // create; a container is never edited in place).
    if let Some(old) = actual.iter().find(|c| c.label(LABEL_SPEC_HASH) != hash || c.id != id) {
        status.phase = Some(Phase::Pending);
        status.state = Some(waiting(REASON_CREATING, format!("replacing container {} after a spec change", old.id)));
        status.pid = None;
        set_ready(&mut status, false, REASON_CREATING, now);
        return Plan { step: teardown(old, signal, grace, now), status };
    }

    let Some(current) = actual.iter().find(|c| c.id == id) else {
        // Nothing yet: create. Keep a pull/create error on display while
        // retrying, so a user sees why it is not running.
        if !matches!(waiting_reason(&prior), REASON_ERR_PULL | REASON_PULL_BACKOFF | REASON_CREATE_ERROR | REASON_PULLING) {
            status.state = Some(waiting(REASON_CREATING, String::new()));
        }
        status.phase = Some(Phase::Pending);
        status.container_id = None;
        status.pid = None;
        // A new container (first, or for a new spec) starts its backoff
        // afresh, as the kubelet's is keyed by the container's spec.
        status.recent_restarts = 0;
        set_ready(&mut status, false, REASON_CREATING, now);
        return Plan { step: Step::Create { id }, status };
    };

    status.container_id = Some(format!("containerd://{id}"));
    if current.image_digest.is_some() {
        status.image_digest = current.image_digest.clone();
    }
    let task = match &current.task {
        None => None,
        Some(t) if t.status == TaskStatus::Created => None,
        Some(t) => Some(t),
    };
    let Some(task) = task else {
        if waiting_reason(&prior) != REASON_CREATE_ERROR {
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
        // Running (or paused): keep the start time we recorded for this pid.
        let started = prior
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .filter(|_| prior.pid == Some(task.pid))
            .and_then(|r| r.started_at)
            .unwrap_or(*now);
        status.state = Some(ContainerState { running: Some(StateRunning { started_at: Some(started) }), ..Default::default() });
        status.phase = Some(Phase::Running);
        status.pid = Some(task.pid);
        set_ready(&mut status, true, "Running", now);
        return Plan { step: Step::Nothing { requeue: None }, status };
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
    let terminated = StateTerminated {
        exit_code,
        signal: None,
        reason: if exit_code == 0 { "Completed".into() } else { "Error".into() },
        message: String::new(),
        started_at,
        finished_at: Some(finished),
    };
    status.pid = None;
    let restart = match spec.restart_policy.unwrap_or(RestartPolicy::Always) {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    };
    if !restart {
        status.phase = Some(if exit_code == 0 { Phase::Succeeded } else { Phase::Failed });
        status.state = Some(ContainerState { terminated: Some(terminated.clone()), ..Default::default() });
        set_ready(&mut status, false, &terminated.reason, now);
        return Plan { step: Step::Nothing { requeue: None }, status };
    }
    status.phase = Some(Phase::Running);
    set_ready(&mut status, false, REASON_CRASH_LOOP, now);
    let recorded = last_finished(&prior) == Some(finished);
    if recorded && waiting_reason(&prior) != REASON_CRASH_LOOP {
        // This exit was already counted as a restart; a crash came between
        // writing that and deleting the task. Finish the restart.
        return Plan { step: Step::DeleteTask { id }, status };
    }
    let ran = started_at.map(|s| since(&s, &finished)).unwrap_or_default();
    // A run of 10 minutes forgives the crashes before it.
    let recent = if ran >= BACKOFF_RESET { 0 } else { prior.recent_restarts };
    let delay = restart_delay(recent);
    let due = add(&finished, delay);
    status.last_state = Some(ContainerState { terminated: Some(terminated), ..Default::default() });
    if now.0 < due.0 {
        let left = since(now, &due);
        status.state = Some(waiting(
            REASON_CRASH_LOOP,
            format!("back-off {}s restarting failed container (exit code {exit_code})", delay.as_secs()),
        ));
        return Plan { step: Step::Nothing { requeue: Some(left) }, status };
    }
    status.restart_count = prior.restart_count + 1;
    status.recent_restarts = recent + 1;
    status.state = Some(waiting(REASON_CREATING, "restarting".into()));
    Plan { step: Step::DeleteTask { id }, status }
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

    fn actual(o: &Container, task: Option<Task>) -> ActualContainer {
        let hash = spec_hash(&o.spec);
        ActualContainer {
            id: container_id(o, &hash),
            labels: BTreeMap::from([(LABEL_SPEC_HASH.to_string(), hash), (LABEL_UID.to_string(), o.metadata.uid.clone())]),
            task,
            image_digest: Some("sha256:abc".into()),
        }
    }

    fn running(pid: u32) -> Option<Task> {
        Some(Task { pid, status: TaskStatus::Running, exit_code: None, exited_at: None })
    }

    fn exited(code: u32, at: i64) -> Option<Task> {
        Some(Task { pid: 0, status: TaskStatus::Stopped, exit_code: Some(code), exited_at: Some(t(at)) })
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
    fn spec_change_tears_the_old_container_down_gracefully() {
        let old = obj(RestartPolicy::Always);
        let mut new = old.clone();
        new.spec.args = vec!["changed".into()];
        new.spec.termination_grace_period_seconds = Some(30);
        new.spec.stop_signal = Some("SIGINT".into());
        let mut c = actual(&old, running(9));
        let p = plan(&new, &[c.clone()], &t(0));
        assert_eq!(p.step, Step::Stop { id: c.id.clone(), signal: 2 });
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
    }

    #[test]
    fn created_but_never_started_task_is_started() {
        let o = obj(RestartPolicy::Always);
        let c = actual(&o, Some(Task { pid: 5, status: TaskStatus::Created, exit_code: None, exited_at: None }));
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
}
