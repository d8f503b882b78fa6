//! Links, addresses and routes over rtnetlink: one handle per namespace, one small
//! function per object.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::Netns;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request failed (what, error).
    #[error("{0}: {1}")]
    Netlink(String, rtnetlink::Error),
    /// Opening a netlink socket failed.
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] crate::netns::Error),
    /// A link is missing or of an unexpected kind.
    #[error("{0}")]
    Unexpected(String),
}

impl Error {
    /// The errno of a netlink error (positive), if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink(_, rtnetlink::Error::NetlinkError(m)) => m.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |e| Error::Netlink(what, e)
}

/// A netlink handle on the host's namespace; must be called inside a tokio runtime.
pub fn connect() -> Result<Handle, Error> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink handle whose socket lives in `ns`.
pub fn connect_in(ns: &Netns) -> Result<Handle, Error> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = ns
        .run(move || {
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })?
        .map_err(Error::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// What we need to know about a link.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub controller: Option<u32>,
    pub kind: Option<InfoKind>,
    pub up: bool,
}

fn mac_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

impl Link {
    fn from_msg(m: LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: String::new(),
            controller: None,
            kind: None,
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n,
                LinkAttribute::Address(b) => l.mac = mac_string(&b),
                LinkAttribute::Controller(c) => l.controller = Some(c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k);
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const ESRCH: i32 = 3;
const EADDRNOTAVAIL: i32 = 99;

/// The link named `name`, or None.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<Link>, Error> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m.map(Link::from_msg)),
        Err(e) => {
            let err = Error::Netlink(format!("get link {name}"), e);
            if err.errno() == Some(ENODEV) {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

pub async fn link_by_index(h: &Handle, index: u32) -> Result<Option<Link>, Error> {
    let mut s = h.link().get().match_index(index).execute();
    match s.try_next().await {
        Ok(m) => Ok(m.map(Link::from_msg)),
        Err(e) => {
            let err = Error::Netlink(format!("get link {index}"), e);
            if err.errno() == Some(ENODEV) {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// Finds or creates the bridge `name` and brings it up.
pub async fn ensure_bridge(h: &Handle, name: &str, mtu: Option<u32>, promisc: bool) -> Result<Link, Error> {
    if link_by_name(h, name).await?.is_none() {
        let mut b = LinkBridge::new(name).up();
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        if promisc {
            b = b.promiscuous(true);
        }
        if let Err(e) = h.link().add(b.build()).execute().await {
            let err = Error::Netlink(format!("create bridge {name}"), e);
            if err.errno() != Some(EEXIST) {
                return Err(err);
            }
        }
    }
    let link = link_by_name(h, name).await?.ok_or_else(|| Error::Unexpected(format!("bridge {name} vanished")))?;
    if link.kind != Some(InfoKind::Bridge) {
        return Err(Error::Unexpected(format!("{name} already exists but is not a bridge")));
    }
    if !link.up || promisc {
        let mut m = LinkUnspec::new_with_index(link.index).up();
        if promisc {
            m = m.promiscuous(true);
        }
        h.link().set(m.build()).execute().await.map_err(nl(format!("set bridge {name} up")))?;
    }
    Ok(link)
}

/// Creates a veth pair: `host_name` on `bridge` in the host, `peer_name` inside `ns`; both up.
pub async fn create_veth(
    h: &Handle,
    host_name: &str,
    peer_name: &str,
    ns: &Netns,
    mtu: Option<u32>,
    bridge: u32,
) -> Result<(), Error> {
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(peer_name.to_string()).setns_by_fd(ns.raw_fd());
    if let Some(mtu) = mtu {
        peer = peer.mtu(mtu);
    }
    let mut veth = LinkVeth::new(host_name, peer_name).controller(bridge).up();
    if let Some(mtu) = mtu {
        veth = veth.mtu(mtu);
    }
    // One tx and one rx queue on each end, as the kernel would settle on anyway: left unset,
    // veth allocates a queue per CPU and then trims them, and each trim waits for an RCU grace
    // period while holding the rtnl lock that every other pod's network setup needs.
    let mut peer = peer.build();
    peer.attributes.extend([LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)]);
    let mut msg = veth.set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).build();
    msg.attributes.extend([LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)]);
    h.link().add(msg).execute().await.map_err(nl(format!("create veth {host_name}/{peer_name}")))
}

pub async fn set_hairpin(h: &Handle, index: u32, on: bool) -> Result<(), Error> {
    h.link()
        .set_port(LinkBridgePort::new(index).hairpin(on).build())
        .execute()
        .await
        .map_err(nl(format!("set hairpin on link {index}")))
}

pub async fn set_up(h: &Handle, index: u32) -> Result<(), Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("set link {index} up")))
}

/// Renames a link that is down. Gone already (ENODEV) is not an error.
pub async fn rename(h: &Handle, index: u32, name: &str) -> Result<(), Error> {
    match h.link().set(LinkUnspec::new_with_index(index).name(name.to_string()).build()).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = Error::Netlink(format!("rename link {index} to {name}"), e);
            if err.errno() == Some(ENODEV) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

pub async fn set_down(h: &Handle, index: u32) -> Result<(), Error> {
    match h.link().set(LinkUnspec::new_with_index(index).down().build()).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = Error::Netlink(format!("set link {index} down"), e);
            if err.errno() == Some(ENODEV) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

/// Removes every address of a link; addresses or a link already gone are fine.
pub async fn flush_addrs(h: &Handle, index: u32) -> Result<(), Error> {
    let mut s = h.address().get().set_link_index_filter(index).execute();
    let mut msgs = Vec::new();
    while let Some(m) = s.try_next().await.map_err(nl("list addresses"))? {
        if m.header.index == index {
            msgs.push(m);
        }
    }
    for m in msgs {
        if let Err(e) = h.address().del(m).execute().await {
            let err = Error::Netlink(format!("delete an address of link {index}"), e);
            if !matches!(err.errno(), Some(ENODEV) | Some(EADDRNOTAVAIL)) {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Deletes a link; a missing link is fine.
pub async fn del_link(h: &Handle, index: u32) -> Result<(), Error> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = Error::Netlink(format!("delete link {index}"), e);
            if err.errno() == Some(ENODEV) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

/// Adds `addr` (address/prefix) to a link, without duplicate address detection.
/// An address already present is fine when `ok_if_exists`.
pub async fn add_addr(h: &Handle, index: u32, addr: IpNet, ok_if_exists: bool) -> Result<(), Error> {
    let mut req = h.address().add(index, addr.addr(), addr.prefix_len());
    if addr.addr().is_ipv6() {
        req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = Error::Netlink(format!("add address {addr} to link {index}"), e);
            if ok_if_exists && err.errno() == Some(EEXIST) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

/// Addresses (with prefix) on a link.
pub async fn addrs(h: &Handle, index: u32) -> Result<Vec<IpNet>, Error> {
    let mut s = h.address().get().set_link_index_filter(index).execute();
    let mut out = Vec::new();
    while let Some(m) = s.try_next().await.map_err(nl("list addresses"))? {
        if m.header.index != index {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Address(ip) = a {
                if let Ok(n) = IpNet::new(*ip, m.header.prefix_len) {
                    out.push(n);
                }
            }
        }
    }
    Ok(out)
}

/// Adds a route through link `index`, via `gw` when given.
pub async fn add_route(h: &Handle, index: u32, dst: IpNet, gw: Option<IpAddr>) -> Result<(), Error> {
    let what = format!("add route {dst} via {gw:?}");
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(|e| Error::Unexpected(format!("{what}: {e}")))?
        .output_interface(index);
    match gw {
        Some(gw) => b = b.gateway(gw).map_err(|e| Error::Unexpected(format!("{what}: {e}")))?,
        None => b = b.scope(RouteScope::Link),
    }
    h.route().add(b.build()).execute().await.map_err(nl(what))
}

/// A route as read back: destination, gateway, output interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn route_info(m: &RouteMessage, v6: bool) -> Option<RouteInfo> {
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => gw = route_addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) });
    Some(RouteInfo { dst: IpNet::new(dst, m.header.destination_prefix_length).ok()?, gw, oif })
}

/// Routes of the main table of one family.
pub async fn routes(h: &Handle, v6: bool) -> Result<Vec<RouteInfo>, Error> {
    let msg = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let mut s = h.route().get(msg).execute();
    let mut out = Vec::new();
    while let Some(m) = s.try_next().await.map_err(nl("list routes"))? {
        if let Some(r) = route_info(&m, v6) {
            out.push(r);
        }
    }
    Ok(out)
}

/// True for errors that mean "no such process/device" (already gone).
pub fn is_gone(e: &Error) -> bool {
    matches!(e.errno(), Some(ENODEV) | Some(ESRCH))
}
