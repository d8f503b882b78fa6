//! The pod's CNI attachment, and the garbage collection of attachments no pod owns.

use super::*;
use crate::runtime::Runtime;

impl Runtime {
    pub(super) fn attachment(&self, record: &PodRecord) -> Attachment {
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
    pub(in crate::runtime) async fn collect_network_garbage(&self) {
        let valid = || {
            let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            pods.values().filter(|p| p.net_attached).map(|p| (p.id.clone(), "eth0".to_string())).collect()
        };
        self.cfg.cni.gc(valid).await;
    }
}
