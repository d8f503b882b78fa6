//! The container lifecycle: overlay rootfs on the image's layers, OCI bundle, one corral-shim
//! per container, and the container's state as its shim reports it.

mod create;
mod exec;
mod host;
mod orphan;
mod recover;
mod remove;
mod start;
mod status;
mod stop;
mod stream;
mod volumes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::pod::NsMode;
use super::spec::{Propagation, Resources};
use super::user::GroupsPolicy;
use super::{io_err, Result, Runtime, RuntimeError};
use crate::shim_client::{Shim, ShimError};
use crate::store::Table;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerPhase {
    /// Recorded, side effects in progress; a crash leaves this for recovery to clean up.
    Creating,
    Created,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub container_path: String,
    /// For an image volume, where its image is mounted on the host.
    pub host_path: String,
    pub readonly: bool,
    #[serde(default)]
    pub recursive_readonly: bool,
    /// CRI MountPropagation.
    pub propagation: i32,
    #[serde(default)]
    pub image: Option<ImageMountRecord>,
}

/// The image of an image volume, as ContainerStatus reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMountRecord {
    /// As the request named it.
    pub image: String,
    pub user_specified_image: String,
    /// The image id it resolved to.
    pub image_ref: String,
    pub sub_path: String,
}

/// The identity the container's process runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    /// The image as the client named it.
    pub image: String,
    /// ImageSpec.user_specified_image: the image as the pod spec names it.
    #[serde(default)]
    pub user_specified_image: String,
    pub image_id: String,
    pub image_ref: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub log_path: String,
    pub created_at: i64,
    pub phase: ContainerPhase,
    pub mounts: Vec<MountRecord>,
    pub stop_signal: i32,
    /// The stop signal's name (request, else image, else SIGTERM), for ContainerStatus.
    #[serde(default)]
    pub stop_signal_name: String,
    /// The pod's name key, so the reservation can be checked without the pod.
    pub reservation: String,
    /// The container process as the host sees it, and its start time (/proc/<pid>/stat), which
    /// tell it apart from a later process with the same pid when its shim is gone.
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub pid_start: u64,
    /// Resolved at creation; None for records of an older corral.
    #[serde(default)]
    pub user: Option<UserRecord>,
    #[serde(default)]
    pub resources: Resources,
    /// The container keeps a stdin open (for attach); closed after the first attach with
    /// stdin_once; a tty.
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    #[serde(default)]
    pub tty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// A container's record and its live state.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub record: ContainerRecord,
    pub state: ContainerState,
    pub pid: u32,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
}

impl ContainerView {
    /// A view of `record` in `state` with nothing run yet.
    fn new(record: ContainerRecord, state: ContainerState) -> ContainerView {
        ContainerView {
            record,
            state,
            pid: 0,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
        }
    }

    fn apply_exit(&mut self, exit: &proto::v1::Exit) {
        self.state = ContainerState::Exited;
        self.exit_code = exit.exit_code;
        self.finished_at = exit.finished_at;
        if exit.started_at != 0 {
            self.started_at = exit.started_at;
        }
        self.reason = if !exit.start_error.is_empty() {
            "StartError".into()
        } else if exit.oom_killed {
            "OOMKilled".into()
        } else if exit.exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        };
        self.message = exit.start_error.clone();
    }
}

#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub id: String,
    pub pod_id: String,
    pub state: Option<ContainerState>,
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    #[default]
    Unconfined,
    RuntimeDefault,
    Localhost,
}

/// A mount of a CreateContainer request: a host path, or an image (image volume).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountRequest {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub recursive_readonly: bool,
    pub propagation: Propagation,
    pub image: Option<ImageMount>,
    /// Set without an image: refused.
    pub image_sub_path: String,
    /// uid/gid mappings were given (idmapped mount).
    pub idmapped: bool,
}

/// The image of an image volume as the request names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageMount {
    /// A reference or an image id.
    pub image: String,
    pub user_specified_image: String,
    /// A directory of the image to mount instead of its root.
    pub sub_path: String,
}

/// A CreateContainer request in domain terms.
#[derive(Debug, Clone, Default)]
pub struct CreateContainer {
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub user_specified_image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<MountRequest>,
    /// (container path, host path, permissions)
    pub devices: Vec<(String, String, String)>,
    pub cdi_devices: Vec<String>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub resources: Resources,
    pub privileged: bool,
    pub caps_add: Vec<String>,
    pub caps_drop: Vec<String>,
    pub caps_ambient: Vec<String>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub supplemental_groups_policy: GroupsPolicy,
    pub no_new_privs: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub pid: NsMode,
    pub target_id: String,
    pub seccomp: Profile,
    pub apparmor: Profile,
    /// A signal name ("SIGUSR1"); None: the image's, else SIGTERM.
    pub stop_signal: Option<String>,
}

/// Output of ExecSync.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

fn shim_err(e: ShimError) -> RuntimeError {
    match e {
        ShimError::Remote { kind: proto::v1::ErrorKind::DeadlineExceeded, message } => {
            RuntimeError::DeadlineExceeded(message)
        }
        ShimError::Remote { kind: proto::v1::ErrorKind::FailedPrecondition, message } => {
            RuntimeError::FailedPrecondition(message)
        }
        ShimError::Remote { kind: proto::v1::ErrorKind::InvalidArgument, message } => {
            RuntimeError::InvalidArgument(message)
        }
        ShimError::Remote { kind: proto::v1::ErrorKind::NotFound, message } => RuntimeError::NotFound(message),
        other => RuntimeError::Shim(other),
    }
}

impl Runtime {
    fn view(&self, id: &str) -> Option<ContainerView> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    fn update_view(&self, id: &str, f: impl FnOnce(&mut ContainerView)) {
        if let Some(v) = self.containers.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id) {
            f(v);
        }
    }

    pub(super) fn container_ids_of(&self, pod_id: &str) -> Vec<String> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.record.pod_id == pod_id)
            .map(|c| c.record.id.clone())
            .collect()
    }

    fn shim(&self, id: &str) -> Shim {
        Shim::new(id, &self.bundle_dir(id))
    }

    fn rootfs_dir(&self, id: &str) -> PathBuf {
        self.bundle_dir(id).join("rootfs")
    }

    fn forget_container(&self, id: &str) -> Result<()> {
        self.store.delete(Table::Containers, id)?;
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    /// For ExecSync, ReopenContainerLog, Exec and Attach: the full id of `wanted`, which must
    /// exist and run.
    pub fn running_container(&self, wanted: &str) -> Result<String> {
        let id = self.require_container(wanted)?;
        let view = self.view(&id).ok_or_else(|| RuntimeError::NotFound(format!("container {wanted:?} not found")))?;
        if view.state != ContainerState::Running {
            let state = format!("{:?}", view.state).to_uppercase();
            return Err(RuntimeError::FailedPrecondition(format!("container {id} is in {state} state")));
        }
        Ok(id)
    }

    fn require_container(&self, wanted: &str) -> Result<String> {
        self.find_container_id(wanted)?.ok_or_else(|| RuntimeError::NotFound(format!("container {wanted:?} not found")))
    }
}

/// Writes a bundle's config.json.
pub(super) fn write_config(bundle: &Path, spec: &oci_spec::runtime::Spec) -> Result<()> {
    let path = bundle.join("config.json");
    let json =
        serde_json::to_vec(spec).map_err(|e| RuntimeError::Internal(format!("serializing {}: {e}", path.display())))?;
    // The container's env is in it: root only.
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(format!("writing {}", path.display())))?;
    f.write_all(&json).map_err(io_err(format!("writing {}", path.display())))
}
