//! RemoveContainer, and the teardown of every side effect of a container (also of a
//! failed CreateContainer and of what a crash left).

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::volumes::unmount_image_volumes;
use super::*;
use crate::runtime::{io_err, Result, Runtime};
use crate::sys;

impl Runtime {
    /// Undoes a container's side effects: shim, rootfs mount, bundle, snapshot. Idempotent.
    pub(super) async fn tear_down_container(&self, id: &str) -> Result<()> {
        let bundle = self.bundle_dir(id);
        let shim = self.shim(id);
        let mut shim_gone = true;
        if bundle.join(proto::SOCKET_NAME).exists() {
            // Also what an exited container left in its cgroup (with a shared PID namespace).
            let _ = shim.kill(libc::SIGKILL, true).await;
            if !self.view(id).is_some_and(|v| v.state == ContainerState::Exited) {
                let _ = shim.wait(Some(Duration::from_secs(10))).await;
            }
            match shim.shutdown().await {
                Ok(()) => shim_gone = false,
                Err(e) => debug!(container = %id, error = %e, "shim shutdown"),
            }
        }
        if shim_gone {
            // Without its shim the container's processes may still run: end them all (every
            // process of its cgroup, and the recorded one if it is still that process).
            if let Some(view) = self.view(id) {
                if !self.orphan_pids(&view.record).is_empty() {
                    warn!(container = %id, "the shim is gone; killing the container's processes");
                    self.stop_orphan(id, 0).await?;
                }
            }
        }
        // The shim removes the container's cgroup as it exits after Shutdown, which is after it
        // answered: remove it now, so it is gone when RemoveContainer returns (the kubelet then
        // removes the pod's cgroup), also when the shim is gone. Both sides take NotFound.
        let pod = self.view(id).and_then(|v| self.pod(&v.record.pod_id));
        if let (Some(cgroups), Some(pod)) = (&self.cgroups, pod) {
            let cgroup = crate::runtime::cgroup::child_cgroup(self.cfg.cgroup_driver, &pod.cgroup, id);
            if let Err(e) = cgroups.remove(&cgroup) {
                warn!(container = %id, shim_gone, error = %e, "removing the container's cgroup");
            }
        }
        let rootfs = self.rootfs_dir(id);
        sys::unmount(&rootfs).map_err(io_err(format!("unmounting {}", rootfs.display())))?;
        unmount_image_volumes(&bundle)?;
        // Nothing is mounted in it any more: move it aside and delete it in the background.
        if let Some(aside) =
            crate::discard::move_aside(&bundle).map_err(io_err(format!("removing {}", bundle.display())))?
        {
            crate::discard::remove_later(aside);
        }
        self.images.remove_container_snapshot(id).await?;
        Ok(())
    }

    pub async fn remove_container(self: &Arc<Self>, wanted: &str) -> Result<()> {
        let Some(id) = self.find_container_id(wanted)? else { return Ok(()) };
        self.stop_container(&id, 0).await?;
        let _lock = self.locks.lock(&id).await;
        if self.view(&id).is_none() {
            return Ok(());
        }
        self.tear_down_container(&id).await?;
        self.forget_container(&id)?;
        info!(container = %id, "container removed");
        Ok(())
    }
}
