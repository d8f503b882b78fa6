//! Allocations are shared with the reference host-local (Debian's
//! containernetworking-plugins) in both directions: same directory, same file format,
//! same lock, same round-robin state.

mod common;

use common::*;
use serde_json::json;

fn reference(cmd: &str, conf: &serde_json::Value, id: &str, netns: &str) -> Outcome {
    invoke_bin(&format!("{REF_DIR}/host-local"), &env_for(cmd, id, netns, "eth0"), conf.to_string().as_bytes())
}

#[test]
fn allocations_shared_with_reference_host_local() {
    if !root_or_skip("allocations_shared_with_reference_host_local") {
        return;
    }
    if !path_exists(&format!("{REF_DIR}/host-local")) {
        eprintln!("skipping interop: {REF_DIR}/host-local missing (install containernetworking-plugins)");
        return;
    }
    let net = TestNet::new();
    let ns1 = TestNetns::new();
    let ns2 = TestNetns::new();
    let conf = net.conf("1.0.0", "dual");
    // The reference host-local takes the same config (its `ipam` section).
    let mut ref_conf = conf.clone();
    ref_conf["type"] = json!("host-local");

    // Reference first: it takes .2 and fd..::2.
    let r = reference("ADD", &ref_conf, "refpod", &ns1.path());
    assert!(r.ok, "reference ADD: {}", r.raw);
    let ref_ips = r.ips();
    assert_eq!(ref_ips.len(), 2);

    // Ours continues after the reference's last reservation, never reusing its address.
    let ours = cni("ADD", &conf, "ourpod", &ns2.path(), "eth0");
    assert!(ours.ok, "{}", ours.raw);
    let our_ips = ours.ips();
    assert_eq!(our_ips, vec![format!("{}3/24", net.v4_prefix), format!("{}3/64", net.v6_prefix)]);
    assert_eq!(ref_ips, vec![format!("{}2/24", net.v4_prefix), format!("{}2/64", net.v6_prefix)]);
    assert_eq!(net.allocations().len(), 4);
    let content = std::fs::read_to_string(net.data_dir().join(&net.name).join(format!("{}3", net.v4_prefix))).unwrap();
    assert_eq!(content, "ourpod\r\neth0");

    // The reference then continues after ours.
    let r2 = reference("ADD", &ref_conf, "refpod2", &ns1.path());
    assert!(r2.ok, "{}", r2.raw);
    assert_eq!(r2.ips()[0], format!("{}4/24", net.v4_prefix));

    // The reference releases ours, ours releases the reference's.
    let d = reference("DEL", &ref_conf, "ourpod", &ns2.path());
    assert!(d.ok, "{}", d.raw);
    let left = net.allocations();
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(!left.contains(&format!("{}3", net.v4_prefix)), "{left:?}");
    let del = cni("DEL", &conf, "ourpod", &ns2.path(), "eth0");
    assert!(del.ok, "{}", del.raw);
    for id in ["refpod", "refpod2"] {
        let d = cni("DEL", &conf, id, "", "eth0");
        assert!(d.ok, "{}", d.raw);
    }
    eventually(|| net.allocations().is_empty() && net.rules().is_empty() && net.bridge_ports().is_empty());
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
    assert!(net.rules().is_empty());
}
