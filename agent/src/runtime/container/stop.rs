//! StopContainer: the stop signal, the grace period, then SIGKILL.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::*;
use crate::runtime::{Result, Runtime, RuntimeError};
use crate::shim_client::{self, ShimError};

impl Runtime {
    /// Refreshes the view from the shim (or its exit file); used before reporting state.
    async fn wait_exit(&self, id: &str, timeout: Duration) -> Result<bool> {
        let shim = self.shim(id);
        match shim.wait(Some(timeout)).await {
            Ok(exit) => {
                self.update_view(id, |v| v.apply_exit(&exit));
                Ok(true)
            }
            Err(ShimError::Timeout { .. }) => Ok(false),
            Err(ShimError::Unreachable { .. }) => {
                if let Some(exit) = shim_client::read_exit_file(&self.bundle_dir(id)) {
                    self.update_view(id, |v| v.apply_exit(&exit));
                }
                Ok(true)
            }
            Err(e) => Err(shim_err(e)),
        }
    }

    pub async fn stop_container(self: &Arc<Self>, wanted: &str, timeout_secs: i64) -> Result<()> {
        let Some(id) = self.find_container_id(wanted)? else { return Ok(()) };
        let Some(view) = self.view(&id) else { return Ok(()) };
        if matches!(view.state, ContainerState::Exited | ContainerState::Unknown)
            || view.record.phase != ContainerPhase::Created
        {
            return Ok(());
        }
        let shim = self.shim(&id);
        if timeout_secs > 0 && view.state == ContainerState::Running {
            match shim.kill(view.record.stop_signal, false).await {
                Ok(()) => {
                    if self.wait_exit(&id, Duration::from_secs(timeout_secs as u64)).await? {
                        info!(container = %id, "container stopped");
                        return Ok(());
                    }
                }
                Err(ShimError::Unreachable { .. }) => return self.stop_orphan(&id, timeout_secs).await,
                Err(e) => return Err(shim_err(e)),
            }
        }
        match shim.kill(libc::SIGKILL, true).await {
            Ok(()) => {}
            Err(ShimError::Unreachable { .. }) => return self.stop_orphan(&id, 0).await,
            Err(e) => return Err(shim_err(e)),
        }
        if !self.wait_exit(&id, Duration::from_secs(30)).await? {
            return Err(RuntimeError::DeadlineExceeded(format!("container {id} did not exit after SIGKILL")));
        }
        info!(container = %id, "container killed");
        Ok(())
    }
}
