//! Linux namespaces: which to create, which to join, and the calls that do it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::error::{Context, Result};
use crate::sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ns {
    Mount,
    Pid,
    Net,
    Ipc,
    Uts,
    Cgroup,
}

impl Ns {
    pub fn flag(self) -> i32 {
        match self {
            Ns::Mount => libc::CLONE_NEWNS,
            Ns::Pid => libc::CLONE_NEWPID,
            Ns::Net => libc::CLONE_NEWNET,
            Ns::Ipc => libc::CLONE_NEWIPC,
            Ns::Uts => libc::CLONE_NEWUTS,
            Ns::Cgroup => libc::CLONE_NEWCGROUP,
        }
    }

    /// The name under /proc/<pid>/ns/.
    pub fn proc_name(self) -> &'static str {
        match self {
            Ns::Mount => "mnt",
            Ns::Pid => "pid",
            Ns::Net => "net",
            Ns::Ipc => "ipc",
            Ns::Uts => "uts",
            Ns::Cgroup => "cgroup",
        }
    }
}

/// One namespace of the container: joined when it has a path, else new.
#[derive(Clone, Debug)]
pub struct NsPlan {
    pub ns: Ns,
    pub path: Option<PathBuf>,
}

/// The namespaces to join, opened up front (so a bad path fails before anything else).
pub struct Joins(Vec<(Ns, File, PathBuf)>);

pub fn open_joins(plans: &[NsPlan]) -> Result<Joins> {
    let mut out = Vec::new();
    for p in plans {
        if let Some(path) = &p.path {
            let f = File::open(path)
                .ctx(|| format!("opening {} namespace {}", p.ns.proc_name(), path.display()))?;
            out.push((p.ns, f, path.clone()));
        }
    }
    // The mount namespace last: after it, paths resolve in the other namespace.
    out.sort_by_key(|(ns, _, _)| *ns == Ns::Mount);
    Ok(Joins(out))
}

impl Joins {
    /// setns() into each; for pid it applies to the children forked afterwards.
    pub fn enter(&self) -> Result<()> {
        for (ns, f, path) in &self.0 {
            sys::setns(f.as_raw_fd(), ns.flag())
                .ctx(|| format!("joining {} namespace {}", ns.proc_name(), path.display()))?;
        }
        Ok(())
    }
}

/// The clone flags of the namespaces to create.
pub fn new_flags(plans: &[NsPlan]) -> i32 {
    plans
        .iter()
        .filter(|p| p.path.is_none())
        .fold(0, |acc, p| acc | p.ns.flag())
}

pub fn unshare(flags: i32) -> Result<()> {
    if flags == 0 {
        return Ok(());
    }
    sys::unshare(flags).ctx(|| format!("unshare({flags:#x})"))
}

pub fn has_new(plans: &[NsPlan], ns: Ns) -> bool {
    plans.iter().any(|p| p.ns == ns && p.path.is_none())
}
