//! GC: everything of this network that belongs to an attachment missing from
//! `cni.dev/valid-attachments` goes: allocations, nat rules and host veths.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

use crate::config::{Attachment, Env, NetConf};
use crate::ipam::host_local::{self, HostLocal};
use crate::ipam::store::Store;
use crate::ipam::{delegate, masq, Ipam};
use crate::iptables::{self, Family, NatTable};
use crate::netlink;
use crate::rules::{self, Owner};
use crate::spec::{code, CniError};

pub async fn gc(conf: &NetConf, raw: &Value, env: &Env) -> Result<(), CniError> {
    let valid: HashSet<Attachment> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "GC needs cni.dev/valid-attachments"))?
        .iter()
        .cloned()
        .collect();
    let is_valid = |o: &Owner| valid.contains(&Attachment { container_id: o.id.clone(), ifname: o.ifname.clone() });
    let mut stale: BTreeSet<Owner> = BTreeSet::new();

    match Ipam::from_conf(conf)? {
        Ipam::HostLocal(h) => stale.extend(gc_host_local(&h, conf, &is_valid)?),
        Ipam::Delegate(t) => {
            delegate::exec(&t, "GC", raw, env)?;
        }
    }

    for fam in [Family::V4, Family::V6] {
        let table = NatTable::parse(&iptables::save_nat(fam)?);
        let owners: Vec<Owner> =
            rules::owners_in_table(&table, &conf.name).into_iter().filter(|o| !is_valid(o)).collect();
        let lines = rules::del_lines_from_table(&table, &owners);
        iptables::restore_nat(fam, &lines)?;
        stale.extend(owners);
    }

    let host = netlink::connect()?;
    for o in &stale {
        if let Some(l) = netlink::link_by_name(&host, &o.host_veth()).await? {
            netlink::del_link(&host, l.index).await?;
        }
    }
    Ok(())
}

/// Releases the allocations of stale attachments; then, still under the store's lock, the
/// network's masquerade set goes if no allocation is left, else it is checked against the
/// live table and restored where something removed it.
fn gc_host_local(h: &HostLocal, conf: &NetConf, is_valid: &dyn Fn(&Owner) -> bool) -> Result<Vec<Owner>, CniError> {
    let net = conf.name.as_str();
    // No store, no allocation ever, nothing installed: and without its lock a removal here
    // could race the network's first ADD.
    let Some(store) = Store::lock_existing(&h.data_dir, net).map_err(host_local::io)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut left = 0;
    for a in store.list().map_err(host_local::io)? {
        let o = Owner::new(net, &a.id, &a.ifname);
        if is_valid(&o) {
            left += 1;
        } else {
            store.release(a.ip).map_err(host_local::io)?;
            out.push(o);
        }
    }
    if left == 0 {
        masq::remove(net, h, true)?;
    } else if conf.ip_masq {
        masq::repair(net, h)?;
    }
    Ok(out)
}
