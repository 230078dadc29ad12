//! Network namespaces steward owns: each a bind mount of a namespace on a
//! file under steward's run directory, as `ip netns add` makes them under
//! `/run/netns` (but in a directory of steward's own, so finding its
//! leftovers is a directory listing).

use std::io;
use std::path::Path;

/// `statfs` magic of nsfs, the file system of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether `path` is a mounted network namespace (not an empty file left
/// by a reboot or a crash between create and mount).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path; `st` is written by the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// Creates a new network namespace and bind-mounts it on `path` (replacing
/// a stale file there). Runs on a thread of its own, which enters the new
/// namespace and ends: no other thread ever changes namespace.
pub fn create(path: &Path) -> io::Result<()> {
    if is_mounted(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a namespace path"))?;
    let made = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> io::Result<()> {
            // SAFETY: unshare affects only this thread, which exits after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            let src = std::ffi::CString::new(format!("/proc/self/task/{tid}/ns/net"))
                .map_err(|_| io::Error::other("namespace path"))?;
            // SAFETY: both paths are valid C strings; a bind mount takes no data.
            let rc = unsafe {
                libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Unmounts and removes `path` (nothing there: done).
pub fn remove(path: &Path) -> io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a namespace path"))?;
    // Lazy: a process still inside keeps the namespace, not the mount.
    // SAFETY: `c` is a valid path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (a stale file).
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_made_mounted_and_removed() {
        // SAFETY: no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "network namespaces need root (CAP_SYS_ADMIN): run the tests as root"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("ns");
        create(&p).expect("create");
        assert!(is_mounted(&p));
        // Idempotent.
        create(&p).expect("create again");
        remove(&p).expect("remove");
        assert!(!p.exists() && !is_mounted(&p));
        // A stale plain file is neither mounted nor an error to remove.
        std::fs::write(&p, "").expect("write");
        assert!(!is_mounted(&p));
        remove(&p).expect("remove stale");
        assert!(!p.exists());
    }
}
