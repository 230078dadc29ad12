//! A power cut, simulated at the file level. Killing the process (as
//! `crash.rs` does) keeps the page cache, so it cannot show a write that was
//! acknowledged before it reached the disk. A power cut loses every write
//! that no completed fsync covered, and may keep any of them, whole, torn or
//! not at all. device-mapper's flakey target would do this below the file
//! system, but the kernel of these machines has no device-mapper, so this
//! test does it from a syscall trace instead (the approach of ALICE and
//! LazyFS):
//!
//! 1. `steward serve` runs under `strace -f` from its first instruction,
//!    on a data dir whose files were copied first (the baseline), while 8
//!    clients write through snapshots and WAL checkpoints.
//! 2. For random cut points in the trace, the store's files are rebuilt from
//!    the baseline by replaying the writes made before the cut: a write
//!    covered by a completed fsync/fdatasync of its file before the cut is
//!    kept; any other is kept whole, torn at a 512-byte boundary, or dropped,
//!    at random.
//! 3. A new `steward serve` opens the rebuilt files. It must start, and
//!    every write acknowledged (its HTTP response begun) before the cut must
//!    be there.
//!
//! `STEWARD_POWERCUT_SEED` replays a run; `STEWARD_POWERCUT_CUTS` sets the
//! number of cut points (default 12).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::strace::{self, Call};
use common::TestServer;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const WRITERS: usize = 8;
const STORE_FILES: [&str; 2] = ["steward.db", "steward.db-wal"];

/// The store's files as bytes, by file name.
type Files = BTreeMap<String, Vec<u8>>;

fn read_files(dir: &Path) -> Files {
    STORE_FILES
        .iter()
        .filter_map(|f| std::fs::read(dir.join(f)).ok().map(|b| (f.to_string(), b)))
        .collect()
}

/// One change to a store file, in trace order.
#[derive(Debug)]
enum Op {
    Write { file: String, offset: u64, data: Vec<u8>, exit: usize },
    Truncate { file: String, len: u64, exit: usize },
}

impl Op {
    fn file(&self) -> &str {
        match self {
            Op::Write { file, .. } | Op::Truncate { file, .. } => file,
        }
    }
    fn exit(&self) -> usize {
        match self {
            Op::Write { exit, .. } | Op::Truncate { exit, .. } => *exit,
        }
    }
}

/// The store-file changes in the trace; fails on any file operation the
/// simulation does not model.
fn store_ops(calls: &[Call], data_dir: &Path) -> Vec<Op> {
    let file_of = |c: &Call| -> Option<String> {
        let p = Path::new(&c.fd);
        (p.parent() == Some(data_dir)).then(|| p.file_name()?.to_str().map(String::from)).flatten()
    };
    let mut ops = Vec::new();
    for c in calls {
        let Some(file) = file_of(c) else {
            let touches_store = c.data_contains("steward.db");
            assert!(
                !(touches_store && matches!(c.name.as_str(), "unlink" | "unlinkat" | "rename" | "renameat" | "renameat2")),
                "the trace {}s a store file; this simulation does not model that: {c:?}",
                c.name
            );
            continue;
        };
        // The -shm file is SQLite's shared-memory index, rebuilt from the
        // WAL on open: not durable state.
        if !c.ok() || !STORE_FILES.contains(&file.as_str()) {
            continue;
        }
        match c.name.as_str() {
            "pwrite64" => {
                let offset = *c.tail_args.get(1).unwrap_or_else(|| panic!("pwrite64 without an offset: {c:?}"));
                let written: usize = c.result.parse().expect("pwrite64 result");
                assert_eq!(written, c.data.len(), "short or truncated pwrite64 (raise strace -s): {c:?}");
                ops.push(Op::Write { file, offset, data: c.data.clone(), exit: c.exit });
            }
            "ftruncate" => ops.push(Op::Truncate { file, len: c.tail_args[0], exit: c.exit }),
            "write" | "pwritev" | "writev" => panic!("store file written with {} (not modelled): {c:?}", c.name),
            _ => {}
        }
    }
    ops
}

/// The store's files after a power cut at trace line `cut`.
fn after_power_cut(baseline: &Files, ops: &[Op], calls: &[Call], data_dir: &Path, cut: usize, rng: &mut impl Rng) -> (Files, usize, usize) {
    let mut files = baseline.clone();
    let (mut durable, mut chance) = (0, 0);
    for op in ops.iter().filter(|o| o.exit() < cut) {
        let path = data_dir.join(op.file());
        let path = path.to_string_lossy();
        let synced = strace::syncs(calls, &path).any(|s| s.entry > op.exit() && s.exit < cut);
        let f = files.entry(op.file().to_string()).or_default();
        if synced {
            durable += 1;
        } else {
            chance += 1;
        }
        match op {
            Op::Write { offset, data, .. } => {
                let keep = if synced {
                    data.len()
                } else {
                    match rng.gen_range(0..3) {
                        0 => 0,
                        1 => data.len(),
                        _ => (rng.gen_range(0..=data.len() / 512) * 512).min(data.len()),
                    }
                };
                let end = *offset as usize + keep;
                if keep > 0 {
                    if f.len() < end {
                        f.resize(end, 0);
                    }
                    f[*offset as usize..end].copy_from_slice(&data[..keep]);
                }
            }
            Op::Truncate { len, .. } => {
                if synced || rng.gen_bool(0.5) {
                    f.resize(*len as usize, 0);
                }
            }
        }
    }
    (files, durable, chance)
}

/// For each writer, the highest step acknowledged before `cut` (0 = the
/// create, then one step per patch). `responses` holds (writer, step,
/// trace line of the acknowledging response).
fn acknowledged_before(responses: &[(usize, usize, usize)], cut: usize) -> BTreeMap<usize, usize> {
    let mut acked = BTreeMap::new();
    for &(w, step, line) in responses {
        if line < cut {
            let e = acked.entry(w).or_insert(step);
            *e = (*e).max(step);
        }
    }
    acked
}

/// Starts a server on `files`; returns each writer's stored step.
fn open_and_read(files: &Files, token_file: &Path, dir: &Path) -> Result<BTreeMap<usize, usize>, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).map_err(|e| e.to_string())?;
    }
    std::fs::copy(token_file, dir.join("token")).map_err(|e| e.to_string())?;
    let server = TestServer::start(dir);
    let out = server.steward(&["get", "containers", "-o", "json"]);
    if !out.status.success() {
        return Err(format!("list failed: {}\n{}", common::stderr(&out), server.logs()));
    }
    let list: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let mut stored = BTreeMap::new();
    for o in list["items"].as_array().into_iter().flatten() {
        let token = o["metadata"]["annotations"]["token"].as_str().unwrap_or_default();
        if let Some((w, step)) = common::parse_token(token) {
            stored.insert(w, step);
        }
    }
    Ok(stored)
}

/// Runs `steward serve` under strace from its start; returns the trace
/// path once the clients are done and the server is killed.
fn traced_run(data_dir: &Path, trace: &Path) -> Vec<(usize, usize, String)> {
    let mut strace = Command::new("strace")
        .args(["-f", "-yy", "-xx", "-s", "1048576", "-o"])
        .arg(trace)
        .args(["-e", "trace=pwrite64,pwritev,write,writev,sendto,sendmsg,fsync,fdatasync,ftruncate,unlink,unlinkat,rename,renameat,renameat2"])
        .arg("--")
        .arg(common::BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--no-controller", "--plain-http"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strace");
    let mut line = String::new();
    BufReader::new(strace.stdout.take().expect("stdout")).read_line(&mut line).expect("read serve's first line");
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("serve under strace said {line:?}"));
    let url = addr.to_string();
    let token = std::fs::read_to_string(data_dir.join("token")).expect("token").trim().to_string();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut tokens = Vec::new();
    // Two bursts with a pause between them longer than the snapshot
    // interval (2 s), so snapshots and WAL checkpoints land in the trace
    // with writes on both sides.
    for (burst, ops) in [(0, 20), (1, 10)] {
        let tasks: Vec<_> =
            (0..WRITERS).map(|w| rt.spawn(common::token_writer(url.clone(), token.clone(), w, burst * 1000, ops))).collect();
        for t in tasks {
            tokens.extend(rt.block_on(t).expect("writer"));
        }
        if burst == 0 {
            std::thread::sleep(Duration::from_millis(2600));
        }
    }
    // Kill the server (strace's child) and let strace finish the trace.
    let server_pid = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.id()))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<i32>().ok()))
        .expect("the traced server's pid");
    // SAFETY: kill(2) with plain integers.
    unsafe {
        libc::kill(server_pid, libc::SIGKILL);
    }
    let _ = strace.wait();
    tokens
}

#[test]
fn acknowledged_writes_survive_a_simulated_power_cut() {
    let found = Command::new("strace").arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "this test needs strace: apt-get install -y strace (make deps installs it)");
    let seed: u64 = std::env::var("STEWARD_POWERCUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let cuts: usize = std::env::var("STEWARD_POWERCUT_CUTS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    eprintln!("power cut: STEWARD_POWERCUT_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    // The baseline: a store that already holds a little, as on disk after
    // a kill (the WAL not checkpointed).
    {
        let mut s = TestServer::start(&data);
        let out = s.steward_stdin(&["apply", "-f", "-"], &common::manifest("before", "busybox", "x"));
        common::expect_code(&out, 0);
        s.kill();
    }
    let baseline = read_files(&data);
    let _ = std::fs::remove_file(data.join("steward.db-shm"));

    let trace_path = tmp.path().join("trace.txt");
    let started = Instant::now();
    let tokens = traced_run(&data, &trace_path);
    let trace = std::fs::read_to_string(&trace_path).expect("read trace");
    let calls = strace::parse(&trace);
    let data_dir = data.canonicalize().expect("canonical data dir");
    let ops = store_ops(&calls, &data_dir);
    let responses: Vec<(usize, usize, usize)> = tokens
        .iter()
        .map(|(w, step, t)| {
            let line = strace::first_response(&calls, t).unwrap_or_else(|| panic!("no response for acknowledged {t} in the trace"));
            (*w, *step, line)
        })
        .collect();
    let first_ack = responses.iter().map(|r| r.2).min().expect("some response");
    let last_ack = responses.iter().map(|r| r.2).max().expect("some response");
    let checkpoints = ops.iter().filter(|o| o.file() == "steward.db").count();
    let store_writes = ops.len();
    assert!(checkpoints > 0, "no write to steward.db in the trace: the run never checkpointed");

    let mut points: Vec<usize> = (0..cuts).map(|_| rng.gen_range(first_ack..=last_ack + 1)).collect();
    points.push(last_ack + 1); // everything acknowledged
    let mut checked = 0;
    for (i, &cut) in points.iter().enumerate() {
        let (files, durable, chance) = after_power_cut(&baseline, &ops, &calls, &data_dir, cut, &mut rng);
        let acked = acknowledged_before(&responses, cut);
        let stored = open_and_read(&files, &data.join("token"), &tmp.path().join(format!("cut-{i}")))
            .unwrap_or_else(|e| panic!("seed {seed}, cut at trace line {cut}: the store did not open after the power cut: {e}"));
        for (w, step) in &acked {
            let got = stored.get(w).copied();
            assert!(
                got.is_some_and(|g| g >= *step),
                "seed {seed}, cut at trace line {cut}: writer {w} was acknowledged up to step {step}, the store has {got:?} \
                 ({durable} writes synced before the cut, {chance} left to chance)"
            );
        }
        checked += responses.iter().filter(|r| r.2 < cut).count();
    }
    assert!(checked > 0, "no acknowledged write fell before any cut point");

    // The check can fail: with the WAL's writes all lost, acknowledged
    // writes are missing.
    let no_wal: Vec<Op> = ops.into_iter().filter(|o| o.file() != "steward.db-wal").collect();
    let mut lose_all = baseline.clone();
    lose_all.remove("steward.db-wal");
    let (files, _, _) = after_power_cut(&lose_all, &no_wal, &[], &data_dir, 0, &mut rng);
    let stored = open_and_read(&files, &data.join("token"), &tmp.path().join("control")).unwrap_or_default();
    let acked = acknowledged_before(&responses, last_ack + 1);
    assert!(acked.iter().any(|(w, s)| stored.get(w).is_none_or(|g| g < s)), "the control run should have lost acknowledged writes");

    eprintln!(
        "power cut: {} cut points over {} traced syscalls ({} store-file writes, {} to steward.db by checkpoints); \
         {checked} acknowledged writes checked, none lost; {:.1} s",
        points.len(),
        calls.len(),
        store_writes,
        checkpoints,
        started.elapsed().as_secs_f64()
    );
}
