//! StopPodSandbox: the containers stopped, the pause ended, the network released.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::*;
use crate::runtime::{io_err, Result, Runtime};
use crate::sys;

impl Runtime {
    /// Stops the pause process, if any, and waits until it is gone.
    pub(super) async fn stop_pause(&self, record: &PodRecord) {
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
        while process_alive(record.pause_pid)
            && is_pause_of(record.pause_pid, &record.id)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
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
}
