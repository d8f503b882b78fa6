//! ContainerStatus and ListContainers.

use super::*;
use crate::runtime::labels_match;
use crate::runtime::{Result, Runtime, RuntimeError};

impl Runtime {
    /// The name and digest reference of a container's image as it is now (containerd reports
    /// the image's first tag and first repo digest in ContainerStatus); None when the image is
    /// gone or has none.
    pub fn image_names(&self, image_id: &str) -> (Option<String>, Option<String>) {
        match self.images.find(image_id) {
            Some(img) => (img.repo_tags.first().cloned(), img.repo_digests.first().cloned()),
            None => (None, None),
        }
    }

    pub fn container_status(&self, wanted: &str) -> Result<ContainerView> {
        let id = self.require_container(wanted)?;
        self.view(&id)
            .filter(|v| v.record.phase == ContainerPhase::Created)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {wanted:?} not found")))
    }

    pub fn list_containers(&self, filter: &ContainerFilter) -> Vec<ContainerView> {
        let containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        containers
            .values()
            .filter(|c| c.record.phase == ContainerPhase::Created)
            .filter(|c| filter.id.is_empty() || c.record.id.starts_with(&filter.id))
            .filter(|c| filter.pod_id.is_empty() || c.record.pod_id.starts_with(&filter.pod_id))
            .filter(|c| filter.state.is_none_or(|s| s == c.state))
            .filter(|c| labels_match(&c.record.labels, &filter.labels))
            .cloned()
            .collect()
    }
}
