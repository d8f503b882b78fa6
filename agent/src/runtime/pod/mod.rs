//! The pod sandbox lifecycle: namespaces pinned, cgroup, /dev/shm, hosts/resolv.conf/hostname,
//! and, for a shared PID namespace, corral-shim in pause mode as its PID 1. No pause image.

mod network;
mod pause;
mod portforward;
mod recover;
mod remove;
mod resources;
mod run;
mod status;
mod stop;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::podfiles::Dns;
use super::spec::Resources;
use super::{labels_match, Result, Runtime};
use crate::cni::{Attachment, PortMapping};
use crate::shim_client::{self, Shim};
use crate::store::Table;

/// CRI NamespaceMode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NsMode {
    /// The CRI's zero value.
    #[default]
    Pod,
    Container,
    Node,
    Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PodPhase {
    /// Recorded, side effects in progress; a crash leaves this for recovery to clean up.
    #[default]
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub runtime_handler: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub created_at: i64,
    pub phase: PodPhase,
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
    pub target_id: String,
    pub cgroup: String,
    pub cgroup_created: bool,
    pub privileged: bool,
    pub sysctls: BTreeMap<String, String>,
    /// Host pid of the pause process (shared PID namespace only).
    pub pause_pid: u32,
    pub ips: Vec<String>,
    /// Set before CNI ADD runs, cleared after a successful DEL.
    #[serde(default)]
    pub net_attached: bool,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Pod-level resources and overhead from UpdatePodSandboxResources.
    #[serde(default)]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub overhead: Option<Resources>,
    /// Why the pod is not ready when it did not stop by request (its PID 1 exited).
    #[serde(default)]
    pub reason: String,
}

impl PodRecord {
    /// The key that must be unique among pods: name, namespace, uid and attempt.
    pub fn reservation(&self) -> String {
        format!("{}_{}_{}_{}", self.name, self.namespace, self.uid, self.attempt)
    }
}

/// A RunPodSandbox request in domain terms.
#[derive(Debug, Clone)]
pub struct RunPod {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<Dns>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub runtime_handler: String,
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
    pub target_id: String,
    pub privileged: bool,
    pub port_mappings: Vec<PortMapping>,
    /// Pod-level resources and the runtime class's overhead (LinuxPodSandboxConfig).
    pub resources: Option<Resources>,
    pub overhead: Option<Resources>,
}

#[derive(Debug, Clone, Default)]
pub struct PodFilter {
    pub id: String,
    pub state: Option<PodPhase>,
    pub labels: HashMap<String, String>,
}

pub use super::podfiles::Dns as PodDns;

impl Runtime {
    fn save_pod(&self, record: &PodRecord) -> Result<()> {
        self.store.put(Table::Pods, &record.id, record)?;
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).insert(record.id.clone(), record.clone());
        Ok(())
    }

    fn forget_pod(&self, id: &str) -> Result<()> {
        self.store.delete(Table::Pods, id)?;
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    pub(super) fn ns_dir(&self, pod_id: &str) -> PathBuf {
        self.pod_state_dir(pod_id).join("ns")
    }

    pub(super) fn shm_dir(&self, pod_id: &str) -> PathBuf {
        self.pod_state_dir(pod_id).join("shm")
    }

    fn pause_bundle(&self, pod_id: &str) -> PathBuf {
        self.pod_state_dir(pod_id).join("pause")
    }
}

/// When a process started (field 22 of /proc/<pid>/stat, clock ticks since boot): with its pid,
/// what tells it from a later process that got the same pid. None when it is gone or a zombie.
pub(in crate::runtime) fn start_time(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // Fields after the name start at 3 (state); starttime is 22.
    rest.nth(22 - 4)?.parse().ok()
}

/// Whether the process exists and is not a zombie.
pub(super) fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Guards against pid reuse: the process is corral-shim serving this pod's pause bundle.
fn is_pause_of(pid: u32, pod_id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).contains(pod_id)).unwrap_or(false)
}
