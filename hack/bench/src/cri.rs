//! The CRI scenarios, over one persistent gRPC channel (HTTP/2 over the unix socket, shared by
//! every concurrent worker): pod lifecycle, container lifecycle with ExecSync in a ready pod,
//! image pull cold and warm, and density (many pods at once).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cri_api::v1 as cri;
use cri_api::v1::image_service_client::ImageServiceClient;
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::stats::Samples;

/// A bound on each call, so a hung runtime fails the run instead of hanging it.
const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// Clients of both services over one channel; cloning shares the connection.
#[derive(Clone)]
pub struct Cri {
    pub rt: RuntimeServiceClient<Channel>,
    pub img: ImageServiceClient<Channel>,
}

pub async fn connect(socket: &Path) -> Result<Cri> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://[::1]:50051")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let c = Cri { rt: RuntimeServiceClient::new(channel.clone()), img: ImageServiceClient::new(channel) };
    Ok(c)
}

/// Connects once the runtime answers Version and reports RuntimeReady and NetworkReady
/// (a daemon that was just started may take a moment).
pub async fn connect_ready(socket: &Path, timeout: Duration) -> Result<Cri> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match connect(socket).await {
            Ok(mut c) => match c.rt.status(cri::StatusRequest { verbose: false }).await {
                Ok(st) => {
                    let conds = st.into_inner().status.map(|s| s.conditions).unwrap_or_default();
                    let ok = |t: &str| conds.iter().any(|c| c.r#type == t && c.status);
                    if ok("RuntimeReady") && ok("NetworkReady") {
                        return Ok(c);
                    }
                    format!("not ready: {conds:?}")
                }
                Err(e) => e.to_string(),
            },
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{} not ready after {timeout:?}: {last}", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn rpc<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => bail!("{what}: {} {}", s.code(), s.message()),
        Err(_) => bail!("{what}: no answer in {RPC_TIMEOUT:?}"),
    }
}

/// What every scenario needs to build its requests.
#[derive(Debug, Clone)]
pub struct Opts {
    /// The image of the benchmark containers (busybox).
    pub image: String,
    /// Iterations per scenario (split over the workers).
    pub n: usize,
    /// Pods created by the density scenario.
    pub pods: usize,
    /// Pod cgroup parent prefix sent in the CRI request (`<prefix>/<pod name>`), as kubelet
    /// sends one; empty leaves the choice to the runtime.
    pub cgroup_parent: String,
    /// Pod log directories are made under here.
    pub log_dir: PathBuf,
    /// Makes pod names unique across runs on one runtime.
    pub tag: String,
}

impl Opts {
    pub(crate) fn pod_config(&self, name: &str) -> Result<cri::PodSandboxConfig> {
        let log_dir = self.log_dir.join(name);
        std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        // As kubelet sends it for a pod without shareProcessNamespace: own PID namespace per
        // container, pod network and IPC.
        let ns = cri::NamespaceOption { pid: cri::NamespaceMode::Container as i32, ..Default::default() };
        Ok(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: if self.cgroup_parent.is_empty() {
                    String::new()
                } else {
                    format!("{}/{name}", self.cgroup_parent)
                },
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(ns),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub(crate) fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        let ns = cri::NamespaceOption { pid: cri::NamespaceMode::Container as i32, ..Default::default() };
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: self.image.clone(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(ns),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A pod's id and the config it was created with (CreateContainer needs it again).
pub struct Pod {
    pub id: String,
    pub config: cri::PodSandboxConfig,
}

impl Cri {
    pub async fn pull(&mut self, image: &str) -> Result<String> {
        let req = cri::PullImageRequest { image: Some(spec(image)), ..Default::default() };
        Ok(rpc(&format!("PullImage {image}"), self.img.pull_image(req)).await?.image_ref)
    }

    pub async fn remove_image(&mut self, image: &str) -> Result<()> {
        rpc(
            &format!("RemoveImage {image}"),
            self.img.remove_image(cri::RemoveImageRequest { image: Some(spec(image)) }),
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn run_pod(&mut self, config: cri::PodSandboxConfig) -> Result<Pod> {
        let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        let id = rpc("RunPodSandbox", self.rt.run_pod_sandbox(req)).await?.pod_sandbox_id;
        Ok(Pod { id, config })
    }

    async fn pod_status(&mut self, id: &str) -> Result<()> {
        let st = rpc(
            "PodSandboxStatus",
            self.rt.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false }),
        )
        .await?;
        let ready = st.status.as_ref().map(|s| s.state == cri::PodSandboxState::SandboxReady as i32).unwrap_or(false);
        let ip = st.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
        if !ready || ip.is_empty() {
            bail!("pod {id} is not ready with an IP (ready {ready}, ip {ip:?})");
        }
        Ok(())
    }

    pub(crate) async fn stop_pod(&mut self, id: &str) -> Result<()> {
        rpc("StopPodSandbox", self.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() }))
            .await
            .map(|_| ())
    }

    pub(crate) async fn remove_pod(&mut self, id: &str) -> Result<()> {
        rpc("RemovePodSandbox", self.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() }))
            .await
            .map(|_| ())
    }

    pub(crate) async fn create(&mut self, pod: &Pod, config: cri::ContainerConfig) -> Result<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        Ok(rpc("CreateContainer", self.rt.create_container(req)).await?.container_id)
    }

    pub(crate) async fn start(&mut self, id: &str) -> Result<()> {
        rpc("StartContainer", self.rt.start_container(cri::StartContainerRequest { container_id: id.into() }))
            .await
            .map(|_| ())
    }

    async fn container_status(&mut self, id: &str) -> Result<()> {
        let st = rpc(
            "ContainerStatus",
            self.rt.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false }),
        )
        .await?;
        let state = st.status.map(|s| s.state).unwrap_or(-1);
        if state != cri::ContainerState::ContainerRunning as i32 {
            bail!("container {id} is not running (state {state})");
        }
        Ok(())
    }

    async fn exec_true(&mut self, id: &str) -> Result<()> {
        let req = cri::ExecSyncRequest { container_id: id.into(), cmd: vec!["true".into()], timeout: 10 };
        let r = rpc("ExecSync", self.rt.exec_sync(req)).await?;
        if r.exit_code != 0 {
            bail!("ExecSync true in {id}: exit code {} ({})", r.exit_code, String::from_utf8_lossy(&r.stderr));
        }
        Ok(())
    }

    async fn stop(&mut self, id: &str, timeout: i64) -> Result<()> {
        rpc("StopContainer", self.rt.stop_container(cri::StopContainerRequest { container_id: id.into(), timeout }))
            .await
            .map(|_| ())
    }

    async fn remove(&mut self, id: &str) -> Result<()> {
        rpc("RemoveContainer", self.rt.remove_container(cri::RemoveContainerRequest { container_id: id.into() }))
            .await
            .map(|_| ())
    }

    pub async fn list_pods(&mut self) -> Result<Vec<cri::PodSandbox>> {
        Ok(rpc("ListPodSandbox", self.rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())).await?.items)
    }

    /// Stops and removes every pod of this runtime (the runtimes are private to the bench).
    pub async fn remove_all_pods(&mut self) -> Result<usize> {
        let pods = self.list_pods().await?;
        for p in &pods {
            self.stop_pod(&p.id).await?;
            self.remove_pod(&p.id).await?;
        }
        Ok(pods.len())
    }
}

fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.into(), ..Default::default() }
}

/// Runs `iteration(client, i)` for i in 0..n on `parallelism` workers sharing the channel,
/// each worker first running `setup` once (untimed) and `teardown` at the end, and merges
/// the samples.
async fn workers<S, Setup, SetupFut, Iter, IterFut, Teardown, TeardownFut>(
    c: &Cri,
    n: usize,
    parallelism: usize,
    setup: Setup,
    iteration: Iter,
    teardown: Teardown,
) -> Result<Samples>
where
    S: Send + Sync + 'static,
    Setup: Fn(Cri, usize) -> SetupFut + Send + Sync + 'static,
    SetupFut: std::future::Future<Output = Result<S>> + Send,
    Iter: Fn(Cri, usize, Arc<S>) -> IterFut + Send + Sync + 'static,
    IterFut: std::future::Future<Output = Result<Samples>> + Send,
    Teardown: Fn(Cri, Arc<S>) -> TeardownFut + Send + Sync + 'static,
    TeardownFut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let (setup, iteration, teardown) = (Arc::new(setup), Arc::new(iteration), Arc::new(teardown));
    let mut tasks = Vec::new();
    for w in 0..parallelism.max(1) {
        let (c, next, setup, iteration, teardown) =
            (c.clone(), next.clone(), setup.clone(), iteration.clone(), teardown.clone());
        tasks.push(tokio::spawn(async move {
            let state = Arc::new(setup(c.clone(), w).await?);
            let mut samples = Samples::default();
            let mut result = Ok(());
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                match iteration(c.clone(), i, state.clone()).await {
                    Ok(s) => samples.merge(s),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let down = teardown(c, state).await;
            result.and(down).map(|_| samples)
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.merge(t.await.context("worker panicked")??);
    }
    Ok(all)
}

/// RunPodSandbox, PodSandboxStatus, StopPodSandbox, RemovePodSandbox, `n` times.
pub async fn pod_lifecycle(c: &Cri, o: &Opts, parallelism: usize, label: &str) -> Result<Samples> {
    let o = Arc::new(o.clone());
    let label = label.to_string();
    workers(
        c,
        o.n,
        parallelism,
        |_, _| async { Ok(()) },
        move |mut c, i, _| {
            let (o, name) = (o.clone(), format!("bench-{}-{label}-{i}", o.tag));
            async move {
                let mut s = Samples::default();
                let config = o.pod_config(&name)?;
                let t = Instant::now();
                let pod = c.run_pod(config).await?;
                s.add("RunPodSandbox", t.elapsed());
                let t = Instant::now();
                c.pod_status(&pod.id).await?;
                s.add("PodSandboxStatus", t.elapsed());
                let t = Instant::now();
                c.stop_pod(&pod.id).await?;
                let stop = t.elapsed();
                s.add("StopPodSandbox", stop);
                let t = Instant::now();
                c.remove_pod(&pod.id).await?;
                let remove = t.elapsed();
                s.add("RemovePodSandbox", remove);
                s.add("StopPodSandbox + RemovePodSandbox", stop + remove);
                Ok(s)
            }
        },
        |_, _| async { Ok(()) },
    )
    .await
}

/// In one ready pod per worker: CreateContainer, StartContainer, ContainerStatus, ExecSync of
/// `true`, StopContainer (the process exits on SIGTERM), RemoveContainer, `n` times.
pub async fn container_lifecycle(c: &Cri, o: &Opts, parallelism: usize, label: &str) -> Result<Samples> {
    let o = Arc::new(o.clone());
    let label = label.to_string();
    let o2 = o.clone();
    let label2 = label.clone();
    workers(
        c,
        o.n,
        parallelism,
        move |mut c, w| {
            let (o, name) = (o.clone(), format!("bench-{}-{label}-pod{w}", o.tag));
            async move { c.run_pod(o.pod_config(&name)?).await }
        },
        move |mut c, i, pod: Arc<Pod>| {
            let (o, name) = (o2.clone(), format!("c-{label2}-{i}"));
            async move {
                let mut s = Samples::default();
                // A PID 1 shell that exits at once on SIGTERM.
                let config = o.container_config(&name, &["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]);
                let t = Instant::now();
                let id = c.create(&pod, config).await?;
                let create = t.elapsed();
                s.add("CreateContainer", create);
                let t = Instant::now();
                c.start(&id).await?;
                let start = t.elapsed();
                s.add("StartContainer", start);
                s.add("CreateContainer + StartContainer", create + start);
                let t = Instant::now();
                c.container_status(&id).await?;
                s.add("ContainerStatus", t.elapsed());
                let t = Instant::now();
                c.exec_true(&id).await?;
                s.add("ExecSync true", t.elapsed());
                let t = Instant::now();
                c.stop(&id, 10).await?;
                s.add("StopContainer", t.elapsed());
                let t = Instant::now();
                c.remove(&id).await?;
                s.add("RemoveContainer", t.elapsed());
                Ok(s)
            }
        },
        |mut c, pod: Arc<Pod>| async move {
            c.stop_pod(&pod.id).await?;
            c.remove_pod(&pod.id).await
        },
    )
    .await
}

/// PullImage of `image` after RemoveImage (cold) and again while present (warm), `reps` times each.
pub async fn pull(c: &Cri, image: &str, reps: usize) -> Result<Samples> {
    let mut c = c.clone();
    let mut s = Samples::default();
    for _ in 0..reps {
        c.remove_image(image).await?;
        let t = Instant::now();
        c.pull(image).await?;
        s.add("PullImage cold", t.elapsed());
    }
    for _ in 0..reps {
        let t = Instant::now();
        c.pull(image).await?;
        s.add("PullImage warm", t.elapsed());
    }
    c.remove_image(image).await?;
    Ok(s)
}

/// Starts `o.pods` pods, each with one `sleep` container, `parallelism` at a time; returns
/// them and the wall time.
pub async fn start_pods(c: &Cri, o: &Opts, parallelism: usize) -> Result<(Vec<Pod>, Duration)> {
    let started = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let (o, st) = (Arc::new(o.clone()), started.clone());
    let t = Instant::now();
    let res = workers(
        c,
        o.pods,
        parallelism,
        |_, _| async { Ok(()) },
        move |mut c, i, _| {
            let (o, st, name) = (o.clone(), st.clone(), format!("bench-{}-density-{i}", o.tag));
            async move {
                let pod = c.run_pod(o.pod_config(&name)?).await?;
                let id = c.create(&pod, o.container_config("sleep", &["sleep", "3600"])).await;
                st.lock().await.push(pod);
                c.start(&id?).await?;
                Ok(Samples::default())
            }
        },
        |_, _| async { Ok(()) },
    )
    .await;
    let elapsed = t.elapsed();
    let pods = std::mem::take(&mut *started.lock().await);
    match res {
        Ok(_) => Ok((pods, elapsed)),
        Err(e) => {
            let _ = remove_pods(c, pods, parallelism).await;
            Err(e)
        }
    }
}

/// Stops and removes `pods`, `parallelism` at a time; returns the wall time.
pub async fn remove_pods(c: &Cri, pods: Vec<Pod>, parallelism: usize) -> Result<Duration> {
    let ids: Arc<Vec<String>> = Arc::new(pods.into_iter().map(|p| p.id).collect());
    let t = Instant::now();
    workers(
        c,
        ids.len(),
        parallelism,
        |_, _| async { Ok(()) },
        move |mut c, i, _| {
            let ids = ids.clone();
            async move {
                c.stop_pod(&ids[i]).await?;
                c.remove_pod(&ids[i]).await?;
                Ok(Samples::default())
            }
        },
        |_, _| async { Ok(()) },
    )
    .await?;
    Ok(t.elapsed())
}
