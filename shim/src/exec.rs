//! Exec: runs a command in the running container (its namespaces, cgroup, user, caps, env)
//! and collects its output. A first child joins the cgroup and namespaces (mnt last) and
//! forks the command so it is inside the pid namespace; it reports the command's pid and
//! wait status on a status pipe. Output is read until the command ends plus a short drain,
//! so a background child holding the pipes cannot hang the answer.
//!
//! The daemon is multi-threaded, so after the fork the children make only async-signal-safe
//! calls: everything (files, pipes, the identity, argv, envp, the PATH candidates) is prepared
//! before, and a failure goes up the status pipe as a fixed-size record (a step code and an
//! errno) that the daemon words.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use proto::v1::{ErrorKind, ExecRequest, ExecResult};

use crate::container::process::{Command, Failure, Identity, Step};
use crate::container::spec::{merge_env, ProcessPlan};
use crate::daemon::Shim;
use crate::error::{errno_display, Fail};
use crate::sys;
use crate::syscall::{Linux, Syscall};

/// Output kept per stream; the rest is read and dropped (as CRI-O and dockershim cap it). Both
/// streams together stay under the 16 MiB of a shim frame and of a CRI message.
pub const MAX_OUTPUT: usize = (8 << 20) - (64 << 10);
/// How long output is still read after the command exited.
const DRAIN: Duration = Duration::from_millis(100);

fn internal(msg: impl Into<String>) -> Fail {
    Fail::new(ErrorKind::Internal, msg)
}

/// The namespaces entered, in order: mnt last, cgroup after the cgroup join.
const NAMESPACES: [(&str, i32); 6] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

/// A status pipe record: [kind, a, b, c] as native-endian u32s, written in one write (less than
/// PIPE_BUF, so never split or interleaved).
type Record = [u32; 4];
const RECORD: usize = 16;
/// a: the command's pid.
const PID: u32 = 1;
/// a: the command's wait status.
const EXIT: u32 = 2;
/// a: a SETUP_* step, b: its argument, c: errno.
const SETUP: u32 = 3;
/// a, b: a process::Step code and argument, c: errno.
const PROCESS: u32 = 4;

const SETUP_CGROUP: u32 = 1;
/// b: the index in NAMESPACES.
const SETUP_SETNS: u32 = 2;
const SETUP_FORK: u32 = 3;
const SETUP_DUP2: u32 = 4;

/// The message of a failure record, worded as before the records existed.
fn failure_message(rec: Record, p: &ProcessPlan) -> String {
    let err = io::Error::from_raw_os_error(rec[3] as i32);
    let msg = match (rec[0], rec[1]) {
        (SETUP, SETUP_CGROUP) => format!("joining the container cgroup: {}", errno_display(&err)),
        (SETUP, SETUP_SETNS) => {
            let name = NAMESPACES.get(rec[2] as usize).map_or("?", |(n, _)| n);
            format!("joining the container {name} namespace: {}", errno_display(&err))
        }
        (SETUP, SETUP_FORK) => format!("fork: {err}"),
        (SETUP, SETUP_DUP2) => format!("dup2: {err}"),
        (PROCESS, code) => match Step::from_code(code, rec[2]) {
            Some(step) => Failure { step, errno: rec[3] as i32 }.message(p),
            None => format!("exec: unknown failure {code}: {}", errno_display(&err)),
        },
        (kind, step) => format!("exec: unknown failure {kind}/{step}: {}", errno_display(&err)),
    };
    msg.replace('\n', " ")
}

pub fn run(shim: &Shim, req: &ExecRequest) -> Result<ExecResult, Fail> {
    if req.args.is_empty() {
        return Err(Fail::new(ErrorKind::InvalidArgument, "exec needs a command"));
    }
    if !shim.is_running() {
        return Err(Fail::new(ErrorKind::FailedPrecondition, "container is not running"));
    }
    let Some(target) = shim.role.exec_target() else {
        return Err(Fail::new(ErrorKind::FailedPrecondition, "no process spec"));
    };
    let base = target.process;
    let mut p = base.clone();
    p.args = req.args.clone();
    p.env = merge_env(&base.env, &req.env);
    if !req.cwd.is_empty() {
        p.cwd = req.cwd.clone().into();
    }
    // Everything the children need is opened before forking.
    let mut ns = Vec::new();
    for (i, (name, flag)) in NAMESPACES.into_iter().enumerate() {
        let path = format!("/proc/{}/ns/{name}", shim.pid);
        match File::open(&path) {
            Ok(f) => ns.push((f, flag, i as u32)),
            Err(e) if name == "cgroup" && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(format!("opening {path}: {}", errno_display(&e)))),
        }
    }
    let mut procs = Vec::new();
    if let Some(cg) = target.cgroup {
        for f in cg.procs_files() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .map_err(|e| internal(format!("opening {}: {}", f.display(), errno_display(&e))))?;
            procs.push(file);
        }
    }
    let devnull = File::open("/dev/null").map_err(|e| internal(format!("opening /dev/null: {e}")))?;
    let pipe = || io::pipe().map_err(|e| internal(format!("pipe: {e}")));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (st_r, st_w) = pipe()?;
    let identity = Identity::new(&p, target.last_cap);
    let command = Command::new(&p.args, &p.env);
    let oom_before = target.cgroup.and_then(|c| c.oom_kills());

    let child = sys::fork().map_err(|e| internal(format!("fork: {e}")))?;
    if let sys::Fork::Child = child {
        // Only async-signal-safe calls from here on: the daemon has other threads.
        drop((out_r, err_r, st_r));
        let stdio: [RawFd; 3] = [devnull.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        child_main(&ns, &procs, stdio, st_w.as_raw_fd(), &identity, &command);
    }
    drop((out_w, err_w, st_w, devnull, ns, procs));

    let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms));
    let outcome = collect(out_r.into(), err_r.into(), st_r.into(), timeout);
    let oom_after = target.cgroup.and_then(|c| c.oom_kills());
    if let Some(status) = outcome.status {
        let (_, sig) = sys::decode_status(status);
        target.oom.lock().unwrap_or_else(|p| p.into_inner()).exec_finished(oom_before, oom_after, sig);
    }
    if outcome.timed_out {
        return Err(Fail::new(
            ErrorKind::DeadlineExceeded,
            format!("command {:?} timed out after {} ms", req.args, req.timeout_ms),
        ));
    }
    if let Some(e) = outcome.error.or_else(|| outcome.failure.map(|rec| failure_message(rec, &p))) {
        return Err(internal(e));
    }
    let Some(status) = outcome.status else {
        return Err(internal("exec: the command's exit status was lost"));
    };
    Ok(ExecResult {
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        exit_code: sys::decode_status(status).0,
        truncated: outcome.truncated,
    })
}

/// Writes one record to the status pipe. Async-signal-safe.
fn report(fd: RawFd, rec: Record) {
    let mut bytes = [0u8; RECORD];
    for (chunk, v) in bytes.chunks_exact_mut(4).zip(rec) {
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    let _ = sys::write_all_raw(fd, &bytes);
}

fn errno(e: &io::Error) -> u32 {
    e.raw_os_error().unwrap_or(libc::EIO) as u32
}

fn fail_setup(status: RawFd, step: u32, arg: u32, e: &io::Error) -> ! {
    report(status, [SETUP, step, arg, errno(e)]);
    sys::exit_now(1)
}

fn report_failure(status: RawFd, f: Failure) {
    let (code, arg) = f.step.code();
    report(status, [PROCESS, code, arg, f.errno as u32]);
}

/// The first child: cgroup, namespaces, fork the command, relay its pid and status. Runs in a
/// child of the multi-threaded daemon: async-signal-safe calls only (no allocation, no lock),
/// on what `run` prepared.
fn child_main(
    ns: &[(File, i32, u32)],
    procs: &[File],
    stdio: [RawFd; 3],
    status: RawFd,
    identity: &Identity,
    command: &Command,
) -> ! {
    let os: &dyn Syscall = &Linux;
    for f in procs {
        if let Err(e) = sys::write_all_raw(f.as_raw_fd(), b"0") {
            fail_setup(status, SETUP_CGROUP, 0, &e);
        }
    }
    for (f, flag, index) in ns {
        if let Err(e) = os.setns(f.as_raw_fd(), *flag) {
            fail_setup(status, SETUP_SETNS, *index, &e);
        }
    }
    match sys::fork() {
        Err(e) => fail_setup(status, SETUP_FORK, 0, &e),
        Ok(sys::Fork::Child) => {
            let _ = sys::setsid();
            for (i, fd) in stdio.iter().enumerate() {
                if let Err(e) = sys::dup2(*fd, i as RawFd) {
                    fail_setup(status, SETUP_DUP2, 0, &e);
                }
            }
            if let Err(f) = identity.apply(os) {
                report_failure(status, f);
                sys::exit_now(1);
            }
            report_failure(status, command.exec());
            sys::exit_now(127)
        }
        Ok(sys::Fork::Parent(pid)) => {
            report(status, [PID, pid as u32, 0, 0]);
            let code = match sys::waitpid(pid, false) {
                Ok(Some((_, st))) => st,
                _ => 255 << 8,
            };
            report(status, [EXIT, code as u32, 0, 0]);
            sys::exit_now(0)
        }
    }
}

#[derive(Default)]
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<i32>,
    /// A failure record of the children.
    failure: Option<Record>,
    error: Option<String>,
    timed_out: bool,
    /// Output beyond MAX_OUTPUT was dropped.
    truncated: bool,
}

/// Reads output and status until the command ended plus the drain, or the timeout.
fn collect(out: OwnedFd, err: OwnedFd, st: OwnedFd, timeout: Option<Duration>) -> Outcome {
    let mut o = Outcome::default();
    let mut files: [Option<File>; 3] = [Some(out.into()), Some(err.into()), Some(st.into())];
    let mut records: Vec<u8> = Vec::new();
    let mut pid: Option<i32> = None;
    let start = Instant::now();
    let mut deadline = timeout.map(|t| start + t);
    let mut drain_until: Option<Instant> = None;
    let mut kill_wait_until: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        if files.iter().all(Option::is_none) || drain_until.is_some_and(|d| now >= d) {
            break;
        }
        if kill_wait_until.is_some_and(|d| now >= d) {
            break;
        }
        if let Some(d) = deadline {
            if now >= d {
                o.timed_out = true;
                deadline = None;
                if let Some(p) = pid {
                    let _ = sys::kill(-p, libc::SIGKILL);
                    let _ = sys::kill(p, libc::SIGKILL);
                }
                kill_wait_until = Some(now + Duration::from_secs(5));
                // Output no longer matters: wait for the status only.
                files[0] = None;
                files[1] = None;
                continue;
            }
        }
        let next = [deadline, drain_until, kill_wait_until].into_iter().flatten().min();
        let wait_ms = next.map_or(-1, |d| d.saturating_duration_since(now).as_millis().min(i32::MAX as u128) as i32);
        let open: Vec<usize> = (0..3).filter(|&i| files[i].is_some()).collect();
        let fds: Vec<RawFd> = open.iter().filter_map(|&i| files[i].as_ref().map(|f| f.as_raw_fd())).collect();
        let revents = match sys::poll(&fds, wait_ms) {
            Ok(r) => r,
            Err(e) => {
                o.error = Some(format!("poll: {e}"));
                break;
            }
        };
        for (k, &i) in open.iter().enumerate() {
            if revents[k] == 0 {
                continue;
            }
            let n = match files[i].as_mut().map(|f| f.read(&mut buf)) {
                Some(Ok(n)) => n,
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => 0,
            };
            if n == 0 {
                files[i] = None;
                if i == 2 && drain_until.is_none() {
                    drain_until = Some(Instant::now() + DRAIN);
                }
                continue;
            }
            match i {
                0 | 1 => {
                    let dst = if i == 0 { &mut o.stdout } else { &mut o.stderr };
                    let room = MAX_OUTPUT.saturating_sub(dst.len());
                    dst.extend_from_slice(&buf[..n.min(room)]);
                    o.truncated |= n > room;
                }
                _ => {
                    records.extend_from_slice(&buf[..n]);
                    while records.len() >= RECORD {
                        let mut rec: Record = [0; 4];
                        for (v, chunk) in rec.iter_mut().zip(records.chunks_exact(4)) {
                            *v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                        }
                        records.drain(..RECORD);
                        match rec[0] {
                            PID => pid = Some(rec[1] as i32),
                            EXIT => o.status = Some(rec[1] as i32),
                            _ => o.failure = Some(rec),
                        }
                    }
                }
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn status_records_carry_pid_exit_and_failures() {
        let (out_r, mut out_w) = io::pipe().unwrap();
        let (err_r, err_w) = io::pipe().unwrap();
        let (st_r, st_w) = io::pipe().unwrap();
        out_w.write_all(b"hello").unwrap();
        report(st_w.as_raw_fd(), [PID, 4242, 0, 0]);
        let (code, arg) = Step::NotFound.code();
        report(st_w.as_raw_fd(), [PROCESS, code, arg, libc::ENOENT as u32]);
        report(st_w.as_raw_fd(), [EXIT, 127 << 8, 0, 0]);
        drop((out_w, err_w, st_w));
        let o = collect(out_r.into(), err_r.into(), st_r.into(), None);
        assert_eq!(o.stdout, b"hello");
        assert_eq!(o.status, Some(127 << 8));
        let p = ProcessPlan { args: vec!["nosuch".into()], ..ProcessPlan::default() };
        assert_eq!(failure_message(o.failure.unwrap(), &p), r#"exec: "nosuch": executable file not found in $PATH"#);
        let net = NAMESPACES.iter().position(|(n, _)| *n == "net").unwrap() as u32;
        assert_eq!(
            failure_message([SETUP, SETUP_SETNS, net, libc::EPERM as u32], &p),
            "joining the container net namespace: EPERM"
        );
        assert_eq!(
            failure_message([SETUP, SETUP_CGROUP, 0, libc::ENOSPC as u32], &p),
            "joining the container cgroup: ENOSPC"
        );
        let (code, arg) = Step::SetUid.code();
        assert_eq!(failure_message([PROCESS, code, arg, libc::EPERM as u32], &p), "setuid(0): EPERM");
    }
}
