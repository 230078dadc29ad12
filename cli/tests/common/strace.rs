//! Reading `strace -f -yy -xx -o FILE` output: one [`Call`] per system
//! call, with `<unfinished ...>` joined to its `<... resumed>` line, the
//! fd's annotation (a path, or `TCP:[a->b]`), and the bytes it carried
//! (every quoted string on its entry line, decoded from `-xx` hex).

use std::collections::HashMap;

/// One traced system call. `entry` and `exit` are line indexes in the
/// trace: strace writes lines in the order things happen, so they order
/// calls across threads.
#[derive(Debug, Clone)]
pub struct Call {
    pub name: String,
    /// The first argument's annotation: a path, or `TCP:[a->b]`.
    pub fd: String,
    /// The bytes of every string argument, in order.
    pub data: Vec<u8>,
    /// Numeric arguments after the last string (`len, offset` of pwrite64;
    /// `length` of ftruncate).
    pub tail_args: Vec<u64>,
    pub entry: usize,
    pub exit: usize,
    /// What it returned (`0`, `24`, `-1 EIO (...)`).
    pub result: String,
}

impl Call {
    pub fn data_contains(&self, needle: &str) -> bool {
        let n = needle.as_bytes();
        !n.is_empty() && self.data.windows(n.len()).any(|w| w == n)
    }

    pub fn ok(&self) -> bool {
        self.result.parse::<i64>().map(|r| r >= 0).unwrap_or(false)
    }
}

/// `) = 0`, or `)          = 0` after `<... resumed>` (strace aligns it).
fn result_of(line: &str) -> String {
    line.rsplit_once(')')
        .and_then(|(_, r)| r.trim_start().strip_prefix('='))
        .map(|r| r.trim().to_string())
        .unwrap_or_default()
}

/// Decodes every `"..."` in `s` (strace escapes: `\xHH`, `\n`, `\"`, `\\`,
/// octal), and returns them with the text after the last one.
fn strings(s: &str) -> (Vec<u8>, &str) {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut after = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' && i + 1 < b.len() {
                let c = b[i + 1];
                match c {
                    b'x' if i + 3 < b.len() => {
                        let hex = std::str::from_utf8(&b[i + 2..i + 4]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                        out.push(hex.unwrap_or(0));
                        i += 4;
                        continue;
                    }
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'v' => out.push(0x0b),
                    b'f' => out.push(0x0c),
                    b'0'..=b'7' => {
                        let mut v: u32 = 0;
                        let mut j = i + 1;
                        while j < b.len() && j < i + 4 && (b'0'..=b'7').contains(&b[j]) {
                            v = v * 8 + u32::from(b[j] - b'0');
                            j += 1;
                        }
                        out.push(v as u8);
                        i = j;
                        continue;
                    }
                    other => out.push(other),
                }
                i += 2;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        i += 1;
        after = i;
    }
    (out, &s[after.min(s.len())..])
}

/// Parses a whole trace.
pub fn parse(trace: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: HashMap<&str, Call> = HashMap::new();
    for (i, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else { continue };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let name = resumed.split(' ').next().unwrap_or_default();
            if let Some(mut call) = pending.remove(pid) {
                if call.name == name {
                    call.exit = i;
                    call.result = result_of(rest);
                    calls.push(call);
                }
            }
            continue;
        }
        let Some(open) = rest.find('(') else { continue };
        let name = &rest[..open];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `--- SIGCHLD ...`, `+++ exited ...`
        }
        let args = &rest[open + 1..];
        let first_end = [", ", ") = ", ")", " <unfinished"].iter().filter_map(|sep| args.find(sep)).min().unwrap_or(args.len());
        let first = &args[..first_end];
        let fd = match (first.find('<'), first.rfind('>')) {
            // `-xx` prints paths in hex as well.
            (Some(a), Some(b)) if b > a => String::from_utf8_lossy(&strings(&format!("\"{}\"", &first[a + 1..b])).0).into_owned(),
            _ => String::new(),
        };
        let unfinished = rest.ends_with("<unfinished ...>");
        let body = if unfinished { rest.trim_end_matches("<unfinished ...>") } else { rest.rsplit_once(')').map(|(a, _)| a).unwrap_or(rest) };
        let body_args = body.get(open + 1..).unwrap_or_default();
        let (data, after) = if body_args.contains('"') {
            strings(body_args)
        } else {
            (Vec::new(), body_args.split_once(',').map(|(_, r)| r).unwrap_or_default())
        };
        let tail_args = after.split(',').filter_map(|a| a.trim().trim_end_matches(')').trim().parse::<u64>().ok()).collect();
        let call = Call { name: name.to_string(), fd, data, tail_args, entry: i, exit: i, result: result_of(rest) };
        if unfinished {
            pending.insert(pid, call);
        } else {
            calls.push(call);
        }
    }
    calls
}

/// The successful fsync/fdatasync calls on `path`.
pub fn syncs<'a>(calls: &'a [Call], path: &'a str) -> impl Iterator<Item = &'a Call> + 'a {
    calls.iter().filter(move |c| matches!(c.name.as_str(), "fdatasync" | "fsync") && c.fd == path && c.result == "0")
}

/// The first HTTP 2xx response (entry line) whose bytes hold `token`.
pub fn first_response(calls: &[Call], token: &str) -> Option<usize> {
    calls
        .iter()
        .filter(|c| {
            matches!(c.name.as_str(), "write" | "writev" | "sendto" | "sendmsg")
                && c.fd.starts_with("TCP")
                && c.data_contains("HTTP/1.1 20")
                && c.data_contains(token)
        })
        .map(|c| c.entry)
        .min()
}
