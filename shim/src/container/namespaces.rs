//! Linux namespaces: the calls that join and create the ones the plan lists.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::spec::{Ns, NsPlan};
use crate::error::{Context, Result};
use crate::syscall::Syscall;

/// The namespaces to join, opened up front (so a bad path fails before anything else).
pub struct Joins(Vec<(Ns, File, PathBuf)>);

pub fn open_joins(plans: &[NsPlan]) -> Result<Joins> {
    let mut out = Vec::new();
    for p in plans {
        if let Some(path) = &p.path {
            let f = File::open(path).ctx(|| format!("opening {} namespace {}", p.ns.proc_name(), path.display()))?;
            out.push((p.ns, f, path.clone()));
        }
    }
    // The mount namespace last: after it, paths resolve in the other namespace.
    out.sort_by_key(|(ns, _, _)| *ns == Ns::Mount);
    Ok(Joins(out))
}

impl Joins {
    /// setns() into each, in the plan's order with mnt last; for pid it applies to the children
    /// forked afterwards.
    pub fn enter(&self, sys: &dyn Syscall) -> Result<()> {
        for (ns, f, path) in &self.0 {
            sys.setns(f.as_raw_fd(), ns.flag())
                .ctx(|| format!("joining {} namespace {}", ns.proc_name(), path.display()))?;
        }
        Ok(())
    }
}

/// The clone flags of the namespaces to create.
pub fn new_flags(plans: &[NsPlan]) -> i32 {
    plans.iter().filter(|p| p.path.is_none()).fold(0, |acc, p| acc | p.ns.flag())
}

/// Creates the namespaces of `flags` in one unshare (nothing when there are none).
pub fn unshare(sys: &dyn Syscall, flags: i32) -> Result<()> {
    if flags == 0 {
        return Ok(());
    }
    sys.unshare(flags).ctx(|| format!("unshare({flags:#x})"))
}

/// The container's namespaces: every join first (so a new namespace is created inside the
/// joined ones: a new mount namespace copies the joined one's mounts), then one unshare of all
/// the new ones.
pub fn enter(sys: &dyn Syscall, joins: &Joins, new: i32) -> Result<()> {
    joins.enter(sys)?;
    unshare(sys, new)
}

pub fn has_new(plans: &[NsPlan], ns: Ns) -> bool {
    plans.iter().any(|p| p.ns == ns && p.path.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recorder::Recorder;

    #[test]
    fn joins_in_plan_order_with_mnt_last_then_one_unshare() {
        let dir = tempfile::tempdir().unwrap();
        // Stand-ins for /proc/<pid>/ns/* files: the recorder only shows what they are.
        let ns_file = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, "").unwrap();
            Some(p)
        };
        let plans = vec![
            NsPlan { ns: Ns::Pid, path: None },
            NsPlan { ns: Ns::Mount, path: ns_file("mnt") },
            NsPlan { ns: Ns::Net, path: ns_file("net") },
            NsPlan { ns: Ns::Uts, path: None },
            NsPlan { ns: Ns::Ipc, path: ns_file("ipc") },
            NsPlan { ns: Ns::Cgroup, path: None },
        ];
        let rec = Recorder::under(dir.path());
        let joins = open_joins(&plans).unwrap();
        enter(&rec, &joins, new_flags(&plans)).unwrap();
        assert_eq!(
            rec.calls(),
            vec![
                "setns(T/net, NEWNET)",
                "setns(T/ipc, NEWIPC)",
                "setns(T/mnt, NEWNS)",
                "unshare(NEWCGROUP|NEWUTS|NEWPID)",
            ]
        );
        assert!(has_new(&plans, Ns::Uts) && !has_new(&plans, Ns::Net));

        // A failed join stops before anything is created, and says which namespace.
        let rec = Recorder::under(dir.path());
        rec.fail("setns(T/ipc", libc::EINVAL);
        let err = enter(&rec, &joins, new_flags(&plans)).unwrap_err().to_string();
        assert_eq!(err, format!("joining ipc namespace {}: EINVAL", dir.path().join("ipc").display()));
        assert_eq!(rec.calls(), vec!["setns(T/net, NEWNET)", "setns(T/ipc, NEWIPC)"]);

        // Nothing to create: no unshare at all.
        let rec = Recorder::default();
        enter(&rec, &open_joins(&[]).unwrap(), 0).unwrap();
        assert!(rec.calls().is_empty());
    }
}
