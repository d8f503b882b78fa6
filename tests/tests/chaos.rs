//! Chaos: pod cycles from parallel workers (a pod on corral-cni, a container, an exec, stop,
//! removal) while corrald is killed with SIGKILL at random moments and restarted. Afterwards no
//! pod or container a worker was told it made was lost while it lived, and nothing leaked:
//! mounts, pinned namespaces, veths, IP allocations, iptables rules, cgroups, shims, corrald's
//! file descriptors.
//!
//! Sizes from the environment: CHAOS_CYCLES per worker (default 8), CHAOS_WORKERS (3),
//! CHAOS_KILLS (3), CHAOS_KILL_MS (the longest random wait between kills, 1500). `hack/chaos.sh`
//! runs it big, with release binaries.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::cri_api::v1 as cri;
use tests::cri_api::v1::runtime_service_client::RuntimeServiceClient;
use tests::net::{random_bytes, Chain, Net, BUSYBOX};
use tests::node::mounts_under;
use tests::{require_env, require_root};
use tonic::Code;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What the workers were told exists, and what they removed.
#[derive(Default)]
struct Ledger {
    /// Pod ids acknowledged by RunPodSandbox (or found after a retry) whose removal has not
    /// been asked for.
    live_pods: BTreeSet<String>,
    /// Every pod id ever made, to look for its rules at the end.
    all_pods: BTreeSet<String>,
    cycles: usize,
    retries: usize,
}

/// One step of a worker, retried through corrald's restarts: transport errors and Unavailable
/// mean corrald is down (or was killed mid-call), anything else is an answer.
async fn call<T, F, Fut>(socket: &Path, ledger: &Mutex<Ledger>, what: &str, mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut(RuntimeServiceClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(ch) = tests::connect(socket).await {
            match tokio::time::timeout(Duration::from_secs(120), f(RuntimeServiceClient::new(ch))).await {
                Ok(Err(e)) if corrald_went_away(&e) => {}
                Ok(other) => return other,
                Err(_) => {}
            }
        }
        ledger.lock().unwrap().retries += 1;
        assert!(Instant::now() < deadline, "{what}: corrald did not answer for 5 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a call failed because corrald died under it (rather than answering).
fn corrald_went_away(e: &tonic::Status) -> bool {
    let m = e.message().to_ascii_lowercase();
    e.code() == Code::Unavailable
        || [
            "transport error",
            "connection",
            "broken pipe",
            "h2 protocol error",
            "stream closed",
            "error trying to connect",
        ]
        .iter()
        .any(|s| m.contains(s))
}

fn pod_config(net_ns: &str, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: net_ns.into(),
            attempt: 0,
        }),
        hostname: name.into(),
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

/// The id of the pod named `name` (a RunPodSandbox that was answered AlreadyExists after a kill).
async fn find_pod(socket: &Path, ledger: &Mutex<Ledger>, name: &str) -> Option<String> {
    let pods = call(socket, ledger, "ListPodSandbox", |mut c| async move {
        c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await
    })
    .await
    .ok()?;
    pods.into_inner().items.into_iter().find(|p| p.metadata.as_ref().is_some_and(|m| m.name == name)).map(|p| p.id)
}

async fn find_container(socket: &Path, ledger: &Mutex<Ledger>, pod: &str, name: &str) -> Option<String> {
    let filter = cri::ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() };
    let list = call(socket, ledger, "ListContainers", |mut c| {
        let filter = filter.clone();
        async move { c.list_containers(cri::ListContainersRequest { filter: Some(filter) }).await }
    })
    .await
    .ok()?;
    list.into_inner().containers.into_iter().find(|c| c.metadata.as_ref().is_some_and(|m| m.name == name)).map(|c| c.id)
}

/// One pod's life: run, a container started, an exec, stop, remove.
async fn cycle(socket: &Path, ledger: &Mutex<Ledger>, image: &str, ns: &str, name: &str) {
    let config = pod_config(ns, name);
    let run = call(socket, ledger, "RunPodSandbox", |mut c| {
        let config = config.clone();
        async move {
            c.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }).await
        }
    })
    .await;
    let pod = match run {
        Ok(r) => r.into_inner().pod_sandbox_id,
        // A call killed half way finished in the background, or was undone: look.
        Err(e) if e.code() == Code::AlreadyExists => {
            find_pod(socket, ledger, name).await.unwrap_or_else(|| panic!("{name}: AlreadyExists but not listed"))
        }
        Err(e) => panic!("{name}: RunPodSandbox: {e:?}"),
    };
    {
        let mut l = ledger.lock().unwrap();
        l.live_pods.insert(pod.clone());
        l.all_pods.insert(pod.clone());
    }
    let cfg = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "main".into(), attempt: 0 }),
        image: Some(tests::spec(image)),
        command: vec!["sleep".into(), "3600".into()],
        ..Default::default()
    };
    let created = call(socket, ledger, "CreateContainer", |mut c| {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg.clone()),
            sandbox_config: Some(config.clone()),
        };
        async move { c.create_container(req).await }
    })
    .await;
    let ctr = match created {
        Ok(r) => r.into_inner().container_id,
        Err(e) if e.code() == Code::AlreadyExists => find_container(socket, ledger, &pod, "main")
            .await
            .unwrap_or_else(|| panic!("{name}: container AlreadyExists but not listed")),
        Err(e) => panic!("{name}: CreateContainer: {e:?}"),
    };
    let started = call(socket, ledger, "StartContainer", |mut c| {
        let id = ctr.clone();
        async move { c.start_container(cri::StartContainerRequest { container_id: id }).await }
    })
    .await;
    if let Err(e) = started {
        // Started by the call a kill interrupted: then it is running.
        assert_eq!(e.code(), Code::FailedPrecondition, "{name}: StartContainer: {e:?}");
    }
    // The container must be there, whatever happened to corrald meanwhile.
    assert!(find_container(socket, ledger, &pod, "main").await.is_some(), "{name}: container {ctr} was lost");
    let exec =
        call(socket, ledger, "ExecSync", |mut c| {
            let id = ctr.clone();
            async move {
                c.exec_sync(cri::ExecSyncRequest { container_id: id, cmd: vec!["true".into()], timeout: 30 }).await
            }
        })
        .await;
    let exec = exec.unwrap_or_else(|e| panic!("{name}: ExecSync: {e:?}"));
    assert_eq!(exec.into_inner().exit_code, 0, "{name}: exec true");
    call(socket, ledger, "StopPodSandbox", |mut c| {
        let id = pod.clone();
        async move { c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id }).await }
    })
    .await
    .unwrap_or_else(|e| panic!("{name}: StopPodSandbox: {e:?}"));
    // From here the pod may be gone at any moment: a removal cut short by a kill can have
    // finished (the retry then answers OK for a pod that is no more).
    ledger.lock().unwrap().live_pods.remove(&pod);
    call(socket, ledger, "RemovePodSandbox", |mut c| {
        let id = pod.clone();
        async move { c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await }
    })
    .await
    .unwrap_or_else(|e| panic!("{name}: RemovePodSandbox: {e:?}"));
    ledger.lock().unwrap().cycles += 1;
}

/// Pids of corral-shim processes serving `state`.
fn shims(state: &Path) -> Vec<u32> {
    let needle = state.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c).contains("corral-shim") && String::from_utf8_lossy(&c).contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn cgroups_below(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let dir = h.path().join(parent.trim_start_matches('/'));
        if let Ok(rd) = std::fs::read_dir(&dir) {
            out.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    out
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn pod_cycles_survive_corrald_being_killed() {
    require_root!();
    let env = require_env!();
    let (cycles, workers, kills) =
        (env_usize("CHAOS_CYCLES", 8), env_usize("CHAOS_WORKERS", 3), env_usize("CHAOS_KILLS", 3));
    let kill_ms = env_usize("CHAOS_KILL_MS", 1500).max(20) as u64;
    let mut net = Net::boot(env, Chain::Corral).await;
    let fds_at_start = fd_count(net.c.pid().expect("corrald runs"));
    let socket = net.c.socket.clone();
    let image = net.env.image(BUSYBOX);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();

    let mut tasks = Vec::new();
    for w in 0..workers {
        let (socket, ledger, image) = (socket.clone(), Arc::clone(&ledger), image.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..cycles {
                cycle(&socket, &ledger, &image, "chaos", &format!("w{w}-c{n}")).await;
            }
        }));
    }
    // The killer: SIGKILL at a random moment, restart, again, while the workers cycle.
    let mut killed = 0;
    while killed < kills && tasks.iter().any(|t| !t.is_finished()) {
        let wait = 10 + u64::from(u16::from_le_bytes(random_bytes::<2>())) % kill_ms;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        net.c.kill9();
        killed += 1;
        net.c.restart().await;
        // Every pod the workers were told exists, and whose removal they did not ask for, is
        // still listed: those live both before and after the listing (a pod acknowledged
        // while it ran, or with a removal begun meanwhile, may or may not be in it).
        let live_before = ledger.lock().unwrap().live_pods.clone();
        let listed: BTreeSet<String> =
            tests::rpc(net.c.runtime().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))
                .await
                .expect("ListPodSandbox after a restart")
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
        let live_after = ledger.lock().unwrap().live_pods.clone();
        let lost: Vec<&String> = live_before.intersection(&live_after).filter(|p| !listed.contains(*p)).collect();
        assert!(lost.is_empty(), "pods lost across kill {killed}: {lost:?}");
    }
    for t in tasks {
        t.await.expect("a worker failed");
    }
    let (done, retries) = {
        let l = ledger.lock().unwrap();
        (l.cycles, l.retries)
    };
    eprintln!(
        "chaos: {done} pod cycles by {workers} workers, {killed} kills of corrald, {retries} retried calls, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(done, cycles * workers);

    // Nothing left: the pods, their namespaces, mounts, network, cgroups and shims.
    let pods = tests::rpc(net.c.runtime().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "pods left: {pods:?}");
    let all_pods = ledger.lock().unwrap().all_pods.clone();
    let rules_of_pods = || {
        let rules = Command::new("iptables-save")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        all_pods.iter().filter(|p| rules.contains(p.as_str())).count()
    };
    let state = net.c.state.clone();
    let clean = || {
        net.veths().is_empty()
            && net.allocations().is_empty()
            && rules_of_pods() == 0
            && mounts_under(net.c.dir()).is_empty()
            && tests::dir_names(&state.join("pods")).is_empty()
            && tests::dir_names(&state.join("containers")).is_empty()
            && cgroups_below(&net.cgroup_parent).is_empty()
            && shims(&state).is_empty()
    };
    if !tests::wait_for(Duration::from_secs(30), clean).await {
        panic!(
            "left behind: veths {:?}, allocations {:?}, pods with rules {}, mounts {:?}, pod dirs {:?}, bundles {:?}, cgroups {:?}, shims {:?}",
            net.veths(),
            net.allocations(),
            rules_of_pods(),
            mounts_under(net.c.dir()),
            tests::dir_names(&state.join("pods")),
            tests::dir_names(&state.join("containers")),
            cgroups_below(&net.cgroup_parent),
            shims(&state)
        );
    }
    // corrald holds no descriptor of what is gone (it was restarted, so compare like with like:
    // an idle corrald after start against this one, idle again).
    let fds_now = fd_count(net.c.pid().expect("corrald runs"));
    assert!(fds_now <= fds_at_start + 4, "corrald holds {fds_now} descriptors, {fds_at_start} when it started idle");
}
