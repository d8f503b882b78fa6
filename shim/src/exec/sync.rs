//! ExecSync: the command's stdin is /dev/null, its output is collected until it ends plus a
//! short drain (so a background child holding the pipes cannot hang the answer), cut at
//! [`MAX_OUTPUT`] per stream; on timeout it is killed.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use proto::v1::{ErrorKind, ExecRequest, ExecResult};

use super::{failure_message, file, internal, pipe, prepare, spawn, Progress};
use crate::container::spec::ProcessPlan;
use crate::daemon::Shim;
use crate::error::Fail;
use crate::sys;

/// Output kept per stream; the rest is read and dropped (as CRI-O and dockershim cap it). Both
/// streams together stay under the 16 MiB of a shim frame and of a CRI message.
pub const MAX_OUTPUT: usize = (8 << 20) - (64 << 10);
/// How long output is still read after the command exited.
const DRAIN: Duration = Duration::from_millis(100);

/// Runs the command and answers with its output and exit code.
pub fn run(shim: &Shim, req: &ExecRequest) -> Result<ExecResult, Fail> {
    let prep = prepare(shim, &req.args, &req.env, &req.cwd)?;
    let devnull = File::open("/dev/null").map_err(|e| internal(format!("opening /dev/null: {e}")))?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let oom_before = prep.oom_kills();
    let spawned = spawn(&prep, [devnull.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()], false)?;
    drop((out_w, err_w, devnull, spawned.started));

    let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms));
    let progress = Progress::new(Some(spawned.tracked));
    let outcome = collect(file(out_r), file(err_r), spawned.status, timeout, progress, &prep.plan);
    if let Some(status) = outcome.progress.status {
        prep.finished(status, oom_before);
    }
    if outcome.timed_out {
        return Err(Fail::new(
            ErrorKind::DeadlineExceeded,
            format!("command {:?} timed out after {} ms", req.args, req.timeout_ms),
        ));
    }
    if let Some(e) = outcome.error.or_else(|| outcome.progress.failure.map(|rec| failure_message(rec, &prep.plan))) {
        return Err(internal(e));
    }
    let Some(status) = outcome.progress.status else {
        return Err(internal("exec: the command's exit status was lost"));
    };
    Ok(ExecResult {
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        exit_code: sys::decode_status(status).0,
        truncated: outcome.truncated,
    })
}

#[derive(Default)]
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    progress: Progress,
    error: Option<String>,
    timed_out: bool,
    /// Output beyond MAX_OUTPUT was dropped.
    truncated: bool,
}

/// Reads output and status until the command ended plus the drain, or the timeout.
fn collect(
    out: File,
    err: File,
    st: File,
    timeout: Option<Duration>,
    progress: Progress,
    plan: &ProcessPlan,
) -> Outcome {
    let mut o = Outcome { progress, ..Outcome::default() };
    let mut files: [Option<File>; 3] = [Some(out), Some(err), Some(st)];
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
                if let Some(p) = o.progress.pid {
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
                _ => o.progress.feed(&buf[..n], plan),
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::super::{report, EXIT, PID, PROCESS};
    use super::*;
    use crate::container::process::Step;
    use std::io::Write;

    #[test]
    fn output_and_status_are_collected() {
        let (out_r, mut out_w) = io::pipe().unwrap();
        let (err_r, mut err_w) = io::pipe().unwrap();
        let (st_r, st_w) = io::pipe().unwrap();
        out_w.write_all(b"hello").unwrap();
        err_w.write_all(b"oops").unwrap();
        report(st_w.as_raw_fd(), [PID, 4242, 0, 0]);
        let (code, arg) = Step::NotFound.code();
        report(st_w.as_raw_fd(), [PROCESS, code, arg, libc::ENOENT as u32]);
        report(st_w.as_raw_fd(), [EXIT, 127 << 8, 0, 0]);
        drop((out_w, err_w, st_w));
        let p = ProcessPlan { args: vec!["nosuch".into()], ..ProcessPlan::default() };
        let o = collect(file(out_r), file(err_r), file(st_r), None, Progress::default(), &p);
        assert_eq!((o.stdout.as_slice(), o.stderr.as_slice()), (&b"hello"[..], &b"oops"[..]));
        assert_eq!((o.progress.pid, o.progress.status), (Some(4242), Some(127 << 8)));
        assert_eq!(
            failure_message(o.progress.failure.unwrap(), &p),
            r#"exec: "nosuch": executable file not found in $PATH"#
        );
        assert!(!o.truncated && !o.timed_out);
    }
}
