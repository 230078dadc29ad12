//! What the status says when containers die or stop behind steward's back,
//! and upgrading steward under running containers: real containerd, real
//! registry, real `steward serve` processes.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use steward_e2e::*;

const T: Duration = Duration::from_secs(60);

/// Fields drop in order: steward (which removes its containers) before the
/// registry, and both before the directory they live in.
struct Env {
    steward: Steward,
    registry: Registry,
    dir: tempfile::TempDir,
}

fn env_with(bin: &Path) -> Env {
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(dir.path());
    let steward = Steward::start_bin(bin, &dir.path().join("data"), &[]);
    Env { steward, registry, dir }
}

fn env() -> Env {
    env_with(&steward_bin())
}

fn manifest(name: &str, image: &str, extra: &str) -> String {
    format!("apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n{extra}")
}

fn container_id(v: &Value) -> String {
    v.pointer("/status/containerID").and_then(Value::as_str).unwrap_or_default().trim_start_matches("containerd://").to_string()
}

fn ready(v: &Value) -> (&str, &str) {
    let c = v.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    (
        c.and_then(|c| c["status"].as_str()).unwrap_or_default(),
        c.and_then(|c| c["reason"].as_str()).unwrap_or_default(),
    )
}

/// The labels containerd holds for container `id`.
fn ctr_labels(s: &Steward, id: &str) -> Value {
    let info: Value = serde_json::from_str(&s.ctr(&["containers", "info", id])).expect("ctr containers info is JSON");
    info["Labels"].clone()
}

/// The task row of `ctr tasks ls` for container `id`, if any.
fn ctr_task(s: &Steward, id: &str) -> Option<String> {
    s.ctr(&["tasks", "ls"]).lines().skip(1).find(|l| l.split_whitespace().next() == Some(id)).map(String::from)
}

/// A container over its memory limit is OOM-killed by the kernel: its
/// status says `OOMKilled` (exit 137, signal 9), not `Error`.
#[test]
fn an_oom_kill_is_reported_as_oom_killed() {
    let e = env();
    let s = &e.steward;
    let img = e.registry.image();
    s.apply(
        e.dir.path(),
        "hog",
        &manifest(
            "hog",
            &img,
            "  command: [/bin/sh, -c, \"x=$(head -c 67108864 /dev/zero | tr '\\\\0' a); echo survived ${#x}\"]\n  restartPolicy: Never\n  resources: {limits: {memory: 16Mi}}\n",
        ),
    );
    let v = s.wait("hog", "Failed", T, |v| phase(v) == "Failed");
    let t = &v["status"]["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{v:#}");
    assert_eq!((t["exitCode"].as_i64(), t["signal"].as_i64()), (Some(137), Some(9)), "{v:#}");
    // Killed by a signal (not the kernel's OOM killer): PID 1 ignores
    // signals it has no handler for, so a child dies of SIGTERM and PID 1
    // passes its status on.
    s.apply(e.dir.path(), "term", &manifest("term", &img, "  command: [/bin/sh, -c, 'sh -c ''kill -TERM $$''; exit $?']\n  restartPolicy: Never\n"));
    let v = s.wait("term", "Failed", T, |v| phase(v) == "Failed");
    let t = &v["status"]["state"]["terminated"];
    assert_eq!((t["reason"].as_str(), t["exitCode"].as_i64(), t["signal"].as_i64()), (Some("Error"), Some(143), Some(15)), "{v:#}");
}

/// A task deleted behind steward's back (as after a host reboot): a
/// finished `Never` container stays finished and never runs again; an
/// `Always` one comes back, counted. A paused task is not Ready.
#[test]
fn lost_tasks_follow_the_restart_policy_and_paused_is_not_ready() {
    let e = env();
    let s = &e.steward;
    let img = e.registry.image();
    s.apply(e.dir.path(), "once", &manifest("once", &img, "  command: [/bin/sh, -c, \"echo ran-once\"]\n  restartPolicy: Never\n"));
    s.apply(e.dir.path(), "svc", &manifest("svc", &img, "  command: [sleep, \"3600\"]\n"));
    let done = s.wait("once", "Succeeded", T, |v| phase(v) == "Succeeded");
    let svc = s.wait("svc", "Running", T, |v| phase(v) == "Running");
    let (once_id, svc_id) = (container_id(&done), container_id(&svc));
    assert!(ctr_task(s, &once_id).is_some_and(|t| t.contains("STOPPED")), "the finished task is kept");

    // Both tasks vanish.
    s.ctr(&["tasks", "delete", &once_id]);
    // --force kills it first; steward may see that exit and delete the task
    // itself before ctr does (the shim then goes: "ttrpc: closed"). Gone
    // either way, which is what this test needs.
    let o = s.ctr_command(&["tasks", "delete", "--force", &svc_id]).output().expect("run ctr");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() || err.contains("ttrpc: closed") || err.contains("not found"), "ctr tasks delete: {err}");
    assert!(ctr_task(s, &once_id).is_none());
    let svc2 = s.wait("svc", "restarted", T, |v| {
        phase(v) == "Running" && v["status"]["pid"].is_u64() && v["status"]["pid"] != svc["status"]["pid"]
    });
    assert_eq!(svc2["status"]["restartCount"], 1, "{svc2:#}");
    // Whether steward saw the SIGKILL's exit or only the missing task.
    let reason = svc2["status"]["lastState"]["terminated"]["reason"].as_str().unwrap_or_default();
    assert!(reason == "ContainerStatusUnknown" || reason == "Error", "{svc2:#}");
    assert_eq!(container_id(&svc2), svc_id, "the same container, a new task");

    // Steward has handled the lost tasks (svc restarted); `once` was lost
    // at the same moment. Watch it for a while: it must stay as it was.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let v = s.get("once").expect("once exists");
        assert_eq!(phase(&v), "Succeeded", "{v:#}");
        assert_eq!(v["status"]["state"], done["status"]["state"], "the recorded exit changed");
        assert_eq!(v["status"]["restartCount"], 0);
        assert!(ctr_task(s, &once_id).is_none(), "a finished Never container was started again");
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = s.ok(&["logs", "once"]);
    assert_eq!(logs.matches("ran-once").count(), 1, "{logs}");

    // A steward restart (a full resync of every container) changes nothing.
    let mut e = e;
    e.steward.kill_and_restart();
    let s = &e.steward;
    let svc3 = s.wait("svc", "Running after restart", T, |v| phase(v) == "Running");
    assert_eq!((svc3["status"]["pid"].clone(), svc3["status"]["restartCount"].clone()), (svc2["status"]["pid"].clone(), 1.into()));
    assert!(ctr_task(s, &once_id).is_none(), "a finished Never container was started again after a steward restart");
    assert_eq!(phase(&s.get("once").expect("once")), "Succeeded");

    // Paused: Running, but not Ready; resumed: Ready again.
    s.ctr(&["tasks", "pause", &svc_id]);
    let v = s.wait("svc", "not Ready while paused", T, |v| ready(v) == ("False", "Paused"));
    assert_eq!((phase(&v), v["status"]["pid"].clone()), ("Running", svc2["status"]["pid"].clone()));
    s.ctr(&["tasks", "resume", &svc_id]);
    s.wait("svc", "Ready after resume", T, |v| ready(v) == ("True", "Running"));
}

/// Containers started by the steward of main before versioned spec hashes
/// are adopted by this one on the same data dir: same containers, same
/// pids, no restart; relabelled into the new hash version, so that from
/// then on changing restartPolicy or the grace period replaces nothing.
#[test]
fn upgrade_from_the_previous_steward_adopts_its_containers() {
    let old = old_steward_bin();
    let mut e = env_with(&old);
    let img = e.registry.image();
    let dir = e.dir.path().to_path_buf();
    let s = &e.steward;
    s.apply(&dir, "web", &manifest("web", &img, "  command: [sleep, \"3600\"]\n  env: [{name: A, value: b}]\n  terminationGracePeriodSeconds: 3\n"));
    s.apply(&dir, "capped", &manifest("capped", &img, "  command: [sleep, \"3600\"]\n  resources: {limits: {memory: 64Mi, pids: 64}}\n"));
    s.apply(&dir, "job", &manifest("job", &img, "  command: [/bin/sh, -c, \"echo job-ran\"]\n  restartPolicy: Never\n"));
    let mut before = Vec::new();
    for (name, want) in [("web", "Running"), ("capped", "Running"), ("job", "Succeeded")] {
        let v = s.wait(name, want, T, |v| phase(v) == want && (want != "Running" || v["status"]["pid"].is_u64()));
        let labels = ctr_labels(s, &container_id(&v));
        assert!(labels.get("steward.dev/spec-hash-version").is_none(), "not a legacy container: {labels:#}");
        before.push((name, v));
    }

    // The new steward on the same data dir (containers and containerd live on).
    e.steward.kill_and_restart_with(&steward_bin());
    let s = &e.steward;
    // This store's identity (it lives in the store): the label of a
    // container the new steward creates.
    s.apply(&dir, "fresh", &manifest("fresh", &img, "  command: [sleep, \"3600\"]\n"));
    let fresh = s.wait("fresh", "Running", T, |v| phase(v) == "Running");
    let store = ctr_labels(s, &container_id(&fresh))["steward.dev/store"].as_str().unwrap_or_default().to_string();
    assert!(!store.is_empty(), "a new container without a store label");
    for (name, v) in &before {
        let id = container_id(v);
        // Adopted = relabelled into this hash version (the reconciler) and
        // into this store (the garbage collector: the old steward wrote no
        // store label), the same container.
        let labels = wait_for(&format!("{name} relabelled by the new steward"), T, || {
            let l = ctr_labels(s, &id);
            (l["steward.dev/spec-hash-version"] == "2" && l["steward.dev/store"] == store.as_str()).then_some(l)
        });
        if *name == "web" {
            assert_eq!((labels["steward.dev/stop-signal"].as_str(), labels["steward.dev/termination-grace-period-seconds"].as_str()), (Some("15"), Some("3")));
        }
        let now = s.get(name).expect("object");
        assert_eq!(container_id(&now), id, "{name} was replaced");
        assert_eq!(now["status"]["restartCount"], 0, "{name}: {now:#}");
        assert_eq!(phase(&now), phase(v), "{name}");
        if phase(v) == "Running" {
            assert_eq!(now["status"]["pid"], v["status"]["pid"], "{name} restarted");
            let pid = now["status"]["pid"].as_u64().unwrap_or_default();
            assert!(Path::new(&format!("/proc/{pid}")).exists(), "{name}: pid {pid} is gone");
            assert!(ctr_task(s, &id).is_some_and(|t| t.contains(&pid.to_string()) && t.contains("RUNNING")), "{name}");
        } else {
            assert_eq!(now["status"]["state"], v["status"]["state"], "{name}: the recorded exit changed");
            assert!(ctr_task(s, &id).is_some_and(|t| t.contains("STOPPED")), "{name} ran again");
        }
    }
    assert_eq!(s.ok(&["logs", "job"]).matches("job-ran").count(), 1);

    // From now on, what does not shape the container changes it in place.
    let web = &before[0].1;
    s.apply(&dir, "web", &manifest("web", &img, "  command: [sleep, \"3600\"]\n  env: [{name: A, value: b}]\n  terminationGracePeriodSeconds: 5\n  restartPolicy: OnFailure\n  stopSignal: SIGINT\n"));
    let v = s.wait("web", "generation 2 observed", T, |v| v["status"]["observedGeneration"] == 2);
    assert_eq!((container_id(&v), v["status"]["pid"].clone()), (container_id(web), web["status"]["pid"].clone()), "{v:#}");
    wait_for("web's stop signal and grace relabelled", T, || {
        let l = ctr_labels(s, &container_id(web));
        (l["steward.dev/stop-signal"] == "2" && l["steward.dev/termination-grace-period-seconds"] == "5").then_some(())
    });
    // Limits: in place, the same pid, the cgroup changed.
    let capped = &before[1].1;
    s.apply(&dir, "capped", &manifest("capped", &img, "  command: [sleep, \"3600\"]\n  resources: {limits: {memory: 32Mi, pids: 64}}\n"));
    let cg = format!("/sys/fs/cgroup/memory/steward/{}/memory.limit_in_bytes", container_id(capped));
    wait_for("the new memory limit in the cgroup", T, || {
        (std::fs::read_to_string(&cg).unwrap_or_default().trim() == (32u64 << 20).to_string()).then_some(())
    });
    let v = s.get("capped").expect("capped");
    assert_eq!((container_id(&v), v["status"]["pid"].clone(), v["status"]["restartCount"].clone()), (container_id(capped), capped["status"]["pid"].clone(), 0.into()));
    // And a real change still replaces.
    s.apply(&dir, "web", &manifest("web", &img, "  command: [sleep, \"3601\"]\n  terminationGracePeriodSeconds: 5\n"));
    s.wait("web", "replaced", T, |v| phase(v) == "Running" && v["status"]["pid"].is_u64() && container_id(v) != container_id(web));
}
