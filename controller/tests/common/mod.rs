//! Test harness: a real containerd under a temporary directory (started by
//! steward's own [`Supervisor`]), a runtime on a namespace of the test's
//! own, and clean-up of whatever the test left running, even on panic.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use steward_controller::actual::{Runtime, RuntimeError, Task};
use steward_controller::containerd::supervisor::Supervisor;
use steward_controller::containerd::{ContainerdConfig, ContainerdRuntime};

/// Fails (never skips) when a tool the test needs is missing.
pub fn require(bin: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(found, "{bin} is required by this test: install it with `apt-get install {package}`");
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "these tests drive a real containerd and must run as root");
}

/// A unique suffix: ids must be unique across concurrently running
/// containerds, since runc keeps state in /run/containerd/runc/<ns>/<id>.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{nanos:x}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub struct TestContainerd {
    pub dir: tempfile::TempDir,
    pub supervisor: Option<Supervisor>,
    pub rt: ContainerdRuntime,
    pub namespace: String,
}

impl TestContainerd {
    pub async fn start(test: &str) -> TestContainerd {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        require_root();
        require("containerd", "containerd runc");
        require("runc", "runc");
        let dir = tempfile::Builder::new().prefix("stw-").tempdir().expect("tempdir");
        let supervisor = Supervisor::start(dir.path()).await.expect("start containerd");
        let namespace = unique(test);
        let rt = connect(supervisor.socket(), &dir.path().join("logs"), &namespace).await;
        TestContainerd { dir, supervisor: Some(supervisor), rt, namespace }
    }

    pub fn socket(&self) -> PathBuf {
        self.supervisor.as_ref().map(|s| s.socket().to_path_buf()).unwrap_or_default()
    }

    pub fn log_root(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Imports the test busybox image and returns its config.
    pub async fn busybox(&self) -> steward_controller::actual::ImageConfig {
        let built = steward_testimage::build_busybox_oci_archive_named(&self.dir.path().join("img"), steward_testimage::DEFAULT_REF)
            .expect("build test image");
        let names = self.rt.import_archive(&built.archive).await.expect("import");
        assert_eq!(names, [steward_testimage::DEFAULT_REF]);
        self.rt
            .ensure_image(steward_testimage::DEFAULT_REF, steward_schema::PullPolicy::Never, Box::new(|_| {}))
            .await
            .expect("image present after import")
    }

    pub async fn task(&self, id: &str) -> Option<Task> {
        let all = self.rt.list().await.expect("list");
        all.into_iter().find(|c| c.id == id).and_then(|c| c.task)
    }

    /// Polls until the task is stopped; returns it.
    pub async fn wait_stopped(&self, id: &str, within: Duration) -> Task {
        let deadline = Instant::now() + within;
        loop {
            if let Some(t) = self.task(id).await {
                if t.status == steward_controller::actual::TaskStatus::Stopped {
                    return t;
                }
            }
            assert!(Instant::now() < deadline, "task {id} did not stop within {within:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls the container's log until `pred` holds.
    pub async fn wait_log(&self, id: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            // The newest run attempt's file (it appears when the task starts).
            let path = self.rt.log_path(id).await.expect("log path");
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if pred(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "log {} never matched within {within:?}; it holds:\n{text}", path.display());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kill, delete and remove everything in the namespace.
    pub async fn cleanup(&self) {
        cleanup(&self.rt).await
    }
}

pub async fn connect(socket: &Path, log_root: &Path, namespace: &str) -> ContainerdRuntime {
    let mut cfg = ContainerdConfig::new(socket, log_root);
    cfg.namespace = namespace.to_string();
    cfg.log_driver_exe = PathBuf::from(env!("CARGO_BIN_EXE_steward-log-driver"));
    // Runtime handlers: the defaults, and one with arguments (a wrapper)
    // under the test's own directory.
    let mut runtimes = steward_config::Runtimes::default();
    runtimes.handlers.insert("dbg".into(), steward_config::Handler { runtime: "runc".into(), args: vec!["--debug".into()], ..Default::default() });
    let dir = log_root.parent().unwrap_or(log_root).join("runtimes");
    cfg.live.handlers = steward_controller::containerd::handlers::Handlers::new(&runtimes, dir);
    ContainerdRuntime::connect(cfg).await.expect("connect to containerd")
}

pub async fn cleanup(rt: &ContainerdRuntime) {
    let Ok(all) = rt.list().await else { return };
    for c in all {
        if c.task.is_some() {
            let _ = rt.kill(&c.id, 9, true).await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                match rt.delete_task(&c.id).await {
                    Ok(()) => break,
                    Err(RuntimeError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(25)).await,
                    Err(_) => break,
                }
            }
        }
        let _ = rt.remove(&c.id).await;
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        // Runs on a thread of its own: Drop cannot await, and the test's
        // runtime may be shutting down.
        let rt = self.rt.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(r) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                r.block_on(async { tokio::time::timeout(Duration::from_secs(20), cleanup(&rt)).await.ok() });
            }
        })
        .join();
        drop(self.supervisor.take());
        // runc's per-namespace state directory (empty once all is deleted).
        let _ = std::fs::remove_dir(format!("/run/containerd/runc/{}", self.namespace));
    }
}

/// A docker-registry (Debian's distribution 2.8) on a free loopback port.
pub struct TestRegistry {
    pub child: std::process::Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    pub fn start() -> TestRegistry {
        require("docker-registry", "docker-registry");
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.yml");
        let addr = format!("127.0.0.1:{port}");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("write registry config");
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        TestRegistry { child, addr, _dir: dir }
    }

    /// `skopeo copy oci-archive:ARCHIVE docker://ADDR/REPO`.
    pub fn push(&self, archive: &Path, repo_tag: &str) {
        require("skopeo", "skopeo");
        let out = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr))
            .output()
            .expect("run skopeo");
        assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
