//! Health probes on real containerd: an http readiness probe gating
//! `Ready`, an exec liveness probe restarting a container (counted, with
//! the probe's failure in `lastState`), a startup probe holding liveness.

use std::time::{Duration, Instant};

use serde_json::Value;
use steward_e2e::*;

const T: Duration = Duration::from_secs(60);

fn ready(v: &Value) -> (String, String) {
    let c = v.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    let f = |k: &str| c.and_then(|c| c[k].as_str()).unwrap_or_default().to_string();
    (f("status"), f("reason"))
}

fn phase(v: &Value) -> &str {
    v.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default()
}

fn restarts(v: &Value) -> i64 {
    v.pointer("/status/restartCount").and_then(Value::as_i64).unwrap_or_default()
}

/// A readiness probe on a path that appears 4 s after the start: Running
/// but not Ready (READY 0/1), then Ready (1/1); a passing tcp liveness
/// probe restarts nothing.
#[test]
fn an_http_readiness_probe_gates_ready_until_the_path_answers() {
    let e = Env::start();
    let (s, img, dir) = (&e.steward, e.registry.image(), e.dir.path());
    s.apply(
        dir,
        "web",
        &manifest(
            "web",
            &img,
            "  command: [sh, -c, \"mkdir -p /www; (sleep 4; echo ok > /www/ready) & exec httpd -f -p 80 -h /www\"]\n  terminationGracePeriodSeconds: 1\n  ports: [{name: http, containerPort: 80}]\n  readinessProbe: {httpGet: {path: /ready, port: http}, periodSeconds: 1, failureThreshold: 1}\n  livenessProbe: {tcpSocket: {port: 80}, periodSeconds: 1}\n",
        ),
    );
    let v = s.wait("web", "Running", T, |v| phase(v) == "Running" && v["status"]["pid"].is_u64());
    let running_at = Instant::now();
    let (status, reason) = ready(&v);
    assert_eq!(status, "False", "ready before its path exists: {v:#}");
    assert!(reason.starts_with("ReadinessProbe"), "{reason}");
    let line = s.ok(&["get", "containers", "web"]);
    assert!(line.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(1) == Some("0/1")), "{line}");
    // Failed (404) while the path is missing, with the probe's message.
    // Failed with a 404 while the path is missing (the first failures may
    // be "connection refused", before httpd listens), with the probe's message.
    let ready_message = |v: &Value| {
        v.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| cs.iter().find(|c| c["type"] == "Ready")).map(|c| c["message"].to_string()).unwrap_or_default()
    };
    let v = s.wait("web", "ReadinessProbeFailed with HTTP 404", T, |v| ready(v).1 == "ReadinessProbeFailed" && ready_message(v).contains("HTTP 404"));
    let msg = ready_message(&v);
    assert!(msg.contains("/ready"), "{msg}");
    s.wait("web", "Ready", T, |v| ready(v).0 == "True");
    let took = running_at.elapsed();
    assert!(took >= Duration::from_secs(2), "Ready after {took:?}, before the path could exist");
    eprintln!("Ready {took:?} after Running");
    let line = s.ok(&["get", "containers", "web"]);
    assert!(line.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(1) == Some("1/1")), "{line}");
    s.ok(&["wait", "container/web", "--for=condition=Ready", "--timeout", "5s"]);
    // The tcp liveness probe passes: nothing restarted.
    std::thread::sleep(Duration::from_secs(2));
    let v = s.get("web").expect("web");
    assert_eq!((restarts(&v), ready(&v).0.as_str()), (0, "True"), "{v:#}");
}

/// An exec liveness probe that starts failing 3 s in: the container is
/// stopped with its signal and grace and restarted, counted, with the
/// failure in lastState.terminated.message.
#[test]
fn a_failing_exec_liveness_probe_restarts_the_container() {
    let e = Env::start();
    let (s, img, dir) = (&e.steward, e.registry.image(), e.dir.path());
    s.apply(
        dir,
        "flaky",
        &manifest(
            "flaky",
            &img,
            "  command: [sh, -c, \"touch /tmp/healthy; (sleep 3; rm -f /tmp/healthy) & trap 'exit 0' TERM; while true; do sleep 1; done\"]\n  terminationGracePeriodSeconds: 2\n  livenessProbe: {exec: {command: [cat, /tmp/healthy]}, periodSeconds: 1, failureThreshold: 2}\n",
        ),
    );
    let first = s.wait("flaky", "Running", T, |v| phase(v) == "Running" && v["status"]["pid"].is_u64());
    let pid = first["status"]["pid"].as_u64();
    let v = s.wait("flaky", "a restart after the liveness probe failed", T, |v| restarts(v) >= 1);
    let last = &v["status"]["lastState"]["terminated"];
    let message = last["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("Liveness probe failed: command [\"cat\", \"/tmp/healthy\"] exited with 1"), "{v:#}");
    // Stopped by its signal (the trap exits 0), not killed.
    assert_eq!(last["exitCode"], 0, "{v:#}");
    let v = s.wait("flaky", "Running again", T, |v| phase(v) == "Running" && v["status"]["pid"].as_u64().is_some_and(|p| Some(p) != pid));
    assert!(restarts(&v) >= 1);
}

/// A startup probe that passes after 5 s holds a liveness probe that
/// would fail at once: no restart, Ready only once started.
#[test]
fn a_startup_probe_holds_liveness_until_it_passes() {
    let e = Env::start();
    let (s, img, dir) = (&e.steward, e.registry.image(), e.dir.path());
    s.apply(
        dir,
        "slow",
        &manifest(
            "slow",
            &img,
            "  command: [sh, -c, \"rm -f /tmp/started; (sleep 5; touch /tmp/started) & trap 'exit 0' TERM; while true; do sleep 1; done\"]\n  terminationGracePeriodSeconds: 1\n  startupProbe: {exec: {command: [cat, /tmp/started]}, periodSeconds: 1, failureThreshold: 30}\n  livenessProbe: {exec: {command: [cat, /tmp/started]}, periodSeconds: 1, failureThreshold: 1}\n",
        ),
    );
    let v = s.wait("slow", "Running", T, |v| phase(v) == "Running" && v["status"]["pid"].is_u64());
    assert_eq!(ready(&v), ("False".to_string(), "StartupProbePending".to_string()), "{v:#}");
    let start = Instant::now();
    let v = s.wait("slow", "Ready once started", T, |v| ready(v).0 == "True");
    assert!(start.elapsed() >= Duration::from_secs(2), "ready after {:?}", start.elapsed());
    assert_eq!(restarts(&v), 0, "liveness ran before the startup probe passed: {v:#}");
    std::thread::sleep(Duration::from_secs(3));
    let v = s.get("slow").expect("slow");
    assert_eq!((restarts(&v), ready(&v).0.as_str()), (0, "True"), "{v:#}");
}
