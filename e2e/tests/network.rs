//! Bridge networking on real containerd with the real CNI plugins
//! (Debian's containernetworking-plugins): addresses, names, published
//! ports, port conflicts, and teardown that leaves nothing behind, also
//! across kill -9.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use steward_e2e::*;

const T: Duration = Duration::from_secs(60);

/// Containers here stop within a second.
fn manifest(name: &str, image: &str, extra: &str) -> String {
    steward_e2e::manifest(name, image, &format!("  terminationGracePeriodSeconds: 1\n{extra}"))
}

/// busybox httpd serving `text` on port 80 (a shell as pid 1 so SIGTERM
/// ends it).
fn web(text: &str) -> String {
    format!("  command: [sh, -c, \"mkdir -p /www && echo {text} > /www/index.html && httpd -f -p 80 -h /www & trap 'exit 0' TERM; wait\"]\n")
}

const SLEEPER: &str = "  command: [sh, -c, \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n";

fn ip(v: &Value) -> String {
    v.pointer("/status/ip")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn running(s: &Steward, name: &str) -> Value {
    s.wait(name, "Running with an address", T, |v| {
        v.pointer("/status/phase") == Some(&"Running".into()) && !ip(v).is_empty()
    })
}

/// Runs `cmd` in container `id` through ctr (stdout; panics on failure).
fn exec(s: &Steward, id: &str, cmd: &[&str]) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let exec_id = format!(
        "t{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut args = vec!["tasks", "exec", "--exec-id", &exec_id, id];
    args.extend_from_slice(cmd);
    let out = s.ctr_command(&args).output().expect("ctr tasks exec");
    assert!(
        out.status.success(),
        "{cmd:?} in {id}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "-m", "3", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The host's first global IPv4 address (not loopback).
fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip addr");
    let text = String::from_utf8_lossy(&out.stdout);
    let addr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .expect("a global IPv4 address");
    addr.split('/').next().unwrap_or_default().to_string()
}

/// What of steward's networking is left for containers `ids` (and, with
/// `all`, for anything on this steward's subnet): namespaces, cache
/// entries, per-container files, IPAM leases, iptables rules.
fn leftovers(s: &Steward, ids: &[String], all: bool) -> Vec<String> {
    let mut left = Vec::new();
    for run in std::fs::read_dir("/run/steward")
        .into_iter()
        .flatten()
        .flatten()
    {
        for id in ids {
            let p = run.path().join("netns").join(id);
            if p.exists() {
                left.push(format!("namespace {}", p.display()));
            }
        }
    }
    // Records, per-container files, IPAM leases: what the fault suite's
    // invariant reads.
    for (id, what) in steward_e2e::fault::network_ids(&s.data_dir) {
        if all || ids.contains(&id) {
            left.push(format!("{what} ({id})"));
        }
    }
    let rules = Command::new("iptables-save")
        .output()
        .expect("iptables-save");
    let subnet_prefix = format!("10.231.{}.", s.net.index);
    for line in String::from_utf8_lossy(&rules.stdout).lines() {
        if ids.iter().any(|id| line.contains(id.as_str())) || (all && line.contains(&subnet_prefix))
        {
            left.push(format!("iptables: {line}"));
        }
    }
    left
}

/// Two containers on the bridge reach each other by address and by name;
/// a published port answers on 127.0.0.1 and on the host's address; a
/// second container asking for the port waits in PortConflict, naming the
/// owner, and starts within seconds of the owner's removal; after deleting
/// everything, nothing of steward's networking is left.
#[test]
fn bridge_addresses_names_ports_and_clean_teardown() {
    let e = Env::start();
    let (s, img, dir) = (&e.steward, e.registry.image(), e.dir.path());
    let port = free_port();
    s.apply(
        dir,
        "web",
        &manifest(
            "web",
            &img,
            &format!(
                "{}  ports: [{{name: http, containerPort: 80, hostPort: {port}}}]\n",
                web("hello-web")
            ),
        ),
    );
    s.apply(dir, "client", &manifest("client", &img, SLEEPER));
    let w = running(s, "web");
    let c = running(s, "client");
    let (web_ip, client_ip) = (ip(&w), ip(&c));
    let prefix = format!("10.231.{}.", s.net.index);
    assert!(
        web_ip.starts_with(&prefix) && client_ip.starts_with(&prefix) && web_ip != client_ip,
        "{web_ip} {client_ip}"
    );
    assert_eq!(
        w.pointer("/status/ips/0").and_then(Value::as_str),
        Some(web_ip.as_str())
    );
    assert_eq!(
        w.pointer("/spec/network").and_then(Value::as_str),
        Some("bridge"),
        "the default network"
    );
    let (web_id, client_id) = (container_id(&w), container_id(&c));

    // By address, by name, by name.namespace (the server may need a moment).
    for target in [web_ip.as_str(), "web", "web.default"] {
        let url = format!("http://{target}/");
        let got = wait_for(&format!("client to fetch {url}"), T, || {
            let out = s
                .ctr_command(&[
                    "tasks",
                    "exec",
                    "--exec-id",
                    &format!("w{}", target.len()),
                    &client_id,
                    "wget",
                    "-qO-",
                    &url,
                ])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        });
        assert_eq!(got, "hello-web", "{url}");
    }
    // The resolver files steward wrote; the hostname is the name.
    let resolv = exec(s, &client_id, &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.starts_with(&format!("nameserver {prefix}1\n")),
        "{resolv}"
    );
    let hosts = exec(s, &client_id, &["cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{client_ip}\tclient")), "{hosts}");
    assert_eq!(exec(s, &client_id, &["hostname"]).trim(), "client");
    // An unknown bare name fails fast (NXDOMAIN, not a forward).
    let started = Instant::now();
    let out = s
        .ctr_command(&[
            "tasks",
            "exec",
            "--exec-id",
            "nx",
            &client_id,
            "nslookup",
            "nosuchcontainer",
        ])
        .output()
        .expect("nslookup");
    assert!(
        !out.status.success(),
        "nosuchcontainer resolved: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "NXDOMAIN took {:?}",
        started.elapsed()
    );

    // The published port, from the host: loopback and the host's address.
    let host = host_address();
    for addr in ["127.0.0.1".to_string(), host.clone()] {
        let url = format!("http://{addr}:{port}/");
        assert_eq!(
            wait_for(&format!("{url} to answer"), T, || curl(&url)),
            "hello-web",
            "{url}"
        );
    }
    // get -o wide and describe show the address.
    let wide = s.ok(&["get", "containers", "-o", "wide"]);
    assert!(
        wide.lines().next().unwrap_or_default().ends_with("IP") && wide.contains(&web_ip),
        "{wide}"
    );
    let described = s.ok(&["describe", "containers", "web"]);
    assert!(
        described.contains(&format!("IP:           {web_ip}"))
            && described.contains(&format!("80/TCP (http) published on 0.0.0.0:{port}")),
        "{described}"
    );

    // A restart keeps the attachment: the same address, the port still
    // published (the plugins' CHECK would have re-addressed it).
    s.ctr(&["tasks", "kill", "-s", "SIGKILL", &web_id]);
    let again = s.wait("web", "restarted", T, |v| {
        v.pointer("/status/restartCount").and_then(Value::as_i64) >= Some(1) && v.pointer("/status/phase") == Some(&"Running".into()) && !ip(v).is_empty()
    });
    assert_eq!(ip(&again), web_ip, "a restart changed web's address");
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(wait_for("the port to answer after the restart", T, || curl(&url)), "hello-web");
    // A second container on the same host port waits, naming the owner.
    s.apply(
        dir,
        "web2",
        &manifest(
            "web2",
            &img,
            &format!(
                "{}  ports: [{{containerPort: 80, hostPort: {port}}}]\n",
                web("hello-web2")
            ),
        ),
    );
    let v = s.wait("web2", "PortConflict", T, |v| {
        v.pointer("/status/state/waiting/reason") == Some(&"PortConflict".into())
    });
    let msg = v
        .pointer("/status/state/waiting/message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        msg.contains("default/web") && msg.contains(&port.to_string()),
        "{msg}"
    );
    assert_eq!(
        s.ok(&["get", "containers", "web2"])
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .nth(2),
        Some("PortConflict")
    );
    // The owner goes: web2 starts within seconds (woken, not a backoff).
    s.ok(&["delete", "containers", "web", "--wait", "--timeout", "60s"]);
    let gone = Instant::now();
    let v = running(s, "web2");
    let took = gone.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "web2 started {took:?} after web was gone"
    );
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        wait_for("web2 to answer on the port", T, || curl(&url)
            .filter(|b| b == "hello-web2")),
        "hello-web2"
    );
    let left = leftovers(s, std::slice::from_ref(&web_id), false);
    assert!(left.is_empty(), "web left: {left:?}");
    let web2_id = container_id(&v);
    eprintln!("web2 started {took:?} after web was removed");

    // Everything goes: nothing of steward's networking is left.
    s.ok(&[
        "delete",
        "containers",
        "client",
        "web2",
        "--wait",
        "--timeout",
        "60s",
    ]);
    let ids = vec![web_id, client_id, web2_id];
    let left = leftovers(s, &ids, true);
    assert!(left.is_empty(), "left after deleting everything: {left:#?}");
}

/// kill -9 of steward right after a container's CNI ADD (before its task
/// starts), and a container removed behind steward's back while steward
/// is down: after the restart everything converges, and once deleted
/// nothing is left.
#[test]
fn kill9_between_add_and_start_and_leaks_are_collected() {
    let mut e = Env::start();
    let img = e.registry.image();
    let dir = e.dir.path().to_path_buf();
    let mut hit = 0;
    let mut ids = Vec::new();
    for round in 0..3 {
        let name = format!("k{round}");
        let before = e.steward.proc.logs().len();
        e.steward
            .apply(&dir, &name, &manifest(&name, &img, SLEEPER));
        // Kill the moment the log says "attached" for this one.
        let deadline = Instant::now() + T;
        loop {
            let logs = e.steward.proc.logs();
            if logs[before.min(logs.len())..]
                .lines()
                .any(|l| l.contains("attached") && l.contains(&format!(".{name}.")))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} was never attached:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        e.steward.kill9();
        let tasks = e.steward.ctr(&["tasks", "ls"]);
        if !tasks.contains(&format!(".{name}.")) {
            hit += 1;
        }
        e.steward.restart();
        let v = running(&e.steward, &name);
        ids.push(container_id(&v));
    }
    eprintln!("{hit} of 3 kills landed between the ADD and the task's start");
    assert!(hit > 0, "no kill landed between ADD and start");

    // A container removed behind steward's back while it is down: its
    // attachment is collected (or taken over by the container made again).
    let s = &e.steward;
    let victim = ids[0].clone();
    let old_ip = ip(&s.get("k0").expect("k0"));
    e.steward.kill9();
    let s = &e.steward;
    s.ctr(&["tasks", "kill", "-s", "SIGKILL", &victim]);
    wait_for("the victim's task to stop", T, || {
        let ls = s.ctr(&["tasks", "ls"]);
        ls.lines()
            .find(|l| l.starts_with(&victim))
            .is_none_or(|l| l.contains("STOPPED"))
            .then_some(())
    });
    s.ctr(&["tasks", "delete", &victim]);
    s.ctr(&["containers", "delete", &victim]);
    e.steward.restart();
    let s = &e.steward;
    let v = s.wait("k0", "Running again", T, |v| {
        v.pointer("/status/phase") == Some(&"Running".into())
            && !ip(v).is_empty()
            && v["status"]["restartCount"].as_i64() >= Some(0)
    });
    // One lease for it, whichever way it converged.
    let leases = std::fs::read_dir(s.data_dir.join("cni/networks/bridge"))
        .expect("leases")
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .contains(&victim)
        })
        .count();
    assert_eq!(
        leases,
        1,
        "k0 ({old_ip} before, {} now) holds {leases} leases",
        ip(&v)
    );

    for i in 0..3 {
        s.ok(&[
            "delete",
            "containers",
            &format!("k{i}"),
            "--wait",
            "--timeout",
            "60s",
        ]);
    }
    let left = leftovers(s, &ids, true);
    assert!(left.is_empty(), "left after deleting everything: {left:#?}");
}

/// A leak made by hand while steward runs (an attachment whose container
/// is gone: what a crash between ADD and container create leaves) is
/// collected within seconds of a container deletion event.
#[test]
fn an_attachment_without_a_container_is_collected() {
    let e = Env::start();
    let (s, img, dir) = (&e.steward, e.registry.image(), e.dir.path());
    s.apply(dir, "a", &manifest("a", &img, SLEEPER));
    let v = running(s, "a");
    let id = container_id(&v);
    // Copy a's attachment record under an id containerd does not have.
    let cni = s.data_dir.join("cni");
    let fake = "default.ghost.000000000000".to_string();
    let mut entry: Value = serde_json::from_str(
        &std::fs::read_to_string(cni.join("results").join(format!("{id}.json")))
            .expect("a's cache entry"),
    )
    .expect("json");
    // Recorded before its ADD, no result: a crash cut the ADD short.
    entry["result"] = Value::Null;
    entry["name"] = "ghost".into();
    std::fs::write(
        cni.join("results").join(format!("{fake}.json")),
        entry.to_string(),
    )
    .expect("write ghost entry");
    std::fs::create_dir_all(cni.join("containers").join(&fake)).expect("ghost files");
    // Any container deletion wakes the collector.
    s.apply(
        dir,
        "b",
        &manifest("b", &img, "  command: [\"true\"]\n  restartPolicy: Never\n"),
    );
    let b = s.wait("b", "Succeeded", T, |v| v.pointer("/status/phase") == Some(&"Succeeded".into()));
    // A finished container releases its address (and ports) at once; the
    // object stays.
    let b_id = container_id(&b);
    wait_for("the finished container's network to be released", Duration::from_secs(10), || {
        (leftovers(s, std::slice::from_ref(&b_id), false).is_empty() && s.get("b").is_some_and(|v| ip(&v).is_empty())).then_some(())
    });
    s.ok(&["delete", "containers", "b", "--wait", "--timeout", "60s"]);
    wait_for(
        "the ghost attachment to be collected",
        Duration::from_secs(10),
        || {
            (!cni.join("results").join(format!("{fake}.json")).exists()
                && !cni.join("containers").join(&fake).exists())
            .then_some(())
        },
    );
    // a is untouched: still reachable at its address from the host.
    let v2 = s.get("a").expect("a");
    assert_eq!((container_id(&v2), ip(&v2)), (id.clone(), ip(&v)));
    let ping = Command::new("ping")
        .args(["-c", "1", "-W", "2", &ip(&v)])
        .output();
    if let Ok(p) = ping {
        assert!(
            p.status.success(),
            "a at {} is not reachable after the collection",
            ip(&v)
        );
    }
    s.ok(&["delete", "containers", "a", "--wait", "--timeout", "60s"]);
    let left = leftovers(s, &[id, fake], true);
    assert!(left.is_empty(), "{left:#?}");
}

/// A second steward configured with the bridge a running one has refuses
/// to start (two IPAM stores would hand out the same addresses), naming
/// the key and the holder.
#[test]
fn a_second_steward_on_the_same_bridge_refuses_to_start() {
    let e = Env::start();
    let config = format!("{}.network.yaml", e.steward.data_dir.display());
    let other = e.dir.path().join("other");
    let out = Command::new("timeout")
        .args(["30", &steward_bin().to_string_lossy(), "serve", "--data-dir"])
        .arg(&other)
        .args(["--listen", &format!("127.0.0.1:{}", free_port()), "--config", &config, "--containerd-socket"])
        .arg(e.steward.containerd_socket())
        .output()
        .expect("run a second steward");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let bridge = e.steward.net.bridge();
    assert!(
        stderr.contains(&format!("networks.bridge.bridge: bridge {bridge} is in use by another steward")) && stderr.contains(&e.steward.data_dir.display().to_string()),
        "{stderr}"
    );
    // The first one is untouched.
    assert_eq!(e.steward.request("GET", "/readyz").0, 200);
}

/// `steward network prune` with steward stopped: asked about another
/// containerd namespace it refuses (it would find none of the containers
/// and tear down running ones); as recorded, it keeps what runs.
#[test]
fn network_prune_keeps_running_containers_and_refuses_another_namespace() {
    let mut e = Env::start();
    let img = e.registry.image();
    let dir = e.dir.path().to_path_buf();
    e.steward.apply(&dir, "a", &manifest("a", &img, SLEEPER));
    let v = running(&e.steward, "a");
    let (id, addr) = (container_id(&v), ip(&v));
    e.steward.kill9();
    let config = format!("{}.network.yaml", e.steward.data_dir.display());
    let prune = |extra: &[&str]| {
        Command::new(steward_bin())
            .args(["network", "prune", "--data-dir"])
            .arg(&e.steward.data_dir)
            .args(["--config", &config])
            .args(extra)
            .output()
            .expect("steward network prune")
    };
    let out = prune(&["--containerd-namespace", "k8s.io"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("belong to containerd namespace steward"), "{stderr}");
    let out = prune(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.starts_with("0 network attachment(s)"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(e.steward.data_dir.join("cni/results").join(format!("{id}.json")).exists(), "a's attachment was pruned");
    e.steward.restart();
    let v = running(&e.steward, "a");
    assert_eq!((container_id(&v), ip(&v)), (id, addr));
}
