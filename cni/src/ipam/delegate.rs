//! Runs another IPAM plugin found in CNI_PATH with our environment and config.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::config::Env;
use crate::spec::{code, CniError};

fn find(plugin: &str, cni_path: &str) -> Option<PathBuf> {
    cni_path.split(':').filter(|d| !d.is_empty()).map(|d| PathBuf::from(d).join(plugin)).find(|p| p.is_file())
}

/// Executes `plugin` with CNI_COMMAND=`command`; returns its stdout, or its error object.
pub fn exec(plugin: &str, command: &str, conf: &Value, env: &Env) -> Result<Vec<u8>, CniError> {
    let bin = find(plugin, &env.path).ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, format!("failed to find plugin {plugin:?} in path {:?}", env.path))
    })?;
    let input = serde_json::to_vec(conf).map_err(|e| CniError::new(code::INTERNAL, e.to_string()))?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_NETNS", &env.netns)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", &env.args)
        .env("CNI_PATH", &env.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::new(code::IO, format!("exec {}: {e}", bin.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&input);
    }
    let out = child.wait_with_output().map_err(|e| CniError::new(code::IO, format!("wait {}: {e}", bin.display())))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    let err = match parsed {
        Some(v) => CniError::new(
            v.get("code").and_then(Value::as_u64).unwrap_or(code::INTERNAL as u64) as u32,
            format!("ipam plugin {plugin}: {}", v.get("msg").and_then(Value::as_str).unwrap_or("failed")),
        )
        .details(v.get("details").and_then(Value::as_str).unwrap_or_default()),
        None => CniError::new(
            code::INTERNAL,
            format!("ipam plugin {plugin} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stdout)),
        ),
    };
    Err(err)
}
