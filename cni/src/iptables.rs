//! iptables through `iptables-restore --noflush`: every ADD or DEL is one batch per
//! address family (an atomic transaction), never one process per rule.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binary could not be run.
    #[error("running {0}: {1}")]
    Spawn(&'static str, std::io::Error),
    /// The binary failed (e.g. the batch was rejected).
    #[error("{0} failed: {1}")]
    Failed(&'static str, String),
}

impl Family {
    fn restore_bin(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn save_bin(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
}

fn command(bin: &str) -> Command {
    let mut c = Command::new(bin);
    // Runtimes may hand plugins a minimal PATH.
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("{path}:/usr/sbin:/sbin:/usr/bin:/bin"));
    c
}

/// A running `iptables-restore`; [`Pending::wait`] for its verdict.
pub struct Pending {
    bin: &'static str,
    child: Option<std::process::Child>,
}

impl Pending {
    pub fn wait(self) -> Result<(), Error> {
        let Some(child) = self.child else {
            return Ok(());
        };
        let out = child.wait_with_output().map_err(|e| Error::Spawn(self.bin, e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Failed(self.bin, String::from_utf8_lossy(&out.stderr).trim().to_string()))
        }
    }
}

/// Starts applying `rules` (lines of the nat table, without `*nat`/`COMMIT`) in one
/// transaction, so the caller can do other work meanwhile.
pub fn spawn_restore(family: Family, rules: &[String]) -> Result<Pending, Error> {
    let bin = family.restore_bin();
    if rules.is_empty() {
        return Ok(Pending { bin, child: None });
    }
    let mut text = String::from("*nat\n");
    for r in rules {
        text.push_str(r);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    let mut child = command(bin)
        .args(["--noflush", "-w", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Spawn(bin, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Batches are far below the pipe buffer: this never blocks on the child.
        if let Err(e) = stdin.write_all(text.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Spawn(bin, e));
        }
    }
    Ok(Pending { bin, child: Some(child) })
}

/// Applies `rules` in one transaction and waits for it.
pub fn restore_nat(family: Family, rules: &[String]) -> Result<(), Error> {
    spawn_restore(family, rules)?.wait()
}

/// Checks that `iptables-restore` of the family can be run.
pub fn available(family: Family) -> Result<(), Error> {
    let bin = family.restore_bin();
    let out = command(bin).arg("--version").output().map_err(|e| Error::Spawn(bin, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Failed(bin, String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// The nat table as `iptables-save` prints it.
pub fn save_nat(family: Family) -> Result<String, Error> {
    let bin = family.save_bin();
    let out = command(bin).args(["-t", "nat"]).stderr(Stdio::piped()).output().map_err(|e| Error::Spawn(bin, e))?;
    if !out.status.success() {
        return Err(Error::Failed(bin, String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A parsed `iptables-save` nat table: chain names and `-A` rule lines.
#[derive(Debug, Default)]
pub struct NatTable {
    pub chains: Vec<String>,
    pub rules: Vec<String>,
}

impl NatTable {
    pub fn parse(text: &str) -> NatTable {
        let mut t = NatTable::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(':') {
                if let Some(name) = rest.split_whitespace().next() {
                    t.chains.push(name.to_string());
                }
            } else if line.starts_with("-A ") {
                t.rules.push(line.to_string());
            }
        }
        t
    }

    /// Comments of rules (the quoted text after `--comment`).
    pub fn comment(rule: &str) -> Option<&str> {
        let rest = &rule[rule.find("--comment ")? + "--comment ".len()..];
        if let Some(q) = rest.strip_prefix('"') {
            q.split('"').next()
        } else {
            rest.split_whitespace().next()
        }
    }
}
