//! Turning containerd's gRPC statuses into [`RuntimeError`]s a user (or the
//! reconciler's backoff) can act on.

use containerd_client::tonic::{Code, Status};

use crate::actual::RuntimeError;

/// containerd's gRPC errors, by what the caller should do about them.
pub(crate) fn from_status(op: &str, id: &str, s: &Status) -> RuntimeError {
    let msg = s.message();
    match s.code() {
        Code::NotFound => RuntimeError::NotFound(format!("{op} {id}: {msg}")),
        Code::Unavailable => RuntimeError::Unavailable(format!("{op} {id}: containerd unreachable: {msg}")),
        _ => RuntimeError::Unavailable(format!("{op} {id}: {msg}")),
    }
}

/// The part of a runc failure a user can act on.
///
/// containerd wraps runc's error in layers of context:
/// `failed to create shim task: OCI runtime create failed: runc create
/// failed: unable to start container process: exec: "nope": executable file
/// not found in $PATH: unknown`. Everything up to the last known wrapper and
/// the trailing gRPC code are noise to someone fixing their manifest.
pub fn trim_runc_message(msg: &str) -> String {
    const WRAPPERS: &[&str] = &[
        "failed to create shim task: ",
        "failed to create shim: ",
        "OCI runtime create failed: ",
        "OCI runtime start failed: ",
        "runc create failed: ",
        "unable to start container process: ",
        "container_linux.go:",
    ];
    let mut m = msg.trim();
    loop {
        let before = m;
        for w in WRAPPERS {
            if let Some(i) = m.find(w) {
                m = &m[i + w.len()..];
            }
        }
        if m == before {
            break;
        }
    }
    let m = m.strip_suffix(": unknown").unwrap_or(m);
    let m = m.strip_suffix(": not found").unwrap_or(m);
    m.trim().to_string()
}

/// A `CreateContainerError` from a failed Tasks.Create/Start, with hints for
/// the failures people actually hit.
pub(crate) fn create_error(id: &str, s: &Status) -> RuntimeError {
    if matches!(s.code(), Code::Unavailable) {
        return from_status("create task", id, s);
    }
    let trimmed = trim_runc_message(s.message());
    let hint = if trimmed.contains("unable to set memory limit") || trimmed.contains("memory.limit_in_bytes") {
        " (the memory limit is below what the container uses at start; raise spec.resources.limits.memory)"
    } else if trimmed.contains("executable file not found") || trimmed.contains("no such file or directory") && trimmed.starts_with("exec") {
        " (check spec.command / spec.args and the image's PATH)"
    } else if trimmed.contains("error setting rlimit") {
        " (an rlimit above the host's hard limit)"
    } else {
        ""
    };
    RuntimeError::Create(format!("{trimmed}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_runc_wrappers() {
        let cases = [
            (
                "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown",
                "exec: \"nope\": executable file not found in $PATH",
            ),
            (
                "OCI runtime create failed: runc create failed: unable to start container process: error during container init: error setting rlimit type 7: operation not permitted: unknown",
                "error during container init: error setting rlimit type 7: operation not permitted",
            ),
            ("plain message", "plain message"),
        ];
        for (input, want) in cases {
            assert_eq!(trim_runc_message(input), want);
        }
    }

    #[test]
    fn missing_command_gets_a_hint() {
        let s = Status::unknown("failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown");
        let e = create_error("c1", &s);
        assert!(matches!(&e, RuntimeError::Create(m) if m.contains("\"nope\"") && m.contains("spec.command")), "{e}");
    }
}
