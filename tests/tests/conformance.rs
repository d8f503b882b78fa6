//! The CRI as clients we did not write speak it: requests that set only the required fields
//! (metadata, and the image for containers) get containerd's defaults, requests shaped like the
//! kubelet's work, bad fields are refused with InvalidArgument before any side effect, and the
//! CRI 1.36 fields and RPCs are served: image volumes, recursive read-only mounts, the
//! supplemental groups policy, the stop signal, the Stream* list RPCs and
//! UpdatePodSandboxResources.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use tests::cri_api::v1 as cri;
use tests::node::{text, Node, BUSYBOX, DEFAULT_CAP_EFF};
use tests::{require_env, require_root, rpc};
use tonic::Code;

/// The node's hostname, which pods without one get.
fn node_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

/// A sandbox config with only metadata.name set: no uid, namespace, hostname, log directory,
/// DNS, port mappings or Linux part.
fn minimal_pod(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: name.into(), ..Default::default() }),
        ..Default::default()
    }
}

/// A container config with only metadata and image.
fn minimal_container(name: &str, image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(tests::spec(image)),
        ..Default::default()
    }
}

fn security(sc: cri::LinuxContainerSecurityContext) -> Option<cri::LinuxContainerConfig> {
    Some(cri::LinuxContainerConfig { security_context: Some(sc), ..Default::default() })
}

/// The CNI plugin's calls so far ("ADD <id> eth0", ...).
fn cni_calls(node: &Node) -> Vec<String> {
    std::fs::read_to_string(node.cni.path().join("bin/calls")).unwrap_or_default().lines().map(String::from).collect()
}

/// The config the CNI plugin read on stdin at its last call.
fn cni_last_stdin(node: &Node) -> serde_json::Value {
    let text = std::fs::read_to_string(node.cni.path().join("bin/last-stdin")).expect("the plugin ran");
    serde_json::from_str(&text).expect("CNI config is JSON")
}

async fn pod_status(node: &Node, id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
    let resp =
        rpc(node.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true }))
            .await
            .expect("PodSandboxStatus")
            .into_inner();
    let info = serde_json::from_str(resp.info.get("info").expect("verbose info")).expect("info is JSON");
    (resp.status.expect("status"), info)
}

async fn list_pods(node: &Node) -> Vec<cri::PodSandbox> {
    rpc(node.rt().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

/// Nothing of a refused request: no pod sandbox state, no container bundle.
fn no_state_left(node: &Node) -> Vec<String> {
    let mut left = Vec::new();
    for sub in ["pods", "containers"] {
        for name in tests::dir_names(&node.c.state.join(sub)) {
            left.push(format!("state {sub}/{name}"));
        }
    }
    left
}

#[tokio::test]
async fn a_pod_and_container_with_only_the_required_fields_run_with_containerd_defaults() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env.clone()).await;
    // The CRI validation suite's pod names are 68 characters; sethostname takes at most 64.
    let name = "p".repeat(68);
    let pod = node.run_pod_with(minimal_pod(&name)).await.expect("RunPodSandbox with only metadata.name");
    let (status, info) = pod_status(&node, &pod).await;
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.metadata.as_ref().unwrap().name, name);
    assert_eq!(info["hostname"], node_hostname());
    assert_eq!(status.network.as_ref().unwrap().ip, "10.99.0.2", "the network still comes from CNI");
    // The protobuf zero value of the PID namespace mode is POD: a shared PID namespace.
    assert_eq!(status.linux.unwrap().namespaces.unwrap().options.unwrap().pid, cri::NamespaceMode::Pod as i32);

    // Only metadata and image: the image's Cmd (`sh`, which ends at once without stdin).
    let image = env.image(BUSYBOX);
    let pc = minimal_pod(&name);
    let first = node.run(&pod, &pc, minimal_container("first", &image)).await;
    let s = node.wait_exited(&first, Duration::from_secs(30)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    assert_eq!(s.log_path, "", "no log directory, no log");
    let user = s.user.and_then(|u| u.linux).expect("ContainerStatus.user");
    assert_eq!((user.uid, user.gid, user.supplemental_groups), (0, 0, vec![0]));
    assert_eq!(s.stop_signal, cri::Signal::Sigterm as i32);
    assert!(s.resources.and_then(|r| r.linux).is_some(), "ContainerStatus.resources");

    let mut cfg = minimal_container("second", &image);
    cfg.command = vec!["sleep".into(), "3600".into()];
    let c = node.run(&pod, &pc, cfg).await;
    let host = node_hostname();
    assert_eq!(
        node.sh(&c, "hostname; cat /etc/hostname; echo $HOSTNAME; pwd; id").await,
        format!("{host}\n{host}\n{host}\n/\nuid=0(root) gid=0(root) groups=0(root)")
    );
    assert_eq!(
        node.sh(&c, "echo ${TERM:-none}; echo $PATH; echo $HOME").await,
        "none\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/root"
    );
    assert_eq!(
        node.sh(&c, "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status").await,
        format!("CapEff:\t{DEFAULT_CAP_EFF}\nNoNewPrivs:\t0\nSeccomp:\t0")
    );
    // containerd 2's sysctls in a pod's own network namespace.
    assert_eq!(
        node.sh(&c, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/net/ipv4/ping_group_range").await,
        "0\n0\t2147483647"
    );
    // No masked or read-only paths asked for, none made (the kubelet's procMount Unmasked), as
    // containerd does.
    assert_ne!(node.sh(&c, "cat /proc/timer_list | wc -c").await, "0");
    // The container's cgroup at /sys/fs/cgroup, read-only.
    let cgroup_mounts = node.sh(&c, "grep ' /sys/fs/cgroup' /proc/self/mounts").await;
    assert!(cgroup_mounts.lines().count() > 1 && cgroup_mounts.lines().all(|l| l.contains(" ro,")), "{cgroup_mounts}");
    let own = "p=$$; (cat /sys/fs/cgroup/pids/cgroup.procs 2>/dev/null || cat /sys/fs/cgroup/cgroup.procs) | grep -qx $p && echo mine";
    assert_eq!(node.sh(&c, own).await, "mine", "/sys/fs/cgroup is not the container's cgroup");

    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

/// A pod cgroup made as the kubelet makes it (every hierarchy), removed on drop with the
/// parents made for it, deepest first.
struct KubeletCgroup(String);

impl KubeletCgroup {
    fn create(cgroup: &str) -> KubeletCgroup {
        let k = KubeletCgroup(cgroup.to_string());
        for d in k.dirs() {
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        }
        k
    }

    fn dirs(&self) -> Vec<std::path::PathBuf> {
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten().map(|e| e.path());
        hierarchies
            .filter(|h| h.join("cgroup.procs").exists())
            .map(|h| h.join(self.0.trim_start_matches('/')))
            .collect()
    }
}

impl Drop for KubeletCgroup {
    fn drop(&mut self) {
        for d in self.dirs() {
            // Up to the test's own parent, which the Node guard removes.
            for dir in d.ancestors().take(4) {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

#[tokio::test]
async fn a_kubelet_shaped_pod_with_container_ports_and_no_host_ports() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env.clone()).await;
    // What the kubelet sends: hostname, log directory, PID mode CONTAINER, its own cgroup
    // parent, labels, annotations, DNS, and a PortMapping for every declared container port.
    let cgroup_parent = format!("{}/kubepods/besteffort/poduid-web", node.cgroup_parent);
    let mut pc = node.pod_config("web", cri::NamespaceMode::Container);
    pc.metadata.as_mut().unwrap().attempt = 1;
    pc.labels.insert("io.kubernetes.pod.name".into(), "web".into());
    pc.annotations.insert("kubernetes.io/config.source".into(), "api".into());
    pc.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    pc.port_mappings = vec![tests::port(cri::Protocol::Tcp, 80, 0, ""), tests::port(cri::Protocol::Udp, 53, 0, "")];
    pc.linux.as_mut().unwrap().cgroup_parent = cgroup_parent.clone();
    // The kubelet makes the pod's cgroup before RunPodSandbox and removes it after.
    let kubelet_cgroups = KubeletCgroup::create(&cgroup_parent);
    let pod = node.run_pod_with(pc.clone()).await.expect("RunPodSandbox with container ports and no host ports");
    // No host port, nothing for the plugin to map.
    let add = cni_last_stdin(&node);
    assert!(add.get("runtimeConfig").and_then(|r| r.get("portMappings")).is_none(), "portMappings sent: {add}");
    let (_, info) = pod_status(&node, &pod).await;
    assert_eq!(info["portMappings"], serde_json::json!([]));
    assert_eq!(info["cgroup"], cgroup_parent);

    let mut cfg = node.container_config("app", &["sleep", "3600"]);
    cfg.labels.insert("io.kubernetes.container.name".into(), "app".into());
    cfg.annotations.insert("io.kubernetes.container.restartCount".into(), "0".into());
    cfg.envs = vec![cri::KeyValue { key: "KUBERNETES_SERVICE_HOST".into(), value: "10.96.0.1".into() }];
    // The kubelet names the image by the id PullImage returned, and the pod's own name for it.
    let image_id = node.c.pull(&env.image(BUSYBOX)).await.unwrap();
    cfg.image = Some(cri::ImageSpec {
        image: image_id.clone(),
        user_specified_image: env.image(BUSYBOX),
        ..Default::default()
    });
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_shares: 2,
            oom_score_adj: 1000,
            ..Default::default()
        }),
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            masked_paths: vec!["/proc/kcore".into(), "/sys/firmware".into()],
            readonly_paths: vec!["/proc/sys".into()],
            ..Default::default()
        }),
    });
    let c = node.run(&pod, &pc, cfg).await;
    assert_eq!(
        node.sh(&c, "hostname; echo $KUBERNETES_SERVICE_HOST; cat /proc/1/oom_score_adj").await,
        "web\n10.96.0.1\n1000"
    );
    assert!(node.sh(&c, "cat /etc/resolv.conf").await.contains("options ndots:5"));
    let cgroup = node.sh(&c, "cat /proc/self/cgroup").await;
    assert!(cgroup.contains(&format!("{cgroup_parent}/{c}")), "{cgroup}");
    let s = node.status(&c).await;
    assert_eq!(s.labels.get("io.kubernetes.container.name").map(String::as_str), Some("app"));
    assert_eq!(s.resources.and_then(|r| r.linux).map(|l| l.cpu_shares), Some(2));
    // As containerd: the image's tag and repo digest in the status, its id in the list.
    let image = s.image.as_ref().unwrap();
    assert_eq!(
        (image.image.as_str(), image.user_specified_image.as_str()),
        (env.image(BUSYBOX).as_str(), env.image(BUSYBOX).as_str())
    );
    assert!(s.image_ref.contains("@sha256:"), "{}", s.image_ref);
    assert_eq!(s.image_id, image_id);
    let listed = rpc(node.rt().list_containers(cri::ListContainersRequest { filter: None }))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!((listed[0].image_ref.as_str(), listed[0].image_id.as_str()), (image_id.as_str(), image_id.as_str()));

    node.remove_pod(&pod).await.unwrap();
    // corral removed the container's cgroup and left the kubelet's to the kubelet.
    assert!(kubelet_cgroups.dirs().iter().all(|d| d.exists() && !d.join(&c).exists()));
    drop(kubelet_cgroups);
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn hostnames_and_port_mappings_are_checked_before_any_side_effect() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let refused = |what: &str, err: tonic::Status, field: &str| {
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(field), "{what}: {}", err.message());
    };
    let mut long = node.pod_config("long", cri::NamespaceMode::Container);
    long.hostname = "h".repeat(65);
    refused("65-byte hostname", node.run_pod_with(long).await.unwrap_err(), "hostname");
    let mut newline = node.pod_config("newline", cri::NamespaceMode::Container);
    newline.hostname = "web\n10.0.0.1 evil".into();
    refused("hostname with a newline", node.run_pod_with(newline).await.unwrap_err(), "hostname");
    let mut bad_port = node.pod_config("port", cri::NamespaceMode::Container);
    bad_port.port_mappings =
        vec![cri::PortMapping { protocol: 0, container_port: 80, host_port: 70000, host_ip: String::new() }];
    refused("host port 70000", node.run_pod_with(bad_port).await.unwrap_err(), "port_mappings[0].host_port");
    let mut bad_ip = node.pod_config("ip", cri::NamespaceMode::Container);
    bad_ip.port_mappings =
        vec![cri::PortMapping { protocol: 0, container_port: 80, host_port: 8080, host_ip: "not-an-ip".into() }];
    refused("host IP", node.run_pod_with(bad_ip).await.unwrap_err(), "port_mappings[0].host_ip");
    let mut bad_sysctl = node.pod_config("sysctl", cri::NamespaceMode::Container);
    bad_sysctl.linux.as_mut().unwrap().sysctls.insert("net/../../../tmp/x".into(), "1".into());
    refused("sysctl path", node.run_pod_with(bad_sysctl).await.unwrap_err(), "sysctl");
    let mut no_name = minimal_pod("");
    no_name.metadata.as_mut().unwrap().uid = "u".into();
    refused("no name", node.run_pod_with(no_name).await.unwrap_err(), "metadata.name");
    // No side effect: the plugin never ran, no pod and no state directory exists.
    assert!(cni_calls(&node).is_empty(), "CNI called: {:?}", cni_calls(&node));
    assert!(list_pods(&node).await.is_empty());
    assert!(no_state_left(&node).is_empty(), "{:?}", no_state_left(&node));

    // The longest hostname works; a host port mapping goes to CNI, the others do not.
    let mut max = node.pod_config("max", cri::NamespaceMode::Container);
    max.hostname = "h".repeat(64);
    max.port_mappings =
        vec![tests::port(cri::Protocol::Tcp, 80, 0, ""), tests::port(cri::Protocol::Udp, 53, 5353, "127.0.0.1")];
    let pod = node.run_pod_with(max.clone()).await.expect("a 64-byte hostname");
    let add = cni_last_stdin(&node);
    assert_eq!(
        add["runtimeConfig"]["portMappings"],
        serde_json::json!([{ "hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1" }]),
        "{add}"
    );
    let c = node.run(&pod, &max, node.container_config("c", &["sleep", "3600"])).await;
    assert_eq!(node.sh(&c, "hostname").await, "h".repeat(64));

    // A host-network pod without a hostname: the node's.
    let mut hostnet = minimal_pod("hostnet");
    hostnet.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let hp = node.run_pod_with(hostnet.clone()).await.unwrap();
    let (_, info) = pod_status(&node, &hp).await;
    assert_eq!(info["hostname"], node_hostname());
    node.remove_pod(&hp).await.unwrap();
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn users_groups_and_the_supplemental_groups_policy() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env.clone()).await;
    let groups_image = env.image("corral/groups:latest");
    node.c.pull(&groups_image).await.unwrap();
    node.c.pull(&env.image("corral/nonroot:latest")).await.unwrap();
    let (pod, pc) = node.run_pod("users", cri::NamespaceMode::Container).await;

    // run_as_group without run_as_user or run_as_username: refused, also over an image USER.
    for image in [env.image(BUSYBOX), env.image("corral/nonroot:latest")] {
        let mut cfg = node.container_config("group-only", &["true"]);
        cfg.image = Some(tests::spec(&image));
        cfg.linux = security(cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 1000 }),
            ..Default::default()
        });
        let err = node.create(&pod, &pc, cfg).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("run_as_group") && err.message().contains("run_as_user"), "{}", err.message());
    }
    assert!(tests::dir_names(&node.c.state.join("containers")).is_empty(), "a refused container left its bundle");
    // With a user name it is fine.
    let mut cfg = node.container_config("named", &["sleep", "3600"]);
    cfg.linux = security(cri::LinuxContainerSecurityContext {
        run_as_username: "nobody".into(),
        run_as_group: Some(cri::Int64Value { value: 4321 }),
        ..Default::default()
    });
    let named = node.run(&pod, &pc, cfg).await;
    assert_eq!(node.sh(&named, "id -un; id -g").await, "nobody\n4321");
    // HOME is the user's home from the image's /etc/passwd, as runc sets it.
    assert_eq!(node.sh(&named, "echo $HOME").await, "/nonexistent");
    let mut cfg = node.container_config("image-user", &["sh", "-c", "echo home=$HOME; sleep 3600"]);
    cfg.image = Some(tests::spec(&env.image("corral/nonroot:latest")));
    let image_user = node.run(&pod, &pc, cfg).await;
    assert_eq!(node.sh(&image_user, "echo $HOME").await, "/home/corral");
    let log = node.log_path("users", "image-user");
    assert!(
        tests::wait_for(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stdout F home=/home/corral"))
        .await
    );

    // The CRI validation suite's case: uid 1000 is in group 50000 by the image's /etc/group.
    let groups_of = |policy: Option<cri::SupplementalGroupsPolicy>| {
        let name = match policy {
            None => "unset",
            Some(cri::SupplementalGroupsPolicy::Merge) => "merge",
            Some(cri::SupplementalGroupsPolicy::Strict) => "strict",
        };
        let mut cfg = node.container_config(name, &["sleep", "3600"]);
        cfg.image = Some(tests::spec(&groups_image));
        cfg.linux = security(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            supplemental_groups: vec![1234],
            supplemental_groups_policy: policy.map(|p| p as i32).unwrap_or_default(),
            ..Default::default()
        });
        cfg
    };
    for (policy, want) in [
        (None, vec![1000, 1234, 50000]),
        (Some(cri::SupplementalGroupsPolicy::Merge), vec![1000, 1234, 50000]),
        (Some(cri::SupplementalGroupsPolicy::Strict), vec![1000, 1234]),
    ] {
        let c = node.run(&pod, &pc, groups_of(policy)).await;
        let ids: Vec<String> = want.iter().map(|g| g.to_string()).collect();
        assert_eq!(node.sh(&c, "id -G").await, ids.join(" "), "{policy:?}");
        let user = node.status(&c).await.user.and_then(|u| u.linux).expect("ContainerStatus.user");
        assert_eq!((user.uid, user.gid), (1000, 1000));
        let mut got = user.supplemental_groups.clone();
        got.sort();
        assert_eq!(got, want, "{policy:?}");
    }
    let status = rpc(node.rt().status(cri::StatusRequest { verbose: false })).await.unwrap().into_inner();
    assert!(status.features.expect("features").supplemental_groups_policy);

    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

/// A tmpfs mounted on `dir`, unmounted on drop (Node's guard also unmounts what is left).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let target = std::ffi::CString::new(dir.display().to_string()).unwrap();
        // SAFETY: every pointer is a valid NUL-terminated string for the duration of the call.
        let rc = unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
        assert_eq!(rc, 0, "mounting tmpfs on {}: {}", dir.display(), std::io::Error::last_os_error());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.display().to_string()).unwrap();
        // SAFETY: target is a valid NUL-terminated string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[tokio::test]
async fn recursive_read_only_mounts() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let status = rpc(node.rt().status(cri::StatusRequest { verbose: false })).await.unwrap().into_inner();
    let default_handler = status.runtime_handlers.iter().find(|h| h.name.is_empty()).expect("the default handler \"\"");
    assert!(default_handler.features.as_ref().expect("features").recursive_read_only_mounts);

    let host = node.c.dir().join("rro");
    std::fs::create_dir_all(&host).unwrap();
    let sub = Tmpfs::mount(&host.join("tmpfs"));
    let (pod, pc) = node.run_pod("rro", cri::NamespaceMode::Container).await;
    let with_mount = |name: &str, m: cri::Mount| {
        let mut cfg = node.container_config(name, &["sleep", "3600"]);
        cfg.mounts = vec![m];
        cfg
    };
    let mount = |readonly: bool, rro: bool, propagation: cri::MountPropagation| cri::Mount {
        container_path: "/mnt".into(),
        host_path: host.display().to_string(),
        readonly,
        recursive_read_only: rro,
        propagation: propagation as i32,
        ..Default::default()
    };
    // Read-only: the submount stays writable. Recursive read-only: it is not.
    let ro = node.run(&pod, &pc, with_mount("ro", mount(true, false, cri::MountPropagation::PropagationPrivate))).await;
    node.sh(&ro, "touch /mnt/tmpfs/from-ro").await;
    assert_ne!(node.exec(&ro, &["touch", "/mnt/top"], 10).await.unwrap().exit_code, 0);
    let rro =
        node.run(&pod, &pc, with_mount("rro", mount(true, true, cri::MountPropagation::PropagationPrivate))).await;
    let out = node.exec(&rro, &["touch", "/mnt/tmpfs/from-rro"], 10).await.unwrap();
    assert_ne!(out.exit_code, 0, "the submount is writable under a recursive read-only mount");
    assert!(text(&out.stderr).contains("Read-only file system"), "{}", text(&out.stderr));
    assert!(!host.join("tmpfs/from-rro").exists());
    let s = node.status(&rro).await;
    assert_eq!(s.mounts.len(), 1);
    assert!(s.mounts[0].readonly && s.mounts[0].recursive_read_only);

    for (what, m) in [
        ("rro without readonly", mount(false, true, cri::MountPropagation::PropagationPrivate)),
        (
            "rro with host-to-container propagation",
            mount(true, true, cri::MountPropagation::PropagationHostToContainer),
        ),
        ("rro with bidirectional propagation", mount(true, true, cri::MountPropagation::PropagationBidirectional)),
    ] {
        let err = node.create(&pod, &pc, with_mount("bad", m)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains("recursive_read_only"), "{what}: {}", err.message());
    }
    node.remove_pod(&pod).await.unwrap();
    drop(sub);
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn image_volumes_mount_pulled_images_read_only() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env.clone()).await;
    let layered = env.image("corral/layered:latest");
    let layered_id = node.c.pull(&layered).await.unwrap();
    let busybox_id = node.c.pull(&env.image(BUSYBOX)).await.unwrap();
    let layered_dirs = node.c.layer_dirs(&layered).await;
    let (pod, pc) = node.run_pod("vols", cri::NamespaceMode::Container).await;
    let image_mount = |path: &str, image: &str, sub: &str| cri::Mount {
        container_path: path.into(),
        readonly: true,
        image: Some(cri::ImageSpec { image: image.into(), user_specified_image: image.into(), ..Default::default() }),
        image_sub_path: sub.into(),
        ..Default::default()
    };
    let mut cfg = node.container_config("vols", &["sleep", "3600"]);
    cfg.mounts = vec![
        // Three layers with whiteouts, by reference; one layer, by id; a directory of the first.
        image_mount("/vol", &layered, ""),
        image_mount("/bb", &busybox_id, ""),
        image_mount("/sub", &layered, "data"),
    ];
    let c = node.run(&pod, &pc, cfg).await;
    assert_eq!(node.sh(&c, "cat /vol/data/new /vol/layer3; ls /vol/data; ls /sub").await, "new\n3\nnew\nnew");
    assert_eq!(node.sh(&c, "test -e /vol/etc/corral-removed && echo present || echo gone").await, "gone");
    // Executable, read-only.
    assert_eq!(node.sh(&c, "/bb/bin/echo from-the-volume").await, "from-the-volume");
    let out = node.exec(&c, &["touch", "/vol/new-file"], 10).await.unwrap();
    assert_ne!(out.exit_code, 0);
    assert!(text(&out.stderr).contains("Read-only"), "{}", text(&out.stderr));
    let s = node.status(&c).await;
    assert_eq!(s.mounts.len(), 3);
    let vol = s.mounts[0].image.as_ref().expect("the image of /vol");
    assert_eq!((vol.image.as_str(), vol.image_ref.as_str()), (layered.as_str(), layered_id.as_str()));
    assert_eq!(s.mounts[1].image.as_ref().unwrap().image_ref, busybox_id);
    assert_eq!(s.mounts[2].image_sub_path, "data");
    assert!(s.mounts.iter().all(|m| m.readonly));

    // Refused: a missing sub path, a writable image mount, an image not pulled, a host path too.
    let refuse = |name: &str, m: cri::Mount| {
        let mut cfg = node.container_config(name, &["true"]);
        cfg.mounts = vec![m];
        cfg
    };
    let err = node.create(&pod, &pc, refuse("nosub", image_mount("/x", &layered, "nope"))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("image_sub_path") && err.message().contains("nope"), "{}", err.message());
    let err = node
        .create(&pod, &pc, refuse("rw", cri::Mount { readonly: false, ..image_mount("/x", &layered, "") }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = node
        .create(&pod, &pc, refuse("unpulled", image_mount("/x", &env.image("corral/zstd:latest"), "")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = node
        .create(
            &pod,
            &pc,
            refuse("hostpath", cri::Mount { host_path: "/tmp".into(), ..image_mount("/x", &layered, "") }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let volume_mounts = || node.mounts().into_iter().filter(|m| m.contains("/volumes/")).count();
    assert_eq!(volume_mounts(), 3, "only the running container's volumes are mounted: {:?}", node.mounts());

    // Removing the image while a container mounts it: the image goes, its layers stay until
    // the container does.
    node.c.remove(&layered).await.unwrap();
    assert!(node.c.status(&layered).await.is_none());
    assert_eq!(node.sh(&c, "cat /vol/data/new").await, "new");
    assert!(layered_dirs.iter().all(|d| d.exists()), "layers removed under a running container");
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
    assert!(
        tests::wait_for(Duration::from_secs(10), || layered_dirs.iter().all(|d| !d.exists())).await,
        "the removed image's layers outlived its last container"
    );
    assert!(node.c.status(&env.image(BUSYBOX)).await.is_some());
}

async fn collect<T>(stream: tonic::Response<tonic::Streaming<T>>) -> Vec<T> {
    stream.into_inner().map(|m| m.expect("stream message")).collect().await
}

#[tokio::test]
async fn cri_1_36_stream_rpcs_stop_signal_and_pod_resources() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env.clone()).await;
    let mut rt = node.rt();
    let mut a = node.pod_config("a", cri::NamespaceMode::Container);
    a.labels.insert("app".into(), "a".into());
    let (pod_a, pc_a) = (node.run_pod_with(a.clone()).await.unwrap(), a);
    let (pod_b, _) = node.run_pod("b", cri::NamespaceMode::Container).await;

    // Stream*: the List calls' data and filters; no message when nothing matches.
    let pods = collect(rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: None }).await.unwrap()).await;
    let mut ids: Vec<String> = pods.iter().flat_map(|m| m.pod_sandboxes.iter().map(|p| p.id.clone())).collect();
    ids.sort();
    let mut want = vec![pod_a.clone(), pod_b.clone()];
    want.sort();
    assert_eq!(ids, want);
    let labelled =
        cri::PodSandboxFilter { label_selector: [("app".to_string(), "a".to_string())].into(), ..Default::default() };
    let only_a =
        collect(rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: Some(labelled) }).await.unwrap())
            .await;
    assert_eq!(only_a.len(), 1);
    assert_eq!(only_a[0].pod_sandboxes.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [pod_a.as_str()]);
    let none = cri::PodSandboxFilter { id: "ffffffffffff".into(), ..Default::default() };
    assert!(collect(rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: Some(none) }).await.unwrap())
        .await
        .is_empty());

    // The stop signal: ContainerStatus reports it and StopContainer sends it.
    let mut cfg = node.container_config(
        "usr1",
        &["sh", "-c", "trap 'echo got-usr1; exit 0' USR1; echo ready; while true; do sleep 0.1; done"],
    );
    cfg.stop_signal = cri::Signal::Sigusr1 as i32;
    let c = node.run(&pod_a, &pc_a, cfg).await;
    assert_eq!(node.status(&c).await.stop_signal, cri::Signal::Sigusr1 as i32);
    let log = node.log_path("a", "usr1");
    assert!(
        tests::wait_for(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready"))
        .await
    );
    node.stop_container(&c, 30).await.unwrap();
    let s = node.wait_exited(&c, Duration::from_secs(5)).await;
    assert_eq!(s.exit_code, 0, "the container did not get SIGUSR1: {s:?}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("got-usr1"));
    let mut bad = node.container_config("badsig", &["true"]);
    bad.stop_signal = 4242;
    assert_eq!(node.create(&pod_a, &pc_a, bad).await.unwrap_err().code(), Code::InvalidArgument);

    let containers = collect(rt.stream_containers(cri::StreamContainersRequest { filter: None }).await.unwrap()).await;
    assert_eq!(
        containers.iter().flat_map(|m| m.containers.iter().map(|c| c.id.as_str())).collect::<Vec<_>>(),
        [c.as_str()]
    );
    let of_b = cri::ContainerFilter { pod_sandbox_id: pod_b.clone(), ..Default::default() };
    assert!(collect(rt.stream_containers(cri::StreamContainersRequest { filter: Some(of_b) }).await.unwrap())
        .await
        .is_empty());
    let images = collect(node.c.images().stream_images(cri::StreamImagesRequest { filter: None }).await.unwrap()).await;
    assert_eq!(images.iter().map(|m| m.images.len()).sum::<usize>(), node.c.list().await.len());
    // Stats are not served yet: their streams say so, as their unary calls do.
    let err = rt.stream_container_stats(cri::StreamContainerStatsRequest { filter: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    // UpdatePodSandboxResources: recorded, and written to a pod cgroup corral made.
    let (_, info) = pod_status(&node, &pod_b).await;
    let cgroup = info["cgroup"].as_str().unwrap().to_string();
    let resources =
        cri::LinuxContainerResources { cpu_shares: 512, memory_limit_in_bytes: 256 << 20, ..Default::default() };
    let overhead = cri::LinuxContainerResources { memory_limit_in_bytes: 16 << 20, ..Default::default() };
    let req = cri::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod_b.clone(),
        resources: Some(resources),
        overhead: Some(overhead),
    };
    rt.update_pod_sandbox_resources(req).await.expect("UpdatePodSandboxResources");
    let read = |file: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{file}")).map(|s| s.trim().to_string());
    let rel = cgroup.trim_start_matches('/');
    assert_eq!(read(&format!("cpu/{rel}/cpu.shares")).unwrap(), "512");
    assert_eq!(read(&format!("memory/{rel}/memory.limit_in_bytes")).unwrap(), (272u64 << 20).to_string());
    let (_, info) = pod_status(&node, &pod_b).await;
    assert_eq!(info["resources"]["cpu_shares"], 512);
    // Pod-level resources given at RunPodSandbox are written too.
    let mut sized = node.pod_config("sized", cri::NamespaceMode::Container);
    sized.linux.as_mut().unwrap().resources =
        Some(cri::LinuxContainerResources { cpu_shares: 256, ..Default::default() });
    let pod_c = node.run_pod_with(sized).await.unwrap();
    let (_, info) = pod_status(&node, &pod_c).await;
    let rel_c = info["cgroup"].as_str().unwrap().trim_start_matches('/').to_string();
    assert_eq!(read(&format!("cpu/{rel_c}/cpu.shares")).unwrap(), "256");
    node.remove_pod(&pod_c).await.unwrap();
    let unknown = cri::UpdatePodSandboxResourcesRequest { pod_sandbox_id: "f".repeat(64), ..Default::default() };
    assert_eq!(rt.update_pod_sandbox_resources(unknown).await.unwrap_err().code(), Code::NotFound);
    let negative = cri::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod_b.clone(),
        resources: Some(cri::LinuxContainerResources { memory_limit_in_bytes: -1, ..Default::default() }),
        overhead: None,
    };
    assert_eq!(rt.update_pod_sandbox_resources(negative).await.unwrap_err().code(), Code::InvalidArgument);

    node.remove_pod(&pod_a).await.unwrap();
    node.remove_pod(&pod_b).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn error_codes_name_what_failed() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env.clone()).await;
    let conf = node.cni.path().join("net.d/10-fake.conflist");
    let original = std::fs::read_to_string(&conf).unwrap();

    // The plugin fails: Internal, with the plugin's message.
    std::fs::write(node.cni.path().join("bin/fail"), "").unwrap();
    let err = node.run_pod_with(minimal_pod("plugin-fails")).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("fake failure"), "{}", err.message());
    std::fs::remove_file(node.cni.path().join("bin/fail")).unwrap();
    // No network config: the network is not ready.
    std::fs::remove_file(&conf).unwrap();
    let err = node.run_pod_with(minimal_pod("no-config")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // A plugin that is not installed.
    std::fs::write(&conf, original.replace("fake-cni", "not-installed-cni")).unwrap();
    let err = node.run_pod_with(minimal_pod("no-plugin")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not-installed-cni"), "{}", err.message());
    std::fs::write(&conf, &original).unwrap();
    assert!(no_state_left(&node).is_empty(), "{:?}", no_state_left(&node));

    // Missing objects are NotFound; a request without metadata is InvalidArgument.
    let pod = node.run_pod_with(minimal_pod("ok")).await.unwrap();
    let pc = minimal_pod("ok");
    let err = node.create(&pod, &pc, minimal_container("c", &env.image("corral/zstd:latest"))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = node.create(&"0".repeat(64), &pc, minimal_container("c", &env.image(BUSYBOX))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = node
        .create(&pod, &pc, cri::ContainerConfig { image: Some(tests::spec(&env.image(BUSYBOX))), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = rpc(node.rt().run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig::default()),
        runtime_handler: String::new(),
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn a_request_its_client_abandons_still_completes_once() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    // The CRI validation suite's retry case: the first RunPodSandbox is given up while its CNI
    // plugin runs (the client resets the stream), then retried until the pod shows.
    let config = node.pod_config("retried", cri::NamespaceMode::Pod);
    let request = || cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
    let slow = node.cni.path().join("bin/slow");
    std::fs::write(&slow, "").unwrap();
    let mut rt = node.rt();
    let abandoned = tokio::time::timeout(Duration::from_millis(300), rt.run_pod_sandbox(request())).await;
    assert!(abandoned.is_err(), "the first request should still be running: {abandoned:?}");
    std::fs::remove_file(&slow).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let id = loop {
        match rpc(node.rt().run_pod_sandbox(request())).await {
            Ok(r) => break r.into_inner().pod_sandbox_id,
            Err(e) if e.code() == Code::AlreadyExists => {
                let pods = list_pods(&node).await;
                if let [one] = pods.as_slice() {
                    break one.id.clone();
                }
            }
            Err(e) => panic!("retry: {e:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "the pod never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pods = list_pods(&node).await;
    assert_eq!(pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);

    // Concurrent identical requests: one pod.
    let same = node.pod_config("concurrent", cri::NamespaceMode::Container);
    let calls = (0..5).map(|_| {
        let mut rt = node.rt();
        let req = cri::RunPodSandboxRequest { config: Some(same.clone()), runtime_handler: String::new() };
        async move { rt.run_pod_sandbox(req).await.map(|r| r.into_inner().pod_sandbox_id) }
    });
    let results = futures::future::join_all(calls).await;
    let ok: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| e.code() == Code::AlreadyExists), "{results:?}");
    assert_eq!(list_pods(&node).await.len(), 2);
    for p in list_pods(&node).await {
        node.remove_pod(&p.id).await.unwrap();
    }
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn privileged_containers_get_the_host_devices_and_every_capability() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let mut pc = node.pod_config("priv", cri::NamespaceMode::Container);
    pc.linux.as_mut().unwrap().security_context.as_mut().unwrap().privileged = true;
    let pod = node.run_pod_with(pc.clone()).await.unwrap();
    let mut cfg = node.container_config("priv", &["sleep", "3600"]);
    cfg.linux = security(cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() });
    let privileged = node.run(&pod, &pc, cfg).await;
    let plain = node.run(&pod, &pc, node.container_config("plain", &["sleep", "3600"])).await;
    // A device of the host's that no default gives (the CRI validation suite uses brctl, a
    // capability check, the same way).
    let host_device = ["/dev/loop-control", "/dev/fuse", "/dev/net/tun"]
        .into_iter()
        .find(|d| Path::new(d).exists())
        .expect("a host device to look for");
    assert_eq!(node.sh(&privileged, &format!("test -c {host_device} && echo present")).await, "present");
    assert_eq!(node.sh(&plain, &format!("test -e {host_device} && echo present || echo absent")).await, "absent");
    node.sh(&privileged, "brctl addbr corraltest0 && brctl delbr corraltest0").await;
    assert_ne!(node.exec(&plain, &["brctl", "addbr", "corraltest0"], 10).await.unwrap().exit_code, 0);
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}
