//! The container log endpoint: `GET .../containers/{name}/log`.
//!
//! Containers write through steward's log driver (in the controller
//! crate), one file per runtime container, `LOGS/<containerd id>.log`,
//! rotated by size to `.log.1` ... `.log.N` (oldest last). A log driver
//! starting for a new task of the same container moves the last task's
//! files to `<id>.previous.log*`, which `previous=true` reads. Lines are in
//! the CRI format: `<RFC 3339 nano time> <stdout|stderr> <F|P> <text>`.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;
use steward_schema::RESOURCE;
use steward_store::{Key, StoreError};

use crate::metrics::Verb;
use crate::{ApiError, AppState};

/// How often a followed log is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Default, Debug)]
pub struct LogOptions {
    pub follow: bool,
    pub tail: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub timestamps: bool,
    pub previous: bool,
}

impl LogOptions {
    fn parse(raw: Option<&str>) -> Result<LogOptions, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))?;
        let mut o = LogOptions::default();
        let num = |k: &str, v: &str| {
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::BadRequest(format!("query parameter {k}: {v:?} is not a non-negative integer")))
        };
        let flag = |v: &str| matches!(v, "true" | "1" | "");
        for (k, v) in pairs {
            match k.as_str() {
                "follow" => o.follow = flag(&v),
                "timestamps" => o.timestamps = flag(&v),
                "previous" => o.previous = flag(&v),
                "tailLines" => o.tail = Some(num(&k, &v)? as usize),
                "sinceSeconds" => o.since = Some(Utc::now() - chrono::Duration::seconds(num(&k, &v)?)),
                "sinceTime" => {
                    o.since = Some(
                        DateTime::parse_from_rfc3339(&v)
                            .map_err(|e| ApiError::BadRequest(format!("query parameter sinceTime: {e}")))?
                            .with_timezone(&Utc),
                    )
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// containerd's identifier rule, which is also a safe file name: no `/`,
/// no leading dot, at most 76 characters.
pub fn is_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 76
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !id.contains("..")
}

/// One parsed log line.
#[derive(Debug, PartialEq)]
pub struct LogLine<'a> {
    pub time: Option<DateTime<Utc>>,
    pub text: &'a str,
    /// `P`: a partial line, continued by the next entry.
    pub partial: bool,
}

pub fn parse_line(line: &str) -> LogLine<'_> {
    let mut parts = line.splitn(4, ' ');
    let (t, _stream, tag, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
    match (t.and_then(|t| DateTime::parse_from_rfc3339(t).ok()), tag, rest) {
        (Some(time), Some(tag), Some(text)) => LogLine { time: Some(time.with_timezone(&Utc)), text, partial: tag == "P" },
        (Some(time), Some(tag), None) => LogLine { time: Some(time.with_timezone(&Utc)), text: "", partial: tag == "P" },
        _ => LogLine { time: None, text: line, partial: false },
    }
}

/// The files of one log, oldest first.
pub fn log_files(dir: &Path, id: &str, previous: bool) -> Vec<PathBuf> {
    let base = if previous { format!("{id}.previous.log") } else { format!("{id}.log") };
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(&format!("{base}."))?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by(|a, b| b.0.cmp(&a.0));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let current = dir.join(&base);
    if current.exists() {
        files.push(current);
    }
    files
}

fn render(line: &str, o: &LogOptions, out: &mut Vec<u8>) -> bool {
    let l = parse_line(line.trim_end_matches('\n'));
    if let (Some(since), Some(t)) = (o.since, l.time) {
        if t < since {
            return false;
        }
    }
    if o.timestamps {
        if let Some(t) = l.time {
            out.extend_from_slice(t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true).as_bytes());
            out.push(b' ');
        }
    }
    out.extend_from_slice(l.text.as_bytes());
    if !l.partial {
        out.push(b'\n');
    }
    true
}

/// Reads the whole log (honouring tail and since) into bytes.
pub fn read_log(files: &[PathBuf], o: &LogOptions) -> std::io::Result<Vec<u8>> {
    let mut lines: Vec<String> = Vec::new();
    for f in files {
        let file = match std::fs::File::open(f) {
            Ok(f) => f,
            // Rotated away between listing and opening.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // Containers may print anything: bytes, shown lossily, never an error.
        let mut r = BufReader::new(file);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf)? > 0 {
            lines.push(String::from_utf8_lossy(&buf).trim_end_matches('\n').to_string());
            buf.clear();
        }
    }
    let mut out = Vec::new();
    let kept: Vec<&String> = lines.iter().filter(|l| o.since.is_none() || render(l, o, &mut Vec::new())).collect();
    let start = o.tail.map_or(0, |n| kept.len().saturating_sub(n));
    for l in &kept[start..] {
        render(l, o, &mut out);
    }
    Ok(out)
}

pub async fn get(
    State(app): State<AppState>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let o = LogOptions::parse(q.as_deref())?;
    let key = Key::new(RESOURCE, &ns, &name);
    let obj = app.store.get(&key).ok_or(ApiError::Store(StoreError::NotFound { key }))?;
    let Some(dir) = app.config.logs_dir.clone() else {
        return Err(ApiError::NotFound("this server keeps no container logs (no controller)".into()));
    };
    let id = obj
        .object
        .status
        .as_ref()
        .and_then(|s| s.get("containerID"))
        .and_then(Value::as_str)
        .map(|s| s.trim_start_matches("containerd://").to_string())
        .ok_or_else(|| ApiError::BadRequest(format!("container {name:?} has not been created yet")))?;
    // The id comes from status, which clients can write: it must name a
    // file in the log directory and nothing else.
    if !is_container_id(&id) {
        return Err(ApiError::BadRequest(format!("status.containerID {id:?} is not a container id")));
    }
    let files = log_files(&dir, &id, o.previous);
    if files.is_empty() && o.previous {
        return Err(ApiError::BadRequest(format!("previous terminated container {name:?} has no logs")));
    }
    // File reads block: keep them off the async workers.
    let (first, o) = tokio::task::spawn_blocking(move || read_log(&files, &o).map(|b| (b, o)))
        .await
        .map_err(|e| ApiError::Unavailable(format!("reading logs: {e}")))?
        .map_err(|e| ApiError::Unavailable(format!("reading logs: {e}")))?;
    let body = if o.follow && !o.previous {
        let current = dir.join(format!("{id}.log"));
        let offset = std::fs::metadata(&current).map(|m| m.len()).unwrap_or(0);
        let shutdown = app.shutdown.clone();
        let stream = futures_util::stream::unfold(
            (Some(first), current, offset, o, shutdown),
            |(first, path, offset, o, mut shutdown)| async move {
                if let Some(f) = first {
                    return Some((Ok::<_, Infallible>(Bytes::from(f)), (None, path, offset, o, shutdown)));
                }
                let mut offset = offset;
                loop {
                    if *shutdown.borrow() {
                        return None;
                    }
                    let (chunk, next) = read_from(&path, offset, &o);
                    offset = next;
                    if !chunk.is_empty() {
                        return Some((Ok(Bytes::from(chunk)), (None, path, offset, o, shutdown)));
                    }
                    if !path.exists() {
                        return None;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(FOLLOW_POLL) => {}
                        _ = shutdown.changed() => return None,
                    }
                }
            },
        );
        Body::from_stream(stream)
    } else {
        Body::from(first)
    };
    let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
    r.extensions_mut().insert(Verb("log"));
    Ok(r)
}

/// New complete lines of `path` after `offset`; a file that shrank was
/// rotated, so reading restarts at its beginning.
fn read_from(path: &Path, offset: u64, o: &LogOptions) -> (Vec<u8>, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), 0);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if len < offset { 0 } else { offset };
    if f.seek(SeekFrom::Start(start)).is_err() {
        return (Vec::new(), offset);
    }
    let mut out = Vec::new();
    let mut pos = start;
    let mut reader = BufReader::new(f);
    let mut line = Vec::new();
    while let Ok(n) = reader.read_until(b'\n', &mut line) {
        if n == 0 || line.last() != Some(&b'\n') {
            break; // a line still being written: next time
        }
        pos += n as u64;
        render(&String::from_utf8_lossy(&line), o, &mut out);
        line.clear();
    }
    (out, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_cannot_escape_the_log_dir() {
        assert!(is_container_id("default.web.0123456789ab"));
        for bad in ["", "/etc/passwd", "../../x", "a/../b", ".hidden", "a b", "x..y"] {
            assert!(!is_container_id(bad), "{bad}");
        }
    }

    #[test]
    fn invalid_utf8_is_shown_lossily() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("c.log"), b"2026-11-25T10:00:01Z stdout F a\xffb\n2026-11-25T10:00:02Z stdout F next\n").unwrap();
        let out = read_log(&log_files(d.path(), "c", false), &LogOptions::default()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a\u{fffd}b\nnext\n");
        let (chunk, pos) = read_from(&d.path().join("c.log"), 0, &LogOptions::default());
        assert_eq!(String::from_utf8(chunk).unwrap(), "a\u{fffd}b\nnext\n");
        assert!(pos > 0);
    }

    #[test]
    fn parses_cri_lines() {
        let l = parse_line("2026-11-25T10:00:00.123456789Z stdout F hello world");
        assert_eq!(l.text, "hello world");
        assert!(!l.partial);
        assert!(l.time.is_some());
        assert!(parse_line("2026-11-25T10:00:00Z stderr P part").partial);
        assert_eq!(parse_line("garbage line").text, "garbage line");
    }

    #[test]
    fn reads_across_rotated_files_with_tail_since_and_timestamps() {
        let d = tempfile::tempdir().unwrap();
        let w = |n: &str, lines: &[&str]| std::fs::write(d.path().join(n), lines.join("\n") + "\n").unwrap();
        w("c1.log.2", &["2026-11-25T10:00:01Z stdout F one", "2026-11-25T10:00:02Z stdout F two"]);
        w("c1.log.1", &["2026-11-25T10:00:03Z stderr F three"]);
        w("c1.log", &["2026-11-25T10:00:04Z stdout P fo", "2026-11-25T10:00:04Z stdout F ur"]);
        w("c1.previous.log", &["2026-11-25T09:00:00Z stdout F old"]);
        let files = log_files(d.path(), "c1", false);
        let all = String::from_utf8(read_log(&files, &LogOptions::default()).unwrap()).unwrap();
        assert_eq!(all, "one\ntwo\nthree\nfour\n");
        let o = LogOptions { tail: Some(3), ..Default::default() };
        assert_eq!(String::from_utf8(read_log(&files, &o).unwrap()).unwrap(), "three\nfour\n");
        let since = DateTime::parse_from_rfc3339("2026-11-25T10:00:02Z").unwrap().with_timezone(&Utc);
        let o = LogOptions { since: Some(since), timestamps: true, ..Default::default() };
        let s = String::from_utf8(read_log(&files, &o).unwrap()).unwrap();
        assert!(s.starts_with("2026-11-25T10:00:02.000000000Z two\n"), "{s}");
        let prev = log_files(d.path(), "c1", true);
        assert_eq!(String::from_utf8(read_log(&prev, &LogOptions::default()).unwrap()).unwrap(), "old\n");
    }
}
