//! Pods after a restart of corrald: kept, marked not ready, or removed when a crash left them
//! half made.

use std::sync::Arc;

use tracing::warn;

use super::*;
use crate::runtime::{Result, Runtime};
use crate::store::Table;
use crate::sys;

impl Runtime {
    /// Reloads pods; finishes or undoes what a crash interrupted.
    pub(in crate::runtime) async fn recover_pods(self: &Arc<Self>) -> Result<()> {
        let records: Vec<PodRecord> = self.store.list(Table::Pods)?;
        let mut kept = 0;
        for mut record in records {
            if record.phase == PodPhase::Creating {
                warn!(pod = %record.id, "removing pod sandbox left half made by a crash");
                if let Err(e) = self.tear_down_pod(&record).await {
                    warn!(pod = %record.id, error = %e, "cleaning up half-made pod sandbox");
                }
                self.store.delete(Table::Pods, &record.id)?;
                continue;
            }
            if record.phase == PodPhase::Ready && !self.pod_alive(&record) {
                warn!(pod = %record.id, "pod sandbox lost its namespaces or pause process; marking it not ready");
                record.phase = PodPhase::NotReady;
                record.reason = "it lost its namespaces or its PID 1 (pause) while corrald was down".into();
                self.store.put(Table::Pods, &record.id, &record)?;
            }
            let watch = (record.phase == PodPhase::Ready && record.pause_pid != 0)
                .then_some((record.id.clone(), record.pause_pid));
            self.pods.lock().unwrap_or_else(|p| p.into_inner()).insert(record.id.clone(), record);
            if let Some((id, pid)) = watch {
                self.watch_pause(&id, pid);
            }
            kept += 1;
        }
        crate::runtime::log_recovered("pod sandboxes", kept);
        Ok(())
    }

    fn pod_alive(&self, record: &PodRecord) -> bool {
        let ns = self.ns_dir(&record.id);
        let net_ok = record.network == NsMode::Node || sys::is_mount_point(&ns.join("net"));
        let pause_ok =
            record.pid != NsMode::Pod || (process_alive(record.pause_pid) && is_pause_of(record.pause_pid, &record.id));
        net_ok && pause_ok
    }
}
