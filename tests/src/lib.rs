//! Harness for corral's integration tests: a real `corrald` started from outside with its own
//! temporary root, state and socket, CRI clients over the unix socket, the test registries'
//! environment, a fake OCI registry for faults a real one cannot produce, and small helpers
//! (overlay mounts, directory listings, polling with a deadline).
//!
//! Every test gets its own corrald and directories, so tests run in parallel. Cleanup (killing
//! corrald by pid, unmounting, removing the temp dirs) happens in `Drop`, so it also runs when a
//! test panics.

pub mod fake_registry;
pub mod net;
pub mod node;
pub mod oci;
pub mod streaming;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cri_api::v1 as cri;
use cri_api::v1::image_service_client::ImageServiceClient;
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

pub use cri_api;
pub use tonic;

/// How long corrald may take to start answering, or to stop after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// A bound on each CRI call, so that a hung corrald fails a test instead of hanging the suite.
const RPC_TIMEOUT: Duration = Duration::from_secs(180);

/// The largest CRI message a client takes, as the kubelet's (16 MiB).
pub const CRI_MESSAGE_MAX: usize = 16 << 20;

pub type Runtime = RuntimeServiceClient<Channel>;
pub type Images = ImageServiceClient<Channel>;

// ---- skipping -------------------------------------------------------------------------------

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The running test's name (libtest names each test's thread after it).
pub fn test_name() -> String {
    std::thread::current().name().unwrap_or("this test").to_string()
}

/// Returns from the test with a message when not running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipping {}: needs root (run hack/test.sh as root)", $crate::test_name());
            return;
        }
    };
}

/// The test registries started by `hack/test-env.sh` (and so by `hack/test.sh`).
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// `127.0.0.1:P`, open, with every test image.
    pub registry: String,
    /// `127.0.0.1:P2`, basic auth, holding only `corral/busybox:latest`.
    pub auth_registry: String,
    pub auth_user: String,
    pub auth_pass: String,
    /// images.json: per `name:tag` its manifest_digest, config_digest, layers, diff_ids, ...
    pub images: serde_json::Value,
    /// grpc-python (grpc-core) for PYTHONPATH (hack/install-test-clients.sh).
    pub grpcio: PathBuf,
}

impl TestEnv {
    /// `None` when `CORRAL_TEST_REGISTRY` is unset (the registries are not running).
    pub fn from_env() -> Option<TestEnv> {
        let registry = std::env::var("CORRAL_TEST_REGISTRY").ok().filter(|s| !s.is_empty())?;
        let var = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("{name} must be set with CORRAL_TEST_REGISTRY (see hack/test-env.sh)"))
        };
        let images_path = var("CORRAL_TEST_IMAGES");
        let text = std::fs::read_to_string(&images_path).unwrap_or_else(|e| panic!("reading {images_path}: {e}"));
        Some(TestEnv {
            registry,
            auth_registry: var("CORRAL_TEST_AUTH_REGISTRY"),
            auth_user: var("CORRAL_TEST_AUTH_USER"),
            auth_pass: var("CORRAL_TEST_AUTH_PASS"),
            images: serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {images_path}: {e}")),
            grpcio: PathBuf::from(var("CORRAL_TEST_GRPCIO")),
        })
    }

    /// `127.0.0.1:P/corral/busybox:latest` for `corral/busybox:latest`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{}", self.registry, name)
    }

    /// The images.json entry of `name` (`corral/busybox:latest`).
    pub fn info(&self, name: &str) -> ImageInfo {
        let v = self.images.get(name).unwrap_or_else(|| panic!("{name} is not in CORRAL_TEST_IMAGES"));
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        let list = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(|x| x.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        ImageInfo {
            manifest_digest: s("manifest_digest").expect("manifest_digest"),
            config_digest: s("config_digest").expect("config_digest"),
            host_manifest_digest: s("host_manifest_digest"),
            layers: list("layers"),
            diff_ids: list("diff_ids"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub manifest_digest: String,
    pub config_digest: String,
    pub host_manifest_digest: Option<String>,
    pub layers: Vec<String>,
    pub diff_ids: Vec<String>,
}

/// Binds the test registries' environment or returns from the test with a message.
#[macro_export]
macro_rules! require_env {
    () => {
        match $crate::TestEnv::from_env() {
            Some(env) => env,
            None => {
                eprintln!("skipping {}: CORRAL_TEST_REGISTRY is unset (run hack/test.sh, or start hack/test-env.sh and source its env)", $crate::test_name());
                return;
            }
        }
    };
}

// ---- corrald --------------------------------------------------------------------------------

/// The corrald binary: `$CORRALD` if set, else `<target dir>/debug/corrald`, where the target dir
/// is `$CARGO_TARGET_DIR` (relative to the workspace) or the workspace's `target/`.
pub fn corrald_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CORRALD") {
        return PathBuf::from(p);
    }
    let workspace =
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
        Some(t) => workspace.join(t),
        None => workspace.join("target"),
    };
    let bin = target.join("debug").join("corrald");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p agent` (hack/test.sh does)",
        bin.display()
    );
    bin
}

/// A corrald process with its own temporary directories:
/// `<dir>/root`, `<dir>/state`, `<dir>/corral.sock`, `<dir>/corrald.log` (stderr, appended over
/// restarts) and `<dir>/config.toml` when started with a config.
pub struct Corrald {
    /// Removed when the guard drops; `None` only while dropping.
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    config: Option<PathBuf>,
    child: Option<Child>,
    runtime: Option<Runtime>,
    images: Option<Images>,
}

impl Corrald {
    /// Starts corrald with no config file.
    pub async fn start() -> Corrald {
        Corrald::start_with_config(None).await
    }

    /// Starts corrald with `config` (TOML) as its `--config` file.
    pub async fn with_config(config: &str) -> Corrald {
        Corrald::start_with_config(Some(config)).await
    }

    async fn start_with_config(config: Option<&str>) -> Corrald {
        let mut c = Corrald::prepare(config);
        c.spawn_and_wait().await;
        c
    }

    /// The directories and files, without starting anything (`restart` starts it).
    pub fn prepare(config: Option<&str>) -> Corrald {
        let dir = tempfile::Builder::new().prefix("corral-it.").tempdir().expect("creating temp dir");
        let base = dir.path().to_path_buf();
        let config = config.map(|text| {
            let path = base.join("config.toml");
            std::fs::write(&path, text).expect("writing config");
            path
        });
        Corrald {
            root: base.join("root"),
            state: base.join("state"),
            socket: base.join("corral.sock"),
            log: base.join("corrald.log"),
            dir: Some(dir),
            config,
            child: None,
            runtime: None,
            images: None,
        }
    }

    /// The temp directory holding root, state, socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    /// The command line this corrald runs with, for starting a second one by hand.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(corrald_binary());
        cmd.arg("--root").arg(&self.root).arg("--state").arg(&self.state).arg("--listen").arg(&self.socket);
        cmd.arg("--log-level").arg("corrald=debug,info");
        cmd.env("NO_COLOR", "1");
        if let Some(cfg) = &self.config {
            cmd.arg("--config").arg(cfg);
        }
        cmd.stdin(Stdio::null());
        cmd.env_remove("RUST_LOG");
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "corrald is already running");
        let log = File::options().create(true).append(true).open(&self.log).expect("opening corrald log");
        let mut cmd = self.command();
        cmd.stdout(log.try_clone().expect("dup log")).stderr(log);
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", corrald_binary().display())));
    }

    async fn spawn_and_wait(&mut self) {
        self.spawn();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().expect("child").try_wait().expect("try_wait") {
                self.child = None;
                panic!("corrald exited during start-up with {status}; its log:\n{}", self.log_text());
            }
            if self.socket.exists() {
                if let Ok(channel) = connect(&self.socket).await {
                    // The kubelet's limit on a CRI answer (ExecSync output, lists).
                    let mut rt = RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(CRI_MESSAGE_MAX);
                    if rt.version(cri::VersionRequest::default()).await.is_ok() {
                        self.runtime = Some(rt);
                        self.images = Some(ImageServiceClient::new(channel).max_decoding_message_size(CRI_MESSAGE_MAX));
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "corrald did not answer Version on {} within {START_TIMEOUT:?}; its log:\n{}",
                    self.socket.display(),
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// RuntimeService client on this corrald's socket.
    pub fn runtime(&self) -> Runtime {
        self.runtime.clone().expect("corrald is not running")
    }

    /// ImageService client on this corrald's socket.
    pub fn images(&self) -> Images {
        self.images.clone().expect("corrald is not running")
    }

    /// Everything corrald wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap. The socket file stays behind, as after a crash.
    pub fn kill9(&mut self) {
        self.runtime = None;
        self.images = None;
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGKILL);
            child.wait().expect("waiting for corrald");
        }
    }

    /// Sends `sig` to corrald.
    pub fn signal(&self, sig: libc::c_int) {
        signal(self.child.as_ref().expect("corrald is not running").id(), sig);
    }

    /// Waits up to `timeout` for corrald to exit; its status once it has (the process is reaped
    /// and the clients dropped), `None` while it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("corrald is not running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                self.runtime = None;
                self.images = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then wait (polling, with a deadline) for the exit status.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(STOP_TIMEOUT).await {
            Some(status) => status,
            None => {
                self.kill9();
                panic!("corrald did not exit within {STOP_TIMEOUT:?} of SIGTERM; its log:\n{}", self.log_text());
            }
        }
    }

    /// Starts corrald again on the same root, state, socket and config (after `stop` or `kill9`).
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        self.spawn_and_wait().await;
    }

    // ---- CRI shortcuts ----

    pub async fn pull(&self, image: &str) -> Result<String, tonic::Status> {
        self.pull_with_auth(image, None).await
    }

    pub async fn pull_with_auth(&self, image: &str, auth: Option<cri::AuthConfig>) -> Result<String, tonic::Status> {
        let req = cri::PullImageRequest { image: Some(spec(image)), auth, sandbox_config: None };
        rpc(self.images().pull_image(req)).await.map(|r| r.into_inner().image_ref)
    }

    pub async fn status(&self, image: &str) -> Option<cri::Image> {
        let req = cri::ImageStatusRequest { image: Some(spec(image)), verbose: false };
        rpc(self.images().image_status(req))
            .await
            .unwrap_or_else(|e| panic!("ImageStatus {image}: {e}"))
            .into_inner()
            .image
    }

    /// ImageStatus with verbose set: the image and the parsed `info["info"]` JSON.
    pub async fn status_verbose(&self, image: &str) -> Option<(cri::Image, serde_json::Value)> {
        let req = cri::ImageStatusRequest { image: Some(spec(image)), verbose: true };
        let resp = rpc(self.images().image_status(req))
            .await
            .unwrap_or_else(|e| panic!("ImageStatus {image}: {e}"))
            .into_inner();
        let img = resp.image?;
        let info = resp
            .info
            .get("info")
            .unwrap_or_else(|| panic!("verbose ImageStatus of {image} has no info[\"info\"]: {:?}", resp.info));
        let info = serde_json::from_str(info).unwrap_or_else(|e| panic!("info[\"info\"] is not JSON: {e}: {info}"));
        Some((img, info))
    }

    pub async fn list(&self) -> Vec<cri::Image> {
        rpc(self.images().list_images(cri::ListImagesRequest { filter: None }))
            .await
            .expect("ListImages")
            .into_inner()
            .images
    }

    pub async fn list_filtered(&self, image: &str) -> Vec<cri::Image> {
        let filter = cri::ImageFilter { image: Some(spec(image)) };
        rpc(self.images().list_images(cri::ListImagesRequest { filter: Some(filter) }))
            .await
            .expect("ListImages")
            .into_inner()
            .images
    }

    pub async fn remove(&self, image: &str) -> Result<(), tonic::Status> {
        rpc(self.images().remove_image(cri::RemoveImageRequest { image: Some(spec(image)) })).await.map(|_| ())
    }

    pub async fn fs_info(&self) -> cri::FilesystemUsage {
        let resp =
            rpc(self.images().image_fs_info(cri::ImageFsInfoRequest {})).await.expect("ImageFsInfo").into_inner();
        assert_eq!(resp.image_filesystems.len(), 1, "one image filesystem expected: {resp:?}");
        resp.image_filesystems.into_iter().next().unwrap()
    }

    /// The snapshot layer dirs (`<root>/snapshots/<n>/fs`) of an image, top layer first, from
    /// verbose ImageStatus.
    pub async fn layer_dirs(&self, image: &str) -> Vec<PathBuf> {
        let (_, info) = self.status_verbose(image).await.unwrap_or_else(|| panic!("image {image} not found"));
        snapshots_of(&info)
    }

    /// Names in `<root>/snapshots`.
    pub fn snapshot_names(&self) -> BTreeSet<String> {
        dir_names(&self.root.join("snapshots"))
    }

    /// Names in `<root>/tmp`.
    pub fn tmp_names(&self) -> BTreeSet<String> {
        dir_names(&self.root.join("tmp"))
    }

    /// Names in `<root>/content/sha256`.
    pub fn blob_names(&self) -> BTreeSet<String> {
        dir_names(&self.root.join("content").join("sha256"))
    }
}

impl Drop for Corrald {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- last lines of corrald log {} ----", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            eprintln!("---- end of corrald log ----");
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("removing {}: {e}", path.display());
            }
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; pid is our own child, not yet reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Stops and removes every pod of the corrald at `socket`, from a thread with a runtime of its
/// own, so that `Drop` guards can call it even while a test's runtime is unwinding.
pub fn remove_all_pods(socket: &Path) {
    let socket = socket.to_path_buf();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let Ok(ch) = connect(&socket).await else { return };
            let mut client = RuntimeServiceClient::new(ch);
            let fut = async {
                if let Ok(list) = client.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await {
                    for pod in list.into_inner().items {
                        let _ = client
                            .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() })
                            .await;
                        let _ =
                            client.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.id }).await;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(60), fut).await;
        })
    })
    .join();
}

/// A tonic channel over the unix socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::from_static("http://[::1]:50051")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// Runs a CRI call with a deadline; a timeout is reported as `DeadlineExceeded`.
pub async fn rpc<T>(call: impl Future<Output = Result<T, tonic::Status>>) -> Result<T, tonic::Status> {
    match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!("test harness: no answer within {RPC_TIMEOUT:?}"))),
    }
}

/// A port mapping (`host_ip` "" for every address).
pub fn port(protocol: cri::Protocol, container_port: i32, host_port: i32, host_ip: &str) -> cri::PortMapping {
    cri::PortMapping { protocol: protocol as i32, container_port, host_port, host_ip: host_ip.into() }
}

pub fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.to_string(), ..Default::default() }
}

/// The `snapshots` list of a verbose ImageStatus info, as paths.
pub fn snapshots_of(info: &serde_json::Value) -> Vec<PathBuf> {
    info["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("verbose info has no snapshots list: {info}"))
        .iter()
        .map(|s| PathBuf::from(s.as_str().expect("snapshot path is a string")))
        .collect()
}

/// Names of the entries of `dir`; empty when it does not exist.
pub fn dir_names(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.expect("reading dir entry").file_name().to_string_lossy().into_owned()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => panic!("reading {}: {e}", dir.display()),
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// This host's architecture in OCI terms (`amd64`, `arm64`, ...).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A port on 127.0.0.1 that refuses connections: bound but never listening, so that no other
/// test can take it while this guard lives.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("creating a socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("binding a port");
        let port = socket.local_addr().expect("local addr").port();
        ClosedPort { _socket: socket, port }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        ClosedPort::new()
    }
}

// ---- overlay mounts -------------------------------------------------------------------------

/// A read-only overlay of image layers (lower dirs only), unmounted and removed on drop.
pub struct Overlay {
    dir: Option<tempfile::TempDir>,
    mounted: bool,
}

impl Overlay {
    /// Mounts `layers` (top first, as verbose ImageStatus lists them) read-only on a temp dir.
    pub fn mount(layers: &[PathBuf]) -> Overlay {
        assert!(!layers.is_empty(), "no layers to mount");
        let dir = tempfile::Builder::new().prefix("corral-it-mnt.").tempdir().expect("creating mount point");
        let mut ov = Overlay { dir: Some(dir), mounted: false };
        if layers.len() == 1 {
            // overlayfs wants two lower dirs without an upper dir; a bind mount shows one layer.
            ov.do_mount(&layers[0].display().to_string(), "none", libc::MS_BIND, "");
            ov.mounted = true;
            ov.do_mount("", "none", libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY, "");
        } else {
            let lower = layers.iter().map(|l| l.display().to_string()).collect::<Vec<_>>().join(":");
            ov.do_mount("overlay", "overlay", libc::MS_RDONLY, &format!("lowerdir={lower}"));
            ov.mounted = true;
        }
        ov
    }

    fn do_mount(&self, source: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
        let target = CString::new(self.path().as_os_str().as_bytes()).unwrap();
        let source_c = CString::new(source).unwrap();
        let fstype_c = CString::new(fstype).unwrap();
        let data_c = CString::new(data).unwrap();
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(source_c.as_ptr(), target.as_ptr(), fstype_c.as_ptr(), flags, data_c.as_ptr().cast())
        };
        if rc != 0 {
            panic!(
                "mount {source} ({fstype}, {data}) on {}: {}",
                self.path().display(),
                std::io::Error::last_os_error()
            );
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("mount dir").path()
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.mounted {
            let target = CString::new(self.path().as_os_str().as_bytes()).unwrap();
            // SAFETY: target is a valid NUL-terminated string.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
                eprintln!("unmounting {}: {}", self.path().display(), std::io::Error::last_os_error());
                // Never delete through a mount that is still there.
                if let Some(dir) = self.dir.take() {
                    let _ = dir.keep();
                }
                return;
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}
