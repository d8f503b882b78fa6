//! Every privileged or raw system call the shim makes, as small safe wrappers returning
//! `io::Result`. This is the only module allowed to use `unsafe`.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cstr_opt(s: Option<&str>) -> io::Result<Option<CString>> {
    s.map(|s| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL)))
        .transpose()
}

pub enum Fork {
    Parent(i32),
    Child,
}

/// fork(2). Callers must keep the child to async-signal-safe work or be single-threaded.
pub fn fork() -> io::Result<Fork> {
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid)
    })
}

/// Ends the calling process at once, without running destructors or atexit handlers.
pub fn exit_now(code: i32) -> ! {
    unsafe { libc::_exit(code) }
}

pub fn setsid() -> io::Result<()> {
    check(unsafe { libc::setsid() }).map(|_| ())
}

pub fn set_child_subreaper() -> io::Result<()> {
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(|_| ())
}

pub fn set_keepcaps(on: bool) -> io::Result<()> {
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, on as libc::c_ulong, 0, 0, 0) }).map(|_| ())
}

pub fn set_no_new_privs() -> io::Result<()> {
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(|_| ())
}

pub fn capbset_read(cap: u32) -> io::Result<bool> {
    check(unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) })
        .map(|r| r == 1)
}

pub fn capbset_drop(cap: u32) -> io::Result<()> {
    check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }).map(|_| ())
}

pub fn ambient_clear() -> io::Result<()> {
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })
    .map(|_| ())
}

pub fn ambient_raise(cap: u32) -> io::Result<()> {
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            cap as libc::c_ulong,
            0,
            0,
        )
    })
    .map(|_| ())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// capset(2) of the calling thread with 64-bit masks.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    check_long(unsafe {
        libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr())
    })
    .map(|_| ())
}

pub fn setgroups(gids: &[u32]) -> io::Result<()> {
    check(unsafe { libc::setgroups(gids.len(), gids.as_ptr()) }).map(|_| ())
}

/// setresgid/setresuid through the raw syscall so only the calling thread changes; the
/// callers are single-threaded children anyway.
pub fn setgid(gid: u32) -> io::Result<()> {
    check_long(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(|_| ())
}

pub fn setuid(uid: u32) -> io::Result<()> {
    check_long(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(|_| ())
}

pub fn umask(mask: u32) {
    unsafe { libc::umask(mask as libc::mode_t) };
}

pub fn setns(fd: RawFd, nstype: i32) -> io::Result<()> {
    check(unsafe { libc::setns(fd, nstype) }).map(|_| ())
}

pub fn unshare(flags: i32) -> io::Result<()> {
    check(unsafe { libc::unshare(flags) }).map(|_| ())
}

pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = source.map(cstring).transpose()?;
    let tgt = cstring(target)?;
    let fs = cstr_opt(fstype)?;
    let dat = cstr_opt(data)?;
    check(unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            dat.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    })
    .map(|_| ())
}

pub fn umount_detach(target: &Path) -> io::Result<()> {
    let tgt = cstring(target)?;
    check(unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) }).map(|_| ())
}

/// MOUNT_ATTR_RDONLY of mount_setattr(2).
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// mount_setattr(2) with AT_RECURSIVE: sets `attr_set` on the mount at `path` and on every mount
/// below it (Linux 5.12+).
pub fn mount_setattr_recursive(path: &Path, attr_set: u64) -> io::Result<()> {
    /// struct mount_attr of the kernel's uapi.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let p = cstring(path)?;
    let attr = MountAttr { attr_set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let flags = (libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW) as libc::c_uint;
    // SAFETY: `p` is a NUL-terminated path and `attr` a live struct whose size is passed; the
    // kernel only reads both during the call.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            p.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(|_| ())
}

pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let n = cstring(new_root)?;
    let o = cstring(put_old)?;
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) }).map(|_| ())
}

pub fn fchdir(fd: RawFd) -> io::Result<()> {
    check(unsafe { libc::fchdir(fd) }).map(|_| ())
}

/// The ST_* mount flags (nosuid, nodev, noexec, ...) of the filesystem holding `path`,
/// translated to MS_* flags.
pub fn mount_flags_of(path: &Path) -> io::Result<libc::c_ulong> {
    let p = cstring(path)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statvfs(p.as_ptr(), &mut st) })?;
    let f = st.f_flag;
    let mut out = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            out |= ms;
        }
    }
    Ok(out)
}

pub fn mknod(path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()> {
    let p = cstring(path)?;
    check(unsafe {
        libc::mknod(
            p.as_ptr(),
            mode as libc::mode_t,
            libc::makedev(major as _, minor as _),
        )
    })
    .map(|_| ())
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let p = cstring(path)?;
    check(unsafe { libc::lchown(p.as_ptr(), uid, gid) }).map(|_| ())
}

pub fn sethostname(name: &str) -> io::Result<()> {
    check(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) })
        .map(|_| ())
}

pub fn setrlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    check(unsafe { libc::setrlimit(resource as _, &lim) }).map(|_| ())
}

pub fn getrlimit(resource: u32) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    check(unsafe { libc::getrlimit(resource as _, &mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

pub fn dup2(old: RawFd, new: RawFd) -> io::Result<()> {
    check(unsafe { libc::dup2(old, new) }).map(|_| ())
}

/// Marks every fd >= `from` close-on-exec.
pub fn cloexec_from(from: u32) {
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    check(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let fd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    check_long(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(|_| ())
}

/// waitpid(2); `Ok(None)` when WNOHANG found nothing.
pub fn waitpid(pid: i32, nohang: bool) -> io::Result<Option<(i32, i32)>> {
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, if nohang { libc::WNOHANG } else { 0 }) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        return Ok(if r == 0 { None } else { Some((r, status)) });
    }
}

/// Decodes a wait status into (exit code or 128+signal, signal).
pub fn decode_status(status: i32) -> (i32, i32) {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, sig)
    } else {
        (libc::WEXITSTATUS(status), 0)
    }
}

fn sigset_of(sigs: &[i32]) -> libc::sigset_t {
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        for s in sigs {
            libc::sigaddset(&mut set, *s);
        }
    }
    set
}

/// Blocks the signals in the calling thread (inherited by threads spawned later).
pub fn block_signals(sigs: &[i32]) -> io::Result<()> {
    let set = sigset_of(sigs);
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Unblocks every signal and puts every disposition back to the default (before exec).
pub fn reset_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// Waits up to `timeout_ms` for one of the (blocked) signals; returns it, or None.
pub fn wait_signal(sigs: &[i32], timeout_ms: u64) -> Option<i32> {
    let set = sigset_of(sigs);
    let ts = libc::timespec {
        tv_sec: (timeout_ms / 1000) as _,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as _,
    };
    let r = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    if r < 0 {
        None
    } else {
        Some(r)
    }
}

/// poll(2) over (fd, events); returns revents per fd. EINTR counts as no event.
pub fn poll(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(vec![0; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds.iter().map(|p| p.revents).collect())
}

/// A new pseudo-terminal: (master, slave), both close-on-exec.
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    let master =
        check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    check(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut buf = [0 as libc::c_char; 128];
    let r = unsafe { libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    let slave = check(unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// Makes `fd` (a terminal) the controlling terminal of the calling session leader.
pub fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(|_| ())
}

/// execve(2); returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// Limits glibc to one malloc arena (threads otherwise each get one, inflating RSS).
pub fn malloc_tune() {
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Gives freed heap memory back to the kernel.
pub fn malloc_trim() {
    unsafe { libc::malloc_trim(0) };
}

/// Read-only private mappings of our own binary with no copied-on-write page, found once (from
/// /proc/self/smaps, which the pause shim no longer sees once confined).
static CODE_RANGES: std::sync::OnceLock<([(usize, usize); 8], usize)> = std::sync::OnceLock::new();

fn find_code_ranges() -> ([(usize, usize); 8], usize) {
    let mut ranges = [(0usize, 0usize); 8];
    let mut n = 0;
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return (ranges, 0) };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return (ranges, 0) };
    let mut candidate: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-').filter(|(a, _)| a.chars().all(|c| c.is_ascii_hexdigit())) {
            // A new mapping: "start-end perms offset dev inode path".
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            candidate = match (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) {
                (Ok(s), Ok(e)) if !perms.contains('w') && perms.ends_with('p') && Path::new(path) == exe => Some((s, e)),
                _ => None,
            };
        } else if first == "Anonymous:" {
            if let Some(range) = candidate.take() {
                if fields.next() == Some("0") && n < ranges.len() {
                    ranges[n] = range;
                    n += 1;
                }
            }
        }
    }
    // `smaps` and `exe` are freed here, before any page is dropped.
    (ranges, n)
}

/// Finds the code mappings now, while /proc is there (the pause shim, before it is confined).
pub fn find_setup_code() {
    let _ = CODE_RANGES.get_or_init(find_code_ranges);
}

/// Drops the shim's own read-only file pages (code and constants) from the resident set: most
/// of that code (spec parsing, mounts, namespaces, request handling) does not run again for a
/// long time, and what runs later faults back in from the page cache. The kernel maps file
/// pages in aligned 64 KiB windows ("fault-around", which MADV_RANDOM does not turn off on
/// recent kernels), so every function touched afterwards costs its whole window: callers run
/// this only when the shim is about to sit idle (see `server::serve`), and nothing here
/// allocates or frees after the pages are dropped, so the only code that faults back in is the
/// caller's return path. Only mappings of the binary that are not writable and hold no private
/// (copied-on-write) page are dropped, so no content can be lost: dropped pages read back
/// exactly as they were.
pub fn release_setup_code() {
    let (ranges, n) = CODE_RANGES.get_or_init(find_code_ranges);
    for &(start, end) in &ranges[..*n] {
        // SAFETY: a read-only private file mapping of our own binary with no copied-on-write
        // page; MADV_DONTNEED only drops its pages, which fault back in unchanged from the file.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// The short errno name (EPERM, ENOENT, ...) of an error when it is a known one.
pub fn errno_name(e: &io::Error) -> Option<&'static str> {
    Some(match e.raw_os_error()? {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTSUP => "ENOTSUP",
        _ => return None,
    })
}

/// Go's style of an errno message ("permission denied"), as runc and containerd print them.
pub fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let s = unsafe { CStr::from_ptr(libc::strerror(code)) }
                .to_string_lossy()
                .into_owned();
            let mut c = s.chars();
            match c.next() {
                Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
                None => s,
            }
        }
        None => e.to_string(),
    }
}
