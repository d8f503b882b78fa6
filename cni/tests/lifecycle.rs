//! ADD / CHECK / DEL as a runtime drives them, for IPv4, IPv6 and dual stack, in every
//! result version; DEL idempotence and DEL after the netns is gone; CHECK failures; GC.

mod common;

use common::*;
use serde_json::{json, Value};

fn lifecycle(version: &str, ranges: &str) {
    let net = TestNet::new();
    let ns = TestNetns::new();
    let mut conf = net.conf(version, ranges);
    let id = format!("ctr{:x}", rand_u64());

    let add = cni("ADD", &conf, &id, &ns.path(), "eth0");
    assert!(add.ok, "ADD failed: {}", add.raw);
    assert_eq!(add.out["cniVersion"], version);
    let ips = add.ips();
    let want = if ranges == "dual" { 2 } else { 1 };
    assert_eq!(ips.len(), want, "{}", add.raw);
    let v03 = !version.starts_with('1');
    for ip in add.out["ips"].as_array().unwrap() {
        assert_eq!(ip["interface"], 2);
        assert_eq!(ip.get("version").is_some(), v03, "ips[].version only before 1.0.0");
    }
    assert_eq!(add.out["interfaces"][2]["name"], "eth0");
    assert_eq!(add.out["interfaces"][2]["sandbox"], ns.path().as_str());
    assert_eq!(add.out["interfaces"][0]["name"], net.bridge.as_str());

    // The netns has the addresses and default routes.
    let addrs = String::from_utf8_lossy(&ns.exec(&["ip", "addr", "show", "eth0"]).stdout).into_owned();
    for ip in &ips {
        assert!(addrs.contains(ip.as_str()), "{ip} not in {addrs}");
    }
    let fam = if ranges == "v6" { "-6" } else { "-4" };
    let routes = String::from_utf8_lossy(&ns.exec(&["ip", fam, "route"]).stdout).into_owned();
    assert!(routes.contains("default via"), "{routes}");
    assert_eq!(net.allocations().len(), want);
    assert!(!net.rules().is_empty(), "ipMasq rules present");
    assert_eq!(net.bridge_ports().len(), 1);

    // CHECK with the prevResult passes (needs 0.4.0+).
    conf["prevResult"] = add.out.clone();
    let check = cni("CHECK", &conf, &id, &ns.path(), "eth0");
    if version == "0.3.0" || version == "0.3.1" {
        assert_eq!(check.code(), 1, "CHECK before 0.4.0 is incompatible: {}", check.raw);
    } else {
        assert!(check.ok, "CHECK failed: {}", check.raw);
        // CHECK reports a missing address.
        let first = ips[0].clone();
        let o = ns.exec(&["ip", "addr", "del", &first, "dev", "eth0"]);
        assert!(o.status.success());
        let check = cni("CHECK", &conf, &id, &ns.path(), "eth0");
        assert!(!check.ok, "CHECK must notice the missing address");
        assert!(check.out["msg"].as_str().unwrap_or_default().contains("missing"), "{}", check.raw);
    }

    let del = cni("DEL", &conf, &id, &ns.path(), "eth0");
    assert!(del.ok, "DEL failed: {}", del.raw);
    assert!(del.raw.trim().is_empty(), "DEL prints nothing");
    eventually(|| {
        net.allocations().is_empty()
            && net.rules().is_empty()
            && net.bridge_ports().is_empty()
            && !String::from_utf8_lossy(&ns.exec(&["ip", "-o", "link"]).stdout).contains("eth0")
    });
    assert!(net.allocations().is_empty());
    assert!(net.rules().is_empty(), "rules left: {:?}", net.rules());
    assert!(net.bridge_ports().is_empty());
    let links = String::from_utf8_lossy(&ns.exec(&["ip", "-o", "link"]).stdout).into_owned();
    assert!(!links.contains("eth0"), "{links}");
    // Idempotent.
    let del = cni("DEL", &conf, &id, &ns.path(), "eth0");
    assert!(del.ok, "second DEL failed: {}", del.raw);
}

#[test]
fn v4_result_0_3_1() {
    if root_or_skip("v4_result_0_3_1") {
        lifecycle("0.3.1", "v4");
    }
}

#[test]
fn v4_result_0_3_0() {
    if root_or_skip("v4_result_0_3_0") {
        lifecycle("0.3.0", "v4");
    }
}

#[test]
fn v6_result_0_4_0() {
    if root_or_skip("v6_result_0_4_0") {
        lifecycle("0.4.0", "v6");
    }
}

#[test]
fn dual_stack_result_1_0_0() {
    if root_or_skip("dual_stack_result_1_0_0") {
        lifecycle("1.0.0", "dual");
    }
}

#[test]
fn dual_stack_result_1_1_0() {
    if root_or_skip("dual_stack_result_1_1_0") {
        lifecycle("1.1.0", "dual");
    }
}

#[test]
fn del_after_netns_gone_releases_everything() {
    if !root_or_skip("del_after_netns_gone_releases_everything") {
        return;
    }
    let net = TestNet::new();
    let mut conf = net.conf("1.1.0", "dual");
    conf["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 30000 + (rand_u64() % 20000), "containerPort": 80, "protocol": "tcp"}]});
    let id = format!("ctr{:x}", rand_u64());
    let path;
    {
        let ns = TestNetns::new();
        path = ns.path();
        let add = cni("ADD", &conf, &id, &path, "eth0");
        assert!(add.ok, "{}", add.raw);
        assert_eq!(net.allocations().len(), 2);
    } // netns deleted here: the veth pair goes with it
    let del = cni("DEL", &conf, &id, &path, "eth0");
    assert!(del.ok, "DEL with a missing netns must succeed: {}", del.raw);
    eventually(|| net.allocations().is_empty() && net.rules().is_empty());
    assert!(net.allocations().is_empty());
    assert!(net.rules().is_empty(), "{:?}", net.rules());
    // And without CNI_NETNS at all.
    let del = cni("DEL", &conf, &id, "", "eth0");
    assert!(del.ok, "{}", del.raw);
}

#[test]
fn del_leaves_the_netns_ready_for_the_next_add() {
    if !root_or_skip("del_leaves_the_netns_ready_for_the_next_add") {
        return;
    }
    let net = TestNet::new();
    let conf = net.conf("1.1.0", "v4");
    let ns = TestNetns::new();
    let path = ns.path();
    // Another container id into the same netns and interface name, right after each DEL (the
    // old veth is still being deleted in the background).
    let mut last = String::new();
    for round in 0..10 {
        let id = format!("ctr{round}x{:x}", rand_u64());
        let add = cni("ADD", &conf, &id, &path, "eth0");
        assert!(add.ok, "ADD in round {round} right after the previous DEL: {}", add.raw);
        let del = cni("DEL", &conf, &id, &path, "eth0");
        assert!(del.ok, "{}", del.raw);
        let links = String::from_utf8_lossy(&ns.exec(&["ip", "-o", "link", "show"]).stdout).to_string();
        assert!(!links.contains(" eth0"), "eth0 still in the netns when DEL returned: {links}");
        last = id;
    }
    eventually(|| net.allocations().is_empty() && net.bridge_ports().is_empty());
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
    assert!(net.bridge_ports().is_empty(), "{:?}", net.bridge_ports());
    let links = String::from_utf8_lossy(&ns.exec(&["ip", "-o", "link", "show"]).stdout).to_string();
    assert!(!links.contains("del"), "a retired interface was left: {links} (last {last})");
}

#[test]
fn gc_frees_attachments_not_listed() {
    if !root_or_skip("gc_frees_attachments_not_listed") {
        return;
    }
    let net = TestNet::new();
    let conf = net.conf("1.1.0", "v4");
    let (ns1, ns2) = (TestNetns::new(), TestNetns::new());
    let (a, b) = (format!("keep{:x}", rand_u64()), format!("gone{:x}", rand_u64()));
    // hostPorts, so that each attachment has rules of its own.
    let port = 20000 + (rand_u64() % 30000);
    let with_port = |p: u64| {
        let mut c = conf.clone();
        c["runtimeConfig"] = json!({"portMappings": [{"hostPort": p, "containerPort": 80}]});
        c
    };
    assert!(cni("ADD", &with_port(port), &a, &ns1.path(), "eth0").ok);
    assert!(cni("ADD", &with_port(port + 1), &b, &ns2.path(), "eth0").ok);
    assert_eq!(net.allocations().len(), 2);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": a, "ifname": "eth0"}]);
    let out = cni("GC", &gc, "", "", "");
    assert!(out.ok, "GC failed: {}", out.raw);
    assert_eq!(net.allocations().len(), 1);
    assert_eq!(net.bridge_ports().len(), 1, "the stale veth is gone");
    let rules = net.rules();
    assert!(rules.iter().all(|r| !r.contains(&b)), "{rules:?}");
    assert!(rules.iter().any(|r| r.contains(&a)), "{rules:?}");
    assert!(rules.iter().any(|r| r.contains(" masquerade")), "network masquerade kept: {rules:?}");

    // GC needs 1.1.0.
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(cni("GC", &old, "", "", "").code(), 1);

    let del = cni("DEL", &with_port(port), &a, &ns1.path(), "eth0");
    assert!(del.ok);
    eventually(|| net.allocations().is_empty() && net.rules().is_empty() && net.bridge_ports().is_empty());
    assert!(net.allocations().is_empty());
    assert!(net.rules().is_empty());
}

/// ipMasq on a host-local network is one rule set for the network: the first ADD installs
/// it, later ADDs and DELs leave it alone, CHECK and GC notice it missing (GC restores it),
/// and the release of the last address removes it.
#[test]
fn network_masquerade_lives_with_the_allocations() {
    if !root_or_skip("network_masquerade_lives_with_the_allocations") {
        return;
    }
    let net = TestNet::new();
    let conf = net.conf("1.1.0", "dual");
    let (ns1, ns2) = (TestNetns::new(), TestNetns::new());
    let masq = || -> Vec<String> { net.rules().into_iter().filter(|r| r.contains(" masquerade\"")).collect() };
    let add1 = cni("ADD", &conf, "nm1", &ns1.path(), "eth0");
    assert!(add1.ok, "{}", add1.raw);
    let first = masq();
    // Per family: the jump from POSTROUTING, RETURN within the subnet, MASQUERADE.
    assert_eq!(first.len(), 6, "{first:?}");
    assert!(first.iter().any(|r| r.starts_with("-A POSTROUTING") && r.contains(&net.v4)), "{first:?}");
    assert!(first.iter().any(|r| r.contains("-j MASQUERADE") && r.contains("224.0.0.0/4")), "{first:?}");
    assert!(first.iter().any(|r| r.contains("-j MASQUERADE") && r.contains("ff00::/8")), "{first:?}");
    assert!(net.rules().iter().all(|r| !r.contains("nm1")), "no per-attachment rules without hostPorts");
    let add2 = cni("ADD", &conf, "nm2", &ns2.path(), "eth0");
    assert!(add2.ok, "{}", add2.raw);
    assert_eq!(masq(), first, "the second ADD adds nothing");

    // Removed behind our back: CHECK says so, GC puts it back.
    let mut chk = conf.clone();
    chk["prevResult"] = add1.out.clone();
    assert!(cni("CHECK", &chk, "nm1", &ns1.path(), "eth0").ok);
    let jump = first.iter().find(|r| r.starts_with("-A POSTROUTING") && r.contains(&net.v4)).unwrap();
    let args = shell_words(&jump.replacen("-A", "-D", 1));
    assert!(std::process::Command::new("iptables").args(["-t", "nat"]).args(&args).status().unwrap().success());
    let c = cni("CHECK", &chk, "nm1", &ns1.path(), "eth0");
    assert!(!c.ok && c.raw.contains("masquerade"), "{}", c.raw);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": "nm1", "ifname": "eth0"}, {"containerID": "nm2", "ifname": "eth0"}]);
    let out = cni("GC", &gc, "", "", "");
    assert!(out.ok, "{}", out.raw);
    let mut repaired = masq();
    repaired.sort();
    let mut want = first.clone();
    want.sort();
    assert_eq!(repaired, want);

    // The first DEL leaves it for the other pod; the last one takes it away.
    assert!(cni("DEL", &conf, "nm1", &ns1.path(), "eth0").ok);
    // Dual stack: one address per family.
    eventually(|| net.allocations().len() == 2);
    assert_eq!(net.allocations().len(), 2);
    assert_eq!(masq().len(), 6);
    assert!(cni("DEL", &conf, "nm2", &ns2.path(), "eth0").ok);
    eventually(|| net.allocations().is_empty() && net.rules().is_empty());
    assert!(net.rules().is_empty(), "{:?}", net.rules());
    let chains = String::from_utf8_lossy(
        &std::process::Command::new("iptables-save").args(["-t", "nat"]).output().unwrap().stdout,
    )
    .into_owned();
    assert!(!chains.contains(&format!(":{} ", cni::ipam::masq::chain(&net.name))), "chain left");
}

#[test]
fn status_and_version() {
    let net = TestNet::new();
    let conf = net.conf("1.1.0", "v4");
    let out = cni("VERSION", &json!({"cniVersion": "1.0.0"}), "", "", "");
    assert!(out.ok);
    assert_eq!(out.out["cniVersion"], "1.0.0");
    let versions: Vec<&str> =
        out.out["supportedVersions"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(versions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    if root_or_skip("status") {
        let st = cni("STATUS", &conf, "", "", "");
        assert!(st.ok, "{}", st.raw);
        let mut old = conf.clone();
        old["cniVersion"] = json!("0.4.0");
        assert_eq!(cni("STATUS", &old, "", "", "").code(), 1);
    }
}

#[test]
fn undo_when_iptables_fails_half_way() {
    if !root_or_skip("undo_when_iptables_fails_half_way") {
        return;
    }
    let net = TestNet::new();
    let ns = TestNetns::new();
    let conf = net.conf("1.0.0", "v4");
    // A PATH whose iptables-restore always fails: ADD fails at its last step.
    let fake = net.dir.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    let script = fake.join("iptables-restore");
    std::fs::write(&script, "#!/bin/sh\ncat >/dev/null\necho 'injected failure' >&2\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut env = env_for("ADD", "undo1", &ns.path(), "eth0");
    env.insert("PATH", format!("{}:{}", fake.display(), std::env::var("PATH").unwrap_or_default()));
    let add = invoke_bin(PLUGIN, &env, conf.to_string().as_bytes());
    assert!(!add.ok);
    assert!(add.raw.contains("injected failure"), "{}", add.raw);
    assert!(net.allocations().is_empty(), "allocation undone");
    assert!(net.bridge_ports().is_empty(), "veth undone");
    assert!(net.rules().is_empty());
    let links = String::from_utf8_lossy(&ns.exec(&["ip", "-o", "link"]).stdout).into_owned();
    assert!(!links.contains("eth0"), "{links}");
}

#[test]
fn delegated_ipam_plugin() {
    if !root_or_skip("delegated_ipam_plugin") {
        return;
    }
    if !path_exists("/usr/lib/cni/static") {
        eprintln!("skipping delegated_ipam_plugin: /usr/lib/cni/static missing (containernetworking-plugins)");
        return;
    }
    let net = TestNet::new();
    let ns = TestNetns::new();
    let mut conf = net.conf("1.0.0", "v4");
    let addr = format!("{}9/24", net.v4_prefix);
    conf["ipam"] = json!({"type": "static", "addresses": [{"address": addr, "gateway": net.gateway4()}]});
    let add = cni("ADD", &conf, "static1", &ns.path(), "eth0");
    assert!(add.ok, "{}", add.raw);
    assert_eq!(add.ips(), vec![addr]);
    let del = cni("DEL", &conf, "static1", &ns.path(), "eth0");
    assert!(del.ok, "{}", del.raw);
    eventually(|| net.rules().is_empty() && net.bridge_ports().is_empty());
    assert!(net.rules().is_empty());
}

#[test]
fn check_reports_missing_rule_route_and_interface() {
    if !root_or_skip("check_reports_missing_rule_route_and_interface") {
        return;
    }
    let net = TestNet::new();
    let ns = TestNetns::new();
    let mut conf = net.conf("1.1.0", "v4");
    conf["runtimeConfig"] = json!({"portMappings": [{"hostPort": 20000 + (rand_u64() % 30000), "containerPort": 80}]});
    let add = cni("ADD", &conf, "chk1", &ns.path(), "eth0");
    assert!(add.ok, "{}", add.raw);
    conf["prevResult"] = add.out.clone();
    assert!(cni("CHECK", &conf, "chk1", &ns.path(), "eth0").ok);

    // A rule removed behind our back.
    let rule = net.rules().into_iter().find(|r| r.starts_with("-A OUTPUT")).expect("OUTPUT jump");
    let args: Vec<String> = shell_words(&rule.replacen("-A", "-D", 1));
    let st = std::process::Command::new("iptables").args(["-t", "nat"]).args(&args).status().unwrap();
    assert!(st.success());
    let c = cni("CHECK", &conf, "chk1", &ns.path(), "eth0");
    assert!(!c.ok && c.raw.contains("rules"), "{}", c.raw);
    // DEL still cleans up what is left.
    assert!(cni("DEL", &conf, "chk1", &ns.path(), "eth0").ok);
    eventually(|| net.rules().is_empty() && net.allocations().is_empty());
    assert!(net.rules().is_empty(), "{:?}", net.rules());

    // A missing default route, then a missing interface.
    let add = cni("ADD", &conf, "chk2", &ns.path(), "eth0");
    assert!(add.ok, "{}", add.raw);
    conf["prevResult"] = add.out.clone();
    assert!(ns.exec(&["ip", "route", "del", "default"]).status.success());
    let c = cni("CHECK", &conf, "chk2", &ns.path(), "eth0");
    assert!(!c.ok && c.raw.contains("route"), "{}", c.raw);
    assert!(ns.exec(&["ip", "link", "del", "eth0"]).status.success());
    let c = cni("CHECK", &conf, "chk2", &ns.path(), "eth0");
    assert!(!c.ok && c.raw.contains("not found"), "{}", c.raw);
    assert!(cni("DEL", &conf, "chk2", &ns.path(), "eth0").ok);
    eventually(|| net.allocations().is_empty() && net.rules().is_empty() && net.bridge_ports().is_empty());
    assert!(net.allocations().is_empty());
    assert!(net.rules().is_empty());
}

/// Splits an iptables-save rule line into arguments (double quotes group words).
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn mtu_promisc_and_hairpin_are_applied() {
    if !root_or_skip("mtu_promisc_and_hairpin_are_applied") {
        return;
    }
    let net = TestNet::new();
    let ns = TestNetns::new();
    let mut conf = net.conf("1.0.0", "v4");
    conf["mtu"] = json!(1280);
    conf["promiscMode"] = json!(true);
    let add = cni("ADD", &conf, "mtu1", &ns.path(), "eth0");
    assert!(add.ok, "{}", add.raw);
    let inside = String::from_utf8_lossy(&ns.exec(&["ip", "link", "show", "eth0"]).stdout).into_owned();
    assert!(inside.contains("mtu 1280"), "{inside}");
    let host_veth = add.out["interfaces"][1]["name"].as_str().unwrap().to_string();
    let hv = std::process::Command::new("ip").args(["-d", "link", "show", &host_veth]).output().unwrap();
    let hv = String::from_utf8_lossy(&hv.stdout).into_owned();
    assert!(hv.contains("mtu 1280"), "{hv}");
    assert!(hv.contains(&format!("master {}", net.bridge)), "{hv}");
    assert!(hv.contains("hairpin on"), "{hv}");
    let br = std::process::Command::new("ip").args(["link", "show", &net.bridge]).output().unwrap();
    assert!(String::from_utf8_lossy(&br.stdout).contains("PROMISC"));
    assert!(cni("DEL", &conf, "mtu1", &ns.path(), "eth0").ok);
    eventually(|| net.allocations().is_empty() && net.bridge_ports().is_empty());
}

#[test]
fn undo_when_the_bridge_name_is_taken_by_another_link() {
    if !root_or_skip("undo_when_the_bridge_name_is_taken_by_another_link") {
        return;
    }
    let net = TestNet::new();
    let ns = TestNetns::new();
    let conf = net.conf("1.0.0", "dual");
    // A veth pair squats the bridge name (TestNet's drop deletes it by that name).
    let peer = format!("{}p", &net.bridge[..net.bridge.len() - 1]);
    let st = std::process::Command::new("ip")
        .args(["link", "add", &net.bridge, "type", "veth", "peer", "name", &peer])
        .status()
        .unwrap();
    assert!(st.success());
    let add = cni("ADD", &conf, "squat1", &ns.path(), "eth0");
    assert!(!add.ok);
    assert!(add.raw.contains("not a bridge"), "{}", add.raw);
    assert!(net.allocations().is_empty(), "allocation undone: {:?}", net.allocations());
    assert!(net.rules().is_empty(), "rules undone: {:?}", net.rules());
    let links = String::from_utf8_lossy(&ns.exec(&["ip", "-o", "link"]).stdout).into_owned();
    assert!(!links.contains("eth0"), "{links}");
}
