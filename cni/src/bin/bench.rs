//! corral-cni-bench: times ADD then DEL of corral-cni against the reference chain
//! (bridge + host-local + portmap from containernetworking-plugins) with the same config
//! shape, alternating the two, and prints median and p90 per step and the ratio.
//!
//!     sudo target/release/corral-cni-bench [--iterations N] [--ours PATH] [--ref-dir DIR]
//!
//! Each side gets its own bridge, subnet and data dir; network namespaces are made and
//! removed outside the timed part. Everything it creates is removed at the end.
#![deny(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b)
}

struct Side {
    label: &'static str,
    bin_dir: PathBuf,
    /// (plugin conf, gets runtimeConfig)
    plugins: Vec<(Value, bool)>,
    name: String,
    bridge: String,
    data_dir: PathBuf,
}

fn invoke(
    bin: &PathBuf,
    cmd: &str,
    id: &str,
    netns: &str,
    path: &str,
    conf: &Value,
) -> Result<Value> {
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} {cmd} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

impl Side {
    /// Runs the chain like libcni: ADD in order with prevResult, DEL in reverse.
    fn run(
        &self,
        cmd: &str,
        id: &str,
        netns: &str,
        runtime: &Value,
        prev: Option<&Value>,
    ) -> Result<Value> {
        let path = self.bin_dir.display().to_string();
        let order: Vec<&(Value, bool)> = if cmd == "DEL" {
            self.plugins.iter().rev().collect()
        } else {
            self.plugins.iter().collect()
        };
        let mut result = prev.cloned();
        for (p, caps) in order {
            let mut conf = p.clone();
            conf["name"] = json!(self.name);
            conf["cniVersion"] = json!("1.0.0");
            if *caps {
                conf["runtimeConfig"] = runtime.clone();
            }
            if let Some(r) = &result {
                if !r.is_null() {
                    conf["prevResult"] = r.clone();
                }
            }
            let bin = self.bin_dir.join(conf["type"].as_str().context("type")?);
            let out = invoke(&bin, cmd, id, netns, &path, &conf)?;
            if cmd == "ADD" {
                result = Some(out);
            }
        }
        Ok(result.unwrap_or(Value::Null))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sh(args: &[&str]) -> Result<()> {
    let st = Command::new(args[0])
        .args(&args[1..])
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("{args:?} failed");
    }
    Ok(())
}

const REF_SHARED_CHAINS: [&str; 3] = [
    "CNI-HOSTPORT-DNAT",
    "CNI-HOSTPORT-MASQ",
    "CNI-HOSTPORT-SETMARK",
];

/// Whether the reference portmap's shared chains exist in this family's nat table.
fn ref_chains_present(save: &str) -> bool {
    Command::new(save)
        .args(["-t", "nat"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with(":CNI-HOSTPORT-"))
        })
        .unwrap_or(false)
}

/// Removes the shared chains the reference portmap created during this run (it never
/// deletes them itself), with the jumps to them, in one batch.
fn remove_ref_chains(save: &str, restore: &str) {
    let Ok(o) = Command::new(save).args(["-t", "nat"]).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = Vec::new();
    for l in text.lines() {
        let chain = l.split_whitespace().nth(1).unwrap_or_default();
        if l.starts_with("-A ")
            && !REF_SHARED_CHAINS.contains(&chain)
            && REF_SHARED_CHAINS
                .iter()
                .any(|c| l.ends_with(&format!("-j {c}")))
        {
            lines.push(format!("-D{}", &l[2..]));
        }
    }
    for c in REF_SHARED_CHAINS {
        if text.lines().any(|l| l.starts_with(&format!(":{c} "))) {
            lines.push(format!("-F {c}"));
            lines.push(format!("-X {c}"));
        }
    }
    if lines.is_empty() {
        return;
    }
    if let Ok(mut child) = Command::new(restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .spawn()
    {
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(format!("*nat\n{}\nCOMMIT\n", lines.join("\n")).as_bytes());
        }
        let _ = child.wait();
    }
}

fn main() -> Result<()> {
    let mut iterations = 50usize;
    let exe = std::env::current_exe()?;
    let mut ours = exe.with_file_name("corral-cni");
    let mut ref_dir = PathBuf::from("/usr/lib/cni");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iterations" | "-n" => iterations = args.next().context("--iterations N")?.parse()?,
            "--ours" => ours = args.next().context("--ours PATH")?.into(),
            "--ref-dir" => ref_dir = args.next().context("--ref-dir DIR")?.into(),
            _ => bail!("usage: corral-cni-bench [--iterations N] [--ours PATH] [--ref-dir DIR]"),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("corral-cni-bench needs root");
    }
    for b in ["bridge", "host-local", "portmap"] {
        if !ref_dir.join(b).exists() {
            bail!(
                "{} missing: install containernetworking-plugins",
                ref_dir.join(b).display()
            );
        }
    }
    let had_ref_chains = [
        ref_chains_present("iptables-save"),
        ref_chains_present("ip6tables-save"),
    ];
    let work = std::env::temp_dir().join(format!("corral-cni-bench-{:x}", rand_u64()));
    let ours_dir = work.join("bin");
    std::fs::create_dir_all(&ours_dir)?;
    std::fs::copy(&ours, ours_dir.join("corral-cni"))
        .with_context(|| format!("copy {}", ours.display()))?;

    let r = rand_u64();
    let mk = |label: &'static str, i: u64, bin_dir: PathBuf, plugin_type: &str| {
        let name = format!("crlbench-{label}-{:x}", r & 0xffff);
        let bridge = format!("crlb{}{:06x}", &label[..1], (r >> 16) as u32 & 0xffffff);
        let data_dir = work.join(format!("data-{label}"));
        // Distinct /22s for the two sides: third octet in 0..128 or 128..256.
        let subnet = format!(
            "10.{}.{}.0/22",
            200 + (r >> 40) % 50,
            ((r >> 48) % 32) * 4 + i * 128
        );
        let bridge_conf = json!({
            "type": plugin_type,
            "bridge": bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir},
            "capabilities": {"portMappings": true},
        });
        let mut plugins = vec![(bridge_conf, plugin_type == "corral-cni")];
        if plugin_type == "bridge" {
            plugins.push((
                json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
                true,
            ));
        }
        Side {
            label,
            bin_dir,
            plugins,
            name,
            bridge,
            data_dir,
        }
    };
    let sides = [
        mk("corral", 0, ours_dir.clone(), "corral-cni"),
        mk("reference", 1, ref_dir.clone(), "bridge"),
    ];

    let mut add: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut del: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut total: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let port_base = 20000 + (r % 20000) as u16;
    let res = (|| -> Result<()> {
        // One warm-up round each (bridge creation, page cache), not counted.
        for it in 0..=iterations {
            for (s, side) in sides.iter().enumerate() {
                let ns = format!("crlbench{:x}", rand_u64() & 0xffffffff);
                sh(&["ip", "netns", "add", &ns])?;
                let nspath = format!("/var/run/netns/{ns}");
                let id = format!("bench{it}{s}x{:x}", rand_u64() & 0xffff);
                let runtime = json!({"portMappings": [{"hostPort": port_base + it as u16, "containerPort": 80, "protocol": "tcp"}]});
                let t0 = Instant::now();
                let out = side.run("ADD", &id, &nspath, &runtime, None);
                let t1 = Instant::now();
                let d = match &out {
                    Ok(prev) => side.run("DEL", &id, &nspath, &runtime, Some(prev)),
                    Err(_) => Ok(Value::Null),
                };
                let t2 = Instant::now();
                let _ = sh(&["ip", "netns", "del", &ns]);
                out.with_context(|| format!("{} ADD", side.label))?;
                d.with_context(|| format!("{} DEL", side.label))?;
                if it > 0 {
                    add[s].push(t1 - t0);
                    del[s].push(t2 - t1);
                    total[s].push(t2 - t0);
                }
            }
        }
        Ok(())
    })();
    for side in &sides {
        let _ = sh(&["ip", "link", "del", &side.bridge]);
        let _ = std::fs::remove_dir_all(&side.data_dir);
    }
    let _ = std::fs::remove_dir_all(&work);
    if !had_ref_chains[0] {
        remove_ref_chains("iptables-save", "iptables-restore");
    }
    if !had_ref_chains[1] {
        remove_ref_chains("ip6tables-save", "ip6tables-restore");
    }
    res?;

    println!("corral-cni-bench: {iterations} x (ADD, DEL), bridge + host-local + ipMasq + 1 hostPort, alternating");
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>12} {:>14} {:>14}",
        "", "ADD median", "ADD p90", "DEL median", "DEL p90", "ADD+DEL med", "ADD+DEL p90"
    );
    let mut medians = [Duration::ZERO; 2];
    for (s, side) in sides.iter().enumerate() {
        for v in [&mut add[s], &mut del[s], &mut total[s]] {
            v.sort();
        }
        medians[s] = percentile(&total[s], 0.5);
        println!(
            "{:<12} {:>9.1} ms {:>9.1} ms {:>9.1} ms {:>9.1} ms {:>11.1} ms {:>11.1} ms",
            side.label,
            ms(percentile(&add[s], 0.5)),
            ms(percentile(&add[s], 0.9)),
            ms(percentile(&del[s], 0.5)),
            ms(percentile(&del[s], 0.9)),
            ms(medians[s]),
            ms(percentile(&total[s], 0.9)),
        );
    }
    let ratio = medians[0].as_secs_f64() / medians[1].as_secs_f64().max(1e-9);
    println!("ratio (corral / reference, ADD+DEL median): {ratio:.3}");
    Ok(())
}
