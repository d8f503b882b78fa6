//! The root directory lock: one corrald per `--root`.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// another corrald holds the lock
    #[error("another corrald is already running with root {root} (lock {path} is held{holder})")]
    Held { root: String, path: String, holder: String },
    /// opening lock file {path}: {source}
    #[error("opening lock file {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Held for the life of the process; the kernel releases it when the process exits.
pub struct RootLock {
    _file: File,
}

impl RootLock {
    pub fn acquire(root: &Path) -> Result<RootLock, LockError> {
        let path = root.join("corrald.lock");
        let io_err = |source| LockError::Io { path: path.display().to_string(), source };
        let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io_err)?;
        if !try_flock(&file).map_err(io_err)? {
            let holder = std::fs::read_to_string(&path).map(|s| format!(" by pid {}", s.trim())).unwrap_or_default();
            return Err(LockError::Held { root: root.display().to_string(), path: path.display().to_string(), holder });
        }
        file.set_len(0).map_err(io_err)?;
        write!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(RootLock { _file: file })
    }
}

/// `Ok(false)` when another process holds the lock.
#[allow(unsafe_code)]
fn try_flock(file: &File) -> io::Result<bool> {
    // SAFETY: the fd is valid for the life of `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}
