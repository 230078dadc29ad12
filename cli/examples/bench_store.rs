//! `make bench-store`: steward's store, measured through its HTTP API, next
//! to etcd 3.4 under the same load from the same client code.
//!
//! A measurement, not a test: it prints a table and exits 0 even when a
//! target is missed; it exits non-zero only when the run itself failed
//! (a server would not start, a revision moved on an unchanged apply,
//! watch events went missing, ...).
//!
//! Run: `cargo build --release -p steward && cargo run --release -p steward --example bench_store`
//! (the Makefile target does both). It builds nothing itself: it starts the
//! release `steward` next to this example (or `$STEWARD_BIN`) and
//! `/usr/bin/etcd` (or `$ETCD_BIN`), each on a fresh temporary data dir on
//! 127.0.0.1, and kills both and removes the dirs when it ends.
//!
//! Knobs (env, or the flags in parentheses):
//!   BENCH_SECS (--secs)            seconds per throughput run, default 5
//!   BENCH_CLIENTS (--clients)      the "many clients" count, default 64
//!   BENCH_WATCHERS (--watchers)    watchers, default 100
//!   BENCH_WATCH_RATE (--watch-rate) creates/s during the watch run, default 500
//!   BENCH_WATCH_SECS (--watch-secs) seconds of the watch run, default 5
//!   BENCH_OBJECTS (--objects)      objects for the list and RSS, default 10000
//!   BENCH_TMPDIR                   where the data dirs go (default $TMPDIR);
//!                                  must be a real disk, or fsync costs nothing
//!
//! The HTTP client is hyper's HTTP/1 connection API directly (one TCP
//! connection per client, keep-alive, no pool): the leanest client there is,
//! so the load generator costs as little CPU as possible. Its own CPU time
//! is printed next to the servers' so readers can judge whether it was the
//! bottleneck (the machine may have only 2 cores for everything).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const CONTAINERS: &str = "/apis/steward.dev/v1alpha1/namespaces/default/containers";
const BODY_BYTES: usize = 500;
const SENT_KEY: &str = "bench.steward.dev/sent-ns";
const ETCD_HINT: &str = "apt-get install -y etcd-server";
/// The whole run must end well within this.
const RUN_LIMIT: Duration = Duration::from_secs(170);

// ---------------------------------------------------------------- options

struct Opts {
    secs: f64,
    clients: usize,
    watchers: usize,
    watch_rate: u64,
    watch_secs: f64,
    objects: usize,
    apply_objects: usize,
    tmp: PathBuf,
    steward_bin: PathBuf,
    etcd_bin: PathBuf,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut vals: BTreeMap<String, String> = BTreeMap::new();
        for (flag, env) in [
            ("secs", "BENCH_SECS"),
            ("clients", "BENCH_CLIENTS"),
            ("watchers", "BENCH_WATCHERS"),
            ("watch-rate", "BENCH_WATCH_RATE"),
            ("watch-secs", "BENCH_WATCH_SECS"),
            ("objects", "BENCH_OBJECTS"),
        ] {
            if let Ok(v) = std::env::var(env) {
                vals.insert(flag.into(), v);
            }
        }
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let Some(flag) = a.strip_prefix("--") else { bail!("unexpected argument {a:?}") };
            let (flag, v) = match flag.split_once('=') {
                Some((f, v)) => (f.to_string(), v.to_string()),
                None => (flag.to_string(), args.next().ok_or_else(|| anyhow!("--{flag} needs a value"))?),
            };
            if !["secs", "clients", "watchers", "watch-rate", "watch-secs", "objects"].contains(&flag.as_str()) {
                bail!("unknown flag --{flag} (known: --secs --clients --watchers --watch-rate --watch-secs --objects)");
            }
            vals.insert(flag, v);
        }
        fn get<T: std::str::FromStr>(vals: &BTreeMap<String, String>, k: &str, d: T) -> Result<T> {
            match vals.get(k) {
                None => Ok(d),
                Some(v) => v.parse().map_err(|_| anyhow!("--{k}: {v:?} is not a valid number")),
            }
        }
        let steward_bin = match std::env::var_os("STEWARD_BIN") {
            Some(p) => PathBuf::from(p),
            None => {
                // target/release/examples/bench_store -> target/release/steward
                let exe = std::env::current_exe()?;
                exe.parent().and_then(Path::parent).map(|d| d.join("steward")).unwrap_or_default()
            }
        };
        let etcd_bin = std::env::var_os("ETCD_BIN").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/etcd".into());
        let tmp = std::env::var_os("BENCH_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let o = Opts {
            secs: get(&vals, "secs", 5.0)?,
            clients: get(&vals, "clients", 64)?,
            watchers: get(&vals, "watchers", 100)?,
            watch_rate: get(&vals, "watch-rate", 500)?,
            watch_secs: get(&vals, "watch-secs", 5.0)?,
            objects: get(&vals, "objects", 10_000)?,
            apply_objects: 1_000,
            tmp,
            steward_bin,
            etcd_bin,
        };
        if o.secs <= 0.0 || o.clients == 0 || o.watchers == 0 || o.watch_rate == 0 || o.watch_secs <= 0.0 {
            bail!("durations, rates and counts must be positive");
        }
        Ok(o)
    }
}

// ------------------------------------------------------------- utilities

/// Nanoseconds since the first call: one clock for senders and receivers.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// user+system CPU seconds of a process (`/proc/PID/stat`, USER_HZ = 100).
fn cpu_secs(pid: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    // Fields after the ")" that ends the command name: state is field 3,
    // utime 14, stime 15.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (t(14) + t(15)) / 100.0
}

fn rss_mb(pid: u32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// Bytes a process caused to be written to storage (`/proc/PID/io`).
fn write_bytes(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Flushes every dirty page on the machine, so one server's writeback does
/// not land in the next server's measurement.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(300));
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn fs_type(p: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// -------------------------------------------------------------- processes

/// A server process this run started; killed (and reaped) on drop.
struct Server {
    name: &'static str,
    child: std::process::Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn cpu(&self) -> f64 {
        cpu_secs(&self.pid().to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("[bench] stopped {} (pid {})", self.name, self.child.id());
    }
}

fn start_steward(bin: &Path, dir: &Path) -> Result<Server> {
    if !bin.is_file() {
        bail!("no steward binary at {}: run `cargo build --release -p steward` first (make bench-store does), or set STEWARD_BIN", bin.display());
    }
    let data = dir.join("data");
    let log = dir.join("steward.log");
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-controller", "--plain-http", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut tx = Some(tx);
        // Keep draining after the first line so the server never blocks on stdout.
        while let Some(Ok(line)) = lines.next() {
            if let Some(tx) = tx.take() {
                let _ = tx.send(line);
            }
        }
    });
    let mut server = Server { name: "steward", child, addr: "127.0.0.1:0".parse()?, log };
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) => l,
        Err(_) => bail!(
            "steward did not print `listening on ...` within 30 s (status {:?}); its log:\n{}",
            server.child.try_wait().ok().flatten(),
            tail(&server.log, 20)
        ),
    };
    let addr = line
        .strip_prefix("listening on http://")
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| anyhow!("steward's first stdout line is {line:?}, not `listening on http://127.0.0.1:PORT`"))?;
    server.addr = addr;
    let token = std::fs::read_to_string(data.join("token")).context("steward's API token (DATA/token)")?;
    if let Ok(mut t) = TOKENS.lock() {
        t.push((addr, token.trim().to_string()));
    }
    eprintln!("[bench] steward pid {} on {addr}, data {}", server.pid(), data.display());
    Ok(server)
}

async fn start_etcd(bin: &Path, dir: &Path) -> Result<Server> {
    if !bin.is_file() {
        bail!("etcd is not installed ({} missing): install it with `{ETCD_HINT}` (make deps-bench does), or set ETCD_BIN", bin.display());
    }
    let (client, peer) = (free_port()?, free_port()?);
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    let log = dir.join("etcd.log");
    let child = Command::new(bin)
        .arg("--name=default")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={c}"))
        .arg(format!("--advertise-client-urls={c}"))
        .arg(format!("--listen-peer-urls={p}"))
        .arg(format!("--initial-advertise-peer-urls={p}"))
        .arg(format!("--initial-cluster=default={p}"))
        .args(["--logger=zap", "--log-level=warn"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.join("etcd.stderr.log"))?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut server = Server { name: "etcd", child, addr: format!("127.0.0.1:{client}").parse()?, log: dir.join("etcd.stderr.log") };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = server.child.try_wait()? {
            bail!("etcd exited ({st}) before it was ready; its log:\n{}", tail(&server.log, 20));
        }
        if let Ok(mut c) = Conn::open(server.addr).await {
            if let Ok((StatusCode::OK, _, body)) = c.send(Method::GET, "/health", None, Bytes::new()).await {
                if body.windows(6).any(|w| w == b"\"true\"") {
                    break;
                }
            }
        }
        if Instant::now() > deadline {
            bail!("etcd not healthy on {} within 30 s; its log:\n{}", server.addr, tail(&server.log, 20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("[bench] etcd pid {} on {}", server.pid(), server.addr);
    Ok(server)
}

// ------------------------------------------------------------- HTTP client

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    tx: SendRequest<Full<Bytes>>,
    authority: String,
    /// `Bearer <token>` for steward (etcd runs without auth).
    auth: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

/// API tokens of the steward servers started, by address.
static TOKENS: std::sync::Mutex<Vec<(SocketAddr, String)>> = std::sync::Mutex::new(Vec::new());

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn> {
        let s = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let auth = TOKENS.lock().ok().and_then(|t| t.iter().find(|(a, _)| *a == addr).map(|(_, t)| format!("Bearer {t}")));
        Ok(Conn { tx, authority: addr.to_string(), auth, task })
    }

    async fn start(&mut self, method: Method, path: &str, ctype: Option<&str>, body: Bytes) -> Result<hyper::Response<Incoming>> {
        self.tx.ready().await?;
        let mut b = Request::builder().method(method).uri(path).header(HOST, &self.authority);
        if let Some(a) = &self.auth {
            b = b.header(hyper::header::AUTHORIZATION, a);
        }
        if let Some(ct) = ctype {
            b = b.header(CONTENT_TYPE, ct);
        }
        Ok(self.tx.send_request(b.body(Full::new(body))?).await?)
    }

    async fn send(&mut self, method: Method, path: &str, ctype: Option<&str>, body: Bytes) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let (parts, body) = self.start(method, path, ctype, body).await?.into_parts();
        let bytes = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, bytes))
    }
}

/// A short label for an unexpected answer: the code and the Status reason.
fn error_label(code: StatusCode, body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let reason = v
        .get("reason")
        .and_then(|r| r.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned());
    format!("HTTP {} {reason}", code.as_u16())
}

// ----------------------------------------------------------------- objects

/// A Container manifest of exactly `BODY_BYTES` bytes (padded with an annotation).
fn container(name: &str, sent_ns: Option<u64>) -> Bytes {
    let build = |pad: usize| {
        let sent = sent_ns.map(|t| format!(r#""{SENT_KEY}":"{t}","#)).unwrap_or_default();
        format!(
            r#"{{"apiVersion":"steward.dev/v1alpha1","kind":"Container","metadata":{{"name":"{name}","annotations":{{{sent}"pad":"{}"}}}},"spec":{{"image":"127.0.0.1:5000/busybox:1.36"}}}}"#,
            "x".repeat(pad)
        )
    };
    let bare = build(0).len();
    Bytes::from(build(BODY_BYTES.saturating_sub(bare)))
}

/// The etcd v3 gateway put of the same object under a Kubernetes-like key.
fn etcd_put(name: &str) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.encode(format!("/registry/containers/default/{name}"));
    let value = b64.encode(container(name, None));
    Bytes::from(format!(r#"{{"key":"{key}","value":"{value}"}}"#))
}

struct Req {
    method: Method,
    path: String,
    ctype: Option<&'static str>,
    body: Bytes,
}

fn create_req(name: &str) -> Req {
    Req { method: Method::POST, path: CONTAINERS.into(), ctype: Some("application/json"), body: container(name, None) }
}

fn apply_req(name: &str) -> Req {
    Req {
        method: Method::PATCH,
        path: format!("{CONTAINERS}/{name}?fieldManager=bench"),
        ctype: Some("application/apply-patch+yaml"),
        body: container(name, None),
    }
}

// ------------------------------------------------------------------- load

enum Stop {
    /// Each client sends until this much time passed.
    After(Duration),
    /// Clients share this many requests.
    Count(u64),
}

#[derive(Default)]
struct Load {
    ok: u64,
    wall: Duration,
    errors: BTreeMap<String, u64>,
    /// Latency of each successful request, sorted, in ns.
    lat: Vec<u64>,
    client_cpu: f64,
    server_cpu: f64,
    /// Bytes the server wrote to storage during the run.
    server_writes: f64,
}

impl Load {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64()
    }
    fn describe(&self, what: &str, clients: usize) -> String {
        let w = self.wall.as_secs_f64();
        let mut s = format!(
            "{what}, {clients} client(s): {} ok in {:.2} s = {:.0}/s; latency p50 {:.2} ms p99 {:.2} ms; CPU: server {:.0}%, load generator {:.0}% (of 1 core)",
            self.ok,
            w,
            self.rate(),
            ms(pct(&self.lat, 0.50)),
            ms(pct(&self.lat, 0.99)),
            100.0 * self.server_cpu / w,
            100.0 * self.client_cpu / w,
        );
        s.push_str(&format!(
            "; server wrote {:.1} MB to storage ({:.1} KB per op)",
            self.server_writes / 1e6,
            self.server_writes / 1e3 / self.ok.max(1) as f64
        ));
        for (e, n) in &self.errors {
            s.push_str(&format!("\n    error x{n}: {e}"));
        }
        s
    }
}

type MakeReq = Arc<dyn Fn(usize, u64) -> Req + Send + Sync>;

/// `clients` concurrent clients, each on its own connection, send what
/// `make(client, seq)` gives until `stop`; only `expect` counts as done.
async fn load(server: &Server, clients: usize, stop: Stop, expect: StatusCode, make: MakeReq) -> Result<Load> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(server.addr).await?);
    }
    let stop = Arc::new(stop);
    let shared = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let (stop, shared, gate, make) = (stop.clone(), shared.clone(), gate.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Load::default();
            gate.wait().await;
            let start = Instant::now();
            let mut seq = 0u64;
            loop {
                let n = match &*stop {
                    Stop::After(d) => {
                        if start.elapsed() >= *d {
                            break;
                        }
                        seq += 1;
                        seq
                    }
                    Stop::Count(total) => {
                        let n = shared.fetch_add(1, Ordering::Relaxed);
                        if n >= *total {
                            break;
                        }
                        n
                    }
                };
                let r = make(i, n);
                let t0 = now_ns();
                match conn.send(r.method, &r.path, r.ctype, r.body).await {
                    Ok((code, _, _)) if code == expect => {
                        out.ok += 1;
                        out.lat.push(now_ns() - t0);
                    }
                    Ok((code, _, body)) => *out.errors.entry(error_label(code, &body)).or_default() += 1,
                    Err(e) => {
                        *out.errors.entry(format!("transport: {e:#}")).or_default() += 1;
                        // The connection is gone: open a new one, or give up.
                        match Conn::open(conn.authority.parse().expect("addr")).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            out
        }));
    }
    let (cc0, sc0, wb0) = (cpu_secs("self"), server.cpu(), write_bytes(server.pid()));
    gate.wait().await;
    let start = Instant::now();
    let mut total = Load::default();
    for t in tasks {
        let r = t.await?;
        total.ok += r.ok;
        total.lat.extend(r.lat);
        for (e, n) in r.errors {
            *total.errors.entry(e).or_default() += n;
        }
    }
    total.wall = start.elapsed();
    total.client_cpu = cpu_secs("self") - cc0;
    total.server_cpu = server.cpu() - sc0;
    total.server_writes = write_bytes(server.pid()) - wb0;
    total.lat.sort_unstable();
    Ok(total)
}

async fn list_revision(c: &mut Conn) -> Result<String> {
    let (code, _, body) = c.send(Method::GET, &format!("{CONTAINERS}?limit=1"), None, Bytes::new()).await?;
    if code != StatusCode::OK {
        bail!("GET {CONTAINERS}?limit=1: {}", error_label(code, &body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v.pointer("/metadata/resourceVersion")
        .and_then(|r| r.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the list has no metadata.resourceVersion"))
}

// ------------------------------------------------------------------ watch

struct WatchResult {
    /// Delivery latencies (receive - send), sorted, ns.
    lat: Vec<u64>,
    expected: u64,
    writes_ok: u64,
    write_errors: BTreeMap<String, u64>,
    write_lat: Vec<u64>,
    odd: u64,
    wall: Duration,
    client_cpu: f64,
    server_cpu: f64,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Latency of one watch line, if it is one of ours.
fn line_latency(line: &[u8], now: u64, key: &[u8]) -> Option<u64> {
    let at = find(line, key)? + key.len();
    let digits = &line[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    let sent: u64 = std::str::from_utf8(&digits[..end]).ok()?.parse().ok()?;
    Some(now.saturating_sub(sent))
}

async fn watch_run(server: &Server, o: &Opts) -> Result<WatchResult> {
    let mut c = Conn::open(server.addr).await?;
    let rv = list_revision(&mut c).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let odd = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for w in 0..o.watchers {
        let mut conn = Conn::open(server.addr).await?;
        let path = format!("{CONTAINERS}?watch=true&resourceVersion={rv}");
        let resp = conn.start(Method::GET, &path, None, Bytes::new()).await?;
        if resp.status() != StatusCode::OK {
            bail!("watch {w}: HTTP {}", resp.status());
        }
        let mut body = resp.into_body();
        let (delivered, odd, mut stop) = (delivered.clone(), odd.clone(), stop_rx.clone());
        readers.push(tokio::spawn(async move {
            let _conn = conn;
            let key = format!(r#""{SENT_KEY}":""#).into_bytes();
            let mut lat = Vec::new();
            let mut buf: Vec<u8> = Vec::new();
            loop {
                let frame = tokio::select! {
                    _ = stop.changed() => break,
                    f = body.frame() => f,
                };
                let Some(Ok(frame)) = frame else { break };
                let now = now_ns();
                let Ok(data) = frame.into_data() else { continue };
                buf.extend_from_slice(&data);
                let mut start = 0;
                while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                    let line = &buf[start..start + nl];
                    match (line.starts_with(br#"{"type":"ADDED""#), line_latency(line, now, &key)) {
                        (true, Some(l)) => {
                            lat.push(l);
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            odd.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    start += nl + 1;
                }
                buf.drain(..start);
            }
            lat
        }));
    }
    // Give the server a moment to register every watcher before writing.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Writers: a steady schedule, write k due at start + k/rate, spread over
    // enough connections that a slow commit does not delay the next send.
    let total = (o.watch_rate as f64 * o.watch_secs).round() as u64;
    let period = Duration::from_secs_f64(1.0 / o.watch_rate as f64);
    let writers = 16u64.min(total.max(1));
    let (cc0, sc0) = (cpu_secs("self"), server.cpu());
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for j in 0..writers {
        let mut conn = Conn::open(server.addr).await?;
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errs, mut lat) = (0u64, BTreeMap::<String, u64>::new(), Vec::new());
            let mut k = j;
            while k < total {
                tokio::time::sleep_until(start + period * k as u32).await;
                let sent = now_ns();
                let body = container(&format!("w-{k}"), Some(sent));
                match conn.send(Method::POST, CONTAINERS, Some("application/json"), body).await {
                    Ok((StatusCode::CREATED, _, _)) => {
                        ok += 1;
                        lat.push(now_ns() - sent);
                    }
                    Ok((code, _, body)) => *errs.entry(error_label(code, &body)).or_default() += 1,
                    Err(e) => *errs.entry(format!("transport: {e:#}")).or_default() += 1,
                }
                k += writers;
            }
            (ok, errs, lat)
        }));
    }
    let (mut writes_ok, mut write_errors, mut write_lat) = (0, BTreeMap::new(), Vec::new());
    for t in tasks {
        let (ok, errs, lat) = t.await?;
        writes_ok += ok;
        write_lat.extend(lat);
        for (e, n) in errs {
            *write_errors.entry(e).or_default() += n;
        }
    }
    let expected = writes_ok * o.watchers as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = start.elapsed();
    let (client_cpu, server_cpu) = (cpu_secs("self") - cc0, server.cpu() - sc0);
    let _ = stop_tx.send(true);
    let mut lat = Vec::with_capacity(expected as usize);
    for r in readers {
        lat.extend(r.await?);
    }
    lat.sort_unstable();
    write_lat.sort_unstable();
    Ok(WatchResult {
        lat,
        expected,
        writes_ok,
        write_errors,
        write_lat,
        odd: odd.load(Ordering::Relaxed),
        wall,
        client_cpu,
        server_cpu,
    })
}

// ------------------------------------------------------------------- main

struct Row {
    measure: String,
    steward: String,
    etcd: String,
    ratio: String,
    target: String,
    result: &'static str,
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

async fn run(o: Opts) -> Result<()> {
    now_ns();
    let mut failures: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    if !o.etcd_bin.is_file() {
        bail!("etcd is not installed ({} missing): install it with `{ETCD_HINT}` (make deps-bench does), or set ETCD_BIN", o.etcd_bin.display());
    }
    std::fs::create_dir_all(&o.tmp)?;
    let tmp = tempfile::Builder::new().prefix("steward-bench-").tempdir_in(&o.tmp)?;
    let fstype = fs_type(tmp.path());
    eprintln!("[bench] data dirs under {} ({fstype})", tmp.path().display());
    if fstype == "tmpfs" || fstype == "ramfs" {
        notes.push(format!("WARNING: data dirs are on {fstype}: fsync is free there, so durable-write figures mean little; set BENCH_TMPDIR to a disk"));
    }
    let dur = Duration::from_secs_f64(o.secs);
    let hi = o.clients;

    // 1. steward throughput, on its own server so later phases start clean.
    let dir_a = tmp.path().join("steward-throughput");
    std::fs::create_dir_all(&dir_a)?;
    let (s1, s64, rss_a) = {
        let srv = start_steward(&o.steward_bin, &dir_a)?;
        let mk = |tag: usize| -> MakeReq { Arc::new(move |c, n| create_req(&format!("c{tag}-{c}-{n}"))) };
        settle();
        eprintln!("[bench] steward: creates, 1 client, {:.0} s", o.secs);
        let s1 = load(&srv, 1, Stop::After(dur), StatusCode::CREATED, mk(1)).await?;
        settle();
        eprintln!("[bench] steward: creates, {hi} clients, {:.0} s", o.secs);
        let s64 = load(&srv, hi, Stop::After(dur), StatusCode::CREATED, mk(hi)).await?;
        let rss = rss_mb(srv.pid())?;
        (s1, s64, rss)
    };
    let objs_a = s1.ok + s64.ok;

    // 2. etcd, same clients, same duration, same body.
    let dir_e = tmp.path().join("etcd");
    std::fs::create_dir_all(&dir_e)?;
    let (e1, e64) = {
        let srv = start_etcd(&o.etcd_bin, &dir_e).await?;
        let mk = |tag: usize| -> MakeReq {
            Arc::new(move |c, n| Req {
                method: Method::POST,
                path: "/v3/kv/put".into(),
                ctype: Some("application/json"),
                body: etcd_put(&format!("c{tag}-{c}-{n}")),
            })
        };
        settle();
        eprintln!("[bench] etcd: puts, 1 client, {:.0} s", o.secs);
        let e1 = load(&srv, 1, Stop::After(dur), StatusCode::OK, mk(1)).await?;
        settle();
        eprintln!("[bench] etcd: puts, {hi} clients, {:.0} s", o.secs);
        let e64 = load(&srv, hi, Stop::After(dur), StatusCode::OK, mk(hi)).await?;
        (e1, e64)
    };

    // 3-6. A fresh steward: apply, watch, list, RSS.
    let dir_b = tmp.path().join("steward");
    std::fs::create_dir_all(&dir_b)?;
    let srv = start_steward(&o.steward_bin, &dir_b)?;
    let mut c = Conn::open(srv.addr).await?;

    // 3. apply of unchanged objects.
    eprintln!("[bench] steward: apply {} objects, then again unchanged", o.apply_objects);
    let n_apply = o.apply_objects as u64;
    let created = load(&srv, 16, Stop::Count(n_apply), StatusCode::CREATED, Arc::new(|_, n| apply_req(&format!("a-{n}")))).await?;
    if created.ok != n_apply {
        failures.push(format!("apply: created {} of {n_apply} objects ({:?})", created.ok, created.errors));
    }
    settle();
    let rv_before = list_revision(&mut c).await?;
    let mut unchanged = 0u64;
    let mut apply_odd: BTreeMap<String, u64> = BTreeMap::new();
    let (cc0, sc0) = (cpu_secs("self"), srv.cpu());
    let t0 = Instant::now();
    for n in 0..n_apply {
        let r = apply_req(&format!("a-{n}"));
        let (code, headers, body) = c.send(r.method, &r.path, r.ctype, r.body).await?;
        let outcome = headers.get("x-steward-apply").and_then(|v| v.to_str().ok()).unwrap_or("(none)");
        if code == StatusCode::OK && outcome == "unchanged" {
            unchanged += 1;
        } else {
            let label = if code == StatusCode::OK { format!("x-steward-apply: {outcome}") } else { error_label(code, &body) };
            *apply_odd.entry(label).or_default() += 1;
        }
    }
    let apply_wall = t0.elapsed();
    let (apply_ccpu, apply_scpu) = (cpu_secs("self") - cc0, srv.cpu() - sc0);
    let rv_after = list_revision(&mut c).await?;
    if rv_before != rv_after {
        failures.push(format!("apply of unchanged objects moved the revision: {rv_before} -> {rv_after}"));
    }
    if unchanged != n_apply {
        failures.push(format!("apply: {unchanged} of {n_apply} answered `x-steward-apply: unchanged`; others: {apply_odd:?}"));
    }

    // 4. watch delivery under write load.
    settle();
    eprintln!(
        "[bench] steward: {} watchers, {} creates/s for {:.0} s",
        o.watchers, o.watch_rate, o.watch_secs
    );
    let w = watch_run(&srv, &o).await?;
    let delivered = w.lat.len() as u64;
    if delivered != w.expected {
        failures.push(format!(
            "watch: delivered {delivered} events, expected {} ({} writes x {} watchers)",
            w.expected, w.writes_ok, o.watchers
        ));
    }
    if !w.write_errors.is_empty() {
        failures.push(format!("watch: creates failed: {:?}", w.write_errors));
    }

    // 5. fill to `objects`, then list.
    let have = n_apply + w.writes_ok;
    let need = (o.objects as u64).saturating_sub(have);
    eprintln!("[bench] steward: creating {need} more objects ({hi} clients) to reach {}", o.objects);
    let fill = load(&srv, hi, Stop::Count(need), StatusCode::CREATED, Arc::new(|_, n| create_req(&format!("f-{n}")))).await?;
    if fill.ok != need {
        failures.push(format!("fill: created {} of {need} ({:?})", fill.ok, fill.errors));
    }
    settle();
    let rss_before_list = rss_mb(srv.pid())?;
    let (code, _, body) = c.send(Method::GET, CONTAINERS, None, Bytes::new()).await?;
    if code != StatusCode::OK {
        bail!("GET {CONTAINERS}: {}", error_label(code, &body));
    }
    let items = serde_json::from_slice::<serde_json::Value>(&body)?
        .get("items")
        .and_then(|i| i.as_array().map(Vec::len))
        .unwrap_or(0);
    if items != o.objects.max(have as usize) {
        failures.push(format!("list: {items} items, expected {}", o.objects.max(have as usize)));
    }
    let mut list_ms = Vec::new();
    let mut list_bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let (code, _, body) = c.send(Method::GET, CONTAINERS, None, Bytes::new()).await?;
        list_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if code != StatusCode::OK {
            bail!("GET {CONTAINERS}: {}", error_label(code, &body));
        }
        list_bytes = body.len();
    }
    list_ms.sort_by(f64::total_cmp);
    let list_median = list_ms[list_ms.len() / 2];
    let rss_after_list = rss_mb(srv.pid())?;
    drop(c);
    drop(srv);

    // ---- the table
    let ratio = |s: f64, e: f64| s / e;
    let r1 = ratio(s1.rate(), e1.rate());
    let r64 = ratio(s64.rate(), e64.rate());
    let wp50 = ms(pct(&w.lat, 0.50));
    let wp99 = ms(pct(&w.lat, 0.99));
    let wmax = ms(w.lat.last().copied().unwrap_or(0));
    let rss = rss_before_list.max(rss_after_list);
    let rows = vec![
        Row {
            measure: "creates/s, 1 client".into(),
            steward: format!("{:.0}", s1.rate()),
            etcd: format!("{:.0}", e1.rate()),
            ratio: format!("{r1:.2}x"),
            target: "≥ 1x etcd".into(),
            result: met(r1 >= 1.0),
        },
        Row {
            measure: format!("creates/s, {hi} clients"),
            steward: format!("{:.0}", s64.rate()),
            etcd: format!("{:.0}", e64.rate()),
            ratio: format!("{r64:.2}x"),
            target: "≥ 1.5x etcd".into(),
            result: met(r64 >= 1.5),
        },
        Row {
            measure: format!("apply {} unchanged (wall; list revision before → after)", o.apply_objects),
            steward: format!("{:.0} ms; rv {rv_before} → {rv_after}", apply_wall.as_secs_f64() * 1e3),
            etcd: "—".into(),
            ratio: "—".into(),
            target: "revision unchanged".into(),
            result: met(rv_before == rv_after && unchanged == n_apply),
        },
        Row {
            measure: format!("watch delivery p50 / p99, {} watchers", o.watchers),
            steward: format!("{wp50:.1} / {wp99:.1} ms (max {wmax:.1}; {delivered}/{} events)", w.expected),
            etcd: "—".into(),
            ratio: "—".into(),
            target: "p99 ≤ 20 ms".into(),
            result: met(wp99 <= 20.0 && delivered == w.expected),
        },
        Row {
            measure: format!("list {} (median of 5)", o.objects),
            steward: format!("{list_median:.1} ms ({:.1} MB)", list_bytes as f64 / 1e6),
            etcd: "—".into(),
            ratio: "—".into(),
            target: "≤ 150 ms".into(),
            result: met(list_median <= 150.0),
        },
        Row {
            measure: format!("RSS at {} objects", o.objects),
            steward: format!("{rss:.1} MB"),
            etcd: "—".into(),
            ratio: "—".into(),
            target: "≤ 100 MB".into(),
            result: met(rss <= 100.0),
        },
    ];
    println!();
    println!("| measure | steward | etcd 3.4 | ratio | target | result |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} | {} | {} |", r.measure, r.steward, r.etcd, r.ratio, r.target, r.result);
    }
    println!();
    println!("Each throughput run: {:.0} s, ~{BODY_BYTES}-byte bodies, one keep-alive HTTP/1.1 connection per client, only 201 (steward) / 200 (etcd) counted.", o.secs);
    println!("Data dirs on {fstype}; steward WAL synchronous=FULL, etcd default (fdatasync per commit); `sync` before every measured run. {} CPUs.", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!();
    println!("Details (CPU % is of one core; server and load generator share the machine):");
    println!("- {}", s1.describe("steward creates", 1));
    println!("- {}", s64.describe("steward creates", hi));
    println!("- {}", e1.describe("etcd puts", 1));
    println!("- {}", e64.describe("etcd puts", hi));
    println!(
        "- apply {} unchanged, 1 connection, sequential: {:.0} ms = {:.0}/s; CPU: server {:.0}%, load generator {:.0}%",
        o.apply_objects,
        apply_wall.as_secs_f64() * 1e3,
        n_apply as f64 / apply_wall.as_secs_f64(),
        100.0 * apply_scpu / apply_wall.as_secs_f64(),
        100.0 * apply_ccpu / apply_wall.as_secs_f64()
    );
    println!(
        "- watch: {} creates ok at {}/s ({} failed), commit latency p50 {:.2} ms p99 {:.2} ms; delivery p50 {wp50:.2} p99 {wp99:.2} max {wmax:.2} ms over {delivered} events ({} other lines); CPU over {:.1} s: server {:.0}%, load generator {:.0}%",
        w.writes_ok,
        o.watch_rate,
        w.write_errors.values().sum::<u64>(),
        ms(pct(&w.write_lat, 0.5)),
        ms(pct(&w.write_lat, 0.99)),
        w.odd,
        w.wall.as_secs_f64(),
        100.0 * w.server_cpu / w.wall.as_secs_f64(),
        100.0 * w.client_cpu / w.wall.as_secs_f64(),
    );
    println!("- {}", fill.describe("steward fill creates", hi));
    println!(
        "- list {}: runs {} ms; {} bytes",
        o.objects,
        list_ms.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>().join(", "),
        list_bytes
    );
    println!("- RSS at {} objects: {rss_before_list:.1} MB before the lists, {rss_after_list:.1} MB after", o.objects);
    println!("- RSS of the throughput server at the end of its runs ({objs_a} objects): {rss_a:.1} MB");
    for n in &notes {
        println!("- {n}");
    }
    if !failures.is_empty() {
        println!();
        for f in &failures {
            println!("FAILED: {f}");
        }
        bail!("{} check(s) failed", failures.len());
    }
    Ok(())
}

fn main() {
    let opts = match Opts::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench_store: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let outcome = rt.block_on(async { tokio::time::timeout(RUN_LIMIT, run(opts)).await });
    // Dropping the runtime drops every task and with them the connections;
    // the servers were dropped (killed) inside `run`.
    rt.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("bench_store: FAILED: {e:#}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("bench_store: FAILED: the run took longer than {} s", RUN_LIMIT.as_secs());
            std::process::exit(1);
        }
    }
}
