//! `make bench-reconcile`: how fast steward brings 50 containers up and
//! down compared with driving the SAME containerd (steward's supervised
//! one) directly with `ctr`, and with podman when it is installed; plus
//! steward's idle CPU and RSS with the 50 running. Prints a markdown table.
//!
//! (a) `ctr -n bench run -d IMAGE ID sleep 3600`, 50 one after another
//!     (namespace `bench`, which steward does not watch): the floor.
//! (b) one `steward apply -f DIR` of 50 manifests, timed until a watch
//!     has seen all 50 with `status.phase == Running`.
//! (c) deletes: ctr `tasks kill -s SIGKILL` + `tasks delete` +
//!     `containers delete`, one after another; `steward delete containers
//!     <50> --wait`. The manifests set `terminationGracePeriodSeconds: 0`
//!     so steward, too, SIGKILLs at once (`sleep` as PID 1 ignores SIGTERM:
//!     with the default 10 s grace steward would wait 10 s by design).
//! (d) CPU of steward and of containerd over 30 s idle, 50 running.
//! (e) steward's VmRSS, 50 running.
//! (g) recovery: kill -9 of steward with the n running; half of them are
//!     deleted while it is down; time from the restart until converged.
//! (h) delete 20 whose PID 1 ignores SIGTERM, 10 s grace, one command.
//! (i) 50 containers from a cold cache of 5 images (pulls shared) vs
//! `ctr images pull` of the 5 one after another.
//! (f) podman: `podman run -d` of the 50, then `podman rm -f -t 0`.
//!
//! Run with the release steward: `STEWARD_BIN=target/release/steward`.
//! Knobs: BENCH_N (50), BENCH_IDLE_SECS (30), BENCH_STEWARD_LOG (a file to
//! write steward's stderr to at the end; set RUST_LOG to choose what).
//! Everything it starts is removed on exit, success or panic; every
//! external command has a time limit; all traffic is to 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use steward_e2e::*;

const BENCH_NS: &str = "bench";
const LIST_PATH: &str = "/apis/steward.dev/v1alpha1/namespaces/default/containers";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `cmd`, killing it after `limit`. Never hangs the benchmark.
fn run_limited(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let (mut out, mut err) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let o = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let e = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let s = child.wait().expect("wait");
            eprintln!("warning: {cmd:?} killed after {limit:?}");
            break s;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Output { status, stdout: o.join().unwrap_or_default(), stderr: e.join().unwrap_or_default() }
}

fn must(what: &str, o: Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `ctr` in namespace `bench` of steward's containerd.
struct Ctr {
    sock: PathBuf,
}

impl Ctr {
    fn run(&self, args: &[&str]) -> Output {
        run_limited(
            Command::new("ctr").arg("--address").arg(&self.sock).args(["--namespace", BENCH_NS]).args(args),
            Duration::from_secs(30),
        )
    }

    fn ids(&self, what: &str) -> Vec<String> {
        let o = self.run(&[what, "ls", "-q"]);
        String::from_utf8_lossy(&o.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    }

    /// SIGKILL, delete the task once it has exited, delete the container.
    fn remove(&self, id: &str) -> bool {
        let _ = self.run(&["tasks", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = self.run(&["tasks", "delete", id]);
            let err = String::from_utf8_lossy(&o.stderr);
            if o.status.success() || err.contains("not found") {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("ctr tasks delete {id}: {}", err.trim());
                let _ = self.run(&["tasks", "delete", "--force", id]);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.run(&["containers", "delete", id]).status.success()
    }
}

/// Removes whatever is left in namespace `bench` (and the namespace) on
/// drop: declared after the Steward, so it runs before steward's clean-up
/// stops containerd.
struct BenchNsGuard(Ctr);

impl Drop for BenchNsGuard {
    fn drop(&mut self) {
        let c = &self.0;
        for id in c.ids("containers") {
            c.remove(&id);
        }
        for img in c.ids("images") {
            let _ = c.run(&["images", "rm", &img]);
        }
        let _ = run_limited(
            Command::new("ctr").arg("--address").arg(&c.sock).args(["namespaces", "rm", BENCH_NS]),
            Duration::from_secs(10),
        );
        // runc keeps its state here whatever containerd's root; remove the
        // namespace dir only if nothing else uses it.
        let _ = std::fs::remove_dir(format!("/run/containerd/runc/{BENCH_NS}"));
    }
}

/// podman containers and image this run created, removed on drop.
struct PodmanGuard {
    names: Vec<String>,
    image: Option<String>,
}

impl Drop for PodmanGuard {
    fn drop(&mut self) {
        if !self.names.is_empty() {
            let _ = run_limited(Command::new("podman").args(["rm", "-f", "-t", "0", "--ignore"]).args(&self.names), Duration::from_secs(120));
        }
        if let Some(img) = &self.image {
            let _ = run_limited(Command::new("podman").args(["rmi", "-f", img]), Duration::from_secs(60));
        }
    }
}

/// One HTTP/1.1 GET to steward (127.0.0.1), whole body.
fn http_get(url: &str, token: &str, path: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect to steward");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut r = BufReader::new(s);
    let chunked = read_headers(&mut r);
    let mut body = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut r) {
            body.extend(chunk);
        }
    } else {
        let _ = r.read_to_end(&mut body);
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// Reads status line and headers; true when the body is chunked.
fn read_headers(r: &mut impl BufRead) -> bool {
    let mut chunked = false;
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(line.contains(" 200 "), "steward answered: {line}");
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            return chunked;
        }
        let l = line.to_ascii_lowercase();
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
}

/// One chunk of a chunked body; None at the end (or on error).
fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut buf = vec![0; size + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(size);
    Some(buf)
}

/// A watch on the default namespace's containers: sends (name, phase,
/// when) for every event, from a thread. Dropping it closes the connection.
struct Watch {
    stream: TcpStream,
    rx: mpsc::Receiver<(String, String, Instant)>,
}

impl Watch {
    fn open(url: &str, token: &str) -> Watch {
        let addr = url.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).expect("connect to steward");
        write!(
            s,
            "GET {LIST_PATH}?watch=true HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        // The response has started: the watch is registered.
        let chunked = read_headers(&mut r);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let data = if chunked {
                    match read_chunk(&mut r) {
                        Some(c) => c,
                        None => return,
                    }
                } else {
                    let mut b = vec![0; 65536];
                    match r.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            b.truncate(n);
                            b
                        }
                    }
                };
                let now = Instant::now();
                pending.extend(data);
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
                    let obj = &ev["object"];
                    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
                    let mut ph = phase(obj).to_string();
                    if ev["type"] == "DELETED" {
                        ph = "DELETED".into();
                    }
                    if tx.send((name, ph, now)).is_err() {
                        return;
                    }
                }
            }
        });
        Watch { stream: s, rx }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// (utime + stime) in seconds of a process.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// (busy, total) jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Pss (shared pages split between their users) in KiB.
fn pss_kib(pid: u32) -> u64 {
    let r = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    r.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// VmRSS in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

fn cmdline(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `network: none`, as `ctr run` (a network namespace with only `lo`), so
/// the comparison is of like with like; (j) measures the bridge.
fn manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 0\n  network: none\n"
    )
}

/// A web server on the bridge network with an http readiness probe and a
/// tcp liveness probe, every 10 s.
fn probed_manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  command: [sh, -c, \"mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www\"]\n  terminationGracePeriodSeconds: 0\n  ports: [{{name: http, containerPort: 80}}]\n  readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 10}}\n  livenessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 10}}\n"
    )
}

fn ready_names(url: &str, token: &str) -> usize {
    let list: Value = serde_json::from_str(&http_get(url, token, LIST_PATH)).unwrap_or_default();
    list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|o| {
                    o.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                })
                .count()
        })
        .unwrap_or(0)
}

fn running_names(url: &str, token: &str) -> usize {
    let list: Value = serde_json::from_str(&http_get(url, token, LIST_PATH)).unwrap_or_default();
    list["items"].as_array().map(|a| a.iter().filter(|o| phase(o) == "Running").count()).unwrap_or(0)
}

struct Row {
    measure: String,
    steward: String,
    ctr: String,
    podman: String,
    ratio: String,
    target: String,
    met: String,
}

fn main() {
    let started = Instant::now();
    let n = env_num("BENCH_N", 50) as usize;
    let idle = Duration::from_secs(env_num("BENCH_IDLE_SECS", 30));
    require_tools();
    let bin = steward_bin();
    println!("steward binary: {}", bin.display());
    let busy: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&p| matches!(comm(p).as_str(), "containerd" | "steward" | "rustc" | "cargo" | "podman" | "conmon"))
        .map(|p| format!("{p} {}", cmdline(p)))
        .collect();
    if !busy.is_empty() {
        println!("note: other possibly busy processes are running (results may be noisy):");
        for b in &busy {
            println!("  {b}");
        }
    }

    // Drop order (reverse of declaration): podman, bench namespace,
    // steward (its containers, containerd), registry, temp dir.
    let dir = tempfile::Builder::new().prefix("steward-bench-").tempdir().expect("tempdir");
    let registry = Registry::start(dir.path());
    let image = registry.image();
    // Plain HTTP: this bench talks to steward with its own small HTTP/1.1
    // client, and measures reconciling, not the API's transport.
    let mut steward = Steward::start_with(&dir.path().join("data"), &["--plain-http"]);
    let sock = dir.path().join("data/containerd/containerd.sock");
    let ctr = Ctr { sock: sock.clone() };
    let _bench_ns = BenchNsGuard(Ctr { sock: sock.clone() });
    let mut podman_guard = PodmanGuard { names: Vec::new(), image: None };
    let url = steward.url.clone();
    let steward_pid = steward.proc.child.id();
    let data = dir.path().join("data").to_string_lossy().into_owned();
    let containerd_pid = wait_for("steward's containerd", Duration::from_secs(30), || {
        pids_mentioning(&data).into_iter().find(|&p| comm(p) == "containerd")
    }) as u32;

    // Image present on both sides before any timing.
    must("ctr images pull", ctr.run(&["images", "pull", "--plain-http", &image]));
    let mdir = dir.path().join("manifests");
    std::fs::create_dir_all(&mdir).expect("mkdir");
    let warm = dir.path().join("warmup.yaml");
    std::fs::write(&warm, manifest("warmup", &image)).expect("write");
    steward.ok(&["apply", "-f", &warm.to_string_lossy()]);
    steward.wait("warmup", "Running", Duration::from_secs(60), |v| phase(v) == "Running");
    steward.ok(&["delete", "containers", "warmup", "--wait", "--timeout", "60s"]);

    // (a) the floor: ctr run, one after another.
    let tag = std::process::id();
    let ids: Vec<String> = (0..n).map(|i| format!("bench-{tag}-{i:02}")).collect();
    let t = Instant::now();
    for id in &ids {
        must("ctr run", ctr.run(&["run", "-d", &image, id, "sleep", "3600"]));
    }
    let ctr_create = t.elapsed();
    let running_tasks = String::from_utf8_lossy(&ctr.run(&["tasks", "ls"]).stdout).matches("RUNNING").count();
    assert_eq!(running_tasks, n, "ctr: not all tasks are running");
    println!("(a) ctr run x{n}: {}", secs(ctr_create));

    // (c, ctr) delete them before steward's run, so each side has the
    // machine to itself.
    let t = Instant::now();
    for id in &ids {
        assert!(ctr.remove(id), "ctr could not delete {id}");
    }
    let ctr_delete = t.elapsed();
    println!("(c) ctr kill+delete x{n}: {}", secs(ctr_delete));

    // (b) steward apply of n manifests, until all are Running.
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i:02}")).collect();
    for name in &names {
        std::fs::write(mdir.join(format!("{name}.yaml")), manifest(name, &image)).expect("write manifest");
    }
    let watch = Watch::open(&url, &steward.token);
    let (bs0, bc0, m0) = (cpu_secs(steward_pid), cpu_secs(containerd_pid), machine_jiffies());
    let t = Instant::now();
    let apply_out = run_limited(
        Command::new(&bin).env("STEWARD_TOKEN", &steward.token).arg("--server").arg(&url).args(["apply", "-f"]).arg(&mdir),
        Duration::from_secs(60),
    );
    let apply_took = t.elapsed();
    must("steward apply", apply_out);
    let mut running_at: std::collections::HashMap<String, Duration> = Default::default();
    let deadline = t + Duration::from_secs(120);
    while running_at.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match watch.rx.recv_timeout(left) {
            Ok((name, ph, when)) => {
                if ph == "Running" && names.contains(&name) {
                    running_at.entry(name).or_insert(when.duration_since(t));
                }
            }
            Err(_) => panic!(
                "only {} of {n} Running after 120 s\nserver log (tail):\n{}",
                running_at.len(),
                tail(&steward.proc.logs(), 40)
            ),
        }
    }
    let steward_create = running_at.values().max().copied().unwrap_or_default();
    let (busy_steward, busy_containerd) = (cpu_secs(steward_pid) - bs0, cpu_secs(containerd_pid) - bc0);
    let m1 = machine_jiffies();
    let machine_busy = (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64 * 100.0;
    drop(watch);
    let mut times: Vec<Duration> = running_at.values().copied().collect();
    times.sort();
    let first_running = times[0];
    let median_running = times[times.len() / 2];
    assert_eq!(running_names(&url, &steward.token), n, "the list disagrees with the watch");
    println!(
        "(b) steward apply x{n} until all Running: {} (apply command {}, first Running {}, median {})",
        secs(steward_create),
        secs(apply_took),
        secs(first_running),
        secs(median_running)
    );

    // (d, e) idle CPU and RSS with the n running.
    std::thread::sleep(Duration::from_secs(2));
    let drivers: Vec<u32> = pids_mentioning("log-driver")
        .into_iter()
        .filter(|&p| comm(p) == "steward" && cmdline(p).contains(&data))
        .map(|p| p as u32)
        .collect();
    let shims: Vec<u32> = pids_mentioning(&data).into_iter().filter(|&p| comm(p).starts_with("containerd-shim")).map(|p| p as u32).collect();
    // Lifetime CPU so far: what starting them cost (they were idle since).
    let shims_cpu: f64 = shims.iter().map(|&p| cpu_secs(p)).sum();
    let (s0, c0, d0) = (cpu_secs(steward_pid), cpu_secs(containerd_pid), drivers.iter().map(|&p| cpu_secs(p)).sum::<f64>());
    let t = Instant::now();
    std::thread::sleep(idle);
    let wall = t.elapsed().as_secs_f64();
    let (s1, c1, d1) = (cpu_secs(steward_pid), cpu_secs(containerd_pid), drivers.iter().map(|&p| cpu_secs(p)).sum::<f64>());
    let steward_cpu = (s1 - s0) / wall * 100.0;
    let containerd_cpu = (c1 - c0) / wall * 100.0;
    let drivers_cpu = (d1 - d0) / wall * 100.0;
    let steward_rss = rss_kib(steward_pid);
    let containerd_rss = rss_kib(containerd_pid);
    let drivers_rss: u64 = drivers.iter().map(|&p| rss_kib(p)).sum();
    let drivers_pss: u64 = drivers.iter().map(|&p| pss_kib(p)).sum();
    println!(
        "(d) idle {:.0} s: steward {steward_cpu:.3} % of a core, containerd {containerd_cpu:.3} %, {} log drivers {drivers_cpu:.3} %",
        wall,
        drivers.len()
    );
    println!("(e) VmRSS: steward {:.1} MiB, containerd {:.1} MiB, log drivers {:.1} MiB in all", steward_rss as f64 / 1024.0, containerd_rss as f64 / 1024.0, drivers_rss as f64 / 1024.0);

    // (c, steward) one delete --wait of all n.
    let t = Instant::now();
    let mut args = vec!["--server".to_string(), url.clone(), "delete".into(), "containers".into()];
    args.extend(names.iter().cloned());
    args.extend(["--wait".into(), "--timeout".into(), "120s".into()]);
    must("steward delete --wait", run_limited(Command::new(&bin).env("STEWARD_TOKEN", &steward.token).args(&args), Duration::from_secs(130)));
    let steward_delete = t.elapsed();
    let left = steward.ctr_ids("containers");
    assert!(left.is_empty(), "steward left containers behind: {left:?}");
    println!("(c) steward delete x{n} --wait: {}", secs(steward_delete));

    // (g) recovery: n running, kill -9 steward; while it is down half of
    // them are deleted (a `serve --no-controller` on the same data dir
    // marks them; their containers stay); time from the restart until the
    // store and containerd agree again: the deleted gone from both, the
    // rest Running with the same pids.
    must("steward apply", run_limited(
        Command::new(&bin).env("STEWARD_TOKEN", &steward.token).arg("--server").arg(&url).args(["apply", "-f"]).arg(&mdir),
        Duration::from_secs(60),
    ));
    wait_for("all Running again", Duration::from_secs(120), || (running_names(&steward.url, &steward.token) == n).then_some(()));
    let before: Value = serde_json::from_str(&http_get(&steward.url, &steward.token, LIST_PATH)).expect("list");
    let pids: std::collections::HashMap<String, u64> = before["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| Some((o["metadata"]["name"].as_str()?.to_string(), o.pointer("/status/pid")?.as_u64()?)))
        .collect();
    steward.proc.kill();
    let pending: Vec<String> = names.iter().take(n / 2).cloned().collect();
    {
        let mut offline = Command::new(&bin);
        offline.arg("serve").arg("--data-dir").arg(&steward.data_dir).args(["--listen", "127.0.0.1:0", "--no-controller", "--plain-http"]);
        let mut child = offline.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("serve --no-controller");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let offline_url = steward_e2e::server_url(&line);
        let mut args = vec!["--server".to_string(), offline_url, "delete".into(), "containers".into()];
        args.extend(pending.iter().cloned());
        must("delete while the controller is down", run_limited(Command::new(&bin).env("STEWARD_TOKEN", &steward.token).args(&args), Duration::from_secs(30)));
        let _ = child.kill();
        let _ = child.wait();
    }
    let t = Instant::now();
    steward.kill_and_restart();
    let listening = t.elapsed();
    let expected = n - pending.len();
    wait_for("recovery to converge", Duration::from_secs(120), || {
        let list: Value = serde_json::from_str(&http_get(&steward.url, &steward.token, LIST_PATH)).ok()?;
        let items = list["items"].as_array()?;
        let same_pids = items.iter().all(|o| {
            phase(o) == "Running"
                && o.pointer("/status/pid").and_then(Value::as_u64) == o["metadata"]["name"].as_str().and_then(|k| pids.get(k)).copied()
        });
        (items.len() == expected && same_pids && steward.ctr_ids("containers").len() == expected).then_some(())
    });
    let recovery = t.elapsed();
    println!("(g) recovery: kill -9 with {n} running, {} deleted meanwhile: converged {} after the restart (listening after {})", pending.len(), secs(recovery), secs(listening));
    let mut args = vec!["--server".to_string(), steward.url.clone(), "delete".into(), "containers".into()];
    args.extend(names.iter().skip(n / 2).cloned());
    args.extend(["--wait".into(), "--timeout".into(), "120s".into()]);
    must("clean up", run_limited(Command::new(&bin).env("STEWARD_TOKEN", &steward.token).args(&args), Duration::from_secs(130)));

    // (h) deleting containers whose PID 1 ignores SIGTERM (`sleep`), with a
    // 10 s grace, in one command: the graces run side by side, so it takes
    // about one grace period, not k x 10 s.
    let k = 20usize.min(n);
    let stubborn: Vec<String> = (0..k).map(|i| format!("stubborn-{i:02}")).collect();
    let sdir = dir.path().join("stubborn");
    std::fs::create_dir_all(&sdir).expect("mkdir");
    for name in &stubborn {
        std::fs::write(
            sdir.join(format!("{name}.yaml")),
            manifest(name, &image).replace("terminationGracePeriodSeconds: 0", "terminationGracePeriodSeconds: 10"),
        )
        .expect("write manifest");
    }
    must("steward apply", run_limited(
        Command::new(&bin).env("STEWARD_TOKEN", &steward.token).arg("--server").arg(&steward.url).args(["apply", "-f"]).arg(&sdir),
        Duration::from_secs(60),
    ));
    wait_for("the stubborn ones Running", Duration::from_secs(120), || (running_names(&steward.url, &steward.token) == k).then_some(()));
    let t = Instant::now();
    let mut args = vec!["--server".to_string(), steward.url.clone(), "delete".into(), "containers".into()];
    args.extend(stubborn.iter().cloned());
    args.extend(["--wait".into(), "--timeout".into(), "300s".into()]);
    must("steward delete --wait", run_limited(Command::new(&bin).env("STEWARD_TOKEN", &steward.token).args(&args), Duration::from_secs(310)));
    let stubborn_delete = t.elapsed();
    println!("(h) steward delete x{k} ignoring SIGTERM, 10 s grace, --wait: {}", secs(stubborn_delete));

    // (i) a cold cache: 5 distinct images (busybox variants: another config
    // on the same layer) new to containerd; `ctr images pull` of the 5 one
    // after another, then steward bringing up 50 containers of them (10 per
    // image) until all are Running, its pulls shared.
    let cold: Vec<String> = (0..5)
        .map(|v| {
            let reference = format!("{}/cold:v{v}", registry.addr);
            let d = dir.path().join(format!("cold-{v}"));
            let img = steward_testimage::build_busybox_oci_archive_variant(&d, &reference, Some(&format!("cold-{v}-{tag}"))).expect("build image");
            must("skopeo copy", run_limited(
                Command::new("skopeo")
                    .args(["copy", "--quiet", "--dest-tls-verify=false"])
                    .arg(format!("oci-archive:{}", img.archive.display()))
                    .arg(format!("docker://{reference}")),
                Duration::from_secs(60),
            ));
            reference
        })
        .collect();
    let t = Instant::now();
    for r in &cold {
        must("ctr images pull", ctr.run(&["images", "pull", "--plain-http", r]));
    }
    let ctr_cold_pull = t.elapsed();
    println!("(i) ctr images pull of 5 images, one after another: {}", secs(ctr_cold_pull));
    let m = 50usize;
    let cdir = dir.path().join("cold");
    std::fs::create_dir_all(&cdir).expect("mkdir");
    let cold_names: Vec<String> = (0..m).map(|i| format!("cold-{i:02}")).collect();
    for (i, name) in cold_names.iter().enumerate() {
        std::fs::write(cdir.join(format!("{name}.yaml")), manifest(name, &cold[i % cold.len()])).expect("write manifest");
    }
    let t = Instant::now();
    must("steward apply", run_limited(
        Command::new(&bin).env("STEWARD_TOKEN", &steward.token).arg("--server").arg(&steward.url).args(["apply", "-f"]).arg(&cdir),
        Duration::from_secs(60),
    ));
    wait_for("the cold-cache containers Running", Duration::from_secs(180), || (running_names(&steward.url, &steward.token) == m).then_some(()));
    let steward_cold = t.elapsed();
    println!("(i) steward: {m} containers of 5 uncached images until all Running: {}", secs(steward_cold));
    let mut args = vec!["--server".to_string(), steward.url.clone(), "delete".into(), "containers".into()];
    args.extend(cold_names.iter().cloned());
    args.extend(["--wait".into(), "--timeout".into(), "120s".into()]);
    must("steward delete --wait", run_limited(Command::new(&bin).env("STEWARD_TOKEN", &steward.token).args(&args), Duration::from_secs(130)));

    // (j) probes: 100 web servers on the bridge network, each with an http
    // readiness and a tcp liveness probe every 10 s (200 probes / 10 s):
    // the time until all are Ready (bridge attach included), then
    // steward's CPU over the idle window while they are probed.
    let probed_n = env_num("BENCH_PROBED", 100) as usize;
    let pdir = dir.path().join("probed");
    std::fs::create_dir_all(&pdir).expect("mkdir");
    let probed_names: Vec<String> = (0..probed_n).map(|i| format!("probed-{i:03}")).collect();
    for name in &probed_names {
        std::fs::write(pdir.join(format!("{name}.yaml")), probed_manifest(name, &image)).expect("write manifest");
    }
    let t = Instant::now();
    must("steward apply", run_limited(
        Command::new(&bin).env("STEWARD_TOKEN", &steward.token).arg("--server").arg(&steward.url).args(["apply", "-f"]).arg(&pdir),
        Duration::from_secs(60),
    ));
    wait_for("the probed containers Running", Duration::from_secs(300), || (running_names(&steward.url, &steward.token) >= probed_n).then_some(()));
    let probed_running = t.elapsed();
    wait_for("the probed containers Ready", Duration::from_secs(120), || (ready_names(&steward.url, &steward.token) >= probed_n).then_some(()));
    let probed_ready = t.elapsed();
    println!("(j) {probed_n} on the bridge network with probes: all Running {}, all Ready {}", secs(probed_running), secs(probed_ready));
    // Settle (the first probes of the last ones), then measure.
    std::thread::sleep(Duration::from_secs(5));
    // steward was restarted in (g): its pid now.
    let probed_pid = steward.pid() as u32;
    assert!(Path::new(&format!("/proc/{probed_pid}")).exists(), "steward is not running");
    let (ps0, pt0) = (cpu_secs(probed_pid), Instant::now());
    std::thread::sleep(idle);
    let probed_wall = pt0.elapsed().as_secs_f64();
    let probed_cpu = (cpu_secs(probed_pid) - ps0) / probed_wall * 100.0;
    assert!(ps0 > 0.0, "no CPU time read for steward (pid {probed_pid})");
    let probed_ready_after = ready_names(&steward.url, &steward.token);
    println!("(j) steward CPU over {probed_wall:.0} s with {probed_n} probed: {probed_cpu:.3} % of a core ({probed_ready_after} still Ready)");
    let mut args = vec!["--server".to_string(), steward.url.clone(), "delete".into(), "containers".into()];
    args.extend(probed_names.iter().cloned());
    args.extend(["--wait".into(), "--timeout".into(), "180s".into()]);
    let t = Instant::now();
    must("steward delete --wait", run_limited(Command::new(&bin).env("STEWARD_TOKEN", &steward.token).args(&args), Duration::from_secs(190)));
    let probed_delete = t.elapsed();
    println!("(j) delete of the {probed_n} (CNI DEL included): {}", secs(probed_delete));

    // (f) podman, when installed.
    let mut podman: Option<(Duration, Duration)> = None;
    let has_podman = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("podman").is_file()))
        .unwrap_or(false);
    if !has_podman {
        println!("(f) podman is not installed: skipped");
    } else {
        let pull = run_limited(Command::new("podman").args(["pull", "-q", "--tls-verify=false", &image]), Duration::from_secs(60));
        podman_guard.image = Some(image.clone());
        if !pull.status.success() {
            println!("(f) podman pull failed, skipped: {}", String::from_utf8_lossy(&pull.stderr).trim());
        } else {
            let pnames: Vec<String> = (0..n).map(|i| format!("steward-bench-{tag}-{i:02}")).collect();
            let t = Instant::now();
            let mut ok = true;
            for name in &pnames {
                podman_guard.names.push(name.clone());
                let o = run_limited(
                    Command::new("podman").args([
                        "run", "-d", "--name", name, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", &image,
                        "sleep", "3600",
                    ]),
                    Duration::from_secs(30),
                );
                if !o.status.success() {
                    println!("(f) podman run failed, skipped: {}", String::from_utf8_lossy(&o.stderr).trim());
                    ok = false;
                    break;
                }
            }
            let create = t.elapsed();
            if ok {
                println!("(f) podman run x{n}: {}", secs(create));
                let t = Instant::now();
                for name in &pnames {
                    must("podman rm", run_limited(Command::new("podman").args(["rm", "-f", "-t", "0", name]), Duration::from_secs(30)));
                }
                let delete = t.elapsed();
                podman_guard.names.clear();
                println!("(f) podman rm -f x{n}: {}", secs(delete));
                podman = Some((create, delete));
            }
        }
    }

    // The table.
    let per = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0 / n as f64);
    let pod = |f: fn(&(Duration, Duration)) -> Duration| podman.as_ref().map(|p| secs(f(p))).unwrap_or_else(|| "skipped".into());
    let create_ratio = steward_create.as_secs_f64() / ctr_create.as_secs_f64();
    let delete_ratio = steward_delete.as_secs_f64() / ctr_delete.as_secs_f64();
    let met = |ok: bool| if ok { "met".to_string() } else { "MISSED".to_string() };
    let rows = [
        Row {
            measure: format!("create {n} until Running (b vs a)"),
            steward: secs(steward_create),
            ctr: secs(ctr_create),
            podman: pod(|p| p.0),
            ratio: format!("{create_ratio:.2}x"),
            target: "≤ 0.5x ctr".into(),
            met: met(create_ratio <= 0.5),
        },
        Row {
            measure: format!("delete {n} (c)"),
            steward: secs(steward_delete),
            ctr: secs(ctr_delete),
            podman: pod(|p| p.1),
            ratio: format!("{delete_ratio:.2}x"),
            target: "—".into(),
            met: "—".into(),
        },
        Row {
            measure: format!("recovery: kill -9 with {n} running, {} deleted while down, restart until converged (g)", n / 2),
            steward: secs(recovery),
            ctr: "—".into(),
            podman: "—".into(),
            ratio: "—".into(),
            target: "≤ 2 s".into(),
            met: met(recovery.as_secs_f64() <= 2.0),
        },
        Row {
            measure: format!("delete {k} ignoring SIGTERM, 10 s grace, one command (h)"),
            steward: secs(stubborn_delete),
            ctr: "—".into(),
            podman: "—".into(),
            ratio: "—".into(),
            target: "≈ one grace (≤ 12 s)".into(),
            met: met(stubborn_delete.as_secs_f64() <= 12.0),
        },
        Row {
            measure: "50 containers from a cold cache of 5 images until Running (i) vs `ctr images pull` of the 5".into(),
            steward: secs(steward_cold),
            ctr: secs(ctr_cold_pull),
            podman: "—".into(),
            ratio: format!("{:.2}x", steward_cold.as_secs_f64() / ctr_cold_pull.as_secs_f64()),
            target: "— (compared)".into(),
            met: "—".into(),
        },
        Row {
            measure: format!("{probed_n} on the bridge network, http readiness + tcp liveness probes: apply until all Running / all Ready (j)"),
            steward: format!("{} / {}", secs(probed_running), secs(probed_ready)),
            ctr: "—".into(),
            podman: "—".into(),
            ratio: "—".into(),
            target: "—".into(),
            met: "—".into(),
        },
        Row {
            measure: format!("steward CPU, {probed_n} running with 10 s probes (200 probes / 10 s), {probed_wall:.0} s (j)"),
            steward: format!("{probed_cpu:.3} %"),
            ctr: "—".into(),
            podman: "—".into(),
            ratio: "—".into(),
            target: "≤ 1 % of a core".into(),
            met: met(probed_cpu <= 1.0 && probed_ready_after == probed_n),
        },
        Row {
            measure: format!("delete {probed_n} on the bridge network, CNI DEL included (j)"),
            steward: secs(probed_delete),
            ctr: "—".into(),
            podman: "—".into(),
            ratio: "—".into(),
            target: "—".into(),
            met: "—".into(),
        },
        Row {
            measure: format!("steward idle CPU, {n} running, {:.0} s (d)", wall),
            steward: format!("{steward_cpu:.3} %"),
            ctr: "—".into(),
            podman: "—".into(),
            ratio: "—".into(),
            target: "≤ 0.2 % of a core".into(),
            met: met(steward_cpu <= 0.2),
        },
        Row {
            measure: format!("steward RSS, {n} running (e)"),
            steward: format!("{:.1} MB", steward_rss as f64 * 1024.0 / 1e6),
            ctr: "—".into(),
            podman: "—".into(),
            ratio: "—".into(),
            target: "≤ 50 MB".into(),
            met: met(steward_rss as f64 * 1024.0 / 1e6 <= 50.0),
        },
    ];
    println!();
    println!("| measure | steward | ctr (floor) | podman | ratio | target | met/MISSED |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} | {} | {} | {} |", r.measure, r.steward, r.ctr, r.podman, r.ratio, r.target, r.met);
    }
    println!();
    println!("Details:");
    println!("- per container, create: steward {} (all Running; first after {}, median {}; the apply command itself {}), ctr {}{}",
        per(steward_create), secs(first_running), secs(median_running), secs(apply_took), per(ctr_create),
        podman.map(|p| format!(", podman {}", per(p.0))).unwrap_or_default());
    println!("- per container, delete: steward {}, ctr {}{}", per(steward_delete), per(ctr_delete),
        podman.map(|p| format!(", podman {}", per(p.1))).unwrap_or_default());
    println!("- deletes: steward's manifests set terminationGracePeriodSeconds: 0, so steward sends SIGTERM and then SIGKILL at once, as ctr's SIGKILL (sleep as PID 1 ignores SIGTERM; the default 10 s grace would time a deliberate wait, not steward)");
    println!("- idle over {:.0} s with {n} running: steward {steward_cpu:.3} % of a core, containerd {containerd_cpu:.3} %, {} steward log-driver processes {drivers_cpu:.3} % in all", wall, drivers.len());
    println!("- CPU used while the {n} came up (b): steward {busy_steward:.2} s, containerd {busy_containerd:.2} s (shims and runc not counted); the machine's {} cores were {machine_busy:.0} % busy ({:.2} core-s)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), machine_busy / 100.0 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64 * steward_create.as_secs_f64());
    println!("- CPU the {n} running containers' helpers used since they started (mostly start-up): {} shims {shims_cpu:.2} s, {} log drivers {d0:.2} s in all (runc's short-lived processes are the rest)", shims.len(), drivers.len());
    println!("- VmRSS: steward {:.1} MiB, containerd {:.1} MiB; the {} log drivers {:.1} MiB VmRSS in all ({:.1} MiB each), {:.1} MiB Pss in all (shared pages of the binary split)",
        steward_rss as f64 / 1024.0, containerd_rss as f64 / 1024.0, drivers.len(), drivers_rss as f64 / 1024.0,
        drivers_rss as f64 / 1024.0 / drivers.len().max(1) as f64, drivers_pss as f64 / 1024.0);
    println!("- same containerd (steward's supervised 1.6, {}), ctr in namespace `{BENCH_NS}`, steward in `steward`; image {image} present on both sides before timing", sock.display());

    if let Ok(path) = std::env::var("BENCH_STEWARD_LOG") {
        std::fs::write(&path, steward.proc.logs()).expect("write steward log");
        println!("- steward's log: {path}");
    }
    drop(podman_guard);
    drop(_bench_ns);
    drop(steward);
    drop(registry);
    drop(dir);
    println!("- total bench time {} (clean-up included)", secs(started.elapsed()));
}
