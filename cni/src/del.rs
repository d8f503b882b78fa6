//! DEL: idempotent. Rules, the veth pair and the allocation of (container id, ifname) go,
//! whether or not the netns, the link or the allocation still exist.
//!
//! Synchronously, under the attachment's lock, the container interface loses its addresses
//! and goes down (or, with no netns to enter, the host veth goes down), so the address can
//! no longer answer on the bridge. The slow rest ([`teardown::run`]: rules and veth, then
//! the allocation) runs in a detached worker that keeps the lock (see `crate::teardown`).

use serde_json::Value;

use crate::config::{Env, NetConf};
use crate::ipam::Ipam;
use crate::lock::AttachmentLock;
use crate::netlink;
use crate::netns::Netns;
use crate::rules::Owner;
use crate::spec::CniError;
use crate::teardown;

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
    match teardown::detach(raw, env, &lock) {
        Ok(()) => {
            lock.hand_over();
            Ok(())
        }
        // No worker: do it here, still under the lock.
        Err(_) => {
            let res = teardown::run(conf, raw, env).await;
            lock.release();
            res
        }
    }
}

/// Takes the addresses off CNI_IFNAME in the netns, sets it down and renames it out of the
/// way (so the name is free for an ADD into the same netns the moment DEL returns, while the
/// worker deletes the pair by its host side); without a netns (or that interface), sets the
/// host veth down. Nothing there is fine.
async fn quiesce(env: &Env, owner: &Owner) -> Result<(), CniError> {
    if !env.netns.is_empty() {
        if let Ok(ns) = Netns::open(&env.netns) {
            let nsh = netlink::connect_in(&ns)?;
            if let Some(l) = netlink::link_by_name(&nsh, &env.ifname).await? {
                netlink::set_down(&nsh, l.index).await?;
                netlink::flush_addrs(&nsh, l.index).await?;
                netlink::rename(&nsh, l.index, &owner.retired_ifname()).await?;
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
