//! The host as CreateContainer's resolution reads it: device nodes.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::runtime::resolve::{DeviceNode, Host};

/// The host as resolution reads it.
pub(super) struct HostFs;

impl Host for HostFs {
    fn device(&self, path: &str) -> std::io::Result<DeviceNode> {
        let meta = std::fs::metadata(path)?;
        node_of(&meta).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a device node"))
    }

    fn host_devices(&self) -> std::io::Result<Vec<(String, DeviceNode)>> {
        let mut out = Vec::new();
        host_devices_in(Path::new("/dev"), &mut out)?;
        Ok(out)
    }
}

/// The device node `meta` describes (without following a symlink); None for other files.
fn node_of(meta: &std::fs::Metadata) -> Option<DeviceNode> {
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(DeviceNode {
        kind,
        major: libc::major(rdev) as i64,
        minor: libc::minor(rdev) as i64,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Device nodes below `dir`, skipping what containerd and runc skip: the pseudo-filesystems
/// and the console.
fn host_devices_in(dir: &Path, out: &mut Vec<(String, DeviceNode)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            if !matches!(name.to_str(), Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")) {
                host_devices_in(&path, out)?;
            }
        } else if name != "console" {
            if let Some(node) = node_of(&meta) {
                out.push((path.display().to_string(), node));
            }
        }
    }
    Ok(())
}
