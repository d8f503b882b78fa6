//! The built-in `host-local` IPAM: the reference plugin's config schema and allocation
//! order (round robin from the last reserved address, skipping the gateway).

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::store::Store;
use crate::spec::{self, code, CniError, IpConfig, Route};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    ranges: Option<Vec<Vec<RawRange>>>,
    // legacy single-range keys
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    range_start: Option<String>,
    #[serde(default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    routes: Option<Vec<Value>>,
    #[serde(default)]
    data_dir: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: String,
    #[serde(default)]
    range_start: Option<String>,
    #[serde(default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

/// One validated range: addresses `start..=end` of `subnet`, as integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: u128,
    pub end: u128,
    pub gateway: Option<IpAddr>,
}

/// The validated host-local config.
#[derive(Debug, Clone)]
pub struct HostLocal {
    pub range_sets: Vec<Vec<Range>>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
}

fn invalid(msg: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(v.into())
    } else {
        IpAddr::V4((v as u32).into())
    }
}

fn parse_ip(s: &str, what: &str) -> Result<IpAddr, CniError> {
    s.parse().map_err(|_| invalid(format!("invalid {what} {s:?}")))
}

impl Range {
    fn parse(r: &RawRange) -> Result<Range, CniError> {
        let subnet: IpNet = r.subnet.parse().map_err(|_| invalid(format!("invalid subnet {:?}", r.subnet)))?;
        if subnet.addr() != subnet.network() {
            return Err(invalid(format!(
                "network {} has host bits set; for a prefix of {} the network address is {}",
                subnet,
                subnet.prefix_len(),
                subnet.network()
            )));
        }
        let v6 = subnet.addr().is_ipv6();
        if subnet.prefix_len() > subnet.max_prefix_len() - 2 {
            return Err(invalid(format!("network {subnet} too small to allocate from")));
        }
        let net = to_u128(subnet.network());
        let last = to_u128(subnet.broadcast());
        let (first, last) = (net + 1, if v6 { last } else { last - 1 });
        let bound = |s: &Option<String>, what: &str, default: u128| -> Result<u128, CniError> {
            match s.as_deref() {
                None | Some("") => Ok(default),
                Some(s) => {
                    let ip = parse_ip(s, what)?;
                    let v = to_u128(ip);
                    if ip.is_ipv6() != v6 || v < first || v > last {
                        return Err(invalid(format!("{what} {s} not in network {subnet}")));
                    }
                    Ok(v)
                }
            }
        };
        let start = bound(&r.range_start, "rangeStart", first)?;
        let end = bound(&r.range_end, "rangeEnd", last)?;
        if start > end {
            return Err(invalid(format!(
                "rangeStart {} is after rangeEnd {}",
                from_u128(start, v6),
                from_u128(end, v6)
            )));
        }
        let gateway = match r.gateway.as_deref() {
            None | Some("") => Some(from_u128(net + 1, v6)),
            Some(g) => {
                let ip = parse_ip(g, "gateway")?;
                if !subnet.contains(&ip) {
                    return Err(invalid(format!("gateway {g} not in network {subnet}")));
                }
                Some(ip)
            }
        };
        Ok(Range { subnet, start, end, gateway })
    }

    pub fn v6(&self) -> bool {
        self.subnet.addr().is_ipv6()
    }

    pub fn contains(&self, v: u128) -> bool {
        (self.start..=self.end).contains(&v)
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.v6() == o.v6() && self.start <= o.end && o.start <= self.end
    }
}

impl HostLocal {
    pub fn parse(ipam: &Value) -> Result<HostLocal, CniError> {
        let raw: RawConf = serde_json::from_value(ipam.clone())
            .map_err(|e| CniError::new(code::DECODE, format!("failed to decode ipam config: {e}")))?;
        let mut sets = Vec::new();
        if let Some(subnet) = &raw.subnet {
            sets.push(vec![Range::parse(&RawRange {
                subnet: subnet.clone(),
                range_start: raw.range_start.clone(),
                range_end: raw.range_end.clone(),
                gateway: raw.gateway.clone(),
            })?]);
        }
        for set in raw.ranges.iter().flatten() {
            if set.is_empty() {
                return Err(invalid("empty range set".into()));
            }
            let set = set.iter().map(Range::parse).collect::<Result<Vec<_>, _>>()?;
            if set.iter().any(|r| r.v6() != set[0].v6()) {
                return Err(invalid("a range set mixes IPv4 and IPv6".into()));
            }
            sets.push(set);
        }
        if sets.is_empty() {
            return Err(invalid("no IP ranges specified".into()));
        }
        let all: Vec<&Range> = sets.iter().flatten().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.overlaps(b) {
                    return Err(invalid(format!("range {} overlaps with range {}", a.subnet, b.subnet)));
                }
            }
        }
        let mut routes = Vec::new();
        for r in raw.routes.iter().flatten() {
            routes.push(spec::parse_route(r).ok_or_else(|| invalid(format!("invalid route {r}")))?);
        }
        let data_dir = raw.data_dir.filter(|d| !d.is_empty()).unwrap_or_else(|| DEFAULT_DATA_DIR.into()).into();
        Ok(HostLocal { range_sets: sets, routes, data_dir })
    }

    /// `ip` with the prefix of the configured range holding it.
    pub fn with_prefix(&self, ip: IpAddr) -> Option<IpNet> {
        let r = self.range_sets.iter().flatten().find(|r| r.subnet.contains(&ip))?;
        IpNet::new(ip, r.subnet.prefix_len()).ok()
    }

    /// Allocates one address per range set for (id, ifname), under the store's lock.
    /// On failure, what this call reserved is released again.
    pub fn allocate(&self, store: &Store, id: &str, ifname: &str) -> Result<Vec<IpConfig>, CniError> {
        let existing = store.get_by_id(id, ifname).map_err(io)?;
        if let Some(ip) = existing.first() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("{ip} has been allocated to {id}, duplicate allocation is not allowed"),
            ));
        }
        let mut out = Vec::new();
        for (idx, set) in self.range_sets.iter().enumerate() {
            match allocate_in_set(store, idx, set, id, ifname) {
                Ok(ipc) => out.push(ipc),
                Err(e) => {
                    for ipc in &out {
                        let _ = store.release(ipc.address.addr());
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}

pub fn io(e: super::store::Error) -> CniError {
    CniError::new(code::IO, e.to_string())
}

fn allocate_in_set(store: &Store, idx: usize, set: &[Range], id: &str, ifname: &str) -> Result<IpConfig, CniError> {
    // Start after the last reserved address if it is in this set, else at the first range's start.
    let (mut ri, mut cur) = (0usize, set[0].start);
    if let Some(last) = store.last_reserved(idx) {
        let v = to_u128(last);
        if let Some(i) = set.iter().position(|r| r.v6() == last.is_ipv6() && r.contains(v)) {
            (ri, cur) = next(set, i, v);
        }
    }
    let (start_ri, start_cur) = (ri, cur);
    loop {
        let r = &set[ri];
        let ip = from_u128(cur, r.v6());
        if Some(ip) != r.gateway && store.reserve(id, ifname, ip, idx).map_err(io)? {
            let prefix = r.subnet.prefix_len();
            let address = IpNet::new(ip, prefix).map_err(|e| CniError::new(code::INTERNAL, e.to_string()))?;
            return Ok(IpConfig { address, gateway: r.gateway, interface: None });
        }
        (ri, cur) = next(set, ri, cur);
        if (ri, cur) == (start_ri, start_cur) {
            let subnets: Vec<String> = set.iter().map(|r| r.subnet.to_string()).collect();
            return Err(CniError::new(
                code::NO_FREE_ADDRESS,
                format!("no IP addresses available in range set: {}", subnets.join(",")),
            ));
        }
    }
}

/// The address after `v` in range `i` of `set`, wrapping to the next range.
fn next(set: &[Range], i: usize, v: u128) -> (usize, u128) {
    if v < set[i].end {
        (i, v + 1)
    } else {
        let n = (i + 1) % set.len();
        (n, set[n].start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_ranges() {
        let h = HostLocal::parse(
            &json!({"type":"host-local","ranges":[[{"subnet":"10.9.0.0/24"}],[{"subnet":"fd00:9::/64"}]]}),
        )
        .unwrap();
        assert_eq!(h.range_sets.len(), 2);
        let r = &h.range_sets[0][0];
        assert_eq!(from_u128(r.start, false).to_string(), "10.9.0.1");
        assert_eq!(from_u128(r.end, false).to_string(), "10.9.0.254");
        assert_eq!(r.gateway.unwrap().to_string(), "10.9.0.1");
        let r6 = &h.range_sets[1][0];
        assert_eq!(from_u128(r6.end, true).to_string(), "fd00:9::ffff:ffff:ffff:ffff");
        for bad in [
            json!({"ranges":[[{"subnet":"10.9.0.1/24"}]]}),
            json!({"ranges":[[{"subnet":"10.9.0.0/31"}]]}),
            json!({"ranges":[[{"subnet":"nope"}]]}),
            json!({"ranges":[[{"subnet":"10.9.0.0/24","rangeStart":"10.9.1.5"}]]}),
            json!({"ranges":[[{"subnet":"10.9.0.0/24","rangeStart":"10.9.0.9","rangeEnd":"10.9.0.5"}]]}),
            json!({"ranges":[[{"subnet":"10.9.0.0/24"}],[{"subnet":"10.9.0.0/25"}]]}),
            json!({"ranges":[]}),
        ] {
            assert_eq!(HostLocal::parse(&bad).unwrap_err().code, code::INVALID_CONFIG, "{bad}");
        }
    }

    #[test]
    fn allocate_round_robin_and_exhaust() {
        let tmp = tempfile::tempdir().unwrap();
        let h = HostLocal::parse(&json!({"subnet":"10.9.0.0/29","dataDir": tmp.path()})).unwrap();
        let store = Store::lock(&h.data_dir, "n").unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            let r = h.allocate(&store, &format!("c{i}"), "eth0").unwrap();
            got.push(r[0].address.to_string());
        }
        assert_eq!(got, ["10.9.0.2/29", "10.9.0.3/29", "10.9.0.4/29", "10.9.0.5/29", "10.9.0.6/29"]);
        assert_eq!(h.allocate(&store, "c9", "eth0").unwrap_err().code, code::NO_FREE_ADDRESS);
        assert_eq!(h.allocate(&store, "c1", "eth0").unwrap_err().code, code::INVALID_CONFIG);
        store.release_by_id("c1", "eth0").unwrap();
        assert_eq!(h.allocate(&store, "c7", "eth0").unwrap()[0].address.to_string(), "10.9.0.3/29");
    }
}
