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

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};


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
    /// The object's log directory under `ROOT/<namespace>/`
    /// (`steward_logfile::object_dir_name`), set per task; `None` writes
    /// the old per-container-id layout.
    pub dir: Option<String>,
}

impl LogDriverConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LogDriverConfig { root: root.into(), max_size: DEFAULT_MAX_SIZE, max_files: DEFAULT_MAX_FILES, dir: None }
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
                "dir" => {
                    if steward_logfile::parse_object_dir_name(v).is_none() {
                        return Err(bad(format!("log driver: bad log directory {v:?}")));
                    }
                    cfg.dir = Some(v.to_string());
                }
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
        let mut query = Vec::new();
        if self.max_size != DEFAULT_MAX_SIZE || self.max_files != DEFAULT_MAX_FILES {
            query.push(format!("max-size={}&max-files={}", self.max_size, self.max_files));
        }
        if let Some(d) = &self.dir {
            query.push(format!("dir={d}"));
        }
        let root = self.root.to_string_lossy();
        if query.is_empty() {
            root.into_owned()
        } else {
            format!("{root}?{}", query.join("&"))
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

pub use steward_logfile::{log_path, remove_logs};
use steward_logfile::{keep_as_previous, open_next_attempt, RotatingLog};

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
                    eprintln!("steward log-driver: {}: {e}; dropping output until writes succeed", log.path().display());
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
    let setup = (|| match &cfg.dir {
        // One file per run attempt in the object's directory.
        Some(dir) => open_next_attempt(&cfg.root.join(&namespace).join(dir), cfg.max_size, cfg.max_files),
        None => {
            if let Some(dir) = base.parent() {
                std::fs::create_dir_all(dir)?;
            }
            keep_as_previous(&base)?;
            RotatingLog::open(base.clone(), cfg.max_size, cfg.max_files)
        }
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
        let with_dir = LogDriverConfig { dir: Some("default_web_u-1".into()), ..small.clone() };
        assert_eq!(with_dir.to_arg(), "/var/lib/steward/logs?max-size=1000&max-files=2&dir=default_web_u-1");
        assert_eq!(LogDriverConfig::from_arg(&with_dir.to_arg()).unwrap(), with_dir);
        assert!(LogDriverConfig::from_arg("/x?dir=../../etc").is_err());
    }
}
