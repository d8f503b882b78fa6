//! Containers whose shim is gone (killed, or died while corrald was down) but whose processes
//! may run on: found by the recorded pid and its start time, and by the container's cgroup;
//! followed until they end; stopped and removed by killing every process of the cgroup, so that
//! Stop means the processes are gone and removal always completes.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::*;
use crate::runtime::pod::start_time;
use crate::runtime::{now_nanos, Result, Runtime, RuntimeError};
use crate::sys;

/// Exit code reported for a container whose exit status nobody saw (its shim was gone).
const UNKNOWN_EXIT: i32 = 255;
/// How often an orphaned container is checked for its end.
const ORPHAN_POLL: Duration = Duration::from_secs(1);
/// How long SIGKILL may take to empty a cgroup.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl Runtime {
    /// The container's cgroup, when corrald manages cgroups and knows its pod.
    fn container_cgroup(&self, record: &ContainerRecord) -> Option<String> {
        self.cgroups.as_ref()?;
        let pod = self.pod(&record.pod_id)?;
        Some(crate::runtime::cgroup::child_cgroup(self.cfg.cgroup_driver, &pod.cgroup, &record.id))
    }

    /// The container's processes as the host sees them: its cgroup's, and the recorded pid when
    /// it is still the same process (its start time matches).
    pub(super) fn orphan_pids(&self, record: &ContainerRecord) -> Vec<u32> {
        let mut pids = match (&self.cgroups, self.container_cgroup(record)) {
            (Some(c), Some(cg)) => c.pids(&cg),
            _ => Vec::new(),
        };
        if record.pid != 0
            && record.pid_start != 0
            && start_time(record.pid) == Some(record.pid_start)
            && !pids.contains(&record.pid)
        {
            pids.push(record.pid);
        }
        pids
    }

    /// The view of a container whose shim is gone and left no exit record: running while its
    /// processes are (then followed), else exited with an unknown status.
    pub(super) fn orphan_view(self: &Arc<Self>, view: &mut ContainerView) -> bool {
        let pids = self.orphan_pids(&view.record);
        if pids.is_empty() {
            view.state = ContainerState::Exited;
            view.exit_code = UNKNOWN_EXIT;
            view.finished_at = now_nanos();
            view.reason = "Unknown".into();
            view.message = "the container's shim is gone and left no exit record; its processes are gone too".into();
            return false;
        }
        view.state = ContainerState::Running;
        view.pid = if pids.contains(&view.record.pid) { view.record.pid } else { pids[0] };
        view.reason = String::new();
        view.message = "the container's shim is gone; its processes run on without it".into();
        true
    }

    /// Follows an orphaned container until its processes are gone.
    pub(super) fn follow_orphan(self: &Arc<Self>, id: &str) {
        let rt = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ORPHAN_POLL).await;
                let Some(view) = rt.view(&id) else { return };
                if view.state != ContainerState::Running {
                    return;
                }
                if rt.orphan_pids(&view.record).is_empty() {
                    rt.update_view(&id, |v| {
                        v.state = ContainerState::Exited;
                        v.exit_code = UNKNOWN_EXIT;
                        v.finished_at = now_nanos();
                        v.reason = "Unknown".into();
                        v.message =
                            "the container's processes ended while its shim was gone: their exit status is unknown"
                                .into();
                    });
                    rt.release_rootfs(&id);
                    info!(container = %id, "orphaned container ended");
                    return;
                }
            }
        });
    }

    /// StopContainer without a shim: the stop signal to the main process, the grace period,
    /// then SIGKILL to every process of the cgroup. Ok only once they are all gone.
    pub(super) async fn stop_orphan(&self, id: &str, timeout_secs: i64) -> Result<()> {
        let Some(view) = self.view(id) else { return Ok(()) };
        let record = &view.record;
        let mut signal = libc::SIGKILL;
        if timeout_secs > 0 && view.pid != 0 && start_time(view.pid).is_some() {
            let _ = sys::kill(view.pid as i32, record.stop_signal);
            signal = record.stop_signal;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs as u64);
            while !self.orphan_pids(record).is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let left = match (&self.cgroups, self.container_cgroup(record)) {
            (Some(c), Some(cg)) if !self.orphan_pids(record).is_empty() => {
                signal = libc::SIGKILL;
                c.kill_all(&cg, libc::SIGKILL, KILL_WAIT).await
            }
            _ => Vec::new(),
        };
        let left: Vec<u32> = left.into_iter().chain(self.orphan_pids(record)).collect();
        if !left.is_empty() {
            return Err(RuntimeError::Internal(format!(
                "container {id}: its shim is gone and processes {left:?} did not end after SIGKILL"
            )));
        }
        self.update_view(id, |v| {
            v.state = ContainerState::Exited;
            v.exit_code = 128 + signal;
            v.finished_at = now_nanos();
            v.reason = "Error".into();
            v.message = format!("stopped without its shim (gone): processes ended by signal {signal}");
        });
        warn!(container = %id, "stopped a container whose shim was gone");
        Ok(())
    }
}
