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
    spec.network = Some("host".into());
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

    // A loopback registry that only speaks TLS, configured as such in
    // certs.d, but not trusted: a certificate error, never a plain-http
    // retry (this machine has no internet, so no real registry here).
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

fn memory_limit(spec_mem: &str) -> Option<Resources> {
    Some(Resources { limits: Some(Limits { memory: Some(Quantity(spec_mem.into())), cpu: None, pids: None }) })
}

/// The kernel OOM-kills a process of a container over its memory limit:
/// the stopped task says so (the cgroup's oom_kill count), an ordinary
/// SIGKILL exit (also 137) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kills_are_told_apart_from_sigkill() {
    let t = TestContainerd::start("oom").await;
    let image = t.busybox().await;
    let hog = unique("hog");
    // 64 MiB into a shell variable, under a 16 MiB limit.
    let mut spec = sh("x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#x}");
    spec.resources = memory_limit("16Mi");
    t.rt.create(&hog, &spec, &image, labels("hog")).await.expect("create");
    t.rt.start(&hog).await.expect("start");
    let stopped = t.wait_stopped(&hog, Duration::from_secs(30)).await;
    if stopped.exit_code != Some(137) {
        panic!("exit {:?}, want 137; log: {}", stopped.exit_code, read_log(&t, &hog).await);
    }
    assert!(stopped.oom_killed, "an OOM kill was not seen: {stopped:?}");

    let killed = unique("killed");
    let mut spec = sh("exec sleep 3600");
    spec.resources = memory_limit("16Mi");
    t.rt.create(&killed, &spec, &image, labels("killed")).await.expect("create");
    t.rt.start(&killed).await.expect("start");
    t.rt.kill(&killed, 9, true).await.expect("kill");
    let stopped = t.wait_stopped(&killed, Duration::from_secs(10)).await;
    assert_eq!(stopped.exit_code, Some(137));
    assert!(!stopped.oom_killed, "a plain SIGKILL reported as OOM: {stopped:?}");
    t.cleanup().await;
}

fn cgroup_memory_limit(t: &TestContainerd, id: &str) -> String {
    std::fs::read_to_string(format!("/sys/fs/cgroup/memory/{}/{id}/memory.limit_in_bytes", t.namespace))
        .unwrap_or_else(|e| panic!("memory cgroup of {id}: {e}"))
        .trim()
        .to_string()
}

fn cgroup_pids_max(t: &TestContainerd, id: &str) -> String {
    std::fs::read_to_string(format!("/sys/fs/cgroup/pids/{}/{id}/pids.max", t.namespace))
        .unwrap_or_else(|e| panic!("pids cgroup of {id}: {e}"))
        .trim()
        .to_string()
}

/// Limits change in place: the running task's cgroup (same pid) and the
/// stored OCI spec (a new task of the container gets them too); labels
/// are set and removed without touching the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_resize_in_place_and_labels_update() {
    let t = TestContainerd::start("resize").await;
    let image = t.busybox().await;
    let id = unique("resize");
    let mut spec = sh("exec sleep 3600");
    spec.resources = memory_limit("64Mi");
    t.rt.create(&id, &spec, &image, labels("resize")).await.expect("create");
    let pid = t.rt.start(&id).await.expect("start");
    assert_eq!(cgroup_memory_limit(&t, &id), "67108864");

    spec.resources = memory_limit("32Mi");
    let new_labels = BTreeMap::from([("steward.dev/limits".to_string(), "memory=33554432,cpu=,pids=".to_string())]);
    t.rt.resize(&id, &spec, new_labels).await.expect("resize");
    assert_eq!(cgroup_memory_limit(&t, &id), "33554432");
    let task = t.task(&id).await.expect("task");
    assert_eq!((task.pid, task.status), (pid, TaskStatus::Running), "resize restarted the task");
    let c = t.rt.find("u-1").await.unwrap().into_iter().find(|c| c.id == id).unwrap();
    assert_eq!(c.label("steward.dev/limits"), "memory=33554432,cpu=,pids=");
    assert_eq!(c.label(LABEL_NAME), "resize", "other labels must stay");

    // A pids limit added in place, then (below) removed.
    spec.resources = Some(Resources {
        limits: Some(Limits { memory: Some(Quantity("32Mi".into())), cpu: None, pids: Some(50) }),
    });
    t.rt.resize(&id, &spec, BTreeMap::new()).await.expect("resize with a pids limit");
    assert_eq!(cgroup_pids_max(&t, &id), "50");

    // A limit removed is lifted, not left behind.
    spec.resources = None;
    t.rt.resize(&id, &spec, BTreeMap::new()).await.expect("resize without limits");
    let unlimited: u64 = cgroup_memory_limit(&t, &id).parse().unwrap();
    assert!(unlimited > 1 << 40, "memory limit not lifted: {unlimited}");
    assert_eq!(cgroup_pids_max(&t, &id), "max", "pids limit not lifted");

    // The stored spec has the new limits: a new task starts with them.
    spec.resources = memory_limit("48Mi");
    t.rt.resize(&id, &spec, BTreeMap::new()).await.expect("resize");
    t.rt.kill(&id, 9, true).await.unwrap();
    t.wait_stopped(&id, Duration::from_secs(10)).await;
    t.rt.delete_task(&id).await.unwrap();
    t.rt.start(&id).await.expect("restart");
    assert_eq!(cgroup_memory_limit(&t, &id), (48u64 << 20).to_string());

    // Limits the spec check refuses, or the kernel does (below what the
    // container uses): a Create error naming the problem, the task untouched.
    spec.resources = memory_limit("1Ki");
    let e = t.rt.resize(&id, &spec, BTreeMap::new()).await.unwrap_err();
    assert!(matches!(&e, RuntimeError::Create(m) if m.contains("spec.resources.limits.memory")), "{e}");
    let hog = unique("holder");
    // 32 MiB in the container's /dev/shm: charged to its cgroup, and
    // nothing the kernel can reclaim without swap.
    let mut holder = sh("head -c 33554432 /dev/zero > /dev/shm/fill; echo holding; exec sleep 3600");
    holder.resources = memory_limit("128Mi");
    t.rt.create(&hog, &holder, &image, labels("holder")).await.expect("create");
    t.rt.start(&hog).await.expect("start");
    t.wait_log(&hog, Duration::from_secs(20), |l| l.contains("holding")).await;
    holder.resources = memory_limit("8Mi");
    let e = t.rt.resize(&hog, &holder, BTreeMap::new()).await.unwrap_err();
    assert!(matches!(&e, RuntimeError::Create(m) if m.contains("cannot apply the new limits")), "{e:?}");
    assert_eq!(cgroup_memory_limit(&t, &hog), (128u64 << 20).to_string());
    assert_eq!(t.task(&hog).await.map(|t| t.status), Some(TaskStatus::Running));

    // Labels: set one, remove one (empty value), the rest untouched.
    t.rt.mark_stopping(&id, steward_schema::Time::now()).await.unwrap();
    let set = BTreeMap::from([(LABEL_STOP_REQUESTED.to_string(), String::new()), ("steward.dev/stop-signal".to_string(), "2".to_string())]);
    t.rt.update_labels(&id, set).await.expect("update labels");
    let c = t.rt.find("u-1").await.unwrap().into_iter().find(|c| c.id == id).unwrap();
    assert!(!c.labels.contains_key(LABEL_STOP_REQUESTED), "{:?}", c.labels);
    assert_eq!((c.label("steward.dev/stop-signal"), c.label(LABEL_NAME)), ("2", "resize"));
    t.cleanup().await;
}

/// A paused (frozen) task is reported as Paused, and deleting its object
/// still works: SIGKILL to all its processes ends a frozen task (runc +
/// the v1 freezer here), so teardown needs no resume step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_task_is_reported_and_can_be_killed() {
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::services::v1::PauseTaskRequest;
    use containerd_client::tonic::Request;
    let t = TestContainerd::start("paused").await;
    let image = t.busybox().await;
    let id = unique("paused");
    t.rt.create(&id, &sh("exec sleep 3600"), &image, labels("paused")).await.expect("create");
    t.rt.start(&id).await.expect("start");
    let ch = containerd_client::connect(t.socket()).await.unwrap();
    let mut req = Request::new(PauseTaskRequest { container_id: id.clone() });
    req.metadata_mut().insert("containerd-namespace", t.namespace.parse().unwrap());
    TasksClient::new(ch).pause(req).await.expect("pause");
    assert_eq!(t.task(&id).await.map(|t| t.status), Some(TaskStatus::Paused));
    t.rt.kill(&id, 9, true).await.expect("kill");
    let stopped = t.wait_stopped(&id, Duration::from_secs(10)).await;
    assert_eq!(stopped.exit_code, Some(137));
    t.cleanup().await;
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
    // kill(2) returns before the process is stopped: wait until every
    // thread of it is (state T), or a call may still be answered.
    let stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|st| st.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
                .unwrap_or(false)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stopped() {
        assert!(Instant::now() < deadline, "containerd {pid} did not stop after SIGSTOP");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

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

/// Wrapper scripts go only when no containerd container names them and
/// they are older than the grace for a create about to use one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_wrappers_are_collected_only_when_no_container_names_them() {
    use steward_controller::containerd::handlers;
    let t = TestContainerd::start("wrappers").await;
    let image = t.busybox().await;
    let id = unique("wrapped");
    let mut spec = sh("sleep 100");
    spec.runtime_class_name = Some("dbg".into());
    t.rt.create(&id, &spec, &image, labels("wrapped")).await.unwrap();
    t.rt.start(&id).await.unwrap();
    let dir = t.dir.path().join("runtimes");
    let used = handlers::wrappers(&dir);
    assert_eq!(used.len(), 1, "{used:?}");
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let age = |p: &std::path::Path| std::fs::File::options().append(true).open(p).unwrap().set_modified(hour_ago).unwrap();
    let stale = dir.join("a".repeat(64));
    let young = dir.join("b".repeat(64));
    std::fs::write(&stale, "#!/bin/sh\n").unwrap();
    std::fs::write(&young, "#!/bin/sh\n").unwrap();
    age(&stale);
    age(&used[0]);
    assert_eq!(t.rt.collect_runtime_wrappers().await.unwrap(), 1);
    assert!(!stale.exists(), "an old wrapper nobody names goes");
    assert!(used[0].exists(), "the one a container names stays, however old");
    assert!(young.exists(), "a young one stays (a create may be about to name it)");
    t.cleanup().await;
}
