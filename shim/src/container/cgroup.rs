//! The container cgroup, on cgroup v1 (one dir per mounted controller hierarchy) or v2:
//! creation, resource limits, joining, listing, OOM counter and removal.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cgroup::Version;
use oci_spec::runtime::LinuxResources;

use super::systemd::Scope;
use crate::error::{Context, Error, Result};

const ROOT: &str = "/sys/fs/cgroup";

/// The container's dir in one v1 hierarchy.
#[derive(Clone, Debug)]
pub struct CgDir {
    /// Name of the hierarchy's mount dir ("memory", "cpu,cpuacct").
    pub name: String,
    pub controllers: Vec<String>,
    /// The container's cgroup dir in this hierarchy.
    pub path: PathBuf,
}

impl CgDir {
    /// The dir `path` in the hierarchy mounted at `mount`.
    fn new(mount: &Path, controllers: Vec<String>, path: PathBuf) -> CgDir {
        let name = mount.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        CgDir { name, controllers, path }
    }
}

/// `created`: the dirs this shim made (removed with it). `scope`: with the systemd driver, the
/// transient unit that holds the cgroup; systemd makes and removes its dirs.
#[derive(Clone, Debug)]
pub enum Cgroup {
    V1 { dirs: Vec<CgDir>, created: Vec<PathBuf>, scope: Option<Box<Scope>> },
    V2 { path: PathBuf, created: Vec<PathBuf>, scope: Option<Box<Scope>> },
}

/// The v1 controller hierarchies from a mountinfo text: (mount point, controllers).
pub fn v1_hierarchies(mountinfo: &str) -> Vec<(PathBuf, Vec<String>)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if post.first() != Some(&"cgroup") || pre.len() < 5 || pre[3] != "/" {
            continue;
        }
        let opts = post.get(2).unwrap_or(&"");
        // Named hierarchies (name=systemd) hold no controller.
        if opts.split(',').any(|o| o.starts_with("name=")) {
            continue;
        }
        let controllers: Vec<String> = opts
            .split(',')
            .filter(|o| {
                !matches!(*o, "rw" | "ro" | "" | "xattr" | "noprefix" | "clone_children" | "cpuset_v2_mode")
                    && !o.contains('=')
            })
            .map(str::to_string)
            .collect();
        if !controllers.is_empty() {
            out.push((PathBuf::from(pre[4]), controllers));
        }
    }
    out
}

fn rel(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).ctx(|| format!("writing {value:?} to {}", path.display()))
}

/// Creates `dir` and its missing ancestors below `top`, recording the created ones.
fn create_dirs(top: &Path, dir: &Path, cpuset: bool, created: &mut Vec<PathBuf>) -> Result<()> {
    let mut cur = top.to_path_buf();
    for (depth, c) in rel(dir.strip_prefix(top).unwrap_or(dir)).components().enumerate() {
        let parent = cur.clone();
        cur.push(c);
        match fs::create_dir(&cur) {
            Ok(()) => {
                // The top dir (/corral) is shared by every shim: never removed.
                if depth > 0 {
                    created.push(cur.clone());
                }
                if cpuset {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let mine = fs::read_to_string(cur.join(f)).unwrap_or_default();
                        if mine.trim().is_empty() {
                            let theirs = fs::read_to_string(parent.join(f))
                                .ctx(|| format!("reading {f} of {}", parent.display()))?;
                            write(&cur.join(f), theirs.trim())?;
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).ctx(|| format!("creating cgroup {}", cur.display())),
        }
    }
    Ok(())
}

/// Enables the controllers corral sets limits with for the children of the v2 cgroup `dir`;
/// best effort: a limit that then has no file reports the problem.
fn delegate(dir: &Path) {
    let _ = common::cgroup::delegate(dir);
}

/// Whether a v2 cgroup has the hugetlb controller (its files are named by page size).
fn has_hugetlb(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|c| c == "hugetlb"))
}

/// The cgroup version to use: the one corrald decided on (the bundle's annotation) when it
/// said, else the same rule (common::cgroup) applied to our own mount table. No hierarchy at
/// all counts as v1, whose creation then says that none is mounted.
pub fn version(planned: Option<Version>) -> Version {
    planned.or_else(common::cgroup::detect_host).unwrap_or(Version::V1)
}

impl Cgroup {
    /// The container's cgroup from the bundle's `linux.cgroupsPath`: an absolute path (the
    /// cgroupfs driver: made now) or systemd's `slice:prefix:name` (a transient unit, started
    /// by `join` with `resources` as its properties).
    pub fn for_bundle(cgroups_path: &Path, version: Version, resources: Option<&LinuxResources>) -> Result<Cgroup> {
        if cgroups_path.is_absolute() {
            return Cgroup::create(cgroups_path, version);
        }
        let scope = Scope::from_cgroups_path(&cgroups_path.to_string_lossy(), resources)?;
        let rel = PathBuf::from(scope.cgroup.trim_start_matches('/'));
        let scope = Some(Box::new(scope));
        Ok(match version {
            Version::V2 => Cgroup::V2 { path: PathBuf::from(ROOT).join(rel), created: vec![], scope },
            Version::V1 => {
                let mountinfo =
                    fs::read_to_string("/proc/self/mountinfo").ctx(|| "reading /proc/self/mountinfo".into())?;
                let dirs = v1_hierarchies(&mountinfo)
                    .into_iter()
                    .map(|(mnt, controllers)| CgDir::new(&mnt, controllers, mnt.join(&rel)))
                    .collect();
                Cgroup::V1 { dirs, created: vec![], scope }
            }
        })
    }

    /// The systemd unit holding the cgroup, with the systemd driver.
    pub fn scope(&self) -> Option<&Scope> {
        match self {
            Cgroup::V1 { scope, .. } | Cgroup::V2 { scope, .. } => scope.as_deref(),
        }
    }

    /// Creates (or finds) the cgroup at `path` in every hierarchy of `version`.
    pub fn create(path: &Path, version: Version) -> Result<Cgroup> {
        let mut created = Vec::new();
        let cg = if version == Version::V2 {
            let top = PathBuf::from(ROOT);
            let full = top.join(rel(path));
            // Controllers must be enabled on every ancestor for the limits to exist.
            let mut cur = top.clone();
            for (depth, c) in rel(path).components().enumerate() {
                delegate(&cur);
                cur.push(c);
                match fs::create_dir(&cur) {
                    Ok(()) if depth > 0 => created.push(cur.clone()),
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        Cgroup::V2 { path: full.clone(), created, scope: None }.remove();
                        return Err(e).ctx(|| format!("creating cgroup {}", cur.display()));
                    }
                }
            }
            Cgroup::V2 { path: full, created, scope: None }
        } else {
            let mountinfo = fs::read_to_string("/proc/self/mountinfo").ctx(|| "reading /proc/self/mountinfo".into())?;
            let mut dirs = Vec::new();
            for (mnt, controllers) in v1_hierarchies(&mountinfo) {
                let full = mnt.join(rel(path));
                let cpuset = controllers.iter().any(|c| c == "cpuset");
                if let Err(e) = create_dirs(&mnt, &full, cpuset, &mut created) {
                    Cgroup::V1 { dirs: vec![], created, scope: None }.remove();
                    return Err(e);
                }
                dirs.push(CgDir::new(&mnt, controllers, full));
            }
            if dirs.is_empty() {
                return Err(Error::Msg("no cgroup v1 controller hierarchy is mounted".into()));
            }
            Cgroup::V1 { dirs, created, scope: None }
        };
        Ok(cg)
    }

    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        match self {
            Cgroup::V1 { dirs, .. } => {
                dirs.iter().find(|d| d.controllers.iter().any(|c| c == controller)).map(|d| d.path.as_path())
            }
            Cgroup::V2 { .. } => None,
        }
    }

    /// Applies the spec's resource limits.
    pub fn apply(&self, r: &LinuxResources) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        match self {
            Cgroup::V1 { .. } => {
                if let (Some(rules), Some(dir)) = (r.devices(), self.v1_dir("devices")) {
                    for rule in rules {
                        let typ = rule.typ().map(|t| t.as_str().to_string()).unwrap_or_else(|| "a".into());
                        let num = |n: Option<i64>| n.filter(|n| *n >= 0).map_or("*".to_string(), |n| n.to_string());
                        let access = rule.access().clone().unwrap_or_else(|| "rwm".into());
                        let line = format!("{typ} {}:{} {access}", num(rule.major()), num(rule.minor()));
                        let file = if rule.allow() { "devices.allow" } else { "devices.deny" };
                        write(&dir.join(file), &line)?;
                    }
                }
                if let (Some(m), Some(dir)) = (r.memory(), self.v1_dir("memory")) {
                    if let Some(limit) = m.limit() {
                        write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
                    }
                    if let Some(swap) = m.swap() {
                        let f = dir.join("memory.memsw.limit_in_bytes");
                        if f.exists() {
                            write(&f, &swap.to_string())?;
                        } else {
                            warnings.push("swap limit ignored: no swap accounting".into());
                        }
                    }
                }
                if let Some(c) = r.cpu() {
                    if let Some(dir) = self.v1_dir("cpu") {
                        if let Some(s) = c.shares() {
                            write(&dir.join("cpu.shares"), &s.to_string())?;
                        }
                        if let Some(p) = c.period() {
                            write(&dir.join("cpu.cfs_period_us"), &p.to_string())?;
                        }
                        if let Some(q) = c.quota() {
                            write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
                        }
                    }
                    if let Some(dir) = self.v1_dir("cpuset") {
                        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
                            write(&dir.join("cpuset.cpus"), cpus)?;
                        }
                        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
                            write(&dir.join("cpuset.mems"), mems)?;
                        }
                    }
                }
                if let (Some(p), Some(dir)) = (r.pids(), self.v1_dir("pids")) {
                    let v = if p.limit() > 0 { p.limit().to_string() } else { "max".into() };
                    write(&dir.join("pids.max"), &v)?;
                }
            }
            Cgroup::V2 { path, .. } => {
                if let Some(rules) = r.devices() {
                    super::devfilter::apply(path, rules)?;
                }
                if let Some(m) = r.memory() {
                    let max = |v: i64| {
                        if v < 0 {
                            "max".to_string()
                        } else {
                            v.to_string()
                        }
                    };
                    if let Some(limit) = m.limit() {
                        write(&path.join("memory.max"), &max(limit))?;
                        if let Some(swap) = m.swap() {
                            let f = path.join("memory.swap.max");
                            if f.exists() {
                                let v = if swap < 0 { -1 } else { (swap - limit).max(0) };
                                write(&f, &max(v))?;
                            }
                        }
                    }
                }
                if let Some(c) = r.cpu() {
                    if let Some(s) = c.shares() {
                        let w = if s == 0 { 100 } else { 1 + ((s.clamp(2, 262_144) - 2) * 9999) / 262_142 };
                        write(&path.join("cpu.weight"), &w.to_string())?;
                    }
                    if c.quota().is_some() || c.period().is_some() {
                        let q = c.quota().filter(|q| *q > 0).map_or("max".to_string(), |q| q.to_string());
                        write(&path.join("cpu.max"), &format!("{q} {}", c.period().unwrap_or(100_000)))?;
                    }
                    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
                        write(&path.join("cpuset.cpus"), cpus)?;
                    }
                    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
                        write(&path.join("cpuset.mems"), mems)?;
                    }
                }
                if let Some(p) = r.pids() {
                    let v = if p.limit() > 0 { p.limit().to_string() } else { "max".into() };
                    write(&path.join("pids.max"), &v)?;
                }
            }
        }
        self.apply_hugetlb(r, &mut warnings)?;
        self.apply_unified(r)?;
        Ok(warnings)
    }

    /// Huge page limits: `hugetlb.<size>.limit_in_bytes` on v1, `hugetlb.<size>.max` on v2 (and
    /// the reservation limit beside it where the kernel has one). A kernel without the hugetlb
    /// controller gets a warning, as containerd tolerates it by default.
    fn apply_hugetlb(&self, r: &LinuxResources, warnings: &mut Vec<String>) -> Result<()> {
        let Some(limits) = r.hugepage_limits().as_ref().filter(|l| !l.is_empty()) else { return Ok(()) };
        let (dir, v2) = match self {
            Cgroup::V1 { .. } => (self.v1_dir("hugetlb").map(Path::to_path_buf), false),
            Cgroup::V2 { path, .. } => (Some(path.clone()).filter(|p| has_hugetlb(p)), true),
        };
        let Some(dir) = dir else {
            warnings.push("huge page limits ignored: no hugetlb controller".into());
            return Ok(());
        };
        for l in limits {
            let size = l.page_size();
            if size.contains('/') {
                return Err(Error::Msg(format!("hugepage limit: page size {size:?} is not a size")));
            }
            let files: &[String] = if v2 {
                &[format!("hugetlb.{size}.max"), format!("hugetlb.{size}.rsvd.max")]
            } else {
                &[format!("hugetlb.{size}.limit_in_bytes"), format!("hugetlb.{size}.rsvd.limit_in_bytes")]
            };
            let main = dir.join(&files[0]);
            if !main.exists() {
                return Err(Error::Msg(format!(
                    "hugepage limit: this kernel has no {size} huge pages ({} is missing)",
                    main.display()
                )));
            }
            write(&main, &l.limit().to_string())?;
            let rsvd = dir.join(&files[1]);
            if rsvd.exists() {
                write(&rsvd, &l.limit().to_string())?;
            }
        }
        Ok(())
    }

    /// The `unified` keys, written as given (cgroup v2 only; runc refuses them on v1 too). The
    /// file must exist: a key for a controller that is not enabled is an error, not ignored.
    fn apply_unified(&self, r: &LinuxResources) -> Result<()> {
        let Some(unified) = r.unified().as_ref().filter(|u| !u.is_empty()) else { return Ok(()) };
        let Cgroup::V2 { path, .. } = self else {
            return Err(Error::Msg("linux.resources.unified needs cgroup v2; this host runs cgroup v1".into()));
        };
        let mut keys: Vec<&String> = unified.keys().collect();
        keys.sort();
        for key in keys {
            if key.contains('/') || key.starts_with("cgroup.") || !key.contains('.') {
                return Err(Error::Msg(format!("linux.resources.unified: {key:?} is not a limit file")));
            }
            let file = path.join(key);
            if !file.exists() {
                return Err(Error::Msg(format!(
                    "linux.resources.unified: {key}: no such file in {} (is its controller enabled?)",
                    path.display()
                )));
            }
            write(&file, &unified[key])?;
        }
        Ok(())
    }

    /// The cgroup.procs files to write a pid into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        match self {
            Cgroup::V1 { dirs, .. } => dirs.iter().map(|d| d.path.join("cgroup.procs")).collect(),
            Cgroup::V2 { path, .. } => vec![path.join("cgroup.procs")],
        }
    }

    /// Moves `pid` (0: the caller) into the cgroup in every hierarchy; with the systemd driver,
    /// starts the transient unit with `pid` in it and waits until the process is inside.
    pub fn join(&self, pid: i32) -> Result<()> {
        if let Some(scope) = self.scope() {
            let pid = if pid == 0 { std::process::id() as i32 } else { pid };
            scope.start(pid)?;
            // systemd delegates only the controllers it knows (not hugetlb): as runc, the others
            // are enabled on the way down to the scope.
            if let Cgroup::V2 { path, .. } = self {
                let mut cur = PathBuf::from(ROOT);
                for c in path.strip_prefix(ROOT).unwrap_or(path).parent().into_iter().flat_map(Path::components) {
                    delegate(&cur);
                    cur.push(c);
                }
                delegate(&cur);
            }
            return Ok(());
        }
        for f in self.procs_files() {
            write(&f, &pid.to_string())?;
        }
        Ok(())
    }

    /// The pids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let Some(f) = self.procs_files().into_iter().next() else {
            return vec![];
        };
        fs::read_to_string(f).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// The kernel's count of OOM kills in this cgroup.
    pub fn oom_kills(&self) -> Option<u64> {
        let (file, key) = match self {
            Cgroup::V1 { .. } => (self.v1_dir("memory")?.join("memory.oom_control"), "oom_kill"),
            Cgroup::V2 { path, .. } => (path.join("memory.events"), "oom_kill"),
        };
        let text = fs::read_to_string(file).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Removes the dirs this shim created, deepest first, retrying while the last
    /// processes leave. Best effort.
    pub fn remove(&self) -> Vec<String> {
        let created = match self {
            Cgroup::V1 { created, .. } | Cgroup::V2 { created, .. } => created,
        };
        let mut errors = Vec::new();
        if let Some(scope) = self.scope() {
            if let Err(e) = scope.stop() {
                errors.push(e.to_string());
            }
        }
        for dir in created.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        errors.push(format!("removing cgroup {}: {e}", dir.display()));
                        break;
                    }
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_from_mountinfo() {
        let mi = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
                  35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let h = v1_hierarchies(mi);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].0, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(h[0].1, vec!["cpu", "cpuacct"]);
        assert_eq!(h[1].1, vec!["memory"]);
    }
}
