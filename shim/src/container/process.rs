//! The container process's identity and the final exec: capabilities, user and groups,
//! rlimits, no_new_privs, umask, PATH lookup.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Capabilities;

use super::spec::ProcessPlan;
use crate::error::{Context, Error, Result};
use crate::sys;

/// Capability names by number (linux/capability.h), without the CAP_ prefix.
const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The number of a capability name ("CAP_CHOWN", "chown").
pub fn cap_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAP_NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

/// The bit mask of a spec capability set.
pub fn caps_mask(set: &Option<Capabilities>) -> u64 {
    set.iter()
        .flatten()
        .filter_map(|c| cap_number(&c.to_string()))
        .fold(0, |m, n| m | (1u64 << n))
}

/// Names of the capabilities in a mask (for messages).
pub fn cap_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| match CAP_NAMES.get(i) {
            Some(n) => format!("CAP_{n}"),
            None => format!("CAP_{i}"),
        })
        .collect()
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
        for set in [
            &mut self.bounding,
            &mut self.effective,
            &mut self.inheritable,
            &mut self.permitted,
            &mut self.ambient,
        ] {
            *set &= allowed;
        }
        all & !allowed
    }
}

/// The highest capability number this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Our own bounding set.
pub fn own_bounding(last: u32) -> u64 {
    (0..=last)
        .filter(|&c| sys::capbset_read(c).unwrap_or(false))
        .fold(0, |m, c| m | (1u64 << c))
}

/// Sets the rlimits of the calling process. A hard limit above ours cannot be raised
/// without CAP_SYS_RESOURCE: it is clamped to ours, with a warning.
pub fn apply_rlimits(p: &ProcessPlan) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for &(res, soft, hard) in &p.rlimits {
        match sys::setrlimit(res, soft, hard) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                let (_, cur_hard) = sys::getrlimit(res).ctx(|| format!("getrlimit({res})"))?;
                let (s, h) = (soft.min(cur_hard), hard.min(cur_hard));
                sys::setrlimit(res, s, h).ctx(|| format!("setting rlimit {res} to {s}/{h}"))?;
                warnings.push(format!("rlimit {res} {soft}/{hard} clamped to {s}/{h}"));
            }
            r => r.ctx(|| format!("setting rlimit {res} to {soft}/{hard}"))?,
        }
    }
    Ok(warnings)
}

/// Writes oom_score_adj; where lowering is not allowed (no CAP_SYS_RESOURCE) the current
/// value stays and a warning is returned.
pub fn apply_oom_score_adj(p: &ProcessPlan) -> Option<String> {
    let adj = p.oom_score_adj?;
    match std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
        Ok(()) => None,
        Err(e) => {
            let cur = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
            Some(format!(
                "cannot set oom_score_adj to {adj} ({}), keeping {}",
                crate::error::errno_display(&e),
                cur.trim()
            ))
        }
    }
}

/// Switches to the spec's user, groups and capabilities, then no_new_privs and umask. The
/// order follows runc: bounding set, keep caps across setuid, user, then the other sets.
pub fn finalize(p: &ProcessPlan, last_cap: u32) -> Result<()> {
    let cwd_ok = std::env::set_current_dir(&p.cwd).is_ok();
    for c in 0..=last_cap {
        if p.caps.bounding & (1 << c) == 0 {
            match sys::capbset_drop(c) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                r => r.ctx(|| {
                    format!(
                        "dropping {} from the bounding set",
                        cap_names(1 << c).join("")
                    )
                })?,
            }
        }
    }
    sys::set_keepcaps(true).ctx(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    sys::setgroups(&p.groups).ctx(|| format!("setgroups({:?})", p.groups))?;
    sys::setgid(p.gid).ctx(|| format!("setgid({})", p.gid))?;
    sys::setuid(p.uid).ctx(|| format!("setuid({})", p.uid))?;
    sys::set_keepcaps(false).ctx(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    if !cwd_ok {
        std::env::set_current_dir(&p.cwd)
            .ctx(|| format!("chdir to cwd ({:?}) set in config.json", p.cwd))?;
    }
    sys::capset(p.caps.effective, p.caps.permitted, p.caps.inheritable).ctx(|| "capset".into())?;
    sys::ambient_clear().ctx(|| "clearing ambient capabilities".into())?;
    for c in 0..=last_cap {
        if p.caps.ambient & (1 << c) != 0 {
            sys::ambient_raise(c)
                .ctx(|| format!("raising ambient {}", cap_names(1 << c).join("")))?;
        }
    }
    if p.no_new_privs {
        sys::set_no_new_privs().ctx(|| "prctl(PR_SET_NO_NEW_PRIVS)".into())?;
    }
    if let Some(mask) = p.umask {
        sys::umask(mask);
    }
    Ok(())
}

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The PATH of an environment, or the default one.
pub fn env_path(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| !m.is_dir() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves args[0] like Go's exec.LookPath, with errors worded like runc/containerd.
pub fn lookup(name: &str, path_var: &str) -> std::result::Result<PathBuf, String> {
    if name.contains('/') {
        let p = Path::new(name);
        return match std::fs::metadata(p) {
            Err(e) => Err(format!(
                "exec: {name:?}: stat {name}: {}",
                sys::errno_text(&e)
            )),
            Ok(m) if m.is_dir() || m.permissions().mode() & 0o111 == 0 => {
                Err(format!("exec: {name:?}: permission denied"))
            }
            Ok(_) => Ok(p.to_path_buf()),
        };
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(name);
        if is_executable(&cand) {
            return Ok(cand);
        }
    }
    Err(format!(
        "exec: {name:?}: executable file not found in $PATH"
    ))
}

fn cstrings(v: &[String]) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes()).map_err(|_| Error::Msg(format!("{s:?} contains a NUL byte")))
        })
        .collect()
}

/// Looks up and execs `args` with `env`; returns only the error message on failure.
pub fn exec(args: &[String], env: &[String]) -> String {
    let Some(name) = args.first() else {
        return "exec: no command".into();
    };
    let path = match lookup(name, env_path(env)) {
        Ok(p) => p,
        Err(msg) => return msg,
    };
    let (argv, envp) = match (cstrings(args), cstrings(env)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e.to_string(),
    };
    let cpath = match sys::cstring(&path) {
        Ok(c) => c,
        Err(_) => return format!("exec: {name:?}: invalid path"),
    };
    sys::reset_signals();
    let err = sys::execve(&cpath, &argv, &envp);
    format!("exec: {name:?}: {}", sys::errno_text(&err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn cap_names_parse() {
        assert_eq!(cap_number("CAP_CHOWN"), Some(0));
        assert_eq!(cap_number("net_bind_service"), Some(10));
        assert_eq!(cap_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(cap_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(cap_number("CAP_NOPE"), None);
        let set: Capabilities =
            serde_json::from_str(r#"["CAP_KILL","CAP_SETUID","AUDIT_WRITE"]"#).unwrap();
        assert_eq!(caps_mask(&Some(set)), (1 << 5) | (1 << 7) | (1 << 29));
        assert_eq!(
            cap_names((1 << 5) | (1 << 7)),
            vec!["CAP_KILL", "CAP_SETUID"]
        );
    }

    #[test]
    fn clamp_removes_unavailable_caps() {
        let mut c = CapSets {
            bounding: 0b111,
            effective: 0b101,
            inheritable: 0,
            permitted: 0b111,
            ambient: 0b100,
        };
        assert_eq!(c.clamp(0b011), 0b100);
        assert_eq!(
            c,
            CapSets {
                bounding: 0b011,
                effective: 0b001,
                inheritable: 0,
                permitted: 0b011,
                ambient: 0
            }
        );
    }

    #[test]
    fn path_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = bin.join("plain");
        std::fs::write(&plain, "").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = format!("/nonexistent:{}", bin.display());
        assert_eq!(lookup("tool", &path).unwrap(), tool);
        assert_eq!(
            lookup("nosuch", &path).unwrap_err(),
            r#"exec: "nosuch": executable file not found in $PATH"#
        );
        assert_eq!(
            lookup("plain", &path).unwrap_err(),
            r#"exec: "plain": executable file not found in $PATH"#
        );
        let p = plain.display().to_string();
        assert_eq!(
            lookup(&p, &path).unwrap_err(),
            format!("exec: {p:?}: permission denied")
        );
        assert_eq!(env_path(&["A=1".into(), "PATH=/x".into()]), "/x");
        assert_eq!(env_path(&[]), DEFAULT_PATH);
    }
}
