//! The streaming server's HTTP/1.1 side: `/exec/<token>`, `/attach/<token>` and
//! `/portforward/<token>` (GET or POST), each token used once; the upgrade to SPDY/3.1 (with
//! the `X-Stream-Protocol-Version` negotiation) or to WebSocket (with its subprotocols); then
//! the session runs on the upgraded connection until it ends or stays idle too long.

use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::idle::{Activity, Tracked};
use super::protocol::{self, header_values, negotiate, Version};
use super::spdy_transport::{self, Command};
use super::{ws, Backend, Pending, Settings, Streaming};

type Body = Full<Bytes>;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until the runtime stops.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    streaming: Weak<Streaming>,
    backend: Arc<dyn Backend>,
    settings: Settings,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "streaming server accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ctx = Ctx { streaming: streaming.clone(), backend: backend.clone(), settings: settings.clone() };
        let tls = tls.clone();
        tokio::spawn(async move {
            let activity = Activity::new();
            match tls {
                None => connection(Tracked::new(tcp, activity.clone()), activity, ctx).await,
                Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => connection(Tracked::new(s, activity.clone()), activity, ctx).await,
                    Ok(Err(e)) => debug!(%peer, error = %e, "streaming TLS handshake"),
                    Err(_) => debug!(%peer, "streaming TLS handshake timed out"),
                },
            }
        });
    }
}

#[derive(Clone)]
struct Ctx {
    streaming: Weak<Streaming>,
    backend: Arc<dyn Backend>,
    settings: Settings,
}

async fn connection<IO>(io: IO, activity: Activity, ctx: Ctx)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (ctx, activity) = (ctx.clone(), activity.clone());
        async move { Ok::<_, Infallible>(route(req, ctx, activity)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!(error = %e, "streaming connection");
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Whether a header holds `token` in its comma-separated values (case-insensitive).
fn has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

fn values(req: &Request<Incoming>, name: &str) -> Vec<String> {
    header_values(req.headers().get_all(name).iter().filter_map(|v| v.to_str().ok()))
}

fn route(req: Request<Incoming>, ctx: Ctx, activity: Activity) -> Response<Body> {
    let path = req.uri().path().trim_start_matches('/');
    let Some((kind, token)) = path.split_once('/') else {
        return text(StatusCode::NOT_FOUND, "404 page not found");
    };
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() || token.contains('/') {
        return text(StatusCode::NOT_FOUND, "404 page not found");
    }
    if req.method() != Method::GET && req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let Some(streaming) = ctx.streaming.upgrade() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "corrald is stopping");
    };
    let pending = match streaming.take(token) {
        Some(p) if p.path() == kind => p,
        _ => return text(StatusCode::NOT_FOUND, "streaming token not found or expired"),
    };
    if has_token(&req, header::UPGRADE, "websocket") && has_token(&req, header::CONNECTION, "upgrade") {
        websocket(req, pending, ctx, activity)
    } else {
        spdy(req, pending, ctx, activity)
    }
}

/// Runs `session` on the upgraded connection, ended early when the connection stays idle.
fn on_upgrade<F, Fut>(req: Request<Incoming>, activity: Activity, idle: Option<Duration>, session: F)
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "streaming upgrade");
                return;
            }
        };
        tokio::select! {
            () = session(TokioIo::new(upgraded)) => {}
            () = activity.expired(idle) => info!(timeout = ?idle, "streaming connection idle; closed"),
        }
    });
}

fn spdy(req: Request<Incoming>, pending: Pending, ctx: Ctx, activity: Activity) -> Response<Body> {
    let offered = values(&req, "x-stream-protocol-version");
    if offered.is_empty() {
        return text(StatusCode::BAD_REQUEST, "unable to upgrade: X-Stream-Protocol-Version is required");
    }
    if !has_token(&req, header::CONNECTION, "upgrade") || !has_token(&req, header::UPGRADE, "spdy/3.1") {
        return text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request: Connection: Upgrade, Upgrade: SPDY/3.1",
        );
    }
    let portforward = [(protocol::SPDY_PORTFORWARD, Version::V4)];
    let supported: &[(&str, Version)] =
        if matches!(pending, Pending::PortForward(_)) { &portforward } else { &protocol::SPDY_REMOTECOMMAND };
    let Some((chosen, version)) = negotiate(&offered, supported) else {
        let accepted: Vec<&str> = supported.iter().map(|(n, _)| *n).collect();
        let mut r = text(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {accepted:?}"
            ),
        );
        for a in accepted {
            r.headers_mut().append("x-accepted-stream-protocol-versions", HeaderValue::from_static(a));
        }
        return r;
    };
    let settings = ctx.settings.clone();
    let backend = ctx.backend.clone();
    on_upgrade(req, activity, settings.idle_timeout, move |io| async move {
        match pending {
            Pending::Exec(p) => spdy_transport::remotecommand(io, version, Command::Exec(p), backend, settings).await,
            Pending::Attach(p) => {
                spdy_transport::remotecommand(io, version, Command::Attach(p), backend, settings).await
            }
            Pending::PortForward(p) => spdy_transport::portforward(io, p, backend, settings).await,
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert("x-stream-protocol-version", HeaderValue::from_static(chosen));
    r
}

/// What a WebSocket connection carries, by its subprotocol.
#[derive(Clone, Copy)]
enum WsKind {
    Remote(Version, bool),
    Tunnel,
    Ports(bool),
}

fn websocket(req: Request<Incoming>, pending: Pending, ctx: Ctx, activity: Activity) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").and_then(|k| k.to_str().ok()).map(str::to_string) else {
        return text(StatusCode::BAD_REQUEST, "websocket: the client did not send Sec-WebSocket-Key");
    };
    if req.headers().get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
        let mut r = text(StatusCode::BAD_REQUEST, "websocket: unsupported version");
        r.headers_mut().insert("sec-websocket-version", HeaderValue::from_static("13"));
        return r;
    }
    let mut offered = values(&req, "sec-websocket-protocol");
    if offered.is_empty() {
        offered.push(String::new());
    }
    let supported: Vec<(&str, WsKind)> = match pending {
        Pending::PortForward(_) => std::iter::once((protocol::WS_SPDY_TUNNEL, WsKind::Tunnel))
            .chain(protocol::WS_PORTFORWARD.iter().map(|(n, b64)| (*n, WsKind::Ports(*b64))))
            .collect(),
        _ => protocol::WS_REMOTECOMMAND.iter().map(|(n, v, b64)| (*n, WsKind::Remote(*v, *b64))).collect(),
    };
    let Some((chosen, kind)) = negotiate(&offered, &supported) else {
        return text(StatusCode::FORBIDDEN, format!("websocket: no supported subprotocol among {offered:?}"));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let settings = ctx.settings.clone();
    let backend = ctx.backend.clone();
    on_upgrade(req, activity, settings.idle_timeout, move |io| async move {
        let socket = ws::server(io).await;
        match (pending, kind) {
            (Pending::Exec(p), WsKind::Remote(v, b64)) => {
                ws::remotecommand(socket, v, b64, Command::Exec(p), backend).await
            }
            (Pending::Attach(p), WsKind::Remote(v, b64)) => {
                ws::remotecommand(socket, v, b64, Command::Attach(p), backend).await
            }
            (Pending::PortForward(p), WsKind::Tunnel) => ws::tunnel(socket, p, backend, settings).await,
            (Pending::PortForward(p), WsKind::Ports(b64)) => ws::portforward(socket, b64, p, backend).await,
            _ => {}
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    if !chosen.is_empty() {
        h.insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
    }
    r
}
