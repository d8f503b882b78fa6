//! Deleting directories off the request path. RemoveContainer renames the container's bundle
//! and writable snapshot aside (one rename each, same filesystem) and returns; their contents
//! are deleted on the blocking pool. A name moved aside starts with [`PREFIX`], so a crash
//! before the deletion leaves something the next start (or the snapshot sweep) removes.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;

pub const PREFIX: &str = "trash-";

/// Renames `path` to a fresh `trash-<name>-<nanos>` beside it; Ok(None) if it does not exist.
pub fn move_aside(path: &Path) -> io::Result<Option<PathBuf>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no parent", path.display())));
    };
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let to = parent.join(format!("{PREFIX}{}-{nanos}", name.to_string_lossy()));
    match std::fs::rename(path, &to) {
        Ok(()) => Ok(Some(to)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes a directory moved aside, in the background.
pub fn remove_later(path: PathBuf) {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = remove_tree(&path) {
            warn!(path = %path.display(), error = %e, "deleting a removed directory");
        }
    });
}

/// remove_dir_all that is content when someone else (a sweep) removed it first.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Deletes everything moved aside in `dir` (after a crash); returns how many.
pub fn sweep(dir: &Path) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(PREFIX) {
            remove_tree(&entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_aside_and_sweeps() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("abc");
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        std::fs::write(b.join("config.json"), "{}").unwrap();
        let to = move_aside(&b).unwrap().unwrap();
        assert!(!b.exists() && to.join("config.json").exists());
        assert!(to.file_name().unwrap().to_string_lossy().starts_with("trash-abc-"));
        assert_eq!(move_aside(&b).unwrap(), None);
        std::fs::create_dir_all(d.path().join("keep")).unwrap();
        assert_eq!(sweep(d.path()).unwrap(), 1);
        assert!(!to.exists() && d.path().join("keep").exists());
        assert_eq!(sweep(&d.path().join("missing")).unwrap(), 0);
    }
}
