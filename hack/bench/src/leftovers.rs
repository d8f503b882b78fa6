//! What a runtime left behind after all its pods were removed: mounts under its directories,
//! network namespaces, veths on its bridge, IP allocations in its CNI data dir, shim processes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where to look; everything is optional.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Mount points under these directories count (the runtime's root and state).
    pub dirs: Vec<PathBuf>,
    /// The pod network's bridge: every port left on it is a veth leak.
    pub bridge: Option<String>,
    /// The CNI host-local `dataDir`: files other than its lock and last-reserved marker.
    pub cni_data_dir: Option<PathBuf>,
    /// A cgroup (path from the hierarchy root) whose sub-cgroups count, in every hierarchy.
    pub cgroup: Option<String>,
}

/// Named network namespaces (`ip netns`), to diff before and after.
pub fn netns_names() -> BTreeSet<String> {
    let Ok(rd) = std::fs::read_dir("/var/run/netns") else {
        return BTreeSet::new();
    };
    rd.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect()
}

fn mounts_under(dirs: &[PathBuf]) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| dirs.iter().any(|d| Path::new(m).starts_with(d)))
        .map(String::from)
        .collect()
}

fn bridge_ports(bridge: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif")) else {
        return Vec::new();
    };
    rd.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect()
}

fn ip_allocations(data_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(nets) = std::fs::read_dir(data_dir) else {
        return out;
    };
    for net in nets.flatten() {
        let Ok(files) = std::fs::read_dir(net.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name != "lock" && !name.starts_with("last_reserved_ip") {
                out.push(format!("{}/{name}", net.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Sub-cgroups of `cgroup` in every hierarchy (v1 controllers, or the v2 root), deduplicated.
fn sub_cgroups(cgroup: &str) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.insert(e.path().strip_prefix(base).unwrap_or(&e.path()).display().to_string());
                walk(&e.path(), base, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    let rel = cgroup.trim_start_matches('/');
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(rd.flatten().map(|e| e.path()));
    }
    for r in roots {
        let base = r.join(rel);
        walk(&base, &base, &mut out);
    }
    out.into_iter().collect()
}

/// One line per kind of leftover with what was found; empty when nothing is left.
pub fn check(w: &Watch, netns_before: &BTreeSet<String>, shims: &[u32]) -> Vec<String> {
    let mut out = Vec::new();
    let mut report = |what: &str, items: Vec<String>| {
        if !items.is_empty() {
            let shown: Vec<_> = items.iter().take(5).cloned().collect();
            out.push(format!(
                "{} {what}: {}{}",
                items.len(),
                shown.join(", "),
                if items.len() > 5 { ", ..." } else { "" }
            ));
        }
    };
    report("mounts", mounts_under(&w.dirs));
    report("new netns", netns_names().difference(netns_before).cloned().collect());
    if let Some(b) = &w.bridge {
        report(&format!("veths on {b}"), bridge_ports(b));
    }
    if let Some(d) = &w.cni_data_dir {
        report("IP allocations", ip_allocations(d));
    }
    if let Some(c) = &w.cgroup {
        report(&format!("cgroups under {c}"), sub_cgroups(c));
    }
    report("shim processes", shims.iter().map(|p| p.to_string()).collect());
    out
}
