//! Traffic: two pods on one bridge reach each other, and a pod's hostPort is reached from
//! 127.0.0.1 on the host, from another pod, and from the pod itself (hairpin).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A TCP server inside a pod that answers every connection with `reply`; stops on drop.
struct Server {
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(ns: &TestNetns, port: u16, reply: String) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        ns.spawn(move || {
            let l = match TcpListener::bind(("::", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            l.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(Ok(()));
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().expect("server thread").expect("bind");
        Server { stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fetch(addr: SocketAddr) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..5 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
                let mut out = String::new();
                s.read_to_string(&mut out).map_err(|e| e.to_string())?;
                return Ok(out);
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("connect {addr}: {last}"))
}

fn ip_of(out: &Outcome, v6: bool) -> std::net::IpAddr {
    out.ips()
        .iter()
        .map(|a| a.split('/').next().unwrap().parse::<std::net::IpAddr>().unwrap())
        .find(|ip| ip.is_ipv6() == v6)
        .expect("address of family")
}

#[test]
fn pod_to_pod_and_host_port() {
    if !root_or_skip("pod_to_pod_and_host_port") {
        return;
    }
    let net = TestNet::new();
    let (nsa, nsb) = (TestNetns::new(), TestNetns::new());
    let host_port = 20000 + (rand_u64() % 30000) as u16;
    let mut conf_a = net.conf("1.1.0", "dual");
    conf_a["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]});
    let conf_b = net.conf("1.1.0", "dual");

    let a = cni("ADD", &conf_a, "poda", &nsa.path(), "eth0");
    assert!(a.ok, "{}", a.raw);
    let b = cni("ADD", &conf_b, "podb", &nsb.path(), "eth0");
    assert!(b.ok, "{}", b.raw);
    let (a4, a6, b4) = (ip_of(&a, false), ip_of(&a, true), ip_of(&b, false));
    let gw4: std::net::IpAddr = net.gateway4().parse().unwrap();

    {
        let _sa = Server::start(&nsa, 80, "hello from a".into());
        let _sb = Server::start(&nsb, 80, "hello from b".into());

        // Pod to pod, both families.
        assert_eq!(nsb.run(move || fetch(SocketAddr::new(a4, 80))), Ok("hello from a".into()));
        assert_eq!(nsb.run(move || fetch(SocketAddr::new(a6, 80))), Ok("hello from a".into()));
        assert_eq!(nsa.run(move || fetch(SocketAddr::new(b4, 80))), Ok("hello from b".into()));

        // hostPort from the host's loopback.
        assert_eq!(fetch(SocketAddr::from(([127, 0, 0, 1], host_port))), Ok("hello from a".into()));
        // hostPort from another pod, through the host's address on the bridge.
        assert_eq!(nsb.run(move || fetch(SocketAddr::new(gw4, host_port))), Ok("hello from a".into()));
        // Hairpin: the pod reaches its own hostPort.
        assert_eq!(nsa.run(move || fetch(SocketAddr::new(gw4, host_port))), Ok("hello from a".into()));
    }

    assert!(cni("DEL", &conf_a, "poda", &nsa.path(), "eth0").ok);
    assert!(cni("DEL", &conf_b, "podb", &nsb.path(), "eth0").ok);
    eventually(|| net.rules().is_empty() && net.allocations().is_empty() && net.bridge_ports().is_empty());
    assert!(net.rules().is_empty(), "{:?}", net.rules());
    assert!(net.allocations().is_empty());
    // The mapping is gone with the rules.
    assert!(
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], host_port)), Duration::from_millis(300)).is_err()
    );
}

/// A link from the host to a namespace standing in for "outside": the host has `.1` of a /30,
/// the namespace `.2` and no route back to any pod subnet. Deleted on drop.
struct Outside {
    ns: TestNetns,
    host_link: String,
    host: std::net::Ipv4Addr,
    peer: std::net::Ipv4Addr,
}

impl Outside {
    fn new() -> Outside {
        let ns = TestNetns::new();
        let r = rand_u64();
        // 198.18.0.0/15 (benchmarking, RFC 2544): only ever on this link.
        let (b, c) = (18 + (r & 1) as u8, (r >> 8) as u8);
        let d = ((r >> 16) as u8) & 0xfc;
        let host = std::net::Ipv4Addr::new(198, b, c, d + 1);
        let peer = std::net::Ipv4Addr::new(198, b, c, d + 2);
        let host_link = format!("crlo{:08x}", (r >> 24) as u32);
        let out = Outside { ns, host_link, host, peer };
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["link", "add", &out.host_link, "type", "veth", "peer", "name", "eth0", "netns", &out.ns.name]);
        ip(&["addr", "add", &format!("{}/30", out.host), "dev", &out.host_link]);
        ip(&["link", "set", &out.host_link, "up"]);
        for args in [
            vec!["ip", "addr", "add", &format!("{}/30", out.peer), "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "link", "set", "lo", "up"],
        ] {
            assert!(out.ns.exec(&args).status.success(), "{args:?}");
        }
        out
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.host_link]).status();
    }
}

/// ipMasq: a pod reaches an address beyond the host that has no route back to the pod's
/// subnet, and that address sees the host's address as the source, not the pod's.
#[test]
fn masquerade_to_outside() {
    if !root_or_skip("masquerade_to_outside") {
        return;
    }
    let net = TestNet::new();
    let outside = Outside::new();
    let pod = TestNetns::new();
    let conf = net.conf("1.1.0", "v4");
    let add = cni("ADD", &conf, "masq1", &pod.path(), "eth0");
    assert!(add.ok, "{}", add.raw);

    // A server outside that answers with the source address it sees.
    let port = 20000 + (rand_u64() % 30000) as u16;
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    outside.ns.spawn(move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind outside");
        l.set_nonblocking(true).expect("nonblocking");
        let _ = tx.send(());
        while !s.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, from)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.write_all(from.ip().to_string().as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv().expect("outside server");
    let target = SocketAddr::from((outside.peer, port));
    let seen = pod.run(move || fetch(target));
    stop.store(true, Ordering::Relaxed);
    assert_eq!(seen, Ok(outside.host.to_string()), "masqueraded to the host's address");

    assert!(cni("DEL", &conf, "masq1", &pod.path(), "eth0").ok);
    eventually(|| net.rules().is_empty() && net.allocations().is_empty());
    assert!(net.rules().is_empty(), "{:?}", net.rules());
}
