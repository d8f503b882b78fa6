//! The pod sandbox lifecycle: namespaces pinned, cgroup, /dev/shm, hosts/resolv.conf/hostname,
//! and, for a shared PID namespace, corral-shim in pause mode as its PID 1. No pause image.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::podfiles::{self, Dns};
use super::spec::Resources;
use super::{cgroup, fresh_id, io_err, labels_match, namespaces, now_nanos, validate, Result, Runtime, RuntimeError};
use crate::cni::{Attachment, PortMapping};
use crate::shim_client::{self, Shim};
use crate::store::Table;
use crate::sys;

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
    /// Checks the request before any side effect; returns the port mappings to pass to CNI.
    fn validate_run_pod(req: &RunPod) -> Result<Vec<PortMapping>> {
        // Only the name is required, as by containerd and CRI-O; uid and namespace may be empty.
        if req.name.is_empty() {
            return Err(RuntimeError::InvalidArgument("pod sandbox config: metadata.name is required".into()));
        }
        if !req.hostname.is_empty() {
            validate::hostname(&req.hostname).map_err(|e| RuntimeError::InvalidArgument(format!("pod sandbox config: {e}")))?;
        }
        let port_mappings = validate::port_mappings(&req.port_mappings).map_err(|e| RuntimeError::InvalidArgument(format!("pod sandbox config: {e}")))?;
        for r in req.resources.iter().chain(req.overhead.iter()) {
            validate::resources(r).map_err(|e| RuntimeError::InvalidArgument(format!("pod sandbox config: linux.{e}")))?;
        }
        if !req.runtime_handler.is_empty() {
            return Err(RuntimeError::InvalidArgument(format!(
                "runtime handler {:?} is not configured (corral has only the default handler \"\")",
                req.runtime_handler
            )));
        }
        if req.network == NsMode::Target || req.ipc == NsMode::Target {
            return Err(RuntimeError::InvalidArgument("TARGET namespace mode is only valid for the PID namespace".into()));
        }
        if req.pid == NsMode::Target {
            return Err(RuntimeError::InvalidArgument("pod sandbox PID namespace mode TARGET is not valid; set it per container".into()));
        }
        for (key, value) in &req.sysctls {
            validate::sysctl(key, value).map_err(|e| RuntimeError::InvalidArgument(format!("pod sandbox config: {e}")))?;
            let owned = match namespaces::sysctl_namespace(key) {
                Some("net") => req.network != NsMode::Node,
                Some("ipc") => req.ipc != NsMode::Node,
                Some(_) => false, // uts: the hostname comes from the config
                None => false,
            };
            if !owned {
                return Err(RuntimeError::InvalidArgument(format!(
                    "sysctl {:?} is not allowed: only sysctls of a namespace the pod owns (net.*, kernel.shm*/msg*/sem, fs.mqueue.*) can be set",
                    validate::bounded(key)
                )));
            }
        }
        Ok(port_mappings)
    }

    /// The sysctls of the pod: the requested ones, and for a pod with its own network
    /// namespace containerd's defaults that let unprivileged processes bind ports below 1024
    /// and open ICMP sockets (ping), unless the request sets them.
    fn pod_sysctls(req: &RunPod) -> BTreeMap<String, String> {
        let mut sysctls = req.sysctls.clone();
        if req.network != NsMode::Node {
            for (k, v) in DEFAULT_POD_SYSCTLS {
                sysctls.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
        sysctls
    }

    pub async fn run_pod(self: &Arc<Self>, req: RunPod) -> Result<String> {
        let port_mappings = Self::validate_run_pod(&req)?;
        let id = {
            let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            fresh_id(pods.keys())
        };
        // A host-network pod has the node's UTS namespace, so the node's name; any other pod
        // takes the requested hostname, or the node's when none is given (as containerd).
        let hostname = if req.network == NsMode::Node || req.hostname.is_empty() { node_hostname()? } else { req.hostname.clone() };
        let cgroup = if req.cgroup_parent.is_empty() {
            format!("{}/pod-{}", self.cfg.cgroup_parent.trim_end_matches('/'), &id[..16])
        } else {
            req.cgroup_parent.clone()
        };
        let mut record = PodRecord {
            id: id.clone(),
            name: req.name.clone(),
            uid: req.uid.clone(),
            namespace: req.namespace.clone(),
            attempt: req.attempt,
            hostname,
            log_directory: req.log_directory.clone(),
            runtime_handler: req.runtime_handler.clone(),
            labels: req.labels.clone(),
            annotations: req.annotations.clone(),
            created_at: now_nanos(),
            phase: PodPhase::Creating,
            network: req.network,
            pid: req.pid,
            ipc: req.ipc,
            target_id: req.target_id.clone(),
            // Every intent is in the first record, written before any side effect: teardown undoes
            // what exists of them, and one durable write serves the whole setup.
            cgroup_created: self.cgroups.as_ref().is_some_and(|c| !c.exists(&cgroup)),
            cgroup,
            privileged: req.privileged,
            sysctls: Self::pod_sysctls(&req),
            pause_pid: 0,
            ips: Vec::new(),
            net_attached: req.network != NsMode::Node,
            port_mappings,
            resources: req.resources.clone(),
            overhead: req.overhead.clone(),
        };
        let _lock = self.locks.lock(&id).await;
        // Reserve the name and record the pod before any side effect.
        {
            let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            let key = record.reservation();
            if let Some(holder) = pods.values().find(|p| p.reservation() == key) {
                return Err(RuntimeError::AlreadyExists(format!("pod sandbox name {key:?} is reserved for {}", holder.id)));
            }
            self.store.put(Table::Pods, &id, &record)?;
            pods.insert(id.clone(), record.clone());
        }
        let ready = async {
            self.set_up_pod(&mut record, req.dns.as_ref()).await?;
            record.phase = PodPhase::Ready;
            self.save_pod(&record)
        };
        match ready.await {
            Ok(()) => {
                info!(pod = %id, name = %record.name, namespace = %record.namespace, "pod sandbox ready");
                Ok(id)
            }
            Err(e) => {
                warn!(pod = %id, error = %e, "pod sandbox setup failed, undoing");
                if let Err(cleanup) = self.tear_down_pod(&record).await {
                    warn!(pod = %id, error = %cleanup, "cleaning up failed pod sandbox");
                }
                self.forget_pod(&id)?;
                Err(e)
            }
        }
    }

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

    /// Every side effect of RunPodSandbox, in order. On error the caller tears down.
    async fn set_up_pod(&self, record: &mut PodRecord, dns: Option<&Dns>) -> Result<()> {
        let id = record.id.clone();
        let state_dir = self.pod_state_dir(&id);
        std::fs::create_dir_all(&state_dir).map_err(io_err(format!("creating {}", state_dir.display())))?;

        let wanted = namespaces::Wanted {
            net: record.network == NsMode::Pod || record.network == NsMode::Container,
            ipc: record.ipc != NsMode::Node,
            uts: record.network != NsMode::Node,
        };
        namespaces::create(&self.ns_dir(&id), wanted, &record.hostname, &record.sysctls)
            .map_err(io_err("creating pod namespaces"))?;

        // The CNI plugins run as processes of their own: /dev/shm and the cgroup are made
        // meanwhile (join! polls the CNI future first, which starts the plugin).
        let attachment = record.net_attached.then(|| self.attachment(record));
        let network = async {
            match &attachment {
                Some(a) => self.cfg.cni.add(a).await.map_err(RuntimeError::from),
                None => Ok(Vec::new()),
            }
        };
        let local = async { self.make_shm_and_cgroup(record) };
        let (ips, local) = tokio::join!(network, local);
        record.ips = ips?;
        local?;
        let host_network = record.network == NsMode::Node;
        podfiles::write(&self.pod_files_dir(&id), &record.hostname, dns, host_network, &record.ips)
            .map_err(io_err("writing pod hosts, resolv.conf and hostname"))?;

        if record.pid == NsMode::Pod {
            let bundle = self.pause_bundle(&id);
            std::fs::create_dir_all(&bundle).map_err(io_err(format!("creating {}", bundle.display())))?;
            let spec = super::spec::pause_spec(&self.ns_dir(&id), wanted, &format!("{}/pause", record.cgroup)).map_err(|e| RuntimeError::Internal(format!("pod sandbox {id}: {e}")))?;
            super::container::write_config(&bundle, &spec)?;
            let pid = shim_client::launch(&self.cfg.shim, "pause", &bundle, &id).await?;
            record.pause_pid = pid;
            self.save_pod(record)?;
            namespaces::pin(Path::new(&format!("/proc/{pid}/ns/pid")), &self.ns_dir(&id).join("pid"))
                .map_err(io_err("pinning the pod PID namespace"))?;
        }
        Ok(())
    }

    /// The pod's /dev/shm (unless it shares the host's IPC) and its cgroup.
    fn make_shm_and_cgroup(&self, record: &PodRecord) -> Result<()> {
        if record.ipc != NsMode::Node {
            let shm = self.shm_dir(&record.id);
            std::fs::create_dir_all(&shm).map_err(io_err(format!("creating {}", shm.display())))?;
            sys::mount("shm", &shm, "tmpfs", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, "mode=1777,size=65536k")
                .map_err(io_err(format!("mounting pod /dev/shm at {}", shm.display())))?;
        }
        if let Some(cgroups) = &self.cgroups {
            cgroups.create(&record.cgroup).map_err(io_err(format!("creating pod cgroup {}", record.cgroup)))?;
            if record.cgroup_created {
                self.apply_pod_resources(cgroups, record, record.resources.as_ref(), record.overhead.as_ref())?;
            }
        }
        Ok(())
    }

    /// Writes pod-level limits (resources plus overhead) to a pod cgroup corral made.
    fn apply_pod_resources(&self, cgroups: &cgroup::Hierarchies, record: &PodRecord, resources: Option<&Resources>, overhead: Option<&Resources>) -> Result<()> {
        let Some(r) = resources else { return Ok(()) };
        let total = overhead.map(|o| r.plus(o)).unwrap_or_else(|| r.clone());
        cgroups.apply(&record.cgroup, &total).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => RuntimeError::InvalidArgument(format!("pod sandbox {}: the kernel refused a limit: {e}", record.id)),
            std::io::ErrorKind::ResourceBusy => RuntimeError::FailedPrecondition(format!("pod sandbox {}: {e} (usage is above the new limit)", record.id)),
            _ => RuntimeError::Internal(format!("pod sandbox {}: {e}", record.id)),
        })
    }

    /// Stops the pause process, if any, and waits until it is gone.
    async fn stop_pause(&self, record: &PodRecord) {
        if record.pause_pid == 0 {
            return;
        }
        let shim = Shim::new(&record.id, &self.pause_bundle(&record.id));
        if let Err(e) = shim.kill(libc::SIGKILL, false).await {
            tracing::debug!(pod = %record.id, error = %e, "pause shim did not take the kill request");
            if process_alive(record.pause_pid) && is_pause_of(record.pause_pid, &record.id) {
                let _ = sys::kill(record.pause_pid as i32, libc::SIGKILL);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while process_alive(record.pause_pid) && is_pause_of(record.pause_pid, &record.id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Undoes every side effect of a pod. Idempotent; keeps going past errors and returns the first.
    pub(super) async fn tear_down_pod(&self, record: &PodRecord) -> Result<()> {
        let mut first: Option<RuntimeError> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                if first.is_none() {
                    first = Some(e);
                }
            }
        };
        self.stop_pause(record).await;
        if record.net_attached {
            note(self.cfg.cni.del(&self.attachment(record)).await.map_err(RuntimeError::from));
        }
        let shm = self.shm_dir(&record.id);
        note(sys::unmount(&shm).map_err(io_err(format!("unmounting {}", shm.display()))));
        note(namespaces::remove(&self.ns_dir(&record.id)).map_err(io_err("removing pod namespaces")));
        if record.cgroup_created {
            if let Some(cgroups) = &self.cgroups {
                note(cgroups.remove(&record.cgroup).map_err(io_err(format!("removing pod cgroup {}", record.cgroup))));
                // The default parent (e.g. /corral) stays; it is shared by every pod.
            }
        }
        // With the pod's files (hosts, resolv.conf, hostname).
        note(crate::discard::remove_tree(&self.pod_state_dir(&record.id)).map_err(io_err("removing pod state dir")));
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub async fn stop_pod(self: &Arc<Self>, wanted: &str) -> Result<()> {
        let Some(id) = self.find_pod_id(wanted)? else {
            return Ok(());
        };
        let _lock = self.locks.lock(&id).await;
        let Some(mut record) = self.pod(&id) else { return Ok(()) };
        for cid in self.container_ids_of(&id) {
            self.stop_container(&cid, 0).await?;
        }
        self.stop_pause(&record).await;
        let shm = self.shm_dir(&id);
        sys::unmount(&shm).map_err(io_err(format!("unmounting {}", shm.display())))?;
        if record.net_attached {
            self.cfg.cni.del(&self.attachment(&record)).await?;
            record.net_attached = false;
            self.save_pod(&record)?;
        }
        if record.phase != PodPhase::NotReady {
            record.phase = PodPhase::NotReady;
            self.save_pod(&record)?;
            info!(pod = %id, "pod sandbox stopped");
        }
        Ok(())
    }

    pub async fn remove_pod(self: &Arc<Self>, wanted: &str) -> Result<()> {
        let Some(id) = self.find_pod_id(wanted)? else {
            return Ok(());
        };
        let _lock = self.locks.lock(&id).await;
        let Some(record) = self.pod(&id) else { return Ok(()) };
        for cid in self.container_ids_of(&id) {
            self.remove_container(&cid).await?;
        }
        self.tear_down_pod(&record).await?;
        self.forget_pod(&id)?;
        info!(pod = %id, "pod sandbox removed");
        Ok(())
    }

    /// UpdatePodSandboxResources: the kubelet has resized the pod. The new figures are recorded;
    /// a pod cgroup corral made itself (no cgroup parent given) gets them written, resources
    /// plus overhead, at once. A cgroup the kubelet manages it has already written.
    pub async fn update_pod_resources(self: &Arc<Self>, wanted: &str, resources: Option<Resources>, overhead: Option<Resources>) -> Result<()> {
        for r in resources.iter().chain(overhead.iter()) {
            validate::resources(r).map_err(RuntimeError::InvalidArgument)?;
        }
        let id = self.find_pod_id(wanted)?.ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {:?} not found", validate::bounded(wanted))))?;
        let _lock = self.locks.lock(&id).await;
        let mut record = self.pod(&id).ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {id} not found")))?;
        if let (true, Some(cgroups)) = (record.cgroup_created, &self.cgroups) {
            self.apply_pod_resources(cgroups, &record, resources.as_ref(), overhead.as_ref())?;
        }
        record.resources = resources;
        record.overhead = overhead;
        self.save_pod(&record)?;
        info!(pod = %id, "pod sandbox resources updated");
        Ok(())
    }

    pub fn pod_status(&self, wanted: &str) -> Result<PodRecord> {
        let id = self.find_pod_id(wanted)?.ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {wanted:?} not found")))?;
        self.pod(&id).ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {wanted:?} not found")))
    }

    pub fn list_pods(&self, filter: &PodFilter) -> Vec<PodRecord> {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.values()
            .filter(|p| p.phase != PodPhase::Creating)
            .filter(|p| filter.id.is_empty() || p.id.starts_with(&filter.id))
            .filter(|p| filter.state.is_none_or(|s| s == p.phase))
            .filter(|p| labels_match(&p.labels, &filter.labels))
            .cloned()
            .collect()
    }

    /// Reloads pods; finishes or undoes what a crash interrupted.
    pub(super) async fn recover_pods(&self) -> Result<()> {
        let records: Vec<PodRecord> = self.store.list(Table::Pods)?;
        let mut kept = 0;
        for mut record in records {
            if record.phase == PodPhase::Creating {
                warn!(pod = %record.id, "removing pod sandbox left half made by a crash");
                if let Err(e) = self.tear_down_pod(&record).await {
                    warn!(pod = %record.id, error = %e, "cleaning up half-made pod sandbox");
                }
                self.store.delete(Table::Pods, &record.id)?;
                continue;
            }
            if record.phase == PodPhase::Ready && !self.pod_alive(&record) {
                warn!(pod = %record.id, "pod sandbox lost its namespaces or pause process; marking it not ready");
                record.phase = PodPhase::NotReady;
                self.store.put(Table::Pods, &record.id, &record)?;
            }
            self.pods.lock().unwrap_or_else(|p| p.into_inner()).insert(record.id.clone(), record);
            kept += 1;
        }
        super::log_recovered("pod sandboxes", kept);
        Ok(())
    }

    fn attachment(&self, record: &PodRecord) -> Attachment {
        Attachment {
            pod_id: record.id.clone(),
            netns: self.ns_dir(&record.id).join("net"),
            ifname: "eth0".into(),
            pod_name: record.name.clone(),
            pod_namespace: record.namespace.clone(),
            pod_uid: record.uid.clone(),
            port_mappings: record.port_mappings.clone(),
        }
    }

    /// Releases network attachments no pod owns (a crash between ADD and recording, or a pod
    /// removed while corrald was down) and runs the plugins' GC.
    pub(super) async fn collect_network_garbage(&self) {
        let valid = || {
            let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            pods.values().filter(|p| p.net_attached).map(|p| (p.id.clone(), "eth0".to_string())).collect()
        };
        self.cfg.cni.gc(valid).await;
    }

    fn pod_alive(&self, record: &PodRecord) -> bool {
        let ns = self.ns_dir(&record.id);
        let net_ok = record.network == NsMode::Node || sys::is_mount_point(&ns.join("net"));
        let pause_ok = record.pid != NsMode::Pod || (process_alive(record.pause_pid) && is_pause_of(record.pause_pid, &record.id));
        net_ok && pause_ok
    }
}

/// Set in a pod's own network namespace unless the request sets them (containerd 2's
/// `enable_unprivileged_ports` and `enable_unprivileged_icmp`, on by default there).
const DEFAULT_POD_SYSCTLS: [(&str, &str); 2] = [("net.ipv4.ip_unprivileged_port_start", "0"), ("net.ipv4.ping_group_range", "0 2147483647")];

/// The node's hostname, the default of a pod that asks for none.
fn node_hostname() -> Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(io_err("reading the node's hostname"))?;
    Ok(h.trim().to_string())
}

/// Whether the process exists and is not a zombie.
pub(super) fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Guards against pid reuse: the process is corral-shim serving this pod's pause bundle.
fn is_pause_of(pid: u32, pod_id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(pod_id))
        .unwrap_or(false)
}
