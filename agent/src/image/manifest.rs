//! OCI and Docker v2 schema 2 documents: indexes, manifests and image configs, and choosing this
//! host's platform from an index.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What we send in `Accept` when resolving a manifest.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// unsupported manifest media type {0:?}
    #[error("unsupported manifest media type {0:?} (schema 1 and unknown types are not supported)")]
    UnsupportedType(String),
    /// invalid {what}: {source}
    #[error("invalid {what}: {source}")]
    Decode { what: &'static str, source: serde_json::Error },
    /// no manifest for {0} in the image index
    #[error("image index has no manifest for {0}")]
    NoPlatform(String),
    /// invalid document: {0}
    #[error("invalid {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// A manifest document as resolved from a registry.
#[derive(Debug)]
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

impl Document {
    /// Parses a manifest body; the media type comes from the body when it names one, else from
    /// the response's Content-Type, else from its shape.
    pub fn parse(content_type: &str, body: &[u8]) -> Result<Document, ManifestError> {
        let probe: Probe =
            serde_json::from_slice(body).map_err(|source| ManifestError::Decode { what: "manifest", source })?;
        if probe.schema_version == Some(1) {
            return Err(ManifestError::UnsupportedType("schema version 1".into()));
        }
        let media_type = probe.media_type.clone().unwrap_or_else(|| {
            let ct = content_type.split(';').next().unwrap_or("").trim();
            if ct.is_empty() || ct == "application/json" || ct == "text/plain" {
                if probe.manifests.is_some() {
                    OCI_INDEX.to_string()
                } else if probe.config.is_some() {
                    OCI_MANIFEST.to_string()
                } else {
                    ct.to_string()
                }
            } else {
                ct.to_string()
            }
        });
        match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => serde_json::from_slice(body)
                .map(Document::Index)
                .map_err(|source| ManifestError::Decode { what: "image index", source }),
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let m: Manifest = serde_json::from_slice(body)
                    .map_err(|source| ManifestError::Decode { what: "image manifest", source })?;
                for d in std::iter::once(&m.config).chain(&m.layers) {
                    if !super::reference::is_valid_digest(&d.digest) {
                        return Err(ManifestError::Invalid(format!("manifest: unsupported digest {:?}", d.digest)));
                    }
                }
                Ok(Document::Manifest(m))
            }
            other => Err(ManifestError::UnsupportedType(other.to_string())),
        }
    }
}

/// This host's platform in OCI terms.
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    };
    Platform { architecture: architecture.into(), os: "linux".into(), variant: variant.map(String::from) }
}

/// Picks the manifest for `want` from an index: same os and architecture, the same variant
/// preferred, else one without a variant, else the first match.
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Result<&'a Descriptor, ManifestError> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.media_type.is_empty() || matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST))
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.os == want.os && p.architecture == want.architecture))
        .collect();
    let variant = |d: &&Descriptor| d.platform.as_ref().and_then(|p| p.variant.clone());
    candidates
        .iter()
        .find(|d| variant(d) == want.variant)
        .or_else(|| candidates.iter().find(|d| variant(d).is_none()))
        .or_else(|| candidates.first())
        .copied()
        .ok_or_else(|| {
            let v = want.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default();
            ManifestError::NoPlatform(format!("{}/{}{}", want.os, want.architecture, v))
        })
}

/// The parts of an image config corral uses; the whole document is kept as raw JSON too.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub labels: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    pub fn parse(body: &[u8]) -> Result<ImageConfig, ManifestError> {
        let cfg: ImageConfig =
            serde_json::from_slice(body).map_err(|source| ManifestError::Decode { what: "image config", source })?;
        if cfg.rootfs.diff_ids.iter().any(|d| !super::reference::is_valid_digest(d)) {
            return Err(ManifestError::Invalid("image config: rootfs.diff_ids holds an unsupported digest".into()));
        }
        Ok(cfg)
    }

    pub fn user(&self) -> &str {
        self.config.as_ref().and_then(|c| c.user.as_deref()).unwrap_or("")
    }
}

/// Chain ids of a layer stack: chain(0) = diff(0), chain(n) = sha256(chain(n-1) + " " + diff(n)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(prev) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{prev} {diff}").as_bytes()))),
        };
        out.push(next);
    }
    out
}

/// `sha256:<hex>` of a byte string.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, digest: char) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(String::from),
            }),
        }
    }

    #[test]
    fn picks_host_platform_and_variant() {
        let index = Index {
            manifests: vec![
                desc("arm64", Some("v8"), 'a'),
                desc("amd64", None, 'b'),
                desc("arm", Some("v6"), 'c'),
                desc("arm", Some("v7"), 'd'),
            ],
        };
        let amd64 = Platform { architecture: "amd64".into(), os: "linux".into(), variant: None };
        assert!(select_platform(&index, &amd64).unwrap().digest.starts_with("sha256:b"));
        let arm7 = Platform { architecture: "arm".into(), os: "linux".into(), variant: Some("v7".into()) };
        assert!(select_platform(&index, &arm7).unwrap().digest.starts_with("sha256:d"));
        let s390 = Platform { architecture: "s390x".into(), os: "linux".into(), variant: None };
        assert_eq!(
            select_platform(&index, &s390).unwrap_err().to_string(),
            "image index has no manifest for linux/s390x"
        );
    }

    #[test]
    fn chain_ids_follow_the_oci_formula() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], digest_of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn documents_by_media_type_or_shape() {
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}"#;
        assert!(matches!(
            Document::parse("application/vnd.oci.image.manifest.v1+json", m).unwrap(),
            Document::Manifest(_)
        ));
        assert!(matches!(Document::parse("", m).unwrap(), Document::Manifest(_)));
        let i = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert!(matches!(Document::parse("application/json", i).unwrap(), Document::Index(_)));
        assert!(Document::parse("", br#"{"schemaVersion":1,"fsLayers":[]}"#).is_err());
        assert!(Document::parse("", b"not json").is_err());
    }
}
