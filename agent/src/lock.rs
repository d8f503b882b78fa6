//! The root directory lock: one corrald per `--root`.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// How long a new corrald waits for the lock: right after a `kill -9` the old instance holds it
/// until the kernel has finished tearing the process down.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

impl RootLock {
    /// Takes the lock, waiting up to `wait` while another process holds it (and saying so in
    /// the log); fails only when it is still held then.
    pub fn acquire(root: &Path, wait: Duration) -> Result<RootLock, LockError> {
        let path = root.join("corrald.lock");
        let io_err = |source| LockError::Io { path: path.display().to_string(), source };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        let deadline = Instant::now() + wait;
        let mut said = false;
        while !try_flock(&file).map_err(io_err)? {
            let holder = std::fs::read_to_string(&path).map(|s| format!(" by pid {}", s.trim())).unwrap_or_default();
            if Instant::now() >= deadline {
                return Err(LockError::Held {
                    root: root.display().to_string(),
                    path: path.display().to_string(),
                    holder,
                });
            }
            if !said {
                tracing::warn!(lock = %path.display(), "the root lock is held{holder}; waiting up to {wait:?} for it (a corrald that was just killed still holds it while it exits)");
                said = true;
            }
            std::thread::sleep(Duration::from_millis(50));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Another holder of the lock: flock locks belong to an open file description, so a second
    /// open in this process contends like another process would.
    fn hold(root: &Path) -> File {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(root.join("corrald.lock"))
            .unwrap();
        assert!(try_flock(&f).unwrap());
        f
    }

    #[test]
    fn waits_for_a_lock_that_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let held = hold(dir.path());
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let start = Instant::now();
        let lock = RootLock::acquire(dir.path(), Duration::from_secs(10));
        assert!(lock.is_ok(), "{:?}", lock.err());
        assert!(start.elapsed() >= Duration::from_millis(250));
        releaser.join().unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("corrald.lock")).unwrap(), std::process::id().to_string());
    }

    #[test]
    fn a_lock_held_past_the_wait_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let _held = hold(dir.path());
        match RootLock::acquire(dir.path(), Duration::from_millis(200)) {
            Err(LockError::Held { .. }) => {}
            other => panic!("expected Held, got {:?}", other.err()),
        }
    }
}
