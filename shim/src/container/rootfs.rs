//! The container's filesystem view: rootfs propagation and self-bind, spec mounts, device
//! nodes, pivot_root, masked and read-only paths.

use std::ffi::CStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

use common::path::Missing;

use super::cgroup::Cgroup;
use super::spec::{DevicePlan, MountPlan, Plan};
use crate::error::{Context, Result};
use crate::sys::MOUNT_ATTR_RDONLY;
use crate::syscall::Syscall;

/// Joins `path` under `root`, resolving symlinks as if `root` were `/`, so the result never
/// leaves `root`; missing components are kept (common::path::secure_join with Missing::Keep).
/// Common's version treats what follows a missing component lexically, `..` included, so a
/// `..` can climb back into existing directories without their symlinks being resolved: such a
/// result is joined once more, which resolves them (it has no `..` left).
pub fn secure_join(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let joined = common::path::secure_join(root, path, Missing::Keep)?;
    if !path.components().any(|c| c == Component::ParentDir) {
        return Ok(joined);
    }
    let rel = joined.strip_prefix(root).unwrap_or(&joined).to_path_buf();
    common::path::secure_join(root, &rel, Missing::Keep)
}

fn mkdir_all(sys: &dyn Syscall, p: &Path) -> Result<()> {
    sys.mkdir_all(p).ctx(|| format!("creating directory {}", p.display()))
}

/// Creates a mount target: a file when the source is a file, else a directory.
fn create_target(sys: &dyn Syscall, target: &Path, file: bool) -> Result<()> {
    if file {
        if let Some(parent) = target.parent() {
            mkdir_all(sys, parent)?;
        }
        if fs::symlink_metadata(target).is_err() {
            sys.create_file(target).ctx(|| format!("creating mount target {}", target.display()))?;
        }
        Ok(())
    } else {
        mkdir_all(sys, target)
    }
}

fn mount_ctx(typ: &str, what: &Path, dest: &Path) -> impl FnOnce() -> String {
    let (t, w, d) = (typ.to_string(), what.display().to_string(), dest.display().to_string());
    move || format!("mounting {t} {w} at {d}")
}

/// The container's filesystem view, in order: propagation and the rootfs self-bind, the spec
/// mounts, device nodes, the cwd, pivot_root, sysctls, read-only paths, masked paths, and the
/// read-only root.
pub fn setup(sys: &dyn Syscall, plan: &Plan, cgroup: Option<&Cgroup>) -> Result<()> {
    prepare(sys, plan)?;
    mount_all(sys, plan, cgroup)?;
    create_devices(sys, plan)?;
    create_cwd(sys, plan)?;
    pivot_root(sys, &plan.rootfs)?;
    apply_sysctls(&plan.sysctl)?;
    for path in &plan.readonly_paths {
        readonly_path(sys, path)?;
    }
    for path in &plan.masked_paths {
        mask_path(sys, path)?;
    }
    if plan.root_readonly {
        readonly_root(sys)?;
    }
    Ok(())
}

/// Makes the mount tree a slave (or as asked) of the host and binds the rootfs onto itself.
pub fn prepare(sys: &dyn Syscall, plan: &Plan) -> Result<()> {
    sys.mount(None, Path::new("/"), None, plan.rootfs_propagation, None)
        .ctx(|| "setting the propagation of / in the container mount namespace".into())?;
    // pivot_root refuses a shared parent of the new root, which "/" made rshared (for
    // bidirectional mounts) would give it: make the rootfs mount itself private, as runc does
    // for the rootfs' parent mount. EINVAL: the rootfs is not a mount point, nothing to do.
    match sys.mount(None, &plan.rootfs, None, libc::MS_PRIVATE, None) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        other => other.ctx(|| format!("making the rootfs {} private", plan.rootfs.display()))?,
    }
    sys.mount(Some(&plan.rootfs), &plan.rootfs, None, libc::MS_BIND | libc::MS_REC, None)
        .ctx(|| format!("bind-mounting the rootfs {} onto itself", plan.rootfs.display()))?;
    Ok(())
}

/// Mounts every spec mount inside the rootfs.
pub fn mount_all(sys: &dyn Syscall, plan: &Plan, cgroup: Option<&Cgroup>) -> Result<()> {
    for m in &plan.mounts {
        let dest = secure_join(&plan.rootfs, &m.destination)
            .ctx(|| format!("resolving mount destination {}", m.destination.display()))?;
        let shown = &m.destination;
        let source = m.source.clone().unwrap_or_else(|| PathBuf::from(&m.typ));
        if m.opts.bind {
            let is_file =
                fs::metadata(&source).map(|md| !md.is_dir()).ctx(|| format!("bind source {}", source.display()))?;
            create_target(sys, &dest, is_file)?;
            let rec = if m.opts.recursive { libc::MS_REC } else { 0 };
            sys.mount(Some(&source), &dest, None, libc::MS_BIND | rec, None).ctx(mount_ctx("bind", &source, shown))?;
            if m.opts.flags != 0 {
                let keep = sys.mount_flags_of(&dest).unwrap_or(0);
                let flags = libc::MS_BIND | libc::MS_REMOUNT | rec | m.opts.flags | keep;
                sys.mount(None, &dest, None, flags, None)
                    .ctx(|| format!("remounting bind mount {}", shown.display()))?;
            }
            if m.opts.recursive_readonly {
                sys.mount_setattr_recursive(&dest, MOUNT_ATTR_RDONLY)
                    .ctx(|| format!("making {} read-only recursively", shown.display()))?;
            }
        } else if m.typ == "cgroup" || m.typ == "cgroup2" {
            create_target(sys, &dest, false)?;
            mount_cgroup(sys, &dest, shown, m, cgroup)?;
        } else {
            create_target(sys, &dest, false)?;
            let data = (!m.opts.data.is_empty()).then_some(m.opts.data.as_str());
            sys.mount(Some(&source), &dest, Some(&m.typ), m.opts.flags, data).ctx(mount_ctx(&m.typ, &source, shown))?;
        }
        for &p in &m.opts.propagation {
            sys.mount(None, &dest, None, p, None).ctx(|| format!("setting propagation of {}", shown.display()))?;
        }
    }
    Ok(())
}

/// The cgroup filesystem: v2 mounts cgroup2; v1 a tmpfs holding a bind of the container's
/// cgroup dir per hierarchy, then read-only.
fn mount_cgroup(sys: &dyn Syscall, dest: &Path, shown: &Path, m: &MountPlan, cgroup: Option<&Cgroup>) -> Result<()> {
    let ro = m.opts.flags & libc::MS_RDONLY;
    let base = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    match cgroup {
        Some(Cgroup::V1 { dirs, .. }) => {
            sys.mount(Some(Path::new("tmpfs")), dest, Some("tmpfs"), base, Some("mode=755")).ctx(mount_ctx(
                "tmpfs",
                Path::new("tmpfs"),
                shown,
            ))?;
            for d in dirs {
                let sub = dest.join(&d.name);
                mkdir_all(sys, &sub)?;
                sys.mount(Some(&d.path), &sub, None, libc::MS_BIND, None).ctx(mount_ctx("bind", &d.path, &sub))?;
                sys.mount(None, &sub, None, libc::MS_BIND | libc::MS_REMOUNT | base | ro, None)
                    .ctx(|| format!("remounting {}", sub.display()))?;
            }
            if ro != 0 {
                sys.mount(None, dest, None, libc::MS_REMOUNT | base | ro, Some("mode=755"))
                    .ctx(|| format!("remounting {} read-only", shown.display()))?;
            }
            Ok(())
        }
        _ => sys.mount(Some(Path::new("cgroup2")), dest, Some("cgroup2"), base | ro, None).ctx(mount_ctx(
            "cgroup2",
            Path::new("cgroup2"),
            shown,
        )),
    }
}

/// Creates the device nodes (bind-mounting the host's node where mknod is refused) and the
/// standard /dev symlinks.
pub fn create_devices(sys: &dyn Syscall, plan: &Plan) -> Result<()> {
    for d in &plan.devices {
        create_device(sys, &plan.rootfs, d)?;
    }
    let dev = secure_join(&plan.rootfs, Path::new("/dev")).ctx(|| "resolving /dev".into())?;
    if dev.is_dir() {
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ] {
            let p = dev.join(link);
            if link == "ptmx" && fs::symlink_metadata(&p).is_ok_and(|m| !m.file_type().is_symlink()) {
                let _ = sys.remove_file(&p);
            }
            match sys.symlink(Path::new(target), &p) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(e).ctx(|| format!("creating symlink /dev/{link}"));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn create_device(sys: &dyn Syscall, rootfs: &Path, d: &DevicePlan) -> Result<()> {
    let dest = secure_join(rootfs, &d.path).ctx(|| format!("resolving device {}", d.path.display()))?;
    if let Some(parent) = dest.parent() {
        mkdir_all(sys, parent)?;
    }
    if fs::symlink_metadata(&dest).is_ok() {
        sys.remove_file(&dest).ctx(|| format!("replacing {}", d.path.display()))?;
    }
    match sys.mknod(&dest, d.kind | d.mode, d.major, d.minor) {
        Ok(()) => {
            // mknod applies the umask: set the mode exactly.
            sys.chmod(&dest, d.mode).ctx(|| format!("chmod {}", d.path.display()))?;
            sys.lchown(&dest, d.uid, d.gid).ctx(|| format!("chown {}", d.path.display()))
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            sys.create_file(&dest).ctx(|| format!("creating {}", d.path.display()))?;
            sys.mount(Some(&d.path), &dest, None, libc::MS_BIND, None).ctx(mount_ctx("bind", &d.path, &d.path))
        }
        Err(e) => Err(e).ctx(|| format!("mknod {}", d.path.display())),
    }
}

/// Creates the process cwd inside the rootfs when it is missing (as runc).
pub fn create_cwd(sys: &dyn Syscall, plan: &Plan) -> Result<()> {
    if let Some(p) = &plan.process {
        let dir = secure_join(&plan.rootfs, &p.cwd).ctx(|| format!("resolving cwd {}", p.cwd.display()))?;
        if fs::symlink_metadata(&dir).is_err() {
            mkdir_all(sys, &dir)?;
        }
    }
    Ok(())
}

const ROOT: &CStr = c"/";

/// pivot_root into the rootfs and detach the old root (runc's way: both at ".").
pub fn pivot_root(sys: &dyn Syscall, rootfs: &Path) -> Result<()> {
    let old = File::open("/").ctx(|| "opening /".into())?;
    let new = File::open(rootfs).ctx(|| format!("opening rootfs {}", rootfs.display()))?;
    sys.fchdir(new.as_raw_fd()).ctx(|| "chdir to the rootfs".into())?;
    sys.pivot_root(Path::new("."), Path::new(".")).ctx(|| format!("pivot_root to {}", rootfs.display()))?;
    sys.fchdir(old.as_raw_fd()).ctx(|| "chdir to the old root".into())?;
    sys.mount(None, Path::new("."), None, libc::MS_SLAVE | libc::MS_REC, None)
        .ctx(|| "making the old root a slave".into())?;
    sys.umount_detach(Path::new(".")).ctx(|| "unmounting the old root".into())?;
    sys.chdir(ROOT).ctx(|| "chdir to /".into())
}

/// Masks a path: /dev/null over files, an empty read-only tmpfs over directories.
pub fn mask_path(sys: &dyn Syscall, path: &str) -> Result<()> {
    let p = Path::new(path);
    let md = match fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).ctx(|| format!("masking {path}")),
    };
    let r = if md.is_dir() {
        sys.mount(Some(Path::new("tmpfs")), p, Some("tmpfs"), libc::MS_RDONLY, None)
    } else {
        sys.mount(Some(Path::new("/dev/null")), p, None, libc::MS_BIND, None)
    };
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.ctx(|| format!("masking {path}")),
    }
}

/// Makes a path read-only (bind onto itself, then remount).
pub fn readonly_path(sys: &dyn Syscall, path: &str) -> Result<()> {
    let p = Path::new(path);
    match sys.mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        r => r.ctx(|| format!("bind-mounting {path} for read-only"))?,
    }
    let keep = sys.mount_flags_of(p).unwrap_or(0);
    sys.mount(None, p, None, libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC | keep, None)
        .ctx(|| format!("remounting {path} read-only"))
}

/// Remounts / read-only.
pub fn readonly_root(sys: &dyn Syscall) -> Result<()> {
    let keep = sys.mount_flags_of(Path::new("/")).unwrap_or(0);
    sys.mount(None, Path::new("/"), None, libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep, None)
        .ctx(|| "remounting the rootfs read-only".into())
}

/// Writes the sysctls through the container's /proc/sys.
pub fn apply_sysctls(sysctl: &[(String, String)]) -> Result<()> {
    for (k, v) in sysctl {
        if k.contains("..") || k.contains('/') {
            return Err(crate::error::Error::Spec(format!("invalid sysctl {k:?}")));
        }
        let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        fs::write(&path, v).ctx(|| format!("setting sysctl {k}={v}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::cgroup::CgDir;
    use crate::container::spec;
    use crate::syscall::recorder::Recorder;
    use std::os::unix::fs::symlink;

    #[test]
    fn secure_join_stays_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../..", root.join("a/b/up")).unwrap();
        symlink("b", root.join("a/rel")).unwrap();
        assert_eq!(secure_join(root, Path::new("/a/b/c")).unwrap(), root.join("a/b/c"));
        assert_eq!(secure_join(root, Path::new("/abs/passwd")).unwrap(), root.join("etc/passwd"));
        assert_eq!(secure_join(root, Path::new("/a/b/up/x")).unwrap(), root.join("x"));
        assert_eq!(secure_join(root, Path::new("/../../x")).unwrap(), root.join("x"));
        assert_eq!(secure_join(root, Path::new("/a/rel/z")).unwrap(), root.join("a/b/z"));
        symlink("loop", root.join("loop")).unwrap();
        assert!(secure_join(root, Path::new("/loop/x")).is_err());
        // A `..` after a missing component climbs back into the tree: the symlinks met there
        // are resolved too (common's join alone would give root/abs/passwd, through /etc).
        assert_eq!(secure_join(root, Path::new("/nope/../abs/passwd")).unwrap(), root.join("etc/passwd"));
        assert_eq!(secure_join(root, Path::new("/nope/../a/rel/../x")).unwrap(), root.join("a/x"));
        // What changed with common's join: an existing file in the middle of the path is
        // ENOTDIR at once (before, the mount or mkdir on it failed).
        fs::write(root.join("file"), "").unwrap();
        assert_eq!(secure_join(root, Path::new("/file/x")).unwrap_err().raw_os_error(), Some(libc::ENOTDIR));
    }

    /// A representative container: proc, a /dev tmpfs, devpts, a read-only sysfs, the cgroup
    /// v1 mount, a read-only bind, an "rro" bind, propagation changes, a file bind, devices,
    /// read-only and masked paths, a read-only root.
    #[test]
    fn mount_sequence_of_a_representative_plan() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().canonicalize().unwrap();
        let rootfs = t.join("rootfs");
        fs::create_dir_all(rootfs.join("dev")).unwrap();
        for d in ["data", "image", "shared", "ro_dir", "masked_dir"] {
            fs::create_dir(t.join(d)).unwrap();
        }
        fs::write(t.join("hostname"), "h\n").unwrap();
        fs::write(t.join("masked_file"), "").unwrap();
        let spec_json = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": rootfs, "readonly": true},
            "process": {"args": ["sh"], "cwd": "/app", "user": {"uid": 0, "gid": 0}},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
                {"destination": "/data", "type": "bind", "source": t.join("data"),
                 "options": ["rbind", "ro", "rprivate"]},
                {"destination": "/image", "type": "bind", "source": t.join("image"),
                 "options": ["rbind", "rro", "nosuid"]},
                {"destination": "/shared", "type": "bind", "source": t.join("shared"),
                 "options": ["rbind", "rshared"]},
                {"destination": "/etc/hostname", "type": "bind", "source": t.join("hostname"),
                 "options": ["bind"]},
            ],
            "linux": {
                "devices": [
                    {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 438},
                    {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438,
                     "uid": 0, "gid": 0},
                ],
                "readonlyPaths": [t.join("ro_dir"), t.join("ro_missing")],
                "maskedPaths": [t.join("masked_file"), t.join("masked_dir"), t.join("masked_missing")],
            },
        });
        let plan = spec::plan(&serde_json::from_value(spec_json).unwrap(), false).unwrap();
        let cgroup = Cgroup::V1 {
            dirs: vec![
                CgDir {
                    name: "cpu,cpuacct".into(),
                    controllers: vec!["cpu".into(), "cpuacct".into()],
                    path: "/sys/fs/cgroup/cpu,cpuacct/corral/c1".into(),
                },
                CgDir {
                    name: "memory".into(),
                    controllers: vec!["memory".into()],
                    path: "/sys/fs/cgroup/memory/corral/c1".into(),
                },
            ],
            created: vec![],
            scope: None,
        };
        let mut rec = Recorder::under(&t);
        // What the mounts already have (kept on remounts): nodev, relatime.
        rec.mount_flags = libc::MS_NODEV | libc::MS_RELATIME;
        // mknod is refused for the second device: the host's node is bound instead.
        rec.fail("mknod(T/rootfs/dev/fuse", libc::EPERM);
        // A read-only path that does not exist is skipped.
        rec.fail("mount(T/ro_missing", libc::ENOENT);
        setup(&rec, &plan, Some(&cgroup)).unwrap();
        let expected = [
            // The rootfs: rslave propagation, the rootfs private and bound onto itself.
            "mount(-, /, -, REC|SLAVE, -)",
            "mount(-, T/rootfs, -, PRIVATE, -)",
            "mount(T/rootfs, T/rootfs, -, BIND|REC, -)",
            "mkdir_all(T/rootfs/proc)",
            "mount(proc, T/rootfs/proc, proc, NOSUID|NODEV|NOEXEC, -)",
            "mkdir_all(T/rootfs/dev)",
            "mount(tmpfs, T/rootfs/dev, tmpfs, NOSUID|STRICTATIME, mode=755,size=65536k)",
            "mkdir_all(T/rootfs/dev/pts)",
            "mount(devpts, T/rootfs/dev/pts, devpts, NOSUID|NOEXEC, newinstance,ptmxmode=0666,mode=0620,gid=5)",
            "mkdir_all(T/rootfs/sys)",
            "mount(sysfs, T/rootfs/sys, sysfs, RDONLY|NOSUID|NODEV|NOEXEC, -)",
            // cgroup v1: a tmpfs, one read-only bind per hierarchy, the tmpfs read-only.
            "mkdir_all(T/rootfs/sys/fs/cgroup)",
            "mount(tmpfs, T/rootfs/sys/fs/cgroup, tmpfs, NOSUID|NODEV|NOEXEC, mode=755)",
            "mkdir_all(T/rootfs/sys/fs/cgroup/cpu,cpuacct)",
            "mount(/sys/fs/cgroup/cpu,cpuacct/corral/c1, T/rootfs/sys/fs/cgroup/cpu,cpuacct, -, BIND, -)",
            "mount(-, T/rootfs/sys/fs/cgroup/cpu,cpuacct, -, RDONLY|NOSUID|NODEV|NOEXEC|REMOUNT|BIND, -)",
            "mkdir_all(T/rootfs/sys/fs/cgroup/memory)",
            "mount(/sys/fs/cgroup/memory/corral/c1, T/rootfs/sys/fs/cgroup/memory, -, BIND, -)",
            "mount(-, T/rootfs/sys/fs/cgroup/memory, -, RDONLY|NOSUID|NODEV|NOEXEC|REMOUNT|BIND, -)",
            "mount(-, T/rootfs/sys/fs/cgroup, -, RDONLY|NOSUID|NODEV|NOEXEC|REMOUNT, mode=755)",
            // A read-only rbind: bind, then a remount with the flags already there, then the
            // propagation change.
            "mkdir_all(T/rootfs/data)",
            "mount(T/data, T/rootfs/data, -, BIND|REC, -)",
            "mount(-, T/rootfs/data, -, RDONLY|NODEV|REMOUNT|BIND|REC|RELATIME, -)",
            "mount(-, T/rootfs/data, -, REC|PRIVATE, -)",
            // "rro": the same, then read-only down to every submount.
            "mkdir_all(T/rootfs/image)",
            "mount(T/image, T/rootfs/image, -, BIND|REC, -)",
            "mount(-, T/rootfs/image, -, RDONLY|NOSUID|NODEV|REMOUNT|BIND|REC|RELATIME, -)",
            "mount_setattr_recursive(T/rootfs/image, RDONLY)",
            // No flag: no remount, only the propagation.
            "mkdir_all(T/rootfs/shared)",
            "mount(T/shared, T/rootfs/shared, -, BIND|REC, -)",
            "mount(-, T/rootfs/shared, -, REC|SHARED, -)",
            // A file: its parent directory, an empty file, the bind.
            "mkdir_all(T/rootfs/etc)",
            "create_file(T/rootfs/etc/hostname)",
            "mount(T/hostname, T/rootfs/etc/hostname, -, BIND, -)",
            // Devices: mknod, the exact mode, the owner; refused: the host's node bound.
            "mkdir_all(T/rootfs/dev)",
            "mknod(T/rootfs/dev/null, 0o20666, 1, 3)",
            "chmod(T/rootfs/dev/null, 0o666)",
            "lchown(T/rootfs/dev/null, 0, 0)",
            "mkdir_all(T/rootfs/dev)",
            "mknod(T/rootfs/dev/fuse, 0o20666, 10, 229)",
            "create_file(T/rootfs/dev/fuse)",
            "mount(/dev/fuse, T/rootfs/dev/fuse, -, BIND, -)",
            "symlink(/proc/self/fd, T/rootfs/dev/fd)",
            "symlink(/proc/self/fd/0, T/rootfs/dev/stdin)",
            "symlink(/proc/self/fd/1, T/rootfs/dev/stdout)",
            "symlink(/proc/self/fd/2, T/rootfs/dev/stderr)",
            "symlink(pts/ptmx, T/rootfs/dev/ptmx)",
            // The missing cwd.
            "mkdir_all(T/rootfs/app)",
            // pivot_root, runc's way.
            "fchdir(T/rootfs)",
            "pivot_root(., .)",
            "fchdir(/)",
            "mount(-, ., -, REC|SLAVE, -)",
            "umount_detach(.)",
            "chdir(/)",
            // Read-only paths: bound onto themselves and remounted read-only.
            "mount(T/ro_dir, T/ro_dir, -, BIND|REC, -)",
            "mount(-, T/ro_dir, -, RDONLY|NODEV|REMOUNT|BIND|REC|RELATIME, -)",
            "mount(T/ro_missing, T/ro_missing, -, BIND|REC, -)",
            // Masked paths: /dev/null over a file, a read-only tmpfs over a directory.
            "mount(/dev/null, T/masked_file, -, BIND, -)",
            "mount(tmpfs, T/masked_dir, tmpfs, RDONLY, -)",
            // The read-only root.
            "mount(-, /, -, RDONLY|NODEV|REMOUNT|BIND|RELATIME, -)",
        ];
        assert_eq!(rec.calls(), expected);
    }

    #[test]
    fn mount_failures_name_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let spec_json = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": rootfs},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
            ],
        });
        let plan = spec::plan(&serde_json::from_value(spec_json).unwrap(), false).unwrap();
        let rec = Recorder::under(dir.path());
        rec.fail("mount(proc,", libc::EPERM);
        let err = setup(&rec, &plan, None).unwrap_err().to_string();
        assert_eq!(err, "mounting proc proc at /proc: EPERM");
        assert!(rec.calls().last().unwrap().starts_with("mount(proc,"), "stops at the failure");
        // cgroup v2 (or no cgroup): one cgroup2 mount.
        let mut plan = plan;
        plan.mounts = spec::plan(
            &serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2", "root": {"path": rootfs},
                "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
                "mounts": [{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                            "options": ["ro"]}],
            }))
            .unwrap(),
            false,
        )
        .unwrap()
        .mounts;
        let rec = Recorder::under(dir.path());
        mount_all(&rec, &plan, None).unwrap();
        assert_eq!(
            rec.calls_of(&["mount("]),
            vec!["mount(cgroup2, T/rootfs/sys/fs/cgroup, cgroup2, RDONLY|NOSUID|NODEV|NOEXEC, -)"]
        );
    }
}
