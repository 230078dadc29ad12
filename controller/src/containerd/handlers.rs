//! Runtime handlers (`runtimes` in the configuration; a Container picks
//! one with `spec.runtimeClassName`): which OCI runtime binary the runc
//! shim runs for a container.
//!
//! A handler without arguments or environment is its binary, resolved to
//! an absolute path. One with them is carried out by a wrapper script whose
//! file name is the SHA-256 of its content, under `DATA/runtimes/`: written
//! once (atomically) and never changed, so a container's runtime options
//! (`containerd.runc.v1.Options.binary_name`) keep pointing at exactly the
//! script it was created with, whatever later reloads do. A wrapper is
//! removed only when no containerd container refers to it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The handlers in force (one value, swapped whole on reload).
#[derive(Clone, Debug, PartialEq)]
pub struct Handlers {
    pub default: String,
    pub handlers: BTreeMap<String, steward_config::Handler>,
    /// Where wrapper scripts live (`DATA/runtimes`).
    pub dir: PathBuf,
}

impl Handlers {
    /// The handlers whose runtime binary cannot be found now (a reload
    /// names them in its reply; a create with one fails saying so).
    pub fn missing_runtimes(&self) -> Vec<String> {
        self.handlers.iter().filter(|(_, h)| find_binary(&h.runtime).is_none()).map(|(n, h)| format!("{n} ({})", h.runtime)).collect()
    }

    pub fn new(runtimes: &steward_config::Runtimes, dir: PathBuf) -> Self {
        Handlers { default: runtimes.default.clone(), handlers: runtimes.handlers.clone(), dir }
    }

    /// `sha256:<hex>` of a handler's definition: what tells a container
    /// made from an older definition apart.
    pub fn definition_digest(&self, name: &str) -> Option<String> {
        self.handlers.get(name).map(definition_digest)
    }
}

fn definition_digest(h: &steward_config::Handler) -> String {
    let json = serde_json::to_vec(h).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&json)))
}

/// A handler made ready for a new container.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub name: String,
    /// What the shim runs as runc: the runtime binary, or the wrapper.
    pub binary: PathBuf,
    /// The handler definition's digest (see [`Handlers::definition_digest`]).
    pub definition: String,
    /// `sha256:<hex>` of the wrapper script, if the handler needs one.
    pub wrapper: Option<String>,
}

/// `requested` (or the default handler) resolved: its binary found, its
/// wrapper written if it needs one. Errors say what to fix.
pub fn resolve(h: &Handlers, requested: Option<&str>) -> Result<Resolved, String> {
    let name = requested.unwrap_or(&h.default);
    let def = h.handlers.get(name).ok_or_else(|| {
        format!(
            "runtime handler {name:?} is not configured (runtimes.handlers: {})",
            h.handlers.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let runtime = find_binary(&def.runtime).ok_or_else(|| {
        format!(
            "runtime handler {name:?}: its runtime {:?} is not {} (install it, e.g. `apt-get install {}`)",
            def.runtime,
            if def.runtime.starts_with('/') { "an executable file" } else { "on PATH" },
            Path::new(&def.runtime).file_name().and_then(|f| f.to_str()).unwrap_or("runc")
        )
    })?;
    let definition = definition_digest(def);
    if def.args.is_empty() && def.env.is_empty() {
        return Ok(Resolved { name: name.to_string(), binary: runtime, definition, wrapper: None });
    }
    let script = wrapper_script(name, &runtime, def);
    let binary = write_wrapper(&h.dir, &script).map_err(|e| format!("runtime handler {name:?}: writing its wrapper in {}: {e}", h.dir.display()))?;
    let wrapper = binary.file_name().and_then(|f| f.to_str()).map(|f| format!("sha256:{f}"));
    Ok(Resolved { name: name.to_string(), binary, definition, wrapper })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// An absolute path as is (if executable), a name looked up on PATH.
fn find_binary(runtime: &str) -> Option<PathBuf> {
    if runtime.starts_with('/') {
        return is_executable(Path::new(runtime)).then(|| PathBuf::from(runtime));
    }
    // steward's PATH, then the usual system directories (a service's PATH
    // may lack /usr/sbin, where Debian puts runc); never a relative entry.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(runtime))
        .find(|p| is_executable(p))
}

/// `'...'` for sh: nothing inside single quotes is special but `'`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn wrapper_script(name: &str, runtime: &Path, h: &steward_config::Handler) -> String {
    let mut line = String::from("exec");
    if !h.env.is_empty() {
        line.push_str(" /usr/bin/env --");
        for (k, v) in &h.env {
            line.push(' ');
            line.push_str(&quote(&format!("{k}={v}")));
        }
    }
    line.push(' ');
    line.push_str(&quote(&runtime.to_string_lossy()));
    for a in &h.args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    line.push_str(" \"$@\"\n");
    let name = name.replace(['\n', '\r'], " ");
    format!("#!/bin/sh\n# steward runtime handler {name}: written once, named by its content's SHA-256, never changed.\n{line}")
}

/// A wrapper younger than this is never collected: a create may be about
/// to name it (its mtime is refreshed whenever a create reuses it).
pub const WRAPPER_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Writes `script` as `dir/<sha256 hex>` unless it is there; its path.
fn write_wrapper(dir: &Path, script: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let digest = hex::encode(Sha256::digest(script.as_bytes()));
    let path = dir.join(&digest);
    if std::fs::read(&path).is_ok_and(|b| b == script.as_bytes()) {
        // Reused by a new container: fresh again for the collector.
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    // A temp name of its own: two creates may write the same wrapper at
    // once (the content is the same; the last rename wins, harmlessly).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{digest}.{}.{n}.tmp", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o700).open(&tmp)?;
        f.write_all(script.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// The wrapper files in `dir` (by full path).
pub fn wrappers(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.len() == 64 && n.chars().all(|c| c.is_ascii_hexdigit())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handlers(dir: &Path) -> Handlers {
        let mut h = steward_config::Runtimes::default();
        h.handlers.insert(
            "runc-debug".into(),
            steward_config::Handler {
                runtime: "runc".into(),
                args: vec!["--debug".into()],
                env: BTreeMap::from([("RUNC_X".into(), "a b".into())]),
            },
        );
        h.handlers.insert("missing".into(), steward_config::Handler { runtime: "no-such-runtime".into(), ..Default::default() });
        Handlers::new(&h, dir.to_path_buf())
    }

    #[test]
    fn plain_handlers_are_their_binary_and_others_a_content_named_wrapper() {
        let d = tempfile::tempdir().unwrap();
        let h = handlers(&d.path().join("runtimes"));
        let runc = resolve(&h, None).unwrap();
        assert_eq!(runc.name, "runc");
        assert!(runc.binary.is_absolute() && runc.binary.ends_with("runc"), "{:?}", runc.binary);
        let dbg = resolve(&h, Some("runc-debug")).unwrap();
        let script = std::fs::read_to_string(&dbg.binary).unwrap();
        assert_eq!(dbg.binary.file_name().unwrap().to_str().unwrap(), hex::encode(Sha256::digest(script.as_bytes())));
        assert!(script.contains("exec /usr/bin/env -- 'RUNC_X=a b' '") && script.ends_with("' '--debug' \"$@\"\n"), "{script}");
        let q = wrapper_script("x", Path::new("/bin/r"), &steward_config::Handler { runtime: "r".into(), args: vec!["it's".into()], ..Default::default() });
        assert!(q.ends_with("exec '/bin/r' 'it'\\''s' \"$@\"\n"), "{q}");
        // The same definition: the same file, untouched.
        let again = resolve(&h, Some("runc-debug")).unwrap();
        assert_eq!(again, dbg);
        // Run it: the wrapper passes its arguments on.
        let out = std::process::Command::new(&dbg.binary).arg("--version").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(wrappers(&h.dir), vec![dbg.binary.clone()]);
        assert_ne!(h.definition_digest("runc"), h.definition_digest("runc-debug"));
    }

    #[test]
    fn unknown_handlers_and_missing_runtimes_say_what_to_fix() {
        let d = tempfile::tempdir().unwrap();
        let h = handlers(d.path());
        let e = resolve(&h, Some("kata")).unwrap_err();
        assert!(e.contains("\"kata\" is not configured") && e.contains("crun, missing, runc, runc-debug"), "{e}");
        let e = resolve(&h, Some("missing")).unwrap_err();
        assert!(e.contains("not on PATH") && e.contains("apt-get install no-such-runtime"), "{e}");
    }
}
