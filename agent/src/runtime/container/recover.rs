//! Containers after a restart of corrald: reattached to live shims, read from exit records,
//! or removed when a crash left them half made.

use std::sync::Arc;

use tracing::warn;

use super::*;
use crate::runtime::{io_err, Result, Runtime};
use crate::shim_client;
use crate::store::Table;

impl Runtime {
    /// Reloads containers: reattaches to live shims, reads exit records of dead ones, and
    /// removes what a crash left half made.
    pub(in crate::runtime) async fn recover_containers(self: &Arc<Self>) -> Result<()> {
        // Bundles of removed containers whose deletion a crash cut short.
        let containers_dir = self.cfg.state.join("containers");
        crate::discard::sweep(&containers_dir).map_err(io_err(format!("sweeping {}", containers_dir.display())))?;
        let records: Vec<ContainerRecord> = self.store.list(Table::Containers)?;
        let mut kept = 0;
        for record in records {
            let id = record.id.clone();
            if record.phase == ContainerPhase::Creating || self.pod(&record.pod_id).is_none() {
                warn!(container = %id, "removing container left half made by a crash");
                if let Err(e) = self.tear_down_container(&id).await {
                    warn!(container = %id, error = %e, "cleaning up half-made container");
                }
                self.store.delete(Table::Containers, &id)?;
                continue;
            }
            let mut view = ContainerView::new(record, ContainerState::Unknown);
            let mut follow = false;
            let mut orphan = false;
            match self.shim(&id).state().await {
                Ok(state) => {
                    view.pid = state.pid;
                    view.started_at = state.started_at;
                    match proto::v1::Status::try_from(state.status) {
                        Ok(proto::v1::Status::Created) => view.state = ContainerState::Created,
                        Ok(proto::v1::Status::Running) => {
                            view.state = ContainerState::Running;
                            follow = true;
                        }
                        _ => match state.exit {
                            Some(exit) => view.apply_exit(&exit),
                            None => view.state = ContainerState::Unknown,
                        },
                    }
                }
                Err(e) => match shim_client::read_exit_file(&self.bundle_dir(&id)) {
                    Some(exit) => view.apply_exit(&exit),
                    None => {
                        warn!(container = %id, error = %e, "the container's shim is gone and left no exit record");
                        orphan = self.orphan_view(&mut view);
                    }
                },
            }
            self.containers.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), view);
            if follow {
                self.watch(&id);
            }
            if orphan {
                self.follow_orphan(&id);
            }
            kept += 1;
        }
        crate::runtime::log_recovered("containers", kept);
        Ok(())
    }
}
