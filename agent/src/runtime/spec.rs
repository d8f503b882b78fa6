//! OCI runtime spec (config.json) generation for containers and for the pause process, with
//! containerd's defaults: capabilities, mounts, devices, masked and read-only paths.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::namespaces::Wanted;

/// containerd's default capability set.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, in kernel order, for privileged containers and "ALL".
pub const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
    "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
];

/// A device node on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNode {
    /// 'c' or 'b'.
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Capabilities supported by the running kernel (from cap_last_cap).
fn kernel_caps() -> Vec<&'static str> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse::<usize>().ok()).unwrap_or(40);
    ALL_CAPS.iter().take(last + 1).copied().collect()
}

/// `NET_ADMIN` / `cap_net_admin` → `CAP_NET_ADMIN`; None when unknown.
pub fn normalize_cap(name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    ALL_CAPS.contains(&full.as_str()).then_some(full)
}

/// The capability set: the default (or all when privileged), minus drops, plus adds; "ALL" works
/// on either side.
pub fn capabilities(privileged: bool, add: &[String], drop: &[String]) -> Result<Vec<String>, String> {
    if privileged {
        return Ok(kernel_caps().into_iter().map(String::from).collect());
    }
    let check = |names: &[String]| -> Result<Vec<String>, String> {
        names.iter().map(|n| if n.eq_ignore_ascii_case("ALL") { Ok("ALL".into()) } else { normalize_cap(n).ok_or_else(|| format!("unknown capability {n:?}")) }).collect()
    };
    let add = check(add)?;
    let drop = check(drop)?;
    let mut caps: Vec<String> = if drop.iter().any(|c| c == "ALL") { vec![] } else { DEFAULT_CAPS.iter().map(|c| c.to_string()).filter(|c| !drop.contains(c)).collect() };
    if add.iter().any(|c| c == "ALL") {
        caps = kernel_caps().into_iter().map(String::from).filter(|c| !drop.contains(c) || drop.iter().any(|d| d == "ALL")).collect();
    } else {
        for c in add {
            if !caps.contains(&c) {
                caps.push(c);
            }
        }
    }
    Ok(caps)
}

/// Mount propagation, numbered as the CRI's MountPropagation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

impl Propagation {
    /// The CRI MountPropagation value.
    pub fn code(self) -> i32 {
        match self {
            Propagation::Private => 0,
            Propagation::HostToContainer => 1,
            Propagation::Bidirectional => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    /// Read-only down to every submount ("rro"); only with `readonly` and private propagation.
    pub recursive_readonly: bool,
    pub propagation: Propagation,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub container_path: String,
    pub node: DeviceNode,
    /// cgroup device access: some of r, w, m.
    pub permissions: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit: i64,
    pub memory_swap_limit: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub pids_limit: i64,
}

impl Resources {
    /// The sum of two sets of limits (pod resources and overhead): amounts add up; the cpuset
    /// and the CFS period are `self`'s.
    pub fn plus(&self, other: &Resources) -> Resources {
        let add = |a: i64, b: i64| if a > 0 && b > 0 { a + b } else { a };
        Resources {
            cpu_period: self.cpu_period,
            cpu_quota: add(self.cpu_quota, other.cpu_quota),
            cpu_shares: add(self.cpu_shares, other.cpu_shares),
            memory_limit: add(self.memory_limit, other.memory_limit),
            memory_swap_limit: add(self.memory_swap_limit, other.memory_swap_limit),
            oom_score_adj: self.oom_score_adj,
            cpuset_cpus: self.cpuset_cpus.clone(),
            cpuset_mems: self.cpuset_mems.clone(),
            pids_limit: add(self.pids_limit, other.pids_limit),
        }
    }
}

/// Namespace paths to join (None = a new namespace, Some = setns into it); omitted kinds share
/// the host's.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    pub network: Option<Option<PathBuf>>,
    pub ipc: Option<Option<PathBuf>>,
    pub uts: Option<Option<PathBuf>>,
    pub pid: Option<Option<PathBuf>>,
}

/// Everything a container's config.json is made from, already resolved.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub ambient: Vec<String>,
    pub no_new_privs: bool,
    pub tty: bool,
    pub hostname: String,
    pub privileged: bool,
    pub namespaces: Namespaces,
    pub cgroup: String,
    pub resources: Resources,
    pub mounts: Vec<BindMount>,
    /// /etc/hosts, /etc/resolv.conf, /etc/hostname sources.
    pub pod_files: PathBuf,
    /// Source of /dev/shm (the pod's tmpfs, or the host's).
    pub shm: PathBuf,
    pub devices: Vec<Device>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub sysctls: BTreeMap<String, String>,
    pub annotations: HashMap<String, String>,
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    json!({ "destination": dest, "type": kind, "source": source, "options": options })
}

fn ns_entry(kind: &str, path: &Option<PathBuf>) -> Value {
    match path {
        Some(p) => json!({ "type": kind, "path": p }),
        None => json!({ "type": kind }),
    }
}

const DEFAULT_DEVICES: [(&str, i64, i64); 6] = [("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7), ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0)];

pub fn container_spec(s: &ContainerSpec) -> Value {
    let sys_opts: &[&str] = if s.privileged { &["nosuid", "noexec", "nodev", "rw"] } else { &["nosuid", "noexec", "nodev", "ro"] };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", sys_opts),
    ];
    let user_paths: Vec<&str> = s.mounts.iter().map(|m| m.container_path.as_str()).collect();
    if !user_paths.contains(&"/sys/fs/cgroup") {
        // The container's own cgroup, read-only unless privileged (containerd's default).
        let cgroup_opts: &[&str] = if s.privileged { &["nosuid", "noexec", "nodev", "relatime", "rw"] } else { &["nosuid", "noexec", "nodev", "relatime", "ro"] };
        mounts.push(mount("/sys/fs/cgroup", "cgroup", "cgroup", cgroup_opts));
    }
    let file_ro = if s.readonly_rootfs { "ro" } else { "rw" };
    let pod_mounts = [
        ("/etc/hosts", s.pod_files.join(super::podfiles::HOSTS), file_ro),
        ("/etc/resolv.conf", s.pod_files.join(super::podfiles::RESOLV), file_ro),
        ("/etc/hostname", s.pod_files.join(super::podfiles::HOSTNAME), file_ro),
        ("/dev/shm", s.shm.clone(), "rw"),
    ];
    for (dest, source, ro) in pod_mounts {
        if !user_paths.contains(&dest) {
            mounts.push(mount(dest, "bind", &source.display().to_string(), &["rbind", "rprivate", ro, "nosuid", "nodev"]));
        }
    }
    let mut user_mounts = s.mounts.clone();
    user_mounts.sort_by_key(|m| Path::new(&m.container_path).components().count());
    let mut root_propagation = "rprivate";
    for m in &user_mounts {
        let prop = match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => {
                if root_propagation == "rprivate" {
                    root_propagation = "rslave";
                }
                "rslave"
            }
            Propagation::Bidirectional => {
                // Shared all the way, so the container's mount is a peer of the host's; the shim
                // keeps pivot_root possible by making the rootfs mount private.
                root_propagation = "rshared";
                "rshared"
            }
        };
        let access = match (m.readonly, m.recursive_readonly) {
            (true, true) => "rro",
            (true, false) => "ro",
            (false, _) => "rw",
        };
        mounts.push(mount(&m.container_path, "bind", &m.host_path, &["rbind", prop, access]));
    }

    let mut namespaces = vec![json!({ "type": "mount" })];
    if let Some(p) = &s.namespaces.network {
        namespaces.push(ns_entry("network", p));
    }
    if let Some(p) = &s.namespaces.ipc {
        namespaces.push(ns_entry("ipc", p));
    }
    if let Some(p) = &s.namespaces.uts {
        namespaces.push(ns_entry("uts", p));
    }
    if let Some(p) = &s.namespaces.pid {
        namespaces.push(ns_entry("pid", p));
    }

    let mut devices: Vec<Value> = DEFAULT_DEVICES
        .iter()
        .map(|(path, major, minor)| json!({ "path": path, "type": "c", "major": major, "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0 }))
        .collect();
    let mut device_rules = vec![
        json!({ "allow": false, "access": "rwm" }),
        json!({ "allow": true, "type": "c", "access": "m" }),
        json!({ "allow": true, "type": "b", "access": "m" }),
    ];
    for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (10, 200)] {
        device_rules.push(json!({ "allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm" }));
    }
    device_rules.push(json!({ "allow": true, "type": "c", "major": 136, "access": "rwm" }));
    if s.privileged {
        device_rules = vec![json!({ "allow": true, "access": "rwm" })];
    }
    for d in &s.devices {
        let n = &d.node;
        devices.push(json!({ "path": d.container_path, "type": n.kind.to_string(), "major": n.major, "minor": n.minor, "fileMode": n.mode, "uid": n.uid, "gid": n.gid }));
        device_rules.push(json!({ "allow": true, "type": n.kind.to_string(), "major": n.major, "minor": n.minor, "access": d.permissions }));
    }

    let r = &s.resources;
    let mut resources = serde_json::Map::new();
    resources.insert("devices".into(), Value::Array(device_rules));
    let mut memory = serde_json::Map::new();
    if r.memory_limit > 0 {
        memory.insert("limit".into(), json!(r.memory_limit));
    }
    if r.memory_swap_limit > 0 {
        memory.insert("swap".into(), json!(r.memory_swap_limit));
    }
    if !memory.is_empty() {
        resources.insert("memory".into(), Value::Object(memory));
    }
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        resources.insert("cpu".into(), Value::Object(cpu));
    }
    if r.pids_limit > 0 {
        resources.insert("pids".into(), json!({ "limit": r.pids_limit }));
    }

    let mut process = json!({
        "terminal": s.tty,
        "user": { "uid": s.uid, "gid": s.gid, "additionalGids": s.additional_gids },
        "args": s.args,
        "env": s.env,
        "cwd": s.cwd,
        "capabilities": {
            "bounding": s.caps,
            "effective": s.caps,
            "permitted": s.caps,
            "inheritable": [],
            "ambient": s.ambient,
        },
        "noNewPrivileges": s.no_new_privs,
    });
    if r.oom_score_adj != 0 {
        process["oomScoreAdj"] = json!(r.oom_score_adj);
    }

    let mut linux = json!({
        "namespaces": namespaces,
        "devices": devices,
        "cgroupsPath": s.cgroup,
        "resources": Value::Object(resources),
        "rootfsPropagation": root_propagation,
        "sysctl": s.sysctls,
    });
    if !s.privileged {
        linux["maskedPaths"] = json!(s.masked_paths);
        linux["readonlyPaths"] = json!(s.readonly_paths);
    }
    let mut spec = json!({
        "ociVersion": "1.1.0",
        "process": process,
        "root": { "path": s.rootfs, "readonly": s.readonly_rootfs },
        "mounts": mounts,
        "linux": linux,
        "annotations": s.annotations,
    });
    if s.namespaces.uts.as_ref().is_some_and(|p| p.is_none()) {
        spec["hostname"] = json!(s.hostname);
    }
    spec
}

/// config.json of the pause process: the pod's namespaces to join, a new PID namespace, and
/// its cgroup. No root and no process: the pause shim does not exec anything.
pub fn pause_spec(ns_dir: &Path, wanted: Wanted, cgroup: &str) -> Value {
    let mut namespaces = vec![json!({ "type": "pid" })];
    for (kind, file, on) in [("network", "net", wanted.net), ("ipc", "ipc", wanted.ipc), ("uts", "uts", wanted.uts)] {
        if on {
            namespaces.push(json!({ "type": kind, "path": ns_dir.join(file) }));
        }
    }
    json!({
        "ociVersion": "1.1.0",
        "linux": { "namespaces": namespaces, "cgroupsPath": cgroup },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_arithmetic() {
        let caps = capabilities(false, &["NET_ADMIN".into()], &["cap_kill".into(), "MKNOD".into()]).unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_KILL".to_string()) && !caps.contains(&"CAP_MKNOD".to_string()));
        assert_eq!(caps.len(), DEFAULT_CAPS.len() - 1);
        assert_eq!(capabilities(false, &["CHOWN".into()], &["ALL".into()]).unwrap(), vec!["CAP_CHOWN".to_string()]);
        assert!(capabilities(false, &["NOPE".into()], &[]).is_err());
        assert!(capabilities(true, &[], &[]).unwrap().contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn user_mounts_override_defaults_and_set_propagation() {
        let s = ContainerSpec {
            readonly_rootfs: true,
            namespaces: Namespaces { uts: Some(Some("/ns/uts".into())), ..Default::default() },
            mounts: vec![BindMount { container_path: "/etc/hosts".into(), host_path: "/tmp/h".into(), readonly: true, recursive_readonly: false, propagation: Propagation::Bidirectional }],
            masked_paths: vec!["/proc/kcore".into()],
            ..spec_for_test()
        };
        let v = container_spec(&s);
        let hosts: Vec<&Value> = v["mounts"].as_array().unwrap().iter().filter(|m| m["destination"] == "/etc/hosts").collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0]["source"], "/tmp/h");
        assert_eq!(v["linux"]["rootfsPropagation"], "rshared");
        assert_eq!(v["root"]["readonly"], true);
        assert!(v.get("hostname").is_none(), "joined uts namespace: no hostname");
        let resolv = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/etc/resolv.conf").unwrap();
        assert!(resolv["options"].as_array().unwrap().contains(&json!("ro")));
        // The container's cgroup, read-only.
        let cgroup = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/sys/fs/cgroup").unwrap();
        assert_eq!(cgroup["type"], "cgroup");
        assert!(cgroup["options"].as_array().unwrap().contains(&json!("ro")));
    }

    #[test]
    fn recursive_read_only_mounts_get_rro() {
        let mount = |readonly, recursive_readonly| BindMount { container_path: "/m".into(), host_path: "/h".into(), readonly, recursive_readonly, propagation: Propagation::Private };
        for (m, want) in [(mount(true, true), "rro"), (mount(true, false), "ro"), (mount(false, false), "rw")] {
            let s = ContainerSpec { mounts: vec![m], ..spec_for_test() };
            let v = container_spec(&s);
            let got = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/m").unwrap().clone();
            assert_eq!(got["options"], json!(["rbind", "rprivate", want]));
        }
    }

    fn spec_for_test() -> ContainerSpec {
        ContainerSpec {
            rootfs: "/r".into(),
            readonly_rootfs: false,
            args: vec!["sh".into()],
            env: vec![],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            caps: vec![],
            ambient: vec![],
            no_new_privs: false,
            tty: false,
            hostname: "h".into(),
            privileged: false,
            namespaces: Namespaces::default(),
            cgroup: "/corral/p/c".into(),
            resources: Resources::default(),
            mounts: vec![],
            pod_files: "/pod".into(),
            shm: "/shm".into(),
            devices: vec![],
            masked_paths: vec![],
            readonly_paths: vec![],
            sysctls: BTreeMap::new(),
            annotations: HashMap::new(),
        }
    }
}
