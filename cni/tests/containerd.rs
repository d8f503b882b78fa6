//! A real CNI runtime: Debian's containerd (private root, state, socket and CNI dirs under
//! a temp dir) with a conflist whose plugin is corral-cni runs a pod sandbox through its
//! CRI socket; the pod gets its address from corral-cni, and removing the pod releases it.
//!
//! Needs root, /usr/bin/containerd (+ runc) and the local test registry
//! (CORRAL_TEST_REGISTRY, set by hack/test.sh) serving `corral/pause`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use cri_api::v1 as cri;
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use tests::connect;
use tonic::transport::Channel;

/// containerd with its own everything; stopped (by pid), mounts under its dir detached,
/// and stray shims of this instance killed on drop.
struct Containerd {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, registry: &str, net: &TestNet) -> Containerd {
        let p = |s: &str| dir.join(s);
        for d in ["root", "state", "cni-bin", "cni-conf", "opt", "logs"] {
            std::fs::create_dir_all(p(d)).unwrap();
        }
        std::fs::copy(PLUGIN, p("cni-bin/corral-cni")).expect("copy corral-cni");
        std::fs::copy(format!("{REF_DIR}/loopback"), p("cni-bin/loopback")).expect("copy loopback");
        let hosts = p("certs.d").join(registry);
        std::fs::create_dir_all(&hosts).unwrap();
        std::fs::write(
            hosts.join("hosts.toml"),
            format!("server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
        .unwrap();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": net.name,
            "plugins": [{
                "type": "corral-cni",
                "bridge": net.bridge,
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": net.v4}]], "dataDir": net.data_dir()},
                "capabilities": {"portMappings": true}
            }]
        });
        std::fs::write(p("cni-conf/10-corral.conflist"), conflist.to_string()).unwrap();
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{registry}/corral/pause:latest"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#
        );
        std::fs::write(p("config.toml"), config).unwrap();
        let log = std::fs::File::create(p("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(p("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start containerd");
        Containerd { child, dir: dir.to_path_buf(), sock: p("containerd.sock") }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Shims of this instance (their command line names our socket) and their pause
        // processes: only ones this test started.
        let needle = self.sock.display().to_string();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&needle) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        // Mounts left under our dir (sandbox rootfs, shm), deepest first.
        let prefix = self.dir.display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(String::from))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

async fn wait_ready(ctd: &Containerd) -> Result<RuntimeServiceClient<Channel>, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if ctd.sock.exists() {
            match connect(&ctd.sock).await {
                Ok(ch) => {
                    let mut rt = RuntimeServiceClient::new(ch);
                    match rt.status(cri::StatusRequest { verbose: false }).await {
                        Ok(st) => {
                            let conds = st.into_inner().status.map(|s| s.conditions).unwrap_or_default();
                            if conds.iter().any(|c| c.r#type == "NetworkReady" && c.status) {
                                return Ok(rt);
                            }
                            last = format!("conditions {conds:?}");
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("containerd not ready: {last}"))
}

fn sandbox_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "corral-cni-test".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

async fn scenario(ctd: &Containerd, net: &TestNet) -> Result<(), String> {
    let mut rt = wait_ready(ctd).await?;
    let cfg = sandbox_config("corral-cni-pod", &ctd.dir.join("logs"));
    let run = tokio::time::timeout(
        Duration::from_secs(120),
        rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: String::new() }),
    )
    .await
    .map_err(|_| "RunPodSandbox timed out".to_string())?
    .map_err(|e| format!("RunPodSandbox: {e}"))?;
    let id = run.into_inner().pod_sandbox_id;

    let st = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: false })
        .await
        .map_err(|e| format!("PodSandboxStatus: {e}"))?
        .into_inner();
    let ip = st.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
    if !ip.starts_with(&net.v4_prefix) {
        return Err(format!("pod ip {ip:?} is not from corral-cni's range {}", net.v4));
    }
    let alloc = std::fs::read_to_string(net.data_dir().join(&net.name).join(&ip))
        .map_err(|e| format!("allocation file for {ip}: {e}"))?;
    if !alloc.starts_with(&id) {
        return Err(format!("allocation {ip} holds {alloc:?}, not sandbox {id}"));
    }
    if net.bridge_ports().len() != 1 {
        return Err(format!("bridge ports: {:?}", net.bridge_ports()));
    }

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() })
        .await
        .map_err(|e| format!("StopPodSandbox: {e}"))?;
    eventually(|| net.allocations().is_empty());
    if !net.allocations().is_empty() {
        return Err(format!("allocations after stop: {:?}", net.allocations()));
    }
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .map_err(|e| format!("RemovePodSandbox: {e}"))?;
    eventually(|| net.rules().is_empty() && net.bridge_ports().is_empty());
    if !net.rules().is_empty() || !net.bridge_ports().is_empty() {
        return Err(format!("left after removal: rules {:?}, ports {:?}", net.rules(), net.bridge_ports()));
    }
    Ok(())
}

/// Stops and removes every sandbox, whatever the scenario left.
async fn cleanup(ctd: &Containerd) {
    let Ok(ch) = connect(&ctd.sock).await else {
        return;
    };
    let mut rt = RuntimeServiceClient::new(ch);
    let Ok(list) = rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await else {
        return;
    };
    for p in list.into_inner().items {
        let _ = rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: p.id.clone() }).await;
        let _ = rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p.id }).await;
    }
}

#[test]
fn containerd_runs_a_pod_on_corral_cni() {
    if !root_or_skip("containerd_runs_a_pod_on_corral_cni") {
        return;
    }
    let Ok(registry) = std::env::var("CORRAL_TEST_REGISTRY") else {
        eprintln!("skipping containerd test: CORRAL_TEST_REGISTRY unset (run through hack/test.sh)");
        return;
    };
    if Command::new("containerd").arg("--version").output().is_err() {
        eprintln!("skipping containerd test: containerd not installed (hack/install-deps.sh)");
        return;
    }
    if !path_exists(&format!("{REF_DIR}/loopback")) {
        eprintln!("skipping containerd test: {REF_DIR}/loopback missing (containernetworking-plugins)");
        return;
    }
    let net = TestNet::new();
    let dir = tempfile::Builder::new().prefix("crlctd").tempdir_in("/tmp").unwrap();
    let ctd = Containerd::start(dir.path(), &registry, &net);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let res = rt.block_on(scenario(&ctd, &net));
    rt.block_on(cleanup(&ctd));
    if let Err(e) = res {
        let log = ctd.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!("{e}\ncontainerd log (last lines, newest first):\n{}", tail.join("\n"));
    }
    drop(ctd);
}
