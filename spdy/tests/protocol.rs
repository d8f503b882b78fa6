//! A server session against a hand-driven peer: how it answers odd, wrong and hostile frames.

mod raw;

use std::time::Duration;

use bytes::Bytes;
use raw::Raw;
use spdy::frame::{goaway, rst, Frame, Setting, FLAG_FIN, FLAG_UNIDIRECTIONAL};
use spdy::headers::Compressor;
use spdy::{Config, Incoming, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

fn server(config: Config) -> (Session, Incoming, Raw) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (s, si) = Session::server(b, config);
    (s, si, Raw::new(a))
}

/// Sends SYN_STREAM `id` and expects its SYN_REPLY.
async fn open(raw: &mut Raw, id: u32, headers: &[(&str, &str)]) {
    raw.syn(id, 0, headers).await;
    assert_eq!(reply_id(raw.next().await), Some(id));
}

fn reply_id(f: Option<Frame>) -> Option<u32> {
    match f {
        Some(Frame::SynReply { stream_id, flags: 0, .. }) => Some(stream_id),
        other => panic!("expected SYN_REPLY, got {other:?}"),
    }
}

async fn ping_ok(raw: &mut Raw, id: u32) {
    raw.send(Frame::Ping { id }).await;
    assert_eq!(raw.next_control().await, Some(Frame::Ping { id }));
}

/// The session answers GOAWAY PROTOCOL_ERROR, then ends the connection.
async fn expect_goaway_protocol_error(raw: &mut Raw, session: &Session) {
    let frames = raw.until_eof().await;
    assert!(frames.iter().any(|f| matches!(f, Frame::GoAway { status: goaway::PROTOCOL_ERROR, .. })), "{frames:?}");
    tokio::time::timeout(T, session.closed()).await.unwrap();
}

#[tokio::test]
async fn each_stream_is_replied_before_accept_and_in_order() {
    let (_s, mut si, mut raw) = server(Config::default());
    // Nobody calls accept() yet: the replies come anyway.
    for id in [1, 3, 5] {
        open(&mut raw, id, &[("streamtype", "data"), ("port", "80")]).await;
    }
    for id in [1, 3, 5] {
        let st = tokio::time::timeout(T, si.accept()).await.unwrap().unwrap();
        assert_eq!(st.id(), id);
        assert_eq!(st.header("port"), Some("80"));
    }
}

#[tokio::test]
async fn headers_settings_and_window_update_are_accepted_and_the_context_kept() {
    let (_s, mut si, mut raw) = server(Config::default());
    open(&mut raw, 1, &[("streamtype", "error")]).await;
    raw.send(Frame::Settings { flags: 0, entries: vec![Setting { flags: 0, id: 7, value: 1 }] }).await;
    raw.send(Frame::WindowUpdate { stream_id: 0, delta: 1000 }).await;
    raw.send(Frame::WindowUpdate { stream_id: 1, delta: 1000 }).await;
    let block = raw.block(&[("x-extra", "value")]);
    raw.send(Frame::Headers { stream_id: 1, flags: 0, block }).await;
    // The next block only decodes if the HEADERS block went through the session's context.
    open(&mut raw, 3, &[("streamtype", "stdout"), ("x-extra", "value")]).await;
    let s1 = si.accept().await.unwrap();
    let s3 = si.accept().await.unwrap();
    assert_eq!(s3.header("x-extra"), Some("value"));
    // HEADERS with FIN half-closes.
    let block = raw.block(&[]);
    raw.send(Frame::Headers { stream_id: 1, flags: FLAG_FIN, block }).await;
    let (mut r, _w) = s1.split();
    assert_eq!(tokio::time::timeout(T, r.read(&mut [0u8; 4])).await.unwrap().unwrap(), 0);
    ping_ok(&mut raw, 1).await;
}

#[tokio::test]
async fn fin_and_unidirectional_flags_on_syn_stream() {
    let (_s, mut si, mut raw) = server(Config::default());
    raw.syn(1, FLAG_FIN, &[]).await;
    assert_eq!(reply_id(raw.next().await), Some(1));
    let (mut r, mut w) = si.accept().await.unwrap().split();
    assert_eq!(r.read(&mut [0u8; 4]).await.unwrap(), 0);
    w.write_all(b"ok").await.unwrap();
    assert_eq!(raw.next().await, Some(Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"ok") }));
    // Unidirectional: no SYN_REPLY, and we cannot write.
    raw.syn(3, FLAG_UNIDIRECTIONAL, &[]).await;
    let (_r, mut w) = si.accept().await.unwrap().split();
    assert!(w.write_all(b"no").await.is_err());
    ping_ok(&mut raw, 1).await;
}

#[tokio::test]
async fn data_for_an_unknown_stream_is_refused_with_invalid_stream() {
    let (s, _si, mut raw) = server(Config::default());
    raw.data(9, 0, b"who?").await;
    assert_eq!(raw.next().await, Some(Frame::RstStream { stream_id: 9, status: rst::INVALID_STREAM }));
    ping_ok(&mut raw, 1).await;
    assert!(!s.is_closed());
}

#[tokio::test]
async fn data_after_fin_is_refused() {
    let (_s, mut si, mut raw) = server(Config::default());
    open(&mut raw, 1, &[]).await;
    let _st = si.accept().await.unwrap();
    raw.data(1, FLAG_FIN, b"last").await;
    raw.data(1, 0, b"more").await;
    assert_eq!(raw.next().await, Some(Frame::RstStream { stream_id: 1, status: rst::STREAM_ALREADY_CLOSED }));
}

#[tokio::test]
async fn duplicate_stream_id_is_reset_with_protocol_error() {
    let (_s, mut si, mut raw) = server(Config::default());
    open(&mut raw, 1, &[]).await;
    let st = si.accept().await.unwrap();
    raw.syn(1, 0, &[]).await;
    assert_eq!(raw.next().await, Some(Frame::RstStream { stream_id: 1, status: rst::PROTOCOL_ERROR }));
    let (mut r, _w) = st.split();
    assert!(r.read(&mut [0u8; 4]).await.is_err());
    // The session goes on.
    open(&mut raw, 3, &[]).await;
}

#[tokio::test]
async fn decreasing_stream_id_is_a_session_error() {
    let (s, _si, mut raw) = server(Config::default());
    open(&mut raw, 5, &[]).await;
    raw.syn(3, 0, &[]).await;
    expect_goaway_protocol_error(&mut raw, &s).await;
}

#[tokio::test]
async fn stream_id_of_the_wrong_parity_is_a_session_error() {
    let (s, _si, mut raw) = server(Config::default());
    raw.syn(2, 0, &[]).await;
    expect_goaway_protocol_error(&mut raw, &s).await;
}

#[tokio::test]
async fn oversized_control_frame_is_a_session_error() {
    let (s, _si, mut raw) = server(Config { max_control_frame: 1024, ..Config::default() });
    let block = Bytes::from(vec![0u8; 2000]);
    raw.send(Frame::Headers { stream_id: 1, flags: 0, block }).await;
    expect_goaway_protocol_error(&mut raw, &s).await;
}

#[tokio::test]
async fn header_bomb_is_a_session_error() {
    let (s, _si, mut raw) = server(Config::default());
    let mut c = Compressor::new().unwrap();
    let mut nv = vec![0u8; 4 << 20];
    nv[..4].copy_from_slice(&1u32.to_be_bytes());
    let block: Bytes = c.compress_raw(&nv).unwrap().into();
    assert!(block.len() < 64 * 1024);
    raw.send(Frame::SynStream { stream_id: 1, associated_id: 0, priority: 0, slot: 0, flags: 0, block }).await;
    expect_goaway_protocol_error(&mut raw, &s).await;
}

#[tokio::test]
async fn other_versions_are_a_session_error() {
    let (s, _si, mut raw) = server(Config::default());
    raw.send_bytes(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]).await;
    expect_goaway_protocol_error(&mut raw, &s).await;
}

#[tokio::test]
async fn garbage_ends_the_session_without_panic() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    for round in 0..40 {
        let (s, mut si, mut raw) = server(Config { max_control_frame: 4096, ..Config::default() });
        let accept = tokio::spawn(async move { while si.accept().await.is_some() {} });
        // A valid start, then noise.
        open(&mut raw, 1, &[]).await;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        if round % 2 == 0 {
            raw.send_bytes(&[0x80, 3]).await;
        }
        let _ = raw.io.write_all(&noise).await;
        let _ = raw.io.shutdown().await;
        raw.until_eof().await;
        tokio::time::timeout(T, s.closed()).await.unwrap();
        accept.await.unwrap();
    }
}

#[tokio::test]
async fn a_dropped_reader_discards_data_without_stalling() {
    let (_s, mut si, mut raw) = server(Config { stream_buffer: 16 * 1024, ..Config::default() });
    open(&mut raw, 1, &[]).await;
    let (r, _w) = si.accept().await.unwrap().split();
    drop(r);
    let chunk = vec![7u8; 60_000];
    for _ in 0..40 {
        raw.data(1, 0, &chunk).await;
    }
    ping_ok(&mut raw, 1).await;
}

#[tokio::test]
async fn a_frame_announcing_16_mib_is_read_in_pieces() {
    // The peer writes one DATA frame of 16 MiB - 1 slowly; the reader sees its bytes long
    // before the frame is complete.
    let (_s, mut si, mut raw) = server(Config { stream_buffer: 64 * 1024, ..Config::default() });
    open(&mut raw, 1, &[]).await;
    let (mut r, _w) = si.accept().await.unwrap().split();
    raw.send_bytes(&[0, 0, 0, 1, 0, 0xFF, 0xFF, 0xFF]).await;
    raw.send_bytes(&[42; 1000]).await;
    let mut buf = [0u8; 1000];
    tokio::time::timeout(T, r.read_exact(&mut buf)).await.unwrap().unwrap();
    assert!(buf.iter().all(|b| *b == 42));
}

#[tokio::test]
async fn peer_goaway_fails_unanswered_opens() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (client, _ci) = Session::client(a, Config::default());
    let mut raw = Raw::new(b);
    let c2 = client.clone();
    let pending = tokio::spawn(async move { c2.open(vec![], false).await });
    assert!(matches!(raw.next().await, Some(Frame::SynStream { stream_id: 1, .. })));
    raw.send(Frame::GoAway { last_good_stream_id: 0, status: goaway::OK }).await;
    assert!(matches!(tokio::time::timeout(T, pending).await.unwrap().unwrap(), Err(spdy::Error::GoneAway)));
    assert!(matches!(client.open(vec![], false).await, Err(spdy::Error::GoneAway)));
}

#[tokio::test]
async fn streams_after_our_goaway_are_refused() {
    let (s, _si, mut raw) = server(Config::default());
    open(&mut raw, 1, &[]).await;
    let done = tokio::spawn(async move {
        s.goaway().await.unwrap();
        s
    });
    assert_eq!(raw.next().await, Some(Frame::GoAway { last_good_stream_id: 1, status: goaway::OK }));
    let _s = done.await.unwrap();
    raw.syn(3, 0, &[]).await;
    assert_eq!(raw.next().await, Some(Frame::RstStream { stream_id: 3, status: rst::REFUSED_STREAM }));
}

#[tokio::test]
async fn server_pings_use_even_ids_and_complete_on_echo() {
    let (s, _si, mut raw) = server(Config::default());
    let ping = tokio::spawn(async move { s.ping().await });
    let Some(Frame::Ping { id }) = raw.next().await else { panic!() };
    assert_eq!(id % 2, 0);
    // A ping of ours that is not outstanding is ignored; the right one completes it.
    raw.send(Frame::Ping { id: id + 100 }).await;
    raw.send(Frame::Ping { id }).await;
    tokio::time::timeout(T, ping).await.unwrap().unwrap().unwrap();
}
