//! The on-disk format of container logs, in one place: the log driver in
//! `steward-controller` writes it, the API's log endpoint in
//! `steward-apiserver` reads it.
//!
//! Files: `ROOT/<containerd namespace>/<id>.log`, rotated by size to
//! `.log.1` ... `.log.<max-files - 1>` (higher = older). A new task of the
//! same container first moves the last task's files to
//! `<id>.previous.log*`. Lines are CRI records,
//! `2026-11-25T10:00:00.123456789Z stdout F hello`, where `P` instead of `F`
//! marks a partial line continued by the next record. Containers may print
//! any bytes: readers show them lossily, never fail on them.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};

/// `ROOT/<namespace>/<id>.log`.
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
        Follower { path, file, ino, offset, joiner: Joiner::default(), missing: 0 }
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
