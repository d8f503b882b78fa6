//! The seam between container setup and the kernel: every privileged call of setup (mounts,
//! namespaces, the files setup creates in the rootfs, identity and capabilities) goes through
//! [`Syscall`], so the setup code can be run against [`recorder::Recorder`] in unit tests
//! without root. [`Linux`] is the real thing; it delegates to `sys`, the only module that makes
//! raw calls.
//!
//! The identity calls (setgroups to umask, chdir) of [`Linux`] are async-signal-safe: they run
//! in a child forked from the multi-threaded daemon (exec.rs). The calls taking a `&Path` build
//! a CString and run only where allocating is allowed.

#[cfg(test)]
pub mod recorder;

use std::ffi::CStr;
use std::fs;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::sys;

/// The privileged calls of container setup.
pub trait Syscall {
    // Mounts.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// umount2(MNT_DETACH).
    fn umount_detach(&self, target: &Path) -> io::Result<()>;
    /// mount_setattr(AT_RECURSIVE) setting `attr_set` (MOUNT_ATTR_*).
    fn mount_setattr_recursive(&self, path: &Path, attr_set: u64) -> io::Result<()>;
    /// The MS_* flags (nosuid, nodev, ...) of the mount holding `path`, kept on remounts.
    fn mount_flags_of(&self, path: &Path) -> io::Result<libc::c_ulong>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    fn chdir(&self, path: &CStr) -> io::Result<()>;
    fn fchdir(&self, fd: RawFd) -> io::Result<()>;

    // Namespaces.
    fn setns(&self, fd: RawFd, nstype: i32) -> io::Result<()>;
    fn unshare(&self, flags: i32) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;

    // What setup creates in the rootfs.
    /// Creates a directory and its missing parents, mode 0755.
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates an empty file (a mount target).
    fn create_file(&self, path: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    fn mknod(&self, path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()>;
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()>;
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;

    // Identity and capabilities.
    fn setgroups(&self, gids: &[u32]) -> io::Result<()>;
    fn setgid(&self, gid: u32) -> io::Result<()>;
    fn setuid(&self, uid: u32) -> io::Result<()>;
    /// prctl(PR_SET_KEEPCAPS).
    fn set_keepcaps(&self, on: bool) -> io::Result<()>;
    /// prctl(PR_CAPBSET_DROP).
    fn capbset_drop(&self, cap: u32) -> io::Result<()>;
    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()>;
    /// prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL).
    fn ambient_clear(&self) -> io::Result<()>;
    /// prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE).
    fn ambient_raise(&self, cap: u32) -> io::Result<()>;
    /// prctl(PR_SET_NO_NEW_PRIVS).
    fn set_no_new_privs(&self) -> io::Result<()>;
    fn umask(&self, mask: u32);
}

/// The kernel.
pub struct Linux;

impl Syscall for Linux {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        sys::mount(source, target, fstype, flags, data)
    }

    fn umount_detach(&self, target: &Path) -> io::Result<()> {
        sys::umount_detach(target)
    }

    fn mount_setattr_recursive(&self, path: &Path, attr_set: u64) -> io::Result<()> {
        sys::mount_setattr_recursive(path, attr_set)
    }

    fn mount_flags_of(&self, path: &Path) -> io::Result<libc::c_ulong> {
        sys::mount_flags_of(path)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        sys::pivot_root(new_root, put_old)
    }

    fn chdir(&self, path: &CStr) -> io::Result<()> {
        sys::chdir(path)
    }

    fn fchdir(&self, fd: RawFd) -> io::Result<()> {
        sys::fchdir(fd)
    }

    fn setns(&self, fd: RawFd, nstype: i32) -> io::Result<()> {
        sys::setns(fd, nstype)
    }

    fn unshare(&self, flags: i32) -> io::Result<()> {
        sys::unshare(flags)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        sys::sethostname(name)
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o755).create(path)
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        fs::File::create(path).map(drop)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn mknod(&self, path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()> {
        sys::mknod(path, mode, major, minor)
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        sys::lchown(path, uid, gid)
    }

    fn setgroups(&self, gids: &[u32]) -> io::Result<()> {
        sys::setgroups(gids)
    }

    fn setgid(&self, gid: u32) -> io::Result<()> {
        sys::setgid(gid)
    }

    fn setuid(&self, uid: u32) -> io::Result<()> {
        sys::setuid(uid)
    }

    fn set_keepcaps(&self, on: bool) -> io::Result<()> {
        sys::set_keepcaps(on)
    }

    fn capbset_drop(&self, cap: u32) -> io::Result<()> {
        sys::capbset_drop(cap)
    }

    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        sys::capset(effective, permitted, inheritable)
    }

    fn ambient_clear(&self) -> io::Result<()> {
        sys::ambient_clear()
    }

    fn ambient_raise(&self, cap: u32) -> io::Result<()> {
        sys::ambient_raise(cap)
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        sys::set_no_new_privs()
    }

    fn umask(&self, mask: u32) {
        sys::umask(mask)
    }
}
