//! Network namespaces: open and check CNI_NETNS, and run code inside it on a dedicated
//! thread (setns affects only the calling thread, and that thread ends afterwards).

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::fstatfs;

const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path does not exist.
    #[error("netns {0} does not exist")]
    Missing(String),
    /// The path is not a network namespace.
    #[error("{0} is not a network namespace")]
    NotNamespace(String),
    /// Opening or inspecting the path failed.
    #[error("netns {0}: {1}")]
    Io(String, std::io::Error),
    /// setns(2) into the namespace failed.
    #[error("entering netns {0}: {1}")]
    Enter(String, nix::Error),
}

pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    pub fn open(path: &str) -> Result<Netns, Error> {
        let file = File::open(Path::new(path)).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::Missing(path.to_string()),
            _ => Error::Io(path.to_string(), e),
        })?;
        let st = fstatfs(file.as_fd()).map_err(|e| Error::Io(path.to_string(), e.into()))?;
        let magic = st.filesystem_type().0 as i64;
        if magic != NSFS_MAGIC {
            return Err(Error::NotNamespace(path.to_string()));
        }
        let ns = Netns { file, path: path.to_string() };
        // setns checks the namespace type for us (EINVAL for a non-network namespace).
        ns.run(|| ()).map_err(|e| match e {
            Error::Enter(p, nix::Error::EINVAL) => Error::NotNamespace(p),
            e => e,
        })?;
        Ok(ns)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a fresh thread that has entered this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::Enter(self.path.clone(), e))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Io(self.path.clone(), std::io::Error::other("netns thread panicked"))))
        })
    }
}
