//! What differs between the two kinds of shim: a container's (workload.rs), which runs one
//! container process, and a pod's pause (pause.rs), which is itself PID 1 of the pod. The
//! daemon (daemon.rs) holds one role and hands it the lifecycle both share; the launcher picks
//! the role, and nothing else asks which one it is.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use crate::container::cgroup::Cgroup;
use crate::container::spec::ProcessPlan;
use crate::error::Fail;
use crate::oom::OomTracker;
use crate::state::Lifecycle;

/// What an exec runs beside: the container process's plan, cgroup and OOM accounting.
pub struct ExecTarget<'a> {
    pub process: &'a ProcessPlan,
    pub cgroup: Option<&'a Cgroup>,
    pub oom: &'a Mutex<OomTracker>,
    pub last_cap: u32,
}

pub trait Role: Send + Sync {
    /// "container" or "pause", for the shim log.
    fn name(&self) -> &'static str;
    /// Whether the shim is RUNNING from its creation on.
    fn running_from_creation(&self) -> bool;
    /// Start.
    fn start(&self, life: &Lifecycle) -> Result<(), Fail>;
    /// Kill with a valid signal (1..=64); `all`: every process of the container.
    fn kill(&self, life: &Lifecycle, sig: i32, all: bool) -> Result<(), Fail>;
    /// Accepts a Shutdown (the shim exits after answering), or says why not.
    fn shutdown(&self, life: &Lifecycle) -> Result<(), Fail>;
    /// A child of the shim was reaped (`status` as waitpid gives it).
    fn child_exited(&self, life: &Lifecycle, pid: i32, status: i32);
    /// Cleanup right before the shim exits.
    fn teardown(&self);
    /// What an exec runs beside; None when there is no container process.
    fn exec_target(&self) -> Option<ExecTarget<'_>>;
    /// A new descriptor of the container's stdin for an attach: of its stdin pipe's writer, or
    /// of its pty master; None when it has none or it was closed.
    fn attach_stdin(&self) -> Result<Option<OwnedFd>, Fail>;
    /// Closes the container's stdin (the shim's end); a second call does nothing.
    fn close_stdin(&self);
}
