//! Harness for tests that run the built `steward` binary against a real
//! `steward serve` on a free loopback port.

#![allow(dead_code)] // each test binary uses a different part of it

pub mod strace;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long `steward serve` may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub const BIN: &str = env!("CARGO_BIN_EXE_steward");

/// A `steward serve --no-controller` process, killed on drop.
pub struct TestServer {
    child: Child,
    url: String,
    /// The CA of an HTTPS server (its DATA/pki/ca.crt).
    ca: Option<std::path::PathBuf>,
    /// The API token `serve` created in its data dir.
    token: String,
    stderr: Arc<Mutex<String>>,
}

impl TestServer {
    /// Starts a server storing its data under `data_dir` and waits until it
    /// prints `listening on 127.0.0.1:PORT`.
    pub fn start(data_dir: &Path) -> TestServer {
        Self::start_with(data_dir, &[])
    }

    /// [`TestServer::start`] with more `serve` flags. These tests are of
    /// the store, the API and the CLI's verbs, over plain HTTP (their
    /// writers are plain reqwest clients); HTTPS, the default, has tests of
    /// its own ([`TestServer::start_tls`], tests/tls.rs) and the e2e suite
    /// runs on it throughout.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> TestServer {
        let mut args = vec!["--plain-http"];
        args.extend_from_slice(extra);
        Self::spawn(data_dir, &args)
    }

    /// `serve` as it is by default: HTTPS, with its CA under DATA/pki.
    pub fn start_tls(data_dir: &Path, extra: &[&str]) -> TestServer {
        Self::spawn(data_dir, extra)
    }

    fn spawn(data_dir: &Path, extra: &[&str]) -> TestServer {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--no-controller"])
            .args(extra)
            .env_remove("STEWARD_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn steward serve");

        // stdout is read line by line on a thread (and drained after the
        // line we want, so the server never blocks on a full pipe).
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });

        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen = Vec::new();
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        break rest.split_whitespace().next().unwrap_or_default().to_string();
                    }
                    seen.push(line);
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // Give the stderr thread a moment to collect the last words.
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "steward serve did not print `listening on` ({e:?}); stdout: {seen:?}; stderr:\n{}",
                        stderr.lock().map(|s| s.clone()).unwrap_or_default()
                    );
                }
            }
        };
        // Keep draining stdout for the life of the server.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let token = std::fs::read_to_string(data_dir.join("token")).expect("serve creates DATA/token").trim().to_string();
        let ca = url.starts_with("https://").then(|| data_dir.join("pki/ca.crt"));
        TestServer { child, url, ca, token, stderr }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA of an HTTPS server.
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// The bearer token the API requires.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// What the server wrote to stderr so far (for failure messages).
    pub fn logs(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs `steward --server URL ARGS...`.
    pub fn steward(&self, args: &[&str]) -> Output {
        run_steward(&self.url, Some(&self.token), self.ca.as_deref(), args, None)
    }

    /// Runs `steward --server URL ARGS...` with `input` on stdin.
    pub fn steward_stdin(&self, args: &[&str], input: &str) -> Output {
        run_steward(&self.url, Some(&self.token), self.ca.as_deref(), args, Some(input))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the client against `url` (which need not be a live server).
pub fn steward_at(url: &str, args: &[&str], input: Option<&str>) -> Output {
    run_steward(url, None, None, args, input)
}

/// `steward --server URL ARGS...`, with no kubeconfig nor default data
/// dir of this machine in the way.
fn run_steward(url: &str, token: Option<&str>, ca: Option<&Path>, args: &[&str], input: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    if let Some(t) = token {
        cmd.env("STEWARD_TOKEN", t);
    }
    if let Some(ca) = ca {
        cmd.arg("--certificate-authority").arg(ca);
    }
    let mut child = cmd
        .env_remove("KUBECONFIG")
        .env("STEWARD_DATA_DIR", "/nonexistent/steward-test")
        .args(["--server", url])
        .args(args)
        .env_remove("STEWARD_SERVER")
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn steward");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        // Dropping stdin closes it, so the client sees the end of input.
    }
    child.wait_with_output().expect("wait for steward")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Panics with both streams unless the command exited with `code`.
#[track_caller]
pub fn expect_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "expected exit {code}, got {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A container manifest with a label `app=LABEL`.
pub fn manifest(name: &str, image: &str, label: &str) -> String {
    format!(
        "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\n  labels: {{app: {label}}}\nspec:\n  image: {image}\n"
    )
}

/// A token only one write's bytes hold: writer `w`, step `step`.
pub fn write_token(w: usize, step: usize) -> String {
    format!("tokw{w}s{step}x")
}

/// The (writer, step) of a [`write_token`].
pub fn parse_token(t: &str) -> Option<(usize, usize)> {
    let rest = t.strip_prefix("tokw")?.strip_suffix('x')?;
    let (w, s) = rest.split_once('s')?;
    Some((w.parse().ok()?, s.parse().ok()?))
}

/// A client that writes object `durable-w{w}`, each write carrying its own
/// [`write_token`] in an annotation: a create when `base` is 0 (step 0),
/// then `patches` merge patches (steps base+1..). Returns what was
/// acknowledged, as (writer, step, token).
pub async fn token_writer(url: String, token: String, w: usize, base: usize, patches: usize) -> Vec<(usize, usize, String)> {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("token header"));
    let client = reqwest::Client::builder().default_headers(h).build().expect("client");
    let base_url = format!("{url}/apis/steward.dev/v1alpha1/namespaces/default/containers");
    let name = format!("durable-w{w}");
    let mut acked = Vec::new();
    if base == 0 {
        let tok = write_token(w, 0);
        let body = serde_json::json!({
            "apiVersion": "steward.dev/v1alpha1", "kind": "Container",
            "metadata": {"name": name, "annotations": {"token": tok}},
            "spec": {"image": "busybox"}
        });
        let r = client.post(&base_url).json(&body).send().await.expect("create");
        assert_eq!(r.status(), 201, "create {name}");
        acked.push((w, 0, tok));
    }
    for i in 1..=patches {
        let tok = write_token(w, base + i);
        let r = client
            .patch(format!("{base_url}/{name}"))
            .header("content-type", "application/merge-patch+json")
            .body(serde_json::json!({"metadata": {"annotations": {"token": tok}}}).to_string())
            .send()
            .await
            .expect("patch");
        assert!(r.status().is_success(), "patch {name}: {}", r.status());
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["metadata"]["annotations"]["token"], tok.as_str());
        acked.push((w, base + i, tok));
    }
    acked
}
