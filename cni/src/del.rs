//! DEL: idempotent. Rules, the veth pair and the allocation of (container id, ifname) go,
//! whether or not the netns, the link or the allocation still exist.
//!
//! Synchronously, under the attachment's lock, the container interface loses its addresses
//! and goes down (or, with no netns to enter, the host veth goes down), so the address can
//! no longer answer on the bridge. The slow rest ([`teardown`]: rules and veth, then the
//! allocation) runs in a detached worker that keeps the lock (see `crate::teardown`).

use ipnet::IpNet;
use serde_json::Value;

use crate::add::rule_sets;
use crate::config::{validate_ports, Env, NetConf};
use crate::ipam::Ipam;
use crate::iptables::Family;
use crate::netlink;
use crate::netns::Netns;
use crate::rules::{self, Owner};
use crate::spec::{CniError, CniResult};
use crate::teardown::AttachmentLock;

pub async fn del(conf: &NetConf, raw: &Value, env: &Env) -> Result<(), CniError> {
    env.validate_attachment(false)?;
    Ipam::from_conf(conf)?;
    let owner = Owner::new(&conf.name, &env.container_id, &env.ifname);
    let lock = AttachmentLock::acquire(&owner)?;
    let quiesced = quiesce(env, &owner).await;
    if let Err(e) = quiesced {
        lock.release();
        return Err(e);
    }
    match crate::teardown::detach(raw, env, &lock) {
        Ok(()) => {
            lock.hand_over();
            Ok(())
        }
        // No worker: do it here, still under the lock.
        Err(_) => {
            let res = teardown(conf, raw, env).await;
            lock.release();
            res
        }
    }
}

/// Takes the addresses off CNI_IFNAME in the netns and sets it down; without a netns (or
/// that interface), sets the host veth down. Nothing there is fine.
async fn quiesce(env: &Env, owner: &Owner) -> Result<(), CniError> {
    if !env.netns.is_empty() {
        if let Ok(ns) = Netns::open(&env.netns) {
            let nsh = netlink::connect_in(&ns)?;
            if let Some(l) = netlink::link_by_name(&nsh, &env.ifname).await? {
                netlink::set_down(&nsh, l.index).await?;
                netlink::flush_addrs(&nsh, l.index).await?;
                return Ok(());
            }
        }
    }
    let host = netlink::connect()?;
    if let Some(l) = netlink::link_by_name(&host, &owner.host_veth()).await? {
        netlink::set_down(&host, l.index).await?;
    }
    Ok(())
}

/// The slow half of DEL (run by the detached worker, or inline when it can't start).
pub async fn teardown(conf: &NetConf, raw: &Value, env: &Env) -> Result<(), CniError> {
    let ipam = Ipam::from_conf(conf)?;
    let owner = Owner::new(&conf.name, &env.container_id, &env.ifname);
    // Invalid port mappings can't have been applied; whatever exists is found by comment.
    let ports = validate_ports(&conf.runtime_config.port_mappings).unwrap_or_default();

    // The rule batches run while the veth goes (the kernel takes ~25 ms for that); the
    // allocation is released only once the rules are gone, so a reused address never
    // inherits stale DNAT.
    let per_attachment_masq = ipam.masq_per_attachment(conf);
    let removal = if per_attachment_masq || !conf.runtime_config.port_mappings.is_empty() {
        let mut ips: Vec<IpNet> = ipam.held(conf, env).unwrap_or_default();
        if ips.is_empty() {
            if let Some(prev) = &conf.prev_result {
                if let Ok(r) = CniResult::from_json(prev) {
                    ips = r.ips.iter().map(|i| i.address).collect();
                }
            }
        }
        let expected = rule_sets(&owner, per_attachment_masq, &ports, ips.iter().copied());
        let mut fams: Vec<Family> = Vec::new();
        for (f, _) in &expected {
            if !fams.contains(f) {
                fams.push(*f);
            }
        }
        if fams.is_empty() {
            fams = vec![Family::V4, Family::V6];
        }
        Some(rules::start_remove(&owner, &expected, &fams))
    } else {
        None
    };

    let links = del_links(env, &owner).await;
    if let Some(r) = removal {
        r.finish()?;
    }
    links?;
    ipam.del(conf, raw, env)
}

async fn del_links(env: &Env, owner: &Owner) -> Result<(), CniError> {
    let host = netlink::connect()?;
    match netlink::link_by_name(&host, &owner.host_veth()).await? {
        Some(l) => netlink::del_link(&host, l.index).await?,
        None => del_in_netns(env).await?,
    }
    Ok(())
}

/// The host side is gone or renamed: remove CNI_IFNAME in the netns if it is a veth.
async fn del_in_netns(env: &Env) -> Result<(), CniError> {
    if env.netns.is_empty() {
        return Ok(());
    }
    let Ok(ns) = Netns::open(&env.netns) else {
        return Ok(());
    };
    let nsh = netlink::connect_in(&ns)?;
    if let Some(l) = netlink::link_by_name(&nsh, &env.ifname).await? {
        if l.kind == Some(rtnetlink::packet_route::link::InfoKind::Veth) {
            netlink::del_link(&nsh, l.index).await?;
        }
    }
    Ok(())
}
