//! The streaming server: the URLs that Exec, Attach and PortForward return lead here. kubelet
//! (or crictl) connects to one with HTTP/1.1 and upgrades to SPDY/3.1 or WebSocket; the token
//! in the URL names the request the RPC checked. The protocols (remote command, port-forward)
//! are served over either transport; what they run goes through a [`Backend`] (the runtime), so
//! they are tested with a fake one.

mod fdio;
mod http;
mod idle;
mod portforward;
mod protocol;
mod remotecommand;
mod resize;
mod spdy_transport;
mod tls;
mod tokens;
mod ws;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use fdio::{FdStream, SharedWriter, Terminal};
pub use tokens::TokenError;

use crate::config::StreamingConfig;

/// A byte source of a session (a client stream, a process's output).
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// A byte sink of a session.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;
pub type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// An Exec request as the RPC accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecParams {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An Attach request as the RPC accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachParams {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A PortForward request as the RPC accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardParams {
    pub pod_id: String,
    /// The ports of the request (the WebSocket form forwards these; SPDY names them per stream).
    pub ports: Vec<u16>,
}

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Exec(ExecParams),
    Attach(AttachParams),
    PortForward(PortForwardParams),
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// A command started for an exec session. Dropping it (and its `exit`) ends the command if it
/// still runs.
pub struct Process {
    pub stdin: Option<Writer>,
    pub stdout: Option<Reader>,
    pub stderr: Option<Reader>,
    pub terminal: Option<Terminal>,
    /// Resolves with the exit code (128 + signal when killed) once the command exited.
    pub exit: BoxFuture<Result<i32, String>>,
}

/// A container's stdio, attached.
pub struct Attached {
    /// The container's stdin (a pty master with a tty), when it has one and it was asked for.
    pub stdin: Option<Writer>,
    /// Output chunks: (1 stdout | 2 stderr, bytes); ends when the container's output ended.
    pub output: tokio::sync::mpsc::Receiver<(u32, bytes::Bytes)>,
    pub terminal: Option<Terminal>,
    /// The container was created with stdin_once: its stdin closes when this attach ends.
    pub stdin_once: bool,
}

/// What the streaming server needs from the runtime.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn exec(&self, p: &ExecParams) -> Result<Process, String>;
    async fn attach(&self, p: &AttachParams) -> Result<Attached, String>;
    /// Closes the container's stdin (stdin_once after an attach).
    async fn close_stdin(&self, container_id: &str) -> Result<(), String>;
    /// A TCP connection to `localhost:port` inside the pod's network namespace.
    async fn dial(&self, pod_id: &str, port: u16) -> Result<tokio::net::TcpStream, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    /// binding
    #[error("binding the streaming server to {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// TLS
    #[error("streaming TLS: {0}")]
    Tls(String),
    /// config
    #[error("streaming configuration: {0}")]
    Config(String),
}

/// Settings the protocols share.
#[derive(Debug, Clone)]
pub struct Settings {
    /// None: never.
    pub idle_timeout: Option<Duration>,
    /// How long a client has to open the streams of a session (kubelet: 30 s).
    pub stream_creation_timeout: Duration,
}

/// The running streaming server: hands out URLs.
pub struct Streaming {
    base: String,
    tokens: tokens::Tokens<Pending>,
}

impl Streaming {
    /// Binds and starts serving; the server runs as long as the tokio runtime does.
    pub async fn start(cfg: &StreamingConfig, backend: Arc<dyn Backend>) -> Result<Arc<Streaming>, StreamingError> {
        let ip: std::net::IpAddr = cfg
            .address
            .parse()
            .map_err(|_| StreamingError::Config(format!("address {:?} is not an IP address", cfg.address)))?;
        let idle_timeout = cfg.idle_timeout().map_err(|e| StreamingError::Config(e.to_string()))?;
        let tls = if cfg.tls || !cfg.tls_cert.as_os_str().is_empty() {
            Some(tls::acceptor(&cfg.tls_cert, &cfg.tls_key)?)
        } else {
            None
        };
        let addr = SocketAddr::new(ip, cfg.port);
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| StreamingError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| StreamingError::Bind { addr, source })?;
        let base = base_url(local, tls.is_some());
        let streaming = Arc::new(Streaming { base, tokens: tokens::Tokens::new(tokens::TTL, tokens::MAX_PENDING) });
        let settings = Settings { idle_timeout, stream_creation_timeout: Duration::from_secs(30) };
        tracing::info!(url = %streaming.base, "streaming server listening");
        tokio::spawn(http::serve(listener, tls, Arc::downgrade(&streaming), backend, settings));
        Ok(streaming)
    }

    /// The URL for `request`, valid once within a minute.
    pub fn url(&self, request: Pending) -> Result<String, TokenError> {
        let path = request.path();
        let token = self.tokens.insert(request)?;
        Ok(format!("{}/{path}/{token}", self.base))
    }

    fn take(&self, token: &str) -> Option<Pending> {
        self.tokens.take(token)
    }
}

/// `http(s)://host:port` for the listening address; an unspecified address (all interfaces)
/// is reached on loopback, where kubelet runs.
fn base_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("{scheme}://{host}:{}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_absolute() {
        assert_eq!(base_url("127.0.0.1:1234".parse().unwrap(), false), "http://127.0.0.1:1234");
        assert_eq!(base_url("0.0.0.0:1".parse().unwrap(), true), "https://127.0.0.1:1");
        assert_eq!(base_url("[::]:2".parse().unwrap(), false), "http://[::1]:2");
        assert_eq!(base_url("[fd00::1]:3".parse().unwrap(), false), "http://[fd00::1]:3");
    }
}
