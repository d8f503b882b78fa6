//! CreateContainer: the writable snapshot and rootfs, the pure resolution of the spec
//! (`resolve.rs`), image volumes, the bundle and the shim that creates the process.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::host::HostFs;
use super::volumes::{mount_image_volume, VOLUMES_DIR};
use super::*;
use crate::image::manifest::ImageConfig;
use crate::runtime::pod::{process_alive, NsMode, PodPhase, PodRecord};
use crate::runtime::resolve::{self, ImageVolumeSource, Inputs, Paths};
use crate::runtime::spec;
use crate::runtime::user::UserDb;
use crate::runtime::validate::bounded;
use crate::runtime::{fresh_id, io_err, now_nanos, Result, Runtime, RuntimeError};
use crate::shim_client;
use crate::store::Table;
use crate::sys;

impl Runtime {
    pub async fn create_container(self: &Arc<Self>, req: CreateContainer) -> Result<String> {
        if req.name.is_empty() {
            return Err(RuntimeError::InvalidArgument("container config: metadata.name is required".into()));
        }
        let invalid = |e: String| RuntimeError::InvalidArgument(format!("container config: {e}"));
        crate::runtime::validate::name("metadata.name", &req.name).map_err(invalid)?;
        if !req.log_path.is_empty() {
            crate::runtime::validate::log_path(&req.log_path).map_err(invalid)?;
        }
        let pod_id = self
            .find_pod_id(&req.pod_id)?
            .ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {:?} not found", req.pod_id)))?;
        let pod =
            self.pod(&pod_id).ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {pod_id:?} not found")))?;
        if pod.phase != PodPhase::Ready {
            let why = if pod.reason.is_empty() { String::new() } else { format!(": {}", pod.reason) };
            return Err(RuntimeError::FailedPrecondition(format!("pod sandbox {pod_id} is not ready{why}")));
        }
        let image = self.images.find(&req.image).ok_or_else(|| {
            RuntimeError::NotFound(format!("image {:?} not found: pull it first", bounded(&req.image)))
        })?;
        let config = ImageConfig::parse(&self.images.config(&image)?)
            .map_err(|e| RuntimeError::Internal(format!("image {}: {e}", image.id)))?;
        // The images of image volumes: present already (never pulled here), as containerd.
        let mut volume_images = Vec::new();
        for (n, m) in req.mounts.iter().enumerate() {
            if let Some(img) = &m.image {
                if img.image.is_empty() {
                    return Err(RuntimeError::InvalidArgument(format!("mounts[{n}].image: the image is required")));
                }
                let found = self.images.find(&img.image).ok_or_else(|| {
                    RuntimeError::NotFound(format!(
                        "mounts[{n}].image: image {:?} not found: pull it first",
                        bounded(&img.image)
                    ))
                })?;
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
            pid: 0,
            pid_start: 0,
            user: None,
            resources: req.resources.clone(),
            stdin: req.stdin,
            stdin_once: req.stdin_once,
            tty: req.tty,
        };
        let _lock = self.locks.lock(&id).await;
        {
            let mut containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(holder) = containers.values().find(|c| c.record.reservation == reservation) {
                return Err(RuntimeError::AlreadyExists(format!(
                    "container name {reservation:?} is reserved for {}",
                    holder.record.id
                )));
            }
            self.store.put(Table::Containers, &id, &record)?;
            containers.insert(id.clone(), ContainerView::new(record.clone(), ContainerState::Created));
        }
        let mut record = record;
        let created = async {
            let pid = self.set_up_container(&mut record, &req, &pod, &image, &config, &volume_images).await?;
            record.phase = ContainerPhase::Created;
            record.pid = pid;
            record.pid_start = crate::runtime::pod::start_time(pid).unwrap_or(0);
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
        let target = self.find_container_id(&req.target_id)?.and_then(|t| self.view(&t)).ok_or_else(|| {
            RuntimeError::NotFound(format!(
                "namespace_options.target_id: container {:?} not found",
                bounded(&req.target_id)
            ))
        })?;
        if target.state != ContainerState::Running || !process_alive(target.pid) {
            return Err(RuntimeError::FailedPrecondition(format!(
                "namespace_options.target_id: container {} is not running",
                target.record.id
            )));
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
        std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("setting the mode of {}", bundle.display())))?;
        // Image volumes keep their layers from GC like the container's own image does.
        let volumes: Vec<&crate::image::ImageRecord> = volume_images.iter().map(|(_, i)| i).collect();
        let snap = self.images.prepare_container_snapshot(&id, image, &volumes).await?;
        let image_volumes: HashMap<usize, ImageVolumeSource> = volume_images
            .iter()
            .zip(&snap.volume_layers)
            .map(|((n, img), layers)| (*n, ImageVolumeSource { id: img.id.clone(), layers: layers.clone() }))
            .collect();
        let lowers: Vec<String> = snap.lowers.iter().map(|p| p.display().to_string()).collect();
        let options =
            format!("lowerdir={},upperdir={},workdir={}", lowers.join(":"), snap.upper.display(), snap.work.display());
        sys::mount("overlay", &rootfs, "overlay", 0, &options)
            .map_err(io_err(format!("mounting container rootfs at {}", rootfs.display())))?;

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
            cgroup_version: self.cgroups.as_ref().map(|c| c.version()),
            cgroup_driver: self.cfg.cgroup_driver,
        };
        let mut resolved = resolve::resolve(&inputs).map_err(RuntimeError::InvalidArgument)?;
        record.mounts = resolved.mounts.clone();
        record.stop_signal = resolved.stop_signal;
        record.stop_signal_name = resolved.stop_signal_name.clone();
        record.user = Some(UserRecord {
            uid: resolved.user.uid,
            gid: resolved.user.gid,
            additional_gids: resolved.user.additional_gids.clone(),
        });

        for v in &resolved.image_volumes {
            let source = mount_image_volume(v)?;
            resolved.spec.mounts[v.mount].host_path = source.display().to_string();
        }
        // A host path that does not exist is made a directory, as containerd and Docker do.
        for m in record.mounts.iter().filter(|m| m.image.is_none()) {
            let host = Path::new(&m.host_path);
            if std::fs::symlink_metadata(host).is_err() {
                std::fs::create_dir_all(host)
                    .map_err(io_err(format!("creating mount host path {}", host.display())))?;
            }
        }
        let cwd_dir = crate::image::unpack::secure_join(&rootfs, Path::new(resolved.cwd.trim_start_matches('/')), true)
            .map_err(io_err(format!("creating working directory {}", resolved.cwd)))?;
        if resolved.cwd != "/" {
            let _ = std::os::unix::fs::lchown(&cwd_dir, Some(resolved.user.uid), Some(resolved.user.gid));
        }
        if !record.log_path.is_empty() {
            if let Some(parent) = Path::new(&record.log_path).parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io_err(format!("creating log directory {}", parent.display())))?;
            }
        }
        let config =
            spec::container_spec(&resolved.spec).map_err(|e| RuntimeError::Internal(format!("container {id}: {e}")))?;
        write_config(&bundle, &config)?;
        let pid = shim_client::launch(&self.cfg.shim, "create", &bundle, &id).await?;
        debug!(container = %id, pid, "shim created the container process");
        Ok(pid)
    }
}
