//! A node for pod and container tests: a real corrald with corral-shim, its own state dirs and
//! cgroup parent (`/corral/it-<random>`), a recording fake CNI plugin, busybox pulled, and a
//! `Drop` that removes every pod through the CRI and then, whatever happened, kills the shims
//! this corrald started, unmounts what is left under its directories and removes its cgroups,
//! so a failing test leaks nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cri_api::v1 as cri;
use crate::{rpc, Corrald, TestEnv};

pub const BUSYBOX: &str = "corral/busybox:latest";

/// containerd's default capability set as a CapEff mask.
pub const DEFAULT_CAP_EFF: &str = "00000000a80425fb";

/// What the kubelet sends as masked and read-only paths for procMount Default.
pub const KUBELET_MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
pub const KUBELET_READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

pub struct Node {
    pub c: Corrald,
    pub env: TestEnv,
    pub cgroup_parent: String,
    /// CNI conf and bin dirs with a recording fake plugin (real networks: tests/tests/network.rs).
    pub cni: tempfile::TempDir,
}

/// A CNI plugin that hands out a fixed address and records every call in `calls` (and its last
/// stdin in `last-stdin`, its last CNI_ARGS in `last-args`); a file `fail` beside it makes ADD fail, a file `slow` makes it take
/// a second.
pub const FAKE_PLUGIN: &str = r#"#!/bin/sh
dir=$(dirname "$0")
cat > "$dir/last-stdin"
echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME" >> "$dir/calls"
printf '%s' "$CNI_ARGS" > "$dir/last-args"
case "$CNI_COMMAND" in
ADD)
  if [ -e "$dir/slow" ]; then sleep 1; fi
  if [ -e "$dir/fail" ]; then echo '{"cniVersion":"1.0.0","code":11,"msg":"fake failure","details":"asked to fail"}'; exit 1; fi
  echo '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"'"$CNI_NETNS"'"}],"ips":[{"address":"10.99.0.2/24","interface":0}]}' ;;
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
esac
"#;

pub fn fake_cni() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("corral-it-cni.").tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("net.d")).unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    let plugin = dir.path().join("bin").join("fake-cni");
    std::fs::write(&plugin, FAKE_PLUGIN).unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("net.d").join("10-fake.conflist"),
        r#"{"cniVersion":"1.0.0","name":"fake","plugins":[{"type":"fake-cni","capabilities":{"portMappings":true}}]}"#,
    )
    .unwrap();
    dir
}

pub fn random_suffix() -> String {
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).expect("urandom");
    hex::encode(b)
}

/// Whether this host runs cgroup v2 only (/sys/fs/cgroup is the unified hierarchy).
pub fn cgroup_v2() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 "))
}

/// The cgroup driver the tests run corrald with: `CORRAL_TEST_CGROUP_DRIVER` (the guest runs of
/// hack/test.sh set it), cgroupfs by default.
pub fn systemd_driver() -> bool {
    match std::env::var("CORRAL_TEST_CGROUP_DRIVER").as_deref() {
        Ok("systemd") => true,
        Ok("cgroupfs") | Err(_) => false,
        Ok(other) => panic!("CORRAL_TEST_CGROUP_DRIVER={other:?} is not cgroupfs or systemd"),
    }
}

/// A pod cgroup parent as a path: a slice expanded, a path as it is.
pub fn expand_slice_or_path(parent: &str) -> String {
    if parent.ends_with(".slice") {
        common::systemd::expand_slice(parent).expect("a slice name")
    } else {
        parent.to_string()
    }
}

impl Node {
    pub async fn boot(env: TestEnv) -> Node {
        if std::env::var("CORRAL_TEST_REQUIRE_CGROUP_V2").is_ok_and(|v| v == "1") {
            assert!(cgroup_v2(), "CORRAL_TEST_REQUIRE_CGROUP_V2=1 but /sys/fs/cgroup is not cgroup2");
        }
        let systemd = systemd_driver();
        if systemd {
            assert!(
                Path::new("/run/systemd/private").exists(),
                "CORRAL_TEST_CGROUP_DRIVER=systemd but systemd is not running (no /run/systemd/private)"
            );
        }
        let cgroup_parent = if systemd {
            format!("corral-it{}.slice", random_suffix())
        } else {
            format!("/corral/it-{}", random_suffix())
        };
        let cni = fake_cni();
        let config = format!(
            "cgroup_driver = \"{}\"\ncgroup_parent = \"{cgroup_parent}\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"{}\"]\n",
            if systemd { "systemd" } else { "cgroupfs" },
            cni.path().join("net.d").display(),
            cni.path().join("bin").display()
        );
        let c = Corrald::with_config(&config).await;
        let node = Node { c, env, cgroup_parent, cni };
        node.c.pull(&node.env.image(BUSYBOX)).await.expect("pulling busybox");
        node
    }

    pub fn rt(&self) -> crate::Runtime {
        self.c.runtime()
    }

    pub fn pod_config(&self, name: &str, pid: cri::NamespaceMode) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.c.dir().join("logs").join(name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption { pid: pid as i32, ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub async fn run_pod_with(&self, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        rpc(self
            .rt()
            .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }))
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
    }

    pub async fn run_pod(&self, name: &str, pid: cri::NamespaceMode) -> (String, cri::PodSandboxConfig) {
        let config = self.pod_config(name, pid);
        let id = self.run_pod_with(config.clone()).await.expect("RunPodSandbox");
        (id, config)
    }

    /// A container config as the kubelet shapes it: a log path and procMount Default's masked
    /// and read-only paths.
    pub fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(crate::spec(&self.env.image(BUSYBOX))),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    masked_paths: KUBELET_MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
                    readonly_paths: KUBELET_READONLY_PATHS.iter().map(|p| p.to_string()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub async fn create(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        rpc(self.rt().create_container(req)).await.map(|r| r.into_inner().container_id)
    }

    pub async fn start(&self, id: &str) -> Result<(), tonic::Status> {
        rpc(self.rt().start_container(cri::StartContainerRequest { container_id: id.into() })).await.map(|_| ())
    }

    pub async fn run(&self, pod: &str, pod_config: &cri::PodSandboxConfig, config: cri::ContainerConfig) -> String {
        let id = self.create(pod, pod_config, config).await.expect("CreateContainer");
        self.start(&id).await.expect("StartContainer");
        id
    }

    pub async fn status(&self, id: &str) -> cri::ContainerStatus {
        rpc(self.rt().container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false }))
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status")
    }

    pub async fn wait_exited(&self, id: &str, timeout: Duration) -> cri::ContainerStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let s = self.status(id).await;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "container {id} did not exit within {timeout:?}: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn exec(&self, id: &str, cmd: &[&str], timeout: i64) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let req =
            cri::ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout };
        rpc(self.rt().exec_sync(req)).await.map(|r| r.into_inner())
    }

    pub async fn sh(&self, id: &str, script: &str) -> String {
        let out = self.exec(id, &["sh", "-c", script], 30).await.unwrap_or_else(|e| panic!("exec {script:?}: {e}"));
        assert_eq!(out.exit_code, 0, "exec {script:?}: stderr {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        rpc(self.rt().stop_container(cri::StopContainerRequest { container_id: id.into(), timeout })).await.map(|_| ())
    }

    pub async fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        rpc(self.rt().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() })).await?;
        rpc(self.rt().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() })).await.map(|_| ())
    }

    pub fn log_path(&self, pod: &str, name: &str) -> PathBuf {
        self.c.dir().join("logs").join(pod).join(format!("{name}.log"))
    }

    /// Host pids of corral-shim processes serving this corrald's bundles.
    pub fn shim_pids(&self) -> Vec<u32> {
        let needle = self.c.state.display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            let cmd = String::from_utf8_lossy(&cmdline);
            if cmd.contains("corral-shim") && cmd.contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Mount points under this corrald's temp dir.
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(self.c.dir())
    }

    /// The test's parent cgroup as a path below a hierarchy's root.
    pub fn cgroup_parent_path(&self) -> String {
        expand_slice_or_path(&self.cgroup_parent)
    }

    /// The dirs of the hierarchies this host places processes in: /sys/fs/cgroup on v2, one per
    /// v1 controller hierarchy.
    pub fn hierarchies() -> Vec<PathBuf> {
        if cgroup_v2() {
            return vec![PathBuf::from("/sys/fs/cgroup")];
        }
        std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten().map(|h| h.path()).collect()
    }

    /// Cgroup directories under this test's parent, in any hierarchy.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let rel = self.cgroup_parent_path();
        for h in Node::hierarchies() {
            collect_dirs(&h.join(rel.trim_start_matches('/')), &mut out);
        }
        out
    }

    /// The container's cgroup dirs (one per hierarchy): `<id>` with cgroupfs, `corral-<id>.scope`
    /// with systemd, somewhere below the test's parent.
    pub fn container_cgroups(&self, id: &str) -> Vec<PathBuf> {
        let scope = format!("corral-{id}.scope");
        self.cgroups()
            .into_iter()
            .filter(|d| d.file_name().is_some_and(|n| n == std::ffi::OsStr::new(id) || n == scope.as_str()))
            .collect()
    }

    /// A file of the container's cgroup: `v1` names the v1 controller hierarchy it is in.
    pub fn cgroup_value(&self, id: &str, v1: &str, file: &str) -> String {
        let dirs = self.container_cgroups(id);
        let dir = dirs
            .iter()
            .find(|d| cgroup_v2() || d.strip_prefix("/sys/fs/cgroup").is_ok_and(|r| r.starts_with(v1)))
            .unwrap_or_else(|| panic!("no cgroup of {id} for {v1} in {dirs:?}"));
        let p = dir.join(file);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).trim().to_string()
    }

    /// Fails the test unless [`Node::leftovers`] is empty within 10 s (shims exit, mounts and
    /// cgroups go asynchronously to the last RPC's answer).
    pub async fn assert_nothing_left(&self) {
        let gone = crate::wait_for(std::time::Duration::from_secs(10), || self.leftovers().is_empty()).await;
        assert!(gone, "left behind: {:?}", self.leftovers());
    }

    /// What must be gone once every pod is removed.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for pid in self.shim_pids() {
            left.push(format!("shim process {pid}"));
        }
        for m in self.mounts() {
            left.push(format!("mount {m}"));
        }
        for d in self.cgroups() {
            // The parent itself is shared by every pod and stays; anything below it is a leak.
            if !d.ends_with(self.cgroup_parent_path().trim_start_matches('/')) {
                left.push(format!("cgroup {}", d.display()));
            }
        }
        for sub in ["pods", "containers"] {
            for name in crate::dir_names(&self.c.state.join(sub)) {
                left.push(format!("state {sub}/{name}"));
            }
        }
        for name in crate::dir_names(&self.c.root.join("pods")) {
            left.push(format!("root pods/{name}"));
        }
        left
    }
}

pub fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_dirs(&e.path(), out);
        }
    }
    out.push(dir.to_path_buf());
}

impl Drop for Node {
    fn drop(&mut self) {
        // 1. Remove every pod through the CRI.
        crate::remove_all_pods(&self.c.socket);
        // 2. Whatever is left: shims by pid, mounts, cgroups.
        for pid in self.shim_pids() {
            // SAFETY: kill has no memory preconditions; these shims were started by our corrald.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let mut mounts = self.mounts();
        mounts.reverse();
        for m in mounts {
            let c = std::ffi::CString::new(m).expect("mount path");
            // SAFETY: c is a valid NUL-terminated string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        std::thread::sleep(Duration::from_millis(100));
        if self.cgroup_parent.ends_with(".slice") {
            // systemd owns the slices and scopes: stopping the parent slice stops them all.
            let _ = std::process::Command::new("systemctl").args(["stop", &self.cgroup_parent]).status();
        }
        for d in self.cgroups() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

/// Mount points (of this mount namespace) under `dir`.
pub fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let base = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m.starts_with(&base))
        .collect()
}
