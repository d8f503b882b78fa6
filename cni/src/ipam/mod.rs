//! IPAM: `host-local` built in, any other type delegated to the plugin binary of that name.

pub mod delegate;
pub mod host_local;
pub mod masq;
pub mod store;

use serde_json::Value;

use crate::config::{Env, NetConf};
use crate::spec::{code, CniError, CniResult};
use host_local::HostLocal;
use store::Store;

pub enum Ipam {
    HostLocal(HostLocal),
    Delegate(String),
}

impl Ipam {
    pub fn from_conf(conf: &NetConf) -> Result<Ipam, CniError> {
        let ipam = conf.ipam.as_ref().ok_or_else(|| CniError::new(code::INVALID_CONFIG, "missing ipam config"))?;
        match conf.ipam_type() {
            Some("host-local") => Ok(Ipam::HostLocal(HostLocal::parse(ipam)?)),
            Some(t) if !t.is_empty() && !t.contains('/') => Ok(Ipam::Delegate(t.to_string())),
            _ => Err(CniError::new(code::INVALID_CONFIG, "missing or invalid ipam type")),
        }
    }

    /// Whether ipMasq is one rule set per attachment; for host-local it is one per network
    /// (see [`masq`]), installed and removed here, under the allocation-store lock.
    pub fn masq_per_attachment(&self, conf: &NetConf) -> bool {
        conf.ip_masq && !matches!(self, Ipam::HostLocal(_))
    }

    /// ADD: addresses, gateways and routes for the attachment.
    pub fn add(&self, conf: &NetConf, raw: &Value, env: &Env) -> Result<CniResult, CniError> {
        match self {
            Ipam::HostLocal(h) => {
                let store = Store::lock(&h.data_dir, &conf.name).map_err(host_local::io)?;
                let ips = h.allocate(&store, &env.container_id, &env.ifname)?;
                if conf.ip_masq {
                    if let Err(e) = masq::ensure(&conf.name, h) {
                        let _ = store.release_by_id(&env.container_id, &env.ifname);
                        // A family's half may be in place (one transaction per family).
                        if store.holds_any().is_ok_and(|any| !any) {
                            let _ = masq::remove(&conf.name, h, true);
                        }
                        return Err(e);
                    }
                }
                Ok(CniResult { ips, routes: h.routes.clone(), ..Default::default() })
            }
            Ipam::Delegate(t) => {
                let out = delegate::exec(t, "ADD", raw, env)?;
                let v: Value = serde_json::from_slice(&out)
                    .map_err(|e| CniError::new(code::DECODE, format!("ipam plugin {t}: invalid result: {e}")))?;
                CniResult::from_json(&v)
            }
        }
    }

    /// DEL: releases everything of (container id, ifname); succeeds when nothing is held.
    pub fn del(&self, conf: &NetConf, raw: &Value, env: &Env) -> Result<(), CniError> {
        match self {
            Ipam::HostLocal(h) => {
                if let Some(store) = Store::lock_existing(&h.data_dir, &conf.name).map_err(host_local::io)? {
                    store.release_by_id(&env.container_id, &env.ifname).map_err(host_local::io)?;
                    // The network's masquerade goes with its last address.
                    if !store.holds_any().map_err(host_local::io)? {
                        masq::remove(&conf.name, h, false)?;
                    }
                }
                Ok(())
            }
            Ipam::Delegate(t) => delegate::exec(t, "DEL", raw, env).map(|_| ()),
        }
    }

    /// The addresses (with their subnet prefix) held by (container id, ifname), when the
    /// IPAM can tell.
    pub fn held(&self, conf: &NetConf, env: &Env) -> Option<Vec<ipnet::IpNet>> {
        match self {
            Ipam::HostLocal(h) => {
                let store = Store::lock_existing(&h.data_dir, &conf.name).ok()??;
                let ips = store.get_by_id(&env.container_id, &env.ifname).ok()?;
                Some(ips.into_iter().filter_map(|ip| h.with_prefix(ip)).collect())
            }
            Ipam::Delegate(_) => None,
        }
    }
}
