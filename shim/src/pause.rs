//! Pause mode: the shim itself is PID 1 of the pod's new pid namespace. It joins the pod's
//! pinned namespaces and cgroup, reaps every orphan of the namespace, and exits on
//! SIGTERM/SIGKILL/SIGINT (the kernel then kills the namespace).

use proto::v1::Exit;

use crate::container::cgroup::Cgroup;
use crate::container::namespaces::{self, Ns};
use crate::container::spec::Plan;
use crate::daemon::{Fail, Shim};
use crate::error::Result;
use crate::{exit, info};

/// In the intermediate child, before the final fork: join the namespaces with a path
/// (network, ipc, uts) and the pod cgroup (created when missing, left to corrald to remove),
/// then a new pid namespace for the next child.
pub fn prepare(plan: &Plan) -> Result<()> {
    let joined: Vec<_> = plan
        .namespaces
        .iter()
        .filter(|n| matches!(n.ns, Ns::Net | Ns::Ipc | Ns::Uts))
        .cloned()
        .collect();
    namespaces::open_joins(&joined)?.enter()?;
    if let Some(path) = &plan.cgroups_path {
        Cgroup::create(path)?.join(0)?;
    }
    namespaces::unshare(libc::CLONE_NEWPID)
}

/// Kill in pause mode: TERM, KILL and INT end the pod's PID 1; others are ignored.
pub fn kill(shim: &Shim, sig: i32) -> std::result::Result<(), Fail> {
    if matches!(sig, libc::SIGTERM | libc::SIGKILL | libc::SIGINT) {
        info!("pause killed with {sig}");
        let started_at = shim.state().started_at;
        shim.record_exit_and_quit(Exit {
            exit_code: 128 + sig,
            signal: sig,
            finished_at: exit::now_nanos(),
            oom_killed: false,
            start_error: String::new(),
            started_at,
        });
    }
    Ok(())
}
