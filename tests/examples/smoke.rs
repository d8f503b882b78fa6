//! A smoke test for a running corrald, as an operator would do it after `hack/run.sh`: pull an
//! image, run a pod with a hostPort and a busybox httpd in it, fetch the page at
//! 127.0.0.1:<hostPort>, then remove everything.
//!
//!   cargo run -p tests --example smoke -- /run/corral/corral.sock 127.0.0.1:5000/corral/busybox:latest 18080

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tests::cri_api::v1 as cri;
use tests::cri_api::v1::image_service_client::ImageServiceClient;
use tests::cri_api::v1::runtime_service_client::RuntimeServiceClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, image, port] = args.as_slice() else {
        return Err("usage: smoke SOCKET IMAGE HOST_PORT".into());
    };
    let host_port: i32 = port.parse()?;
    let channel = tests::connect(std::path::Path::new(socket)).await?;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);

    let status = rt.status(cri::StatusRequest { verbose: false }).await?.into_inner();
    println!("status: {:?}", status.status.map(|s| s.conditions));
    images.pull_image(cri::PullImageRequest { image: Some(tests::spec(image)), ..Default::default() }).await?;
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "smoke".into(),
            uid: "smoke-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "smoke".into(),
        log_directory: "/tmp/corral-smoke-logs".into(),
        port_mappings: vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port,
            host_ip: String::new(),
        }],
        ..Default::default()
    };
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pod_config.clone()), runtime_handler: String::new() })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let result = serve_and_fetch(&mut rt, &pod, &pod_config, image, host_port).await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    let _ = std::fs::remove_dir_all("/tmp/corral-smoke-logs");
    let body = result?;
    println!("GET http://127.0.0.1:{host_port}/ -> {body}");
    Ok(())
}

async fn serve_and_fetch(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
    host_port: i32,
) -> Result<String, Box<dyn std::error::Error>> {
    let st = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: false })
        .await?
        .into_inner();
    println!("pod {pod} ip {:?}", st.status.and_then(|s| s.network).map(|n| n.ip));
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "web".into(), attempt: 0 }),
        image: Some(tests::spec(image)),
        command: vec![
            "sh".into(),
            "-c".into(),
            "mkdir -p /www && echo hello-from-corral > /www/index.html && exec httpd -f -p 80 -h /www".into(),
        ],
        log_path: "web.log".into(),
        ..Default::default()
    };
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    };
    let ctr = rt.create_container(req).await?.into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: ctr }).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", host_port as u16)) {
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut text = String::new();
            if s.read_to_string(&mut text).is_ok() && text.contains("200 OK") {
                return Ok(text.rsplit("\r\n\r\n").next().unwrap_or("").trim().to_string());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("nothing answered at 127.0.0.1:{host_port}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
