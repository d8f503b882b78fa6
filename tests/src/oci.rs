//! Small OCI images built in memory for the fake registry: layer tars (hostile ones too: raw
//! names with `..`, absolute paths, symlinks and hardlinks pointing anywhere), gzip or zstd
//! compression, image configs and manifests, and image indexes.

use std::io::Write;

use sha2::{Digest, Sha256};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One tar entry. Paths and link targets are written as given, byte for byte.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir(String),
    File(String, Vec<u8>),
    Symlink(String, String),
    Hardlink(String, String),
}

impl Entry {
    pub fn dir(p: &str) -> Entry {
        Entry::Dir(p.to_string())
    }
    pub fn file(p: &str, data: impl AsRef<[u8]>) -> Entry {
        Entry::File(p.to_string(), data.as_ref().to_vec())
    }
    pub fn symlink(p: &str, target: &str) -> Entry {
        Entry::Symlink(p.to_string(), target.to_string())
    }
    pub fn hardlink(p: &str, target: &str) -> Entry {
        Entry::Hardlink(p.to_string(), target.to_string())
    }
}

/// A tar of `entries` in order. Names go in the header's name field as they are (no
/// normalization), as a hostile archive would have them; they must fit in 100 bytes.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_old();
        h.set_mtime(1_704_067_200);
        h.set_uid(0);
        h.set_gid(0);
        let (path, data): (&str, &[u8]) = match e {
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (p, &[])
            }
            Entry::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (p, data)
            }
            Entry::Symlink(p, t) | Entry::Hardlink(p, t) => {
                h.set_entry_type(if matches!(e, Entry::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                h.set_link_name_literal(t.as_bytes()).expect("link name fits the header");
                (p, &[])
            }
        };
        let name = &mut h.as_old_mut().name;
        assert!(path.len() <= name.len(), "tar entry name {path:?} is longer than 100 bytes");
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("appending tar entry");
    }
    b.into_inner().expect("finishing tar")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// A layer blob as served (`blob`) and the digest of its uncompressed tar (`diff_id`).
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub diff_id: String,
    pub media_type: String,
}

impl Layer {
    /// A gzip layer of `entries`.
    pub fn new(entries: &[Entry]) -> Layer {
        Layer::from_tar(tar(entries))
    }

    /// A gzip layer of an existing tar.
    pub fn from_tar(tar: Vec<u8>) -> Layer {
        Layer { blob: gzip(&tar), diff_id: digest(&tar), media_type: OCI_LAYER_GZIP.into() }
    }

    pub fn zstd(entries: &[Entry]) -> Layer {
        let tar = tar(entries);
        Layer {
            blob: zstd::encode_all(&tar[..], 3).expect("zstd"),
            diff_id: digest(&tar),
            media_type: OCI_LAYER_ZSTD.into(),
        }
    }

    /// A layer with `size` bytes of incompressible content in one file `name`, unique per seed.
    pub fn random(name: &str, size: usize, seed: u64) -> Layer {
        let mut data = Vec::with_capacity(size + 32);
        let mut block = Sha256::digest(format!("corral-it-{seed}-{name}").as_bytes());
        while data.len() < size {
            data.extend_from_slice(&block);
            block = Sha256::digest(block);
        }
        data.truncate(size);
        Layer::new(&[Entry::file(name, data)])
    }

    pub fn digest(&self) -> String {
        digest(&self.blob)
    }

    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest(), "size": self.blob.len()})
    }
}

/// A single-platform image: config, layers and the manifest that lists them.
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
    pub manifest: Vec<u8>,
}

impl Image {
    /// An image of `layers` for this host's platform.
    pub fn new(layers: Vec<Layer>) -> Image {
        Image::for_arch(layers, crate::host_arch())
    }

    pub fn for_arch(layers: Vec<Layer>, arch: &str) -> Image {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        Image::with_config(layers, serde_json::to_vec(&config).unwrap())
    }

    /// An image whose config is `config` as given (its diff ids need not match the layers).
    pub fn with_config(layers: Vec<Layer>, config: Vec<u8>) -> Image {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(&config), "size": config.len()},
            "layers": layers.iter().map(Layer::descriptor).collect::<Vec<_>>(),
        });
        Image { config, layers, manifest: serde_json::to_vec_pretty(&manifest).unwrap() }
    }

    /// The image id corrald reports: the config digest.
    pub fn id(&self) -> String {
        digest(&self.config)
    }

    pub fn digest(&self) -> String {
        digest(&self.manifest)
    }
}

/// An image index over images of several platforms.
#[derive(Debug, Clone)]
pub struct Index {
    pub images: Vec<(String, Image)>,
    pub body: Vec<u8>,
}

impl Index {
    /// `images` as (architecture, image) pairs.
    pub fn new(images: Vec<(String, Image)>) -> Index {
        let manifests: Vec<serde_json::Value> = images
            .iter()
            .map(|(arch, img)| {
                serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": img.digest(),
                    "size": img.manifest.len(),
                    "platform": {"architecture": arch, "os": "linux"},
                })
            })
            .collect();
        let body = serde_json::to_vec_pretty(
            &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
        )
        .unwrap();
        Index { images, body }
    }

    pub fn digest(&self) -> String {
        digest(&self.body)
    }
}
