//! The containerd adapter against a REAL containerd (started by the
//! supervisor under a temporary directory). Needs root and
//! `apt-get install containerd runc busybox-static docker-registry skopeo`;
//! a missing tool fails the test with that command.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{unique, TestContainerd, TestRegistry};
use futures_util::StreamExt;
use steward_controller::actual::{Runtime, RuntimeError, TaskStatus, LABEL_MANAGED_BY, LABEL_NAME, LABEL_STOP_REQUESTED};
use steward_schema::quantity::Quantity;
use steward_schema::{ContainerSpec, EnvVar, Limits, Mount, MountType, PullPolicy, Resources};

fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), name.to_string()),
        ("steward.dev/uid".to_string(), "u-1".to_string()),
        ("steward.dev/namespace".to_string(), "default".to_string()),
        ("steward.dev/spec-hash".to_string(), "h1".to_string()),
    ])
}

fn sh(script: &str) -> ContainerSpec {
    ContainerSpec {
        image: steward_testimage::DEFAULT_REF.into(),
        command: vec!["/bin/sh".into(), "-c".into()],
        args: vec![script.into()],
        ..Default::default()
    }
}

/// Snapshots in the test's namespace carrying a label.
async fn snapshots_labelled(t: &TestContainerd, key: &str, value: &str) -> Vec<String> {
    use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
    use containerd_client::services::v1::snapshots::ListSnapshotsRequest;
    use containerd_client::tonic::Request;
    let ch = containerd_client::connect(t.socket()).await.unwrap();
    let mut req = Request::new(ListSnapshotsRequest {
        snapshotter: "overlayfs".into(),
        filters: vec![format!("labels.\"{key}\"=={value}")],
    });
    req.metadata_mut().insert("containerd-namespace", t.namespace.parse().unwrap());
    let mut stream = SnapshotsClient::new(ch).list(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.next().await {
        out.extend(r.unwrap().info.into_iter().map(|i| i.name));
    }
    out
}

async fn wait_for_id(events: &mut futures_util::stream::BoxStream<'static, String>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.next()).await.expect("event in time").expect("stream open");
        if ev == want {
            return;
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_import_create_start_logs_kill_remove() {
    let t = TestContainerd::start("life").await;
    let image = t.busybox().await;
    assert_eq!(image.cmd, ["sh"]);
    assert!(image.digest.starts_with("sha256:"));
    let mut events = t.rt.events();

    let id = unique("life");
    let spec = sh("echo hello; echo oops >&2; trap 'echo bye; exit 3' TERM; while true; do sleep 0.05; done");
    let started = Instant::now();
    t.rt.create(&id, &spec, &image, labels("web")).await.expect("create");
    // Idempotent.
    t.rt.create(&id, &spec, &image, labels("web")).await.expect("create again");
    let create_done = started.elapsed();
    let pid = t.rt.start(&id).await.expect("start");
    let create_start = started.elapsed();
    println!("create {create_done:?}, create+start {create_start:?}");
    assert!(pid > 0 && pid_alive(pid), "pid {pid} alive");
    assert_eq!(t.rt.start(&id).await.expect("start again"), pid, "start is idempotent");

    let log = t.wait_log(&id, Duration::from_secs(10), |l| l.contains("stdout F hello") && l.contains("stderr F oops")).await;
    for line in log.lines() {
        // 2026-11-25T10:00:00.123456789Z stdout F hello
        let ts = line.split(' ').next().unwrap();
        assert!(ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "timestamp in {line:?}");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{line}");
    }
    let read = read_log(&t, &id).await;
    assert!(read.lines().any(|l| l == "hello") && read.lines().any(|l| l == "oops"), "{read}");

    let listed = t.rt.list().await.unwrap();
    let c = listed.iter().find(|c| c.id == id).expect("listed");
    assert_eq!(c.label(LABEL_MANAGED_BY), "steward");
    assert_eq!(c.label(LABEL_NAME), "web");
    assert_eq!(c.image_digest.as_deref(), Some(image.digest.as_str()));
    let task = c.task.clone().expect("task");
    assert_eq!((task.status, task.pid, task.exit_code), (TaskStatus::Running, pid, None));

    let found = t.rt.find("u-1").await.unwrap();
    assert_eq!(found.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    assert!(t.rt.find("someone-else").await.unwrap().is_empty());

    t.rt.mark_stopping(&id, steward_schema::Time(chrono::Utc::now())).await.expect("mark");
    let c = t.rt.list().await.unwrap().into_iter().find(|c| c.id == id).unwrap();
    assert!(!c.label(LABEL_STOP_REQUESTED).is_empty());
    assert_eq!(c.label(LABEL_NAME), "web", "other labels kept");

    t.rt.kill(&id, libc::SIGTERM as u32, false).await.expect("kill");
    let stopped = t.wait_stopped(&id, Duration::from_secs(10)).await;
    assert_eq!(stopped.exit_code, Some(3));
    assert!(stopped.exited_at.is_some());
    t.wait_log(&id, Duration::from_secs(5), |l| l.contains("stdout F bye")).await;

    // The exit reached the event stream (after the initial resync ids).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    while seen < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.next()).await.expect("events within 10s").expect("stream open");
        if ev == id {
            seen += 1; // start, exit (a resync may add more)
        }
    }

    assert!(matches!(t.rt.remove(&id).await, Err(RuntimeError::Unavailable(m)) if m.contains("delete it first")));
    t.rt.delete_task(&id).await.expect("delete task");
    t.rt.delete_task(&id).await.expect("delete task again = ok");
    assert!(!pid_alive(pid) || std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(" Z ")).unwrap_or(true));
    let log = t.rt.log_path(&id).await.expect("log path");
    t.rt.remove(&id).await.expect("remove");
    t.rt.remove(&id).await.expect("remove again = ok");

    assert!(t.rt.list().await.unwrap().is_empty(), "no containers left");
    assert!(snapshots_labelled(&t, LABEL_NAME, "web").await.is_empty(), "no snapshots left");
    assert!(t.task(&id).await.is_none());
    // The logs outlive the container (`logs --previous` after a spec
    // change) and go with the object.
    assert!(log.exists(), "{} kept after the container is removed", log.display());
    let owner = steward_controller::actual::LogOwner { namespace: "default".into(), name: "web".into(), uid: "u-1".into() };
    assert_eq!(t.rt.log_owners().await.unwrap(), [owner]);
    t.rt.remove_logs("default", "web", "u-1").await.expect("remove logs");
    assert!(!log.exists(), "logs removed with the object");
    assert!(t.rt.log_owners().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_limits_are_visible_inside_the_container() {
    let t = TestContainerd::start("limits").await;
    let image = t.busybox().await;
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("hello.txt"), "from the host").unwrap();

    let id = unique("limits");
    let mut spec = sh(concat!(
        "echo cgroup:; cat /proc/self/cgroup; ",
        "echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); ",
        "echo quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us); ",
        "echo pids=$(cat /sys/fs/cgroup/pids/pids.max); ",
        "grep -E '^(Uid|Gid|Groups|NoNewPrivs|CapEff)' /proc/self/status; ",
        "echo cwd=$(pwd); echo host=$(hostname); echo greeting=$GREETING; echo path=$PATH; ",
        "echo bind=$(cat /data/hello.txt); touch /data/x 2>/dev/null && echo bind-writable || echo bind-readonly; ",
        "touch /scratch/y && echo tmpfs-ok; grep ' /scratch ' /proc/mounts; ",
        "echo nofile=$(ulimit -n); ip -o link; echo done",
    ));
    spec.env = vec![EnvVar { name: "GREETING".into(), value: "hi there".into() }];
    spec.working_dir = Some("/tmp".into());
    spec.user = Some("1000:1000".into());
    spec.resources = Some(Resources {
        limits: Some(Limits { memory: Some(Quantity("64Mi".into())), cpu: Some(Quantity("500m".into())), pids: Some(64) }),
    });
    spec.mounts = vec![
        Mount {
            mount_type: MountType::Bind,
            source: Some(host_dir.path().display().to_string()),
            target: "/data".into(),
            read_only: true,
            size_limit: None,
        },
        Mount { mount_type: MountType::Tmpfs, source: None, target: "/scratch".into(), read_only: false, size_limit: Some(Quantity("16Mi".into())) },
    ];
    t.rt.create(&id, &spec, &image, labels("limits")).await.expect("create");
    t.rt.start(&id).await.expect("start");
    let stopped = t.wait_stopped(&id, Duration::from_secs(10)).await;
    let out = read_log(&t, &id).await;
    println!("{out}");
    assert_eq!(stopped.exit_code, Some(0), "{out}");
    assert!(out.contains(&format!("/{}/{id}", t.namespace)), "cgroup path: {out}");
    assert!(out.contains("mem=67108864"), "{out}");
    assert!(out.contains("quota=50000"), "{out}");
    assert!(out.contains("pids=64"), "{out}");
    assert!(out.contains("Uid:\t1000\t1000\t1000\t1000"), "{out}");
    assert!(out.contains("Gid:\t1000\t1000\t1000\t1000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("cwd=/tmp") && out.contains("host=limits") && out.contains("greeting=hi there"), "{out}");
    assert!(out.contains("path=/usr/local/sbin:"), "{out}");
    assert!(out.contains("bind=from the host") && out.contains("bind-readonly"), "{out}");
    assert!(out.contains("tmpfs-ok") && out.contains("size=16384k"), "{out}");
    assert!(out.contains("nofile=1024"), "{out}");
    // network: none (default) = only lo.
    let links: Vec<&str> = out.lines().filter(|l| l.contains(": <") || l.contains("link/")).collect();
    assert!(links.iter().all(|l| l.contains("lo")), "only lo: {links:?}");

    // A user name resolved from the image's /etc/passwd and /etc/group.
    let id2 = unique("named");
    let mut spec2 = sh("id");
    spec2.user = Some("www".into());
    t.rt.create(&id2, &spec2, &image, labels("named")).await.expect("create named user");
    t.rt.start(&id2).await.expect("start");
    t.wait_stopped(&id2, Duration::from_secs(10)).await;
    let out2 = t.wait_log(&id2, Duration::from_secs(5), |l| l.contains("uid=")).await;
    assert!(out2.contains("uid=33(www) gid=33(www) groups=33(www),50(staff)"), "{out2}");
    assert!(out.contains("Groups:\t1000"), "{out}");
    let mut spec3 = sh("id");
    spec3.user = Some("ghost".into());
    let e = t.rt.create(&unique("ghost"), &spec3, &image, labels("ghost")).await.unwrap_err();
    assert!(matches!(&e, RuntimeError::Create(m) if m.contains("\"ghost\" not found")), "{e}");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_shares_the_host_stack() {
    let t = TestContainerd::start("hostnet").await;
    let image = t.busybox().await;
    let id = unique("hostnet");
    let mut spec = sh("ip -o link | wc -l; cat /etc/resolv.conf >/dev/null && echo resolv-ok; touch /etc/hosts 2>/dev/null || echo hosts-ro");
    spec.network = Some(steward_schema::NetworkMode::Host);
    t.rt.create(&id, &spec, &image, labels("hostnet")).await.expect("create");
    t.rt.start(&id).await.expect("start");
    let stopped = t.wait_stopped(&id, Duration::from_secs(10)).await;
    let out = read_log(&t, &id).await;
    assert_eq!(stopped.exit_code, Some(0), "{out}");
    let host_links = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert!(out.starts_with(&format!("{host_links}\n")), "host has {host_links} links: {out}");
    assert!(out.contains("resolv-ok") && out.contains("hosts-ro"), "{out}");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_errors_name_what_to_fix() {
    let t = TestContainerd::start("errs").await;
    let image = t.busybox().await;

    // A command that is not in the image: the error names it.
    let id = unique("nocmd");
    let spec = ContainerSpec { command: vec!["no-such-command".into()], ..sh("") };
    t.rt.create(&id, &spec, &image, labels("nocmd")).await.expect("create");
    let e = t.rt.start(&id).await.unwrap_err();
    println!("missing command: {e}");
    assert!(matches!(&e, RuntimeError::Create(m) if m.contains("no-such-command") && m.contains("not found")), "{e:?}");
    assert!(!format!("{e}").contains("OCI runtime create failed"), "trimmed: {e}");
    assert!(t.task(&id).await.is_none(), "no task left behind");

    // A bind source that does not exist.
    let mut spec = sh("true");
    spec.mounts = vec![Mount {
        mount_type: MountType::Bind,
        source: Some("/nonexistent/steward-src".into()),
        target: "/data".into(),
        read_only: false,
        size_limit: None,
    }];
    let e = t.rt.create(&unique("nobind"), &spec, &image, labels("nobind")).await.unwrap_err();
    assert!(matches!(&e, RuntimeError::Create(m) if m.contains("/nonexistent/steward-src") && m.contains("spec.mounts[0].source")), "{e:?}");

    // A memory limit too small to start.
    let mut spec = sh("true");
    spec.resources = Some(Resources { limits: Some(Limits { memory: Some(Quantity("1Mi".into())), ..Default::default() }) });
    let e = t.rt.create(&unique("tinymem"), &spec, &image, labels("tinymem")).await.unwrap_err();
    assert!(matches!(&e, RuntimeError::Create(m) if m.contains("spec.resources.limits.memory") && m.contains("6Mi")), "{e:?}");

    // Just at the minimum, runc accepts it and the container runs.
    let id = unique("minmem");
    spec.resources = Some(Resources { limits: Some(Limits { memory: Some(Quantity("6Mi".into())), ..Default::default() }) });
    t.rt.create(&id, &spec, &image, labels("minmem")).await.expect("create at 6Mi");
    t.rt.start(&id).await.expect("start at 6Mi");
    assert_eq!(t.wait_stopped(&id, Duration::from_secs(10)).await.exit_code, Some(0));

    // Never: not present.
    let e = t.rt.ensure_image("127.0.0.1:5000/other:1", PullPolicy::Never, Box::new(|_| {})).await.unwrap_err();
    assert!(matches!(&e, RuntimeError::ImageNeverPull(m) if m.contains("other:1")), "{e:?}");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_local_registry() {
    let t = TestContainerd::start("pull").await;
    let registry = TestRegistry::start();
    let built = steward_testimage::build_busybox_oci_archive_named(&t.dir.path().join("img"), steward_testimage::DEFAULT_REF).unwrap();
    registry.push(&built.archive, "busybox:1.36");
    let image = format!("{}/busybox:1.36", registry.addr);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let started = Instant::now();
    let cfg = t
        .rt
        .ensure_image(&image, PullPolicy::Always, Box::new(move |p| s2.lock().unwrap().push(p)))
        .await
        .expect("pull");
    println!("pull of {} bytes: {:?}", built.total_size, started.elapsed());
    assert_eq!(cfg.digest, built.manifest_digest);
    assert_eq!(cfg.top_layer_chain_id, built.diff_id);
    let progress = seen.lock().unwrap().clone();
    let last = progress.last().copied().expect("progress reported");
    assert!(last.total > 0 && last.done == last.total, "{progress:?}");
    assert!(progress.windows(2).all(|w| w[0].done <= w[1].done), "monotonic: {progress:?}");

    // IfNotPresent: no registry needed any more.
    drop(registry);
    let again = t.rt.ensure_image(&image, PullPolicy::IfNotPresent, Box::new(|_| {})).await.expect("present");
    assert_eq!(again, cfg);
    // And it runs.
    let id = unique("pulled");
    t.rt.create(&id, &sh("echo pulled-ok"), &cfg, labels("pulled")).await.expect("create");
    t.rt.start(&id).await.expect("start");
    t.wait_log(&id, Duration::from_secs(10), |l| l.contains("pulled-ok")).await;

    // A tag the registry does not have.
    let registry = TestRegistry::start();
    let missing = format!("{}/nope:1", registry.addr);
    let e = t.rt.ensure_image(&missing, PullPolicy::IfNotPresent, Box::new(|_| {})).await.unwrap_err();
    println!("missing tag: {e}");
    assert!(
        matches!(&e, RuntimeError::ImagePull(m) if m.starts_with(&format!("pull {missing}: ")) && m.contains("manifest unknown") && m.contains("404")),
        "{e:?}"
    );

    // Nothing listening.
    let dead = format!("127.0.0.1:{}", common::free_port());
    let e = t.rt.ensure_image(&format!("{dead}/busybox:1"), PullPolicy::Always, Box::new(|_| {})).await.unwrap_err();
    println!("unreachable: {e}");
    assert!(
        matches!(&e, RuntimeError::ImagePull(m) if m.contains(&format!("cannot reach registry {dead}: connection refused"))),
        "{e:?}"
    );

    // https registries: no TLS in this build, said plainly.
    let e = t.rt.ensure_image("ghcr.io/acme/app:1", PullPolicy::Always, Box::new(|_| {})).await.unwrap_err();
    assert!(matches!(&e, RuntimeError::ImagePull(m) if m.contains("no TLS support")), "{e:?}");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_restarts_containerd_and_events_resume() {
    let t = TestContainerd::start("restart").await;
    let image = t.busybox().await;
    let id = unique("survivor");
    t.rt.create(&id, &sh("while true; do sleep 0.05; done"), &image, labels("survivor")).await.unwrap();
    let pid = t.rt.start(&id).await.unwrap();

    let mut events = t.rt.events();
    // The initial resync names every managed container.
    wait_for_id(&mut events, &id).await;

    let sup = t.supervisor.as_ref().unwrap();
    let old = sup.pid();
    assert!(old > 0);
    // SAFETY: kill(2) on the containerd the supervisor started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let restarted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = sup.pid();
        if p != 0 && p != old && steward_controller::containerd::supervisor::answers(sup.socket(), Duration::from_secs(1)).await {
            break;
        }
        assert!(Instant::now() < deadline, "containerd not restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("containerd back after {:?}", restarted.elapsed());
    // The stream re-subscribed and resynced.
    wait_for_id(&mut events, &id).await;
    // The container outlived containerd.
    assert!(pid_alive(pid));
    let task = t.task(&id).await.expect("task after restart");
    assert_eq!((task.status, task.pid), (TaskStatus::Running, pid));
    // Live events flow again.
    t.rt.kill(&id, libc::SIGKILL as u32, true).await.unwrap();
    wait_for_id(&mut events, &id).await;
    t.wait_stopped(&id, Duration::from_secs(10)).await;
    t.cleanup().await;
}


/// The container's output as the API's log endpoint reads it.
async fn read_log(t: &common::TestContainerd, id: &str) -> String {
    let base = t.rt.log_path(id).await.expect("log path");
    String::from_utf8(steward_logfile::read(&steward_logfile::log_files(&base), &Default::default()).unwrap()).unwrap()
}

/// Sends SIGCONT on drop, so a failing test never leaves containerd stopped.
struct Continue(i32);

impl Drop for Continue {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the containerd this test started.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_containerd_fails_calls_within_the_deadline_and_recovers() {
    let t = TestContainerd::start("hung").await;
    let mut cfg = steward_controller::containerd::ContainerdConfig::new(t.socket(), t.log_root());
    cfg.namespace = t.namespace.clone();
    cfg.call_timeout = Duration::from_secs(1);
    let rt = steward_controller::containerd::ContainerdRuntime::connect(cfg).await.expect("connect");
    assert!(rt.find("u-1").await.expect("find while containerd answers").is_empty());
    assert_eq!(rt.probe().await, Ok(()));
    let (ready_tx, mut ready) = tokio::sync::watch::channel(None);
    let watcher = tokio::spawn({
        let rt = rt.clone();
        async move { rt.watch_readiness(ready_tx, Duration::from_millis(200)).await }
    });

    let pid = t.supervisor.as_ref().map(|s| s.pid()).unwrap_or(0) as i32;
    assert!(pid > 0, "the supervisor started containerd");
    // SAFETY: kill(2) on the containerd this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let guard = Continue(pid);

    // What a reconcile pass does first: it must fail, not hang.
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), rt.find("u-1")).await.expect("find returned (no hang)");
    let took = started.elapsed();
    assert!(matches!(&r, Err(RuntimeError::Unavailable(_))), "{r:?}");
    assert!(took < Duration::from_secs(3), "failed after {took:?}, deadline 1 s");
    let r = tokio::time::timeout(Duration::from_secs(10), rt.start("nope")).await.expect("start returned (no hang)");
    assert!(r.is_err(), "{r:?}");
    // Readiness says so, with a reason.
    let reason = tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| r.is_some()))
        .await
        .expect("not ready within 10 s")
        .expect("watcher alive")
        .clone();
    assert!(reason.as_deref().is_some_and(|r| r.contains("containerd")), "{reason:?}");

    drop(guard); // SIGCONT
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| r.is_none()))
        .await
        .expect("ready again within 10 s")
        .expect("watcher alive");
    assert!(rt.find("u-1").await.expect("find after recovery").is_empty());
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_per_id_logs_of_containers_that_are_gone_are_collected() {
    let t = TestContainerd::start("oldlogs").await;
    let root = t.log_root().join(&t.namespace);
    std::fs::create_dir_all(&root).unwrap();
    for f in ["default.gone.1.log", "default.gone.1.log.1", "default.gone.1.previous.log", "default.kept.1.log"] {
        std::fs::write(root.join(f), "2026-11-25T10:00:00Z stdout F x\n").unwrap();
    }
    let keep = std::collections::HashSet::from(["default.kept.1".to_string()]);
    assert_eq!(t.rt.collect_legacy_logs(&keep).await.unwrap(), 1);
    let mut left: Vec<String> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["default.kept.1.log"]);
}
