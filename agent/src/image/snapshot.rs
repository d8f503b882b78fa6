//! Snapshot directories: `<root>/snapshots/<n>/fs`, one per unpacked layer (and, later, per
//! container upper dir). Numbers stay short so overlay mount options fit in a page.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The metadata record of an unpacked layer, keyed by chain id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub chain_id: String,
    pub n: u64,
    pub diff_id: String,
    pub size: u64,
    pub inodes: u64,
    /// For a container's writable snapshot: the chain ids of its image layers, bottom first.
    #[serde(default)]
    pub parents: Vec<String>,
}

/// Key prefix of container snapshots in the snapshot table.
pub const CONTAINER_PREFIX: &str = "container:";

pub struct Snapshots {
    dir: PathBuf,
    next: AtomicU64,
}

impl Snapshots {
    /// Opens the snapshot directory; numbers continue after the highest one present.
    pub fn open(root: &Path) -> io::Result<Snapshots> {
        let dir = root.join("snapshots");
        std::fs::create_dir_all(&dir)?;
        let mut max = 0;
        for entry in std::fs::read_dir(&dir)? {
            if let Ok(n) = entry?.file_name().to_string_lossy().parse::<u64>() {
                max = max.max(n);
            }
        }
        Ok(Snapshots { dir, next: AtomicU64::new(max + 1) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<root>/snapshots/<n>/fs`
    pub fn fs_path(&self, n: u64) -> PathBuf {
        self.dir.join(n.to_string()).join("fs")
    }

    /// `<root>/snapshots/<n>/work`, overlay's work dir for a writable snapshot.
    pub fn work_path(&self, n: u64) -> PathBuf {
        self.dir.join(n.to_string()).join("work")
    }

    /// Allocates a new number and creates its `fs` directory.
    pub fn create(&self) -> io::Result<u64> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        std::fs::create_dir_all(self.fs_path(n))?;
        Ok(n)
    }

    pub fn remove(&self, n: u64) -> io::Result<()> {
        crate::discard::remove_tree(&self.dir.join(n.to_string()))
    }

    /// Removes every snapshot directory whose number is not in `keep` (left by a crash), and
    /// those moved aside for deletion (a background deletion may race: fine).
    pub fn sweep(&self, keep: &HashSet<u64>) -> io::Result<Vec<String>> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            let known = name.parse::<u64>().is_ok_and(|n| keep.contains(&n));
            if !known {
                crate::discard::remove_tree(&entry.path())?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Moves snapshot `n` aside for deletion off the request path (see [`crate::discard`]).
    pub fn discard(&self, n: u64) -> io::Result<Option<PathBuf>> {
        crate::discard::move_aside(&self.dir.join(n.to_string()))
    }
}
