//! Image volumes on the host: an image's layers mounted read-only in the container's bundle.

use std::path::{Path, PathBuf};

use crate::runtime::resolve::ImageVolumePlan;
use crate::runtime::validate::bounded;
use crate::runtime::{io_err, Result, RuntimeError};
use crate::sys;

/// Where a container's image volumes are mounted, inside its bundle.
pub(super) const VOLUMES_DIR: &str = "volumes";

/// Mounts an image volume's layers read-only at its target (overlay of the layers, or a bind of
/// a single one) and returns the directory the container binds: the image's root or its sub
/// path, resolved inside the image.
pub(super) fn mount_image_volume(v: &ImageVolumePlan) -> Result<PathBuf> {
    std::fs::create_dir_all(&v.target).map_err(io_err(format!("creating {}", v.target.display())))?;
    let flags = libc::MS_RDONLY | libc::MS_NODEV;
    match v.layers.as_slice() {
        [] => {
            return Err(RuntimeError::Internal(format!(
                "image volume at {}: the image has no layers",
                v.target.display()
            )))
        }
        [one] => {
            sys::mount(&one.display().to_string(), &v.target, "", libc::MS_BIND, "")
                .map_err(io_err(format!("mounting image volume at {}", v.target.display())))?;
            sys::mount("", &v.target, "", libc::MS_BIND | libc::MS_REMOUNT | flags, "")
                .map_err(io_err(format!("making image volume {} read-only", v.target.display())))?;
        }
        many => {
            let lower: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
            sys::mount("overlay", &v.target, "overlay", flags, &format!("lowerdir={}", lower.join(":")))
                .map_err(io_err(format!("mounting image volume at {}", v.target.display())))?;
        }
    }
    if v.sub_path.is_empty() {
        return Ok(v.target.clone());
    }
    let missing = || {
        RuntimeError::InvalidArgument(format!(
            "image_sub_path {:?} is not a directory of the image",
            bounded(&v.sub_path)
        ))
    };
    let dir = crate::image::unpack::secure_join(&v.target, Path::new(&v.sub_path), false).map_err(|_| missing())?;
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        _ => Err(missing()),
    }
}

/// Unmounts every image volume of a bundle.
pub(super) fn unmount_image_volumes(bundle: &Path) -> Result<()> {
    let dir = bundle.join(VOLUMES_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RuntimeError::Io { what: format!("listing {}", dir.display()), source: e }),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        sys::unmount(&path).map_err(io_err(format!("unmounting image volume {}", path.display())))?;
    }
    Ok(())
}
