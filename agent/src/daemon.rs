//! corrald's process: flags and config file, logging, the root lock, the services, the CRI
//! socket, and a graceful stop on SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tracing::{info, warn};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::{cni, image, lock, runtime, server, store, streaming};

/// How long requests in flight may run on after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The corral CRI server. Every flag can also be set in the config file; flags win.
#[derive(Debug, Parser)]
#[command(name = "corrald", version)]
struct Args {
    /// Config file (TOML). The default path may be missing; an explicit one must exist.
    #[arg(long)]
    config: Option<PathBuf>,
    /// CRI unix socket [default: /run/corral/corral.sock]
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Persistent state directory [default: /var/lib/corral]
    #[arg(long)]
    root: Option<PathBuf>,
    /// Volatile state directory [default: /run/corral]
    #[arg(long)]
    state: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); RUST_LOG wins
    #[arg(long)]
    log_level: Option<String>,
    /// The corral-shim binary [default: next to corrald, else on PATH]
    #[arg(long)]
    shim_path: Option<PathBuf>,
    /// Who manages cgroups: cgroupfs or systemd [default: cgroupfs]
    #[arg(long)]
    cgroup_driver: Option<crate::config::CgroupDriver>,
    /// Parent cgroup of pods whose config names none [default: /corral, or corral.slice with systemd]
    #[arg(long)]
    cgroup_parent: Option<String>,
    /// CNI network config directory [default: /etc/cni/net.d]
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directories, colon-separated [default: /opt/cni/bin]
    #[arg(long)]
    cni_bin_dir: Option<String>,
    /// Streaming server address (Exec, Attach, PortForward URLs) [default: 127.0.0.1]
    #[arg(long)]
    stream_address: Option<String>,
    /// Streaming server port; 0 picks a free one [default: 0]
    #[arg(long)]
    stream_port: Option<u16>,
    /// Serve the streaming server over TLS (self-signed unless --stream-tls-cert/-key)
    #[arg(long)]
    stream_tls: bool,
    /// Streaming TLS certificate (PEM)
    #[arg(long)]
    stream_tls_cert: Option<PathBuf>,
    /// Streaming TLS key (PEM)
    #[arg(long)]
    stream_tls_key: Option<PathBuf>,
    /// Close streams idle this long (4h, 30m, 90s; 0: never) [default: 4h]
    #[arg(long)]
    stream_idle_timeout: Option<String>,
}

fn load_config(args: Args) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path, true)?,
        None => Config::load(Path::new(DEFAULT_CONFIG_PATH), false)?,
    };
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.root {
        cfg.root = v;
    }
    if let Some(v) = args.state {
        cfg.state = v;
    }
    if let Some(v) = args.log_level {
        cfg.log_level = v;
    }
    if let Some(v) = args.shim_path {
        cfg.shim_path = v;
    }
    if let Some(v) = args.cgroup_driver {
        cfg.cgroup_driver = v;
    }
    if let Some(v) = args.cgroup_parent {
        cfg.cgroup_parent = v;
    }
    if let Some(v) = args.cni_conf_dir {
        cfg.cni_conf_dir = v;
    }
    if let Some(v) = args.cni_bin_dir {
        cfg.cni_bin_dirs = cni::exec::split_dirs(&v);
    }
    if let Some(v) = args.stream_address {
        cfg.streaming.address = v;
    }
    if let Some(v) = args.stream_port {
        cfg.streaming.port = v;
    }
    if args.stream_tls {
        cfg.streaming.tls = true;
    }
    if let Some(v) = args.stream_tls_cert {
        cfg.streaming.tls_cert = v;
    }
    if let Some(v) = args.stream_tls_key {
        cfg.streaming.tls_key = v;
    }
    if let Some(v) = args.stream_idle_timeout {
        cfg.streaming.idle_timeout = v;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => tracing_subscriber::EnvFilter::try_new(env),
        _ => tracing_subscriber::EnvFilter::try_new(level),
    }
    .with_context(|| format!("invalid log level {level:?}"))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    Ok(())
}

/// Binds the CRI socket: a stale socket from a crash is replaced, a live one is refused.
async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!("{} is in use by another process", path.display());
        }
        warn!(socket = %path.display(), "replacing stale socket");
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode of {}", path.display()))?;
    Ok(listener)
}

/// The shim binary: as configured, else next to corrald, else `corral-shim` on PATH.
fn shim_path(configured: &Path) -> PathBuf {
    if !configured.as_os_str().is_empty() {
        return configured.to_path_buf();
    }
    if let Some(beside) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("corral-shim"))) {
        if beside.exists() {
            return beside;
        }
    }
    PathBuf::from("corral-shim")
}

async fn shutdown_signal() {
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            warn!("cannot install signal handlers; stop corrald with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, shutting down"),
        _ = int.recv() => info!("SIGINT received, shutting down"),
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    if cfg.cgroup_driver == crate::config::CgroupDriver::Systemd && !common::systemd::booted() {
        anyhow::bail!(
            "cgroup_driver = \"systemd\" needs systemd as the init system, and this host has none \
             (no /run/systemd/system): use the cgroupfs driver"
        );
    }
    for dir in [&cfg.root, &cfg.state] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::set_permissions(&cfg.root, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode of {}", cfg.root.display()))?;
    let _lock = lock::RootLock::acquire(&cfg.root, lock::LOCK_WAIT)?;
    let store = Arc::new(store::Store::open(&cfg.root.join("meta.redb"))?);
    let images = image::ImageService::open(&cfg.root, Arc::clone(&store), cfg.registry.clone())?;
    let rt_config = runtime::RuntimeConfig {
        state: cfg.state.clone(),
        shim: shim_path(&cfg.shim_path),
        cgroup_parent: cfg.cgroup_parent(),
        cgroup_driver: cfg.cgroup_driver,
        cni: Arc::new(cni::Cni::new(
            cfg.cni_conf_dir.clone(),
            cfg.cni_bin_dirs.clone(),
            cfg.root.join("cni").join("results"),
        )),
    };
    let rt = runtime::Runtime::open(rt_config, Arc::clone(&store), Arc::clone(&images)).await?;
    let backend: Arc<dyn streaming::Backend> = rt.clone();
    let streams = streaming::Streaming::start(&cfg.streaming, backend).await?;
    let listener = bind(&cfg.listen).await?;
    info!(socket = %cfg.listen.display(), root = %cfg.root.display(), state = %cfg.state.display(), "corrald serving CRI");
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let signalled = async move {
        shutdown_signal().await;
        let _ = stopping_tx.send(true);
    };
    let serve = server::router(images, rt, streams).serve_with_incoming_shutdown(
        UnixListenerStream::new(listener).map(|conn| conn.map(server::AuthorityFix::new)),
        signalled,
    );
    // Requests in flight get a grace period, not forever: a pull stalled on a registry must
    // not keep corrald from stopping. What they leave is cleaned up at the next start.
    let grace = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        warn!(grace = ?SHUTDOWN_GRACE, "requests still running after the grace period; exiting anyway");
    };
    let served = tokio::select! {
        r = serve => r,
        _ = grace => Ok(()),
    };
    if let Err(e) = std::fs::remove_file(&cfg.listen) {
        warn!(socket = %cfg.listen.display(), error = %e, "removing socket");
    }
    served.context("serving CRI")?;
    info!("corrald stopped");
    Ok(())
}

/// corrald's `main`: reads its flags and config and serves until SIGTERM.
pub fn main() -> anyhow::Result<()> {
    let cfg = load_config(Args::parse())?;
    init_logging(&cfg.log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(run(cfg));
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "corrald failed");
    }
    result
}
