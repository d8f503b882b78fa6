//! ADD: IPAM first, then bridge, veth, addresses and routes over netlink while the nat
//! rules' batch (one per family) runs. A failure half way undoes what this ADD did.

use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::Handle;
use serde_json::Value;

use crate::config::{validate_ports, Env, NetConf, Port};
use crate::ipam::Ipam;
use crate::iptables::Family;
use crate::lock::AttachmentLock;
use crate::netlink;
use crate::netns::Netns;
use crate::rules::{self, rule_sets, Owner, RuleSet};
use crate::spec::{code, CniError, CniResult, Interface, Route};
use crate::sysctl;

/// What an ADD has done so far, to undo on failure.
#[derive(Default)]
struct Progress {
    ipam: bool,
    veth: bool,
    rules: Vec<(Family, RuleSet)>,
}

/// Everything one ADD works with once the attachment is locked: the invocation, its
/// validated parts, and the netns with netlink handles in it and on the host.
struct AddContext<'a> {
    conf: &'a NetConf,
    raw: &'a Value,
    env: &'a Env,
    ipam: Ipam,
    ports: Vec<Port>,
    owner: Owner,
    // Dropped in this order (host, nsh, ns), the reverse of their opening.
    host: Handle,
    nsh: Handle,
    ns: Netns,
}

pub async fn add(conf: &NetConf, raw: &Value, env: &Env) -> Result<CniResult, CniError> {
    env.validate_attachment(true)?;
    let ports = validate_ports(&conf.runtime_config.port_mappings)?;
    let ipam = Ipam::from_conf(conf)?;
    // Waits for a teardown of this attachment still running (DEL's detached half).
    let lock = AttachmentLock::acquire(&Owner::new(&conf.name, &env.container_id, &env.ifname))?;
    let res = add_locked(conf, raw, env, ports, ipam).await;
    lock.release();
    res
}

async fn add_locked(
    conf: &NetConf,
    raw: &Value,
    env: &Env,
    ports: Vec<Port>,
    ipam: Ipam,
) -> Result<CniResult, CniError> {
    let cx = AddContext::open(conf, raw, env, ports, ipam).await?;
    let mut progress = Progress::default();
    match cx.run(&mut progress).await {
        Ok(r) => Ok(r),
        Err(e) => {
            cx.undo(progress).await;
            Err(e)
        }
    }
}

impl<'a> AddContext<'a> {
    /// Opens the netns and the netlink handles; CNI_IFNAME must not exist there yet.
    async fn open(
        conf: &'a NetConf,
        raw: &'a Value,
        env: &'a Env,
        ports: Vec<Port>,
        ipam: Ipam,
    ) -> Result<AddContext<'a>, CniError> {
        let ns = Netns::open(&env.netns)?;
        let nsh = netlink::connect_in(&ns)?;
        if netlink::link_by_name(&nsh, &env.ifname).await?.is_some() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME: interface {} already exists in {}", env.ifname, env.netns),
            ));
        }
        let host = netlink::connect()?;
        let owner = Owner::new(&conf.name, &env.container_id, &env.ifname);
        Ok(AddContext { conf, raw, env, ipam, ports, owner, host, nsh, ns })
    }

    async fn run(&self, progress: &mut Progress) -> Result<CniResult, CniError> {
        let conf = self.conf;
        let mut result = self.ipam.add(conf, self.raw, self.env)?;
        progress.ipam = true;
        if result.ips.is_empty() {
            return Err(CniError::new(code::INVALID_CONFIG, "IPAM returned no addresses"));
        }
        if conf.is_default_gateway {
            add_default_routes(&mut result)?;
        }
        // The nat rules depend only on the addresses: their batches run while netlink works.
        let sets = rule_sets(
            &self.owner,
            self.ipam.masq_per_attachment(conf),
            &self.ports,
            result.ips.iter().map(|i| i.address),
        );
        let pending = if sets.is_empty() {
            Vec::new()
        } else {
            progress.rules = sets.clone();
            rules::start_apply(&sets)
        };
        let linked = self.links(progress, &mut result).await;
        let applied = rules::finish(pending);
        linked?;
        applied?;
        Ok(result)
    }

    /// Bridge, veth, addresses, routes and sysctls; fills in the result's interfaces.
    async fn links(&self, progress: &mut Progress, result: &mut CniResult) -> Result<(), CniError> {
        let AddContext { conf, env, ns, host, nsh, owner, ports, .. } = self;
        let is_gw = conf.is_gateway || conf.is_default_gateway;

        let bridge = netlink::ensure_bridge(host, &conf.bridge, conf.mtu, conf.promisc_mode).await?;
        if is_gw {
            for ip in &result.ips {
                if let Some(gw) = ip.gateway {
                    let net = IpNet::new(gw, ip.address.prefix_len())
                        .map_err(|e| CniError::new(code::INTERNAL, e.to_string()))?;
                    netlink::add_addr(host, bridge.index, net, true).await?;
                }
            }
        }

        let host_name = owner.host_veth();
        netlink::create_veth(host, &host_name, &env.ifname, ns, conf.mtu, bridge.index).await?;
        progress.veth = true;
        let hveth = netlink::link_by_name(host, &host_name)
            .await?
            .ok_or_else(|| CniError::new(code::INTERNAL, format!("veth {host_name} vanished")))?;
        if conf.hairpin_mode {
            netlink::set_hairpin(host, hveth.index, true).await?;
        }
        let cif = netlink::link_by_name(nsh, &env.ifname)
            .await?
            .ok_or_else(|| CniError::new(code::INTERNAL, format!("{} vanished from {}", env.ifname, env.netns)))?;

        for ip in &result.ips {
            netlink::add_addr(nsh, cif.index, ip.address, false).await?;
        }
        netlink::set_up(nsh, cif.index).await?;
        let gw_of = |v6: bool| result.ips.iter().find(|i| i.address.addr().is_ipv6() == v6).and_then(|i| i.gateway);
        for r in &result.routes {
            let v6 = r.dst.addr().is_ipv6();
            let gw = r.gw.or_else(|| gw_of(v6));
            netlink::add_route(nsh, cif.index, r.dst, gw).await?;
        }

        let has_v4 = result.ips.iter().any(|i| i.address.addr().is_ipv4());
        let has_v6 = result.ips.iter().any(|i| i.address.addr().is_ipv6());
        if is_gw && has_v4 {
            sysctl::ensure("net.ipv4.ip_forward", "1")?;
        }
        if is_gw && has_v6 {
            sysctl::ensure("net.ipv6.conf.all.forwarding", "1")?;
        }
        if has_v4 && ports.iter().any(|p| p.host_ip.is_none_or(|h| h.is_ipv4())) {
            sysctl::ensure_iface("ipv4", &conf.bridge, "route_localnet", "1")?;
        }

        for ip in &mut result.ips {
            ip.interface = Some(2);
        }
        // The bridge takes its MAC from its first port: read it after attaching ours.
        let bridge_mac = match netlink::link_by_index(host, bridge.index).await? {
            Some(b) => b.mac,
            None => bridge.mac,
        };
        result.interfaces = vec![
            Interface { name: conf.bridge.clone(), mac: bridge_mac, sandbox: None },
            Interface { name: host_name, mac: hveth.mac, sandbox: None },
            Interface { name: env.ifname.clone(), mac: cif.mac, sandbox: Some(env.netns.clone()) },
        ];
        if result.dns.is_none() {
            result.dns = conf.dns.clone();
        }
        Ok(())
    }

    async fn undo(&self, p: Progress) {
        let AddContext { conf, raw, env, ipam, host, owner, .. } = self;
        if !p.rules.is_empty() {
            let fams: Vec<Family> = p.rules.iter().map(|(f, _)| *f).collect();
            let _ = rules::remove(owner, &p.rules, &fams);
        }
        if p.veth {
            if let Ok(Some(l)) = netlink::link_by_name(host, &owner.host_veth()).await {
                let _ = netlink::del_link(host, l.index).await;
            }
        }
        if p.ipam {
            let _ = ipam.del(conf, raw, env);
        }
    }
}

/// isDefaultGateway: a default route per family via that family's gateway.
fn add_default_routes(result: &mut CniResult) -> Result<(), CniError> {
    let mut add = Vec::new();
    for ip in &result.ips {
        let Some(gw) = ip.gateway else { continue };
        let dst: IpNet = match gw {
            IpAddr::V4(_) => "0.0.0.0/0".parse().map_err(|_| CniError::new(code::INTERNAL, "default route"))?,
            IpAddr::V6(_) => "::/0".parse().map_err(|_| CniError::new(code::INTERNAL, "default route"))?,
        };
        if let Some(r) = result.routes.iter().find(|r| r.dst == dst) {
            if r.gw.is_some_and(|g| g != gw) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("isDefaultGateway ineffective because IPAM sets default route via {:?}", r.gw),
                ));
            }
            continue;
        }
        if !add.iter().any(|r: &Route| r.dst == dst) {
            add.push(Route { dst, gw: Some(gw) });
        }
    }
    result.routes.extend(add);
    Ok(())
}
