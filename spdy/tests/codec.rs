//! Frame codec and header block tests: round trips, limits, malformed and random input.

use bytes::{Bytes, BytesMut};
use spdy::frame::{
    decode_all, kind, rst, DataChunk, Decoded, Decoder, Frame, Limits, Setting, FLAG_FIN, FLAG_UNIDIRECTIONAL,
};
use spdy::headers::{decode_block, encode_block, Compressor, Decompressor};
use spdy::Error;

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

fn encode(f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    f.encode(&mut b).unwrap();
    b.to_vec()
}

/// Tiny deterministic PRNG (xorshift64*), so the randomized tests need no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn all_frame_types() -> Vec<Frame> {
    vec![
        Frame::SynStream {
            stream_id: 7,
            associated_id: 2,
            priority: 5,
            slot: 1,
            flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
            block: Bytes::from_static(b"compressed"),
        },
        Frame::SynReply { stream_id: 0x7FFF_FFFF, flags: FLAG_FIN, block: Bytes::from_static(b"x") },
        Frame::SynReply { stream_id: 1, flags: 0, block: Bytes::new() },
        Frame::RstStream { stream_id: 3, status: rst::CANCEL },
        Frame::Settings { flags: 1, entries: vec![] },
        Frame::Settings {
            flags: 0,
            entries: vec![Setting { flags: 1, id: 7, value: 65536 }, Setting { flags: 0, id: 0xFF_FFFF, value: 0 }],
        },
        Frame::Ping { id: 0xFFFF_FFFF },
        Frame::GoAway { last_good_stream_id: 9, status: 1 },
        Frame::Headers { stream_id: 5, flags: FLAG_FIN, block: Bytes::from_static(b"hdrs") },
        Frame::WindowUpdate { stream_id: 0, delta: 0x7FFF_FFFF },
        Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"payload") },
        Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() },
    ]
}

#[test]
fn every_frame_type_round_trips() {
    let frames = all_frame_types();
    let mut all = Vec::new();
    for f in &frames {
        let bytes = encode(f);
        assert_eq!(decode_all(&bytes, Limits::default()).unwrap(), vec![f.clone()], "{f:?}");
        all.extend(bytes);
    }
    assert_eq!(decode_all(&all, Limits::default()).unwrap(), frames);
}

#[test]
fn control_frame_header_layout() {
    assert_eq!(encode(&Frame::Ping { id: 1 }), [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    assert_eq!(
        encode(&Frame::RstStream { stream_id: 3, status: 5 }),
        [0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 5]
    );
    assert_eq!(encode(&Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() }), [0, 0, 0, 1, 1, 0, 0, 0]);
}

#[test]
fn data_is_handed_on_in_chunks_as_it_arrives() {
    let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let bytes = encode(&Frame::Data { stream_id: 3, flags: FLAG_FIN, data: payload.clone().into() });
    let mut dec = Decoder::new(Limits { max_control_frame: 1024, max_data_chunk: 4096 });
    let mut buf = BytesMut::new();
    let mut chunks: Vec<DataChunk> = Vec::new();
    // Feed 1000 bytes at a time: chunks come out before the frame is complete, none > 4096.
    for piece in bytes.chunks(1000) {
        buf.extend_from_slice(piece);
        while let Some(d) = dec.decode(&mut buf).unwrap() {
            let Decoded::Data(c) = d else { panic!("control frame from DATA") };
            assert!(c.data.len() <= 4096);
            chunks.push(c);
        }
        assert!(buf.len() < 1000, "the decoder keeps no DATA back");
    }
    assert!(chunks.len() >= 10);
    assert!(chunks[0].first && !chunks[0].last && !chunks[0].fin());
    assert!(chunks[1..].iter().all(|c| !c.first));
    let last = chunks.last().unwrap();
    assert!(last.last && last.fin());
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.to_vec()).collect();
    assert_eq!(joined, payload);
    assert!(dec.is_idle());
}

#[test]
fn a_huge_data_length_needs_no_memory() {
    // A DATA header announcing 16 MiB - 1: the decoder asks for more input, holding nothing.
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0, 0xFF, 0xFF, 0xFF][..]);
    assert_eq!(dec.decode(&mut buf).unwrap(), None);
    assert!(!dec.is_idle());
    buf.extend_from_slice(&[7; 10]);
    let Some(Decoded::Data(c)) = dec.decode(&mut buf).unwrap() else { panic!() };
    assert_eq!(c.data.len(), 10);
    assert!(c.first && !c.last);
}

#[test]
fn oversized_control_frame_is_refused_from_its_header() {
    let mut dec = Decoder::new(Limits { max_control_frame: 100, max_data_chunk: 1024 });
    // SYN_STREAM announcing 101 bytes: refused before the payload arrives.
    let mut buf = BytesMut::from(&[0x80u8, 3, 0, 1, 0, 0, 0, 101][..]);
    assert!(matches!(dec.decode(&mut buf), Err(Error::TooLarge(_))));
    // Exactly the limit is fine.
    let mut dec = Decoder::new(Limits { max_control_frame: 100, max_data_chunk: 1024 });
    let f = Frame::Headers { stream_id: 1, flags: 0, block: vec![0; 96].into() };
    let mut buf = BytesMut::from(&encode(&f)[..]);
    assert_eq!(dec.decode(&mut buf).unwrap(), Some(Decoded::Control(f)));
}

#[test]
fn other_versions_are_a_protocol_error() {
    for version in [1u8, 2, 4] {
        let bytes = [0x80, version, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
        assert!(matches!(decode_all(&bytes, Limits::default()), Err(Error::Protocol(_))), "version {version}");
    }
}

#[test]
fn unknown_control_types_are_skipped() {
    let mut bytes = vec![0x80, 3, 0, kind::NOOP as u8, 0, 0, 0, 3, 1, 2, 3];
    bytes.extend([0x80, 3, 0, 10, 0xFF, 0, 0, 0]); // CREDENTIAL, empty
    bytes.extend([0x80, 3, 0xFF, 0xFF, 0, 0, 0, 1, 9]);
    bytes.extend(encode(&Frame::Ping { id: 2 }));
    assert_eq!(decode_all(&bytes, Limits::default()).unwrap(), vec![Frame::Ping { id: 2 }]);
}

#[test]
fn malformed_control_frames_are_errors() {
    let bad: Vec<Vec<u8>> = vec![
        vec![0x80, 3, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0], // SYN_STREAM too short
        vec![0x80, 3, 0, 1, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // SYN_STREAM stream 0
        vec![0x80, 3, 0, 2, 0, 0, 0, 3, 0, 0, 1],                   // SYN_REPLY too short
        vec![0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1],                // RST too short
        vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1],    // RST stream 0
        vec![0x80, 3, 0, 4, 0, 0, 0, 4, 0, 0, 0, 1],                // SETTINGS count 1, no entry
        vec![0x80, 3, 0, 4, 0, 0, 0, 4, 0xFF, 0xFF, 0xFF, 0xFF],    // SETTINGS count huge
        vec![0x80, 3, 0, 6, 0, 0, 0, 5, 0, 0, 0, 1, 0],             // PING too long
        vec![0x80, 3, 0, 7, 0, 0, 0, 4, 0, 0, 0, 1],                // GOAWAY without status
        vec![0x80, 3, 0, 8, 0, 0, 0, 0],                            // HEADERS without stream
        vec![0x80, 3, 0, 9, 0, 0, 0, 4, 0, 0, 0, 1],                // WINDOW_UPDATE too short
        vec![0, 0, 0, 0, 0, 0, 0, 0],                               // DATA on stream 0
    ];
    for b in bad {
        assert!(matches!(decode_all(&b, Limits::default()), Err(Error::Protocol(_))), "{b:02x?}");
    }
    // Truncated input is not a frame either.
    assert!(decode_all(&encode(&Frame::Ping { id: 1 })[..10], Limits::default()).is_err());
}

#[test]
fn encoding_refuses_payloads_over_24_bits() {
    let big = Bytes::from(vec![0u8; 0x100_0000]);
    let mut b = BytesMut::new();
    assert!(matches!(
        Frame::Data { stream_id: 1, flags: 0, data: big.clone() }.encode(&mut b),
        Err(Error::TooLarge(_))
    ));
    assert!(Frame::Headers { stream_id: 1, flags: 0, block: big }.encode(&mut b).is_err());
    let max = Bytes::from(vec![0u8; 0xFF_FFFF]);
    assert!(Frame::Data { stream_id: 1, flags: 0, data: max }.encode(&mut b).is_ok());
}

#[test]
fn header_blocks_round_trip_and_lowercase_names() {
    let headers = h(&[("StreamType", "error"), ("port", "8080"), ("multi", "a\0b"), ("empty", "")]);
    let block = encode_block(&headers).unwrap();
    assert_eq!(
        decode_block(&block).unwrap(),
        h(&[("streamtype", "error"), ("port", "8080"), ("multi", "a\0b"), ("empty", "")])
    );
    assert_eq!(encode_block(&[]).unwrap(), [0, 0, 0, 0]);
}

#[test]
fn malformed_header_blocks_are_errors() {
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![0, 0, 0],
        vec![0, 0, 0, 1],                                           // one pair, no bytes
        vec![0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0],       // count far beyond the bytes
        vec![0, 0, 0, 1, 0, 0, 0, 5, b'a', 0, 0, 0, 0],             // name length beyond the block
        vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],                   // empty name
        vec![0, 0, 0, 1, 0, 0, 0, 1, b'a', 0xFF, 0xFF, 0xFF, 0xFF], // value length beyond
        vec![0, 0, 0, 0, 1],                                        // trailing byte
    ];
    for b in bad {
        assert!(decode_block(&b).is_err(), "{b:02x?}");
    }
}

#[test]
fn compression_round_trips_many_blocks_in_one_context() {
    let mut c = Compressor::new().unwrap();
    let mut d = Decompressor::new(1 << 20);
    let mut rng = Rng(42);
    for i in 0..200 {
        let n = rng.below(6);
        let headers: Vec<(String, String)> = (0..n)
            .map(|j| (format!("name-{i}-{j}"), "v".repeat(rng.below(3000))))
            .chain(std::iter::once(("streamtype".to_string(), "stdout".to_string())))
            .collect();
        let block = c.compress(&headers, 1 << 20).unwrap();
        assert_eq!(d.decode(&block).unwrap(), headers);
    }
}

#[test]
fn compressor_refuses_oversized_blocks_and_stays_in_step() {
    let mut c = Compressor::new().unwrap();
    let mut d = Decompressor::new(1 << 20);
    let big = h(&[("x", &"y".repeat(2000))]);
    assert!(matches!(c.compress(&big, 1000), Err(Error::TooLarge(_))));
    let block = c.compress(&h(&[("a", "b")]), 1000).unwrap();
    assert_eq!(d.decode(&block).unwrap(), h(&[("a", "b")]));
}

#[test]
fn header_bomb_is_refused() {
    // 8 MiB of zeros compresses to ~8 KiB; the decompressor must stop at its limit.
    let mut c = Compressor::new().unwrap();
    let mut raw = vec![0u8; 8 << 20];
    raw[..4].copy_from_slice(&1u32.to_be_bytes());
    let bomb = c.compress_raw(&raw).unwrap();
    assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
    let mut d = Decompressor::new(256 * 1024);
    let start = std::time::Instant::now();
    assert!(matches!(d.decompress(&bomb), Err(Error::TooLarge(_))));
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    // Exactly at the limit is fine, one byte over is not.
    for (size, ok) in [(1000, true), (1001, false)] {
        let mut c = Compressor::new().unwrap();
        let block = c.compress_raw(&vec![0u8; size]).unwrap();
        assert_eq!(Decompressor::new(1000).decompress(&block).is_ok(), ok, "{size}");
    }
}

#[test]
fn decompressor_refuses_garbage_and_wrong_dictionaries() {
    let mut d = Decompressor::new(1 << 20);
    assert!(d.decode(&[1, 2, 3, 4, 5, 6]).is_err());
    // A zlib stream asking for another dictionary.
    let mut d = Decompressor::new(1 << 20);
    assert!(matches!(d.decompress(&[0x78, 0xF9, 0, 0, 0, 1, 0x63, 0, 0]), Err(Error::Compression(_))));
    // A zlib stream without dictionary is accepted (the block itself decides).
    let mut z = flate2::Compress::new(flate2::Compression::default(), true);
    let mut out = Vec::with_capacity(64);
    z.compress_vec(&[0, 0, 0, 0], &mut out, flate2::FlushCompress::Sync).unwrap();
    assert!(Decompressor::new(1024).decode(&out).unwrap().is_empty());
}

#[test]
fn random_input_never_panics() {
    let mut rng = Rng(0x5eed);
    let valid: Vec<u8> = all_frame_types().iter().flat_map(encode).collect();
    for round in 0..3000 {
        // Pure noise, or valid frames with a few bytes flipped, cut at random.
        let mut input = if round % 2 == 0 {
            let n = rng.below(300);
            rng.bytes(n)
        } else {
            let mut v = valid.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            v.truncate(rng.below(v.len() + 1));
            v
        };
        // Control frames start with the version-3 marker more often than chance.
        if round % 3 == 0 && input.len() >= 2 {
            input[0] = 0x80;
            input[1] = 3;
        }
        let mut dec = Decoder::new(Limits { max_control_frame: 200, max_data_chunk: 1 + rng.below(64) });
        let mut buf = BytesMut::new();
        let mut d = Decompressor::new(4096);
        'feed: for piece in input.chunks(1 + rng.below(40)) {
            buf.extend_from_slice(piece);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(Decoded::Control(
                        Frame::SynStream { block, .. } | Frame::SynReply { block, .. } | Frame::Headers { block, .. },
                    ))) => {
                        let _ = d.decode(&block);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
        let _ = decode_block(&input);
        let _ = Decompressor::new(4096).decode(&input);
    }
}
