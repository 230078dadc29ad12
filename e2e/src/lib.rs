//! End-to-end harness: REAL components, really started. A local registry
//! (Debian's `docker-registry`) serving a busybox test image, and a
//! `steward serve` that supervises its own containerd, driven as a user
//! would: through the `steward` CLI and the HTTP API, with containerd
//! checked directly through `ctr`.
//!
//! A missing dependency fails the test with the command that installs it;
//! nothing is skipped.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const INSTALL: &str = "apt-get install -y containerd runc crun docker-registry skopeo busybox-static containernetworking-plugins iptables iproute2 (or: make deps-e2e)";

/// Fails (never skips) when a tool the suite needs is missing.
pub fn require_tools() {
    for tool in ["containerd", "runc", "crun", "ctr", "docker-registry", "skopeo", "unshare", "curl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(found, "e2e needs `{tool}` on PATH: {INSTALL}");
    }
    assert!(Path::new("/bin/busybox").is_file(), "e2e needs /bin/busybox: {INSTALL}");
    // Containers are on a bridge network unless they say otherwise.
    for plugin in ["bridge", "host-local", "portmap", "firewall", "loopback"] {
        assert!(Path::new("/usr/lib/cni").join(plugin).is_file(), "e2e needs the CNI plugin /usr/lib/cni/{plugin}: {INSTALL}");
    }
    for tool in ["iptables", "iptables-save", "ip"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(tool).is_file());
        assert!(found, "e2e needs `{tool}`: {INSTALL}");
    }
}

/// The `steward` binary of this workspace (built by `make test` before the
/// suite runs), or `$STEWARD_BIN`.
pub fn steward_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STEWARD_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/steward");
    assert!(bin.is_file(), "{} not built: run `cargo build -p steward` (make test does)", bin.display());
    bin
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Polls `f` until it returns `Some`, or panics after `timeout` saying `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed on drop, with its output kept for failure messages.
pub struct Proc {
    pub child: Child,
    pub output: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| {
            panic!("cannot start {cmd:?}: {e}; {INSTALL}")
        });
        let output = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let out = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut o) = out.lock() {
                        o.push_str(&line);
                        o.push('\n');
                    }
                }
            });
        }
        Proc { child, output }
    }

    pub fn logs(&self) -> String {
        self.output.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A local registry on loopback serving `busybox:1.36`.
pub struct Registry {
    pub addr: String,
    pub archive: PathBuf,
    _proc: Proc,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )
        .expect("write registry config");
        let proc = Proc::spawn(Command::new("docker-registry").arg("serve").arg(&config));
        wait_for("the registry to answer", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).ok()
        });
        let image = steward_testimage::build_busybox_oci_archive_named(dir, &format!("{addr}/busybox:1.36"))
            .expect("build the busybox test image");
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", image.archive.display()))
            .arg(format!("docker://{addr}/busybox:1.36"))
            .output()
            .unwrap_or_else(|e| panic!("skopeo: {e}; {INSTALL}"));
        assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
        Registry { addr, archive: image.archive, _proc: proc }
    }

    pub fn image(&self) -> String {
        format!("{}/busybox:1.36", self.addr)
    }

    /// The registry's log: one `response completed` line per request.
    pub fn logs(&self) -> String {
        self._proc.logs()
    }
}

/// A registry over TLS with htpasswd authentication, on loopback: its CA
/// made by the test (rcgen), Debian's `docker-registry` serving it.
pub struct TlsRegistry {
    pub addr: String,
    /// The CA that signed the server's certificate (PEM).
    pub ca_pem: String,
    pub user: String,
    pub password: String,
    _proc: Proc,
}

/// A CA (PEM) and a certificate for 127.0.0.1 and localhost signed by it
/// (cert PEM, key PEM).
pub fn make_ca_and_server_cert() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "steward e2e CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("server params");
    server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate().expect("server key");
    let cert = server.signed_by(&key, &ca_cert, &ca_key).expect("sign the server certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

impl TlsRegistry {
    /// Starts it and pushes the busybox test image under each of `repos`
    /// (`busybox:1.36`, `library/busybox:1.36`, ...).
    pub fn start(dir: &Path, repos: &[&str]) -> TlsRegistry {
        let dir = dir.join("tls-registry");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let (ca_pem, cert, key) = make_ca_and_server_cert();
        std::fs::write(dir.join("server.crt"), cert).expect("write cert");
        std::fs::write(dir.join("server.key"), key).expect("write key");
        let (user, password) = ("steward".to_string(), "s3cret-pw".to_string());
        let hash = bcrypt::hash(&password, 4).expect("bcrypt");
        std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n")).expect("write htpasswd");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
                 http:\n  addr: {addr}\n  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n\
                 auth:\n  htpasswd:\n    realm: steward-e2e\n    path: {d}/htpasswd\n",
                root = dir.join("registry").display(),
                d = dir.display()
            ),
        )
        .expect("write registry config");
        let proc = Proc::spawn(Command::new("docker-registry").arg("serve").arg(&config));
        wait_for("the TLS registry to answer", Duration::from_secs(20), || std::net::TcpStream::connect(&addr).ok());
        let image = steward_testimage::build_busybox_oci_archive_named(&dir, &format!("{addr}/busybox:1.36"))
            .expect("build the busybox test image");
        for repo in repos {
            let out = Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds"])
                .arg(format!("{user}:{password}"))
                .arg(format!("oci-archive:{}", image.archive.display()))
                .arg(format!("docker://{addr}/{repo}"))
                .output()
                .unwrap_or_else(|e| panic!("skopeo: {e}; {INSTALL}"));
            assert!(out.status.success(), "skopeo copy to {repo} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        TlsRegistry { addr, ca_pem, user, password, _proc: proc }
    }

    /// The registry's log.
    pub fn logs(&self) -> String {
        self._proc.logs()
    }
}

/// A bridge network of the host for one test steward: stewards running at
/// once each need their own bridge and subnet (a second one on the same
/// bridge refuses to start). Slot `i` (taken with a lock file, so parallel
/// test processes never share one) is bridge `stwe<i>`, subnet
/// `10.231.<i>.0/24`. The bridge is deleted when the slot is dropped.
pub struct NetSlot {
    pub index: u32,
    _lock: std::fs::File,
}

/// Deletes the rules of iptables `table` whose `-S` line matches `hit`
/// (and empties and removes the `CNI-` chains they jump to). Each rule is
/// deleted by itself, so concurrent tests' rules are left alone.
pub fn delete_iptables_rules(table: &str, hit: impl Fn(&str) -> bool) {
    let Ok(out) = Command::new("iptables").args(["-w", "-t", table, "-S"]).output() else { return };
    let mut chains = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(rule) = line.strip_prefix("-A ") else { continue };
        if !hit(rule) {
            continue;
        }
        if let Some(target) = rule.split_whitespace().skip_while(|w| *w != "-j").nth(1) {
            if target.starts_with("CNI-") && !matches!(target, "CNI-FORWARD" | "CNI-ADMIN" | "CNI-HOSTPORT-DNAT" | "CNI-HOSTPORT-MASQ" | "CNI-HOSTPORT-SETMARK") {
                chains.push(target.to_string());
            }
        }
        // `-S` prints rules the shell can read back.
        let _ = Command::new("sh").arg("-c").arg(format!("iptables -w -t {table} -D {rule}")).stderr(Stdio::null()).status();
    }
    for c in chains {
        let _ = Command::new("iptables").args(["-w", "-t", table, "-F", &c]).stderr(Stdio::null()).status();
        let _ = Command::new("iptables").args(["-w", "-t", table, "-X", &c]).stderr(Stdio::null()).status();
    }
}

impl NetSlot {
    pub fn take() -> NetSlot {
        let dir = Path::new("/tmp/steward-e2e-net");
        std::fs::create_dir_all(dir).expect("create /tmp/steward-e2e-net");
        for index in 0..250 {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{index}.lock")))
                .expect("open a network slot lock");
            if f.try_lock().is_ok() {
                let slot = NetSlot { index, _lock: f };
                // What an earlier test that used this slot left (the bridge
                // plugin cannot remove a container's masquerading once its
                // namespace is gone, or after a DEL cut short): this
                // test's checks see only its own.
                let subnet = format!("10.231.{index}.");
                delete_iptables_rules("nat", |r| r.contains(&subnet));
                delete_iptables_rules("filter", |r| r.contains(&subnet));
                return slot;
            }
        }
        panic!("all 250 e2e network slots are taken");
    }

    pub fn bridge(&self) -> String {
        format!("stwe{}", self.index)
    }

    pub fn subnet(&self) -> String {
        format!("10.231.{}.0/24", self.index)
    }

    /// The `networks` section of a steward configuration for this slot.
    pub fn yaml(&self) -> String {
        format!(
            "networks:\n  bridge:\n    bridge: {}\n    subnet: {}\n",
            self.bridge(),
            self.subnet()
        )
    }
}

impl Drop for NetSlot {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .stderr(Stdio::null())
            .status();
    }
}

/// `steward serve` with its own supervised containerd (the `make run` path),
/// or with the extra `serve` arguments given to [`Steward::start_with`]
/// (e.g. `--containerd-socket`, `--no-controller`).
pub struct Steward {
    pub url: String,
    /// The API token `serve` keeps in its data dir.
    pub token: String,
    pub data_dir: PathBuf,
    pub proc: Proc,
    /// The containerd socket steward drives (its supervised one unless
    /// `--containerd-socket` was passed).
    pub socket: PathBuf,
    /// Extra `serve` arguments, kept for restarts.
    pub args: Vec<String>,
    /// `--listen`: fixed across restarts, so clients keep their address.
    pub listen: String,
    /// The binary `restart` runs (this workspace's, or an older one).
    pub bin: PathBuf,
    /// Its bridge network (dropped after the process: the bridge goes last).
    pub net: NetSlot,
}

/// The commit of main before versioned spec hashes: the upgrade test runs
/// containers with it, then the current binary on the same data dir.
pub const OLD_STEWARD_COMMIT: &str = "85f1c0cefe3d3cbf2153c76834696d5063f43dd7";

/// The `steward` of [`OLD_STEWARD_COMMIT`]: `$STEWARD_OLD_BIN`, or built
/// from this repository's git history into
/// `target/old-steward/<commit>/` (once; later runs reuse it).
pub fn old_steward_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STEWARD_OLD_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "STEWARD_OLD_BIN={} is not a file", p.display());
        return p;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = repo.join("target/old-steward").join(&OLD_STEWARD_COMMIT[..12]);
    let bin = root.join("target/debug/steward");
    if bin.is_file() {
        return bin;
    }
    let how = format!(
        "set STEWARD_OLD_BIN to a steward built from {OLD_STEWARD_COMMIT} (git worktree add /tmp/old-steward {OLD_STEWARD_COMMIT} && cargo build -p steward --manifest-path /tmp/old-steward/Cargo.toml)"
    );
    let src = root.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).unwrap_or_else(|e| panic!("create {}: {e}; or {how}", src.display()));
    let archive = Command::new("sh")
        .arg("-c")
        .arg(format!("git -C \"$1\" archive {OLD_STEWARD_COMMIT} | tar -x -C \"$2\""))
        .args(["sh", &repo.to_string_lossy(), &src.to_string_lossy()])
        .output()
        .unwrap_or_else(|e| panic!("git archive: {e}; {how}"));
    assert!(archive.status.success(), "git archive {OLD_STEWARD_COMMIT} failed: {}; {how}", String::from_utf8_lossy(&archive.stderr));
    eprintln!("building the old steward ({OLD_STEWARD_COMMIT}) once, into {}", root.display());
    let build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", "steward", "--manifest-path"])
        .arg(src.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", root.join("target"))
        .status()
        .unwrap_or_else(|e| panic!("cargo: {e}; {how}"));
    assert!(build.success() && bin.is_file(), "building the old steward failed; {how}");
    bin
}

impl Steward {
    pub fn start(data_dir: &Path) -> Steward {
        Self::start_bin(&steward_bin(), data_dir, &[])
    }

    /// `steward serve --data-dir DATA --listen 127.0.0.1:PORT ARGS...`; the
    /// port is chosen once and kept across restarts.
    pub fn start_with(data_dir: &Path, args: &[&str]) -> Steward {
        Self::start_bin(&steward_bin(), data_dir, args)
    }

    /// As [`Self::start_with`], running binary `bin` (e.g. an older
    /// release, see [`old_steward_bin`]).
    pub fn start_bin(bin: &Path, data_dir: &Path, args: &[&str]) -> Steward {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let listen = format!("127.0.0.1:{}", free_port());
        let socket = args
            .iter()
            .position(|a| a == "--containerd-socket")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("containerd/containerd.sock"));
        let net = NetSlot::take();
        // The test's configuration file gets this steward's network, unless
        // it sets networks itself (without one, see `spawn`).
        if let Some(file) = args
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| args.get(i + 1))
        {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if !text.lines().any(|l| l.starts_with("networks:")) {
                std::fs::write(file, format!("{text}\n{}", net.yaml()))
                    .expect("add the network to the test's config");
            }
        }
        let (url, proc) = Self::spawn(bin, data_dir, &listen, &args, &net);
        let token = std::fs::read_to_string(data_dir.join("token"))
            .expect("serve creates DATA/token")
            .trim()
            .to_string();
        Steward {
            url,
            token,
            data_dir: data_dir.to_path_buf(),
            proc,
            socket,
            args,
            listen,
            bin: bin.to_path_buf(),
            net,
        }
    }

    /// `text` (a configuration) with this steward's network added, for a
    /// test that rewrites its configuration file to reload it.
    pub fn with_net(&self, text: &str) -> String {
        format!("{text}\n{}", self.net.yaml())
    }

    /// The containerd socket this steward uses.
    pub fn containerd_socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// SIGKILLs steward (containers and containerd live on) and starts a
    /// new one on the same data dir.
    pub fn kill_and_restart(&mut self) {
        self.kill_and_restart_with(&steward_bin());
    }

    /// As [`Self::kill_and_restart`], the new one being binary `bin`.
    pub fn kill_and_restart_with(&mut self, bin: &Path) {
        self.proc.kill();
        self.bin = bin.to_path_buf();
        self.restart();
    }

    /// SIGKILLs steward and leaves it down (containers and containerd live on).
    pub fn kill9(&mut self) {
        self.proc.kill();
    }

    /// Starts steward again (same data dir, port and arguments); the
    /// previous process must be gone.
    pub fn restart(&mut self) {
        let (url, proc) = Self::spawn(
            &self.bin,
            &self.data_dir,
            &self.listen,
            &self.args,
            &self.net,
        );
        self.url = url;
        self.proc = proc;
    }

    /// Restarts with other `serve` arguments (e.g. adding `--no-controller`).
    pub fn restart_with(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self.restart();
    }

    /// SIGTERM: steward stops its controllers, API and supervised
    /// containerd (containers live on); waits for it to exit.
    pub fn stop_graceful(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.proc.child.id() as i32;
        // The containerd this steward started (its child), if any: steward
        // stops it on the way out. One it adopted lives on.
        let config = self.data_dir.join("containerd/config.toml").to_string_lossy().into_owned();
        let supervised: Vec<i32> = pids_mentioning(&config).into_iter().filter(|&p| parent_pid(p) == Some(pid)).collect();
        // SAFETY: kill(2) on the pid of our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let status = wait_for("steward to exit after SIGTERM", timeout, || self.proc.child.try_wait().ok().flatten());
        // Wait for it, so a new steward does not adopt one about to exit.
        wait_for("the supervised containerd to exit", timeout, || {
            supervised.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists()).then_some(())
        });
        status
    }

    /// The pid of the steward process.
    pub fn pid(&self) -> i32 {
        self.proc.child.id() as i32
    }

    fn spawn(
        bin: &Path,
        data_dir: &Path,
        listen: &str,
        args: &[String],
        net: &NetSlot,
    ) -> (String, Proc) {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen])
            .args(args);
        // This workspace's steward without a configuration of the test's
        // gets one of only its network (an older steward knows no
        // configuration file, nor networks).
        if bin == steward_bin() && !args.iter().any(|a| a == "--config") {
            cmd.args(Self::net_config_args(data_dir, args, net));
        }
        let mut proc = Proc::spawn(&mut cmd);
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => server_url(&line),
            Err(_) => panic!("steward serve did not start:\n{}", proc.logs()),
        };
        std::thread::spawn(move || while rx.recv().is_ok() {});
        (url, proc)
    }

    /// `--config FILE`: the test's, or one of only `net`.
    fn net_config_args(data_dir: &Path, args: &[String], net: &NetSlot) -> Vec<String> {
        if let Some(file) = args.iter().position(|a| a == "--config").and_then(|i| args.get(i + 1)) {
            return vec!["--config".into(), file.clone()];
        }
        let file = PathBuf::from(format!("{}.network.yaml", data_dir.display()));
        std::fs::write(&file, net.yaml()).expect("write the network config");
        vec!["--config".into(), file.display().to_string()]
    }

    /// The kubeconfig `serve` wrote (server, CA, token).
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }

    /// The CA that signed the API's serving certificate.
    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("pki/ca.crt")
    }

    /// The CLI, configured for this server as a user would: through the
    /// kubeconfig `serve` wrote (an older steward, serving plain HTTP and
    /// writing none, by `--server` and the token).
    pub fn command(&self) -> Command {
        let mut c = Command::new(steward_bin());
        c.env_remove("STEWARD_SERVER").env_remove("STEWARD_TOKEN");
        if self.url.starts_with("https://") {
            c.env("KUBECONFIG", self.kubeconfig());
        } else {
            c.env("KUBECONFIG", "").env("STEWARD_TOKEN", &self.token).arg("--server").arg(&self.url);
        }
        c
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run steward")
    }

    /// curl with this server's CA and token (`-s`); add the rest.
    pub fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.arg("-s").arg("--cacert").arg(self.ca()).arg("-H").arg(format!("Authorization: Bearer {}", self.token));
        c
    }

    /// Runs the CLI, panicking with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "steward {args:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.proc.logs()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn apply(&self, dir: &Path, name: &str, yaml: &str) -> String {
        let f = dir.join(format!("{name}.yaml"));
        std::fs::write(&f, yaml).expect("write manifest");
        self.ok(&["apply", "-f", &f.to_string_lossy()])
    }

    pub fn get(&self, name: &str) -> Option<Value> {
        let o = self.cli(&["get", "containers", name, "-o", "json"]);
        o.status.success().then(|| serde_json::from_slice(&o.stdout).ok()).flatten()
    }

    /// Waits until the object satisfies `check`.
    pub fn wait(&self, name: &str, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let mut last = None;
        let deadline = Instant::now() + timeout;
        loop {
            let o = self.get(name);
            if let Some(v) = &o {
                if check(v) {
                    return v.clone();
                }
            }
            last = o.or(last);
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {name}: {what}\nlast: {last:#?}\nserver log (tail):\n{}",
                tail(&self.proc.logs(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A `ctr` command against this steward's containerd.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "steward"])
            .args(args);
        c
    }

    /// `METHOD URL_PATH` against the API with the token (curl), no body:
    /// the status code and the body.
    pub fn request(&self, method: &str, path: &str) -> (u16, String) {
        let out = self
            .curl()
            .args(["-w", "\n%{http_code}", "-X", method])
            .arg(format!("{}{path}", self.url))
            .output()
            .unwrap_or_else(|e| panic!("curl: {e}; apt-get install -y curl"));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// `ctr` against this steward's containerd.
    pub fn ctr(&self, args: &[&str]) -> String {
        let o = self.ctr_command(args).output().unwrap_or_else(|e| panic!("ctr: {e}; {INSTALL}"));
        assert!(o.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Ids (first column, header dropped) of `ctr <what> ls -q`-style output.
    pub fn ctr_ids(&self, what: &str) -> Vec<String> {
        self.ctr(&[what, "ls", "-q"]).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    }
}

/// The URL in `steward serve`'s `listening on URL` line (an older
/// steward printed only the address, and served plain HTTP).
pub fn server_url(line: &str) -> String {
    let rest = line.trim().trim_start_matches("listening on ").trim();
    if rest.contains("://") {
        rest.to_string()
    } else {
        format!("http://{rest}")
    }
}

/// The parent of `pid` (from /proc/PID/stat).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Pids of processes whose command line mentions `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

impl Drop for Steward {
    /// Containers outlive steward by design, so a test must remove its own:
    /// stop steward (else it restarts what we delete), force-delete every
    /// task and container through the containerd it leaves running, then
    /// stop that containerd and anything else of this data dir.
    fn drop(&mut self) {
        self.proc.kill();
        let ctr = |args: &[&str]| {
            self.ctr_command(args)
                .output()
                .ok()
                .map(|o| {
                    if !o.status.success() {
                        eprintln!("cleanup: ctr {args:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
                    }
                    String::from_utf8_lossy(&o.stdout).into_owned()
                })
                .unwrap_or_default()
        };
        for id in ctr(&["containers", "ls", "-q"]).lines().map(str::trim).filter(|l| !l.is_empty()) {
            ctr(&["tasks", "delete", "--force", id]);
            ctr(&["containers", "rm", id]);
        }
        // Their network attachments (iptables rules, leases, namespaces)
        // would outlive the test: tear them down as steward would.
        let mut prune = Command::new(steward_bin());
        prune.args(["network", "prune", "--data-dir"]).arg(&self.data_dir);
        prune.args(Self::net_config_args(&self.data_dir, &self.args, &self.net));
        if let Some(sock) = self.args.iter().position(|a| a == "--containerd-socket").and_then(|i| self.args.get(i + 1)) {
            prune.args(["--containerd-socket", sock]);
        }
        match prune.output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("cleanup: steward network prune: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => eprintln!("cleanup: steward network prune: {e}"),
        }
        let dir = self.data_dir.to_string_lossy().into_owned();
        for pid in pids_mentioning(&dir) {
            // SAFETY: kill(2) takes plain integers; no memory is shared.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A registry and a steward (its own containerd) in a temporary directory:
/// what most e2e tests start from. Fields drop in order: steward (which
/// removes its containers) before the registry, and both before the
/// directory they live in.
pub struct Env {
    pub steward: Steward,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn start() -> Env {
        require_tools();
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::start(dir.path());
        let steward = Steward::start(&dir.path().join("data"));
        Env { steward, registry, dir }
    }
}

/// A Container manifest: `extra` is more of its spec, indented two spaces.
pub fn manifest(name: &str, image: &str, extra: &str) -> String {
    format!("apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n{extra}")
}

/// The containerd id in `status.containerID`.
pub fn container_id(v: &Value) -> String {
    v.pointer("/status/containerID").and_then(Value::as_str).unwrap_or_default().trim_start_matches("containerd://").to_string()
}

pub fn phase(v: &Value) -> &str {
    v.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default()
}

pub fn waiting_reason(v: &Value) -> &str {
    v.pointer("/status/state/waiting/reason").and_then(Value::as_str).unwrap_or_default()
}
pub mod fault;
