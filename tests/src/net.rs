//! A node with a real pod network: corrald calling a real CNI chain (corral-cni, or the
//! reference bridge + host-local + portmap from Debian's containernetworking-plugins), each with
//! its own bridge name, subnet, CNI conf dir, IPAM dataDir and cgroup parent, and a guard that
//! removes the pods, then the bridge, whatever happens.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;

use crate::cri_api::v1 as cri;
use crate::{rpc, Corrald, TestEnv};

pub const BUSYBOX: &str = "corral/busybox:latest";
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Chain {
    Corral,
    Reference,
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).expect("urandom");
    b
}

pub fn target_debug() -> PathBuf {
    crate::corrald_binary().parent().expect("target dir").to_path_buf()
}

pub struct Net {
    pub c: Corrald,
    pub env: TestEnv,
    pub bridge: String,
    pub subnet: String,
    pub cgroup_parent: String,
    _cni: tempfile::TempDir,
    pub data_dir: PathBuf,
    /// Whether the reference portmap's shared chains existed before this test; if not, the
    /// test removes them (the reference plugin never does).
    hostport_chains_before: bool,
}

pub fn hostport_chains_exist() -> bool {
    Command::new("iptables")
        .args(["-t", "nat", "-S", "CNI-HOSTPORT-DNAT"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Removes the reference portmap's shared chains and the jumps to them, in one batch, when no
/// pod uses them anymore.
pub fn remove_hostport_chains() {
    let Ok(out) = Command::new("iptables").args(["-t", "nat", "-S", "CNI-HOSTPORT-DNAT"]).output() else { return };
    if String::from_utf8_lossy(&out.stdout).lines().count() > 1 {
        return; // still in use
    }
    let Ok(save) = Command::new("iptables-save").args(["-t", "nat"]).output() else { return };
    let mut batch = String::from("*nat\n");
    for line in String::from_utf8_lossy(&save.stdout).lines() {
        let jumps = ["-j CNI-HOSTPORT-DNAT", "-j CNI-HOSTPORT-MASQ", "-j CNI-HOSTPORT-SETMARK"];
        if line.starts_with("-A ") && !line.starts_with("-A CNI-HOSTPORT-") && jumps.iter().any(|j| line.ends_with(j)) {
            batch.push_str(&line.replacen("-A ", "-D ", 1));
            batch.push('\n');
        }
    }
    for c in ["CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"] {
        batch.push_str(&format!("-F {c}\n-X {c}\n"));
    }
    batch.push_str("COMMIT\n");
    if let Ok(mut child) = Command::new("iptables-restore").arg("--noflush").stdin(std::process::Stdio::piped()).spawn()
    {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(batch.as_bytes());
        }
        let _ = child.wait();
    }
}

impl Net {
    pub async fn boot(env: TestEnv, chain: Chain) -> Net {
        let r = random_bytes::<4>();
        let bridge = format!("crlt{}", hex::encode(&r[..3]));
        let subnet = format!("10.{}.{}.0/24", 200 + r[3] % 50, r[0]);
        let cni = tempfile::Builder::new().prefix("corral-it-net.").tempdir().expect("temp dir");
        let conf_dir = cni.path().join("net.d");
        let data_dir = cni.path().join("ipam");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let name = format!("it-{}", hex::encode(&r[..3]));
        let bridge_conf = serde_json::json!({
            "type": if chain == Chain::Corral { "corral-cni" } else { "bridge" },
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": subnet }]], "dataDir": data_dir },
        });
        let plugins = match chain {
            Chain::Corral => {
                let mut p = bridge_conf;
                p["capabilities"] = serde_json::json!({ "portMappings": true });
                vec![p]
            }
            Chain::Reference => vec![
                bridge_conf,
                serde_json::json!({ "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }),
            ],
        };
        let conflist = serde_json::json!({ "cniVersion": "1.0.0", "name": name, "plugins": plugins });
        std::fs::write(conf_dir.join("10-it.conflist"), conflist.to_string()).unwrap();
        let cgroup_parent = format!("/corral/it-{}", hex::encode(&r[..3]));
        let config = format!(
            "cgroup_parent = \"{cgroup_parent}\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"{}\", \"{REFERENCE_PLUGINS}\"]\n",
            conf_dir.display(),
            target_debug().display()
        );
        let c = Corrald::with_config(&config).await;
        let hostport_chains_before = hostport_chains_exist();
        let net = Net { c, env, bridge, subnet, cgroup_parent, _cni: cni, data_dir, hostport_chains_before };
        net.c.pull(&net.env.image(BUSYBOX)).await.expect("pulling busybox");
        net
    }

    pub fn rt(&self) -> crate::Runtime {
        self.c.runtime()
    }

    pub fn pod_config(&self, name: &str, host_port: Option<i32>) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "net".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.c.dir().join("logs").join(name).display().to_string(),
            port_mappings: host_port.map(|hp| vec![crate::port(cri::Protocol::Tcp, 80, hp, "")]).unwrap_or_default(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A pod with one container running `script`; returns (pod id, container id, pod IP).
    pub async fn pod(&self, name: &str, host_port: Option<i32>, script: &str) -> (String, String, String) {
        self.pod_with(self.pod_config(name, host_port), script).await
    }

    /// A pod of `pc` with one container running `script`; returns (pod id, container id, pod IP).
    pub async fn pod_with(&self, pc: cri::PodSandboxConfig, script: &str) -> (String, String, String) {
        let name = pc.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let pod = rpc(self
            .rt()
            .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc.clone()), runtime_handler: String::new() }))
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
        let cfg = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "main".into(), attempt: 0 }),
            image: Some(crate::spec(&self.env.image(BUSYBOX))),
            command: vec!["sh".into(), "-c".into(), script.into()],
            log_path: "main.log".into(),
            ..Default::default()
        };
        let ctr = rpc(self.rt().create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(pc),
        }))
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
        rpc(self.rt().start_container(cri::StartContainerRequest { container_id: ctr.clone() }))
            .await
            .expect("StartContainer");
        let st = rpc(self
            .rt()
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false }))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
        let ip = st.network.expect("network status").ip;
        assert!(!ip.is_empty(), "pod {name} has no IP");
        (pod, ctr, ip)
    }

    pub async fn exec(&self, ctr: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        let req = cri::ExecSyncRequest {
            container_id: ctr.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 20,
        };
        rpc(self.rt().exec_sync(req)).await.expect("ExecSync").into_inner()
    }

    pub async fn remove_pod(&self, id: &str) {
        rpc(self.rt().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() }))
            .await
            .expect("StopPodSandbox");
        rpc(self.rt().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() }))
            .await
            .expect("RemovePodSandbox");
    }

    /// veths enslaved to this test's bridge.
    pub fn veths(&self) -> Vec<String> {
        let out = Command::new("ip").args(["-o", "link", "show", "master", &self.bridge]).output().expect("ip link");
        String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
    }

    /// Addresses host-local holds in the dataDir.
    pub fn allocations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for net in crate::dir_names(&self.data_dir) {
            for f in crate::dir_names(&self.data_dir.join(&net)) {
                if f.parse::<std::net::IpAddr>().is_ok() {
                    out.push(f);
                }
            }
        }
        out
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        crate::remove_all_pods(&self.c.socket);
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
        if !self.hostport_chains_before {
            remove_hostport_chains();
        }
        for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(h.path().join(self.cgroup_parent.trim_start_matches('/')));
        }
    }
}
