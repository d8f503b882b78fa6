//! CreateContainer's rules, as one pure step: the CRI request, the image's config and the pod
//! resolved into everything the container's config.json is made of, with containerd's defaults
//! for every field the request leaves unset. What it needs of the host (device nodes) comes
//! through [`Host`], and the image's users through [`UserDb`], so every rule is tested without
//! root. Errors are InvalidArgument messages naming the field.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::container::{CreateContainer, ImageMountRecord, MountRecord, Profile};
use super::pod::{NsMode, PodRecord};
pub use super::spec::DeviceNode;
use super::spec::{self, BindMount, ContainerSpec, Device, Namespaces, Propagation};
use super::user::{self, User, UserDb, UserRequest};
use super::{signal, validate};
use crate::image::manifest::ContainerConfig as ImageDefaults;

/// `PATH` when neither the image nor the request sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What resolution reads of the host.
pub trait Host: Sync {
    /// The device node at `path` (following symlinks); an error if it is none.
    fn device(&self, path: &str) -> io::Result<DeviceNode>;
    /// Every device node of the host's /dev, by path, for privileged containers.
    fn host_devices(&self) -> io::Result<Vec<(String, DeviceNode)>>;
}

/// An image a mount asks for (image volume), found by the caller among the pulled images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageVolumeSource {
    /// The image id (config digest).
    pub id: String,
    /// The layer directories, top first.
    pub layers: Vec<PathBuf>,
}

/// An image volume to mount on the host before the container is created: its layers, read-only,
/// at `target`; the container's bind mount (`spec.mounts[mount]`) then takes `sub_path` of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageVolumePlan {
    pub mount: usize,
    pub target: PathBuf,
    pub layers: Vec<PathBuf>,
    pub sub_path: String,
}

/// Where the container's pod and bundle files are.
#[derive(Debug, Clone)]
pub struct Paths {
    pub rootfs: PathBuf,
    /// The pod's pinned namespaces.
    pub ns_dir: PathBuf,
    /// The pod's hosts, resolv.conf and hostname.
    pub pod_files: PathBuf,
    /// The pod's /dev/shm.
    pub pod_shm: PathBuf,
    /// Where image volumes are mounted on the host (`<n>` below it per volume).
    pub volumes: PathBuf,
}

/// Everything resolution needs.
pub struct Inputs<'a> {
    pub id: &'a str,
    pub req: &'a CreateContainer,
    pub image: &'a ImageDefaults,
    pub pod: &'a PodRecord,
    pub users: &'a UserDb,
    pub host: &'a dyn Host,
    pub paths: &'a Paths,
    /// The images of the request's image mounts, by mount index.
    pub image_volumes: &'a HashMap<usize, ImageVolumeSource>,
    /// Host pid of the target container (pid namespace mode TARGET).
    pub target_pid: Option<u32>,
    /// The container's log file on the host ("" = none).
    pub log_path: &'a str,
    /// Whether recursive read-only mounts can be made here.
    pub rro_supported: bool,
    /// The cgroup hierarchy in use, handed to the shim (None: no cgroups).
    pub cgroup_version: Option<common::cgroup::Version>,
    /// Who makes the container's cgroup (its name in the bundle says which).
    pub cgroup_driver: super::cgroup::Driver,
}

/// What CreateContainer then does and records.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub spec: ContainerSpec,
    pub user: User,
    /// The working directory to create in the rootfs (owned by the user) unless it is "/".
    pub cwd: String,
    /// The signal StopContainer sends first, and its name for ContainerStatus.
    pub stop_signal: i32,
    pub stop_signal_name: String,
    /// The request's mounts as ContainerStatus reports them.
    pub mounts: Vec<MountRecord>,
    pub image_volumes: Vec<ImageVolumePlan>,
}

type Result<T> = std::result::Result<T, String>;

pub fn resolve(i: &Inputs) -> Result<Resolved> {
    let req = i.req;
    check_security(req, i.pod)?;
    if !req.cdi_devices.is_empty() {
        return Err("cdi_devices: CDI devices are not supported by corral".into());
    }
    validate::resources(&req.resources).map_err(|e| format!("linux.{e}"))?;
    validate::resources_on(&req.resources, i.cgroup_version).map_err(|e| format!("linux.{e}"))?;
    let args = args(req, i.image)?;
    let user_req = UserRequest {
        run_as_user: req.run_as_user,
        run_as_group: req.run_as_group,
        run_as_username: req.run_as_username.clone(),
        supplemental_groups: req.supplemental_groups.clone(),
        policy: req.supplemental_groups_policy,
    };
    let user = user::resolve(i.users, &user_req, i.image.user.as_deref().unwrap_or(""))
        .map_err(|e| format!("security context: {e}"))?;
    let mut env = env(req, i.image, &i.pod.hostname);
    // runc's default: HOME of the user's passwd entry, unless the image or request sets one.
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let cwd = working_dir(req, i.image)?;
    let (stop_signal, stop_signal_name) = stop_signal(req, i.image)?;
    let (mounts, records, image_volumes) = mounts(i)?;
    let mut devices = Vec::new();
    if req.privileged {
        // All of the host's devices, as containerd gives privileged containers.
        let host = i.host.host_devices().map_err(|e| format!("privileged: listing the host's devices: {e}"))?;
        devices.extend(host.into_iter().map(|(path, node)| Device {
            container_path: path,
            node,
            permissions: "rwm".into(),
        }));
    }
    for (n, d) in req.devices.iter().enumerate() {
        devices.push(device(i.host, n, d)?);
    }
    let caps =
        spec::capabilities(req.privileged, &req.caps_add, &req.caps_drop).map_err(|e| format!("capabilities: {e}"))?;
    let ambient = req
        .caps_ambient
        .iter()
        .map(|c| common::caps::normalize(c).ok_or_else(|| format!("capabilities: unknown ambient capability {c:?}")))
        .collect::<Result<Vec<_>>>()?;
    let namespaces = namespaces(i)?;
    let mut annotations = req.annotations.clone();
    if !i.log_path.is_empty() {
        annotations.insert(proto::annotations::LOG_PATH.into(), i.log_path.to_string());
    }
    if req.stdin {
        annotations.insert(proto::annotations::STDIN.into(), "true".into());
    }
    if req.stdin_once {
        annotations.insert(proto::annotations::STDIN_ONCE.into(), "true".into());
    }
    if let Some(v) = i.cgroup_version {
        annotations.insert(common::cgroup::VERSION_ANNOTATION.into(), v.as_str().into());
    }
    let shm = if i.pod.ipc == NsMode::Node { PathBuf::from("/dev/shm") } else { i.paths.pod_shm.clone() };
    let spec = ContainerSpec {
        rootfs: i.paths.rootfs.clone(),
        readonly_rootfs: req.readonly_rootfs,
        args,
        env,
        cwd: cwd.clone(),
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.additional_gids.clone(),
        caps,
        ambient,
        no_new_privs: req.no_new_privs,
        tty: req.tty,
        hostname: i.pod.hostname.clone(),
        privileged: req.privileged,
        namespaces,
        cgroup_namespace: i.cgroup_version == Some(common::cgroup::Version::V2) && !req.privileged,
        cgroup: super::cgroup::child_cgroup(i.cgroup_driver, &i.pod.cgroup, i.id),
        resources: resources(&req.resources),
        mounts,
        pod_files: i.paths.pod_files.clone(),
        shm,
        devices,
        // As given: the kubelet sends the default lists for procMount Default and empty ones
        // for Unmasked, and containerd masks nothing when the lists are empty.
        masked_paths: req.masked_paths.clone(),
        readonly_paths: req.readonly_paths.clone(),
        sysctls: i.pod.sysctls.clone(),
        annotations,
    };
    Ok(Resolved { spec, user, cwd, stop_signal, stop_signal_name, mounts: records, image_volumes })
}

fn check_security(req: &CreateContainer, pod: &PodRecord) -> Result<()> {
    if req.seccomp != Profile::Unconfined {
        return Err("security context: seccomp profiles other than Unconfined are not supported by corral yet; set the seccomp profile to Unconfined".into());
    }
    if req.apparmor != Profile::Unconfined {
        return Err("security context: AppArmor profiles other than unconfined are not supported by corral yet".into());
    }
    if req.privileged && !pod.privileged {
        return Err("security context: a privileged container needs a privileged pod sandbox".into());
    }
    Ok(())
}

/// The request's limits, with containerd's default of no swap beyond the memory limit.
fn resources(r: &spec::Resources) -> spec::Resources {
    let mut r = r.clone();
    if r.memory_limit > 0 && r.memory_swap_limit == 0 {
        r.memory_swap_limit = r.memory_limit;
    }
    r
}

/// Docker's rules: `command` replaces the image's Entrypoint and Cmd; `args` alone replace Cmd.
fn args(req: &CreateContainer, image: &ImageDefaults) -> Result<Vec<String>> {
    let mut command = req.command.clone();
    let mut args = req.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone().unwrap_or_default();
        }
        // An Entrypoint of [""] is how an image resets its base's Entrypoint.
        command = image.entrypoint.clone().filter(|e| e.as_slice() != [String::new()]).unwrap_or_default();
    }
    let all: Vec<String> = command.into_iter().chain(args).collect();
    if all.is_empty() {
        return Err(
            "no command specified: the image has no Entrypoint or Cmd and the container config sets no command".into(),
        );
    }
    Ok(all)
}

/// PATH, TERM for a terminal, HOSTNAME, then the image's and the request's variables, each
/// replacing an earlier one of the same name (containerd's order).
fn env(req: &CreateContainer, image: &ImageDefaults, hostname: &str) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or("").to_string();
        match env.iter_mut().find(|e| e.split('=').next() == Some(key.as_str())) {
            Some(existing) => *existing = kv,
            None => env.push(kv),
        }
    };
    set(DEFAULT_PATH.into());
    if req.tty {
        set("TERM=xterm".into());
    }
    set(format!("HOSTNAME={hostname}"));
    for e in image.env.clone().unwrap_or_default() {
        set(e);
    }
    for (k, v) in &req.envs {
        set(format!("{k}={v}"));
    }
    env
}

fn working_dir(req: &CreateContainer, image: &ImageDefaults) -> Result<String> {
    let cwd = if !req.working_dir.is_empty() {
        req.working_dir.clone()
    } else {
        image.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        return Err(format!("working_dir {cwd:?} must be an absolute path"));
    }
    Ok(cwd)
}

/// The request's stop signal, else the image's STOPSIGNAL, else SIGTERM.
fn stop_signal(req: &CreateContainer, image: &ImageDefaults) -> Result<(i32, String)> {
    if let Some(name) = &req.stop_signal {
        let n = signal::parse(name).ok_or_else(|| format!("stop_signal {name:?} is not a signal"))?;
        return Ok((n, signal::canonical(name).unwrap_or_else(|| name.clone())));
    }
    // An image with a STOPSIGNAL corral cannot read stops with SIGTERM, as it always did.
    if let Some(name) = image.stop_signal.as_deref().filter(|s| !s.is_empty()) {
        if let (Some(n), Some(canonical)) = (signal::parse(name), signal::canonical(name)) {
            return Ok((n, canonical));
        }
    }
    Ok((libc::SIGTERM, "SIGTERM".into()))
}

/// Whether a path has no `..` and is not absolute: it stays inside whatever it is joined to.
fn is_contained(p: &str) -> bool {
    Path::new(p).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The request's mounts, checked: bind mounts and image volumes, as the spec takes them and as
/// ContainerStatus reports them.
fn mounts(i: &Inputs) -> Result<(Vec<BindMount>, Vec<MountRecord>, Vec<ImageVolumePlan>)> {
    let mut binds = Vec::new();
    let mut records = Vec::new();
    let mut volumes = Vec::new();
    for (n, m) in i.req.mounts.iter().enumerate() {
        let field = format!("mounts[{n}]");
        if !m.container_path.starts_with('/') {
            return Err(format!("{field}.container_path {:?} must be an absolute path", m.container_path));
        }
        if m.idmapped {
            return Err(format!("{field}: uid/gid mappings (idmapped mounts) are not supported by corral"));
        }
        if m.recursive_readonly {
            if !m.readonly {
                return Err(format!("{field}: recursive_read_only needs readonly: a recursive read-only mount conflicts with a read-write one"));
            }
            if !i.rro_supported {
                return Err(format!("{field}: RROUnsupported: this kernel cannot make recursive read-only mounts (mount_setattr needs Linux 5.12)"));
            }
            if m.propagation != Propagation::Private {
                return Err(format!("{field}: recursive_read_only needs private propagation, got {:?}", m.propagation));
            }
        }
        let (host_path, image) = match &m.image {
            Some(img) => {
                if !m.host_path.is_empty() {
                    return Err(format!("{field}: an image mount takes no host_path (got {:?})", m.host_path));
                }
                if !m.readonly {
                    return Err(format!("{field}: an image mount must be readonly"));
                }
                if !is_contained(&img.sub_path) {
                    return Err(format!(
                        "{field}.image_sub_path {:?} must be a relative path without '..'",
                        img.sub_path
                    ));
                }
                let source = i
                    .image_volumes
                    .get(&n)
                    .ok_or_else(|| format!("{field}.image: image {:?} is not resolved", img.image))?;
                let target = i.paths.volumes.join(n.to_string());
                let host_path = if img.sub_path.is_empty() { target.clone() } else { target.join(&img.sub_path) };
                volumes.push(ImageVolumePlan {
                    mount: binds.len(),
                    target,
                    layers: source.layers.clone(),
                    sub_path: img.sub_path.clone(),
                });
                let record = ImageMountRecord {
                    image: img.image.clone(),
                    user_specified_image: img.user_specified_image.clone(),
                    image_ref: source.id.clone(),
                    sub_path: img.sub_path.clone(),
                };
                (host_path.display().to_string(), Some(record))
            }
            None => {
                if !m.image_sub_path.is_empty() {
                    return Err(format!("{field}.image_sub_path is set on a mount without an image"));
                }
                if !m.host_path.starts_with('/') {
                    return Err(format!("{field}.host_path {:?} must be an absolute path", m.host_path));
                }
                (m.host_path.clone(), None)
            }
        };
        binds.push(BindMount {
            container_path: m.container_path.clone(),
            host_path: host_path.clone(),
            readonly: m.readonly,
            recursive_readonly: m.recursive_readonly,
            propagation: m.propagation,
        });
        records.push(MountRecord {
            container_path: m.container_path.clone(),
            host_path,
            readonly: m.readonly,
            recursive_readonly: m.recursive_readonly,
            propagation: m.propagation.code(),
            image,
        });
    }
    Ok((binds, records, volumes))
}

fn device(host: &dyn Host, n: usize, d: &(String, String, String)) -> Result<Device> {
    let (container_path, host_path, permissions) = d;
    let field = format!("devices[{n}]");
    if host_path.is_empty() {
        return Err(format!("{field}.host_path is required"));
    }
    let node = host.device(host_path).map_err(|e| format!("{field}.host_path {host_path:?}: {e}"))?;
    let permissions = if permissions.is_empty() { "rwm".to_string() } else { permissions.clone() };
    if !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(format!("{field}.permissions {permissions:?} must be made of r, w and m"));
    }
    let container_path = if container_path.is_empty() { host_path.clone() } else { container_path.clone() };
    if !container_path.starts_with('/') {
        return Err(format!("{field}.container_path {container_path:?} must be an absolute path"));
    }
    Ok(Device { container_path, node, permissions })
}

/// The pod's network, IPC and UTS namespaces; the PID namespace as the container asks.
fn namespaces(i: &Inputs) -> Result<Namespaces> {
    let ns = &i.paths.ns_dir;
    let pod = i.pod;
    let pid = match i.req.pid {
        NsMode::Node => None,
        NsMode::Pod if pod.pid == NsMode::Pod => Some(Some(ns.join("pid"))),
        NsMode::Pod | NsMode::Container => Some(None),
        NsMode::Target => {
            let pid = i.target_pid.ok_or_else(|| {
                format!("namespace_options.target_id {:?}: no running target container", i.req.target_id)
            })?;
            Some(Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))))
        }
    };
    Ok(Namespaces {
        network: (pod.network != NsMode::Node).then(|| Some(ns.join("net"))),
        ipc: (pod.ipc != NsMode::Node).then(|| Some(ns.join("ipc"))),
        uts: (pod.network != NsMode::Node).then(|| Some(ns.join("uts"))),
        pid,
    })
}

/// Resolution of `req` in a fixed pod with a small image, with no host behind it (for the
/// fuzz targets): whatever the request, an answer and no panic.
#[cfg(any(test, feature = "fuzzing"))]
pub fn resolve_detached(req: &CreateContainer) -> Result<()> {
    struct NoHost;
    impl Host for NoHost {
        fn device(&self, _path: &str) -> io::Result<DeviceNode> {
            Ok(DeviceNode { kind: 'c', major: 1, minor: 3, mode: 0o666, uid: 0, gid: 0 })
        }
        fn host_devices(&self) -> io::Result<Vec<(String, DeviceNode)>> {
            Ok(vec![("/dev/null".into(), DeviceNode { kind: 'c', major: 1, minor: 3, mode: 0o666, uid: 0, gid: 0 })])
        }
    }
    let users = UserDb::parse(
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        "root:x:0:\napp:x:1000:\nextra:x:50000:app\n",
    );
    let image = ImageDefaults {
        entrypoint: Some(vec!["/bin/sh".into()]),
        cmd: Some(vec!["-c".into(), "true".into()]),
        ..Default::default()
    };
    let pod = PodRecord {
        id: "p".into(),
        hostname: "h".into(),
        cgroup: "/corral/p".into(),
        privileged: true,
        ..Default::default()
    };
    let paths = Paths {
        rootfs: "/b/rootfs".into(),
        ns_dir: "/s/ns".into(),
        pod_files: "/s/files".into(),
        pod_shm: "/s/shm".into(),
        volumes: "/b/volumes".into(),
    };
    let volumes: HashMap<usize, ImageVolumeSource> = req
        .mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.image.is_some())
        .map(|(n, _)| (n, ImageVolumeSource { id: "sha256:0".into(), layers: vec!["/l/1".into()] }))
        .collect();
    let inputs = Inputs {
        id: "c",
        req,
        image: &image,
        pod: &pod,
        users: &users,
        host: &NoHost,
        paths: &paths,
        image_volumes: &volumes,
        target_pid: Some(1),
        log_path: "",
        rro_supported: true,
        cgroup_version: None,
        cgroup_driver: super::cgroup::Driver::Cgroupfs,
    };
    let resolved = resolve(&inputs)?;
    spec::container_spec(&resolved.spec).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::container::{ImageMount, MountRequest};
    use crate::runtime::user::GroupsPolicy;

    struct FakeHost;

    impl Host for FakeHost {
        fn device(&self, path: &str) -> io::Result<DeviceNode> {
            match path {
                "/dev/fuse" => Ok(DeviceNode { kind: 'c', major: 10, minor: 229, mode: 0o666, uid: 0, gid: 0 }),
                "/dev/loop0" => Ok(DeviceNode { kind: 'b', major: 7, minor: 0, mode: 0o660, uid: 0, gid: 6 }),
                _ => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            }
        }

        fn host_devices(&self) -> io::Result<Vec<(String, DeviceNode)>> {
            Ok(["/dev/fuse", "/dev/loop0"].iter().map(|p| (p.to_string(), self.device(p).unwrap())).collect())
        }
    }

    const PASSWD: &str = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:50000:app\n";

    /// A request with only what the CRI requires: metadata and image.
    fn minimal() -> CreateContainer {
        CreateContainer { pod_id: "p".into(), name: "c".into(), image: "busybox".into(), ..Default::default() }
    }

    fn image() -> ImageDefaults {
        ImageDefaults {
            cmd: Some(vec!["sh".into()]),
            env: Some(vec!["PATH=/bin".into(), "IMG=1".into()]),
            ..Default::default()
        }
    }

    fn pod() -> PodRecord {
        PodRecord {
            id: "p".into(),
            name: "pod".into(),
            hostname: "node-1".into(),
            cgroup: "/corral/pod-p".into(),
            network: NsMode::Pod,
            pid: NsMode::Container,
            ipc: NsMode::Pod,
            ..Default::default()
        }
    }

    fn paths() -> Paths {
        Paths {
            rootfs: "/b/rootfs".into(),
            ns_dir: "/s/ns".into(),
            pod_files: "/s/files".into(),
            pod_shm: "/s/shm".into(),
            volumes: "/b/volumes".into(),
        }
    }

    /// Resolves `req` against `image` and `pod` with the test's users and host.
    fn run(req: &CreateContainer, image: &ImageDefaults, pod: &PodRecord) -> Result<Resolved> {
        run_with(req, image, pod, &HashMap::new(), None)
    }

    fn run_with(
        req: &CreateContainer,
        image: &ImageDefaults,
        pod: &PodRecord,
        volumes: &HashMap<usize, ImageVolumeSource>,
        target_pid: Option<u32>,
    ) -> Result<Resolved> {
        run_on(req, image, pod, volumes, target_pid, common::cgroup::Version::V1)
    }

    fn run_on(
        req: &CreateContainer,
        image: &ImageDefaults,
        pod: &PodRecord,
        volumes: &HashMap<usize, ImageVolumeSource>,
        target_pid: Option<u32>,
        version: common::cgroup::Version,
    ) -> Result<Resolved> {
        let users = UserDb::parse(PASSWD, GROUP);
        let paths = paths();
        let inputs = Inputs {
            id: "cid",
            req,
            image,
            pod,
            users: &users,
            host: &FakeHost,
            paths: &paths,
            image_volumes: volumes,
            target_pid,
            log_path: "",
            rro_supported: true,
            cgroup_version: Some(version),
            cgroup_driver: super::super::cgroup::Driver::Cgroupfs,
        };
        resolve(&inputs)
    }

    fn err(req: &CreateContainer) -> String {
        run(req, &image(), &pod()).unwrap_err()
    }

    #[test]
    fn a_minimal_request_gets_containerd_defaults() {
        let r = run(&minimal(), &image(), &pod()).unwrap();
        let s = &r.spec;
        assert_eq!(s.args, ["sh"]);
        assert_eq!(s.env, ["PATH=/bin", "HOSTNAME=node-1", "IMG=1", "HOME=/root"]);
        assert_eq!((s.cwd.as_str(), s.uid, s.gid, s.additional_gids.as_slice()), ("/", 0, 0, &[0u32][..]));
        assert_eq!(s.caps, common::caps::DEFAULT.iter().map(|c| c.to_string()).collect::<Vec<_>>());
        assert!(s.ambient.is_empty() && !s.no_new_privs && !s.privileged && !s.readonly_rootfs && !s.tty);
        // No lists, nothing masked (the kubelet's procMount Unmasked; containerd does the same).
        assert!(s.masked_paths.is_empty() && s.readonly_paths.is_empty());
        assert_eq!(s.cgroup, "/corral/pod-p/cid");
        assert_eq!(s.hostname, "node-1");
        assert!(s.mounts.is_empty() && s.devices.is_empty() && r.image_volumes.is_empty() && r.mounts.is_empty());
        assert_eq!(s.shm, PathBuf::from("/s/shm"));
        assert_eq!(s.namespaces.network, Some(Some(PathBuf::from("/s/ns/net"))));
        assert_eq!(s.namespaces.uts, Some(Some(PathBuf::from("/s/ns/uts"))));
        assert_eq!(s.namespaces.ipc, Some(Some(PathBuf::from("/s/ns/ipc"))));
        // The pod has no shared PID namespace: the container gets its own.
        assert_eq!(s.namespaces.pid, Some(None));
        assert_eq!((r.stop_signal, r.stop_signal_name.as_str()), (libc::SIGTERM, "SIGTERM"));
        // The cgroup version, decided by corrald for the shim, is the only annotation.
        assert_eq!(s.annotations, HashMap::from([(common::cgroup::VERSION_ANNOTATION.to_string(), "1".to_string())]));
    }

    #[test]
    fn cgroup_v2_gives_unprivileged_containers_a_cgroup_namespace_and_unified_keys() {
        use common::cgroup::Version;
        let on = |req: &CreateContainer, v| run_on(req, &image(), &pod(), &HashMap::new(), None, v);
        assert!(!on(&minimal(), Version::V1).unwrap().spec.cgroup_namespace);
        assert!(on(&minimal(), Version::V2).unwrap().spec.cgroup_namespace);
        let privileged = CreateContainer { privileged: true, ..minimal() };
        let mut privileged_pod = pod();
        privileged_pod.privileged = true;
        let r = run_on(&privileged, &image(), &privileged_pod, &HashMap::new(), None, Version::V2).unwrap();
        assert!(!r.spec.cgroup_namespace, "a privileged container sees the host's cgroups, as with containerd");
        let unified = CreateContainer {
            resources: spec::Resources {
                unified: [("memory.high".to_string(), "64M".to_string())].into(),
                ..Default::default()
            },
            ..minimal()
        };
        assert_eq!(on(&unified, Version::V2).unwrap().spec.resources.unified["memory.high"], "64M");
        assert!(on(&unified, Version::V1)
            .unwrap_err()
            .contains("linux.resources.unified: memory.high needs cgroup v2"));
    }

    #[test]
    fn command_and_args_merge_with_entrypoint_and_cmd() {
        let img =
            ImageDefaults { entrypoint: Some(vec!["/ep".into()]), cmd: Some(vec!["c1".into()]), ..Default::default() };
        let with = |command: &[&str], args: &[&str]| {
            let req = CreateContainer {
                command: command.iter().map(|s| s.to_string()).collect(),
                args: args.iter().map(|s| s.to_string()).collect(),
                ..minimal()
            };
            run(&req, &img, &pod()).map(|r| r.spec.args)
        };
        assert_eq!(with(&[], &[]).unwrap(), ["/ep", "c1"]);
        assert_eq!(with(&[], &["a"]).unwrap(), ["/ep", "a"]);
        assert_eq!(with(&["x"], &[]).unwrap(), ["x"]);
        assert_eq!(with(&["x"], &["a"]).unwrap(), ["x", "a"]);
        let reset =
            ImageDefaults { entrypoint: Some(vec![String::new()]), cmd: Some(vec!["c1".into()]), ..Default::default() };
        assert_eq!(run(&minimal(), &reset, &pod()).unwrap().spec.args, ["c1"]);
        let e = run(&minimal(), &ImageDefaults::default(), &pod()).unwrap_err();
        assert!(e.contains("no command"), "{e}");
    }

    #[test]
    fn env_order_and_overrides() {
        let req = CreateContainer {
            tty: true,
            envs: vec![("IMG".into(), "2".into()), ("NEW".into(), "x".into())],
            ..minimal()
        };
        let r = run(&req, &image(), &pod()).unwrap();
        assert_eq!(r.spec.env, ["PATH=/bin", "TERM=xterm", "HOSTNAME=node-1", "IMG=2", "NEW=x", "HOME=/root"]);
        let bare =
            run(&minimal(), &ImageDefaults { cmd: Some(vec!["sh".into()]), ..Default::default() }, &pod()).unwrap();
        assert_eq!(bare.spec.env, [DEFAULT_PATH.to_string(), "HOSTNAME=node-1".into(), "HOME=/root".into()]);
        // HOME follows the user, and a given HOME wins.
        let app = run(&CreateContainer { run_as_user: Some(1000), ..minimal() }, &image(), &pod()).unwrap();
        assert_eq!(app.spec.env.last().map(String::as_str), Some("HOME=/home/app"));
        let unknown = run(&CreateContainer { run_as_user: Some(4242), ..minimal() }, &image(), &pod()).unwrap();
        assert_eq!(unknown.spec.env.last().map(String::as_str), Some("HOME=/"));
        let given =
            run(&CreateContainer { envs: vec![("HOME".into(), "/data".into())], ..minimal() }, &image(), &pod())
                .unwrap();
        assert_eq!(given.spec.env.iter().filter(|e| e.starts_with("HOME=")).collect::<Vec<_>>(), ["HOME=/data"]);
    }

    #[test]
    fn working_dir_and_stop_signal() {
        let img = ImageDefaults { working_dir: Some("/srv".into()), stop_signal: Some("SIGQUIT".into()), ..image() };
        let r = run(&minimal(), &img, &pod()).unwrap();
        assert_eq!(r.cwd, "/srv");
        assert_eq!((r.stop_signal, r.stop_signal_name.as_str()), (libc::SIGQUIT, "SIGQUIT"));
        let req = CreateContainer { working_dir: "/w".into(), stop_signal: Some("SIGRTMIN+1".into()), ..minimal() };
        let r = run(&req, &img, &pod()).unwrap();
        assert_eq!((r.cwd.as_str(), r.stop_signal, r.stop_signal_name.as_str()), ("/w", 35, "SIGRTMIN+1"));
        assert!(err(&CreateContainer { working_dir: "rel".into(), ..minimal() }).contains("working_dir"));
        assert!(err(&CreateContainer { stop_signal: Some("SIGNOPE".into()), ..minimal() }).contains("stop_signal"));
        // An image signal corral cannot read: SIGTERM, as before.
        let odd = ImageDefaults { stop_signal: Some("SIGWHATEVER".into()), ..image() };
        assert_eq!(run(&minimal(), &odd, &pod()).unwrap().stop_signal, libc::SIGTERM);
    }

    #[test]
    fn users_and_groups() {
        let req = CreateContainer { run_as_user: Some(1000), supplemental_groups: vec![7], ..minimal() };
        let r = run(&req, &image(), &pod()).unwrap();
        assert_eq!((r.user.uid, r.user.gid, r.user.additional_gids.as_slice()), (1000, 1000, &[7, 1000, 50000][..]));
        assert_eq!(r.spec.additional_gids, [7, 1000, 50000]);
        let strict = CreateContainer { supplemental_groups_policy: GroupsPolicy::Strict, ..req };
        assert_eq!(run(&strict, &image(), &pod()).unwrap().user.additional_gids, [7, 1000]);
        let e = err(&CreateContainer { run_as_group: Some(5), ..minimal() });
        assert!(e.contains("run_as_group") && e.contains("run_as_user"), "{e}");
        // The image's USER counts as no user for a run_as_group.
        let img = ImageDefaults { user: Some("app".into()), ..image() };
        assert!(run(&CreateContainer { run_as_group: Some(5), ..minimal() }, &img, &pod()).is_err());
        assert_eq!(run(&minimal(), &img, &pod()).unwrap().user.uid, 1000);
    }

    fn mount(container: &str, host: &str) -> MountRequest {
        MountRequest { container_path: container.into(), host_path: host.into(), ..Default::default() }
    }

    #[test]
    fn host_mounts_and_recursive_read_only() {
        let ro = MountRequest { readonly: true, recursive_readonly: true, ..mount("/data", "/srv/data") };
        let r = run(&CreateContainer { mounts: vec![ro.clone()], ..minimal() }, &image(), &pod()).unwrap();
        assert_eq!(
            r.spec.mounts,
            vec![BindMount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                recursive_readonly: true,
                propagation: Propagation::Private
            }]
        );
        assert_eq!(r.mounts[0].host_path, "/srv/data");
        assert!(r.mounts[0].recursive_readonly && r.mounts[0].image.is_none());
        let cases = [
            (mount("rel", "/h"), "mounts[0].container_path"),
            (mount("/c", "rel"), "mounts[0].host_path"),
            (MountRequest { recursive_readonly: true, ..mount("/c", "/h") }, "needs readonly"),
            (
                MountRequest {
                    readonly: true,
                    recursive_readonly: true,
                    propagation: Propagation::HostToContainer,
                    ..mount("/c", "/h")
                },
                "private propagation",
            ),
            (MountRequest { idmapped: true, ..mount("/c", "/h") }, "idmapped"),
            (MountRequest { image_sub_path: "x".into(), ..mount("/c", "/h") }, "without an image"),
        ];
        for (m, want) in cases {
            let e = err(&CreateContainer { mounts: vec![m.clone()], ..minimal() });
            assert!(e.contains(want), "{m:?}: {e}");
        }
        // Without mount_setattr there is no rro.
        let users = UserDb::parse(PASSWD, GROUP);
        let (img, pod, paths, none) = (image(), pod(), paths(), HashMap::new());
        let req = CreateContainer { mounts: vec![ro], ..minimal() };
        let inputs = Inputs {
            id: "cid",
            req: &req,
            image: &img,
            pod: &pod,
            users: &users,
            host: &FakeHost,
            paths: &paths,
            image_volumes: &none,
            target_pid: None,
            log_path: "",
            rro_supported: false,
            cgroup_version: None,
            cgroup_driver: super::super::cgroup::Driver::Cgroupfs,
        };
        assert!(resolve(&inputs).unwrap_err().contains("RROUnsupported"));
    }

    #[test]
    fn image_volumes() {
        let layers = vec![PathBuf::from("/snap/2/fs"), PathBuf::from("/snap/1/fs")];
        let volumes = HashMap::from([(1, ImageVolumeSource { id: "sha256:abc".into(), layers: layers.clone() })]);
        let image_mount = |sub: &str| MountRequest {
            container_path: "/vol".into(),
            readonly: true,
            image: Some(ImageMount {
                image: "reg/img:1".into(),
                user_specified_image: "img:1".into(),
                sub_path: sub.into(),
            }),
            ..Default::default()
        };
        let req = CreateContainer { mounts: vec![mount("/data", "/srv"), image_mount("etc")], ..minimal() };
        let r = run_with(&req, &image(), &pod(), &volumes, None).unwrap();
        assert_eq!(
            r.image_volumes,
            vec![ImageVolumePlan { mount: 1, target: "/b/volumes/1".into(), layers, sub_path: "etc".into() }]
        );
        assert_eq!(r.spec.mounts[1].host_path, "/b/volumes/1/etc");
        assert!(r.spec.mounts[1].readonly);
        let rec = r.mounts[1].image.as_ref().unwrap();
        assert_eq!(
            (rec.image.as_str(), rec.image_ref.as_str(), rec.sub_path.as_str()),
            ("reg/img:1", "sha256:abc", "etc")
        );
        let refused = [
            (MountRequest { readonly: false, ..image_mount("") }, "must be readonly"),
            (MountRequest { host_path: "/h".into(), ..image_mount("") }, "no host_path"),
            (image_mount("../escape"), "image_sub_path"),
            (image_mount("/abs"), "image_sub_path"),
        ];
        for (m, want) in refused {
            let req = CreateContainer { mounts: vec![mount("/data", "/srv"), m.clone()], ..minimal() };
            let e = run_with(&req, &image(), &pod(), &volumes, None).unwrap_err();
            assert!(e.contains(want), "{m:?}: {e}");
        }
    }

    #[test]
    fn devices() {
        let req = CreateContainer {
            devices: vec![
                ("".into(), "/dev/fuse".into(), "".into()),
                ("/dev/xvda".into(), "/dev/loop0".into(), "r".into()),
            ],
            ..minimal()
        };
        let d = run(&req, &image(), &pod()).unwrap().spec.devices;
        assert_eq!(
            (d[0].container_path.as_str(), d[0].node.kind, d[0].node.major, d[0].node.minor, d[0].permissions.as_str()),
            ("/dev/fuse", 'c', 10, 229, "rwm")
        );
        assert_eq!((d[1].container_path.as_str(), d[1].node.kind, d[1].permissions.as_str()), ("/dev/xvda", 'b', "r"));
        for (dev, want) in [
            (("", "", ""), "devices[0].host_path is required"),
            (("", "/dev/nope", ""), "devices[0].host_path"),
            (("", "/dev/fuse", "x"), "devices[0].permissions"),
        ] {
            let req = CreateContainer { devices: vec![(dev.0.into(), dev.1.into(), dev.2.into())], ..minimal() };
            assert!(err(&req).contains(want), "{dev:?}");
        }
    }

    #[test]
    fn security_settings() {
        assert!(err(&CreateContainer { seccomp: Profile::RuntimeDefault, ..minimal() }).contains("seccomp"));
        assert!(err(&CreateContainer { apparmor: Profile::Localhost, ..minimal() }).contains("AppArmor"));
        assert!(err(&CreateContainer { privileged: true, ..minimal() }).contains("privileged pod"));
        assert!(
            err(&CreateContainer { cdi_devices: vec!["vendor.com/gpu=0".into()], ..minimal() }).contains("cdi_devices")
        );
        let privileged_pod = PodRecord { privileged: true, ..pod() };
        let r = run(&CreateContainer { privileged: true, ..minimal() }, &image(), &privileged_pod).unwrap();
        assert!(r.spec.privileged && r.spec.caps.contains(&"CAP_SYS_ADMIN".to_string()));
        // Every host device, with its owner.
        let paths: Vec<&str> = r.spec.devices.iter().map(|d| d.container_path.as_str()).collect();
        assert_eq!(paths, ["/dev/fuse", "/dev/loop0"]);
        assert_eq!((r.spec.devices[1].node.kind, r.spec.devices[1].node.gid), ('b', 6));
        assert!(run(&minimal(), &image(), &privileged_pod).unwrap().spec.devices.is_empty());
        let caps = run(
            &CreateContainer { caps_add: vec!["NET_ADMIN".into()], caps_drop: vec!["ALL".into()], ..minimal() },
            &image(),
            &pod(),
        )
        .unwrap()
        .spec
        .caps;
        assert_eq!(caps, ["CAP_NET_ADMIN"]);
        assert!(err(&CreateContainer { caps_add: vec!["CAP_NOPE".into()], ..minimal() }).contains("capabilities"));
        assert!(err(&CreateContainer {
            resources: spec::Resources { memory_limit: -1, ..Default::default() },
            ..minimal()
        })
        .contains("linux.resources.memory_limit_in_bytes"));
    }

    #[test]
    fn masked_paths_and_memory_swap() {
        let kubelet = CreateContainer {
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            ..minimal()
        };
        let s = run(&kubelet, &image(), &pod()).unwrap().spec;
        assert_eq!(
            (s.masked_paths.as_slice(), s.readonly_paths.as_slice()),
            (&["/proc/kcore".to_string()][..], &["/proc/sys".to_string()][..])
        );
        let limited =
            CreateContainer { resources: spec::Resources { memory_limit: 1 << 20, ..Default::default() }, ..minimal() };
        let r = run(&limited, &image(), &pod()).unwrap().spec.resources;
        assert_eq!((r.memory_limit, r.memory_swap_limit), (1 << 20, 1 << 20), "no swap beyond the limit by default");
        let swap = CreateContainer {
            resources: spec::Resources { memory_limit: 1 << 20, memory_swap_limit: 4 << 20, ..Default::default() },
            ..minimal()
        };
        assert_eq!(run(&swap, &image(), &pod()).unwrap().spec.resources.memory_swap_limit, 4 << 20);
    }

    #[test]
    fn pid_namespace_modes() {
        let shared = PodRecord { pid: NsMode::Pod, ..pod() };
        let pid_of = |req: &CreateContainer, pod: &PodRecord, target: Option<u32>| {
            run_with(req, &image(), pod, &HashMap::new(), target).map(|r| r.spec.namespaces.pid)
        };
        assert_eq!(pid_of(&minimal(), &shared, None).unwrap(), Some(Some(PathBuf::from("/s/ns/pid"))));
        assert_eq!(
            pid_of(&CreateContainer { pid: NsMode::Container, ..minimal() }, &shared, None).unwrap(),
            Some(None)
        );
        assert_eq!(pid_of(&CreateContainer { pid: NsMode::Node, ..minimal() }, &shared, None).unwrap(), None);
        let target = CreateContainer { pid: NsMode::Target, target_id: "t".into(), ..minimal() };
        assert_eq!(pid_of(&target, &shared, Some(42)).unwrap(), Some(Some(PathBuf::from("/proc/42/ns/pid"))));
        assert!(pid_of(&target, &shared, None).unwrap_err().contains("target_id"));
        // A host-network pod: the node's network and UTS namespaces, and /dev/shm with host IPC.
        let host = PodRecord { network: NsMode::Node, ipc: NsMode::Node, ..pod() };
        let s = run(&minimal(), &image(), &host).unwrap().spec;
        assert!(s.namespaces.network.is_none() && s.namespaces.uts.is_none() && s.namespaces.ipc.is_none());
        assert_eq!(s.shm, PathBuf::from("/dev/shm"));
    }
}
