//! ipMasq of a host-local network: one rule set per network and address family that covers
//! the network's subnets, present while the network holds at least one allocation, instead
//! of one chain per attachment.
//!
//! Why: every `iptables-restore` is a process and an nf_tables transaction (about 2.5 ms to
//! add a chain and its rules, 10-15 ms to delete them on a 2-core VM), and with per-attachment
//! rules each ADD and each DEL paid one while contending with the others. Now the first ADD
//! of a network installs the set and the teardown that releases its last address removes it;
//! the pods in between touch no iptables unless they have hostPorts.
//!
//! Both happen under the network's allocation-store lock, so installing and removing never
//! race. A marker in /run (gone after a reboot, like the rules) records the installed set, so
//! an ADD that finds it current runs nothing. GC, which corrald runs periodically, checks the
//! live table instead and restores a set removed behind our back (e.g. by a firewall reload).
//!
//! Rules, per family (comment `corral-cni <network> masquerade`):
//!   -A POSTROUTING -s <subnet> -j CORRAL-NET-<hash>      (one per subnet)
//!   -A CORRAL-NET-<hash> -d <subnet> -j RETURN           (one per subnet)
//!   -A CORRAL-NET-<hash> ! -d <multicast> -j MASQUERADE

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::host_local::HostLocal;
use crate::errors::io;
use crate::iptables::{self, Family, NatTable};
use crate::rules::{self, COMMENT_PREFIX};
use crate::spec::{code, CniError};

/// Where the markers of installed sets live (tmpfs: rules do not survive a reboot either).
pub const MARKER_DIR: &str = "/run/corral-cni/masq";

pub fn comment(net: &str) -> String {
    format!("{COMMENT_PREFIX} {net} masquerade")
}

pub fn chain(net: &str) -> String {
    let d = Sha256::digest(net.as_bytes());
    format!("CORRAL-NET-{}", hex::encode(&d[..8]))
}

/// The network's subnets of one family, each once.
fn subnets(h: &HostLocal, fam: Family) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for r in h.range_sets.iter().flatten() {
        let s = r.subnet.trunc();
        if s.addr().is_ipv6() == (fam == Family::V6) && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Batch lines creating the set of one family (empty when the network has no subnet of it).
pub fn add_lines(net: &str, h: &HostLocal, fam: Family) -> Vec<String> {
    let subnets = subnets(h, fam);
    if subnets.is_empty() {
        return Vec::new();
    }
    let chain = chain(net);
    let c = format!("-m comment --comment \"{}\"", comment(net));
    let mcast = if fam == Family::V6 { "ff00::/8" } else { "224.0.0.0/4" };
    let mut out = vec![format!(":{chain} - [0:0]")];
    for s in &subnets {
        out.push(format!("-A {chain} -d {s} {c} -j RETURN"));
    }
    out.push(format!("-A {chain} ! -d {mcast} {c} -j MASQUERADE"));
    for s in &subnets {
        out.push(format!("-A POSTROUTING -s {s} {c} -j {chain}"));
    }
    out
}

/// Batch lines deleting whatever of the network's set the saved table holds.
fn del_lines(net: &str, table: &NatTable) -> Vec<String> {
    rules::del_lines_matching(table, &BTreeSet::from([comment(net)]), &BTreeSet::from([chain(net)]))
}

/// Whether the saved table holds the whole set `want` (its `-A` lines).
fn complete(table: &NatTable, want: &[String]) -> bool {
    want.iter().filter(|l| l.starts_with("-A ")).all(|l| table.rules.iter().any(|r| r == l))
}

/// The marker of the network `net` with host-local data dir `data_dir`.
pub fn marker_path(data_dir: &Path, net: &str) -> PathBuf {
    let d = Sha256::digest(format!("{}\0{net}", data_dir.display()).as_bytes());
    Path::new(MARKER_DIR).join(hex::encode(&d[..8]))
}

fn ipt(e: iptables::Error) -> CniError {
    CniError::new(code::INTERNAL, format!("network masquerade rules: {e}"))
}

fn want_text(net: &str, h: &HostLocal) -> String {
    [Family::V4, Family::V6].iter().flat_map(|f| add_lines(net, h, *f)).collect::<Vec<_>>().join("\n")
}

/// Installs the network's set unless the marker says it is there. The caller holds the
/// network's allocation-store lock.
pub fn ensure(net: &str, h: &HostLocal) -> Result<(), CniError> {
    let m = marker_path(&h.data_dir, net);
    let want = want_text(net, h);
    if std::fs::read_to_string(&m).is_ok_and(|have| have == want) {
        return Ok(());
    }
    install(net, h, false)?;
    write_marker(&m, &want)
}

/// Checks the live table and (re)installs the set where it is incomplete; for GC. The
/// caller holds the network's allocation-store lock.
pub fn repair(net: &str, h: &HostLocal) -> Result<(), CniError> {
    install(net, h, true)?;
    write_marker(&marker_path(&h.data_dir, net), &want_text(net, h))
}

fn write_marker(m: &Path, text: &str) -> Result<(), CniError> {
    std::fs::create_dir_all(MARKER_DIR).map_err(io(MARKER_DIR))?;
    std::fs::write(m, text).map_err(io(m.display()))
}

/// Replaces whatever the table holds of the set with the current one, one transaction per
/// family; with `only_if_incomplete`, leaves a family alone whose set is whole.
fn install(net: &str, h: &HostLocal, only_if_incomplete: bool) -> Result<(), CniError> {
    for fam in [Family::V4, Family::V6] {
        let add = add_lines(net, h, fam);
        if add.is_empty() {
            continue;
        }
        let table = NatTable::parse(&iptables::save_nat(fam).map_err(ipt)?);
        if only_if_incomplete && complete(&table, &add) {
            continue;
        }
        let mut lines = del_lines(net, &table);
        lines.extend(add);
        iptables::restore_nat(fam, &lines).map_err(ipt)?;
    }
    Ok(())
}

/// Removes the network's set if installed (by the marker) or if `force`. The caller holds
/// the network's allocation-store lock and has seen it hold no allocation.
pub fn remove(net: &str, h: &HostLocal, force: bool) -> Result<(), CniError> {
    let m = marker_path(&h.data_dir, net);
    if !force && !m.exists() {
        return Ok(());
    }
    for fam in [Family::V4, Family::V6] {
        if add_lines(net, h, fam).is_empty() && !force {
            continue;
        }
        let table = match iptables::save_nat(fam) {
            Ok(t) => NatTable::parse(&t),
            // No ip6tables on this host: nothing of ours can be there.
            Err(_) if force => continue,
            Err(e) => return Err(ipt(e)),
        };
        iptables::restore_nat(fam, &del_lines(net, &table)).map_err(ipt)?;
    }
    match std::fs::remove_file(&m) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(m.display())(e)),
        _ => Ok(()),
    }
}

/// For CHECK: a description of what of the set is missing from the live table, if anything.
pub fn missing(net: &str, h: &HostLocal) -> Result<Option<String>, CniError> {
    for fam in [Family::V4, Family::V6] {
        let add = add_lines(net, h, fam);
        if add.is_empty() {
            continue;
        }
        let table = NatTable::parse(&iptables::save_nat(fam).map_err(ipt)?);
        if !complete(&table, &add) {
            return Ok(Some(format!("{fam:?} masquerade rules of network {net} missing")));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hl(ranges: serde_json::Value) -> HostLocal {
        HostLocal::parse(&serde_json::json!({"type": "host-local", "ranges": ranges, "dataDir": "/x"})).expect("config")
    }

    #[test]
    fn one_set_per_family_covering_every_subnet() {
        let h = hl(serde_json::json!([
            [{"subnet": "10.1.0.0/24"}, {"subnet": "10.2.0.0/24"}],
            [{"subnet": "fd00:1::/64"}]
        ]));
        assert!(chain("net").len() <= 28);
        let v4 = add_lines("net", &h, Family::V4);
        assert_eq!(v4[0], format!(":{} - [0:0]", chain("net")));
        assert_eq!(v4.iter().filter(|l| l.starts_with("-A POSTROUTING -s 10.")).count(), 2);
        assert!(v4.iter().any(|l| l.contains("! -d 224.0.0.0/4") && l.ends_with("-j MASQUERADE")));
        let v6 = add_lines("net", &h, Family::V6);
        assert!(v6.iter().any(|l| l.contains("! -d ff00::/8")));
        let v4only = hl(serde_json::json!([[{"subnet": "10.1.0.0/24"}]]));
        assert!(add_lines("net", &v4only, Family::V6).is_empty());
    }

    #[test]
    fn deletes_what_the_table_holds() {
        let h = hl(serde_json::json!([[{"subnet": "10.1.0.0/24"}]]));
        let add = add_lines("net", &h, Family::V4);
        let mut saved = String::from(":POSTROUTING ACCEPT [0:0]\n");
        saved.extend(add.iter().map(|l| format!("{l}\n")));
        saved.push_str("-A POSTROUTING -s 10.9.0.0/16 -m comment --comment \"corral-cni other masquerade\" -j X\n");
        let table = NatTable::parse(&saved);
        assert!(complete(&table, &add));
        let del = del_lines("net", &table);
        assert_eq!(del.len(), 3, "{del:?}");
        assert!(del[0].starts_with("-D POSTROUTING -s 10.1.0.0/24"));
        let partial = NatTable::parse(&format!(":{} - [0:0]\n", chain("net")));
        assert!(!complete(&partial, &add));
    }
}
