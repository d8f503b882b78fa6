//! ExecSync and ReopenContainerLog, through the container's shim.

use super::*;
use crate::runtime::{Result, Runtime, RuntimeError};

impl Runtime {
    pub async fn exec_sync(&self, wanted: &str, cmd: Vec<String>, timeout_secs: i64) -> Result<ExecOutput> {
        let id = self.running_container(wanted)?;
        if cmd.is_empty() {
            return Err(RuntimeError::InvalidArgument("exec: cmd is required".into()));
        }
        let req = proto::v1::ExecRequest {
            args: cmd,
            env: vec![],
            cwd: String::new(),
            timeout_ms: (timeout_secs.max(0) as u64) * 1000,
        };
        let out = self.shim(&id).exec(req).await.map_err(shim_err)?;
        if out.truncated {
            tracing::warn!(container = %id, stdout = out.stdout.len(), stderr = out.stderr.len(), "exec output over the cap was dropped");
        }
        Ok(ExecOutput { stdout: out.stdout, stderr: out.stderr, exit_code: out.exit_code })
    }

    pub async fn reopen_log(&self, wanted: &str) -> Result<()> {
        let id = self.running_container(wanted)?;
        self.shim(&id).reopen_log().await.map_err(shim_err)
    }
}
