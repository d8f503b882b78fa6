//! DEL's slow half, off the runtime's path. DEL takes the attachment's lock (see
//! `crate::lock`), takes the container interface's addresses away and sets it down, then
//! hands the lock and the rest ([`run`]: nat rules, veth, and last the allocation) to a
//! detached copy of the plugin: the runtime's wait returns as soon as that copy is started.
//! ADD of the same attachment takes the same lock first, so it waits for a teardown still
//! running; other attachments never see the address before its rules and veth are gone,
//! since it is released last.
//!
//! Detaching: DEL runs `/proc/self/exe` with [`DETACH_ARG`] (stdin = the locked lock file,
//! stdout and stderr /dev/null, the config in [`CONF_VAR`]) and waits for it; that process
//! calls setsid(2), starts the worker ([`WORK_ARG`]) with the same stdin and exits, so the
//! worker is orphaned, in its own session, and holds the lock (the same open file
//! description) until it exits. A failure of the worker is appended to a log next to the
//! allocation state ([`log_path`]); GC (`cni.dev/valid-attachments`) recovers what it left.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde_json::Value;

use crate::config::{validate_ports, Env, NetConf};
use crate::ipam::Ipam;
use crate::iptables::Family;
use crate::lock::AttachmentLock;
use crate::netlink;
use crate::netns::Netns;
use crate::rules::{self, rule_sets, Owner};
use crate::spec::{code, CniError, CniResult};

/// argv[1] of the intermediate process that detaches the worker.
pub const DETACH_ARG: &str = "--corral-internal-teardown-detach";
/// argv[1] of the worker.
pub const WORK_ARG: &str = "--corral-internal-teardown";
/// The network config (stdin of the DEL) passed to the worker.
pub const CONF_VAR: &str = "CORRAL_CNI_TEARDOWN_CONF";
const LOG_NAME: &str = "corral-cni-teardown.log";

/// The slow half of DEL (run by the detached worker, or inline when it can't start).
pub async fn run(conf: &NetConf, raw: &Value, env: &Env) -> Result<(), CniError> {
    let ipam = Ipam::from_conf(conf)?;
    let owner = Owner::new(&conf.name, &env.container_id, &env.ifname);
    // Invalid port mappings can't have been applied; whatever exists is found by comment.
    let ports = validate_ports(&conf.runtime_config.port_mappings).unwrap_or_default();

    // The rule batches run while the veth goes (the kernel takes ~25 ms for that); the
    // allocation is released only once the rules are gone, so a reused address never
    // inherits stale DNAT.
    let per_attachment_masq = ipam.masq_per_attachment(conf);
    let removal = if per_attachment_masq || !conf.runtime_config.port_mappings.is_empty() {
        let mut ips: Vec<IpNet> = ipam.held(conf, env).unwrap_or_default();
        if ips.is_empty() {
            if let Some(prev) = &conf.prev_result {
                if let Ok(r) = CniResult::from_json(prev) {
                    ips = r.ips.iter().map(|i| i.address).collect();
                }
            }
        }
        let expected = rule_sets(&owner, per_attachment_masq, &ports, ips.iter().copied());
        let mut fams: Vec<Family> = Vec::new();
        for (f, _) in &expected {
            if !fams.contains(f) {
                fams.push(*f);
            }
        }
        if fams.is_empty() {
            fams = vec![Family::V4, Family::V6];
        }
        Some(rules::start_remove(&owner, &expected, &fams))
    } else {
        None
    };

    let links = del_links(env, &owner).await;
    if let Some(r) = removal {
        r.finish()?;
    }
    links?;
    ipam.del(conf, raw, env)
}

async fn del_links(env: &Env, owner: &Owner) -> Result<(), CniError> {
    let host = netlink::connect()?;
    match netlink::link_by_name(&host, &owner.host_veth()).await? {
        Some(l) => netlink::del_link(&host, l.index).await?,
        None => del_in_netns(env).await?,
    }
    Ok(())
}

/// The host side is gone or renamed: remove CNI_IFNAME in the netns if it is a veth.
async fn del_in_netns(env: &Env) -> Result<(), CniError> {
    if env.netns.is_empty() {
        return Ok(());
    }
    let Ok(ns) = Netns::open(&env.netns) else {
        return Ok(());
    };
    let nsh = netlink::connect_in(&ns)?;
    if let Some(l) = netlink::link_by_name(&nsh, &env.ifname).await? {
        if l.kind == Some(rtnetlink::packet_route::link::InfoKind::Veth) {
            netlink::del_link(&nsh, l.index).await?;
        }
    }
    Ok(())
}

/// Where the worker reports failures: next to the allocation state for host-local (when
/// the network's directory exists), else under /run/corral-cni.
pub fn log_path(conf: &NetConf) -> PathBuf {
    if let Ok(Ipam::HostLocal(h)) = Ipam::from_conf(conf) {
        let dir = h.data_dir.join(&conf.name);
        if dir.is_dir() {
            return dir.join(LOG_NAME);
        }
    }
    Path::new("/run/corral-cni").join(LOG_NAME)
}

fn log(conf: &NetConf, env: &Env, msg: &str) {
    let open = |p: &Path| OpenOptions::new().create(true).append(true).mode(0o600).open(p);
    // Never recreates a network directory removed meanwhile: falls back to /run.
    let opened = open(&log_path(conf)).or_else(|_| {
        fs::create_dir_all("/run/corral-cni")?;
        open(&Path::new("/run/corral-cni").join(LOG_NAME))
    });
    let Ok(mut f) = opened else {
        return;
    };
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let _ = writeln!(
        f,
        "{secs} teardown of {} {} {} failed (GC will retry): {msg}",
        conf.name, env.container_id, env.ifname
    );
}

fn cni_env(cmd: &mut Command, env: &Env) {
    cmd.env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_NETNS", &env.netns)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", &env.args)
        .env("CNI_PATH", &env.path);
}

/// Starts the detached worker with the lock; Err when it could not be started (the caller
/// still holds the lock and tears down inline).
pub fn detach(raw: &Value, env: &Env, lock: &AttachmentLock) -> Result<(), CniError> {
    let conf = serde_json::to_string(raw).map_err(|e| CniError::new(code::INTERNAL, e.to_string()))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(DETACH_ARG)
        .env(CONF_VAR, conf)
        .stdin(Stdio::from(lock.share()?))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cni_env(&mut cmd, env);
    let status = cmd.status().map_err(|e| CniError::new(code::IO, format!("starting teardown: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(CniError::new(code::IO, format!("starting teardown: {status}")))
    }
}

/// The intermediate process: new session, start the worker, exit. Its exit status says
/// whether the worker started.
pub fn detach_main() -> i32 {
    let _ = nix::unistd::setsid();
    let started = Command::new("/proc/self/exe")
        .arg(WORK_ARG)
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match started {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

/// The worker: the teardown, with the lock on stdin; unlinks the lock file at the end.
pub fn work_main() -> i32 {
    let vars = std::env::vars().collect();
    let env = Env::from_map(&vars);
    let raw = std::env::var(CONF_VAR).unwrap_or_default();
    let Ok((conf, raw)) = NetConf::parse(raw.as_bytes()) else {
        return 1;
    };
    let owner = Owner::new(&conf.name, &env.container_id, &env.ifname);
    let res = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
        Ok(rt) => rt.block_on(run(&conf, &raw, &env)),
        Err(e) => Err(CniError::new(code::IO, format!("tokio runtime: {e}"))),
    };
    if let Err(e) = &res {
        log(&conf, &env, &e.to_string());
    }
    // Still holding the lock through stdin: unlink, then exit (which unlocks).
    let _ = fs::remove_file(AttachmentLock::path_of(&owner));
    i32::from(res.is_err())
}
