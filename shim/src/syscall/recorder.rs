//! The test double of [`Syscall`]: records every call with its arguments, in order, as one line
//! each (`mount(-, T/rootfs, -, BIND|REC, -)`), touches nothing, and fails the calls it is told
//! to. Tests only: it never reaches the shim binary.

use std::cell::RefCell;
use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::Syscall;

/// Records calls; see the module doc.
#[derive(Default)]
pub struct Recorder {
    calls: RefCell<Vec<String>>,
    /// (line prefix, errno): the first call whose line starts with the prefix fails, once.
    failures: RefCell<Vec<(String, i32)>>,
    /// What `mount_flags_of` answers (not recorded: it only reads).
    pub mount_flags: libc::c_ulong,
    /// Shown as `T` in the recorded paths.
    root: Option<PathBuf>,
}

const MS_NAMES: [(libc::c_ulong, &str); 19] = [
    (libc::MS_RDONLY, "RDONLY"),
    (libc::MS_NOSUID, "NOSUID"),
    (libc::MS_NODEV, "NODEV"),
    (libc::MS_NOEXEC, "NOEXEC"),
    (libc::MS_SYNCHRONOUS, "SYNCHRONOUS"),
    (libc::MS_REMOUNT, "REMOUNT"),
    (libc::MS_MANDLOCK, "MANDLOCK"),
    (libc::MS_DIRSYNC, "DIRSYNC"),
    (libc::MS_NOATIME, "NOATIME"),
    (libc::MS_NODIRATIME, "NODIRATIME"),
    (libc::MS_BIND, "BIND"),
    (libc::MS_MOVE, "MOVE"),
    (libc::MS_REC, "REC"),
    (libc::MS_UNBINDABLE, "UNBINDABLE"),
    (libc::MS_PRIVATE, "PRIVATE"),
    (libc::MS_SLAVE, "SLAVE"),
    (libc::MS_SHARED, "SHARED"),
    (libc::MS_RELATIME, "RELATIME"),
    (libc::MS_STRICTATIME, "STRICTATIME"),
];

const NS_NAMES: [(i32, &str); 6] = [
    (libc::CLONE_NEWNS, "NEWNS"),
    (libc::CLONE_NEWCGROUP, "NEWCGROUP"),
    (libc::CLONE_NEWUTS, "NEWUTS"),
    (libc::CLONE_NEWIPC, "NEWIPC"),
    (libc::CLONE_NEWPID, "NEWPID"),
    (libc::CLONE_NEWNET, "NEWNET"),
];

/// `BIND|REC`, `0` for none, unknown bits in hex.
pub fn ms_flags(flags: libc::c_ulong) -> String {
    flag_names(flags, MS_NAMES.iter().copied())
}

/// `NEWNS|NEWPID`.
pub fn ns_flags(flags: i32) -> String {
    let bits = |f: i32| f as u32 as libc::c_ulong;
    flag_names(bits(flags), NS_NAMES.iter().map(|&(f, n)| (bits(f), n)))
}

fn flag_names(mut flags: libc::c_ulong, names: impl Iterator<Item = (libc::c_ulong, &'static str)>) -> String {
    let mut out: Vec<String> = Vec::new();
    for (f, n) in names {
        if flags & f == f && f != 0 {
            out.push(n.into());
            flags &= !f;
        }
    }
    if flags != 0 {
        out.push(format!("{flags:#x}"));
    }
    if out.is_empty() {
        "0".into()
    } else {
        out.join("|")
    }
}

impl Recorder {
    /// A recorder showing paths under `root` (canonicalized) as `T/...`.
    pub fn under(root: &Path) -> Recorder {
        Recorder { root: Some(root.canonicalize().unwrap_or_else(|_| root.to_path_buf())), ..Recorder::default() }
    }

    /// Makes the first call whose line starts with `prefix` fail with `errno` (once).
    pub fn fail(&self, prefix: &str, errno: i32) {
        self.failures.borrow_mut().push((prefix.to_string(), errno));
    }

    /// The calls so far, one line each.
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    /// The calls so far whose line starts with one of `prefixes`.
    pub fn calls_of(&self, prefixes: &[&str]) -> Vec<String> {
        self.calls.borrow().iter().filter(|c| prefixes.iter().any(|p| c.starts_with(p))).cloned().collect()
    }

    fn path(&self, p: &Path) -> String {
        if let Some(root) = &self.root {
            if let Ok(rest) = p.strip_prefix(root) {
                return Path::new("T").join(rest).display().to_string();
            }
        }
        p.display().to_string()
    }

    fn fd(&self, fd: RawFd) -> String {
        match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
            Ok(p) => self.path(&p),
            Err(_) => format!("fd {fd}"),
        }
    }

    fn record(&self, line: String) -> io::Result<()> {
        let failure = {
            let mut failures = self.failures.borrow_mut();
            let i = failures.iter().position(|(p, _)| line.starts_with(p.as_str()));
            i.map(|i| failures.remove(i).1)
        };
        self.calls.borrow_mut().push(line);
        match failure {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

fn cap(n: u32) -> String {
    common::caps::name(n)
}

impl Syscall for Recorder {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.record(format!(
            "mount({}, {}, {}, {}, {})",
            source.map_or("-".into(), |s| self.path(s)),
            self.path(target),
            fstype.unwrap_or("-"),
            ms_flags(flags),
            data.unwrap_or("-")
        ))
    }

    fn umount_detach(&self, target: &Path) -> io::Result<()> {
        self.record(format!("umount_detach({})", self.path(target)))
    }

    fn mount_setattr_recursive(&self, path: &Path, attr_set: u64) -> io::Result<()> {
        let attr =
            if attr_set == crate::sys::MOUNT_ATTR_RDONLY { "RDONLY".to_string() } else { format!("{attr_set:#x}") };
        self.record(format!("mount_setattr_recursive({}, {attr})", self.path(path)))
    }

    fn mount_flags_of(&self, _path: &Path) -> io::Result<libc::c_ulong> {
        Ok(self.mount_flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.record(format!("pivot_root({}, {})", self.path(new_root), self.path(put_old)))
    }

    fn chdir(&self, path: &CStr) -> io::Result<()> {
        self.record(format!("chdir({})", path.to_string_lossy()))
    }

    fn fchdir(&self, fd: RawFd) -> io::Result<()> {
        self.record(format!("fchdir({})", self.fd(fd)))
    }

    fn setns(&self, fd: RawFd, nstype: i32) -> io::Result<()> {
        self.record(format!("setns({}, {})", self.fd(fd), ns_flags(nstype)))
    }

    fn unshare(&self, flags: i32) -> io::Result<()> {
        self.record(format!("unshare({})", ns_flags(flags)))
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(format!("sethostname({name})"))
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.record(format!("mkdir_all({})", self.path(path)))
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        self.record(format!("create_file({})", self.path(path)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.record(format!("remove_file({})", self.path(path)))
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.record(format!("symlink({}, {})", target.display(), self.path(link)))
    }

    fn mknod(&self, path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()> {
        self.record(format!("mknod({}, {mode:#o}, {major}, {minor})", self.path(path)))
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(format!("chmod({}, {mode:#o})", self.path(path)))
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.record(format!("lchown({}, {uid}, {gid})", self.path(path)))
    }

    fn setgroups(&self, gids: &[u32]) -> io::Result<()> {
        self.record(format!("setgroups({gids:?})"))
    }

    fn setgid(&self, gid: u32) -> io::Result<()> {
        self.record(format!("setgid({gid})"))
    }

    fn setuid(&self, uid: u32) -> io::Result<()> {
        self.record(format!("setuid({uid})"))
    }

    fn set_keepcaps(&self, on: bool) -> io::Result<()> {
        self.record(format!("set_keepcaps({on})"))
    }

    fn capbset_drop(&self, c: u32) -> io::Result<()> {
        self.record(format!("capbset_drop({})", cap(c)))
    }

    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        self.record(format!("capset(e={effective:#x}, p={permitted:#x}, i={inheritable:#x})"))
    }

    fn ambient_clear(&self) -> io::Result<()> {
        self.record("ambient_clear()".into())
    }

    fn ambient_raise(&self, c: u32) -> io::Result<()> {
        self.record(format!("ambient_raise({})", cap(c)))
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        self.record("set_no_new_privs()".into())
    }

    fn umask(&self, mask: u32) {
        let _ = self.record(format!("umask({mask:#o})"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_and_fails_on_request() {
        let r = Recorder::default();
        r.fail("setuid(", libc::EPERM);
        assert!(r.setgid(5).is_ok());
        assert_eq!(r.setuid(7).unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert!(r.setuid(7).is_ok(), "a failure is used once");
        r.mount(None, Path::new("/x"), None, libc::MS_BIND | libc::MS_REC | 0x8000_0000, None).unwrap();
        assert_eq!(r.calls(), vec!["setgid(5)", "setuid(7)", "setuid(7)", "mount(-, /x, -, BIND|REC|0x80000000, -)"]);
        assert_eq!(ns_flags(libc::CLONE_NEWNS | libc::CLONE_NEWPID), "NEWNS|NEWPID");
        assert_eq!(ms_flags(0), "0");
    }
}
