//! steward end to end: real containerd, real registry, real `steward serve`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use steward_e2e::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn runs_with_env_args_workdir_user_limits_and_logs() {
    let e = Env::start();
    let s = &e.steward;
    let script = "echo hello from steward; echo GREETING=$GREETING; id; pwd; cat /proc/self/cgroup; \
                  for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max; do \
                  [ -f $f ] && echo $f=$(cat $f); done; exec sleep 3600";
    let out = s.apply(
        e.dir.path(),
        "web",
        &manifest(
            "web",
            &e.registry.image(),
            &format!(
                "  command: [/bin/sh, -c]\n  args: [\"{script}\"]\n  env: [{{name: GREETING, value: bonjour}}]\n  workingDir: /tmp\n  user: \"1000:1000\"\n  resources:\n    limits: {{memory: 64Mi, cpu: \"500m\", pids: 128}}\n"
            ),
        ),
    );
    assert!(out.contains("container.steward.dev/web created"), "{out}");
    let v = s.wait("web", "Running", T, |v| phase(v) == "Running");
    let pid = v["status"]["pid"].as_u64().expect("pid") as u32;
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} is not a live process");
    // The task containerd runs has that pid.
    let tasks = s.ctr(&["tasks", "ls"]);
    let id = container_id(&v);
    assert!(tasks.lines().any(|l| l.contains(&id) && l.contains(&pid.to_string()) && l.contains("RUNNING")), "{tasks}");
    assert!(v["status"]["imageDigest"].as_str().unwrap_or_default().starts_with("sha256:"));
    assert_eq!(v["status"]["conditions"][0]["status"], "True");

    let logs = wait_for("the container's output", T, || {
        let l = s.ok(&["logs", "web"]);
        l.contains("pids").then_some(l)
    });
    assert!(logs.contains("hello from steward"), "{logs}");
    assert!(logs.contains("GREETING=bonjour"), "{logs}");
    assert!(logs.contains("uid=1000 gid=1000"), "{logs}");
    assert!(logs.lines().any(|l| l == "/tmp"), "workingDir: {logs}");
    assert!(logs.contains(&(64 * 1024 * 1024).to_string()), "memory limit not applied: {logs}");
    assert!(logs.lines().any(|l| l.contains("pids") && l.ends_with("=128")), "pids limit not applied: {logs}");
    // Timestamps and tail.
    let ts = s.ok(&["logs", "web", "--timestamps", "--tail", "1"]);
    assert_eq!(ts.lines().count(), 1, "{ts}");
    assert!(ts.starts_with("20"), "{ts}");
}

#[test]
fn exits_follow_restart_policies_with_crash_loop_backoff() {
    let e = Env::start();
    let s = &e.steward;
    let img = e.registry.image();
    s.apply(e.dir.path(), "ok", &manifest("ok", &img, "  command: [/bin/sh, -c, \"echo done; exit 0\"]\n  restartPolicy: OnFailure\n"));
    s.apply(e.dir.path(), "crash", &manifest("crash", &img, "  command: [/bin/sh, -c, \"echo crashing; exit 1\"]\n  restartPolicy: Always\n"));
    let v = s.wait("ok", "Succeeded", T, |v| phase(v) == "Succeeded");
    assert_eq!(v["status"]["state"]["terminated"]["exitCode"], 0);
    let v = s.wait("crash", "CrashLoopBackOff after a restart", T, |v| {
        waiting_reason(v) == "CrashLoopBackOff" && v["status"]["restartCount"].as_i64() >= Some(1)
    });
    assert_eq!(v["status"]["lastState"]["terminated"]["exitCode"], 1);
    // The 10 s backoff passes and it restarts again.
    let v = s.wait("crash", "a second restart", Duration::from_secs(40), |v| v["status"]["restartCount"].as_i64() >= Some(2));
    assert!(v["status"]["state"]["waiting"]["message"].as_str().unwrap_or_default().contains("back-off") || phase(&v) == "Running");
    let prev = s.ok(&["logs", "crash", "--previous"]);
    assert!(prev.contains("crashing"), "{prev}");
}

#[test]
fn spec_change_replaces_the_container_and_delete_cleans_containerd() {
    let e = Env::start();
    let s = &e.steward;
    let img = e.registry.image();
    s.apply(e.dir.path(), "app", &manifest("app", &img, "  command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 2\n"));
    let v1 = s.wait("app", "Running", T, |v| phase(v) == "Running");
    let old = container_id(&v1);
    let out = s.apply(e.dir.path(), "app", &manifest("app", &img, "  command: [sleep, \"3601\"]\n  terminationGracePeriodSeconds: 2\n"));
    assert!(out.contains("configured"), "{out}");
    let v2 = s.wait("app", "a new container running", T, |v| phase(v) == "Running" && container_id(v) != old && v["status"]["pid"].is_u64());
    let new = container_id(&v2);
    let containers = s.ctr_ids("containers");
    assert_eq!(containers, std::slice::from_ref(&new), "old container {old} still in containerd");

    let out = s.ok(&["delete", "containers", "app", "--wait", "--timeout", "60s"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(s.get("app").is_none());
    assert!(s.ctr_ids("containers").is_empty(), "container left in containerd");
    assert!(s.ctr(&["tasks", "ls"]).lines().skip(1).all(|l| l.trim().is_empty()), "task left in containerd");
    let snaps = s.ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"]);
    assert!(!snaps.lines().any(|l| l.contains(&new) || l.contains(&old)), "snapshot left: {snaps}");
}

#[test]
fn image_import_then_run_without_a_registry() {
    let e = Env::start();
    let s = &e.steward;
    let built = steward_testimage::build_busybox_oci_archive_named(&e.dir.path().join("airgap"), "airgap.local/busybox:offline").expect("image");
    let out = s.ok(&["image", "import", &built.archive.to_string_lossy()]);
    assert!(out.contains("airgap.local/busybox:offline"), "{out}");
    s.apply(
        e.dir.path(),
        "offline",
        &manifest("offline", "airgap.local/busybox:offline", "  imagePullPolicy: Never\n  command: [sleep, \"3600\"]\n"),
    );
    s.wait("offline", "Running", T, |v| phase(v) == "Running");
}

#[test]
fn bad_input_ends_in_an_actionable_status_and_leaks_nothing() {
    let e = Env::start();
    let s = &e.steward;
    let img = e.registry.image();
    let dir = e.dir.path();
    s.apply(dir, "nope", &manifest("nope", &format!("{}/nope:1", e.registry.addr), ""));
    let port = free_port();
    s.apply(dir, "unreach", &manifest("unreach", &format!("127.0.0.1:{port}/busybox:1"), ""));
    s.apply(dir, "nocmd", &manifest("nocmd", &img, "  command: [/no/such/binary]\n"));
    s.apply(dir, "nomount", &manifest("nomount", &img, "  command: [sleep, \"3600\"]\n  mounts: [{type: bind, source: /no/such/dir, target: /data}]\n"));
    s.apply(dir, "tinymem", &manifest("tinymem", &img, "  command: [sleep, \"3600\"]\n  resources: {limits: {memory: 1Ki}}\n"));
    s.apply(dir, "good", &manifest("good", &img, "  command: [sleep, \"3600\"]\n"));

    let v = s.wait("nope", "ImagePullBackOff", T, |v| waiting_reason(v) == "ImagePullBackOff");
    let msg = v["status"]["state"]["waiting"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("nope") && msg.contains("manifest unknown"), "the registry's message is not shown: {msg}");
    // Settled: the status stays ImagePullBackOff (not rewritten) and the
    // registry hears nothing more of `nope` while the 10 s backoff lasts
    // (one pull attempt: a few requests, not thousands).
    let nope_requests = || e.registry.logs().matches("/v2/nope/").count();
    let seen = nope_requests();
    assert!((1..=10).contains(&seen), "{seen} registry requests for one pull attempt:\n{}", e.registry.logs());
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        let now = s.get("nope").expect("nope");
        assert_eq!(waiting_reason(&now), "ImagePullBackOff", "{now:#}");
        assert_eq!(now["metadata"]["resourceVersion"], v["metadata"]["resourceVersion"], "status rewritten while backing off: {now:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(nope_requests(), seen, "pulled again inside the backoff:\n{}", e.registry.logs());
    let v = s.wait("unreach", "ErrImagePull/ImagePullBackOff", T, |v| waiting_reason(v).contains("ImagePull"));
    assert!(v["status"]["state"]["waiting"]["message"].as_str().unwrap_or_default().contains(&port.to_string()));
    let v = s.wait("nocmd", "CreateContainerError", T, |v| waiting_reason(v) == "CreateContainerError");
    assert!(v["status"]["state"]["waiting"]["message"].as_str().unwrap_or_default().contains("/no/such/binary"), "{v:#?}");
    let v = s.wait("nomount", "CreateContainerError", T, |v| waiting_reason(v) == "CreateContainerError");
    assert!(v["status"]["state"]["waiting"]["message"].as_str().unwrap_or_default().contains("/no/such/dir"), "{v:#?}");
    s.wait("tinymem", "an error state", T, |v| {
        waiting_reason(v) == "CreateContainerError" || waiting_reason(v) == "CrashLoopBackOff" || phase(v) == "Failed"
    });
    s.wait("good", "Running", T, |v| phase(v) == "Running");

    for n in ["nope", "unreach", "nocmd", "nomount", "tinymem"] {
        s.ok(&["delete", "containers", n, "--wait", "--timeout", "60s"]);
    }
    let left = s.ctr_ids("containers");
    assert_eq!(left.len(), 1, "leaked containers: {left:?}");
    assert!(left[0].starts_with("default.good."), "{left:?}");
}

#[test]
fn containers_outlive_steward_and_are_adopted() {
    let mut e = Env::start();
    let img = e.registry.image();
    e.steward.apply(e.dir.path(), "survivor", &manifest("survivor", &img, "  command: [sleep, \"3600\"]\n"));
    let v = e.steward.wait("survivor", "Running", T, |v| phase(v) == "Running");
    let pid = v["status"]["pid"].as_u64().expect("pid");
    // SIGKILL steward: the container keeps running; a new steward on the
    // same data dir adopts it: same pid, no restart.
    e.steward.kill_and_restart();
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the container died with steward");
    let v = e.steward.wait("survivor", "Running after restart", T, |v| phase(v) == "Running");
    assert_eq!(v["status"]["pid"].as_u64(), Some(pid));
    assert_eq!(v["status"]["restartCount"].as_i64().unwrap_or(0), 0);
    e.steward.ok(&["delete", "containers", "survivor", "--wait"]);
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true));
}

/// Two stewards (two data dirs) on ONE containerd namespace: neither
/// collects the other's containers, at start or in its sweeps, even for an
/// object of the same name; a stray container created behind steward's
/// back with its labels and its store's uid is gone within seconds (from
/// containerd's create event: A sweeps only every 5 minutes).
#[test]
fn two_stewards_share_a_containerd_namespace_and_collect_only_their_own() {
    use std::os::unix::fs::PermissionsExt;
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(dir.path());
    let mut a = Steward::start(&dir.path().join("a"));
    let sock = a.containerd_socket().to_string_lossy().into_owned();
    let mut b = Steward::start_with(&dir.path().join("b"), &["--containerd-socket", &sock, "--gc-interval", "1s"]);
    // The store's identity lives in the store (steward.db), not in a file
    // beside it.
    for s in [&a, &b] {
        assert!(!s.data_dir.join("store-uid").exists(), "{}", s.data_dir.display());
        let mode = std::fs::metadata(s.data_dir.join("steward.db")).expect("steward.db").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The same name in both stores: a GET of default/web in either finds an
    // object, of another uid.
    let m = manifest("web", &registry.image(), "  command: [sleep, \"3600\"]\n");
    a.apply(dir.path(), "web", &m);
    b.apply(dir.path(), "web", &m);
    let running = |s: &Steward| {
        let v = s.wait("web", "Running", T, |v| phase(v) == "Running");
        (container_id(&v), v["status"]["pid"].as_u64().expect("pid"))
    };
    let (id_a, pid_a) = running(&a);
    let (id_b, pid_b) = running(&b);
    assert_ne!(id_a, id_b);
    let store_of = |id: &str| {
        let info: Value = serde_json::from_str(&a.ctr(&["containers", "info", id])).expect("ctr containers info: JSON");
        info["Labels"]["steward.dev/store"].as_str().unwrap_or_default().to_string()
    };
    let (store_a, store_b) = (store_of(&id_a), store_of(&id_b));
    assert!(!store_a.is_empty() && !store_b.is_empty(), "containers without a store label");
    assert_ne!(store_a, store_b);

    // Restarts sweep at start; B sweeps every second.
    a.kill_and_restart();
    b.kill_and_restart();
    let alive = |pid: u64| Path::new(&format!("/proc/{pid}")).exists();
    let watch_until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < watch_until {
        assert!(alive(pid_a) && alive(pid_b), "a container was killed:\nA:\n{}\nB:\n{}", tail(&a.proc.logs(), 30), tail(&b.proc.logs(), 30));
        let ids = a.ctr_ids("containers");
        assert!(ids.contains(&id_a) && ids.contains(&id_b), "{ids:?}\nB:\n{}", tail(&b.proc.logs(), 30));
        std::thread::sleep(Duration::from_millis(200));
    }
    for s in [&a, &b] {
        let v = s.get("web").expect("web");
        assert_eq!(v["status"]["restartCount"].as_i64(), Some(0), "{v:#}");
    }

    // Strays behind steward's back, made with ctr: one with A's labels and
    // uid (object gone) and one of a third store (never touched).
    let image = registry.image();
    let stray = |id: &str, store: &str| {
        a.ctr(&[
            "containers", "create",
            "--label", "steward.dev/managed-by=steward",
            "--label", &format!("steward.dev/store={store}"),
            "--label", "steward.dev/uid=no-such-uid",
            "--label", "steward.dev/namespace=default",
            "--label", "steward.dev/name=ghost",
            &image, id,
        ]);
    };
    stray("stray-other", "some-third-store");
    stray("stray-a", &store_a);
    wait_for("the stray with A's store uid to be collected", Duration::from_secs(10), || {
        (!a.ctr_ids("containers").contains(&"stray-a".to_string())).then_some(())
    });
    assert!(a.ctr_ids("containers").contains(&"stray-other".to_string()), "a third store's container was collected");
    assert!(alive(pid_a) && alive(pid_b));
    drop(b);
    drop(a);
}

/// A spec change replaces the container; `logs --previous` then shows the
/// replaced container's output (as the kubelet does), `logs` the new one's,
/// and deleting the object removes its log files.
#[test]
fn logs_previous_after_a_spec_change_and_logs_go_with_the_object() {
    let e = Env::start();
    let s = &e.steward;
    let img = e.registry.image();
    let m = |word: &str| manifest("talk", &img, &format!("  command: [/bin/sh, -c, \"echo said {word}; exec sleep 3600\"]\n  terminationGracePeriodSeconds: 1\n"));
    s.apply(e.dir.path(), "talk", &m("first"));
    let v1 = s.wait("talk", "Running", T, |v| phase(v) == "Running");
    wait_for("the first container's output", T, || s.ok(&["logs", "talk"]).contains("said first").then_some(()));
    s.apply(e.dir.path(), "talk", &m("second"));
    let v2 = s.wait("talk", "Running the new spec", T, |v| phase(v) == "Running" && container_id(v) != container_id(&v1));
    assert_ne!(container_id(&v1), container_id(&v2));
    wait_for("the second container's output", T, || s.ok(&["logs", "talk"]).contains("said second").then_some(()));
    let current = s.ok(&["logs", "talk"]);
    assert!(!current.contains("said first"), "{current}");
    let previous = s.ok(&["logs", "talk", "--previous"]);
    assert!(previous.contains("said first") && !previous.contains("said second"), "{previous}");

    let uid = v2["metadata"]["uid"].as_str().expect("uid").to_string();
    let dir = s.data_dir.join("logs/steward").join(format!("default_talk_{uid}"));
    assert!(dir.is_dir(), "{}", dir.display());
    s.ok(&["delete", "containers", "talk", "--wait", "--timeout", "60s"]);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// `GET path` on steward's API without a token (health endpoints are
/// open), over HTTPS with its CA: the status code and body.
fn http_get(s: &Steward, path: &str) -> (u16, String) {
    let o = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(s.ca())
        .arg(format!("{}{path}", s.url))
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}; apt-get install -y curl"));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Sends SIGCONT on drop, so a failing test never leaves containerd stopped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the containerd this test stopped.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// A containerd that stops answering (SIGSTOP): `/readyz` says 503 with the
/// reason, a container applied meanwhile waits (reconciles fail at the call
/// deadline rather than hang); after SIGCONT all is well again.
#[test]
fn a_hung_containerd_makes_readyz_fail_and_steward_recovers() {
    let e = Env::start();
    let s = &e.steward;
    assert_eq!(http_get(s, "/readyz").0, 200);
    let data = s.data_dir.to_string_lossy().into_owned();
    let containerd: Vec<i32> = pids_mentioning(&data)
        .into_iter()
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "containerd"))
        .collect();
    assert_eq!(containerd.len(), 1, "steward's supervised containerd: {containerd:?}");
    // SAFETY: kill(2) on the containerd of this test's steward.
    assert_eq!(unsafe { libc::kill(containerd[0], libc::SIGSTOP) }, 0);
    let resume = Resume(containerd[0]);
    let (code, body) = wait_for("/readyz to say 503", Duration::from_secs(15), || {
        let r = http_get(s, "/readyz");
        (r.0 == 503).then_some(r)
    });
    assert_eq!(code, 503);
    assert!(body.contains("containerd"), "{body}");
    // The API itself still answers.
    assert_eq!(http_get(s, "/healthz").0, 200);
    s.apply(e.dir.path(), "late", &manifest("late", &e.registry.image(), "  command: [sleep, \"3600\"]\n"));
    assert_ne!(phase(&s.get("late").expect("late")), "Running");
    drop(resume);
    wait_for("/readyz to say 200 again", Duration::from_secs(15), || (http_get(s, "/readyz").0 == 200).then_some(()));
    s.wait("late", "Running after containerd answers again", Duration::from_secs(90), |v| phase(v) == "Running");
}

/// Twelve containers of one image nobody has pulled yet, with two reconcile
/// slots: one pull, shared; the registry serves the manifest and each blob
/// once, and no pull collides with another on containerd's content lock.
#[test]
fn twelve_containers_of_one_uncached_image_fetch_each_blob_once() {
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(dir.path());
    let s = Steward::start_with(&dir.path().join("data"), &["--concurrency", "2"]);
    let mut docs = Vec::new();
    for i in 0..12 {
        docs.push(manifest(&format!("p{i}"), &registry.image(), "  command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 1\n"));
    }
    s.apply(dir.path(), "twelve", &docs.join("---\n"));
    for i in 0..12 {
        s.wait(&format!("p{i}"), "Running", T, |v| phase(v) == "Running");
    }
    let log = registry.logs();
    let mut fetches: std::collections::BTreeMap<String, usize> = Default::default();
    for line in log.lines().filter(|l| l.contains("response completed") && l.contains("http.request.method=GET")) {
        // logrus quotes a value only when it needs to.
        let Some(rest) = line.split("http.request.uri=").nth(1) else { continue };
        let uri = match rest.strip_prefix('"') {
            Some(q) => q.split('"').next().unwrap_or_default(),
            None => rest.split(' ').next().unwrap_or_default(),
        };
        if uri.contains("/blobs/") || uri.contains("/manifests/") {
            *fetches.entry(uri.to_string()).or_default() += 1;
        }
    }
    assert!(fetches.keys().any(|u| u.contains("/blobs/")), "no blob fetch seen in the registry log:\n{}", tail(&log, 20));
    for (uri, n) in &fetches {
        assert_eq!(*n, 1, "{uri} fetched {n} times: {fetches:#?}");
    }
    assert!(fetches.keys().any(|u| u.contains("/manifests/")), "{fetches:#?}");
    eprintln!("registry requests: {fetches:#?}");
    let slog = s.proc.logs();
    assert!(!slog.contains("locked"), "a pull hit containerd's content lock:\n{}", tail(&slog, 40));
    assert!(!slog.contains("ErrImagePull"), "{}", tail(&slog, 40));
}
