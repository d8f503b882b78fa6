//! corrald configuration: defaults, the optional TOML file, and command-line flags (flags win).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default location of the configuration file; a missing file at this path is not an error.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/corral/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// reading config file {path}: {source}
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// parsing config file {path}: {source}
    #[error("parsing config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    /// invalid configuration
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Everything corrald can be configured with. Every field has a default so that corrald runs with
/// no config file at all.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Path of the CRI unix socket.
    pub listen: PathBuf,
    /// Persistent state: metadata, content, snapshots.
    pub root: PathBuf,
    /// Volatile state, cleared at boot: socket, bundles, pinned namespaces.
    pub state: PathBuf,
    /// Log filter (`info`, `debug`, `agent=trace`, ...); `RUST_LOG` wins over it.
    pub log_level: String,
    /// The corral-shim binary; empty means `corral-shim` next to corrald, else on PATH.
    pub shim_path: PathBuf,
    /// cgroup under which pods get their cgroup when the sandbox config names no parent.
    pub cgroup_parent: String,
    /// CNI network configs: the first .conflist/.conf/.json in lexical order is used.
    pub cni_conf_dir: PathBuf,
    /// Directories searched for CNI plugin binaries, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Image registry settings.
    pub registry: RegistryConfig,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Mirrors per registry host (`docker.io`, `quay.io`, ...). Each endpoint is a URL
    /// (`https://mirror.example`, `http://127.0.0.1:5000`); they are tried in order, then the
    /// registry itself.
    pub mirrors: HashMap<String, MirrorConfig>,
    /// Registry hosts (`host` or `host:port`) reached over plain HTTP. Loopback hosts always are.
    pub insecure: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    pub endpoints: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: PathBuf::from("/run/corral/corral.sock"),
            root: PathBuf::from("/var/lib/corral"),
            state: PathBuf::from("/run/corral"),
            log_level: "info".to_string(),
            shim_path: PathBuf::new(),
            cgroup_parent: "/corral".to_string(),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin")],
            registry: RegistryConfig::default(),
        }
    }
}

impl Config {
    /// Loads the file at `path`. When `required` is false a missing file yields the defaults.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
        };
        Config::parse(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }

    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks what the type system cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (dir, name) in [(&self.root, "root"), (&self.state, "state")] {
            if !dir.is_absolute() {
                return Err(ConfigError::Invalid(format!("{name} must be an absolute path, got {}", dir.display())));
            }
        }
        if !self.cgroup_parent.starts_with('/') {
            return Err(ConfigError::Invalid(format!(
                "cgroup_parent must start with '/', got {:?}",
                self.cgroup_parent
            )));
        }
        for (host, mirror) in &self.registry.mirrors {
            for endpoint in &mirror.endpoints {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(ConfigError::Invalid(format!(
                        "mirror endpoint {endpoint:?} of {host} must start with http:// or https://"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn parses_every_section() {
        let cfg = Config::parse(
            r#"
            listen = "/tmp/x.sock"
            root = "/tmp/root"
            log_level = "debug"
            [registry]
            insecure = ["reg.local:5000"]
            [registry.mirrors."docker.io"]
            endpoints = ["http://127.0.0.1:5000"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.listen, PathBuf::from("/tmp/x.sock"));
        assert_eq!(cfg.state, PathBuf::from("/run/corral"));
        assert_eq!(cfg.registry.insecure, vec!["reg.local:5000".to_string()]);
        assert_eq!(cfg.registry.mirrors["docker.io"].endpoints, vec!["http://127.0.0.1:5000".to_string()]);
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Config::parse("lisen = \"/x\"").is_err());
    }

    #[test]
    fn mirror_without_scheme_is_invalid() {
        let cfg = Config::parse("[registry.mirrors.\"docker.io\"]\nendpoints = [\"127.0.0.1:5000\"]").unwrap();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn missing_optional_file_gives_defaults() {
        let cfg = Config::load(Path::new("/nonexistent/corral.toml"), false).unwrap();
        assert_eq!(cfg, Config::default());
        assert!(Config::load(Path::new("/nonexistent/corral.toml"), true).is_err());
    }
}
