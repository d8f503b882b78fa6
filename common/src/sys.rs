//! The raw system calls of this crate.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// struct open_how of the kernel's uapi.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// openat2(root, path, O_RDONLY|O_CLOEXEC, RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS).
pub fn openat2_in_root(root: &Path, path: &Path) -> io::Result<File> {
    open_in_root(root, path, libc::O_RDONLY | libc::O_CLOEXEC).map(File::from)
}

/// openat2(root, path, flags, RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS): `path` resolved as if
/// `root` were `/`, so no symlink in it leads out; `/proc` magic links refused.
pub fn open_in_root(root: &Path, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let root_c = cstring(root)?;
    // SAFETY: root_c is a NUL-terminated path; open returns a new descriptor or -1.
    let dirfd = unsafe { libc::open(root_c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if dirfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dirfd was just opened and is owned by nobody else.
    let dir = unsafe { OwnedFd::from_raw_fd(dirfd) };
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel_c = cstring(if rel.as_os_str().is_empty() { Path::new(".") } else { rel })?;
    let how = OpenHow { flags: flags as u64, mode: 0, resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
    use std::os::fd::AsRawFd;
    // SAFETY: the directory descriptor is open, rel_c is NUL-terminated and `how` is a live
    // open_how whose size is passed; the kernel reads them only during the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rel_c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// open(path, O_RDONLY|O_NOFOLLOW|O_CLOEXEC).
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    let c = cstring(path)?;
    // SAFETY: c is a NUL-terminated path; open returns a new descriptor or -1.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The effective uid of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
