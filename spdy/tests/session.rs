//! Client and server sessions talking over an in-memory duplex pipe.

mod raw;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raw::Raw;
use spdy::frame::{rst, Frame};
use spdy::{Config, Error, Incoming, Session, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

fn h(pairs: &[(&str, &str)]) -> spdy::Headers {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// A connected client and server.
fn pair(config: Config) -> (Session, Incoming, Session, Incoming) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (c, ci) = Session::client(a, config.clone());
    let (s, si) = Session::server(b, config);
    (c, ci, s, si)
}

async fn timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

#[tokio::test]
async fn open_accept_exchange_data_both_ways_with_fin() {
    let (client, _ci, _server, mut si) = pair(Config::default());
    let opener = tokio::spawn(async move {
        let stream = client.open(h(&[("streamType", "stdin"), ("requestID", "0")]), false).await.unwrap();
        (client, stream)
    });
    let accepted = timeout(si.accept()).await.unwrap();
    assert_eq!(accepted.id(), 1);
    assert_eq!(accepted.headers(), &h(&[("streamtype", "stdin"), ("requestid", "0")]));
    assert_eq!(accepted.header("StreamType"), Some("stdin"));
    let (_client, opened) = timeout(opener).await.unwrap();
    assert_eq!(opened.id(), 1);
    assert!(opened.headers().is_empty());

    let (mut cr, mut cw) = opened.split();
    let (mut sr, mut sw) = accepted.split();
    cw.write_all(b"hello server").await.unwrap();
    cw.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(sr.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"hello server");

    sw.write_all(b"hello client").await.unwrap();
    sw.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(cr.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"hello client");
    // Writing after shutdown fails.
    assert!(sw.write_all(b"more").await.is_err());
}

/// Waits until `f` holds (polling), or panics after the test timeout.
async fn eventually(mut f: impl FnMut() -> bool) {
    timeout(async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Opens a stream from `client` while `incoming` accepts it: (client side, server side).
async fn open_pair(client: &Session, incoming: &mut Incoming, headers: spdy::Headers) -> (Stream, Stream) {
    let (opened, accepted) = tokio::join!(client.open(headers, false), incoming.accept());
    (opened.unwrap(), accepted.unwrap())
}

fn reset_status(e: &std::io::Error) -> Option<u32> {
    match e.get_ref()?.downcast_ref::<Error>()? {
        Error::Reset { status } => Some(*status),
        _ => None,
    }
}

#[tokio::test]
async fn reset_ends_both_directions_with_an_error() {
    let (client, _ci, _server, mut si) = pair(Config::default());
    let (c, s) = open_pair(&client, &mut si, h(&[("streamtype", "stdin")])).await;
    let (mut sr, mut sw) = s.split();
    let (_cr, cw) = c.split();
    cw.reset(rst::CANCEL);
    let err = timeout(sr.read(&mut [0u8; 16])).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(reset_status(&err), Some(rst::CANCEL));
    let err = sw.write_all(b"x").await.unwrap_err();
    assert_eq!(reset_status(&err), Some(rst::CANCEL));
    // The stream is forgotten on both sides.
    eventually(|| client.stream_count() == 0 && _server.stream_count() == 0).await;

    // And the other way round, after data: the reader gets the data, then the error.
    let (c, s) = open_pair(&client, &mut si, h(&[("streamtype", "stdout")])).await;
    assert_eq!(c.id(), 3);
    let (mut cr, _cw) = c.split();
    let (_sr, mut sw) = s.split();
    sw.write_all(b"partial").await.unwrap();
    sw.reset(rst::INTERNAL_ERROR);
    let mut buf = [0u8; 7];
    timeout(cr.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"partial");
    let err = timeout(cr.read(&mut [0u8; 16])).await.unwrap_err();
    assert_eq!(reset_status(&err), Some(rst::INTERNAL_ERROR));
}

#[tokio::test]
async fn ping_round_trips_both_ways() {
    let (client, _ci, server, _si) = pair(Config::default());
    for _ in 0..3 {
        timeout(client.ping()).await.unwrap();
        timeout(server.ping()).await.unwrap();
    }
    let (a, b) = tokio::join!(client.ping(), server.ping());
    a.unwrap();
    b.unwrap();
}

#[tokio::test]
async fn a_stalled_reader_applies_back_pressure_with_bounded_memory() {
    let config = Config { stream_buffer: 64 * 1024, max_send_data: 16 * 1024, ..Config::default() };
    let (client, _ci, _server, mut si) = pair(config);
    let (c, s) = open_pair(&client, &mut si, h(&[("streamtype", "stdin")])).await;
    const TOTAL: usize = 8 << 20;
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    let writer = tokio::spawn(async move {
        let (_cr, mut cw) = c.split();
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(4096) {
            cw.write_all(piece).await.unwrap();
            w.fetch_add(piece.len(), Ordering::SeqCst);
        }
        cw.shutdown().await.unwrap();
    });
    // The writer stops well short of TOTAL while nobody reads.
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = written.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    // stream buffer + a read chunk + duplex pipe + writer batch + send budget, roughly.
    assert!(last < 600 * 1024, "writer got {last} bytes out with a stalled reader");
    assert!(!writer.is_finished());
    // Reading everything lets it finish, in order.
    let (mut sr, _sw) = s.split();
    let mut got = Vec::new();
    timeout(sr.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got.len(), TOTAL);
    assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    timeout(writer).await.unwrap();
}

#[tokio::test]
async fn many_concurrent_streams_echo() {
    let (client, _ci, _server, mut si) = pair(Config::default());
    let echo = tokio::spawn(async move {
        let mut tasks = Vec::new();
        while let Some(s) = si.accept().await {
            tasks.push(tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let s = client.open(h(&[("n", &i.to_string())]), false).await.unwrap();
            let (mut r, mut w) = s.split();
            let data: Vec<u8> = (0..20_000u32).map(|j| (i + j) as u8).collect();
            let expect = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
                w
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, expect);
            writer.await.unwrap();
        }));
    }
    for t in tasks {
        timeout(t).await.unwrap();
    }
    eventually(|| client.stream_count() == 0).await;
    client.close();
    timeout(echo).await.unwrap();
}

#[tokio::test]
async fn dropping_both_halves_frees_the_slot() {
    let config = Config { max_streams: 1, ..Config::default() };
    let (client, _ci, server, mut si) = pair(config);
    let (c, s) = open_pair(&client, &mut si, h(&[])).await;
    // A second stream is over the limit, on either side.
    assert!(matches!(client.open(h(&[]), false).await, Err(Error::TooManyStreams)));
    drop(c);
    let (mut sr, _sw) = s.split();
    let err = timeout(sr.read(&mut [0u8; 4])).await.unwrap_err();
    assert_eq!(reset_status(&err), Some(rst::CANCEL));
    eventually(|| client.stream_count() == 0 && server.stream_count() == 0).await;
    let (c, s) = open_pair(&client, &mut si, h(&[])).await;
    assert_eq!((c.id(), s.id()), (3, 3));
    // FIN both ways also frees it, while the halves are still held.
    let (mut cr, mut cw) = c.split();
    let (mut sr, mut sw) = s.split();
    cw.shutdown().await.unwrap();
    sw.shutdown().await.unwrap();
    timeout(sr.read_to_end(&mut Vec::new())).await.unwrap();
    timeout(cr.read_to_end(&mut Vec::new())).await.unwrap();
    eventually(|| client.stream_count() == 0 && server.stream_count() == 0).await;
}

#[tokio::test]
async fn a_refused_stream_fails_open_with_reset() {
    let server_config = Config { max_streams: 1, ..Config::default() };
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (client, _ci) = Session::client(a, Config::default());
    let (_server, mut si) = Session::server(b, server_config);
    let (_c, _s) = open_pair(&client, &mut si, h(&[])).await;
    match timeout(client.open(h(&[]), false)).await {
        Err(Error::Reset { status }) => assert_eq!(status, rst::REFUSED_STREAM),
        other => panic!("{other:?}"),
    }
    eventually(|| client.stream_count() == 1).await;
}

fn needs_a_port(headers: &spdy::Headers) -> Option<u32> {
    let port = headers.iter().find(|(n, _)| n == "port").and_then(|(_, v)| v.parse::<u16>().ok());
    port.is_none().then_some(rst::CANCEL)
}

#[tokio::test]
async fn a_stream_the_check_rejects_is_reset_without_a_reply() {
    let server_config = Config { check: Some(needs_a_port), ..Config::default() };
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (client, _ci) = Session::client(a, Config::default());
    let (_server, mut si) = Session::server(b, server_config);
    match timeout(client.open(h(&[("port", "x")]), false)).await {
        Err(Error::Reset { status }) => assert_eq!(status, rst::CANCEL),
        other => panic!("{other:?}"),
    }
    // The next stream is judged on its own, and accepted.
    let (_c, s) = open_pair(&client, &mut si, h(&[("port", "80")])).await;
    assert_eq!(s.header("port"), Some("80"));
}

#[tokio::test]
async fn goaway_stops_new_streams_but_not_existing_ones() {
    let (client, _ci, server, mut si) = pair(Config::default());
    let (c, s) = open_pair(&client, &mut si, h(&[])).await;
    timeout(server.goaway()).await.unwrap();
    // The client learns of it with its next frame in.
    timeout(client.ping()).await.unwrap();
    assert!(matches!(client.open(h(&[]), false).await, Err(Error::GoneAway)));
    let (mut cr, mut cw) = c.split();
    let (mut sr, mut sw) = s.split();
    cw.write_all(b"still").await.unwrap();
    cw.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(sr.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"still");
    sw.write_all(b"here").await.unwrap();
    sw.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(cr.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"here");
    assert!(!client.is_closed() && !server.is_closed());
}

#[tokio::test]
async fn a_4_mib_data_frame_is_read_whole() {
    let client_config = Config { max_send_data: 4 << 20, ..Config::default() };
    let server_config = Config { stream_buffer: 256 * 1024, ..Config::default() };
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (client, _ci) = Session::client(a, client_config);
    let (_server, mut si) = Session::server(b, server_config);
    let (c, s) = open_pair(&client, &mut si, h(&[])).await;
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 256) as u8).collect();
    let expect = data.clone();
    let (_cr, mut cw) = c.split();
    let writer = tokio::spawn(async move {
        // One write = one DATA frame of 4 MiB.
        assert_eq!(cw.write(&data).await.unwrap(), data.len());
        cw.shutdown().await.unwrap();
    });
    let (mut sr, _sw) = s.split();
    let mut got = Vec::new();
    timeout(sr.read_to_end(&mut got)).await.unwrap();
    assert!(got == expect);
    writer.await.unwrap();
}

#[tokio::test]
async fn the_end_of_the_connection_reaches_every_stream() {
    let (client, mut ci, server, mut si) = pair(Config::default());
    let (c1, s1) = open_pair(&client, &mut si, h(&[])).await;
    let (c2, s2) = open_pair(&client, &mut si, h(&[])).await;
    // s2 gets its FIN first: it ends with a clean EOF, s1 with an error.
    let (_c2r, mut c2w) = c2.split();
    c2w.shutdown().await.unwrap();
    let (mut s2r, _s2w) = s2.split();
    timeout(s2r.read_to_end(&mut Vec::new())).await.unwrap();
    let (mut s1r, mut s1w) = s1.split();
    let (mut c1r, mut c1w) = c1.split();

    server.close();
    timeout(server.closed()).await;
    timeout(client.closed()).await;
    let err = timeout(s1r.read(&mut [0u8; 4])).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    let err = timeout(c1r.read(&mut [0u8; 4])).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert_eq!(s2r.read(&mut [0u8; 4]).await.unwrap(), 0);
    assert!(s1w.write_all(b"x").await.is_err());
    assert!(c1w.write_all(b"x").await.is_err());
    assert!(timeout(si.accept()).await.is_none());
    assert!(timeout(ci.accept()).await.is_none());
    assert!(matches!(client.open(h(&[]), false).await, Err(Error::Closed)));
    assert!(matches!(client.ping().await, Err(Error::Closed)));
    assert!(matches!(server.goaway().await, Err(Error::Closed)));
}

#[tokio::test]
async fn dropping_every_handle_ends_the_session() {
    let (client, _ci, server, si) = pair(Config::default());
    drop(server);
    drop(si);
    timeout(client.closed()).await;
}

#[tokio::test]
async fn a_cancelled_open_frees_its_slot() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (client, _ci) = Session::client(a, Config { max_streams: 1, ..Config::default() });
    let mut raw = Raw::new(b);
    // Nobody answers: open() waits for its SYN_REPLY until cancelled.
    assert!(tokio::time::timeout(Duration::from_millis(100), client.open(h(&[]), false)).await.is_err());
    assert!(matches!(raw.next().await, Some(Frame::SynStream { stream_id: 1, .. })));
    assert_eq!(raw.next().await, Some(Frame::RstStream { stream_id: 1, status: rst::CANCEL }));
    eventually(|| client.stream_count() == 0).await;
}

#[tokio::test]
async fn what_was_written_before_dropping_everything_still_arrives() {
    let (client, ci, _server, mut si) = pair(Config::default());
    let (c, s) = open_pair(&client, &mut si, h(&[])).await;
    let (cr, mut cw) = c.split();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    cw.write_all(&data).await.unwrap();
    cw.shutdown().await.unwrap();
    drop((cr, cw, ci, client));
    let (mut sr, _sw) = s.split();
    let mut got = Vec::new();
    timeout(sr.read_to_end(&mut got)).await.unwrap();
    assert!(got == data);
    timeout(_server.closed()).await;
}

#[tokio::test]
async fn a_cancelled_ping_is_forgotten() {
    let (a, _b) = tokio::io::duplex(1024);
    let (client, _ci) = Session::client(a, Config::default());
    // Nobody answers.
    assert!(tokio::time::timeout(Duration::from_millis(50), client.ping()).await.is_err());
    assert_eq!(client.pending_pings(), 0);
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Session>();
    check::<Incoming>();
    check::<Stream>();
    check::<spdy::RecvHalf>();
    check::<spdy::SendHalf>();
    check::<Error>();
}
