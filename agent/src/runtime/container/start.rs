//! StartContainer, and following a started container until it exits.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use super::volumes::unmount_image_volumes;
use super::*;
use crate::runtime::{now_nanos, Result, Runtime, RuntimeError};
use crate::shim_client::{self, ShimError};
use crate::sys;

impl Runtime {
    pub async fn start_container(self: &Arc<Self>, wanted: &str) -> Result<()> {
        let id = self.require_container(wanted)?;
        let _lock = self.locks.lock(&id).await;
        let view = self.view(&id).ok_or_else(|| RuntimeError::NotFound(format!("container {wanted:?} not found")))?;
        if view.state != ContainerState::Created || view.record.phase != ContainerPhase::Created {
            return Err(RuntimeError::FailedPrecondition(format!("container {id} is {:?}, not created", view.state)));
        }
        let shim = self.shim(&id);
        match shim.start().await {
            Ok(()) => {
                // The shim's own start time arrives with the exit record; until then, now.
                let started_at = now_nanos();
                self.update_view(&id, |v| {
                    v.state = ContainerState::Running;
                    v.started_at = started_at;
                });
                self.watch(&id);
                info!(container = %id, "container started");
                Ok(())
            }
            Err(ShimError::Remote { message, .. }) => {
                let exit = shim
                    .wait(Some(Duration::from_secs(5)))
                    .await
                    .ok()
                    .or_else(|| shim_client::read_exit_file(&self.bundle_dir(&id)));
                let exit = exit.unwrap_or(proto::v1::Exit {
                    exit_code: 128,
                    start_error: message.clone(),
                    finished_at: now_nanos(),
                    ..Default::default()
                });
                self.update_view(&id, |v| v.apply_exit(&exit));
                Err(RuntimeError::FailedPrecondition(format!("starting container {id}: {message}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Unmounts the host's mount of an exited container's rootfs, off the request path (an
    /// unmount waits for an RCU grace period), as containerd does when it deletes the exited
    /// task. Nothing uses it again: the CRI never restarts a container, exec needs a running
    /// one, and processes left in a shared PID namespace keep the root of their own mount
    /// namespace. RemoveContainer's unmount then finds nothing to do.
    pub(super) fn release_rootfs(&self, id: &str) {
        let rootfs = self.rootfs_dir(id);
        let bundle = self.bundle_dir(id);
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = sys::unmount(&rootfs) {
                debug!(container = %id, error = %e, "unmounting the rootfs of an exited container");
            }
            if let Err(e) = unmount_image_volumes(&bundle) {
                debug!(container = %id, error = %e, "unmounting the image volumes of an exited container");
            }
        });
    }

    /// Follows a started container until it exits, in a task of its own.
    pub(super) fn watch(self: &Arc<Self>, id: &str) {
        let rt = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            let shim = rt.shim(&id);
            let exit = match shim.wait(None).await {
                Ok(exit) => Some(exit),
                Err(e) => {
                    debug!(container = %id, error = %e, "lost the shim while waiting");
                    shim_client::read_exit_file(&rt.bundle_dir(&id))
                }
            };
            match exit {
                Some(exit) => {
                    rt.update_view(&id, |v| v.apply_exit(&exit));
                    debug!(container = %id, code = exit.exit_code, "container exited");
                    rt.release_rootfs(&id);
                }
                None => {
                    // The shim died: its processes may run on without it.
                    let Some(mut view) = rt.view(&id) else { return };
                    if view.state != ContainerState::Running {
                        return;
                    }
                    let orphan = rt.orphan_view(&mut view);
                    rt.update_view(&id, |v| *v = view);
                    if orphan {
                        rt.follow_orphan(&id);
                    } else {
                        rt.release_rootfs(&id);
                    }
                }
            }
        });
    }
}
