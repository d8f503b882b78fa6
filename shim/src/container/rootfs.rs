//! The container's filesystem view: rootfs propagation and self-bind, spec mounts, device
//! nodes, pivot_root, masked and read-only paths.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Component, Path, PathBuf};

use super::cgroup::Cgroup;
use super::spec::{DevicePlan, Plan};
use crate::error::{Context, Result};
use crate::sys;

/// Parsed mount options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOpts {
    /// MS_* flags for mount(2), without bind/propagation.
    pub flags: libc::c_ulong,
    /// Propagation changes applied after the mount, in order.
    pub propagation: Vec<libc::c_ulong>,
    /// Filesystem-specific options (mode=755,size=65536k).
    pub data: String,
    pub bind: bool,
    pub recursive: bool,
    /// "rro": read-only down to every submount (mount_setattr with AT_RECURSIVE).
    pub recursive_readonly: bool,
}

/// Splits OCI mount options into flags, propagation and data.
pub fn parse_options(options: &[String]) -> MountOpts {
    let mut o = MountOpts::default();
    let mut data: Vec<&str> = Vec::new();
    for opt in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rro" => {
                o.recursive_readonly = true;
                (libc::MS_RDONLY, 0)
            }
            "rw" => {
                o.recursive_readonly = false;
                (0, libc::MS_RDONLY)
            }
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "defaults" => (0, 0),
            "bind" => {
                o.bind = true;
                (0, 0)
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                (0, 0)
            }
            p @ ("private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared"
            | "unbindable" | "runbindable") => {
                let rec = if p.starts_with('r') { libc::MS_REC } else { 0 };
                let kind = match p.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "slave" => libc::MS_SLAVE,
                    "shared" => libc::MS_SHARED,
                    _ => libc::MS_UNBINDABLE,
                };
                o.propagation.push(kind | rec);
                (0, 0)
            }
            other => {
                data.push(other);
                (0, 0)
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    o.data = data.join(",");
    o
}

/// One mount of the spec.
#[derive(Clone, Debug)]
pub struct MountPlan {
    pub destination: PathBuf,
    pub typ: String,
    pub source: Option<PathBuf>,
    pub opts: MountOpts,
}

/// Joins `unsafe_path` under `root`, resolving symlinks as if `root` were `/`, so the result
/// never leaves `root`. Missing components are kept as they are.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<std::ffi::OsString> = unsafe_path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut cur: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            cur.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&cur);
        candidate.push(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    cur.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => cur.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&cur);
    Ok(out)
}

fn mkdir_all(p: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .ctx(|| format!("creating directory {}", p.display()))
}

/// Creates a mount target: a file when the source is a file, else a directory.
fn create_target(target: &Path, file: bool) -> Result<()> {
    if file {
        if let Some(parent) = target.parent() {
            mkdir_all(parent)?;
        }
        if fs::symlink_metadata(target).is_err() {
            File::create(target).ctx(|| format!("creating mount target {}", target.display()))?;
        }
        Ok(())
    } else {
        mkdir_all(target)
    }
}

fn mount_ctx(typ: &str, what: &Path, dest: &Path) -> impl FnOnce() -> String {
    let (t, w, d) = (
        typ.to_string(),
        what.display().to_string(),
        dest.display().to_string(),
    );
    move || format!("mounting {t} {w} at {d}")
}

/// Makes the mount tree a slave (or as asked) of the host and binds the rootfs onto itself.
pub fn prepare(plan: &Plan) -> Result<()> {
    sys::mount(None, Path::new("/"), None, plan.rootfs_propagation, None)
        .ctx(|| "setting the propagation of / in the container mount namespace".into())?;
    // pivot_root refuses a shared parent of the new root, which "/" made rshared (for
    // bidirectional mounts) would give it: make the rootfs mount itself private, as runc does
    // for the rootfs' parent mount. EINVAL: the rootfs is not a mount point, nothing to do.
    match sys::mount(None, &plan.rootfs, None, libc::MS_PRIVATE, None) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        other => other.ctx(|| format!("making the rootfs {} private", plan.rootfs.display()))?,
    }
    sys::mount(
        Some(&plan.rootfs),
        &plan.rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .ctx(|| {
        format!(
            "bind-mounting the rootfs {} onto itself",
            plan.rootfs.display()
        )
    })?;
    Ok(())
}

/// Mounts every spec mount inside the rootfs.
pub fn mount_all(plan: &Plan, cgroup: Option<&Cgroup>) -> Result<()> {
    for m in &plan.mounts {
        let dest = secure_join(&plan.rootfs, &m.destination)
            .ctx(|| format!("resolving mount destination {}", m.destination.display()))?;
        let shown = &m.destination;
        let source = m.source.clone().unwrap_or_else(|| PathBuf::from(&m.typ));
        if m.opts.bind {
            let is_file = fs::metadata(&source)
                .map(|md| !md.is_dir())
                .ctx(|| format!("bind source {}", source.display()))?;
            create_target(&dest, is_file)?;
            let rec = if m.opts.recursive { libc::MS_REC } else { 0 };
            sys::mount(Some(&source), &dest, None, libc::MS_BIND | rec, None)
                .ctx(mount_ctx("bind", &source, shown))?;
            if m.opts.flags != 0 {
                let keep = sys::mount_flags_of(&dest).unwrap_or(0);
                let flags = libc::MS_BIND | libc::MS_REMOUNT | rec | m.opts.flags | keep;
                sys::mount(None, &dest, None, flags, None)
                    .ctx(|| format!("remounting bind mount {}", shown.display()))?;
            }
            if m.opts.recursive_readonly {
                sys::mount_setattr_recursive(&dest, sys::MOUNT_ATTR_RDONLY).ctx(|| {
                    format!("making {} read-only recursively", shown.display())
                })?;
            }
        } else if m.typ == "cgroup" || m.typ == "cgroup2" {
            create_target(&dest, false)?;
            mount_cgroup(&dest, shown, m, cgroup)?;
        } else {
            create_target(&dest, false)?;
            let data = (!m.opts.data.is_empty()).then_some(m.opts.data.as_str());
            sys::mount(Some(&source), &dest, Some(&m.typ), m.opts.flags, data)
                .ctx(mount_ctx(&m.typ, &source, shown))?;
        }
        for &p in &m.opts.propagation {
            sys::mount(None, &dest, None, p, None)
                .ctx(|| format!("setting propagation of {}", shown.display()))?;
        }
    }
    Ok(())
}

/// The cgroup filesystem: v2 mounts cgroup2; v1 a tmpfs holding a bind of the container's
/// cgroup dir per hierarchy, then read-only.
fn mount_cgroup(dest: &Path, shown: &Path, m: &MountPlan, cgroup: Option<&Cgroup>) -> Result<()> {
    let ro = m.opts.flags & libc::MS_RDONLY;
    let base = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    match cgroup {
        Some(Cgroup::V1 { dirs, .. }) => {
            sys::mount(
                Some(Path::new("tmpfs")),
                dest,
                Some("tmpfs"),
                base,
                Some("mode=755"),
            )
            .ctx(mount_ctx("tmpfs", Path::new("tmpfs"), shown))?;
            for d in dirs {
                let sub = dest.join(&d.name);
                mkdir_all(&sub)?;
                sys::mount(Some(&d.path), &sub, None, libc::MS_BIND, None)
                    .ctx(mount_ctx("bind", &d.path, &sub))?;
                sys::mount(
                    None,
                    &sub,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | base | ro,
                    None,
                )
                .ctx(|| format!("remounting {}", sub.display()))?;
            }
            if ro != 0 {
                sys::mount(
                    None,
                    dest,
                    None,
                    libc::MS_REMOUNT | base | ro,
                    Some("mode=755"),
                )
                .ctx(|| format!("remounting {} read-only", shown.display()))?;
            }
            Ok(())
        }
        _ => sys::mount(
            Some(Path::new("cgroup2")),
            dest,
            Some("cgroup2"),
            base | ro,
            None,
        )
        .ctx(mount_ctx("cgroup2", Path::new("cgroup2"), shown)),
    }
}

/// Creates the device nodes (bind-mounting the host's node where mknod is refused) and the
/// standard /dev symlinks.
pub fn create_devices(plan: &Plan) -> Result<()> {
    for d in &plan.devices {
        create_device(&plan.rootfs, d)?;
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
            if link == "ptmx" && fs::symlink_metadata(&p).is_ok_and(|m| !m.file_type().is_symlink())
            {
                let _ = fs::remove_file(&p);
            }
            match symlink(target, &p) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(e).ctx(|| format!("creating symlink /dev/{link}"));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn create_device(rootfs: &Path, d: &DevicePlan) -> Result<()> {
    let dest =
        secure_join(rootfs, &d.path).ctx(|| format!("resolving device {}", d.path.display()))?;
    if let Some(parent) = dest.parent() {
        mkdir_all(parent)?;
    }
    if fs::symlink_metadata(&dest).is_ok() {
        fs::remove_file(&dest).ctx(|| format!("replacing {}", d.path.display()))?;
    }
    match sys::mknod(&dest, d.kind | d.mode, d.major, d.minor) {
        Ok(()) => {
            // mknod applies the umask: set the mode exactly.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dest, fs::Permissions::from_mode(d.mode))
                .ctx(|| format!("chmod {}", d.path.display()))?;
            sys::lchown(&dest, d.uid, d.gid).ctx(|| format!("chown {}", d.path.display()))
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            File::create(&dest).ctx(|| format!("creating {}", d.path.display()))?;
            sys::mount(Some(&d.path), &dest, None, libc::MS_BIND, None)
                .ctx(mount_ctx("bind", &d.path, &d.path))
        }
        Err(e) => Err(e).ctx(|| format!("mknod {}", d.path.display())),
    }
}

/// Creates the process cwd inside the rootfs when it is missing (as runc).
pub fn create_cwd(plan: &Plan) -> Result<()> {
    if let Some(p) = &plan.process {
        let dir = secure_join(&plan.rootfs, &p.cwd)
            .ctx(|| format!("resolving cwd {}", p.cwd.display()))?;
        if fs::symlink_metadata(&dir).is_err() {
            mkdir_all(&dir)?;
        }
    }
    Ok(())
}

/// pivot_root into the rootfs and detach the old root (runc's way: both at ".").
pub fn pivot_root(rootfs: &Path) -> Result<()> {
    let old = File::open("/").ctx(|| "opening /".into())?;
    let new = File::open(rootfs).ctx(|| format!("opening rootfs {}", rootfs.display()))?;
    sys::fchdir(new.as_raw_fd()).ctx(|| "chdir to the rootfs".into())?;
    sys::pivot_root(Path::new("."), Path::new("."))
        .ctx(|| format!("pivot_root to {}", rootfs.display()))?;
    sys::fchdir(old.as_raw_fd()).ctx(|| "chdir to the old root".into())?;
    sys::mount(
        None,
        Path::new("."),
        None,
        libc::MS_SLAVE | libc::MS_REC,
        None,
    )
    .ctx(|| "making the old root a slave".into())?;
    sys::umount_detach(Path::new(".")).ctx(|| "unmounting the old root".into())?;
    std::env::set_current_dir("/").ctx(|| "chdir to /".into())
}

/// Masks a path: /dev/null over files, an empty read-only tmpfs over directories.
pub fn mask_path(path: &str) -> Result<()> {
    let p = Path::new(path);
    let md = match fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).ctx(|| format!("masking {path}")),
    };
    let r = if md.is_dir() {
        sys::mount(
            Some(Path::new("tmpfs")),
            p,
            Some("tmpfs"),
            libc::MS_RDONLY,
            None,
        )
    } else {
        sys::mount(Some(Path::new("/dev/null")), p, None, libc::MS_BIND, None)
    };
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.ctx(|| format!("masking {path}")),
    }
}

/// Makes a path read-only (bind onto itself, then remount).
pub fn readonly_path(path: &str) -> Result<()> {
    let p = Path::new(path);
    match sys::mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        r => r.ctx(|| format!("bind-mounting {path} for read-only"))?,
    }
    let keep = sys::mount_flags_of(p).unwrap_or(0);
    sys::mount(
        None,
        p,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC | keep,
        None,
    )
    .ctx(|| format!("remounting {path} read-only"))
}

/// Remounts / read-only.
pub fn readonly_root() -> Result<()> {
    let keep = sys::mount_flags_of(Path::new("/")).unwrap_or(0);
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep,
        None,
    )
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

    fn opts(v: &[&str]) -> MountOpts {
        parse_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind);
        let o = opts(&["rbind", "ro", "nosuid", "nodev", "noexec", "rslave"]);
        assert!(o.bind && o.recursive);
        assert_eq!(
            o.flags,
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC
        );
        assert_eq!(o.propagation, vec![libc::MS_SLAVE | libc::MS_REC]);
        let o = opts(&["ro", "rw", "bind", "private"]);
        assert_eq!(o.flags, 0);
        assert!(o.bind && !o.recursive);
        assert_eq!(o.propagation, vec![libc::MS_PRIVATE]);
        let o = opts(&["rbind", "rro", "rprivate"]);
        assert!(o.bind && o.recursive && o.recursive_readonly);
        assert_eq!(o.flags, libc::MS_RDONLY);
        assert_eq!(o.data, "");
        let o = opts(&["rro", "rw"]);
        assert!(!o.recursive_readonly && o.flags == 0);
        let o = opts(&["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]);
        assert_eq!(o.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
    }

    #[test]
    fn secure_join_stays_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../..", root.join("a/b/up")).unwrap();
        symlink("b", root.join("a/rel")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/a/b/c")).unwrap(),
            root.join("a/b/c")
        );
        assert_eq!(
            secure_join(root, Path::new("/abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/b/up/x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/rel/z")).unwrap(),
            root.join("a/b/z")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(secure_join(root, Path::new("/loop/x")).is_err());
    }
}
