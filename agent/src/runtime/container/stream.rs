//! Exec and attach sessions for the streaming server, through the container's shim: the checks
//! the Exec and Attach RPCs make before handing out a URL, and the sessions themselves (the
//! shim hands over the descriptors; the bytes never pass through it for an exec).

use std::os::fd::OwnedFd;

use bytes::Bytes;

use super::*;
use crate::streaming::{
    AttachParams, Attached, Backend, ExecParams, FdStream, Process, Reader, SharedWriter, Terminal, Writer,
};

/// Output chunks of an attach queued for its session.
const ATTACH_QUEUE: usize = 64;

impl Runtime {
    async fn exec_session(&self, p: &ExecParams) -> Result<Process> {
        let id = self.running_container(&p.container_id)?;
        let req = proto::v1::ExecStreamRequest {
            args: p.cmd.clone(),
            // As containerd: a terminal gets a TERM.
            env: if p.tty { vec!["TERM=xterm".into()] } else { Vec::new() },
            cwd: String::new(),
            tty: p.tty,
            stdin: p.stdin,
            stdout: p.stdout,
            stderr: p.stderr,
        };
        let mut session = self.shim(&id).exec_stream(req).await.map_err(shim_err)?;
        tracing::debug!(container = %id, pid = session.pid, cmd = ?p.cmd, tty = p.tty, "exec session started");
        let io = |what: &str| io_err(format!("exec session of {id}: {what}"));
        let mut fds = std::mem::take(&mut session.fds).into_iter();
        let mut process = Process {
            stdin: None,
            stdout: None,
            stderr: None,
            terminal: None,
            exit: Box::pin(async move {
                let exit = session.wait().await.map_err(|e| e.to_string())?;
                Ok(if exit.signal > 0 && exit.exit_code == 0 { 128 + exit.signal } else { exit.exit_code })
            }),
        };
        if p.tty {
            let master = fds.next().ok_or_else(|| RuntimeError::Internal("the shim sent no terminal".into()))?;
            process.terminal = Some(Terminal::new(master.try_clone().map_err(io("dup of the terminal"))?));
            let stream = FdStream::new(master).map_err(io("the terminal"))?;
            if p.stdin {
                process.stdin = Some(Box::new(stream.clone()));
            }
            // Read even when not asked for: a terminal nobody reads stops its writer.
            process.stdout = Some(Box::new(stream));
            return Ok(process);
        }
        let mut next = |on: bool| -> Result<Option<FdStream>> {
            if !on {
                return Ok(None);
            }
            let fd: OwnedFd = fds.next().ok_or_else(|| RuntimeError::Internal("the shim sent too few pipes".into()))?;
            FdStream::new(fd).map(Some).map_err(io("a pipe"))
        };
        process.stdin = next(p.stdin)?.map(|s| Box::new(s) as Writer);
        process.stdout = next(p.stdout)?.map(|s| Box::new(s) as Reader);
        process.stderr = next(p.stderr)?.map(|s| Box::new(s) as Reader);
        Ok(process)
    }

    async fn attach_session(&self, p: &AttachParams) -> Result<Attached> {
        let id = self.running_container(&p.container_id)?;
        let record =
            self.view(&id).map(|v| v.record).ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        let req = proto::v1::AttachRequest { stdin: p.stdin && record.stdin, stdout: p.stdout, stderr: p.stderr };
        let mut session = self.shim(&id).attach(req).await.map_err(shim_err)?;
        let io = |what: &str| io_err(format!("attach session of {id}: {what}"));
        let mut terminal = None;
        let mut stdin = None;
        if let Some(fd) = session.stdin.take() {
            if record.tty {
                terminal = Some(Terminal::new(fd.try_clone().map_err(io("dup of the terminal"))?));
            }
            stdin = Some(Box::new(SharedWriter::new(fd).map_err(io("stdin writer"))?) as Writer);
        }
        let (tx, rx) = tokio::sync::mpsc::channel(ATTACH_QUEUE);
        let container = id.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = session.next() => match next {
                        Ok(Some(out)) => {
                            if tx.send((out.stream, Bytes::from(out.data))).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(container = %container, error = %e, "attach output");
                            break;
                        }
                    },
                    () = tx.closed() => break,
                }
            }
        });
        Ok(Attached { stdin, output: rx, terminal, stdin_once: record.stdin_once })
    }
}

#[async_trait::async_trait]
impl Backend for Runtime {
    async fn exec(&self, p: &ExecParams) -> std::result::Result<Process, String> {
        self.exec_session(p).await.map_err(|e| e.to_string())
    }

    async fn attach(&self, p: &AttachParams) -> std::result::Result<Attached, String> {
        self.attach_session(p).await.map_err(|e| e.to_string())
    }

    async fn close_stdin(&self, container_id: &str) -> std::result::Result<(), String> {
        let id = self.require_container(container_id).map_err(|e| e.to_string())?;
        self.shim(&id).close_stdin().await.map_err(|e| e.to_string())
    }

    async fn dial(&self, pod_id: &str, port: u16) -> std::result::Result<tokio::net::TcpStream, String> {
        self.dial_pod(pod_id, port).await.map_err(|e| match e {
            // The streaming server says which port of which pod.
            RuntimeError::Io { source, .. } => source.to_string(),
            other => other.to_string(),
        })
    }
}
