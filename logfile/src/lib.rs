//! The on-disk format of container logs, in one place: the log driver in
//! `steward-controller` writes it, the API's log endpoint in
//! `steward-apiserver` reads it.
//!
//! Files: one directory per object (an incarnation: namespace, name and
//! uid), `ROOT/<containerd namespace>/<ns>_<name>_<uid>/`, holding one log
//! per run attempt, `0.log`, `1.log`, ... (as the kubelet's
//! `<restartCount>.log`), across restarts AND across the containers that
//! replace each other on a spec change: the newest attempt is the current
//! log, the one before it what `logs --previous` shows. Only the last
//! [`KEEP_ATTEMPTS`] attempts are kept. Each attempt is rotated by size to
//! `<n>.log.1` ... (higher = older). The directory goes when the object
//! does. Lines are CRI records,
//! `2026-11-25T10:00:00.123456789Z stdout F hello`, where `P` instead of `F`
//! marks a partial line continued by the next record. Containers may print
//! any bytes: readers show them lossily, never fail on them.
//!
//! Containers started before this layout log to `ROOT/<ns>/<id>.log` (the
//! previous task's files as `<id>.previous.log*`); those are still read.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};

/// Run attempts kept per object: the current one, the previous one (what
/// `logs --previous` shows) and one more.
pub const KEEP_ATTEMPTS: usize = 3;

/// The directory name of one object's logs: `<ns>_<name>_<uid>`, or `None`
/// when a part could escape the directory or be ambiguous (object names
/// and namespaces are DNS labels, uids UUIDs: none has `_` or `/`).
pub fn object_dir_name(namespace: &str, name: &str, uid: &str) -> Option<String> {
    let ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    (ok(namespace) && ok(name) && ok(uid)).then(|| format!("{namespace}_{name}_{uid}"))
}

/// The (namespace, name, uid) an object log directory belongs to.
pub fn parse_object_dir_name(dir: &str) -> Option<(String, String, String)> {
    let mut parts = dir.splitn(3, '_');
    let (ns, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
    object_dir_name(ns, name, uid).filter(|d| d == dir).map(|_| (ns.to_string(), name.to_string(), uid.to_string()))
}

/// The attempts in an object's log directory, oldest first: (number, the
/// attempt's base file `<n>.log`).
pub fn attempts(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let fname = e.file_name();
            let Some(n) = fname.to_str().and_then(|f| f.strip_suffix(".log")).and_then(|n| n.parse().ok()) else {
                continue;
            };
            out.push((n, e.path()));
        }
    }
    out.sort_by_key(|a| a.0);
    out
}

/// The current attempt's base file (the newest) and the previous one's.
pub fn current_and_previous(dir: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    let mut a = attempts(dir);
    let current = a.pop().map(|x| x.1);
    let previous = a.pop().map(|x| x.1);
    (current, previous)
}

/// Opens the log of a new run attempt in `dir` (created if missing):
/// number = the newest + 1, and only the last [`KEEP_ATTEMPTS`] (this one
/// included) are kept.
pub fn open_next_attempt(dir: &Path, max_size: u64, max_files: u32) -> io::Result<RotatingLog> {
    std::fs::create_dir_all(dir)?;
    let existing = attempts(dir);
    let next = existing.last().map_or(0, |(n, _)| n + 1);
    let drop = existing.len().saturating_sub(KEEP_ATTEMPTS - 1);
    for (_, base) in &existing[..drop] {
        remove_files(&log_files(base))?;
    }
    RotatingLog::open(dir.join(format!("{next}.log")), max_size, max_files)
}

/// Removes one object's logs (every attempt); a missing directory is fine.
pub fn remove_object_logs(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The object log directories under `ns_root` (`ROOT/<containerd
/// namespace>`), with whose they are.
pub fn object_dirs(ns_root: &Path) -> Vec<(PathBuf, (String, String, String))> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(ns_root) {
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Some(owner) = e.file_name().to_str().and_then(parse_object_dir_name) {
                out.push((e.path(), owner));
            }
        }
    }
    out
}

/// The container ids that have files of the old per-id layout under
/// `ns_root` (`<id>.log*`, `<id>.previous.log*`).
pub fn legacy_log_ids(ns_root: &Path) -> Vec<String> {
    let mut ids = std::collections::BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(ns_root) {
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let fname = e.file_name();
            let Some(f) = fname.to_str() else { continue };
            // Drop a rotation suffix (`.3`), then `.log`, then `.previous`.
            let f = match f.rsplit_once('.') {
                Some((head, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => head,
                _ => f,
            };
            let Some(id) = f.strip_suffix(".log") else { continue };
            let id = id.strip_suffix(".previous").unwrap_or(id);
            if !id.is_empty() {
                ids.insert(id.to_string());
            }
        }
    }
    ids.into_iter().collect()
}

/// `ROOT/<namespace>/<id>.log` (containers started before per-object logs).
pub fn log_path(root: &Path, namespace: &str, id: &str) -> PathBuf {
    root.join(namespace).join(format!("{id}.log"))
}

/// `<id>.previous.log` for `<id>.log`.
pub fn previous_base(base: &Path) -> PathBuf {
    let name = base.file_name().and_then(|n| n.to_str()).unwrap_or("x.log");
    let stem = name.strip_suffix(".log").unwrap_or(name);
    base.with_file_name(format!("{stem}.previous.log"))
}

/// Every file of one log (`base` and its rotations), oldest first.
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

fn remove_files(files: &[PathBuf]) -> io::Result<()> {
    for f in files {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
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

/// Removes a container's log files (current and previous); missing ones are fine.
pub fn remove_logs(base: &Path) -> io::Result<()> {
    remove_files(&log_files(&previous_base(base)))?;
    remove_files(&log_files(base))
}

/// A size-rotated CRI log file (the writer side).
pub struct RotatingLog {
    base: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl RotatingLog {
    pub fn open(base: PathBuf, max_size: u64, max_files: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&base)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog { base, file, size, max_size, max_files })
    }

    pub fn path(&self) -> &Path {
        &self.base
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

    /// Appends one record, stamped now; rotates first when it would not fit.
    pub fn write_record(&mut self, stream: &str, partial: bool, content: &[u8]) -> io::Result<()> {
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

/// One parsed CRI record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: DateTime<Utc>,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a str,
}

/// Parses `TIME STREAM F|P CONTENT` (without the newline).
pub fn parse_record(line: &str) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, ' ');
    let time = DateTime::parse_from_rfc3339(parts.next()?).ok()?.with_timezone(&Utc);
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or("");
    Some(Record { time, stream, partial: tag == "P", content })
}

/// How to read a log (the log endpoint's parameters).
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
}

/// Joins partial records into lines, in order.
#[derive(Default)]
struct Joiner {
    lines: Vec<(DateTime<Utc>, String)>,
    pending: Option<(DateTime<Utc>, String)>,
}

impl Joiner {
    fn push(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let Some(rec) = parse_record(text.trim_end_matches('\n')) else { return };
        let (time, mut line) = self.pending.take().unwrap_or((rec.time, String::new()));
        line.push_str(rec.content);
        if rec.partial {
            self.pending = Some((time, line));
        } else {
            self.lines.push((time, line));
        }
    }

    fn render(lines: impl IntoIterator<Item = (DateTime<Utc>, String)>, opts: &ReadOptions) -> Vec<u8> {
        let mut out = Vec::new();
        for (t, text) in lines {
            if opts.since.is_some_and(|s| t < s) {
                continue;
            }
            if opts.timestamps {
                out.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::Nanos, true).as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
        }
        out
    }
}

/// The whole output in `files` (oldest first), partial records joined,
/// filtered and trimmed per `opts`. With `tail`, only that many lines are
/// ever held. Files are opened before any is read, so a rotation during
/// the read cannot make one be read twice or skipped.
pub fn read(files: &[PathBuf], opts: &ReadOptions) -> io::Result<Vec<u8>> {
    read_with_end(files, opts).map(|(out, _)| out)
}

/// As [`read`], also returning how far the newest file was read, so a
/// [`Follower`] can continue exactly there.
pub fn read_with_end(files: &[PathBuf], opts: &ReadOptions) -> io::Result<(Vec<u8>, u64)> {
    let mut opened = Vec::new();
    for f in files {
        match File::open(f) {
            Ok(file) => opened.push(file),
            // Rotated away between listing and opening.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    let mut j = Joiner::default();
    let mut kept: std::collections::VecDeque<(DateTime<Utc>, String)> = std::collections::VecDeque::new();
    let mut end = 0;
    for file in opened {
        let mut r = BufReader::new(file);
        let mut buf = Vec::new();
        end = 0;
        loop {
            let n = r.read_until(b'\n', &mut buf)?;
            if n == 0 || buf.last() != Some(&b'\n') {
                break; // a record still being written belongs to the follower
            }
            end += n as u64;
            j.push(&buf);
            buf.clear();
            for line in j.lines.drain(..) {
                if opts.since.is_some_and(|s| line.0 < s) {
                    continue;
                }
                kept.push_back(line);
                if opts.tail.is_some_and(|n| kept.len() > n) {
                    kept.pop_front();
                }
            }
        }
    }
    if let Some(p) = j.pending.take() {
        kept.push_back(p);
        if opts.tail.is_some_and(|n| kept.len() > n) {
            kept.pop_front();
        }
    }
    Ok((Joiner::render(kept, opts), end))
}

/// Follows one log as it grows and rotates (`logs -f`). It keeps the file
/// it reads open: when the name moves on to a new file (rotation), the old
/// one is read to its end first, so no line is lost or repeated.
pub struct Follower {
    /// Set for an object's log directory: a newer run attempt there is
    /// followed once the current one is read to its end.
    attempts_dir: Option<PathBuf>,
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    offset: u64,
    joiner: Joiner,
    missing: u32,
}

impl Follower {
    /// Follows `path` from `offset` (what [`read_with_end`] returned).
    pub fn from_offset(path: PathBuf, offset: u64) -> Self {
        use std::os::unix::fs::MetadataExt;
        let file = File::open(&path).ok();
        let ino = file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.ino());
        Follower { attempts_dir: None, path, file, ino, offset, joiner: Joiner::default(), missing: 0 }
    }

    /// Also moves on to the next run attempt in `dir` (the object's log
    /// directory) when one starts, as `logs -f` did across restarts.
    pub fn across_attempts(mut self, dir: PathBuf) -> Self {
        self.attempts_dir = Some(dir);
        self
    }

    /// False once the log has been gone for two polls in a row (the
    /// container was removed; one miss may be a rotation in progress).
    pub fn alive(&self) -> bool {
        self.missing < 2
    }

    /// Reads the open file's complete records after `offset` into the joiner.
    fn drain(&mut self) {
        let Some(f) = self.file.as_mut() else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut r = BufReader::new(&mut *f);
        let mut buf = Vec::new();
        while let Ok(n) = r.read_until(b'\n', &mut buf) {
            if n == 0 || buf.last() != Some(&b'\n') {
                break; // a record still being written: next time
            }
            self.offset += n as u64;
            self.joiner.push(&buf);
            buf.clear();
        }
    }

    /// The complete lines written since the last call.
    pub fn poll(&mut self, opts: &ReadOptions) -> Vec<u8> {
        use std::os::unix::fs::MetadataExt;
        self.drain();
        match std::fs::metadata(&self.path) {
            Ok(m) => {
                self.missing = 0;
                if m.ino() != self.ino || self.file.is_none() {
                    // Rotated (or created): the old file is finished, the
                    // new one starts at its beginning.
                    self.file = File::open(&self.path).ok();
                    self.ino = m.ino();
                    self.offset = 0;
                    self.drain();
                }
            }
            Err(_) => self.missing += 1,
        }
        // A new run attempt started: the old file is finished (read above).
        if let Some(dir) = &self.attempts_dir {
            if let (Some(newest), _) = current_and_previous(dir) {
                if newest != self.path {
                    self.path = newest;
                    self.file = File::open(&self.path).ok();
                    self.ino = self.file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.ino());
                    self.offset = 0;
                    self.missing = 0;
                    self.drain();
                }
            }
        }
        Joiner::render(std::mem::take(&mut self.joiner.lines), opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap()
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
        let all = s(read(&files, &ReadOptions::default()).unwrap());
        let got: Vec<&str> = all.lines().collect();
        assert_eq!(got.last(), Some(&"line 19"));
        let first: usize = got[0].trim_start_matches("line ").parse().unwrap();
        let want: Vec<String> = (first..20).map(|i| format!("line {i:02}")).collect();
        assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>(), "oldest kept lines first, contiguous");
        assert_eq!(s(read(&files, &ReadOptions { tail: Some(2), ..Default::default() }).unwrap()), "line 18\nline 19\n");
        let ts = s(read(&files, &ReadOptions { tail: Some(1), timestamps: true, ..Default::default() }).unwrap());
        assert!(ts.ends_with("Z line 19\n") && ts.len() > 30, "{ts}");
        let future = Utc::now() + chrono::Duration::seconds(60);
        assert_eq!(s(read(&files, &ReadOptions { since: Some(future), ..Default::default() }).unwrap()), "");
        keep_as_previous(&base).unwrap();
        assert!(log_files(&base).is_empty());
        let prev = log_files(&previous_base(&base));
        assert_eq!(prev.len(), 3, "{prev:?}");
        assert!(prev.last().unwrap().ends_with("c1.previous.log"));
        remove_logs(&base).unwrap();
        assert!(log_files(&previous_base(&base)).is_empty());
    }

    #[test]
    fn partial_records_are_joined_and_bad_bytes_shown_lossily() {
        let dir = tempfile::tempdir().unwrap();
        let base = log_path(dir.path(), "ns", "c2");
        std::fs::create_dir_all(base.parent().unwrap()).unwrap();
        let mut log = RotatingLog::open(base.clone(), 1 << 20, 2).unwrap();
        log.write_record("stdout", true, b"abc").unwrap();
        log.write_record("stdout", false, b"def").unwrap();
        log.write_record("stderr", false, b"a\xffb").unwrap();
        assert_eq!(s(read(&log_files(&base), &ReadOptions::default()).unwrap()), "abcdef\na\u{fffd}b\n");
        let rec = parse_record("2026-11-25T10:00:00.123456789Z stdout F hello world").unwrap();
        assert_eq!((rec.stream, rec.partial, rec.content), ("stdout", false, "hello world"));
    }

    #[test]
    fn one_file_per_attempt_and_only_the_last_few_kept() {
        let root = tempfile::tempdir().unwrap();
        let name = object_dir_name("default", "web", "0b6c-11").unwrap();
        assert_eq!(parse_object_dir_name(&name), Some(("default".into(), "web".into(), "0b6c-11".into())));
        let dir = root.path().join(&name);
        assert_eq!(current_and_previous(&dir), (None, None));
        for run in 0..5 {
            let mut log = open_next_attempt(&dir, 1 << 20, 2).unwrap();
            log.write_record("stdout", false, format!("run {run}").as_bytes()).unwrap();
        }
        let nums: Vec<u32> = attempts(&dir).into_iter().map(|a| a.0).collect();
        assert_eq!(nums, (5 - KEEP_ATTEMPTS as u32..5).collect::<Vec<_>>(), "numbered by attempt, the oldest dropped");
        let (cur, prev) = current_and_previous(&dir);
        assert_eq!(s(read(&log_files(&cur.unwrap()), &ReadOptions::default()).unwrap()), "run 4\n");
        assert_eq!(s(read(&log_files(&prev.unwrap()), &ReadOptions::default()).unwrap()), "run 3\n");
        // Rotated files of a dropped attempt go with it.
        let mut big = open_next_attempt(&dir, 40, 3).unwrap();
        for i in 0..6 {
            big.write_record("stdout", false, format!("line {i}").as_bytes()).unwrap();
        }
        drop(big);
        for _ in 0..KEEP_ATTEMPTS {
            open_next_attempt(&dir, 40, 3).unwrap();
        }
        let left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(left.len(), KEEP_ATTEMPTS, "{left:?}");
        assert_eq!(object_dirs(root.path()).len(), 1);
        remove_object_logs(&dir).unwrap();
        remove_object_logs(&dir).unwrap();
        assert!(object_dirs(root.path()).is_empty());
    }

    #[test]
    fn follower_moves_on_to_the_next_attempt() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("default_web_u1");
        let mut first = open_next_attempt(&dir, 1 << 20, 2).unwrap();
        first.write_record("stdout", false, b"run 0").unwrap();
        let (cur, _) = current_and_previous(&dir);
        let cur = cur.unwrap();
        let (_, end) = read_with_end(&log_files(&cur), &ReadOptions::default()).unwrap();
        let mut f = Follower::from_offset(cur, end).across_attempts(dir.clone());
        first.write_record("stdout", false, b"last of run 0").unwrap();
        drop(first);
        let mut second = open_next_attempt(&dir, 1 << 20, 2).unwrap();
        second.write_record("stdout", false, b"run 1").unwrap();
        assert_eq!(s(f.poll(&ReadOptions::default())), "last of run 0\nrun 1\n");
        second.write_record("stdout", false, b"more").unwrap();
        assert_eq!(s(f.poll(&ReadOptions::default())), "more\n");
    }

    #[test]
    fn finds_the_ids_of_old_per_id_logs() {
        let root = tempfile::tempdir().unwrap();
        for f in ["a.b.1.log", "a.b.1.log.2", "a.b.1.previous.log", "c.log.1", "d.previous.log.1", "notes.txt"] {
            std::fs::write(root.path().join(f), "").unwrap();
        }
        std::fs::create_dir(root.path().join("default_web_u1")).unwrap();
        assert_eq!(legacy_log_ids(root.path()), ["a.b.1", "c", "d"]);
        remove_logs(&log_path(root.path().parent().unwrap(), root.path().file_name().unwrap().to_str().unwrap(), "a.b.1")).unwrap();
        assert_eq!(legacy_log_ids(root.path()), ["c", "d"]);
    }

    #[test]
    fn object_dir_names_cannot_escape() {
        assert_eq!(object_dir_name("default", "web", "u1").as_deref(), Some("default_web_u1"));
        for (ns, name, uid) in [("..", "x", "u"), ("a/b", "x", "u"), ("a", "x_y", "u"), ("a", "", "u"), ("a", "x", ".u")] {
            assert_eq!(object_dir_name(ns, name, uid), None, "{ns} {name} {uid}");
        }
        assert_eq!(parse_object_dir_name("a_b"), None);
        assert_eq!(parse_object_dir_name("a_b_c_d"), None);
    }

    #[test]
    fn follower_sees_new_lines_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let base = log_path(dir.path(), "ns", "c3");
        std::fs::create_dir_all(base.parent().unwrap()).unwrap();
        let mut log = RotatingLog::open(base.clone(), 120, 2).unwrap();
        log.write_record("stdout", false, b"before").unwrap();
        let (_, end) = read_with_end(&log_files(&base), &ReadOptions::default()).unwrap();
        let mut f = Follower::from_offset(base.clone(), end);
        assert_eq!(s(f.poll(&ReadOptions::default())), "");
        log.write_record("stdout", false, b"one").unwrap();
        assert_eq!(s(f.poll(&ReadOptions::default())), "one\n");
        // Enough to rotate, twice: the follower finishes the old file, then
        // reads the new one from its start; nothing lost, nothing repeated.
        log.write_record("stdout", false, b"two").unwrap();
        log.write_record("stdout", false, b"three").unwrap();
        log.write_record("stdout", false, b"four").unwrap();
        let got = s(f.poll(&ReadOptions::default()));
        assert!(got.ends_with("four\n"), "{got:?}");
        assert!(got.matches("three").count() <= 1 && got.matches("four").count() == 1, "{got:?}");
        assert!(f.alive());
    }
}
