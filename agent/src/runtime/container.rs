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
use super::spec::{self, BindMount, ContainerSpec, Device, Namespaces, Propagation, Resources};
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRecord {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub propagation: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    /// The image as the client named it.
    pub image: String,
    pub image_id: String,
    pub image_ref: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub log_path: String,
    pub created_at: i64,
    pub phase: ContainerPhase,
    pub mounts: Vec<MountRecord>,
    pub stop_signal: i32,
    /// The pod's name key, so the reservation can be checked without the pod.
    pub reservation: String,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Unconfined,
    RuntimeDefault,
    Localhost,
}

/// A CreateContainer request in domain terms.
#[derive(Debug, Clone)]
pub struct CreateContainer {
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<BindMount>,
    pub devices: Vec<(String, String, String)>,
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
    pub no_new_privs: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub pid: NsMode,
    pub target_id: String,
    pub seccomp: Profile,
    pub apparmor: Profile,
}

/// Output of ExecSync.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// "SIGTERM", "TERM", "15" → 15.
pub fn parse_signal(s: &str) -> Option<i32> {
    if s.is_empty() {
        return Some(libc::SIGTERM);
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "ALRM" => libc::SIGALRM,
        "PWR" => libc::SIGPWR,
        "WINCH" => libc::SIGWINCH,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        _ => return None,
    };
    Some(n)
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

    fn check_security(req: &CreateContainer, pod: &PodRecord) -> Result<()> {
        if req.seccomp != Profile::Unconfined {
            return Err(RuntimeError::InvalidArgument(
                "seccomp profiles other than Unconfined are not supported by corral yet; set the seccomp profile to Unconfined".into(),
            ));
        }
        if req.apparmor != Profile::Unconfined {
            return Err(RuntimeError::InvalidArgument(
                "AppArmor profiles other than unconfined are not supported by corral yet".into(),
            ));
        }
        if req.privileged && !pod.privileged {
            return Err(RuntimeError::InvalidArgument("a privileged container needs a privileged pod sandbox".into()));
        }
        Ok(())
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
        Self::check_security(&req, &pod)?;
        let image = self.images.find(&req.image).ok_or_else(|| RuntimeError::NotFound(format!("image {:?} not found", req.image)))?;
        let config = ImageConfig::parse(&self.images.config(&image)?).map_err(|e| RuntimeError::FailedPrecondition(format!("image {}: {e}", image.id)))?;
        let container_config = config.config.clone().unwrap_or_default();

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
        let stop_signal = parse_signal(container_config.stop_signal.as_deref().unwrap_or("")).unwrap_or(libc::SIGTERM);
        let record = ContainerRecord {
            id: id.clone(),
            pod_id: pod_id.clone(),
            name: req.name.clone(),
            attempt: req.attempt,
            image: req.image.clone(),
            image_id: image.id.clone(),
            image_ref: image.repo_digests.first().cloned().unwrap_or_else(|| image.id.clone()),
            labels: req.labels.clone(),
            annotations: req.annotations.clone(),
            log_path,
            created_at: now_nanos(),
            phase: ContainerPhase::Creating,
            mounts: req
                .mounts
                .iter()
                .map(|m| MountRecord {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    propagation: match m.propagation {
                        Propagation::Private => 0,
                        Propagation::HostToContainer => 1,
                        Propagation::Bidirectional => 2,
                    },
                })
                .collect(),
            stop_signal,
            reservation: reservation.clone(),
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
        record.phase = ContainerPhase::Created;
        let created = async {
            let pid = self.set_up_container(&id, &req, &pod, &image, &config).await?;
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

    async fn set_up_container(&self, id: &str, req: &CreateContainer, pod: &PodRecord, image: &crate::image::ImageRecord, config: &ImageConfig) -> Result<u32> {
        let bundle = self.bundle_dir(id);
        let rootfs = self.rootfs_dir(id);
        std::fs::create_dir_all(&rootfs).map_err(io_err(format!("creating {}", rootfs.display())))?;
        let snap = self.images.prepare_container_snapshot(id, image).await?;
        let lowers: Vec<String> = snap.lowers.iter().map(|p| p.display().to_string()).collect();
        let options = format!("lowerdir={},upperdir={},workdir={}", lowers.join(":"), snap.upper.display(), snap.work.display());
        sys::mount("overlay", &rootfs, "overlay", 0, &options).map_err(io_err(format!("mounting container rootfs at {}", rootfs.display())))?;

        let image_cfg = config.config.clone().unwrap_or_default();
        // User: CRI run_as_username / run_as_user[:run_as_group] win over the image's User.
        let image_user = image_cfg.user.clone().unwrap_or_default();
        let user_spec = if !req.run_as_username.is_empty() {
            req.run_as_username.clone()
        } else if let Some(uid) = req.run_as_user {
            uid.to_string()
        } else {
            image_user
        };
        let user_spec = match req.run_as_group {
            Some(gid) => format!("{}:{gid}", user_spec.split(':').next().unwrap_or("")),
            None => user_spec,
        };
        let extra: Vec<u32> = req.supplemental_groups.iter().filter_map(|g| u32::try_from(*g).ok()).collect();
        let user = super::user::resolve(&rootfs, &user_spec, &extra).map_err(RuntimeError::InvalidArgument)?;

        // Entrypoint/Cmd: command replaces the entrypoint; args replace Cmd.
        let entrypoint = if req.command.is_empty() { image_cfg.entrypoint.clone().unwrap_or_default() } else { req.command.clone() };
        let cmd = if !req.command.is_empty() || !req.args.is_empty() { req.args.clone() } else { image_cfg.cmd.clone().unwrap_or_default() };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(RuntimeError::InvalidArgument("no command specified: the image has no Entrypoint or Cmd and the container config sets no command".into()));
        }

        let mut env: Vec<String> = Vec::new();
        let mut set_env = |kv: String| {
            let key = kv.split('=').next().unwrap_or("").to_string();
            env.retain(|e| e.split('=').next() != Some(key.as_str()));
            env.push(kv);
        };
        set_env("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        for e in image_cfg.env.clone().unwrap_or_default() {
            set_env(e);
        }
        set_env(format!("HOSTNAME={}", pod.hostname));
        for (k, v) in &req.envs {
            set_env(format!("{k}={v}"));
        }

        let cwd = if !req.working_dir.is_empty() { req.working_dir.clone() } else { image_cfg.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into()) };
        if !cwd.starts_with('/') {
            return Err(RuntimeError::InvalidArgument(format!("working directory {cwd:?} must be absolute")));
        }
        let cwd_dir = crate::image::unpack::secure_join(&rootfs, Path::new(cwd.trim_start_matches('/')), true).map_err(io_err(format!("creating working directory {cwd}")))?;
        if cwd != "/" {
            let _ = std::os::unix::fs::lchown(&cwd_dir, Some(user.uid), Some(user.gid));
        }

        for m in &req.mounts {
            if !m.container_path.starts_with('/') {
                return Err(RuntimeError::InvalidArgument(format!("mount container path {:?} must be absolute", m.container_path)));
            }
            if !Path::new(&m.host_path).exists() {
                return Err(RuntimeError::InvalidArgument(format!("mount host path {:?} does not exist", m.host_path)));
            }
        }
        let devices = req.devices.iter().map(|(c, h, p)| device(c, h, p)).collect::<Result<Vec<_>>>()?;
        let caps = spec::capabilities(req.privileged, &req.caps_add, &req.caps_drop).map_err(RuntimeError::InvalidArgument)?;
        let ambient = req.caps_ambient.iter().map(|c| spec::normalize_cap(c).ok_or_else(|| RuntimeError::InvalidArgument(format!("unknown capability {c:?}")))).collect::<Result<Vec<_>>>()?;

        let ns = self.ns_dir(&pod.id);
        let pid_ns = match req.pid {
            NsMode::Node => None,
            NsMode::Pod if pod.pid == NsMode::Pod => Some(Some(ns.join("pid"))),
            NsMode::Pod | NsMode::Container => Some(None),
            NsMode::Target => {
                let target = self.find_container_id(&req.target_id)?.and_then(|t| self.view(&t)).ok_or_else(|| RuntimeError::NotFound(format!("target container {:?} not found", req.target_id)))?;
                if target.state != ContainerState::Running || !process_alive(target.pid) {
                    return Err(RuntimeError::FailedPrecondition(format!("target container {} is not running", target.record.id)));
                }
                Some(Some(PathBuf::from(format!("/proc/{}/ns/pid", target.pid))))
            }
        };
        let namespaces = Namespaces {
            network: (pod.network != NsMode::Node).then(|| Some(ns.join("net"))),
            ipc: (pod.ipc != NsMode::Node).then(|| Some(ns.join("ipc"))),
            uts: (pod.network != NsMode::Node).then(|| Some(ns.join("uts"))),
            pid: pid_ns,
        };
        let mut annotations = req.annotations.clone();
        let record = self.view(id).map(|v| v.record).ok_or_else(|| RuntimeError::NotFound(format!("container {id} vanished")))?;
        if !record.log_path.is_empty() {
            if let Some(parent) = Path::new(&record.log_path).parent() {
                std::fs::create_dir_all(parent).map_err(io_err(format!("creating log directory {}", parent.display())))?;
            }
            annotations.insert(proto::annotations::LOG_PATH.into(), record.log_path.clone());
        }
        if req.stdin {
            annotations.insert(proto::annotations::STDIN.into(), "true".into());
        }
        if req.stdin_once {
            annotations.insert(proto::annotations::STDIN_ONCE.into(), "true".into());
        }
        let shm = if pod.ipc == NsMode::Node { PathBuf::from("/dev/shm") } else { self.shm_dir(&pod.id) };
        let s = ContainerSpec {
            rootfs: rootfs.clone(),
            readonly_rootfs: req.readonly_rootfs,
            args,
            env,
            cwd,
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids,
            caps,
            ambient,
            no_new_privs: req.no_new_privs,
            tty: req.tty,
            hostname: pod.hostname.clone(),
            privileged: req.privileged,
            namespaces,
            cgroup: format!("{}/{}", pod.cgroup.trim_end_matches('/'), id),
            resources: req.resources.clone(),
            mounts: req.mounts.clone(),
            pod_files: self.pod_files_dir(&pod.id),
            shm,
            devices,
            masked_paths: if req.masked_paths.is_empty() { spec::DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect() } else { req.masked_paths.clone() },
            readonly_paths: if req.readonly_paths.is_empty() { spec::DEFAULT_READONLY_PATHS.iter().map(|s| s.to_string()).collect() } else { req.readonly_paths.clone() },
            sysctls: pod.sysctls.clone(),
            annotations,
        };
        let config_json = spec::container_spec(&s);
        std::fs::write(bundle.join("config.json"), config_json.to_string()).map_err(io_err("writing config.json"))?;
        let pid = shim_client::launch(&self.cfg.shim, "create", &bundle, id).await?;
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
            // The shim would have removed the container's cgroup on Shutdown.
            let pod = self.view(id).and_then(|v| self.pod(&v.record.pod_id));
            if let (Some(cgroups), Some(pod)) = (&self.cgroups, pod) {
                let cgroup = format!("{}/{}", pod.cgroup.trim_end_matches('/'), id);
                if let Err(e) = cgroups.remove(&cgroup) {
                    warn!(container = %id, error = %e, "removing the cgroup of a container whose shim is gone");
                }
            }
        }
        let rootfs = self.rootfs_dir(id);
        sys::unmount(&rootfs).map_err(io_err(format!("unmounting {}", rootfs.display())))?;
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
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = sys::unmount(&rootfs) {
                debug!(container = %id, error = %e, "unmounting the rootfs of an exited container");
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

/// A host device node for the container.
fn device(container_path: &str, host_path: &str, permissions: &str) -> Result<Device> {
    let meta = std::fs::metadata(host_path).map_err(|e| RuntimeError::InvalidArgument(format!("device {host_path:?}: {e}")))?;
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        return Err(RuntimeError::InvalidArgument(format!("{host_path:?} is not a device node")));
    };
    let rdev = meta.rdev();
    let permissions = if permissions.is_empty() { "rwm".to_string() } else { permissions.to_string() };
    if !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(RuntimeError::InvalidArgument(format!("device permissions {permissions:?} must be made of r, w and m")));
    }
    Ok(Device {
        container_path: if container_path.is_empty() { host_path.to_string() } else { container_path.to_string() },
        kind,
        major: libc::major(rdev) as i64,
        minor: libc::minor(rdev) as i64,
        mode: meta.mode() & 0o7777,
        permissions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal(""), Some(libc::SIGTERM));
        assert_eq!(parse_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("int"), Some(libc::SIGINT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("99"), None);
    }
}
