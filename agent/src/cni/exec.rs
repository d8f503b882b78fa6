//! Running one CNI plugin binary: the spec's environment, the config on stdin, the result or
//! error JSON on stdout, with a timeout.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// How long one plugin invocation may take.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// plugin binary not found
    #[error("CNI plugin {kind:?} not found in {dirs}")]
    NotFound { kind: String, dirs: String },
    /// the plugin returned a CNI error
    #[error("CNI plugin {kind} {command} failed: {msg}{details} (code {code})")]
    Plugin { kind: String, command: String, code: u64, msg: String, details: String },
    /// the plugin failed without a CNI error
    #[error("CNI plugin {kind} {command} failed: {detail}")]
    Failed { kind: String, command: String, detail: String },
    /// timeout
    #[error("CNI plugin {kind} {command} did not finish within {after:?}")]
    Timeout { kind: String, command: String, after: Duration },
}

/// The environment of one invocation.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    pub bin_dirs: &'a [PathBuf],
}

pub fn find_plugin(kind: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(kind)).find(|p| p.is_file())
}

/// Runs the plugin of type `kind` with `config` on stdin; returns its parsed stdout (Null when
/// it printed nothing, as DEL may).
pub async fn run(kind: &str, config: &Value, inv: &Invocation<'_>) -> Result<Value, ExecError> {
    let dirs = || inv.bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
    let binary =
        find_plugin(kind, inv.bin_dirs).ok_or_else(|| ExecError::NotFound { kind: kind.into(), dirs: dirs() })?;
    let failed = |detail: String| ExecError::Failed { kind: kind.into(), command: inv.command.into(), detail };
    let mut cmd = tokio::process::Command::new(&binary);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
        .env("CNI_COMMAND", inv.command)
        .env("CNI_PATH", dirs())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if !inv.container_id.is_empty() {
        cmd.env("CNI_CONTAINERID", inv.container_id);
    }
    if !inv.netns.is_empty() {
        cmd.env("CNI_NETNS", inv.netns);
    }
    if !inv.ifname.is_empty() {
        cmd.env("CNI_IFNAME", inv.ifname);
    }
    if !inv.args.is_empty() {
        cmd.env("CNI_ARGS", inv.args);
    }
    let mut child = cmd.spawn().map_err(|e| failed(format!("running {}: {e}", binary.display())))?;
    let stdin_bytes = serde_json::to_vec(config).map_err(|e| failed(format!("encoding config: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&stdin_bytes).await.map_err(|e| failed(format!("writing config: {e}")))?;
    }
    let output = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| ExecError::Timeout { kind: kind.into(), command: inv.command.into(), after: PLUGIN_TIMEOUT })?
        .map_err(|e| failed(e.to_string()))?;
    let stdout: Value = if output.stdout.iter().all(|b| b.is_ascii_whitespace()) {
        Value::Null
    } else {
        serde_json::from_slice(&output.stdout).map_err(|e| {
            failed(format!("unreadable output ({e}): {}", String::from_utf8_lossy(&output.stdout).trim()))
        })?
    };
    if output.status.success() {
        return Ok(stdout);
    }
    if let Some(code) = stdout.get("code").and_then(Value::as_u64) {
        let msg = stdout.get("msg").and_then(Value::as_str).unwrap_or("").to_string();
        let details = stdout
            .get("details")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        return Err(ExecError::Plugin { kind: kind.into(), command: inv.command.into(), code, msg, details });
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(failed(format!("exited with {}: {}", output.status, stderr.trim())))
}

/// `dir1:dir2` or a list, as paths.
pub fn split_dirs(dirs: &str) -> Vec<PathBuf> {
    dirs.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect()
}

pub fn exists_any(kind: &str, dirs: &[PathBuf]) -> bool {
    find_plugin(kind, dirs).is_some()
}
