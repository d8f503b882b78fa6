//! Unpacking a layer tar (gzip, zstd or uncompressed, detected from its magic bytes) into a
//! snapshot directory for overlayfs: whiteouts become overlay whiteouts (`.wh.x` → a 0/0
//! character device, `.wh..wh..opq` → the `trusted.overlay.opaque` xattr), and no entry can
//! write outside the directory (no `..`, absolute paths are taken as relative, symlinks are
//! resolved inside the directory, hardlinks must point inside, device nodes are skipped).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use common::path::Missing;
use sha2::{Digest, Sha256};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// layer entry {entry:?} {reason}
    #[error("layer entry {entry:?} {reason}")]
    Unsafe { entry: String, reason: &'static str },
    /// layer entry {entry:?}: {source}
    #[error("layer entry {entry:?}: {source}")]
    Entry { entry: String, source: io::Error },
    /// reading layer: {0}
    #[error("reading layer: {0}")]
    Read(io::Error),
    /// unpacking was cancelled
    #[error("unpacking was cancelled")]
    Cancelled,
}

/// What an unpack produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// `sha256:` of the uncompressed tar stream, to compare with the config's diff id.
    pub diff_id: String,
    /// Bytes of regular file content.
    pub size: u64,
    /// Entries created.
    pub inodes: u64,
    /// Entries skipped because they are not allowed (device nodes).
    pub skipped: u64,
}

/// Unpacks the (possibly compressed) layer read from `input` into `dest`, which must exist.
#[cfg(any(test, feature = "fuzzing"))]
pub fn unpack(input: impl Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    unpack_cancellable(input, dest, &AtomicBool::new(false))
}

/// As [`unpack`], stopping with `Cancelled` between entries once `cancel` is set.
pub fn unpack_cancellable(input: impl Read, dest: &Path, cancel: &AtomicBool) -> Result<Unpacked, UnpackError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, input);
    let magic = buffered.fill_buf().map_err(UnpackError::Read)?.to_vec();
    let decoded: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(UnpackError::Read)?)
    } else {
        Box::new(buffered)
    };
    let mut hashing = HashingReader { inner: decoded, hasher: Sha256::new() };
    let mut out = unpack_tar(&mut hashing, dest, cancel)?;
    // The digest covers the whole stream, including the end-of-archive padding.
    io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Read)?;
    out.diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    Ok(out)
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn unpack_tar(input: &mut impl Read, dest: &Path, cancel: &AtomicBool) -> Result<Unpacked, UnpackError> {
    let mut archive = tar::Archive::new(input);
    let mut stats = Unpacked::default();
    // Directory times are set last: creating children changes them.
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    let mut seen_dirs: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(UnpackError::Read)? {
        if cancel.load(Ordering::Relaxed) {
            return Err(UnpackError::Cancelled);
        }
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
        let name = raw.display().to_string();
        let at = |source: io::Error| UnpackError::Entry { entry: name.clone(), source };
        let rel = clean_relative(&raw)
            .ok_or_else(|| UnpackError::Unsafe { entry: name.clone(), reason: "escapes the layer root with '..'" })?;
        let Some(file_name) = rel.file_name().map(OsStr::to_os_string) else {
            continue; // the root itself ("./")
        };
        let parent = secure_join(dest, rel.parent().unwrap_or(Path::new("")), true).map_err(at)?;
        let file_str = file_name.to_string_lossy();
        if file_str == OPAQUE_MARKER {
            set_xattr(&parent, "trusted.overlay.opaque", b"y", false).map_err(at)?;
            continue;
        }
        if let Some(hidden) = file_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) || hidden.is_empty() {
                continue; // aufs metadata (.wh..wh.plnk and friends)
            }
            let target = parent.join(hidden);
            remove_existing(&target, true).map_err(at)?;
            mknod(&target, libc::S_IFCHR, 0).map_err(at)?;
            stats.inodes += 1;
            continue;
        }
        let target = parent.join(&file_name);
        let header = entry.header().clone();
        let mode = header.mode().map_err(at)? & 0o7777;
        let uid = header.uid().map_err(at)?;
        let gid = header.gid().map_err(at)?;
        let mtime = header.mtime().unwrap_or(0) as i64;
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_existing(&target, false).map_err(at)?;
                        fs::create_dir(&target).map_err(at)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&target).map_err(at)?,
                    Err(e) => return Err(at(e)),
                }
                if seen_dirs.insert(target.clone()) {
                    dir_times.push((target.clone(), mtime));
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&target, true).map_err(at)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(at)?;
                stats.size += io::copy(&mut entry, &mut file).map_err(at)?;
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name().map_err(at)?.ok_or_else(|| UnpackError::Unsafe {
                    entry: name.clone(),
                    reason: "is a symlink without a target",
                })?;
                remove_existing(&target, true).map_err(at)?;
                std::os::unix::fs::symlink(&link, &target).map_err(at)?;
            }
            tar::EntryType::Link => {
                let link = entry.link_name().map_err(at)?.ok_or_else(|| UnpackError::Unsafe {
                    entry: name.clone(),
                    reason: "is a hardlink without a target",
                })?;
                let link_rel = clean_relative(&link).ok_or_else(|| UnpackError::Unsafe {
                    entry: name.clone(),
                    reason: "links outside the layer root",
                })?;
                let link_name = link_rel
                    .file_name()
                    .ok_or_else(|| UnpackError::Unsafe { entry: name.clone(), reason: "links to the layer root" })?;
                let source =
                    secure_join(dest, link_rel.parent().unwrap_or(Path::new("")), false).map_err(at)?.join(link_name);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_dir() => {
                        return Err(UnpackError::Unsafe { entry: name, reason: "hardlinks a directory" })
                    }
                    Ok(_) => {}
                    Err(e) => return Err(at(e)),
                }
                if source != target {
                    remove_existing(&target, true).map_err(at)?;
                    fs::hard_link(&source, &target).map_err(at)?;
                }
                stats.inodes += 1;
                continue; // a hardlink shares the metadata of its source
            }
            tar::EntryType::Fifo => {
                remove_existing(&target, true).map_err(at)?;
                mknod(&target, libc::S_IFIFO | 0o600, 0).map_err(at)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                tracing::warn!(entry = %name, "skipping device node in image layer");
                stats.skipped += 1;
                continue;
            }
            _ => {
                tracing::debug!(entry = %name, ?kind, "skipping unsupported tar entry type");
                stats.skipped += 1;
                continue;
            }
        }
        stats.inodes += 1;
        lchown(&target, uid as u32, gid as u32).map_err(at)?;
        if kind != tar::EntryType::Symlink {
            // after chown, which clears setuid/setgid bits
            fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(at)?;
        }
        if let Some(exts) = entry.pax_extensions().map_err(at)? {
            for ext in exts {
                let ext = ext.map_err(at)?;
                if let Some(xattr) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    set_xattr(&target, xattr, ext.value_bytes(), true).map_err(at)?;
                }
            }
        }
        if kind != tar::EntryType::Directory {
            set_mtime(&target, mtime).map_err(at)?;
        }
    }
    for (dir, mtime) in dir_times.iter().rev() {
        set_mtime(dir, *mtime).map_err(|source| UnpackError::Entry { entry: dir.display().to_string(), source })?;
    }
    Ok(stats)
}

/// The entry path made relative, without `.`; `None` when it holds `..`.
fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// Resolves `rel` inside `root` as if `root` were `/` (common::path::secure_join): symlinks
/// met on the way are followed with their targets interpreted inside `root`, and `..` never
/// climbs above it. The result must be a directory; missing ones are created when `create` is
/// set.
pub fn secure_join(root: &Path, rel: &Path, create: bool) -> io::Result<PathBuf> {
    let missing = if create { Missing::Create } else { Missing::Error };
    let dir = common::path::secure_join(root, rel, missing)?;
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        Err(e) => Err(e),
    }
}

/// Removes what is at `path` (never following a symlink); directories only when `dirs_too`,
/// and then recursively.
fn remove_existing(path: &Path, dirs_too: bool) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if dirs_too {
                fs::remove_dir_all(path)
            } else {
                Ok(())
            }
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

use crate::sys::{lchown, mknod, set_mtime, set_xattr};

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Dev(&'a str),
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_000_000);
            h.set_uid(0);
            h.set_gid(0);
            match e {
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    set_raw_path(&mut h, p);
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
                E::File(p, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o4755);
                    h.set_size(data.len() as u64);
                    set_raw_path(&mut h, p);
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
                E::Sym(p, t) | E::Hard(p, t) => {
                    h.set_entry_type(if matches!(e, E::Sym(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_mode(0o777);
                    h.set_size(0);
                    set_raw_path(&mut h, p);
                    h.set_link_name_literal(t).unwrap();
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
                E::Dev(p) => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_mode(0o666);
                    h.set_size(0);
                    h.set_device_major(1).unwrap();
                    h.set_device_minor(3).unwrap();
                    set_raw_path(&mut h, p);
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// Writes the name bytes as they are, `..` included, as a hostile archive would.
    fn set_raw_path(h: &mut tar::Header, p: &str) {
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..p.len()].copy_from_slice(p.as_bytes());
    }

    fn root_only() -> bool {
        // whiteouts need mknod and trusted.* xattrs need CAP_SYS_ADMIN
        if unsafe_geteuid() != 0 {
            eprintln!("skipping: needs root");
            return false;
        }
        true
    }

    #[allow(unsafe_code)]
    fn unsafe_geteuid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    #[test]
    fn unpacks_files_links_and_whiteouts() {
        if !root_only() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = tar_of(&[
            E::Dir("etc/"),
            E::File("etc/passwd", b"root\n"),
            E::Sym("bin", "usr/bin"),
            E::Hard("etc/passwd2", "etc/passwd"),
            E::File("etc/.wh.shadow", b""),
            E::Dir("data/"),
            E::File("data/.wh..wh..opq", b""),
            E::File("data/new", b"n"),
            E::File("usr/bin/deep", b"implicit parents"),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &data).unwrap();
        let out = unpack(&gz.finish().unwrap()[..], dir.path()).unwrap();
        assert_eq!(out.diff_id, format!("sha256:{}", hex::encode(Sha256::digest(&data))));
        let root = dir.path();
        assert_eq!(fs::read(root.join("etc/passwd")).unwrap(), b"root\n");
        assert_eq!(fs::metadata(root.join("etc/passwd")).unwrap().mode() & 0o7777, 0o4755);
        assert_eq!(
            fs::metadata(root.join("etc/passwd")).unwrap().ino(),
            fs::metadata(root.join("etc/passwd2")).unwrap().ino()
        );
        assert_eq!(fs::read_link(root.join("bin")).unwrap(), PathBuf::from("usr/bin"));
        let wh = fs::symlink_metadata(root.join("etc/shadow")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        let mut buf = [0u8; 4];
        let p = CString::new(root.join("data").as_os_str().as_bytes()).unwrap();
        let n = CString::new("trusted.overlay.opaque").unwrap();
        #[allow(unsafe_code)]
        // SAFETY: valid strings and buffer.
        let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..len as usize], b"y");
        assert_eq!(fs::read(root.join("usr/bin/deep")).unwrap(), b"implicit parents");
        assert_eq!(fs::metadata(root.join("etc")).unwrap().mtime(), 1_000_000);
    }

    #[test]
    fn zstd_and_plain_layers() {
        if !root_only() {
            return;
        }
        let data = tar_of(&[E::File("a", b"x")]);
        for input in [zstd::encode_all(&data[..], 3).unwrap(), data.clone()] {
            let dir = tempfile::tempdir().unwrap();
            let out = unpack(&input[..], dir.path()).unwrap();
            assert_eq!(out.diff_id, format!("sha256:{}", hex::encode(Sha256::digest(&data))));
            assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"x");
        }
    }

    #[test]
    fn nothing_escapes_the_root() {
        if !root_only() {
            return;
        }
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        // '..' in a path is refused
        let err = unpack(&tar_of(&[E::File("../escaped", b"x")])[..], &root).unwrap_err();
        assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
        assert!(!outer.path().join("escaped").exists());
        // absolute paths land inside
        unpack(&tar_of(&[E::File("/abs", b"x")])[..], &root).unwrap();
        assert!(root.join("abs").exists());
        // a symlink to outside, then a write through it, stays inside
        unpack(
            &tar_of(&[
                E::Sym("link", "/.."),
                E::Sym("up", "../../.."),
                E::File("link/via-abs", b"x"),
                E::File("up/via-rel", b"x"),
            ])[..],
            &root,
        )
        .unwrap();
        assert!(!outer.path().join("via-abs").exists());
        assert!(!outer.path().join("via-rel").exists());
        assert!(root.join("via-abs").exists() && root.join("via-rel").exists());
        // a hardlink to a file outside is refused
        fs::write(outer.path().join("secret"), b"s").unwrap();
        assert!(unpack(&tar_of(&[E::Hard("h", "../secret")])[..], &root).is_err());
        assert!(unpack(&tar_of(&[E::Sym("s", "/"), E::Hard("h2", "s/../secret")])[..], &root).is_err());
        assert!(!root.join("h").exists() && !root.join("h2").exists());
        // device nodes are skipped
        let out = unpack(&tar_of(&[E::Dev("dev/mem")])[..], &root).unwrap();
        assert_eq!(out.skipped, 1);
        assert!(!root.join("dev/mem").exists());
        // the outer directory holds only what the test put there
        let mut names: Vec<_> = fs::read_dir(outer.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, vec![std::ffi::OsString::from("root"), std::ffi::OsString::from("secret")]);
    }

    #[test]
    fn truncated_layer_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_of(&[E::File("a", &[7u8; 5000])]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &data).unwrap();
        let gz = gz.finish().unwrap();
        assert!(unpack(&gz[..gz.len() / 2], dir.path()).is_err());
    }
}
