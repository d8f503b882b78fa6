//! Byte vectors captured from the real Go client and server (moby/spdystream v0.2.0, see
//! /tmp/research/spdy_vectors_go_spdystream_v0.2.0.txt): we decode them, decompress Go's header
//! blocks in sequence with one context per direction, and a server session answers Go's client
//! bytes the way Go's server did.

use std::time::Duration;

use bytes::Bytes;
use spdy::frame::{decode_all, rst, Frame, Limits, FLAG_FIN};
use spdy::headers::{Compressor, Decompressor};
use spdy::{Config, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

const C_SYN1: &str = "8003 0001 00000031 00000001 00000000 00 00
    78f9e3c6a7c202e50e703a2b294a4dcc851625aca9a0808614cb45e01c6061606100000000ffff";
const S_REPLY1: &str = "8003 0002 00000014 00000001 78f9e3c6a7c26260606000000000ffff";
const C_SYN3: &str = "8003 0001 0000001d 00000003 00000000 00 00 62606060c450ca565c92925f5a02000000ffff";
const S_REPLY3: &str = "8003 0002 0000000c 00000003 026100000000ffff";
const C_DATA_IN: &str = "00000001 00000002 696e";
const C_DATA_FIN: &str = "00000001 01000000";
const S_DATA_OUT: &str = "00000001 00000003 6f7574";
const S_DATA_FIN: &str = "00000001 01000000";
const PING1: &str = "8003 0006 00000004 00000001";
const C_RST3: &str = "8003 0003 00000008 00000003 00000005";
const C_GOAWAY: &str = "8003 0007 00000008 00000000 00000000";

fn one(s: &str) -> Frame {
    let mut f = decode_all(&hex(s), Limits::default()).unwrap();
    assert_eq!(f.len(), 1);
    f.pop().unwrap()
}

fn pairs(h: &[(&str, &str)]) -> Vec<(String, String)> {
    h.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

#[test]
fn client_to_server_frames_decode_and_decompress_in_one_context() {
    let mut d = Decompressor::new(256 * 1024);
    let Frame::SynStream { stream_id: 1, associated_id: 0, priority: 0, slot: 0, flags: 0, block } = one(C_SYN1) else {
        panic!("not SYN_STREAM 1")
    };
    assert_eq!(d.decode(&block).unwrap(), pairs(&[("streamtype", "error"), ("port", "8080")]));
    let Frame::SynStream { stream_id: 3, flags: 0, block, .. } = one(C_SYN3) else { panic!("not SYN_STREAM 3") };
    assert_eq!(d.decode(&block).unwrap(), pairs(&[("streamtype", "stdout")]));

    assert_eq!(one(C_DATA_IN), Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"in") });
    assert_eq!(one(C_DATA_FIN), Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() });
    assert_eq!(one(PING1), Frame::Ping { id: 1 });
    assert_eq!(one(C_RST3), Frame::RstStream { stream_id: 3, status: rst::CANCEL });
    assert_eq!(one(C_GOAWAY), Frame::GoAway { last_good_stream_id: 0, status: 0 });
}

#[test]
fn server_to_client_frames_decode_and_decompress_in_one_context() {
    let mut d = Decompressor::new(256 * 1024);
    let Frame::SynReply { stream_id: 1, flags: 0, block } = one(S_REPLY1) else { panic!("not SYN_REPLY 1") };
    assert!(d.decode(&block).unwrap().is_empty());
    let Frame::SynReply { stream_id: 3, flags: 0, block } = one(S_REPLY3) else { panic!("not SYN_REPLY 3") };
    assert!(d.decode(&block).unwrap().is_empty());
    assert_eq!(one(S_DATA_OUT), Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"out") });
    assert_eq!(one(S_DATA_FIN), Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() });
}

#[test]
fn the_whole_client_byte_stream_decodes_in_one_go() {
    let all: Vec<u8> =
        [C_SYN1, C_SYN3, C_DATA_IN, C_DATA_FIN, PING1, C_RST3, C_GOAWAY].iter().flat_map(|s| hex(s)).collect();
    let frames = decode_all(&all, Limits::default()).unwrap();
    assert_eq!(frames.len(), 7);
    // Byte by byte too: the decoder must not care how reads split the stream.
    let mut dec = spdy::frame::Decoder::new(Limits::default());
    let mut buf = bytes::BytesMut::new();
    let mut controls = 0;
    let mut data = Vec::new();
    for b in all {
        buf.extend_from_slice(&[b]);
        while let Some(d) = dec.decode(&mut buf).unwrap() {
            match d {
                spdy::frame::Decoded::Control(_) => controls += 1,
                spdy::frame::Decoded::Data(c) => data.extend_from_slice(&c.data),
            }
        }
    }
    assert_eq!(controls, 5);
    assert_eq!(data, b"in");
}

#[test]
fn our_compressor_writes_what_go_reads() {
    // Our blocks must decompress with a fresh context in sequence, start with the zlib header
    // carrying the SPDY/3 DICTID, and end with a sync flush.
    let mut c = Compressor::new().unwrap();
    let b1 = c.compress(&[], 1 << 20).unwrap();
    let b2 = c.compress(&[], 1 << 20).unwrap();
    let b3 = c.compress(&pairs(&[("StreamType", "error"), ("port", "8080")]), 1 << 20).unwrap();
    assert_eq!(b1[0], 0x78);
    assert_eq!(b1[1] & 0x20, 0x20, "FDICT flag");
    assert_eq!(&b1[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
    for b in [&b1, &b2, &b3] {
        assert!(b.ends_with(&[0x00, 0x00, 0xff, 0xff]), "sync flush");
    }
    let mut d = Decompressor::new(1 << 20);
    assert!(d.decode(&b1).unwrap().is_empty());
    assert!(d.decode(&b2).unwrap().is_empty());
    assert_eq!(d.decode(&b3).unwrap(), pairs(&[("streamtype", "error"), ("port", "8080")]));
    // Byte for byte what C zlib (level 9, dictionary, Z_SYNC_FLUSH) writes, which the research
    // checked the Go client accepts.
    assert_eq!(b1, hex("78f9e3c6a7c2 02a6230600000000ffff"));
    assert_eq!(b2, hex("020100000000ffff"));
}

#[tokio::test]
async fn server_session_answers_go_client_bytes() {
    let (mut client, server_io) = tokio::io::duplex(64 * 1024);
    let (session, mut incoming) = Session::server(server_io, Config::default());

    client.write_all(&hex(C_SYN1)).await.unwrap();
    let s1 = tokio::time::timeout(Duration::from_secs(5), incoming.accept()).await.unwrap().unwrap();
    assert_eq!(s1.id(), 1);
    assert_eq!(s1.header("streamType"), Some("error"));
    assert_eq!(s1.header("PORT"), Some("8080"));
    client.write_all(&hex(C_SYN3)).await.unwrap();
    let s3 = incoming.accept().await.unwrap();
    assert_eq!(s3.header("streamtype"), Some("stdout"));

    // Our two SYN_REPLYs decompress with one context, as Go's client would.
    let mut d = Decompressor::new(1 << 20);
    let mut got = Vec::new();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let mut b = [0u8; 256];
        let n = client.read(&mut b).await.unwrap();
        got.extend_from_slice(&b[..n]);
        if let Ok(f) = decode_all(&got, Limits::default()) {
            frames = f;
        }
    }
    for (f, id) in frames.iter().zip([1, 3]) {
        let Frame::SynReply { stream_id, flags: 0, block } = f else { panic!("{f:?}") };
        assert_eq!(*stream_id, id);
        assert!(d.decode(block).unwrap().is_empty());
    }

    let (mut r1, mut w1) = s1.split();
    client.write_all(&hex(C_DATA_IN)).await.unwrap();
    client.write_all(&hex(C_DATA_FIN)).await.unwrap();
    let mut input = Vec::new();
    r1.read_to_end(&mut input).await.unwrap();
    assert_eq!(input, b"in");
    w1.write_all(b"out").await.unwrap();
    w1.shutdown().await.unwrap();
    let mut expect = hex(S_DATA_OUT);
    expect.extend(hex(S_DATA_FIN));
    let mut out = vec![0u8; expect.len()];
    client.read_exact(&mut out).await.unwrap();
    assert_eq!(out, expect);

    // PING 1 comes back unchanged.
    client.write_all(&hex(PING1)).await.unwrap();
    let mut echo = [0u8; 12];
    client.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo.to_vec(), hex(PING1));

    // RST CANCEL on 3: its reader sees the reset.
    let (mut r3, _w3) = s3.split();
    client.write_all(&hex(C_RST3)).await.unwrap();
    let err = r3.read(&mut [0u8; 8]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

    client.write_all(&hex(C_GOAWAY)).await.unwrap();
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), session.closed()).await.unwrap();
}
