//! corrald configuration: defaults, the optional TOML file, and command-line flags (flags win).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Who manages cgroups: corral through cgroupfs, or systemd (transient units).
    pub cgroup_driver: CgroupDriver,
    /// cgroup under which pods get their cgroup when the sandbox config names no parent: a path
    /// with the cgroupfs driver, a slice with systemd's; empty: `/corral` or `corral.slice`.
    pub cgroup_parent: String,
    /// CNI network configs: the first .conflist/.conf/.json in lexical order is used.
    pub cni_conf_dir: PathBuf,
    /// Directories searched for CNI plugin binaries, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Image registry settings.
    pub registry: RegistryConfig,
    /// The streaming server (Exec, Attach, PortForward).
    pub streaming: StreamingConfig,
}

/// The streaming server that the Exec, Attach and PortForward URLs point at.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Address to listen on. Loopback by default: kubelet proxies the streams from the node.
    pub address: String,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
    /// Serve TLS: with `tls_cert` and `tls_key`, else with a self-signed pair made at start.
    pub tls: bool,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// A stream with no traffic for this long is closed (`4h`, `30m`, `90s`, `1h30m`; `0` never).
    pub idle_timeout: String,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1".into(),
            port: 0,
            tls: false,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            idle_timeout: "4h".into(),
        }
    }
}

impl StreamingConfig {
    /// The idle timeout; None: never.
    pub fn idle_timeout(&self) -> Result<Option<Duration>, ConfigError> {
        let d = parse_duration(&self.idle_timeout).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "streaming idle_timeout {:?} is not a duration (like 4h, 30m, 1h30m, 90s, 500ms)",
                self.idle_timeout
            ))
        })?;
        Ok((!d.is_zero()).then_some(d))
    }
}

/// A duration as Go writes them: `4h0m0s`, `30m`, `1.5h`, `90s`, `500ms`, `0`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * unit;
    }
    (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
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
            cgroup_driver: CgroupDriver::Cgroupfs,
            cgroup_parent: String::new(),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin")],
            registry: RegistryConfig::default(),
            streaming: StreamingConfig::default(),
        }
    }
}

/// Who makes and manages the cgroups of pods and containers.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// corral writes cgroupfs itself (containerd's default).
    #[default]
    Cgroupfs,
    /// systemd: containers in transient scope units, pod cgroups are slices (kubeadm's default).
    Systemd,
}

impl std::str::FromStr for CgroupDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cgroupfs" => Ok(CgroupDriver::Cgroupfs),
            "systemd" => Ok(CgroupDriver::Systemd),
            _ => Err(format!("cgroup driver {s:?} is not cgroupfs or systemd")),
        }
    }
}

impl Config {
    /// The parent of pod cgroups when the sandbox config names none, with the driver's default.
    pub fn cgroup_parent(&self) -> String {
        match (self.cgroup_parent.as_str(), self.cgroup_driver) {
            ("", CgroupDriver::Cgroupfs) => "/corral".into(),
            ("", CgroupDriver::Systemd) => "corral.slice".into(),
            (p, _) => p.into(),
        }
    }

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
        match self.cgroup_driver {
            CgroupDriver::Cgroupfs if !self.cgroup_parent().starts_with('/') => {
                return Err(ConfigError::Invalid(format!(
                    "cgroup_parent must start with '/' with the cgroupfs driver, got {:?}",
                    self.cgroup_parent
                )));
            }
            CgroupDriver::Systemd if common::systemd::expand_slice(&self.cgroup_parent()).is_err() => {
                return Err(ConfigError::Invalid(format!(
                    "cgroup_parent must be a slice unit name like corral.slice with the systemd driver, got {:?}",
                    self.cgroup_parent
                )));
            }
            _ => {}
        }
        self.streaming.idle_timeout()?;
        if self.streaming.address.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "streaming address {:?} is not an IP address",
                self.streaming.address
            )));
        }
        if self.streaming.tls_cert.as_os_str().is_empty() != self.streaming.tls_key.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("streaming tls_cert and tls_key go together".into()));
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
    fn durations_parse_as_go_writes_them() {
        assert_eq!(parse_duration("4h0m0s"), Some(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "4", "h", "4d", "-1s", "1e300h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn streaming_settings_are_checked() {
        let cfg = Config::parse("[streaming]\naddress = \"0.0.0.0\"\nport = 10010\nidle_timeout = \"30m\"").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.streaming.idle_timeout().unwrap(), Some(Duration::from_secs(1800)));
        assert_eq!(Config::default().streaming.idle_timeout().unwrap(), Some(Duration::from_secs(4 * 3600)));
        assert!(Config::parse("[streaming]\nidle_timeout = \"soon\"").unwrap().validate().is_err());
        assert!(Config::parse("[streaming]\naddress = \"localhost:1\"").unwrap().validate().is_err());
        assert!(Config::parse("[streaming]\ntls_cert = \"/c.pem\"").unwrap().validate().is_err());
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
