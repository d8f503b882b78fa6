//! The shim daemon: its setup after the double fork, the container's state machine
//! (CREATED → RUNNING → STOPPED) and the operations the server dispatches to.

use std::io::{BufReader, PipeReader, PipeWriter, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::v1::{ErrorKind, Exit, State, Status};

use crate::container::cgroup::Cgroup;
use crate::container::spec::{Plan, ProcessPlan};
use crate::container::{self, process, recv, ChildMsg};
use crate::error::{Context, Error, Result};
use crate::logger::{Logger, Stream};
use crate::oom::OomTracker;
use crate::{exit, info, server, sys, warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Container,
    Pause,
}

/// A failed request: the kind corrald maps to a gRPC status, and the message.
#[derive(Debug)]
pub struct Fail {
    pub kind: ErrorKind,
    pub msg: String,
}

impl Fail {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Fail {
        Fail {
            kind,
            msg: msg.into(),
        }
    }
}

struct Inner {
    status: Status,
    created_at: i64,
    started_at: i64,
    exit: Option<Exit>,
    /// A Start is between writing the start byte and learning the outcome.
    starting: bool,
    start_error: Option<String>,
    /// Set when the shim should exit once the current answer is written.
    exit_requested: bool,
}

pub struct Shim {
    pub id: String,
    pub bundle: PathBuf,
    pub mode: Mode,
    /// Host pid of the container process (pause mode: of the shim itself).
    pub pid: i32,
    pidfd: Option<OwnedFd>,
    pub process: Option<ProcessPlan>,
    pub cgroup: Option<Cgroup>,
    pub logger: Arc<Logger>,
    pub last_cap: u32,
    pub oom: Mutex<OomTracker>,
    inner: Mutex<Inner>,
    changed: Condvar,
    start: Mutex<Option<(PipeWriter, BufReader<PipeReader>)>>,
    _stdin: Option<PipeWriter>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds `<bundle>/shim.sock` with mode 0600, refusing when another shim serves it.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::Msg(format!(
                "{} is already served by another shim",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    sys::umask(0o177);
    let l = UnixListener::bind(path).ctx(|| format!("binding {}", path.display()));
    sys::umask(0o022);
    l
}

fn redirect_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// The daemon's life after the double fork: set up, report to the launcher, serve.
pub fn run(mode: Mode, bundle: &Path, id: &str, plan: Plan, mut report: PipeWriter) -> ! {
    redirect_stdio();
    let _ = std::env::set_current_dir("/");
    crate::shimlog::init(&bundle.join("shim.log"));
    sys::malloc_tune();
    let sock = bundle.join(proto::SOCKET_NAME);
    let setup = (|| -> Result<(Arc<Shim>, UnixListener)> {
        sys::set_child_subreaper().ctx(|| "prctl(PR_SET_CHILD_SUBREAPER)".into())?;
        sys::block_signals(&[libc::SIGCHLD]).ctx(|| "blocking SIGCHLD".into())?;
        let listener = bind_socket(&sock)?;
        let shim = match mode {
            Mode::Container => Shim::create(bundle, id, plan).inspect_err(|_| {
                let _ = std::fs::remove_file(&sock);
            })?,
            Mode::Pause => {
                let shim = Shim::pause(bundle, id)?;
                sys::find_setup_code();
                crate::pause::confine(bundle)?;
                shim
            }
        };
        Ok((Arc::new(shim), listener))
    })();
    match setup {
        Ok((shim, listener)) => {
            info!(
                "{} {id} created, pid {}",
                if mode == Mode::Pause {
                    "pause"
                } else {
                    "container"
                },
                shim.pid
            );
            let _ = report.write_all(format!("{{\"pid\":{}}}\n", shim.pid).as_bytes());
            drop(report);
            if let Err(e) = exit::spawn_reaper(shim.clone()) {
                warn!("starting the reaper: {e}");
            }
            sys::malloc_trim();
            sys::release_setup_code();
            server::serve(listener, shim)
        }
        Err(e) => {
            warn!("create {id} failed: {e}");
            let _ = std::fs::remove_file(&sock);
            let msg = serde_json::json!({ "error": e.to_string() }).to_string();
            let _ = report.write_all(format!("{msg}\n").as_bytes());
            sys::exit_now(1)
        }
    }
}

impl Shim {
    fn new(bundle: &Path, id: &str, mode: Mode, pid: i32, logger: Logger) -> Shim {
        Shim {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            mode,
            pid,
            pidfd: None,
            process: None,
            cgroup: None,
            logger: Arc::new(logger),
            last_cap: process::last_cap(),
            oom: Mutex::new(OomTracker::default()),
            inner: Mutex::new(Inner {
                status: if mode == Mode::Pause {
                    Status::Running
                } else {
                    Status::Created
                },
                created_at: exit::now_nanos(),
                started_at: 0,
                exit: None,
                starting: false,
                start_error: None,
                exit_requested: false,
            }),
            changed: Condvar::new(),
            start: Mutex::new(None),
            _stdin: None,
        }
    }

    fn pause(bundle: &Path, id: &str) -> Result<Shim> {
        // /proc is the host's: /proc/self names our host pid (we are 1 in our namespace).
        let me = std::fs::read_link("/proc/self").ctx(|| "reading /proc/self".into())?;
        let pid = me
            .to_string_lossy()
            .parse()
            .map_err(|_| Error::Msg("cannot tell the host pid".into()))?;
        let mut shim = Shim::new(
            bundle,
            id,
            Mode::Pause,
            pid,
            Logger::new(None).ctx(|| "logger".into())?,
        );
        if let Ok(i) = shim.inner.get_mut() {
            i.started_at = i.created_at;
        }
        Ok(shim)
    }

    fn create(bundle: &Path, id: &str, mut plan: Plan) -> Result<Shim> {
        let last = process::last_cap();
        if let Some(p) = plan.process.as_mut() {
            let dropped = p.caps.clamp(process::own_bounding(last));
            if dropped != 0 {
                warn!(
                    "capabilities not available to the shim, dropped: {}",
                    process::cap_names(dropped).join(",")
                );
            }
        }
        let cgroup = match &plan.cgroups_path {
            Some(path) => Some(Cgroup::create(path)?),
            None => None,
        };
        let cleanup = |e: Error| {
            if let Some(cg) = &cgroup {
                cg.remove();
            }
            e
        };
        if let (Some(cg), Some(res)) = (&cgroup, &plan.resources) {
            for w in cg.apply(res).map_err(cleanup)? {
                warn!("{w}");
            }
        }
        let logger = match &plan.log_path {
            Some(p) => Logger::new(Some(p.clone()))
                .ctx(|| format!("opening log file {}", p.display()))
                .map_err(cleanup)?,
            None => Logger::new(None).ctx(|| "logger".into())?,
        };
        let oom_before = cgroup.as_ref().and_then(|c| c.oom_kills());
        let created =
            container::create(&plan, cgroup.as_ref(), logger.enabled()).map_err(cleanup)?;
        for w in &created.warnings {
            warn!("{w}");
        }
        let mut shim = Shim::new(bundle, id, Mode::Container, created.pid, logger);
        shim.pidfd = sys::pidfd_open(created.pid).ok();
        shim.oom = Mutex::new(OomTracker::new(oom_before));
        shim.last_cap = last;
        let stdio = created.stdio;
        if let Some(out) = stdio.stdout {
            shim.logger.spawn_copier(Stream::Stdout, out);
        }
        if let Some(err) = stdio.stderr {
            shim.logger.spawn_copier(Stream::Stderr, err);
        }
        if let Some(pty) = stdio.pty {
            shim.logger.spawn_copier(Stream::Stdout, pty);
        }
        shim._stdin = stdio.stdin;
        shim.start = Mutex::new(Some((created.start, created.sync)));
        shim.process = plan.process.take();
        shim.cgroup = cgroup;
        Ok(shim)
    }

    pub fn state(&self) -> State {
        let i = lock(&self.inner);
        State {
            id: self.id.clone(),
            pid: self.pid as u32,
            status: i.status as i32,
            created_at: i.created_at,
            started_at: i.started_at,
            exit: i.exit.clone(),
        }
    }

    pub fn is_running(&self) -> bool {
        lock(&self.inner).status == Status::Running
    }

    /// Lets the created process exec; an exec failure stops the container with 128.
    pub fn start(&self) -> std::result::Result<(), Fail> {
        if self.mode == Mode::Pause {
            return Ok(());
        }
        let mut slot = lock(&self.start);
        {
            let mut i = lock(&self.inner);
            match i.status {
                Status::Created => {}
                Status::Running => {
                    return Err(Fail::new(
                        ErrorKind::FailedPrecondition,
                        "container is already started",
                    ))
                }
                Status::Stopped => {
                    return Err(Fail::new(
                        ErrorKind::FailedPrecondition,
                        "container has already exited",
                    ))
                }
            }
            i.starting = true;
        }
        let Some((mut w, mut r)) = slot.take() else {
            self.finish_start(None);
            return Err(Fail::new(
                ErrorKind::FailedPrecondition,
                "container is already started",
            ));
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
                self.finish_start(None);
                Ok(())
            }
            Some(e) => {
                warn!("start failed: {e}");
                self.finish_start(Some(e.clone()));
                // The child exits right after reporting; answer once the exit is recorded.
                if self.wait_exit(Some(Duration::from_secs(5))).is_none() {
                    self.signal(libc::SIGKILL);
                    self.wait_exit(Some(Duration::from_secs(5)));
                }
                Err(Fail::new(ErrorKind::Internal, e))
            }
        }
    }

    fn finish_start(&self, error: Option<String>) {
        let mut i = lock(&self.inner);
        i.starting = false;
        if error.is_some() {
            i.start_error = error;
        } else if i.status == Status::Created {
            i.status = Status::Running;
            i.started_at = exit::now_nanos();
        }
        self.changed.notify_all();
    }

    fn signal(&self, sig: i32) {
        if let Some(fd) = &self.pidfd {
            let _ = sys::pidfd_send_signal(fd, sig);
        } else if lock(&self.inner).status != Status::Stopped {
            let _ = sys::kill(self.pid, sig);
        }
    }

    pub fn kill(&self, sig: i32, all: bool) -> std::result::Result<(), Fail> {
        if !(1..=64).contains(&sig) {
            return Err(Fail::new(
                ErrorKind::InvalidArgument,
                format!("invalid signal {sig}"),
            ));
        }
        if self.mode == Mode::Pause {
            return crate::pause::kill(self, sig);
        }
        info!("kill {sig}{}", if all { " all" } else { "" });
        if all {
            if let Some(cg) = &self.cgroup {
                for pid in cg.pids() {
                    let _ = sys::kill(pid, sig);
                }
            }
        }
        self.signal(sig);
        Ok(())
    }

    /// Waits for the exit; None on timeout.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<Exit> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut i = lock(&self.inner);
        loop {
            if let Some(e) = &i.exit {
                return Some(e.clone());
            }
            match deadline {
                None => i = self.changed.wait(i).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    i = match self.changed.wait_timeout(i, d - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
            }
        }
    }

    pub fn reopen_log(&self) -> std::result::Result<(), Fail> {
        self.logger.reopen().map_err(|e| {
            Fail::new(
                ErrorKind::Internal,
                format!("reopening the container log: {e}"),
            )
        })
    }

    /// Accepts a Shutdown once the container has exited.
    pub fn shutdown(&self) -> std::result::Result<(), Fail> {
        let mut i = lock(&self.inner);
        if self.mode == Mode::Container && i.status != Status::Stopped {
            return Err(Fail::new(
                ErrorKind::FailedPrecondition,
                "container is still running: kill it first",
            ));
        }
        i.exit_requested = true;
        Ok(())
    }

    pub fn exit_requested(&self) -> bool {
        lock(&self.inner).exit_requested
    }

    /// Records a pause exit (Kill) and asks the server to exit after answering. The pause has
    /// no file system to write an exit file to (see pause::confine); corrald waits for its pid.
    pub fn record_exit_and_quit(&self, exit: Exit) {
        let mut i = lock(&self.inner);
        i.status = Status::Stopped;
        i.exit = Some(exit);
        i.exit_requested = true;
        self.changed.notify_all();
    }

    /// Final cleanup before the process exits: leftover processes, cgroups, the socket.
    pub fn teardown_and_exit(&self) -> ! {
        // Let answers to concurrent waiters go out first.
        std::thread::sleep(Duration::from_millis(20));
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
        if self.mode == Mode::Container {
            let _ = std::fs::remove_file(self.bundle.join(proto::SOCKET_NAME));
        }
        info!("shim exiting");
        sys::exit_now(0)
    }

    /// Called by the reaper for every reaped child.
    pub fn child_exited(&self, pid: i32, status: i32) {
        if self.mode != Mode::Container || pid != self.pid {
            return;
        }
        let (code, signal) = sys::decode_status(status);
        let finished_at = exit::now_nanos();
        // Let the copiers write the last output first.
        self.logger.wait_drained(Duration::from_secs(2));
        let (start_error, started_at) = {
            let mut i = lock(&self.inner);
            while i.starting {
                i = self.changed.wait(i).unwrap_or_else(|p| p.into_inner());
            }
            (i.start_error.clone(), i.started_at)
        };
        let exit = match start_error {
            Some(msg) => Exit {
                exit_code: 128,
                signal: 0,
                finished_at,
                oom_killed: false,
                start_error: msg,
                started_at: 0,
            },
            None => {
                let counter = self.cgroup.as_ref().and_then(|c| c.oom_kills());
                let oom_killed = lock(&self.oom).container_oom(counter, signal);
                Exit {
                    exit_code: code,
                    signal,
                    finished_at,
                    oom_killed,
                    start_error: String::new(),
                    started_at,
                }
            }
        };
        info!(
            "container exited: code {} signal {} oom {}",
            exit.exit_code, exit.signal, exit.oom_killed
        );
        if let Err(e) = exit::write_record(&self.bundle, &exit) {
            warn!("writing the exit record: {e}");
        }
        let mut i = lock(&self.inner);
        i.status = Status::Stopped;
        i.exit = Some(exit);
        self.changed.notify_all();
    }
}
