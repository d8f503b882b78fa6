//! CHECK: the interface, its addresses and routes, the host veth on the bridge, the
//! allocation and the nat rules are all still there.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::config::{validate_ports, Env, NetConf};
use crate::ipam::{masq, Ipam};
use crate::iptables::{self, NatTable};
use crate::netlink;
use crate::netns::Netns;
use crate::rules::{rule_sets, Owner};
use crate::spec::{code, CniError, CniResult, Route};

fn failed(msg: String) -> CniError {
    CniError::new(code::INTERNAL, msg)
}

pub async fn check(conf: &NetConf, _raw: &Value, env: &Env) -> Result<(), CniError> {
    env.validate_attachment(true)?;
    let ports = validate_ports(&conf.runtime_config.port_mappings)?;
    let ipam = Ipam::from_conf(conf)?;
    let owner = Owner::new(&conf.name, &env.container_id, &env.ifname);
    let prev = match &conf.prev_result {
        Some(p) => Some(CniResult::from_json(p)?),
        None => None,
    };
    let held = ipam.held(conf, env);
    let ips: Vec<IpNet> = match (&prev, &held) {
        (Some(p), _) if !p.ips.is_empty() => p.ips.iter().map(|i| i.address).collect(),
        (_, Some(h)) => h.clone(),
        _ => return Err(CniError::new(code::INVALID_CONFIG, "CHECK needs a prevResult")),
    };
    if let Some(h) = &held {
        for ip in &ips {
            if !h.iter().any(|a| a.addr() == ip.addr()) {
                return Err(failed(format!("address {} is not allocated to {}", ip.addr(), env.container_id)));
            }
        }
    }

    let ns = Netns::open(&env.netns)?;
    let nsh = netlink::connect_in(&ns)?;
    let cif = netlink::link_by_name(&nsh, &env.ifname)
        .await?
        .ok_or_else(|| failed(format!("interface {} not found in {}", env.ifname, env.netns)))?;
    let have = netlink::addrs(&nsh, cif.index).await?;
    for ip in &ips {
        if !have.contains(ip) {
            return Err(failed(format!("address {ip} missing on {}", env.ifname)));
        }
    }
    if let Some(p) = &prev {
        let gw_of = |v6: bool| ips_gw(p, v6);
        for r in &p.routes {
            check_route(&nsh, cif.index, r, r.gw.or_else(|| gw_of(r.dst.addr().is_ipv6()))).await?;
        }
    }

    let host = netlink::connect()?;
    let bridge = netlink::link_by_name(&host, &conf.bridge)
        .await?
        .ok_or_else(|| failed(format!("bridge {} not found", conf.bridge)))?;
    let hveth = netlink::link_by_name(&host, &owner.host_veth())
        .await?
        .ok_or_else(|| failed(format!("host veth {} not found", owner.host_veth())))?;
    if hveth.controller != Some(bridge.index) {
        return Err(failed(format!("host veth {} is not on bridge {}", hveth.name, conf.bridge)));
    }

    if let (true, Ipam::HostLocal(h)) = (conf.ip_masq, &ipam) {
        if let Some(m) = masq::missing(&conf.name, h)? {
            return Err(failed(m));
        }
    }
    for (fam, rs) in rule_sets(&owner, ipam.masq_per_attachment(conf), &ports, ips.iter().copied()) {
        let table = NatTable::parse(&iptables::save_nat(fam)?);
        for c in &rs.chains {
            if !table.chains.contains(c) {
                return Err(failed(format!("{fam:?} nat chain {c} missing")));
            }
        }
        let comment = owner.comment();
        let n = table.rules.iter().filter(|r| NatTable::comment(r) == Some(comment.as_str())).count();
        let want = rs.chain_rules.len() + rs.builtin_rules.len();
        if n < want {
            return Err(failed(format!("{fam:?} nat rules of {} missing ({n} of {want})", env.container_id)));
        }
    }
    Ok(())
}

fn ips_gw(p: &CniResult, v6: bool) -> Option<IpAddr> {
    p.ips.iter().find(|i| i.address.addr().is_ipv6() == v6).and_then(|i| i.gateway)
}

async fn check_route(h: &rtnetlink::Handle, index: u32, r: &Route, gw: Option<IpAddr>) -> Result<(), CniError> {
    let routes = netlink::routes(h, r.dst.addr().is_ipv6()).await?;
    let found = routes.iter().any(|x| x.dst == r.dst && x.oif == Some(index) && (gw.is_none() || x.gw == gw));
    if found {
        Ok(())
    } else {
        Err(failed(format!("route to {} via {gw:?} missing", r.dst)))
    }
}
