//! Pod networking end to end: corrald calling a real CNI chain (corral-cni, and the reference
//! bridge + host-local + portmap from Debian's containernetworking-plugins) for pods that serve
//! HTTP to each other and on a hostPort at 127.0.0.1.
//!
//! Every test has its own corrald, bridge name, subnet, CNI conf dir and IPAM dataDir, and a
//! guard that removes the pods, then the bridge, whatever happens.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::cri_api::v1 as cri;
use tests::net::{random_bytes, target_debug, Chain, Net, REFERENCE_PLUGINS};
use tests::{require_env, require_root, TestEnv};
const HTTPD: &str = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

/// GET / from addr, retried until it answers or the deadline passes.
fn http_get(addr: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().expect("socket addr"), Duration::from_secs(2)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            if s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").is_ok() {
                let mut body = String::new();
                if s.read_to_string(&mut body).is_ok() && body.contains("200") {
                    return Some(body);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

async fn pods_reach_each_other_and_the_host_port(chain: Chain) {
    let env = match TestEnv::from_env() {
        Some(e) => e,
        None => return,
    };
    if chain == Chain::Corral && !target_debug().join("corral-cni").exists() {
        panic!("{} is missing: build the workspace first", target_debug().join("corral-cni").display());
    }
    let net = Net::boot(env, chain).await;
    let host_port = 20000 + (u16::from_le_bytes(random_bytes::<2>()) % 20000) as i32;
    let (pod_a, a, ip_a) = net.pod("server", Some(host_port), HTTPD).await;
    let (pod_b, b, ip_b) = net.pod("client", None, "sleep 3600").await;
    let subnet_prefix = net.subnet.rsplit_once('.').unwrap().0.to_string();
    assert!(
        ip_a.starts_with(&subnet_prefix) && ip_b.starts_with(&subnet_prefix),
        "{ip_a} {ip_b} not in {}",
        net.subnet
    );
    assert_ne!(ip_a, ip_b);

    // Pod to pod over the bridge (retried while httpd starts).
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        // Debian's static busybox wget crashes (SIGSEGV) in its resolver: speak HTTP with nc.
        let out = net.exec(&b, &["sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $0 80", &ip_a]).await;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.exit_code == 0 && text.contains("200 OK") {
            break text.rsplit("\r\n\r\n").next().unwrap_or("").to_string();
        }
        if Instant::now() > deadline {
            let diag = net.exec(&b, &["sh", "-c", "ip addr; ip route; ping -c 1 -W 2 $0", &ip_a]).await;
            let log_a = std::fs::read_to_string(net.c.dir().join("logs/server/main.log")).unwrap_or_default();
            let in_a = net.exec(&a, &["sh", "-c", "ps -o args; ls -la /www"]).await;
            let log_a = format!(
                "{log_a}\n--- in a: {} {}",
                String::from_utf8_lossy(&in_a.stdout),
                String::from_utf8_lossy(&in_a.stderr)
            );
            panic!(
                "pod b cannot reach {ip_a}: {}\n--- b: {}\n--- a's log: {log_a}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&diag.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body.trim(), "hello-from-server");
    // The pod's /etc/hosts names it with its IP.
    let hosts = net.exec(&b, &["cat", "/etc/hosts"]).await;
    assert!(String::from_utf8_lossy(&hosts.stdout).contains(&format!("{ip_b}\tclient")));

    // hostPort from the host itself at 127.0.0.1.
    let addr = format!("127.0.0.1:{host_port}");
    let got = tokio::task::spawn_blocking(move || http_get(&addr, Duration::from_secs(20))).await.unwrap();
    let got = got.unwrap_or_else(|| panic!("hostPort {host_port} not reachable at 127.0.0.1 ({chain:?})"));
    assert!(got.contains("hello-from-server"), "{got}");

    assert_eq!(net.veths().len(), 2, "{:?}", net.veths());
    assert_eq!(net.allocations().len(), 2, "{:?}", net.allocations());
    net.remove_pod(&pod_a).await;
    net.remove_pod(&pod_b).await;
    // corral-cni's DEL finishes its teardown (rules, veth, then the address) in the background.
    let rules_of = |pods: &[&String]| {
        let rules = Command::new("iptables-save")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        pods.iter().any(|p| rules.contains(p.as_str()))
    };
    tests::wait_for(Duration::from_secs(10), || {
        net.veths().is_empty() && net.allocations().is_empty() && !rules_of(&[&pod_a, &pod_b])
    })
    .await;
    assert!(net.veths().is_empty(), "veths left: {:?}", net.veths());
    assert!(net.allocations().is_empty(), "addresses left: {:?}", net.allocations());
    let rules = Command::new("iptables-save")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    for pod in [&pod_a, &pod_b] {
        assert!(!rules.contains(pod.as_str()), "iptables rules of {pod} left");
    }
    let addr = format!("127.0.0.1:{host_port}");
    let after = tokio::task::spawn_blocking(move || http_get(&addr, Duration::from_millis(500))).await.unwrap();
    assert!(after.is_none(), "hostPort still answers after the pod is gone");
}

#[tokio::test]
async fn corral_cni_pods_reach_each_other_and_the_host_port() {
    require_root!();
    let _ = require_env!();
    pods_reach_each_other_and_the_host_port(Chain::Corral).await;
}

#[tokio::test]
async fn reference_plugins_pods_reach_each_other_and_the_host_port() {
    require_root!();
    let _ = require_env!();
    if !Path::new(REFERENCE_PLUGINS).join("bridge").exists() {
        panic!("{REFERENCE_PLUGINS}/bridge is missing: hack/install-deps.sh installs containernetworking-plugins");
    }
    pods_reach_each_other_and_the_host_port(Chain::Reference).await;
}

#[tokio::test]
async fn removing_a_pod_whose_netns_vanished_releases_its_address() {
    require_root!();
    let env = require_env!();
    // corral-cni: the reference bridge plugin (1.1.1) cannot find the pod's IP without the
    // netns and leaves its masquerade rules behind, a leak of the reference, not of corrald.
    let mut net = Net::boot(env, Chain::Corral).await;
    let (pod, _c, _ip) = net.pod("gone", None, "sleep 3600").await;
    assert_eq!(net.allocations().len(), 1);
    // A crash, then the pinned namespaces vanish (as after a reboot clears /run).
    net.c.kill9();
    let ns_root = net.c.state.join("pods");
    for dir in tests::dir_names(&ns_root) {
        let ns = ns_root.join(&dir).join("ns");
        for f in tests::dir_names(&ns) {
            let p = std::ffi::CString::new(ns.join(&f).display().to_string()).unwrap();
            // SAFETY: p is a valid NUL-terminated string.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
    net.c.restart().await;
    net.remove_pod(&pod).await;
    // corral-cni's DEL finishes its teardown (rules, veth, then the address) in the background.
    let rules_left = || {
        Command::new("iptables-save")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(pod.as_str()))
            .unwrap_or(false)
    };
    tests::wait_for(Duration::from_secs(10), || {
        net.allocations().is_empty() && net.veths().is_empty() && !rules_left()
    })
    .await;
    assert!(net.allocations().is_empty(), "addresses left: {:?}", net.allocations());
    assert!(net.veths().is_empty(), "veths left: {:?}", net.veths());
    let rules = Command::new("iptables-save")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    assert!(!rules.contains(pod.as_str()), "iptables rules of {pod} left");
}

#[tokio::test]
async fn corral_cni_pod_with_container_ports_and_no_host_ports() {
    require_root!();
    let env = require_env!();
    // The kubelet sends a PortMapping for every declared containerPort, most without a hostPort;
    // corral-cni refuses hostPort 0, so only mappings with a host port may reach it.
    let net = Net::boot(env, Chain::Corral).await;
    let mut pc = net.pod_config("ports", None);
    pc.port_mappings = vec![tests::port(cri::Protocol::Tcp, 80, 0, ""), tests::port(cri::Protocol::Udp, 53, 0, "")];
    let (pod, c, ip) = net.pod_with(pc, HTTPD).await;
    // The pod serves on its own address; no rule was made for it.
    let out = net.exec(&c, &["sh", "-c", "for i in $(seq 50); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 $0 80 && exit 0; sleep 0.1; done; exit 1", &ip]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello-from-ports"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = Command::new("iptables-save")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    assert!(!rules.contains(pod.as_str()), "rules were made for a pod without host ports");
    net.remove_pod(&pod).await;
    tests::wait_for(Duration::from_secs(10), || net.veths().is_empty() && net.allocations().is_empty()).await;
    assert!(net.veths().is_empty() && net.allocations().is_empty(), "{:?} {:?}", net.veths(), net.allocations());
}
