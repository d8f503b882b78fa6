//! CNI mode: ADD then DEL of a conflist's plugin chain, the way libcni runs it (ADD in order with
//! each plugin's result as the next one's `prevResult`, DEL in reverse with the ADD result;
//! `runtimeConfig` for declared capabilities), in a network namespace the bench creates and
//! removes outside the timed part.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::stats::Samples;

pub struct Chain {
    conflist: Value,
    bin_dir: PathBuf,
}

impl Chain {
    pub fn load(path: &Path, bin_dir: &Path) -> Result<Chain> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let conflist: Value = serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
        if !conflist["plugins"].is_array() {
            bail!("{}: no plugins list", path.display());
        }
        Ok(Chain { conflist, bin_dir: bin_dir.to_path_buf() })
    }

    /// One plugin's config as libcni builds it.
    fn plugin_conf(&self, plugin: &Value, runtime: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(caps) = plugin["capabilities"].as_object() {
            let rc: serde_json::Map<String, Value> = caps
                .iter()
                .filter(|(k, on)| on.as_bool() == Some(true) && runtime.get(k.as_str()).is_some())
                .map(|(k, _)| (k.clone(), runtime[k.as_str()].clone()))
                .collect();
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    fn invoke(&self, command: &str, id: &str, netns: &str, conf: &Value) -> Result<Value> {
        let plugin = conf["type"].as_str().context("plugin without type")?;
        let bin = self.bin_dir.join(plugin);
        let mut child = Command::new(&bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        child.stdin.take().context("stdin")?.write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{plugin} {command}: {} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("{plugin} {command}: result is not JSON"))
    }

    pub fn add(&self, id: &str, netns: &str, runtime: &Value) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for p in self.conflist["plugins"].as_array().into_iter().flatten() {
            let conf = self.plugin_conf(p, runtime, prev.as_ref());
            prev = Some(self.invoke("ADD", id, netns, &conf)?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    pub fn del(&self, id: &str, netns: &str, runtime: &Value, result: Option<&Value>) -> Result<()> {
        for p in self.conflist["plugins"].as_array().into_iter().flatten().rev() {
            let conf = self.plugin_conf(p, runtime, result.filter(|r| !r.is_null()));
            self.invoke("DEL", id, netns, &conf)?;
        }
        Ok(())
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let st = Command::new("ip").args(args).stderr(Stdio::inherit()).status().context("running ip")?;
    if !st.success() {
        bail!("ip {}: {st}", args.join(" "));
    }
    Ok(())
}

/// `n` rounds (plus one untimed warm-up) of ADD then DEL, each in a fresh netns, with one
/// hostPort mapping (`port_base + i`) for plugins that declare the `portMappings` capability.
pub fn bench(chain: &Chain, n: usize, tag: &str, port_base: u16) -> Result<Samples> {
    let mut s = Samples::default();
    for i in 0..=n {
        let ns = format!("crlbench-{tag}-{i}");
        ip(&["netns", "add", &ns])?;
        let path = format!("/var/run/netns/{ns}");
        let id = format!("bench{tag}{i}");
        let runtime =
            json!({"portMappings": [{"hostPort": port_base + i as u16, "containerPort": 80, "protocol": "tcp"}]});
        let round = (|| -> Result<(std::time::Duration, std::time::Duration)> {
            let t = Instant::now();
            let result = chain.add(&id, &path, &runtime);
            let add = t.elapsed();
            let t = Instant::now();
            let del = chain.del(&id, &path, &runtime, result.as_ref().ok());
            let del_time = t.elapsed();
            result.context("ADD")?;
            del.context("DEL")?;
            Ok((add, del_time))
        })();
        let gone = ip(&["netns", "del", &ns]);
        let (add, del) = round?;
        gone?;
        if i > 0 {
            s.add("CNI ADD", add);
            s.add("CNI DEL", del);
            s.add("CNI ADD + DEL", add + del);
        }
    }
    Ok(s)
}
