//! Pods and containers: their records, in-memory state, and recovery after a restart.
//! `pod.rs` holds the sandbox lifecycle, `container.rs` the container lifecycle.

pub(crate) mod cgroup;
mod container;
mod namespaces;
mod pod;
mod podfiles;
mod resolve;
mod signal;
mod spec;
mod user;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

pub use self::container::{
    ContainerFilter, ContainerRecord, ContainerState, ContainerView, CreateContainer, ImageMount, MountRecord,
    MountRequest, Profile,
};
pub use self::pod::{NsMode, PodDns, PodFilter, PodPhase, PodRecord, RunPod};
#[cfg(any(test, feature = "fuzzing"))]
pub use self::resolve::resolve_detached;
pub use self::user::GroupsPolicy;

/// The OCI-level types a CreateContainer request carries.
pub mod spec_types {
    pub use super::spec::{Propagation, Resources};
}
use crate::image::{ImageError, ImageService};
use crate::shim_client::ShimError;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// invalid argument
    #[error("{0}")]
    InvalidArgument(String),
    /// not found
    #[error("{0}")]
    NotFound(String),
    /// already exists
    #[error("{0}")]
    AlreadyExists(String),
    /// failed precondition
    #[error("{0}")]
    FailedPrecondition(String),
    /// deadline exceeded
    #[error("{0}")]
    DeadlineExceeded(String),
    /// a failure of the host's setup
    #[error("{0}")]
    Internal(String),
    /// image error
    #[error(transparent)]
    Image(#[from] ImageError),
    /// network error
    #[error(transparent)]
    Network(#[from] crate::cni::CniError),
    /// shim error
    #[error(transparent)]
    Shim(#[from] ShimError),
    /// store error
    #[error(transparent)]
    Store(#[from] StoreError),
    /// {what}: {source}
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// How often pod network attachments are garbage collected while corrald runs.
const NETWORK_GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Settings the runtime needs from corrald's configuration.
#[derive(Clone)]
pub struct RuntimeConfig {
    pub state: PathBuf,
    pub shim: PathBuf,
    /// Parent cgroup of pods whose sandbox config names none.
    pub cgroup_parent: String,
    pub cgroup_driver: cgroup::Driver,
    pub cni: Arc<crate::cni::Cni>,
}

/// Serializes operations on one pod or container id.
#[derive(Default)]
struct IdLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl IdLocks {
    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, l| Arc::strong_count(l) > 1);
            Arc::clone(map.entry(id.to_string()).or_default())
        };
        m.lock_owned().await
    }
}

/// What this host lets corral offer, found once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// mount_setattr(2) exists, so `recursive_read_only` mounts can be made.
    pub recursive_read_only_mounts: bool,
}

pub struct Runtime {
    cfg: RuntimeConfig,
    features: Features,
    store: Arc<Store>,
    images: Arc<ImageService>,
    cgroups: Option<cgroup::Hierarchies>,
    pods: Mutex<BTreeMap<String, PodRecord>>,
    containers: Mutex<BTreeMap<String, ContainerView>>,
    locks: IdLocks,
}

impl Runtime {
    /// Loads pods and containers from the store, reconnects to live shims and cleans up what a
    /// crash left half made.
    pub async fn open(cfg: RuntimeConfig, store: Arc<Store>, images: Arc<ImageService>) -> Result<Arc<Runtime>> {
        for dir in [cfg.state.join("pods"), cfg.state.join("containers")] {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        // Bundles hold the containers' env (passwords, tokens) in config.json: root only.
        let bundles = cfg.state.join("containers");
        std::fs::set_permissions(&bundles, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("setting the mode of {}", bundles.display())))?;
        let cgroups = match cgroup::Hierarchies::detect(cfg.cgroup_driver) {
            Ok(h) => Some(h),
            Err(e) => {
                warn!(error = %e, "no cgroups: pods run without resource control");
                None
            }
        };
        let features = Features { recursive_read_only_mounts: crate::sys::has_mount_setattr() };
        let rt = Arc::new(Runtime {
            cfg,
            features,
            store,
            images,
            cgroups,
            pods: Mutex::new(BTreeMap::new()),
            containers: Mutex::new(BTreeMap::new()),
            locks: IdLocks::default(),
        });
        rt.recover_pods().await?;
        rt.recover_containers().await?;
        rt.collect_network_garbage().await;
        // Plugins may finish teardown in the background (corral-cni does): GC now and then
        // recovers what such a teardown left if it failed.
        let weak = Arc::downgrade(&rt);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(NETWORK_GC_INTERVAL).await;
                let Some(rt) = weak.upgrade() else { break };
                rt.collect_network_garbage().await;
            }
        });
        Ok(rt)
    }

    // Directories are named by the first 16 hex digits of the id (unique, see `fresh_id`) so
    // that `<bundle>/shim.sock` stays under the 108-byte limit of unix socket paths.
    fn pod_state_dir(&self, id: &str) -> PathBuf {
        self.cfg.state.join("pods").join(dir_name(id))
    }

    /// The pod's hosts, resolv.conf and hostname: in the state dir (tmpfs), as they are of no
    /// use after a reboot, when the pod is gone.
    fn pod_files_dir(&self, id: &str) -> PathBuf {
        self.pod_state_dir(id).join("files")
    }

    fn bundle_dir(&self, id: &str) -> PathBuf {
        self.cfg.state.join("containers").join(dir_name(id))
    }

    /// Who manages the cgroups (RuntimeConfig reports it to the kubelet).
    pub fn cgroup_driver(&self) -> cgroup::Driver {
        self.cfg.cgroup_driver
    }

    pub fn features(&self) -> Features {
        self.features
    }

    /// Ok(network name) when pods can get a network, else why not.
    pub fn network_status(&self) -> std::result::Result<String, String> {
        self.cfg.cni.status()
    }

    fn pod(&self, id: &str) -> Option<PodRecord> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Resolves a full id or a unique prefix among `ids`.
    fn resolve_id<'a>(ids: impl Iterator<Item = &'a String>, wanted: &str, what: &str) -> Result<Option<String>> {
        if wanted.is_empty() {
            return Err(RuntimeError::InvalidArgument(format!("{what} id is required")));
        }
        let mut found = None;
        for id in ids {
            if id == wanted {
                return Ok(Some(id.clone()));
            }
            if id.starts_with(wanted) {
                if found.is_some() {
                    return Err(RuntimeError::InvalidArgument(format!("{what} id prefix {wanted:?} is ambiguous")));
                }
                found = Some(id.clone());
            }
        }
        Ok(found)
    }

    fn find_pod_id(&self, wanted: &str) -> Result<Option<String>> {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        Self::resolve_id(pods.keys(), wanted, "pod sandbox")
    }

    fn find_container_id(&self, wanted: &str) -> Result<Option<String>> {
        let containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        Self::resolve_id(containers.keys(), wanted, "container")
    }
}

const DIR_NAME_LEN: usize = 16;

fn dir_name(id: &str) -> &str {
    id.get(..DIR_NAME_LEN).unwrap_or(id)
}

/// A new id whose directory name no existing id shares.
fn fresh_id<'a>(existing: impl Iterator<Item = &'a String> + Clone) -> String {
    loop {
        let id = new_id();
        if !existing.clone().any(|e| dir_name(e) == dir_name(&id)) {
            return id;
        }
    }
}

/// A fresh 64-hex-character id.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut bytes).is_ok() {
            return hex::encode(bytes);
        }
    }
    // Fallback: time and pid, hashed.
    use sha2::Digest;
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    hex::encode(sha2::Sha256::digest(seed.as_bytes()))
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Whether every key=value of `selector` is in `labels`.
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn log_recovered(kind: &str, count: usize) {
    if count > 0 {
        info!(count, "recovered {kind}");
    }
}
