//! Pods and containers end to end: a real corrald with corral-shim, driven through the CRI.
//!
//! Each test gets its own corrald, state dirs and cgroup parent (`/corral/it-<random>`), and a
//! `Node` guard that removes every pod through the CRI and then, whatever happened, kills the
//! shims this corrald started, unmounts what is left under its directories and removes its
//! cgroups, so a failing test leaks nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tests::cri_api::v1 as cri;
use tests::node::{text, Node, DEFAULT_CAP_EFF};
use tests::{require_env, require_root, rpc};
use tonic::Code;

#[tokio::test]
async fn pod_with_a_long_running_container_and_full_cleanup() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("web", cri::NamespaceMode::Container).await;
    let ctr = node.run(&pod, &pc, node.container_config("app", &["sleep", "3600"])).await;

    let s = node.status(&ctr).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32, "{s:?}");
    assert!(s.started_at > 0 && s.created_at > 0 && s.started_at >= s.created_at);
    assert!(s.image_ref.contains("@sha256:"), "image ref {}", s.image_ref);
    assert!(s.log_path.ends_with("app.log"));

    // Prefix resolution and list filters.
    let short = &ctr[..12];
    assert_eq!(node.status(short).await.id, ctr);
    let list = |filter: cri::ContainerFilter| {
        let mut rt = node.rt();
        async move {
            rt.list_containers(cri::ListContainersRequest { filter: Some(filter) })
                .await
                .unwrap()
                .into_inner()
                .containers
        }
    };
    assert_eq!(list(cri::ContainerFilter { pod_sandbox_id: pod.clone(), ..Default::default() }).await.len(), 1);
    assert_eq!(list(cri::ContainerFilter { id: short.into(), ..Default::default() }).await.len(), 1);
    let exited = cri::ContainerStateValue { state: cri::ContainerState::ContainerExited as i32 };
    assert!(list(cri::ContainerFilter { state: Some(exited), ..Default::default() }).await.is_empty());

    // PID 1 is the container's own process in its own PID namespace.
    assert_eq!(node.sh(&ctr, "cat /proc/1/cmdline | tr '\\0' ' '").await, "sleep 3600");
    let pod_status =
        rpc(node.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: true }))
            .await
            .unwrap()
            .into_inner();
    let st = pod_status.status.unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata.unwrap().name, "web");

    // sleep as PID 1 ignores SIGTERM: stop falls back to SIGKILL after the timeout.
    node.stop_container(&ctr, 1).await.unwrap();
    let s = node.status(&ctr).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137, "{s:?}");
    assert_eq!(s.reason, "Error");
    // Idempotent stop and remove, also of ids that never existed.
    node.stop_container(&ctr, 1).await.unwrap();
    node.stop_container(&"f".repeat(64), 1).await.unwrap();
    rpc(node.rt().remove_container(cri::RemoveContainerRequest { container_id: "0".repeat(64) })).await.unwrap();

    node.remove_pod(&pod).await.unwrap();
    node.remove_pod(&pod).await.unwrap();
    let err =
        rpc(node.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false }))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn log_file_format_exit_codes_and_reasons() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("logs", cri::NamespaceMode::Container).await;
    let script = "echo hello; echo oops >&2; head -c 20000 /dev/zero | tr '\\0' a; echo; exit 3";
    let ctr = node.run(&pod, &pc, node.container_config("writer", &["sh", "-c", script])).await;
    let s = node.wait_exited(&ctr, Duration::from_secs(30)).await;
    assert_eq!(s.exit_code, 3);
    assert_eq!(s.reason, "Error");
    assert!(s.finished_at >= s.started_at && s.started_at > 0);

    let log = std::fs::read_to_string(node.log_path("logs", "writer")).expect("log file");
    let lines: Vec<(&str, &str, &str, &str)> = log
        .lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            (p.next().unwrap(), p.next().unwrap_or(""), p.next().unwrap_or(""), p.next().unwrap_or(""))
        })
        .collect();
    for (ts, ..) in &lines {
        assert!(ts.ends_with('Z') && ts.contains('T') && ts.len() >= 20, "timestamp {ts:?}");
    }
    let stdout: Vec<_> = lines.iter().filter(|l| l.1 == "stdout").collect();
    let stderr: Vec<_> = lines.iter().filter(|l| l.1 == "stderr").collect();
    assert_eq!(stderr.len(), 1);
    assert_eq!((stderr[0].2, stderr[0].3), ("F", "oops"));
    assert_eq!((stdout[0].2, stdout[0].3), ("F", "hello"));
    // The 20000-byte line is split at 16 KiB: P chunks, then F.
    let long: Vec<_> = stdout[1..].iter().collect();
    assert_eq!(long.last().unwrap().2, "F");
    assert!(long[..long.len() - 1].iter().all(|l| l.2 == "P"), "{long:?}");
    assert_eq!(long.iter().map(|l| l.3.len()).sum::<usize>(), 20000);
    assert_eq!(long[0].3.len(), 16384);

    let ok = node.run(&pod, &pc, node.container_config("ok", &["true"])).await;
    let s = node.wait_exited(&ok, Duration::from_secs(30)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    // An exited container's rootfs is unmounted on the host while the container still exists.
    let rootfs = node.c.state.join("containers").join(&ok[..16]).join("rootfs").display().to_string();
    assert!(
        tests::wait_for(Duration::from_secs(10), || !node.mounts().contains(&rootfs)).await,
        "rootfs of an exited container still mounted: {:?}",
        node.mounts()
    );
    assert_eq!(node.wait_exited(&ok, Duration::from_secs(1)).await.exit_code, 0, "still listed");
    node.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn stop_signals_trap_and_stop_signal_timeout() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("stopper", cri::NamespaceMode::Container).await;
    let trap = "trap 'echo got-term; exit 7' TERM; while true; do sleep 0.1; done";
    let ctr = node.run(&pod, &pc, node.container_config("trapper", &["sh", "-c", trap])).await;
    // Give the shell time to install the trap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = std::time::Instant::now();
    node.stop_container(&ctr, 30).await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the trapping container should stop on SIGTERM, not on the timeout"
    );
    let s = node.status(&ctr).await;
    assert_eq!(s.exit_code, 7, "{s:?}");
    assert!(std::fs::read_to_string(node.log_path("stopper", "trapper")).unwrap().contains("got-term"));
    node.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn env_workdir_users_and_security_context() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env.clone()).await;
    node.c.pull(&env.image("corral/nonroot:latest")).await.unwrap();
    let (pod, pc) = node.run_pod("sec", cri::NamespaceMode::Container).await;

    let mut cfg = node.container_config("plain", &["sleep", "3600"]);
    cfg.envs = vec![cri::KeyValue { key: "FOO".into(), value: "bar baz".into() }];
    cfg.working_dir = "/var/work".into();
    let plain = node.run(&pod, &pc, cfg).await;
    assert_eq!(
        node.sh(&plain, "echo \"$FOO\"; pwd; id -u; id -g; echo $HOSTNAME").await,
        "bar baz\n/var/work\n0\n0\nsec"
    );
    let status = node.sh(&plain, "grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status").await;
    for line in status.lines() {
        assert!(line.ends_with(DEFAULT_CAP_EFF), "{line}");
    }
    // Masked and read-only paths (as the kubelet sends them).
    assert_eq!(node.sh(&plain, "cat /proc/timer_list | wc -c").await, "0");
    assert_eq!(node.sh(&plain, "ls /sys/firmware | wc -l").await, "0");
    let out = node.exec(&plain, &["sh", "-c", "echo 1 > /proc/sys/kernel/panic"], 10).await.unwrap();
    assert_ne!(out.exit_code, 0, "/proc/sys must be read-only");

    // The image's USER and WorkingDir.
    let mut cfg = node.container_config("nonroot", &["sleep", "3600"]);
    cfg.image = Some(tests::spec(&env.image("corral/nonroot:latest")));
    let nonroot = node.run(&pod, &pc, cfg).await;
    assert_eq!(node.sh(&nonroot, "id -un; id -u; id -g; pwd").await, "corral\n1000\n1000\n/home/corral");

    // run_as_user/group, supplemental groups, readonly rootfs, added and dropped caps.
    let mut cfg = node.container_config("ctx", &["sleep", "3600"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1234 }),
            run_as_group: Some(cri::Int64Value { value: 5678 }),
            supplemental_groups: vec![4242],
            readonly_rootfs: true,
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let ctx = node.run(&pod, &pc, cfg).await;
    assert_eq!(node.sh(&ctx, "id -u; id -g; id -G").await, "1234\n5678\n5678 4242");
    assert_eq!(node.sh(&ctx, "grep CapBnd /proc/self/status").await, "CapBnd:\t0000000000001000");
    let out = node.exec(&ctx, &["touch", "/newfile"], 10).await.unwrap();
    assert_ne!(out.exit_code, 0, "rootfs must be read-only");
    assert!(text(&out.stderr).contains("Read-only"), "{}", text(&out.stderr));

    // Refused security settings.
    let mut cfg = node.container_config("seccomp", &["true"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = node.create(&pod, &pc, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("seccomp"), "{}", err.message());
    let mut cfg = node.container_config("privileged", &["true"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() }),
        ..Default::default()
    });
    assert_eq!(node.create(&pod, &pc, cfg).await.unwrap_err().code(), Code::InvalidArgument);

    // A relative host path is a clear error, and nothing is left of the attempt.
    let mut cfg = node.container_config("badmount", &["true"]);
    cfg.mounts =
        vec![cri::Mount { container_path: "/data".into(), host_path: "relative/corral".into(), ..Default::default() }];
    let err = node.create(&pod, &pc, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("mounts[0].host_path") && err.message().contains("relative/corral"),
        "{}",
        err.message()
    );
    // A host path that does not exist is created as a directory, as containerd does.
    let missing = node.c.dir().join("made-by-corral/deeper");
    let mut cfg = node.container_config("newdir", &["sleep", "3600"]);
    cfg.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: missing.display().to_string(),
        ..Default::default()
    }];
    let newdir = node.run(&pod, &pc, cfg).await;
    assert!(missing.is_dir(), "{} was not created", missing.display());
    node.sh(&newdir, "echo hi > /data/f").await;
    assert_eq!(std::fs::read_to_string(missing.join("f")).unwrap(), "hi\n");

    // A host bind mount, read-only.
    let host_dir = node.c.dir().join("shared");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("hello"), "from host\n").unwrap();
    let mut cfg = node.container_config("mounted", &["sleep", "3600"]);
    cfg.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: host_dir.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let mounted = node.run(&pod, &pc, cfg).await;
    assert_eq!(node.sh(&mounted, "cat /data/hello").await, "from host");
    assert_ne!(node.exec(&mounted, &["touch", "/data/x"], 10).await.unwrap().exit_code, 0);
    let s = node.status(&mounted).await;
    assert_eq!(s.mounts.len(), 1);
    assert!(s.mounts[0].readonly);

    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn hostname_dns_sysctls_and_shared_ipc() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let mut pc = node.pod_config("dns", cri::NamespaceMode::Container);
    pc.hostname = "web-1".into();
    pc.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    pc.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.ipv4.ip_unprivileged_port_start".to_string(), "0".to_string())]);
    let pod = node.run_pod_with(pc.clone()).await.unwrap();
    let a = node.run(&pod, &pc, node.container_config("a", &["sleep", "3600"])).await;
    let b = node.run(&pod, &pc, node.container_config("b", &["sleep", "3600"])).await;
    assert_eq!(node.sh(&a, "hostname; cat /etc/hostname").await, "web-1\nweb-1");
    assert_eq!(
        node.sh(&a, "cat /etc/resolv.conf").await,
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5"
    );
    assert!(node.sh(&a, "cat /etc/hosts").await.contains("localhost"));
    assert_eq!(node.sh(&a, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start").await, "0");
    // One IPC, UTS and network namespace for the pod; the host's is not it.
    let ns = "for n in ipc uts net; do readlink /proc/self/ns/$n; done";
    assert_eq!(node.sh(&a, ns).await, node.sh(&b, ns).await);
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap().display().to_string();
    assert!(!node.sh(&a, ns).await.contains(&host_ipc));
    // Loopback is up.
    assert!(!node.sh(&a, "cat /sys/class/net/lo/operstate; ip addr show lo 2>/dev/null || true").await.is_empty());
    // /dev/shm is shared in the pod.
    node.sh(&a, "echo shared > /dev/shm/x").await;
    assert_eq!(node.sh(&b, "cat /dev/shm/x").await, "shared");

    // A non-namespaced sysctl is refused and leaves nothing.
    let mut bad = node.pod_config("badsysctl", cri::NamespaceMode::Container);
    bad.linux.as_mut().unwrap().sysctls = HashMap::from([("kernel.panic".to_string(), "1".to_string())]);
    let err = node.run_pod_with(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // An unknown runtime handler is refused.
    let err = rpc(node.rt().run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(node.pod_config("h", cri::NamespaceMode::Container)),
        runtime_handler: "kata".into(),
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // The same pod name twice is refused, naming the holder.
    let err = node.run_pod_with(pc.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&pod), "{}", err.message());
    let err = node.create(&pod, &pc, node.container_config("a", &["true"])).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&a), "{}", err.message());

    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn shared_pid_namespace_has_the_pause_process_as_pid_1() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("shared", cri::NamespaceMode::Pod).await;
    let mut cfg = node.container_config("a", &["sleep", "3600"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption { pid: cri::NamespaceMode::Pod as i32, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let a = node.run(&pod, &pc, cfg.clone()).await;
    let mut cfg_b = cfg;
    cfg_b.metadata.as_mut().unwrap().name = "b".into();
    cfg_b.command = vec!["sleep".into(), "2400".into()];
    let b = node.run(&pod, &pc, cfg_b).await;
    let pid1 = node.sh(&a, "cat /proc/1/cmdline | tr '\\0' ' '").await;
    assert!(pid1.contains("corral-shim") && pid1.contains("pause"), "PID 1 is {pid1:?}");
    let ps = node.sh(&b, "ps -o args").await;
    assert!(ps.contains("sleep 3600") && ps.contains("sleep 2400"), "{ps}");
    // The pod's PID 1 is a dead end for its containers, even one allowed to ptrace it: no
    // capability, and an empty read-only root instead of the node's (/proc/1/root).
    let mut tracer = node.container_config("tracer", &["sleep", "3600"]);
    tracer.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption { pid: cri::NamespaceMode::Pod as i32, ..Default::default() }),
            capabilities: Some(cri::Capability { add_capabilities: vec!["SYS_PTRACE".into()], ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let tracer = node.run(&pod, &pc, tracer).await;
    let marker = node.c.dir().join("host-marker");
    std::fs::write(&marker, "the node's file\n").unwrap();
    assert_eq!(
        node.sh(&tracer, "grep -E '^Cap(Eff|Prm|Bnd):' /proc/1/status").await,
        "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000"
    );
    assert_eq!(node.sh(&tracer, "ls -A /proc/1/root/ | wc -l").await, "0", "the pause's root is not empty");
    let read = node.exec(&tracer, &["cat", &format!("/proc/1/root{}", marker.display())], 10).await.unwrap();
    assert_ne!(read.exit_code, 0, "a container read the node's files through PID 1: {}", text(&read.stdout));
    let write = node.exec(&tracer, &["sh", "-c", "echo x > /proc/1/root/written"], 10).await.unwrap();
    assert_ne!(write.exit_code, 0, "a container wrote into the pause's root");
    // Stopping the pod ends the shared namespace and every container in it.
    rpc(node.rt().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })).await.unwrap();
    assert_eq!(node.status(&a).await.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(node.status(&b).await.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(node.status(&tracer).await.state, cri::ContainerState::ContainerExited as i32);
    let st =
        rpc(node.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false }))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(st.status.unwrap().state, cri::PodSandboxState::SandboxNotready as i32);
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn exec_timeout_background_children_and_start_failure() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("exec", cri::NamespaceMode::Container).await;
    let ctr = node.run(&pod, &pc, node.container_config("app", &["sleep", "3600"])).await;

    let out = node.exec(&ctr, &["sh", "-c", "echo out; echo err >&2; exit 4"], 10).await.unwrap();
    assert_eq!((text(&out.stdout), text(&out.stderr), out.exit_code), ("out".into(), "err".into(), 4));

    let t0 = std::time::Instant::now();
    let err = node.exec(&ctr, &["sleep", "37"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(15));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while node.sh(&ctr, "ps -o args").await.contains("sleep 37") {
        assert!(std::time::Instant::now() < deadline, "the timed-out command must be gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A background child keeping the output open does not hang ExecSync.
    let t0 = std::time::Instant::now();
    let out = node.exec(&ctr, &["sh", "-c", "sleep 30 & echo started"], 20).await.unwrap();
    assert_eq!(text(&out.stdout), "started");
    assert!(t0.elapsed() < Duration::from_secs(10), "ExecSync waited for the background child");

    // A missing executable: CreateContainer works, StartContainer fails with the message.
    let bad = node.create(&pod, &pc, node.container_config("bad", &["nosuch"])).await.unwrap();
    let err = node.start(&bad).await.unwrap_err();
    assert!(err.message().contains("executable file not found"), "{}", err.message());
    let s = node.status(&bad).await;
    assert_eq!(
        (s.state, s.exit_code, s.reason.as_str()),
        (cri::ContainerState::ContainerExited as i32, 128, "StartError")
    );
    assert!(s.message.contains("nosuch"), "{}", s.message);

    // ExecSync in a stopped container is refused.
    node.stop_container(&ctr, 0).await.unwrap();
    assert_eq!(node.exec(&ctr, &["true"], 5).await.unwrap_err().code(), Code::FailedPrecondition);
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn memory_limit_oom_kill_is_reported() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("oom", cri::NamespaceMode::Container).await;
    let mut cfg =
        node.container_config("hog", &["sh", "-c", "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources { memory_limit_in_bytes: 32 << 20, ..Default::default() }),
        ..Default::default()
    });
    let ctr = node.run(&pod, &pc, cfg).await;
    let s = node.wait_exited(&ctr, Duration::from_secs(60)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"), "{s:?}");
    node.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn containers_survive_a_corrald_crash_and_a_lost_shim_is_reported() {
    require_root!();
    let env = require_env!();
    let mut node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("crash", cri::NamespaceMode::Pod).await;
    let ctr = node.run(&pod, &pc, node.container_config("app", &["sleep", "3600"])).await;
    let victim = node.run(&pod, &pc, node.container_config("victim", &["sleep", "3600"])).await;
    let created = node.create(&pod, &pc, node.container_config("later", &["sh", "-c", "echo late"])).await.unwrap();

    node.c.kill9();
    node.c.restart().await;

    assert_eq!(node.status(&ctr).await.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(node.sh(&ctr, "echo alive").await, "alive");
    let st =
        rpc(node.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false }))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(st.status.unwrap().state, cri::PodSandboxState::SandboxReady as i32);
    // A container created before the crash can still be started.
    node.start(&created).await.unwrap();
    let s = node.wait_exited(&created, Duration::from_secs(30)).await;
    assert_eq!(s.exit_code, 0);

    // Kill the victim's shim: its state is reported, not hidden (its process runs on without
    // the shim, and ContainerStatus says so), and it can be removed.
    let victim_shim: Vec<u32> = node
        .shim_pids()
        .into_iter()
        .filter(|pid| {
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                .contains(&victim)
        })
        .collect();
    assert_eq!(victim_shim.len(), 1);
    // SAFETY: kill has no memory preconditions; this shim belongs to the test's corrald.
    unsafe { libc::kill(victim_shim[0] as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = node.status(&victim).await;
        if s.message.contains("shim is gone") {
            assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32, "its sleep still runs: {s:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lost shim not noticed: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Removing it ends its process and its cgroup although no shim is left to do so.
    rpc(node.rt().remove_container(cri::RemoveContainerRequest { container_id: victim.clone() })).await.unwrap();
    let victim_cgroups: Vec<PathBuf> = node.cgroups().into_iter().filter(|d| d.ends_with(&victim)).collect();
    assert!(victim_cgroups.is_empty(), "{victim_cgroups:?}");

    node.stop_container(&ctr, 1).await.unwrap();
    assert_eq!(node.status(&ctr).await.state, cri::ContainerState::ContainerExited as i32);
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn reopen_container_log_after_rotation() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("rotate", cri::NamespaceMode::Container).await;
    let ctr = node
        .run(&pod, &pc, node.container_config("ticker", &["sh", "-c", "while true; do echo tick; sleep 0.05; done"]))
        .await;
    let log = node.log_path("rotate", "ticker");
    assert!(
        tests::wait_for(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .map(|l| l.contains("tick"))
            .unwrap_or(false))
        .await
    );
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    rpc(node.rt().reopen_container_log(cri::ReopenContainerLogRequest { container_id: ctr.clone() })).await.unwrap();
    assert!(
        tests::wait_for(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .map(|l| l.contains("tick"))
            .unwrap_or(false))
        .await
    );
    node.stop_container(&ctr, 0).await.unwrap();
    let err = rpc(node.rt().reopen_container_log(cri::ReopenContainerLogRequest { container_id: ctr.clone() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    node.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn host_network_pod_uses_the_node_hostname() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let mut pc = node.pod_config("hostnet", cri::NamespaceMode::Container);
    pc.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().network =
        cri::NamespaceMode::Node as i32;
    let pod = node.run_pod_with(pc.clone()).await.unwrap();
    let ctr = node.run(&pod, &pc, node.container_config("app", &["sleep", "3600"])).await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    assert_eq!(node.sh(&ctr, "hostname").await, host);
    assert_eq!(
        node.sh(&ctr, "readlink /proc/self/ns/net").await,
        std::fs::read_link("/proc/self/ns/net").unwrap().display().to_string()
    );
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let err =
        rpc(node.rt().run_pod_sandbox(cri::RunPodSandboxRequest { config: None, runtime_handler: String::new() }))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let (pod, pc) = node.run_pod("bad", cri::NamespaceMode::Container).await;
    let mut cfg = node.container_config("noimage", &["true"]);
    cfg.image = Some(tests::spec("127.0.0.1:1/never/pulled:latest"));
    assert_eq!(node.create(&pod, &pc, cfg).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        node.create(&"e".repeat(64), &pc, node.container_config("x", &["true"])).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(node.start(&"e".repeat(64)).await.unwrap_err().code(), Code::NotFound);
    let ctr = node.run(&pod, &pc, node.container_config("once", &["true"])).await;
    node.wait_exited(&ctr, Duration::from_secs(30)).await;
    assert_eq!(node.start(&ctr).await.unwrap_err().code(), Code::FailedPrecondition);
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn pod_network_through_a_cni_plugin_and_its_failures() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let status =
        rpc(node.rt().status(cri::StatusRequest { verbose: false })).await.unwrap().into_inner().status.unwrap();
    let net = status.conditions.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(net.status, "{net:?}");

    let mut pc = node.pod_config("net", cri::NamespaceMode::Container);
    pc.port_mappings = vec![tests::port(cri::Protocol::Tcp, 80, 18080, "")];
    let pod = node.run_pod_with(pc.clone()).await.unwrap();
    let st =
        rpc(node.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false }))
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
    assert_eq!(st.network.unwrap().ip, "10.99.0.2");
    let ctr = node.run(&pod, &pc, node.container_config("app", &["sleep", "3600"])).await;
    assert!(node.sh(&ctr, "cat /etc/hosts").await.contains("10.99.0.2\tnet"));
    let calls = std::fs::read_to_string(node.cni.path().join("bin/calls")).unwrap();
    assert_eq!(calls.lines().next().unwrap(), format!("ADD {pod} eth0"));

    // The plugin saw the name, version and (declared) capability args.
    let stdin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node.cni.path().join("bin/last-stdin")).unwrap()).unwrap();
    assert_eq!((stdin["name"].as_str(), stdin["cniVersion"].as_str()), (Some("fake"), Some("1.0.0")));

    // A new config after ADD: DEL still uses the one ADD used (cached).
    std::fs::write(
        node.cni.path().join("net.d/10-fake.conflist"),
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"missing-plugin"}]}"#,
    )
    .unwrap();
    let status =
        rpc(node.rt().status(cri::StatusRequest { verbose: false })).await.unwrap().into_inner().status.unwrap();
    let net = status.conditions.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(!net.status && net.reason == "NetworkPluginNotReady" && net.message.contains("missing-plugin"), "{net:?}");
    node.remove_pod(&pod).await.unwrap();
    let calls = std::fs::read_to_string(node.cni.path().join("bin/calls")).unwrap();
    assert!(calls.contains(&format!("DEL {pod} eth0")), "{calls}");
    let stdin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node.cni.path().join("bin/last-stdin")).unwrap()).unwrap();
    assert_eq!(stdin["name"], "fake");
    assert_eq!(stdin["prevResult"]["ips"][0]["address"], "10.99.0.2/24");

    // A failing ADD fails RunPodSandbox with the plugin's message; DEL is called and nothing stays.
    std::fs::write(
        node.cni.path().join("net.d/10-fake.conflist"),
        r#"{"cniVersion":"1.0.0","name":"fake","plugins":[{"type":"fake-cni"}]}"#,
    )
    .unwrap();
    std::fs::write(node.cni.path().join("bin/fail"), "").unwrap();
    let err = node.run_pod_with(node.pod_config("failing", cri::NamespaceMode::Container)).await.unwrap_err();
    assert!(err.message().contains("fake failure"), "{}", err.message());
    let calls = std::fs::read_to_string(node.cni.path().join("bin/calls")).unwrap();
    assert!(calls.lines().last().unwrap().starts_with("DEL "), "{calls}");
    let pods =
        rpc(node.rt().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })).await.unwrap().into_inner().items;
    assert!(pods.is_empty(), "{pods:?}");
    // The name is free again.
    std::fs::remove_file(node.cni.path().join("bin/fail")).unwrap();
    let again = node.run_pod_with(node.pod_config("failing", cri::NamespaceMode::Container)).await.unwrap();
    node.remove_pod(&again).await.unwrap();
    node.assert_nothing_left().await;
    assert!(tests::dir_names(&node.c.root.join("cni/results")).is_empty());
}

#[tokio::test]
async fn kill_9_between_run_and_remove_leaks_nothing() {
    require_root!();
    let env = require_env!();
    let mut node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("crashy", cri::NamespaceMode::Pod).await;
    node.run(&pod, &pc, node.container_config("app", &["sleep", "3600"])).await;
    node.c.kill9();
    // As if the crash came between moving a removed container's bundle and its writable
    // snapshot aside and deleting them in the background: the restart removes both.
    let trash_bundle = node.c.state.join("containers/trash-0123456789abcdef-1");
    let trash_snapshot = node.c.root.join("snapshots/trash-999-1");
    for d in [&trash_bundle, &trash_snapshot] {
        std::fs::create_dir_all(d.join("rootfs/etc")).unwrap();
        std::fs::write(d.join("rootfs/etc/data"), "x").unwrap();
    }
    node.c.restart().await;
    assert!(!trash_bundle.exists(), "bundle moved aside before the crash survived the restart");
    assert!(!trash_snapshot.exists(), "snapshot moved aside before the crash survived the restart");
    node.remove_pod(&pod).await.unwrap();
    let calls = std::fs::read_to_string(node.cni.path().join("bin/calls")).unwrap();
    assert!(calls.contains(&format!("DEL {pod} eth0")), "{calls}");
    node.assert_nothing_left().await;
    assert!(tests::dir_names(&node.c.root.join("cni/results")).is_empty());
}

fn ctr_security(pid: cri::NamespaceMode, target: &str) -> Option<cri::LinuxContainerSecurityContext> {
    Some(cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: pid as i32,
            target_id: target.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[tokio::test]
async fn resources_oom_score_and_pid_namespace_modes() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("res", cri::NamespaceMode::Container).await;

    let mut cfg = node.container_config("limited", &["sleep", "3600"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            oom_score_adj: 500,
            unified: HashMap::from([("pids.max".to_string(), "100".to_string())]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let limited = node.run(&pod, &pc, cfg).await;
    let value = |v1: &str, file: &str| node.cgroup_value(&limited, v1, file);
    if tests::node::cgroup_v2() {
        // runc's conversion of shares to a weight: 1 + (512 - 2) * 9999 / 262142.
        assert_eq!(value("cpu", "cpu.weight"), "20");
        assert_eq!(value("cpu", "cpu.max"), "50000 100000");
        assert_eq!(value("memory", "memory.max"), (64u64 << 20).to_string());
        // The CRI's default of no swap beyond the memory limit.
        assert_eq!(value("memory", "memory.swap.max"), "0");
    } else {
        assert_eq!(value("cpu", "cpu.shares"), "512");
        assert_eq!(value("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(value("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(value("memory", "memory.limit_in_bytes"), (64u64 << 20).to_string());
    }
    assert_eq!(value("cpuset", "cpuset.cpus"), "0");
    assert_eq!(value("pids", "pids.max"), "100");
    assert_eq!(node.sh(&limited, "cat /proc/1/oom_score_adj").await, "500");

    // Lowering oom_score_adj below corrald's is refused by this kind of host (no
    // CAP_SYS_RESOURCE): the value is clamped, the container still runs.
    let mine: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap();
    let mut cfg = node.container_config("lowered", &["sleep", "3600"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources { oom_score_adj: -999, ..Default::default() }),
        ..Default::default()
    });
    let lowered = node.run(&pod, &pc, cfg).await;
    let got: i32 = node.sh(&lowered, "cat /proc/1/oom_score_adj").await.parse().unwrap();
    assert!(got == -999 || got >= mine.min(0), "oom_score_adj {got}");

    // pid TARGET joins the target container's PID namespace.
    let mut cfg = node.container_config("peer", &["sleep", "2400"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: ctr_security(cri::NamespaceMode::Target, &limited),
        ..Default::default()
    });
    let peer = node.run(&pod, &pc, cfg).await;
    let ps = node.sh(&peer, "ps -o args").await;
    assert!(ps.contains("sleep 3600") && ps.contains("sleep 2400"), "{ps}");
    // pid NODE shares the host's.
    let mut cfg = node.container_config("hostpid", &["sleep", "3600"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: ctr_security(cri::NamespaceMode::Node, ""),
        ..Default::default()
    });
    let hostpid = node.run(&pod, &pc, cfg).await;
    assert_eq!(
        node.sh(&hostpid, "readlink /proc/self/ns/pid").await,
        std::fs::read_link("/proc/self/ns/pid").unwrap().display().to_string()
    );

    // A bidirectional mount: a mount made inside the container shows on the host.
    let shared = node.c.dir().join("bidir");
    std::fs::create_dir_all(&shared).unwrap();
    let src = std::ffi::CString::new(shared.display().to_string()).unwrap();
    // SAFETY: valid strings; makes the test's own directory a shared bind mount.
    unsafe {
        assert_eq!(libc::mount(src.as_ptr(), src.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()), 0);
        assert_eq!(libc::mount(std::ptr::null(), src.as_ptr(), std::ptr::null(), libc::MS_SHARED, std::ptr::null()), 0);
    }
    let mut cfg = node.container_config("bidir", &["sleep", "3600"]);
    cfg.mounts = vec![cri::Mount {
        container_path: "/shared".into(),
        host_path: shared.display().to_string(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let mut sec = ctr_security(cri::NamespaceMode::Container, "").unwrap();
    sec.privileged = false;
    sec.capabilities = Some(cri::Capability { add_capabilities: vec!["SYS_ADMIN".into()], ..Default::default() });
    cfg.linux = Some(cri::LinuxContainerConfig { security_context: Some(sec), ..Default::default() });
    let bidir = node.run(&pod, &pc, cfg).await;
    node.sh(&bidir, "mkdir -p /shared/inner && mount -t tmpfs none /shared/inner && echo hi > /shared/inner/f").await;
    assert!(
        tests::wait_for(Duration::from_secs(5), || shared.join("inner/f").exists()).await,
        "the container's mount did not propagate to the host"
    );

    node.remove_pod(&pod).await.unwrap();
    let inner = std::ffi::CString::new(shared.join("inner").display().to_string()).unwrap();
    // SAFETY: valid strings.
    unsafe {
        libc::umount2(inner.as_ptr(), libc::MNT_DETACH);
        libc::umount2(src.as_ptr(), libc::MNT_DETACH);
    }
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn removing_an_image_never_breaks_a_container_that_uses_it() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env.clone()).await;
    let image = env.image("corral/zstd:latest");
    node.c.pull(&image).await.unwrap();
    let (pod, pc) = node.run_pod("img", cri::NamespaceMode::Container).await;
    let mut cfg = node.container_config("user", &["sleep", "3600"]);
    cfg.image = Some(tests::spec(&image));
    let ctr = node.run(&pod, &pc, cfg).await;
    node.c.remove(&image).await.unwrap();
    assert!(node.c.status(&image).await.is_none());
    // The layers stay while the container uses them.
    assert_eq!(node.sh(&ctr, "cat /zstd-marker").await, "zstd");
    let snapshots_with_container = node.c.snapshot_names().len();
    node.remove_pod(&pod).await.unwrap();
    // Then they go: only busybox's layer (still an image) remains.
    let after = node.c.snapshot_names();
    assert!(after.len() < snapshots_with_container, "{after:?}");
    assert_eq!(after.len(), 1, "{after:?}");
    node.assert_nothing_left().await;
}
