//! Bad input: each gets the spec's error code, a JSON error on stdout, a non-zero exit,
//! and leaves the host unchanged (no bridge, allocation, veth or rule).

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn bridge_exists(name: &str) -> bool {
    Command::new("ip").args(["link", "show", name]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Runs ADD with `stdin` and checks the error code and that nothing changed.
fn expect_add_error(net: &TestNet, stdin: &[u8], env: std::collections::HashMap<&str, String>, code: u64, what: &str) {
    let veths = host_veths().len();
    let out = invoke_bin(PLUGIN, &env, stdin);
    assert!(!out.ok, "{what}: must fail, got {}", out.raw);
    assert_eq!(out.code(), code, "{what}: {}", out.raw);
    assert!(out.out["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: msg");
    assert!(out.out["cniVersion"].is_string(), "{what}: cniVersion");
    assert!(!bridge_exists(&net.bridge), "{what}: bridge created");
    assert!(net.allocations().is_empty(), "{what}: allocation left");
    assert!(net.rules().is_empty(), "{what}: rules left");
    assert_eq!(host_veths().len(), veths, "{what}: veth left");
}

#[test]
fn bad_inputs() {
    if !root_or_skip("bad_inputs") {
        return;
    }
    let net = TestNet::new();
    let ns = TestNetns::new();
    let good = net.conf("1.0.0", "dual");
    let add = || env_for("ADD", "bad1", &ns.path(), "eth0");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c.to_string().into_bytes()
    };

    expect_add_error(&net, b"{not json", add(), 6, "malformed JSON");
    expect_add_error(&net, b"[1,2]", add(), 6, "not an object");
    expect_add_error(
        &net,
        &with(&|c| {
            c.as_object_mut().unwrap().remove("name");
        }),
        add(),
        7,
        "missing name",
    );
    expect_add_error(
        &net,
        &with(&|c| {
            c.as_object_mut().unwrap().remove("type");
        }),
        add(),
        7,
        "missing type",
    );
    expect_add_error(
        &net,
        &with(&|c| {
            c.as_object_mut().unwrap().remove("cniVersion");
        }),
        add(),
        7,
        "missing cniVersion",
    );
    expect_add_error(&net, &with(&|c| c["cniVersion"] = json!("0.2.0")), add(), 1, "unsupported version");
    expect_add_error(&net, &with(&|c| c["cniVersion"] = json!("2.0.0")), add(), 1, "future version");
    expect_add_error(
        &net,
        &with(&|c| c["ipam"]["ranges"] = json!([[{"subnet": "10.300.0.0/24"}]])),
        add(),
        7,
        "invalid subnet",
    );
    expect_add_error(
        &net,
        &with(&|c| c["ipam"]["ranges"] = json!([[{"subnet": "10.250.0.7/24"}]])),
        add(),
        7,
        "subnet with host bits",
    );
    expect_add_error(
        &net,
        &with(&|c| c["ipam"]["ranges"] = json!([[{"subnet": net.v4, "rangeStart": "10.251.0.2"}]])),
        add(),
        7,
        "rangeStart outside subnet",
    );
    let gw = net.gateway4();
    expect_add_error(
        &net,
        &with(&|c| c["ipam"]["ranges"] = json!([[{"subnet": net.v4, "rangeStart": gw, "rangeEnd": gw}]])),
        add(),
        100,
        "range with no free address",
    );
    expect_add_error(&net, &with(&|c| c["ipam"] = json!({})), add(), 7, "missing ipam type");

    let mut e = add();
    e.remove("CNI_NETNS");
    expect_add_error(&net, &good.to_string().into_bytes(), e, 4, "missing CNI_NETNS");
    let mut e = add();
    e.insert("CNI_NETNS", "/var/run/netns/crl-does-not-exist".into());
    expect_add_error(&net, &good.to_string().into_bytes(), e, 3, "netns that does not exist");
    let regular = net.dir.path().join("not-a-netns");
    std::fs::write(&regular, "x").unwrap();
    let mut e = add();
    e.insert("CNI_NETNS", regular.display().to_string());
    expect_add_error(&net, &good.to_string().into_bytes(), e, 4, "CNI_NETNS not a namespace");
    let mut e = add();
    e.insert("CNI_NETNS", "/proc/self/ns/uts".into());
    expect_add_error(&net, &good.to_string().into_bytes(), e, 4, "CNI_NETNS another namespace type");
    let mut e = add();
    e.insert("CNI_IFNAME", "averyveryverylongname".into());
    expect_add_error(&net, &good.to_string().into_bytes(), e, 4, "IFNAME too long");
    let mut e = add();
    e.remove("CNI_CONTAINERID");
    expect_add_error(&net, &good.to_string().into_bytes(), e, 4, "missing CNI_CONTAINERID");
    let mut e = add();
    e.insert("CNI_COMMAND", "FROB".into());
    expect_add_error(&net, &good.to_string().into_bytes(), e, 4, "unknown CNI_COMMAND");
    let mut e = add();
    e.remove("CNI_COMMAND");
    expect_add_error(&net, &good.to_string().into_bytes(), e, 4, "missing CNI_COMMAND");

    for (pm, what) in [
        (json!([{"hostPort": 0, "containerPort": 80}]), "hostPort 0"),
        (json!([{"hostPort": 70000, "containerPort": 80}]), "hostPort too big"),
        (json!([{"hostPort": 8080, "containerPort": -1}]), "negative containerPort"),
        (json!([{"hostPort": 8080, "containerPort": 80, "protocol": "sctp"}]), "unsupported protocol"),
        (json!([{"hostPort": 8080, "containerPort": 80, "hostIP": "nope"}]), "bad hostIP"),
    ] {
        expect_add_error(&net, &with(&|c| c["runtimeConfig"] = json!({"portMappings": pm})), add(), 7, what);
    }

    // An IFNAME already present in the netns: nothing changes, not even the allocation state.
    let o = ns.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "crlpeer0"]);
    assert!(o.status.success());
    expect_add_error(&net, &good.to_string().into_bytes(), add(), 4, "IFNAME already present");
    assert!(!net.data_dir().join(&net.name).join("last_reserved_ip.0").exists());
}
