//! Pause mode: the shim itself is PID 1 of the pod's new pid namespace. It joins the pod's
//! pinned namespaces and cgroup, reaps every orphan of the namespace, and exits on
//! SIGTERM/SIGKILL/SIGINT (the kernel then kills the namespace).

use std::path::Path;

use proto::v1::Exit;

use crate::container::cgroup::Cgroup;
use crate::container::namespaces::{self, Ns};
use crate::container::process;
use crate::container::spec::Plan;
use crate::daemon::{Fail, Shim};
use crate::error::{Context, Result};
use crate::{exit, info, sys};

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

/// Makes the pod's PID 1 worthless to the pod's containers, which can reach it through /proc
/// (`/proc/1/root`, `/proc/1/cwd`, ptrace with CAP_SYS_PTRACE): a mount namespace of its own
/// whose root is an empty read-only tmpfs, every capability dropped, no_new_privs. It keeps only
/// what it has open (its listening socket, its log) and needs nothing else: reaping, signals and
/// answering requests take no privilege. Runs in the daemon before it starts a thread (an
/// unshare of the mount namespace needs an unshared fs_struct).
pub fn confine(bundle: &Path) -> Result<()> {
    namespaces::unshare(libc::CLONE_NEWNS)?;
    sys::mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)
        .ctx(|| "making the pause's mounts private".into())?;
    // The bundle is only a mount point here: the tmpfs hides it in this namespace only.
    let root = bundle;
    sys::mount(Some(Path::new("tmpfs")), root, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, Some("size=4k,mode=0555"))
        .ctx(|| "mounting the pause's empty root".into())?;
    std::env::set_current_dir(root).ctx(|| "entering the pause's root".into())?;
    sys::pivot_root(Path::new("."), Path::new(".")).ctx(|| "pivot_root into the pause's root".into())?;
    sys::umount_detach(Path::new(".")).ctx(|| "detaching the host's root from the pause".into())?;
    std::env::set_current_dir("/").ctx(|| "chdir /".into())?;
    sys::mount(None, Path::new("/"), None, libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None)
        .ctx(|| "making the pause's root read-only".into())?;
    for cap in 0..=process::last_cap() {
        sys::capbset_drop(cap).ctx(|| format!("dropping capability {cap} from the bounding set"))?;
    }
    sys::ambient_clear().ctx(|| "clearing ambient capabilities".into())?;
    sys::set_no_new_privs().ctx(|| "setting no_new_privs".into())?;
    sys::capset(0, 0, 0).ctx(|| "dropping every capability".into())
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
