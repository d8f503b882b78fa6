//! CRI RuntimeService: translation between CRI messages and the runtime's domain calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cri_api::v1 as cri;
use cri_api::v1::runtime_service_server::RuntimeService;
use tonic::{Code, Request, Response, Status};

use super::convert::{self, ns_mode_cri, pod_metadata, pod_state};
use super::{batches, unimplemented, ItemStream};
use crate::runtime::{Runtime, RuntimeError};
use crate::streaming::{AttachParams, ExecParams, Pending, PortForwardParams, Streaming, TokenError};

pub const RUNTIME_NAME: &str = "corral";
pub const CRI_VERSION: &str = "v1";

pub struct CriRuntime {
    rt: Arc<Runtime>,
    streaming: Arc<Streaming>,
    pod_cidr: Mutex<String>,
}

impl CriRuntime {
    pub fn new(rt: Arc<Runtime>, streaming: Arc<Streaming>) -> CriRuntime {
        CriRuntime { rt, streaming, pod_cidr: Mutex::new(String::new()) }
    }

    fn url(&self, pending: Pending) -> std::result::Result<String, Status> {
        self.streaming.url(pending).map_err(|e| match e {
            TokenError::Exhausted(_) => super::status(Code::ResourceExhausted, e.to_string()),
            TokenError::Random(_) => super::status(Code::Internal, e.to_string()),
        })
    }
}

/// The stdio checks of Exec and Attach, as kubelet's streaming server makes them.
fn check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> std::result::Result<(), Status> {
    if tty && stderr {
        return Err(Status::invalid_argument("tty and stderr cannot both be true"));
    }
    if !(stdin || stdout || stderr) {
        return Err(Status::invalid_argument("one of stdin, stdout, or stderr must be set"));
    }
    Ok(())
}

type Result<T> = std::result::Result<Response<T>, Status>;

/// The gRPC status of a runtime error: bad input, missing objects and unmet preconditions
/// are the client's to fix; a failure of this host's setup is Internal. Never Unknown.
pub fn status_of(err: RuntimeError) -> Status {
    use crate::cni::config::ConfigError;
    use crate::cni::exec::ExecError;
    use crate::cni::CniError;
    use crate::shim_client::ShimError;
    let code = match &err {
        RuntimeError::InvalidArgument(_) => Code::InvalidArgument,
        RuntimeError::NotFound(_) => Code::NotFound,
        RuntimeError::AlreadyExists(_) => Code::AlreadyExists,
        RuntimeError::FailedPrecondition(_) => Code::FailedPrecondition,
        RuntimeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        RuntimeError::Image(e) => return super::image::status_of(e),
        // No network config, or a plugin binary that is not installed: the network is not ready.
        RuntimeError::Network(
            CniError::Config(ConfigError::Missing(_) | ConfigError::Invalid { .. })
            | CniError::Exec(ExecError::NotFound { .. }),
        ) => Code::FailedPrecondition,
        RuntimeError::Network(CniError::Exec(ExecError::Timeout { .. }))
        | RuntimeError::Shim(ShimError::Timeout { .. }) => Code::DeadlineExceeded,
        RuntimeError::Network(_)
        | RuntimeError::Shim(_)
        | RuntimeError::Store(_)
        | RuntimeError::Io { .. }
        | RuntimeError::Internal(_) => Code::Internal,
    };
    super::status(code, err.to_string())
}

/// Runs a request that changes state to its end in a task of its own: a client that gives up
/// (its deadline passed, it was cancelled) must not leave a pod or container half made, with its
/// name reserved. A retry then finds the finished object (AlreadyExists) or does the work.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = std::result::Result<T, RuntimeError>> + Send + 'static,
) -> std::result::Result<T, Status> {
    match tokio::spawn(work).await {
        Ok(result) => result.map_err(status_of),
        Err(e) => Err(Status::internal(format!("request task failed: {e}"))),
    }
}

/// Items per message of the Stream* RPCs: a few MiB at most, far below kubelet's 16 MiB limit.
const STREAM_BATCH: usize = 1000;

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
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            match self.rt.network_status() {
                Ok(_) => cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                Err(why) => cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: false,
                    reason: "NetworkPluginNotReady".into(),
                    message: format!("network plugin is not ready: {why}"),
                },
            },
        ];
        let features = self.rt.features();
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info: HashMap::new(),
            // The default handler "" is the only one.
            runtime_handlers: vec![cri::RuntimeHandler {
                name: String::new(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: features.recursive_read_only_mounts,
                    user_namespaces: false,
                }),
            }],
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
            }),
        }))
    }

    async fn runtime_config(&self, _req: Request<cri::RuntimeConfigRequest>) -> Result<cri::RuntimeConfigResponse> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: match self.rt.cgroup_driver() {
                    crate::config::CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
                    crate::config::CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
                } as i32,
            }),
        }))
    }

    async fn run_pod_sandbox(&self, req: Request<cri::RunPodSandboxRequest>) -> Result<cri::RunPodSandboxResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("pod sandbox config is required"))?;
        let run = convert::run_pod_request(config, req.runtime_handler)?;
        let rt = Arc::clone(&self.rt);
        let pod_sandbox_id = detached(async move { rt.run_pod(run).await }).await?;
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id }))
    }
    async fn stop_pod_sandbox(&self, req: Request<cri::StopPodSandboxRequest>) -> Result<cri::StopPodSandboxResponse> {
        let rt = Arc::clone(&self.rt);
        let id = req.into_inner().pod_sandbox_id;
        detached(async move { rt.stop_pod(&id).await }).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }
    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<cri::RemovePodSandboxResponse> {
        let rt = Arc::clone(&self.rt);
        let id = req.into_inner().pod_sandbox_id;
        detached(async move { rt.remove_pod(&id).await }).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }
    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<cri::PodSandboxStatusResponse> {
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
                "portMappings": p.port_mappings,
                "resources": p.resources,
                "overhead": p.overhead,
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
        let filter = convert::pod_filter(req.into_inner().filter);
        let items = self.rt.list_pods(&filter).iter().map(convert::to_cri_pod).collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    type StreamPodSandboxesStream = ItemStream<cri::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        req: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Self::StreamPodSandboxesStream> {
        let filter = convert::pod_filter(req.into_inner().filter);
        let items: Vec<cri::PodSandbox> = self.rt.list_pods(&filter).iter().map(convert::to_cri_pod).collect();
        Ok(Response::new(batches(items, STREAM_BATCH, |pod_sandboxes| cri::StreamPodSandboxesResponse {
            pod_sandboxes,
        })))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<cri::CreateContainerResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("container config is required"))?;
        let create = convert::create_container_request(req.pod_sandbox_id, config)?;
        let rt = Arc::clone(&self.rt);
        let container_id = detached(async move { rt.create_container(create).await }).await?;
        Ok(Response::new(cri::CreateContainerResponse { container_id }))
    }
    async fn start_container(&self, req: Request<cri::StartContainerRequest>) -> Result<cri::StartContainerResponse> {
        let rt = Arc::clone(&self.rt);
        let id = req.into_inner().container_id;
        detached(async move { rt.start_container(&id).await }).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }
    async fn stop_container(&self, req: Request<cri::StopContainerRequest>) -> Result<cri::StopContainerResponse> {
        let req = req.into_inner();
        let rt = Arc::clone(&self.rt);
        detached(async move { rt.stop_container(&req.container_id, req.timeout).await }).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }
    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<cri::RemoveContainerResponse> {
        let rt = Arc::clone(&self.rt);
        let id = req.into_inner().container_id;
        detached(async move { rt.remove_container(&id).await }).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }
    async fn list_containers(&self, req: Request<cri::ListContainersRequest>) -> Result<cri::ListContainersResponse> {
        let filter = convert::container_filter(req.into_inner().filter);
        let containers = self.rt.list_containers(&filter).iter().map(convert::to_cri_container).collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    type StreamContainersStream = ItemStream<cri::StreamContainersResponse>;

    async fn stream_containers(
        &self,
        req: Request<cri::StreamContainersRequest>,
    ) -> Result<Self::StreamContainersStream> {
        let filter = convert::container_filter(req.into_inner().filter);
        let items: Vec<cri::Container> =
            self.rt.list_containers(&filter).iter().map(convert::to_cri_container).collect();
        Ok(Response::new(batches(items, STREAM_BATCH, |containers| cri::StreamContainersResponse { containers })))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<cri::ContainerStatusResponse> {
        let req = req.into_inner();
        let v = self.rt.container_status(&req.container_id).map_err(status_of)?;
        let r = &v.record;
        let mut info = HashMap::new();
        if req.verbose {
            let verbose = serde_json::json!({ "id": r.id, "pid": v.pid, "podSandboxId": r.pod_id, "logPath": r.log_path, "stopSignal": r.stop_signal });
            info.insert("info".to_string(), verbose.to_string());
        }
        let names = self.rt.image_names(&r.image_id);
        Ok(Response::new(cri::ContainerStatusResponse { status: Some(convert::container_status(&v, names)), info }))
    }
    async fn update_container_resources(
        &self,
        _req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<cri::UpdateContainerResourcesResponse> {
        unimplemented("UpdateContainerResources")
    }
    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<cri::ReopenContainerLogResponse> {
        self.rt.reopen_log(&req.into_inner().container_id).await.map_err(status_of)?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }
    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Result<cri::ExecSyncResponse> {
        let req = req.into_inner();
        let out = self.rt.exec_sync(&req.container_id, req.cmd, req.timeout).await.map_err(status_of)?;
        Ok(Response::new(cri::ExecSyncResponse { stdout: out.stdout, stderr: out.stderr, exit_code: out.exit_code }))
    }
    async fn exec(&self, req: Request<cri::ExecRequest>) -> Result<cri::ExecResponse> {
        let r = req.into_inner();
        check_stdio(r.tty, r.stdin, r.stdout, r.stderr)?;
        if r.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd is required"));
        }
        let container_id = self.rt.running_container(&r.container_id).map_err(status_of)?;
        let params =
            ExecParams { container_id, cmd: r.cmd, tty: r.tty, stdin: r.stdin, stdout: r.stdout, stderr: r.stderr };
        Ok(Response::new(cri::ExecResponse { url: self.url(Pending::Exec(params))? }))
    }
    async fn attach(&self, req: Request<cri::AttachRequest>) -> Result<cri::AttachResponse> {
        let r = req.into_inner();
        check_stdio(r.tty, r.stdin, r.stdout, r.stderr)?;
        let container_id = self.rt.running_container(&r.container_id).map_err(status_of)?;
        let params = AttachParams { container_id, tty: r.tty, stdin: r.stdin, stdout: r.stdout, stderr: r.stderr };
        Ok(Response::new(cri::AttachResponse { url: self.url(Pending::Attach(params))? }))
    }
    async fn port_forward(&self, req: Request<cri::PortForwardRequest>) -> Result<cri::PortForwardResponse> {
        let r = req.into_inner();
        let ports = r
            .port
            .iter()
            .map(|p| u16::try_from(*p).ok().filter(|p| *p > 0).ok_or(*p))
            .collect::<std::result::Result<Vec<u16>, i32>>()
            .map_err(|p| Status::invalid_argument(format!("invalid port {p}: ports are 1 to 65535")))?;
        let pod_id = self.rt.port_forward_pod(&r.pod_sandbox_id).map_err(status_of)?;
        let params = PortForwardParams { pod_id, ports };
        Ok(Response::new(cri::PortForwardResponse { url: self.url(Pending::PortForward(params))? }))
    }
    async fn container_stats(&self, _req: Request<cri::ContainerStatsRequest>) -> Result<cri::ContainerStatsResponse> {
        unimplemented("ContainerStats")
    }
    async fn list_container_stats(
        &self,
        _req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<cri::ListContainerStatsResponse> {
        unimplemented("ListContainerStats")
    }

    type StreamContainerStatsStream = ItemStream<cri::StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        _req: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Self::StreamContainerStatsStream> {
        unimplemented("StreamContainerStats")
    }
    async fn pod_sandbox_stats(
        &self,
        _req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<cri::PodSandboxStatsResponse> {
        unimplemented("PodSandboxStats")
    }
    async fn list_pod_sandbox_stats(
        &self,
        _req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<cri::ListPodSandboxStatsResponse> {
        unimplemented("ListPodSandboxStats")
    }

    type StreamPodSandboxStatsStream = ItemStream<cri::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        _req: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Self::StreamPodSandboxStatsStream> {
        unimplemented("StreamPodSandboxStats")
    }
    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<cri::UpdateRuntimeConfigResponse> {
        let cidr =
            req.into_inner().runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr).unwrap_or_default();
        // Kept for the network plugin, which reads it once pod networking lands.
        if let Ok(mut current) = self.pod_cidr.lock() {
            if *current != cidr {
                tracing::info!(pod_cidr = %cidr, "runtime config updated");
                *current = cidr;
            }
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }
    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> Result<cri::CheckpointContainerResponse> {
        unimplemented("CheckpointContainer")
    }

    type GetContainerEventsStream = ItemStream<cri::ContainerEventResponse>;

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Result<Self::GetContainerEventsStream> {
        unimplemented("GetContainerEvents")
    }
    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<cri::ListMetricDescriptorsResponse> {
        unimplemented("ListMetricDescriptors")
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<cri::ListPodSandboxMetricsResponse> {
        unimplemented("ListPodSandboxMetrics")
    }

    type StreamPodSandboxMetricsStream = ItemStream<cri::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _req: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Self::StreamPodSandboxMetricsStream> {
        unimplemented("StreamPodSandboxMetrics")
    }

    async fn update_pod_sandbox_resources(
        &self,
        req: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<cri::UpdatePodSandboxResourcesResponse> {
        let req = req.into_inner();
        let resources = req.resources.as_ref().map(|r| convert::resources(Some(r)));
        let overhead = req.overhead.as_ref().map(|r| convert::resources(Some(r)));
        let rt = Arc::clone(&self.rt);
        detached(async move { rt.update_pod_resources(&req.pod_sandbox_id, resources, overhead).await }).await?;
        Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
    }
}
