//! The network configuration on stdin and the invocation's environment.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::spec::{self, code, CniError};

/// The keys of the reference `bridge` plugin that we honour, plus the runtime's additions.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin: String,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub force_address: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub vlan: Option<u32>,
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default)]
    pub dns: Option<Value>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

/// One entry of `runtimeConfig.portMappings`, as kubelet/containerd send it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i64,
    pub container_port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Network names and container ids: alphanumeric first, then alphanumerics, `_`, `.`, `-`.
pub fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Interface names as the kernel accepts them, minus quotes (they end up in rule comments).
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '/' | ':' | '"' | '\'' | '\\'))
}

impl NetConf {
    /// Parses and validates the stdin config. Returns the config and the raw JSON
    /// (handed to delegated IPAM plugins).
    pub fn parse(bytes: &[u8]) -> Result<(NetConf, Value), CniError> {
        let raw: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::new(code::DECODE, format!("invalid network config JSON: {e}")))?;
        let obj = raw.as_object().ok_or_else(|| CniError::new(code::DECODE, "network config is not a JSON object"))?;
        let version = match obj.get("cniVersion") {
            Some(Value::String(v)) if !v.is_empty() => v.clone(),
            _ => return Err(CniError::new(code::INVALID_CONFIG, "missing cniVersion")),
        };
        if !spec::version_supported(&version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "incompatible CNI versions: config is {version:?}, plugin supports {:?}",
                    spec::SUPPORTED_VERSIONS
                ),
            ));
        }
        for key in ["name", "type"] {
            match obj.get(key) {
                Some(Value::String(s)) if !s.is_empty() => {}
                _ => return Err(CniError::new(code::INVALID_CONFIG, format!("missing network {key}"))),
            }
        }
        let conf: NetConf = serde_json::from_value(raw.clone())
            .map_err(|e| CniError::new(code::DECODE, format!("failed to decode network config: {e}")))?;
        if !valid_identifier(&conf.name) {
            return Err(CniError::new(code::INVALID_CONFIG, format!("invalid network name {:?}", conf.name)));
        }
        if !valid_ifname(&conf.bridge) {
            return Err(CniError::new(code::INVALID_CONFIG, format!("invalid bridge name {:?}", conf.bridge)));
        }
        if let Some(mtu) = conf.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(CniError::new(code::INVALID_CONFIG, format!("invalid mtu {mtu}")));
            }
        }
        if conf.vlan.is_some_and(|v| v != 0) {
            return Err(CniError::new(code::UNSUPPORTED_FIELD, "vlan is not supported by corral-cni"));
        }
        Ok((conf, raw))
    }

    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref()?.get("type")?.as_str()
    }
}

/// The CNI_* environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl Env {
    pub fn from_map(vars: &HashMap<String, String>) -> Env {
        let get = |k: &str| vars.get(k).cloned().unwrap_or_default();
        Env {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
        }
    }

    fn missing(var: &str) -> CniError {
        CniError::new(code::INVALID_ENV, format!("required env variable {var} missing"))
    }

    /// Validates what ADD, CHECK and DEL need; `need_netns` for ADD and CHECK.
    pub fn validate_attachment(&self, need_netns: bool) -> Result<(), CniError> {
        if self.container_id.is_empty() {
            return Err(Self::missing("CNI_CONTAINERID"));
        }
        if !valid_identifier(&self.container_id) {
            return Err(CniError::new(code::INVALID_ENV, format!("invalid CNI_CONTAINERID {:?}", self.container_id)));
        }
        if self.ifname.is_empty() {
            return Err(Self::missing("CNI_IFNAME"));
        }
        if !valid_ifname(&self.ifname) {
            return Err(CniError::new(code::INVALID_ENV, format!("invalid CNI_IFNAME {:?}", self.ifname)));
        }
        if need_netns && self.netns.is_empty() {
            return Err(Self::missing("CNI_NETNS"));
        }
        Ok(())
    }
}

/// Validated port mappings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub host_port: u16,
    pub container_port: u16,
    pub proto: &'static str,
    pub host_ip: Option<IpAddr>,
}

pub fn validate_ports(maps: &[PortMapping]) -> Result<Vec<Port>, CniError> {
    let bad = |m: String| CniError::new(code::INVALID_CONFIG, m);
    maps.iter()
        .map(|m| {
            let port = |p: i64, what: &str| {
                u16::try_from(p)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(format!("invalid {what} {p} in portMappings")))
            };
            let proto = match m.protocol.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("") | Some("tcp") => "tcp",
                Some("udp") => "udp",
                Some(p) => return Err(bad(format!("unsupported protocol {p:?} in portMappings"))),
            };
            let host_ip = match m.host_ip.as_deref() {
                None | Some("") => None,
                Some(ip) => {
                    let ip: IpAddr = ip.parse().map_err(|_| bad(format!("invalid hostIP {ip:?} in portMappings")))?;
                    if ip.is_unspecified() {
                        None
                    } else {
                        Some(ip)
                    }
                }
            };
            Ok(Port {
                host_port: port(m.host_port, "hostPort")?,
                container_port: port(m.container_port, "containerPort")?,
                proto,
                host_ip,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, code::DECODE);
        assert_eq!(NetConf::parse(br#"{"name":"a","type":"b"}"#).unwrap_err().code, code::INVALID_CONFIG);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"9.9.9","name":"a","type":"b"}"#).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(NetConf::parse(br#"{"cniVersion":"1.0.0","type":"b"}"#).unwrap_err().code, code::INVALID_CONFIG);
        assert_eq!(NetConf::parse(br#"{"cniVersion":"1.0.0","name":"a"}"#).unwrap_err().code, code::INVALID_CONFIG);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"a","type":"b","mtu":"x"}"#).unwrap_err().code,
            code::DECODE
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"../x","type":"b"}"#).unwrap_err().code,
            code::INVALID_CONFIG
        );
        let (c, _) = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"n","type":"corral-cni"}"#).unwrap();
        assert_eq!(c.bridge, "cni0");
    }

    #[test]
    fn ports() {
        let pm =
            |h, c, p: &str| PortMapping { host_port: h, container_port: c, protocol: Some(p.into()), host_ip: None };
        assert!(validate_ports(&[pm(8080, 80, "TCP"), pm(53, 53, "udp")]).is_ok());
        assert!(validate_ports(&[pm(0, 80, "tcp")]).is_err());
        assert!(validate_ports(&[pm(70000, 80, "tcp")]).is_err());
        assert!(validate_ports(&[pm(80, -1, "tcp")]).is_err());
        assert!(validate_ports(&[pm(80, 80, "sctp")]).is_err());
    }

    #[test]
    fn names() {
        assert!(valid_ifname("eth0"));
        assert!(!valid_ifname("a-very-long-interface"));
        assert!(!valid_ifname("a/b"));
        assert!(valid_identifier("abc-1.2_3"));
        assert!(!valid_identifier("-abc"));
    }
}
