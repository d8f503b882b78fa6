//! The protocols over WebSocket. Remote command and port-forward as channels: each message
//! starts with a byte naming its channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; per
//! forwarded port two), binary, or text with base64 payloads in the base64 variants; v5 adds a
//! close message `[255, channel]`. And port-forward as SPDY/3.1 tunnelled in binary messages,
//! which are a plain byte stream then (crictl --transport websocket).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::portforward;
use super::protocol::Version;
use super::remotecommand::{self, Channels};
use super::spdy_transport::Command;
use super::{Backend, PortForwardParams, Reader, Settings, Writer};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` half-closes the client's side of a channel.
const CLOSE: u8 = 255;
/// Bytes buffered per channel between the connection and the session.
const CHANNEL_BUF: usize = 64 * 1024;
/// How long the client has to answer our close before the connection is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Limits on what a client may send in one message.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(1 << 20)).max_frame_size(Some(1 << 20))
}

/// Makes the upgraded connection a server-side WebSocket.
pub async fn server<IO: AsyncRead + AsyncWrite + Unpin>(io: IO) -> WebSocketStream<IO> {
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await
}

/// The channels of one connection, as byte streams.
struct Mux {
    /// What the client sends on each input channel.
    inputs: HashMap<u8, Reader>,
    /// Where the session writes each output channel.
    outputs: HashMap<u8, Writer>,
    /// Cancelled when the client closed the connection or it broke.
    gone: CancellationToken,
    /// Ends after every output channel was closed and the close handshake is done.
    done: tokio::task::JoinHandle<()>,
}

fn close_frame() -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))
}

/// Splits `ws` into channels: `inputs` the client writes, `outputs` the server writes.
fn mux<IO>(ws: WebSocketStream<IO>, base64: bool, v5: bool, inputs: &[u8], outputs: &[u8]) -> Mux
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let gone = CancellationToken::new();
    let (msg_tx, mut msg_rx) = tokio::sync::mpsc::channel::<Message>(16);
    let frame = move |ch: u8, data: &[u8]| -> Message {
        if base64 {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + ch));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut bin = Vec::with_capacity(1 + data.len());
            bin.push(ch);
            bin.extend_from_slice(data);
            Message::binary(bin)
        }
    };
    // Output: one pump per channel into the message queue; when all are done, close.
    let mut out_writers = HashMap::new();
    let mut pumps = Vec::new();
    for &ch in outputs {
        let (w, mut r) = tokio::io::duplex(CHANNEL_BUF);
        out_writers.insert(ch, Box::new(w) as Writer);
        let tx = msg_tx.clone();
        pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(frame(ch, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    let closer = msg_tx.clone();
    drop(msg_tx);
    tokio::spawn(async move {
        for p in pumps {
            let _ = p.await;
        }
        let _ = closer.send(close_frame()).await;
    });
    let writer_gone = gone.clone();
    let writer = tokio::spawn(async move {
        while let Some(m) = msg_rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() {
                writer_gone.cancel();
                break;
            }
            if last {
                break;
            }
        }
    });
    // Input: the reader routes client messages to the input channels until the client closes.
    let mut in_readers = HashMap::new();
    let mut in_writers: HashMap<u8, tokio::io::DuplexStream> = HashMap::new();
    for &ch in inputs {
        let (w, r) = tokio::io::duplex(CHANNEL_BUF);
        in_readers.insert(ch, Box::new(r) as Reader);
        in_writers.insert(ch, w);
    }
    let reader_gone = gone.clone();
    let reader = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            let (ch, payload) = match msg {
                Ok(Message::Binary(b)) if !base64 => match b.split_first() {
                    Some((&ch, rest)) => (ch, rest.to_vec()),
                    None => continue,
                },
                Ok(Message::Text(t)) if base64 => {
                    let t = t.as_bytes();
                    let Some((&c, rest)) = t.split_first() else { continue };
                    let Some(ch) = c.checked_sub(b'0') else { continue };
                    match base64::engine::general_purpose::STANDARD.decode(rest) {
                        Ok(data) => (ch, data),
                        Err(_) => {
                            debug!("undecodable base64 message");
                            break;
                        }
                    }
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(_)) => break,
                Ok(_) => {
                    debug!("message of the wrong type for the subprotocol");
                    break;
                }
                Err(e) => {
                    debug!(error = %e, "websocket read");
                    break;
                }
            };
            if v5 && ch == CLOSE {
                match payload.as_slice() {
                    [closed] => {
                        in_writers.remove(closed);
                        continue;
                    }
                    _ => break,
                }
            }
            if payload.is_empty() {
                continue;
            }
            if let Some(w) = in_writers.get_mut(&ch) {
                if w.write_all(&payload).await.is_err() {
                    in_writers.remove(&ch);
                }
            }
        }
        reader_gone.cancel();
    });
    let done_gone = gone.clone();
    let done = tokio::spawn(async move {
        let _ = writer.await;
        // Wait for the client's answer to our close (or its close) before dropping the socket.
        let abort = reader.abort_handle();
        tokio::select! {
            _ = reader => {}
            () = done_gone.cancelled() => {}
            () = tokio::time::sleep(CLOSE_WAIT) => abort.abort(),
        }
    });
    Mux { inputs: in_readers, outputs: out_writers, gone, done }
}

/// Serves one exec or attach over WebSocket.
pub async fn remotecommand<IO>(
    ws: WebSocketStream<IO>,
    version: Version,
    base64: bool,
    command: Command,
    backend: Arc<dyn Backend>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (stdin, stdout, stderr, tty) = match &command {
        Command::Exec(p) => (p.stdin, p.stdout, p.stderr, p.tty),
        Command::Attach(p) => (p.stdin, p.stdout, p.stderr, p.tty),
    };
    let inputs: Vec<u8> = [(stdin, STDIN), (tty, RESIZE)].into_iter().filter(|(on, _)| *on).map(|(_, c)| c).collect();
    let outputs: Vec<u8> = [(stdout, STDOUT), (stderr && !tty, STDERR), (true, ERROR)]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| c)
        .collect();
    let mut m = mux(ws, base64, version >= Version::V5, &inputs, &outputs);
    let gone = m.gone.clone();
    let ch = Channels {
        version,
        stdin: m.inputs.remove(&STDIN),
        stdout: m.outputs.remove(&STDOUT),
        stderr: m.outputs.remove(&STDERR),
        resize: m.inputs.remove(&RESIZE),
        error: m.outputs.remove(&ERROR),
        gone: Box::pin(async move { gone.cancelled().await }),
    };
    match &command {
        Command::Exec(p) => remotecommand::exec(backend.as_ref(), p, ch).await,
        Command::Attach(p) => remotecommand::attach(backend.as_ref(), p, ch).await,
    }
    let _ = m.done.await;
}

/// Port-forward with two channels per port of the request: 2i data, 2i+1 error. Each channel
/// starts with the port (u16, little endian).
pub async fn portforward<IO>(
    ws: WebSocketStream<IO>,
    base64: bool,
    params: PortForwardParams,
    backend: Arc<dyn Backend>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let n = params.ports.len().min(127) as u8;
    let data: Vec<u8> = (0..n).map(|i| 2 * i).collect();
    let outputs: Vec<u8> = (0..n).flat_map(|i| [2 * i, 2 * i + 1]).collect();
    let mut m = mux(ws, base64, false, &data, &outputs);
    let mut forwards = Vec::new();
    for (i, &port) in params.ports.iter().take(n as usize).enumerate() {
        let ch = 2 * i as u8;
        let (Some(data_r), Some(mut data_w), Some(mut error)) =
            (m.inputs.remove(&ch), m.outputs.remove(&ch), m.outputs.remove(&(ch + 1)))
        else {
            continue;
        };
        let _ = data_w.write_all(&port.to_le_bytes()).await;
        let _ = error.write_all(&port.to_le_bytes()).await;
        let backend = backend.clone();
        let pod = params.pod_id.clone();
        forwards.push(tokio::spawn(async move {
            portforward::forward(backend.as_ref(), &pod, port, data_r, data_w, error).await;
        }));
    }
    let gone = m.gone.clone();
    tokio::select! {
        _ = futures::future::join_all(forwards) => {}
        () = gone.cancelled() => {}
    }
    let _ = m.done.await;
}

/// Port-forward as SPDY/3.1 inside the WebSocket.
pub async fn tunnel<IO>(
    ws: WebSocketStream<IO>,
    params: PortForwardParams,
    backend: Arc<dyn Backend>,
    settings: Settings,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    super::spdy_transport::portforward(WsBytes::new(ws), params, backend, settings).await;
}

/// A WebSocket as a byte stream: binary message payloads read one after the other; each write
/// one binary message.
pub struct WsBytes<IO> {
    ws: WebSocketStream<IO>,
    pending: bytes::Bytes,
    closed: bool,
}

impl<IO> WsBytes<IO> {
    pub fn new(ws: WebSocketStream<IO>) -> WsBytes<IO> {
        WsBytes { ws, pending: bytes::Bytes::new(), closed: false }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(b))) => self.pending = b,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                    // A pong is queued by the read; send it now.
                    let _ = self.ws.poll_flush_unpin(cx);
                }
                Some(Ok(Message::Close(_))) | None => self.closed = true,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "text message in a tunnel")))
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.ws.poll_ready_unpin(cx)).map_err(io::Error::other)?;
        self.ws.start_send_unpin(Message::binary(data.to_vec())).map_err(io::Error::other)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_flush_unpin(cx).map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closed {
            ready!(self.ws.poll_ready_unpin(cx)).map_err(io::Error::other)?;
            let _ = self.ws.start_send_unpin(close_frame());
            self.closed = true;
        }
        self.ws.poll_flush_unpin(cx).map_err(io::Error::other)
    }
}
