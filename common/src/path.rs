//! Paths inside a container's root: symlinks (absolute or relative) and `..` resolved as if
//! the root were `/`, so a result never leaves it, whatever the image put there.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The most symlinks followed in one resolution (the kernel's own limit is 40).
const MAX_SYMLINKS: usize = 40;

/// What `secure_join` does with components that do not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Fail with NotFound.
    Error,
    /// Create them as directories (mode 0755).
    Create,
    /// Keep them as they are (the caller creates what it needs, e.g. a mount target).
    Keep,
}

fn components_rev(p: &Path) -> Vec<OsString> {
    p.components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Joins `path` under `root`, resolving symlinks and `..` inside `root`. Every existing
/// component but the last must be a directory (ENOTDIR otherwise); missing ones are handled as
/// `missing` says. The result is a path under `root`; it is only as good as the moment it was
/// computed, so callers that can use a descriptor use [`open_in_root`] instead.
pub fn secure_join(root: &Path, path: &Path, missing: Missing) -> io::Result<PathBuf> {
    let mut pending = components_rev(path);
    let mut current = PathBuf::new();
    let mut links = 0;
    while let Some(comp) = pending.pop() {
        if comp == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&comp);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(&full)?;
                if target.is_absolute() {
                    current = PathBuf::new();
                }
                pending.extend(components_rev(&target));
            }
            Ok(m) if m.is_dir() || pending.is_empty() => current = candidate,
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match missing {
                Missing::Error => return Err(e),
                Missing::Create => {
                    fs::create_dir(&full)?;
                    fs::set_permissions(&full, fs::Permissions::from_mode(0o755))?;
                    current = candidate;
                }
                // Kept as it is; resolution goes on, so a later `..` climbs back to where
                // symlinks are followed again.
                Missing::Keep => current = candidate,
            },
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(current))
}

/// Opens `path` inside `root` for reading, resolved by the kernel with openat2(RESOLVE_IN_ROOT)
/// where it has it (Linux 5.6), so no rename or symlink swap during the lookup can lead out of
/// `root`; elsewhere through [`secure_join`] and an open that does not follow a final symlink.
pub fn open_in_root(root: &Path, path: &Path) -> io::Result<File> {
    match crate::sys::openat2_in_root(root, path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            let resolved = secure_join(root, path, Missing::Error)?;
            crate::sys::open_nofollow(&resolved)
        }
        other => other,
    }
}

/// Opens `path` inside `root` with `flags`, resolved by the kernel only
/// (openat2(RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS), Linux 5.6): for opens that must not fall
/// back to a path lookup (devices).
pub fn open_in_root_with(root: &Path, path: &Path, flags: libc::c_int) -> io::Result<std::os::fd::OwnedFd> {
    crate::sys::open_in_root(root, path, flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(root.join("file"), "").unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../..", root.join("a/b/up")).unwrap();
        symlink("b", root.join("a/rel")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        symlink("/etc/passwd", root.join("passwd-link")).unwrap();
        dir
    }

    #[test]
    fn joins_stay_inside_the_root() {
        let dir = tree();
        let root = dir.path();
        let join = |p: &str, m| secure_join(root, Path::new(p), m);
        assert_eq!(join("/a/b", Missing::Error).unwrap(), root.join("a/b"));
        assert_eq!(join("/abs/passwd", Missing::Error).unwrap(), root.join("etc/passwd"));
        assert_eq!(join("/a/b/up/etc", Missing::Error).unwrap(), root.join("etc"));
        assert_eq!(join("/../../etc", Missing::Error).unwrap(), root.join("etc"));
        assert_eq!(join("/a/rel", Missing::Error).unwrap(), root.join("a/b"));
        assert_eq!(join("/loop/x", Missing::Keep).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert_eq!(join("/file/x", Missing::Keep).unwrap_err().raw_os_error(), Some(libc::ENOTDIR));
        assert_eq!(join("/nope", Missing::Error).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn missing_components_kept_or_created() {
        let dir = tree();
        let root = dir.path();
        assert_eq!(secure_join(root, Path::new("/abs/new/x/../y"), Missing::Keep).unwrap(), root.join("etc/new/y"));
        // Back up out of a missing component: symlinks are resolved inside the root again.
        assert_eq!(
            secure_join(root, Path::new("/nope/../abs/passwd"), Missing::Keep).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(secure_join(root, Path::new("/nope/../../a/rel"), Missing::Keep).unwrap(), root.join("a/b"));
        assert!(!root.join("etc/new").exists());
        assert_eq!(
            secure_join(root, Path::new("/abs/made/deeper"), Missing::Create).unwrap(),
            root.join("etc/made/deeper")
        );
        assert!(root.join("etc/made/deeper").is_dir());
    }

    #[test]
    fn opens_inside_the_root() {
        let dir = tree();
        let root = dir.path();
        let mut text = String::new();
        open_in_root(root, Path::new("/passwd-link")).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "root:x:0:0::/root:/bin/sh\n", "an absolute link resolves inside the root");
        let mut via_up = String::new();
        open_in_root(root, Path::new("a/b/up/etc/passwd")).unwrap().read_to_string(&mut via_up).unwrap();
        assert_eq!(via_up, text);
        assert!(open_in_root(root, Path::new("/nope")).is_err());
    }
}
