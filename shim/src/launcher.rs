//! `corral-shim create|pause`: forks; the child setsid()s and forks the shim daemon (which
//! outlives the launcher) and the launcher prints the one JSON line the daemon reports
//! over a pipe: `{"pid":N}` or `{"error":"..."}`. The daemon's setup wires its parts here:
//! the role the mode asks for (workload.rs or pause.rs) in the daemon's state (daemon.rs), the
//! reaper (exit.rs) and the socket server (server.rs).

use std::io::{self, BufRead, BufReader, PipeWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use crate::container::spec::{self, Plan};
use crate::daemon::Shim;
use crate::error::{Context, Error, Result};
use crate::syscall::Linux;
use crate::{exit, info, pause, server, shimlog, sys, warn, workload};

/// What the shim is for: a container, or a pod's pause. The only place it is looked at is
/// here, where it picks the role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Container,
    Pause,
}

fn error_line(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

/// Runs the launcher; returns the process exit code.
pub fn run(mode: Mode, bundle: &Path, id: &str) -> i32 {
    let (r, w) = match io::pipe() {
        Ok(p) => p,
        Err(e) => {
            println!("{}", error_line(&format!("creating the readiness pipe: {e}")));
            return 1;
        }
    };
    let child = match sys::fork() {
        Ok(sys::Fork::Child) => {
            drop(r);
            intermediate(mode, bundle, id, w)
        }
        Ok(sys::Fork::Parent(pid)) => pid,
        Err(e) => {
            println!("{}", error_line(&format!("fork: {e}")));
            return 1;
        }
    };
    drop(w);
    let mut line = String::new();
    let _ = BufReader::new(r).read_line(&mut line);
    let _ = sys::waitpid(child, false);
    let line = line.trim();
    let parsed: Option<serde_json::Value> = serde_json::from_str(line).ok();
    let (out, code) = match parsed {
        Some(v) if v.get("pid").is_some_and(|p| p.is_u64()) => (line.to_string(), 0),
        Some(v) if v.get("error").is_some() => (line.to_string(), 1),
        _ => (error_line("the shim exited before reporting"), 1),
    };
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
    let _ = stdout.flush();
    code
}

/// The middle process: new session, (pause: namespaces, cgroup, new pid ns), fork the daemon.
fn intermediate(mode: Mode, bundle: &Path, id: &str, mut report: PipeWriter) -> ! {
    let r = (|| -> Result<()> {
        sys::setsid().ctx(|| "setsid".into())?;
        // Whatever corrald left open must not reach the container.
        sys::cloexec_from(3)
            .ctx(|| "marking inherited descriptors close-on-exec (close_range, /proc/self/fd)".into())?;
        // The spec is dropped at once: the daemon forked below never returns to free it.
        let plan = spec::plan(&spec::load(bundle)?, mode == Mode::Pause)?;
        if mode == Mode::Pause {
            pause::prepare(&Linux, &plan)?;
        }
        match sys::fork().ctx(|| "fork".into())? {
            sys::Fork::Child => daemon(mode, bundle, id, plan, report.try_clone().ctx(|| "dup".into())?),
            sys::Fork::Parent(_) => Ok(()),
        }
    })();
    match r {
        Ok(()) => sys::exit_now(0),
        Err(e) => {
            let _ = report.write_all(format!("{}\n", error_line(&e.to_string())).as_bytes());
            sys::exit_now(1)
        }
    }
}

/// Binds `<bundle>/shim.sock` with mode 0600, refusing when another shim serves it.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::Msg(format!("{} is already served by another shim", path.display())));
        }
        let _ = std::fs::remove_file(path);
    }
    sys::umask(0o177);
    let l = UnixListener::bind(path).ctx(|| format!("binding {}", path.display()));
    sys::umask(0o022);
    l
}

fn redirect_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// The daemon's life after the double fork: set up its role, report to the launcher, start the
/// reaper, serve.
fn daemon(mode: Mode, bundle: &Path, id: &str, plan: Plan, mut report: PipeWriter) -> ! {
    redirect_stdio();
    let _ = std::env::set_current_dir("/");
    shimlog::init(&bundle.join("shim.log"));
    sys::malloc_tune();
    let sock = bundle.join(proto::SOCKET_NAME);
    let setup = (|| -> Result<(Arc<Shim>, UnixListener)> {
        sys::set_child_subreaper().ctx(|| "prctl(PR_SET_CHILD_SUBREAPER)".into())?;
        sys::block_signals(&[libc::SIGCHLD]).ctx(|| "blocking SIGCHLD".into())?;
        let listener = bind_socket(&sock)?;
        let shim = match mode {
            Mode::Container => workload::create(bundle, id, plan).inspect_err(|_| {
                let _ = std::fs::remove_file(&sock);
            })?,
            Mode::Pause => pause::create(bundle, id)?,
        };
        Ok((Arc::new(shim), listener))
    })();
    match setup {
        Ok((shim, listener)) => {
            info!("{} {id} created, pid {}", shim.role.name(), shim.pid);
            let _ = report.write_all(format!("{{\"pid\":{}}}\n", shim.pid).as_bytes());
            drop(report);
            let reaped = shim.clone();
            if let Err(e) = exit::spawn_reaper(move |pid, status| reaped.child_exited(pid, status)) {
                warn!("starting the reaper: {e}");
            }
            sys::malloc_trim();
            sys::release_setup_code();
            server::serve(listener, shim)
        }
        Err(e) => {
            warn!("create {id} failed: {e}");
            let _ = std::fs::remove_file(&sock);
            let msg = error_line(&e.to_string());
            let _ = report.write_all(format!("{msg}\n").as_bytes());
            sys::exit_now(1)
        }
    }
}
