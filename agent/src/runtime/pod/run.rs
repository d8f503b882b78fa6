//! RunPodSandbox: the request checked, the namespaces, network, /dev/shm, cgroup and pod files
//! made, and the pause shim started for a shared PID namespace.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use super::*;
use crate::runtime::{
    cgroup, fresh_id, io_err, namespaces, now_nanos, podfiles, validate, Result, Runtime, RuntimeError,
};
use crate::store::Table;
use crate::sys;

impl Runtime {
    /// Checks the request before any side effect; returns the port mappings to pass to CNI.
    fn validate_run_pod(&self, req: &RunPod) -> Result<Vec<PortMapping>> {
        // Only the name is required, as by containerd and CRI-O; uid and namespace may be empty.
        if req.name.is_empty() {
            return Err(RuntimeError::InvalidArgument("pod sandbox config: metadata.name is required".into()));
        }
        let invalid = |e: String| RuntimeError::InvalidArgument(format!("pod sandbox config: {e}"));
        for (field, v) in
            [("metadata.name", &req.name), ("metadata.namespace", &req.namespace), ("metadata.uid", &req.uid)]
        {
            validate::name(field, v).map_err(invalid)?;
        }
        if !req.hostname.is_empty() {
            validate::hostname(&req.hostname).map_err(invalid)?;
        }
        if !req.log_directory.is_empty() {
            validate::log_directory(&req.log_directory).map_err(invalid)?;
        }
        if !req.cgroup_parent.is_empty() {
            cgroup::check_parent(self.cfg.cgroup_driver, &req.cgroup_parent).map_err(invalid)?;
        }
        let port_mappings = validate::port_mappings(&req.port_mappings)
            .map_err(|e| RuntimeError::InvalidArgument(format!("pod sandbox config: {e}")))?;
        for r in req.resources.iter().chain(req.overhead.iter()) {
            validate::resources(r)
                .and_then(|()| validate::resources_on(r, self.cgroups.as_ref().map(|c| c.version())))
                .map_err(|e| RuntimeError::InvalidArgument(format!("pod sandbox config: linux.{e}")))?;
        }
        if !req.runtime_handler.is_empty() {
            return Err(RuntimeError::InvalidArgument(format!(
                "runtime handler {:?} is not configured (corral has only the default handler \"\")",
                req.runtime_handler
            )));
        }
        if req.network == NsMode::Target || req.ipc == NsMode::Target {
            return Err(RuntimeError::InvalidArgument(
                "TARGET namespace mode is only valid for the PID namespace".into(),
            ));
        }
        if req.pid == NsMode::Target {
            return Err(RuntimeError::InvalidArgument(
                "pod sandbox PID namespace mode TARGET is not valid; set it per container".into(),
            ));
        }
        for (key, value) in &req.sysctls {
            validate::sysctl(key, value)
                .map_err(|e| RuntimeError::InvalidArgument(format!("pod sandbox config: {e}")))?;
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
        let port_mappings = self.validate_run_pod(&req)?;
        let id = {
            let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            fresh_id(pods.keys())
        };
        // A host-network pod has the node's UTS namespace, so the node's name; any other pod
        // takes the requested hostname, or the node's when none is given (as containerd).
        let hostname = if req.network == NsMode::Node || req.hostname.is_empty() {
            node_hostname()?
        } else {
            req.hostname.clone()
        };
        let cgroup = if req.cgroup_parent.is_empty() {
            cgroup::pod_cgroup(self.cfg.cgroup_driver, &self.cfg.cgroup_parent, &id[..16])
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
            reason: String::new(),
        };
        let _lock = self.locks.lock(&id).await;
        // Reserve the name and record the pod before any side effect.
        {
            let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            let key = record.reservation();
            if let Some(holder) = pods.values().find(|p| p.reservation() == key) {
                return Err(RuntimeError::AlreadyExists(format!(
                    "pod sandbox name {key:?} is reserved for {}",
                    holder.id
                )));
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
                if record.pause_pid != 0 {
                    self.watch_pause(&id, record.pause_pid);
                }
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
            let spec = crate::runtime::spec::pause_spec(
                &self.ns_dir(&id),
                wanted,
                &self.pause_cgroup(record),
                self.cgroups.as_ref().map(|c| c.version()),
            )
            .map_err(|e| RuntimeError::Internal(format!("pod sandbox {id}: {e}")))?;
            crate::runtime::container::write_config(&bundle, &spec)?;
            let pid = shim_client::launch(&self.cfg.shim, "pause", &bundle, &id).await?;
            record.pause_pid = pid;
            self.save_pod(record)?;
            namespaces::pin(Path::new(&format!("/proc/{pid}/ns/pid")), &self.ns_dir(&id).join("pid"))
                .map_err(io_err("pinning the pod PID namespace"))?;
        }
        Ok(())
    }

    /// The cgroup of the pod's pause process: `pause` in the pod cgroup, or its own scope.
    fn pause_cgroup(&self, record: &PodRecord) -> String {
        match self.cfg.cgroup_driver {
            cgroup::Driver::Cgroupfs => cgroup::child_cgroup(cgroup::Driver::Cgroupfs, &record.cgroup, "pause"),
            cgroup::Driver::Systemd => cgroup::child_cgroup(cgroup::Driver::Systemd, &record.cgroup, &record.id),
        }
    }

    /// The pod's /dev/shm (unless it shares the host's IPC) and its cgroup.
    fn make_shm_and_cgroup(&self, record: &PodRecord) -> Result<()> {
        if record.ipc != NsMode::Node {
            let shm = self.shm_dir(&record.id);
            std::fs::create_dir_all(&shm).map_err(io_err(format!("creating {}", shm.display())))?;
            sys::mount(
                "shm",
                &shm,
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                "mode=1777,size=65536k",
            )
            .map_err(io_err(format!("mounting pod /dev/shm at {}", shm.display())))?;
        }
        if let Some(cgroups) = &self.cgroups {
            // A slice the kubelet made is there already; cgroupfs dirs are made where missing.
            if record.cgroup_created || cgroups.driver() == cgroup::Driver::Cgroupfs {
                let limits = record.resources.as_ref().map(|r| match &record.overhead {
                    Some(o) => r.plus(o),
                    None => r.clone(),
                });
                cgroups
                    .create(&record.cgroup, limits.as_ref())
                    .map_err(io_err(format!("creating pod cgroup {}", record.cgroup)))?;
            }
            if record.cgroup_created {
                self.apply_pod_resources(cgroups, record, record.resources.as_ref(), record.overhead.as_ref())?;
            }
        }
        Ok(())
    }
}

/// Set in a pod's own network namespace unless the request sets them (containerd 2's
/// `enable_unprivileged_ports` and `enable_unprivileged_icmp`, on by default there).
const DEFAULT_POD_SYSCTLS: [(&str, &str); 2] =
    [("net.ipv4.ip_unprivileged_port_start", "0"), ("net.ipv4.ping_group_range", "0 2147483647")];

/// The node's hostname, the default of a pod that asks for none.
fn node_hostname() -> Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(io_err("reading the node's hostname"))?;
    Ok(h.trim().to_string())
}
