//! The protocols over SPDY/3.1: a remote command's streams told apart by their `streamType`
//! header, and port-forward's pairs of streams (error and data) per forwarded connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use spdy::{RecvHalf, SendHalf, Session};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::portforward;
use super::protocol::Version;
use super::remotecommand::{self, Channels};
use super::{AttachParams, Backend, ExecParams, PortForwardParams, Settings};

/// RST_STREAM status CANCEL.
const CANCEL: u32 = 5;
/// How long a client that has its result may keep the connection before corrald closes it.
const CLOSE_WAIT: Duration = Duration::from_secs(60);

/// Ends the session when dropped (the request finished or was cut short).
struct CloseOnDrop(Session);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

pub enum Command {
    Exec(ExecParams),
    Attach(AttachParams),
}

/// Serves one exec or attach over an upgraded connection.
pub async fn remotecommand<IO>(
    io: IO,
    version: Version,
    command: Command,
    backend: Arc<dyn Backend>,
    settings: Settings,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (session, mut incoming) = Session::server(io, spdy::Config::default());
    let _close = CloseOnDrop(session.clone());
    let (stdin, stdout, stderr, tty) = match &command {
        Command::Exec(p) => (p.stdin, p.stdout, p.stderr, p.tty),
        Command::Attach(p) => (p.stdin, p.stdout, p.stderr, p.tty),
    };
    // As kubelet counts them: from the request, not from what the client happens to open.
    let expected = 1 + [stdin, stdout, stderr, tty && version >= Version::V3].iter().filter(|b| **b).count();
    let mut ch = Channels {
        version,
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
        error: None,
        gone: Box::pin(std::future::pending()),
    };
    let deadline = Instant::now() + settings.stream_creation_timeout;
    for _ in 0..expected {
        let stream = match tokio::time::timeout_at(deadline, incoming.accept()).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                warn!("timed out waiting for the client to create streams");
                return;
            }
        };
        let kind = stream.header("streamtype").unwrap_or_default().to_ascii_lowercase();
        let (recv, send) = stream.split();
        match kind.as_str() {
            "error" => ch.error = Some(Box::new(send)),
            "stdin" => ch.stdin = Some(Box::new(recv)),
            "stdout" => ch.stdout = Some(Box::new(send)),
            "stderr" => ch.stderr = Some(Box::new(send)),
            "resize" => ch.resize = Some(Box::new(recv)),
            other => debug!(stream = other, "ignoring a stream of unknown type"),
        }
    }
    let closed = session.clone();
    ch.gone = Box::pin(async move { closed.closed().await });
    match &command {
        Command::Exec(p) => remotecommand::exec(backend.as_ref(), p, ch).await,
        Command::Attach(p) => remotecommand::attach(backend.as_ref(), p, ch).await,
    }
    // The client closes once it read everything (or says GOAWAY, as client-go does before it
    // closes); closing first could cut its output short.
    let _ = tokio::time::timeout(CLOSE_WAIT, client_done(&session)).await;
}

/// Resolves when the client closed the connection, or sent GOAWAY and has no stream left open.
async fn client_done(session: &Session) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            () = session.closed() => return,
            _ = tick.tick() => {
                if session.peer_went_away() && session.stream_count() == 0 {
                    return;
                }
            }
        }
    }
}

/// The two streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<(RecvHalf, SendHalf)>,
    data: Option<(RecvHalf, SendHalf)>,
    since: Option<Instant>,
}

#[derive(Clone, Copy)]
enum PairPart {
    Error,
    Data,
}

/// A port-forward stream's port (1-65535) and type (error or data); None when either is
/// missing or bad.
fn pair_part(headers: &spdy::Headers) -> Option<(u16, PairPart)> {
    let get = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let port = get("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0)?;
    let part = match get("streamtype")?.to_ascii_lowercase().as_str() {
        "error" => PairPart::Error,
        "data" => PairPart::Data,
        _ => return None,
    };
    Some((port, part))
}

/// Streams without a valid port and type are reset before any reply, as kubelet does.
fn port_forward_stream(headers: &spdy::Headers) -> Option<u32> {
    pair_part(headers).is_none().then_some(CANCEL)
}

/// Serves a port-forward session: every pair of streams is one connection to a port of the pod.
pub async fn portforward<IO>(io: IO, params: PortForwardParams, backend: Arc<dyn Backend>, settings: Settings)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let config =
        spdy::Config { check: Some(port_forward_stream), max_send_data: portforward::BUF, ..spdy::Config::default() };
    let (session, mut incoming) = Session::server(io, config);
    let _close = CloseOnDrop(session.clone());
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stream = tokio::select! {
            s = incoming.accept() => match s {
                Some(s) => s,
                None => break,
            },
            _ = sweep.tick() => {
                expire(&mut pairs, settings.stream_creation_timeout).await;
                continue;
            }
        };
        let id = stream.id();
        // Judged before the reply already (`port_forward_stream`); a stream dropped here is reset.
        let Some((port, part)) = pair_part(stream.headers()) else { continue };
        let request = stream.header("requestid").map(str::to_string);
        let (recv, send) = stream.split();
        // Clients older than requestID: the error stream comes first, two ids before its data.
        let key = match (request, part) {
            (Some(r), _) => r,
            (None, PairPart::Data) => id.saturating_sub(2).to_string(),
            (None, PairPart::Error) => id.to_string(),
        };
        let pair = pairs.entry(key.clone()).or_default();
        pair.since.get_or_insert_with(Instant::now);
        pair.port = port;
        let slot = match part {
            PairPart::Error => &mut pair.error,
            PairPart::Data => &mut pair.data,
        };
        if slot.is_some() {
            // A second stream of the same type: the pair is broken.
            send.reset(CANCEL);
            if let Some(mut p) = pairs.remove(&key) {
                if let Some((_, mut e)) = p.error.take() {
                    let name = if matches!(part, PairPart::Error) { "error" } else { "data" };
                    let msg = format!("(request={key}) duplicate {name} stream");
                    let _ = e.write_all(msg.as_bytes()).await;
                    let _ = e.shutdown().await;
                }
            }
            continue;
        }
        *slot = Some((recv, send));
        if pair.error.is_some() && pair.data.is_some() {
            if let Some(Pair { port, error: Some((_, error)), data: Some((data_r, data_w)), .. }) = pairs.remove(&key) {
                let backend = backend.clone();
                let pod = params.pod_id.clone();
                tokio::spawn(async move {
                    portforward::forward(
                        backend.as_ref(),
                        &pod,
                        port,
                        Box::new(data_r),
                        Box::new(data_w),
                        Box::new(error),
                    )
                    .await
                });
            }
        }
    }
}

/// Ends the pairs whose second stream did not come in time.
async fn expire(pairs: &mut HashMap<String, Pair>, timeout: Duration) {
    let now = Instant::now();
    let late: Vec<String> = pairs
        .iter()
        .filter(|(_, p)| p.since.is_some_and(|s| now.duration_since(s) >= timeout))
        .map(|(k, _)| k.clone())
        .collect();
    for key in late {
        if let Some(mut p) = pairs.remove(&key) {
            if let Some((_, mut e)) = p.error.take() {
                let _ = e.write_all(format!("(request={key}) timed out waiting for streams").as_bytes()).await;
                let _ = e.shutdown().await;
            }
            if let Some((_, d)) = p.data.take() {
                d.reset(CANCEL);
            }
        }
    }
}
