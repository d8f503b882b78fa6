//! A hand-driven SPDY peer for tests: sends chosen frames (compressing header blocks with its
//! own context) and reads the session's frames back whole.
#![allow(dead_code)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spdy::frame::{Decoded, Decoder, Frame, Limits};
use spdy::headers::{Compressor, Decompressor, Headers};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

pub struct Raw {
    pub io: DuplexStream,
    comp: Compressor,
    decomp: Decompressor,
    dec: Decoder,
    buf: BytesMut,
    data: BytesMut,
}

impl Raw {
    pub fn new(io: DuplexStream) -> Self {
        Raw {
            io,
            comp: Compressor::new().unwrap(),
            decomp: Decompressor::new(1 << 20),
            dec: Decoder::new(Limits { max_control_frame: 1 << 24, max_data_chunk: 1 << 24 }),
            buf: BytesMut::new(),
            data: BytesMut::new(),
        }
    }

    /// A header block compressed in this peer's context.
    pub fn block(&mut self, headers: &[(&str, &str)]) -> Bytes {
        let headers: Headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.comp.compress(&headers, 1 << 20).unwrap().into()
    }

    pub async fn send(&mut self, f: Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        self.io.write_all(&b).await.unwrap();
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.io.write_all(b).await.unwrap();
    }

    pub async fn syn(&mut self, id: u32, flags: u8, headers: &[(&str, &str)]) {
        let block = self.block(headers);
        self.send(Frame::SynStream { stream_id: id, associated_id: 0, priority: 0, slot: 0, flags, block }).await;
    }

    pub async fn data(&mut self, id: u32, flags: u8, data: &[u8]) {
        self.send(Frame::Data { stream_id: id, flags, data: Bytes::copy_from_slice(data) }).await;
    }

    /// The next frame from the session (DATA joined whole), None at EOF; header blocks of
    /// SYN_STREAM/SYN_REPLY/HEADERS are checked to decompress in this peer's context.
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(10), self.next_inner()).await.expect("no frame in time")
    }

    async fn next_inner(&mut self) -> Option<Frame> {
        loop {
            while let Some(d) = self.dec.decode(&mut self.buf).unwrap() {
                match d {
                    Decoded::Control(f) => {
                        if let Frame::SynStream { block, .. }
                        | Frame::SynReply { block, .. }
                        | Frame::Headers { block, .. } = &f
                        {
                            self.decomp.decode(block).unwrap();
                        }
                        return Some(f);
                    }
                    Decoded::Data(c) => {
                        self.data.extend_from_slice(&c.data);
                        if c.last {
                            let data = self.data.split().freeze();
                            return Some(Frame::Data { stream_id: c.stream_id, flags: c.flags, data });
                        }
                    }
                }
            }
            self.buf.reserve(64 * 1024);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next frame that is not DATA.
    pub async fn next_control(&mut self) -> Option<Frame> {
        loop {
            match self.next().await? {
                Frame::Data { .. } => continue,
                f => return Some(f),
            }
        }
    }

    /// Reads until EOF, returning the frames seen.
    pub async fn until_eof(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next().await {
            frames.push(f);
        }
        frames
    }
}
