//! CNI spec types: versions, error codes, the error object and the result in every
//! supported result version.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Map, Value};

/// Versions whose configs we accept and whose results we produce.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version we speak natively.
pub const LATEST: &str = "1.1.0";

/// Spec error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific: the range set has no free address.
    pub const NO_FREE_ADDRESS: u32 = 100;
    /// Plugin-specific: a netlink, iptables or delegated-plugin operation failed.
    pub const INTERNAL: u32 = 999;
}

/// A CNI error: what goes to stdout as `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn to_json(&self, version: &str) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(version));
        m.insert("code".into(), json!(self.code));
        m.insert("msg".into(), json!(self.msg));
        if !self.details.is_empty() {
            m.insert("details".into(), json!(self.details));
        }
        Value::Object(m)
    }
}

/// Parses "a.b.c" into a comparable triple.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next().unwrap_or(Some(0))?);
    if it.next().is_some() {
        return None;
    }
    Some(t)
}

/// `a >= b` for two version strings (false when either is unparsable).
pub fn version_at_least(a: &str, b: &str) -> bool {
    matches!((parse_version(a), parse_version(b)), (Some(x), Some(y)) if x >= y)
}

pub fn version_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// The VERSION reply.
pub fn version_info(version: &str) -> Value {
    json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS})
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the subnet's prefix length.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// A plugin result, version independent. `dns` is kept as raw JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Option<Value>,
}

impl CniResult {
    /// Renders the result in `version` (one of [`SUPPORTED_VERSIONS`]).
    pub fn to_json(&self, version: &str) -> Value {
        let v03 = !version_at_least(version, "1.0.0");
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(version));
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut o = json!({"name": i.name, "mac": i.mac});
                    if let Some(s) = &i.sandbox {
                        o["sandbox"] = json!(s);
                    }
                    o
                })
                .collect();
            m.insert("interfaces".into(), Value::Array(ifs));
        }
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if v03 {
                    let fam = if ip.address.addr().is_ipv4() { "4" } else { "6" };
                    o.insert("version".into(), json!(fam));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        if !ips.is_empty() {
            m.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut o = json!({"dst": r.dst.to_string()});
                    if let Some(gw) = r.gw {
                        o["gw"] = json!(gw.to_string());
                    }
                    o
                })
                .collect();
            m.insert("routes".into(), Value::Array(routes));
        }
        m.insert("dns".into(), self.dns.clone().unwrap_or_else(|| json!({})));
        Value::Object(m)
    }

    /// Parses a result of any supported version (a prevResult or a delegate's output).
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        let bad = |what: &str| CniError::new(code::DECODE, format!("invalid result: {what}"));
        let mut r = CniResult::default();
        if let Some(ifs) = v.get("interfaces").and_then(Value::as_array) {
            for i in ifs {
                r.interfaces.push(Interface {
                    name: i.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                    mac: i.get("mac").and_then(Value::as_str).unwrap_or_default().to_string(),
                    sandbox: i.get("sandbox").and_then(Value::as_str).map(str::to_string),
                });
            }
        }
        if let Some(ips) = v.get("ips").and_then(Value::as_array) {
            for ip in ips {
                let address = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<IpNet>().ok())
                    .ok_or_else(|| bad("ips[].address"))?;
                let gateway = match ip.get("gateway").and_then(Value::as_str) {
                    Some(g) => Some(g.parse::<IpAddr>().map_err(|_| bad("ips[].gateway"))?),
                    None => None,
                };
                let interface = ip.get("interface").and_then(Value::as_u64).map(|i| i as usize);
                r.ips.push(IpConfig { address, gateway, interface });
            }
        }
        if let Some(routes) = v.get("routes").and_then(Value::as_array) {
            for rt in routes {
                r.routes.push(parse_route(rt).ok_or_else(|| bad("routes[]"))?);
            }
        }
        r.dns = v.get("dns").cloned();
        Ok(r)
    }
}

/// Parses `{"dst": "...", "gw": "..."}`.
pub fn parse_route(v: &Value) -> Option<Route> {
    let dst = v.get("dst")?.as_str()?.parse::<IpNet>().ok()?.trunc();
    let gw = match v.get("gw") {
        Some(g) => Some(g.as_str()?.parse::<IpAddr>().ok()?),
        None => None,
    };
    Some(Route { dst, gw })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                sandbox: Some("/run/netns/x".into()),
            }],
            ips: vec![IpConfig {
                address: "10.1.0.2/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: None }],
            dns: None,
        }
    }

    #[test]
    fn result_versions() {
        let r = sample();
        let v1 = r.to_json("1.1.0");
        assert_eq!(v1["cniVersion"], "1.1.0");
        assert!(v1["ips"][0].get("version").is_none());
        let v03 = r.to_json("0.3.1");
        assert_eq!(v03["ips"][0]["version"], "4");
        assert_eq!(CniResult::from_json(&v03).unwrap().ips, r.ips);
        assert_eq!(CniResult::from_json(&v1).unwrap().routes, r.routes);
    }

    #[test]
    fn versions() {
        assert!(version_at_least("1.1.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("1.0.0", "1.0.0"));
        assert_eq!(parse_version("1.x"), None);
        assert!(version_supported("0.3.0"));
        assert!(!version_supported("0.2.0"));
    }

    #[test]
    fn error_json() {
        let e = CniError::new(code::DECODE, "bad").details("x");
        let j = e.to_json("1.0.0");
        assert_eq!(j["code"], 6);
        assert_eq!(j["details"], "x");
    }
}
