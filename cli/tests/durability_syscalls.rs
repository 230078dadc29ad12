//! Durability at the syscall level. `crash.rs` kills only the process, so
//! the page cache survives it and a missing fsync could never show there.
//! This test does not depend on the page cache: it traces a `steward serve`
//! under concurrent writes with strace and checks, for every write the
//! server acknowledged, that the bytes of that write reached the SQLite WAL
//! and that an `fdatasync`/`fsync` of the WAL began after them and returned
//! before the first byte of the acknowledging response was sent.
//!
//! (A power-cut simulation that drops unsynced writes, with device-mapper's
//! flakey target, needs a kernel with device-mapper; the machines this
//! project runs on have none: no `/dev/mapper/control`, no modules.)

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::strace::{self, Call};
use common::TestServer;

const WRITERS: usize = 8;
const OPS_PER_WRITER: usize = 30;

/// What the check found for one acknowledged write.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Synced before it was acknowledged: (WAL write, sync, response) lines.
    Durable { wal_write: usize, sync: usize, response: usize },
    NotInWal,
    NoResponse,
    /// Acknowledged before any sync that covers its WAL write.
    AckedBeforeSync { wal_write: usize, response: usize },
}

/// For the write identified by `token` (a string only its own bytes hold):
/// its first WAL write, its first successful HTTP response, and a WAL sync
/// that started after the one and finished before the other.
fn check(calls: &[Call], token: &str) -> Verdict {
    let is_wal = |c: &Call| c.fd.ends_with("steward.db-wal");
    let wal_write = calls
        .iter()
        .filter(|c| c.name.starts_with("pwrite") && is_wal(c) && c.data_contains(token))
        .map(|c| c.exit)
        .min();
    let Some(wal_write) = wal_write else { return Verdict::NotInWal };
    let Some(response) = strace::first_response(calls, token) else { return Verdict::NoResponse };
    let sync = calls
        .iter()
        .filter(|c| matches!(c.name.as_str(), "fdatasync" | "fsync") && is_wal(c) && c.result == "0")
        .find(|c| c.entry > wal_write && c.exit < response);
    match sync {
        Some(s) => Verdict::Durable { wal_write, sync: s.exit, response },
        None => Verdict::AckedBeforeSync { wal_write, response },
    }
}

#[test]
fn every_acknowledged_write_is_fsynced_before_its_response() {
    let found = Command::new("strace").arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "this test needs strace: apt-get install -y strace (make deps installs it)");

    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path());
    let trace_file = dir.path().join("trace.txt");
    let mut strace = Command::new("strace")
        .args(["-f", "-yy", "-xx", "-s", "65536", "-e", "trace=pwrite64,pwritev,write,writev,sendto,sendmsg,fsync,fdatasync", "-o"])
        .arg(&trace_file)
        .args(["-p", &server.pid().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strace");
    // strace says "Process N attached with K threads" once it traces them all.
    let mut err = BufReader::new(strace.stderr.take().expect("strace stderr"));
    let mut line = String::new();
    while !line.contains("attached") {
        line.clear();
        let n = err.read_line(&mut line).expect("read strace stderr");
        assert!(n > 0, "strace exited before attaching (ptrace not allowed?)");
    }
    std::thread::spawn(move || for _ in err.lines() {});

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| rt.spawn(common::token_writer(server.url().to_string(), server.token().to_string(), w, 0, OPS_PER_WRITER)))
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.extend(rt.block_on(t).expect("writer").into_iter().map(|(_, _, t)| t));
    }
    // SIGINT detaches strace; the server lives on until dropped.
    // SAFETY: kill(2) with plain integers.
    unsafe {
        libc::kill(strace.id() as i32, libc::SIGINT);
    }
    let _ = strace.wait();
    std::thread::sleep(Duration::from_millis(50));

    let trace = std::fs::read_to_string(&trace_file).expect("read trace");
    let calls = strace::parse(&trace);
    let mut syncs = std::collections::BTreeSet::new();
    let mut bad = Vec::new();
    for t in &tokens {
        match check(&calls, t) {
            Verdict::Durable { sync, .. } => {
                syncs.insert(sync);
            }
            other => bad.push(format!("{t}: {other:?}")),
        }
    }
    if let Some(Verdict::AckedBeforeSync { wal_write, response }) = tokens.iter().map(|t| check(&calls, t)).find(|v| matches!(v, Verdict::AckedBeforeSync { .. })) {
        let excerpt: Vec<String> = trace
            .lines()
            .enumerate()
            .skip(wal_write.saturating_sub(4))
            .take(response + 2 - wal_write.saturating_sub(4))
            .map(|(i, l)| format!("{i}: {}", l.chars().take(160).collect::<String>()))
            .collect();
        eprintln!("trace around the first write acknowledged before its sync:\n{}", excerpt.join("\n"));
    }
    assert!(bad.is_empty(), "{} of {} acknowledged writes not proven durable:\n{}", bad.len(), tokens.len(), bad.join("\n"));
    assert_eq!(tokens.len(), WRITERS * (OPS_PER_WRITER + 1));
    eprintln!(
        "{} acknowledged writes, each sent after an fdatasync of the WAL that covered it; {} distinct syncs ({:.1} writes per sync); {} syscalls traced",
        tokens.len(),
        syncs.len(),
        tokens.len() as f64 / syncs.len().max(1) as f64,
        calls.len()
    );
}

/// The checker itself can fail: a response sent before the sync, or a sync
/// that began before the data was written, is caught.
#[test]
fn the_syscall_checker_catches_an_ack_before_the_sync() {
    let good = "\
10 pwrite64(5</d/steward.db-wal>, \"xx TOKEN xx\", 10, 0) = 10
10 fdatasync(5</d/steward.db-wal> <unfinished ...>
11 write(4<anon_inode:[eventfd]>, \"\\1\", 8) = 8
10 <... fdatasync resumed>) = 0
12 writev(9<TCP:[127.0.0.1:1->127.0.0.1:2]>, [{iov_base=\"HTTP/1.1 201 Created\\r\\n\", iov_len=9}, {iov_base=\"{TOKEN}\", iov_len=7}], 2) = 16
";
    assert!(matches!(check(&strace::parse(good), "TOKEN"), Verdict::Durable { wal_write: 0, sync: 3, response: 4 }));

    let acked_early = "\
10 pwrite64(5</d/steward.db-wal>, \"xx TOKEN xx\", 10, 0) = 10
10 fdatasync(5</d/steward.db-wal> <unfinished ...>
12 writev(9<TCP:[127.0.0.1:1->127.0.0.1:2]>, [{iov_base=\"HTTP/1.1 201 Created\\r\\n{TOKEN}\", iov_len=9}], 1) = 9
10 <... fdatasync resumed>) = 0
";
    assert_eq!(check(&strace::parse(acked_early), "TOKEN"), Verdict::AckedBeforeSync { wal_write: 0, response: 2 });

    let sync_before_write = "\
10 fdatasync(5</d/steward.db-wal>) = 0
10 pwrite64(5</d/steward.db-wal>, \"xx TOKEN xx\", 10, 0) = 10
12 write(9<TCP:[127.0.0.1:1->127.0.0.1:2]>, \"HTTP/1.1 200 OK\\r\\n{TOKEN}\", 9) = 9
";
    assert_eq!(check(&strace::parse(sync_before_write), "TOKEN"), Verdict::AckedBeforeSync { wal_write: 1, response: 2 });

    let other_file = "\
10 pwrite64(5</d/steward.db-wal>, \"xx TOKEN xx\", 10, 0) = 10
10 fdatasync(6</d/steward.db>) = 0
12 write(9<TCP:[127.0.0.1:1->127.0.0.1:2]>, \"HTTP/1.1 200 OK\\r\\n{TOKEN}\", 9) = 9
";
    assert!(matches!(check(&strace::parse(other_file), "TOKEN"), Verdict::AckedBeforeSync { .. }));

    let failed_sync = "\
10 pwrite64(5</d/steward.db-wal>, \"xx TOKEN xx\", 10, 0) = 10
10 fdatasync(5</d/steward.db-wal>) = -1 EIO (Input/output error)
12 write(9<TCP:[127.0.0.1:1->127.0.0.1:2]>, \"HTTP/1.1 200 OK\\r\\n{TOKEN}\", 9) = 9
";
    assert!(matches!(check(&strace::parse(failed_sync), "TOKEN"), Verdict::AckedBeforeSync { .. }));
    assert_eq!(check(&strace::parse(other_file), "NOPE"), Verdict::NotInWal);
}

/// The trace reader: hex strings, offsets, resumed calls.
#[test]
fn parses_hex_strings_offsets_and_resumed_calls() {
    let t = "\
7 pwrite64(5</d/db-wal>, \"\\x61\\x62\\x63\", 3, 4096) = 3
8 fdatasync(5</d/db-wal> <unfinished ...>
7 writev(9<TCP:[1->2]>, [{iov_base=\"\\x48\\x54\", iov_len=2}, {iov_base=\"\\x21\", iov_len=1}], 2) = 3
8 <... fdatasync resumed>)          = 0
7 ftruncate(5</d/db-wal>, 0) = 0
";
    let c = strace::parse(t);
    assert_eq!(c.len(), 4);
    assert_eq!((c[0].data.as_slice(), c[0].tail_args.as_slice(), c[0].fd.as_str()), (&b"abc"[..], &[3u64, 4096][..], "/d/db-wal"));
    assert_eq!((c[1].name.as_str(), c[2].entry, c[2].exit, c[2].result.as_str()), ("writev", 1, 3, "0"));
    assert_eq!(c[1].data, b"HT!");
    assert_eq!((c[3].name.as_str(), c[3].tail_args.as_slice()), ("ftruncate", &[0u64][..]));
}
