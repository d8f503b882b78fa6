//! CRI messages to the runtime's domain requests and back. Unset messages take their protobuf
//! zero values (what kubelet, crictl and other clients mean by leaving a field out); fields the
//! domain cannot honour are refused here with InvalidArgument naming them.

use std::collections::BTreeMap;

use cri_api::v1 as cri;
use tonic::Status;

use crate::runtime::{self as rt, ContainerState, GroupsPolicy, NsMode, PodPhase};

pub fn ns_mode(v: i32) -> NsMode {
    match cri::NamespaceMode::try_from(v) {
        Ok(cri::NamespaceMode::Container) => NsMode::Container,
        Ok(cri::NamespaceMode::Node) => NsMode::Node,
        Ok(cri::NamespaceMode::Target) => NsMode::Target,
        _ => NsMode::Pod,
    }
}

pub fn ns_mode_cri(m: NsMode) -> i32 {
    (match m {
        NsMode::Pod => cri::NamespaceMode::Pod,
        NsMode::Container => cri::NamespaceMode::Container,
        NsMode::Node => cri::NamespaceMode::Node,
        NsMode::Target => cri::NamespaceMode::Target,
    }) as i32
}

/// User namespaces (`userns_options` with a mode other than NODE) are not supported yet.
fn check_userns(ns: &cri::NamespaceOption, what: &str) -> Result<(), Status> {
    match &ns.userns_options {
        Some(u) if u.mode != cri::NamespaceMode::Node as i32 => Err(Status::invalid_argument(format!(
            "{what}.namespace_options.userns_options: user namespaces (mode {}) are not supported by corral; use mode NODE",
            cri::NamespaceMode::try_from(u.mode).map(|m| m.as_str_name().to_string()).unwrap_or_else(|_| u.mode.to_string())
        ))),
        _ => Ok(()),
    }
}

fn profile(p: Option<&cri::SecurityProfile>, legacy: &str) -> rt::Profile {
    match p {
        Some(p) => match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::Unconfined) => rt::Profile::Unconfined,
            Ok(cri::security_profile::ProfileType::Localhost) => rt::Profile::Localhost,
            _ => rt::Profile::RuntimeDefault,
        },
        None => match legacy {
            "" | "unconfined" => rt::Profile::Unconfined,
            "localhost" => rt::Profile::Localhost,
            _ if legacy.starts_with("localhost/") => rt::Profile::Localhost,
            _ => rt::Profile::RuntimeDefault,
        },
    }
}

fn protocol(v: i32) -> &'static str {
    match cri::Protocol::try_from(v) {
        Ok(cri::Protocol::Udp) => "udp",
        Ok(cri::Protocol::Sctp) => "sctp",
        _ => "tcp",
    }
}

pub fn run_pod_request(config: cri::PodSandboxConfig, runtime_handler: String) -> Result<rt::RunPod, Status> {
    let meta = config.metadata.ok_or_else(|| Status::invalid_argument("pod sandbox config: metadata is required"))?;
    let linux = config.linux.unwrap_or_default();
    let sec = linux.security_context.unwrap_or_default();
    let ns = sec.namespace_options.unwrap_or_default();
    check_userns(&ns, "pod sandbox config: linux.security_context")?;
    Ok(rt::RunPod {
        name: meta.name,
        uid: meta.uid,
        namespace: meta.namespace,
        attempt: meta.attempt,
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns: config.dns_config.map(|d| rt::PodDns { servers: d.servers, searches: d.searches, options: d.options }),
        labels: config.labels,
        annotations: config.annotations,
        runtime_handler,
        cgroup_parent: linux.cgroup_parent,
        sysctls: linux.sysctls.into_iter().collect::<BTreeMap<_, _>>(),
        network: ns_mode(ns.network),
        pid: ns_mode(ns.pid),
        ipc: ns_mode(ns.ipc),
        target_id: ns.target_id,
        privileged: sec.privileged,
        port_mappings: config
            .port_mappings
            .into_iter()
            .map(|p| crate::cni::PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: protocol(p.protocol).into(),
                host_ip: p.host_ip,
            })
            .collect(),
        resources: linux.resources.as_ref().map(|r| resources(Some(r))),
        overhead: linux.overhead.as_ref().map(|r| resources(Some(r))),
    })
}

pub fn pod_state(p: PodPhase) -> i32 {
    (if p == PodPhase::Ready { cri::PodSandboxState::SandboxReady } else { cri::PodSandboxState::SandboxNotready })
        as i32
}

pub fn pod_metadata(p: &rt::PodRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: p.name.clone(),
        uid: p.uid.clone(),
        namespace: p.namespace.clone(),
        attempt: p.attempt,
    }
}

pub fn to_cri_pod(p: &rt::PodRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: p.id.clone(),
        metadata: Some(pod_metadata(p)),
        state: pod_state(p.phase),
        created_at: p.created_at,
        labels: p.labels.clone(),
        annotations: p.annotations.clone(),
        runtime_handler: p.runtime_handler.clone(),
    }
}

pub fn pod_filter(f: Option<cri::PodSandboxFilter>) -> rt::PodFilter {
    f.map(|f| rt::PodFilter {
        id: f.id,
        state: f.state.map(|s| {
            if s.state == cri::PodSandboxState::SandboxReady as i32 {
                PodPhase::Ready
            } else {
                PodPhase::NotReady
            }
        }),
        labels: f.label_selector,
    })
    .unwrap_or_default()
}

pub fn container_filter(f: Option<cri::ContainerFilter>) -> rt::ContainerFilter {
    f.map(|f| rt::ContainerFilter {
        id: f.id,
        pod_id: f.pod_sandbox_id,
        state: f.state.map(|s| container_state_from(s.state)),
        labels: f.label_selector,
    })
    .unwrap_or_default()
}

pub fn container_state(s: ContainerState) -> i32 {
    (match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }) as i32
}

fn container_state_from(v: i32) -> ContainerState {
    match cri::ContainerState::try_from(v) {
        Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

fn propagation(v: i32) -> rt::spec_types::Propagation {
    match cri::MountPropagation::try_from(v) {
        Ok(cri::MountPropagation::PropagationHostToContainer) => rt::spec_types::Propagation::HostToContainer,
        Ok(cri::MountPropagation::PropagationBidirectional) => rt::spec_types::Propagation::Bidirectional,
        _ => rt::spec_types::Propagation::Private,
    }
}

/// A CRI `Signal` as a signal name ("SIGRTMINPLUS1" → "SIGRTMIN+1"); None for RUNTIME_DEFAULT.
fn stop_signal(v: i32) -> Result<Option<String>, Status> {
    let sig = cri::Signal::try_from(v)
        .map_err(|_| Status::invalid_argument(format!("container config: stop_signal {v} is not a CRI signal")))?;
    if sig == cri::Signal::RuntimeDefault {
        return Ok(None);
    }
    Ok(Some(sig.as_str_name().replace("PLUS", "+").replace("MINUS", "-")))
}

/// A signal name as the CRI `Signal` (RUNTIME_DEFAULT for a name it lacks).
pub fn signal_cri(name: &str) -> i32 {
    let cri_name = name.replace('+', "PLUS").replace('-', "MINUS");
    cri::Signal::from_str_name(&cri_name).map(|s| s as i32).unwrap_or(cri::Signal::RuntimeDefault as i32)
}

pub fn resources(r: Option<&cri::LinuxContainerResources>) -> rt::spec_types::Resources {
    let Some(r) = r else { return rt::spec_types::Resources::default() };
    // pids.max has a field of its own (the pids controller exists on cgroup v1 too); the
    // other unified keys are written as they are on cgroup v2.
    let mut unified: std::collections::BTreeMap<String, String> =
        r.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let pids_limit = match unified.get("pids.max").map(|v| v.parse::<i64>()) {
        Some(Ok(n)) => {
            unified.remove("pids.max");
            n
        }
        _ => 0,
    };
    rt::spec_types::Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit: r.memory_limit_in_bytes,
        memory_swap_limit: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        pids_limit,
        hugepage_limits: r.hugepage_limits.iter().map(|h| (h.page_size.clone(), h.limit)).collect(),
        unified,
    }
}

pub fn resources_cri(r: &rt::spec_types::Resources) -> cri::LinuxContainerResources {
    let mut unified: std::collections::HashMap<String, String> =
        r.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if r.pids_limit > 0 {
        unified.insert("pids.max".to_string(), r.pids_limit.to_string());
    }
    cri::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(page_size, limit)| cri::HugepageLimit { page_size: page_size.clone(), limit: *limit })
            .collect(),
        unified,
        memory_swap_limit_in_bytes: r.memory_swap_limit,
    }
}

fn mount_request(m: cri::Mount) -> rt::MountRequest {
    let image = m.image.filter(|i| !i.image.is_empty() || !i.user_specified_image.is_empty()).map(|i| rt::ImageMount {
        image: if i.image.is_empty() { i.user_specified_image.clone() } else { i.image },
        user_specified_image: i.user_specified_image,
        sub_path: m.image_sub_path.clone(),
    });
    rt::MountRequest {
        container_path: m.container_path,
        host_path: m.host_path,
        readonly: m.readonly,
        recursive_readonly: m.recursive_read_only,
        propagation: propagation(m.propagation),
        image_sub_path: if image.is_some() { String::new() } else { m.image_sub_path },
        image,
        idmapped: !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty(),
    }
}

#[allow(deprecated)] // the legacy profile fields are still sent by older kubelets
pub fn create_container_request(pod_id: String, config: cri::ContainerConfig) -> Result<rt::CreateContainer, Status> {
    let meta = config.metadata.ok_or_else(|| Status::invalid_argument("container config: metadata is required"))?;
    let spec = config.image.unwrap_or_default();
    let user_specified_image = spec.user_specified_image.clone();
    let image =
        Some(if spec.image.is_empty() { spec.user_specified_image } else { spec.image }).filter(|i| !i.is_empty());
    let image = image.ok_or_else(|| Status::invalid_argument("container config: image is required"))?;
    let linux = config.linux.unwrap_or_default();
    let sec = linux.security_context.unwrap_or_default();
    let caps = sec.capabilities.unwrap_or_default();
    let ns = sec.namespace_options.unwrap_or_default();
    check_userns(&ns, "container config: linux.security_context")?;
    let policy = match cri::SupplementalGroupsPolicy::try_from(sec.supplemental_groups_policy) {
        Ok(cri::SupplementalGroupsPolicy::Merge) => GroupsPolicy::Merge,
        Ok(cri::SupplementalGroupsPolicy::Strict) => GroupsPolicy::Strict,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "container config: linux.security_context.supplemental_groups_policy {} is not Merge or Strict",
                sec.supplemental_groups_policy
            )))
        }
    };
    Ok(rt::CreateContainer {
        pod_id,
        name: meta.name,
        attempt: meta.attempt,
        image,
        user_specified_image,
        command: config.command,
        args: config.args,
        working_dir: config.working_dir,
        envs: config.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        mounts: config.mounts.into_iter().map(mount_request).collect(),
        devices: config.devices.into_iter().map(|d| (d.container_path, d.host_path, d.permissions)).collect(),
        cdi_devices: config.cdi_devices.into_iter().map(|d| d.name).collect(),
        labels: config.labels,
        annotations: config.annotations,
        log_path: config.log_path,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        resources: resources(linux.resources.as_ref()),
        privileged: sec.privileged,
        caps_add: caps.add_capabilities,
        caps_drop: caps.drop_capabilities,
        caps_ambient: caps.add_ambient_capabilities,
        run_as_user: sec.run_as_user.map(|v| v.value),
        run_as_group: sec.run_as_group.map(|v| v.value),
        run_as_username: sec.run_as_username,
        readonly_rootfs: sec.readonly_rootfs,
        supplemental_groups: sec.supplemental_groups,
        supplemental_groups_policy: policy,
        no_new_privs: sec.no_new_privs,
        masked_paths: sec.masked_paths,
        readonly_paths: sec.readonly_paths,
        pid: ns_mode(ns.pid),
        target_id: ns.target_id,
        seccomp: profile(sec.seccomp.as_ref(), &sec.seccomp_profile_path),
        apparmor: profile(sec.apparmor.as_ref(), &sec.apparmor_profile),
        stop_signal: stop_signal(config.stop_signal)?,
    })
}

pub fn to_cri_container(v: &rt::ContainerView) -> cri::Container {
    let r = &v.record;
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.pod_id.clone(),
        metadata: Some(cri::ContainerMetadata { name: r.name.clone(), attempt: r.attempt }),
        image: Some(image_spec(r)),
        // The image id, as containerd gives it here (and in image_id).
        image_ref: r.image_id.clone(),
        state: container_state(v.state),
        created_at: r.created_at,
        labels: r.labels.clone(),
        annotations: r.annotations.clone(),
        image_id: r.image_id.clone(),
    }
}

/// The container's image as the request named it.
fn image_spec(r: &rt::ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: r.image.clone(),
        user_specified_image: r.user_specified_image.clone(),
        ..Default::default()
    }
}

fn mount_cri(m: &rt::MountRecord) -> cri::Mount {
    cri::Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        recursive_read_only: m.recursive_readonly,
        propagation: m.propagation,
        image: m.image.as_ref().map(|i| cri::ImageSpec {
            image: i.image.clone(),
            user_specified_image: i.user_specified_image.clone(),
            image_ref: i.image_ref.clone(),
            ..Default::default()
        }),
        image_sub_path: m.image.as_ref().map(|i| i.sub_path.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

/// ContainerStatus; `image_names` are the image's first tag and repo digest now, which it
/// reports as containerd does (the request may have named the image by id).
pub fn container_status(v: &rt::ContainerView, image_names: (Option<String>, Option<String>)) -> cri::ContainerStatus {
    let r = &v.record;
    let (tag, digest) = image_names;
    let mut image = image_spec(r);
    if let Some(tag) = tag {
        image.image = tag;
    }
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(cri::ContainerMetadata { name: r.name.clone(), attempt: r.attempt }),
        state: container_state(v.state),
        created_at: r.created_at,
        started_at: v.started_at,
        finished_at: v.finished_at,
        exit_code: v.exit_code,
        image: Some(image),
        image_ref: digest.unwrap_or_else(|| r.image_ref.clone()),
        reason: v.reason.clone(),
        message: v.message.clone(),
        labels: r.labels.clone(),
        annotations: r.annotations.clone(),
        mounts: r.mounts.iter().map(mount_cri).collect(),
        log_path: r.log_path.clone(),
        resources: Some(cri::ContainerResources { linux: Some(resources_cri(&r.resources)), windows: None }),
        image_id: r.image_id.clone(),
        user: r.user.as_ref().map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: u.uid.into(),
                gid: u.gid.into(),
                supplemental_groups: u.additional_gids.iter().map(|g| i64::from(*g)).collect(),
            }),
        }),
        stop_signal: if r.stop_signal_name.is_empty() {
            cri::Signal::Sigterm as i32
        } else {
            signal_cri(&r.stop_signal_name)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_config_with_only_metadata_and_image() {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }),
            ..Default::default()
        };
        let req = create_container_request("pod".into(), config).unwrap();
        assert_eq!(req.pid, NsMode::Pod);
        assert_eq!(req.seccomp, rt::Profile::Unconfined);
        assert_eq!(req.apparmor, rt::Profile::Unconfined);
        assert_eq!(req.supplemental_groups_policy, GroupsPolicy::Merge);
        assert_eq!(req.stop_signal, None);
        assert!(req.run_as_user.is_none() && req.run_as_group.is_none());
    }

    #[test]
    fn image_by_user_specified_name_and_required_fields() {
        let mut config =
            cri::ContainerConfig { metadata: Some(cri::ContainerMetadata::default()), ..Default::default() };
        assert_eq!(
            create_container_request("p".into(), config.clone()).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        config.image = Some(cri::ImageSpec { user_specified_image: "busybox".into(), ..Default::default() });
        assert_eq!(create_container_request("p".into(), config).unwrap().image, "busybox");
        assert_eq!(
            create_container_request("p".into(), cri::ContainerConfig::default()).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn stop_signals_round_trip() {
        assert_eq!(stop_signal(cri::Signal::RuntimeDefault as i32).unwrap(), None);
        assert_eq!(stop_signal(cri::Signal::Sigusr1 as i32).unwrap().as_deref(), Some("SIGUSR1"));
        assert_eq!(stop_signal(cri::Signal::Sigrtminplus1 as i32).unwrap().as_deref(), Some("SIGRTMIN+1"));
        assert_eq!(stop_signal(cri::Signal::Sigrtmaxminus3 as i32).unwrap().as_deref(), Some("SIGRTMAX-3"));
        assert_eq!(stop_signal(999).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(signal_cri("SIGRTMIN+1"), cri::Signal::Sigrtminplus1 as i32);
        assert_eq!(signal_cri("SIGTERM"), cri::Signal::Sigterm as i32);
        assert_eq!(signal_cri("SIGNOPE"), cri::Signal::RuntimeDefault as i32);
    }

    #[test]
    fn user_namespaces_are_refused_unless_node() {
        let mut config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata { name: "p".into(), ..Default::default() }),
            ..Default::default()
        };
        let with_userns = |mode: cri::NamespaceMode| cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    userns_options: Some(cri::UserNamespace { mode: mode as i32, ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        config.linux = Some(with_userns(cri::NamespaceMode::Node));
        assert!(run_pod_request(config.clone(), String::new()).is_ok());
        config.linux = Some(with_userns(cri::NamespaceMode::Pod));
        let err = run_pod_request(config, String::new()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("userns_options"), "{}", err.message());
    }

    #[test]
    fn image_mounts_and_their_status() {
        let m = cri::Mount {
            container_path: "/mnt".into(),
            readonly: true,
            image: Some(cri::ImageSpec {
                image: "sha256:abc".into(),
                user_specified_image: "busybox".into(),
                ..Default::default()
            }),
            image_sub_path: "etc".into(),
            ..Default::default()
        };
        let req = mount_request(m);
        assert_eq!(
            req.image,
            Some(rt::ImageMount {
                image: "sha256:abc".into(),
                user_specified_image: "busybox".into(),
                sub_path: "etc".into()
            })
        );
        assert_eq!(req.image_sub_path, "");
        let plain = mount_request(cri::Mount {
            container_path: "/x".into(),
            host_path: "/h".into(),
            image_sub_path: "y".into(),
            ..Default::default()
        });
        assert!(plain.image.is_none());
        assert_eq!(plain.image_sub_path, "y");
    }
}
