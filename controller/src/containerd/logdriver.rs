//! Container output without steward in the path: containerd's `binary://`
//! logging protocol, with steward's own executable as the log driver (as
//! nerdctl does).
//!
//! The runc shim starts the binary named by the task's stdout URI once per
//! task, with `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its (otherwise
//! empty) environment, the container's stdout and stderr as fds 3 and 4, and
//! the write end of a pipe as fd 5 that the driver closes once it is ready.
//! The shim turns each URI query parameter into two arguments, `key value`,
//! in Go map order, i.e. random; so the URI carries exactly ONE parameter:
//!
//! ```text
//! binary:///usr/bin/steward?log-driver=/var/lib/steward/logs
//!   => argv: /usr/bin/steward log-driver /var/lib/steward/logs
//! ```
//!
//! Non-default rotation sizes ride in the same value as a query suffix,
//! `ROOT?max-size=BYTES&max-files=N` (so log roots cannot contain `?`).
//! The shim closes the pipes when the task is deleted, then sends SIGTERM
//! and waits up to 12 s: the driver ignores SIGTERM, drains both pipes and
//! exits at end of file, so the last lines are never lost.
//!
//! Files: `ROOT/<namespace>/<id>.log`, rotated by size to `.log.1` ...
//! `.log.<max-files - 1>`. A driver starting for a new task of the same
//! container first moves the last task's files to `<id>.previous.log*`
//! (what `logs --previous` reads). Lines in the CRI format
//! `2026-11-25T10:00:00.123456789Z stdout F hello` (`P` = partial line, the
//! rest follows in the next record).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};

/// The argument (and URI query key) that selects log-driver mode.
pub const LOG_DRIVER_ARG: &str = "log-driver";
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
pub const DEFAULT_MAX_FILES: u32 = 5;
/// A line longer than this is split into partial (`P`) records.
const MAX_LINE: usize = 16 * 1024;

/// Where and how one container's logs are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogDriverConfig {
    pub root: PathBuf,
    pub max_size: u64,
    pub max_files: u32,
}

impl LogDriverConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LogDriverConfig { root: root.into(), max_size: DEFAULT_MAX_SIZE, max_files: DEFAULT_MAX_FILES }
    }

    /// Parses the driver's argument: `ROOT[?max-size=BYTES&max-files=N]`.
    pub fn from_arg(arg: &str) -> io::Result<Self> {
        let (root, query) = arg.split_once('?').unwrap_or((arg, ""));
        let mut cfg = LogDriverConfig::new(root);
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "max-size" => cfg.max_size = v.parse().map_err(|_| bad(format!("log driver: bad max-size {v:?}")))?,
                "max-files" => cfg.max_files = v.parse().map_err(|_| bad(format!("log driver: bad max-files {v:?}")))?,
                _ => return Err(bad(format!("log driver: unknown option {k:?}"))),
            }
        }
        if cfg.max_files == 0 || cfg.max_size == 0 {
            return Err(bad("log driver: max-size and max-files must be above 0".into()));
        }
        Ok(cfg)
    }

    /// The driver's argument (inverse of [`from_arg`](Self::from_arg)).
    pub fn to_arg(&self) -> String {
        let root = self.root.to_string_lossy();
        if self.max_size == DEFAULT_MAX_SIZE && self.max_files == DEFAULT_MAX_FILES {
            root.into_owned()
        } else {
            format!("{root}?max-size={}&max-files={}", self.max_size, self.max_files)
        }
    }

    /// The `binary://` URI that makes the shim run `exe log-driver ARG`.
    pub fn binary_uri(&self, exe: &Path) -> String {
        format!(
            "binary://{}?{LOG_DRIVER_ARG}={}",
            percent_encode(&exe.to_string_lossy(), true),
            percent_encode(&self.to_arg(), false)
        )
    }
}

/// Go's `url.Parse` decodes `%XX` in both path and query; encode all but
/// the unreserved characters (and `/` in the path).
fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `ROOT/<namespace>/<id>.log`.
pub fn log_path(root: &Path, namespace: &str, id: &str) -> PathBuf {
    root.join(namespace).join(format!("{id}.log"))
}

/// Every file of one container's log, oldest first.
pub fn log_files(base: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (base.parent(), base.file_name().and_then(|n| n.to_str())) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let fname = e.file_name();
                let Some(f) = fname.to_str() else { continue };
                if let Some(n) = f.strip_prefix(name).and_then(|r| r.strip_prefix('.')).and_then(|n| n.parse().ok()) {
                    rotated.push((n, e.path()));
                }
            }
        }
    }
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if base.exists() {
        files.push(base.to_path_buf());
    }
    files
}

/// `<id>.previous.log` for `<id>.log`.
pub fn previous_base(base: &Path) -> PathBuf {
    let name = base.file_name().and_then(|n| n.to_str()).unwrap_or("x.log");
    let stem = name.strip_suffix(".log").unwrap_or(name);
    base.with_file_name(format!("{stem}.previous.log"))
}

/// Moves the files of the last task to `<id>.previous.log*`, replacing any
/// older previous files.
pub fn keep_as_previous(base: &Path) -> io::Result<()> {
    let current = log_files(base);
    if current.is_empty() {
        return Ok(());
    }
    let prev = previous_base(base);
    remove_files(&log_files(&prev))?;
    let base_name = base.to_string_lossy().into_owned();
    let prev_name = prev.to_string_lossy().into_owned();
    for f in current {
        let suffix = f.to_string_lossy()[base_name.len()..].to_string();
        std::fs::rename(&f, format!("{prev_name}{suffix}"))?;
    }
    Ok(())
}

fn remove_files(files: &[PathBuf]) -> io::Result<()> {
    for f in files {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Removes a container's log files (current and previous); missing ones are fine.
pub fn remove_logs(base: &Path) -> io::Result<()> {
    remove_files(&log_files(&previous_base(base)))?;
    for f in log_files(base) {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// A size-rotated CRI log file.
struct RotatingLog {
    base: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl RotatingLog {
    fn open(base: PathBuf, max_size: u64, max_files: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&base)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog { base, file, size, max_size, max_files })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.base.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files <= 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(self.rotated(self.max_files - 1));
        for n in (1..self.max_files - 1).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.base, self.rotated(1))?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.base)?;
        self.size = 0;
        Ok(())
    }

    fn write_record(&mut self, stream: &str, partial: bool, content: &[u8]) -> io::Result<()> {
        let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut rec = Vec::with_capacity(content.len() + 48);
        rec.extend_from_slice(ts.as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.as_bytes());
        rec.extend_from_slice(if partial { b" P " } else { b" F " });
        rec.extend_from_slice(content);
        rec.push(b'\n');
        if self.size > 0 && self.size + rec.len() as u64 > self.max_size {
            self.rotate()?;
        }
        // One write per record: a reader never sees half a line.
        self.file.write_all(&rec)?;
        self.size += rec.len() as u64;
        Ok(())
    }
}

/// Copies one stream into the log, one record per line, until the stream
/// ends. It never stops draining early: a container whose output pipe is
/// not read blocks on its next write, so when the log cannot be written
/// (disk full, no log at all) the output is dropped instead, as Docker does.
fn pump(input: File, stream: &'static str, log: Arc<Mutex<Option<RotatingLog>>>) -> io::Result<()> {
    let mut r = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::with_capacity(MAX_LINE);
    let mut failing = false;
    loop {
        line.clear();
        let n = (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        }
        let mut guard = log.lock().unwrap_or_else(|p| p.into_inner());
        let Some(log) = guard.as_mut() else { continue };
        match log.write_record(stream, !complete && n == MAX_LINE, &line) {
            Ok(()) => failing = false,
            Err(e) => {
                if !failing {
                    eprintln!("steward log-driver: {}: {e}; dropping output until writes succeed", log.base.display());
                }
                failing = true;
            }
        }
    }
}

/// Runs the log driver for the container named by `CONTAINER_ID` and
/// `CONTAINER_NAMESPACE`, reading fds 3 (stdout) and 4 (stderr), signalling
/// readiness by closing fd 5. Returns when both streams are closed.
///
/// `log_root` is the argument after `log-driver` in argv, verbatim: a
/// directory, optionally with `?max-size=BYTES&max-files=N`.
pub fn run_log_driver(log_root: &Path) -> io::Result<()> {
    let cfg = LogDriverConfig::from_arg(&log_root.to_string_lossy())?;
    let id = std::env::var("CONTAINER_ID")
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "log driver: CONTAINER_ID is not set (run by containerd's shim only)"))?;
    let namespace = std::env::var("CONTAINER_NAMESPACE").unwrap_or_else(|_| "default".into());
    if id.is_empty() || id.contains('/') || namespace.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("log driver: bad container id {id:?}")));
    }
    // The shim SIGTERMs us after closing the pipes; dying then would drop
    // whatever is still buffered in them. End of file ends us instead.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    // SAFETY: the shim passes these descriptors (fd 3, 4, 5) and nothing else
    // in this process owns them.
    let (stdout, stderr, ready) = unsafe { (File::from_raw_fd(3), File::from_raw_fd(4), File::from_raw_fd(5)) };

    let base = log_path(&cfg.root, &namespace, &id);
    let setup = (|| {
        if let Some(dir) = base.parent() {
            std::fs::create_dir_all(dir)?;
        }
        keep_as_previous(&base)?;
        RotatingLog::open(base.clone(), cfg.max_size, cfg.max_files)
    })();
    // Ready (or failed): the shim waits for this before starting the task.
    drop(ready);
    // Without a log the streams are still drained (see `pump`).
    let log = Arc::new(Mutex::new(match setup {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("steward log-driver: {}: {e}; output of {id} is dropped", base.display());
            None
        }
    }));

    let out = {
        let log = log.clone();
        std::thread::spawn(move || pump(stdout, "stdout", log))
    };
    let err_result = pump(stderr, "stderr", log);
    let out_result = out.join().map_err(|_| io::Error::other("stdout reader panicked"))?;
    out_result.and(err_result)
}

/// How to read a container's log (the API's `log` endpoint parameters).
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
}

/// One parsed CRI record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub time: DateTime<Utc>,
    pub stream: String,
    pub partial: bool,
    pub content: String,
}

/// Parses `TIME STREAM F|P CONTENT`.
pub fn parse_record(line: &str) -> Option<LogRecord> {
    let mut parts = line.splitn(4, ' ');
    let time = DateTime::parse_from_rfc3339(parts.next()?).ok()?.with_timezone(&Utc);
    let stream = parts.next()?.to_string();
    let tag = parts.next()?;
    let content = parts.next().unwrap_or("").to_string();
    Some(LogRecord { time, stream, partial: tag == "P", content })
}

/// The container's output across rotated files, oldest first, as the
/// Kubernetes log endpoint returns it: partial records joined, one line per
/// `\n`, optionally timestamped.
pub fn read_logs(root: &Path, namespace: &str, id: &str, opts: &LogOptions) -> io::Result<String> {
    let base = log_path(root, namespace, id);
    let mut lines: Vec<(DateTime<Utc>, String)> = Vec::new();
    let mut pending: Option<(DateTime<Utc>, String)> = None;
    for f in log_files(&base) {
        let file = match File::open(&f) {
            Ok(f) => f,
            // Rotated away between listing and opening.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(file).lines() {
            let line = line?;
            let Some(rec) = parse_record(&line) else { continue };
            let (time, mut text) = pending.take().unwrap_or((rec.time, String::new()));
            text.push_str(&rec.content);
            if rec.partial {
                pending = Some((time, text));
            } else {
                lines.push((time, text));
            }
        }
    }
    if let Some(p) = pending {
        lines.push(p);
    }
    if let Some(since) = opts.since {
        lines.retain(|(t, _)| *t >= since);
    }
    if let Some(n) = opts.tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out = String::new();
    for (t, text) in lines {
        if opts.timestamps {
            out.push_str(&t.to_rfc3339_opts(SecondsFormat::Nanos, true));
            out.push(' ');
        }
        out.push_str(&text);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_and_uri_round_trip() {
        let cfg = LogDriverConfig::new("/var/lib/steward/logs");
        assert_eq!(cfg.to_arg(), "/var/lib/steward/logs");
        assert_eq!(LogDriverConfig::from_arg(&cfg.to_arg()).unwrap(), cfg);
        assert_eq!(
            cfg.binary_uri(Path::new("/usr/bin/steward")),
            "binary:///usr/bin/steward?log-driver=%2Fvar%2Flib%2Fsteward%2Flogs"
        );
        let small = LogDriverConfig { max_size: 1000, max_files: 2, ..cfg.clone() };
        assert_eq!(small.to_arg(), "/var/lib/steward/logs?max-size=1000&max-files=2");
        assert_eq!(LogDriverConfig::from_arg(&small.to_arg()).unwrap(), small);
        assert!(LogDriverConfig::from_arg("/x?max-files=0").is_err());
        assert!(LogDriverConfig::from_arg("/x?color=red").is_err());
    }

    #[test]
    fn rotates_by_size_and_reads_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = log_path(dir.path(), "ns", "c1");
        std::fs::create_dir_all(base.parent().unwrap()).unwrap();
        let mut log = RotatingLog::open(base.clone(), 200, 3).unwrap();
        for i in 0..20 {
            log.write_record("stdout", false, format!("line {i:02}").as_bytes()).unwrap();
        }
        let files = log_files(&base);
        assert_eq!(files.len(), 3, "{files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 200);
        }
        let all = read_logs(dir.path(), "ns", "c1", &LogOptions::default()).unwrap();
        let got: Vec<&str> = all.lines().collect();
        assert_eq!(got.last(), Some(&"line 19"));
        // Oldest kept lines first, contiguous.
        let first: usize = got[0].trim_start_matches("line ").parse().unwrap();
        let want: Vec<String> = (first..20).map(|i| format!("line {i:02}")).collect();
        assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());

        let tail = read_logs(dir.path(), "ns", "c1", &LogOptions { tail: Some(2), ..Default::default() }).unwrap();
        assert_eq!(tail, "line 18\nline 19\n");
        let ts = read_logs(dir.path(), "ns", "c1", &LogOptions { tail: Some(1), timestamps: true, ..Default::default() }).unwrap();
        assert!(ts.ends_with("Z line 19\n") && ts.len() > 30, "{ts}");
        let future = Utc::now() + chrono::Duration::seconds(60);
        let none = read_logs(dir.path(), "ns", "c1", &LogOptions { since: Some(future), ..Default::default() }).unwrap();
        assert_eq!(none, "");
        keep_as_previous(&base).unwrap();
        assert!(log_files(&base).is_empty());
        let prev = log_files(&previous_base(&base));
        assert_eq!(prev.len(), 3, "{prev:?}");
        assert!(prev.last().unwrap().ends_with("c1.previous.log"));
        remove_logs(&base).unwrap();
        assert!(log_files(&previous_base(&base)).is_empty());
    }

    #[test]
    fn partial_records_are_joined() {
        let dir = tempfile::tempdir().unwrap();
        let base = log_path(dir.path(), "ns", "c2");
        std::fs::create_dir_all(base.parent().unwrap()).unwrap();
        let mut log = RotatingLog::open(base, 1 << 20, 2).unwrap();
        log.write_record("stdout", true, b"abc").unwrap();
        log.write_record("stdout", false, b"def").unwrap();
        log.write_record("stderr", false, b"err").unwrap();
        assert_eq!(read_logs(dir.path(), "ns", "c2", &LogOptions::default()).unwrap(), "abcdef\nerr\n");
        let rec = parse_record("2026-11-25T10:00:00.123456789Z stdout F hello world").unwrap();
        assert_eq!((rec.stream.as_str(), rec.partial, rec.content.as_str()), ("stdout", false, "hello world"));
    }
}
