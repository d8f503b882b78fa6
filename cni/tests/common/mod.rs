//! Shared helpers for corral-cni's root integration tests: invoking the plugin as a
//! runtime would, and guards that remove every netns, bridge, rule and directory a test
//! made, even when it fails.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_corral-cni");
pub const REF_DIR: &str = "/usr/lib/cni";

/// True when running as root; otherwise prints why the test is skipped.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping {test}: needs root");
        false
    }
}

pub fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).expect("urandom");
    u64::from_le_bytes(b)
}

/// A network namespace made by the test, deleted on drop.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new() -> TestNetns {
        let name = format!("crl{:012x}", rand_u64() & 0xffff_ffff_ffff);
        let st = Command::new("ip").args(["netns", "add", &name]).status().expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        TestNetns { name }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().expect("ip netns exec")
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }

    /// Like `run`, but doesn't wait: for servers.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        let file = File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        });
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A test network: unique name, bridge, v4 and v6 subnets and data dir. On drop, removes
/// the bridge, every rule commented with its name, and the data dir.
pub struct TestNet {
    pub name: String,
    pub bridge: String,
    pub v4: String,
    pub v4_prefix: String,
    pub v6: String,
    pub v6_prefix: String,
    pub dir: tempfile::TempDir,
}

impl TestNet {
    pub fn new() -> TestNet {
        let r = rand_u64();
        let (a, b) = (200 + (r % 50) as u8, ((r >> 8) % 256) as u8);
        let (c, d) = ((r >> 16) as u16 | 1, (r >> 32) as u16 | 1);
        TestNet {
            name: format!("crltest-{:08x}", r >> 32),
            bridge: format!("crl{:08x}", (r >> 24) as u32),
            v4: format!("10.{a}.{b}.0/24"),
            v4_prefix: format!("10.{a}.{b}."),
            v6: format!("fd00:{c:x}:{d:x}::/64"),
            v6_prefix: format!("fd00:{c:x}:{d:x}::"),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("networks")
    }

    /// The allocation files of the network (ips only).
    pub fn allocations(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.data_dir().join(&self.name)) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// A corral-cni config; `ranges` picks "v4", "v6" or "dual".
    pub fn conf(&self, version: &str, ranges: &str) -> Value {
        let r4 = json!([{"subnet": self.v4}]);
        let r6 = json!([{"subnet": self.v6}]);
        let ranges = match ranges {
            "v4" => json!([r4]),
            "v6" => json!([r6]),
            _ => json!([r4, r6]),
        };
        json!({
            "cniVersion": version,
            "name": self.name,
            "type": "corral-cni",
            "bridge": self.bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {"type": "host-local", "ranges": ranges, "dataDir": self.data_dir()},
        })
    }

    /// Rules (both families) carrying this network's comment.
    pub fn rules(&self) -> Vec<String> {
        let tag = format!("corral-cni {} ", self.name);
        let mut out = Vec::new();
        for bin in ["iptables-save", "ip6tables-save"] {
            let o = Command::new(bin).args(["-t", "nat"]).output().expect("iptables-save");
            out.extend(String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains(&tag)).map(String::from));
        }
        out
    }

    /// Host veths attached to the bridge.
    pub fn bridge_ports(&self) -> Vec<String> {
        let o = Command::new("ip").args(["-o", "link", "show", "master", &self.bridge]).output().expect("ip link");
        String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect()
    }

    pub fn gateway4(&self) -> String {
        format!("{}1", self.v4_prefix)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // The marker of the network's masquerade set, left when a test fails half way.
        let _ = std::fs::remove_file(cni::ipam::masq::marker_path(&self.data_dir(), &self.name));
        let tag = format!("\"corral-cni {} ", self.name);
        for (save, restore) in [("iptables-save", "iptables-restore"), ("ip6tables-save", "ip6tables-restore")] {
            let Ok(o) = Command::new(save).args(["-t", "nat"]).output() else {
                continue;
            };
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let mut lines: Vec<String> = Vec::new();
            let mut chains: Vec<String> = Vec::new();
            for l in text.lines() {
                if l.starts_with("-A ") && l.contains(&tag) {
                    let chain = l.split_whitespace().nth(1).unwrap_or_default().to_string();
                    if chain.starts_with("CORRAL-") {
                        if !chains.contains(&chain) {
                            chains.push(chain);
                        }
                    } else {
                        lines.push(format!("-D{}", &l[2..]));
                    }
                }
            }
            for c in chains {
                lines.push(format!("-F {c}"));
                lines.push(format!("-X {c}"));
            }
            if lines.is_empty() {
                continue;
            }
            let batch = format!("*nat\n{}\nCOMMIT\n", lines.join("\n"));
            if let Ok(mut child) = Command::new(restore).arg("--noflush").stdin(Stdio::piped()).spawn() {
                if let Some(mut i) = child.stdin.take() {
                    let _ = i.write_all(batch.as_bytes());
                }
                let _ = child.wait();
            }
        }
        // Veths on the bridge go with their netns; delete any left, then the bridge.
        for p in self.bridge_ports() {
            if let Some(name) = p.split(':').nth(1).map(|s| s.trim().split('@').next().unwrap_or_default().to_string())
            {
                let _ = Command::new("ip").args(["link", "del", &name]).status();
            }
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
    }
}

/// What one plugin invocation returned.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub out: Value,
    pub raw: String,
}

impl Outcome {
    pub fn code(&self) -> u64 {
        self.out.get("code").and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn ips(&self) -> Vec<String> {
        self.out["ips"]
            .as_array()
            .map(|a| a.iter().filter_map(|i| i["address"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }
}

/// Invokes `bin` as a runtime would.
pub fn invoke_bin(bin: &str, env: &HashMap<&str, String>, stdin: &[u8]) -> Outcome {
    let mut cmd = Command::new(bin);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn plugin");
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin);
    }
    let o = child.wait_with_output().expect("wait plugin");
    let raw = String::from_utf8_lossy(&o.stdout).into_owned();
    let out = serde_json::from_str(&raw).unwrap_or(Value::Null);
    if !o.stderr.is_empty() {
        eprintln!("plugin stderr: {}", String::from_utf8_lossy(&o.stderr));
    }
    Outcome { ok: o.status.success(), out, raw }
}

pub fn env_for(cmd: &str, id: &str, netns: &str, ifname: &str) -> HashMap<&'static str, String> {
    let mut e = HashMap::new();
    e.insert("CNI_COMMAND", cmd.to_string());
    if !id.is_empty() {
        e.insert("CNI_CONTAINERID", id.to_string());
    }
    if !netns.is_empty() {
        e.insert("CNI_NETNS", netns.to_string());
    }
    if !ifname.is_empty() {
        e.insert("CNI_IFNAME", ifname.to_string());
    }
    e.insert("CNI_PATH", REF_DIR.to_string());
    e
}

/// Runs corral-cni.
pub fn cni(cmd: &str, conf: &Value, id: &str, netns: &str, ifname: &str) -> Outcome {
    invoke_bin(PLUGIN, &env_for(cmd, id, netns, ifname), conf.to_string().as_bytes())
}

/// Host veths (any) as `ip -o link show type veth` lists them.
pub fn host_veths() -> Vec<String> {
    let o = Command::new("ip").args(["-o", "link", "show", "type", "veth"]).output().expect("ip link");
    String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect()
}

pub fn path_exists(p: &str) -> bool {
    Path::new(p).exists()
}

/// DEL hands the teardown (rules, veth, then the allocation) to a detached process: polls
/// `done` until it holds, for up to 10 s, and returns whether it did. The caller's asserts
/// follow, so a timeout fails with their message.
pub fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
