//! Clients for the Kubernetes streaming protocols, written from the protocol as client-go (kubelet,
//! kubectl, crictl) speaks it, not from corrald's server:
//!
//! - the HTTP/1.1 upgrade to `SPDY/3.1` with `X-Stream-Protocol-Version` negotiation
//!   (client-go `transport/spdy`, apimachinery `spdy/roundtripper.go`);
//! - remotecommand (exec, attach) over SPDY: streams made in client-go's order (error, stdin,
//!   stdout, stderr unless tty, resize for v3+ with tty), each waiting for its reply; stdin
//!   half-closed at its end; the error stream decoded as v1–v3 text or v4 JSON status
//!   (`tools/remotecommand/{v1,v2,v3,v4}.go`);
//! - remotecommand over WebSocket: `v5.channel.k8s.io` (what crictl `--transport websocket`
//!   offers), `v4.channel.k8s.io`, `channel.k8s.io`, and the base64 forms (text messages);
//! - port-forward over SPDY (`portforward.k8s.io`: per connection an error stream, half-closed at
//!   once, then a data stream, both with `port` and `requestID`), over the SPDY-in-WebSocket
//!   tunnel crictl uses (`SPDY/3.1+portforward.k8s.io`), and the plain WebSocket form
//!   (`v4.channel.k8s.io`, ports from the CRI request);
//! - raw bytes for hostile-input tests (frames written by hand, frames read by hand).
//!
//! The SPDY sessions come from `corral-spdy` (the crate the server uses too); the raw helpers and
//! the replay of bytes captured from a real Go spdystream client check the server without it.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, SinkExt, Stream as _, StreamExt};
use spdy::{Incoming, RecvHalf, SendHalf, Session};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::cri_api::v1 as cri;

// ---- protocol names -------------------------------------------------------------------------

pub const STREAM_PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";
pub const ACCEPTED_PROTOCOLS_HEADER: &str = "X-Accepted-Stream-Protocol-Versions";
pub const V1: &str = "channel.k8s.io";
pub const V2: &str = "v2.channel.k8s.io";
pub const V3: &str = "v3.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
pub const V5: &str = "v5.channel.k8s.io";
pub const BASE64: &str = "base64.channel.k8s.io";
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
pub const PORT_FORWARD: &str = "portforward.k8s.io";
pub const WS_PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// What client-go's SPDY executor offers for exec and attach, in its order
/// (`NewSPDYExecutorForTransports`).
pub const CLIENT_GO_SPDY: &[&str] = &[V5, V4, V3, V2, V1];

/// How long one wait of these clients may take before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(60);

/// The WebSocket channel ids (`k8s.io/apimachinery/pkg/util/remotecommand`).
pub const CH_STDIN: u8 = 0;
pub const CH_STDOUT: u8 = 1;
pub const CH_STDERR: u8 = 2;
pub const CH_ERROR: u8 = 3;
pub const CH_RESIZE: u8 = 4;
pub const CH_CLOSE: u8 = 255;

// ---- CRI shortcuts --------------------------------------------------------------------------

/// Which of stdin, stdout, stderr and tty a session asks for (the CRI request and the client
/// options agree, as crictl makes them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Streams {
    /// stdout and stderr, as `crictl exec c cmd`.
    pub const OUT: Streams = Streams { stdin: false, stdout: true, stderr: true, tty: false };
    /// stdin, stdout and stderr, as `crictl exec -i c cmd`.
    pub const IO: Streams = Streams { stdin: true, stdout: true, stderr: true, tty: false };
    /// stdin, stdout and a tty, as `crictl exec -it c cmd` (crictl asks stderr = !tty).
    pub const TTY: Streams = Streams { stdin: true, stdout: true, stderr: false, tty: true };
}

pub fn exec_request(container: &str, cmd: &[&str], s: Streams) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: container.into(),
        cmd: cmd.iter().map(|c| c.to_string()).collect(),
        tty: s.tty,
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
        audit_request_id: String::new(),
    }
}

pub fn attach_request(container: &str, s: Streams) -> cri::AttachRequest {
    cri::AttachRequest {
        container_id: container.into(),
        stdin: s.stdin,
        tty: s.tty,
        stdout: s.stdout,
        stderr: s.stderr,
        audit_request_id: String::new(),
    }
}

/// The URL of an Exec RPC.
pub async fn exec_url(rt: &mut crate::Runtime, req: cri::ExecRequest) -> Result<String, tonic::Status> {
    crate::rpc(rt.exec(req)).await.map(|r| r.into_inner().url)
}

pub async fn attach_url(rt: &mut crate::Runtime, req: cri::AttachRequest) -> Result<String, tonic::Status> {
    crate::rpc(rt.attach(req)).await.map(|r| r.into_inner().url)
}

pub async fn port_forward_url(rt: &mut crate::Runtime, pod: &str, ports: &[i32]) -> Result<String, tonic::Status> {
    let req = cri::PortForwardRequest { pod_sandbox_id: pod.into(), port: ports.to_vec() };
    crate::rpc(rt.port_forward(req)).await.map(|r| r.into_inner().url)
}

// ---- URLs and HTTP/1.1 ----------------------------------------------------------------------

/// `http://host:port/path?query` split into the address to dial and the request target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub authority: String,
    pub target: String,
}

pub fn parse_url(url: &str) -> Url {
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http:// URL: {url:?}"));
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    assert!(!authority.is_empty(), "no host in {url:?}");
    Url { authority: authority.to_string(), target: target.to_string() }
}

/// `url` with its path replaced (same host and port), for wrong-route and unknown-token tests.
pub fn with_path(url: &str, path: &str) -> String {
    format!("http://{}{}", parse_url(url).authority, path)
}

/// The last path segment of a streaming URL (the token).
pub fn token_of(url: &str) -> String {
    parse_url(url).target.rsplit('/').next().unwrap_or_default().to_string()
}

#[derive(Clone, Debug, Default)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, each header line split at commas as Go's `Handshake` reads them.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header_contains(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.to_ascii_lowercase().contains(&token.to_ascii_lowercase()))
    }
}

/// An IO that first yields bytes already read from the connection (those past the response
/// head), then the connection's own.
pub struct Replay<IO> {
    prefix: Vec<u8>,
    pos: usize,
    pub io: IO,
}

impl<IO> Replay<IO> {
    pub fn new(prefix: Vec<u8>, io: IO) -> Replay<IO> {
        Replay { prefix, pos: 0, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Replay<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Replay<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The request head client-go writes for a SPDY upgrade (`http.Request.Write` of the
/// round tripper: Host, User-Agent, Content-Length 0 for a body-less POST, then the headers),
/// one `X-Stream-Protocol-Version` line per protocol (`req.Header.Add`).
pub fn spdy_upgrade_head(method: &str, url: &str, protocols: &[&str]) -> Vec<u8> {
    let u = parse_url(url);
    let mut head =
        format!("{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: Go-http-client/1.1\r\n", u.target, u.authority);
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n");
    for p in protocols {
        head.push_str(&format!("{STREAM_PROTOCOL_HEADER}: {p}\r\n"));
    }
    head.push_str("Accept-Encoding: gzip\r\n\r\n");
    head.into_bytes()
}

/// Dials the URL's host, writes `head`, reads the response head. A 101 comes back with the
/// connection (and whatever followed the head); any other status with its body read.
pub async fn http_exchange(url: &str, head: &[u8]) -> io::Result<(HttpResponse, Replay<TcpStream>)> {
    let u = parse_url(url);
    let mut tcp = tokio::time::timeout(WAIT, TcpStream::connect(&u.authority))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    tcp.write_all(head).await?;
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "response head over 1 MiB"));
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response head"))??;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before the response head ({} bytes: {:?})",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf[end + 4..].to_vec();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))).collect();
    let mut resp = HttpResponse { status, reason, headers, body: Vec::new() };
    if status == 101 {
        return Ok((resp, Replay::new(rest, tcp)));
    }
    // A refusal: its body, by Content-Length, chunked, or up to the connection's end.
    let mut body = rest;
    if let Some(len) = resp.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            if read_more(&mut tcp, &mut body).await? == 0 {
                break;
            }
        }
        body.truncate(len);
    } else if resp.header_contains("transfer-encoding", "chunked") {
        while find(&body, b"0\r\n\r\n").is_none() {
            if read_more(&mut tcp, &mut body).await? == 0 {
                break;
            }
        }
        body = dechunk(&body);
    } else {
        while let Ok(n) = read_more(&mut tcp, &mut body).await {
            if n == 0 {
                break;
            }
        }
    }
    resp.body = body;
    Ok((resp, Replay::new(Vec::new(), tcp)))
}

async fn read_more(tcp: &mut TcpStream, body: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "body timed out"))??;
    body.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(data, b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..i]).split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or(0);
        data = &data[i + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
    out
}

/// Why a connection did not become a session.
#[derive(Debug)]
pub enum ConnectError {
    Io(io::Error),
    /// The server answered without upgrading (404 for a spent token, 403 for no common protocol...).
    Refused(HttpResponse),
    /// A 101 that client-go would not take (missing upgrade headers, wrong protocol).
    BadUpgrade(String),
}

impl ConnectError {
    /// The refusal's status code, panicking on anything else.
    pub fn status(&self) -> u16 {
        match self {
            ConnectError::Refused(r) => r.status,
            other => panic!("expected an HTTP refusal, got {other:?}"),
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connection: {e}"),
            ConnectError::Refused(r) => write!(f, "refused: {} {} {:?}", r.status, r.reason, r.body_text()),
            ConnectError::BadUpgrade(s) => write!(f, "bad upgrade: {s}"),
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Io(e)
    }
}

/// A SPDY/3.1 client session on a streaming URL.
pub struct SpdyConn {
    /// `X-Stream-Protocol-Version` of the 101 (None when absent).
    pub protocol: Option<String>,
    pub response: HttpResponse,
    pub session: Session,
    pub incoming: Incoming,
}

/// The upgrade as client-go does it; the 101 checked as `spdy/roundtripper.go` checks it.
pub async fn spdy_connect(method: &str, url: &str, protocols: &[&str]) -> Result<SpdyConn, ConnectError> {
    let (response, io) = http_exchange(url, &spdy_upgrade_head(method, url, protocols)).await?;
    if response.status != 101 {
        return Err(ConnectError::Refused(response));
    }
    if !response.header_contains("connection", "upgrade") || !response.header_contains("upgrade", "spdy/3.1") {
        return Err(ConnectError::BadUpgrade(format!(
            "101 without Connection: Upgrade / Upgrade: SPDY/3.1: {response:?}"
        )));
    }
    let protocol = response.header(STREAM_PROTOCOL_HEADER).map(String::from).filter(|p| !p.is_empty());
    let (session, incoming) = Session::client(io, spdy::Config::default());
    Ok(SpdyConn { protocol, response, session, incoming })
}

// ---- WebSocket ------------------------------------------------------------------------------

pub type Ws = WebSocketStream<TcpStream>;

/// A WebSocket client handshake (GET, `Sec-WebSocket-Protocol` with `protocols` joined by ", ",
/// as gorilla does). tungstenite checks the 101 as gorilla/client-go do: the accept key, and a
/// subprotocol that is one of those offered.
pub async fn ws_connect(url: &str, protocols: &[&str]) -> Result<(Ws, Option<String>), ConnectError> {
    let u = parse_url(url);
    let mut req = format!("ws://{}{}", u.authority, u.target)
        .into_client_request()
        .map_err(|e| ConnectError::BadUpgrade(format!("request: {e}")))?;
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols.join(", ").parse().map_err(|e| ConnectError::BadUpgrade(format!("{e}")))?,
        );
    }
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(&u.authority))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    use tokio_tungstenite::tungstenite::Error as WsError;
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp)).await {
        Err(_) => Err(ConnectError::Io(io::Error::new(io::ErrorKind::TimedOut, "websocket handshake timed out"))),
        Ok(Ok((ws, resp))) => {
            let chosen = resp.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).map(String::from);
            Ok((ws, chosen))
        }
        Ok(Err(WsError::Http(resp))) => {
            let headers = resp
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            Err(ConnectError::Refused(HttpResponse {
                status: resp.status().as_u16(),
                reason: resp.status().canonical_reason().unwrap_or_default().to_string(),
                headers,
                body: resp.body().clone().unwrap_or_default(),
            }))
        }
        Ok(Err(WsError::Io(e))) => Err(ConnectError::Io(e)),
        Ok(Err(e)) => Err(ConnectError::BadUpgrade(e.to_string())),
    }
}

/// A WebSocket as a byte stream, as client-go's `TunnelingConnection` and the API server's
/// tunnel use it: every write is one binary message; reads concatenate binary messages.
/// With `fragment`, writes are cut the way Go's spdystream writes a frame field by field
/// (4 bytes, 4 bytes, the rest) and zero-length messages are slipped in, as the Go client does.
pub struct WsBytes {
    ws: Ws,
    fragment: bool,
    step: usize,
    pending_empty: bool,
    read_buf: VecDeque<u8>,
    close_sent: bool,
    eof: bool,
}

impl WsBytes {
    pub fn new(ws: Ws, fragment: bool) -> WsBytes {
        WsBytes {
            ws,
            fragment,
            step: 0,
            pending_empty: false,
            read_buf: VecDeque::new(),
            close_sent: false,
            eof: false,
        }
    }
}

fn ws_io_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    match e {
        tokio_tungstenite::tungstenite::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl AsyncRead for WsBytes {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.read_buf.is_empty() {
                let n = this.read_buf.len().min(buf.remaining());
                let bytes: Vec<u8> = this.read_buf.drain(..n).collect();
                buf.put_slice(&bytes);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => {
                    this.eof = true;
                }
                Some(Ok(Message::Binary(b))) => this.read_buf.extend(b.iter()),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "invalid message type received",
                    )))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_io_err(e))),
            }
        }
    }
}

impl AsyncWrite for WsBytes {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_io_err)?;
        if this.pending_empty {
            this.pending_empty = false;
            Pin::new(&mut this.ws).start_send(Message::Binary(Vec::new().into())).map_err(ws_io_err)?;
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_io_err)?;
        }
        let n = if this.fragment {
            // 4 bytes, 4 bytes, the rest; then an empty message.
            let n = if this.step < 2 { 4 } else { usize::MAX };
            this.step += 1;
            if this.step == 3 {
                this.step = 0;
                this.pending_empty = true;
            }
            n.min(buf.len())
        } else {
            buf.len()
        };
        Pin::new(&mut this.ws).start_send(Message::Binary(buf[..n].to_vec().into())).map_err(ws_io_err)?;
        // Each message goes out as it is written, as Go's writes do.
        let _ = Pin::new(&mut this.ws).poll_flush(cx).map_err(ws_io_err)?;
        Poll::Ready(Ok(n))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_io_err)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_sent {
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_io_err)?;
            let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
            Pin::new(&mut this.ws).start_send(Message::Close(Some(frame))).map_err(ws_io_err)?;
            this.close_sent = true;
        }
        match ready!(Pin::new(&mut this.ws).poll_flush(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ws_io_err(e))),
        }
    }
}

// ---- remotecommand: exec and attach --------------------------------------------------------

/// How a test's client talks.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    /// SPDY/3.1 upgrade with POST (crictl, kubectl through the API server), offering these
    /// protocols in this order.
    Spdy(&'static [&'static str]),
    /// The same upgrade with GET (the CRI streaming server routes both methods).
    SpdyGet(&'static [&'static str]),
    /// WebSocket (GET) offering these subprotocols.
    WebSocket(&'static [&'static str]),
}

/// `crictl exec`/`attach` (SPDY, the default transport).
pub const CRICTL: Client = Client::Spdy(CLIENT_GO_SPDY);
/// `crictl --transport websocket exec`/`attach`: v5 only.
pub const CRICTL_WS: Client = Client::WebSocket(&[V5]);

/// Output channels of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ch {
    Stdout = 0,
    Stderr = 1,
    Error = 2,
}

/// How a stream's reading ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// FIN (SPDY), a v5 close signal or the WebSocket's Close.
    Fin,
    /// RST_STREAM, an error on the stream, or the connection's end without FIN.
    Broken(String),
}

enum Event {
    Data(Ch, Vec<u8>),
    End(Ch, End),
    /// WebSocket: the server's close frame code (None: no close frame, the TCP connection ended).
    Closed(Option<u16>),
    /// WebSocket: a pong.
    Pong,
    /// Something client-go would reject (a text message on a binary protocol, bad base64, a
    /// malformed close signal...).
    Violation(String),
}

enum Io {
    Spdy {
        session: Session,
        _incoming: Incoming,
        stdin: Option<Arc<Mutex<StdinHalf>>>,
        resize: Option<SendHalf>,
        /// Send halves the client never writes on (error, stdout, stderr): kept open as client-go
        /// keeps them, reset when the session ends.
        idle: Vec<SendHalf>,
    },
    Ws {
        sink: Arc<Mutex<SplitSink<Ws, Message>>>,
        base64: bool,
        v5: bool,
    },
}

struct StdinHalf {
    half: SendHalf,
    closed: bool,
}

/// One exec or attach session. Output is collected in the background; `stdout`, `stderr` and
/// `error` hold what has been processed by the last wait.
pub struct RemoteCommand {
    pub protocol: String,
    pub streams: Streams,
    io: Io,
    events: mpsc::UnboundedReceiver<Event>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub error: Vec<u8>,
    pub ends: [Option<End>; 3],
    /// WebSocket: the close frame's code, `Some(None)` when the connection ended without one.
    pub close: Option<Option<u16>>,
    /// WebSocket: pongs received.
    pub pongs: usize,
    /// What client-go would have rejected.
    pub violations: Vec<String>,
    expected: [bool; 3],
    tasks: Vec<JoinHandle<()>>,
    aborts: Vec<tokio::task::AbortHandle>,
}

impl Drop for RemoteCommand {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in &self.aborts {
            t.abort();
        }
    }
}

/// What a finished session produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub protocol: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub error: Vec<u8>,
    pub ends: [Option<End>; 3],
    pub close: Option<Option<u16>>,
}

/// The session's result as client-go decodes the error stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Success,
    /// v4+: NonZeroExitCode with an ExitCode cause (0–255, `strconv.ParseUint(.., 10, 8)`).
    ExitCode(u8),
    /// v4+: another Failure (its message, and its reason); v1–v3: the error text.
    Failure {
        reason: String,
        message: String,
    },
    /// What client-go rejects as `error stream protocol error`.
    ProtocolError(String),
}

/// Whether `protocol` carries the v4 JSON status on its error stream.
pub fn json_status(protocol: &str) -> bool {
    matches!(protocol, V4 | V5 | V4_BASE64)
}

/// client-go's `errorDecoderV4` (v4, v5) or `errorDecoderV1` (v1–v3), with `watchErrorStream`'s
/// rule that an empty error stream is success.
pub fn decode_status(protocol: &str, error: &[u8]) -> Status {
    if error.is_empty() {
        return Status::Success;
    }
    if !json_status(protocol) {
        return Status::Failure { reason: String::new(), message: String::from_utf8_lossy(error).into_owned() };
    }
    let v: serde_json::Value = match serde_json::from_slice(error) {
        Ok(v) => v,
        Err(e) => return Status::ProtocolError(format!("{e} in {:?}", String::from_utf8_lossy(error))),
    };
    let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
    match s(&v, "status").as_str() {
        "Success" => Status::Success,
        "Failure" => {
            if s(&v, "reason") == "NonZeroExitCode" {
                let Some(causes) = v.get("details").and_then(|d| d.get("causes")).and_then(|c| c.as_array()) else {
                    return Status::ProtocolError("details must be set".into());
                };
                for c in causes {
                    if s(c, "reason") != "ExitCode" {
                        continue;
                    }
                    return match s(c, "message").parse::<u8>() {
                        Ok(n) => Status::ExitCode(n),
                        Err(_) => Status::ProtocolError(format!("invalid exit code value {:?}", s(c, "message"))),
                    };
                }
                return Status::ProtocolError("no ExitCode cause given".into());
            }
            Status::Failure { reason: s(&v, "reason"), message: s(&v, "message") }
        }
        _ => Status::ProtocolError("unknown error".into()),
    }
}

impl Outcome {
    pub fn status(&self) -> Status {
        decode_status(&self.protocol, &self.error)
    }

    /// 0 for success, the exit code for NonZeroExitCode; panics on anything else.
    pub fn exit_code(&self) -> u8 {
        match self.status() {
            Status::Success => 0,
            Status::ExitCode(n) => n,
            other => panic!("no exit code in the session's status {other:?} (error stream {:?})", self.error_text()),
        }
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn error_text(&self) -> String {
        String::from_utf8_lossy(&self.error).into_owned()
    }
}

/// The numeric version of a remotecommand protocol (1 for `channel.k8s.io` and its base64 form).
pub fn version(protocol: &str) -> u8 {
    match protocol {
        V5 => 5,
        V4 | V4_BASE64 => 4,
        V3 => 3,
        V2 => 2,
        _ => 1,
    }
}

/// The resize message client-go writes (`json.NewEncoder(..).Encode(&TerminalSize{..})`).
pub fn resize_json(width: u16, height: u16) -> Vec<u8> {
    format!("{{\"Width\":{width},\"Height\":{height}}}\n").into_bytes()
}

fn spawn_reader(mut recv: RecvHalf, ch: Ch, tx: mpsc::UnboundedSender<Event>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match recv.read(&mut buf).await {
                Ok(0) => {
                    let _ = tx.send(Event::End(ch, End::Fin));
                    return;
                }
                Ok(n) => {
                    if tx.send(Event::Data(ch, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Event::End(ch, End::Broken(e.to_string())));
                    return;
                }
            }
        }
    })
}

impl RemoteCommand {
    fn new(
        protocol: String,
        streams: Streams,
        io: Io,
        events: mpsc::UnboundedReceiver<Event>,
        expected: [bool; 3],
        tasks: Vec<JoinHandle<()>>,
    ) -> RemoteCommand {
        RemoteCommand {
            protocol,
            streams,
            io,
            events,
            stdout: Vec::new(),
            stderr: Vec::new(),
            error: Vec::new(),
            ends: [None, None, None],
            close: None,
            pongs: 0,
            violations: Vec::new(),
            expected,
            tasks,
            aborts: Vec::new(),
        }
    }

    /// Connects to an exec or attach URL with `client` and sets the session up for `streams`
    /// (which must be what the CRI request asked).
    pub async fn connect(url: &str, client: Client, streams: Streams) -> Result<RemoteCommand, ConnectError> {
        match client {
            Client::Spdy(p) => RemoteCommand::spdy("POST", url, p, streams).await,
            Client::SpdyGet(p) => RemoteCommand::spdy("GET", url, p, streams).await,
            Client::WebSocket(p) => RemoteCommand::websocket(url, p, streams).await,
        }
    }

    /// client-go's SPDY executor: upgrade, then the streams made one by one in its order.
    pub async fn spdy(method: &str, url: &str, protocols: &[&str], s: Streams) -> Result<RemoteCommand, ConnectError> {
        let conn = spdy_connect(method, url, protocols).await?;
        // An empty answer makes client-go fall back to v1 (`newConnectionAndStream`).
        let protocol = conn.protocol.clone().unwrap_or_else(|| V1.to_string());
        if !protocols.contains(&protocol.as_str()) && conn.protocol.is_some() {
            return Err(ConnectError::BadUpgrade(format!("the server chose {protocol:?}, not offered")));
        }
        let (tx, events) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        let mut idle = Vec::new();
        let open = |kind: &'static str| {
            let session = conn.session.clone();
            async move {
                let headers = vec![("streamtype".to_string(), kind.to_string())];
                tokio::time::timeout(WAIT, session.open(headers, false))
                    .await
                    .map_err(|_| {
                        ConnectError::BadUpgrade(format!("no SYN_REPLY for the {kind} stream within {WAIT:?}"))
                    })?
                    .map_err(|e| ConnectError::BadUpgrade(format!("creating the {kind} stream: {e}")))
            }
        };
        // 1. error
        let (recv, send) = open("error").await?.split();
        tasks.push(spawn_reader(recv, Ch::Error, tx.clone()));
        idle.push(send);
        // 2. stdin
        let mut stdin = None;
        if s.stdin {
            let (mut recv, send) = open("stdin").await?.split();
            let half = Arc::new(Mutex::new(StdinHalf { half: send, closed: false }));
            // client-go reads the stdin stream until the server closes it, then closes its side.
            let h = half.clone();
            tasks.push(tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut recv, &mut sink).await;
                let mut h = h.lock().await;
                if !h.closed {
                    h.closed = true;
                    let _ = h.half.shutdown().await;
                }
            }));
            stdin = Some(half);
        }
        // 3. stdout
        if s.stdout {
            let (recv, send) = open("stdout").await?.split();
            tasks.push(spawn_reader(recv, Ch::Stdout, tx.clone()));
            idle.push(send);
        }
        // 4. stderr, never with a tty
        if s.stderr && !s.tty {
            let (recv, send) = open("stderr").await?.split();
            tasks.push(spawn_reader(recv, Ch::Stderr, tx.clone()));
            idle.push(send);
        }
        // 5. resize, v3 and later, with a tty
        let mut resize = None;
        if s.tty && version(&protocol) >= 3 {
            let (recv, send) = open("resize").await?.split();
            drop(recv);
            resize = Some(send);
        }
        let expected = [s.stdout, s.stderr && !s.tty, true];
        let io = Io::Spdy { session: conn.session, _incoming: conn.incoming, stdin, resize, idle };
        Ok(RemoteCommand::new(protocol, s, io, events, expected, tasks))
    }

    /// client-go's WebSocket executor (channel byte per message; text and base64 for the base64
    /// protocols).
    pub async fn websocket(url: &str, protocols: &[&str], s: Streams) -> Result<RemoteCommand, ConnectError> {
        let (ws, chosen) = ws_connect(url, protocols).await?;
        let protocol = chosen.unwrap_or_default();
        let base64 = protocol.contains("base64");
        let v5 = protocol == V5;
        let (sink, stream) = ws.split();
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(ws_demux(stream, base64, tx));
        let io = Io::Ws { sink: Arc::new(Mutex::new(sink)), base64, v5 };
        Ok(RemoteCommand::new(protocol, s, io, events, [true, true, true], vec![task]))
    }

    /// Writes to the process's stdin (SPDY DATA; WebSocket messages of at most 32 KiB, as
    /// client-go's `io.Copy`).
    pub async fn send_stdin(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.io {
            Io::Spdy { stdin, .. } => {
                let h = stdin.as_ref().ok_or_else(|| io::Error::other("no stdin stream"))?;
                let mut h = h.lock().await;
                if h.closed {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"));
                }
                tokio::time::timeout(WAIT, h.half.write_all(data))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "stdin write timed out"))??;
                Ok(())
            }
            Io::Ws { sink, base64, .. } => {
                for chunk in data.chunks(32 * 1024) {
                    ws_send(&mut *sink.lock().await, *base64, CH_STDIN, chunk).await?;
                }
                Ok(())
            }
        }
    }

    /// Writes `data` to stdin (then closes it when `close`) from a task of its own, as
    /// client-go's stdin copy runs beside the output copies: the session may end while it still
    /// writes (a command that does not read its input).
    pub fn spawn_stdin(&mut self, data: Vec<u8>, close: bool) -> JoinHandle<io::Result<()>> {
        let task = match &self.io {
            Io::Spdy { stdin: Some(h), .. } => {
                let h = h.clone();
                tokio::spawn(async move {
                    for chunk in data.chunks(32 * 1024) {
                        let mut g = h.lock().await;
                        if g.closed {
                            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"));
                        }
                        g.half.write_all(chunk).await?;
                    }
                    let mut g = h.lock().await;
                    if close && !g.closed {
                        g.closed = true;
                        g.half.shutdown().await?;
                    }
                    Ok(())
                })
            }
            Io::Spdy { stdin: None, .. } => tokio::spawn(async { Err(io::Error::other("no stdin stream")) }),
            Io::Ws { sink, base64, v5 } => {
                let (sink, base64, v5) = (sink.clone(), *base64, *v5);
                tokio::spawn(async move {
                    for chunk in data.chunks(32 * 1024) {
                        ws_send(&mut *sink.lock().await, base64, CH_STDIN, chunk).await?;
                    }
                    if close && v5 {
                        let msg = Message::Binary(vec![CH_CLOSE, CH_STDIN].into());
                        sink.lock().await.send(msg).await.map_err(ws_io_err)?;
                    }
                    Ok(())
                })
            }
        };
        self.aborts.push(task.abort_handle());
        task
    }

    /// Ends stdin: DATA with FIN on SPDY, the `[255, 0]` close signal on v5. Other WebSocket
    /// protocols cannot (an error).
    pub async fn close_stdin(&mut self) -> io::Result<()> {
        match &mut self.io {
            Io::Spdy { stdin, .. } => {
                let h = stdin.as_ref().ok_or_else(|| io::Error::other("no stdin stream"))?;
                let mut h = h.lock().await;
                if !h.closed {
                    h.closed = true;
                    h.half.shutdown().await?;
                }
                Ok(())
            }
            Io::Ws { sink, v5: true, .. } => {
                sink.lock().await.send(Message::Binary(vec![CH_CLOSE, CH_STDIN].into())).await.map_err(ws_io_err)
            }
            Io::Ws { .. } => Err(io::Error::other(format!("{} has no way to close stdin", self.protocol))),
        }
    }

    /// Sends a terminal size (the resize stream, or channel 4).
    pub async fn resize(&mut self, width: u16, height: u16) -> io::Result<()> {
        self.send_resize_raw(&resize_json(width, height)).await
    }

    /// Writes raw bytes on the resize stream (for JSON split over frames or several per frame).
    pub async fn send_resize_raw(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.io {
            Io::Spdy { resize, .. } => {
                let r = resize.as_mut().ok_or_else(|| io::Error::other("no resize stream (no tty, or v1/v2)"))?;
                r.write_all(data).await?;
                r.flush().await
            }
            Io::Ws { sink, base64, .. } => ws_send(&mut *sink.lock().await, *base64, CH_RESIZE, data).await,
        }
    }

    fn apply(&mut self, ev: Event) {
        match ev {
            Event::Data(ch, d) => match ch {
                Ch::Stdout => self.stdout.extend_from_slice(&d),
                Ch::Stderr => self.stderr.extend_from_slice(&d),
                Ch::Error => self.error.extend_from_slice(&d),
            },
            Event::End(ch, end) => {
                self.ends[ch as usize].get_or_insert(end);
            }
            Event::Pong => self.pongs += 1,
            Event::Violation(v) => self.violations.push(v),
            Event::Closed(code) => {
                self.close = Some(code);
                for e in self.ends.iter_mut() {
                    e.get_or_insert(End::Fin);
                }
            }
        }
    }

    /// Whether every output the session has ended.
    pub fn ended(&self) -> bool {
        (0..3).all(|i| !self.expected[i] || self.ends[i].is_some())
    }

    /// Processes output until `cond` holds (true), the session ends or `timeout` passes (false).
    pub async fn wait_until(&mut self, timeout: Duration, mut cond: impl FnMut(&RemoteCommand) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if self.ended() {
                return false;
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => self.apply(ev),
                Ok(None) => {
                    for e in self.ends.iter_mut() {
                        e.get_or_insert(End::Broken("the session's readers are gone".into()));
                    }
                    return cond(self);
                }
                Err(_) => return false,
            }
        }
    }

    /// Processes output until stdout holds `needle`.
    pub async fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> bool {
        let n = needle.as_bytes().to_vec();
        self.wait_until(timeout, |s| find(&s.stdout, &n).is_some()).await
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Reads to the end (stdout and stderr at their end and the error stream at its end, or the
    /// WebSocket closed), then closes the connection as client-go does (`conn.Close()`: RST for
    /// the streams it has not closed, GOAWAY; a close reply on WebSocket).
    pub async fn finish(mut self, timeout: Duration) -> Result<Outcome, String> {
        let done = self.wait_until(timeout, |s| s.ended()).await;
        if !done {
            return Err(format!(
                "the session did not end within {timeout:?}: ends {:?}, stdout {:?}, stderr {:?}, error {:?}",
                self.ends,
                String::from_utf8_lossy(&self.stdout),
                String::from_utf8_lossy(&self.stderr),
                String::from_utf8_lossy(&self.error)
            ));
        }
        // Whatever is already queued (the error stream may end before stdout's last bytes are processed).
        while let Ok(ev) = self.events.try_recv() {
            self.apply(ev);
        }
        self.shutdown().await;
        if !self.violations.is_empty() {
            return Err(format!("the server broke the protocol: {:?}", self.violations));
        }
        if let Io::Ws { .. } = self.io {
            // client-go reads any end but a close frame with 1000 as an error.
            if self.close != Some(Some(1000)) {
                return Err(format!("the WebSocket ended with {:?}, not a close frame with 1000", self.close));
            }
        }
        Ok(Outcome {
            protocol: self.protocol.clone(),
            stdout: std::mem::take(&mut self.stdout),
            stderr: std::mem::take(&mut self.stderr),
            error: std::mem::take(&mut self.error),
            ends: self.ends.clone(),
            close: self.close,
        })
    }

    async fn shutdown(&mut self) {
        match &mut self.io {
            Io::Spdy { session, stdin, resize, idle, .. } => {
                // A stdin writer stuck on a full connection holds the lock: no reset then.
                if let Some(h) = stdin {
                    if let Ok(h) = tokio::time::timeout(Duration::from_secs(1), h.lock()).await {
                        if !h.closed {
                            h.half.reset(5);
                        }
                    }
                }
                if let Some(r) = resize {
                    r.reset(5);
                }
                for h in idle.iter() {
                    h.reset(5);
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), session.goaway()).await;
                session.close();
            }
            Io::Ws { sink, .. } => {
                let _ = tokio::time::timeout(Duration::from_secs(5), async { sink.lock().await.close().await }).await;
            }
        }
    }

    /// Drops the connection at once (TCP closed, no GOAWAY, no close frame), as a client that is
    /// killed or loses its network.
    pub async fn abort(mut self) {
        match &mut self.io {
            Io::Spdy { session, .. } => session.close(),
            Io::Ws { .. } => {}
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in &self.aborts {
            t.abort();
        }
        // Dropping the sink and the reader task's stream closes the TCP connection.
    }

    /// The SPDY session (None on WebSocket).
    pub fn session(&self) -> Option<&Session> {
        match &self.io {
            Io::Spdy { session, .. } => Some(session),
            Io::Ws { .. } => None,
        }
    }

    /// WebSocket: sends a ping (as client-go's heartbeat).
    pub async fn ws_ping(&mut self, payload: &[u8]) -> io::Result<()> {
        match &mut self.io {
            Io::Ws { sink, .. } => {
                sink.lock().await.send(Message::Ping(payload.to_vec().into())).await.map_err(ws_io_err)
            }
            Io::Spdy { .. } => Err(io::Error::other("not a websocket")),
        }
    }
}

async fn ws_send(sink: &mut SplitSink<Ws, Message>, base64: bool, ch: u8, data: &[u8]) -> io::Result<()> {
    let msg = if base64 {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push((b'0' + ch) as char);
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        Message::Text(s.into())
    } else {
        let mut b = Vec::with_capacity(data.len() + 1);
        b.push(ch);
        b.extend_from_slice(data);
        Message::Binary(b.into())
    };
    tokio::time::timeout(WAIT, sink.send(msg))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "websocket write timed out"))?
        .map_err(ws_io_err)
}

async fn ws_demux(mut stream: SplitStream<Ws>, base64: bool, tx: mpsc::UnboundedSender<Event>) {
    let ch_of = |c: u8| match c {
        CH_STDOUT => Some(Ch::Stdout),
        CH_STDERR => Some(Ch::Stderr),
        CH_ERROR => Some(Ch::Error),
        _ => None,
    };
    while let Some(msg) = stream.next().await {
        let (channel, payload): (u8, Vec<u8>) = match msg {
            Ok(Message::Binary(b)) if !base64 => {
                if b.is_empty() {
                    continue;
                }
                if b[0] == CH_CLOSE {
                    // v5: [255, ch] ends that channel.
                    match (b.len(), ch_of(b.get(1).copied().unwrap_or(0))) {
                        (2, Some(ch)) => {
                            let _ = tx.send(Event::End(ch, End::Fin));
                        }
                        _ => {
                            let _ = tx.send(Event::Violation(format!("bad close signal {:?}", &b[..])));
                        }
                    }
                    continue;
                }
                (b[0], b[1..].to_vec())
            }
            Ok(Message::Text(t)) if base64 => {
                let t = t.as_bytes();
                if t.is_empty() {
                    continue;
                }
                let Some(c) = t[0].checked_sub(b'0') else { continue };
                match base64::engine::general_purpose::STANDARD.decode(&t[1..]) {
                    Ok(d) => (c, d),
                    Err(e) => {
                        let _ = tx.send(Event::Violation(format!("bad base64 from the server: {e}")));
                        continue;
                    }
                }
            }
            Ok(Message::Close(frame)) => {
                let _ = tx.send(Event::Closed(Some(frame.map(|f| u16::from(f.code)).unwrap_or(1005))));
                return;
            }
            Ok(Message::Pong(_)) => {
                let _ = tx.send(Event::Pong);
                continue;
            }
            Ok(Message::Ping(_)) | Ok(Message::Frame(_)) => continue,
            Ok(other) => {
                // A text message on a binary protocol (or the reverse) kills client-go's demux.
                let _ = tx.send(Event::Violation(format!("unexpected message type: {other:?}")));
                continue;
            }
            Err(e) => {
                for ch in [Ch::Stdout, Ch::Stderr, Ch::Error] {
                    let _ = tx.send(Event::End(ch, End::Broken(format!("websocket: {e}"))));
                }
                let _ = tx.send(Event::Closed(None));
                return;
            }
        };
        if payload.is_empty() {
            continue;
        }
        if let Some(ch) = ch_of(channel) {
            if tx.send(Event::Data(ch, payload)).is_err() {
                return;
            }
        }
    }
    let _ = tx.send(Event::Closed(None));
}

/// Runs one command to its end: connect, optionally write `stdin` and close it, collect.
pub async fn run(url: &str, client: Client, streams: Streams, stdin: Option<&[u8]>) -> Outcome {
    let mut rc =
        RemoteCommand::connect(url, client, streams).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    if let Some(data) = stdin {
        rc.send_stdin(data).await.expect("writing stdin");
        rc.close_stdin().await.expect("closing stdin");
    }
    rc.finish(WAIT).await.unwrap_or_else(|e| panic!("{e}"))
}

// ---- port-forward ---------------------------------------------------------------------------

/// A port-forward session over SPDY (directly, or tunneled in a WebSocket).
pub struct PortForward {
    pub protocol: Option<String>,
    pub session: Session,
    _incoming: Incoming,
    next_request: u32,
}

/// One forwarded connection: its error stream (half-closed by us at once) and data stream.
pub struct Forwarded {
    pub request_id: u32,
    pub error: RecvHalf,
    _error_send: SendHalf,
    pub data_recv: RecvHalf,
    pub data_send: SendHalf,
}

/// What one forwarded connection produced.
#[derive(Debug)]
pub struct ForwardOutcome {
    pub data: Vec<u8>,
    pub data_end: End,
    pub error: Vec<u8>,
    pub error_end: End,
}

async fn read_all(recv: &mut RecvHalf, timeout: Duration) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, recv.read(&mut buf)).await {
            Err(_) => return (out, End::Broken(format!("no end within {timeout:?}"))),
            Ok(Ok(0)) => return (out, End::Fin),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (out, End::Broken(e.to_string())),
        }
    }
}

impl PortForward {
    /// crictl's SPDY port-forward: POST, offering only `portforward.k8s.io`; client-go requires
    /// the 101 to name exactly that protocol.
    pub async fn spdy(url: &str) -> Result<PortForward, ConnectError> {
        let conn = spdy_connect("POST", url, &[PORT_FORWARD]).await?;
        if conn.protocol.as_deref() != Some(PORT_FORWARD) {
            return Err(ConnectError::BadUpgrade(format!(
                "unable to negotiate protocol: client supports \"portforward.k8s.io\", server returned {:?}",
                conn.protocol
            )));
        }
        Ok(PortForward { protocol: conn.protocol, session: conn.session, _incoming: conn.incoming, next_request: 0 })
    }

    /// crictl `--transport websocket`: a WebSocket offering `SPDY/3.1+portforward.k8s.io`, then a
    /// SPDY client session in its binary messages (cut as Go cuts them when `fragment`).
    pub async fn websocket_tunnel(url: &str, fragment: bool) -> Result<PortForward, ConnectError> {
        let (ws, chosen) = ws_connect(url, &[WS_PORT_FORWARD_TUNNEL]).await?;
        if chosen.as_deref() != Some(WS_PORT_FORWARD_TUNNEL) {
            return Err(ConnectError::BadUpgrade(format!("tunnel subprotocol {chosen:?}")));
        }
        let (session, incoming) = Session::client(WsBytes::new(ws, fragment), spdy::Config::default());
        Ok(PortForward { protocol: chosen, session, _incoming: incoming, next_request: 0 })
    }

    /// client-go's `handleConnection` up to the copies: the error stream (headers streamType,
    /// port, requestID), closed for writing at once, then the data stream.
    pub async fn open(&mut self, port: u16) -> Result<Forwarded, spdy::Error> {
        let id = self.next_request;
        self.next_request += 1;
        let headers = |kind: &str| {
            vec![
                ("streamtype".to_string(), kind.to_string()),
                ("port".to_string(), port.to_string()),
                ("requestid".to_string(), id.to_string()),
            ]
        };
        let (error, mut error_send) = self.session.open(headers("error"), false).await?.split();
        let _ = error_send.shutdown().await;
        let (data_recv, data_send) = self.session.open(headers("data"), false).await?.split();
        Ok(Forwarded { request_id: id, error, _error_send: error_send, data_recv, data_send })
    }

    /// Opens a stream with any headers (for refusals of bad headers).
    pub async fn open_raw(&self, headers: &[(&str, &str)]) -> Result<spdy::Stream, spdy::Error> {
        let h = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.session.open(h, false).await
    }

    /// Ends the session as crictl does on exit (GOAWAY, then the connection closed).
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.session.goaway()).await;
        self.session.close();
    }
}

impl Forwarded {
    /// Writes `request`, optionally half-closes (FIN, as client-go does when the local client
    /// stops sending), reads the data stream to its end, resets it (client-go's
    /// `dataStream.Reset()`), then reads the error stream to its end.
    pub async fn exchange(mut self, request: &[u8], half_close: bool, timeout: Duration) -> ForwardOutcome {
        let write = async {
            let r = self.data_send.write_all(request).await;
            if half_close {
                let _ = self.data_send.shutdown().await;
            }
            r
        };
        let (w, (data, data_end)) = tokio::join!(write, read_all(&mut self.data_recv, timeout));
        let data_end = match w {
            Err(e) if data.is_empty() => End::Broken(format!("writing the request: {e}; read end {data_end:?}")),
            _ => data_end,
        };
        if !half_close {
            self.data_send.reset(5);
        }
        let (error, error_end) = read_all(&mut self.error, timeout).await;
        ForwardOutcome { data, data_end, error, error_end }
    }
}

/// An HTTP/1.0 GET and its response split into head and body.
pub fn http_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").into_bytes()
}

pub fn split_http(resp: &[u8]) -> (String, Vec<u8>) {
    match find(resp, b"\r\n\r\n") {
        Some(i) => (String::from_utf8_lossy(&resp[..i]).into_owned(), resp[i + 4..].to_vec()),
        None => (String::from_utf8_lossy(resp).into_owned(), Vec::new()),
    }
}

/// The plain WebSocket port-forward (`v4.channel.k8s.io`, ports from the CRI request): data on
/// channel 2i, errors on 2i+1, each channel's first message the port (u16 little-endian).
pub struct WsForwardOutcome {
    pub protocol: Option<String>,
    /// The first message of each channel, per channel.
    pub initial: Vec<(u8, Vec<u8>)>,
    pub data: Vec<u8>,
    pub error: Vec<u8>,
    pub close: Option<u16>,
}

pub async fn ws_port_forward(
    url: &str,
    protocols: &[&str],
    request: &[u8],
    timeout: Duration,
) -> Result<WsForwardOutcome, ConnectError> {
    let (mut ws, protocol) = ws_connect(url, protocols).await?;
    let mut out = WsForwardOutcome { protocol, initial: Vec::new(), data: Vec::new(), error: Vec::new(), close: None };
    let mut seen = [false; 256];
    let mut msg = vec![0u8];
    msg.extend_from_slice(request);
    ws.send(Message::Binary(msg.into())).await.map_err(|e| ConnectError::Io(ws_io_err(e)))?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                return Err(ConnectError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "websocket port-forward timed out",
                )))
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => break,
            Ok(Some(Ok(Message::Binary(b)))) => {
                if b.is_empty() {
                    continue;
                }
                let ch = b[0];
                if !seen[ch as usize] {
                    seen[ch as usize] = true;
                    out.initial.push((ch, b[1..].to_vec()));
                    continue;
                }
                if ch % 2 == 0 {
                    out.data.extend_from_slice(&b[1..]);
                } else {
                    out.error.extend_from_slice(&b[1..]);
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                out.close = Some(f.map(|f| u16::from(f.code)).unwrap_or(1005));
                break;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    Ok(out)
}

// ---- raw SPDY -------------------------------------------------------------------------------

/// A frame as read off the wire, undecoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawFrame {
    Control { version: u16, kind: u16, flags: u8, payload: Vec<u8> },
    Data { stream: u32, flags: u8, payload: Vec<u8> },
}

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const FLAG_FIN: u8 = 1;

/// Reads one frame; None at a clean end of the connection before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<RawFrame>> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "frame header cut"));
        }
        got += n;
    }
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    Ok(Some(if first & 0x8000_0000 != 0 {
        RawFrame::Control {
            version: ((first >> 16) & 0x7fff) as u16,
            kind: (first & 0xffff) as u16,
            flags: head[4],
            payload,
        }
    } else {
        RawFrame::Data { stream: first, flags: head[4], payload }
    }))
}

pub fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 0x03];
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

pub fn data_frame(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = stream.to_be_bytes().to_vec();
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// SYN_STREAM (flags 0, no associated stream, priority 0, slot 0) with an already compressed block.
pub fn syn_stream(stream: u32, flags: u8, compressed_block: &[u8]) -> Vec<u8> {
    let mut p = stream.to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    p.extend_from_slice(compressed_block);
    control_frame(SYN_STREAM, flags, &p)
}

/// An uncompressed SPDY/3 name/value block.
pub fn nv_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = (headers.len() as u32).to_be_bytes().to_vec();
    for (n, v) in headers {
        b.extend_from_slice(&(n.len() as u32).to_be_bytes());
        b.extend_from_slice(n.as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// A connection's header compression context, as a SPDY/3 sender keeps it: zlib with the
/// SPDY/3 dictionary, one context for every block, each block sync-flushed.
pub struct RawCompressor {
    c: flate2::Compress,
}

impl Default for RawCompressor {
    fn default() -> Self {
        RawCompressor::new()
    }
}

impl RawCompressor {
    pub fn new() -> RawCompressor {
        let mut c = flate2::Compress::new(flate2::Compression::best(), true);
        c.set_dictionary(&spdy::dictionary::SPDY3_DICTIONARY).expect("zlib dictionary");
        RawCompressor { c }
    }

    /// The compressed form of an (uncompressed) name/value block.
    pub fn compress(&mut self, block: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(block.len() / 100 + 1024);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 64 * 1024 {
                out.reserve(256 * 1024);
            }
            let before_in = self.c.total_in();
            self.c.compress_vec(input, &mut out, flate2::FlushCompress::Sync).expect("compressing");
            let used = (self.c.total_in() - before_in) as usize;
            input = &input[used..];
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
        }
        out
    }

    /// A SYN_STREAM carrying `headers`.
    pub fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let block = self.compress(&nv_block(headers));
        syn_stream(stream, 0, &block)
    }
}

/// A header block compressed as the first one of a connection.
pub fn compress_block(block: &[u8]) -> Vec<u8> {
    RawCompressor::new().compress(block)
}

/// A name/value block that decompresses to `size` bytes: one pair whose name claims (and
/// holds) `size - 8` bytes of `a`.
pub fn zlib_bomb(size: usize) -> Vec<u8> {
    let mut block = Vec::with_capacity(size);
    block.extend_from_slice(&1u32.to_be_bytes());
    block.extend_from_slice(&((size - 8) as u32).to_be_bytes());
    block.resize(size, b'a');
    compress_block(&block)
}

/// Reads (and drops) until the peer closes the connection; true if it did within `timeout`.
/// Frames read on the way are returned.
pub async fn wait_closed<R: AsyncRead + Unpin>(r: &mut R, timeout: Duration) -> (bool, Vec<u8>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Err(_) => return (false, seen),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, seen),
            Ok(Ok(n)) => {
                if seen.len() < 1 << 20 {
                    seen.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
}

/// The frames a real Go spdystream (v0.2.0) client wrote, captured byte for byte
/// (`/tmp/research` §1.9), one `Write()` per element: SYN_STREAM 1 `{streamtype: error,
/// port: 8080}` (first block: zlib header, dictionary id E3C6A7C2), then SYN_STREAM 3
/// `{streamtype: stdout}` in the same compression context.
pub const GO_SYN_STREAM_1: &[&str] = &[
    "8003",
    "0001",
    "00000031",
    "00000001",
    "00000000",
    "00",
    "00",
    "78f9e3c6a7c202e50e703a2b294a4dcc851625aca9a0808614cb45e01c6061606100000000ffff",
];
pub const GO_SYN_STREAM_3: &[&str] =
    &["8003", "0001", "0000001d", "00000003", "00000000", "00", "00", "62606060c450ca565c92925f5a02000000ffff"];
/// RST_STREAM 3 CANCEL and GOAWAY(0, OK), as the Go client ends (client-go's `conn.Close()`
/// resets every stream it has not closed, here 1 too, then spdystream sends GOAWAY and closes).
pub const GO_RST_3: &[&str] = &["8003", "0003", "00000008", "00000003", "00000005"];
pub const GO_RST_1: &[&str] = &["8003", "0003", "00000008", "00000001", "00000005"];
pub const GO_GOAWAY: &[&str] = &["8003", "0007", "00000008", "00000000", "00000000"];
/// PING id 1 (the client's first).
pub const GO_PING_1: &[&str] = &["8003", "0006", "00000004", "00000001"];

/// Writes each piece as its own write, as Go does.
pub async fn write_pieces<W: AsyncWrite + Unpin>(w: &mut W, pieces: &[&str]) -> io::Result<()> {
    for p in pieces {
        let bytes = hex::decode(p).expect("hex");
        w.write_all(&bytes).await?;
        w.flush().await?;
    }
    Ok(())
}

// ---- processes in a container ---------------------------------------------------------------

/// The command lines of the container's processes (from its /proc, read with ExecSync).
pub async fn processes(node: &crate::node::Node, container: &str) -> Vec<String> {
    let out = node
        .exec(
            container,
            &["sh", "-c", "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"],
            30,
        )
        .await
        .expect("listing processes");
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn status_decoding_follows_client_go() {
        let fail = br#"{"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(decode_status(V4, fail), Status::ExitCode(3));
        assert_eq!(decode_status(V4, br#"{"status":"Success"}"#), Status::Success);
        assert_eq!(decode_status(V5, br#"{"metadata":{},"status":"Success"}"#), Status::Success);
        assert_eq!(decode_status(V4, b""), Status::Success);
        let bad = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"256"}]}}"#;
        assert!(matches!(decode_status(V4, bad), Status::ProtocolError(_)));
        let other = br#"{"status":"Failure","message":"boom","reason":"InternalError","code":500}"#;
        assert_eq!(
            decode_status(V4, other),
            Status::Failure { reason: "InternalError".into(), message: "boom".into() }
        );
        assert!(matches!(decode_status(V4, b"{\"status\":\"Weird\"}"), Status::ProtocolError(_)));
        assert_eq!(decode_status(V2, b"oops"), Status::Failure { reason: String::new(), message: "oops".into() });
    }

    #[test]
    fn urls_heads_and_blocks() {
        let u = parse_url("http://127.0.0.1:4321/exec/AbC_-123");
        assert_eq!(u, Url { authority: "127.0.0.1:4321".into(), target: "/exec/AbC_-123".into() });
        assert_eq!(token_of("http://127.0.0.1:4321/exec/AbC_-123"), "AbC_-123");
        let head = String::from_utf8(spdy_upgrade_head("POST", "http://h:1/exec/t", &[V4, V3])).unwrap();
        assert!(head.starts_with("POST /exec/t HTTP/1.1\r\nHost: h:1\r\n"), "{head}");
        assert!(head.contains(
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: v3.channel.k8s.io\r\n"
        ));
        assert!(head.contains("Content-Length: 0\r\n") && head.ends_with("\r\n\r\n"));
        assert_eq!(dechunk(b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"), b"hello!");
        assert_eq!(resize_json(80, 24), b"{\"Width\":80,\"Height\":24}\n");
        let bomb = zlib_bomb(48 << 20);
        assert!(bomb.len() < 60 * 1024, "{}", bomb.len());
        // It inflates (with the dictionary) to what it claims.
        let mut d = spdy::headers::Decompressor::new(64 << 20);
        let out = d.decompress(&bomb).expect("inflating the bomb");
        assert_eq!(out.len(), 48 << 20);
        let block = nv_block(&[("streamtype", "error")]);
        let mut d = spdy::headers::Decompressor::new(1 << 20);
        assert_eq!(d.decompress(&compress_block(&block)).unwrap(), block);
    }
}
