//! One forwarded connection: a stream of the client's session on one side, a TCP connection to
//! `localhost:<port>` in the pod's network namespace on the other, copied both ways through a
//! bounded buffer. A refused port is reported on the error stream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::{Backend, Reader, Writer};

/// Copy buffer per direction.
pub const BUF: usize = 128 * 1024;
/// After the pod's side ended, how long the client's side may still send.
const LINGER: Duration = Duration::from_secs(1);

/// Copies `from` to `to` until EOF or an error, then closes `to`.
pub async fn copy_then_close<R, W>(mut from: R, mut to: W) -> u64
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                total += n as u64;
            }
        }
    }
    let _ = to.shutdown().await;
    total
}

/// Forwards one connection to `port` of the pod, then closes the client's streams.
pub async fn forward(
    backend: &dyn Backend,
    pod: &str,
    port: u16,
    data_r: Reader,
    mut data_w: Writer,
    mut error: Writer,
) {
    let tcp = match backend.dial(pod, port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            debug!(pod, port, error = %e, "port-forward dial failed");
            let msg = format!("error forwarding port {port} to pod {pod}, uid : {e}");
            let _ = error.write_all(msg.as_bytes()).await;
            let _ = error.shutdown().await;
            let _ = data_w.shutdown().await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (tcp_r, tcp_w) = tcp.into_split();
    let up = tokio::spawn(copy_then_close(data_r, tcp_w));
    let down = copy_then_close(tcp_r, data_w).await;
    let abort = up.abort_handle();
    let sent = tokio::time::timeout(LINGER, up).await;
    if sent.is_err() {
        abort.abort();
    }
    debug!(pod, port, down, "port-forward connection ended");
    let _ = error.shutdown().await;
}
