//! The shim daemon's state and the operations the server dispatches to: what both kinds of
//! shim share (identity, lifecycle, the CRI log); what differs is the role's (role.rs).

use std::sync::Arc;
use std::time::Duration;

use proto::v1::{ErrorKind, Exit, State, Status};

use crate::error::Fail;
use crate::logger::Logger;
use crate::reaped::Registry;
use crate::role::Role;
use crate::state::Lifecycle;
use crate::{info, sys};

pub struct Shim {
    pub id: String,
    /// Host pid of the container process (pause: of the shim itself).
    pub pid: i32,
    pub logger: Arc<Logger>,
    pub life: Lifecycle,
    pub role: Box<dyn Role>,
    /// Where the reaper sends exec'd commands' statuses.
    pub execs: Arc<Registry>,
}

impl Shim {
    pub fn new(id: &str, pid: i32, logger: Arc<Logger>, role: Box<dyn Role>) -> Shim {
        Shim {
            id: id.to_string(),
            pid,
            logger,
            life: Lifecycle::new(role.running_from_creation()),
            role,
            execs: Arc::default(),
        }
    }

    pub fn state(&self) -> State {
        let (status, created_at, started_at, exit) = self.life.snapshot();
        State { id: self.id.clone(), pid: self.pid as u32, status: status as i32, created_at, started_at, exit }
    }

    pub fn is_running(&self) -> bool {
        self.life.status() == Status::Running
    }

    /// Lets the created process exec; an exec failure stops the container with 128.
    pub fn start(&self) -> Result<(), Fail> {
        self.role.start(&self.life)
    }

    pub fn kill(&self, sig: i32, all: bool) -> Result<(), Fail> {
        if !(1..=64).contains(&sig) {
            return Err(Fail::new(ErrorKind::InvalidArgument, format!("invalid signal {sig}")));
        }
        self.role.kill(&self.life, sig, all)
    }

    /// Waits for the exit; None on timeout.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<Exit> {
        self.life.wait_exit(timeout)
    }

    /// A new descriptor of the container's stdin for an attach (see [`Role::attach_stdin`]).
    pub fn attach_stdin(&self) -> Result<Option<std::os::fd::OwnedFd>, Fail> {
        self.role.attach_stdin()
    }

    /// Closes the container's stdin; with a tty, hangs its terminal up.
    pub fn close_stdin(&self) {
        self.role.close_stdin()
    }

    pub fn reopen_log(&self) -> Result<(), Fail> {
        self.logger.reopen().map_err(|e| Fail::new(ErrorKind::Internal, format!("reopening the container log: {e}")))
    }

    pub fn shutdown(&self) -> Result<(), Fail> {
        self.role.shutdown(&self.life)
    }

    pub fn exit_requested(&self) -> bool {
        self.life.exit_requested()
    }

    /// Called by the reaper for every reaped child: an exec's first child or command (their
    /// exec takes the status), else the role's.
    pub fn child_exited(&self, pid: i32, status: i32) {
        if !self.execs.reaped(pid, status) {
            self.role.child_exited(&self.life, pid, status)
        }
    }

    /// Final cleanup (the role's) and exit.
    pub fn teardown_and_exit(&self) -> ! {
        // Let answers to concurrent waiters go out first.
        std::thread::sleep(Duration::from_millis(20));
        self.role.teardown();
        info!("shim exiting");
        sys::exit_now(0)
    }
}
