//! Loads config.json (an OCI runtime spec) and turns it into a validated plan: everything the
//! container child needs, parsed before it forks. This module owns the plan types and their
//! parsers (namespaces, mount options, capability sets) and depends on no other part of the
//! container module: namespaces.rs, process.rs and rootfs.rs carry out what it plans.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::cgroup::{Version, VERSION_ANNOTATION};
use oci_spec::runtime::{Capabilities, LinuxNamespaceType, LinuxResources, PosixRlimitType, Spec};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ns {
    Mount,
    Pid,
    Net,
    Ipc,
    Uts,
    Cgroup,
}

impl Ns {
    pub fn flag(self) -> i32 {
        match self {
            Ns::Mount => libc::CLONE_NEWNS,
            Ns::Pid => libc::CLONE_NEWPID,
            Ns::Net => libc::CLONE_NEWNET,
            Ns::Ipc => libc::CLONE_NEWIPC,
            Ns::Uts => libc::CLONE_NEWUTS,
            Ns::Cgroup => libc::CLONE_NEWCGROUP,
        }
    }

    /// The name under /proc/<pid>/ns/.
    pub fn proc_name(self) -> &'static str {
        match self {
            Ns::Mount => "mnt",
            Ns::Pid => "pid",
            Ns::Net => "net",
            Ns::Ipc => "ipc",
            Ns::Uts => "uts",
            Ns::Cgroup => "cgroup",
        }
    }
}

/// One namespace of the container: joined when it has a path, else new.
#[derive(Clone, Debug)]
pub struct NsPlan {
    pub ns: Ns,
    pub path: Option<PathBuf>,
}

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
            p @ ("private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" | "unbindable" | "runbindable") => {
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

/// The bit mask of a spec capability set (names the capability table does not know are
/// left out).
pub fn caps_mask(set: &Option<Capabilities>) -> u64 {
    set.iter().flatten().filter_map(|c| common::caps::number(&c.to_string())).fold(0, |m, n| m | (1u64 << n))
}

/// The five capability sets as masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub inheritable: u64,
    pub permitted: u64,
    pub ambient: u64,
}

impl CapSets {
    /// Removes what `allowed` (our own bounding set) lacks; returns what was removed.
    pub fn clamp(&mut self, allowed: u64) -> u64 {
        let all = self.bounding | self.effective | self.inheritable | self.permitted | self.ambient;
        for set in
            [&mut self.bounding, &mut self.effective, &mut self.inheritable, &mut self.permitted, &mut self.ambient]
        {
            *set &= allowed;
        }
        all & !allowed
    }
}

/// The process to run and how.
#[derive(Clone, Debug, Default)]
pub struct ProcessPlan {
    pub terminal: bool,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: Option<u32>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub caps: CapSets,
    /// (RLIMIT_*, soft, hard)
    pub rlimits: Vec<(u32, u64, u64)>,
    pub no_new_privs: bool,
    pub oom_score_adj: Option<i32>,
}

#[derive(Clone, Debug)]
pub struct DevicePlan {
    pub path: PathBuf,
    /// S_IFCHR, S_IFBLK or S_IFIFO
    pub kind: u32,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Everything config.json asks for, checked.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub rootfs: PathBuf,
    pub root_readonly: bool,
    pub process: Option<ProcessPlan>,
    pub hostname: Option<String>,
    pub mounts: Vec<MountPlan>,
    pub namespaces: Vec<NsPlan>,
    pub devices: Vec<DevicePlan>,
    pub cgroups_path: Option<PathBuf>,
    pub resources: Option<LinuxResources>,
    pub rootfs_propagation: libc::c_ulong,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub sysctl: Vec<(String, String)>,
    pub log_path: Option<PathBuf>,
    pub stdin: bool,
    /// The cgroup version corrald decided on (annotation), None when it did not say.
    pub cgroup_version: Option<Version>,
}

pub fn load(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|e| Error::Spec(format!("loading {}: {e}", path.display())))
}

fn ns_kind(t: LinuxNamespaceType) -> Result<Ns> {
    Ok(match t {
        LinuxNamespaceType::Mount => Ns::Mount,
        LinuxNamespaceType::Pid => Ns::Pid,
        LinuxNamespaceType::Network => Ns::Net,
        LinuxNamespaceType::Ipc => Ns::Ipc,
        LinuxNamespaceType::Uts => Ns::Uts,
        LinuxNamespaceType::Cgroup => Ns::Cgroup,
        other => return Err(Error::Spec(format!("namespace {other:?} is not supported"))),
    })
}

fn rlimit_resource(t: PosixRlimitType) -> u32 {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Mount propagation named in rootfsPropagation (default rslave, as runc).
pub fn propagation_flags(name: Option<&str>) -> Result<libc::c_ulong> {
    Ok(match name.unwrap_or("") {
        "" | "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        other => return Err(Error::Spec(format!("unknown rootfsPropagation {other:?}"))),
    })
}

/// Checks the spec and builds the plan. `pause` specs need neither root nor process.
pub fn plan(spec: &Spec, pause: bool) -> Result<Plan> {
    let mut plan = Plan::default();
    let linux = spec.linux().clone().unwrap_or_default();
    if linux.seccomp().is_some() {
        return Err(Error::Spec("linux.seccomp is not supported by corral-shim yet (send no seccomp section)".into()));
    }
    if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(Error::Spec("user namespaces are not supported".into()));
    }
    for ns in linux.namespaces().as_deref().unwrap_or_default() {
        let kind = ns_kind(ns.typ())?;
        if plan.namespaces.iter().any(|p: &NsPlan| p.ns == kind) {
            return Err(Error::Spec(format!("namespace {} listed twice", kind.proc_name())));
        }
        plan.namespaces.push(NsPlan { ns: kind, path: ns.path().clone() });
    }
    if let Some(p) = linux.cgroups_path() {
        // An absolute path (cgroupfs), or systemd's slice:prefix:name (checked when used).
        if !p.is_absolute() && p.to_string_lossy().matches(':').count() != 2 {
            return Err(Error::Spec(format!(
                "linux.cgroupsPath {} must be absolute or systemd's slice:prefix:name",
                p.display()
            )));
        }
        plan.cgroups_path = Some(p.clone());
    }
    plan.resources = linux.resources().clone();
    if let Some(ann) = spec.annotations() {
        plan.log_path = ann.get(proto::annotations::LOG_PATH).filter(|p| !p.is_empty()).map(PathBuf::from);
        plan.stdin = ann.get(proto::annotations::STDIN).is_some_and(|v| v == "true");
        if let Some(v) = ann.get(VERSION_ANNOTATION) {
            plan.cgroup_version = Some(
                Version::parse(v)
                    .ok_or_else(|| Error::Spec(format!("annotation {VERSION_ANNOTATION} is {v:?}, not 1 or 2")))?,
            );
        }
    }
    if pause {
        return Ok(plan);
    }

    // The container always gets its own mount namespace.
    if !plan.namespaces.iter().any(|p| p.ns == Ns::Mount) {
        plan.namespaces.push(NsPlan { ns: Ns::Mount, path: None });
    }
    let root = spec.root().as_ref().ok_or_else(|| Error::Spec("root is missing".into()))?;
    if !root.path().is_absolute() {
        return Err(Error::Spec(format!("root.path {} must be absolute", root.path().display())));
    }
    plan.rootfs = root.path().clone();
    plan.root_readonly = root.readonly().unwrap_or(false);
    plan.hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    plan.rootfs_propagation = propagation_flags(linux.rootfs_propagation().as_deref())?;
    plan.masked_paths = linux.masked_paths().clone().unwrap_or_default();
    plan.readonly_paths = linux.readonly_paths().clone().unwrap_or_default();
    let mut sysctl: Vec<_> = linux.sysctl().clone().unwrap_or_default().into_iter().collect();
    sysctl.sort();
    plan.sysctl = sysctl;

    for m in spec.mounts().as_deref().unwrap_or_default() {
        if !m.destination().is_absolute() {
            return Err(Error::Spec(format!("mount destination {} must be absolute", m.destination().display())));
        }
        let opts = parse_options(m.options().as_deref().unwrap_or_default());
        let typ = m.typ().clone().unwrap_or_default();
        let typ = if typ.is_empty() && opts.bind { "bind".to_string() } else { typ };
        if typ == "bind" && !opts.bind {
            return Err(Error::Spec(format!(
                "bind mount at {} needs a bind or rbind option",
                m.destination().display()
            )));
        }
        plan.mounts.push(MountPlan { destination: m.destination().clone(), typ, source: m.source().clone(), opts });
    }

    for d in linux.devices().as_deref().unwrap_or_default() {
        use oci_spec::runtime::LinuxDeviceType as T;
        let kind = match d.typ() {
            T::C | T::U => libc::S_IFCHR,
            T::B => libc::S_IFBLK,
            T::P => libc::S_IFIFO,
            T::A => return Err(Error::Spec(format!("device {} has type a", d.path().display()))),
        };
        if !d.path().is_absolute() {
            return Err(Error::Spec(format!("device path {} must be absolute", d.path().display())));
        }
        plan.devices.push(DevicePlan {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }

    let p = spec.process().as_ref().ok_or_else(|| Error::Spec("process is missing".into()))?;
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(Error::Spec("process.args is empty".into()));
    }
    let cwd = if p.cwd().as_os_str().is_empty() { PathBuf::from("/") } else { p.cwd().clone() };
    if !cwd.is_absolute() {
        return Err(Error::Spec(format!("process.cwd {} must be absolute", cwd.display())));
    }
    let caps = p.capabilities().as_ref().map(|c| CapSets {
        bounding: caps_mask(c.bounding()),
        effective: caps_mask(c.effective()),
        inheritable: caps_mask(c.inheritable()),
        permitted: caps_mask(c.permitted()),
        ambient: caps_mask(c.ambient()),
    });
    plan.process = Some(ProcessPlan {
        terminal: p.terminal().unwrap_or(false),
        uid: p.user().uid(),
        gid: p.user().gid(),
        groups: p.user().additional_gids().clone().unwrap_or_default(),
        umask: p.user().umask(),
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd,
        caps: caps.unwrap_or_default(),
        rlimits: p
            .rlimits()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|r| (rlimit_resource(r.typ()), r.soft(), r.hard()))
            .collect(),
        no_new_privs: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
    });
    Ok(plan)
}

/// `base` env overridden by `extra` (KEY=VALUE entries, by key), order kept.
pub fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let key = |e: &str| e.split('=').next().unwrap_or("").to_string();
    let over: HashMap<String, &String> = extra.iter().map(|e| (key(e), e)).collect();
    let mut out: Vec<String> = base.iter().filter(|e| !over.contains_key(&key(e))).cloned().collect();
    let mut seen = std::collections::HashSet::new();
    for e in extra.iter().rev() {
        if seen.insert(key(e)) {
            out.push(e.clone());
        }
    }
    let n = out.len() - seen.len();
    out[n..].reverse();
    out
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
        assert_eq!(o.flags, libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
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
    fn capability_sets_parse() {
        let set: Capabilities = serde_json::from_str(r#"["CAP_KILL","CAP_SETUID","AUDIT_WRITE"]"#).unwrap();
        assert_eq!(caps_mask(&Some(set)), (1 << 5) | (1 << 7) | (1 << 29));
        assert_eq!(caps_mask(&None), 0);
    }

    #[test]
    fn clamp_removes_unavailable_caps() {
        let mut c = CapSets { bounding: 0b111, effective: 0b101, inheritable: 0, permitted: 0b111, ambient: 0b100 };
        assert_eq!(c.clamp(0b011), 0b100);
        assert_eq!(c, CapSets { bounding: 0b011, effective: 0b001, inheritable: 0, permitted: 0b011, ambient: 0 });
    }

    #[test]
    fn cgroup_version_comes_from_the_annotation() {
        let with = |ann: &str| -> Result<Plan> {
            let spec: Spec =
                serde_json::from_str(&format!(r#"{{"ociVersion":"1.0.2","annotations":{{{ann}}}}}"#)).unwrap();
            plan(&spec, true)
        };
        assert_eq!(with("").unwrap().cgroup_version, None);
        let v1 = format!(r#""{VERSION_ANNOTATION}":"1""#);
        assert_eq!(with(&v1).unwrap().cgroup_version, Some(Version::V1));
        let v2 = format!(r#""{VERSION_ANNOTATION}":"2""#);
        assert_eq!(with(&v2).unwrap().cgroup_version, Some(Version::V2));
        let bad = format!(r#""{VERSION_ANNOTATION}":"3""#);
        let err = with(&bad).unwrap_err().to_string();
        assert!(err.contains(VERSION_ANNOTATION), "{err}");
    }

    #[test]
    fn env_override_by_key() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let extra = vec!["A=2".to_string(), "B=3".to_string()];
        assert_eq!(merge_env(&base, &extra), vec!["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn seccomp_is_refused() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","root":{"path":"/r"},"process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},
               "linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW"}}}"#,
        )
        .unwrap();
        let err = plan(&spec, false).unwrap_err().to_string();
        assert!(err.contains("seccomp"), "{err}");
    }

    #[test]
    fn plan_parses_namespaces_caps_and_mounts() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","root":{"path":"/r","readonly":true},
               "process":{"args":["sh"],"cwd":"/","user":{"uid":1,"gid":2,"additionalGids":[3]},
                 "capabilities":{"bounding":["CAP_CHOWN","CAP_KILL"],"effective":["CAP_KILL"]}},
               "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
                         {"destination":"/data","type":"bind","source":"/tmp","options":["rbind","ro","rprivate"]}],
               "linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"}],
                        "cgroupsPath":"/corral/x"}}"#,
        )
        .unwrap();
        let p = plan(&spec, false).unwrap();
        assert!(p.root_readonly);
        assert_eq!(p.namespaces.len(), 3);
        assert_eq!(p.namespaces[1].path.as_deref(), Some(Path::new("/proc/1/ns/net")));
        let pr = p.process.unwrap();
        assert_eq!(pr.caps.bounding, (1 << 0) | (1 << 5));
        assert_eq!(pr.caps.effective, 1 << 5);
        assert_eq!(pr.groups, vec![3]);
        assert!(p.mounts[1].opts.bind && p.mounts[1].opts.recursive);
        assert_eq!(p.rootfs_propagation, libc::MS_SLAVE | libc::MS_REC);
    }
}
