//! Hostile and unlucky inputs: request paths and names that try to leave their place, secrets
//! in bundles, a restart that races the old corrald's exit.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tests::cri_api::v1 as cri;
use tests::node::Node;
use tests::{require_env, require_root, rpc};
use tonic::Code;

fn refused(what: &str, err: tonic::Status, field: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    assert!(err.message().contains(field), "{what}: {}", err.message());
}

#[tokio::test]
async fn request_paths_and_names_stay_where_they_belong() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env.clone()).await;
    let escape = std::path::PathBuf::from(format!("/tmp/corral-escape-{}", tests::node::random_suffix()));

    let mut pc = node.pod_config("cg", cri::NamespaceMode::Container);
    pc.linux.as_mut().unwrap().cgroup_parent = format!("/../../../../../..{}", escape.display());
    refused("cgroup_parent with ..", node.run_pod_with(pc).await.unwrap_err(), "linux.cgroup_parent");
    assert!(!escape.exists(), "corrald made {} on the host", escape.display());
    let mut pc = node.pod_config("logdir", cri::NamespaceMode::Container);
    pc.log_directory = "relative/logs".into();
    refused("relative log_directory", node.run_pod_with(pc).await.unwrap_err(), "log_directory");
    let mut pc = node.pod_config("nul", cri::NamespaceMode::Container);
    pc.metadata.as_mut().unwrap().name = "evil\0name".into();
    refused("NUL in the pod name", node.run_pod_with(pc).await.unwrap_err(), "metadata.name");
    let calls = std::fs::read_to_string(node.cni.path().join("bin/calls")).unwrap_or_default();
    assert!(calls.is_empty(), "CNI ran for a refused pod: {calls}");
    assert!(tests::dir_names(&node.c.root.join("cni/results")).is_empty(), "a CNI cache file was left");

    // A name that would break CNI_ARGS reaches the plugin encoded.
    let mut pc = node.pod_config("semi", cri::NamespaceMode::Container);
    pc.metadata.as_mut().unwrap().name = "a;K8S_POD_NAME=b".into();
    let pod = node.run_pod_with(pc.clone()).await.expect("a pod with ; and = in its name");
    let args = std::fs::read_to_string(node.cni.path().join("bin/last-args")).unwrap();
    assert!(args.contains("K8S_POD_NAME=a%3BK8S_POD_NAME%3Db;"), "{args}");
    assert_eq!(args.matches("K8S_POD_NAME=").count(), 1, "{args}");

    // log_path: relative and inside the log directory.
    for bad in ["../../../../etc/cron.d/corral", "/etc/cron.d/corral", "a/../../x.log"] {
        let mut cfg = node.container_config("log", &["true"]);
        cfg.log_path = bad.into();
        refused(bad, node.create(&pod, &pc, cfg).await.unwrap_err(), "log_path");
    }
    assert!(!std::path::Path::new("/etc/cron.d/corral").exists());

    // A huge value comes back quoted in part only.
    let mut cfg = node.container_config("huge", &["true"]);
    cfg.image = Some(tests::spec(&format!("{}/{}", env.registry, "x".repeat(300_000))));
    let err = node.create(&pod, &pc, cfg).await.unwrap_err();
    assert!(err.message().len() < 8192, "a {}-byte error message", err.message().len());
    let err = rpc(node
        .c
        .images()
        .pull_image(cri::PullImageRequest { image: Some(tests::spec(&"y".repeat(300_000))), ..Default::default() }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 8192, "a {}-byte error message", err.message().len());

    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn bundles_hold_the_env_for_root_only() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("secret", cri::NamespaceMode::Container).await;
    let mut cfg = node.container_config("app", &["sleep", "3600"]);
    cfg.envs = vec![cri::KeyValue { key: "DB_PASSWORD".into(), value: "hunter2".into() }];
    let c = node.run(&pod, &pc, cfg).await;
    let bundles = node.c.state.join("containers");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&bundles), 0o700);
    let bundle = bundles.join(&c[..16]);
    assert_eq!(mode(&bundle), 0o700);
    let config = bundle.join("config.json");
    assert!(std::fs::read_to_string(&config).unwrap().contains("hunter2"));
    assert_eq!(mode(&config), 0o600, "config.json holds the env");
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn a_restart_waits_for_the_lock_of_a_corrald_still_exiting() {
    require_root!();
    let env = require_env!();
    let mut node = Node::boot(env).await;
    node.c.kill9();
    // The killed instance's lock is held a moment longer, as while the kernel tears it down.
    let lock = std::fs::OpenOptions::new().read(true).write(true).open(node.c.root.join("corrald.lock")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(lock);
    });
    node.c.restart().await;
    release.join().unwrap();
    assert!(node.c.log_text().contains("waiting up to"), "no word of the wait in the log");
    let version = rpc(node.rt().version(cri::VersionRequest::default())).await.unwrap().into_inner();
    assert_eq!(version.runtime_name, "corral");
}

/// The host pids of the shims serving this container's bundle.
fn shims_of(node: &Node, container: &str) -> Vec<u32> {
    node.shim_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&container[..16]))
                .unwrap_or(false)
        })
        .collect()
}

fn kill9(pid: u32) {
    // SAFETY: kill has no memory preconditions; the pid is a shim this test's corrald started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// The container process's host pid, from verbose ContainerStatus.
async fn container_pid(node: &Node, id: &str) -> u32 {
    let resp = rpc(node.rt().container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: true }))
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    info["pid"].as_u64().expect("pid") as u32
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test]
async fn containers_whose_shim_died_are_found_stopped_and_removed() {
    require_root!();
    let env = require_env!();
    let mut node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("orphans", cri::NamespaceMode::Container).await;
    let a = node.run(&pod, &pc, node.container_config("a", &["sleep", "3600"])).await;
    let b = node.run(&pod, &pc, node.container_config("b", &["sleep", "3600"])).await;
    let (pid_a, pid_b) = (container_pid(&node, &a).await, container_pid(&node, &b).await);

    // The shims die while corrald is down.
    node.c.kill9();
    for shim in shims_of(&node, &a).into_iter().chain(shims_of(&node, &b)) {
        kill9(shim);
    }
    assert!(
        tests::wait_for(Duration::from_secs(5), || shims_of(&node, &a).is_empty() && shims_of(&node, &b).is_empty())
            .await
    );
    node.c.restart().await;
    // Reported as they are: running, without a shim.
    let s = node.status(&a).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32, "{s:?}");
    assert!(s.message.contains("shim is gone"), "{}", s.message);
    assert!(alive(pid_a) && alive(pid_b));
    // Stop means the processes are gone when it returns.
    node.stop_container(&a, 2).await.expect("StopContainer of an orphan");
    assert!(!alive(pid_a), "StopContainer returned while the process runs");
    assert_eq!(node.status(&a).await.state, cri::ContainerState::ContainerExited as i32);
    // Remove ends what runs; then the pod goes completely.
    rpc(node.rt().remove_container(cri::RemoveContainerRequest { container_id: b.clone() }))
        .await
        .expect("RemoveContainer of an orphan");
    assert!(!alive(pid_b), "RemoveContainer returned while the process runs");
    node.remove_pod(&pod).await.expect("RemovePodSandbox after orphans");
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn a_container_whose_shim_is_killed_keeps_running_until_stopped() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("lost", cri::NamespaceMode::Container).await;
    let c = node.run(&pod, &pc, node.container_config("c", &["sleep", "3600"])).await;
    let pid = container_pid(&node, &c).await;
    for shim in shims_of(&node, &c) {
        kill9(shim);
    }
    // Not Unknown (which StopContainer took as stopped): still running, without its shim.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = node.status(&c).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32, "{s:?}");
    node.stop_container(&c, 5).await.expect("StopContainer");
    assert!(!alive(pid), "StopContainer returned OK while the process runs");
    let s = node.status(&c).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32, "{s:?}");
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn a_pod_whose_pid_1_died_is_not_ready() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("pid1", cri::NamespaceMode::Pod).await;
    let resp =
        rpc(node.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: true }))
            .await
            .unwrap()
            .into_inner();
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    let pause = info["pausePid"].as_u64().expect("pausePid") as u32;
    assert!(pause != 0 && alive(pause));
    kill9(pause);
    let not_ready = || async {
        let st = rpc(node
            .rt()
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false }))
        .await
        .unwrap()
        .into_inner();
        st.status.unwrap().state == cri::PodSandboxState::SandboxNotready as i32
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !not_ready().await {
        assert!(std::time::Instant::now() < deadline, "the pod stayed ready after its PID 1 died");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = node.create(&pod, &pc, node.container_config("late", &["true"])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("PID 1"), "{}", err.message());
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn exec_output_over_the_cap_is_cut_and_the_shim_stays_usable() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("bigexec", cri::NamespaceMode::Container).await;
    let c = node.run(&pod, &pc, node.container_config("c", &["sleep", "3600"])).await;
    // 20 MiB of stdout and 1 MiB of stderr: over the cap (8 MiB less 64 KiB per stream), and over
    // a 16 MiB frame together if nothing cut them.
    let out = node
        .exec(&c, &["sh", "-c", "head -c 20971520 /dev/zero; head -c 1048576 /dev/zero >&2; exit 7"], 60)
        .await
        .expect("ExecSync with 21 MiB of output");
    assert_eq!(out.exit_code, 7);
    assert_eq!(out.stdout.len(), (8 << 20) - (64 << 10));
    assert_eq!(out.stderr.len(), 1 << 20);
    // The shim answers the next request as ever.
    assert_eq!(node.sh(&c, "echo after").await, "after");
    node.remove_pod(&pod).await.unwrap();
    node.assert_nothing_left().await;
}

/// An HTTP/2 frame: length, type, flags, stream, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK literal with incremental indexing of a static name (short plain value).
fn hpack_literal(name_index: u8, value: &str) -> Vec<u8> {
    assert!(name_index < 63 && value.len() < 127);
    let mut out = vec![0x40 | name_index, value.len() as u8];
    out.extend_from_slice(value.as_bytes());
    out
}

/// grpc-core clients (grpc-python, Ruby, C++) send a `unix:` target's socket path,
/// percent-encoded, as `:authority`; h2 alone resets such streams. This speaks HTTP/2 by hand
/// as grpc-core does: two Version calls, the second naming every header from the HPACK dynamic
/// table the first filled (so corrald's rewrite must keep the tables in step).
#[tokio::test]
async fn grpc_core_clients_with_their_default_authority_are_served() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let socket = node.c.socket.clone();
    let answers = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let authority = socket.to_str().unwrap().trim_start_matches('/').replace('/', "%2F");
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(h2_frame(0x4, 0, 0, &[]));
        // :method POST, :scheme http, then :path, :authority, content-type and te as literals
        // that enter the dynamic table (62 te, 63 content-type, 64 :authority, 65 :path).
        let mut first = vec![0x83, 0x86];
        first.extend(hpack_literal(4, "/runtime.v1.RuntimeService/Version"));
        first.extend(hpack_literal(1, &authority));
        first.extend(hpack_literal(31, "application/grpc"));
        first.extend([0x40, 0x02, b't', b'e', 0x08]);
        first.extend_from_slice(b"trailers");
        let empty_message = [0u8; 5];
        out.extend(h2_frame(0x1, 0x4, 1, &first));
        out.extend(h2_frame(0x0, 0x1, 1, &empty_message));
        out.extend(h2_frame(0x1, 0x4, 3, &[0x83, 0x86, 0xc1, 0xc0, 0xbf, 0xbe]));
        out.extend(h2_frame(0x0, 0x1, 3, &empty_message));
        conn.write_all(&out).unwrap();

        let mut data: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        while data.len() < 2 || data.values().any(|d| !d.windows(6).any(|w| w == b"corral")) {
            let n = conn.read(&mut chunk).expect("corrald answered");
            assert!(n > 0, "corrald closed the connection; got {data:?}");
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 9 {
                let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let frame: Vec<u8> = buf.drain(..9 + len).collect();
                let (kind, flags) = (frame[3], frame[4]);
                let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]);
                match kind {
                    0x0 => data.entry(stream).or_default().extend_from_slice(&frame[9..]),
                    0x3 => panic!("stream {stream} reset, error code {:?}", &frame[9..]),
                    0x7 => panic!("GOAWAY: {:?}", &frame[9..]),
                    0x4 if flags & 0x1 == 0 => conn.write_all(&h2_frame(0x4, 0x1, 0, &[])).unwrap(),
                    _ => {}
                }
            }
        }
        data
    })
    .await
    .unwrap();
    assert_eq!(answers.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
}

/// grpc-python as PyPI ships it, with its default channel options: the authority it sends for
/// `unix:///path` is the percent-encoded path.
#[tokio::test]
async fn grpc_python_is_served_with_its_defaults() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env.clone()).await;
    let script = r#"
import sys, grpc
print("grpcio", grpc.__version__)
channel = grpc.insecure_channel("unix://" + sys.argv[1])
for method in ("/runtime.v1.RuntimeService/Version", "/runtime.v1.ImageService/ImageFsInfo"):
    reply = channel.unary_unary(method)(b"", timeout=20)
    print(method, reply.hex())
"#;
    let out = std::process::Command::new("python3")
        .env("PYTHONPATH", &env.grpcio)
        .arg("-c")
        .arg(script)
        .arg(&node.c.socket)
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "grpc-python failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    let version_of_grpcio = env.grpcio.file_name().unwrap().to_string_lossy().replace("grpcio-", "grpcio ");
    assert!(stdout.contains(&version_of_grpcio), "not the grpcio of {}: {stdout}", env.grpcio.display());
    let version = stdout.lines().find(|l| l.starts_with("/runtime.v1.RuntimeService/Version")).unwrap();
    let corral: String = b"corral".iter().map(|b| format!("{b:02x}")).collect();
    assert!(version.contains(&corral), "no runtime name in the answer: {version}");
    assert!(stdout.contains("/runtime.v1.ImageService/ImageFsInfo "), "{stdout}");
}
