//! `exec` into running containers: the CLI, the WebSocket protocol (also
//! spoken by Python's websocket-client), a terminal driven through a pty
//! this test allocates, and the refusals (404, 409, 400, 401). Real
//! containerd, real registry, real `steward serve`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use steward_e2e::*;

const T: Duration = Duration::from_secs(60);

/// A long-running container `name`, Running, with a working dir and an env
/// value the exec'd process must inherit.
fn sleeper(e: &Env, name: &str) -> Value {
    let extra = "  command: [sleep, \"3600\"]\n  workingDir: /tmp\n  env: [{name: GREETING, value: hello-from-spec}]\n";
    e.steward.apply(e.dir.path(), name, &manifest(name, &e.registry.image(), extra));
    e.steward.wait(name, "Running", T, |v| phase(v) == "Running")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The pids `ctr tasks ps` lists for container `id` (the task's own and
/// every exec process).
fn task_pids(s: &Steward, id: &str) -> usize {
    s.ctr(&["tasks", "ps", id]).lines().skip(1).filter(|l| !l.trim().is_empty()).count()
}

/// Exec FIFO directories steward has not removed.
fn fifo_dirs(s: &Steward) -> Vec<String> {
    std::fs::read_dir(s.data_dir.join("exec"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn exec_path(name: &str, query: &str) -> String {
    format!("/apis/steward.dev/v1alpha1/namespaces/default/containers/{name}/exec?{query}")
}

/// curl with a WebSocket handshake's headers (and the token unless
/// `token` is false): the status code and the body.
fn handshake(s: &Steward, path: &str, protocol: &str, token: bool) -> (u16, String) {
    handshake_with(s, "GET", path, protocol, token)
}

fn handshake_with(s: &Steward, method: &str, path: &str, protocol: &str, token: bool) -> (u16, String) {
    let mut c = Command::new("curl");
    c.arg("--cacert").arg(s.ca());
    c.args(["-s", "--max-time", "5", "-X", method, "-w", "\n%{http_code}"])
        .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13"])
        .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
        .arg("-H")
        .arg(format!("Sec-WebSocket-Protocol: {protocol}"));
    if token {
        c.arg("-H").arg(format!("Authorization: Bearer {}", s.token));
    }
    let out = c.arg(format!("{}{path}", s.url)).output().unwrap_or_else(|e| panic!("curl: {e}; {INSTALL}"));
    let text = text(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `steward exec ARGS` with `input` on its stdin.
fn exec_with_input(s: &Steward, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = s
        .command()
        .arg("exec")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run steward exec");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("steward exec");
    let _ = writer.join();
    out
}

#[test]
fn exec_relays_output_exit_codes_and_stdin_and_cleans_up() {
    let e = Env::start();
    let s = &e.steward;
    let v = sleeper(&e, "web");
    let id = container_id(&v);

    let o = s.cli(&["exec", "web", "--", "echo", "hi"]);
    assert_eq!((o.status.code(), text(&o.stdout), text(&o.stderr)), (Some(0), "hi\n".into(), String::new()));

    // stdout and stderr stay apart.
    let o = s.cli(&["exec", "web", "--", "sh", "-c", "echo out; echo err >&2; echo out2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!((text(&o.stdout), text(&o.stderr)), ("out\nout2\n".into(), "err\n".into()));

    // The remote exit code is steward's.
    let o = s.cli(&["exec", "web", "--", "sh", "-c", "echo before; exit 3"]);
    assert_eq!((o.status.code(), text(&o.stdout)), (Some(3), "before\n".into()), "{}", text(&o.stderr));

    // The process is the container's: its working dir and env.
    let o = s.cli(&["exec", "container/web", "--", "sh", "-c", "pwd; echo $GREETING; id -u"]);
    assert_eq!(text(&o.stdout), "/tmp\nhello-from-spec\n0\n", "{}", text(&o.stderr));

    // stdin, closed at EOF (cat ends), also more than a pipe holds.
    let o = exec_with_input(s, &["-i", "web", "--", "cat"], b"hi\n");
    assert_eq!((o.status.code(), text(&o.stdout)), (Some(0), "hi\n".into()), "{}", text(&o.stderr));
    let big = vec![b'x'; 3 << 20];
    let o = exec_with_input(s, &["-i", "web", "--", "wc", "-c"], &big);
    assert_eq!(text(&o.stdout).trim(), (3 << 20).to_string(), "{}", text(&o.stderr));
    let o = exec_with_input(s, &["-i", "web", "--", "sh", "-c", "head -c 2000000 /dev/zero; wc -c"], b"12345");
    assert_eq!(o.stdout.len(), 2_000_000 + "5\n".len(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).ends_with("5\n"));

    // A command that does not exist: runc's reason, exit 1.
    let o = s.cli(&["exec", "web", "--", "no-such-command"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no-such-command"), "{}", text(&o.stderr));

    // A reader that goes away (`| head`): steward exits quietly, and the
    // remote process goes with the connection.
    let o = Command::new("sh")
        .args(["-c", "\"$0\" exec web -- yes | head -n 2"])
        .arg(steward_bin())
        .env("KUBECONFIG", s.kubeconfig())
        .output()
        .expect("sh");
    assert_eq!(text(&o.stdout), "y\ny\n", "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "");

    // Nothing left behind: no exec process, no FIFO.
    wait_for("exec processes to be deleted", T, || (task_pids(s, &id) == 1).then_some(()));
    wait_for("exec FIFOs to be removed", T, || fifo_dirs(s).is_empty().then_some(()));

    // A client that goes away mid-exec: the process is killed and removed.
    let mut client = Proc::spawn(s.command().args(["exec", "web", "--", "sleep", "1000"]));
    wait_for("the exec'd sleep to run", T, || (task_pids(s, &id) == 2).then_some(()));
    assert_eq!(fifo_dirs(s).len(), 1);
    client.kill();
    wait_for("the abandoned exec process to be killed", T, || (task_pids(s, &id) == 1).then_some(()));
    wait_for("its FIFOs to be removed", T, || fifo_dirs(s).is_empty().then_some(()));
    let v = s.get("web").expect("web");
    assert_eq!((phase(&v), v["status"]["restartCount"].as_u64()), ("Running", Some(0)), "the container itself is untouched");
}

#[test]
fn exec_is_refused_before_the_upgrade_when_it_cannot_run() {
    let e = Env::start();
    let s = &e.steward;
    let id = container_id(&sleeper(&e, "web"));
    e.steward.apply(
        e.dir.path(),
        "job",
        &manifest("job", &e.registry.image(), "  command: [/bin/sh, -c, \"echo done\"]\n  restartPolicy: Never\n"),
    );
    s.wait("job", "Succeeded", T, |v| phase(v) == "Succeeded");
    let q = "command=true&stdout=true";

    // Not running: 409, naming the state, with or without a handshake.
    let (code, body) = s.request("GET", &exec_path("job", q));
    assert_eq!(code, 409, "{body}");
    let st: Value = serde_json::from_str(&body).expect("a Status");
    assert_eq!(st["reason"], "Conflict", "{body}");
    assert!(st["message"].as_str().unwrap_or_default().contains("terminated: Completed"), "{body}");
    let (code, _) = handshake(s, &exec_path("job", q), "v5.channel.k8s.io", true);
    assert_eq!(code, 409);
    let o = s.cli(&["exec", "job", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("Conflict") && text(&o.stderr).contains("not running"), "{}", text(&o.stderr));

    // Unknown: 404.
    let (code, body) = handshake(s, &exec_path("nosuch", q), "v5.channel.k8s.io", true);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("NotFound"), "{body}");
    let o = s.cli(&["exec", "nosuch", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("NotFound"), "{}", text(&o.stderr));

    // No token: 401, as every route.
    let (code, body) = handshake(s, &exec_path("web", q), "v5.channel.k8s.io", false);
    assert_eq!(code, 401, "{body}");

    // Parameters: a command, and at least one stream.
    let (code, body) = handshake(s, &exec_path("web", "stdout=true"), "v5.channel.k8s.io", true);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("command"), "{body}");
    let (code, body) = handshake(s, &exec_path("web", "command=true"), "v5.channel.k8s.io", true);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("stdin, stdout, or stderr"), "{body}");

    // Not a WebSocket handshake: 400.
    let (code, body) = s.request("GET", &exec_path("web", q));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("Upgrade request required"), "{body}");

    // A handshake by POST (older kubectl) is served too: 101. curl then
    // has nothing to say and goes away; the server kills the process.
    let (code, _) =
        handshake_with(s, "POST", &exec_path("web", "command=sleep&command=30&stdout=true"), "v4.channel.k8s.io", true);
    assert_eq!(code, 101);
    wait_for("the abandoned exec process to be killed", T, || (task_pids(s, &id) == 1).then_some(()));

    // No protocol steward speaks: 400, naming the ones it does.
    let (code, body) = handshake(s, &exec_path("web", q), "channel.k8s.io, v3.channel.k8s.io", true);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("v5.channel.k8s.io") && body.contains("v4.channel.k8s.io"), "{body}");
}

/// A client written with another library (Python's websocket-client, as
/// the Kubernetes Python client uses) speaks the same protocol.
#[test]
fn a_python_websocket_client_speaks_the_protocol() {
    let py = Path::new("/usr/bin/python3");
    let probe = Command::new(py).args(["-c", "import websocket"]).output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "e2e needs Python's websocket-client: apt-get install -y python3 python3-websocket (or: make deps-e2e)"
    );
    let e = Env::start();
    let s = &e.steward;
    sleeper(&e, "web");
    let script = r#"
import json, sys, websocket
url, token, protocol, stdin, ca = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ws = websocket.create_connection(url, subprotocols=[protocol], header=["Authorization: Bearer " + token], timeout=30, sslopt={"ca_certs": ca})
if stdin:
    ws.send_binary(b"\x00" + stdin.encode())
    ws.send_binary(b"\xff\x00")
out = {"protocol": ws.subprotocol, "1": "", "2": "", "3": None}
while True:
    opcode, data = ws.recv_data()
    if opcode == websocket.ABNF.OPCODE_CLOSE:
        break
    ch = str(data[0])
    if ch == "3":
        out["3"] = json.loads(data[1:])
    else:
        out[ch] += data[1:].decode()
print(json.dumps(out))
"#;
    let run = |query: &str, protocol: &str, stdin: &str| -> Value {
        let url = format!("{}{}", s.url.replace("https://", "wss://"), exec_path("web", query));
        let ca = s.ca().display().to_string();
        let o = Command::new(py).args(["-c", script, &url, &s.token, protocol, stdin, &ca]).output().expect("python3");
        assert!(o.status.success(), "python client failed: {}\nserver log:\n{}", text(&o.stderr), tail(&s.proc.logs(), 30));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)))
    };
    let r = run("command=sh&command=-c&command=echo%20hi%20from%20python&stdout=true&stderr=true", "v5.channel.k8s.io", "");
    assert_eq!(r["protocol"], "v5.channel.k8s.io");
    assert_eq!(r["1"], "hi from python\n");
    assert_eq!(r["3"], serde_json::json!({"metadata": {}, "status": "Success"}));

    let r =
        run("command=sh&command=-c&command=echo%20err%20%3E%262%3B%20exit%205&stdout=true&stderr=true", "v4.channel.k8s.io", "");
    assert_eq!((r["protocol"].as_str(), r["2"].as_str()), (Some("v4.channel.k8s.io"), Some("err\n")));
    assert_eq!(r["3"]["status"], "Failure");
    assert_eq!(r["3"]["reason"], "NonZeroExitCode");
    assert_eq!(r["3"]["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "5"}));

    // v5's close message ends stdin.
    let r = run("command=cat&stdin=true&stdout=true", "v5.channel.k8s.io", "piped through\n");
    assert_eq!(
        (r["1"].as_str(), r["3"]["status"].as_str()),
        (Some("piped through\n"), Some("Success")),
        "{r}\n{}",
        tail(&s.proc.logs(), 30)
    );
}

/// A pseudo-terminal: the master side (kept here) and the path of the slave.
struct Pty {
    master: std::fs::File,
    slave: String,
    output: Arc<Mutex<Vec<u8>>>,
    /// A slave descriptor held for the pty's life: with none open, the
    /// kernel ends reads of the master with EIO (after `cooked()` closes
    /// its own, say), which would stop the reader thread before the
    /// session starts.
    _slave_held: std::fs::File,
}

impl Pty {
    fn open(cols: u16, rows: u16) -> Pty {
        // SAFETY: plain libc calls on a descriptor this function owns.
        let (master, slave) = unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            assert_eq!(libc::grantpt(fd), 0);
            assert_eq!(libc::unlockpt(fd), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
            let slave = std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
            (std::fs::File::from(OwnedFd::from_raw_fd(fd)), slave)
        };
        use std::os::unix::fs::OpenOptionsExt;
        let held = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&slave)
            .expect("open the pty slave");
        let pty = Pty { master, slave, output: Arc::new(Mutex::new(Vec::new())), _slave_held: held };
        pty.resize(cols, rows);
        let mut reader = pty.master.try_clone().expect("dup the pty master");
        let output = pty.output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().expect("pty output").extend_from_slice(&buf[..n]);
            }
        });
        pty
    }

    /// Sets the terminal's size; the kernel sends SIGWINCH to its
    /// foreground process group.
    fn resize(&self, cols: u16, rows: u16) {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a valid winsize.
        assert_eq!(unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }, 0);
    }

    fn send(&self, bytes: &[u8]) {
        (&self.master).write_all(bytes).expect("write to the pty");
    }

    fn output(&self) -> String {
        text(&self.output.lock().expect("pty output"))
    }

    /// Sends `input` until the output holds `needle` (input that reaches
    /// a shell still setting up its terminal, or the line a Ctrl-C
    /// flushed, is lost: sending again is what a person would do).
    fn send_until(&self, what: &str, input: &[u8], needle: &str) {
        let deadline = Instant::now() + T;
        let mut last: Option<Instant> = None;
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "timed out after {T:?} waiting for {what}; the terminal shows:\n{}",
                self.output()
            );
            if last.is_none_or(|l| l.elapsed() > Duration::from_secs(1)) {
                self.send(input);
                last = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `steward exec ARGS` with the pty's slave as its controlling
    /// terminal and stdio.
    fn spawn(&self, s: &Steward, args: &[&str]) -> std::process::Child {
        let open = || std::fs::OpenOptions::new().read(true).write(true).open(&self.slave).expect("open the pty slave");
        let mut cmd = s.command();
        cmd.arg("exec").args(args);
        cmd.stdin(open()).stdout(open()).stderr(open());
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().expect("run steward exec -t")
    }

    /// The local terminal's flags: whether it is cooked (ICANON and ECHO).
    fn cooked(&self) -> bool {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&self.slave).expect("open the pty slave");
        // SAFETY: tcgetattr fills a plain-data struct or fails.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::tcgetattr(f.as_raw_fd(), &mut t) }, 0);
        t.c_lflag & (libc::ICANON | libc::ECHO) == (libc::ICANON | libc::ECHO)
    }
}

#[test]
fn a_terminal_session_gets_a_pty_its_size_and_resizes() {
    let e = Env::start();
    let s = &e.steward;
    let id = container_id(&sleeper(&e, "web"));
    let pty = Pty::open(100, 30);
    assert!(pty.cooked());
    let mut child = pty.spawn(s, &["-it", "web", "--", "sh"]);
    // The remote side has a terminal of the local one's size.
    pty.send_until("the remote shell's answers", b"tty; stty size; echo mark-$((40+2))\n", "mark-42");
    let out = pty.output();
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("30 100"), "{out}");
    assert!(!pty.cooked(), "the local terminal is raw during the session");

    // A resize of the local terminal reaches the remote one.
    pty.resize(120, 40);
    pty.send_until("the resize to reach the remote terminal", b"stty size\n", "40 120");

    // Ctrl-C is a byte for the remote terminal: it interrupts the remote
    // sleep, and the session goes on.
    pty.send(b"sleep 100\n");
    // The task's sleep 3600, the exec'd shell, and its sleep 100.
    wait_for("the remote sleep to run", T, || (task_pids(s, &id) == 3).then_some(()));
    // (Sent again until it lands: a Ctrl-C between the fork and the
    // child taking the terminal's foreground goes to the shell instead.)
    pty.send_until("the shell to survive Ctrl-C", b"\x03echo alive-$((1+1))\n", "alive-2");

    // The remote exit code is steward's, and the terminal is restored.
    pty.send(b"exit 7\n");
    let status = wait_for("steward exec -t to exit", T, || child.try_wait().ok().flatten());
    assert_eq!(status.code(), Some(7), "{}", pty.output());
    assert!(pty.cooked(), "the local terminal is restored");
}
