//! Pod namespaces: created in a short-lived thread of their own and pinned by bind-mounting
//! the thread's nsfs files under `<state>/pods/<id>/ns/`, so they outlive every process.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::sys;

/// Which namespaces a pod gets of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

pub fn ns_path(dir: &Path, kind: &str) -> PathBuf {
    dir.join(kind)
}

/// Creates the wanted namespaces, sets the hostname, brings loopback up and applies sysctls
/// inside them, and pins them in `dir`. On failure whatever was pinned is unpinned.
pub fn create(dir: &Path, wanted: Wanted, hostname: &str, sysctls: &BTreeMap<String, String>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let dir_owned = dir.to_path_buf();
    let hostname = hostname.to_string();
    let sysctls = sysctls.clone();
    let result = std::thread::Builder::new()
        .name("corral-ns".into())
        .spawn(move || create_in_thread(&dir_owned, wanted, &hostname, &sysctls))?
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?;
    if result.is_err() {
        let _ = remove(dir);
    }
    result
}

/// Runs on a thread that exits afterwards: the unshared namespaces die with it unless pinned.
fn create_in_thread(dir: &Path, wanted: Wanted, hostname: &str, sysctls: &BTreeMap<String, String>) -> io::Result<()> {
    let mut flags = 0;
    if wanted.net {
        flags |= libc::CLONE_NEWNET;
    }
    if wanted.ipc {
        flags |= libc::CLONE_NEWIPC;
    }
    if wanted.uts {
        flags |= libc::CLONE_NEWUTS;
    }
    if flags == 0 {
        return Ok(());
    }
    sys::unshare(flags).map_err(|e| io::Error::new(e.kind(), format!("unshare: {e}")))?;
    if wanted.uts && !hostname.is_empty() {
        sys::sethostname(hostname).map_err(|e| io::Error::new(e.kind(), format!("sethostname {hostname:?}: {e}")))?;
    }
    if wanted.net {
        sys::loopback_up().map_err(|e| io::Error::new(e.kind(), format!("bringing loopback up: {e}")))?;
    }
    for (key, value) in sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}")))?;
    }
    for (kind, on) in [("net", wanted.net), ("ipc", wanted.ipc), ("uts", wanted.uts)] {
        if on {
            let target = ns_path(dir, kind);
            std::fs::File::create(&target)?;
            let source = format!("/proc/thread-self/ns/{kind}");
            sys::mount(&source, &target, "", libc::MS_BIND, "").map_err(|e| {
                io::Error::new(e.kind(), format!("pinning {kind} namespace at {}: {e}", target.display()))
            })?;
        }
    }
    Ok(())
}

/// Pins the namespace at `source` (e.g. /proc/<pid>/ns/pid) at `target`.
pub fn pin(source: &Path, target: &Path) -> io::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::File::create(target)?;
    sys::mount(&source.display().to_string(), target, "", libc::MS_BIND, "")
}

/// Unpins every namespace in `dir` and removes the directory. Idempotent.
pub fn remove(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        sys::unmount(&path)?;
        std::fs::remove_file(&path)?;
    }
    std::fs::remove_dir(dir).or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
}

/// Which namespace a sysctl belongs to, or None when it is not namespaced.
pub fn sysctl_namespace(key: &str) -> Option<&'static str> {
    const IPC: [&str; 6] =
        ["kernel.shmmax", "kernel.shmall", "kernel.shmmni", "kernel.shm_rmid_forced", "kernel.msgmax", "kernel.msgmnb"];
    if key.starts_with("net.") {
        Some("net")
    } else if IPC.contains(&key) || key == "kernel.msgmni" || key == "kernel.sem" || key.starts_with("fs.mqueue.") {
        Some("ipc")
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some("uts")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sysctls() {
        assert_eq!(sysctl_namespace("net.ipv4.ip_unprivileged_port_start"), Some("net"));
        assert_eq!(sysctl_namespace("kernel.shm_rmid_forced"), Some("ipc"));
        assert_eq!(sysctl_namespace("fs.mqueue.msg_max"), Some("ipc"));
        assert_eq!(sysctl_namespace("kernel.domainname"), Some("uts"));
        assert_eq!(sysctl_namespace("kernel.panic"), None);
        assert_eq!(sysctl_namespace("vm.swappiness"), None);
    }
}
