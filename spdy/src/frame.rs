//! SPDY/3 frame codec: pure encode/decode, no I/O.
//!
//! Control frames are decoded whole (their payload is bounded by [`Limits::max_control_frame`]);
//! header blocks inside them stay compressed (the session owns the zlib contexts, see
//! [`crate::headers`]). DATA frames are *not* buffered: the [`Decoder`] hands their payload on
//! in [`DataChunk`]s as the bytes arrive, each at most [`Limits::max_data_chunk`] long, so the
//! memory a connection needs does not depend on the 24-bit length a peer announces.
//!
//! Layouts (all integers big-endian), as moby/spdystream writes them:
//! ```text
//! control: 1 | version:15 | type:16 | flags:8 | length:24 | payload
//! data:    0 | stream id:31         | flags:8 | length:24 | payload
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{protocol, Error};

/// The only protocol version spoken.
pub const VERSION: u16 = 3;
/// Largest payload the 24-bit length field can describe.
pub const MAX_FRAME_PAYLOAD: usize = 0xFF_FFFF;
/// Size of every frame header.
pub const HEADER_LEN: usize = 8;
/// Mask of the 31-bit stream id (the top bit is reserved).
pub const STREAM_ID_MASK: u32 = 0x7FFF_FFFF;

/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS: the sender's last frame on the stream.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM: the recipient will not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS.
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// Control frame type codes.
pub mod kind {
    /// SYN_STREAM: opens a stream.
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY: accepts a stream.
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM: aborts a stream.
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS.
    pub const SETTINGS: u16 = 4;
    /// NOOP (SPDY/2 only; ignored on read, never sent).
    pub const NOOP: u16 = 5;
    /// PING.
    pub const PING: u16 = 6;
    /// GOAWAY.
    pub const GOAWAY: u16 = 7;
    /// HEADERS: more headers on an open stream.
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE (flow control, ignored by this implementation like spdystream).
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status codes.
pub mod rst {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INVALID_STREAM: a frame for a stream that is not open.
    pub const INVALID_STREAM: u32 = 2;
    /// REFUSED_STREAM: the stream was not processed (too many streams, going away).
    pub const REFUSED_STREAM: u32 = 3;
    /// UNSUPPORTED_VERSION.
    pub const UNSUPPORTED_VERSION: u32 = 4;
    /// CANCEL: the stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u32 = 6;
    /// FLOW_CONTROL_ERROR.
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// STREAM_IN_USE: a second SYN_REPLY.
    pub const STREAM_IN_USE: u32 = 8;
    /// STREAM_ALREADY_CLOSED: DATA after FIN.
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    /// INVALID_CREDENTIALS.
    pub const INVALID_CREDENTIALS: u32 = 10;
    /// FRAME_TOO_LARGE.
    pub const FRAME_TOO_LARGE: u32 = 11;

    /// The status code's name, for messages.
    pub fn name(status: u32) -> &'static str {
        match status {
            PROTOCOL_ERROR => "PROTOCOL_ERROR",
            INVALID_STREAM => "INVALID_STREAM",
            REFUSED_STREAM => "REFUSED_STREAM",
            UNSUPPORTED_VERSION => "UNSUPPORTED_VERSION",
            CANCEL => "CANCEL",
            INTERNAL_ERROR => "INTERNAL_ERROR",
            FLOW_CONTROL_ERROR => "FLOW_CONTROL_ERROR",
            STREAM_IN_USE => "STREAM_IN_USE",
            STREAM_ALREADY_CLOSED => "STREAM_ALREADY_CLOSED",
            INVALID_CREDENTIALS => "INVALID_CREDENTIALS",
            FRAME_TOO_LARGE => "FRAME_TOO_LARGE",
            _ => "unknown",
        }
    }
}

/// GOAWAY status codes.
pub mod goaway {
    /// OK: a normal end.
    pub const OK: u32 = 0;
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// One SETTINGS entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Per-entry flags (PERSIST_VALUE 1, PERSISTED 2).
    pub flags: u8,
    /// The 24-bit setting id.
    pub id: u32,
    /// The value.
    pub value: u32,
}

/// A whole frame. Header blocks (`block`) are the compressed bytes as on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// SYN_STREAM.
    SynStream {
        /// The new stream's id.
        stream_id: u32,
        /// Associated-to stream id (server push), 0 if none.
        associated_id: u32,
        /// 3-bit priority, 0 highest.
        priority: u8,
        /// Credential slot.
        slot: u8,
        /// FLAG_FIN | FLAG_UNIDIRECTIONAL.
        flags: u8,
        /// Compressed name/value block.
        block: Bytes,
    },
    /// SYN_REPLY.
    SynReply {
        /// The stream being accepted.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Compressed name/value block.
        block: Bytes,
    },
    /// RST_STREAM.
    RstStream {
        /// The stream being reset.
        stream_id: u32,
        /// Status, see [`rst`].
        status: u32,
    },
    /// SETTINGS.
    Settings {
        /// FLAG_SETTINGS_CLEAR.
        flags: u8,
        /// The entries.
        entries: Vec<Setting>,
    },
    /// PING.
    Ping {
        /// Opaque id: the sender's parity (client odd, server even).
        id: u32,
    },
    /// GOAWAY.
    GoAway {
        /// Last stream opened by the recipient that the sender processed.
        last_good_stream_id: u32,
        /// Status, see [`goaway`].
        status: u32,
    },
    /// HEADERS.
    Headers {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Compressed name/value block.
        block: Bytes,
    },
    /// WINDOW_UPDATE.
    WindowUpdate {
        /// The stream (0 = the session window in SPDY/3.1).
        stream_id: u32,
        /// Window increment.
        delta: u32,
    },
    /// DATA, whole (only for encoding and [`decode_all`]; the [`Decoder`] yields [`DataChunk`]s).
    Data {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Payload.
        data: Bytes,
    },
}

/// Writes a control frame header.
fn put_control_header(dst: &mut BytesMut, kind: u16, flags: u8, len: usize) -> Result<(), Error> {
    if len > MAX_FRAME_PAYLOAD {
        return Err(Error::TooLarge(format!("control frame payload of {len} bytes")));
    }
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(kind);
    dst.put_u32((u32::from(flags) << 24) | len as u32);
    Ok(())
}

/// Writes a DATA frame header for a payload of `len` bytes (the payload follows separately).
pub fn encode_data_header(dst: &mut BytesMut, stream_id: u32, flags: u8, len: usize) -> Result<(), Error> {
    if len > MAX_FRAME_PAYLOAD {
        return Err(Error::TooLarge(format!("DATA payload of {len} bytes")));
    }
    dst.put_u32(stream_id & STREAM_ID_MASK);
    dst.put_u32((u32::from(flags) << 24) | len as u32);
    Ok(())
}

impl Frame {
    /// Appends the frame's wire form to `dst`. Fails only if a payload exceeds the 24-bit length.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), Error> {
        match self {
            Frame::SynStream { stream_id, associated_id, priority, slot, flags, block } => {
                put_control_header(dst, kind::SYN_STREAM, *flags, block.len().saturating_add(10))?;
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_u32(associated_id & STREAM_ID_MASK);
                dst.put_u8((priority & 0x07) << 5);
                dst.put_u8(*slot);
                dst.put_slice(block);
            }
            Frame::SynReply { stream_id, flags, block } => {
                put_control_header(dst, kind::SYN_REPLY, *flags, block.len().saturating_add(4))?;
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_slice(block);
            }
            Frame::RstStream { stream_id, status } => {
                put_control_header(dst, kind::RST_STREAM, 0, 8)?;
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                let len = entries.len().checked_mul(8).and_then(|n| n.checked_add(4)).unwrap_or(usize::MAX);
                put_control_header(dst, kind::SETTINGS, *flags, len)?;
                dst.put_u32(entries.len() as u32);
                for e in entries {
                    dst.put_u32((u32::from(e.flags) << 24) | (e.id & 0xFF_FFFF));
                    dst.put_u32(e.value);
                }
            }
            Frame::Ping { id } => {
                put_control_header(dst, kind::PING, 0, 4)?;
                dst.put_u32(*id);
            }
            Frame::GoAway { last_good_stream_id, status } => {
                put_control_header(dst, kind::GOAWAY, 0, 8)?;
                dst.put_u32(last_good_stream_id & STREAM_ID_MASK);
                dst.put_u32(*status);
            }
            Frame::Headers { stream_id, flags, block } => {
                put_control_header(dst, kind::HEADERS, *flags, block.len().saturating_add(4))?;
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_slice(block);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                put_control_header(dst, kind::WINDOW_UPDATE, 0, 8)?;
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_u32(delta & STREAM_ID_MASK);
            }
            Frame::Data { stream_id, flags, data } => {
                encode_data_header(dst, *stream_id, *flags, data.len())?;
                dst.put_slice(data);
            }
        }
        Ok(())
    }
}

/// A piece of a DATA frame's payload, in order. A frame with an empty payload yields one empty
/// chunk with `first` and `last` both set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataChunk {
    /// The stream.
    pub stream_id: u32,
    /// The frame's flags (FLAG_FIN), repeated on every chunk of the frame.
    pub flags: u8,
    /// The bytes.
    pub data: Bytes,
    /// The first chunk of its frame.
    pub first: bool,
    /// The last chunk of its frame.
    pub last: bool,
}

impl DataChunk {
    /// True on the last chunk of a frame that carries FLAG_FIN.
    pub fn fin(&self) -> bool {
        self.last && self.flags & FLAG_FIN != 0
    }
}

/// What the [`Decoder`] produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole control frame (never [`Frame::Data`]).
    Control(Frame),
    /// A piece of a DATA frame.
    Data(DataChunk),
}

/// Bounds applied by the [`Decoder`].
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest control frame payload accepted; larger ones are an error.
    pub max_control_frame: usize,
    /// Largest DATA chunk handed on at once.
    pub max_data_chunk: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_control_frame: 64 * 1024, max_data_chunk: 64 * 1024 }
    }
}

/// Where the decoder is within the byte stream.
#[derive(Debug)]
enum State {
    /// Waiting for a frame header.
    Head,
    /// Waiting for a control frame's whole payload.
    Control { kind: u16, flags: u8, len: usize },
    /// Passing on a DATA frame's payload.
    Data { stream_id: u32, flags: u8, remaining: usize, first: bool },
    /// Skipping the payload of an unknown control frame type.
    Skip { remaining: usize },
}

/// Incremental frame decoder: feed it the bytes read so far, take frames and data chunks out.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
}

impl Decoder {
    /// A decoder at the start of a connection.
    pub fn new(limits: Limits) -> Self {
        let limits =
            Limits { max_control_frame: limits.max_control_frame, max_data_chunk: limits.max_data_chunk.max(1) };
        Decoder { limits, state: State::Head }
    }

    /// True between frames (a connection that ends here ended cleanly).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// Takes the next frame or data chunk out of `src`, consuming its bytes. `Ok(None)` means
    /// more input is needed. An error leaves the decoder unusable: the connection must end.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, Error> {
        loop {
            match self.state {
                State::Head => {
                    if src.len() < HEADER_LEN {
                        return Ok(None);
                    }
                    let word = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
                    let flags = src[4];
                    let len = (u32::from_be_bytes([0, src[5], src[6], src[7]])) as usize;
                    src.advance(HEADER_LEN);
                    if word & 0x8000_0000 != 0 {
                        let version = ((word >> 16) & 0x7FFF) as u16;
                        let kind = (word & 0xFFFF) as u16;
                        if version != VERSION {
                            return Err(protocol(format!("unsupported SPDY version {version}")));
                        }
                        if len > self.limits.max_control_frame {
                            return Err(Error::TooLarge(format!(
                                "control frame of type {kind}: {len} bytes, limit {}",
                                self.limits.max_control_frame
                            )));
                        }
                        self.state = if (kind::SYN_STREAM..=kind::WINDOW_UPDATE).contains(&kind) && kind != kind::NOOP {
                            State::Control { kind, flags, len }
                        } else {
                            tracing::debug!(kind, len, "ignoring unknown control frame type");
                            State::Skip { remaining: len }
                        };
                    } else {
                        let stream_id = word & STREAM_ID_MASK;
                        if stream_id == 0 {
                            return Err(protocol("DATA frame on stream 0"));
                        }
                        self.state = State::Data { stream_id, flags, remaining: len, first: true };
                    }
                }
                State::Control { kind, flags, len } => {
                    if src.len() < len {
                        return Ok(None);
                    }
                    let payload = src.split_to(len).freeze();
                    self.state = State::Head;
                    return parse_control(kind, flags, payload).map(|f| Some(Decoded::Control(f)));
                }
                State::Skip { remaining } => {
                    if remaining == 0 {
                        self.state = State::Head;
                        continue;
                    }
                    if src.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(src.len());
                    src.advance(n);
                    self.state = State::Skip { remaining: remaining - n };
                }
                State::Data { stream_id, flags, remaining, first } => {
                    if remaining > 0 && src.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(src.len()).min(self.limits.max_data_chunk);
                    let data = src.split_to(n).freeze();
                    let left = remaining - n;
                    let last = left == 0;
                    self.state = if last {
                        State::Head
                    } else {
                        State::Data { stream_id, flags, remaining: left, first: false }
                    };
                    return Ok(Some(Decoded::Data(DataChunk { stream_id, flags, data, first, last })));
                }
            }
        }
    }
}

/// Reads the big-endian u32 at `at` (the caller checked the length).
fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// A stream id field; 0 is refused.
fn stream_id(p: &[u8], what: &str) -> Result<u32, Error> {
    let id = be32(p, 0) & STREAM_ID_MASK;
    if id == 0 {
        return Err(protocol(format!("{what} on stream 0")));
    }
    Ok(id)
}

/// Decodes a control frame payload of a known type.
fn parse_control(k: u16, flags: u8, p: Bytes) -> Result<Frame, Error> {
    let exact = |n: usize, what: &str| {
        if p.len() == n {
            Ok(())
        } else {
            Err(protocol(format!("{what} frame of {} bytes, expected {n}", p.len())))
        }
    };
    let at_least = |n: usize, what: &str| {
        if p.len() >= n {
            Ok(())
        } else {
            Err(protocol(format!("{what} frame of {} bytes, expected at least {n}", p.len())))
        }
    };
    Ok(match k {
        kind::SYN_STREAM => {
            at_least(10, "SYN_STREAM")?;
            Frame::SynStream {
                stream_id: stream_id(&p, "SYN_STREAM")?,
                associated_id: be32(&p, 4) & STREAM_ID_MASK,
                priority: p[8] >> 5,
                slot: p[9],
                flags,
                block: p.slice(10..),
            }
        }
        kind::SYN_REPLY => {
            at_least(4, "SYN_REPLY")?;
            Frame::SynReply { stream_id: stream_id(&p, "SYN_REPLY")?, flags, block: p.slice(4..) }
        }
        kind::RST_STREAM => {
            exact(8, "RST_STREAM")?;
            Frame::RstStream { stream_id: stream_id(&p, "RST_STREAM")?, status: be32(&p, 4) }
        }
        kind::SETTINGS => {
            at_least(4, "SETTINGS")?;
            let count = be32(&p, 0) as usize;
            let expected = count.checked_mul(8).and_then(|n| n.checked_add(4));
            if expected != Some(p.len()) {
                return Err(protocol(format!("SETTINGS frame of {} bytes with {count} entries", p.len())));
            }
            let entries = p[4..]
                .chunks_exact(8)
                .map(|e| {
                    let w = be32(e, 0);
                    Setting { flags: (w >> 24) as u8, id: w & 0xFF_FFFF, value: be32(e, 4) }
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        kind::PING => {
            exact(4, "PING")?;
            Frame::Ping { id: be32(&p, 0) }
        }
        kind::GOAWAY => {
            exact(8, "GOAWAY")?;
            Frame::GoAway { last_good_stream_id: be32(&p, 0) & STREAM_ID_MASK, status: be32(&p, 4) }
        }
        kind::HEADERS => {
            at_least(4, "HEADERS")?;
            Frame::Headers { stream_id: stream_id(&p, "HEADERS")?, flags, block: p.slice(4..) }
        }
        kind::WINDOW_UPDATE => {
            exact(8, "WINDOW_UPDATE")?;
            Frame::WindowUpdate { stream_id: be32(&p, 0) & STREAM_ID_MASK, delta: be32(&p, 4) & STREAM_ID_MASK }
        }
        _ => return Err(protocol(format!("control frame type {k} has no parser"))),
    })
}

/// Decodes a complete byte string into whole frames, joining DATA chunks back into
/// [`Frame::Data`] (buffers DATA: for tests and tools, not for connections). Trailing bytes
/// that do not make a whole frame are an error.
pub fn decode_all(bytes: &[u8], limits: Limits) -> Result<Vec<Frame>, Error> {
    let mut dec = Decoder::new(limits);
    let mut src = BytesMut::from(bytes);
    let mut frames = Vec::new();
    let mut data = BytesMut::new();
    while let Some(d) = dec.decode(&mut src)? {
        match d {
            Decoded::Control(f) => frames.push(f),
            Decoded::Data(c) => {
                data.extend_from_slice(&c.data);
                if c.last {
                    frames.push(Frame::Data { stream_id: c.stream_id, flags: c.flags, data: data.split().freeze() });
                }
            }
        }
    }
    if !src.is_empty() || !dec.is_idle() {
        return Err(protocol("input ends inside a frame"));
    }
    Ok(frames)
}
