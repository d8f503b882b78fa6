//! Creating the container process from the plan, runc-style: a first child joins the cgroup
//! and namespaces and creates the new ones, a second child (the container process, PID 1 of a
//! new pid namespace) sets up the rootfs and everything up to exec, reports ready, and waits
//! on the start pipe. Every failure in a child comes back as a message on the sync pipe.
//!
//! The daemon has a single thread while it creates the container (the copiers and the reaper
//! start after), so the children may allocate until the exec.
//!
//! A container with a terminal gets it like runc's console socket: its process opens a pty of
//! the devpts mounted in its root once the rootfs is set up (inside it the terminal is then its
//! own `/dev/pts/N`) and sends the master to the shim over a socket pair before it reports
//! ready. A pty of the shim's is made beforehand and stays when the container has no usable
//! devpts, with a warning, so a terminal never keeps a container from starting.

pub mod cgroup;
// The bpf(2) attributes are raw memory the kernel reads and writes: the module makes those calls
// itself rather than through `sys`, each `unsafe` block with its SAFETY comment.
#[allow(unsafe_code)]
pub mod devfilter;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod spec;
pub mod systemd;

use std::fs::File;
use std::io::{self, BufRead, BufReader, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use cgroup::Cgroup;
use process::{Command, Identity};
use spec::{Ns, Plan};

use crate::error::{errno_display, Context, Error, Result};
use crate::sys;
use crate::syscall::{Linux, Syscall};

/// A message from a container child to the shim (one line each).
#[derive(Debug, PartialEq, Eq)]
pub enum ChildMsg {
    Pid(i32),
    Ready,
    Warn(String),
    Error(String),
}

impl ChildMsg {
    pub fn encode(&self) -> String {
        let clean = |s: &str| {
            let mut s = s.replace('\n', " ");
            if s.len() > 3000 {
                let mut cut = 3000;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
            s
        };
        match self {
            ChildMsg::Pid(p) => format!("pid {p}\n"),
            ChildMsg::Ready => "ready\n".into(),
            ChildMsg::Warn(m) => format!("warn {}\n", clean(m)),
            ChildMsg::Error(m) => format!("error {}\n", clean(m)),
        }
    }

    pub fn decode(line: &str) -> Option<ChildMsg> {
        let line = line.trim_end_matches('\n');
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        Some(match k {
            "pid" => ChildMsg::Pid(v.parse().ok()?),
            "ready" => ChildMsg::Ready,
            "warn" => ChildMsg::Warn(v.into()),
            "error" => ChildMsg::Error(v.into()),
            _ => return None,
        })
    }
}

/// Sends one message; a single write below PIPE_BUF, so messages never interleave.
pub fn send(w: &mut impl Write, msg: &ChildMsg) {
    let _ = w.write_all(msg.encode().as_bytes());
}

/// Reads the next message (None at EOF).
pub fn recv(r: &mut BufReader<PipeReader>) -> Option<ChildMsg> {
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {
                if let Some(m) = ChildMsg::decode(&line) {
                    return Some(m);
                }
            }
        }
    }
}

/// The shim's ends of the container's stdio.
#[derive(Default)]
pub struct Stdio {
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    /// The pty master (tty mode): the container's output, logged as stdout.
    pub pty: Option<File>,
    /// A second descriptor of the pty master: the container's stdin (attach) and its terminal
    /// (CloseStdin hangs it up).
    pub pty_input: Option<File>,
    /// Kept open so the container's stdin stays open.
    pub stdin: Option<PipeWriter>,
}

/// The created container process, waiting for Start.
pub struct Created {
    pub pid: i32,
    pub start: PipeWriter,
    pub sync: BufReader<PipeReader>,
    pub stdio: Stdio,
    pub warnings: Vec<String>,
}

/// /dev/null for reading (the stdin of a container created without one).
fn devnull() -> Result<OwnedFd> {
    let f = File::open("/dev/null").ctx(|| "opening /dev/null".into())?;
    Ok(f.into())
}

/// The socket pair on which the container process sends the shim the pty master of its own
/// devpts (tty mode), as runc's console socket.
struct Console {
    /// The shim's end.
    ours: UnixStream,
    /// The container process's end.
    theirs: UnixStream,
}

/// What the container process sends on the console socket, one byte: its own pty's master
/// follows, or it keeps the shim's pty (and said why in a warning).
const CONSOLE_OWN: u8 = b'c';
const CONSOLE_SHIMS: u8 = b's';

/// Sets the pty master `master` as the shim's end of the terminal.
fn set_pty(ours: &mut Stdio, master: OwnedFd) -> Result<()> {
    let master = File::from(master);
    ours.pty_input = Some(master.try_clone().ctx(|| "dup pty master".into())?);
    ours.pty = Some(master);
    Ok(())
}

/// The child's stdio fds (0, 1, 2) and the shim's ends. The output is always the shim's to read
/// (for the log and for attach). With a terminal the fds are a pty of the shim's, which the
/// container process replaces with one of its own devpts when it can (the console socket).
fn make_stdio(plan: &Plan) -> Result<([OwnedFd; 3], Stdio, Option<Console>)> {
    let mut ours = Stdio::default();
    let terminal = plan.process.as_ref().is_some_and(|p| p.terminal);
    if terminal {
        let (master, slave) = sys::openpty().ctx(|| "creating a pty".into())?;
        let s1 = slave.try_clone().ctx(|| "dup pty".into())?;
        let s2 = slave.try_clone().ctx(|| "dup pty".into())?;
        set_pty(&mut ours, master)?;
        let (sock, theirs) = UnixStream::pair().ctx(|| "creating the console socket".into())?;
        return Ok(([slave, s1, s2], ours, Some(Console { ours: sock, theirs })));
    }
    let stdin: OwnedFd = if plan.stdin {
        let (r, w) = io::pipe().ctx(|| "creating the stdin pipe".into())?;
        ours.stdin = Some(w);
        r.into()
    } else {
        devnull()?
    };
    let out = |slot: &mut Option<File>| -> Result<OwnedFd> {
        let (r, w) = io::pipe().ctx(|| "creating an output pipe".into())?;
        *slot = Some(File::from(OwnedFd::from(r)));
        Ok(w.into())
    };
    let stdout = out(&mut ours.stdout)?;
    let stderr = out(&mut ours.stderr)?;
    Ok(([stdin, stdout, stderr], ours, None))
}

/// Takes the container's terminal from the console socket: the master of its own pty in place
/// of the shim's, or nothing when it keeps the shim's. The container process sends it before
/// Ready, so once Ready was read it is there (or never will be).
fn take_console(sock: &UnixStream, stdio: &mut Stdio) -> Result<()> {
    let ctx = || "receiving the container's terminal".to_string();
    sock.set_nonblocking(true).ctx(ctx)?;
    let mut b = [0u8; 1];
    let (n, mut fds) = common::fdpass::recv_with_fds(sock.as_raw_fd(), &mut b).ctx(ctx)?;
    match (n, b[0], fds.len()) {
        (1, CONSOLE_OWN, 1) => set_pty(stdio, fds.remove(0)),
        (1, CONSOLE_SHIMS, 0) => Ok(()),
        _ => Err(Error::Msg(format!("{}: unexpected message ({n} bytes, {} descriptors)", ctx(), fds.len()))),
    }
}

/// Forks the container process and brings it up to just before exec.
pub fn create(plan: &Plan, cgroup: Option<&Cgroup>) -> Result<Created> {
    let joins = namespaces::open_joins(&plan.namespaces)?;
    let flags = namespaces::new_flags(&plan.namespaces);
    let last_cap = process::last_cap();
    // The container process's identity and command, built before forking.
    let exec = plan.process.as_ref().map(|p| (Identity::new(p, last_cap), Command::new(&p.args, &p.env)));
    let (child_stdio, mut stdio, console) = make_stdio(plan)?;
    let (console, console_theirs) = console.map(|c| (c.ours, c.theirs)).unzip();
    let (sync_r, sync_w) = io::pipe().ctx(|| "creating the sync pipe".into())?;
    let (start_r, start_w) = io::pipe().ctx(|| "creating the start pipe".into())?;

    let c1 = match sys::fork().ctx(|| "fork".into())? {
        sys::Fork::Child => {
            drop(sync_r);
            drop(start_w);
            drop(console);
            let mut w = sync_w;
            let console = console_theirs.as_ref().map(AsRawFd::as_raw_fd);
            let r = stage1(&Linux, plan, cgroup, &joins, flags, &mut w, start_r, child_stdio, console, exec.as_ref());
            if let Err(e) = r {
                send(&mut w, &ChildMsg::Error(e.to_string()));
            }
            sys::exit_now(1);
        }
        sys::Fork::Parent(pid) => pid,
    };
    drop(sync_w);
    drop(start_r);
    drop(child_stdio);
    drop(console_theirs);
    let mut sync = BufReader::new(sync_r);
    let mut pid = None;
    let mut warnings = Vec::new();
    // The first child reports the pid after forking the container process, which reports
    // Ready: the two race, so Ready before Pid waits for Pid (the first child sends it and
    // exits; the container process keeps the pipe open until it is started).
    let mut ready = false;
    let result = loop {
        match recv(&mut sync) {
            Some(ChildMsg::Pid(p)) => {
                pid = Some(p);
                if ready {
                    break Ok(());
                }
            }
            Some(ChildMsg::Warn(w)) => warnings.push(w),
            Some(ChildMsg::Ready) if pid.is_some() => break Ok(()),
            Some(ChildMsg::Ready) => ready = true,
            Some(ChildMsg::Error(e)) => break Err(Error::Msg(e)),
            None => break Err(Error::Msg("container process exited during setup without a message".into())),
        }
    };
    let result = match (result, &console) {
        (Ok(()), Some(sock)) => take_console(sock, &mut stdio),
        (r, _) => r,
    };
    // The first child exits right after forking; the container process is then ours
    // (we are its subreaper).
    let _ = sys::waitpid(c1, false);
    match (result, pid) {
        (Ok(()), Some(pid)) => Ok(Created { pid, start: start_w, sync, stdio, warnings }),
        (r, pid) => {
            if let Some(pid) = pid {
                let _ = sys::kill(pid, libc::SIGKILL);
                let _ = sys::waitpid(pid, false);
            }
            Err(r.err().unwrap_or_else(|| Error::Msg("container process pid never reported".into())))
        }
    }
}

/// The prepared identity and command of the container process.
type Exec<'a> = Option<&'a (Identity, Command)>;

/// The first child: the cgroup, the namespaces (joins, then the new ones), and the fork of the
/// container process, whose pid it reports.
#[allow(clippy::too_many_arguments)]
fn stage1(
    os: &dyn Syscall,
    plan: &Plan,
    cgroup: Option<&Cgroup>,
    joins: &namespaces::Joins,
    flags: i32,
    w: &mut PipeWriter,
    start: PipeReader,
    stdio: [OwnedFd; 3],
    console: Option<RawFd>,
    exec: Exec,
) -> Result<()> {
    if let Some(cg) = cgroup {
        cg.join(0)?;
        // A systemd scope exists only now, holding us: the limits systemd has no property for
        // go in through cgroupfs here, before anything runs in the container.
        if let (Some(_), Some(res)) = (cg.scope(), &plan.resources) {
            for warning in cg.apply(res)? {
                send(w, &ChildMsg::Warn(warning));
            }
        }
    }
    namespaces::enter(os, joins, flags)?;
    match sys::fork().ctx(|| "fork".into())? {
        sys::Fork::Child => {
            let r = stage2(os, plan, cgroup, w, start, &stdio, console, exec);
            if let Err(e) = r {
                send(w, &ChildMsg::Error(e.to_string()));
            }
            sys::exit_now(1);
        }
        sys::Fork::Parent(pid) => {
            send(w, &ChildMsg::Pid(pid));
            Ok(())
        }
    }
}

/// The container process: the rootfs, its terminal (with `console`, the socket to send it on),
/// hostname, rlimits, stdio; Ready; then, once started, the identity and the exec.
#[allow(clippy::too_many_arguments)]
fn stage2(
    os: &dyn Syscall,
    plan: &Plan,
    cgroup: Option<&Cgroup>,
    w: &mut PipeWriter,
    mut start: PipeReader,
    stdio: &[OwnedFd; 3],
    console: Option<RawFd>,
    exec: Exec,
) -> Result<()> {
    let (Some(p), Some((identity, command))) = (plan.process.as_ref(), exec) else {
        return Err(Error::Spec("process is missing".into()));
    };
    sys::setsid().ctx(|| "setsid".into())?;
    rootfs::setup(os, plan, cgroup)?;
    let mut fds = [stdio[0].as_raw_fd(), stdio[1].as_raw_fd(), stdio[2].as_raw_fd()];
    let own_tty = match console {
        Some(sock) => own_terminal(sock, p.uid, w)?,
        None => None,
    };
    if let Some(slave) = &own_tty {
        fds = [slave.as_raw_fd(); 3];
    }
    if namespaces::has_new(&plan.namespaces, Ns::Uts) {
        if let Some(h) = &plan.hostname {
            os.sethostname(h).ctx(|| format!("sethostname({h})"))?;
        }
    }
    for warn in process::apply_rlimits(p)? {
        send(w, &ChildMsg::Warn(warn));
    }
    if let Some(warn) = process::apply_oom_score_adj(p) {
        send(w, &ChildMsg::Warn(warn));
    }
    for (i, fd) in fds.into_iter().enumerate() {
        sys::dup2(fd, i as RawFd).ctx(|| format!("dup2 to fd {i}"))?;
    }
    drop(own_tty);
    if console.is_some() {
        sys::set_controlling_tty(0).ctx(|| "setting the controlling terminal".into())?;
    }
    send(w, &ChildMsg::Ready);
    let mut b = [0u8; 1];
    if !matches!(start.read(&mut b), Ok(1)) {
        // The shim went away or gave up on this container.
        sys::exit_now(1);
    }
    identity.apply(os).map_err(|f| Error::Msg(f.message(p)))?;
    let failure = command.exec();
    send(w, &ChildMsg::Error(failure.message(p)));
    sys::exit_now(127);
}

/// The container's own terminal, runc's way: a new pty of the devpts mounted in its root (the
/// rootfs is set up), so that inside the container it is its `/dev/pts/N`; the slave owned by
/// the process's user (as runc's stdio), the master sent to the shim on the console socket
/// `sock`. Returns the slave, or None when the container has no usable `/dev/ptmx` (no devpts,
/// not the ptmx device, refused by its device cgroup): the shim's pty then stays, with a
/// warning. Only a failure to tell the shim fails the container.
fn own_terminal(sock: RawFd, uid: u32, w: &mut PipeWriter) -> Result<Option<OwnedFd>> {
    let send_ctx = || "sending the terminal to the shim".to_string();
    match sys::openpty_in(Path::new("/")) {
        Ok((master, slave)) => {
            if uid != 0 {
                if let Err(e) = sys::fchown_user(slave.as_raw_fd(), uid) {
                    send(w, &ChildMsg::Warn(format!("giving the terminal to uid {uid}: {}", errno_display(&e))));
                }
            }
            common::fdpass::send_with_fds(sock, &[CONSOLE_OWN], &[master.as_raw_fd()]).ctx(send_ctx)?;
            Ok(Some(slave))
        }
        Err(e) => {
            send(
                w,
                &ChildMsg::Warn(format!(
                    "no pty in the container's /dev/ptmx ({}), using one of the shim's: inside the container it \
                     has no name",
                    errno_display(&e)
                )),
            );
            common::fdpass::send_with_fds(sock, &[CONSOLE_SHIMS], &[]).ctx(send_ctx)?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_messages_round_trip() {
        for m in [
            ChildMsg::Pid(42),
            ChildMsg::Ready,
            ChildMsg::Warn("w x".into()),
            ChildMsg::Error("mounting proc at /proc: EPERM".into()),
        ] {
            assert_eq!(ChildMsg::decode(&m.encode()), Some(m));
        }
        assert_eq!(ChildMsg::decode(&ChildMsg::Error("a\nb".into()).encode()), Some(ChildMsg::Error("a b".into())));
    }
}
