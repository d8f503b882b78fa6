//! The container role: a shim that creates one container process and holds it until Start,
//! then signals, reaps and records it; its cgroup is its own (created and removed here).

use std::fs::File;
use std::io::{BufReader, PipeReader, PipeWriter, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::v1::{ErrorKind, Exit, Status};

use crate::container::cgroup::{self, Cgroup};
use crate::container::spec::{Plan, ProcessPlan};
use crate::container::{self, process, recv, ChildMsg};
use crate::daemon::Shim;
use crate::error::{errno_display, Context, Error, Fail, Result};
use crate::logger::{Logger, Stream};
use crate::oom::{self, OomTracker};
use crate::role::{ExecTarget, Role};
use crate::state::Lifecycle;
use crate::{exit, info, sys, warn};

pub struct Workload {
    bundle: PathBuf,
    /// Host pid of the container process.
    pid: i32,
    pidfd: Option<OwnedFd>,
    process: Option<ProcessPlan>,
    cgroup: Option<Cgroup>,
    logger: Arc<Logger>,
    last_cap: u32,
    oom: Mutex<OomTracker>,
    /// With the systemd driver on v2, the oom_kill count followed while the container runs (the
    /// emptied scope's cgroup may be gone when the exit is handled).
    oom_seen: Option<Arc<AtomicU64>>,
    /// The start pipe and the sync pipe, until Start.
    start: Mutex<Option<(PipeWriter, BufReader<PipeReader>)>>,
    stdin: Mutex<Stdin>,
}

/// The container's stdin, as attach and CloseStdin see it.
enum Stdin {
    /// Created without one: its stdin is /dev/null.
    None,
    /// The stdin pipe's writer, kept open (so the container's stdin stays open) until CloseStdin.
    Pipe(Option<PipeWriter>),
    /// The pty master (tty): input for attach, and the terminal CloseStdin hangs up.
    Tty { master: File, closed: bool },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates the container up to just before exec: its cgroup and limits, its log, its process.
pub fn create(bundle: &Path, id: &str, mut plan: Plan) -> Result<Shim> {
    let last = process::last_cap();
    if let Some(p) = plan.process.as_mut() {
        let dropped = p.caps.clamp(process::own_bounding(last));
        if dropped != 0 {
            warn!("capabilities not available to the shim, dropped: {}", process::cap_names(dropped).join(","));
        }
    }
    let cgroup = match &plan.cgroups_path {
        Some(path) => Some(Cgroup::for_bundle(path, cgroup::version(plan.cgroup_version), plan.resources.as_ref())?),
        None => None,
    };
    let cleanup = |e: Error| {
        if let Some(cg) = &cgroup {
            cg.remove();
        }
        e
    };
    // (A systemd scope is started by the container's first child, which applies them then.)
    if let (Some(cg), Some(res)) = (cgroup.as_ref().filter(|c| c.scope().is_none()), &plan.resources) {
        for w in cg.apply(res).map_err(cleanup)? {
            warn!("{w}");
        }
    }
    let logger = match &plan.log_path {
        Some(p) => Logger::new(Some(p.clone())).ctx(|| format!("opening log file {}", p.display())).map_err(cleanup)?,
        None => Logger::new(None).ctx(|| "logger".into())?,
    };
    let oom_before = cgroup.as_ref().and_then(|c| c.oom_kills());
    let created = container::create(&plan, cgroup.as_ref()).map_err(cleanup)?;
    let oom_seen = match &cgroup {
        Some(cg @ Cgroup::V2 { path, .. }) if cg.scope().is_some() => oom::watch(&path.join("memory.events"))
            .inspect_err(|e| warn!("following memory.events of {}: {e}", path.display()))
            .ok(),
        _ => None,
    };
    for w in &created.warnings {
        warn!("{w}");
    }
    let logger = Arc::new(logger);
    let stdio = created.stdio;
    let stdin = match (stdio.pty_input, stdio.stdin) {
        (Some(master), _) => Stdin::Tty { master, closed: false },
        (None, Some(w)) => Stdin::Pipe(Some(w)),
        (None, None) => Stdin::None,
    };
    if let Some(out) = stdio.stdout {
        logger.spawn_copier(Stream::Stdout, out);
    }
    if let Some(err) = stdio.stderr {
        logger.spawn_copier(Stream::Stderr, err);
    }
    if let Some(pty) = stdio.pty {
        logger.spawn_copier(Stream::Stdout, pty);
    }
    let role = Workload {
        bundle: bundle.to_path_buf(),
        pid: created.pid,
        pidfd: sys::pidfd_open(created.pid).ok(),
        process: plan.process.take(),
        cgroup,
        logger: logger.clone(),
        last_cap: last,
        oom: Mutex::new(OomTracker::new(oom_before)),
        oom_seen,
        start: Mutex::new(Some((created.start, created.sync))),
        stdin: Mutex::new(stdin),
    };
    Ok(Shim::new(id, created.pid, logger, Box::new(role)))
}

impl Workload {
    fn signal(&self, life: &Lifecycle, sig: i32) {
        if let Some(fd) = &self.pidfd {
            let _ = sys::pidfd_send_signal(fd, sig);
        } else if life.status() != Status::Stopped {
            let _ = sys::kill(self.pid, sig);
        }
    }
}

impl Role for Workload {
    fn name(&self) -> &'static str {
        "container"
    }

    fn running_from_creation(&self) -> bool {
        false
    }

    /// Writes the start byte and waits for the outcome: the exec, or the error the container
    /// process reports (it then exits, and the exit carries the error).
    fn start(&self, life: &Lifecycle) -> Result<(), Fail> {
        let mut slot = lock(&self.start);
        life.begin_start()?;
        let Some((mut w, mut r)) = slot.take() else {
            life.finish_start(None);
            return Err(Fail::new(ErrorKind::FailedPrecondition, "container is already started"));
        };
        let mut err = None;
        if w.write_all(&[1]).is_err() {
            err = Some("container process is gone".to_string());
        }
        drop(w);
        if err.is_none() {
            while let Some(m) = recv(&mut r) {
                match m {
                    ChildMsg::Error(e) => {
                        err = Some(e);
                        break;
                    }
                    ChildMsg::Warn(w) => warn!("{w}"),
                    _ => {}
                }
            }
        }
        drop(r);
        match err {
            None => {
                info!("started");
                life.finish_start(None);
                Ok(())
            }
            Some(e) => {
                warn!("start failed: {e}");
                life.finish_start(Some(e.clone()));
                // The child exits right after reporting; answer once the exit is recorded.
                if life.wait_exit(Some(Duration::from_secs(5))).is_none() {
                    self.signal(life, libc::SIGKILL);
                    life.wait_exit(Some(Duration::from_secs(5)));
                }
                Err(Fail::new(ErrorKind::Internal, e))
            }
        }
    }

    fn kill(&self, life: &Lifecycle, sig: i32, all: bool) -> Result<(), Fail> {
        info!("kill {sig}{}", if all { " all" } else { "" });
        if all {
            if let Some(cg) = &self.cgroup {
                for pid in cg.pids() {
                    let _ = sys::kill(pid, sig);
                }
            }
        }
        self.signal(life, sig);
        Ok(())
    }

    /// Accepts a Shutdown once the container has exited.
    fn shutdown(&self, life: &Lifecycle) -> Result<(), Fail> {
        if life.request_exit_if(|status| status == Status::Stopped) {
            Ok(())
        } else {
            Err(Fail::new(ErrorKind::FailedPrecondition, "container is still running: kill it first"))
        }
    }

    /// Records the container process's exit (after its last output is logged) in the exit
    /// file, then in the lifecycle.
    fn child_exited(&self, life: &Lifecycle, pid: i32, status: i32) {
        if pid != self.pid {
            return;
        }
        let (code, signal) = sys::decode_status(status);
        let finished_at = exit::now_nanos();
        // The OOM counter first: with the systemd driver the emptied scope, and its cgroup with
        // the counter, go away within milliseconds.
        let counter = match (self.cgroup.as_ref().and_then(|c| c.oom_kills()), &self.oom_seen) {
            (Some(now), Some(seen)) => Some(now.max(seen.load(Ordering::SeqCst))),
            (now, seen) => now.or(seen.as_ref().map(|s| s.load(Ordering::SeqCst))),
        };
        // Let the copiers write the last output first.
        self.logger.wait_drained(Duration::from_secs(2));
        let (start_error, started_at) = life.settled_start();
        let exit = match start_error {
            Some(msg) => {
                Exit { exit_code: 128, signal: 0, finished_at, oom_killed: false, start_error: msg, started_at: 0 }
            }
            None => {
                let oom_killed = lock(&self.oom).container_oom(counter, signal);
                Exit { exit_code: code, signal, finished_at, oom_killed, start_error: String::new(), started_at }
            }
        };
        info!("container exited: code {} signal {} oom {}", exit.exit_code, exit.signal, exit.oom_killed);
        if let Err(e) = exit::write_record(&self.bundle, &exit) {
            warn!("writing the exit record: {e}");
        }
        life.set_exit(exit, false);
    }

    /// Kills what is left in the cgroup, removes the cgroup and the socket.
    fn teardown(&self) {
        if let Some(cg) = &self.cgroup {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let pids = cg.pids();
                if pids.is_empty() || Instant::now() > deadline {
                    break;
                }
                for p in pids {
                    let _ = sys::kill(p, libc::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            for e in cg.remove() {
                warn!("{e}");
            }
        }
        let _ = std::fs::remove_file(self.bundle.join(proto::SOCKET_NAME));
    }

    fn exec_target(&self) -> Option<ExecTarget<'_>> {
        Some(ExecTarget {
            process: self.process.as_ref()?,
            cgroup: self.cgroup.as_ref(),
            oom: &self.oom,
            last_cap: self.last_cap,
        })
    }

    fn attach_stdin(&self) -> Result<Option<OwnedFd>, Fail> {
        let dup = match &*lock(&self.stdin) {
            Stdin::Pipe(Some(w)) => w.try_clone().map(OwnedFd::from),
            Stdin::Tty { master, closed: false } => master.try_clone().map(OwnedFd::from),
            _ => return Ok(None),
        };
        dup.map(Some).map_err(|e| {
            Fail::new(ErrorKind::Internal, format!("duplicating the container's stdin: {}", errno_display(&e)))
        })
    }

    /// Closes the stdin pipe's writer: the container reads EOF once the attaches' descriptors
    /// are closed too. With a tty there is no stdin of its own to close (closing the master would
    /// end the output): the terminal is hung up instead, as a terminal's hangup does it, with
    /// SIGHUP to its foreground process group.
    fn close_stdin(&self) {
        let mut stdin = lock(&self.stdin);
        match &mut *stdin {
            Stdin::None | Stdin::Pipe(None) | Stdin::Tty { closed: true, .. } => {}
            Stdin::Pipe(w) => {
                *w = None;
                info!("stdin closed");
            }
            Stdin::Tty { master, closed } => {
                *closed = true;
                match sys::foreground_pgrp(master.as_raw_fd()) {
                    Ok(pgrp) if pgrp > 0 => {
                        let _ = sys::kill(-pgrp, libc::SIGHUP);
                        info!("stdin closed: terminal hung up (SIGHUP to process group {pgrp})");
                    }
                    _ => info!("stdin closed: the terminal has no foreground process group"),
                }
            }
        }
    }
}
