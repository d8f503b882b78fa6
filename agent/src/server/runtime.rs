//! CRI RuntimeService: translation between CRI messages and the runtime's domain calls.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Code, Request, Response, Status};

use super::unimplemented;
use crate::runtime::{self as rt, ContainerState, NsMode, PodPhase, Runtime, RuntimeError};

pub const RUNTIME_NAME: &str = "corral";
pub const CRI_VERSION: &str = "v1";

pub struct CriRuntime {
    rt: Arc<Runtime>,
    pod_cidr: Mutex<String>,
}

impl CriRuntime {
    pub fn new(rt: Arc<Runtime>) -> CriRuntime {
        CriRuntime { rt, pod_cidr: Mutex::new(String::new()) }
    }
}

type Result<T> = std::result::Result<Response<T>, Status>;
type EventStream = Pin<Box<dyn futures::Stream<Item = std::result::Result<cri::ContainerEventResponse, Status>> + Send>>;

/// The gRPC status of a runtime error.
pub fn status_of(err: RuntimeError) -> Status {
    let code = match &err {
        RuntimeError::InvalidArgument(_) => Code::InvalidArgument,
        RuntimeError::NotFound(_) => Code::NotFound,
        RuntimeError::AlreadyExists(_) => Code::AlreadyExists,
        RuntimeError::FailedPrecondition(_) => Code::FailedPrecondition,
        RuntimeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        RuntimeError::Image(e) => return super::image::status_of(e),
        RuntimeError::Shim(_) | RuntimeError::Store(_) | RuntimeError::Io { .. } | RuntimeError::Network(_) => Code::Unknown,
    };
    Status::new(code, err.to_string())
}

fn ns_mode(v: i32) -> NsMode {
    match cri::NamespaceMode::try_from(v) {
        Ok(cri::NamespaceMode::Container) => NsMode::Container,
        Ok(cri::NamespaceMode::Node) => NsMode::Node,
        Ok(cri::NamespaceMode::Target) => NsMode::Target,
        _ => NsMode::Pod,
    }
}

fn ns_mode_cri(m: NsMode) -> i32 {
    (match m {
        NsMode::Pod => cri::NamespaceMode::Pod,
        NsMode::Container => cri::NamespaceMode::Container,
        NsMode::Node => cri::NamespaceMode::Node,
        NsMode::Target => cri::NamespaceMode::Target,
    }) as i32
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

fn run_pod_request(config: cri::PodSandboxConfig, runtime_handler: String) -> std::result::Result<rt::RunPod, Status> {
    let meta = config.metadata.ok_or_else(|| Status::invalid_argument("pod sandbox config: metadata is required"))?;
    let linux = config.linux.unwrap_or_default();
    let sec = linux.security_context.unwrap_or_default();
    let ns = sec.namespace_options.unwrap_or_default();
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
                protocol: match cri::Protocol::try_from(p.protocol) {
                    Ok(cri::Protocol::Udp) => "udp".into(),
                    Ok(cri::Protocol::Sctp) => "sctp".into(),
                    _ => "tcp".into(),
                },
                host_ip: p.host_ip,
            })
            .collect(),
    })
}

fn pod_state(p: PodPhase) -> i32 {
    (if p == PodPhase::Ready { cri::PodSandboxState::SandboxReady } else { cri::PodSandboxState::SandboxNotready }) as i32
}

fn pod_metadata(p: &rt::PodRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata { name: p.name.clone(), uid: p.uid.clone(), namespace: p.namespace.clone(), attempt: p.attempt }
}

fn container_state(s: ContainerState) -> i32 {
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

#[allow(deprecated)] // the legacy profile fields are still sent by older kubelets
fn create_container_request(pod_id: String, config: cri::ContainerConfig, sandbox: Option<cri::PodSandboxConfig>) -> std::result::Result<rt::CreateContainer, Status> {
    let meta = config.metadata.ok_or_else(|| Status::invalid_argument("container config: metadata is required"))?;
    let image = config.image.map(|i| i.image).filter(|i| !i.is_empty()).ok_or_else(|| Status::invalid_argument("container config: image is required"))?;
    let linux = config.linux.unwrap_or_default();
    let res = linux.resources.unwrap_or_default();
    let sec = linux.security_context.unwrap_or_default();
    let caps = sec.capabilities.unwrap_or_default();
    let ns = sec.namespace_options.unwrap_or_default();
    let _ = sandbox;
    let pids_limit = res.unified.get("pids.max").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    Ok(rt::CreateContainer {
        pod_id,
        name: meta.name,
        attempt: meta.attempt,
        image,
        command: config.command,
        args: config.args,
        working_dir: config.working_dir,
        envs: config.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        mounts: config
            .mounts
            .into_iter()
            .map(|m| rt::spec_types::BindMount {
                container_path: m.container_path,
                host_path: m.host_path,
                readonly: m.readonly,
                propagation: match cri::MountPropagation::try_from(m.propagation) {
                    Ok(cri::MountPropagation::PropagationHostToContainer) => rt::spec_types::Propagation::HostToContainer,
                    Ok(cri::MountPropagation::PropagationBidirectional) => rt::spec_types::Propagation::Bidirectional,
                    _ => rt::spec_types::Propagation::Private,
                },
            })
            .collect(),
        devices: config.devices.into_iter().map(|d| (d.container_path, d.host_path, d.permissions)).collect(),
        labels: config.labels,
        annotations: config.annotations,
        log_path: config.log_path,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        resources: rt::spec_types::Resources {
            cpu_period: res.cpu_period,
            cpu_quota: res.cpu_quota,
            cpu_shares: res.cpu_shares,
            memory_limit: res.memory_limit_in_bytes,
            memory_swap_limit: res.memory_swap_limit_in_bytes,
            oom_score_adj: res.oom_score_adj,
            cpuset_cpus: res.cpuset_cpus,
            cpuset_mems: res.cpuset_mems,
            pids_limit,
        },
        privileged: sec.privileged,
        caps_add: caps.add_capabilities,
        caps_drop: caps.drop_capabilities,
        caps_ambient: caps.add_ambient_capabilities,
        run_as_user: sec.run_as_user.map(|v| v.value),
        run_as_group: sec.run_as_group.map(|v| v.value),
        run_as_username: sec.run_as_username,
        readonly_rootfs: sec.readonly_rootfs,
        supplemental_groups: sec.supplemental_groups,
        no_new_privs: sec.no_new_privs,
        masked_paths: sec.masked_paths,
        readonly_paths: sec.readonly_paths,
        pid: ns_mode(ns.pid),
        target_id: ns.target_id,
        seccomp: profile(sec.seccomp.as_ref(), &sec.seccomp_profile_path),
        apparmor: profile(sec.apparmor.as_ref(), &sec.apparmor_profile),
    })
}

fn to_cri_container(v: &rt::ContainerView) -> cri::Container {
    let r = &v.record;
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.pod_id.clone(),
        metadata: Some(cri::ContainerMetadata { name: r.name.clone(), attempt: r.attempt }),
        image: Some(cri::ImageSpec { image: r.image.clone(), ..Default::default() }),
        image_ref: r.image_ref.clone(),
        state: container_state(v.state),
        created_at: r.created_at,
        labels: r.labels.clone(),
        annotations: r.annotations.clone(),
        image_id: r.image_id.clone(),
    }
}

#[tonic::async_trait]
impl RuntimeService for CriRuntime {
    async fn version(&self, _req: Request<cri::VersionRequest>) -> Result<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_VERSION.into(),
        }))
    }

    async fn status(&self, _req: Request<cri::StatusRequest>) -> Result<cri::StatusResponse> {
        let conditions = vec![
            cri::RuntimeCondition { r#type: "RuntimeReady".into(), status: true, reason: String::new(), message: String::new() },
            match self.rt.network_status() {
                Ok(_) => cri::RuntimeCondition { r#type: "NetworkReady".into(), status: true, reason: String::new(), message: String::new() },
                Err(why) => cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: false,
                    reason: "NetworkPluginNotReady".into(),
                    message: format!("network plugin is not ready: {why}"),
                },
            },
        ];
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            ..Default::default()
        }))
    }

    async fn runtime_config(&self, _req: Request<cri::RuntimeConfigRequest>) -> Result<cri::RuntimeConfigResponse> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: cri::CgroupDriver::Cgroupfs as i32 }),
        }))
    }

    async fn run_pod_sandbox(&self, req: Request<cri::RunPodSandboxRequest>) -> Result<cri::RunPodSandboxResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("pod sandbox config is required"))?;
        let run = run_pod_request(config, req.runtime_handler)?;
        let pod_sandbox_id = self.rt.run_pod(run).await.map_err(status_of)?;
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id }))
    }
    async fn stop_pod_sandbox(&self, req: Request<cri::StopPodSandboxRequest>) -> Result<cri::StopPodSandboxResponse> {
        self.rt.stop_pod(&req.into_inner().pod_sandbox_id).await.map_err(status_of)?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }
    async fn remove_pod_sandbox(&self, req: Request<cri::RemovePodSandboxRequest>) -> Result<cri::RemovePodSandboxResponse> {
        self.rt.remove_pod(&req.into_inner().pod_sandbox_id).await.map_err(status_of)?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }
    async fn pod_sandbox_status(&self, req: Request<cri::PodSandboxStatusRequest>) -> Result<cri::PodSandboxStatusResponse> {
        let req = req.into_inner();
        let p = self.rt.pod_status(&req.pod_sandbox_id).map_err(status_of)?;
        let mut info = HashMap::new();
        if req.verbose {
            let verbose = serde_json::json!({
                "id": p.id,
                "cgroup": p.cgroup,
                "hostname": p.hostname,
                "pausePid": p.pause_pid,
                "sysctls": p.sysctls,
                "privileged": p.privileged,
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        let mut ips = p.ips.iter();
        let status = cri::PodSandboxStatus {
            id: p.id.clone(),
            metadata: Some(pod_metadata(&p)),
            state: pod_state(p.phase),
            created_at: p.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: ips.next().cloned().unwrap_or_default(),
                additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption {
                        network: ns_mode_cri(p.network),
                        pid: ns_mode_cri(p.pid),
                        ipc: ns_mode_cri(p.ipc),
                        target_id: p.target_id.clone(),
                        userns_options: None,
                    }),
                }),
            }),
            labels: p.labels.clone(),
            annotations: p.annotations.clone(),
            runtime_handler: p.runtime_handler.clone(),
        };
        Ok(Response::new(cri::PodSandboxStatusResponse { status: Some(status), info, ..Default::default() }))
    }
    async fn list_pod_sandbox(&self, req: Request<cri::ListPodSandboxRequest>) -> Result<cri::ListPodSandboxResponse> {
        let filter = req.into_inner().filter.map(|f| rt::PodFilter {
            id: f.id,
            state: f.state.map(|s| if s.state == cri::PodSandboxState::SandboxReady as i32 { PodPhase::Ready } else { PodPhase::NotReady }),
            labels: f.label_selector,
        });
        let items = self
            .rt
            .list_pods(&filter.unwrap_or_default())
            .iter()
            .map(|p| cri::PodSandbox {
                id: p.id.clone(),
                metadata: Some(pod_metadata(p)),
                state: pod_state(p.phase),
                created_at: p.created_at,
                labels: p.labels.clone(),
                annotations: p.annotations.clone(),
                runtime_handler: p.runtime_handler.clone(),
            })
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }
    async fn create_container(&self, req: Request<cri::CreateContainerRequest>) -> Result<cri::CreateContainerResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("container config is required"))?;
        let create = create_container_request(req.pod_sandbox_id, config, req.sandbox_config)?;
        let container_id = self.rt.create_container(create).await.map_err(status_of)?;
        Ok(Response::new(cri::CreateContainerResponse { container_id }))
    }
    async fn start_container(&self, req: Request<cri::StartContainerRequest>) -> Result<cri::StartContainerResponse> {
        self.rt.start_container(&req.into_inner().container_id).await.map_err(status_of)?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }
    async fn stop_container(&self, req: Request<cri::StopContainerRequest>) -> Result<cri::StopContainerResponse> {
        let req = req.into_inner();
        self.rt.stop_container(&req.container_id, req.timeout).await.map_err(status_of)?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }
    async fn remove_container(&self, req: Request<cri::RemoveContainerRequest>) -> Result<cri::RemoveContainerResponse> {
        self.rt.remove_container(&req.into_inner().container_id).await.map_err(status_of)?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }
    async fn list_containers(&self, req: Request<cri::ListContainersRequest>) -> Result<cri::ListContainersResponse> {
        let filter = req.into_inner().filter.map(|f| rt::ContainerFilter {
            id: f.id,
            pod_id: f.pod_sandbox_id,
            state: f.state.map(|s| container_state_from(s.state)),
            labels: f.label_selector,
        });
        let containers = self.rt.list_containers(&filter.unwrap_or_default()).iter().map(to_cri_container).collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }
    async fn container_status(&self, req: Request<cri::ContainerStatusRequest>) -> Result<cri::ContainerStatusResponse> {
        let req = req.into_inner();
        let v = self.rt.container_status(&req.container_id).map_err(status_of)?;
        let r = &v.record;
        let mut info = HashMap::new();
        if req.verbose {
            let verbose = serde_json::json!({ "id": r.id, "pid": v.pid, "podSandboxId": r.pod_id, "logPath": r.log_path, "stopSignal": r.stop_signal });
            info.insert("info".to_string(), verbose.to_string());
        }
        let status = cri::ContainerStatus {
            id: r.id.clone(),
            metadata: Some(cri::ContainerMetadata { name: r.name.clone(), attempt: r.attempt }),
            state: container_state(v.state),
            created_at: r.created_at,
            started_at: v.started_at,
            finished_at: v.finished_at,
            exit_code: v.exit_code,
            image: Some(cri::ImageSpec { image: r.image.clone(), ..Default::default() }),
            image_ref: r.image_ref.clone(),
            reason: v.reason.clone(),
            message: v.message.clone(),
            labels: r.labels.clone(),
            annotations: r.annotations.clone(),
            mounts: r
                .mounts
                .iter()
                .map(|m| cri::Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    propagation: m.propagation,
                    ..Default::default()
                })
                .collect(),
            log_path: r.log_path.clone(),
            image_id: r.image_id.clone(),
            ..Default::default()
        };
        Ok(Response::new(cri::ContainerStatusResponse { status: Some(status), info }))
    }
    async fn update_container_resources(&self, _req: Request<cri::UpdateContainerResourcesRequest>) -> Result<cri::UpdateContainerResourcesResponse> {
        unimplemented("UpdateContainerResources")
    }
    async fn reopen_container_log(&self, req: Request<cri::ReopenContainerLogRequest>) -> Result<cri::ReopenContainerLogResponse> {
        self.rt.reopen_log(&req.into_inner().container_id).await.map_err(status_of)?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }
    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Result<cri::ExecSyncResponse> {
        let req = req.into_inner();
        let out = self.rt.exec_sync(&req.container_id, req.cmd, req.timeout).await.map_err(status_of)?;
        Ok(Response::new(cri::ExecSyncResponse { stdout: out.stdout, stderr: out.stderr, exit_code: out.exit_code }))
    }
    async fn exec(&self, _req: Request<cri::ExecRequest>) -> Result<cri::ExecResponse> {
        unimplemented("Exec")
    }
    async fn attach(&self, _req: Request<cri::AttachRequest>) -> Result<cri::AttachResponse> {
        unimplemented("Attach")
    }
    async fn port_forward(&self, _req: Request<cri::PortForwardRequest>) -> Result<cri::PortForwardResponse> {
        unimplemented("PortForward")
    }
    async fn container_stats(&self, _req: Request<cri::ContainerStatsRequest>) -> Result<cri::ContainerStatsResponse> {
        unimplemented("ContainerStats")
    }
    async fn list_container_stats(&self, _req: Request<cri::ListContainerStatsRequest>) -> Result<cri::ListContainerStatsResponse> {
        unimplemented("ListContainerStats")
    }
    async fn pod_sandbox_stats(&self, _req: Request<cri::PodSandboxStatsRequest>) -> Result<cri::PodSandboxStatsResponse> {
        unimplemented("PodSandboxStats")
    }
    async fn list_pod_sandbox_stats(&self, _req: Request<cri::ListPodSandboxStatsRequest>) -> Result<cri::ListPodSandboxStatsResponse> {
        unimplemented("ListPodSandboxStats")
    }
    async fn update_runtime_config(&self, req: Request<cri::UpdateRuntimeConfigRequest>) -> Result<cri::UpdateRuntimeConfigResponse> {
        let cidr = req.into_inner().runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr).unwrap_or_default();
        // Kept for the network plugin, which reads it once pod networking lands.
        if let Ok(mut current) = self.pod_cidr.lock() {
            if *current != cidr {
                tracing::info!(pod_cidr = %cidr, "runtime config updated");
                *current = cidr;
            }
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }
    async fn checkpoint_container(&self, _req: Request<cri::CheckpointContainerRequest>) -> Result<cri::CheckpointContainerResponse> {
        unimplemented("CheckpointContainer")
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(&self, _req: Request<cri::GetEventsRequest>) -> Result<Self::GetContainerEventsStream> {
        unimplemented("GetContainerEvents")
    }
    async fn list_metric_descriptors(&self, _req: Request<cri::ListMetricDescriptorsRequest>) -> Result<cri::ListMetricDescriptorsResponse> {
        unimplemented("ListMetricDescriptors")
    }
    async fn list_pod_sandbox_metrics(&self, _req: Request<cri::ListPodSandboxMetricsRequest>) -> Result<cri::ListPodSandboxMetricsResponse> {
        unimplemented("ListPodSandboxMetrics")
    }
}
