//! The content store: manifests, indexes and configs as files named by digest under
//! `<root>/content/sha256/`, and temporary downloads under `<root>/tmp/` (cleared at start).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Content {
    blobs: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

impl Content {
    /// Opens the store under `root`, creating its directories and removing leftover temp files.
    pub fn open(root: &Path) -> io::Result<Content> {
        let blobs = root.join("content").join("sha256");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Content { blobs, tmp, counter: AtomicU64::new(0) })
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        self.blobs.join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    /// A fresh path for a temporary file; the caller removes it.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}-{}-{}", std::process::id(), n, what.replace([':', '/'], "-")))
    }

    /// Writes a verified blob atomically (temp file, fsync, rename).
    pub fn write(&self, digest: &str, bytes: &[u8]) -> io::Result<()> {
        let dest = self.path(digest);
        if dest.exists() {
            return Ok(());
        }
        let tmp = self.temp_path(digest);
        let result = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &dest)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    pub fn read(&self, digest: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(digest))
    }

    pub fn remove(&self, digest: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Digests of every blob present.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.blobs)? {
            out.push(format!("sha256:{}", entry?.file_name().to_string_lossy()));
        }
        Ok(out)
    }

    /// Bytes used by blobs.
    pub fn usage(&self) -> io::Result<(u64, u64)> {
        let mut bytes = 0;
        let mut inodes = 0;
        for entry in std::fs::read_dir(&self.blobs)? {
            bytes += entry?.metadata()?.len();
            inodes += 1;
        }
        Ok((bytes, inodes))
    }
}
