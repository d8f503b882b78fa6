//! CRI RuntimeService. Pods and containers arrive with a later change: their RPCs answer
//! Unimplemented until then.

use std::pin::Pin;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::unimplemented;

pub const RUNTIME_NAME: &str = "corral";
pub const CRI_VERSION: &str = "v1";

pub struct Runtime {}

impl Runtime {
    pub fn new() -> Runtime {
        Runtime {}
    }
}

type Result<T> = std::result::Result<Response<T>, Status>;
type EventStream = Pin<Box<dyn futures::Stream<Item = std::result::Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for Runtime {
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
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: "corral: pod networking is not available yet".into(),
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

    async fn run_pod_sandbox(&self, _req: Request<cri::RunPodSandboxRequest>) -> Result<cri::RunPodSandboxResponse> {
        unimplemented("RunPodSandbox")
    }
    async fn stop_pod_sandbox(&self, _req: Request<cri::StopPodSandboxRequest>) -> Result<cri::StopPodSandboxResponse> {
        unimplemented("StopPodSandbox")
    }
    async fn remove_pod_sandbox(&self, _req: Request<cri::RemovePodSandboxRequest>) -> Result<cri::RemovePodSandboxResponse> {
        unimplemented("RemovePodSandbox")
    }
    async fn pod_sandbox_status(&self, _req: Request<cri::PodSandboxStatusRequest>) -> Result<cri::PodSandboxStatusResponse> {
        unimplemented("PodSandboxStatus")
    }
    async fn list_pod_sandbox(&self, _req: Request<cri::ListPodSandboxRequest>) -> Result<cri::ListPodSandboxResponse> {
        unimplemented("ListPodSandbox")
    }
    async fn create_container(&self, _req: Request<cri::CreateContainerRequest>) -> Result<cri::CreateContainerResponse> {
        unimplemented("CreateContainer")
    }
    async fn start_container(&self, _req: Request<cri::StartContainerRequest>) -> Result<cri::StartContainerResponse> {
        unimplemented("StartContainer")
    }
    async fn stop_container(&self, _req: Request<cri::StopContainerRequest>) -> Result<cri::StopContainerResponse> {
        unimplemented("StopContainer")
    }
    async fn remove_container(&self, _req: Request<cri::RemoveContainerRequest>) -> Result<cri::RemoveContainerResponse> {
        unimplemented("RemoveContainer")
    }
    async fn list_containers(&self, _req: Request<cri::ListContainersRequest>) -> Result<cri::ListContainersResponse> {
        unimplemented("ListContainers")
    }
    async fn container_status(&self, _req: Request<cri::ContainerStatusRequest>) -> Result<cri::ContainerStatusResponse> {
        unimplemented("ContainerStatus")
    }
    async fn update_container_resources(&self, _req: Request<cri::UpdateContainerResourcesRequest>) -> Result<cri::UpdateContainerResourcesResponse> {
        unimplemented("UpdateContainerResources")
    }
    async fn reopen_container_log(&self, _req: Request<cri::ReopenContainerLogRequest>) -> Result<cri::ReopenContainerLogResponse> {
        unimplemented("ReopenContainerLog")
    }
    async fn exec_sync(&self, _req: Request<cri::ExecSyncRequest>) -> Result<cri::ExecSyncResponse> {
        unimplemented("ExecSync")
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
    async fn update_runtime_config(&self, _req: Request<cri::UpdateRuntimeConfigRequest>) -> Result<cri::UpdateRuntimeConfigResponse> {
        unimplemented("UpdateRuntimeConfig")
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
