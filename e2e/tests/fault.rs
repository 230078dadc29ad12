//! The fault suite (issue 7): real containerd, real `steward serve`
//! processes, faults injected in seeded rounds, and after every round the
//! convergence invariant (`steward_e2e::fault::check`) within a bound.
//!
//! Knobs: `STEWARD_FAULT_SEED` replays a run (each scenario prints its
//! seed), `STEWARD_FAULT_ROUNDS` sets the rounds per scenario (default: a
//! few, for CI), `STEWARD_FAULT_CONVERGE_SECS` the bound (default 20).
//! `make soak ROUNDS=N` runs them long, on a release build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use steward_e2e::fault::{self, Checker, ExternalContainerd, Figures, Rng, Want};
use steward_e2e::*;

/// The first convergence includes the image pull (excluded from the bound).
const FIRST: Duration = Duration::from_secs(120);
const CI_ROUNDS: u64 = 2;

/// Drop order: steward (removes its containers through `ctr`), then the
/// external containerd, the registry, the tmpfs and the directory.
struct Env {
    steward: Steward,
    ext: Option<ExternalContainerd>,
    registry: Registry,
    _tmpfs: Option<Tmpfs>,
    dir: tempfile::TempDir,
}

fn require_sqlite3() {
    let ok = Command::new("sqlite3").arg("-version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "the fault suite needs the sqlite3 CLI: apt-get install -y sqlite3 (or: make deps-e2e)");
}

fn env_with(external: bool, args: &[&str]) -> Env {
    require_tools();
    require_sqlite3();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(dir.path());
    let ext = external.then(|| ExternalContainerd::start(&dir.path().join("ext-containerd")));
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if let Some(e) = &ext {
        all.extend(["--containerd-socket".to_string(), e.socket.to_string_lossy().into_owned()]);
    }
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let steward = Steward::start_with(&dir.path().join("data"), &all);
    Env { steward, ext, registry, _tmpfs: None, dir }
}

fn env() -> Env {
    env_with(false, &[])
}

/// The CLI through a steward's kubeconfig (usable from a storm thread).
fn cli(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(steward_bin()).env("KUBECONFIG", kubeconfig).env_remove("STEWARD_SERVER").args(args).output().expect("run steward")
}

fn expect_of(i: usize) -> &'static str {
    if i % 8 == 7 {
        "succeeded"
    } else {
        "running"
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

/// One CLI call of a storm.
#[derive(Clone, Debug)]
enum Batch {
    /// (name, expect, GEN) applied in one multi-document file.
    Apply(Vec<(String, &'static str, u64)>),
    Delete(Vec<String>),
}

/// A storm: creates of absent names, spec changes and deletes of present
/// ones, in a few CLI calls, in random order. `state` is the store's
/// content (name -> GEN) when the round starts.
fn plan_storm(rng: &mut Rng, pool: &[String], state: &BTreeMap<String, u64>, next_gen: &mut u64) -> Vec<Batch> {
    let mut applies = Vec::new();
    let mut deletes = Vec::new();
    for (i, name) in pool.iter().enumerate() {
        if state.contains_key(name) {
            if rng.chance(0.25) {
                *next_gen += 1;
                applies.push((name.clone(), expect_of(i), *next_gen));
            } else if rng.chance(0.25) {
                deletes.push(name.clone());
            }
        } else if rng.chance(0.6) {
            *next_gen += 1;
            applies.push((name.clone(), expect_of(i), *next_gen));
        }
    }
    let mut batches = Vec::new();
    let parts = 1 + rng.below(3) as usize;
    for chunk in applies.chunks(applies.len().div_ceil(parts).max(1)) {
        batches.push(Batch::Apply(chunk.to_vec()));
    }
    for chunk in deletes.chunks(deletes.len().div_ceil(2).max(1)) {
        batches.push(Batch::Delete(chunk.to_vec()));
    }
    // Fisher-Yates.
    for i in (1..batches.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        batches.swap(i, j);
    }
    batches
}

/// Runs a storm's batches one after another (with short random gaps);
/// returns what each acknowledged: Present/Absent, or Unknown when the
/// call failed (the server may have died under it).
fn run_storm(kubeconfig: PathBuf, image: String, dir: PathBuf, batches: Vec<Batch>, gaps: Vec<Duration>) -> BTreeMap<String, Want> {
    let mut out = BTreeMap::new();
    for (n, (b, gap)) in batches.into_iter().zip(gaps).enumerate() {
        std::thread::sleep(gap);
        match b {
            Batch::Apply(items) => {
                let docs: Vec<String> = items.iter().map(|(name, ex, g)| fault::manifest(name, &image, ex, *g)).collect();
                let f = dir.join(format!("storm-{n}.yaml"));
                std::fs::write(&f, fault::manifests(&docs)).expect("write manifests");
                let ok = cli(&kubeconfig, &["apply", "-f", &f.to_string_lossy()]).status.success();
                for (name, _, g) in items {
                    out.insert(name, if ok { Want::Present(g) } else { Want::Unknown });
                }
            }
            Batch::Delete(names) => {
                let mut args = vec!["delete", "containers"];
                args.extend(names.iter().map(String::as_str));
                let ok = cli(&kubeconfig, &args).status.success();
                for name in names {
                    out.insert(name, if ok { Want::Absent } else { Want::Unknown });
                }
            }
        }
    }
    out
}

/// name -> GEN of what the store holds now.
fn store_state(st: &Steward) -> BTreeMap<String, u64> {
    let list: Value = serde_json::from_str(&st.ok(&["get", "containers", "-o", "json"])).expect("list json");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let name = o["metadata"]["name"].as_str()?.to_string();
            let g = o["spec"]["env"].as_array()?.iter().find(|e| e["name"] == "GEN")?["value"].as_str()?.parse().ok()?;
            Some((name, g))
        })
        .collect()
}

/// Applies `names` (GEN 1) in one call and waits for convergence (pull included).
fn populate(e: &Env, checker: &mut Checker, pool: &[String], count: usize) -> BTreeMap<String, Want> {
    let docs: Vec<String> =
        pool.iter().enumerate().take(count).map(|(i, n)| fault::manifest(n, &e.registry.image(), expect_of(i), 1)).collect();
    let f = e.dir.path().join("populate.yaml");
    std::fs::write(&f, fault::manifests(&docs)).expect("write manifests");
    e.steward.ok(&["apply", "-f", &f.to_string_lossy()]);
    let want: BTreeMap<String, Want> = pool.iter().take(count).map(|n| (n.clone(), Want::Present(1))).collect();
    checker.converge(&e.steward, &want, FIRST);
    want
}

/// Scenario 1: kill -9 steward at random moments during storms of apply,
/// spec change and delete over 32 containers; restart; converge.
#[test]
fn fault_kill9_steward_during_storms() {
    let seed = fault::seed("kill9-steward");
    let mut rng = Rng::new(seed);
    let mut figures = Figures::new("kill9-steward", seed);
    let mut e = env();
    let mut checker = Checker::new();
    let pool = names("s", 32);
    let mut want = populate(&e, &mut checker, &pool, 24);
    let mut next_gen = 1;
    for _ in 0..fault::rounds(CI_ROUNDS) {
        let state = store_state(&e.steward);
        let batches = plan_storm(&mut rng, &pool, &state, &mut next_gen);
        let gaps: Vec<Duration> = batches.iter().map(|_| rng.millis(0, 300)).collect();
        let (kubeconfig, image, dir) = (e.steward.kubeconfig(), e.registry.image(), e.dir.path().to_path_buf());
        let storm = std::thread::spawn(move || run_storm(kubeconfig, image, dir, batches, gaps));
        let mut faults = 0;
        // One to three kills while the storm runs and the controller
        // reconciles it: at a random moment, or right after steward logs
        // that a containerd call returned (before it records the result).
        for _ in 0..1 + rng.below(3) {
            if rng.chance(0.5) {
                std::thread::sleep(rng.millis(0, 1500));
            } else {
                let from = fault::log_len(&e.steward);
                let step = fault::AFTER_CONTAINERD_CALL[rng.below(fault::AFTER_CONTAINERD_CALL.len() as u64) as usize];
                let line = fault::wait_log_line(&e.steward, from, &[step], Duration::from_secs(3));
                eprintln!("fault[kill9-steward]: kill after: {}", line.as_deref().unwrap_or("(3 s without a containerd step)"));
            }
            e.steward.kill9();
            faults += 1;
            std::thread::sleep(rng.millis(0, 300));
            e.steward.restart();
        }
        want.extend(storm.join().expect("storm thread"));
        let t = checker.converge(&e.steward, &want, fault::converge_bound());
        figures.round(faults, t);
    }
}

/// Scenario 2a: kill -9 of steward's supervised containerd while steward
/// reconciles a storm; the supervisor restarts it, steward resubscribes.
#[test]
fn fault_kill9_supervised_containerd() {
    kill9_containerd("kill9-containerd", false);
}

/// Scenario 2b: the same with a containerd the harness runs and passes
/// with --containerd-socket (the harness restarts it).
#[test]
fn fault_kill9_external_containerd() {
    kill9_containerd("kill9-ext-containerd", true);
}

fn kill9_containerd(scenario: &str, external: bool) {
    let seed = fault::seed(scenario);
    let mut rng = Rng::new(seed);
    let mut figures = Figures::new(scenario, seed);
    let mut e = env_with(external, &[]);
    let mut checker = Checker::new();
    let pool = names("c", 30);
    let mut want = populate(&e, &mut checker, &pool, 20);
    let mut next_gen = 1;
    // steward's supervisor restarts a containerd that ran 10 s at once and
    // backs off on one that keeps dying sooner (a crash loop): let each
    // live that long, so every round sees the prompt restart.
    let mut up_since = Instant::now();
    for _ in 0..fault::rounds(CI_ROUNDS) {
        if !external {
            std::thread::sleep(Duration::from_secs(11).saturating_sub(up_since.elapsed()));
        }
        let pids: BTreeMap<String, u64> = running_pids(&e.steward);
        let state = store_state(&e.steward);
        let batches = plan_storm(&mut rng, &pool, &state, &mut next_gen);
        let touched: Vec<String> = batches
            .iter()
            .flat_map(|b| match b {
                Batch::Apply(i) => i.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
                Batch::Delete(n) => n.clone(),
            })
            .collect();
        let gaps: Vec<Duration> = batches.iter().map(|_| rng.millis(0, 300)).collect();
        let (kubeconfig, image, dir) = (e.steward.kubeconfig(), e.registry.image(), e.dir.path().to_path_buf());
        let storm = std::thread::spawn(move || run_storm(kubeconfig, image, dir, batches, gaps));
        std::thread::sleep(rng.millis(0, 1500));
        let socket = e.steward.socket.clone();
        let pid = containerd_pid_or_panic(&socket);
        fault::sigkill(pid);
        let down = Instant::now();
        if let Some(ext) = e.ext.as_mut() {
            let _ = ext.proc.child.wait();
            std::thread::sleep(rng.millis(0, 1000));
            ext.restart();
        } else {
            // Gone, then back (the supervisor's restart).
            wait_for("the killed containerd to exit", Duration::from_secs(10), || {
                (!Path::new(&format!("/proc/{pid}")).exists() || proc_state(pid) == 'Z').then_some(())
            });
            wait_for("the supervisor to restart containerd", Duration::from_secs(60), || {
                fault::containerd_pid(&socket).filter(|&p| p != pid)
            });
            up_since = Instant::now();
        }
        let outage = down.elapsed();
        want.extend(storm.join().expect("storm thread"));
        let t = checker.converge(&e.steward, &want, fault::converge_bound());
        eprintln!("fault[{scenario}]: containerd down {:.2}s", outage.as_secs_f64());
        figures.round(1, t);
        // Containers the storm did not touch lived through it in their shims.
        let now = running_pids(&e.steward);
        for (name, pid) in pids.iter().filter(|(n, _)| !touched.contains(n)) {
            assert_eq!(now.get(name), Some(pid), "{name}: its process did not survive containerd's death");
        }
    }
}

/// Findings F1 and F2: containerd killed while it creates a task comes back
/// holding the shim it had started, with no task in it (Tasks.Create then
/// answers "already exists" while Get and List find nothing), or, killed
/// earlier, with the task's bundle directory and no shim (every create
/// fails on its mkdir). The harness puts a stopped steward's container in
/// the first state (`ctr tasks start` and a kill -9 of containerd a few ms
/// later, until it takes) and then in the second; steward, started again,
/// must clear each and run the container.
#[test]
fn a_task_create_cut_by_containerd_dying_is_recovered() {
    let mut e = env_with(true, &[]);
    e.steward.apply(e.dir.path(), "f1", &fault::manifest("f1", &e.registry.image(), "running", 1));
    let v = e.steward.wait("f1", "Running", Duration::from_secs(60), |v| phase(v) == "Running");
    let id = container_id(&v);
    e.steward.stop_graceful(Duration::from_secs(30));
    let socket = e.steward.socket.clone();
    let ctr_cmd = |args: &[&str]| {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&socket).args(["--namespace", "steward"]).args(args);
        c
    };
    let ctr = |args: &[&str]| ctr_cmd(args).output().expect("run ctr");
    let listed = |id: &str| String::from_utf8_lossy(&ctr(&["tasks", "ls"]).stdout).lines().any(|l| l.split_whitespace().next() == Some(id));
    let remove_task = |id: &str| {
        let _ = ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        wait_for("the task to be deletable", Duration::from_secs(10), || {
            let _ = ctr(&["tasks", "delete", "--force", id]);
            (!listed(id)).then_some(())
        });
    };
    remove_task(&id);
    let mut reached = false;
    for attempt in 0..60u64 {
        let mut start = ctr_cmd(&["tasks", "start", "--detach", &id]).spawn().expect("spawn ctr");
        std::thread::sleep(Duration::from_millis(5 + attempt * 7 % 60));
        let ext = e.ext.as_mut().expect("external containerd");
        ext.kill9();
        let _ = start.wait();
        ext.restart();
        if listed(&id) {
            // The create finished first: undo it and try a shorter window.
            remove_task(&id);
            continue;
        }
        // The state of F1: a fresh create is refused, yet no task is seen.
        let again = ctr(&["tasks", "start", "--detach", &id]);
        let said = String::from_utf8_lossy(&again.stderr).to_string();
        if !again.status.success() && said.contains("already exists") && !listed(&id) {
            eprintln!("fault[f1]: state reached after {} attempt(s)", attempt + 1);
            reached = true;
            break;
        }
        if said.contains("file exists") {
            // Killed even earlier: the bundle state (tested below). Clear
            // it by hand and aim again for the first.
            let bundle = e.ext.as_ref().expect("external containerd").dir.join("state/io.containerd.runtime.v2.task/steward").join(&id);
            let _ = Command::new("umount").arg("-l").arg(bundle.join("rootfs")).output();
            let _ = std::fs::remove_dir_all(&bundle);
            eprintln!("fault[f1]: attempt {} left a stale bundle; cleared", attempt + 1);
        }
        if listed(&id) {
            remove_task(&id);
        }
    }
    assert!(reached, "could not put {id} in the state of F1 in 60 attempts (containerd finished or dropped every create)");
    e.steward.restart();
    let old_pid = v["status"]["pid"].as_u64();
    let v = e.steward.wait("f1", "Running with a new process", Duration::from_secs(30), |v| {
        phase(v) == "Running" && v["status"]["pid"].as_u64().is_some_and(|p| Some(p) != old_pid)
    });
    assert_eq!(container_id(&v), id, "the same container runs again");
    assert!(listed(&id), "containerd lists the task of {id}: {}", String::from_utf8_lossy(&ctr(&["tasks", "ls"]).stdout));

    // Killed a few ms earlier, while it starts the shim, containerd leaves
    // the task's bundle directory without a shim, and every create fails
    // on its mkdir ("file exists"). That window is ~5 ms wide; the state
    // is made by hand here, as the soak found it.
    e.steward.stop_graceful(Duration::from_secs(30));
    remove_task(&id);
    let ext = e.ext.as_ref().expect("external containerd");
    let bundle = ext.dir.join("state/io.containerd.runtime.v2.task/steward").join(&id);
    std::fs::create_dir_all(bundle.join("rootfs")).expect("make the stale bundle");
    std::fs::write(bundle.join("config.json"), "{}").expect("write");
    let refused = ctr(&["tasks", "start", "--detach", &id]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("file exists"), "{}", String::from_utf8_lossy(&refused.stderr));
    let old_pid = v["status"]["pid"].as_u64();
    e.steward.restart();
    e.steward.wait("f1", "Running past a stale bundle", Duration::from_secs(30), |v| {
        phase(v) == "Running" && v["status"]["pid"].as_u64().is_some_and(|p| Some(p) != old_pid)
    });
    assert!(listed(&id), "containerd lists the task of {id}");
}

fn proc_state(pid: i32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
        .unwrap_or('X')
}

fn containerd_pid_or_panic(socket: &Path) -> i32 {
    fault::containerd_pid(socket).unwrap_or_else(|| panic!("no containerd process serving {}", socket.display()))
}

/// name -> pid of objects Running now.
fn running_pids(st: &Steward) -> BTreeMap<String, u64> {
    let list: Value = serde_json::from_str(&st.ok(&["get", "containers", "-o", "json"])).expect("list json");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| phase(o) == "Running")
        .filter_map(|o| Some((o["metadata"]["name"].as_str()?.to_string(), o["status"]["pid"].as_u64()?)))
        .collect()
}

fn objects(st: &Steward) -> BTreeMap<String, Value> {
    let list: Value = serde_json::from_str(&st.ok(&["get", "containers", "-o", "json"])).expect("list json");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| Some((o["metadata"]["name"].as_str()?.to_string(), o.clone())))
        .collect()
}

/// Scenario 3: a node reboot, simulated: steward, containerd, every
/// container process and every shim of steward's namespace die at once,
/// and runc's state under /run goes (tmpfs on a real machine); then steward
/// starts again. `Always` containers come back, counted; finished `Never`
/// ones stay finished (their recorded exit unchanged).
#[test]
fn fault_simulated_reboot() {
    let seed = fault::seed("reboot");
    let mut rng = Rng::new(seed);
    let mut figures = Figures::new("reboot", seed);
    let mut e = env();
    let mut checker = Checker::new();
    let pool = names("r", 16);
    let mut want = populate(&e, &mut checker, &pool, 16);
    let mut next_gen = 1;
    for _ in 0..fault::rounds(CI_ROUNDS) {
        let before = objects(&e.steward);
        let socket = e.steward.socket.clone();
        let tasks: Vec<(String, i32)> = e
            .steward
            .ctr(&["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.first()?.to_string(), f.get(1)?.parse().ok()?))
            })
            .collect();
        // Everything dies at once, in a random order of steward/containerd.
        let containerd = containerd_pid_or_panic(&socket);
        if rng.chance(0.5) {
            e.steward.kill9();
            fault::sigkill(containerd);
        } else {
            fault::sigkill(containerd);
            e.steward.kill9();
        }
        for (_, pid) in &tasks {
            if *pid > 0 {
                fault::sigkill(*pid);
            }
        }
        for pid in fault::shim_pids(&socket, "steward") {
            fault::sigkill(pid);
        }
        wait_for("every shim of the namespace to die", Duration::from_secs(10), || {
            fault::shim_pids(&socket, "steward").is_empty().then_some(())
        });
        for (id, _) in &tasks {
            let _ = std::fs::remove_dir_all(format!("/run/containerd/runc/steward/{id}"));
        }
        // /run is a tmpfs: a reboot takes steward's network namespaces (and
        // with them the containers' interfaces) too; DATA/cni stays.
        let mut namespaces = 0;
        for run in std::fs::read_dir("/run/steward").into_iter().flatten().flatten() {
            for (id, _) in &tasks {
                let ns = run.path().join("netns").join(id);
                if ns.exists() {
                    let _ = Command::new("umount").arg("-l").arg(&ns).status();
                    let _ = std::fs::remove_file(&ns);
                    namespaces += 1;
                }
            }
        }
        assert!(namespaces > 0 || tasks.is_empty(), "the reboot found none of the containers' network namespaces to remove");
        // ...and its iptables rules (the bridge plugin's masquerading of
        // each container, which its DEL cannot find without the namespace).
        delete_iptables_rules("nat", |r| tasks.iter().any(|(id, _)| r.contains(id.as_str())));
        std::thread::sleep(rng.millis(0, 500));
        e.steward.restart();
        let t = checker.converge(&e.steward, &want, fault::converge_bound());
        figures.round(1 + tasks.len() as u64, t);
        let after = objects(&e.steward);
        for (name, b) in &before {
            let a = &after[name];
            match b["metadata"]["labels"][fault::LABEL_EXPECT].as_str() {
                Some("running") => {
                    let (rb, ra) = (b["status"]["restartCount"].as_i64().unwrap_or(0), a["status"]["restartCount"].as_i64().unwrap_or(0));
                    assert_eq!(ra, rb + 1, "{name}: an Always container that died in the reboot must come back counted");
                    assert!(
                        a.pointer("/status/lastState/terminated").is_some(),
                        "{name}: lastState must say how (or that it is unknown how) the previous run ended: {a:#?}"
                    );
                }
                _ => assert_eq!(
                    a.pointer("/status/state/terminated/finishedAt"),
                    b.pointer("/status/state/terminated/finishedAt"),
                    "{name}: a finished Never container ran again after the reboot"
                ),
            }
        }
        // Fresh containers for the Always ones, so the crash backoff of
        // this reboot does not carry into the next round's.
        next_gen += 1;
        let docs: Vec<String> = pool
            .iter()
            .enumerate()
            .filter(|(i, _)| expect_of(*i) == "running")
            .map(|(i, n)| fault::manifest(n, &e.registry.image(), expect_of(i), next_gen))
            .collect();
        e.steward.apply(e.dir.path(), "refresh", &fault::manifests(&docs));
        for (_, n) in pool.iter().enumerate().filter(|(i, _)| expect_of(*i) == "running") {
            want.insert(n.clone(), Want::Present(next_gen));
        }
        checker.converge(&e.steward, &want, fault::converge_bound());
    }
}

/// Scenario 4: objects created, changed and deleted while the controller
/// is down (a `--no-controller` server on the same data dir); then the
/// controller starts and converges.
#[test]
fn fault_changes_while_the_controller_is_down() {
    let seed = fault::seed("controller-down");
    let mut rng = Rng::new(seed);
    let mut figures = Figures::new("controller-down", seed);
    let mut e = env();
    let mut checker = Checker::new();
    let pool = names("d", 30);
    let mut want = populate(&e, &mut checker, &pool, 20);
    let mut next_gen = 1;
    for _ in 0..fault::rounds(CI_ROUNDS) {
        let state = store_state(&e.steward);
        if rng.chance(0.5) {
            e.steward.stop_graceful(Duration::from_secs(60));
        } else {
            e.steward.kill9();
        }
        e.steward.restart_with(&["--no-controller"]);
        let batches = plan_storm(&mut rng, &pool, &state, &mut next_gen);
        let ops: u64 = batches.iter().map(|b| match b { Batch::Apply(i) => i.len(), Batch::Delete(n) => n.len() } as u64).sum();
        let (kubeconfig, image, dir) = (e.steward.kubeconfig(), e.registry.image(), e.dir.path().to_path_buf());
        let acked = run_storm(kubeconfig, image, dir, batches, vec![Duration::ZERO; 8]);
        assert!(!acked.values().any(|w| *w == Want::Unknown), "a write to the --no-controller server failed: {acked:?}");
        want.extend(acked);
        e.steward.stop_graceful(Duration::from_secs(60));
        e.steward.restart_with(&[]);
        let t = checker.converge(&e.steward, &want, fault::converge_bound());
        figures.round(ops, t);
    }
}

fn tamper(st: &Steward, kind: &str, id: &str) {
    let run = |args: &[&str]| {
        let o = st.ctr_command(args).output().expect("ctr");
        eprintln!("tamper {kind}: ctr {args:?}: {}", if o.status.success() { "ok".into() } else { String::from_utf8_lossy(&o.stderr).trim().to_string() });
    };
    match kind {
        "kill-task" => run(&["tasks", "kill", "--signal", "SIGKILL", id]),
        "delete-task" => run(&["tasks", "delete", "--force", id]),
        "delete-container" => {
            run(&["tasks", "delete", "--force", id]);
            run(&["containers", "rm", id]);
        }
        "remove-snapshot" => run(&["snapshots", "--snapshotter", "overlayfs", "rm", id]),
        other => panic!("unknown tamper {other}"),
    }
}

fn container_id(v: &Value) -> String {
    v.pointer("/status/containerID").and_then(Value::as_str).unwrap_or_default().trim_start_matches("containerd://").to_string()
}

/// Scenario 5: tampering through `ctr` (kill a task, delete a task, delete
/// a container); each converges within the bound. The tampered objects
/// then get a spec change, so a restart backoff from one round does not
/// carry into the next.
#[test]
fn fault_tampering_through_ctr() {
    tampering("tamper", &["kill-task", "delete-task", "delete-container"]);
}

/// Scenario 5, a snapshot removed under a container: steward hears of it
/// (`/snapshot/remove`) and prepares the rootfs again from the image the
/// container was made from, leaving a running task and the status alone.
#[test]
fn fault_tampering_remove_snapshot() {
    tampering("tamper-snapshot", &["remove-snapshot"]);
}

fn tampering(scenario: &str, kinds: &[&str]) {
    let seed = fault::seed(scenario);
    let mut rng = Rng::new(seed);
    let mut figures = Figures::new(scenario, seed);
    let e = env();
    let mut checker = Checker::new();
    let pool = names("t", 10);
    let mut want = populate(&e, &mut checker, &pool, 10);
    let mut next_gen = 1;
    for _ in 0..fault::rounds(CI_ROUNDS) {
        let objs = objects(&e.steward);
        let mut hit = Vec::new();
        let n = 1 + rng.below(3);
        for _ in 0..n {
            let i = rng.below(pool.len() as u64) as usize;
            let kind = kinds[rng.below(kinds.len() as u64) as usize];
            let name = &pool[i];
            let id = container_id(&objs[name]);
            eprintln!("fault[{scenario}]: {kind} on {name} ({id})");
            tamper(&e.steward, kind, &id);
            hit.push(i);
        }
        // The tampering took effect before convergence is judged: the
        // killed processes are gone (else the first look could pass).
        for &i in &hit {
            if let Some(pid) = objs[&pool[i]]["status"]["pid"].as_u64().filter(|_| kinds != ["remove-snapshot"]) {
                wait_for("the tampered task's process to die", Duration::from_secs(10), || {
                    matches!(proc_state(pid as i32), 'X' | 'Z').then_some(())
                });
            }
        }
        let t = checker.converge(&e.steward, &want, fault::converge_bound());
        figures.round(n, t);
        let now = objects(&e.steward);
        for &i in &hit {
            let (b, a) = (&objs[&pool[i]], &now[&pool[i]]);
            if b["metadata"]["labels"][fault::LABEL_EXPECT] != "running" {
                continue;
            }
            if kinds == ["remove-snapshot"] {
                // Its rootfs is prepared again for the next start; the
                // running process is left alone.
                assert_eq!(a["status"]["pid"], b["status"]["pid"], "{}: a lost snapshot must not restart the container", pool[i]);
                assert_eq!(a["status"]["restartCount"], b["status"]["restartCount"], "{}", pool[i]);
            } else {
                assert_ne!(a["status"]["pid"], b["status"]["pid"], "{}: still reports the killed pid", pool[i]);
            }
        }
        if kinds == ["remove-snapshot"] {
            // The prepared-again rootfs serves the next start: kill the
            // running ones; they restart (per policy) on it.
            let running: Vec<usize> = hit.iter().copied().filter(|&i| objs[&pool[i]]["metadata"]["labels"][fault::LABEL_EXPECT] == "running").collect();
            for &i in &running {
                tamper(&e.steward, "kill-task", &container_id(&now[&pool[i]]));
                if let Some(pid) = now[&pool[i]]["status"]["pid"].as_u64() {
                    wait_for("the killed process to die", Duration::from_secs(10), || matches!(proc_state(pid as i32), 'X' | 'Z').then_some(()));
                }
            }
            checker.converge(&e.steward, &want, fault::converge_bound());
            let after = objects(&e.steward);
            for &i in &running {
                assert_ne!(after[&pool[i]]["status"]["pid"], now[&pool[i]]["status"]["pid"], "{}: did not restart", pool[i]);
            }
        }
        // Fresh containers for the tampered ones (resets their backoff).
        hit.sort();
        hit.dedup();
        next_gen += 1;
        let docs: Vec<String> = hit.iter().map(|&i| fault::manifest(&pool[i], &e.registry.image(), expect_of(i), next_gen)).collect();
        e.steward.apply(e.dir.path(), "refresh", &fault::manifests(&docs));
        for &i in &hit {
            want.insert(pool[i].clone(), Want::Present(next_gen));
        }
        checker.converge(&e.steward, &want, fault::converge_bound());
    }
}

/// Scenario 5, the stray: a container created behind steward's back with
/// steward's labels (and a uid no object has) is collected within the bound.
#[test]
fn fault_stray_container_with_stewards_labels() {
    let seed = fault::seed("stray");
    let mut rng = Rng::new(seed);
    let mut figures = Figures::new("stray", seed);
    let e = env();
    let mut checker = Checker::new();
    let pool = names("y", 4);
    let want = populate(&e, &mut checker, &pool, 4);
    // Every label steward puts on its own containers (whatever they are by
    // then, e.g. the store's identity of item 14), from a real one.
    let real = container_id(&objects(&e.steward)["y00"]);
    let info: Value = serde_json::from_str(&e.steward.ctr(&["containers", "info", &real])).expect("ctr containers info");
    let labels: BTreeMap<String, String> = info["Labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    for round in 0..fault::rounds(CI_ROUNDS) {
        let n = 1 + rng.below(2);
        for k in 0..n {
            let id = format!("stray-{seed:x}-{round}-{k}");
            let uid = format!("00000000-0000-4000-8000-{:012x}", rng.below(1 << 48));
            let mut l = labels.clone();
            l.insert("steward.dev/uid".into(), uid);
            l.insert("steward.dev/name".into(), id.clone());
            let mut args: Vec<String> = vec!["run".into(), "-d".into()];
            for (k, v) in &l {
                args.extend(["--label".to_string(), format!("{k}={v}")]);
            }
            args.extend([e.registry.image(), id.clone(), "sleep".into(), "3600".into()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            // steward may collect the stray between ctr's create and its
            // task start (it reacts to containerd's create event): ctr
            // then fails with "not found", which is the point.
            let o = e.steward.ctr_command(&args).output().expect("run ctr");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success() || err.contains("not found"), "ctr {args:?}: {err}");
        }
        let t = checker.converge(&e.steward, &want, fault::converge_bound());
        figures.round(n, t);
    }
}

/// Scenario 6: graceful restarts with 30 running containers: none stops,
/// the new steward adopts every one with the same pid, restartCount stays.
#[test]
fn fault_graceful_restart_keeps_every_container() {
    let seed = fault::seed("graceful");
    let mut rng = Rng::new(seed);
    let mut figures = Figures::new("graceful", seed);
    let mut e = env();
    let mut checker = Checker::new();
    // 30 running (no `succeeded` ones: expect_of(7) is, so build by hand).
    let pool = names("g", 30);
    let docs: Vec<String> = pool.iter().map(|n| fault::manifest(n, &e.registry.image(), "running", 1)).collect();
    e.steward.apply(e.dir.path(), "thirty", &fault::manifests(&docs));
    let want: BTreeMap<String, Want> = pool.iter().map(|n| (n.clone(), Want::Present(1))).collect();
    checker.converge(&e.steward, &want, FIRST);
    for _ in 0..fault::rounds(CI_ROUNDS) {
        let before = objects(&e.steward);
        let status = e.steward.stop_graceful(Duration::from_secs(60));
        assert!(status.success(), "steward exited with {status} on SIGTERM:\n{}", tail(&e.steward.proc.logs(), 40));
        for (name, o) in &before {
            let pid = o["status"]["pid"].as_u64().unwrap_or(0);
            assert!(proc_state(pid as i32) != 'X', "{name}: pid {pid} died with steward's graceful stop");
        }
        std::thread::sleep(rng.millis(0, 1000));
        e.steward.restart();
        let t = checker.converge(&e.steward, &want, fault::converge_bound());
        figures.round(1, t);
        let after = objects(&e.steward);
        for (name, b) in &before {
            let a = &after[name];
            assert_eq!(a["status"]["pid"], b["status"]["pid"], "{name}: not adopted with the same pid");
            assert_eq!(a["status"]["restartCount"], b["status"]["restartCount"], "{name}: restartCount moved");
            assert_eq!(container_id(a), container_id(b), "{name}: container replaced");
        }
    }
}

/// A tmpfs mounted by the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mkdir");
        let o = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(path).output().expect("mount");
        assert!(o.status.success(), "mount tmpfs on {}: {} (the disk-full scenario needs root)", path.display(), String::from_utf8_lossy(&o.stderr));
        Tmpfs(path.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let o = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).output().expect("mount");
        assert!(o.status.success(), "remount {}: {}", self.0.display(), String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// POSTs the Container `fault::manifest(name, image, "running", gen)`
/// describes, as JSON over HTTP with curl: (status code, body).
fn raw_post(st: &Steward, name: &str, image: &str, generation: u64) -> (u16, String) {
    let body = serde_json::json!({
        "apiVersion": "steward.dev/v1alpha1", "kind": "Container",
        "metadata": {"name": name, "labels": {fault::LABEL_EXPECT: "running"}},
        "spec": {"image": image, "command": ["sleep", "3600"], "restartPolicy": "Always",
                 "terminationGracePeriodSeconds": 1, "env": [{"name": "GEN", "value": generation.to_string()}]}
    });
    let o = st
        .curl()
        .args(["-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: application/json"])
        .arg("--data-binary")
        .arg(body.to_string())
        .arg(format!("{}/apis/steward.dev/v1alpha1/namespaces/default/containers", st.url))
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}; apt-get install -y curl"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or((&out, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Merge-patches env GEN of `name` over HTTP with curl: (status code, body).
fn raw_patch_gen(st: &Steward, name: &str, generation: u64) -> (u16, String) {
    // 8 KiB of annotation: each write takes real room, so the WAL's
    // slack (its file keeps its high-water size) fills in a few hundred.
    let body = serde_json::json!({
        "metadata": {"annotations": {"fault.steward.dev/ballast": "x".repeat(8 * 1024)}},
        "spec": {"env": [{"name": "GEN", "value": generation.to_string()}]}
    });
    let o = st
        .curl()
        .args(["-w", "\n%{http_code}", "-X", "PATCH", "-H", "Content-Type: application/merge-patch+json"])
        .arg("--data-binary")
        .arg(body.to_string())
        .arg(format!("{}/apis/steward.dev/v1alpha1/namespaces/default/containers/{name}", st.url))
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}; apt-get install -y curl"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or((&out, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// MiB used on the filesystem of `dir` (rounded up).
fn used_mib(dir: &Path) -> u64 {
    let o = Command::new("df").args(["-B1", "--output=used"]).arg(dir).output().expect("df");
    let used: u64 = String::from_utf8_lossy(&o.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    used.div_ceil(1024 * 1024)
}

/// Fills the filesystem of `dir` with `dir/filler` until ENOSPC.
fn fill(dir: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).expect("create filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    while f.write_all(&chunk).is_ok() {
        n += chunk.len() as u64;
    }
    // The last partial chunk and any remaining bytes.
    while f.write_all(&[0u8; 512]).is_ok() {
        n += 512;
    }
    let _ = f.sync_all();
    n
}

/// Scenario 7: disk full on the data dir (a small tmpfs; containerd
/// outside it, through --containerd-socket). Writes fail with a clear
/// error, nothing acknowledged is lost, and writes resume once space
/// returns (both by freeing space and by growing the filesystem).
#[test]
fn fault_disk_full_on_the_data_dir() {
    require_tools();
    require_sqlite3();
    let seed = fault::seed("disk-full");
    let mut rng = Rng::new(seed);
    let mut figures = Figures::new("disk-full", seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(dir.path());
    let data = dir.path().join("data");
    let tmpfs = Tmpfs::mount(&data, "24m");
    let ext = ExternalContainerd::start(&dir.path().join("ext-containerd"));
    let sock = ext.socket.to_string_lossy().into_owned();
    let steward = Steward::start_with(&data, &["--containerd-socket", &sock]);
    let mut e = Env { steward, ext: Some(ext), registry, _tmpfs: Some(tmpfs), dir };
    let mut checker = Checker::new();
    let pool = names("k", 6);
    let mut want = populate(&e, &mut checker, &pool, 6);
    let mut next = 6;
    let mut next_gen = 1;
    for round in 0..fault::rounds(CI_ROUNDS) {
        // 8 MiB above what the store uses now (its WAL keeps its
        // high-water size), whatever a previous round grew it to.
        let small = used_mib(&data) + 8;
        e._tmpfs.as_ref().expect("the tmpfs").resize(&format!("{small}m"));
        let filled = fill(&data);
        eprintln!("fault[disk-full]: round {round}: filled {filled} bytes");
        // Writes while full, until one is refused (the WAL's already
        // allocated pages can take a few): each acknowledged one must be
        // kept; a refused one must say why.
        // The first a create, then spec changes of the first six (so the
        // writes the WAL's slack takes do not pile up containers).
        let mut refused = None;
        for k in 0..3000 {
            next_gen += 1;
            let (name, (code, body)) = if k == 0 {
                let name = format!("k{next}");
                next += 1;
                let r = raw_post(&e.steward, &name, &e.registry.image(), next_gen);
                (name, r)
            } else {
                let name = pool[k % pool.len()].clone();
                let r = raw_patch_gen(&e.steward, &name, next_gen);
                (name, r)
            };
            if code == 201 || code == 200 {
                want.insert(name, Want::Present(next_gen));
                continue;
            }
            // Not acknowledged: may be there or not, never half.
            want.insert(name.clone(), Want::Unknown);
            eprintln!("fault[disk-full]: write of {name} refused while full after {k} acknowledged: {code} {body}");
            refused = Some((code, body));
            break;
        }
        let (code, body) = refused.unwrap_or_else(|| panic!("no write was refused on a full data dir ({filled} bytes filled)"));
        assert_eq!(code, 507, "a write refused on a full disk is 507 Insufficient Storage: {body}");
        assert!(body.contains("full") || body.contains("space"), "a write refused on a full disk must say so: {code} {body}");
        // Reads still work and nothing acknowledged is lost.
        let state = store_state(&e.steward);
        for (name, w) in &want {
            if let Want::Present(g) = w {
                assert_eq!(state.get(name), Some(g), "{name}: acknowledged GEN={g} lost while the disk was full");
            }
        }
        // More writes while still full (a failed snapshot must not leave a
        // transaction open that later writes land in uncommitted), then
        // kill -9: every one acknowledged must be there after the restart.
        for k in 0..20 {
            next_gen += 1;
            let name = pool[k % pool.len()].clone();
            let (code, _) = raw_patch_gen(&e.steward, &name, next_gen);
            want.insert(name, if code == 200 { Want::Present(next_gen) } else { Want::Unknown });
        }
        e.steward.kill9();
        let acknowledged: Vec<(String, u64)> =
            want.iter().filter_map(|(n, w)| if let Want::Present(g) = w { Some((n.clone(), *g)) } else { None }).collect();
        // Space returns: freed, or the filesystem grows.
        let grow = rng.chance(0.5);
        if !grow {
            std::fs::remove_file(data.join("filler")).expect("remove filler");
        } else {
            e._tmpfs.as_ref().expect("the tmpfs").resize(&format!("{}m", small + 16));
            eprintln!("fault[disk-full]: grew the data dir from {small}m to {}m", small + 16);
        }
        e.steward.restart();
        let state = store_state(&e.steward);
        for (name, g) in &acknowledged {
            assert_eq!(state.get(name), Some(g), "{name}: acknowledged GEN={g} on a full disk, lost by kill -9");
        }
        let returned = Instant::now();
        let name = format!("k{next}");
        next += 1;
        next_gen += 1;
        let f = e.dir.path().join("after.yaml");
        std::fs::write(&f, fault::manifest(&name, &e.registry.image(), "running", next_gen)).expect("write manifest");
        let resumed = wait_for("writes to resume once space returned", Duration::from_secs(30), || {
            let o = e.steward.cli(&["apply", "-f", &f.to_string_lossy()]);
            if !o.status.success() {
                eprintln!("fault[disk-full]: apply after space returned: {}", String::from_utf8_lossy(&o.stderr).trim());
            }
            o.status.success().then(|| returned.elapsed())
        });
        eprintln!("fault[disk-full]: writes resumed {:.2}s after space returned", resumed.as_secs_f64());
        want.insert(name, Want::Present(next_gen));
        let t = checker.converge(&e.steward, &want, fault::converge_bound());
        figures.round(1, t);
        if rng.chance(0.5) {
            // Nothing acknowledged is lost across a restart either.
            e.steward.kill_and_restart();
            checker.converge(&e.steward, &want, fault::converge_bound());
        }
        // The round's objects go (acknowledged deletes), so rounds do not
        // pile up containers; the first six stay.
        let extra: Vec<String> = store_state(&e.steward).into_keys().filter(|n| !pool.contains(n)).collect();
        if !extra.is_empty() {
            let mut args = vec!["delete", "containers", "--wait", "--timeout", "60s"];
            args.extend(extra.iter().map(String::as_str));
            e.steward.ok(&args);
        }
        for (name, w) in want.iter_mut() {
            if !pool.contains(name) {
                *w = Want::Absent;
            }
        }
        checker.converge(&e.steward, &want, fault::converge_bound());
        let _ = std::fs::remove_file(data.join("filler"));
    }
}

/// Found by a hostile trial: with the data dir's disk nearly full, a
/// snapshot failed with SQLITE_FULL inside its transaction and left it open;
/// the single-statement appends after it landed in that transaction,
/// answered 201 without being committed or synced, and a kill -9 lost them
/// (12 of 37 acknowledged in one run). Every write acknowledged on a nearly
/// full disk must survive kill -9.
#[test]
fn writes_acknowledged_on_a_nearly_full_disk_survive_kill9() {
    require_sqlite3();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("small");
    let tmpfs = Tmpfs::mount(&data, "16m");
    let mut st = Steward::start_with(&data.join("data"), &["--no-controller"]);
    // Leave about 400 KiB: enough for some appends, not for a snapshot.
    let filler = data.join("filler");
    fill(&data);
    let size = std::fs::metadata(&filler).expect("filler").len();
    std::fs::OpenOptions::new().write(true).open(&filler).expect("open filler").set_len(size.saturating_sub(400 * 1024)).expect("truncate");
    let mut rng = Rng::new(fault::seed("nearly-full"));
    let mut acknowledged = Vec::new();
    for i in 0..60 {
        // 6 KB of incompressible text per object.
        let pad: String = (0..6000).map(|_| char::from(b'a' + (rng.below(26) as u8))).collect();
        let body = serde_json::json!({
            "apiVersion": "steward.dev/v1alpha1", "kind": "Container",
            "metadata": {"name": format!("o{i}"), "annotations": {"pad": pad}},
            "spec": {"image": "busybox", "env": [{"name": "GEN", "value": "1"}]}
        });
        let o = st
            .curl()
            .args(["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json"])
            .arg("--data-binary")
            .arg(body.to_string())
            .arg(format!("{}/apis/steward.dev/v1alpha1/namespaces/default/containers", st.url))
            .output()
            .expect("curl");
        if String::from_utf8_lossy(&o.stdout) == "201" {
            acknowledged.push(format!("o{i}"));
        }
        // Spread over a few snapshot intervals (2 s): one fails for space.
        std::thread::sleep(Duration::from_millis(100));
    }
    st.kill9();
    std::fs::remove_file(&filler).expect("free space");
    st.restart();
    let state = store_state(&st);
    let lost: Vec<&String> = acknowledged.iter().filter(|n| !state.contains_key(*n)).collect();
    assert!(lost.is_empty(), "{} of {} writes acknowledged on a nearly full disk lost by kill -9: {lost:?}", lost.len(), acknowledged.len());
    assert!(!acknowledged.is_empty(), "nothing was acknowledged: the test did not exercise a nearly full disk");
    drop(st);
    drop(tmpfs);
}

