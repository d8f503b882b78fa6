//! The CRI streaming server (Exec, Attach, PortForward), driven by our own clients of the
//! Kubernetes streaming protocols (`tests::streaming`), which speak them as client-go (kubelet,
//! kubectl, crictl) does: SPDY/3.1 remotecommand v1–v4 (and client-go's offer list with v5),
//! WebSocket v5/v4/v1 and base64, port-forward over SPDY, over the SPDY-in-WebSocket tunnel of
//! crictl `--transport websocket`, and plain WebSocket; plus bytes a real Go client wrote, and
//! hostile input.
//!
//! What the protocol requires is taken from Kubernetes (cri-streaming, client-go) and, where the
//! CRI leaves it to the runtime, from containerd. Not tested here: token expiry (one minute, as
//! in cri-streaming; no knob to shorten it).

use std::time::{Duration, Instant};

use sha2::Digest;
use tests::cri_api::v1 as cri;
use tests::node::Node;
use tests::streaming::{
    self as st, exec_request, Client, ConnectError, End, PortForward, RemoteCommand, Status, Streams, CRICTL,
    CRICTL_WS, V1, V2, V3, V4, V5, WAIT,
};
use tests::{require_env, require_root, rpc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

// ---- helpers --------------------------------------------------------------------------------

/// A pod (own PID namespace per container) with one running container.
async fn pod_with(node: &Node, name: &str, cfg: cri::ContainerConfig) -> (String, String) {
    let (pod, pc) = node.run_pod(name, cri::NamespaceMode::Container).await;
    let c = node.run(&pod, &pc, cfg).await;
    (pod, c)
}

async fn sleeper(node: &Node, name: &str) -> (String, String) {
    let cfg = node.container_config("app", &["sleep", "3600"]);
    pod_with(node, name, cfg).await
}

async fn exec_url(node: &Node, c: &str, cmd: &[&str], s: Streams) -> String {
    st::exec_url(&mut node.rt(), exec_request(c, cmd, s)).await.unwrap_or_else(|e| panic!("Exec {cmd:?}: {e}"))
}

async fn attach_url(node: &Node, c: &str, s: Streams) -> String {
    st::attach_url(&mut node.rt(), st::attach_request(c, s)).await.unwrap_or_else(|e| panic!("Attach: {e}"))
}

async fn pf_url(node: &Node, pod: &str, ports: &[i32]) -> String {
    st::port_forward_url(&mut node.rt(), pod, ports).await.unwrap_or_else(|e| panic!("PortForward: {e}"))
}

/// Runs `cmd` in `c` through `client` to its end.
async fn run(node: &Node, c: &str, cmd: &[&str], s: Streams, client: Client, stdin: Option<&[u8]>) -> st::Outcome {
    let url = exec_url(node, c, cmd, s).await;
    st::run(&url, client, s, stdin).await
}

fn code(err: tonic::Status, want: Code, what: &str) {
    assert_eq!(err.code(), want, "{what}: {err:?}");
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn cleanup(node: &Node, pod: &str) {
    node.remove_pod(pod).await.expect("removing the pod");
    node.assert_nothing_left().await;
}

/// Polls the processes of `c` until one whose command line contains `needle` is there
/// (`present`) or none is; whether that happened within `timeout`.
async fn process_is(node: &Node, c: &str, needle: &str, present: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let procs = st::processes(node, c).await;
        if procs.iter().any(|p| p.contains(needle)) == present {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("processes still in the container: {procs:?}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- exec -----------------------------------------------------------------------------------

#[tokio::test]
async fn exec_output_streams_and_exit_codes_over_spdy() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "exec-basic").await;

    // The URL: absolute, on 127.0.0.1, /exec/<token>.
    let url = exec_url(&node, &c, &["sh", "-c", "echo out; echo err >&2"], Streams::OUT).await;
    let u = st::parse_url(&url);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(u.target.starts_with("/exec/") && st::token_of(&url).len() >= 8, "{url}");
    let o = st::run(&url, CRICTL, Streams::OUT, None).await;
    // client-go offers v5 first; the CRI streaming server speaks v4 at most over SPDY (v5 would
    // be read as v4 by client-go, so either is right).
    assert!(o.protocol == V4 || o.protocol == V5, "negotiated {:?}", o.protocol);
    assert_eq!(o.stdout_text(), "out\n");
    assert_eq!(o.stderr_text(), "err\n");
    assert_eq!(o.status(), Status::Success, "error stream {:?}", o.error_text());

    // critest's exec: stdout exactly "hello", stderr empty.
    let o = run(&node, &c, &["echo", "-n", "hello"], Streams::OUT, CRICTL, None).await;
    assert_eq!((o.stdout_text().as_str(), o.stderr_text().as_str()), ("hello", ""));

    // Non-zero exits: v4 status Failure / NonZeroExitCode with an ExitCode cause.
    for n in [1u8, 3, 255] {
        let script = format!("echo before-exit; exit {n}");
        let o = run(&node, &c, &["sh", "-c", &script], Streams::OUT, CRICTL, None).await;
        assert_eq!(o.stdout_text(), "before-exit\n");
        assert_eq!(o.status(), Status::ExitCode(n), "error stream {:?}", o.error_text());
        let v: serde_json::Value = serde_json::from_slice(&o.error).expect("v4 status is JSON");
        assert_eq!(v["status"], "Failure", "{v}");
        assert_eq!(v["reason"], "NonZeroExitCode", "{v}");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode", "{v}");
        assert_eq!(v["details"]["causes"][0]["message"], n.to_string(), "{v}");
    }

    // Killed by a signal: 128 + the signal, as runc and containerd report it.
    let o = run(&node, &c, &["sh", "-c", "kill -9 $$"], Streams::OUT, CRICTL, None).await;
    assert_eq!(o.status(), Status::ExitCode(137), "error stream {:?}", o.error_text());

    // A command that cannot start is a failure, never a success.
    let o = run(&node, &c, &["/no/such/binary"], Streams::OUT, CRICTL, None).await;
    assert_ne!(o.status(), Status::Success, "error stream {:?}", o.error_text());
    assert!(!matches!(o.status(), Status::ProtocolError(_)), "{:?}", o.error_text());

    // Only stdout asked: no stderr stream, the rest works.
    let o = run(
        &node,
        &c,
        &["sh", "-c", "echo only-out; echo lost >&2"],
        Streams { stdout: true, ..Default::default() },
        CRICTL,
        None,
    )
    .await;
    assert_eq!(o.stdout_text(), "only-out\n");
    assert_eq!(o.status(), Status::Success);

    // 8 MiB of output (no SPDY flow-control window may hold it back: Go clients never grant any).
    let o = run(&node, &c, &["sh", "-c", "dd if=/dev/zero bs=65536 count=128 2>/dev/null"], Streams::OUT, CRICTL, None)
        .await;
    assert_eq!(o.stdout.len(), 8 << 20);
    assert!(o.stdout.iter().all(|b| *b == 0));
    assert_eq!(o.status(), Status::Success);

    // Both outputs at once, each kept apart and whole.
    let script = "head -c 2097152 /dev/zero | tr '\\0' o & head -c 1048576 /dev/zero | tr '\\0' e >&2; wait";
    let o = run(&node, &c, &["sh", "-c", script], Streams::OUT, CRICTL, None).await;
    assert_eq!(o.stdout.len(), 2 << 20);
    assert!(o.stdout.iter().all(|b| *b == b'o'), "stderr bytes on stdout");
    assert_eq!(o.stderr.len(), 1 << 20);
    assert!(o.stderr.iter().all(|b| *b == b'e'), "stdout bytes on stderr");

    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn exec_stdin_round_trip_and_eof() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "exec-stdin").await;

    for client in [CRICTL, CRICTL_WS] {
        // `echo hello | crictl exec -i c cat`: stdin's end (FIN / v5 close) reaches cat as EOF.
        let o = run(&node, &c, &["cat"], Streams::IO, client, Some(b"hello\n")).await;
        assert_eq!(o.stdout_text(), "hello\n", "{client:?}");
        assert_eq!(o.status(), Status::Success, "{client:?}: {:?}", o.error_text());

        // An empty stdin closed at once.
        let o = run(&node, &c, &["sh", "-c", "cat; echo eof-seen"], Streams::IO, client, Some(b"")).await;
        assert_eq!(o.stdout_text(), "eof-seen\n", "{client:?}");

        // Megabytes through cat, byte for byte, and counted on the other side.
        let data = pseudo_random(4 << 20, 7);
        let o = run(&node, &c, &["cat"], Streams::IO, client, Some(&data)).await;
        assert_eq!(o.stdout.len(), data.len(), "{client:?}");
        assert!(o.stdout == data, "{client:?}: cat's output differs from its input");
        let o = run(&node, &c, &["wc", "-c"], Streams::IO, client, Some(&data[..3 << 20])).await;
        assert_eq!(o.stdout_text().trim(), (3u32 << 20).to_string(), "{client:?}");

        // Interactive: a line in, its echo out, while the session stays open.
        let url =
            exec_url(&node, &c, &["sh", "-c", "while read l; do echo \"got $l\"; done; exit 4"], Streams::IO).await;
        let mut rc = RemoteCommand::connect(&url, client, Streams::IO).await.unwrap();
        rc.send_stdin(b"one\n").await.unwrap();
        assert!(rc.wait_stdout("got one\n", WAIT).await, "{client:?}: {:?}", rc.stdout_text());
        rc.send_stdin(b"two\n").await.unwrap();
        assert!(rc.wait_stdout("got two\n", WAIT).await, "{client:?}: {:?}", rc.stdout_text());
        rc.close_stdin().await.unwrap();
        let o = rc.finish(WAIT).await.unwrap();
        assert_eq!(o.status(), Status::ExitCode(4), "{client:?}: {:?}", o.error_text());
    }

    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn exec_with_a_tty() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "exec-tty").await;

    for client in [CRICTL, CRICTL_WS] {
        let o = run(&node, &c, &["tty"], Streams::TTY, client, None).await;
        let out = o.stdout_text();
        assert!(out.starts_with("/dev/pts/"), "{client:?}: tty printed {out:?}");
        assert!(out.ends_with("\r\n"), "{client:?}: a terminal's line end: {out:?}");
        assert_eq!(o.status(), Status::Success, "{client:?}");
        assert!(o.stderr.is_empty());

        // stderr goes to the terminal, so to stdout; TERM is xterm, as containerd sets it.
        let o =
            run(&node, &c, &["sh", "-c", "echo to-stderr >&2; echo TERM=$TERM; exit 5"], Streams::TTY, client, None)
                .await;
        let out = o.stdout_text();
        assert!(out.contains("to-stderr"), "{client:?}: {out:?}");
        assert!(out.contains("TERM=xterm"), "{client:?}: {out:?}");
        assert!(o.stderr.is_empty(), "{client:?}");
        assert_eq!(o.status(), Status::ExitCode(5), "{client:?}");
    }

    // Resizes reach the terminal: over client-go's SPDY (v4), over v3 (where resize began), and
    // over WebSocket v5.
    for client in [CRICTL, Client::Spdy(&[V3]), CRICTL_WS] {
        let url = exec_url(&node, &c, &["sh"], Streams::TTY).await;
        let mut rc = RemoteCommand::connect(&url, client, Streams::TTY).await.unwrap();
        // crictl sends the terminal's size at once.
        rc.resize(123, 45).await.unwrap();
        expect_size(&mut rc, "45 123").await;
        rc.resize(77, 22).await.unwrap();
        expect_size(&mut rc, "22 77").await;
        // The resize stream is a stream of JSON values: one split over two writes...
        rc.send_resize_raw(b"{\"Width\":9").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        rc.send_resize_raw(b"1,\"Height\":33}\n").await.unwrap();
        expect_size(&mut rc, "33 91").await;
        // ...and two in one write, the last one winning.
        rc.send_resize_raw(b"{\"Width\":10,\"Height\":5}\n{\"Width\":100,\"Height\":40}\n").await.unwrap();
        expect_size(&mut rc, "40 100").await;
        // Keys match case-insensitively (Go's encoding/json); a zero size is ignored (containerd).
        rc.send_resize_raw(b"{\"width\":61,\"height\":21}\n").await.unwrap();
        expect_size(&mut rc, "21 61").await;
        rc.resize(0, 0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        expect_size(&mut rc, "21 61").await;
        // Garbage on the resize stream may end resizing, never the session.
        rc.send_resize_raw(b"not json at all\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        rc.send_stdin(b"exit 7\n").await.unwrap();
        let o = rc.finish(WAIT).await.unwrap();
        if st::json_status(&o.protocol) {
            assert_eq!(o.status(), Status::ExitCode(7), "{client:?}: {:?}", o.error_text());
        } else {
            assert!(matches!(o.status(), Status::Failure { .. }), "{client:?}: {:?}", o.error_text());
        }
    }

    cleanup(&node, &pod).await;
}

/// Asks the shell on the terminal for its size until it reports `want` (a resize is applied
/// asynchronously to the input), up to 20 tries.
async fn expect_size(rc: &mut RemoteCommand, want: &str) {
    for i in 0..20 {
        let marker = format!("size{i}-{}:", want.replace(' ', "x"));
        let from = rc.stdout.len();
        rc.send_stdin(format!("echo {marker}$(stty size):\n").as_bytes()).await.unwrap();
        // The terminal echoes the typed line after the prompt; the answer is a line of its own.
        let answer = |out: &[u8]| -> Option<String> {
            String::from_utf8_lossy(out)
                .lines()
                .map(|l| l.trim_end().to_string())
                .find(|l| l.starts_with(&marker) && l.ends_with(':') && l.len() > marker.len() + 1)
        };
        let got = rc.wait_until(WAIT, |s| answer(&s.stdout[from..]).is_some()).await;
        let Some(line) = answer(&rc.stdout[from..]) else {
            panic!("no answer to stty (got {got}): {:?}", String::from_utf8_lossy(&rc.stdout[from..]));
        };
        if line == format!("{marker}{want}:") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the terminal never reported size {want}: {:?}", rc.stdout_text());
}

#[tokio::test]
async fn every_remotecommand_protocol_version() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "exec-versions").await;
    let echo: &[&str] = &["sh", "-c", "echo out-$0; echo err-$0 >&2", "x"];
    let fail: &[&str] = &["sh", "-c", "exit 3"];

    // SPDY, one version offered at a time (POST, as crictl), and v4 with GET.
    let spdy: [(Client, &str); 5] = [
        (Client::Spdy(&[V4]), V4),
        (Client::Spdy(&[V3]), V3),
        (Client::Spdy(&[V2]), V2),
        (Client::Spdy(&[V1]), V1),
        (Client::SpdyGet(&[V4]), V4),
    ];
    // WebSocket: client-go's v5, and the forms the CRI streaming server serves.
    let ws: [(Client, &str); 5] = [
        (Client::WebSocket(&[V5]), V5),
        (Client::WebSocket(&[V4]), V4),
        (Client::WebSocket(&[V1]), V1),
        (Client::WebSocket(&[st::BASE64]), st::BASE64),
        (Client::WebSocket(&[st::V4_BASE64]), st::V4_BASE64),
    ];
    for (client, want) in spdy.into_iter().chain(ws) {
        let o = run(&node, &c, echo, Streams::OUT, client, None).await;
        assert_eq!(o.protocol, want, "{client:?}");
        assert_eq!(o.stdout_text(), "out-x\n", "{client:?}");
        assert_eq!(o.stderr_text(), "err-x\n", "{client:?}");
        assert_eq!(o.status(), Status::Success, "{client:?}: error stream {:?}", o.error_text());
        let o = run(&node, &c, fail, Streams::OUT, client, None).await;
        if st::json_status(want) {
            assert_eq!(o.status(), Status::ExitCode(3), "{client:?}: {:?}", o.error_text());
        } else {
            // v1–v3 carry the failure as text (client-go cannot recover the code).
            assert!(matches!(o.status(), Status::Failure { .. }), "{client:?}: {:?}", o.error_text());
            assert!(!o.error.is_empty());
        }
        if let Client::WebSocket(_) = client {
            // client-go reads any close but 1000 as an error.
            assert_eq!(o.close, Some(Some(1000)), "{client:?}: the WebSocket's close");
        }
    }

    // Binary output survives base64 (every byte value).
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let o = run(&node, &c, &["cat"], Streams::IO, Client::WebSocket(&[V5]), Some(&all_bytes)).await;
    assert_eq!(o.stdout, all_bytes);
    let url = exec_url(&node, &c, &["sh", "-c", "printf '\\000\\001\\377\\200'; exit 0"], Streams::OUT).await;
    let o = st::run(&url, Client::WebSocket(&[st::BASE64]), Streams::OUT, None).await;
    assert_eq!(o.stdout, vec![0u8, 1, 255, 128]);

    // stdin over the WebSocket forms without a close signal: the command reads what it needs.
    for p in [&[V4][..], &[st::V4_BASE64][..], &[st::BASE64][..]] {
        let url = exec_url(&node, &c, &["head", "-c", "5"], Streams::IO).await;
        let mut rc = RemoteCommand::connect(&url, Client::WebSocket(p), Streams::IO).await.unwrap();
        rc.send_stdin(b"ab\x00\xffe-and-more").await.unwrap();
        let o = rc.finish(WAIT).await.unwrap();
        assert_eq!(o.stdout, b"ab\x00\xffe", "{p:?}");
    }

    // stdin over v2 and v3 (v1's server closes stdin at once; its clients never half-close).
    for v in [&[V2][..], &[V3][..]] {
        let o = run(&node, &c, &["cat"], Streams::IO, Client::Spdy(v), Some(b"v2-and-v3-stdin\n")).await;
        assert_eq!(o.stdout_text(), "v2-and-v3-stdin\n", "{v:?}");
    }

    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn protocol_negotiation() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "exec-negotiation").await;
    let cmd: &[&str] = &["echo", "hi"];

    // The client's order wins (apimachinery `negotiateProtocol`).
    let url = exec_url(&node, &c, cmd, Streams::OUT).await;
    let o = st::run(&url, Client::Spdy(&[V2, V4, V3]), Streams::OUT, None).await;
    assert_eq!(o.protocol, V2);
    assert_eq!(o.stdout_text(), "hi\n");

    // Protocols in one comma-separated header line count as several.
    let url = exec_url(&node, &c, cmd, Streams::OUT).await;
    let head = st::spdy_upgrade_head("POST", &url, &["v9.channel.k8s.io, v3.channel.k8s.io"]);
    let (resp, _io) = st::http_exchange(&url, &head).await.unwrap();
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(resp.header(st::STREAM_PROTOCOL_HEADER), Some(V3), "{resp:?}");

    // Nothing in common: 403, with the server's protocols in X-Accepted-Stream-Protocol-Versions.
    let url = exec_url(&node, &c, cmd, Streams::OUT).await;
    let err = st::spdy_connect("POST", &url, &["v9.channel.k8s.io"]).await.err().expect("no common protocol");
    let ConnectError::Refused(resp) = err else { panic!("{err}") };
    assert_eq!(resp.status, 403, "{resp:?}");
    let accepted = resp.header_values(st::ACCEPTED_PROTOCOLS_HEADER);
    for p in [V4, V3, V2, V1] {
        assert!(accepted.iter().any(|a| a == p), "{p} not in {accepted:?}");
    }

    // No X-Stream-Protocol-Version at all: 400.
    let url = exec_url(&node, &c, cmd, Streams::OUT).await;
    let err = st::spdy_connect("POST", &url, &[]).await.err().expect("no protocol offered");
    assert_eq!(err.status(), 400, "{err}");

    // Not an upgrade: 400.
    let url = exec_url(&node, &c, cmd, Streams::OUT).await;
    let u = st::parse_url(&url);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n{}: {V4}\r\n\r\n",
        u.target,
        u.authority,
        st::STREAM_PROTOCOL_HEADER
    );
    let (resp, _) = st::http_exchange(&url, head.as_bytes()).await.unwrap();
    assert_eq!(resp.status, 400, "{resp:?}");

    // WebSocket with no subprotocol the server speaks: 403 (as golang.org/x/net/websocket).
    let url = exec_url(&node, &c, cmd, Streams::OUT).await;
    let err = st::ws_connect(&url, &["v9.channel.k8s.io"]).await.expect_err("no common subprotocol");
    assert_eq!(err.status(), 403, "{err}");
    // client-go's WebSocket executor offers v5 alone, and gets it.
    let url = exec_url(&node, &c, cmd, Streams::OUT).await;
    let (_ws, chosen) = st::ws_connect(&url, &[V5]).await.unwrap();
    assert_eq!(chosen.as_deref(), Some(V5));

    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn websocket_heartbeat_and_close() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "exec-ws-ping").await;
    // client-go pings every 5 s and gives up 61 s after the last pong, even while data flows.
    let url =
        exec_url(&node, &c, &["sh", "-c", "for i in 1 2 3 4 5 6; do echo tick$i; sleep 0.5; done"], Streams::OUT).await;
    let mut rc = RemoteCommand::connect(&url, CRICTL_WS, Streams::OUT).await.unwrap();
    for i in 0..6u8 {
        rc.ws_ping(&[i]).await.unwrap();
        rc.wait_until(Duration::from_millis(500), |_| false).await;
    }
    assert!(rc.wait_until(WAIT, |s| s.pongs >= 5).await, "{} pongs for 6 pings", rc.pongs);
    let o = rc.finish(WAIT).await.unwrap();
    assert_eq!(o.stdout_text(), "tick1\ntick2\ntick3\ntick4\ntick5\ntick6\n");
    assert_eq!(o.close, Some(Some(1000)));
    assert_eq!(o.status(), Status::Success);
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn a_client_that_disconnects_leaves_no_process_behind() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "exec-disconnect").await;

    let cases: [(Client, Streams, &str); 4] = [
        (CRICTL, Streams::OUT, "1001"),
        (CRICTL, Streams::TTY, "1002"),
        (CRICTL, Streams::IO, "1003"),
        (CRICTL_WS, Streams::IO, "1004"),
    ];
    for (client, s, secs) in cases {
        let script = format!("echo started; exec sleep {secs}");
        let url = exec_url(&node, &c, &["sh", "-c", &script], s).await;
        let mut rc = RemoteCommand::connect(&url, client, s).await.unwrap();
        assert!(rc.wait_stdout("started", WAIT).await, "{client:?} {s:?}: {:?}", rc.stdout_text());
        if let Some(session) = rc.session() {
            // The server answers pings while the command runs (client-go pings every 5 s).
            tokio::time::timeout(Duration::from_secs(10), session.ping()).await.expect("ping answered").expect("ping");
        }
        let needle = format!("sleep {secs}");
        assert!(process_is(&node, &c, &needle, true, WAIT).await, "{needle} is not running");
        rc.abort().await;
        assert!(
            process_is(&node, &c, &needle, false, Duration::from_secs(15)).await,
            "{client:?} {s:?}: the exec'd process outlived its client"
        );
    }
    // corrald still serves.
    let o = run(&node, &c, &["echo", "still-here"], Streams::OUT, CRICTL, None).await;
    assert_eq!(o.stdout_text(), "still-here\n");
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn many_concurrent_sessions_on_one_container() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "exec-many").await;

    let mut urls = Vec::new();
    for i in 0..24 {
        let url =
            exec_url(&node, &c, &["sh", "-c", "echo start-$0; cat; echo end-$0", &i.to_string()], Streams::IO).await;
        urls.push(url);
    }
    let mut tasks = Vec::new();
    for (i, url) in urls.into_iter().enumerate() {
        let client = if i % 3 == 2 { CRICTL_WS } else { CRICTL };
        tasks.push(tokio::spawn(async move {
            let payload = pseudo_random(64 * 1024 + i, i as u64);
            let o = st::run(&url, client, Streams::IO, Some(&payload)).await;
            let mut want = format!("start-{i}\n").into_bytes();
            want.extend_from_slice(&payload);
            want.extend_from_slice(format!("end-{i}\n").as_bytes());
            assert!(
                o.stdout == want,
                "session {i} ({client:?}): {} bytes of output, {} expected",
                o.stdout.len(),
                want.len()
            );
            assert_eq!(o.status(), Status::Success, "session {i}");
        }));
    }
    for t in tasks {
        t.await.expect("a session failed");
    }
    cleanup(&node, &pod).await;
}

// ---- attach ---------------------------------------------------------------------------------

fn interactive(node: &Node, cmd: &[&str], stdin_once: bool, tty: bool) -> cri::ContainerConfig {
    let mut cfg = node.container_config("app", cmd);
    cfg.stdin = true;
    cfg.stdin_once = stdin_once;
    cfg.tty = tty;
    cfg
}

#[tokio::test]
async fn attach_shares_output_and_takes_stdin() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let script = "while read l; do echo \"got $l\"; echo \"err $l\" >&2; done";
    let (pod, c) = pod_with(&node, "attach", interactive(&node, &["sh", "-c", script], false, false)).await;

    for client in [CRICTL, CRICTL_WS] {
        // A writes, B only watches; both see the container's output.
        let url_a = attach_url(&node, &c, Streams::IO).await;
        let url_b = attach_url(&node, &c, Streams::OUT).await;
        assert!(st::parse_url(&url_a).target.starts_with("/attach/"), "{url_a}");
        let mut a = RemoteCommand::connect(&url_a, client, Streams::IO).await.unwrap();
        let mut b = RemoteCommand::connect(&url_b, client, Streams::OUT).await.unwrap();
        // Give both attaches a moment to be wired before the container writes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.send_stdin(b"one\n").await.unwrap();
        assert!(a.wait_stdout("got one\n", WAIT).await, "{client:?} A: {:?}", a.stdout_text());
        assert!(b.wait_stdout("got one\n", WAIT).await, "{client:?} B: {:?}", b.stdout_text());
        assert!(
            a.wait_until(WAIT, |s| s.stderr.ends_with(b"err one\n")).await,
            "{client:?}: A's stderr {:?}",
            a.stderr
        );
        assert!(
            b.wait_until(WAIT, |s| s.stderr.ends_with(b"err one\n")).await,
            "{client:?}: B's stderr {:?}",
            b.stderr
        );

        // Without stdin_once, A's stdin ending detaches A only (containerd); the container
        // keeps its stdin, and a third client's input still reaches it, seen by B.
        a.close_stdin().await.unwrap();
        let o = a.finish(WAIT).await.expect("an attach whose stdin ended detaches");
        assert_eq!(o.status(), Status::Success, "{client:?}: {:?}", o.error_text());
        let url_c = attach_url(&node, &c, Streams::IO).await;
        let mut cc = RemoteCommand::connect(&url_c, client, Streams::IO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cc.send_stdin(b"two\n").await.unwrap();
        assert!(b.wait_stdout("got two\n", WAIT).await, "{client:?} B: {:?}", b.stdout_text());
        assert!(cc.wait_stdout("got two\n", WAIT).await, "{client:?} C: {:?}", cc.stdout_text());
        // No history is replayed: C saw nothing of "one".
        assert!(!cc.stdout_text().contains("got one"), "{:?}", cc.stdout_text());
        cc.abort().await;
        b.abort().await;
        assert_eq!(node.status(&c).await.state, cri::ContainerState::ContainerRunning as i32);
    }
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn attach_with_stdin_once_closes_the_container_stdin() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;

    // critest: /bin/sh with stdin and stdin_once; "echo -n hello" gives exactly "hello".
    let (pod, c) = pod_with(&node, "attach-critest", interactive(&node, &["/bin/sh"], true, false)).await;
    let url = attach_url(&node, &c, Streams::IO).await;
    let mut rc = RemoteCommand::connect(&url, CRICTL, Streams::IO).await.unwrap();
    rc.send_stdin(b"echo -n hello\n").await.unwrap();
    assert!(rc.wait_stdout("hello", WAIT).await, "{:?}", rc.stdout_text());
    rc.wait_until(Duration::from_secs(3), |_| false).await;
    assert_eq!(rc.stdout_text(), "hello");
    assert!(rc.stderr.is_empty(), "{:?}", rc.stderr);
    // The end of this client's stdin is the end of the container's.
    rc.close_stdin().await.unwrap();
    let o = rc.finish(WAIT).await.expect("the attach ends with the container");
    assert_eq!(o.status(), Status::Success, "{:?}", o.error_text());
    let s = node.wait_exited(&c, WAIT).await;
    assert_eq!(s.exit_code, 0);
    node.remove_pod(&pod).await.unwrap();

    for (i, client) in [CRICTL, CRICTL_WS].into_iter().enumerate() {
        let script = "while read l; do echo \"got $l\"; done; echo stdin-closed; exit 3";
        let (pod, c) =
            pod_with(&node, &format!("attach-once-{i}"), interactive(&node, &["sh", "-c", script], true, false)).await;
        let url = attach_url(&node, &c, Streams::IO).await;
        let mut rc = RemoteCommand::connect(&url, client, Streams::IO).await.unwrap();
        rc.send_stdin(b"x\n").await.unwrap();
        assert!(rc.wait_stdout("got x\n", WAIT).await, "{client:?}: {:?}", rc.stdout_text());
        rc.close_stdin().await.unwrap();
        assert!(rc.wait_stdout("stdin-closed\n", WAIT).await, "{client:?}: {:?}", rc.stdout_text());
        let o = rc.finish(WAIT).await.expect("the attach ends with the container");
        // An attach that ends with its container is a success (cri-streaming's ServeAttach).
        assert_eq!(o.status(), Status::Success, "{client:?}: {:?}", o.error_text());
        let s = node.wait_exited(&c, WAIT).await;
        assert_eq!(s.exit_code, 3, "{client:?}");
        node.remove_pod(&pod).await.unwrap();
    }
    node.assert_nothing_left().await;
}

#[tokio::test]
async fn attach_to_a_tty_container_with_resize() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = pod_with(&node, "attach-tty", interactive(&node, &["sh"], false, true)).await;
    for client in [CRICTL, CRICTL_WS] {
        let url = attach_url(&node, &c, Streams::TTY).await;
        let mut rc = RemoteCommand::connect(&url, client, Streams::TTY).await.unwrap();
        rc.resize(111, 44).await.unwrap();
        expect_size(&mut rc, "44 111").await;
        rc.resize(90, 30).await.unwrap();
        expect_size(&mut rc, "30 90").await;
        assert!(rc.stderr.is_empty());
        rc.abort().await;
    }
    assert_eq!(node.status(&c).await.state, cri::ContainerState::ContainerRunning as i32);
    // tty and stderr together are refused for attach too.
    let err = st::attach_url(&mut node.rt(), st::attach_request(&c, Streams { stderr: true, ..Streams::TTY }))
        .await
        .unwrap_err();
    code(err, Code::InvalidArgument, "attach with tty and stderr");
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn attach_ends_when_the_container_exits() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    for (i, client) in [CRICTL, CRICTL_WS].into_iter().enumerate() {
        let script = "sleep 2; for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 0.2; done; exit 7";
        let cfg = node.container_config("app", &["sh", "-c", script]);
        let (pod, c) = pod_with(&node, &format!("attach-exit-{i}"), cfg).await;
        let url = attach_url(&node, &c, Streams::OUT).await;
        let rc = RemoteCommand::connect(&url, client, Streams::OUT).await.unwrap();
        let o = rc.finish(WAIT).await.expect("the attach ends when the container exits");
        assert!(o.stdout_text().contains("tick 10\n"), "{client:?}: {:?}", o.stdout_text());
        assert_eq!(o.status(), Status::Success, "{client:?}: {:?}", o.error_text());
        let s = node.wait_exited(&c, WAIT).await;
        assert_eq!(s.exit_code, 7);
        // An exited container cannot be attached to.
        let err = st::attach_url(&mut node.rt(), st::attach_request(&c, Streams::OUT)).await.unwrap_err();
        code(err, Code::FailedPrecondition, "attach to an exited container");
        node.remove_pod(&pod).await.unwrap();
    }
    node.assert_nothing_left().await;
}

// ---- port-forward ---------------------------------------------------------------------------

const WEB_PORT: u16 = 8080;

/// busybox httpd on `port` serving /www/index.html ("hello-pf") and /www/big (3 MiB of random).
fn web_script(port: u16) -> String {
    format!(
        "mkdir -p /www && dd if=/dev/urandom of=/www/big.tmp bs=1024 count=3072 2>/dev/null && mv /www/big.tmp /www/big \
         && echo hello-pf > /www/index.html && exec httpd -f -p {port} -h /www"
    )
}

/// Waits until the web container serves, then returns the sha256 of /www/big.
async fn web_ready(node: &Node, c: &str, port: u16) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let probe = format!(
            "test -e /www/index.html && wget -q -O /dev/null http://127.0.0.1:{port}/index.html && sha256sum /www/big"
        );
        if let Ok(out) = node.exec(c, &["sh", "-c", &probe], 10).await {
            if out.exit_code == 0 {
                return String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string();
            }
        }
        assert!(Instant::now() < deadline, "httpd did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn check_big(what: &str, resp: &[u8], sha: &str) {
    let (head, body) = st::split_http(resp);
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{what}: {head:?}");
    assert_eq!(body.len(), 3 << 20, "{what}: body length");
    assert_eq!(hex::encode(sha2::Sha256::digest(&body)), sha, "{what}: body differs");
}

fn check_index(what: &str, resp: &[u8]) {
    let (head, body) = st::split_http(resp);
    assert!(head.contains(" 200 "), "{what}: {head:?}");
    assert_eq!(body, b"hello-pf\n", "{what}");
}

#[tokio::test]
async fn port_forward_over_spdy_and_the_websocket_tunnel() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let cfg = node.container_config("web", &["sh", "-c", &web_script(WEB_PORT)]);
    let (pod, c) = pod_with(&node, "pf", cfg).await;
    let sha = web_ready(&node, &c, WEB_PORT).await;

    // crictl's SPDY port-forward (no ports in the request, as crictl sends none).
    let url = pf_url(&node, &pod, &[]).await;
    assert!(st::parse_url(&url).target.starts_with("/portforward/"), "{url}");
    let mut pf = PortForward::spdy(&url).await.unwrap();
    let f = pf.open(WEB_PORT).await.unwrap();
    assert_eq!(f.request_id, 0);
    let o = f.exchange(&st::http_get("/big"), false, WAIT).await;
    check_big("SPDY", &o.data, &sha);
    assert!(o.error.is_empty(), "error stream: {:?}", String::from_utf8_lossy(&o.error));
    assert_eq!(o.error_end, End::Fin, "the error stream ends with FIN");

    // More connections on the same session, two at once; one half-closed like a client that
    // stops sending.
    let f1 = pf.open(WEB_PORT).await.unwrap();
    let f2 = pf.open(WEB_PORT).await.unwrap();
    assert_eq!((f1.request_id, f2.request_id), (1, 2));
    let (get_index, get_big) = (st::http_get("/index.html"), st::http_get("/big"));
    let (o1, o2) = tokio::join!(f1.exchange(&get_index, true, WAIT), f2.exchange(&get_big, false, WAIT));
    check_index("SPDY, request 1", &o1.data);
    check_big("SPDY, request 2", &o2.data, &sha);

    // Eight at once, each a whole file.
    let mut opened = Vec::new();
    for _ in 0..8 {
        opened.push(pf.open(WEB_PORT).await.unwrap());
    }
    let results = futures::future::join_all(opened.into_iter().map(|f| f.exchange(&get_big, false, WAIT))).await;
    for (i, o) in results.iter().enumerate() {
        check_big(&format!("SPDY, concurrent request {i}"), &o.data, &sha);
    }

    // A port nothing listens on: the error stream says so, the session stays usable.
    let f = pf.open(WEB_PORT + 1).await.unwrap();
    let o = f.exchange(&st::http_get("/"), false, WAIT).await;
    assert!(o.data.is_empty(), "{:?}", String::from_utf8_lossy(&o.data));
    let text = String::from_utf8_lossy(&o.error).into_owned();
    assert!(!text.is_empty(), "no error for a refused port");
    assert!(text.contains(&(WEB_PORT + 1).to_string()), "the error names the port: {text:?}");
    let f = pf.open(WEB_PORT).await.unwrap();
    check_index("after a refused port", &f.exchange(&st::http_get("/index.html"), false, WAIT).await.data);

    // Streams the server must refuse (RST_STREAM, as cri-streaming's httpStreamReceived):
    // no port, port 0, port out of range, port not a number, an unknown stream type.
    for headers in [
        vec![("streamtype", "data"), ("requestid", "90")],
        vec![("streamtype", "data"), ("port", "0"), ("requestid", "91")],
        vec![("streamtype", "data"), ("port", "70000"), ("requestid", "92")],
        vec![("streamtype", "data"), ("port", "http"), ("requestid", "93")],
        vec![("streamtype", "bogus"), ("port", "8080"), ("requestid", "94")],
    ] {
        assert!(refused_stream(&pf, &headers).await, "a stream with {headers:?} was not refused");
    }
    let f = pf.open(WEB_PORT).await.unwrap();
    check_index("after refused streams", &f.exchange(&st::http_get("/index.html"), false, WAIT).await.data);

    // Clients older than requestID: the error stream pairs with the data stream made after it
    // (cri-streaming: error -> its stream id, data -> its stream id - 2).
    let port = WEB_PORT.to_string();
    let (mut e_recv, mut e_send) = pf.open_raw(&[("streamtype", "error"), ("port", &port)]).await.unwrap().split();
    e_send.shutdown().await.unwrap();
    let (mut d_recv, mut d_send) = pf.open_raw(&[("streamtype", "data"), ("port", &port)]).await.unwrap().split();
    d_send.write_all(&st::http_get("/index.html")).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, d_recv.read_to_end(&mut resp)).await.expect("no answer without requestID").unwrap();
    check_index("without requestID", &resp);
    d_send.reset(5);
    let mut err = Vec::new();
    let _ = tokio::time::timeout(WAIT, e_recv.read_to_end(&mut err)).await.expect("the error stream ends");
    assert!(err.is_empty(), "{:?}", String::from_utf8_lossy(&err));
    pf.close().await;

    // The same over the WebSocket tunnel of crictl --transport websocket, with frames cut into
    // messages as Go writes them, and whole.
    for fragment in [true, false] {
        let url = pf_url(&node, &pod, &[]).await;
        let mut pf = PortForward::websocket_tunnel(&url, fragment).await.unwrap();
        let f = pf.open(WEB_PORT).await.unwrap();
        let o = f.exchange(&st::http_get("/big"), false, WAIT).await;
        check_big(&format!("WebSocket tunnel (fragment {fragment})"), &o.data, &sha);
        assert!(o.error.is_empty(), "{:?}", String::from_utf8_lossy(&o.error));
        let f = pf.open(WEB_PORT + 1).await.unwrap();
        let o = f.exchange(&st::http_get("/"), false, WAIT).await;
        assert!(!o.error.is_empty(), "no error for a refused port over the tunnel");
        let f = pf.open(WEB_PORT).await.unwrap();
        check_index("tunnel", &f.exchange(&st::http_get("/index.html"), false, WAIT).await.data);
        pf.close().await;
    }

    // The plain WebSocket form (v4.channel.k8s.io), ports from the request: each channel's first
    // message is its port, little-endian.
    let url = pf_url(&node, &pod, &[WEB_PORT as i32]).await;
    let o = st::ws_port_forward(&url, &[V4], &st::http_get("/big"), WAIT).await.unwrap();
    assert_eq!(o.protocol.as_deref(), Some(V4));
    let le = WEB_PORT.to_le_bytes().to_vec();
    assert!(o.initial.contains(&(0, le.clone())) && o.initial.contains(&(1, le)), "initial messages {:?}", o.initial);
    check_big("WebSocket v4", &o.data, &sha);
    assert!(o.error.is_empty(), "{:?}", String::from_utf8_lossy(&o.error));

    // A port-forward URL is no exec URL.
    let url = pf_url(&node, &pod, &[]).await;
    let err = st::spdy_connect("POST", &url, &[V4]).await.err().expect("remotecommand protocol on port-forward");
    assert!(matches!(err, ConnectError::Refused(_)), "{err}");

    cleanup(&node, &pod).await;
}

/// Whether the server refuses a stream with these headers as Kubernetes does: RST_STREAM
/// instead of a SYN_REPLY, so the client's stream creation fails.
async fn refused_stream(pf: &PortForward, headers: &[(&str, &str)]) -> bool {
    match tokio::time::timeout(WAIT, pf.open_raw(headers)).await {
        Err(_) => false,
        Ok(Err(spdy::Error::Reset { .. })) => true,
        Ok(Err(e)) => panic!("opening a stream with {headers:?}: {e}"),
        Ok(Ok(_)) => false,
    }
}

#[tokio::test]
async fn port_forward_into_a_host_network_pod() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    // A free port on the host (bound and released: httpd takes it in the host's namespace).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut pc = node.pod_config("pf-host", cri::NamespaceMode::Container);
    pc.hostname = String::new();
    pc.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().network =
        cri::NamespaceMode::Node as i32;
    let pod = node.run_pod_with(pc.clone()).await.expect("host-network pod");
    let c = node.run(&pod, &pc, node.container_config("web", &["sh", "-c", &web_script(port)])).await;
    let sha = web_ready(&node, &c, port).await;
    let url = pf_url(&node, &pod, &[]).await;
    let mut pf = PortForward::spdy(&url).await.unwrap();
    let o = pf.open(port).await.unwrap().exchange(&st::http_get("/big"), false, WAIT).await;
    check_big("host network", &o.data, &sha);
    pf.close().await;
    cleanup(&node, &pod).await;
}

// ---- tokens and validation ------------------------------------------------------------------

#[tokio::test]
async fn tokens_are_single_use_and_bound_to_their_kind() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "tokens").await;
    let cmd: &[&str] = &["echo", "hi"];

    // Used once: the second use is 404, over SPDY and WebSocket alike.
    let url = exec_url(&node, &c, cmd, Streams::OUT).await;
    assert_eq!(st::run(&url, CRICTL, Streams::OUT, None).await.stdout_text(), "hi\n");
    assert_eq!(st::spdy_connect("POST", &url, st::CLIENT_GO_SPDY).await.err().expect("reused").status(), 404);
    assert_eq!(st::ws_connect(&url, &[V5]).await.expect_err("reused").status(), 404);
    let url = exec_url(&node, &c, cmd, Streams::OUT).await;
    assert_eq!(st::run(&url, CRICTL_WS, Streams::OUT, None).await.stdout_text(), "hi\n");
    assert_eq!(st::spdy_connect("POST", &url, st::CLIENT_GO_SPDY).await.err().expect("reused").status(), 404);

    // Unknown tokens and paths.
    let url = exec_url(&node, &c, cmd, Streams::OUT).await;
    for path in ["/exec/AAAAAAAA", "/exec/", "/exec", "/attach/zzzzzzzz", "/portforward/-_-_-_-_", "/", "/nope/x"] {
        let other = st::with_path(&url, path);
        let err = st::spdy_connect("POST", &other, st::CLIENT_GO_SPDY).await.err().expect("unknown token");
        assert_eq!(err.status(), 404, "{path}: {err}");
    }
    // The real token still works after those misses.
    assert_eq!(st::run(&url, CRICTL, Streams::OUT, None).await.stdout_text(), "hi\n");

    // A token is only good on its own route.
    let exec = exec_url(&node, &c, cmd, Streams::OUT).await;
    let err = st::spdy_connect(
        "POST",
        &st::with_path(&exec, &format!("/attach/{}", st::token_of(&exec))),
        st::CLIENT_GO_SPDY,
    )
    .await
    .err()
    .expect("exec token on /attach");
    assert_eq!(err.status(), 404, "{err}");
    let attach = attach_url(&node, &c, Streams::OUT).await;
    let err = st::spdy_connect(
        "POST",
        &st::with_path(&attach, &format!("/exec/{}", st::token_of(&attach))),
        st::CLIENT_GO_SPDY,
    )
    .await
    .err()
    .expect("attach token on /exec");
    assert_eq!(err.status(), 404, "{err}");
    let pf = pf_url(&node, &pod, &[]).await;
    let err =
        st::spdy_connect("POST", &st::with_path(&pf, &format!("/exec/{}", st::token_of(&pf))), st::CLIENT_GO_SPDY)
            .await
            .err()
            .expect("port-forward token on /exec");
    assert_eq!(err.status(), 404, "{err}");

    // Every call gets its own token.
    let a = exec_url(&node, &c, cmd, Streams::OUT).await;
    let b = exec_url(&node, &c, cmd, Streams::OUT).await;
    assert_ne!(st::token_of(&a), st::token_of(&b));
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn streaming_requests_are_validated_by_the_rpc() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("validation", cri::NamespaceMode::Container).await;
    let running = node.run(&pod, &pc, node.container_config("running", &["sleep", "3600"])).await;
    let created = node.create(&pod, &pc, node.container_config("created", &["sleep", "3600"])).await.unwrap();
    let exited = node.run(&pod, &pc, node.container_config("exited", &["true"])).await;
    node.wait_exited(&exited, WAIT).await;
    let mut rt = node.rt();

    let exec = |c: &str, s: Streams| exec_request(c, &["true"], s);
    let cases: Vec<(&str, cri::ExecRequest, Code)> = vec![
        ("unknown container", exec("0123456789abcdef0123456789abcdef", Streams::OUT), Code::NotFound),
        ("no container id", exec("", Streams::OUT), Code::InvalidArgument),
        ("a created container", exec(&created, Streams::OUT), Code::FailedPrecondition),
        ("an exited container", exec(&exited, Streams::OUT), Code::FailedPrecondition),
        ("no streams", exec(&running, Streams::default()), Code::InvalidArgument),
        ("tty only", exec(&running, Streams { tty: true, ..Default::default() }), Code::InvalidArgument),
        ("tty and stderr", exec(&running, Streams { stderr: true, ..Streams::TTY }), Code::InvalidArgument),
    ];
    for (what, req, want) in cases {
        code(st::exec_url(&mut rt, req).await.unwrap_err(), want, &format!("Exec: {what}"));
    }
    let attach = |c: &str, s: Streams| st::attach_request(c, s);
    let cases: Vec<(&str, cri::AttachRequest, Code)> = vec![
        ("unknown container", attach("0123456789abcdef0123456789abcdef", Streams::OUT), Code::NotFound),
        ("a created container", attach(&created, Streams::OUT), Code::FailedPrecondition),
        ("an exited container", attach(&exited, Streams::OUT), Code::FailedPrecondition),
        ("no streams", attach(&running, Streams::default()), Code::InvalidArgument),
        ("tty and stderr", attach(&running, Streams { stderr: true, ..Streams::TTY }), Code::InvalidArgument),
    ];
    for (what, req, want) in cases {
        code(st::attach_url(&mut rt, req).await.unwrap_err(), want, &format!("Attach: {what}"));
    }
    code(
        st::port_forward_url(&mut rt, "0123456789abcdef0123456789abcdef", &[]).await.unwrap_err(),
        Code::NotFound,
        "PortForward: unknown pod",
    );
    code(st::port_forward_url(&mut rt, "", &[]).await.unwrap_err(), Code::InvalidArgument, "PortForward: no pod id");
    // A valid request still works.
    let o = run(&node, &running, &["echo", "ok"], Streams::OUT, CRICTL, None).await;
    assert_eq!(o.stdout_text(), "ok\n");

    // A pod that is not ready has no port-forward.
    rpc(rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })).await.unwrap();
    code(
        st::port_forward_url(&mut rt, &pod, &[]).await.unwrap_err(),
        Code::FailedPrecondition,
        "PortForward: stopped pod",
    );
    cleanup(&node, &pod).await;
}

// ---- raw bytes: a Go client, and hostile input ----------------------------------------------

/// Upgrades to SPDY by hand and returns the raw connection.
async fn raw_upgrade(url: &str, protocols: &[&str]) -> st::Replay<tokio::net::TcpStream> {
    let (resp, io) = st::http_exchange(url, &st::spdy_upgrade_head("POST", url, protocols)).await.unwrap();
    assert_eq!(resp.status, 101, "{resp:?}");
    io
}

#[tokio::test]
async fn bytes_written_by_a_go_spdystream_client() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "go-bytes").await;

    // A session made of the very bytes Go's spdystream wrote: error stream (with a stray port
    // header), then stdout, in one compression context; our frames are read by hand.
    let url = exec_url(&node, &c, &["echo", "from-go-bytes"], Streams { stdout: true, ..Default::default() }).await;
    let mut io = raw_upgrade(&url, &[V4]).await;
    st::write_pieces(&mut io, st::GO_SYN_STREAM_1).await.unwrap();
    let mut replied = Vec::new();
    // The reply to stream 1 comes before the client makes stream 3 (client-go waits for it).
    while !replied.contains(&1) {
        match tokio::time::timeout(WAIT, st::read_frame(&mut io)).await.expect("no SYN_REPLY").unwrap() {
            Some(st::RawFrame::Control { kind: st::SYN_REPLY, payload, version, .. }) => {
                assert_eq!(version, 3);
                replied.push(u32::from_be_bytes(payload[..4].try_into().unwrap()));
            }
            Some(other) => panic!("before the first SYN_REPLY: {other:?}"),
            None => panic!("connection closed before the first SYN_REPLY"),
        }
    }
    st::write_pieces(&mut io, st::GO_SYN_STREAM_3).await.unwrap();
    st::write_pieces(&mut io, st::GO_PING_1).await.unwrap();
    let (mut stdout, mut error) = (Vec::new(), Vec::new());
    let (mut stdout_fin, mut error_fin, mut pong) = (false, false, false);
    while !(stdout_fin && error_fin && pong) {
        let frame = tokio::time::timeout(WAIT, st::read_frame(&mut io))
            .await
            .unwrap_or_else(|_| panic!("stuck: stdout {stdout:?} error {error:?} pong {pong}"))
            .unwrap();
        match frame {
            Some(st::RawFrame::Data { stream, flags, payload }) => {
                assert!(replied.contains(&stream), "DATA on stream {stream} before its SYN_REPLY");
                let (buf, fin) = match stream {
                    3 => (&mut stdout, &mut stdout_fin),
                    1 => (&mut error, &mut error_fin),
                    other => panic!("DATA on stream {other}"),
                };
                buf.extend_from_slice(&payload);
                *fin |= flags & st::FLAG_FIN != 0;
            }
            Some(st::RawFrame::Control { kind: st::SYN_REPLY, payload, .. }) => {
                replied.push(u32::from_be_bytes(payload[..4].try_into().unwrap()));
            }
            Some(st::RawFrame::Control { kind: st::PING, payload, .. }) => {
                let id = u32::from_be_bytes(payload[..4].try_into().unwrap());
                if id == 1 {
                    pong = true;
                } else {
                    // The server's own ping (even id): Go echoes it.
                    assert_eq!(id % 2, 0, "ping id {id}");
                    io.write_all(&st::control_frame(st::PING, 0, &payload)).await.unwrap();
                }
            }
            Some(st::RawFrame::Control { kind: st::RST_STREAM, payload, .. }) => {
                let id = u32::from_be_bytes(payload[..4].try_into().unwrap());
                if (id == 1 && !error_fin) || (id == 3 && !stdout_fin) {
                    panic!("stream {id} reset before its end (stdout {stdout:?}, error {error:?})");
                }
            }
            Some(st::RawFrame::Control { kind: st::GOAWAY, .. }) => panic!("GOAWAY before the client closed"),
            Some(st::RawFrame::Control { kind, .. }) => {
                // Only frame types Go's framer reads may be sent (1–4, 6–9).
                assert!(matches!(kind, 1..=4 | 6..=9), "control frame type {kind} kills Go's reader");
            }
            None => panic!("closed early: stdout {stdout:?} error {error:?}"),
        }
    }
    assert_eq!(stdout, b"from-go-bytes\n");
    assert_eq!(st::decode_status(V4, &error), Status::Success, "{:?}", String::from_utf8_lossy(&error));
    // client-go's goodbye (`conn.Close()`): RST of the streams it never closed, GOAWAY. A Go
    // (spdystream) server stops reading at GOAWAY and closes the connection once its streams
    // are gone.
    st::write_pieces(&mut io, st::GO_RST_1).await.unwrap();
    st::write_pieces(&mut io, st::GO_RST_3).await.unwrap();
    st::write_pieces(&mut io, st::GO_GOAWAY).await.unwrap();
    let (closed, _) = st::wait_closed(&mut io, Duration::from_secs(20)).await;
    assert!(closed, "the server kept the connection after the client's GOAWAY");
    cleanup(&node, &pod).await;
}

/// corrald's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn hostile_bytes_close_the_connection_and_nothing_else() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "hostile").await;
    let s = Streams::OUT;
    let cmd: &[&str] = &["sh", "-c", "echo ran >> /tmp/hostile-ran"];
    let pid = node.c.pid().unwrap();

    // Garbage after the upgrade (a control frame of version 0x7fff, type 0xffff, length 16 MiB-1).
    let url = exec_url(&node, &c, cmd, s).await;
    let mut io = raw_upgrade(&url, &[V4]).await;
    io.write_all(&[0xff; 64]).await.unwrap();
    let (closed, _) = st::wait_closed(&mut io, Duration::from_secs(15)).await;
    assert!(closed, "garbage after the upgrade: connection kept");

    // Plain text after the upgrade.
    let url = exec_url(&node, &c, cmd, s).await;
    let mut io = raw_upgrade(&url, &[V4]).await;
    let _ = io.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nhello hello hello hello hello hello\r\n").await;
    let _ = io.shutdown().await;
    let (closed, _) = st::wait_closed(&mut io, Duration::from_secs(45)).await;
    assert!(closed, "text after the upgrade: connection kept");

    // A SYN_STREAM claiming 16 MiB-1 of payload (over any sane control-frame limit), then silence.
    let url = exec_url(&node, &c, cmd, s).await;
    let mut io = raw_upgrade(&url, &[V4]).await;
    io.write_all(&[0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff]).await.unwrap();
    io.write_all(&[0u8; 100]).await.unwrap();
    let (closed, _) = st::wait_closed(&mut io, Duration::from_secs(15)).await;
    assert!(closed, "a 16 MiB control frame: connection kept waiting for it");

    // A zlib bomb: a 46 KiB header block that inflates to 48 MiB.
    let before = peak_rss_kib(pid);
    let bomb = st::zlib_bomb(48 << 20);
    assert!(bomb.len() < 64 * 1024, "bomb of {} bytes", bomb.len());
    let url = exec_url(&node, &c, cmd, s).await;
    let mut io = raw_upgrade(&url, &[V4]).await;
    io.write_all(&st::syn_stream(1, 0, &bomb)).await.unwrap();
    let (closed, seen) = st::wait_closed(&mut io, Duration::from_secs(15)).await;
    assert!(closed, "zlib bomb: connection kept ({} bytes answered)", seen.len());
    let after = peak_rss_kib(pid);
    assert!(after < before + 32 * 1024, "corrald's peak RSS grew from {before} KiB to {after} KiB on a zlib bomb");

    // A name/value block whose count claims 2^32-1 pairs.
    let url = exec_url(&node, &c, cmd, s).await;
    let mut io = raw_upgrade(&url, &[V4]).await;
    let block = st::compress_block(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, b'a']);
    io.write_all(&st::syn_stream(1, 0, &block)).await.unwrap();
    let (closed, _) = st::wait_closed(&mut io, Duration::from_secs(15)).await;
    assert!(closed, "a block claiming 4 billion pairs: connection kept");

    // A request head of 2 MiB, then 200 connections that never send a byte.
    let url = exec_url(&node, &c, cmd, s).await;
    let mut head = st::spdy_upgrade_head("POST", &url, &[V4]);
    head.truncate(head.len() - 2);
    for i in 0..2048 {
        head.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "f".repeat(1000)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    // An error status, or the connection closed without an answer.
    if let Ok((resp, _)) = st::http_exchange(&url, &head).await {
        assert!(resp.status >= 400, "a 2 MiB request head was taken: {resp:?}");
    }
    let authority = st::parse_url(&url).authority;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(&authority).await.unwrap());
    }

    // None of these ran the command, and corrald still serves.
    let ran = node.exec(&c, &["sh", "-c", "cat /tmp/hostile-ran 2>/dev/null | wc -l"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "0", "a hostile session ran the command");
    let o = run(&node, &c, &["echo", "alive"], s, CRICTL, None).await;
    assert_eq!(o.stdout_text(), "alive\n");
    drop(idle);
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn a_client_that_never_makes_its_streams_is_dropped() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "stream-timeout").await;
    // The request wants error, stdout and stderr; the client makes only the error stream.
    // cri-streaming gives up after its stream creation timeout (30 s) and closes the connection.
    let url = exec_url(&node, &c, &["sh", "-c", "echo ran >> /tmp/timeout-ran"], Streams::OUT).await;
    let conn = st::spdy_connect("POST", &url, &[V4]).await.unwrap();
    let _error = conn.session.open(vec![("streamtype".into(), "error".into())], false).await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(90), conn.session.closed())
        .await
        .expect("the server kept a session whose streams never came");
    assert!(
        started.elapsed() > Duration::from_secs(5),
        "dropped after {:?}, well before any timeout",
        started.elapsed()
    );
    let ran = node.exec(&c, &["sh", "-c", "cat /tmp/timeout-ran 2>/dev/null | wc -l"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "0");
    cleanup(&node, &pod).await;
}

/// Reads frames until every stream in `fins` has ended (FIN or RST); DATA per stream, and the streams that were reset before any FIN.
async fn raw_collect<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    fins: &[u32],
) -> (std::collections::HashMap<u32, Vec<u8>>, Vec<u32>) {
    let mut data: std::collections::HashMap<u32, Vec<u8>> = Default::default();
    let mut ended: Vec<u32> = Vec::new();
    let mut reset = Vec::new();
    while !fins.iter().all(|f| ended.contains(f)) {
        let frame = tokio::time::timeout(WAIT, st::read_frame(io))
            .await
            .unwrap_or_else(|_| panic!("stuck waiting for {fins:?}: ended {ended:?}, data {data:?}"))
            .unwrap();
        match frame {
            Some(st::RawFrame::Data { stream, flags, payload }) => {
                data.entry(stream).or_default().extend_from_slice(&payload);
                if flags & st::FLAG_FIN != 0 {
                    ended.push(stream);
                }
            }
            Some(st::RawFrame::Control { kind: st::RST_STREAM, payload, .. }) => {
                // A reset after the stream's FIN cuts nothing.
                let id = u32::from_be_bytes(payload[..4].try_into().unwrap());
                if !ended.contains(&id) {
                    ended.push(id);
                    reset.push(id);
                }
            }
            Some(_) => {}
            None => panic!("closed while waiting for {fins:?}: ended {ended:?}"),
        }
    }
    (data, reset)
}

/// Waits for the SYN_REPLY of `stream`, failing on anything but pings before it.
async fn raw_reply(io: &mut st::Replay<tokio::net::TcpStream>, stream: u32) {
    loop {
        match tokio::time::timeout(WAIT, st::read_frame(io)).await.expect("no SYN_REPLY").unwrap() {
            Some(st::RawFrame::Control { kind: st::SYN_REPLY, payload, .. }) => {
                assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), stream);
                return;
            }
            Some(st::RawFrame::Control { kind: st::PING, payload, .. }) => {
                io.write_all(&st::control_frame(st::PING, 0, &payload)).await.unwrap();
            }
            other => panic!("waiting for the SYN_REPLY of {stream}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn large_data_frames_are_taken_whole() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "big-frames").await;
    // A sender may write DATA frames up to 16 MiB - 1 (Go writes each Write as one frame).
    let s = Streams { stdin: true, stdout: true, ..Default::default() };
    let url = exec_url(&node, &c, &["wc", "-c"], s).await;
    let mut io = raw_upgrade(&url, &[V4]).await;
    let mut z = st::RawCompressor::new();
    for (id, kind) in [(1u32, "error"), (3, "stdin"), (5, "stdout")] {
        io.write_all(&z.syn_stream(id, &[("streamtype", kind)])).await.unwrap();
        raw_reply(&mut io, id).await;
    }
    io.write_all(&st::data_frame(3, 0, &vec![b'x'; 4 << 20])).await.unwrap();
    io.write_all(&st::data_frame(3, 0, &vec![b'y'; (16 << 20) - 1])).await.unwrap();
    io.write_all(&st::data_frame(3, st::FLAG_FIN, &[])).await.unwrap();
    let (data, reset) = raw_collect(&mut io, &[1, 5]).await;
    assert!(
        !reset.contains(&5) && !reset.contains(&1),
        "streams reset: {reset:?}; stdout {:?}, error {:?}",
        String::from_utf8_lossy(data.get(&5).map(|v| v.as_slice()).unwrap_or_default()),
        String::from_utf8_lossy(data.get(&1).map(|v| v.as_slice()).unwrap_or_default())
    );
    let out = String::from_utf8_lossy(data.get(&5).map(|v| v.as_slice()).unwrap_or_default()).into_owned();
    assert_eq!(out.trim(), ((4u32 << 20) + (16 << 20) - 1).to_string());
    let error = data.get(&1).cloned().unwrap_or_default();
    assert_eq!(st::decode_status(V4, &error), Status::Success, "{:?}", String::from_utf8_lossy(&error));
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn idle_sessions_end_after_the_idle_timeout() {
    require_root!();
    let env = require_env!();
    // A node with a 3 s streaming idle timeout (kubelet's default is 4 h).
    let cgroup_parent = format!("/corral/it-{}", tests::node::random_suffix());
    let cni = tests::node::fake_cni();
    let config = format!(
        "cgroup_parent = \"{cgroup_parent}\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"{}\"]\n[streaming]\nidle_timeout = \"3s\"\n",
        cni.path().join("net.d").display(),
        cni.path().join("bin").display()
    );
    let c = tests::Corrald::with_config(&config).await;
    let node = Node { c, env, cgroup_parent, cni };
    node.c.pull(&node.env.image(tests::node::BUSYBOX)).await.expect("pulling busybox");
    let (pod, c) = sleeper(&node, "idle").await;

    // Silent sessions end, and their commands with them.
    for (client, secs) in [(CRICTL, "1005"), (CRICTL_WS, "1006")] {
        let script = format!("echo started; exec sleep {secs}");
        let url = exec_url(&node, &c, &["sh", "-c", &script], Streams::OUT).await;
        let mut rc = RemoteCommand::connect(&url, client, Streams::OUT).await.unwrap();
        assert!(rc.wait_stdout("started", WAIT).await);
        let started = Instant::now();
        let ended = rc.wait_until(Duration::from_secs(30), |s| s.ended()).await;
        assert!(ended, "{client:?}: a silent session outlived the 3 s idle timeout by far");
        assert!(started.elapsed() >= Duration::from_secs(2), "{client:?}: ended after {:?}", started.elapsed());
        assert!(
            process_is(&node, &c, &format!("sleep {secs}"), false, Duration::from_secs(15)).await,
            "{client:?}: the command outlived its idle session"
        );
    }

    // Output keeps a session alive; so do pings alone (client-go pings every 5 s: SPDY PING
    // frames, WebSocket pings).
    let o =
        run(&node, &c, &["sh", "-c", "for i in 1 2 3 4 5 6; do echo $i; sleep 1; done"], Streams::OUT, CRICTL, None)
            .await;
    assert_eq!(o.stdout_text(), "1\n2\n3\n4\n5\n6\n");
    for client in [CRICTL, CRICTL_WS] {
        let url = exec_url(&node, &c, &["sh", "-c", "sleep 6; echo done"], Streams::OUT).await;
        let mut rc = RemoteCommand::connect(&url, client, Streams::OUT).await.unwrap();
        for i in 0..8u8 {
            match rc.session() {
                Some(session) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), session.ping()).await;
                }
                None => rc.ws_ping(&[i]).await.unwrap(),
            }
            if rc.wait_until(Duration::from_secs(1), |s| s.ended()).await {
                break;
            }
        }
        let o = rc.finish(WAIT).await.unwrap();
        assert_eq!(o.stdout_text(), "done\n", "{client:?}: a pinged session was cut");
        assert_eq!(o.status(), Status::Success, "{client:?}");
    }
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn pending_urls_are_capped() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "cap").await;
    // cri-streaming keeps at most 1000 unused URLs (maxInFlight), then ResourceExhausted.
    let mut rt = node.rt();
    let mut urls = Vec::new();
    for i in 0..1000 {
        let url = st::exec_url(&mut rt, exec_request(&c, &["echo", "x"], Streams::OUT))
            .await
            .unwrap_or_else(|e| panic!("Exec {i}: {e}"));
        urls.push(url);
    }
    let err = st::exec_url(&mut rt, exec_request(&c, &["echo", "x"], Streams::OUT)).await.unwrap_err();
    code(err, Code::ResourceExhausted, "the 1001st pending URL");
    let err = st::attach_url(&mut rt, st::attach_request(&c, Streams::OUT)).await.unwrap_err();
    code(err, Code::ResourceExhausted, "an attach URL over the cap");
    // Using one frees its place.
    let o = st::run(&urls.pop().unwrap(), CRICTL, Streams::OUT, None).await;
    assert_eq!(o.stdout_text(), "x\n");
    let url = exec_url(&node, &c, &["echo", "y"], Streams::OUT).await;
    assert_eq!(st::run(&url, CRICTL, Streams::OUT, None).await.stdout_text(), "y\n");
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn a_command_that_ignores_its_stdin_still_ends() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "ignored-stdin").await;
    // `cat big | kubectl exec -i pod -- head -c 10`: client-go writes stdin beside the output
    // copies and ends when the outputs and the status have.
    for client in [CRICTL, CRICTL_WS] {
        for (cmd, want_out, want) in [
            (&["sh", "-c", "exit 2"][..], "", Status::ExitCode(2)),
            (&["head", "-c", "10"][..], "xxxxxxxxxx", Status::Success),
        ] {
            let url = exec_url(&node, &c, cmd, Streams::IO).await;
            let mut rc = RemoteCommand::connect(&url, client, Streams::IO).await.unwrap();
            let writer = rc.spawn_stdin(vec![b'x'; 32 << 20], true);
            let o = rc.finish(WAIT).await.unwrap_or_else(|e| panic!("{client:?} {cmd:?}: {e}"));
            assert_eq!(o.stdout_text(), want_out, "{client:?} {cmd:?}");
            assert_eq!(o.status(), want, "{client:?} {cmd:?}: {:?}", o.error_text());
            writer.abort();
        }
    }
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn sessions_end_with_their_container() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "stopped-under").await;
    let url = exec_url(&node, &c, &["sh", "-c", "echo started; exec sleep 1010"], Streams::OUT).await;
    let mut exec = RemoteCommand::connect(&url, CRICTL, Streams::OUT).await.unwrap();
    let url = exec_url(&node, &c, &["sh", "-c", "echo started; exec sleep 1011"], Streams::OUT).await;
    let mut ws_exec = RemoteCommand::connect(&url, CRICTL_WS, Streams::OUT).await.unwrap();
    let url = attach_url(&node, &c, Streams::OUT).await;
    let attach = RemoteCommand::connect(&url, CRICTL, Streams::OUT).await.unwrap();
    assert!(exec.wait_stdout("started", WAIT).await);
    assert!(ws_exec.wait_stdout("started", WAIT).await);
    node.stop_container(&c, 0).await.unwrap();
    // The exec'd processes die with the container's PID namespace (SIGKILL: 137, or a failure).
    for (what, rc) in [("SPDY exec", exec), ("WebSocket exec", ws_exec)] {
        let o = rc.finish(WAIT).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            matches!(o.status(), Status::ExitCode(137) | Status::Failure { .. }),
            "{what}: {:?} ({:?})",
            o.status(),
            o.error_text()
        );
    }
    let o = attach.finish(WAIT).await.expect("the attach ends with its container");
    assert_eq!(o.status(), Status::Success, "{:?}", o.error_text());
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn a_corrald_restart_ends_sessions_and_their_commands() {
    require_root!();
    let env = require_env!();
    let mut node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "restart").await;
    let url = exec_url(&node, &c, &["sh", "-c", "echo started; exec sleep 1012"], Streams::IO).await;
    let mut rc = RemoteCommand::connect(&url, CRICTL, Streams::IO).await.unwrap();
    assert!(rc.wait_stdout("started", WAIT).await);
    let unused = exec_url(&node, &c, &["echo", "x"], Streams::OUT).await;
    node.c.kill9();
    assert!(rc.wait_until(WAIT, |s| s.ended()).await, "the session outlived corrald");
    node.c.restart().await;
    assert!(process_is(&node, &c, "sleep 1012", false, Duration::from_secs(15)).await, "the command outlived corrald");
    // URLs of the old corrald are gone with it.
    assert!(st::spdy_connect("POST", &unused, st::CLIENT_GO_SPDY).await.is_err(), "a URL survived a restart");
    let o = run(&node, &c, &["echo", "after-restart"], Streams::OUT, CRICTL, None).await;
    assert_eq!(o.stdout_text(), "after-restart\n");
    cleanup(&node, &pod).await;
}

/// Resident memory (VmRSS, KiB) of corrald and of this node's shims together.
fn rss_kib(node: &Node) -> u64 {
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    };
    rss(node.c.pid().unwrap()) + node.shim_pids().into_iter().map(rss).sum::<u64>()
}

#[tokio::test]
async fn slow_and_flooding_clients_cost_bounded_memory() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, c) = sleeper(&node, "backpressure").await;

    // A client that stops reading: the command waits, nobody buffers its 256 MiB.
    let s = Streams { stdout: true, ..Default::default() };
    let url = exec_url(&node, &c, &["sh", "-c", "dd if=/dev/zero bs=1048576 count=256 2>/dev/null"], s).await;
    let mut io = raw_upgrade(&url, &[V4]).await;
    let mut z = st::RawCompressor::new();
    for (id, kind) in [(1u32, "error"), (3, "stdout")] {
        io.write_all(&z.syn_stream(id, &[("streamtype", kind)])).await.unwrap();
        raw_reply(&mut io, id).await;
    }
    let before = rss_kib(&node);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = rss_kib(&node);
    assert!(during < before + 64 * 1024, "memory grew from {before} KiB to {during} KiB while the client did not read");
    let (data, reset) = raw_collect(&mut io, &[1, 3]).await;
    assert!(reset.is_empty(), "reset: {reset:?}");
    assert_eq!(data.get(&3).map(|d| d.len()), Some(256 << 20));
    assert_eq!(st::decode_status(V4, data.get(&1).map(|v| v.as_slice()).unwrap_or_default()), Status::Success);
    drop(io);

    // A client that floods stdin of a command that does not read it: the flood waits (TCP),
    // nobody buffers it, and the command's end still comes through.
    let s = Streams { stdin: true, stdout: true, ..Default::default() };
    let url = exec_url(&node, &c, &["sh", "-c", "sleep 5; echo woke"], s).await;
    let mut io = raw_upgrade(&url, &[V4]).await;
    let mut z = st::RawCompressor::new();
    for (id, kind) in [(1u32, "error"), (3, "stdin"), (5, "stdout")] {
        io.write_all(&z.syn_stream(id, &[("streamtype", kind)])).await.unwrap();
        raw_reply(&mut io, id).await;
    }
    let before = rss_kib(&node);
    let (mut rd, mut wr) = tokio::io::split(io);
    let flood = tokio::spawn(async move {
        let chunk = st::data_frame(3, 0, &vec![b'z'; 1 << 20]);
        for _ in 0..256 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rss_kib(&node);
    assert!(during < before + 64 * 1024, "memory grew from {before} KiB to {during} KiB under a stdin flood");
    let (data, reset) = raw_collect(&mut rd, &[1, 5]).await;
    assert!(!reset.contains(&1) && !reset.contains(&5), "reset: {reset:?}");
    assert_eq!(data.get(&5).map(|d| d.as_slice()), Some(&b"woke\n"[..]));
    assert_eq!(st::decode_status(V4, data.get(&1).map(|v| v.as_slice()).unwrap_or_default()), Status::Success);
    flood.abort();
    cleanup(&node, &pod).await;
}

#[tokio::test]
async fn urls_of_containers_that_are_gone() {
    require_root!();
    let env = require_env!();
    let node = Node::boot(env).await;
    let (pod, pc) = node.run_pod("gone", cri::NamespaceMode::Container).await;
    // A URL whose container is removed before the client comes: refused (404), or a session
    // that ends at once with a failure; never a hang or a success.
    let c = node.run(&pod, &pc, node.container_config("removed", &["sleep", "3600"])).await;
    let exec = exec_url(&node, &c, &["echo", "x"], Streams::OUT).await;
    let attach = attach_url(&node, &c, Streams::OUT).await;
    node.stop_container(&c, 0).await.unwrap();
    rpc(node.rt().remove_container(cri::RemoveContainerRequest { container_id: c.clone() })).await.unwrap();
    for (what, url) in [("exec", &exec), ("attach", &attach)] {
        match RemoteCommand::connect(url, CRICTL, Streams::OUT).await {
            Err(ConnectError::Refused(r)) => assert_eq!(r.status, 404, "{what}: {r:?}"),
            Err(e) => panic!("{what}: {e}"),
            Ok(rc) => {
                let o = rc.finish(WAIT).await.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(matches!(o.status(), Status::Failure { .. }), "{what}: {:?} {:?}", o.status(), o.error_text());
                assert!(o.stdout.is_empty(), "{what}: {:?}", o.stdout_text());
            }
        }
    }
    // A container that exits between the URL and the client: the attach ends, the exec fails.
    let c = node.run(&pod, &pc, node.container_config("exits", &["sh", "-c", "sleep 1"])).await;
    let exec = exec_url(&node, &c, &["echo", "x"], Streams::OUT).await;
    let attach = attach_url(&node, &c, Streams::OUT).await;
    node.wait_exited(&c, WAIT).await;
    match RemoteCommand::connect(&exec, CRICTL, Streams::OUT).await {
        Err(ConnectError::Refused(r)) => assert_eq!(r.status, 404, "{r:?}"),
        Err(e) => panic!("exec: {e}"),
        Ok(rc) => {
            let o = rc.finish(WAIT).await.unwrap();
            assert!(matches!(o.status(), Status::Failure { .. }), "exec: {:?} {:?}", o.status(), o.error_text());
        }
    }
    match RemoteCommand::connect(&attach, CRICTL, Streams::OUT).await {
        Err(ConnectError::Refused(r)) => assert_eq!(r.status, 404, "{r:?}"),
        Err(e) => panic!("attach: {e}"),
        Ok(rc) => {
            rc.finish(WAIT).await.expect("an attach to an exited container ends");
        }
    }
    cleanup(&node, &pod).await;
}
