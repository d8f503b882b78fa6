//! PodSandboxStatus and ListPodSandbox.

use super::*;
use crate::runtime::{Result, Runtime, RuntimeError};

impl Runtime {
    pub fn pod_status(&self, wanted: &str) -> Result<PodRecord> {
        let id = self
            .find_pod_id(wanted)?
            .ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {wanted:?} not found")))?;
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
}
