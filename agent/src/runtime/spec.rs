//! OCI runtime spec (config.json) generation for containers and for the pause process, with
//! containerd's defaults: capabilities, mounts, devices, masked and read-only paths.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use std::str::FromStr;

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDevice, LinuxDeviceBuilder,
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
    Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use common::caps;

use super::namespaces::Wanted;

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
fn kernel_caps() -> Vec<String> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    caps::all_up_to(last)
}

/// The capability set: the default (or all when privileged), minus drops, plus adds; "ALL" works
/// on either side.
pub fn capabilities(privileged: bool, add: &[String], drop: &[String]) -> Result<Vec<String>, String> {
    if privileged {
        return Ok(kernel_caps());
    }
    let check = |names: &[String]| -> Result<Vec<String>, String> {
        names
            .iter()
            .map(|n| {
                if n.eq_ignore_ascii_case("ALL") {
                    Ok("ALL".into())
                } else {
                    caps::normalize(n).ok_or_else(|| format!("unknown capability {n:?}"))
                }
            })
            .collect()
    };
    let add = check(add)?;
    let drop = check(drop)?;
    let mut caps: Vec<String> = if drop.iter().any(|c| c == "ALL") {
        vec![]
    } else {
        caps::DEFAULT.iter().map(|c| c.to_string()).filter(|c| !drop.contains(c)).collect()
    };
    if add.iter().any(|c| c == "ALL") {
        caps = kernel_caps().into_iter().filter(|c| !drop.contains(c) || drop.iter().any(|d| d == "ALL")).collect();
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
    /// Huge page limits: page size as the kernel names it ("2MB", "1GB") → bytes.
    #[serde(default)]
    pub hugepage_limits: BTreeMap<String, u64>,
    /// cgroup v2 files to write as they are ("memory.high" → "1G"), for the keys the CRI has no
    /// field for (memory.min/low/high, io.*).
    #[serde(default)]
    pub unified: BTreeMap<String, String>,
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
            hugepage_limits: sum_maps(&self.hugepage_limits, &other.hugepage_limits),
            unified: self.unified.clone(),
        }
    }
}

/// Per page size, `a`'s limit plus `b`'s where both set one (as the other amounts add up).
fn sum_maps(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (k, v) in b {
        if let Some(mine) = out.get_mut(k) {
            *mine += v;
        }
    }
    out
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
    /// A cgroup namespace of its own, rooted at its cgroup (containerd's choice on cgroup v2 for
    /// containers that are not privileged).
    pub cgroup_namespace: bool,
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

/// Errors of building a spec from resolved values (an unknown capability name, a builder
/// missing a required field).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// building the OCI spec: {0}
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
    /// unknown capability {0}
    #[error("unknown capability {0:?}")]
    Capability(String),
}

type SpecResult<T> = Result<T, SpecError>;

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> SpecResult<Mount> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(kind)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn namespace(kind: LinuxNamespaceType, path: &Option<PathBuf>) -> SpecResult<LinuxNamespace> {
    let b = LinuxNamespaceBuilder::default().typ(kind);
    Ok(match path {
        Some(p) => b.path(p.clone()).build()?,
        None => b.build()?,
    })
}

fn capability(name: &str) -> SpecResult<Capability> {
    let bare = name.strip_prefix("CAP_").unwrap_or(name);
    Capability::from_str(bare).map_err(|_| SpecError::Capability(name.to_string()))
}

fn capability_set(names: &[String]) -> SpecResult<Capabilities> {
    names.iter().map(|n| capability(n)).collect()
}

fn device_type(kind: char) -> LinuxDeviceType {
    match kind {
        'b' => LinuxDeviceType::B,
        'p' => LinuxDeviceType::P,
        'u' => LinuxDeviceType::U,
        _ => LinuxDeviceType::C,
    }
}

fn device_rule(
    allow: bool,
    kind: Option<char>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> SpecResult<LinuxDeviceCgroup> {
    let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).access(access);
    if let Some(k) = kind {
        b = b.typ(device_type(k));
    }
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    let mut rule = b.build()?;
    if kind.is_none() {
        // No type: every device (the builder would otherwise take the default "a" anyway, but
        // leave it unset as runc's own default spec does).
        rule.set_typ(None);
    }
    Ok(rule)
}

const DEFAULT_DEVICES: [(&str, i64, i64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// The mounts of a container: the kernel filesystems, the container's cgroup, the pod's files
/// and /dev/shm (unless the request mounts something there), then the request's bind mounts by
/// depth. Returns them with the rootfs propagation they need.
fn mounts(s: &ContainerSpec) -> SpecResult<(Vec<Mount>, &'static str)> {
    let sys_opts: &[&str] =
        if s.privileged { &["nosuid", "noexec", "nodev", "rw"] } else { &["nosuid", "noexec", "nodev", "ro"] };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", sys_opts)?,
    ];
    let user_paths: Vec<&str> = s.mounts.iter().map(|m| m.container_path.as_str()).collect();
    if !user_paths.contains(&"/sys/fs/cgroup") {
        // The container's own cgroup, read-only unless privileged (containerd's default).
        let cgroup_opts: &[&str] = if s.privileged {
            &["nosuid", "noexec", "nodev", "relatime", "rw"]
        } else {
            &["nosuid", "noexec", "nodev", "relatime", "ro"]
        };
        mounts.push(mount("/sys/fs/cgroup", "cgroup", "cgroup", cgroup_opts)?);
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
            mounts.push(mount(
                dest,
                "bind",
                &source.display().to_string(),
                &["rbind", "rprivate", ro, "nosuid", "nodev"],
            )?);
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
        mounts.push(mount(&m.container_path, "bind", &m.host_path, &["rbind", prop, access])?);
    }
    Ok((mounts, root_propagation))
}

/// The device nodes and the device cgroup rules: the default nodes, the pty and tty devices,
/// and the request's devices; every device for a privileged container.
fn devices(s: &ContainerSpec) -> SpecResult<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>)> {
    let node =
        |path: &str, kind: char, major: i64, minor: i64, mode: u32, uid: u32, gid: u32| -> SpecResult<LinuxDevice> {
            Ok(LinuxDeviceBuilder::default()
                .path(path)
                .typ(device_type(kind))
                .major(major)
                .minor(minor)
                .file_mode(mode)
                .uid(uid)
                .gid(gid)
                .build()?)
        };
    let mut nodes = DEFAULT_DEVICES
        .iter()
        .map(|(path, major, minor)| node(path, 'c', *major, *minor, 0o666, 0, 0))
        .collect::<SpecResult<Vec<_>>>()?;
    let mut rules = if s.privileged {
        vec![device_rule(true, None, None, None, "rwm")?]
    } else {
        let mut rules = vec![
            device_rule(false, None, None, None, "rwm")?,
            device_rule(true, Some('c'), None, None, "m")?,
            device_rule(true, Some('b'), None, None, "m")?,
        ];
        for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (10, 200)] {
            rules.push(device_rule(true, Some('c'), Some(major), Some(minor), "rwm")?);
        }
        rules.push(device_rule(true, Some('c'), Some(136), None, "rwm")?);
        rules
    };
    for d in &s.devices {
        let n = &d.node;
        nodes.push(node(&d.container_path, n.kind, n.major, n.minor, n.mode, n.uid, n.gid)?);
        if !s.privileged {
            rules.push(device_rule(true, Some(n.kind), Some(n.major), Some(n.minor), &d.permissions)?);
        }
    }
    Ok((nodes, rules))
}

fn resources(s: &ContainerSpec, device_rules: Vec<LinuxDeviceCgroup>) -> SpecResult<LinuxResources> {
    let r = &s.resources;
    let mut b = LinuxResourcesBuilder::default().devices(device_rules);
    if r.memory_limit > 0 || r.memory_swap_limit > 0 {
        let mut m = LinuxMemoryBuilder::default();
        if r.memory_limit > 0 {
            m = m.limit(r.memory_limit);
        }
        if r.memory_swap_limit > 0 {
            m = m.swap(r.memory_swap_limit);
        }
        b = b.memory(m.build()?);
    }
    if r.cpu_shares > 0
        || r.cpu_quota != 0
        || r.cpu_period > 0
        || !r.cpuset_cpus.is_empty()
        || !r.cpuset_mems.is_empty()
    {
        let mut c = LinuxCpuBuilder::default();
        if r.cpu_shares > 0 {
            c = c.shares(r.cpu_shares as u64);
        }
        if r.cpu_quota != 0 {
            c = c.quota(r.cpu_quota);
        }
        if r.cpu_period > 0 {
            c = c.period(r.cpu_period as u64);
        }
        if !r.cpuset_cpus.is_empty() {
            c = c.cpus(r.cpuset_cpus.clone());
        }
        if !r.cpuset_mems.is_empty() {
            c = c.mems(r.cpuset_mems.clone());
        }
        b = b.cpu(c.build()?);
    }
    if r.pids_limit > 0 {
        b = b.pids(LinuxPidsBuilder::default().limit(r.pids_limit).build()?);
    }
    if !r.hugepage_limits.is_empty() {
        let limits = r
            .hugepage_limits
            .iter()
            .map(|(size, limit)| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(size.clone())
                    .limit(i64::try_from(*limit).unwrap_or(i64::MAX))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        b = b.hugepage_limits(limits);
    }
    if !r.unified.is_empty() {
        b = b.unified(r.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>());
    }
    Ok(b.build()?)
}

/// The container's config.json, as the shim reads it. Every field is set here: the oci-spec
/// builders otherwise fill in defaults of their own (a hostname, rlimits, masked paths).
pub fn container_spec(s: &ContainerSpec) -> SpecResult<Spec> {
    let (mounts, root_propagation) = mounts(s)?;
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, &None)?];
    for (kind, path) in [
        (LinuxNamespaceType::Network, &s.namespaces.network),
        (LinuxNamespaceType::Ipc, &s.namespaces.ipc),
        (LinuxNamespaceType::Uts, &s.namespaces.uts),
        (LinuxNamespaceType::Pid, &s.namespaces.pid),
    ] {
        if let Some(p) = path {
            namespaces.push(namespace(kind, p)?);
        }
    }
    if s.cgroup_namespace {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, &None)?);
    }
    let (nodes, rules) = devices(s)?;
    let caps = capability_set(&s.caps)?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(capability_set(&s.ambient)?)
        .build()?;
    let user = UserBuilder::default().uid(s.uid).gid(s.gid).additional_gids(s.additional_gids.clone()).build()?;
    let mut process = ProcessBuilder::default()
        .terminal(s.tty)
        .user(user)
        .args(s.args.clone())
        .env(s.env.clone())
        .cwd(s.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(s.no_new_privs)
        .rlimits(Vec::new())
        .build()?;
    process.set_oom_score_adj((s.resources.oom_score_adj != 0).then_some(s.resources.oom_score_adj as i32));
    let masked = if s.privileged { Vec::new() } else { s.masked_paths.clone() };
    let readonly = if s.privileged { Vec::new() } else { s.readonly_paths.clone() };
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .devices(nodes)
        .cgroups_path(PathBuf::from(&s.cgroup))
        .resources(resources(s, rules)?)
        .rootfs_propagation(root_propagation)
        .sysctl(s.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>())
        .masked_paths(masked)
        .readonly_paths(readonly)
        .build()?;
    let root = RootBuilder::default().path(s.rootfs.clone()).readonly(s.readonly_rootfs).build()?;
    let mut spec = SpecBuilder::default()
        .version("1.1.0")
        .process(process)
        .root(root)
        .mounts(mounts)
        .linux(linux)
        .annotations(s.annotations.clone())
        .build()?;
    // A hostname only for a UTS namespace of the container's own; a joined one has the pod's.
    spec.set_hostname(s.namespaces.uts.as_ref().is_some_and(|p| p.is_none()).then(|| s.hostname.clone()));
    spec.set_domainname(None);
    Ok(spec)
}

/// config.json of the pause process: the pod's namespaces to join, a new PID namespace, and
/// its cgroup. No root and no process: the pause shim does not exec anything.
pub fn pause_spec(
    ns_dir: &Path,
    wanted: Wanted,
    cgroup: &str,
    cgroup_version: Option<common::cgroup::Version>,
) -> SpecResult<Spec> {
    let mut namespaces = vec![namespace(LinuxNamespaceType::Pid, &None)?];
    for (kind, file, on) in [
        (LinuxNamespaceType::Network, "net", wanted.net),
        (LinuxNamespaceType::Ipc, "ipc", wanted.ipc),
        (LinuxNamespaceType::Uts, "uts", wanted.uts),
    ] {
        if on {
            namespaces.push(namespace(kind, &Some(ns_dir.join(file)))?);
        }
    }
    let mut linux = LinuxBuilder::default().namespaces(namespaces).cgroups_path(PathBuf::from(cgroup)).build()?;
    linux.set_resources(None);
    linux.set_masked_paths(None);
    linux.set_readonly_paths(None);
    let mut spec = SpecBuilder::default().version("1.1.0").linux(linux).build()?;
    spec.set_process(None);
    spec.set_root(None);
    spec.set_mounts(None);
    spec.set_hostname(None);
    spec.set_annotations(
        cgroup_version
            .map(|v| HashMap::from([(common::cgroup::VERSION_ANNOTATION.to_string(), v.as_str().to_string())])),
    );
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// The spec as config.json holds it.
    fn container_spec(s: &ContainerSpec) -> Value {
        serde_json::to_value(super::container_spec(s).expect("a spec")).expect("JSON")
    }

    #[test]
    fn capability_arithmetic() {
        let caps = capabilities(false, &["NET_ADMIN".into()], &["cap_kill".into(), "MKNOD".into()]).unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_KILL".to_string()) && !caps.contains(&"CAP_MKNOD".to_string()));
        assert_eq!(caps.len(), caps::DEFAULT.len() - 1);
        assert_eq!(capabilities(false, &["CHOWN".into()], &["ALL".into()]).unwrap(), vec!["CAP_CHOWN".to_string()]);
        assert!(capabilities(false, &["NOPE".into()], &[]).is_err());
        assert!(capabilities(true, &[], &[]).unwrap().contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn user_mounts_override_defaults_and_set_propagation() {
        let s = ContainerSpec {
            readonly_rootfs: true,
            namespaces: Namespaces { uts: Some(Some("/ns/uts".into())), ..Default::default() },
            mounts: vec![BindMount {
                container_path: "/etc/hosts".into(),
                host_path: "/tmp/h".into(),
                readonly: true,
                recursive_readonly: false,
                propagation: Propagation::Bidirectional,
            }],
            masked_paths: vec!["/proc/kcore".into()],
            ..spec_for_test()
        };
        let v = container_spec(&s);
        let hosts: Vec<&Value> =
            v["mounts"].as_array().unwrap().iter().filter(|m| m["destination"] == "/etc/hosts").collect();
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
        let mount = |readonly, recursive_readonly| BindMount {
            container_path: "/m".into(),
            host_path: "/h".into(),
            readonly,
            recursive_readonly,
            propagation: Propagation::Private,
        };
        for (m, want) in [(mount(true, true), "rro"), (mount(true, false), "ro"), (mount(false, false), "rw")] {
            let s = ContainerSpec { mounts: vec![m], ..spec_for_test() };
            let v = container_spec(&s);
            let got = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/m").unwrap().clone();
            assert_eq!(got["options"], json!(["rbind", "rprivate", want]));
        }
    }

    #[test]
    fn nothing_of_the_builders_own_defaults_leaks_in() {
        let v = container_spec(&spec_for_test());
        assert_eq!(v["ociVersion"], "1.1.0");
        assert!(v.get("hostname").is_none(), "no UTS namespace of its own: no hostname ({})", v["hostname"]);
        let p = &v["process"];
        assert!(
            p.get("rlimits").is_none_or(|r| r.as_array().is_some_and(|a| a.is_empty())),
            "rlimits: {}",
            p["rlimits"]
        );
        assert_eq!(p["noNewPrivileges"], false);
        assert_eq!(p["env"], json!([]));
        assert_eq!(p["args"], json!(["sh"]));
        assert!(p.get("oomScoreAdj").is_none());
        assert_eq!(v["linux"]["maskedPaths"], json!([]));
        assert_eq!(v["linux"]["readonlyPaths"], json!([]));
        assert_eq!(v["root"], json!({ "path": "/r", "readonly": false }));
        // The namespaces asked for and the mount namespace, nothing else.
        assert_eq!(v["linux"]["namespaces"], json!([{ "type": "mount" }]));
        // Its own UTS namespace: the pod's hostname.
        let own = ContainerSpec { namespaces: Namespaces { uts: Some(None), ..Default::default() }, ..spec_for_test() };
        assert_eq!(container_spec(&own)["hostname"], "h");
        let round_trip: Spec = serde_json::from_value(v).expect("the shim reads what corrald writes");
        assert_eq!(round_trip.process().as_ref().map(|p| p.args().clone()), Some(Some(vec!["sh".to_string()])));
    }

    #[test]
    fn pause_spec_is_namespaces_and_cgroup_only() {
        let wanted = Wanted { net: true, ipc: true, uts: false };
        let v = serde_json::to_value(
            pause_spec(Path::new("/ns"), wanted, "/corral/pod/pause", Some(common::cgroup::Version::V2)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "ociVersion": "1.1.0",
                "linux": {
                    "namespaces": [{ "type": "pid" }, { "type": "network", "path": "/ns/net" }, { "type": "ipc", "path": "/ns/ipc" }],
                    "cgroupsPath": "/corral/pod/pause",
                },
                "annotations": { "io.corral.cgroup-version": "2" },
            })
        );
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
            cgroup_namespace: false,
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
