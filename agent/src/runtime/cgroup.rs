//! Pod cgroups with the cgroupfs driver: one directory per hierarchy on cgroup v1, one on v2.
//! Container cgroups below it are made by the shim; here they are only removed when empty.

use std::io;
use std::path::{Path, PathBuf};

use common::cgroup::Version;

use super::spec::Resources;

pub use crate::config::CgroupDriver as Driver;

/// The cgroup of a pod that names no parent: `<parent>/pod-<id16>` with cgroupfs, the slice
/// `<parent prefix>-pod<id16>.slice` (inside the parent slice) with systemd.
pub fn pod_cgroup(driver: Driver, parent: &str, id16: &str) -> String {
    match driver {
        Driver::Cgroupfs => format!("{}/pod-{id16}", parent.trim_end_matches('/')),
        Driver::Systemd => match parent.strip_suffix(".slice") {
            Some("-") | None => format!("pod{id16}.slice"),
            Some(prefix) => format!("{prefix}-pod{id16}.slice"),
        },
    }
}

/// The cgroup of a container (or, with `name` the pod id, of a pod's pause process) in the pod
/// cgroup: a child dir with cgroupfs, the scope `corral-<name>.scope` in the pod slice with
/// systemd (OCI's `slice:prefix:name`; unit names are global, so it is named by the id).
pub fn child_cgroup(driver: Driver, pod: &str, name: &str) -> String {
    match driver {
        Driver::Cgroupfs => format!("{}/{name}", pod.trim_end_matches('/')),
        Driver::Systemd => format!("{pod}:corral:{name}"),
    }
}

/// A pod's cgroup parent as the request gives it: an absolute path with cgroupfs, a slice name
/// with systemd (the kubelet's `kubepods-burstable-pod<uid>.slice`).
pub fn check_parent(driver: Driver, parent: &str) -> Result<(), String> {
    match driver {
        Driver::Cgroupfs => crate::runtime::validate::cgroup_parent(parent),
        Driver::Systemd => common::systemd::expand_slice(parent).map(|_| ()).map_err(|e| {
            format!("linux.cgroup_parent {parent:?} is not a systemd slice (the systemd cgroup driver is in use): {e}")
        }),
    }
}

/// The cgroup hierarchies mounted on this host.
#[derive(Debug, Clone)]
pub struct Hierarchies {
    /// Which hierarchy containers go in, decided by the rule corral-shim shares
    /// (common::cgroup::detect) and handed to it in each bundle.
    version: Version,
    /// Mount points of the hierarchies corral places processes in.
    mounts: Vec<PathBuf>,
    driver: Driver,
}

impl Hierarchies {
    /// Reads /proc/self/mountinfo: v1 controller hierarchies, or the v2 root when /sys/fs/cgroup is
    /// cgroup2 (an empty v2 hierarchy beside v1 controllers, as on hybrid hosts, is not used).
    pub fn detect(driver: Driver) -> io::Result<Hierarchies> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let version = common::cgroup::detect(&info)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup hierarchy is mounted"))?;
        let mounts = match version {
            Version::V2 => vec![PathBuf::from("/sys/fs/cgroup")],
            Version::V1 => info
                .lines()
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split(' ').collect();
                    let sep = fields.iter().position(|f| *f == "-")?;
                    let super_opts = fields.get(sep + 3).copied().unwrap_or("");
                    let mount = fields.get(4).filter(|_| sep > 4)?;
                    (fields.get(sep + 1) == Some(&"cgroup") && !super_opts.split(',').any(|o| o.starts_with("name=")))
                        .then(|| PathBuf::from(mount))
                })
                .collect(),
        };
        Ok(Hierarchies { version, mounts, driver })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// A cgroup's path below the hierarchies' roots: itself with cgroupfs; with systemd, a
    /// slice's expansion or a `slice:prefix:name` scope's.
    fn path(&self, cgroup: &str) -> String {
        match (self.driver, unit(cgroup)) {
            (Driver::Systemd, Some((_, path))) => path,
            _ => cgroup.to_string(),
        }
    }

    fn dirs(&self, cgroup: &str) -> impl Iterator<Item = PathBuf> + '_ {
        let rel = self.path(cgroup).trim_start_matches('/').to_string();
        self.mounts.iter().map(move |m| m.join(&rel))
    }

    /// Creates the cgroup in every hierarchy (cpuset inheriting cpus and mems on v1); with
    /// systemd, starts the slice as a transient unit with `limits` as its properties.
    pub fn create(&self, cgroup: &str, limits: Option<&Resources>) -> io::Result<()> {
        if self.driver == Driver::Systemd {
            use common::systemd::{self, Value};
            let mut props: Vec<systemd::Property> = vec![
                ("Description", Value::Str(format!("corral pod {cgroup}"))),
                ("DefaultDependencies", Value::Bool(false)),
                ("MemoryAccounting", Value::Bool(true)),
                ("CPUAccounting", Value::Bool(true)),
                ("TasksAccounting", Value::Bool(true)),
            ];
            if let Some(r) = limits {
                props.extend(
                    systemd::resource_properties(&unit_limits(r))
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
                );
            }
            return systemd_call(|conn| systemd::start_unit_and_wait(conn, cgroup, &props))
                .map_err(|e| io::Error::other(format!("starting slice {cgroup}: {e}")));
        }
        for (mount, dir) in self.mounts.iter().zip(self.dirs(cgroup)) {
            create_dir_chain(mount, &dir)?;
        }
        Ok(())
    }

    /// Removes the cgroup and any empty child cgroups left below it (with systemd, stops the
    /// slice first). Idempotent.
    pub fn remove(&self, cgroup: &str) -> io::Result<()> {
        if let (Driver::Systemd, Some((name, _))) = (self.driver, unit(cgroup)) {
            systemd_call(|conn| common::systemd::stop_unit(conn, &name))
                .map_err(|e| io::Error::other(format!("stopping {name}: {e}")))?;
        }
        for dir in self.dirs(cgroup) {
            remove_tree(&dir)?;
        }
        Ok(())
    }

    /// Writes the limits `r` sets (zero and empty fields are left as they are) into the cgroup's
    /// files, in every hierarchy that has them (cgroup v1 file names, or v2's).
    pub fn apply(&self, cgroup: &str, r: &Resources) -> io::Result<()> {
        for (mount, dir) in self.mounts.iter().zip(self.dirs(cgroup)) {
            let v2 = mount.join("cgroup.controllers").exists();
            for (file, value) in limit_files(r, v2) {
                let path = dir.join(&file);
                // A controller this kernel lacks (hugetlb, swap accounting) is skipped, as
                // containerd tolerates a missing hugetlb controller; a unified key is asked for
                // by name, so its file must be there.
                if !path.exists() && !r.unified.contains_key(&file) {
                    continue;
                }
                std::fs::write(&path, &value)
                    .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {}: {e}", path.display())))?;
            }
        }
        Ok(())
    }

    /// The pids in the cgroup and below it, from every hierarchy (as the host sees them).
    pub fn pids(&self, cgroup: &str) -> Vec<u32> {
        let mut pids = Vec::new();
        for dir in self.dirs(cgroup) {
            collect_pids(&dir, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Sends `signal` to every process in the cgroup and below, until none is left or `timeout`
    /// passes; returns the pids still there then (empty: all gone).
    pub async fn kill_all(&self, cgroup: &str, signal: i32, timeout: std::time::Duration) -> Vec<u32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pids = self.pids(cgroup);
            if pids.is_empty() || tokio::time::Instant::now() >= deadline {
                return pids;
            }
            for pid in &pids {
                let _ = crate::sys::kill(*pid as i32, signal);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Whether the cgroup exists in any hierarchy.
    pub fn exists(&self, cgroup: &str) -> bool {
        self.dirs(cgroup).any(|d| d.exists())
    }
}

/// With systemd, a cgroup name is a slice (`a-b.slice`) or a container's `slice:prefix:name`:
/// its unit and its path below the hierarchies' roots. None: not a systemd name.
fn unit(cgroup: &str) -> Option<(String, String)> {
    if cgroup.contains(':') {
        let u = common::systemd::parse_cgroups_path(cgroup).ok()?;
        return Some((u.unit_name(), u.cgroup()));
    }
    Some((cgroup.to_string(), common::systemd::expand_slice(cgroup).ok()?))
}

/// One call to systemd over a fresh D-Bus connection (pods come and go rarely enough).
fn systemd_call<T>(
    f: impl FnOnce(&mut common::dbus::Connection) -> common::systemd::Result<T>,
) -> common::systemd::Result<T> {
    let mut conn = common::dbus::Connection::system()?;
    conn.set_timeout(std::time::Duration::from_secs(30));
    f(&mut conn)
}

/// The limits systemd takes as unit properties.
fn unit_limits(r: &Resources) -> common::systemd::Resources {
    let positive = |v: i64| (v > 0).then_some(v);
    common::systemd::Resources {
        cpu_shares: positive(r.cpu_shares).map(|v| v as u64),
        cpu_quota: (r.cpu_quota != 0).then_some(r.cpu_quota),
        cpu_period: positive(r.cpu_period).map(|v| v as u64),
        cpuset_cpus: Some(r.cpuset_cpus.clone()).filter(|s| !s.is_empty()),
        cpuset_mems: Some(r.cpuset_mems.clone()).filter(|s| !s.is_empty()),
        memory_limit: positive(r.memory_limit),
        memory_swap: positive(r.memory_swap_limit),
        pids_limit: positive(r.pids_limit),
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

/// The cgroup files and values of the limits `r` sets, for cgroup v1 or v2.
fn limit_files(r: &Resources, v2: bool) -> Vec<(String, String)> {
    let mut out: Vec<(&str, String)> = Vec::new();
    if !r.cpuset_cpus.is_empty() {
        out.push(("cpuset.cpus", r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        out.push(("cpuset.mems", r.cpuset_mems.clone()));
    }
    if v2 {
        if r.cpu_shares > 0 {
            // The conversion runc and the kubelet use: shares 2..262144 onto weight 1..10000.
            let shares = r.cpu_shares.clamp(2, 262_144);
            out.push(("cpu.weight", (1 + ((shares - 2) * 9999) / 262_142).to_string()));
        }
        if r.cpu_quota != 0 || r.cpu_period > 0 {
            let quota = if r.cpu_quota > 0 { r.cpu_quota.to_string() } else { "max".into() };
            let period = if r.cpu_period > 0 { r.cpu_period } else { 100_000 };
            out.push(("cpu.max", format!("{quota} {period}")));
        }
        if r.memory_limit > 0 {
            out.push(("memory.max", r.memory_limit.to_string()));
        }
    } else {
        if r.cpu_shares > 0 {
            out.push(("cpu.shares", r.cpu_shares.to_string()));
        }
        if r.cpu_period > 0 {
            out.push(("cpu.cfs_period_us", r.cpu_period.to_string()));
        }
        if r.cpu_quota != 0 {
            out.push(("cpu.cfs_quota_us", r.cpu_quota.to_string()));
        }
        if r.memory_limit > 0 {
            out.push(("memory.limit_in_bytes", r.memory_limit.to_string()));
        }
    }
    if r.pids_limit > 0 {
        out.push(("pids.max", r.pids_limit.to_string()));
    }
    let mut out: Vec<(String, String)> = out.into_iter().map(|(f, v)| (f.to_string(), v)).collect();
    for (size, limit) in &r.hugepage_limits {
        let file = if v2 { format!("hugetlb.{size}.max") } else { format!("hugetlb.{size}.limit_in_bytes") };
        out.push((file, limit.to_string()));
    }
    if v2 {
        // Last, so they win over the fields above where both name a file.
        out.extend(r.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

fn create_dir_chain(mount: &Path, dir: &Path) -> io::Result<()> {
    let is_cpuset = mount.join("cpuset.cpus").exists();
    let v2 = mount.join("cgroup.controllers").exists();
    let rel = dir.strip_prefix(mount).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut current = mount.to_path_buf();
    for comp in rel.components() {
        let parent = current.clone();
        if v2 {
            common::cgroup::delegate(&parent)?;
        }
        current.push(comp);
        match std::fs::create_dir(&current) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("creating cgroup {}: {e}", current.display()))),
        }
        if is_cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let mine = std::fs::read_to_string(current.join(file)).unwrap_or_default();
                if mine.trim().is_empty() {
                    let theirs = std::fs::read_to_string(parent.join(file))?;
                    std::fs::write(current.join(file), theirs.trim())?;
                }
            }
        }
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io::Error::new(e.kind(), format!("removing cgroup {}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_per_driver() {
        let fs = Hierarchies { version: Version::V2, mounts: vec!["/sys/fs/cgroup".into()], driver: Driver::Cgroupfs };
        let sd = Hierarchies { driver: Driver::Systemd, ..fs.clone() };
        assert_eq!(pod_cgroup(Driver::Cgroupfs, "/corral/", "0123"), "/corral/pod-0123");
        assert_eq!(pod_cgroup(Driver::Systemd, "corral.slice", "0123"), "corral-pod0123.slice");
        assert_eq!(pod_cgroup(Driver::Systemd, "-.slice", "0123"), "pod0123.slice");
        let pod = "kubepods-burstable-pod1.slice";
        assert_eq!(child_cgroup(Driver::Systemd, pod, "abc"), "kubepods-burstable-pod1.slice:corral:abc");
        assert_eq!(child_cgroup(Driver::Cgroupfs, "/kubepods/pod1", "abc"), "/kubepods/pod1/abc");
        assert_eq!(sd.path(pod), "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice");
        assert_eq!(
            sd.path(&child_cgroup(Driver::Systemd, pod, "abc")),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/corral-abc.scope"
        );
        assert_eq!(sd.path("corral.slice"), "/corral.slice");
        assert_eq!(fs.path("/corral/pod-1/abc"), "/corral/pod-1/abc");
        assert_eq!(unit(pod).map(|u| u.0).as_deref(), Some(pod));
        assert_eq!(unit("corral.slice").map(|u| u.0).as_deref(), Some("corral.slice"));
        assert_eq!(unit(&child_cgroup(Driver::Systemd, pod, "abc")).map(|u| u.0).as_deref(), Some("corral-abc.scope"));
        assert_eq!(unit("/corral/pod-1"), None);
        assert!(check_parent(Driver::Systemd, "/kubepods/pod1").is_err());
        assert!(check_parent(Driver::Systemd, pod).is_ok());
        assert!(check_parent(Driver::Cgroupfs, pod).is_err());
    }

    #[test]
    fn limits_as_v1_and_v2_files() {
        let r = Resources {
            cpu_shares: 1024,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit: 1 << 30,
            cpuset_cpus: "0".into(),
            pids_limit: 100,
            hugepage_limits: [("2MB".to_string(), 4 << 20)].into(),
            unified: [("memory.low".to_string(), "1048576".to_string())].into(),
            ..Default::default()
        };
        let v1 = limit_files(&r, false);
        let has = |files: &[(String, String)], f: &str, v: &str| files.contains(&(f.to_string(), v.to_string()));
        assert!(has(&v1, "cpu.shares", "1024") && has(&v1, "cpu.cfs_quota_us", "50000"));
        assert!(has(&v1, "memory.limit_in_bytes", &(1u64 << 30).to_string()) && has(&v1, "cpuset.cpus", "0"));
        assert!(has(&v1, "hugetlb.2MB.limit_in_bytes", "4194304"), "{v1:?}");
        assert!(!v1.iter().any(|(f, _)| f == "memory.low"), "unified keys are v2 files");
        let v2 = limit_files(&r, true);
        assert!(has(&v2, "cpu.weight", "39"), "{v2:?}");
        assert!(has(&v2, "cpu.max", "50000 100000") && has(&v2, "memory.max", &(1u64 << 30).to_string()));
        assert!(has(&v2, "pids.max", "100") && has(&v2, "hugetlb.2MB.max", "4194304"));
        assert_eq!(v2.last(), Some(&("memory.low".to_string(), "1048576".to_string())));
        // Unset fields leave the files alone.
        assert!(limit_files(&Resources::default(), false).is_empty());
        assert!(limit_files(&Resources::default(), true).is_empty());
    }
}
