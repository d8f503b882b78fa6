//! Exec: runs a command in the running container, in its namespaces and cgroup, with its user,
//! groups, capabilities, no_new_privs, environment, oom_score_adj and rlimits. ExecSync
//! (sync.rs) collects the command's output; ExecStream (stream.rs) hands its stdio to corrald
//! for a streaming session. Both prepare ([`prepare`]) and fork ([`spawn`]) the same way.
//!
//! A first child closes every descriptor it was not given (another session's stdin writer, a
//! connection: they belong to other threads of the daemon), sets the container's
//! oom_score_adj (inherited by the command), joins the cgroup and the namespaces (mnt last)
//! and forks the command with CLONE_PARENT, so that it is inside the pid namespace and a child
//! of the shim itself; it reports the command's pid on a status pipe and exits at once: no
//! process stays beside the command. The shim's reaper reaps both and writes the command's wait
//! status to the status pipe (reaped.rs). Should the kernel refuse CLONE_PARENT, the first
//! child forks the command, stays its parent and relays its status itself. The command starts a
//! session, sets the container's rlimits, takes its stdio (with a tty: as its controlling
//! terminal) and identity, and execs. It alone holds the write end of a "started" pipe
//! (close-on-exec), which reaches EOF once it exec'd or died: a failure before the exec is then
//! already in the status pipe.
//!
//! The daemon is multi-threaded, so after the fork the children make only async-signal-safe
//! calls: everything (files, pipes, the identity, argv, envp, the PATH candidates, the
//! descriptors to keep) is prepared before, and a failure or warning goes up the status pipe as
//! a fixed-size record (a step code and an errno) that the daemon words.

pub mod stream;
pub mod sync;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use proto::v1::ErrorKind;

use crate::container::process::{self, Command, Failure, Identity, Step};
use crate::container::spec::{merge_env, ProcessPlan};
use crate::daemon::Shim;
use crate::error::{errno_display, Fail};
use crate::reaped::{Registry, Tracked};
use crate::role::ExecTarget;
use crate::syscall::{Linux, Syscall};
use crate::{sys, warn};

pub use sync::run;

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
/// a: the command's pid; b: 1 when the first child is its parent and relays its status (no
/// CLONE_PARENT), 0 when it is the shim's child.
const PID: u32 = 1;
/// a: the command's wait status.
const EXIT: u32 = 2;
/// a: a SETUP_* step, b: its argument, c: errno.
const SETUP: u32 = 3;
/// a, b: a process::Step code and argument, c: errno.
const PROCESS: u32 = 4;
/// a: a WARN_* code, b: its argument, c: errno. The command goes on.
const WARN: u32 = 5;

const SETUP_CGROUP: u32 = 1;
/// b: the index in NAMESPACES.
const SETUP_SETNS: u32 = 2;
const SETUP_FORK: u32 = 3;
const SETUP_DUP2: u32 = 4;
/// b: the RLIMIT_* resource.
const SETUP_RLIMIT: u32 = 5;
const SETUP_TTY: u32 = 6;
const SETUP_CLOSE: u32 = 7;

/// oom_score_adj could not be set (c: errno).
const WARN_OOM: u32 = 1;
/// b: the RLIMIT_* resource, clamped to the shim's hard limit.
const WARN_RLIMIT: u32 = 2;

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
        (SETUP, SETUP_RLIMIT) => {
            let (soft, hard) = rlimit_of(p, rec[2]);
            format!("{}: {}", process::rlimit_context(rec[2], soft, hard), errno_display(&err))
        }
        (SETUP, SETUP_TTY) => format!("setting the controlling terminal: {}", errno_display(&err)),
        (SETUP, SETUP_CLOSE) => format!("closing the shim's descriptors: {}", errno_display(&err)),
        (PROCESS, code) => match Step::from_code(code, rec[2]) {
            Some(step) => Failure { step, errno: rec[3] as i32 }.message(p),
            None => format!("exec: unknown failure {code}: {}", errno_display(&err)),
        },
        (kind, step) => format!("exec: unknown failure {kind}/{step}: {}", errno_display(&err)),
    };
    msg.replace('\n', " ")
}

/// The message of a warning record.
fn warning_message(rec: Record, p: &ProcessPlan) -> String {
    let err = io::Error::from_raw_os_error(rec[3] as i32);
    match rec[1] {
        WARN_OOM => format!(
            "exec: cannot set oom_score_adj to {} ({}), keeping the shim's",
            p.oom_score_adj.unwrap_or_default(),
            errno_display(&err)
        ),
        WARN_RLIMIT => {
            let (soft, hard) = rlimit_of(p, rec[2]);
            format!("exec: rlimit {} {soft}/{hard} clamped to the shim's hard limit", rec[2])
        }
        code => format!("exec: unknown warning {code}: {}", errno_display(&err)),
    }
}

/// The (soft, hard) limits the plan asks for `res`.
fn rlimit_of(p: &ProcessPlan, res: u32) -> (u64, u64) {
    p.rlimits.iter().find(|r| r.0 == res).map_or((0, 0), |r| (r.1, r.2))
}

/// What the status pipe told so far.
#[derive(Default)]
pub struct Progress {
    /// The command's host pid.
    pub pid: Option<i32>,
    /// Its wait status.
    pub status: Option<i32>,
    /// A failure record of the children.
    pub failure: Option<Record>,
    /// Bytes of a record not complete yet.
    partial: Vec<u8>,
    /// The exec's registration, told the command's pid.
    tracked: Option<Tracked>,
}

impl Progress {
    pub fn new(tracked: Option<Tracked>) -> Progress {
        Progress { tracked, ..Progress::default() }
    }

    /// Takes bytes read from the status pipe; warnings go to the shim log.
    pub fn feed(&mut self, bytes: &[u8], p: &ProcessPlan) {
        self.partial.extend_from_slice(bytes);
        while self.partial.len() >= RECORD {
            let mut rec: Record = [0; 4];
            for (v, chunk) in rec.iter_mut().zip(self.partial.chunks_exact(4)) {
                *v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
            self.partial.drain(..RECORD);
            match rec[0] {
                PID => {
                    self.pid = Some(rec[1] as i32);
                    if let Some(t) = &self.tracked {
                        t.command(rec[1] as i32, rec[2] != 0);
                    }
                }
                EXIT => self.status = Some(rec[1] as i32),
                WARN => warn!("{}", warning_message(rec, p)),
                _ => self.failure = Some(rec),
            }
        }
    }
}

/// An exec prepared before forking: everything the children need, opened and built.
pub struct Prepared<'a> {
    /// The exec'd process: the container's, with the request's args, env and cwd.
    pub plan: ProcessPlan,
    pub target: ExecTarget<'a>,
    /// (namespace file, CLONE_NEW* flag, index in NAMESPACES).
    ns: Vec<(File, i32, u32)>,
    /// The cgroup.procs files to join.
    procs: Vec<File>,
    identity: Identity,
    command: Command,
    /// The container's oom_score_adj as written to /proc/self/oom_score_adj.
    oom_score_adj: Option<Vec<u8>>,
    /// Where the reaper sends the command's status.
    registry: Arc<Registry>,
}

impl Prepared<'_> {
    /// The memory cgroup's oom_kill counter.
    pub fn oom_kills(&self) -> Option<u64> {
        self.target.cgroup.and_then(|c| c.oom_kills())
    }

    /// Records the command's end for the container's OOM accounting (`status` as waitpid gives
    /// it, `before` the counter when it started); returns whether the command was OOM killed.
    pub fn finished(&self, status: i32, before: Option<u64>) -> bool {
        let after = self.oom_kills();
        let (_, sig) = sys::decode_status(status);
        self.target.oom.lock().unwrap_or_else(|p| p.into_inner()).exec_finished(before, after, sig);
        sig == libc::SIGKILL && matches!((before, after), (Some(b), Some(a)) if a > b)
    }
}

/// Checks the request and opens and builds everything the children need: the container's
/// process with `args`, `env` (overriding by key) and `cwd` (when not empty).
pub fn prepare<'a>(shim: &'a Shim, args: &[String], env: &[String], cwd: &str) -> Result<Prepared<'a>, Fail> {
    if args.is_empty() {
        return Err(Fail::new(ErrorKind::InvalidArgument, "exec needs a command"));
    }
    if !shim.is_running() {
        return Err(Fail::new(ErrorKind::FailedPrecondition, "container is not running"));
    }
    let Some(target) = shim.role.exec_target() else {
        return Err(Fail::new(ErrorKind::FailedPrecondition, "no process spec"));
    };
    let base = target.process;
    let mut plan = base.clone();
    plan.args = args.to_vec();
    plan.env = merge_env(&base.env, env);
    if !cwd.is_empty() {
        plan.cwd = cwd.into();
    }
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
    let identity = Identity::new(&plan, target.last_cap);
    let command = Command::new(&plan.args, &plan.env);
    let oom_score_adj = plan.oom_score_adj.map(|adj| adj.to_string().into_bytes());
    let registry = shim.execs.clone();
    Ok(Prepared { plan, target, ns, procs, identity, command, oom_score_adj, registry })
}

/// The read ends of the running children's pipes.
pub struct Spawned {
    /// The status pipe (records); EOF once both children are gone (the command: exec'd) and
    /// the reaper wrote the command's status (or nothing will: the first child failed).
    pub status: File,
    /// EOF once the command exec'd or died.
    pub started: File,
    /// The registration, for the status records' [`Progress`].
    pub tracked: Tracked,
}

fn pipe() -> Result<(io::PipeReader, io::PipeWriter), Fail> {
    io::pipe().map_err(|e| internal(format!("pipe: {e}")))
}

/// A pipe's read end as a File.
fn file(r: io::PipeReader) -> File {
    File::from(OwnedFd::from(r))
}

/// Forks the children: the command gets `stdio` as its fds 0, 1, 2 (with `tty`, a pty slave
/// that becomes its controlling terminal). The caller closes its copies of `stdio` afterwards.
pub fn spawn(prep: &Prepared, stdio: [RawFd; 3], tty: bool) -> Result<Spawned, Fail> {
    let (status_r, status_w) = pipe()?;
    let (started_r, started_w) = pipe()?;
    let mut keep: Vec<RawFd> = prep.ns.iter().map(|(f, _, _)| f.as_raw_fd()).collect();
    keep.extend(prep.procs.iter().map(AsRawFd::as_raw_fd));
    keep.extend(stdio);
    keep.extend([status_w.as_raw_fd(), started_w.as_raw_fd()]);
    keep.sort_unstable();
    keep.dedup();
    let ours = status_w.try_clone().map_err(|e| internal(format!("dup: {e}")))?;
    let child = Child { prep, stdio, tty, status: status_w.as_raw_fd(), started: started_w.as_raw_fd(), keep: &keep };
    // Registered before the fork: the reaper may reap the first child, or the command, before
    // their pids are known here.
    let tracked = prep.registry.register(Box::new(move |st| report(ours.as_raw_fd(), [EXIT, st as u32, 0, 0])));
    match sys::fork().map_err(|e| internal(format!("fork: {e}")))? {
        // Only async-signal-safe calls from here on: the daemon has other threads.
        sys::Fork::Child => child.main(),
        sys::Fork::Parent(pid) => tracked.first(pid),
    }
    drop((status_w, started_w));
    Ok(Spawned { status: file(status_r), started: file(started_r), tracked })
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

/// What the children run on, all prepared by [`spawn`] before the fork.
struct Child<'a> {
    prep: &'a Prepared<'a>,
    stdio: [RawFd; 3],
    tty: bool,
    /// The status pipe's write end.
    status: RawFd,
    /// The started pipe's write end.
    started: RawFd,
    /// Every descriptor the first child keeps, sorted.
    keep: &'a [RawFd],
}

impl Child<'_> {
    /// The first child: its descriptors, oom_score_adj, cgroup, namespaces; forks the command as
    /// the shim's child and reports its pid (without CLONE_PARENT: stays its parent and relays its
    /// status too). Runs in a child of the multi-threaded daemon: async-signal-safe
    /// calls only (no allocation, no lock), on what `spawn` prepared.
    fn main(&self) -> ! {
        let (p, status) = (self.prep, self.status);
        if let Err(e) = sys::close_all_except(self.keep) {
            fail_setup(status, SETUP_CLOSE, 0, &e);
        }
        // Through the host's /proc, before the mount namespace changes; the command inherits it.
        if let Some(adj) = &p.oom_score_adj {
            if let Err(e) = sys::write_file(c"/proc/self/oom_score_adj", adj) {
                report(status, [WARN, WARN_OOM, 0, errno(&e)]);
            }
        }
        let os: &dyn Syscall = &Linux;
        for f in &p.procs {
            if let Err(e) = sys::write_all_raw(f.as_raw_fd(), b"0") {
                fail_setup(status, SETUP_CGROUP, 0, &e);
            }
        }
        for (f, flag, index) in &p.ns {
            if let Err(e) = os.setns(f.as_raw_fd(), *flag) {
                fail_setup(status, SETUP_SETNS, *index, &e);
            }
        }
        let (forked, relayed) = match sys::fork_as_sibling() {
            Ok(f) => (Ok(f), false),
            Err(_) => (sys::fork(), true),
        };
        match forked {
            Err(e) => fail_setup(status, SETUP_FORK, 0, &e),
            Ok(sys::Fork::Child) => self.command(os),
            Ok(sys::Fork::Parent(pid)) => {
                // The command alone holds its stdio and the started pipe from now on.
                for fd in self.stdio {
                    sys::close(fd);
                }
                sys::close(self.started);
                report(status, [PID, pid as u32, relayed as u32, 0]);
                if !relayed {
                    // The shim reaps the command and writes its status.
                    sys::exit_now(0);
                }
                let code = match sys::waitpid(pid, false) {
                    Ok(Some((_, st))) => st,
                    _ => 255 << 8,
                };
                report(status, [EXIT, code as u32, 0, 0]);
                sys::exit_now(0)
            }
        }
    }

    /// The command: a new session, rlimits, stdio (and controlling terminal), identity, exec.
    fn command(&self, os: &dyn Syscall) -> ! {
        let (p, status) = (self.prep, self.status);
        let _ = sys::setsid();
        for &(res, soft, hard) in &p.plan.rlimits {
            match process::set_rlimit(res, soft, hard) {
                Ok(None) => {}
                Ok(Some(_)) => report(status, [WARN, WARN_RLIMIT, res, 0]),
                Err(e) => fail_setup(status, SETUP_RLIMIT, res, &e),
            }
        }
        for (i, fd) in self.stdio.iter().enumerate() {
            if let Err(e) = sys::dup2(*fd, i as RawFd) {
                fail_setup(status, SETUP_DUP2, 0, &e);
            }
        }
        if self.tty {
            if let Err(e) = sys::set_controlling_tty(0) {
                fail_setup(status, SETUP_TTY, 0, &e);
            }
        }
        if let Err(f) = p.identity.apply(os) {
            report_failure(status, f);
            sys::exit_now(1);
        }
        report_failure(status, p.command.exec());
        sys::exit_now(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_pid_exit_failures_and_warnings() {
        let p = ProcessPlan { args: vec!["nosuch".into()], rlimits: vec![(7, 1024, 4096)], ..ProcessPlan::default() };
        let (code, arg) = Step::NotFound.code();
        let mut bytes = Vec::new();
        for rec in [[PID, 4242, 0, 0], [WARN, WARN_RLIMIT, 7, 0], [PROCESS, code, arg, 2], [EXIT, 127 << 8, 0, 0]] {
            for v in rec {
                bytes.extend_from_slice(&v.to_ne_bytes());
            }
        }
        let mut progress = Progress::default();
        // Split anywhere: records are put back together.
        for chunk in bytes.chunks(5) {
            progress.feed(chunk, &p);
        }
        assert_eq!((progress.pid, progress.status), (Some(4242), Some(127 << 8)));
        assert_eq!(
            failure_message(progress.failure.unwrap(), &p),
            r#"exec: "nosuch": executable file not found in $PATH"#
        );
        assert_eq!(
            warning_message([WARN, WARN_RLIMIT, 7, 0], &p),
            "exec: rlimit 7 1024/4096 clamped to the shim's hard limit"
        );
    }

    #[test]
    fn failures_are_worded() {
        let p = ProcessPlan { args: vec!["x".into()], rlimits: vec![(7, 1024, 4096)], ..ProcessPlan::default() };
        let net = NAMESPACES.iter().position(|(n, _)| *n == "net").unwrap() as u32;
        assert_eq!(
            failure_message([SETUP, SETUP_SETNS, net, libc::EPERM as u32], &p),
            "joining the container net namespace: EPERM"
        );
        assert_eq!(
            failure_message([SETUP, SETUP_CGROUP, 0, libc::ENOSPC as u32], &p),
            "joining the container cgroup: ENOSPC"
        );
        assert_eq!(
            failure_message([SETUP, SETUP_RLIMIT, 7, libc::EINVAL as u32], &p),
            "setting rlimit 7 to 1024/4096: EINVAL"
        );
        let (code, arg) = Step::SetUid.code();
        assert_eq!(failure_message([PROCESS, code, arg, libc::EPERM as u32], &p), "setuid(0): EPERM");
        let p = ProcessPlan { oom_score_adj: Some(-500), ..p };
        assert_eq!(
            warning_message([WARN, WARN_OOM, 0, libc::EACCES as u32], &p),
            "exec: cannot set oom_score_adj to -500 (EACCES), keeping the shim's"
        );
    }
}
