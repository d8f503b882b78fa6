//! RemovePodSandbox, and the teardown of every side effect of a pod (also of a failed
//! RunPodSandbox and of what a crash left).

use std::sync::Arc;

use tracing::{info, warn};

use super::*;
use crate::runtime::{io_err, namespaces, Result, Runtime, RuntimeError};
use crate::sys;

impl Runtime {
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
                // A process that outlived its container (escaped its container's cgroup into the
                // pod's, or left by a lost shim) would keep the cgroup: it is killed.
                let left = cgroups.kill_all(&record.cgroup, libc::SIGKILL, std::time::Duration::from_secs(5)).await;
                if !left.is_empty() {
                    warn!(pod = %record.id, pids = ?left, "processes of the pod cgroup outlived SIGKILL");
                }
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
}
