#![no_main]
//! What a client sends corrald's streaming server after a SPDY upgrade: frames decoded
//! incrementally (the input cut in two at a point it chooses) and every header block through
//! one decompression context, as a session does. Nothing may panic or allocate without bound.

use bytes::BytesMut;
use spdy::frame::{Decoded, Decoder, Frame, Limits};
use spdy::headers::Decompressor;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (cut as usize * rest.len()) / 255;
    let mut decoder = Decoder::new(Limits::default());
    let mut headers = Decompressor::new(256 * 1024);
    let mut buf = BytesMut::new();
    for piece in [&rest[..cut], &rest[cut..]] {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Control(
                    Frame::SynStream { block, .. } | Frame::SynReply { block, .. } | Frame::Headers { block, .. },
                ))) => {
                    if headers.decode(&block).is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
