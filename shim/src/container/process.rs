//! The container process's identity and the final exec: capabilities, user and groups,
//! rlimits, no_new_privs, umask, PATH lookup.
//!
//! [`Identity`] and [`Command`] are built (allocated) before any fork and applied in the child
//! with async-signal-safe calls only: exec.rs forks them from the multi-threaded daemon. A
//! failure in the child is a [`Failure`] (a step and an errno, no allocation); whoever may
//! allocate words it with [`Failure::message`], as runc and containerd word theirs.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::spec::{CapSets, ProcessPlan};
use crate::error::{errno_display, Context, Result};
use crate::sys;
use crate::syscall::Syscall;

/// Names of the capabilities in a mask (for messages).
pub fn cap_names(mask: u64) -> Vec<String> {
    (0..64).filter(|i| mask & (1 << i) != 0).map(common::caps::name).collect()
}

/// The highest capability number this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

/// Our own bounding set.
pub fn own_bounding(last: u32) -> u64 {
    (0..=last).filter(|&c| sys::capbset_read(c).unwrap_or(false)).fold(0, |m, c| m | (1u64 << c))
}

/// Sets one rlimit of the calling process. A hard limit above ours cannot be raised without
/// CAP_SYS_RESOURCE: both limits are then clamped to ours, and `Ok(Some((soft, hard)))` says
/// what was set. Async-signal-safe (exec.rs applies the container's rlimits to exec'd processes
/// with it).
pub fn set_rlimit(res: u32, soft: u64, hard: u64) -> io::Result<Option<(u64, u64)>> {
    match sys::setrlimit(res, soft, hard) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let (_, cur_hard) = sys::getrlimit(res)?;
            let (s, h) = (soft.min(cur_hard), hard.min(cur_hard));
            sys::setrlimit(res, s, h)?;
            Ok(Some((s, h)))
        }
        r => r.map(|()| None),
    }
}

/// Sets the rlimits of the calling process ([`set_rlimit`]); a clamped one is a warning.
pub fn apply_rlimits(p: &ProcessPlan) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for &(res, soft, hard) in &p.rlimits {
        if let Some((s, h)) = set_rlimit(res, soft, hard).ctx(|| rlimit_context(res, soft, hard))? {
            warnings.push(format!("rlimit {res} {soft}/{hard} clamped to {s}/{h}"));
        }
    }
    Ok(warnings)
}

/// What a failed [`set_rlimit`] was doing, for its message.
pub fn rlimit_context(res: u32, soft: u64, hard: u64) -> String {
    format!("setting rlimit {res} to {soft}/{hard}")
}

/// Writes oom_score_adj; where lowering is not allowed (no CAP_SYS_RESOURCE) the current
/// value stays and a warning is returned.
pub fn apply_oom_score_adj(p: &ProcessPlan) -> Option<String> {
    let adj = p.oom_score_adj?;
    match std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
        Ok(()) => None,
        Err(e) => {
            let cur = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
            Some(format!("cannot set oom_score_adj to {adj} ({}), keeping {}", errno_display(&e), cur.trim()))
        }
    }
}

/// What failed on the way from the identity switch to the exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Chdir,
    BoundingDrop(u32),
    KeepCaps,
    SetGroups,
    SetGid,
    SetUid,
    CapSet,
    AmbientClear,
    AmbientRaise(u32),
    NoNewPrivs,
    /// No args[0].
    NoCommand,
    /// args[0] has a slash and cannot be stat'ed.
    Stat,
    /// args[0] has a slash and is a directory or has no x bit.
    NotExecutable,
    /// args[0] is in no directory of PATH.
    NotFound,
    /// An argument or environment entry has a NUL byte.
    Nul,
    /// execve itself.
    Exec,
}

impl Step {
    /// (code, argument) for a pipe record.
    pub fn code(self) -> (u32, u32) {
        match self {
            Step::Chdir => (1, 0),
            Step::BoundingDrop(c) => (2, c),
            Step::KeepCaps => (3, 0),
            Step::SetGroups => (4, 0),
            Step::SetGid => (5, 0),
            Step::SetUid => (6, 0),
            Step::CapSet => (7, 0),
            Step::AmbientClear => (8, 0),
            Step::AmbientRaise(c) => (9, c),
            Step::NoNewPrivs => (10, 0),
            Step::NoCommand => (11, 0),
            Step::Stat => (12, 0),
            Step::NotExecutable => (13, 0),
            Step::NotFound => (14, 0),
            Step::Nul => (15, 0),
            Step::Exec => (16, 0),
        }
    }

    pub fn from_code(code: u32, arg: u32) -> Option<Step> {
        Some(match code {
            1 => Step::Chdir,
            2 => Step::BoundingDrop(arg),
            3 => Step::KeepCaps,
            4 => Step::SetGroups,
            5 => Step::SetGid,
            6 => Step::SetUid,
            7 => Step::CapSet,
            8 => Step::AmbientClear,
            9 => Step::AmbientRaise(arg),
            10 => Step::NoNewPrivs,
            11 => Step::NoCommand,
            12 => Step::Stat,
            13 => Step::NotExecutable,
            14 => Step::NotFound,
            15 => Step::Nul,
            16 => Step::Exec,
            _ => return None,
        })
    }
}

/// A failed step and its errno: what a forked child can report without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub errno: i32,
}

/// What std says of a path with a NUL byte (the shim used std for these calls before).
const NUL_IN_PATH: &str = "file name contained an unexpected NUL byte";

impl Failure {
    fn of(step: Step, e: io::Error) -> Failure {
        Failure { step, errno: e.raw_os_error().unwrap_or(libc::EIO) }
    }

    /// The message, worded for the process `p` the failure happened to.
    pub fn message(&self, p: &ProcessPlan) -> String {
        let err = io::Error::from_raw_os_error(self.errno);
        let ctx = |context: &str| format!("{context}: {}", errno_display(&err));
        let name = p.args.first().map(String::as_str).unwrap_or("");
        match self.step {
            Step::Chdir => {
                let what = format!("chdir to cwd ({:?}) set in config.json", p.cwd);
                if p.cwd.as_os_str().as_bytes().contains(&0) {
                    format!("{what}: {NUL_IN_PATH}")
                } else {
                    ctx(&what)
                }
            }
            Step::BoundingDrop(c) => ctx(&format!("dropping {} from the bounding set", common::caps::name(c))),
            Step::KeepCaps => ctx("prctl(PR_SET_KEEPCAPS)"),
            Step::SetGroups => ctx(&format!("setgroups({:?})", p.groups)),
            Step::SetGid => ctx(&format!("setgid({})", p.gid)),
            Step::SetUid => ctx(&format!("setuid({})", p.uid)),
            Step::CapSet => ctx("capset"),
            Step::AmbientClear => ctx("clearing ambient capabilities"),
            Step::AmbientRaise(c) => ctx(&format!("raising ambient {}", common::caps::name(c))),
            Step::NoNewPrivs => ctx("prctl(PR_SET_NO_NEW_PRIVS)"),
            Step::NoCommand => "exec: no command".into(),
            Step::Stat if name.contains('\0') => {
                format!("exec: {name:?}: stat {name}: {NUL_IN_PATH}")
            }
            Step::Stat => format!("exec: {name:?}: stat {name}: {}", sys::errno_text(&err)),
            Step::NotExecutable => format!("exec: {name:?}: permission denied"),
            Step::NotFound => format!("exec: {name:?}: executable file not found in $PATH"),
            Step::Nul => {
                let bad = p.args.iter().chain(&p.env).find(|s| s.contains('\0'));
                format!("{:?} contains a NUL byte", bad.map_or("", String::as_str))
            }
            Step::Exec => format!("exec: {name:?}: {}", sys::errno_text(&err)),
        }
    }
}

/// The user, groups, capabilities, cwd, no_new_privs and umask of a process, ready to apply.
pub struct Identity {
    /// None when the cwd has a NUL byte: the chdir then fails, as it did through std.
    cwd: Option<CString>,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    caps: CapSets,
    last_cap: u32,
    no_new_privs: bool,
    umask: Option<u32>,
}

impl Identity {
    pub fn new(p: &ProcessPlan, last_cap: u32) -> Identity {
        Identity {
            cwd: CString::new(p.cwd.as_os_str().as_bytes()).ok(),
            uid: p.uid,
            gid: p.gid,
            groups: p.groups.clone(),
            caps: p.caps,
            last_cap,
            no_new_privs: p.no_new_privs,
            umask: p.umask,
        }
    }

    fn chdir(&self, sys: &dyn Syscall) -> io::Result<()> {
        match &self.cwd {
            Some(cwd) => sys.chdir(cwd),
            None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// Switches to this identity. The order follows runc: the bounding set, keep capabilities
    /// across the user switch (setgroups, setgid, setuid), then the other capability sets,
    /// ambient, no_new_privs and umask. The cwd is entered first, as root (a cwd only root can
    /// enter), and again as the user when that failed. Async-signal-safe with
    /// [`crate::syscall::Linux`].
    pub fn apply(&self, sys: &dyn Syscall) -> std::result::Result<(), Failure> {
        let cwd_ok = self.chdir(sys).is_ok();
        for c in 0..=self.last_cap {
            if self.caps.bounding & (1 << c) == 0 {
                match sys.capbset_drop(c) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    r => r.map_err(|e| Failure::of(Step::BoundingDrop(c), e))?,
                }
            }
        }
        let step = |step: Step| move |e| Failure::of(step, e);
        sys.set_keepcaps(true).map_err(step(Step::KeepCaps))?;
        sys.setgroups(&self.groups).map_err(step(Step::SetGroups))?;
        sys.setgid(self.gid).map_err(step(Step::SetGid))?;
        sys.setuid(self.uid).map_err(step(Step::SetUid))?;
        sys.set_keepcaps(false).map_err(step(Step::KeepCaps))?;
        if !cwd_ok {
            self.chdir(sys).map_err(step(Step::Chdir))?;
        }
        let c = &self.caps;
        sys.capset(c.effective, c.permitted, c.inheritable).map_err(step(Step::CapSet))?;
        sys.ambient_clear().map_err(step(Step::AmbientClear))?;
        for cap in 0..=self.last_cap {
            if c.ambient & (1 << cap) != 0 {
                sys.ambient_raise(cap).map_err(step(Step::AmbientRaise(cap)))?;
            }
        }
        if self.no_new_privs {
            sys.set_no_new_privs().map_err(step(Step::NoNewPrivs))?;
        }
        if let Some(mask) = self.umask {
            sys.umask(mask);
        }
        Ok(())
    }
}

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The PATH of an environment, or the default one.
pub fn env_path(env: &[String]) -> &str {
    env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH)
}

/// Where the executable is looked for.
enum Lookup {
    NoCommand,
    /// args[0] has a slash: that path (None: it has a NUL byte).
    Direct(Option<CString>),
    /// Each directory of PATH joined with args[0] (those with a NUL byte left out: they cannot
    /// name a file).
    Search(Vec<CString>),
}

/// The command to exec, with argv, envp and the PATH candidates built. The lookup itself
/// happens at exec time, in the container's mount namespace and as its user, like Go's
/// exec.LookPath in runc.
pub struct Command {
    lookup: Lookup,
    /// None when an argument or environment entry has a NUL byte.
    argv: Option<sys::CStrArray>,
    envp: Option<sys::CStrArray>,
}

fn cstrings(v: &[String]) -> Option<sys::CStrArray> {
    let strings: Option<Vec<CString>> = v.iter().map(|s| CString::new(s.as_bytes()).ok()).collect();
    strings.map(sys::CStrArray::new)
}

fn is_executable(mode: u32) -> bool {
    mode & libc::S_IFMT != libc::S_IFDIR && mode & 0o111 != 0
}

impl Command {
    pub fn new(args: &[String], env: &[String]) -> Command {
        let lookup = match args.first() {
            None => Lookup::NoCommand,
            Some(name) if name.contains('/') => Lookup::Direct(CString::new(name.as_bytes()).ok()),
            Some(name) => Lookup::Search(
                env_path(env)
                    .split(':')
                    .map(|dir| if dir.is_empty() { "." } else { dir })
                    .filter_map(|dir| CString::new(Path::new(dir).join(name).as_os_str().as_bytes()).ok())
                    .collect(),
            ),
        };
        Command { lookup, argv: cstrings(args), envp: cstrings(env) }
    }

    /// The executable, found as Go's exec.LookPath finds it. Async-signal-safe.
    pub fn resolve(&self) -> std::result::Result<&CStr, Failure> {
        let fail = |step, errno| Failure { step, errno };
        match &self.lookup {
            Lookup::NoCommand => Err(fail(Step::NoCommand, 0)),
            Lookup::Direct(None) => Err(fail(Step::Stat, libc::EINVAL)),
            Lookup::Direct(Some(path)) => match sys::stat_mode(path) {
                Err(e) => Err(Failure::of(Step::Stat, e)),
                Ok(mode) if !is_executable(mode) => Err(fail(Step::NotExecutable, libc::EACCES)),
                Ok(_) => Ok(path),
            },
            Lookup::Search(candidates) => candidates
                .iter()
                .find(|c| sys::stat_mode(c).is_ok_and(is_executable))
                .map(CString::as_c_str)
                .ok_or(fail(Step::NotFound, libc::ENOENT)),
        }
    }

    /// Looks up the executable, puts every signal back to its default and execs; returns only
    /// what failed. Async-signal-safe.
    pub fn exec(&self) -> Failure {
        let path = match self.resolve() {
            Ok(p) => p,
            Err(f) => return f,
        };
        let (Some(argv), Some(envp)) = (&self.argv, &self.envp) else {
            return Failure { step: Step::Nul, errno: libc::EINVAL };
        };
        sys::reset_signals();
        Failure::of(Step::Exec, sys::execve(path, argv, envp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recorder::Recorder;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    #[test]
    fn cap_names_come_from_the_common_table() {
        assert_eq!(cap_names((1 << 5) | (1 << 7)), vec!["CAP_KILL", "CAP_SETUID"]);
        assert_eq!(cap_names(1 << 63), vec!["CAP_63"]);
    }

    fn plan(args: &[&str], path: &str) -> ProcessPlan {
        ProcessPlan {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![format!("PATH={path}")],
            ..ProcessPlan::default()
        }
    }

    /// The lookup's result: the path, or the message the container gets.
    fn resolve(args: &[&str], path: &str) -> std::result::Result<PathBuf, String> {
        let p = plan(args, path);
        let cmd = Command::new(&p.args, &p.env);
        cmd.resolve().map(|c| PathBuf::from(c.to_str().unwrap())).map_err(|f| f.message(&p))
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
        assert_eq!(resolve(&["tool"], &path).unwrap(), tool);
        assert_eq!(resolve(&["nosuch"], &path).unwrap_err(), r#"exec: "nosuch": executable file not found in $PATH"#);
        assert_eq!(resolve(&["plain"], &path).unwrap_err(), r#"exec: "plain": executable file not found in $PATH"#);
        let p = plain.display().to_string();
        assert_eq!(resolve(&[&p], &path).unwrap_err(), format!("exec: {p:?}: permission denied"));
        let missing = bin.join("missing").display().to_string();
        assert_eq!(
            resolve(&[&missing], &path).unwrap_err(),
            format!("exec: {missing:?}: stat {missing}: no such file or directory")
        );
        assert_eq!(resolve(&["/a\0b"], &path).unwrap_err(), format!("exec: \"/a\\0b\": stat /a\0b: {NUL_IN_PATH}"));
        assert_eq!(env_path(&["A=1".into(), "PATH=/x".into()]), "/x");
        assert_eq!(env_path(&[]), DEFAULT_PATH);

        // A NUL byte in an argument shows once the executable is found.
        let mut p = plan(&["tool", "a\0"], &path);
        let f = Command::new(&p.args, &p.env).exec();
        assert_eq!(f.message(&p), r#""a\0" contains a NUL byte"#);
        p.args[0] = "nosuch".into();
        let f = Command::new(&p.args, &p.env).exec();
        assert_eq!(f.step, Step::NotFound);
    }

    #[test]
    fn step_codes_round_trip() {
        for step in [
            Step::Chdir,
            Step::BoundingDrop(21),
            Step::KeepCaps,
            Step::SetGroups,
            Step::SetGid,
            Step::SetUid,
            Step::CapSet,
            Step::AmbientClear,
            Step::AmbientRaise(10),
            Step::NoNewPrivs,
            Step::NoCommand,
            Step::Stat,
            Step::NotExecutable,
            Step::NotFound,
            Step::Nul,
            Step::Exec,
        ] {
            let (code, arg) = step.code();
            assert_eq!(Step::from_code(code, arg), Some(step));
        }
        assert_eq!(Step::from_code(0, 0), None);
    }

    fn identity_plan() -> ProcessPlan {
        ProcessPlan {
            uid: 1000,
            gid: 1001,
            groups: vec![10, 20],
            cwd: "/work".into(),
            umask: Some(0o027),
            no_new_privs: true,
            caps: CapSets {
                // Everything but CAP_SYS_ADMIN (21) and CAP_CHECKPOINT_RESTORE (40).
                bounding: ((1u64 << 41) - 1) & !(1 << 21) & !(1 << 40),
                effective: 1 << 10,
                permitted: (1 << 10) | (1 << 0),
                inheritable: 1 << 10,
                ambient: (1 << 10) | (1 << 0),
            },
            ..ProcessPlan::default()
        }
    }

    #[test]
    fn identity_order_groups_gid_uid_inside_keepcaps_then_caps_ambient_no_new_privs() {
        let p = identity_plan();
        let rec = Recorder::default();
        Identity::new(&p, 40).apply(&rec).unwrap();
        assert_eq!(
            rec.calls(),
            vec![
                "chdir(/work)",
                "capbset_drop(CAP_SYS_ADMIN)",
                "capbset_drop(CAP_CHECKPOINT_RESTORE)",
                "set_keepcaps(true)",
                "setgroups([10, 20])",
                "setgid(1001)",
                "setuid(1000)",
                "set_keepcaps(false)",
                "capset(e=0x400, p=0x401, i=0x400)",
                "ambient_clear()",
                "ambient_raise(CAP_CHOWN)",
                "ambient_raise(CAP_NET_BIND_SERVICE)",
                "set_no_new_privs()",
                "umask(0o27)",
            ]
        );
    }

    #[test]
    fn identity_retries_the_cwd_as_the_user_and_ignores_unknown_caps() {
        let mut p = identity_plan();
        p.no_new_privs = false;
        p.umask = None;
        let rec = Recorder::default();
        rec.fail("chdir(", libc::EACCES);
        rec.fail("capbset_drop(CAP_CHECKPOINT_RESTORE)", libc::EINVAL);
        Identity::new(&p, 40).apply(&rec).unwrap();
        let calls = rec.calls();
        let at = |c: &str| calls.iter().position(|x| x == c).unwrap();
        assert_eq!(calls.iter().filter(|c| *c == "chdir(/work)").count(), 2);
        assert!(at("set_keepcaps(false)") < calls.iter().rposition(|x| x == "chdir(/work)").unwrap());
        assert!(calls.iter().rposition(|x| x == "chdir(/work)").unwrap() < at("capset(e=0x400, p=0x401, i=0x400)"));
        assert!(!calls.iter().any(|c| c.starts_with("set_no_new_privs") || c.starts_with("umask")));
    }

    #[test]
    fn identity_failures_stop_and_are_worded_like_before() {
        let p = identity_plan();
        for (fail, errno, message) in [
            ("setuid(", libc::EPERM, "setuid(1000): EPERM"),
            ("setgroups(", libc::EPERM, "setgroups([10, 20]): EPERM"),
            ("setgid(", libc::EINVAL, "setgid(1001): EINVAL"),
            ("capbset_drop(CAP_SYS_ADMIN)", libc::EPERM, "dropping CAP_SYS_ADMIN from the bounding set: EPERM"),
            ("capset(", libc::EPERM, "capset: EPERM"),
            ("ambient_raise(CAP_NET_BIND_SERVICE)", libc::EPERM, "raising ambient CAP_NET_BIND_SERVICE: EPERM"),
            ("set_no_new_privs(", libc::EINVAL, "prctl(PR_SET_NO_NEW_PRIVS): EINVAL"),
        ] {
            let rec = Recorder::default();
            rec.fail(fail, errno);
            let f = Identity::new(&p, 40).apply(&rec).unwrap_err();
            assert_eq!(f.message(&p), message);
            assert!(rec.calls().last().unwrap().starts_with(fail), "nothing runs after {fail}");
        }
        // The cwd fails twice: as root, then as the user.
        let rec = Recorder::default();
        rec.fail("chdir(", libc::ENOENT);
        rec.fail("chdir(", libc::ENOENT);
        let f = Identity::new(&p, 40).apply(&rec).unwrap_err();
        assert_eq!(f.message(&p), r#"chdir to cwd ("/work") set in config.json: ENOENT"#);
        assert_eq!(rec.calls().last().unwrap(), "chdir(/work)");
    }
}
