//! The image service: pull (resolve, fetch, verify, unpack once per chain id, record), lookup by
//! tag, digest or id, removal with garbage collection of layers and blobs no image uses.

pub mod auth;
pub mod content;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod unpack;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::future::{BoxFuture, FutureExt, Shared};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use self::auth::Credentials;
use self::content::Content;
use self::manifest::{Descriptor, Document, ImageConfig};
use self::reference::{Reference, ReferenceError};
use self::registry::{Registries, RegistryError, Session};
use self::snapshot::{SnapshotRecord, Snapshots};
use self::unpack::UnpackError;
use crate::config::RegistryConfig;
use crate::store::{Batch, Store, StoreError, Table};

/// Layers downloaded at once per corrald.
const PARALLEL_DOWNLOADS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// invalid reference
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    /// invalid credentials
    #[error("invalid auth config: {0}")]
    InvalidAuth(String),
    /// pulling {image}: {source}
    #[error("pulling {image}: {source}")]
    Registry { image: String, source: RegistryError },
    /// pulling {image}: {source}
    #[error("pulling {image}: {source}")]
    Manifest { image: String, source: manifest::ManifestError },
    /// pulling {image}: layer {layer}: {source}
    #[error("pulling {image}: unpacking layer {layer}: {source}")]
    Unpack { image: String, layer: String, source: UnpackError },
    /// pulling {image}: layer {layer} content does not match the config's diff id
    #[error("pulling {image}: layer {layer} uncompressed digest {actual} does not match the image config's diff id {expected}")]
    DiffId { image: String, layer: String, expected: String, actual: String },
    /// {0}
    #[error(transparent)]
    Store(#[from] StoreError),
    /// {what}: {source}
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// internal error
    #[error("internal error: {0}")]
    Internal(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

/// The metadata record of an image, keyed by its id (the config digest).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Compressed size of config and layers, as the registry serves them.
    pub size: u64,
    /// The platform manifest.
    pub manifest_digest: String,
    /// Documents kept in the content store: index (if any), manifest, config.
    pub blobs: Vec<String>,
    /// Chain id of each layer, bottom first.
    pub chain_ids: Vec<String>,
    /// The image config's User.
    pub user: String,
    /// Unix time in nanoseconds.
    pub pulled_at: i64,
}

impl ImageRecord {
    /// uid or user name from the image's User, the way the CRI reports it.
    pub fn uid_or_username(&self) -> (Option<i64>, String) {
        let user = self.user.split(':').next().unwrap_or("");
        if user.is_empty() {
            return (None, String::new());
        }
        match user.parse::<i64>() {
            Ok(uid) => (Some(uid), String::new()),
            Err(_) => (None, user.to_string()),
        }
    }
}

/// A container's writable snapshot and the image layers under it.
#[derive(Debug, Clone)]
pub struct ContainerSnapshot {
    /// Top layer first, as overlay's lowerdir wants.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Layer dirs of each image volume's image, top first.
    pub volume_layers: Vec<Vec<PathBuf>>,
}

/// Disk use of the image store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub bytes: u64,
    pub inodes: u64,
}

type PullResult = Result<String, Arc<ImageError>>;
type PullFuture = Shared<BoxFuture<'static, PullResult>>;

pub struct ImageService {
    store: Arc<Store>,
    content: Content,
    snapshots: Snapshots,
    registries: Registries,
    images: RwLock<HashMap<String, ImageRecord>>,
    /// Held shared by pulls, exclusively by removal and GC, so GC never takes a layer a pull is
    /// about to record an image for.
    gc_lock: tokio::sync::RwLock<()>,
    inflight: Mutex<HashMap<String, PullFuture>>,
    layer_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    downloads: tokio::sync::Semaphore,
}

impl ImageService {
    /// Opens the image store under `root` and removes what a crash left half made.
    pub fn open(root: &Path, store: Arc<Store>, registry: RegistryConfig) -> Result<Arc<ImageService>, ImageError> {
        let content = Content::open(root).map_err(io_err("opening content store"))?;
        let snapshots = Snapshots::open(root).map_err(io_err("opening snapshot store"))?;
        let registries = Registries::new(registry).map_err(|e| ImageError::Internal(format!("HTTP client: {e}")))?;
        let images = store.list::<ImageRecord>(Table::Images)?.into_iter().map(|i| (i.id.clone(), i)).collect();
        let svc = ImageService {
            store,
            content,
            snapshots,
            registries,
            images: RwLock::new(images),
            gc_lock: tokio::sync::RwLock::new(()),
            inflight: Mutex::new(HashMap::new()),
            layer_locks: Mutex::new(HashMap::new()),
            downloads: tokio::sync::Semaphore::new(PARALLEL_DOWNLOADS),
        };
        svc.collect_garbage()?;
        Ok(Arc::new(svc))
    }

    pub fn snapshot_dir(&self) -> &Path {
        self.snapshots.dir()
    }

    /// Lower dirs of an image for an overlay mount, top layer first.
    pub fn layer_paths(&self, image: &ImageRecord) -> Result<Vec<PathBuf>, ImageError> {
        self.chain_paths(&image.chain_ids)
    }

    fn chain_paths(&self, chain_ids: &[String]) -> Result<Vec<PathBuf>, ImageError> {
        let mut out = Vec::new();
        for chain in chain_ids.iter().rev() {
            let rec: SnapshotRecord = self
                .store
                .get(Table::Snapshots, chain)?
                .ok_or_else(|| ImageError::Internal(format!("layer snapshot {chain} is missing")))?;
            out.push(self.snapshots.fs_path(rec.n));
        }
        Ok(out)
    }

    /// Creates the writable snapshot of a container on `image`, recorded before it is made.
    /// Returns (lower dirs top first, upper dir, work dir).
    /// `volumes` are the images of the container's image volumes: their layers are kept for the
    /// container as its own image's are, and returned in `volume_layers` (same order).
    pub async fn prepare_container_snapshot(
        &self,
        container_id: &str,
        image: &ImageRecord,
        volumes: &[&ImageRecord],
    ) -> Result<ContainerSnapshot, ImageError> {
        let _gc = self.gc_lock.read().await;
        let lowers = self.chain_paths(&image.chain_ids)?;
        let volume_layers = volumes.iter().map(|v| self.chain_paths(&v.chain_ids)).collect::<Result<Vec<_>, _>>()?;
        let mut parents = image.chain_ids.clone();
        for v in volumes {
            parents.extend(v.chain_ids.iter().filter(|c| !image.chain_ids.contains(c)).cloned());
        }
        let n = self.snapshots.create().map_err(io_err("creating container snapshot"))?;
        let key = format!("{}{container_id}", snapshot::CONTAINER_PREFIX);
        let record = SnapshotRecord { chain_id: key.clone(), n, diff_id: String::new(), size: 0, inodes: 0, parents };
        // Durable with the container's Created record that follows; a crash before that finds
        // the container Creating and tears it down, and the sweep takes an unrecorded directory.
        let made = self.store.put_deferred(Table::Snapshots, &key, &record).map_err(ImageError::from).and_then(|_| {
            std::fs::create_dir_all(self.snapshots.work_path(n)).map_err(io_err("creating overlay work dir"))
        });
        if let Err(e) = made {
            let _ = self.store.delete(Table::Snapshots, &key);
            let _ = self.snapshots.remove(n);
            return Err(e);
        }
        Ok(ContainerSnapshot {
            lowers,
            upper: self.snapshots.fs_path(n),
            work: self.snapshots.work_path(n),
            volume_layers,
        })
    }

    /// Removes a container's writable snapshot (idempotent), then layers nothing uses anymore.
    pub async fn remove_container_snapshot(&self, container_id: &str) -> Result<(), ImageError> {
        let _gc = self.gc_lock.write().await;
        let key = format!("{}{container_id}", snapshot::CONTAINER_PREFIX);
        let Some(rec) = self.store.get::<SnapshotRecord>(Table::Snapshots, &key)? else {
            return Ok(());
        };
        // Durable with the container record's deletion that always follows (RemoveContainer,
        // a failed CreateContainer, recovery): one disk flush for both.
        self.store.delete_deferred(Table::Snapshots, &key)?;
        // The upper dir may hold whatever the container wrote: delete it in the background.
        if let Some(aside) = self.snapshots.discard(rec.n).map_err(io_err("removing container snapshot"))? {
            crate::discard::remove_later(aside);
        }
        // Its layers may have outlived their image (removed while the container used it).
        let orphaned = {
            let images = self.images.read().map_err(|_| ImageError::Internal("image cache poisoned".into()))?;
            rec.parents.iter().any(|chain| !images.values().any(|i| i.chain_ids.contains(chain)))
        };
        if orphaned {
            self.collect_garbage()?;
        }
        Ok(())
    }

    /// Pulls `image`; concurrent pulls of the same image with the same credentials share one.
    pub async fn pull(self: &Arc<Self>, image: &str, creds: Credentials) -> PullResult {
        let reference = Reference::parse(image).map_err(|e| Arc::new(e.into()))?;
        let key = format!(
            "{reference}\0{}\0{}\0{}\0{}",
            creds.username, creds.password, creds.identity_token, creds.registry_token
        );
        let fut = {
            let mut inflight =
                self.inflight.lock().map_err(|_| Arc::new(ImageError::Internal("pull map poisoned".into())))?;
            match inflight.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let svc = Arc::clone(self);
                    let task_key = key.clone();
                    // A task of its own, so a client that goes away does not abort a pull others wait on.
                    let handle = tokio::spawn(async move {
                        let result = svc.pull_now(&reference, &creds).await.map_err(Arc::new);
                        if result.is_err() {
                            // Layers this pull finished belong to no image: remove them.
                            let _gc = svc.gc_lock.write().await;
                            if let Err(e) = svc.collect_garbage() {
                                warn!(image = %reference, error = %e, "cleaning up after a failed pull");
                            }
                        }
                        if let Ok(mut m) = svc.inflight.lock() {
                            m.remove(&task_key);
                        }
                        result
                    });
                    let fut = async move {
                        handle.await.unwrap_or_else(|e| Err(Arc::new(ImageError::Internal(format!("pull task: {e}")))))
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, fut.clone());
                    fut
                }
            }
        };
        fut.await
    }

    async fn pull_now(&self, reference: &Reference, creds: &Credentials) -> Result<String, ImageError> {
        let _gc = self.gc_lock.read().await;
        let image = reference.to_string();
        let reg_err = |source| ImageError::Registry { image: image.clone(), source };
        let man_err = |source| ImageError::Manifest { image: image.clone(), source };

        let (session, top) = self.resolve(reference, creds).await.map_err(reg_err)?;
        let mut documents = vec![(top.digest.clone(), top.body.clone())];
        let (manifest_digest, manifest) = match Document::parse(&top.content_type, &top.body).map_err(man_err)? {
            Document::Manifest(m) => (top.digest.clone(), m),
            Document::Index(index) => {
                let desc = manifest::select_platform(&index, &manifest::host_platform()).map_err(man_err)?;
                let m = session.manifest(&desc.digest).await.map_err(reg_err)?;
                let digest = m.digest.clone();
                let parsed = match Document::parse(&m.content_type, &m.body).map_err(man_err)? {
                    Document::Manifest(parsed) => parsed,
                    Document::Index(_) => {
                        return Err(man_err(manifest::ManifestError::Invalid("nested image index".into())))
                    }
                };
                documents.push((m.digest, m.body));
                (digest, parsed)
            }
        };
        let config_bytes = session.blob_bytes(&manifest.config).await.map_err(reg_err)?;
        let config = ImageConfig::parse(&config_bytes).map_err(man_err)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(man_err(manifest::ManifestError::Invalid(format!(
                "image config lists {} diff ids for {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ))));
        }
        documents.push((manifest.config.digest.clone(), config_bytes));
        let chain_ids = manifest::chain_ids(&config.rootfs.diff_ids);

        let layers = manifest.layers.iter().zip(&config.rootfs.diff_ids).zip(&chain_ids);
        futures::future::try_join_all(
            layers.map(|((desc, diff_id), chain_id)| self.ensure_layer(&image, &session, desc, diff_id, chain_id)),
        )
        .await?;

        for (digest, body) in &documents {
            self.content.write(digest, body).map_err(io_err(format!("storing {digest}")))?;
        }
        let id = manifest.config.digest.clone();
        let record = ImageRecord {
            id: id.clone(),
            repo_tags: reference.tagged().into_iter().collect(),
            repo_digests: vec![reference.with_digest(&top.digest)],
            size: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            manifest_digest,
            blobs: documents.into_iter().map(|(d, _)| d).collect(),
            chain_ids,
            user: config.user().to_string(),
            pulled_at: now_nanos(),
        };
        self.record(record)?;
        info!(image = %image, id = %id, "pulled image");
        Ok(id)
    }

    /// Finds the first endpoint (mirrors first) that serves the manifest.
    async fn resolve(
        &self,
        reference: &Reference,
        creds: &Credentials,
    ) -> Result<(Session, registry::Fetched), RegistryError> {
        let endpoints = self.registries.endpoints(reference);
        let last = endpoints.len() - 1;
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            let session = self.registries.session(endpoint, &reference.repository, creds.clone());
            match session.manifest(reference.object()).await {
                Ok(fetched) => return Ok((session, fetched)),
                Err(e) if i < last && e.try_next_endpoint() => {
                    warn!(image = %reference, endpoint = %session.endpoint.name, error = %e, "mirror failed, trying the next endpoint");
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("endpoints always end with the registry itself")
    }

    /// Makes sure the layer with `chain_id` is unpacked, fetching it when it is not.
    async fn ensure_layer(
        &self,
        image: &str,
        session: &Session,
        desc: &Descriptor,
        diff_id: &str,
        chain_id: &str,
    ) -> Result<(), ImageError> {
        let lock = {
            let mut locks = self.layer_locks.lock().map_err(|_| ImageError::Internal("layer locks poisoned".into()))?;
            Arc::clone(locks.entry(chain_id.to_string()).or_default())
        };
        let result = async {
            let _held = lock.lock().await;
            if self.store.get::<SnapshotRecord>(Table::Snapshots, chain_id)?.is_some() {
                debug!(image, layer = %desc.digest, "layer already unpacked");
                return Ok(());
            }
            let _slot = self.downloads.acquire().await.map_err(|e| ImageError::Internal(e.to_string()))?;
            // Removed however this ends, also when the pull is abandoned mid-download.
            let tmp = TempFile(self.content.temp_path(&desc.digest));
            session
                .download(desc, &tmp.0)
                .await
                .map_err(|source| ImageError::Registry { image: image.to_string(), source })?;
            self.unpack_layer(image, &tmp.0, desc, diff_id, chain_id).await
        }
        .await;
        if let Ok(mut locks) = self.layer_locks.lock() {
            if locks.get(chain_id).is_some_and(|l| Arc::strong_count(l) <= 2) {
                locks.remove(chain_id);
            }
        }
        result
    }

    async fn unpack_layer(
        &self,
        image: &str,
        blob: &Path,
        desc: &Descriptor,
        diff_id: &str,
        chain_id: &str,
    ) -> Result<(), ImageError> {
        let n = self.snapshots.create().map_err(io_err("creating snapshot"))?;
        let snapshot_dir = self.snapshots.dir().join(n.to_string());
        let fs = self.snapshots.fs_path(n);
        let file = std::fs::File::open(blob).map_err(io_err(format!("opening {}", blob.display())))?;
        // If this pull is abandoned (another layer failed), the blocking unpack stops at its
        // next entry and removes its own directory.
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = Arc::clone(&cancel.0);
        let expected = diff_id.to_string();
        let unpacked = tokio::task::spawn_blocking(move || {
            let result = unpack::unpack_cancellable(file, &fs, &flag);
            let keep = matches!(&result, Ok(u) if u.diff_id == expected) && !flag.load(Ordering::Relaxed);
            if !keep {
                let _ = std::fs::remove_dir_all(&snapshot_dir);
            }
            result
        })
        .await;
        let unpacked = match unpacked {
            Ok(Ok(u)) => u,
            Ok(Err(source)) => {
                return Err(ImageError::Unpack { image: image.into(), layer: desc.digest.clone(), source })
            }
            Err(e) => {
                let _ = self.snapshots.remove(n);
                return Err(ImageError::Internal(format!("unpack task: {e}")));
            }
        };
        if unpacked.diff_id != diff_id {
            return Err(ImageError::DiffId {
                image: image.into(),
                layer: desc.digest.clone(),
                expected: diff_id.into(),
                actual: unpacked.diff_id,
            });
        }
        let record = SnapshotRecord {
            chain_id: chain_id.into(),
            n,
            diff_id: diff_id.into(),
            size: unpacked.size,
            inodes: unpacked.inodes,
            parents: Vec::new(),
        };
        if let Err(e) = self.store.put(Table::Snapshots, chain_id, &record) {
            let _ = self.snapshots.remove(n);
            return Err(e.into());
        }
        debug!(image, layer = %desc.digest, snapshot = n, "unpacked layer");
        Ok(())
    }

    /// Records a pulled image: merges with an existing record of the same id and moves its tag
    /// away from any other image that held it.
    fn record(&self, mut record: ImageRecord) -> Result<(), ImageError> {
        let mut images = self.images.write().map_err(|_| ImageError::Internal("image cache poisoned".into()))?;
        let mut batch = Batch::new();
        let mut changed: Vec<ImageRecord> = Vec::new();
        for other in images.values() {
            if other.id == record.id {
                let mut tags = other.repo_tags.clone();
                tags.extend(record.repo_tags.iter().filter(|t| !other.repo_tags.contains(t)).cloned());
                let mut digests = other.repo_digests.clone();
                digests.extend(record.repo_digests.iter().filter(|d| !other.repo_digests.contains(d)).cloned());
                let mut blobs = other.blobs.clone();
                blobs.extend(record.blobs.iter().filter(|b| !other.blobs.contains(b)).cloned());
                record.repo_tags = tags;
                record.repo_digests = digests;
                record.blobs = blobs;
            } else if other.repo_tags.iter().any(|t| record.repo_tags.contains(t)) {
                let mut moved = other.clone();
                moved.repo_tags.retain(|t| !record.repo_tags.contains(t));
                batch.put(Table::Images, &moved.id, &moved)?;
                changed.push(moved);
            }
        }
        batch.put(Table::Images, &record.id, &record)?;
        self.store.apply(batch)?;
        for c in changed {
            images.insert(c.id.clone(), c);
        }
        images.insert(record.id.clone(), record);
        Ok(())
    }

    /// Every image, sorted by id.
    pub fn list(&self) -> Vec<ImageRecord> {
        let mut out: Vec<ImageRecord> = self.images.read().map(|m| m.values().cloned().collect()).unwrap_or_default();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Finds an image by id (`sha256:…`, bare hex, or a unique prefix), tag or digest reference.
    pub fn find(&self, name: &str) -> Option<ImageRecord> {
        let images = self.images.read().ok()?;
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let is_hex = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if is_hex && hex.len() == 64 {
            if let Some(img) = images.get(&format!("sha256:{hex}")) {
                return Some(img.clone());
            }
        }
        if let Ok(r) = Reference::parse(name) {
            let hit = match (&r.digest, r.tagged()) {
                (Some(d), _) => {
                    let want = r.with_digest(d);
                    images.values().find(|i| i.repo_digests.contains(&want))
                }
                (None, Some(tag)) => images.values().find(|i| i.repo_tags.contains(&tag)),
                (None, None) => None,
            };
            if let Some(img) = hit {
                return Some(img.clone());
            }
        }
        if is_hex {
            let mut matches =
                images.values().filter(|i| i.id.strip_prefix("sha256:").is_some_and(|h| h.starts_with(hex)));
            if let (Some(one), None) = (matches.next(), matches.next()) {
                return Some(one.clone());
            }
        }
        None
    }

    /// The raw image config JSON.
    pub fn config(&self, image: &ImageRecord) -> Result<Vec<u8>, ImageError> {
        self.content.read(&image.id).map_err(io_err(format!("reading config of {}", image.id)))
    }

    /// Removes the image `name` names (all its tags), then layers and blobs no image uses.
    /// Removing what is not there succeeds.
    pub async fn remove(&self, name: &str) -> Result<Option<String>, ImageError> {
        let _gc = self.gc_lock.write().await;
        let Some(image) = self.find(name) else {
            return Ok(None);
        };
        self.store.delete(Table::Images, &image.id)?;
        if let Ok(mut images) = self.images.write() {
            images.remove(&image.id);
        }
        info!(id = %image.id, tags = ?image.repo_tags, "removed image");
        self.collect_garbage()?;
        Ok(Some(image.id))
    }

    /// Removes snapshots and blobs that no image references, and snapshot directories and
    /// records a crash left behind. Callers hold the GC lock (or run before serving).
    fn collect_garbage(&self) -> Result<(), ImageError> {
        let images = self.list();
        let snapshots = self.store.list::<SnapshotRecord>(Table::Snapshots)?;
        // Layers stay while an image or a container (even of a removed image) uses them.
        let mut chains: HashSet<&String> = images.iter().flat_map(|i| &i.chain_ids).collect();
        for snap in &snapshots {
            if snap.chain_id.starts_with(snapshot::CONTAINER_PREFIX) {
                chains.insert(&snap.chain_id);
                chains.extend(&snap.parents);
            }
        }
        let blobs: HashSet<&String> = images.iter().flat_map(|i| &i.blobs).collect();
        let mut keep = HashSet::new();
        let mut batch = Batch::new();
        let mut drop = Vec::new();
        for snap in snapshots.iter().cloned() {
            if chains.contains(&snap.chain_id) {
                keep.insert(snap.n);
            } else {
                batch.delete(Table::Snapshots, &snap.chain_id);
                drop.push(snap);
            }
        }
        // Records go first: a crash after this leaves only directories, which the sweep takes.
        self.store.apply(batch)?;
        for snap in &drop {
            debug!(snapshot = snap.n, chain_id = %snap.chain_id, "removing unused layer");
        }
        let swept = self.snapshots.sweep(&keep).map_err(io_err("removing unused snapshots"))?;
        if swept.len() > drop.len() {
            debug!(count = swept.len() - drop.len(), "removed snapshot directories left by a crash");
        }
        for digest in self.content.list().map_err(io_err("listing content"))? {
            if !blobs.contains(&digest) {
                self.content.remove(&digest).map_err(io_err(format!("removing blob {digest}")))?;
            }
        }
        Ok(())
    }

    /// Bytes and inodes used by layers and blobs.
    pub fn usage(&self) -> Result<FsUsage, ImageError> {
        let mut usage = FsUsage { bytes: 0, inodes: 0 };
        for snap in self.store.list::<SnapshotRecord>(Table::Snapshots)? {
            usage.bytes += snap.size;
            usage.inodes += snap.inodes;
        }
        let (bytes, inodes) = self.content.usage().map_err(io_err("measuring content store"))?;
        usage.bytes += bytes;
        usage.inodes += inodes;
        Ok(usage)
    }
}

/// A temporary file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sets its flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}
