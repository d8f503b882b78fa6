//! The per-attachment lock: ADD holds it for its whole run, DEL from the start until its
//! teardown has finished (in the detached worker, see `crate::teardown`), so an ADD of the
//! same attachment waits for a teardown still running.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::FlockArg;

use crate::errors::io;
use crate::rules::Owner;
use crate::spec::{code, CniError};

/// Where the per-attachment lock files live (tmpfs: a teardown does not survive a reboot).
pub const LOCK_DIR: &str = "/run/corral-cni/locks";

/// The flock of one attachment, held by ADD and by DEL until its teardown has finished.
/// The lock belongs to the open file description: closing one of several descriptors of it
/// (as DEL does once the worker has its own) does not unlock.
pub struct AttachmentLock {
    file: File,
    path: PathBuf,
}

// `Flock` unlocks on drop, which would also unlock the worker's inherited descriptor.
#[allow(deprecated)]
fn flock_exclusive(f: &File) -> nix::Result<()> {
    nix::fcntl::flock(f.as_raw_fd(), FlockArg::LockExclusive)
}

impl AttachmentLock {
    pub fn path_of(owner: &Owner) -> PathBuf {
        Path::new(LOCK_DIR).join(format!("{}.lock", owner.hash()))
    }

    /// Blocks until the attachment is free. The holder unlinks the file before unlocking,
    /// so a lock on a file no longer at the path is retried.
    pub fn acquire(owner: &Owner) -> Result<AttachmentLock, CniError> {
        fs::create_dir_all(LOCK_DIR).map_err(io(LOCK_DIR))?;
        let path = Self::path_of(owner);
        loop {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(io(path.display()))?;
            flock_exclusive(&f).map_err(|e| CniError::new(code::IO, format!("lock {}: {e}", path.display())))?;
            let held = f.metadata().map_err(io(path.display()))?;
            match fs::metadata(&path) {
                Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => return Ok(AttachmentLock { file: f, path }),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(path.display())(e)),
            }
        }
    }

    /// Removes the file, then unlocks (by closing it).
    pub fn release(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }

    /// Closes this process's descriptor without unlocking: for once the worker holds the
    /// lock through its own descriptor.
    pub fn hand_over(self) {
        drop(self.file);
    }

    /// A second descriptor of the same open file description (the lock goes with it).
    pub(crate) fn share(&self) -> Result<File, CniError> {
        self.file.try_clone().map_err(io(self.path.display()))
    }
}
