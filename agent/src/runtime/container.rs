//! The container lifecycle: overlay rootfs on the image's layers, OCI bundle, one corral-shim
//! per container, and the container's state as its shim reports it.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::pod::{process_alive, NsMode, PodPhase, PodRecord};
use super::resolve::{self, DeviceNode, Host, ImageVolumePlan, ImageVolumeSource, Inputs, Paths};
use super::spec::{self, Propagation, Resources};
use super::user::{GroupsPolicy, UserDb};
use super::validate::bounded;
use super::{fresh_id, io_err, labels_match, now_nanos, Result, Runtime, RuntimeError};
use crate::image::manifest::ImageConfig;
use crate::shim_client::{self, Shim, ShimError};
use crate::store::Table;
use crate::sys;

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
    /// Resolved at creation; None for records of an older corral.
    #[serde(default)]
    pub user: Option<UserRecord>,
    #[serde(default)]
    pub resources: Resources,
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
        ShimError::Remote { kind: proto::v1::ErrorKind::DeadlineExceeded, message } => RuntimeError::DeadlineExceeded(message),
        ShimError::Remote { kind: proto::v1::ErrorKind::FailedPrecondition, message } => RuntimeError::FailedPrecondition(message),
        ShimError::Remote { kind: proto::v1::ErrorKind::InvalidArgument, message } => RuntimeError::InvalidArgument(message),
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
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|c| c.record.pod_id == pod_id).map(|c| c.record.id.clone()).collect()
    }

    fn shim(&self, id: &str) -> Shim {
        Shim::new(id, &self.bundle_dir(id))
    }

    fn rootfs_dir(&self, id: &str) -> PathBuf {
        self.bundle_dir(id).join("rootfs")
    }

    pub async fn create_container(self: &Arc<Self>, req: CreateContainer) -> Result<String> {
        if req.name.is_empty() {
            return Err(RuntimeError::InvalidArgument("container config: metadata.name is required".into()));
        }
        let pod_id = self.find_pod_id(&req.pod_id)?.ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {:?} not found", req.pod_id)))?;
        let pod = self.pod(&pod_id).ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {pod_id:?} not found")))?;
        if pod.phase != PodPhase::Ready {
            return Err(RuntimeError::FailedPrecondition(format!("pod sandbox {pod_id} is not ready")));
        }
        let image = self.images.find(&req.image).ok_or_else(|| RuntimeError::NotFound(format!("image {:?} not found: pull it first", bounded(&req.image))))?;
        let config = ImageConfig::parse(&self.images.config(&image)?).map_err(|e| RuntimeError::Internal(format!("image {}: {e}", image.id)))?;
        // The images of image volumes: present already (never pulled here), as containerd.
        let mut volume_images = Vec::new();
        for (n, m) in req.mounts.iter().enumerate() {
            if let Some(img) = &m.image {
                if img.image.is_empty() {
                    return Err(RuntimeError::InvalidArgument(format!("mounts[{n}].image: the image is required")));
                }
                let found = self.images.find(&img.image).ok_or_else(|| RuntimeError::NotFound(format!("mounts[{n}].image: image {:?} not found: pull it first", bounded(&img.image))))?;
                volume_images.push((n, found));
            }
        }

        let id = {
            let containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
            fresh_id(containers.keys())
        };
        let reservation = format!("{}_{}_{}_{}_{}", req.name, pod.name, pod.namespace, pod.uid, req.attempt);
        let log_path = if req.log_path.is_empty() || pod.log_directory.is_empty() {
            String::new()
        } else {
            Path::new(&pod.log_directory).join(&req.log_path).display().to_string()
        };
        let record = ContainerRecord {
            id: id.clone(),
            pod_id: pod_id.clone(),
            name: req.name.clone(),
            attempt: req.attempt,
            image: req.image.clone(),
            user_specified_image: req.user_specified_image.clone(),
            image_id: image.id.clone(),
            image_ref: image.repo_digests.first().cloned().unwrap_or_else(|| image.id.clone()),
            labels: req.labels.clone(),
            annotations: req.annotations.clone(),
            log_path,
            created_at: now_nanos(),
            phase: ContainerPhase::Creating,
            mounts: Vec::new(),
            stop_signal: libc::SIGTERM,
            stop_signal_name: String::new(),
            reservation: reservation.clone(),
            user: None,
            resources: req.resources.clone(),
        };
        let _lock = self.locks.lock(&id).await;
        {
            let mut containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(holder) = containers.values().find(|c| c.record.reservation == reservation) {
                return Err(RuntimeError::AlreadyExists(format!("container name {reservation:?} is reserved for {}", holder.record.id)));
            }
            self.store.put(Table::Containers, &id, &record)?;
            containers.insert(
                id.clone(),
                ContainerView { record: record.clone(), state: ContainerState::Created, pid: 0, started_at: 0, finished_at: 0, exit_code: 0, reason: String::new(), message: String::new() },
            );
        }
        let mut record = record;
        let created = async {
            let pid = self.set_up_container(&mut record, &req, &pod, &image, &config, &volume_images).await?;
            record.phase = ContainerPhase::Created;
            self.store.put(Table::Containers, &id, &record)?;
            Ok::<u32, RuntimeError>(pid)
        };
        match created.await {
            Ok(pid) => {
                self.update_view(&id, |v| {
                    v.record = record;
                    v.pid = pid;
                });
                info!(container = %id, pod = %pod_id, name = %req.name, "container created");
                Ok(id)
            }
            Err(e) => {
                warn!(container = %id, error = %e, "container setup failed, undoing");
                if let Err(cleanup) = self.tear_down_container(&id).await {
                    warn!(container = %id, error = %cleanup, "cleaning up failed container");
                }
                self.forget_container(&id)?;
                Err(e)
            }
        }
    }

    /// The pid of a running target container, for pid namespace mode TARGET.
    fn target_pid(&self, req: &CreateContainer) -> Result<Option<u32>> {
        if req.pid != NsMode::Target {
            return Ok(None);
        }
        let target = self
            .find_container_id(&req.target_id)?
            .and_then(|t| self.view(&t))
            .ok_or_else(|| RuntimeError::NotFound(format!("namespace_options.target_id: container {:?} not found", bounded(&req.target_id))))?;
        if target.state != ContainerState::Running || !process_alive(target.pid) {
            return Err(RuntimeError::FailedPrecondition(format!("namespace_options.target_id: container {} is not running", target.record.id)));
        }
        Ok(Some(target.pid))
    }

    /// Every side effect of CreateContainer, in order: rootfs, resolution of the spec (pure),
    /// image volumes, host paths, working directory, bundle, shim. On error the caller tears down.
    async fn set_up_container(
        &self,
        record: &mut ContainerRecord,
        req: &CreateContainer,
        pod: &PodRecord,
        image: &crate::image::ImageRecord,
        config: &ImageConfig,
        volume_images: &[(usize, crate::image::ImageRecord)],
    ) -> Result<u32> {
        let id = record.id.clone();
        let target_pid = self.target_pid(req)?;
        let bundle = self.bundle_dir(&id);
        let rootfs = self.rootfs_dir(&id);
        std::fs::create_dir_all(&rootfs).map_err(io_err(format!("creating {}", rootfs.display())))?;
        // Image volumes keep their layers from GC like the container's own image does.
        let volumes: Vec<&crate::image::ImageRecord> = volume_images.iter().map(|(_, i)| i).collect();
        let snap = self.images.prepare_container_snapshot(&id, image, &volumes).await?;
        let image_volumes: HashMap<usize, ImageVolumeSource> =
            volume_images.iter().zip(&snap.volume_layers).map(|((n, img), layers)| (*n, ImageVolumeSource { id: img.id.clone(), layers: layers.clone() })).collect();
        let lowers: Vec<String> = snap.lowers.iter().map(|p| p.display().to_string()).collect();
        let options = format!("lowerdir={},upperdir={},workdir={}", lowers.join(":"), snap.upper.display(), snap.work.display());
        sys::mount("overlay", &rootfs, "overlay", 0, &options).map_err(io_err(format!("mounting container rootfs at {}", rootfs.display())))?;

        let paths = Paths {
            rootfs: rootfs.clone(),
            ns_dir: self.ns_dir(&pod.id),
            pod_files: self.pod_files_dir(&pod.id),
            pod_shm: self.shm_dir(&pod.id),
            volumes: bundle.join(VOLUMES_DIR),
        };
        let users = UserDb::read(&rootfs);
        let image_defaults = config.config.clone().unwrap_or_default();
        let inputs = Inputs {
            id: &id,
            req,
            image: &image_defaults,
            pod,
            users: &users,
            host: &HostFs,
            paths: &paths,
            image_volumes: &image_volumes,
            target_pid,
            log_path: &record.log_path,
            rro_supported: self.features.recursive_read_only_mounts,
        };
        let mut resolved = resolve::resolve(&inputs).map_err(RuntimeError::InvalidArgument)?;
        record.mounts = resolved.mounts.clone();
        record.stop_signal = resolved.stop_signal;
        record.stop_signal_name = resolved.stop_signal_name.clone();
        record.user = Some(UserRecord { uid: resolved.user.uid, gid: resolved.user.gid, additional_gids: resolved.user.additional_gids.clone() });

        for v in &resolved.image_volumes {
            let source = mount_image_volume(v)?;
            resolved.spec.mounts[v.mount].host_path = source.display().to_string();
        }
        // A host path that does not exist is made a directory, as containerd and Docker do.
        for m in record.mounts.iter().filter(|m| m.image.is_none()) {
            let host = Path::new(&m.host_path);
            if std::fs::symlink_metadata(host).is_err() {
                std::fs::create_dir_all(host).map_err(io_err(format!("creating mount host path {}", host.display())))?;
            }
        }
        let cwd_dir = crate::image::unpack::secure_join(&rootfs, Path::new(resolved.cwd.trim_start_matches('/')), true).map_err(io_err(format!("creating working directory {}", resolved.cwd)))?;
        if resolved.cwd != "/" {
            let _ = std::os::unix::fs::lchown(&cwd_dir, Some(resolved.user.uid), Some(resolved.user.gid));
        }
        if !record.log_path.is_empty() {
            if let Some(parent) = Path::new(&record.log_path).parent() {
                std::fs::create_dir_all(parent).map_err(io_err(format!("creating log directory {}", parent.display())))?;
            }
        }
        let config = spec::container_spec(&resolved.spec).map_err(|e| RuntimeError::Internal(format!("container {id}: {e}")))?;
        write_config(&bundle, &config)?;
        let pid = shim_client::launch(&self.cfg.shim, "create", &bundle, &id).await?;
        debug!(container = %id, pid, "shim created the container process");
        Ok(pid)
    }

    /// Undoes a container's side effects: shim, rootfs mount, bundle, snapshot. Idempotent.
    async fn tear_down_container(&self, id: &str) -> Result<()> {
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
            // Without its shim the container process may still run: end it ourselves.
            if let Some(pid) = self.view(id).map(|v| v.pid).filter(|p| process_alive(*p) && in_cgroup_of(*p, id)) {
                warn!(container = %id, pid, "the shim is gone; killing the container process");
                let _ = sys::kill(pid as i32, libc::SIGKILL);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while process_alive(pid) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        // The shim removes the container's cgroup as it exits after Shutdown, which is after it
        // answered: remove it now, so it is gone when RemoveContainer returns (the kubelet then
        // removes the pod's cgroup), also when the shim is gone. Both sides take NotFound.
        let pod = self.view(id).and_then(|v| self.pod(&v.record.pod_id));
        if let (Some(cgroups), Some(pod)) = (&self.cgroups, pod) {
            let cgroup = format!("{}/{}", pod.cgroup.trim_end_matches('/'), id);
            if let Err(e) = cgroups.remove(&cgroup) {
                warn!(container = %id, shim_gone, error = %e, "removing the container's cgroup");
            }
        }
        let rootfs = self.rootfs_dir(id);
        sys::unmount(&rootfs).map_err(io_err(format!("unmounting {}", rootfs.display())))?;
        unmount_image_volumes(&bundle)?;
        // Nothing is mounted in it any more: move it aside and delete it in the background.
        if let Some(aside) = crate::discard::move_aside(&bundle).map_err(io_err(format!("removing {}", bundle.display())))? {
            crate::discard::remove_later(aside);
        }
        self.images.remove_container_snapshot(id).await?;
        Ok(())
    }

    fn forget_container(&self, id: &str) -> Result<()> {
        self.store.delete(Table::Containers, id)?;
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    fn require_container(&self, wanted: &str) -> Result<String> {
        self.find_container_id(wanted)?.ok_or_else(|| RuntimeError::NotFound(format!("container {wanted:?} not found")))
    }

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
                let exit = shim.wait(Some(Duration::from_secs(5))).await.ok().or_else(|| shim_client::read_exit_file(&self.bundle_dir(&id)));
                let exit = exit.unwrap_or(proto::v1::Exit { exit_code: 128, start_error: message.clone(), finished_at: now_nanos(), ..Default::default() });
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
    fn release_rootfs(&self, id: &str) {
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
    fn watch(self: &Arc<Self>, id: &str) {
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
                None => rt.update_view(&id, |v| {
                    if v.state == ContainerState::Running {
                        v.state = ContainerState::Unknown;
                        v.reason = "Unknown".into();
                        v.message = "the container's shim is gone and left no exit record".into();
                    }
                }),
            }
        });
    }

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
        if matches!(view.state, ContainerState::Exited | ContainerState::Unknown) || view.record.phase != ContainerPhase::Created {
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
                Err(ShimError::Unreachable { .. }) => {}
                Err(e) => return Err(shim_err(e)),
            }
        }
        match shim.kill(libc::SIGKILL, true).await {
            Ok(()) | Err(ShimError::Unreachable { .. }) => {}
            Err(e) => return Err(shim_err(e)),
        }
        if !self.wait_exit(&id, Duration::from_secs(30)).await? {
            return Err(RuntimeError::DeadlineExceeded(format!("container {id} did not exit after SIGKILL")));
        }
        info!(container = %id, "container killed");
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

    /// The name and digest reference of a container's image as it is now (containerd reports
    /// the image's first tag and first repo digest in ContainerStatus); None when the image is
    /// gone or has none.
    pub fn image_names(&self, image_id: &str) -> (Option<String>, Option<String>) {
        match self.images.find(image_id) {
            Some(img) => (img.repo_tags.first().cloned(), img.repo_digests.first().cloned()),
            None => (None, None),
        }
    }

    pub fn container_status(&self, wanted: &str) -> Result<ContainerView> {
        let id = self.require_container(wanted)?;
        self.view(&id).filter(|v| v.record.phase == ContainerPhase::Created).ok_or_else(|| RuntimeError::NotFound(format!("container {wanted:?} not found")))
    }

    pub fn list_containers(&self, filter: &ContainerFilter) -> Vec<ContainerView> {
        let containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        containers
            .values()
            .filter(|c| c.record.phase == ContainerPhase::Created)
            .filter(|c| filter.id.is_empty() || c.record.id.starts_with(&filter.id))
            .filter(|c| filter.pod_id.is_empty() || c.record.pod_id.starts_with(&filter.pod_id))
            .filter(|c| filter.state.is_none_or(|s| s == c.state))
            .filter(|c| labels_match(&c.record.labels, &filter.labels))
            .cloned()
            .collect()
    }

    pub async fn exec_sync(&self, wanted: &str, cmd: Vec<String>, timeout_secs: i64) -> Result<ExecOutput> {
        let id = self.require_container(wanted)?;
        let view = self.view(&id).ok_or_else(|| RuntimeError::NotFound(format!("container {wanted:?} not found")))?;
        if view.state != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!("container {id} is not running")));
        }
        if cmd.is_empty() {
            return Err(RuntimeError::InvalidArgument("exec: cmd is required".into()));
        }
        let req = proto::v1::ExecRequest { args: cmd, env: vec![], cwd: String::new(), timeout_ms: (timeout_secs.max(0) as u64) * 1000 };
        let out = self.shim(&id).exec(req).await.map_err(shim_err)?;
        Ok(ExecOutput { stdout: out.stdout, stderr: out.stderr, exit_code: out.exit_code })
    }

    pub async fn reopen_log(&self, wanted: &str) -> Result<()> {
        let id = self.require_container(wanted)?;
        let view = self.view(&id).ok_or_else(|| RuntimeError::NotFound(format!("container {wanted:?} not found")))?;
        if view.state != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!("container {id} is not running")));
        }
        self.shim(&id).reopen_log().await.map_err(shim_err)
    }

    /// Reloads containers: reattaches to live shims, reads exit records of dead ones, and
    /// removes what a crash left half made.
    pub(super) async fn recover_containers(self: &Arc<Self>) -> Result<()> {
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
            let mut view = ContainerView { record, state: ContainerState::Unknown, pid: 0, started_at: 0, finished_at: 0, exit_code: 0, reason: String::new(), message: String::new() };
            let mut follow = false;
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
                        view.reason = "Unknown".into();
                        view.message = format!("the container's shim is gone and left no exit record ({e})");
                    }
                },
            }
            self.containers.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), view);
            if follow {
                self.watch(&id);
            }
            kept += 1;
        }
        super::log_recovered("containers", kept);
        Ok(())
    }
}

/// Guards against pid reuse: the process sits in a cgroup named for the container.
fn in_cgroup_of(pid: u32, id: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map(|c| c.contains(id)).unwrap_or(false)
}

/// The host as resolution reads it.
struct HostFs;

impl Host for HostFs {
    fn device(&self, path: &str) -> std::io::Result<DeviceNode> {
        let meta = std::fs::metadata(path)?;
        node_of(&meta).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a device node"))
    }

    fn host_devices(&self) -> std::io::Result<Vec<(String, DeviceNode)>> {
        let mut out = Vec::new();
        host_devices_in(Path::new("/dev"), &mut out)?;
        Ok(out)
    }
}

/// The device node `meta` describes (without following a symlink); None for other files.
fn node_of(meta: &std::fs::Metadata) -> Option<DeviceNode> {
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(DeviceNode { kind, major: libc::major(rdev) as i64, minor: libc::minor(rdev) as i64, mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid() })
}

/// Device nodes below `dir`, skipping what containerd and runc skip: the pseudo-filesystems
/// and the console.
fn host_devices_in(dir: &Path, out: &mut Vec<(String, DeviceNode)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            if !matches!(name.to_str(), Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")) {
                host_devices_in(&path, out)?;
            }
        } else if name != "console" {
            if let Some(node) = node_of(&meta) {
                out.push((path.display().to_string(), node));
            }
        }
    }
    Ok(())
}

/// Writes a bundle's config.json.
pub(super) fn write_config(bundle: &Path, spec: &oci_spec::runtime::Spec) -> Result<()> {
    let path = bundle.join("config.json");
    let json = serde_json::to_vec(spec).map_err(|e| RuntimeError::Internal(format!("serializing {}: {e}", path.display())))?;
    std::fs::write(&path, json).map_err(io_err(format!("writing {}", path.display())))
}

/// Where a container's image volumes are mounted, inside its bundle.
const VOLUMES_DIR: &str = "volumes";

/// Mounts an image volume's layers read-only at its target (overlay of the layers, or a bind of
/// a single one) and returns the directory the container binds: the image's root or its sub
/// path, resolved inside the image.
fn mount_image_volume(v: &ImageVolumePlan) -> Result<PathBuf> {
    std::fs::create_dir_all(&v.target).map_err(io_err(format!("creating {}", v.target.display())))?;
    let flags = libc::MS_RDONLY | libc::MS_NODEV;
    match v.layers.as_slice() {
        [] => return Err(RuntimeError::Internal(format!("image volume at {}: the image has no layers", v.target.display()))),
        [one] => {
            sys::mount(&one.display().to_string(), &v.target, "", libc::MS_BIND, "").map_err(io_err(format!("mounting image volume at {}", v.target.display())))?;
            sys::mount("", &v.target, "", libc::MS_BIND | libc::MS_REMOUNT | flags, "").map_err(io_err(format!("making image volume {} read-only", v.target.display())))?;
        }
        many => {
            let lower: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
            sys::mount("overlay", &v.target, "overlay", flags, &format!("lowerdir={}", lower.join(":"))).map_err(io_err(format!("mounting image volume at {}", v.target.display())))?;
        }
    }
    if v.sub_path.is_empty() {
        return Ok(v.target.clone());
    }
    let missing = || RuntimeError::InvalidArgument(format!("image_sub_path {:?} is not a directory of the image", bounded(&v.sub_path)));
    let dir = crate::image::unpack::secure_join(&v.target, Path::new(&v.sub_path), false).map_err(|_| missing())?;
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        _ => Err(missing()),
    }
}

/// Unmounts every image volume of a bundle.
fn unmount_image_volumes(bundle: &Path) -> Result<()> {
    let dir = bundle.join(VOLUMES_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RuntimeError::Io { what: format!("listing {}", dir.display()), source: e }),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        sys::unmount(&path).map_err(io_err(format!("unmounting image volume {}", path.display())))?;
    }
    Ok(())
}

