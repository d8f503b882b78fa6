//! Talking to corral-shim: launching one for a bundle, and its request/response protocol on
//! `<bundle>/shim.sock` (proto/shim.proto).

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::os::fd::{AsRawFd, OwnedFd};

use common::fdpass;
use proto::v1::{request, response, ErrorKind, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// How long a shim may take to create a container before corrald gives up.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// starting corral-shim for {id}: {detail}
    #[error("starting corral-shim for {id}: {detail}")]
    Launch { id: String, detail: String },
    /// shim of {id} is not reachable: {source}
    #[error("shim of {id} is not reachable: {source}")]
    Unreachable { id: String, source: std::io::Error },
    /// the shim reported an error
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
    /// shim of {id} answered {what} unexpectedly
    #[error("shim of {id} gave an unexpected answer to {what}")]
    Protocol { id: String, what: &'static str },
    /// timeout
    #[error("shim of {id} did not answer {what} within {after:?}")]
    Timeout { id: String, what: &'static str, after: Duration },
}

#[derive(serde::Deserialize)]
struct LaunchReply {
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    error: Option<String>,
}

/// Runs `corral-shim <mode> --bundle <dir> --id <id>` and returns the pid it reports
/// (the container process, or the pause process).
pub async fn launch(shim: &Path, mode: &str, bundle: &Path, id: &str) -> Result<u32, ShimError> {
    let err = |detail: String| ShimError::Launch { id: id.to_string(), detail };
    let mut cmd = tokio::process::Command::new(shim);
    cmd.arg(mode).arg("--bundle").arg(bundle).arg("--id").arg(id);
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(LAUNCH_TIMEOUT, cmd.output())
        .await
        .map_err(|_| err(format!("no answer within {LAUNCH_TIMEOUT:?}")))?
        .map_err(|e| err(format!("running {}: {e}", shim.display())))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reply: Option<LaunchReply> = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok());
    match reply {
        Some(LaunchReply { pid: Some(pid), error: None }) if output.status.success() => Ok(pid),
        Some(LaunchReply { error: Some(e), .. }) => Err(err(e)),
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(err(format!("{} exited with {}: {}{}", shim.display(), output.status, stdout.trim(), stderr.trim())))
        }
    }
}

/// A handle on one shim's socket.
#[derive(Debug, Clone)]
pub struct Shim {
    id: String,
    socket: PathBuf,
}

impl Shim {
    pub fn new(id: &str, bundle: &Path) -> Shim {
        Shim { id: id.to_string(), socket: bundle.join(proto::SOCKET_NAME) }
    }

    /// Sends one request and reads its answer; `timeout` None waits as long as it takes.
    pub async fn call(
        &self,
        what: &'static str,
        kind: request::Kind,
        timeout: Option<Duration>,
    ) -> Result<response::Kind, ShimError> {
        let fut = self.round_trip(Request { kind: Some(kind) });
        let resp = match timeout {
            Some(after) => tokio::time::timeout(after, fut).await.map_err(|_| ShimError::Timeout {
                id: self.id.clone(),
                what,
                after,
            })?,
            None => fut.await,
        }
        .map_err(|source| ShimError::Unreachable { id: self.id.clone(), source })?;
        if !resp.error.is_empty() {
            return Err(ShimError::Remote { kind: resp.error_kind(), message: resp.error });
        }
        resp.kind.ok_or(ShimError::Protocol { id: self.id.clone(), what })
    }

    async fn round_trip(&self, req: Request) -> std::io::Result<Response> {
        let mut stream = UnixStream::connect(&self.socket).await?;
        stream.write_all(&proto::encode_frame(&req)).await?;
        read_response(&mut stream).await
    }

    /// Opens a session connection: sends `kind` and reads the first answer with the descriptors
    /// that came with it.
    async fn open_session(
        &self,
        what: &'static str,
        kind: request::Kind,
    ) -> Result<(UnixStream, response::Kind, Vec<OwnedFd>), ShimError> {
        let unreachable = |source| ShimError::Unreachable { id: self.id.clone(), source };
        let mut conn = UnixStream::connect(&self.socket).await.map_err(unreachable)?;
        conn.write_all(&proto::encode_frame(&Request { kind: Some(kind) })).await.map_err(unreachable)?;
        let opened = tokio::time::timeout(SESSION_OPEN_TIMEOUT, read_response_with_fds(&mut conn))
            .await
            .map_err(|_| ShimError::Timeout { id: self.id.clone(), what, after: SESSION_OPEN_TIMEOUT })?;
        let (resp, fds) = opened.map_err(unreachable)?;
        if !resp.error.is_empty() {
            return Err(ShimError::Remote { kind: resp.error_kind(), message: resp.error });
        }
        let kind = resp.kind.ok_or(ShimError::Protocol { id: self.id.clone(), what })?;
        Ok((conn, kind, fds))
    }

    /// Starts a command in the container with its stdio handed to us (see ExecStreamRequest).
    pub async fn exec_stream(&self, req: proto::v1::ExecStreamRequest) -> Result<ExecSession, ShimError> {
        let wanted = if req.tty { 1 } else { [req.stdin, req.stdout, req.stderr].iter().filter(|b| **b).count() };
        let (conn, kind, fds) = self.open_session("ExecStream", request::Kind::ExecStream(req)).await?;
        match kind {
            response::Kind::Fds(f) if f.count as usize == wanted && fds.len() == wanted => {
                Ok(ExecSession { id: self.id.clone(), pid: f.pid, fds, conn })
            }
            _ => Err(ShimError::Protocol { id: self.id.clone(), what: "ExecStream" }),
        }
    }

    /// Attaches to the container's stdio (see AttachRequest).
    pub async fn attach(&self, req: proto::v1::AttachRequest) -> Result<AttachSession, ShimError> {
        let (conn, kind, mut fds) = self.open_session("Attach", request::Kind::Attach(req)).await?;
        match kind {
            response::Kind::Fds(f) if f.count as usize == fds.len() && fds.len() <= 1 => {
                Ok(AttachSession { id: self.id.clone(), stdin: fds.pop(), conn })
            }
            _ => Err(ShimError::Protocol { id: self.id.clone(), what: "Attach" }),
        }
    }

    /// Closes the container's stdin (stdin_once).
    pub async fn close_stdin(&self) -> Result<(), ShimError> {
        self.call("CloseStdin", request::Kind::CloseStdin(Default::default()), Some(Duration::from_secs(10)))
            .await
            .map(|_| ())
    }

    pub async fn state(&self) -> Result<proto::v1::State, ShimError> {
        match self.call("State", request::Kind::State(Default::default()), Some(Duration::from_secs(10))).await? {
            response::Kind::State(s) => Ok(s),
            _ => Err(ShimError::Protocol { id: self.id.clone(), what: "State" }),
        }
    }

    pub async fn start(&self) -> Result<(), ShimError> {
        self.call("Start", request::Kind::Start(Default::default()), Some(Duration::from_secs(60))).await.map(|_| ())
    }

    pub async fn kill(&self, signal: i32, all: bool) -> Result<(), ShimError> {
        self.call("Kill", request::Kind::Kill(proto::v1::KillRequest { signal, all }), Some(Duration::from_secs(10)))
            .await
            .map(|_| ())
    }

    /// Waits for the exit; `None` waits forever. Err(Timeout) when it did not exit in time.
    pub async fn wait(&self, timeout: Option<Duration>) -> Result<proto::v1::Exit, ShimError> {
        let timeout_ms = timeout.map(|t| t.as_millis().max(1) as u64).unwrap_or(0);
        // The shim enforces the timeout; ours is a little longer, for a shim that hangs.
        let ours = timeout.map(|t| t + Duration::from_secs(5));
        match self.call("Wait", request::Kind::Wait(proto::v1::WaitRequest { timeout_ms }), ours).await {
            Ok(response::Kind::Exit(e)) => Ok(e),
            Ok(_) => Err(ShimError::Protocol { id: self.id.clone(), what: "Wait" }),
            Err(ShimError::Remote { kind: ErrorKind::DeadlineExceeded, .. }) => {
                Err(ShimError::Timeout { id: self.id.clone(), what: "Wait", after: timeout.unwrap_or_default() })
            }
            Err(e) => Err(e),
        }
    }

    pub async fn exec(&self, req: proto::v1::ExecRequest) -> Result<proto::v1::ExecResult, ShimError> {
        let ours = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms) + Duration::from_secs(10));
        match self.call("Exec", request::Kind::Exec(req), ours).await? {
            response::Kind::Exec(r) => Ok(r),
            _ => Err(ShimError::Protocol { id: self.id.clone(), what: "Exec" }),
        }
    }

    pub async fn reopen_log(&self) -> Result<(), ShimError> {
        self.call("ReopenLog", request::Kind::ReopenLog(Default::default()), Some(Duration::from_secs(10)))
            .await
            .map(|_| ())
    }

    pub async fn shutdown(&self) -> Result<(), ShimError> {
        self.call("Shutdown", request::Kind::Shutdown(Default::default()), Some(Duration::from_secs(10)))
            .await
            .map(|_| ())
    }
}

/// How long a shim may take to start an exec session or an attach.
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

async fn read_response(conn: &mut UnixStream) -> std::io::Result<Response> {
    let mut header = [0u8; 4];
    conn.read_exact(&mut header).await?;
    let mut body = vec![0u8; proto::frame_len(header)?];
    conn.read_exact(&mut body).await?;
    proto::decode(&body)
}

/// Reads one framed Response whose first byte carries descriptors (SCM_RIGHTS).
async fn read_response_with_fds(conn: &mut UnixStream) -> std::io::Result<(Response, Vec<OwnedFd>)> {
    let mut header = [0u8; 4];
    let fd = conn.as_raw_fd();
    let (n, fds) = loop {
        conn.readable().await?;
        match conn.try_io(Interest::READABLE, || fdpass::recv_with_fds(fd, &mut header)) {
            Ok(r) => break r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    if n == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the shim closed the session"));
    }
    conn.read_exact(&mut header[n..]).await?;
    let mut body = vec![0u8; proto::frame_len(header)?];
    conn.read_exact(&mut body).await?;
    Ok((proto::decode(&body)?, fds))
}

/// A command started by ExecStream. Dropping it closes the connection, which makes the shim
/// kill the command if it still runs.
#[derive(Debug)]
pub struct ExecSession {
    id: String,
    /// The command's host pid.
    pub pid: u32,
    /// With tty: the pty master; else the stdin writer, stdout reader, stderr reader, those asked for.
    pub fds: Vec<OwnedFd>,
    conn: UnixStream,
}

impl ExecSession {
    /// Waits for the command to exit.
    pub async fn wait(&mut self) -> Result<proto::v1::Exit, ShimError> {
        let resp = read_response(&mut self.conn)
            .await
            .map_err(|source| ShimError::Unreachable { id: self.id.clone(), source })?;
        if !resp.error.is_empty() {
            return Err(ShimError::Remote { kind: resp.error_kind(), message: resp.error });
        }
        match resp.kind {
            Some(response::Kind::Exit(e)) => Ok(e),
            _ => Err(ShimError::Protocol { id: self.id.clone(), what: "ExecStream" }),
        }
    }
}

/// An attach to the container's stdio: output comes as messages; the stdin writer (or the pty
/// master) if the container has a stdin and it was asked for.
#[derive(Debug)]
pub struct AttachSession {
    id: String,
    pub stdin: Option<OwnedFd>,
    conn: UnixStream,
}

impl AttachSession {
    /// The next chunk of output; None once the container's output ended.
    pub async fn next(&mut self) -> Result<Option<proto::v1::Output>, ShimError> {
        let resp = match read_response(&mut self.conn).await {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => return Err(ShimError::Unreachable { id: self.id.clone(), source }),
        };
        if !resp.error.is_empty() {
            return Err(ShimError::Remote { kind: resp.error_kind(), message: resp.error });
        }
        match resp.kind {
            Some(response::Kind::Output(o)) => Ok(Some(o)),
            _ => Err(ShimError::Protocol { id: self.id.clone(), what: "Attach" }),
        }
    }
}

/// Reads the exit record a shim left in its bundle.
pub fn read_exit_file(bundle: &Path) -> Option<proto::v1::Exit> {
    let bytes = std::fs::read(bundle.join(proto::EXIT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}
