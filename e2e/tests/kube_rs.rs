//! A controller written with kube-rs, the real crate
//! (`examples/kube-controller`), against a default `steward serve` over
//! TLS through the kubeconfig it writes: it sees creates, updates and
//! deletes, keeps its finalizer and annotation on each Container, and
//! recovers by relisting after its resourceVersion was compacted (410).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use steward_e2e::*;

const T: Duration = Duration::from_secs(60);
const FINALIZER: &str = "example.steward.dev/cleanup";

fn example_bin() -> PathBuf {
    let bin = steward_bin().with_file_name("kube-controller");
    assert!(bin.is_file(), "{} not built: run `cargo build -p steward-kube-example` (make test does)", bin.display());
    bin
}

/// The example's stdout lines so far, and where its stderr goes.
struct Lines(Arc<Mutex<Vec<String>>>, PathBuf);

impl Lines {
    fn count(&self, line: &str) -> usize {
        self.0.lock().map(|l| l.iter().filter(|x| x.as_str() == line).count()).unwrap_or(0)
    }

    /// Waits until `line` was printed `times` times.
    fn wait(&self, line: &str, times: usize) {
        let deadline = std::time::Instant::now() + T;
        while self.count(line) < times {
            assert!(
                std::time::Instant::now() < deadline,
                "the kube-rs controller did not print {line:?} ({times}x) within {T:?}\nstdout: {:?}\nstderr: {}",
                self.0.lock().map(|v| v.clone()).unwrap_or_default(),
                std::fs::read_to_string(&self.1).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on the pid of our own child.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

#[test]
fn a_kube_rs_controller_watches_finalizes_and_recovers_from_compaction() {
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(dir.path());
    // A short event log, so a paused watcher's revision is compacted soon.
    let mut s = Steward::start_with(&dir.path().join("data"), &["--event-retention-count", "20", "--compact-interval", "200ms"]);
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let img = registry.image();

    let stderr_path = dir.path().join("kube-controller.err");
    let mut child = Command::new(example_bin())
        .env("KUBECONFIG", s.kubeconfig())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start the kube-rs controller");
    let lines = Lines(Arc::new(Mutex::new(Vec::new())), stderr_path.clone());
    let sink = lines.0.clone();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(mut v) = sink.lock() {
                v.push(l);
            }
        }
    });
    let pid = child.id();
    lines.wait("watching containers", 1);
    lines.wait("relist", 1);

    // Create: finalizer and annotation.
    s.apply(dir.path(), "web", &manifest("web", &img, "  command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 1\n  network: none\n"));
    lines.wait("applied default/web generation=1", 1);
    s.wait("web", "the example's finalizer and annotation", T, |v| {
        let fin = v.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| f.iter().any(|x| x == FINALIZER));
        fin && v.pointer("/metadata/annotations/example.steward.dev~1seen-generation") == Some(&Value::from("1"))
    });
    // Update: a new generation.
    s.apply(dir.path(), "web", &manifest("web", &img, "  command: [sleep, \"3601\"]\n  terminationGracePeriodSeconds: 1\n  network: none\n"));
    lines.wait("applied default/web generation=2", 1);

    // Compaction: the controller is paused, steward restarts (the paused
    // controller's watches drop), and more changes than the event log
    // keeps go by. Resumed, its watches come back with a revision that is
    // gone: 410, a relist, and it carries on. (Paused on a live
    // connection, it would read the changes from its socket instead.)
    let paused_at = s.get("web").and_then(|v| v.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(String::from)).expect("web's resourceVersion");
    signal(pid, libc::SIGSTOP);
    s.kill_and_restart();
    for i in 0..40 {
        let (code, body) = {
            let o = s
                .curl()
                .args(["-w", "\n%{http_code}", "-X", "PATCH", "-H", "Content-Type: application/merge-patch+json", "--data-binary"])
                .arg(format!("{{\"metadata\":{{\"labels\":{{\"round\":\"r{i}\"}}}}}}"))
                .arg(format!("{}/apis/steward.dev/v1alpha1/namespaces/default/containers/web", s.url))
                .output()
                .expect("curl");
            let t = String::from_utf8_lossy(&o.stdout).to_string();
            let (b, c) = t.rsplit_once('\n').map(|(b, c)| (b.to_string(), c.to_string())).unwrap_or_default();
            (c, b)
        };
        assert_eq!(code, "200", "{body}");
    }
    // The store compacts up to its last snapshot (every 2 s): wait until
    // a watch from where the controller paused is refused.
    let watch_from = format!("{}/apis/steward.dev/v1alpha1/containers?watch=true&resourceVersion={paused_at}&timeoutSeconds=1", s.url);
    wait_for("the paused controller's revision to be compacted", T, || {
        let o = s.curl().arg(&watch_from).output().expect("curl");
        String::from_utf8_lossy(&o.stdout).contains("\"code\":410").then_some(())
    });
    let relists_before = lines.count("relist");
    signal(pid, libc::SIGCONT);
    lines.wait("relist", relists_before + 1);
    // And it still works: a new Container is seen and finalized.
    s.apply(dir.path(), "late", &manifest("late", &img, "  command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 1\n  network: none\n"));
    lines.wait("applied default/late generation=1", 1);

    // Delete: the example's cleanup runs, its finalizer goes, the object too.
    s.ok(&["delete", "containers", "web", "late", "--wait", "--timeout", "60s"]);
    lines.wait("cleaned up default/web", 1);
    lines.wait("cleaned up default/late", 1);
    lines.wait("deleted default/web", 1);
    assert!(s.get("web").is_none() && s.get("late").is_none());
    let _ = child.kill();
    let _ = child.wait();
}
