//! The nat rules of one attachment: hostPort DNAT (portMappings) and, when the IPAM is
//! delegated (its subnets unknown), masquerade (ipMasq; host-local networks share one set,
//! see `crate::ipam::masq`),
//! in per-attachment chains named from a hash of (network, container id, ifname), every
//! rule commented with `corral-cni <network> <container id> <ifname>`.
//!
//! Jumps go straight from the built-in chains, so concurrent ADDs never race to create a
//! shared chain; each ADD and DEL is one `iptables-restore --noflush` transaction.

use std::collections::BTreeSet;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::Port;
use crate::iptables::{self, Family, NatTable};

pub const COMMENT_PREFIX: &str = "corral-cni";
const CHAIN_PREFIX: &str = "CORRAL-";

/// Identifies an attachment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub net: String,
    pub id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(net: &str, id: &str, ifname: &str) -> Owner {
        Owner { net: net.into(), id: id.into(), ifname: ifname.into() }
    }

    pub fn hash(&self) -> String {
        let d = Sha256::digest(format!("{}\0{}\0{}", self.net, self.id, self.ifname).as_bytes());
        hex::encode(&d[..8])
    }

    pub fn comment(&self) -> String {
        format!("{COMMENT_PREFIX} {} {} {}", self.net, self.id, self.ifname)
    }

    /// Parses a rule comment back into its owner.
    pub fn from_comment(c: &str) -> Option<Owner> {
        let mut it = c.split(' ');
        if it.next()? != COMMENT_PREFIX {
            return None;
        }
        let o = Owner::new(it.next()?, it.next()?, it.next()?);
        it.next().is_none().then_some(o)
    }

    pub fn masq_chain(&self) -> String {
        format!("{CHAIN_PREFIX}MASQ-{}", self.hash())
    }

    pub fn dnat_chain(&self) -> String {
        format!("{CHAIN_PREFIX}DNAT-{}", self.hash())
    }

    /// The host-side veth name: deterministic, so DEL finds it without the netns.
    pub fn host_veth(&self) -> String {
        format!("veth{}", &self.hash()[..11])
    }

    /// The name the pod-side interface takes between DEL and its deletion by the worker.
    pub fn retired_ifname(&self) -> String {
        format!("del{}", &self.hash()[..11])
    }
}

/// The rules of one attachment in one family.
#[derive(Debug, Default, Clone)]
pub struct RuleSet {
    pub chains: Vec<String>,
    pub chain_rules: Vec<String>,
    pub builtin_rules: Vec<String>,
}

impl RuleSet {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.builtin_rules.is_empty()
    }

    /// One address `ip` (with its subnet prefix) of the container.
    pub fn build(owner: &Owner, ip: IpNet, masq: bool, ports: &[Port]) -> RuleSet {
        let mut rs = RuleSet::default();
        let c = format!("-m comment --comment \"{}\"", owner.comment());
        let v6 = ip.addr().is_ipv6();
        let host = IpNet::new(ip.addr(), ip.max_prefix_len()).unwrap_or(ip);
        let subnet = ip.trunc();
        if masq {
            let chain = owner.masq_chain();
            let mcast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
            rs.chain_rules.push(format!("-A {chain} -d {subnet} {c} -j RETURN"));
            rs.chain_rules.push(format!("-A {chain} ! -d {mcast} {c} -j MASQUERADE"));
            rs.builtin_rules.push(format!("-A POSTROUTING -s {host} {c} -j {chain}"));
            rs.chains.push(chain);
        }
        let ports: Vec<&Port> = ports.iter().filter(|p| p.host_ip.is_none_or(|h| h.is_ipv6() == v6)).collect();
        if !ports.is_empty() {
            let chain = owner.dnat_chain();
            for p in ports {
                let dst = p.host_ip.map(|h| format!("-d {h} ")).unwrap_or_default();
                let to = if v6 {
                    format!("[{}]:{}", ip.addr(), p.container_port)
                } else {
                    format!("{}:{}", ip.addr(), p.container_port)
                };
                rs.chain_rules.push(format!(
                    "-A {chain} {dst}-p {proto} -m {proto} --dport {hp} {c} -j DNAT --to-destination {to}",
                    proto = p.proto,
                    hp = p.host_port
                ));
            }
            rs.builtin_rules.push(format!("-A PREROUTING -m addrtype --dst-type LOCAL {c} -j {chain}"));
            rs.builtin_rules.push(format!("-A OUTPUT -m addrtype --dst-type LOCAL {c} -j {chain}"));
            if !v6 {
                // From the host itself (127.0.0.1 via route_localnet): the pod can't answer 127/8.
                rs.builtin_rules.push(format!("-A POSTROUTING -s 127.0.0.0/8 -d {host} {c} -j MASQUERADE"));
            }
            // Hairpin and other pods of the subnet reaching the hostPort.
            rs.builtin_rules
                .push(format!("-A POSTROUTING -s {subnet} -d {host} -m conntrack --ctstate DNAT {c} -j MASQUERADE"));
            rs.chains.push(chain);
        }
        rs
    }

    /// Batch lines creating the set (a re-ADD replaces chain contents).
    pub fn add_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.chains.iter().map(|c| format!(":{c} - [0:0]")).collect();
        out.extend(self.chain_rules.iter().cloned());
        out.extend(self.builtin_rules.iter().cloned());
        out
    }

    /// Batch lines deleting the set (fails as a whole if any rule is missing).
    pub fn del_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.builtin_rules.iter().map(|r| format!("-D{}", &r[2..])).collect();
        for c in &self.chains {
            out.push(format!("-F {c}"));
            out.push(format!("-X {c}"));
        }
        out
    }
}

/// The rule sets of an attachment with addresses `ips`.
pub fn rule_sets(
    owner: &Owner,
    masq: bool,
    ports: &[Port],
    ips: impl Iterator<Item = IpNet>,
) -> Vec<(Family, RuleSet)> {
    if !masq && ports.is_empty() {
        return Vec::new();
    }
    ips.map(|ip| {
        let fam = if ip.addr().is_ipv6() { Family::V6 } else { Family::V4 };
        (fam, RuleSet::build(owner, ip, masq, ports))
    })
    .filter(|(_, rs)| !rs.is_empty())
    .collect()
}

/// Lines deleting whatever the saved table holds for `owners` (by comment and chain name).
pub fn del_lines_from_table(table: &NatTable, owners: &[Owner]) -> Vec<String> {
    let comments: BTreeSet<String> = owners.iter().map(Owner::comment).collect();
    let chains: BTreeSet<String> = owners.iter().flat_map(|o| [o.masq_chain(), o.dnat_chain()]).collect();
    del_lines_matching(table, &comments, &chains)
}

/// Lines deleting the rules with one of `comments` outside `chains`, then flushing and
/// deleting those of `chains` the table has.
pub fn del_lines_matching(table: &NatTable, comments: &BTreeSet<String>, chains: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for r in &table.rules {
        let chain = r.split_whitespace().nth(1).unwrap_or_default();
        if chains.contains(chain) {
            continue; // flushed below
        }
        if NatTable::comment(r).is_some_and(|c| comments.contains(c)) {
            out.push(format!("-D{}", &r[2..]));
        }
    }
    for c in &table.chains {
        if chains.contains(c) {
            out.push(format!("-F {c}"));
            out.push(format!("-X {c}"));
        }
    }
    out
}

/// Owners of network `net` that have rules in the saved table.
pub fn owners_in_table(table: &NatTable, net: &str) -> BTreeSet<Owner> {
    table
        .rules
        .iter()
        .filter_map(|r| NatTable::comment(r).and_then(Owner::from_comment))
        .filter(|o| o.net == net)
        .collect()
}

/// Starts applying per-family rule sets, one batch per family, the families in parallel.
pub fn start_apply(sets: &[(Family, RuleSet)]) -> Vec<Result<iptables::Pending, iptables::Error>> {
    [Family::V4, Family::V6]
        .into_iter()
        .map(|fam| {
            let lines: Vec<String> =
                sets.iter().filter(|(f, _)| *f == fam).flat_map(|(_, rs)| rs.add_lines()).collect();
            iptables::spawn_restore(fam, &lines)
        })
        .collect()
}

/// Waits for every batch; the first error wins.
pub fn finish(pending: Vec<Result<iptables::Pending, iptables::Error>>) -> Result<(), iptables::Error> {
    let mut first = Ok(());
    for p in pending {
        let r = p.and_then(iptables::Pending::wait);
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// Applies per-family rule sets, one batch per family.
pub fn apply(sets: &[(Family, RuleSet)]) -> Result<(), iptables::Error> {
    finish(start_apply(sets))
}

/// Removal of one owner's rules in flight: the exact batches per family.
pub struct Removal {
    owner: Owner,
    started: Vec<(Family, Result<iptables::Pending, iptables::Error>)>,
    fallback: Vec<Family>,
}

/// Starts removing the rules of `owner`: the exact batch for `expected` per family (one
/// process each, in parallel). [`Removal::finish`] falls back to what iptables-save shows
/// for a family whose batch failed (rules partly gone) or that had no expected rules.
pub fn start_remove(owner: &Owner, expected: &[(Family, RuleSet)], families: &[Family]) -> Removal {
    let mut started = Vec::new();
    let mut fallback = Vec::new();
    for &fam in families {
        let lines: Vec<String> =
            expected.iter().filter(|(f, _)| *f == fam).flat_map(|(_, rs)| rs.del_lines()).collect();
        if lines.is_empty() {
            fallback.push(fam);
        } else {
            started.push((fam, iptables::spawn_restore(fam, &lines)));
        }
    }
    Removal { owner: owner.clone(), started, fallback }
}

impl Removal {
    pub fn finish(self) -> Result<(), iptables::Error> {
        let mut fallback = self.fallback;
        for (fam, p) in self.started {
            if p.and_then(iptables::Pending::wait).is_err() {
                fallback.push(fam);
            }
        }
        for fam in fallback {
            remove_saved(fam, std::slice::from_ref(&self.owner))?;
        }
        Ok(())
    }
}

/// Removes the rules of `owner` (see [`start_remove`]).
pub fn remove(owner: &Owner, expected: &[(Family, RuleSet)], families: &[Family]) -> Result<(), iptables::Error> {
    start_remove(owner, expected, families).finish()
}

/// Removes the rules of `owners` found in the current table of `fam`.
pub fn remove_saved(fam: Family, owners: &[Owner]) -> Result<(), iptables::Error> {
    let table = NatTable::parse(&iptables::save_nat(fam)?);
    let lines = del_lines_from_table(&table, owners);
    iptables::restore_nat(fam, &lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_comments() {
        let o = Owner::new("net", "abc", "eth0");
        assert_eq!(o.masq_chain().len(), 28);
        assert!(o.host_veth().len() <= 15);
        assert_eq!(Owner::from_comment(&o.comment()), Some(o.clone()));
        assert_eq!(Owner::from_comment("other thing"), None);
    }

    #[test]
    fn build_rules() {
        let o = Owner::new("net", "abc", "eth0");
        let ports = [Port { host_port: 8080, container_port: 80, proto: "tcp", host_ip: None }];
        let rs = RuleSet::build(&o, "10.1.0.5/24".parse().unwrap(), true, &ports);
        assert_eq!(rs.chains.len(), 2);
        assert!(rs.chain_rules.iter().any(|r| r.contains("--to-destination 10.1.0.5:80")));
        assert!(rs.builtin_rules.iter().any(|r| r.starts_with("-A POSTROUTING -s 10.1.0.5/32")));
        assert!(rs.del_lines()[0].starts_with("-D POSTROUTING"));
        let rs6 = RuleSet::build(&o, "fd00:1::5/64".parse().unwrap(), false, &ports);
        assert!(rs6.chain_rules[0].contains("[fd00:1::5]:80"));
        let saved = format!(
            ":POSTROUTING ACCEPT [0:0]\n:{c} - [0:0]\n-A POSTROUTING -s 10.1.0.5/32 -m comment --comment \"{m}\" -j {c}\n-A {c} -d 10.1.0.0/24 -m comment --comment \"{m}\" -j ACCEPT\n",
            c = o.masq_chain(),
            m = o.comment()
        );
        let t = NatTable::parse(&saved);
        let lines = del_lines_from_table(&t, std::slice::from_ref(&o));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(owners_in_table(&t, "net").into_iter().collect::<Vec<_>>(), vec![o]);
    }
}
