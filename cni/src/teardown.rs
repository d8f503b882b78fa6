//! DEL's slow half, off the runtime's path. DEL takes the attachment's lock, takes the
//! container interface's addresses away and sets it down, then hands the lock and the rest
//! (nat rules, veth, and last the allocation) to a detached copy of the plugin: the
//! runtime's wait returns as soon as that copy is started. ADD of the same attachment takes
//! the same lock first, so it waits for a teardown still running; other attachments never
//! see the address before its rules and veth are gone, since it is released last.
//!
//! Detaching: DEL runs `/proc/self/exe` with [`DETACH_ARG`] (stdin = the locked lock file,
//! stdout and stderr /dev/null, the config in [`CONF_VAR`]) and waits for it; that process
//! calls setsid(2), starts the worker ([`WORK_ARG`]) with the same stdin and exits, so the
//! worker is orphaned, in its own session, and holds the lock (the same open file
//! description) until it exits. A failure of the worker is appended to a log next to the
//! allocation state ([`log_path`]); GC (`cni.dev/valid-attachments`) recovers what it left.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::FlockArg;
use serde_json::Value;

use crate::config::{Env, NetConf};
use crate::errors::io;
use crate::ipam::Ipam;
use crate::rules::Owner;
use crate::spec::{code, CniError};

/// argv[1] of the intermediate process that detaches the worker.
pub const DETACH_ARG: &str = "--corral-internal-teardown-detach";
/// argv[1] of the worker.
pub const WORK_ARG: &str = "--corral-internal-teardown";
/// The network config (stdin of the DEL) passed to the worker.
pub const CONF_VAR: &str = "CORRAL_CNI_TEARDOWN_CONF";
/// Where the per-attachment lock files live (tmpfs: a teardown does not survive a reboot).
pub const LOCK_DIR: &str = "/run/corral-cni/locks";
const LOG_NAME: &str = "corral-cni-teardown.log";

/// The flock of one attachment, held by ADD and by DEL until its teardown has finished.
/// The lock belongs to the open file description: closing one of several descriptors of it
/// (as DEL does once the worker has its own) does not unlock.
pub struct AttachmentLock {
    file: File,
    path: PathBuf,
}

// `Flock` unlocks on drop, which would also unlock the worker's inherited descriptor.
#[allow(deprecated)]
fn flock_exclusive(f: &File) -> nix::Result<()> {
    nix::fcntl::flock(f.as_raw_fd(), FlockArg::LockExclusive)
}

impl AttachmentLock {
    pub fn path_of(owner: &Owner) -> PathBuf {
        Path::new(LOCK_DIR).join(format!("{}.lock", owner.hash()))
    }

    /// Blocks until the attachment is free. The holder unlinks the file before unlocking,
    /// so a lock on a file no longer at the path is retried.
    pub fn acquire(owner: &Owner) -> Result<AttachmentLock, CniError> {
        fs::create_dir_all(LOCK_DIR).map_err(io(LOCK_DIR))?;
        let path = Self::path_of(owner);
        loop {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(io(path.display()))?;
            flock_exclusive(&f)
                .map_err(|e| CniError::new(code::IO, format!("lock {}: {e}", path.display())))?;
            let held = f.metadata().map_err(io(path.display()))?;
            match fs::metadata(&path) {
                Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => {
                    return Ok(AttachmentLock { file: f, path })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(path.display())(e)),
            }
        }
    }

    /// Removes the file, then unlocks (by closing it).
    pub fn release(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }

    /// Closes this process's descriptor without unlocking: for once the worker holds the
    /// lock through its own descriptor.
    pub fn hand_over(self) {
        drop(self.file);
    }

    /// A second descriptor of the same open file description (the lock goes with it).
    fn share(&self) -> Result<File, CniError> {
        self.file.try_clone().map_err(io(self.path.display()))
    }
}

/// Where the worker reports failures: next to the allocation state for host-local (when
/// the network's directory exists), else under /run/corral-cni.
pub fn log_path(conf: &NetConf) -> PathBuf {
    if let Ok(Ipam::HostLocal(h)) = Ipam::from_conf(conf) {
        let dir = h.data_dir.join(&conf.name);
        if dir.is_dir() {
            return dir.join(LOG_NAME);
        }
    }
    Path::new("/run/corral-cni").join(LOG_NAME)
}

fn log(conf: &NetConf, env: &Env, msg: &str) {
    let open = |p: &Path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(p)
    };
    // Never recreates a network directory removed meanwhile: falls back to /run.
    let opened = open(&log_path(conf)).or_else(|_| {
        fs::create_dir_all("/run/corral-cni")?;
        open(&Path::new("/run/corral-cni").join(LOG_NAME))
    });
    let Ok(mut f) = opened else {
        return;
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let _ = writeln!(
        f,
        "{secs} teardown of {} {} {} failed (GC will retry): {msg}",
        conf.name, env.container_id, env.ifname
    );
}

fn cni_env(cmd: &mut Command, env: &Env) {
    cmd.env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_NETNS", &env.netns)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", &env.args)
        .env("CNI_PATH", &env.path);
}

/// Starts the detached worker with the lock; Err when it could not be started (the caller
/// still holds the lock and tears down inline).
pub fn detach(raw: &Value, env: &Env, lock: &AttachmentLock) -> Result<(), CniError> {
    let conf =
        serde_json::to_string(raw).map_err(|e| CniError::new(code::INTERNAL, e.to_string()))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(DETACH_ARG)
        .env(CONF_VAR, conf)
        .stdin(Stdio::from(lock.share()?))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cni_env(&mut cmd, env);
    let status = cmd
        .status()
        .map_err(|e| CniError::new(code::IO, format!("starting teardown: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(CniError::new(
            code::IO,
            format!("starting teardown: {status}"),
        ))
    }
}

/// The intermediate process: new session, start the worker, exit. Its exit status says
/// whether the worker started.
pub fn detach_main() -> i32 {
    let _ = nix::unistd::setsid();
    let started = Command::new("/proc/self/exe")
        .arg(WORK_ARG)
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match started {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

/// The worker: the teardown, with the lock on stdin; unlinks the lock file at the end.
pub fn work_main() -> i32 {
    let vars = std::env::vars().collect();
    let env = Env::from_map(&vars);
    let raw = std::env::var(CONF_VAR).unwrap_or_default();
    let Ok((conf, raw)) = NetConf::parse(raw.as_bytes()) else {
        return 1;
    };
    let owner = Owner::new(&conf.name, &env.container_id, &env.ifname);
    let res = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt.block_on(crate::del::teardown(&conf, &raw, &env)),
        Err(e) => Err(CniError::new(code::IO, format!("tokio runtime: {e}"))),
    };
    if let Err(e) = &res {
        log(&conf, &env, &e.to_string());
    }
    // Still holding the lock through stdin: unlink, then exit (which unlocks).
    let _ = fs::remove_file(AttachmentLock::path_of(&owner));
    i32::from(res.is_err())
}
