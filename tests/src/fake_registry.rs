//! A hand-written OCI distribution registry on 127.0.0.1 for the faults a real registry does not
//! produce: blobs that do not match their digest, bodies cut short, responses held until the
//! test releases them, 404s, and the Bearer token flow (basic credentials, identity tokens as
//! OAuth2 refresh tokens, registry tokens). It speaks just enough HTTP/1.1: one request per
//! connection (`Connection: close`), `Content-Length` bodies. Every request is logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::oci::{Image, Index};

/// A one-way latch: routes wait on it; the test opens it.
#[derive(Default)]
pub struct Gate {
    open: AtomicBool,
    notify: Notify,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// How a route answers, beyond status, headers and body.
#[derive(Clone, Default)]
pub enum Behavior {
    #[default]
    Normal,
    /// Waits for the gate, then answers normally.
    WaitFor(Arc<Gate>),
    /// Sends the headers (with the full Content-Length) and the first `bytes` of the body, then
    /// waits for the gate (forever if it is never opened) and closes the connection without
    /// sending the rest.
    StallAfter { bytes: usize, gate: Arc<Gate> },
    /// Sends the headers (with the full Content-Length) and the first `bytes`, then closes.
    CutAfter(usize),
}

#[derive(Clone)]
pub struct Route {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub behavior: Behavior,
}

impl Route {
    pub fn ok(content_type: &str, body: Vec<u8>) -> Route {
        Route {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
            behavior: Behavior::Normal,
        }
    }

    pub fn status(status: u16, body: &str) -> Route {
        Route {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            behavior: Behavior::Normal,
        }
    }

    pub fn behave(mut self, behavior: Behavior) -> Route {
        self.behavior = behavior;
        self
    }
}

/// A request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `application/x-www-form-urlencoded` body or query fields.
    pub fn form(&self) -> HashMap<String, String> {
        parse_form(&String::from_utf8_lossy(&self.body))
    }

    pub fn query_fields(&self) -> HashMap<String, String> {
        parse_form(&self.query)
    }
}

/// Bearer authentication: every `/v2/` request needs `Authorization: Bearer <token>`; the token
/// comes from `GET /token` with basic `user:pass`, or from `POST /token` with
/// `grant_type=refresh_token&refresh_token=<identity_token>`.
#[derive(Debug, Clone)]
pub struct BearerAuth {
    pub user: String,
    pub pass: String,
    pub identity_token: String,
    pub token: String,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    log: Vec<Request>,
    bearer: Option<BearerAuth>,
}

pub struct FakeRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

impl FakeRegistry {
    /// Listens on 127.0.0.1 with a port the kernel chooses.
    pub async fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the fake registry");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let st = Arc::clone(&state);
        let server = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let st = Arc::clone(&st);
                        conns.spawn(async move {
                            let _ = serve(stream, st, addr).await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        FakeRegistry { addr, state, server }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `127.0.0.1:PORT/<repo>:<tag>`
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    pub fn set_route(&self, path: &str, route: Route) {
        self.state.lock().unwrap().routes.insert(path.to_string(), route);
    }

    pub fn remove_route(&self, path: &str) {
        self.state.lock().unwrap().routes.remove(path);
    }

    /// Serves `image` as `<repo>:<tag>` and `<repo>@<manifest digest>`, with its config and layers.
    pub fn push(&self, repo: &str, tag: &str, image: &Image) {
        let manifest = Route::ok(crate::oci::OCI_MANIFEST, image.manifest.clone()).with_digest_header(&image.digest());
        self.set_route(&format!("/v2/{repo}/manifests/{tag}"), manifest.clone());
        self.set_route(&format!("/v2/{repo}/manifests/{}", image.digest()), manifest);
        self.set_blob(repo, &image.id(), image.config.clone());
        for layer in &image.layers {
            self.set_blob(repo, &layer.digest(), layer.blob.clone());
        }
    }

    /// Serves `index` as `<repo>:<tag>`, and every image in it by digest.
    pub fn push_index(&self, repo: &str, tag: &str, index: &Index) {
        for (_, img) in &index.images {
            self.push(repo, &img.digest(), img);
        }
        let route = Route::ok(crate::oci::OCI_INDEX, index.body.clone()).with_digest_header(&index.digest());
        self.set_route(&format!("/v2/{repo}/manifests/{tag}"), route);
    }

    /// Serves `body` as the blob `digest` (which it need not match).
    pub fn set_blob(&self, repo: &str, digest: &str, body: Vec<u8>) {
        self.set_route(&blob_path(repo, digest), Route::ok("application/octet-stream", body));
    }

    /// Changes the behaviour of the route at `path`.
    pub fn set_behavior(&self, path: &str, behavior: Behavior) {
        let mut st = self.state.lock().unwrap();
        let route = st.routes.get_mut(path).unwrap_or_else(|| panic!("no route {path}"));
        route.behavior = behavior;
    }

    pub fn require_bearer(&self, auth: BearerAuth) {
        self.state.lock().unwrap().bearer = Some(auth);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// How many `method` requests for exactly `path` were received.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.state.lock().unwrap().log.iter().filter(|r| r.method == method && r.path == path).count()
    }
}

impl Route {
    fn with_digest_header(mut self, digest: &str) -> Route {
        self.headers.push(("Docker-Content-Digest".into(), digest.into()));
        self
    }
}

pub fn blob_path(repo: &str, digest: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

pub fn manifest_path(repo: &str, reference: &str) -> String {
    format!("/v2/{repo}/manifests/{reference}")
}

fn parse_form(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(())
            {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Ok(Some(Request { method, path, query, headers, body }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

async fn write_head(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    length: usize,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\nContent-Length: {length}\r\nConnection: close\r\n", reason(status));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await
}

async fn respond(stream: &mut TcpStream, route: &Route, head_only: bool) -> std::io::Result<()> {
    if let Behavior::WaitFor(gate) = &route.behavior {
        gate.wait().await;
    }
    write_head(stream, route.status, &route.headers, route.body.len()).await?;
    if head_only {
        return stream.flush().await;
    }
    match &route.behavior {
        Behavior::Normal | Behavior::WaitFor(_) => stream.write_all(&route.body).await?,
        Behavior::StallAfter { bytes, gate } => {
            stream.write_all(&route.body[..(*bytes).min(route.body.len())]).await?;
            stream.flush().await?;
            gate.wait().await;
        }
        Behavior::CutAfter(bytes) => stream.write_all(&route.body[..(*bytes).min(route.body.len())]).await?,
    }
    stream.flush().await?;
    stream.shutdown().await
}

fn json_route(status: u16, body: serde_json::Value) -> Route {
    Route::status(status, &body.to_string())
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>, addr: SocketAddr) -> std::io::Result<()> {
    let Some(req) = read_request(&mut stream).await? else { return Ok(()) };
    let (route, bearer) = {
        let mut st = state.lock().unwrap();
        st.log.push(req.clone());
        (st.routes.get(&req.path).cloned(), st.bearer.clone())
    };
    let head_only = req.method == "HEAD";
    if let Some(auth) = &bearer {
        if req.path == "/token" {
            let route = token_route(&req, auth);
            return respond(&mut stream, &route, false).await;
        }
        if req.path.starts_with("/v2/") && req.header("authorization") != Some(&format!("Bearer {}", auth.token)) {
            let mut route = json_route(
                401,
                serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}),
            );
            route.headers.push((
                "WWW-Authenticate".into(),
                format!("Bearer realm=\"http://{addr}/token\",service=\"fake\",scope=\"repository:x:pull\""),
            ));
            return respond(&mut stream, &route, head_only).await;
        }
    }
    let route = match route {
        Some(r) if req.method == "GET" || req.method == "HEAD" => r,
        Some(_) => json_route(405, serde_json::json!({"errors": [{"code": "UNSUPPORTED"}]})),
        None if req.path == "/v2/" || req.path == "/v2" => json_route(200, serde_json::json!({})),
        None if req.path.contains("/manifests/") => json_route(
            404,
            serde_json::json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}),
        ),
        None if req.path.contains("/blobs/") => {
            json_route(404, serde_json::json!({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}))
        }
        None => json_route(404, serde_json::json!({"errors": [{"code": "NAME_UNKNOWN"}]})),
    };
    respond(&mut stream, &route, head_only).await
}

/// The token endpoint: GET with basic credentials, or POST with a refresh token.
fn token_route(req: &Request, auth: &BearerAuth) -> Route {
    let denied = || json_route(401, serde_json::json!({"details": "invalid credentials"}));
    match req.method.as_str() {
        "GET" => {
            let want = format!("{}:{}", auth.user, auth.pass);
            let given = req
                .header("authorization")
                .and_then(|h| h.strip_prefix("Basic "))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            if given.as_deref() == Some(want.as_str()) {
                json_route(200, serde_json::json!({"token": auth.token, "expires_in": 300}))
            } else {
                denied()
            }
        }
        "POST" => {
            let form = req.form();
            let ok = form.get("grant_type").map(String::as_str) == Some("refresh_token")
                && !auth.identity_token.is_empty()
                && form.get("refresh_token") == Some(&auth.identity_token);
            if ok {
                json_route(200, serde_json::json!({"access_token": auth.token, "expires_in": 300}))
            } else {
                denied()
            }
        }
        _ => denied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        let f = parse_form("grant_type=refresh_token&scope=repository%3Ax%3Apull&a=b+c&empty=&pct=%");
        assert_eq!(f["grant_type"], "refresh_token");
        assert_eq!(f["scope"], "repository:x:pull");
        assert_eq!(f["a"], "b c");
        assert_eq!(f["empty"], "");
        assert_eq!(f["pct"], "%");
    }
}
