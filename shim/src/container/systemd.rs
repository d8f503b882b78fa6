//! The systemd cgroup driver, as runc's: the container's cgroup is a transient scope unit
//! (`<prefix>-<name>.scope` in the slice the bundle names), started over D-Bus with the
//! container's first process in it and its resources as unit properties, so that systemd, which
//! owns the cgroup, keeps those limits when it rewrites its cgroups. Delegate=yes leaves the
//! cgroup's files to us for what systemd has no property for (devices, huge pages, unified
//! keys), written through cgroupfs after the start.

use std::time::{Duration, Instant};

use common::dbus::Connection;
use common::systemd::{self, CgroupsPath, Property};
use oci_spec::runtime::LinuxResources;

use crate::error::{Error, Result};

/// How long systemd may take to start or stop the unit and move the process (a loaded node, or
/// an emulated guest, takes seconds).
const SYSTEMD_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Scope {
    /// `slice:prefix:name` parsed.
    path: CgroupsPath,
    /// The unit's name, `corral-<id>.scope`.
    pub unit: String,
    /// Its cgroup, relative to the cgroup root (`/kubepods.slice/…/corral-<id>.scope`).
    pub cgroup: String,
    /// The container's resources as unit properties.
    properties: Vec<Property>,
}

impl Scope {
    /// The scope of an OCI `slice:prefix:name` cgroups path.
    pub fn from_cgroups_path(path: &str, resources: Option<&LinuxResources>) -> Result<Scope> {
        let spec_err = |e: &dyn std::fmt::Display| Error::Spec(format!("linux.cgroupsPath {path:?}: {e}"));
        let parsed = systemd::parse_cgroups_path(path).map_err(|e| spec_err(&e))?;
        if parsed.is_slice() {
            return Err(spec_err(&format!("{} is a slice, not a scope for a container", parsed.name)));
        }
        let properties = match resources {
            Some(r) => systemd::resource_properties(&plain(r)).map_err(|e| spec_err(&e))?,
            None => vec![],
        };
        Ok(Scope { unit: parsed.unit_name(), cgroup: parsed.cgroup(), path: parsed, properties })
    }

    /// Starts the unit with `pid` in it, waits for systemd's job, then until the kernel shows
    /// `pid` in the unit's cgroup.
    pub fn start(&self, pid: i32) -> Result<()> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::Msg(format!("systemd cgroup driver: {what} {} in {}: {e}", self.unit, self.path.slice))
        };
        let mut conn = Connection::system().map_err(|e| fail("connecting to systemd to start", &e))?;
        conn.set_timeout(SYSTEMD_TIMEOUT);
        let mut props = systemd::unit_properties(&self.path, &[pid as u32], &format!("corral container {}", self.unit));
        props.extend(self.properties.iter().cloned());
        // An OOM kill in the container is the container's business (its exit says OOMKilled),
        // not a reason for systemd to stop the whole scope (its default, OOMPolicy=stop).
        props.push(("OOMPolicy", systemd::Value::Str("continue".into())));
        systemd::start_unit_and_wait(&mut conn, &self.unit, &props).map_err(|e| fail("starting", &e))?;
        let deadline = Instant::now() + SYSTEMD_TIMEOUT;
        while !in_cgroup(pid, &self.cgroup) {
            if Instant::now() > deadline {
                return Err(fail("waiting for", &format!("pid {pid} was not moved in {SYSTEMD_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Stops the unit: systemd kills what is left in it and removes its cgroup. A unit already
    /// gone (it stops by itself once empty) is fine.
    pub fn stop(&self) -> Result<()> {
        let fail =
            |e: &dyn std::fmt::Display| Error::Msg(format!("systemd cgroup driver: stopping {}: {e}", self.unit));
        let mut conn = Connection::system().map_err(|e| fail(&e))?;
        conn.set_timeout(SYSTEMD_TIMEOUT);
        systemd::stop_unit(&mut conn, &self.unit).map_err(|e| fail(&e))
    }
}

/// Whether /proc/<pid>/cgroup names `cgroup` (the v2 line, or a v1 hierarchy's).
fn in_cgroup(pid: i32, cgroup: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|t| t.lines().any(|l| l.rsplit_once(':').is_some_and(|(_, p)| p == cgroup)))
}

/// The OCI resources the unit properties are made from.
fn plain(r: &LinuxResources) -> systemd::Resources {
    let cpu = r.cpu().as_ref();
    let mem = r.memory().as_ref();
    systemd::Resources {
        cpu_shares: cpu.and_then(|c| c.shares()),
        cpu_quota: cpu.and_then(|c| c.quota()),
        cpu_period: cpu.and_then(|c| c.period()),
        cpuset_cpus: cpu.and_then(|c| c.cpus().clone()).filter(|s| !s.is_empty()),
        cpuset_mems: cpu.and_then(|c| c.mems().clone()).filter(|s| !s.is_empty()),
        memory_limit: mem.and_then(|m| m.limit()),
        memory_swap: mem.and_then(|m| m.swap()),
        pids_limit: r.pids().as_ref().map(|p| p.limit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_cgroup_reads_the_v2_line_and_v1_lines() {
        let me = std::process::id() as i32;
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own.lines().next().and_then(|l| l.rsplit_once(':')).map(|(_, p)| p.to_string()).unwrap();
        assert!(in_cgroup(me, &path));
        assert!(!in_cgroup(me, "/no/such/cgroup.scope"));
    }

    #[test]
    fn a_scope_from_a_kubelet_slice() {
        let s = Scope::from_cgroups_path("kubepods-burstable-pod12.slice:corral:abc", None).unwrap();
        assert_eq!(s.unit, "corral-abc.scope");
        assert_eq!(s.path.slice, "kubepods-burstable-pod12.slice");
        assert_eq!(
            s.cgroup,
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/corral-abc.scope"
        );
        assert!(Scope::from_cgroups_path("bad--name.slice:corral:abc", None).is_err());
        assert!(Scope::from_cgroups_path("a.slice:corral:a-b.slice", None).is_err(), "not a scope");
    }
}
