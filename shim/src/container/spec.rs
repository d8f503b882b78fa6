//! Loads config.json (an OCI runtime spec) and turns it into a validated plan: everything the
//! container child needs, parsed before it forks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, PosixRlimitType, Spec};

use super::namespaces::{Ns, NsPlan};
use super::process::{caps_mask, CapSets};
use super::rootfs::{parse_options, MountPlan};
use crate::error::{Error, Result};

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
        return Err(Error::Spec(
            "linux.seccomp is not supported by corral-shim yet (send no seccomp section)".into(),
        ));
    }
    if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(Error::Spec("user namespaces are not supported".into()));
    }
    for ns in linux.namespaces().as_deref().unwrap_or_default() {
        let kind = ns_kind(ns.typ())?;
        if plan.namespaces.iter().any(|p: &NsPlan| p.ns == kind) {
            return Err(Error::Spec(format!(
                "namespace {} listed twice",
                kind.proc_name()
            )));
        }
        plan.namespaces.push(NsPlan {
            ns: kind,
            path: ns.path().clone(),
        });
    }
    if let Some(p) = linux.cgroups_path() {
        if !p.is_absolute() {
            return Err(Error::Spec(format!(
                "linux.cgroupsPath {} must be absolute",
                p.display()
            )));
        }
        plan.cgroups_path = Some(p.clone());
    }
    plan.resources = linux.resources().clone();
    if let Some(ann) = spec.annotations() {
        plan.log_path = ann
            .get(proto::annotations::LOG_PATH)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        plan.stdin = ann
            .get(proto::annotations::STDIN)
            .is_some_and(|v| v == "true");
    }
    if pause {
        return Ok(plan);
    }

    // The container always gets its own mount namespace.
    if !plan.namespaces.iter().any(|p| p.ns == Ns::Mount) {
        plan.namespaces.push(NsPlan {
            ns: Ns::Mount,
            path: None,
        });
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::Spec("root is missing".into()))?;
    if !root.path().is_absolute() {
        return Err(Error::Spec(format!(
            "root.path {} must be absolute",
            root.path().display()
        )));
    }
    plan.rootfs = root.path().clone();
    plan.root_readonly = root.readonly().unwrap_or(false);
    plan.hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    plan.rootfs_propagation = propagation_flags(linux.rootfs_propagation().as_deref())?;
    plan.masked_paths = linux.masked_paths().clone().unwrap_or_default();
    plan.readonly_paths = linux.readonly_paths().clone().unwrap_or_default();
    let mut sysctl: Vec<_> = linux
        .sysctl()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    sysctl.sort();
    plan.sysctl = sysctl;

    for m in spec.mounts().as_deref().unwrap_or_default() {
        if !m.destination().is_absolute() {
            return Err(Error::Spec(format!(
                "mount destination {} must be absolute",
                m.destination().display()
            )));
        }
        let opts = parse_options(m.options().as_deref().unwrap_or_default());
        let typ = m.typ().clone().unwrap_or_default();
        let typ = if typ.is_empty() && opts.bind {
            "bind".to_string()
        } else {
            typ
        };
        if typ == "bind" && !opts.bind {
            return Err(Error::Spec(format!(
                "bind mount at {} needs a bind or rbind option",
                m.destination().display()
            )));
        }
        plan.mounts.push(MountPlan {
            destination: m.destination().clone(),
            typ,
            source: m.source().clone(),
            opts,
        });
    }

    for d in linux.devices().as_deref().unwrap_or_default() {
        use oci_spec::runtime::LinuxDeviceType as T;
        let kind = match d.typ() {
            T::C | T::U => libc::S_IFCHR,
            T::B => libc::S_IFBLK,
            T::P => libc::S_IFIFO,
            T::A => {
                return Err(Error::Spec(format!(
                    "device {} has type a",
                    d.path().display()
                )))
            }
        };
        if !d.path().is_absolute() {
            return Err(Error::Spec(format!(
                "device path {} must be absolute",
                d.path().display()
            )));
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

    let p = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Spec("process is missing".into()))?;
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(Error::Spec("process.args is empty".into()));
    }
    let cwd = if p.cwd().as_os_str().is_empty() {
        PathBuf::from("/")
    } else {
        p.cwd().clone()
    };
    if !cwd.is_absolute() {
        return Err(Error::Spec(format!(
            "process.cwd {} must be absolute",
            cwd.display()
        )));
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
    let mut out: Vec<String> = base
        .iter()
        .filter(|e| !over.contains_key(&key(e)))
        .cloned()
        .collect();
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
        assert_eq!(
            p.namespaces[1].path.as_deref(),
            Some(Path::new("/proc/1/ns/net"))
        );
        let pr = p.process.unwrap();
        assert_eq!(pr.caps.bounding, (1 << 0) | (1 << 5));
        assert_eq!(pr.caps.effective, 1 << 5);
        assert_eq!(pr.groups, vec![3]);
        assert!(p.mounts[1].opts.bind && p.mounts[1].opts.recursive);
        assert_eq!(p.rootfs_propagation, libc::MS_SLAVE | libc::MS_REC);
    }
}
