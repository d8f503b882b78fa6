//! A pod's PID 1 (the pause shim of a shared PID namespace) followed: when it exits, the pod
//! can run no container any more (the namespace is gone), so it turns NotReady, which is what
//! the kubelet reacts to by making a new sandbox.

use std::sync::Arc;

use tracing::{debug, warn};

use super::*;
use crate::runtime::Runtime;
use crate::sys;

impl Runtime {
    /// Watches the pause process of a ready pod (pidfd: readable once it exits).
    pub(in crate::runtime) fn watch_pause(self: &Arc<Self>, pod_id: &str, pid: u32) {
        let rt = Arc::clone(self);
        let id = pod_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = sys::process_exit(pid).await {
                debug!(pod = %id, pid, error = %e, "cannot watch the pause process");
                return;
            }
            // Stop and Remove end the pause themselves and hold the pod's lock meanwhile.
            let _lock = rt.locks.lock(&id).await;
            let Some(mut record) = rt.pod(&id) else { return };
            if record.phase != PodPhase::Ready || record.pause_pid != pid {
                return;
            }
            warn!(pod = %id, pid, "the pod's PID 1 (pause) exited: the pod is not ready");
            record.phase = PodPhase::NotReady;
            record.reason = "its PID 1 (the pause process of its shared PID namespace) exited".into();
            if let Err(e) = rt.save_pod(&record) {
                warn!(pod = %id, error = %e, "recording the pod not ready");
            }
        });
    }
}
