//! The pause role: the shim itself is PID 1 of the pod's new pid namespace. It joins the pod's
//! pinned namespaces and cgroup, reaps every orphan of the namespace, and exits on
//! SIGTERM/SIGKILL/SIGINT (the kernel then kills the namespace). It writes no exit file (it
//! has no file system left, see [`confine`]): corrald waits for its pid.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use proto::v1::Exit;

use crate::container::cgroup::{self, Cgroup};
use crate::container::namespaces;
use crate::container::process;
use crate::container::spec::{Ns, Plan};
use crate::daemon::Shim;
use crate::error::{Context, Error, Fail, Result};
use crate::logger::Logger;
use crate::role::{ExecTarget, Role};
use crate::state::Lifecycle;
use crate::syscall::{Linux, Syscall};
use crate::{exit, info, sys};

/// In the intermediate child, before the final fork: join the namespaces with a path
/// (network, ipc, uts) and the pod cgroup (created when missing, left to corrald to remove),
/// then a new pid namespace for the next child.
pub fn prepare(os: &dyn Syscall, plan: &Plan) -> Result<()> {
    let joined: Vec<_> =
        plan.namespaces.iter().filter(|n| matches!(n.ns, Ns::Net | Ns::Ipc | Ns::Uts)).cloned().collect();
    namespaces::open_joins(&joined)?.enter(os)?;
    if let Some(path) = &plan.cgroups_path {
        Cgroup::for_bundle(path, cgroup::version(plan.cgroup_version), None)?.join(0)?;
    }
    namespaces::unshare(os, libc::CLONE_NEWPID)
}

/// The pause daemon, in its new pid namespace: records its host pid, then confines itself.
pub fn create(bundle: &Path, id: &str) -> Result<Shim> {
    // /proc is the host's: /proc/self names our host pid (we are 1 in our namespace).
    let me = std::fs::read_link("/proc/self").ctx(|| "reading /proc/self".into())?;
    let pid = me.to_string_lossy().parse().map_err(|_| Error::Msg("cannot tell the host pid".into()))?;
    let logger = Logger::new(None).ctx(|| "logger".into())?;
    let shim = Shim::new(id, pid, Arc::new(logger), Box::new(Pause));
    sys::find_setup_code();
    confine(&Linux, bundle, process::last_cap())?;
    Ok(shim)
}

/// Makes the pod's PID 1 worthless to the pod's containers, which can reach it through /proc
/// (`/proc/1/root`, `/proc/1/cwd`, ptrace with CAP_SYS_PTRACE): a mount namespace of its own
/// whose root is an empty read-only tmpfs, every capability dropped, no_new_privs. It keeps only
/// what it has open (its listening socket, its log) and needs nothing else: reaping, signals and
/// answering requests take no privilege. Runs in the daemon before it starts a thread (an
/// unshare of the mount namespace needs an unshared fs_struct).
pub fn confine(os: &dyn Syscall, bundle: &Path, last_cap: u32) -> Result<()> {
    namespaces::unshare(os, libc::CLONE_NEWNS)?;
    os.mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)
        .ctx(|| "making the pause's mounts private".into())?;
    // The bundle is only a mount point here: the tmpfs hides it in this namespace only.
    let root = bundle;
    os.mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("size=4k,mode=0555"),
    )
    .ctx(|| "mounting the pause's empty root".into())?;
    let croot = sys::cstring(root).ctx(|| "entering the pause's root".into())?;
    os.chdir(&croot).ctx(|| "entering the pause's root".into())?;
    os.pivot_root(Path::new("."), Path::new(".")).ctx(|| "pivot_root into the pause's root".into())?;
    os.umount_detach(Path::new(".")).ctx(|| "detaching the host's root from the pause".into())?;
    os.chdir(c"/").ctx(|| "chdir /".into())?;
    os.mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .ctx(|| "making the pause's root read-only".into())?;
    for cap in 0..=last_cap {
        os.capbset_drop(cap).ctx(|| format!("dropping capability {cap} from the bounding set"))?;
    }
    os.ambient_clear().ctx(|| "clearing ambient capabilities".into())?;
    os.set_no_new_privs().ctx(|| "setting no_new_privs".into())?;
    os.capset(0, 0, 0).ctx(|| "dropping every capability".into())
}

/// The pause's role.
pub struct Pause;

impl Role for Pause {
    fn name(&self) -> &'static str {
        "pause"
    }

    fn running_from_creation(&self) -> bool {
        true
    }

    /// Nothing to start: the pause runs from its creation.
    fn start(&self, _life: &Lifecycle) -> Result<(), Fail> {
        Ok(())
    }

    /// TERM, KILL and INT end the pod's PID 1 (the shim exits after answering); others are
    /// ignored.
    fn kill(&self, life: &Lifecycle, sig: i32, _all: bool) -> Result<(), Fail> {
        if matches!(sig, libc::SIGTERM | libc::SIGKILL | libc::SIGINT) {
            info!("pause killed with {sig}");
            let started_at = life.started_at();
            life.set_exit(
                Exit {
                    exit_code: 128 + sig,
                    signal: sig,
                    finished_at: exit::now_nanos(),
                    oom_killed: false,
                    start_error: String::new(),
                    started_at,
                },
                true,
            );
        }
        Ok(())
    }

    /// Always accepted.
    fn shutdown(&self, life: &Lifecycle) -> Result<(), Fail> {
        life.request_exit_if(|_| true);
        Ok(())
    }

    /// Orphans of the pod: reaped, nothing to record.
    fn child_exited(&self, _life: &Lifecycle, _pid: i32, _status: i32) {}

    /// Nothing: the pod cgroup and the socket are corrald's to remove.
    fn teardown(&self) {}

    fn exec_target(&self) -> Option<ExecTarget<'_>> {
        None
    }

    /// None: the pause has no stdio.
    fn attach_stdin(&self) -> Result<Option<OwnedFd>, Fail> {
        Ok(None)
    }

    fn close_stdin(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::NsPlan;
    use crate::syscall::recorder::Recorder;

    #[test]
    fn prepare_joins_the_pods_namespaces_then_a_new_pid_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let ns = |ns, name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, "").unwrap();
            NsPlan { ns, path: Some(p) }
        };
        let plan = Plan {
            namespaces: vec![
                ns(Ns::Net, "net"),
                NsPlan { ns: Ns::Pid, path: None },
                ns(Ns::Uts, "uts"),
                ns(Ns::Ipc, "ipc"),
                ns(Ns::Mount, "mnt"),
            ],
            ..Plan::default()
        };
        let rec = Recorder::under(dir.path());
        prepare(&rec, &plan).unwrap();
        assert_eq!(
            rec.calls(),
            vec!["setns(T/net, NEWNET)", "setns(T/uts, NEWUTS)", "setns(T/ipc, NEWIPC)", "unshare(NEWPID)",]
        );
    }

    #[test]
    fn confinement_empty_read_only_root_no_capabilities_no_new_privs() {
        let rec = Recorder::default();
        confine(&rec, Path::new("/run/corral/pod"), 2).unwrap();
        assert_eq!(
            rec.calls(),
            vec![
                "unshare(NEWNS)",
                "mount(-, /, -, REC|PRIVATE, -)",
                "mount(tmpfs, /run/corral/pod, tmpfs, NOSUID|NODEV|NOEXEC, size=4k,mode=0555)",
                "chdir(/run/corral/pod)",
                "pivot_root(., .)",
                "umount_detach(.)",
                "chdir(/)",
                "mount(-, /, -, RDONLY|NOSUID|NODEV|NOEXEC|REMOUNT|BIND, -)",
                "capbset_drop(CAP_CHOWN)",
                "capbset_drop(CAP_DAC_OVERRIDE)",
                "capbset_drop(CAP_DAC_READ_SEARCH)",
                "ambient_clear()",
                "set_no_new_privs()",
                "capset(e=0x0, p=0x0, i=0x0)",
            ]
        );
        let rec = Recorder::default();
        rec.fail("pivot_root(", libc::EINVAL);
        let err = confine(&rec, Path::new("/b"), 2).unwrap_err().to_string();
        assert_eq!(err, "pivot_root into the pause's root: EINVAL");
    }

    #[test]
    fn pause_role_runs_from_creation_and_ends_on_term_kill_int() {
        let life = Lifecycle::new(Pause.running_from_creation());
        assert_eq!(life.status(), proto::v1::Status::Running);
        assert!(life.started_at() > 0);
        Pause.kill(&life, libc::SIGHUP, false).unwrap();
        assert!(!life.exit_requested());
        Pause.kill(&life, libc::SIGTERM, false).unwrap();
        assert!(life.exit_requested());
        let exit = life.wait_exit(None).unwrap();
        assert_eq!((exit.exit_code, exit.signal), (128 + libc::SIGTERM, libc::SIGTERM));
        assert!(Pause.exec_target().is_none());
    }
}
