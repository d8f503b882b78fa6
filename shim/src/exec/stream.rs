//! ExecStream: a command whose stdio goes to corrald, on the request's connection. With a tty
//! the command gets a new pty of the container's devpts as its controlling terminal and stdio;
//! otherwise a pipe for each of stdin, stdout and stderr asked for, /dev/null for the others.
//!
//! Once the command exec'd, the first answer is Fds (its host pid) carrying corrald's ends: the
//! pty master, or the stdin writer, stdout reader and stderr reader asked for, in that order;
//! the shim closes its copies. The second is Exit, once the command exited; the connection then
//! closes. A command that fails to start is answered with the error ExecSync gives instead.
//! corrald closing the connection first kills the command's process group (and the command),
//! which is still reaped before the session ends.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use proto::v1::{response, ExecStreamRequest, Exit, Fds};

use super::{failure_message, internal, pipe, prepare, spawn, Prepared, Progress, Spawned};
use crate::conn::{self, answer};
use crate::daemon::Shim;
use crate::error::{errno_display, Fail};
use crate::{exit, sys, warn};

/// Serves one ExecStream session on `conn` until the command exited or corrald went away.
pub fn serve(shim: &Shim, req: &ExecStreamRequest, mut conn: UnixStream) {
    let mut session = match start(shim, req) {
        Ok(s) => s,
        Err(f) => {
            let _ = proto::write_frame(&mut conn, &answer(Err(f)));
            return;
        }
    };
    let fds = response::Kind::Fds(Fds { count: session.theirs.len() as u32, pid: session.pid as u32 });
    let raw: Vec<RawFd> = session.theirs.iter().map(AsRawFd::as_raw_fd).collect();
    let mut connected = conn::send_with_fds(&conn, &answer(Ok(fds)), &raw).is_ok();
    session.theirs.clear();
    if !connected {
        session.kill();
    }
    let mut buf = [0u8; 256];
    while session.progress.status.is_none() {
        let fds: &[RawFd] =
            if connected { &[session.status.as_raw_fd(), conn.as_raw_fd()] } else { &[session.status.as_raw_fd()] };
        let revents = match sys::poll(fds, -1) {
            Ok(r) => r,
            Err(e) => {
                // Cannot happen with two valid descriptors; the command is not left behind.
                warn!("exec session: poll: {e}");
                session.kill();
                connected = false;
                vec![libc::POLLIN]
            }
        };
        if revents.get(1).is_some_and(|r| *r != 0) && conn::closed(&mut conn) {
            session.kill();
            connected = false;
        }
        if revents[0] != 0 {
            match session.status.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => session.progress.feed(&buf[..n], &session.prep.plan),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let outcome = match session.progress.status {
        Some(status) => {
            let oom_killed = session.prep.finished(status, session.oom_before);
            let (exit_code, signal) = sys::decode_status(status);
            Ok(response::Kind::Exit(Exit {
                exit_code,
                signal,
                finished_at: exit::now_nanos(),
                oom_killed,
                start_error: String::new(),
                started_at: session.started_at,
            }))
        }
        None => Err(internal("exec: the command's exit status was lost")),
    };
    if connected {
        let _ = proto::write_frame(&mut conn, &answer(outcome));
    }
}

/// A started command.
struct Session<'a> {
    prep: Prepared<'a>,
    pid: i32,
    /// corrald's ends, until they are sent.
    theirs: Vec<OwnedFd>,
    status: File,
    progress: Progress,
    /// Unix nanoseconds when the command was known to run.
    started_at: i64,
    /// The memory cgroup's oom_kill counter before.
    oom_before: Option<u64>,
}

impl Session<'_> {
    /// Kills the command's process group and the command (it leads its own session).
    fn kill(&self) {
        let _ = sys::kill(-self.pid, libc::SIGKILL);
        let _ = sys::kill(self.pid, libc::SIGKILL);
    }
}

/// Prepares, forks and waits until the command exec'd (or failed to).
fn start<'a>(shim: &'a Shim, req: &ExecStreamRequest) -> Result<Session<'a>, Fail> {
    let prep = prepare(shim, &req.args, &req.env, &req.cwd)?;
    let Stdio { ours, raw, theirs } = stdio(shim.pid, req)?;
    let oom_before = prep.oom_kills();
    let Spawned { mut status, started, tracked } = spawn(&prep, raw, req.tty)?;
    drop(ours);
    let mut progress = Progress::new(Some(tracked));
    wait_started(&mut status, started, &mut progress, &prep)
        .map_err(|e| internal(format!("exec: reading the command's status: {e}")))?;
    if let Some(rec) = progress.failure {
        return Err(internal(failure_message(rec, &prep.plan)));
    }
    let Some(pid) = progress.pid else {
        return Err(internal("exec: the command's pid was never reported"));
    };
    Ok(Session { prep, pid, theirs, status, progress, started_at: exit::now_nanos(), oom_before })
}

/// The command's stdio.
struct Stdio {
    /// What the shim holds for the command until the fork.
    ours: Vec<OwnedFd>,
    /// The command's fds 0, 1, 2.
    raw: [RawFd; 3],
    /// corrald's ends, in the order of the answer.
    theirs: Vec<OwnedFd>,
}

fn stdio(container_pid: i32, req: &ExecStreamRequest) -> Result<Stdio, Fail> {
    if req.tty {
        let (master, slave) = pty(container_pid)?;
        let fd = slave.as_raw_fd();
        return Ok(Stdio { ours: vec![slave], raw: [fd; 3], theirs: vec![master] });
    }
    let devnull: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| internal(format!("opening /dev/null: {e}")))?
        .into();
    let mut raw = [devnull.as_raw_fd(); 3];
    let (mut ours, mut theirs) = (vec![devnull], Vec::new());
    if req.stdin {
        let (r, w) = pipe()?;
        raw[0] = r.as_raw_fd();
        ours.push(r.into());
        theirs.push(w.into());
    }
    for (i, wanted) in [(1, req.stdout), (2, req.stderr)] {
        if wanted {
            let (r, w) = pipe()?;
            raw[i] = w.as_raw_fd();
            ours.push(w.into());
            theirs.push(r.into());
        }
    }
    Ok(Stdio { ours, raw, theirs })
}

/// A pty of the container's own devpts, so that inside it the terminal is its /dev/pts/N;
/// the shim's devpts when the container has none usable.
fn pty(container_pid: i32) -> Result<(OwnedFd, OwnedFd), Fail> {
    let root = format!("/proc/{container_pid}/root");
    match sys::openpty_in(Path::new(&root)) {
        Ok(p) => Ok(p),
        Err(e) => {
            warn!("exec: no pty in the container's /dev/ptmx ({}), using one of the shim's", errno_display(&e));
            sys::openpty().map_err(|e| internal(format!("creating a pty: {}", errno_display(&e))))
        }
    }
}

/// Reads status records until the command exec'd or failed: the started pipe's EOF, after
/// which a failure of the command is already in the status pipe, and the pid (or a failure of
/// the first child).
fn wait_started(status: &mut File, started: File, progress: &mut Progress, prep: &Prepared) -> io::Result<()> {
    let mut started = Some(started);
    let mut buf = [0u8; 256];
    loop {
        if started.is_none() && (progress.pid.is_some() || progress.failure.is_some()) {
            break;
        }
        let mut fds = vec![status.as_raw_fd()];
        fds.extend(started.as_ref().map(AsRawFd::as_raw_fd));
        let revents = sys::poll(&fds, -1)?;
        if revents.get(1).is_some_and(|r| *r != 0) {
            let mut b = [0u8; 1];
            if matches!(started.as_mut().map(|f| f.read(&mut b)), Some(Ok(0) | Err(_))) {
                started = None;
            }
        }
        if revents[0] != 0 {
            match status.read(&mut buf) {
                // Both children are gone: what they had to say was said.
                Ok(0) => return Ok(()),
                Ok(n) => progress.feed(&buf[..n], &prep.plan),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    // A failure record written before the started pipe closed is there now.
    while sys::poll(&[status.as_raw_fd()], 0)?.first().is_some_and(|r| *r != 0) {
        match status.read(&mut buf)? {
            0 => break,
            n => progress.feed(&buf[..n], &prep.plan),
        }
    }
    Ok(())
}
