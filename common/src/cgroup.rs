//! Which cgroup hierarchy a host runs containers in, decided once by corrald from its
//! mount table and handed to corral-shim in each bundle (annotation), so both always agree.

/// The annotation of config.json that carries the decision ("1" or "2").
pub const VERSION_ANNOTATION: &str = "io.corral.cgroup-version";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// cgroup v1 controller hierarchies (an empty v2 hierarchy beside them, as on hybrid
    /// hosts, is not used).
    V1,
    /// The unified hierarchy mounted at /sys/fs/cgroup.
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "1",
            Version::V2 => "2",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        match s {
            "1" => Some(Version::V1),
            "2" => Some(Version::V2),
            _ => None,
        }
    }
}

/// The rule, from a mount table (/proc/self/mountinfo): v2 when /sys/fs/cgroup is cgroup2,
/// else v1 when any v1 controller hierarchy is mounted, else none.
pub fn detect(mountinfo: &str) -> Option<Version> {
    let mut v1 = false;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(mount), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else { continue };
        let super_opts = fields.get(sep + 3).copied().unwrap_or("");
        match *fstype {
            "cgroup2" if *mount == "/sys/fs/cgroup" => return Some(Version::V2),
            "cgroup" if !super_opts.split(',').any(|o| o.starts_with("name=")) => v1 = true,
            _ => {}
        }
    }
    v1.then_some(Version::V1)
}

/// The v2 controllers corral puts limits in.
pub const V2_CONTROLLERS: [&str; 6] = ["cpu", "cpuset", "io", "memory", "pids", "hugetlb"];

/// Enables, in the v2 cgroup `dir`'s `cgroup.subtree_control`, those of [`V2_CONTROLLERS`] it
/// has and has not enabled yet: a v2 cgroup has a controller's files only when its parent
/// delegates it. Reads two files, writes one only when something is missing.
pub fn delegate(dir: &std::path::Path) -> std::io::Result<()> {
    let have = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| have.split_whitespace().any(|h| h == **c) && !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let file = dir.join("cgroup.subtree_control");
    std::fs::write(&file, missing.join(" ")).map_err(|e| {
        std::io::Error::new(e.kind(), format!("writing {:?} to {}: {e}", missing.join(" "), file.display()))
    })
}

/// The rule applied to this process's mount table.
pub fn detect_host() -> Option<Version> {
    std::fs::read_to_string("/proc/self/mountinfo").ok().and_then(|m| detect(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "30 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n\
        31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
        32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd\n\
        33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory\n";
    const UNIFIED: &str =
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn one_rule_for_every_host() {
        assert_eq!(detect(HYBRID), Some(Version::V1));
        assert_eq!(detect(UNIFIED), Some(Version::V2));
        assert_eq!(detect("30 23 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n"), None);
        assert_eq!(detect(""), None);
        assert_eq!(Version::parse(Version::V2.as_str()), Some(Version::V2));
        assert_eq!(Version::parse("3"), None);
    }
}
