//! The few privileged system calls corrald makes itself (the shim makes the rest): mounts,
//! namespaces, hostname, loopback. Each is a small safe wrapper returning io::Result.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2). `fstype` and `data` may be empty.
pub fn mount(source: &str, target: &Path, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    let src = CString::new(source).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let tgt = cstr(target)?;
    let fs = CString::new(fstype).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let dat = CString::new(data).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call; a
    // null fstype/data is passed where empty.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            if fstype.is_empty() { std::ptr::null() } else { fs.as_ptr() },
            flags,
            if data.is_empty() { std::ptr::null() } else { dat.as_ptr().cast() },
        )
    })
}

/// Detaches the mount at `target`; a path that is not a mount point (or is gone) is not an error.
pub fn unmount(target: &Path) -> io::Result<()> {
    let tgt = cstr(target)?;
    // SAFETY: tgt is a valid NUL-terminated string.
    match check(unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) }) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Whether `path` is a mount point (per /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.as_os_str().as_bytes();
    info.lines().any(|line| line.split(' ').nth(4).is_some_and(|p| unescape_mountinfo(p).as_bytes() == want))
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// unshare(2) for the calling thread.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions.
    check(unsafe { libc::unshare(flags) })
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// Sets the loopback interface of the calling thread's network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = (|| {
        // SAFETY: ifreq is plain old data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        // SAFETY: fd is a valid socket and req a valid ifreq for these ioctls.
        check(unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) })?;
        // SAFETY: reading and writing the flags member of the union this ioctl filled.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above.
        check(unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) })
    })();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    result
}

pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, signal) })
}

/// Whether the kernel has mount_setattr(2) (Linux 5.12+), which recursive read-only mounts
/// need: a call with a bad fd fails with EBADF where it exists and ENOSYS where it does not.
pub fn has_mount_setattr() -> bool {
    // SAFETY: the path is a static NUL-terminated string and the attribute pointer is null with
    // size 0; the kernel rejects the bad fd before reading either.
    let rc = unsafe { libc::syscall(libc::SYS_mount_setattr, -1, c"".as_ptr(), 0, std::ptr::null::<u8>(), 0usize) };
    !(rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

/// pidfd_open(2): a descriptor that becomes readable when the process `pid` exits (Linux 5.3).
pub fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits for the process `pid` (not necessarily a child) to exit, through its pidfd.
pub async fn process_exit(pid: u32) -> io::Result<()> {
    let fd = pidfd_open(pid)?;
    // SAFETY: the descriptor is owned by the value handed over and stays open, referring to the
    // same pidfd, until the AsyncFd (which owns it) is dropped.
    let watched = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let _ready = watched.readable().await?;
    Ok(())
}

/// Whether `path` is a namespace file (nsfs), e.g. a still-pinned netns; false for the empty
/// file left when the pin is gone.
pub fn is_nsfs(path: &Path) -> bool {
    const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
    let Ok(p) = cstr(path) else { return false };
    // SAFETY: statfs is plain old data; zeroed is a valid value to be filled in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: p is a valid NUL-terminated string and st a valid out pointer.
    let rc = unsafe { libc::statfs(p.as_ptr(), &mut st) };
    rc == 0 && st.f_type as libc::c_long == NSFS_MAGIC
}

pub fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::mknod(p.as_ptr(), mode, dev) })
}

/// chown without following a final symlink.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::lchown(p.as_ptr(), uid, gid) })
}

/// setxattr, or lsetxattr with `nofollow`.
pub fn set_xattr(path: &Path, name: &str, value: &[u8], nofollow: bool) -> io::Result<()> {
    let p = cstr(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both strings are valid and NUL-terminated; value points to value.len() bytes.
    let rc = unsafe {
        if nofollow {
            libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        } else {
            libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        }
    };
    check(rc)
}

/// Sets atime and mtime, not following a final symlink.
pub fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let p = cstr(path)?;
    let t = libc::timespec { tv_sec: mtime as libc::time_t, tv_nsec: 0 };
    let times = [t, t];
    // SAFETY: p is valid and NUL-terminated; times points to two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

/// Sets O_NONBLOCK on `fd` (for descriptors only corrald uses: the flag belongs to the open
/// file description, which a dup in another process shares).
pub fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor that `fd` keeps open; F_GETFL/F_SETFL take integers only.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })
}

/// Sets the window size of the terminal whose pty master (or slave) is `fd` (TIOCSWINSZ); the
/// kernel sends SIGWINCH to its foreground process group.
pub fn set_window_size(fd: std::os::fd::BorrowedFd<'_>, width: u16, height: u16) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let size = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points at `size`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) })
}

/// Moves the calling thread into the network namespace `ns` (a /proc/<pid>/ns/net or pinned
/// netns file). Only for a thread that is discarded afterwards.
pub fn enter_netns(ns: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns takes a descriptor that `ns` keeps open and a flag.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })
}

/// poll(2) for one descriptor: whether `events` came within `timeout_ms` (-1: no limit).
pub fn poll_one(fd: std::os::fd::BorrowedFd<'_>, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
    loop {
        // SAFETY: one pollfd, pointed at by `p`, alive for the call.
        let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `fd` (non-blocking already) registered with tokio's reactor, as a File.
pub fn async_file(fd: std::os::fd::OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<std::fs::File>> {
    // SAFETY: the AsyncFd owns the File, which owns the descriptor: it stays open and refers to
    // the same file until the AsyncFd is dropped, which deregisters it first.
    unsafe { tokio::io::unix::AsyncFd::register(std::fs::File::from(fd)) }.map_err(|e| e.into_parts().1)
}
