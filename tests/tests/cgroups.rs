//! cgroups as the node sees them, on whatever this host runs: cgroup v1 (the CI host), cgroup v2
//! with the cgroupfs driver and cgroup v2 with the systemd driver (both in the guest that
//! hack/test.sh boots; `CORRAL_TEST_CGROUP_DRIVER` picks the driver). Every test checks the
//! kernel's files, not what corrald says about them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tests::cri_api::v1 as cri;
use tests::node::{cgroup_v2, systemd_driver, Node};
use tests::{require_env, require_root, rpc};
use tonic::Code;

fn limits(r: cri::LinuxContainerResources) -> Option<cri::LinuxContainerConfig> {
    Some(cri::LinuxContainerConfig { resources: Some(r), ..Default::default() })
}

/// The host pid of a container's process.
async fn host_pid(node: &Node, id: &str) -> u32 {
    let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: true };
    let info = rpc(node.rt().container_status(req)).await.expect("ContainerStatus").into_inner().info;
    let v: serde_json::Value = serde_json::from_str(&info["info"]).expect("verbose info");
    v["pid"].as_u64().expect("pid in the verbose info") as u32
}

#[tokio::test]
async fn runtime_config_reports_the_driver() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let rc = rpc(node.rt().runtime_config(cri::RuntimeConfigRequest {})).await.expect("RuntimeConfig").into_inner();
    let want = if systemd_driver() { cri::CgroupDriver::Systemd } else { cri::CgroupDriver::Cgroupfs };
    assert_eq!(rc.linux.expect("linux").cgroup_driver, want as i32);
}

/// The container's process is in its own cgroup (a scope named by its id with systemd); on v2 it
/// has a cgroup namespace rooted there, and /sys/fs/cgroup shows that cgroup read-only.
#[tokio::test]
async fn the_container_sees_its_own_cgroup_read_only() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("own", cri::NamespaceMode::Container).await;
    let mut cfg = node.container_config("c", &["sleep", "3600"]);
    cfg.linux = limits(cri::LinuxContainerResources { memory_limit_in_bytes: 48 << 20, ..Default::default() });
    let c = node.run(&pod, &pc, cfg).await;

    let pid = host_pid(&node, &c).await;
    let host_view = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let leaf = if systemd_driver() { format!("/corral-{c}.scope") } else { format!("/{c}") };
    // Every hierarchy corral uses: the v2 line, or each v1 controller's.
    let used =
        |l: &&str| if cgroup_v2() { l.starts_with("0::") } else { l.contains(":memory:") || l.contains(":pids:") };
    let lines: Vec<&str> = host_view.lines().filter(used).collect();
    assert!(!lines.is_empty() && lines.iter().all(|l| l.ends_with(&leaf)), "{host_view}");
    assert!(lines.iter().all(|l| l.contains(&node.cgroup_parent_path())), "{host_view}");

    let inside = node.sh(&c, "cat /proc/self/cgroup").await;
    let touch = node.sh(&c, "touch /sys/fs/cgroup/x 2>&1; echo rc=$?").await;
    assert!(touch.contains("Read-only file system") && touch.ends_with("rc=1"), "{touch}");
    if cgroup_v2() {
        assert_eq!(inside, "0::/", "a cgroup namespace rooted at the container's cgroup");
        assert_eq!(node.sh(&c, "cat /sys/fs/cgroup/memory.max").await, (48u64 << 20).to_string());
        let mounts = node.sh(&c, "grep ' /sys/fs/cgroup ' /proc/self/mounts").await;
        assert!(mounts.starts_with("cgroup2 /sys/fs/cgroup cgroup2 ro,"), "{mounts}");
    } else {
        // v1: no cgroup namespace (containerd's choice); each hierarchy is the container's dir.
        assert!(inside.lines().any(|l| l.ends_with(&leaf)), "{inside}");
        assert_eq!(node.sh(&c, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes").await, (48u64 << 20).to_string());
    }
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

/// The kernel refuses a device the container was not given: on v1 through the devices
/// controller, on v2 through corral's eBPF device program.
#[tokio::test]
async fn devices_not_given_cannot_be_opened() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("dev", cri::NamespaceMode::Container).await;
    let c = node.run(&pod, &pc, node.container_config("c", &["sleep", "3600"])).await;
    // CAP_MKNOD is in the default set, and the default rules allow mknod of any node, but
    // neither reading nor writing one that is not on the list (/dev/sda's numbers here).
    let out = node.sh(&c, "mknod /tmp/disk b 8 0 && echo made; head -c1 /tmp/disk >/dev/null 2>&1; echo read=$?").await;
    assert_eq!(out, "made\nread=1", "a block device not given was readable");
    let out = node.sh(&c, "mknod /tmp/mem c 1 1 && echo made; head -c1 /tmp/mem >/dev/null 2>&1; echo read=$?").await;
    assert_eq!(out, "made\nread=1", "/dev/mem's numbers were readable");
    // What the container was given works: /dev/null, /dev/zero, /dev/urandom, its terminal devices.
    let ok =
        node.sh(&c, "head -c4 /dev/zero | wc -c; echo x > /dev/null && echo null; head -c1 /dev/urandom | wc -c").await;
    assert_eq!(ok, "4\nnull\n1");
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

/// `unified` keys are written as given on v2 and refused on v1; huge page limits land in the
/// hugetlb controller where the kernel has one.
#[tokio::test]
async fn unified_keys_and_huge_page_limits() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("uni", cri::NamespaceMode::Container).await;
    let mut cfg = node.container_config("c", &["sleep", "3600"]);
    cfg.linux = limits(cri::LinuxContainerResources {
        memory_limit_in_bytes: 96 << 20,
        unified: HashMap::from([
            ("memory.high".to_string(), (64u64 << 20).to_string()),
            ("memory.low".to_string(), (8u64 << 20).to_string()),
            ("memory.min".to_string(), (4u64 << 20).to_string()),
        ]),
        ..Default::default()
    });
    if !cgroup_v2() {
        let e = node.create(&pod, &pc, cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("needs cgroup v2"), "{e:?}");
    } else {
        let c = node.run(&pod, &pc, cfg).await;
        assert_eq!(node.cgroup_value(&c, "memory", "memory.high"), (64u64 << 20).to_string());
        assert_eq!(node.cgroup_value(&c, "memory", "memory.low"), (8u64 << 20).to_string());
        assert_eq!(node.cgroup_value(&c, "memory", "memory.min"), (4u64 << 20).to_string());
        assert_eq!(node.cgroup_value(&c, "memory", "memory.max"), (96u64 << 20).to_string());
        // A key for no file of the cgroup is an error, not ignored.
        let mut bad = node.container_config("bad", &["sleep", "3600"]);
        bad.linux = limits(cri::LinuxContainerResources {
            unified: HashMap::from([("memory.nosuchfile".to_string(), "1".to_string())]),
            ..Default::default()
        });
        let e = match node.create(&pod, &pc, bad).await {
            Ok(id) => node.start(&id).await.map(|_| id),
            Err(e) => Err(e),
        }
        .expect_err("a unified key with no file");
        assert!(e.message().contains("memory.nosuchfile"), "{e:?}");
    }
    let hugetlb = if cgroup_v2() {
        let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        controllers.split_whitespace().any(|c| c == "hugetlb")
    } else {
        Node::hierarchies().iter().any(|h| h.ends_with("hugetlb"))
    };
    if hugetlb {
        let mut cfg = node.container_config("huge", &["sleep", "3600"]);
        cfg.linux = limits(cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit { page_size: "2MB".into(), limit: 4 << 21 }],
            ..Default::default()
        });
        let c = node.run(&pod, &pc, cfg).await;
        let file = if cgroup_v2() { "hugetlb.2MB.max" } else { "hugetlb.2MB.limit_in_bytes" };
        assert_eq!(node.cgroup_value(&c, "hugetlb", file), (4u64 << 21).to_string());
    } else {
        eprintln!("no hugetlb controller on this kernel: huge page limits not checked");
    }
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

/// Pod-level limits go in the pod cgroup corral makes (a slice with systemd), and a pod whose
/// parent the kubelet names gets its containers there.
#[tokio::test]
async fn pod_cgroups_with_and_without_a_parent() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let mut pc = node.pod_config("limited", cri::NamespaceMode::Pod);
    let linux = pc.linux.get_or_insert_with(Default::default);
    linux.resources =
        Some(cri::LinuxContainerResources { memory_limit_in_bytes: 200 << 20, cpu_shares: 256, ..Default::default() });
    let pod = node.run_pod_with(pc.clone()).await.expect("RunPodSandbox");
    let c = node.run(&pod, &pc, node.container_config("c", &["sleep", "3600"])).await;
    let pod_dir: Vec<PathBuf> = node
        .container_cgroups(&c)
        .iter()
        .filter_map(|d| d.parent().map(PathBuf::from))
        .filter(|d| d.join(if cgroup_v2() { "memory.max" } else { "memory.limit_in_bytes" }).exists())
        .collect();
    assert_eq!(pod_dir.len(), 1, "{pod_dir:?}");
    let read = |f: &str| std::fs::read_to_string(pod_dir[0].join(f)).unwrap().trim().to_string();
    if cgroup_v2() {
        assert_eq!(read("memory.max"), (200u64 << 20).to_string());
    } else {
        assert_eq!(read("memory.limit_in_bytes"), (200u64 << 20).to_string());
    }
    if systemd_driver() {
        let name = pod_dir[0].file_name().unwrap().to_string_lossy().to_string();
        assert!(name.ends_with(".slice") && name.starts_with(node.cgroup_parent.trim_end_matches(".slice")), "{name}");
        // systemd holds the limit as a property of the slice, so it keeps it.
        let out = std::process::Command::new("systemctl").args(["show", "-p", "MemoryMax", &name]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("MemoryMax={}", 200u64 << 20));
    }

    // A parent named by the request (the kubelet's pod cgroup).
    let parent = if systemd_driver() {
        format!("{}-kubepod1.slice", node.cgroup_parent.trim_end_matches(".slice"))
    } else {
        format!("{}/kubepod1", node.cgroup_parent)
    };
    let mut pc2 = node.pod_config("parented", cri::NamespaceMode::Pod);
    pc2.linux.get_or_insert_with(Default::default).cgroup_parent = parent.clone();
    let pod2 = node.run_pod_with(pc2.clone()).await.expect("RunPodSandbox with a parent");
    let c2 = node.run(&pod2, &pc2, node.container_config("c", &["sleep", "3600"])).await;
    let leaf = tests::node::expand_slice_or_path(&parent);
    assert!(node.container_cgroups(&c2).iter().all(|d| d.to_string_lossy().contains(&leaf)), "{leaf}");
    // The other driver's form of parent is refused.
    let wrong = if systemd_driver() { "/kubepods/pod1".to_string() } else { "kubepods-pod1.slice".to_string() };
    let mut pc3 = node.pod_config("wrong", cri::NamespaceMode::Pod);
    pc3.linux.get_or_insert_with(Default::default).cgroup_parent = wrong;
    assert_eq!(node.run_pod_with(pc3).await.unwrap_err().code(), Code::InvalidArgument);

    node.remove_pod(&pod).await.unwrap();
    node.remove_pod(&pod2).await.unwrap();
    node.assert_nothing_left().await;
}

/// A shim lost with kill -9 leaves its container's processes in their cgroup: RemovePodSandbox
/// kills them and removes every cgroup of the pod.
#[tokio::test]
async fn pod_cgroup_removed_when_a_process_lingers() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("linger", cri::NamespaceMode::Pod).await;
    let c = node.run(&pod, &pc, node.container_config("c", &["sleep", "3600"])).await;
    let pid = host_pid(&node, &c).await;
    let before = node.shim_pids();
    for shim in &before {
        let cmdline = std::fs::read_to_string(format!("/proc/{shim}/cmdline")).unwrap_or_default();
        if cmdline.contains(&c[..16]) {
            // SAFETY: kill has no memory preconditions; this shim was started by our corrald.
            unsafe { libc::kill(*shim as i32, libc::SIGKILL) };
        }
    }
    assert!(tests::wait_for(Duration::from_secs(10), || node.shim_pids().len() < before.len()).await, "shim alive");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the container process outlives its shim");
    node.remove_pod(&pod).await.expect("RemovePodSandbox");
    let gone = tests::wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    })
    .await;
    assert!(gone, "the lingering container process was not killed");
    node.assert_nothing_left().await;
}

/// The systemd driver on a host without systemd is refused at start, not pod by pod.
#[tokio::test]
async fn the_systemd_driver_needs_systemd() {
    require_root!();
    if std::path::Path::new("/run/systemd/system").exists() {
        eprintln!("systemd runs here: nothing to refuse");
        return;
    }
    let c = tests::Corrald::prepare(None);
    // A corrald that wrongly starts is killed when the output is dropped with it.
    let run = |driver: &str| {
        let mut cmd = tokio::process::Command::from(c.command());
        cmd.arg("--cgroup-driver").arg(driver).kill_on_drop(true);
        async move { tokio::time::timeout(Duration::from_secs(20), cmd.output()).await }
    };
    let out = run("systemd").await.expect("corrald kept running with the systemd driver").unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("needs systemd as the init system"), "{err}");
    let out = run("upstart").await.expect("corrald kept running with an unknown driver").unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not cgroupfs or systemd"), "{out:?}");
}
