//! Every privileged or raw system call the shim makes, as small safe wrappers returning
//! `io::Result`. This is the only module allowed to use `unsafe` (main.rs lists it); every
//! `unsafe` block says why it is sound.
//!
//! Wrappers documented as *async-signal-safe* neither allocate nor lock, so they may run in a
//! child forked from the multi-threaded daemon (exec.rs). The ones taking a `&Path` build a
//! CString and are not.

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
    s.map(|s| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))).transpose()
}

pub enum Fork {
    Parent(i32),
    Child,
}

/// fork(2). Callers must keep the child to async-signal-safe work or be single-threaded.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: fork has no memory-safety precondition of its own: the child gets a copy of this
    // thread's address space. What the child may do afterwards (only async-signal-safe calls
    // when the parent has other threads) is the caller's contract, stated above.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 { Fork::Child } else { Fork::Parent(pid) })
}

/// fork(2), but the child is the calling process's sibling: a child of its parent
/// (clone(2) with CLONE_PARENT, no new stack: as fork). The kernel refuses it to a pid
/// namespace's init. Same contract as [`fork`]; the child must not rely on libc's cached
/// thread state (it only makes raw async-signal-safe calls and execs).
pub fn fork_as_sibling() -> io::Result<Fork> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone with a null stack duplicates the calling thread as fork does (the child
    // runs on a copy-on-write copy of this stack); no pointer is passed.
    let pid = check_long(unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) })?;
    Ok(if pid == 0 { Fork::Child } else { Fork::Parent(pid as i32) })
}

/// Ends the calling process at once, without running destructors or atexit handlers.
/// Async-signal-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointer and never returns; skipping destructors and atexit
    // handlers is the point (a forked child must not run the parent's).
    unsafe { libc::_exit(code) }
}

/// Async-signal-safe.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments; only changes the calling process's session.
    check(unsafe { libc::setsid() }).map(|_| ())
}

pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(|_| ())
}

/// Async-signal-safe.
pub fn set_keepcaps(on: bool) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, on as libc::c_ulong, 0, 0, 0) }).map(|_| ())
}

/// Async-signal-safe.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(|_| ())
}

pub fn capbset_read(cap: u32) -> io::Result<bool> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    check(unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) }).map(|r| r == 1)
}

/// Async-signal-safe.
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }).map(|_| ())
}

/// Async-signal-safe.
pub fn ambient_clear() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) })
        .map(|_| ())
}

/// Async-signal-safe.
pub fn ambient_raise(cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    check(unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong, cap as libc::c_ulong, 0, 0)
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

/// capset(2) of the calling thread with 64-bit masks. Async-signal-safe.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut hdr = CapHeader { version: CAP_V3, pid: 0 };
    let data = [
        CapData { effective: effective as u32, permitted: permitted as u32, inheritable: inheritable as u32 },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: `hdr` and `data` are live repr(C) structs laid out as the kernel's
    // cap_user_header_t and two cap_user_data_t (version 3 takes two); the kernel reads `data`
    // and may write the version into `hdr`, which is mutable, during the call only.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) }).map(|_| ())
}

/// setgroups/setresgid/setresuid through the raw syscall so only the calling thread changes
/// (glibc's wrappers signal every thread to follow); the callers are single-threaded children
/// anyway. Async-signal-safe.
pub fn setgroups(gids: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe the live slice `gids`, which the kernel only
    // reads during the call.
    check_long(unsafe { libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()) }).map(|_| ())
}

/// Async-signal-safe.
pub fn setgid(gid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check_long(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(|_| ())
}

/// Async-signal-safe.
pub fn setuid(uid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check_long(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(|_| ())
}

/// Async-signal-safe.
pub fn umask(mask: u32) {
    // SAFETY: umask takes an integer and cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// Async-signal-safe.
pub fn setns(fd: RawFd, nstype: i32) -> io::Result<()> {
    // SAFETY: integer arguments only; a bad descriptor is refused by the kernel (EBADF).
    check(unsafe { libc::setns(fd, nstype) }).map(|_| ())
}

pub fn unshare(flags: i32) -> io::Result<()> {
    // SAFETY: integer argument only.
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
    // SAFETY: every pointer is null or points into a NUL-terminated CString owned by this
    // frame, alive for the whole call; mount(2) only reads them.
    check(unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            dat.as_ref().map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    })
    .map(|_| ())
}

pub fn umount_detach(target: &Path) -> io::Result<()> {
    let tgt = cstring(target)?;
    // SAFETY: `tgt` is a NUL-terminated path alive for the call.
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
    // SAFETY: both are NUL-terminated paths alive for the call; the kernel only reads them.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) }).map(|_| ())
}

/// Async-signal-safe.
pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and borrowed for the call.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(|_| ())
}

/// Async-signal-safe.
pub fn fchdir(fd: RawFd) -> io::Result<()> {
    // SAFETY: integer argument only; a bad descriptor is refused (EBADF).
    check(unsafe { libc::fchdir(fd) }).map(|_| ())
}

/// The ST_* mount flags (nosuid, nodev, noexec, ...) of the filesystem holding `path`,
/// translated to MS_* flags.
pub fn mount_flags_of(path: &Path) -> io::Result<libc::c_ulong> {
    let p = cstring(path)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `p` is NUL-terminated and `st` points to writable memory of the struct's size,
    // which the kernel fills when the call succeeds.
    check(unsafe { libc::statvfs(p.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statvfs returned 0, so `st` was filled.
    let f = unsafe { st.assume_init() }.f_flag;
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

/// The st_mode of `path` (symlinks followed). Async-signal-safe.
pub fn stat_mode(path: &CStr) -> io::Result<u32> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `path` is NUL-terminated and `st` points to writable memory of the struct's
    // size, which the kernel fills when the call succeeds.
    check(unsafe { libc::stat(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: stat returned 0, so `st` was filled.
    Ok(unsafe { st.assume_init() }.st_mode)
}

pub fn mknod(path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()> {
    let p = cstring(path)?;
    // SAFETY: `p` is a NUL-terminated path alive for the call; the rest are integers.
    check(unsafe { libc::mknod(p.as_ptr(), mode as libc::mode_t, libc::makedev(major as _, minor as _)) }).map(|_| ())
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let p = cstring(path)?;
    // SAFETY: `p` is a NUL-terminated path alive for the call.
    check(unsafe { libc::lchown(p.as_ptr(), uid, gid) }).map(|_| ())
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the live string `name` (no NUL needed: the
    // length is passed), which the kernel only reads.
    check(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) }).map(|_| ())
}

/// Async-signal-safe.
pub fn setrlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
    // SAFETY: `lim` is a live rlimit the kernel only reads.
    check(unsafe { libc::setrlimit(resource as _, &lim) }).map(|_| ())
}

/// Async-signal-safe.
pub fn getrlimit(resource: u32) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a live, writable rlimit for the kernel to fill.
    check(unsafe { libc::getrlimit(resource as _, &mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Async-signal-safe.
pub fn dup2(old: RawFd, new: RawFd) -> io::Result<()> {
    // SAFETY: integer arguments only. `new` is replaced: callers pass 0..=2 in a child about
    // to exec, where no Rust object owns those descriptors any more.
    check(unsafe { libc::dup2(old, new) }).map(|_| ())
}

/// write(2) of all of `buf`, retried on EINTR and short writes. Async-signal-safe.
pub fn write_all_raw(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: the pointer and length describe the live slice `buf`, which write only reads.
        let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Marks every fd >= `from` close-on-exec: close_range(CLOSE_RANGE_CLOEXEC) where the kernel
/// has it (5.11), else through the list of /proc/self/fd. Fails only when neither works.
/// Async-signal-safe.
pub fn cloexec_from(from: u32) -> io::Result<()> {
    // SAFETY: integer arguments only; close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let r = unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return Ok(());
    }
    cloexec_listed(from)
}

/// The fallback of [`cloexec_from`]: FD_CLOEXEC on every fd >= `from` listed in /proc/self/fd,
/// read with a raw getdents64 into a stack buffer (no allocation, no lock).
pub fn cloexec_listed(from: u32) -> io::Result<()> {
    each_listed_fd(from, &mut set_cloexec)
}

/// Calls `f` with every fd >= `from` listed in /proc/self/fd (but the listing's own), read with a
/// raw getdents64 into a stack buffer. Async-signal-safe when `f` is.
fn each_listed_fd(from: u32, f: &mut dyn FnMut(RawFd) -> io::Result<()>) -> io::Result<()> {
    // SAFETY: a NUL-terminated literal path; open returns a new descriptor or -1.
    let dir =
        check(unsafe { libc::open(c"/proc/self/fd".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
    let r = listed_entries(dir, from, f);
    // SAFETY: `dir` was opened above, is owned by this function and is closed once.
    unsafe { libc::close(dir) };
    r
}

fn listed_entries(dir: RawFd, from: u32, f: &mut dyn FnMut(RawFd) -> io::Result<()>) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for the length passed; the kernel writes at most that many
        // bytes of linux_dirent64 records into it.
        let n = check_long(unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) })? as usize;
        if n == 0 {
            return Ok(());
        }
        // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        let mut off = 0;
        while off + 19 < n {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen < 20 || off + reclen > n {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            if let Some(fd) = fd_of_name(&buf[off + 19..off + reclen]) {
                if fd >= from as u64 && fd != dir as u64 {
                    f(fd as RawFd)?;
                }
            }
            off += reclen;
        }
    }
}

/// close_range(2) of `first..=last`; false when the kernel lacks it (before 5.9).
fn close_range(first: u32, last: u32) -> bool {
    // SAFETY: integer arguments only; the caller owns every descriptor in the range (see
    // close_all_except), none of which is used again.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) == 0 }
}

/// Closes a descriptor that no Rust object owns (or whose owner never runs again, in a forked
/// child). Errors are ignored. Async-signal-safe.
pub fn close(fd: RawFd) {
    // SAFETY: integer argument only; the caller guarantees nothing uses `fd` afterwards.
    unsafe { libc::close(fd) };
}

/// Closes every descriptor >= 3 but those in `keep` (sorted ascending): close_range(2) over the
/// gaps, else (before Linux 5.9) each one listed in /proc/self/fd. For a child forked from the
/// multi-threaded daemon, so that it holds no descriptor another thread opened (another
/// session's stdin writer, a connection): its Rust owners never run again in the child.
/// Async-signal-safe.
pub fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    let mut low: u32 = 3;
    let mut ranges_closed = true;
    for &k in keep {
        let Ok(k) = u32::try_from(k) else { continue };
        if k < low {
            continue;
        }
        if k > low && !close_range(low, k - 1) {
            ranges_closed = false;
            break;
        }
        low = k + 1;
    }
    if ranges_closed && close_range(low, u32::MAX) {
        return Ok(());
    }
    each_listed_fd(3, &mut |fd| {
        if keep.binary_search(&fd).is_err() {
            close(fd);
        }
        Ok(())
    })
}

/// The number a /proc/self/fd entry is named after (its name is NUL-terminated and padded).
fn fd_of_name(name: &[u8]) -> Option<u64> {
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let digits = &name[..end];
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: integer arguments only; fcntl(F_GETFD) reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        let e = io::Error::last_os_error();
        // Closed since it was listed (the listing's own descriptor is skipped by the caller).
        return if e.raw_os_error() == Some(libc::EBADF) { Ok(()) } else { Err(e) };
    }
    // SAFETY: integer arguments only; F_SETFD only changes the descriptor's flags.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) }).map(|_| ())
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only; the result is a new descriptor or -1.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: `pidfd` is an open descriptor borrowed for the call; a null siginfo is allowed.
    check_long(unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0)
    })
    .map(|_| ())
}

/// waitpid(2); `Ok(None)` when WNOHANG found nothing. Async-signal-safe.
pub fn waitpid(pid: i32, nohang: bool) -> io::Result<Option<(i32, i32)>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live, writable int for the kernel to fill.
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
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initializes the whole set it is given; sigaddset then only writes
    // to that initialized set (an invalid signal number is refused with EINVAL).
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for s in sigs {
            libc::sigaddset(set.as_mut_ptr(), *s);
        }
        set.assume_init()
    }
}

/// Blocks the signals in the calling thread (inherited by threads spawned later).
pub fn block_signals(sigs: &[i32]) -> io::Result<()> {
    let set = sigset_of(sigs);
    // SAFETY: `set` is an initialized sigset the call only reads; a null old-set is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Unblocks every signal and puts every disposition back to the default (before exec).
/// Async-signal-safe.
pub fn reset_signals() {
    let empty = sigset_of(&[]);
    // SAFETY: `empty` is an initialized sigset read by the call. SIG_DFL is a valid handler for
    // every signal but SIGKILL and SIGSTOP, which are skipped; no Rust code relies on a handler
    // in the process that is about to exec.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
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
    let ts = libc::timespec { tv_sec: (timeout_ms / 1000) as _, tv_nsec: ((timeout_ms % 1000) * 1_000_000) as _ };
    // SAFETY: `set` and `ts` are live and only read; a null siginfo is allowed.
    let r = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    if r < 0 {
        None
    } else {
        Some(r)
    }
}

/// poll(2) for input over `fds`; returns revents per fd. EINTR counts as no event.
pub fn poll(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<i16>> {
    poll_for(fds, libc::POLLIN, timeout_ms)
}

/// poll(2) for `events` over `fds` (POLLPRI: a cgroup file's change); returns revents per fd.
/// EINTR counts as no event.
pub fn poll_for(fds: &[RawFd], events: i16, timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut pfds: Vec<libc::pollfd> = fds.iter().map(|&fd| libc::pollfd { fd, events, revents: 0 }).collect();
    // SAFETY: the pointer and count describe the live vector `pfds`, which the kernel reads
    // and writes (revents) during the call only.
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
    // SAFETY: integer flags only; the result is a new descriptor or -1.
    let master = check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: posix_openpt just returned this descriptor; nothing else owns it.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: `master` is an open pty master for both calls; no memory is passed.
    check(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: as above.
    check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: `buf` is writable for the length passed; ptsname_r NUL-terminates within it.
    let r = unsafe { libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: ptsname_r succeeded, so `buf` holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    // SAFETY: `name` is NUL-terminated and alive for the call.
    let slave = check(unsafe { libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: open just returned this descriptor; nothing else owns it.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// A new pseudo-terminal of the devpts instance mounted in a container, whose root is `root`
/// (`/proc/<pid>/root`): `dev/ptmx` opened with openat2(RESOLVE_IN_ROOT), so no symlink the
/// container made leads out of its root, non-blocking (a FIFO or device put there in its stead
/// cannot hang the open) and refused unless it is the ptmx device (5:2). The slave is opened
/// from the master (TIOCGPTPEER), not by a path the container controls, so inside the
/// container it is its own `/dev/pts/N`. Returns (master, slave), both close-on-exec.
pub fn openpty_in(root: &Path) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
    let master = common::path::open_in_root_with(root, Path::new("dev/ptmx"), flags)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `master` is open and `st` points to writable memory of the struct's size, which
    // the kernel fills when the call succeeds.
    check(unsafe { libc::fstat(master.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat returned 0, so `st` was filled.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || libc::major(st.st_rdev) != 5 || libc::minor(st.st_rdev) != 2 {
        return Err(io::Error::from_raw_os_error(libc::ENOTTY));
    }
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int, `unlock`, alive for the call.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: integer arguments only; F_GETFL reads the file status flags.
    let flags = check(unsafe { libc::fcntl(master.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: integer arguments only; F_SETFL only changes the file status flags.
    check(unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    // SAFETY: TIOCGPTPEER takes the open flags as an integer and returns a new descriptor.
    let slave = check(unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
    })?;
    // SAFETY: the ioctl just returned this descriptor; nothing else owns it.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// fchown(2) of `fd` to `uid`, its group kept. Async-signal-safe.
pub fn fchown_user(fd: RawFd, uid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only; a gid of -1 leaves the group unchanged.
    check(unsafe { libc::fchown(fd, uid, libc::gid_t::MAX) }).map(|_| ())
}

/// The foreground process group of the terminal `fd` (on a pty master: of its slave), as a pid
/// of the caller's namespace.
pub fn foreground_pgrp(fd: RawFd) -> io::Result<i32> {
    let mut pgrp: libc::pid_t = 0;
    // SAFETY: TIOCGPGRP writes one pid_t into `pgrp`, live and writable for the call.
    check(unsafe { libc::ioctl(fd, libc::TIOCGPGRP, &mut pgrp) })?;
    Ok(pgrp)
}

/// A new eventfd (counter 0), non-blocking and close-on-exec.
pub fn eventfd() -> io::Result<std::fs::File> {
    // SAFETY: integer arguments only; the result is a new descriptor or -1.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: eventfd just returned this descriptor; nothing else owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Writes `data` to the existing file `path` (opened without creating, closed after).
/// Async-signal-safe.
pub fn write_file(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and alive for the call; open returns a new descriptor
    // or -1.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    let r = write_all_raw(fd, data);
    close(fd);
    r
}

/// Makes `fd` (a terminal) the controlling terminal of the calling session leader.
pub fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument; no memory is passed.
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(|_| ())
}

/// A NULL-terminated array of C strings (argv, envp) built before a fork, so that
/// [`execve`] needs no allocation.
pub struct CStrArray {
    /// Owns the strings `ptrs` points into (their heap buffers do not move with the Vec).
    _strings: Vec<CString>,
    ptrs: Vec<*const libc::c_char>,
}

impl CStrArray {
    pub fn new(strings: Vec<CString>) -> CStrArray {
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        CStrArray { _strings: strings, ptrs }
    }
}

/// execve(2); returns only on failure. Async-signal-safe.
pub fn execve(path: &CStr, argv: &CStrArray, envp: &CStrArray) -> io::Error {
    // SAFETY: `path` is NUL-terminated; both arrays are NULL-terminated and point into
    // NUL-terminated strings they own, all alive (borrowed) for the call.
    unsafe { libc::execve(path.as_ptr(), argv.ptrs.as_ptr(), envp.ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// Limits glibc to one malloc arena (threads otherwise each get one, inflating RSS).
pub fn malloc_tune() {
    // SAFETY: mallopt takes integers; M_ARENA_MAX is a valid parameter.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Gives freed heap memory back to the kernel.
pub fn malloc_trim() {
    // SAFETY: malloc_trim takes an integer and only releases free heap memory.
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
                (Ok(s), Ok(e)) if !perms.contains('w') && perms.ends_with('p') && Path::new(path) == exe => {
                    Some((s, e))
                }
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
/// Uses the thread-safe (XSI) strerror_r: strerror may share one buffer between threads.
pub fn errno_text(e: &io::Error) -> String {
    let Some(code) = e.raw_os_error() else {
        return e.to_string();
    };
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: `buf` is writable for the length passed; the XSI strerror_r writes a
    // NUL-terminated message into it (or nothing) and uses no shared buffer.
    let r = unsafe { libc::strerror_r(code, buf.as_mut_ptr(), buf.len()) };
    let s = if r == 0 || buf[0] != 0 {
        // Glibc fills the buffer with "Unknown error N" even when it returns EINVAL; the last
        // byte is forced to NUL so the read below stays inside the buffer whatever happened.
        buf[buf.len() - 1] = 0;
        // SAFETY: `buf` holds a NUL-terminated string (its last byte at the latest).
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    } else {
        format!("Unknown error {code}")
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_texts_are_lowercase_and_thread_safe() {
        let text = |code| errno_text(&io::Error::from_raw_os_error(code));
        assert_eq!(text(libc::EACCES), "permission denied");
        assert_eq!(text(libc::ENOENT), "no such file or directory");
        assert_eq!(text(9999), "unknown error 9999");
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..200).all(|_| text(libc::EPERM) == "operation not permitted")))
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
    }

    #[test]
    fn proc_fd_fallback_marks_descriptors_close_on_exec() {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a writable array of two ints for pipe(2) to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the pipe's descriptors are owned here from now on and closed on drop.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let cloexec = |fd: &OwnedFd| {
            // SAFETY: F_GETFD on an open descriptor takes no memory.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            flags & libc::FD_CLOEXEC != 0
        };
        assert!(!cloexec(&r) && !cloexec(&w));
        let from = r.as_raw_fd().min(w.as_raw_fd()) as u32;
        cloexec_listed(from).unwrap();
        assert!(cloexec(&r) && cloexec(&w));
        assert_eq!(fd_of_name(b"12\0\0\0"), Some(12));
        assert_eq!(fd_of_name(b".\0"), None);
        assert_eq!(fd_of_name(b"..\0"), None);
    }
}
