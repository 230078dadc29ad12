//! Runtime handlers on real containerd, and what a live reload does to
//! them: a handler with arguments runs through its content-addressed
//! wrapper (runc's `--debug` shows in the runtime's log); a Container
//! naming an unknown handler is refused at apply; a reload that changes or
//! removes a handler leaves every container made before running and
//! manageable (restarted per policy, deleted) with the wrapper it was made
//! with, says so in a condition, and gives new containers the new
//! definition; an invalid file changes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use steward_e2e::*;

const T: Duration = Duration::from_secs(60);

/// `network: none`: the crun test's containerd runs in a mount namespace of
/// its own, where steward's network namespaces are not seen (networks have
/// their own tests, e2e/tests/network.rs).
fn manifest(name: &str, image: &str, handler: Option<&str>) -> String {
    let rc = handler.map(|h| format!("  runtimeClassName: {h}\n")).unwrap_or_default();
    format!(
        "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 1\n  network: none\n{rc}"
    )
}

fn reload(s: &Steward) -> (u16, String) {
    s.request("POST", "/-/reload")
}

fn config(handlers: &str) -> String {
    format!("runtimes:\n  default: runc\n  handlers:\n    runc: {{runtime: runc}}\n{handlers}")
}

fn container_id(v: &Value) -> String {
    v["status"]["containerID"].as_str().unwrap_or_default().trim_start_matches("containerd://").to_string()
}

fn condition<'a>(v: &'a Value, t: &str) -> Option<&'a Value> {
    v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == t)
}

/// The runc binary (or wrapper) containerd's container record points at.
fn binary_of(s: &Steward, state: &Path, id: &str) -> String {
    let info: Value = serde_json::from_str(&s.ctr(&["containers", "info", id])).expect("ctr containers info json");
    let opts = info["Runtime"]["Options"].clone();
    assert_eq!(opts["type_url"], "containerd.runc.v1.Options", "{}", info["Runtime"]);
    // ctr prints the Any undecoded: field 6 (binary_name), a string.
    let raw = base64_decode(opts["value"].as_str().unwrap_or_default());
    assert!(raw.len() > 2 && raw[0] == (6 << 3 | 2) && usize::from(raw[1]) == raw.len() - 2, "{raw:?}");
    let b = String::from_utf8(raw[2..].to_vec()).expect("utf-8");
    // The shim ran exactly that (it records it in the task's bundle).
    let ran = std::fs::read_to_string(state.join("io.containerd.runtime.v2.task/steward").join(id).join("runtime"))
        .unwrap_or_default();
    assert!(ran.is_empty() || ran == b, "the shim ran {ran:?}, the record says {b:?}");
    b
}

/// runc's own log for a running task (the shim passes `--log` into the bundle).
fn runc_log(state: &Path, id: &str) -> String {
    std::fs::read_to_string(state.join("io.containerd.runtime.v2.task/steward").join(id).join("log.json")).unwrap_or_default()
}

fn kill_task(s: &Steward, id: &str) {
    let _ = s.ctr_command(&["tasks", "kill", "--signal", "SIGKILL", id]).output();
}

#[test]
fn runtime_handlers_and_reload_never_strand_a_container() {
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(dir.path());
    let image = registry.image();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config("    runc-debug: {runtime: runc, args: [\"--debug\"]}\n    crun: {runtime: crun}\n")).expect("write config");
    let data = dir.path().join("data");
    // containerd (and so its shims and runtimes) in a private mount
    // namespace without /sys/fs/cgroup/unified: crun 1.8.1 refuses the
    // hybrid cgroup layout of this machine otherwise (see known limits).
    let ext = steward_e2e::fault::ExternalContainerd::start_for_crun(&dir.path().join("containerd"));
    let state = ext.dir.join("state");
    let s = Steward::start_with(&data, &["--config", &file.to_string_lossy(), "--containerd-socket", &ext.socket.to_string_lossy()]);

    s.apply(dir.path(), "plain", &manifest("plain", &image, None));
    s.apply(dir.path(), "dbg", &manifest("dbg", &image, Some("runc-debug")));
    s.apply(dir.path(), "c", &manifest("c", &image, Some("crun")));
    let plain = s.wait("plain", "Running", T, |v| phase(v) == "Running");
    let dbg = s.wait("dbg", "Running", T, |v| phase(v) == "Running");
    let c = s.wait("c", "Running under crun", T, |v| phase(v) == "Running");
    assert_eq!(c["status"]["runtimeHandler"]["name"], "crun", "{c}");
    assert!(binary_of(&s, &state, &container_id(&c)).ends_with("/crun"));
    assert_eq!(plain["status"]["runtimeHandler"]["name"], "runc", "{plain}");
    assert_eq!(dbg["status"]["runtimeHandler"]["name"], "runc-debug", "{dbg}");
    let (plain_id, dbg_id) = (container_id(&plain), container_id(&dbg));
    // The debug handler's wrapper: named by its content's digest, under
    // DATA/runtimes, and what containerd's record points at.
    let wrapper = PathBuf::from(binary_of(&s, &state, &dbg_id));
    assert!(wrapper.starts_with(data.join("runtimes")), "{}", wrapper.display());
    let _ = &ext;
    let script = std::fs::read_to_string(&wrapper).expect("the wrapper exists");
    let wrapper_digest = format!("sha256:{}", wrapper.file_name().and_then(|f| f.to_str()).unwrap_or_default());
    assert_eq!(dbg["status"]["runtimeHandler"]["wrapper"], wrapper_digest.as_str(), "status names the wrapper it runs: {dbg}");
    assert!(plain["status"]["runtimeHandler"]["wrapper"].is_null(), "no wrapper for a plain handler: {plain}");
    assert!(script.contains("'--debug'"), "{script}");
    assert!(binary_of(&s, &state, &plain_id).ends_with("/runc"), "{}", binary_of(&s, &state, &plain_id));
    assert!(runc_log(&state, &dbg_id).contains("\"level\":\"debug\""), "runc ran with --debug: {}", runc_log(&state, &dbg_id));
    assert!(!runc_log(&state, &plain_id).contains("\"level\":\"debug\""), "the plain one did not");

    // An unknown handler is refused at apply, naming it.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, manifest("bad", &image, Some("kata"))).expect("write");
    let out = s.cli(&["apply", "-f", &bad.to_string_lossy()]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("spec.runtimeClassName") && err.contains("\"kata\""), "{err}");

    // An invalid file: refused, nothing changes.
    std::fs::write(&file, "runtimes: {default: nope}\n").expect("write");
    let (code, body) = reload(&s);
    assert_eq!(code, 422, "{body}");

    // The handler redefined: the running container keeps its wrapper and
    // says it runs an older definition; a new one gets the new wrapper.
    std::fs::write(&file, s.with_net(&config("    runc-debug: {runtime: runc, args: [\"--debug\"], env: {STEWARD_E2E: \"2\"}}\n"))).expect("write");
    let (code, body) = reload(&s);
    assert_eq!(code, 200, "{body}");
    s.apply(dir.path(), "dbg2", &manifest("dbg2", &image, Some("runc-debug")));
    let dbg2 = s.wait("dbg2", "Running", T, |v| phase(v) == "Running");
    let wrapper2 = PathBuf::from(binary_of(&s, &state, &container_id(&dbg2)));
    assert_ne!(wrapper2, wrapper, "a new definition, a new wrapper");
    assert!(std::fs::read_to_string(&wrapper2).expect("new wrapper").contains("STEWARD_E2E=2"));
    assert_eq!(std::fs::read_to_string(&wrapper).expect("the old wrapper stays"), script, "a wrapper is never rewritten");
    kill_task(&s, &dbg_id);
    let old_pid = dbg["status"]["pid"].as_u64();
    let v = s.wait("dbg", "restarted with its own wrapper, flagged as older", T, |v| {
        phase(v) == "Running"
            && v["status"]["pid"].as_u64() != old_pid
            && condition(v, "RuntimeHandlerCurrent").is_some_and(|c| c["reason"] == "DefinitionChanged")
    });
    assert_eq!(container_id(&v), dbg_id, "the same container, not recreated");
    assert_eq!(binary_of(&s, &state, &dbg_id), wrapper.to_string_lossy());

    // The handler removed: containers made with it keep running, restart
    // per policy and delete; new ones are refused at apply.
    std::fs::write(&file, s.with_net(&config(""))).expect("write");
    let (code, body) = reload(&s);
    assert_eq!(code, 200, "{body}");
    let v = s.wait("dbg", "flagged: handler removed", T, |v| {
        condition(v, "RuntimeHandlerCurrent").is_some_and(|c| c["reason"] == "HandlerRemoved")
    });
    let pid = v["status"]["pid"].as_u64();
    kill_task(&s, &dbg_id);
    s.wait("dbg", "restarted after its handler was removed", T, |v| phase(v) == "Running" && v["status"]["pid"].as_u64() != pid);
    std::fs::write(dir.path().join("dbg3.yaml"), manifest("dbg3", &image, Some("runc-debug"))).expect("write");
    let out = s.cli(&["apply", "-f", &dir.path().join("dbg3.yaml").to_string_lossy()]);
    assert!(!out.status.success(), "a removed handler is refused for new containers");
    // An existing one naming it can still be changed (not its handler).
    s.ok(&["delete", "containers", "dbg", "dbg2", "--wait", "--timeout", "60s"]);
    assert!(s.get("dbg").is_none() && s.get("dbg2").is_none());
    assert!(!s.ctr_ids("containers").iter().any(|c| c == &dbg_id), "dbg's container is gone");
    let _ = plain;
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').map(val).collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, v)| acc | (u32::from(*v) << (18 - 6 * i)));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn cli_at(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(steward_bin()).env("KUBECONFIG", kubeconfig).env_remove("STEWARD_SERVER").args(args).output().expect("run steward")
}

/// Reloads that change a handler's arguments, rename it and remove it, while
/// a storm of creates and deletes runs: afterwards every container's wrapper
/// is there, every container restarts per policy (a kill) and deletes.
#[test]
fn reloads_during_a_storm_never_strand_a_container() {
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(dir.path());
    let image = registry.image();
    let file = dir.path().join("config.yaml");
    let handler = |name: &str, gen: u32| format!("runtimes:\n  default: {name}\n  handlers:\n    runc: {{runtime: runc}}\n    {name}: {{runtime: runc, args: [\"--debug\"], env: {{GEN: \"{gen}\"}}}}\n");
    std::fs::write(&file, handler("w", 1)).expect("write config");
    let data = dir.path().join("data");
    let ext = steward_e2e::fault::ExternalContainerd::start(&dir.path().join("containerd"));
    let state = ext.dir.join("state");
    let s = Steward::start_with(&data, &["--config", &file.to_string_lossy(), "--containerd-socket", &ext.socket.to_string_lossy()]);

    // The storm: 24 creates (default handler), a delete after every third.
    let (kubeconfig, img, mdir) = (s.kubeconfig(), image.clone(), dir.path().join("storm"));
    std::fs::create_dir_all(&mdir).expect("mkdir");
    let storm = std::thread::spawn(move || {
        let mut deleted = Vec::new();
        for i in 0..24 {
            let f = mdir.join(format!("s{i}.yaml"));
            std::fs::write(&f, manifest(&format!("s{i:02}"), &img, None)).expect("write");
            let out = cli_at(&kubeconfig, &["apply", "-f", &f.to_string_lossy()]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            if i % 3 == 2 {
                let victim = format!("s{:02}", i - 2);
                let out = cli_at(&kubeconfig, &["delete", "containers", &victim]);
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                deleted.push(victim);
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        deleted
    });
    // Meanwhile: arguments changed, the handler renamed, then removed.
    for (step, text) in [("args changed", handler("w", 2)), ("renamed", handler("w2", 2)), ("removed", config(""))] {
        std::thread::sleep(Duration::from_millis(1200));
        std::fs::write(&file, s.with_net(&text)).expect("write config");
        let (code, body) = reload(&s);
        assert_eq!(code, 200, "{step}: {body}");
        eprintln!("handlers: reload {step}: {body}");
    }
    let deleted = storm.join().expect("storm thread");
    let live: Vec<String> = (0..24).map(|i| format!("s{i:02}")).filter(|n| !deleted.contains(n)).collect();
    let mut handlers_seen = std::collections::BTreeSet::new();
    for name in &live {
        let v = s.wait(name, "Running", T, |v| phase(v) == "Running");
        handlers_seen.insert(v["status"]["runtimeHandler"]["name"].as_str().unwrap_or_default().to_string());
        // Its wrapper (or binary) is there.
        let b = binary_of(&s, &state, &container_id(&v));
        assert!(Path::new(&b).is_file(), "{name}: the binary it was created with, {b}, is missing");
    }
    eprintln!("handlers: storm containers made with {handlers_seen:?}");
    assert!(handlers_seen.len() >= 2, "the reloads landed during the storm: {handlers_seen:?}");
    // Each restarts per policy with what it was made with, then deletes.
    for name in &live {
        let v = s.get(name).expect("object");
        kill_task(&s, &container_id(&v));
        let pid = v["status"]["pid"].as_u64();
        s.wait(name, "restarted", T, |v| phase(v) == "Running" && v["status"]["pid"].as_u64() != pid);
    }
    let mut args = vec!["delete", "containers", "--wait", "--timeout", "120s"];
    args.extend(live.iter().map(String::as_str));
    s.ok(&args);
    let left: Vec<String> = s.ctr_ids("containers").into_iter().filter(|c| c.starts_with("default.s")).collect();
    assert!(left.is_empty(), "containers left: {left:?}");
}
