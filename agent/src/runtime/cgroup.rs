//! Pod cgroups with the cgroupfs driver: one directory per hierarchy on cgroup v1, one on v2.
//! Container cgroups below it are made by the shim; here they are only removed when empty.

use std::io;
use std::path::{Path, PathBuf};

/// The cgroup hierarchies mounted on this host.
#[derive(Debug, Clone)]
pub struct Hierarchies {
    /// Mount points of the hierarchies corral places processes in.
    mounts: Vec<PathBuf>,
}

impl Hierarchies {
    /// Reads /proc/self/mountinfo: v1 controller hierarchies, or the v2 root when /sys/fs/cgroup is
    /// cgroup2 (an empty v2 hierarchy beside v1 controllers, as on hybrid hosts, is not used).
    pub fn detect() -> io::Result<Hierarchies> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut v1 = Vec::new();
        let mut v2 = None;
        for line in info.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
            let (Some(mount), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else { continue };
            let super_opts = fields.get(sep + 3).copied().unwrap_or("");
            match *fstype {
                "cgroup" if !super_opts.split(',').any(|o| o.starts_with("name=")) => v1.push(PathBuf::from(mount)),
                "cgroup2" if *mount == "/sys/fs/cgroup" => v2 = Some(PathBuf::from(mount)),
                _ => {}
            }
        }
        let mounts = if v1.is_empty() { v2.into_iter().collect() } else { v1 };
        if mounts.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no cgroup hierarchy is mounted"));
        }
        Ok(Hierarchies { mounts })
    }

    fn dirs(&self, cgroup: &str) -> impl Iterator<Item = PathBuf> + '_ {
        let rel = cgroup.trim_start_matches('/').to_string();
        self.mounts.iter().map(move |m| m.join(&rel))
    }

    /// Creates the cgroup in every hierarchy (cpuset inheriting cpus and mems on v1).
    pub fn create(&self, cgroup: &str) -> io::Result<()> {
        for (mount, dir) in self.mounts.iter().zip(self.dirs(cgroup)) {
            create_dir_chain(mount, &dir)?;
        }
        Ok(())
    }

    /// Removes the cgroup and any empty child cgroups left below it. Idempotent.
    pub fn remove(&self, cgroup: &str) -> io::Result<()> {
        for dir in self.dirs(cgroup) {
            remove_tree(&dir)?;
        }
        Ok(())
    }

    /// Whether the cgroup exists in any hierarchy.
    pub fn exists(&self, cgroup: &str) -> bool {
        self.dirs(cgroup).any(|d| d.exists())
    }
}

fn create_dir_chain(mount: &Path, dir: &Path) -> io::Result<()> {
    let is_cpuset = mount.join("cpuset.cpus").exists();
    let rel = dir.strip_prefix(mount).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut current = mount.to_path_buf();
    for comp in rel.components() {
        let parent = current.clone();
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
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(e.kind(), format!("removing cgroup {}: {e}", dir.display()))),
        _ => Ok(()),
    }
}
