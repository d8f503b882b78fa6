//! Pod-level resources: recorded, and written to a pod cgroup corral made.

use std::sync::Arc;

use tracing::info;

use super::*;
use crate::runtime::spec::Resources;
use crate::runtime::{cgroup, validate, Result, Runtime, RuntimeError};

impl Runtime {
    /// Writes pod-level limits (resources plus overhead) to a pod cgroup corral made.
    pub(super) fn apply_pod_resources(
        &self,
        cgroups: &cgroup::Hierarchies,
        record: &PodRecord,
        resources: Option<&Resources>,
        overhead: Option<&Resources>,
    ) -> Result<()> {
        let Some(r) = resources else { return Ok(()) };
        let total = overhead.map(|o| r.plus(o)).unwrap_or_else(|| r.clone());
        cgroups.apply(&record.cgroup, &total).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => {
                RuntimeError::InvalidArgument(format!("pod sandbox {}: the kernel refused a limit: {e}", record.id))
            }
            std::io::ErrorKind::ResourceBusy => RuntimeError::FailedPrecondition(format!(
                "pod sandbox {}: {e} (usage is above the new limit)",
                record.id
            )),
            _ => RuntimeError::Internal(format!("pod sandbox {}: {e}", record.id)),
        })
    }

    /// UpdatePodSandboxResources: the kubelet has resized the pod. The new figures are recorded;
    /// a pod cgroup corral made itself (no cgroup parent given) gets them written, resources
    /// plus overhead, at once. A cgroup the kubelet manages it has already written.
    pub async fn update_pod_resources(
        self: &Arc<Self>,
        wanted: &str,
        resources: Option<Resources>,
        overhead: Option<Resources>,
    ) -> Result<()> {
        for r in resources.iter().chain(overhead.iter()) {
            validate::resources(r)
                .and_then(|()| validate::resources_on(r, self.cgroups.as_ref().map(|c| c.version())))
                .map_err(RuntimeError::InvalidArgument)?;
        }
        let id = self
            .find_pod_id(wanted)?
            .ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {:?} not found", validate::bounded(wanted))))?;
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
}
