//! Exec: runs a command in the running container (its namespaces, cgroup, user, caps, env)
//! and collects its output. A first child joins the cgroup and namespaces (mnt last) and
//! forks the command so it is inside the pid namespace; it reports the command's pid and
//! wait status on a status pipe. Output is read until the command ends plus a short drain,
//! so a background child holding the pipes cannot hang the answer.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use proto::v1::{ErrorKind, ExecRequest, ExecResult};

use crate::container::process;
use crate::container::spec::merge_env;
use crate::daemon::{Fail, Shim};
use crate::error::errno_display;
use crate::sys;

/// Output kept per stream; the rest is read and dropped.
pub const MAX_OUTPUT: usize = 16 << 20;
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

pub fn run(shim: &Shim, req: &ExecRequest) -> Result<ExecResult, Fail> {
    if req.args.is_empty() {
        return Err(Fail::new(
            ErrorKind::InvalidArgument,
            "exec needs a command",
        ));
    }
    if !shim.is_running() {
        return Err(Fail::new(
            ErrorKind::FailedPrecondition,
            "container is not running",
        ));
    }
    let Some(base) = &shim.process else {
        return Err(Fail::new(ErrorKind::FailedPrecondition, "no process spec"));
    };
    let mut p = base.clone();
    p.args = req.args.clone();
    p.env = merge_env(&base.env, &req.env);
    if !req.cwd.is_empty() {
        p.cwd = req.cwd.clone().into();
    }
    // Everything the children need is opened before forking.
    let mut ns = Vec::new();
    for (name, flag) in NAMESPACES {
        let path = format!("/proc/{}/ns/{name}", shim.pid);
        match File::open(&path) {
            Ok(f) => ns.push((f, flag, name)),
            Err(e) if name == "cgroup" && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(format!("opening {path}: {}", errno_display(&e)))),
        }
    }
    let mut procs = Vec::new();
    if let Some(cg) = &shim.cgroup {
        for f in cg.procs_files() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .map_err(|e| internal(format!("opening {}: {}", f.display(), errno_display(&e))))?;
            procs.push(file);
        }
    }
    let devnull =
        File::open("/dev/null").map_err(|e| internal(format!("opening /dev/null: {e}")))?;
    let pipe = || io::pipe().map_err(|e| internal(format!("pipe: {e}")));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (st_r, st_w) = pipe()?;
    let oom_before = shim.cgroup.as_ref().and_then(|c| c.oom_kills());

    let child = sys::fork().map_err(|e| internal(format!("fork: {e}")))?;
    if let sys::Fork::Child = child {
        drop((out_r, err_r, st_r));
        let stdio: [RawFd; 3] = [devnull.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        child_main(&p, &ns, &mut procs, stdio, st_w, shim.last_cap);
    }
    drop((out_w, err_w, st_w, devnull, ns, procs));

    let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms));
    let outcome = collect(out_r.into(), err_r.into(), st_r.into(), timeout);
    let oom_after = shim.cgroup.as_ref().and_then(|c| c.oom_kills());
    if let Some(status) = outcome.status {
        let (_, sig) = sys::decode_status(status);
        shim.oom
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .exec_finished(oom_before, oom_after, sig);
    }
    if outcome.timed_out {
        return Err(Fail::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "command {:?} timed out after {} ms",
                req.args, req.timeout_ms
            ),
        ));
    }
    if let Some(e) = outcome.error {
        return Err(internal(e));
    }
    let Some(status) = outcome.status else {
        return Err(internal("exec: the command's exit status was lost"));
    };
    Ok(ExecResult {
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        exit_code: sys::decode_status(status).0,
    })
}

/// The first child: cgroup, namespaces, fork the command, relay its pid and status.
fn child_main(
    p: &crate::container::spec::ProcessPlan,
    ns: &[(File, i32, &str)],
    procs: &mut [File],
    stdio: [RawFd; 3],
    mut status: io::PipeWriter,
    last_cap: u32,
) -> ! {
    let fail = |status: &mut io::PipeWriter, msg: String| -> ! {
        let _ = status.write_all(format!("err {}\n", msg.replace('\n', " ")).as_bytes());
        sys::exit_now(1)
    };
    for f in procs.iter_mut() {
        if let Err(e) = f.write_all(b"0") {
            fail(
                &mut status,
                format!("joining the container cgroup: {}", errno_display(&e)),
            );
        }
    }
    for (f, flag, name) in ns {
        if let Err(e) = sys::setns(f.as_raw_fd(), *flag) {
            fail(
                &mut status,
                format!(
                    "joining the container {name} namespace: {}",
                    errno_display(&e)
                ),
            );
        }
    }
    match sys::fork() {
        Err(e) => fail(&mut status, format!("fork: {e}")),
        Ok(sys::Fork::Child) => {
            let _ = sys::setsid();
            for (i, fd) in stdio.iter().enumerate() {
                if let Err(e) = sys::dup2(*fd, i as RawFd) {
                    fail(&mut status, format!("dup2: {e}"));
                }
            }
            if let Err(e) = process::finalize(p, last_cap) {
                fail(&mut status, e.to_string());
            }
            let msg = process::exec(&p.args, &p.env);
            let _ = status.write_all(format!("err {}\n", msg.replace('\n', " ")).as_bytes());
            sys::exit_now(127)
        }
        Ok(sys::Fork::Parent(pid)) => {
            let _ = status.write_all(format!("pid {pid}\n").as_bytes());
            let code = match sys::waitpid(pid, false) {
                Ok(Some((_, st))) => st,
                _ => 255 << 8,
            };
            let _ = status.write_all(format!("exit {code}\n").as_bytes());
            sys::exit_now(0)
        }
    }
}

#[derive(Default)]
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<i32>,
    error: Option<String>,
    timed_out: bool,
}

/// Reads output and status until the command ended plus the drain, or the timeout.
fn collect(out: OwnedFd, err: OwnedFd, st: OwnedFd, timeout: Option<Duration>) -> Outcome {
    let mut o = Outcome::default();
    let mut files: [Option<File>; 3] = [Some(out.into()), Some(err.into()), Some(st.into())];
    let mut status_text = String::new();
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
        let next = [deadline, drain_until, kill_wait_until]
            .into_iter()
            .flatten()
            .min();
        let wait_ms = next.map_or(-1, |d| {
            d.saturating_duration_since(now)
                .as_millis()
                .min(i32::MAX as u128) as i32
        });
        let open: Vec<usize> = (0..3).filter(|&i| files[i].is_some()).collect();
        let fds: Vec<RawFd> = open
            .iter()
            .filter_map(|&i| files[i].as_ref().map(|f| f.as_raw_fd()))
            .collect();
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
                }
                _ => {
                    status_text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    while let Some(nl) = status_text.find('\n') {
                        let line: String = status_text.drain(..=nl).collect();
                        let line = line.trim_end();
                        if let Some(v) = line.strip_prefix("pid ") {
                            pid = v.parse().ok();
                        } else if let Some(v) = line.strip_prefix("exit ") {
                            o.status = v.parse().ok();
                        } else if let Some(v) = line.strip_prefix("err ") {
                            o.error = Some(v.to_string());
                        }
                    }
                }
            }
        }
    }
    o
}
