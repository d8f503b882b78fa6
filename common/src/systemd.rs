//! systemd transient units over D-Bus, for the systemd cgroup driver: a container's processes go
//! into a transient scope (`<prefix>-<name>.scope`) inside a slice
//! (`kubepods-burstable-pod<uid>.slice`), created with `Manager.StartTransientUnit` and the
//! container's resources as unit properties, as runc's systemd driver does (runc's
//! libcontainer/cgroups/systemd, now github.com/opencontainers/cgroups/systemd).
//!
//! Waiting for a job: systemd answers StartTransientUnit/StopUnit with a job object path as soon
//! as the job is queued; the unit is in place only when the job finishes. We wait for the
//! `JobRemoved(u id, o job, s unit, s result)` signal of that job, as go-systemd (runc) does,
//! rather than polling: it says how the job ended ("done", or "failed", "canceled", "timeout",
//! "dependency", "skipped", …), which a poll of the job object (gone either way) cannot, and it
//! costs no extra round trips. The race is handled by subscribing before the call and keeping
//! JobRemoved signals that arrive before the call's reply (systemd may run a scope's start job
//! before our read of the reply). systemd sends job signals to every connection on its private
//! socket unconditionally; on the system bus only after `Subscribe` and only through a match rule
//! of ours (the bus daemon forwards broadcast signals by match rule), and there we also check
//! that the signal comes from systemd's unique name.

use std::fs;
use std::time::{Duration, Instant};

use crate::dbus::{self, Arg, Connection};

pub const SERVICE: &str = "org.freedesktop.systemd1";
pub const OBJECT: &str = "/org/freedesktop/systemd1";
pub const MANAGER: &str = "org.freedesktop.systemd1.Manager";
pub const ERROR_NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
pub const ERROR_UNIT_EXISTS: &str = "org.freedesktop.systemd1.UnitExists";
const ERROR_ALREADY_SUBSCRIBED: &str = "org.freedesktop.systemd1.AlreadySubscribed";
/// The kernel's CFS period when none is given (100 ms, v1 and v2).
const DEFAULT_CPU_PERIOD: u64 = 100_000;
/// systemd's USEC_INFINITY / CGROUP_LIMIT_MAX: "max" for the u64 properties.
pub const INFINITY: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    DBus(#[from] dbus::Error),
    #[error("systemd job {job} for {unit} finished with result {result:?}")]
    Job { unit: String, job: String, result: String },
    #[error("invalid slice name {0:?}")]
    Slice(String),
    #[error("invalid cgroups path {path:?}: {why}")]
    CgroupsPath { path: String, why: &'static str },
    #[error("invalid resources: {0}")]
    Resources(String),
    #[error("process {pid} is in cgroup {got:?}, not {want:?}")]
    NotInCgroup { pid: u32, want: String, got: String },
}

impl Error {
    /// The D-Bus error name, when systemd refused a call.
    pub fn dbus_name(&self) -> Option<&str> {
        match self {
            Error::DBus(e) => e.dbus_name(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A unit property's value, with the D-Bus type systemd expects for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `b`: Delegate, DefaultDependencies, *Accounting
    Bool(bool),
    /// `u`
    U32(u32),
    /// `t`: MemoryMax, MemorySwapMax, TasksMax, CPUWeight, CPUQuotaPerSecUSec, …
    U64(u64),
    /// `x`
    I64(i64),
    /// `s`: Description, Slice
    Str(String),
    /// `as`: Wants, After, …
    Strs(Vec<String>),
    /// `au`: PIDs
    ArrayU32(Vec<u32>),
    /// `ay`: AllowedCPUs, AllowedMemoryNodes
    Bytes(Vec<u8>),
}

impl Value {
    pub fn to_arg(&self) -> Arg {
        match self {
            Value::Bool(v) => Arg::Bool(*v),
            Value::U32(v) => Arg::U32(*v),
            Value::U64(v) => Arg::U64(*v),
            Value::I64(v) => Arg::I64(*v),
            Value::Str(v) => Arg::str(v),
            Value::Strs(v) => Arg::Array("s".into(), v.iter().map(Arg::str).collect()),
            Value::ArrayU32(v) => Arg::Array("u".into(), v.iter().map(|u| Arg::U32(*u)).collect()),
            Value::Bytes(v) => Arg::Array("y".into(), v.iter().map(|b| Arg::Byte(*b)).collect()),
        }
    }
}

/// A unit property: its name and value.
pub type Property = (&'static str, Value);

/// Whether the host runs systemd as its service manager (sd_booted(3): /run/systemd/system is
/// a directory).
pub fn booted() -> bool {
    fs::symlink_metadata("/run/systemd/system").is_ok_and(|m| m.is_dir())
}

fn manager_call(conn: &mut Connection, member: &str, args: Vec<Arg>) -> Result<dbus::Message> {
    Ok(conn.call(Some(SERVICE), OBJECT, MANAGER, member, args)?)
}

fn job_path(reply: &dbus::Message) -> Result<String> {
    match reply.body.first() {
        Some(Arg::ObjectPath(p)) => Ok(p.clone()),
        _ => Err(dbus::Error::Protocol(format!("a job reply of signature {:?}", reply.signature())).into()),
    }
}

/// Makes JobRemoved signals reach [`wait_job`] on this connection. Peer to peer systemd sends
/// them anyway; on a bus this calls Subscribe and adds a match rule. Idempotent.
pub fn subscribe(conn: &mut Connection) -> Result<()> {
    if conn.is_watching(MANAGER, "JobRemoved") {
        return Ok(());
    }
    if !conn.is_bus() {
        conn.watch_signal(MANAGER, "JobRemoved", None);
        return Ok(());
    }
    let owner = conn.call(
        Some("org.freedesktop.DBus"),
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "GetNameOwner",
        vec![Arg::str(SERVICE)],
    )?;
    let owner = owner.body.first().and_then(Arg::as_str).unwrap_or_default().to_string();
    conn.add_match(&format!(
        "type='signal',sender='{SERVICE}',path='{OBJECT}',interface='{MANAGER}',member='JobRemoved'"
    ))?;
    conn.watch_signal(MANAGER, "JobRemoved", Some(&owner));
    match manager_call(conn, "Subscribe", vec![]) {
        Err(e) if e.dbus_name() == Some(ERROR_ALREADY_SUBSCRIBED) => Ok(()),
        r => r.map(drop),
    }
}

fn property_args<S: AsRef<str>>(props: &[(S, Value)]) -> Arg {
    Arg::Array(
        "(sv)".into(),
        props.iter().map(|(k, v)| Arg::Struct(vec![Arg::str(k.as_ref()), Arg::variant(v.to_arg())])).collect(),
    )
}

/// `StartTransientUnit(name, mode, properties, [])`; returns the job's object path. The unit
/// exists when the job finishes: see [`wait_job`] (and [`subscribe`] first).
pub fn start_transient_unit<S: AsRef<str>>(
    conn: &mut Connection,
    name: &str,
    mode: &str,
    props: &[(S, Value)],
) -> Result<String> {
    let args = vec![Arg::str(name), Arg::str(mode), property_args(props), Arg::Array("(sa(sv))".into(), vec![])];
    job_path(&manager_call(conn, "StartTransientUnit", args)?)
}

/// Waits for the JobRemoved signal of `job`; Ok if its result is "done".
pub fn wait_job(conn: &mut Connection, job: &str, timeout: Duration) -> Result<()> {
    let m = conn.wait_signal(timeout, |m| {
        m.is_signal(MANAGER, "JobRemoved") && m.body.get(1).and_then(Arg::as_str) == Some(job)
    })?;
    let text = |i: usize| m.body.get(i).and_then(Arg::as_str).unwrap_or_default().to_string();
    match text(3).as_str() {
        "done" => Ok(()),
        _ => Err(Error::Job { unit: text(2), job: job.into(), result: text(3) }),
    }
}

/// Starts a transient unit and waits (the connection's [timeout](Connection::set_timeout)) for
/// its job, as runc does: mode "replace"; a unit of that name left over (UnitExists, e.g. failed
/// and not yet collected) is reset and the start tried once more; a job that does not end
/// "done" (or not in time) resets the unit so no failed unit stays behind.
pub fn start_unit_and_wait<S: AsRef<str>>(conn: &mut Connection, name: &str, props: &[(S, Value)]) -> Result<()> {
    let timeout = conn.timeout();
    subscribe(conn)?;
    let job = match start_transient_unit(conn, name, "replace", props) {
        Err(e) if e.dbus_name() == Some(ERROR_UNIT_EXISTS) => {
            reset_failed_unit(conn, name)?;
            start_transient_unit(conn, name, "replace", props)?
        }
        r => r?,
    };
    wait_job(conn, &job, timeout).inspect_err(|_| {
        let _ = reset_failed_unit(conn, name);
    })
}

/// Stops a unit (mode "replace") and waits (the connection's timeout) for the stop job; a unit
/// that is not loaded is stopped already. Then resets it in case it ended "failed", so systemd
/// unloads it and the name is free again. Stopping a scope sends its processes SIGTERM
/// (KillMode=control-group) and SIGKILL after the unit's TimeoutStopSec (90 s by default).
pub fn stop_unit(conn: &mut Connection, name: &str) -> Result<()> {
    let timeout = conn.timeout();
    subscribe(conn)?;
    let r = match manager_call(conn, "StopUnit", vec![Arg::str(name), Arg::str("replace")]) {
        Ok(reply) => wait_job(conn, &job_path(&reply)?, timeout),
        Err(e) if e.dbus_name() == Some(ERROR_NO_SUCH_UNIT) => return Ok(()),
        Err(e) => Err(e),
    };
    let reset = reset_failed_unit(conn, name);
    r.and(reset)
}

/// `ResetFailedUnit(name)`: forgets a failed unit's state so it can be collected; a unit that is
/// not loaded is fine.
pub fn reset_failed_unit(conn: &mut Connection, name: &str) -> Result<()> {
    match manager_call(conn, "ResetFailedUnit", vec![Arg::str(name)]) {
        Err(e) if e.dbus_name() == Some(ERROR_NO_SUCH_UNIT) => Ok(()),
        r => r.map(drop),
    }
}

/// A unit name systemd accepts: at most 255 bytes of `[A-Za-z0-9:_.\-\\]` (and `@` for
/// instances), a non-empty prefix before the type suffix.
pub fn valid_unit_name(name: &str) -> bool {
    let Some((prefix, suffix)) = name.rsplit_once('.') else { return false };
    name.len() <= 255
        && !prefix.is_empty()
        && !suffix.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b":_.-\\@".contains(&b))
}

/// The cgroup path (from the cgroup root) of a slice: systemd nests slices by the dashes of
/// their names, `a-b-c.slice` lives at `/a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
/// Leading, trailing and double dashes are invalid (as in systemd and runc).
pub fn expand_slice(slice: &str) -> Result<String> {
    let bad = || Error::Slice(slice.into());
    let name = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if name == "-" {
        return Ok("/".into());
    }
    if !valid_unit_name(slice) || slice.contains('@') {
        return Err(bad());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in name.split('-') {
        if component.is_empty() {
            return Err(bad());
        }
        path.push('/');
        path.push_str(&prefix);
        path.push_str(component);
        path.push_str(".slice");
        prefix.push_str(component);
        prefix.push('-');
    }
    Ok(path)
}

/// An OCI `linux.cgroupsPath` in the systemd driver's form `slice:prefix:name`, as runc reads
/// it: the unit is `<prefix>-<name>.scope` in `slice` (`system.slice` when empty), or, when
/// `name` ends in `.slice`, the slice unit `name` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupsPath {
    pub slice: String,
    pub prefix: String,
    pub name: String,
}

impl CgroupsPath {
    pub fn parse(path: &str) -> Result<CgroupsPath> {
        let bad = |why| Error::CgroupsPath { path: path.into(), why };
        let mut parts = path.split(':');
        let (Some(slice), Some(prefix), Some(name), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not of the form slice:prefix:name"));
        };
        let slice = if slice.is_empty() { "system.slice" } else { slice };
        expand_slice(slice).map_err(|_| bad("invalid slice"))?;
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        let cg = CgroupsPath { slice: slice.into(), prefix: prefix.into(), name: name.into() };
        if !valid_unit_name(&cg.unit_name()) {
            return Err(bad("not a valid unit name"));
        }
        if cg.is_slice() {
            // systemd places a slice by its name, so the name must say it is in `slice`.
            let (Ok(own), Ok(parent)) = (expand_slice(&cg.name), expand_slice(&cg.slice)) else {
                return Err(bad("invalid slice name"));
            };
            let own_parent = &own[..own.rfind('/').expect("starts with /")];
            if own_parent.trim_end_matches('/') != parent.trim_end_matches('/') {
                return Err(bad("a slice's name does not put it in the given slice"));
            }
        }
        Ok(cg)
    }

    /// Whether the unit is a slice (else a scope).
    pub fn is_slice(&self) -> bool {
        self.name.ends_with(".slice")
    }

    /// `<prefix>-<name>.scope`, or the slice's name. (An empty prefix gives `<name>.scope`, where
    /// runc would make `-<name>.scope`.)
    pub fn unit_name(&self) -> String {
        if self.is_slice() {
            self.name.clone()
        } else if self.prefix.is_empty() {
            format!("{}.scope", self.name)
        } else {
            format!("{}-{}.scope", self.prefix, self.name)
        }
    }

    /// The unit's cgroup, from the cgroup root (e.g.
    /// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/corral-abc.scope`).
    pub fn cgroup(&self) -> String {
        if self.is_slice() {
            expand_slice(&self.name).expect("checked by parse")
        } else {
            let parent = expand_slice(&self.slice).expect("checked by parse");
            format!("{}/{}", parent.trim_end_matches('/'), self.unit_name())
        }
    }
}

/// [`CgroupsPath::parse`].
pub fn parse_cgroups_path(path: &str) -> Result<CgroupsPath> {
    CgroupsPath::parse(path)
}

/// The properties that make a unit a container's, as runc sets them: a Description, where it
/// sits (Slice= for a scope; Wants= its parent for a slice, whose place comes from its name),
/// the processes (PIDs=, scopes only), Delegate=yes for a scope (the subtree is ours),
/// DefaultDependencies=no (no ordering against shutdown.target and the like) and accounting.
pub fn unit_properties(cg: &CgroupsPath, pids: &[u32], description: &str) -> Vec<Property> {
    let mut p: Vec<Property> = vec![("Description", Value::Str(description.into()))];
    if cg.is_slice() {
        p.push(("Wants", Value::Strs(vec![cg.slice.clone()])));
    } else {
        p.push(("Slice", Value::Str(cg.slice.clone())));
        p.push(("Delegate", Value::Bool(true)));
        if !pids.is_empty() {
            p.push(("PIDs", Value::ArrayU32(pids.to_vec())));
        }
    }
    for a in ["MemoryAccounting", "CPUAccounting", "IOAccounting", "TasksAccounting"] {
        p.push((a, Value::Bool(true)));
    }
    p.push(("DefaultDependencies", Value::Bool(false)));
    p
}

/// A container's resource limits, in the OCI spec's (cgroup v1) terms; None leaves a property
/// unset (systemd's default, which is the kernel's, except for the pids limit: see
/// [`resource_properties`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    /// Microseconds per period; <= 0 is no limit.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// Bytes; -1 is no limit, 0 unset.
    pub memory_limit: Option<i64>,
    /// Memory plus swap, bytes (v1's memsw); -1 is no limit, 0 unset.
    pub memory_swap: Option<i64>,
    /// <= 0 is no limit.
    pub pids_limit: Option<i64>,
    /// A cpuset list such as "0-3,5".
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
}

/// cpu.shares (2..262144) onto cpu.weight (1..10000) linearly, the conversion runc and
/// corral's cgroupfs driver use: 1 + ((shares - 2) * 9999) / 262142; 0 stays 0 (unset).
/// (runc ≥ 1.3.2 / opencontainers/cgroups 0.0.4 moved to a quadratic fit that maps 1024 to 100;
/// this is the linear one, 1024 → 39.)
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// CPUQuotaPerSecUSec for a quota and period as runc computes it: quota per second, rounded up
/// to a multiple of 10 ms (systemd keeps whole percents of a CPU); infinity for no quota.
pub fn cpu_quota_per_sec(quota: i64, period: u64) -> u64 {
    if quota <= 0 {
        return INFINITY;
    }
    let period = if period == 0 { DEFAULT_CPU_PERIOD } else { period };
    let per_sec = (quota as u64).saturating_mul(1_000_000) / period;
    per_sec.div_ceil(10_000).saturating_mul(10_000)
}

/// The quota (per period) systemd's cpu.max then holds: runc writes the same rounded value to
/// cgroupfs, so a caller that also writes cpu.max should use this.
pub fn rounded_cpu_quota(quota: i64, period: u64) -> i64 {
    let period = if period == 0 { DEFAULT_CPU_PERIOD } else { period };
    match cpu_quota_per_sec(quota, period) {
        INFINITY => quota,
        per_sec => (per_sec as u128 * period as u128 / 1_000_000) as i64,
    }
}

/// memory.swap.max from the OCI memory+swap and memory limits, as runc's
/// ConvertMemorySwapToCgroupV2Value: -1 is max, 0 unset.
pub fn swap_max(memory_swap: i64, memory: i64) -> Result<i64> {
    match (memory_swap, memory) {
        (0, -1) => Ok(-1),
        (-1 | 0, _) => Ok(memory_swap),
        (_, -1) => Ok(memory_swap),
        (_, 0) => Err(Error::Resources("a swap limit needs a memory limit".into())),
        (_, m) if m < 0 => Err(Error::Resources(format!("memory limit {m}"))),
        (s, m) if s < m => Err(Error::Resources("memory+swap limit below the memory limit".into())),
        (s, m) => Ok(s - m),
    }
}

/// A cpuset list ("0-3,5") as the byte mask systemd takes for AllowedCPUs/AllowedMemoryNodes:
/// byte i holds CPUs 8i..8i+7, lowest bit first, no trailing zero bytes (runc's RangeToBits
/// since it was fixed to systemd's order; empty elements and spaces around them are allowed).
pub fn range_to_bits(list: &str) -> Result<Vec<u8>> {
    let bad = || Error::Resources(format!("cpuset list {list:?}"));
    let num = |s: &str| s.parse::<u32>().map_err(|_| bad());
    let mut bytes: Vec<u8> = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi || hi >= 1 << 16 {
            return Err(bad());
        }
        for cpu in lo..=hi {
            let i = (cpu / 8) as usize;
            if bytes.len() <= i {
                bytes.resize(i + 1, 0);
            }
            bytes[i] |= 1 << (cpu % 8);
        }
    }
    if bytes.is_empty() {
        return Err(bad());
    }
    Ok(bytes)
}

/// A container's resources as unit properties, the mapping of runc's systemd cgroup v2 driver
/// (genV2ResourcesProperties): MemoryMax, MemorySwapMax, CPUWeight, CPUQuotaPeriodUSec,
/// CPUQuotaPerSecUSec, TasksMax, AllowedCPUs, AllowedMemoryNodes. Assumes systemd ≥ 244
/// (AllowedCPUs; CPUQuotaPeriodUSec needs 242). Where corral differs from runc:
/// memory+swap equal to the memory limit sets MemorySwapMax=0 (runc leaves swap to its later
/// cgroupfs write), and no pids limit (None, 0, any negative) is TasksMax=infinity: runc leaves
/// TasksMax unset for None and 0, and systemd then caps the scope at DefaultTasksMax (15% of the
/// kernel's task limit, 2346 in a 2 GiB guest), where a cgroup corral makes through cgroupfs
/// has pids.max "max".
pub fn resource_properties(r: &Resources) -> Result<Vec<Property>> {
    let mut p: Vec<Property> = Vec::new();
    let as_max = |v: i64| if v < 0 { INFINITY } else { v as u64 };
    let memory = r.memory_limit.unwrap_or(0);
    if memory != 0 {
        p.push(("MemoryMax", Value::U64(as_max(memory))));
    }
    if let Some(memsw) = r.memory_swap {
        let swap = swap_max(memsw, memory)?;
        if swap != 0 || (memsw > 0 && memsw == memory) {
            p.push(("MemorySwapMax", Value::U64(as_max(swap))));
        }
    } else if memory == -1 {
        p.push(("MemorySwapMax", Value::U64(INFINITY)));
    }
    let weight = shares_to_weight(r.cpu_shares.unwrap_or(0));
    if weight != 0 {
        p.push(("CPUWeight", Value::U64(weight)));
    }
    let (quota, period) = (r.cpu_quota.unwrap_or(0), r.cpu_period.unwrap_or(0));
    if period != 0 {
        p.push(("CPUQuotaPeriodUSec", Value::U64(period)));
    }
    if quota != 0 || period != 0 {
        p.push(("CPUQuotaPerSecUSec", Value::U64(cpu_quota_per_sec(quota, period))));
    }
    let tasks = r.pids_limit.filter(|l| *l > 0).map_or(INFINITY, |l| l as u64);
    p.push(("TasksMax", Value::U64(tasks)));
    if let Some(cpus) = r.cpuset_cpus.as_deref().filter(|s| !s.is_empty()) {
        p.push(("AllowedCPUs", Value::Bytes(range_to_bits(cpus)?)));
    }
    if let Some(mems) = r.cpuset_mems.as_deref().filter(|s| !s.is_empty()) {
        p.push(("AllowedMemoryNodes", Value::Bytes(range_to_bits(mems)?)));
    }
    Ok(p)
}

/// The cgroup v2 path of a process (0: this one) from its /proc/<pid>/cgroup `0::` line.
pub fn cgroup_of(pid: u32) -> std::io::Result<String> {
    let file = if pid == 0 { "/proc/self/cgroup".to_string() } else { format!("/proc/{pid}/cgroup") };
    let text = fs::read_to_string(file)?;
    Ok(text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or_default().to_string())
}

/// Waits until process `pid` (0: this one) is in `cgroup` (from the cgroup root), checking every
/// 2 ms until `timeout`.
pub fn wait_in_cgroup(pid: u32, cgroup: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = cgroup_of(pid).unwrap_or_else(|e| format!("(unreadable: {e})"));
        if got == cgroup {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::NotInCgroup { pid, want: cgroup.into(), got });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_by_their_dashes() {
        assert_eq!(
            expand_slice("kubepods-burstable-pod12.slice").unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice"
        );
        assert_eq!(expand_slice("system.slice").unwrap(), "/system.slice");
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        assert_eq!(expand_slice("a-b-c.slice").unwrap(), "/a.slice/a-b.slice/a-b-c.slice");
        for bad in [
            "",
            ".slice",
            "-a.slice",
            "a-.slice",
            "a--b.slice",
            "--.slice",
            "a.scope",
            "a/b.slice",
            "a b.slice",
            "foo@bar.slice",
            "kubepods",
        ] {
            assert!(matches!(expand_slice(bad), Err(Error::Slice(_))), "{bad:?}");
        }
        assert!(expand_slice(&format!("{}.slice", "a".repeat(249))).is_ok());
        assert!(expand_slice(&format!("{}.slice", "a".repeat(250))).is_err(), "256 bytes");
    }

    #[test]
    fn cgroups_paths_as_runc_reads_them() {
        let cg = parse_cgroups_path("kubepods-burstable-pod12.slice:corral:abc").unwrap();
        assert_eq!(
            cg,
            CgroupsPath { slice: "kubepods-burstable-pod12.slice".into(), prefix: "corral".into(), name: "abc".into() }
        );
        assert_eq!(cg.unit_name(), "corral-abc.scope");
        assert!(!cg.is_slice());
        assert_eq!(
            cg.cgroup(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/corral-abc.scope"
        );

        let cg = parse_cgroups_path(":cri-containerd:0123abcd").unwrap();
        assert_eq!(cg.slice, "system.slice");
        assert_eq!(cg.cgroup(), "/system.slice/cri-containerd-0123abcd.scope");

        let cg = parse_cgroups_path("-.slice:corral:x").unwrap();
        assert_eq!(cg.cgroup(), "/corral-x.scope");

        let cg = parse_cgroups_path("kubepods-besteffort.slice::kubepods-besteffort-pod9.slice").unwrap();
        assert!(cg.is_slice());
        assert_eq!(cg.unit_name(), "kubepods-besteffort-pod9.slice");
        assert_eq!(cg.cgroup(), "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9.slice");
        assert_eq!(parse_cgroups_path("-.slice::kubepods.slice").unwrap().cgroup(), "/kubepods.slice");

        assert_eq!(parse_cgroups_path("system.slice::abc").unwrap().unit_name(), "abc.scope");

        for bad in [
            "/kubepods/burstable/pod12/abc",
            "a.slice:b",
            "a.slice:b:c:d",
            "a--b.slice:corral:abc",
            "notaslice:corral:abc",
            "system.slice:corral:",
            "system.slice:corral:a/b",
            "system.slice:cor ral:abc",
            // a slice unit whose name puts it elsewhere than the slice given
            "system.slice::kubepods-pod1.slice",
        ] {
            assert!(matches!(parse_cgroups_path(bad), Err(Error::CgroupsPath { .. })), "{bad:?}");
        }
    }

    #[test]
    fn shares_to_weight_as_runc() {
        // runc: 1 + ((shares - 2) * 9999) / 262142
        for (shares, weight) in [(0, 0), (2, 1), (3, 1), (102, 4), (512, 20), (1024, 39), (2048, 79), (262_144, 10_000)]
        {
            assert_eq!(shares_to_weight(shares), weight, "{shares}");
        }
        // Out of the kernel's range: clamped, as corral's cgroupfs driver does (runc's
        // unsigned arithmetic wraps on 1).
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(shares_to_weight(1 << 20), 10_000);
    }

    #[test]
    fn cpu_quota_as_runc() {
        // quota*1e6/period, rounded up to 10 ms
        assert_eq!(cpu_quota_per_sec(50_000, 100_000), 500_000);
        assert_eq!(cpu_quota_per_sec(12_345, 100_000), 130_000);
        assert_eq!(rounded_cpu_quota(12_345, 100_000), 13_000);
        assert_eq!(cpu_quota_per_sec(100_000, 0), 1_000_000, "default period");
        assert_eq!(cpu_quota_per_sec(1, 100_000), 10_000);
        assert_eq!(cpu_quota_per_sec(25_000, 50_000), 500_000);
        assert_eq!(cpu_quota_per_sec(33_333, 1_000_000), 40_000);
        assert_eq!(rounded_cpu_quota(33_333, 1_000_000), 40_000);
        assert_eq!(cpu_quota_per_sec(-1, 100_000), INFINITY);
        assert_eq!(cpu_quota_per_sec(0, 100_000), INFINITY);
        assert_eq!(rounded_cpu_quota(-1, 100_000), -1);
    }

    #[test]
    fn swap_as_runc() {
        assert_eq!(swap_max(0, -1).unwrap(), -1);
        assert_eq!(swap_max(-1, 100).unwrap(), -1);
        assert_eq!(swap_max(0, 100).unwrap(), 0);
        assert_eq!(swap_max(300, -1).unwrap(), 300);
        assert_eq!(swap_max(300, 100).unwrap(), 200);
        assert_eq!(swap_max(100, 100).unwrap(), 0);
        assert!(swap_max(300, 0).is_err());
        assert!(swap_max(50, 100).is_err());
        assert!(swap_max(300, -5).is_err());
    }

    #[test]
    fn cpu_lists_as_runc_range_to_bits() {
        // runc's TestRangeToBits vectors (after the fix to systemd's byte order)
        let cases: &[(&str, &[u8])] = &[
            ("0", &[1]),
            ("1", &[2]),
            ("0-1", &[3]),
            ("0,1", &[3]),
            (",0,1,", &[3]),
            ("0-3", &[0x0f]),
            ("0,1,2-3", &[0x0f]),
            ("4-7", &[0xf0]),
            ("0-7", &[0xff]),
            ("0-15", &[0xff, 0xff]),
            ("16", &[0, 0, 1]),
            ("0-3,32-33", &[0x0f, 0, 0, 0, 3]),
            ("1, 2, 1-2", &[6]),
            ("    , 1   , 3  ,  5-7,\t", &[0xea]),
            ("128-130,1", &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]),
            ("0-3,5", &[0x2f]),
        ];
        for (list, bits) in cases {
            assert_eq!(range_to_bits(list).unwrap(), *bits, "{list:?}");
        }
        for bad in ["", " , ", "-", "1-", "-3", "54-53", "1 - 2", "x", "99999999"] {
            assert!(range_to_bits(bad).is_err(), "{bad:?}");
        }
    }

    fn props(r: &Resources) -> Vec<Property> {
        resource_properties(r).unwrap()
    }

    #[test]
    fn resources_as_runc_properties() {
        let no_cap = ("TasksMax", Value::U64(INFINITY));
        assert_eq!(props(&Resources::default()), vec![no_cap.clone()]);
        let r = Resources {
            cpu_shares: Some(1024),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(256 << 20),
            memory_swap: Some(512 << 20),
            pids_limit: Some(100),
            cpuset_cpus: Some("0-3,5".into()),
            cpuset_mems: Some("0".into()),
        };
        assert_eq!(
            props(&r),
            vec![
                ("MemoryMax", Value::U64(256 << 20)),
                ("MemorySwapMax", Value::U64(256 << 20)),
                ("CPUWeight", Value::U64(39)),
                ("CPUQuotaPeriodUSec", Value::U64(100_000)),
                ("CPUQuotaPerSecUSec", Value::U64(500_000)),
                ("TasksMax", Value::U64(100)),
                ("AllowedCPUs", Value::Bytes(vec![0x2f])),
                ("AllowedMemoryNodes", Value::Bytes(vec![1])),
            ]
        );
        // Unlimited memory: memory and swap max (runc: memory -1 with swap unset is -1 swap).
        let inf = |k| (k, Value::U64(INFINITY));
        let case = |r: Resources, want: Vec<Property>| {
            let mut want = want;
            want.push(no_cap.clone());
            assert_eq!(props(&r), want, "{r:?}");
        };
        case(Resources { memory_limit: Some(-1), ..Default::default() }, vec![inf("MemoryMax"), inf("MemorySwapMax")]);
        case(
            Resources { memory_limit: Some(-1), memory_swap: Some(0), ..Default::default() },
            vec![inf("MemoryMax"), inf("MemorySwapMax")],
        );
        // memory+swap == memory: no swap at all.
        case(
            Resources { memory_limit: Some(100), memory_swap: Some(100), ..Default::default() },
            vec![("MemoryMax", Value::U64(100)), ("MemorySwapMax", Value::U64(0))],
        );
        case(
            Resources { memory_limit: Some(100), memory_swap: Some(-1), ..Default::default() },
            vec![("MemoryMax", Value::U64(100)), inf("MemorySwapMax")],
        );
        assert!(resource_properties(&Resources { memory_swap: Some(100), ..Default::default() }).is_err());
        // A period alone: the period and no quota (runc: CPUQuotaPerSecUSec=infinity).
        case(
            Resources { cpu_period: Some(50_000), ..Default::default() },
            vec![("CPUQuotaPeriodUSec", Value::U64(50_000)), inf("CPUQuotaPerSecUSec")],
        );
        case(Resources { cpu_quota: Some(-1), ..Default::default() }, vec![inf("CPUQuotaPerSecUSec")]);
        case(
            Resources { cpu_quota: Some(150_000), ..Default::default() },
            vec![("CPUQuotaPerSecUSec", Value::U64(1_500_000))],
        );
        case(Resources { cpu_shares: Some(0), cpu_quota: Some(0), ..Default::default() }, vec![]);
        // No pids limit, however said: no cap (runc: -1 is infinity; 0 and None leave
        // DefaultTasksMax).
        for none in [-1, 0, -5] {
            case(Resources { pids_limit: Some(none), ..Default::default() }, vec![]);
        }
        case(Resources { cpuset_cpus: Some(String::new()), ..Default::default() }, vec![]);
        assert!(resource_properties(&Resources { cpuset_mems: Some("1-0".into()), ..Default::default() }).is_err());
    }

    #[test]
    fn unit_properties_for_scopes_and_slices() {
        let scope = parse_cgroups_path("kubepods-pod1.slice:corral:abc").unwrap();
        let p = unit_properties(&scope, &[42], "corral container abc");
        assert_eq!(p[0], ("Description", Value::Str("corral container abc".into())));
        assert!(p.contains(&("Slice", Value::Str("kubepods-pod1.slice".into()))));
        assert!(p.contains(&("Delegate", Value::Bool(true))));
        assert!(p.contains(&("PIDs", Value::ArrayU32(vec![42]))));
        assert!(p.contains(&("DefaultDependencies", Value::Bool(false))));
        let slice = parse_cgroups_path("kubepods.slice::kubepods-pod1.slice").unwrap();
        let p = unit_properties(&slice, &[], "pod 1");
        assert!(p.contains(&("Wants", Value::Strs(vec!["kubepods.slice".into()]))));
        assert!(!p.iter().any(|(k, _)| *k == "Slice" || *k == "PIDs" || *k == "Delegate"));
    }

    #[test]
    fn properties_marshal_as_a_sv() {
        let p: Vec<Property> =
            vec![("AllowedCPUs", Value::Bytes(vec![0x2f])), ("Wants", Value::Strs(vec!["a.slice".into()]))];
        let arg = property_args(&p);
        assert_eq!(arg.signature(), "a(sv)");
        // a(sv): length, pad to 8, ("AllowedCPUs", <ay [0x2f]>), ("Wants", <as ["a.slice"]>)
        let bytes = dbus::marshal(&[arg]).unwrap();
        #[rustfmt::skip]
        let want: &[u8] = &[
            // 0: array length 64 (elements from 8 to 72); 4..8: padding to the first struct
            64, 0, 0, 0,  0, 0, 0, 0,
            // 8: s "AllowedCPUs" (length 11, bytes 12..23, NUL 23); 24: v signature "ay"
            // 24..28; 28: ay length 1; 32: 0x2f
            11, 0, 0, 0,  b'A', b'l', b'l', b'o', b'w', b'e', b'd', b'C', b'P', b'U', b's', 0,
            2, b'a', b'y', 0,  1, 0, 0, 0,  0x2f,
            // 33..40: padding; 40: s "Wants" (bytes 44..49, NUL 49); 50: v signature "as"
            // 50..54; 54..56: padding; 56: as length 12 (60..72); 60: s "a.slice" (64..71, NUL 71)
            0, 0, 0, 0, 0, 0, 0,
            5, 0, 0, 0,  b'W', b'a', b'n', b't', b's', 0,  2, b'a', b's', 0,  0, 0,
            12, 0, 0, 0,  7, 0, 0, 0,  b'a', b'.', b's', b'l', b'i', b'c', b'e', 0,
        ];
        assert_eq!(bytes, want);
    }
}
