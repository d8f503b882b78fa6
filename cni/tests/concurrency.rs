//! 50 concurrent ADDs get 50 distinct addresses; 50 concurrent DELs leave zero
//! allocations, zero rules and zero veths.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::json;

const N: usize = 50;

#[test]
fn fifty_concurrent_add_and_del() {
    if !root_or_skip("fifty_concurrent_add_and_del") {
        return;
    }
    let net = TestNet::new();
    let base_port = 20000 + (rand_u64() % 30000) as u16;
    let pods: Vec<(TestNetns, String, serde_json::Value)> = (0..N)
        .map(|i| {
            let mut conf = net.conf("1.1.0", "dual");
            conf["runtimeConfig"] = json!({"portMappings": [
                {"hostPort": base_port + i as u16, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": base_port + i as u16, "containerPort": 53, "protocol": "udp"}]});
            (TestNetns::new(), format!("conc{i}x{:x}", rand_u64()), conf)
        })
        .collect();
    let veths_before = host_veths().len();

    let adds: Vec<Outcome> = std::thread::scope(|s| {
        let hs: Vec<_> =
            pods.iter().map(|(ns, id, conf)| s.spawn(move || cni("ADD", conf, id, &ns.path(), "eth0"))).collect();
        hs.into_iter().map(|h| h.join().expect("ADD thread")).collect()
    });
    let mut seen = HashSet::new();
    for a in &adds {
        assert!(a.ok, "ADD failed: {}", a.raw);
        for ip in a.ips() {
            assert!(seen.insert(ip.clone()), "address {ip} handed out twice");
        }
    }
    assert_eq!(seen.len(), 2 * N);
    assert_eq!(net.allocations().len(), 2 * N);
    assert_eq!(net.bridge_ports().len(), N);
    assert_eq!(host_veths().len(), veths_before + N);

    let dels: Vec<Outcome> = std::thread::scope(|s| {
        let hs: Vec<_> =
            pods.iter().map(|(ns, id, conf)| s.spawn(move || cni("DEL", conf, id, &ns.path(), "eth0"))).collect();
        hs.into_iter().map(|h| h.join().expect("DEL thread")).collect()
    });
    for d in &dels {
        assert!(d.ok, "DEL failed: {}", d.raw);
    }
    eventually(|| {
        net.allocations().is_empty()
            && net.rules().is_empty()
            && net.bridge_ports().is_empty()
            && host_veths().len() == veths_before
    });
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
    assert!(net.rules().is_empty(), "{:?}", net.rules());
    assert!(net.bridge_ports().is_empty());
    assert_eq!(host_veths().len(), veths_before);
}
