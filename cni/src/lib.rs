//! corral-cni: a CNI 1.1.0 plugin for a Linux bridge with veth pairs, the built-in
//! host-local IPAM, masquerade and hostPort DNAT. `main.rs` only reads the invocation and
//! prints the answer; [`run`] does the work.
#![deny(unsafe_code)]

pub mod add;
pub mod check;
pub mod config;
pub mod del;
pub mod errors;
pub mod gc;
pub mod ipam;
pub mod iptables;
pub mod lock;
pub mod netlink;
pub mod netns;
pub mod rules;
pub mod spec;
pub mod sysctl;
pub mod teardown;

use serde_json::Value;

use config::{Env, NetConf};
use spec::{code, CniError};

/// What a successful invocation prints (nothing for DEL, CHECK, GC, STATUS).
pub type Output = Option<Value>;

/// Runs one invocation. On error, returns the error and the version to report it in.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Output, (CniError, String)> {
    let latest = spec::LATEST.to_string();
    match env.command.as_str() {
        "" => return Err((CniError::new(code::INVALID_ENV, "required env variable CNI_COMMAND missing"), latest)),
        "VERSION" => {
            let v = serde_json::from_slice::<Value>(stdin)
                .ok()
                .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
                .filter(|v| spec::version_supported(v))
                .unwrap_or(latest);
            return Ok(Some(spec::version_info(&v)));
        }
        "ADD" | "DEL" | "CHECK" | "GC" | "STATUS" => {}
        other => {
            return Err((CniError::new(code::INVALID_ENV, format!("unknown CNI_COMMAND: {other}")), latest));
        }
    }
    let (conf, raw) = NetConf::parse(stdin).map_err(|e| {
        let v = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
            .filter(|v| spec::version_supported(v))
            .unwrap_or_else(|| latest.clone());
        (e, v)
    })?;
    let version = conf.cni_version.clone();
    let need = |min: &str, verb: &str| {
        if spec::version_at_least(&version, min) {
            Ok(())
        } else {
            Err((
                CniError::new(code::INCOMPATIBLE_VERSION, format!("config version {version} does not allow {verb}")),
                version.clone(),
            ))
        }
    };
    match env.command.as_str() {
        "CHECK" => need("0.4.0", "CHECK")?,
        "GC" => need("1.1.0", "GC")?,
        "STATUS" => need("1.1.0", "STATUS")?,
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| (CniError::new(code::IO, format!("tokio runtime: {e}")), version.clone()))?;
    let res = rt.block_on(async {
        match env.command.as_str() {
            "ADD" => add::add(&conf, &raw, env).await.map(|r| Some(r.to_json(&version))),
            "DEL" => del::del(&conf, &raw, env).await.map(|_| None),
            "CHECK" => check::check(&conf, &raw, env).await.map(|_| None),
            "GC" => gc::gc(&conf, &raw, env).await.map(|_| None),
            _ => status(&conf, &raw, env).map(|_| None),
        }
    });
    res.map_err(|e| (e, version))
}

/// STATUS: ready when the IPAM is usable and, if rules are needed, iptables is there.
fn status(conf: &NetConf, raw: &Value, env: &Env) -> Result<(), CniError> {
    if conf.ip_masq || !conf.runtime_config.port_mappings.is_empty() {
        iptables::available(iptables::Family::V4).map_err(|e| CniError::new(code::NOT_AVAILABLE, e.to_string()))?;
    }
    match ipam::Ipam::from_conf(conf)? {
        ipam::Ipam::HostLocal(h) => {
            std::fs::create_dir_all(h.data_dir.join(&conf.name))
                .map_err(|e| CniError::new(code::NOT_AVAILABLE, format!("data dir {}: {e}", h.data_dir.display())))?;
            Ok(())
        }
        ipam::Ipam::Delegate(t) => ipam::delegate::exec(&t, "STATUS", raw, env).map(|_| ()),
    }
}
