//! Clients built on grpc-core (grpc-python, Ruby, C++) send the socket path of a `unix:` target,
//! percent-encoded, as the HTTP/2 `:authority` ("tmp%2Fcorral.sock"). h2, under tonic, refuses
//! that as a malformed authority and resets every stream (PROTOCOL_ERROR), so such clients
//! could not talk to corrald unless they set their authority themselves. [`AuthorityFix`] sits
//! between the socket and h2 and rewrites such an `:authority` value in each request's header
//! block into a valid one of the same decoded length (`x` for every character a host name
//! cannot hold), so the HPACK dynamic tables of the client and of h2 stay in step. Everything
//! else passes byte for byte; a stream that is not HTTP/2 as expected is passed through as is.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer takes (SETTINGS_MAX_FRAME_SIZE is at least this).
const MAX_FRAME: usize = 16_384;
const STATIC_ENTRIES: usize = 61;
/// The longest header block collected before this gives up and lets h2 judge it (h2 refuses
/// header lists over 16 KiB by default; a CONTINUATION flood must not grow memory here).
const MAX_BLOCK: usize = 256 * 1024;
/// The static table's names (RFC 7541, appendix A), index 1 first.
const STATIC_NAMES: [&str; STATIC_ENTRIES] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

/// The client's HPACK dynamic table as far as this needs it: names, and the size of each entry.
#[derive(Debug, Default)]
struct Table {
    /// Newest first: (name, size as HPACK counts it).
    entries: Vec<(Vec<u8>, usize)>,
    size: usize,
    max: usize,
}

impl Table {
    fn new() -> Table {
        // SETTINGS_HEADER_TABLE_SIZE of h2's decoder, which the client's encoder starts from.
        Table { entries: Vec::new(), size: 0, max: 4096 }
    }

    fn evict(&mut self) {
        while self.size > self.max {
            match self.entries.pop() {
                Some((_, s)) => self.size -= s,
                None => break,
            }
        }
    }

    fn insert(&mut self, name: Vec<u8>, value_len: usize) {
        let size = name.len() + value_len + 32;
        self.entries.insert(0, (name, size));
        self.size += size;
        self.evict();
    }

    fn set_max(&mut self, max: usize) {
        self.max = max;
        self.evict();
    }

    /// The name of entry `index` (static or dynamic); None for a bad index.
    fn name(&self, index: usize) -> Option<&[u8]> {
        match index {
            0 => None,
            i if i <= STATIC_ENTRIES => Some(STATIC_NAMES[i - 1].as_bytes()),
            i => self.entries.get(i - STATIC_ENTRIES - 1).map(|(n, _)| n.as_slice()),
        }
    }
}

/// An HPACK integer with an `prefix`-bit prefix at `block[at]`: (value, bytes used).
fn integer(block: &[u8], at: usize, prefix: u8) -> Option<(usize, usize)> {
    let mask = (1u16 << prefix) as usize - 1;
    let first = *block.get(at)? as usize & mask;
    if first < mask {
        return Some((first, 1));
    }
    let (mut value, mut shift, mut n) = (mask, 0u32, 1);
    loop {
        let b = *block.get(at + n)? as usize;
        n += 1;
        value = value.checked_add((b & 0x7f).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some((value, n));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

fn encode_integer(out: &mut Vec<u8>, first_bits: u8, prefix: u8, mut value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(first_bits | value as u8);
        return;
    }
    out.push(first_bits | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// An HPACK string literal at `block[at]`: (decoded bytes, bytes used).
fn string(block: &[u8], at: usize) -> Option<(Vec<u8>, usize)> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (len, n) = integer(block, at, 7)?;
    let raw = block.get(at + n..at + n + len)?;
    let decoded = if huffman {
        let mut out = Vec::new();
        httlib_huffman::decode(raw, &mut out, httlib_huffman::DecoderSpeed::FourBits).ok()?;
        out
    } else {
        raw.to_vec()
    };
    Some((decoded, n + len))
}

/// Whether h2 takes `value` as an authority.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// `value` with every byte a host name cannot hold replaced by `x` (same length).
fn fixed_authority(value: &[u8]) -> Vec<u8> {
    value.iter().map(|&b| if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' { b } else { b'x' }).collect()
}

/// Follows a connection's header blocks and rewrites invalid `:authority` values.
#[derive(Debug)]
pub struct Rewriter {
    table: Table,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter { table: Table::new() }
    }
}

impl Rewriter {
    /// One header block: Ok(None) when it stays as it is, Ok(Some(block)) rewritten; Err when
    /// it is not HPACK as this reads it (the caller then stops rewriting this connection).
    pub fn block(&mut self, block: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        let mut out = Vec::with_capacity(block.len());
        let mut changed = false;
        let mut i = 0;
        while i < block.len() {
            let b = block[i];
            if b & 0x80 != 0 {
                // Indexed field.
                let (index, n) = integer(block, i, 7).ok_or(())?;
                self.table.name(index).ok_or(())?;
                out.extend_from_slice(&block[i..i + n]);
                i += n;
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update.
                let (size, n) = integer(block, i, 5).ok_or(())?;
                self.table.set_max(size);
                out.extend_from_slice(&block[i..i + n]);
                i += n;
            } else {
                // A literal: with incremental indexing (01), without (0000) or never indexed (0001).
                let prefix = if b & 0xc0 == 0x40 { 6 } else { 4 };
                let start = i;
                let (index, n) = integer(block, i, prefix).ok_or(())?;
                i += n;
                let name = if index == 0 {
                    let (name, n) = string(block, i).ok_or(())?;
                    i += n;
                    name
                } else {
                    self.table.name(index).ok_or(())?.to_vec()
                };
                let name_end = i;
                let (value, n) = string(block, i).ok_or(())?;
                i += n;
                if prefix == 6 {
                    self.table.insert(name.clone(), value.len());
                }
                if name == b":authority" && !value.is_empty() && !valid_authority(&value) {
                    let fixed = fixed_authority(&value);
                    out.extend_from_slice(&block[start..name_end]);
                    encode_integer(&mut out, 0, 7, fixed.len());
                    out.extend_from_slice(&fixed);
                    changed = true;
                } else {
                    out.extend_from_slice(&block[start..i]);
                }
            }
        }
        Ok(changed.then_some(out))
    }
}

/// The read side's state: what has been read from the socket and not handed to h2 yet.
#[derive(Debug, Default)]
struct Reader {
    /// Bytes from the socket not yet looked at.
    input: Vec<u8>,
    /// Bytes ready for h2.
    output: Vec<u8>,
    /// How much of the client preface is still to pass.
    preface_left: usize,
    /// The header block being collected (HEADERS, then CONTINUATIONs): the raw frames, the
    /// first frame's flags, stream and priority fields, and the fragments.
    raw: Vec<u8>,
    flags: u8,
    stream: u32,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    collecting: bool,
    /// Not HTTP/2 as expected (or a block this cannot read): everything passes from now on.
    passthrough: bool,
    rewriter: Rewriter,
}

impl Reader {
    fn new() -> Reader {
        Reader { preface_left: PREFACE.len(), ..Default::default() }
    }

    fn give_up(&mut self) {
        self.passthrough = true;
        self.output.append(&mut self.raw);
        self.output.append(&mut self.input);
        self.collecting = false;
    }

    /// Moves what can be decided from `input` to `output`.
    fn process(&mut self) {
        if self.passthrough {
            self.output.append(&mut self.input);
            return;
        }
        if self.preface_left > 0 {
            let done = PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(self.input.len());
            if self.input[..n] != PREFACE[done..done + n] {
                self.give_up();
                return;
            }
            self.output.extend(self.input.drain(..n));
            self.preface_left -= n;
            if self.preface_left > 0 {
                return;
            }
        }
        while self.input.len() >= FRAME_HEADER {
            let len =
                (usize::from(self.input[0]) << 16) | (usize::from(self.input[1]) << 8) | usize::from(self.input[2]);
            if self.input.len() < FRAME_HEADER + len {
                return;
            }
            let (kind, flags) = (self.input[3], self.input[4]);
            let stream = u32::from_be_bytes([self.input[5], self.input[6], self.input[7], self.input[8]]) & 0x7fff_ffff;
            let frame: Vec<u8> = self.input.drain(..FRAME_HEADER + len).collect();
            let payload = &frame[FRAME_HEADER..];
            match (kind, self.collecting) {
                (HEADERS, false) => {
                    let mut at = 0;
                    let mut pad = 0;
                    if flags & PADDED != 0 {
                        let Some(&p) = payload.first() else { return self.give_up_with(frame) };
                        pad = usize::from(p);
                        at = 1;
                    }
                    let priority = if flags & PRIORITY != 0 {
                        let Some(p) = payload.get(at..at + 5) else { return self.give_up_with(frame) };
                        at += 5;
                        let mut fields = [0u8; 5];
                        fields.copy_from_slice(p);
                        Some(fields)
                    } else {
                        None
                    };
                    let Some(fragment) = payload.len().checked_sub(pad).and_then(|end| payload.get(at..end)) else {
                        return self.give_up_with(frame);
                    };
                    self.fragment = fragment.to_vec();
                    self.raw = frame;
                    (self.flags, self.stream, self.priority, self.collecting) = (flags, stream, priority, true);
                }
                (CONTINUATION, true) if stream == self.stream => {
                    if self.raw.len() + frame.len() > MAX_BLOCK {
                        return self.give_up_with(frame);
                    }
                    self.fragment.extend_from_slice(payload);
                    self.raw.extend_from_slice(&frame);
                    self.flags |= flags & END_HEADERS;
                }
                (_, true) => return self.give_up_with(frame),
                _ => {
                    self.output.extend_from_slice(&frame);
                    continue;
                }
            }
            if self.flags & END_HEADERS != 0 {
                self.collecting = false;
                match self.rewriter.block(&self.fragment) {
                    Ok(None) => self.output.append(&mut self.raw),
                    Ok(Some(block)) => {
                        self.raw.clear();
                        self.emit_headers(&block);
                    }
                    Err(()) => {
                        self.give_up();
                        return;
                    }
                }
            }
        }
    }

    /// The socket is at its end: what is left (an incomplete frame or header block) goes to h2
    /// as the socket gave it.
    fn finish(&mut self) {
        self.output.append(&mut self.raw);
        self.output.append(&mut self.input);
    }

    fn give_up_with(&mut self, frame: Vec<u8>) {
        self.raw.extend_from_slice(&frame);
        self.give_up();
    }

    /// A rewritten header block as one HEADERS frame (and CONTINUATIONs when it is long).
    fn emit_headers(&mut self, block: &[u8]) {
        let priority_len = if self.priority.is_some() { 5 } else { 0 };
        let first = block.len().min(MAX_FRAME - priority_len);
        let rest = &block[first..];
        let mut flags = self.flags & (END_STREAM | PRIORITY);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame_header(first + priority_len, HEADERS, flags);
        if let Some(p) = self.priority {
            self.output.extend_from_slice(&p);
        }
        self.output.extend_from_slice(&block[..first]);
        let mut chunks = rest.chunks(MAX_FRAME).peekable();
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() { END_HEADERS } else { 0 };
            self.frame_header(chunk.len(), CONTINUATION, flags);
            self.output.extend_from_slice(chunk);
        }
    }

    fn frame_header(&mut self, len: usize, kind: u8, flags: u8) {
        self.output.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
        self.output.extend_from_slice(&self.stream.to_be_bytes());
    }
}

/// A server connection whose incoming request headers get a valid `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    reader: Reader,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix { inner, reader: Reader::new(), eof: false }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.reader.output.is_empty() {
                let n = this.reader.output.len().min(buf.remaining());
                buf.put_slice(&this.reader.output[..n]);
                this.reader.output.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                this.reader.finish();
                if this.reader.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.reader.input.extend_from_slice(rb.filled());
                        this.reader.process();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = <tokio::net::UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// What h2 reads when a connection sends `data` in pieces of `step` bytes and closes.
#[cfg(any(test, feature = "fuzzing"))]
pub fn rewrite_stream(data: &[u8], step: usize) -> Vec<u8> {
    let mut reader = Reader::new();
    for chunk in data.chunks(step.max(1)) {
        reader.input.extend_from_slice(chunk);
        reader.process();
    }
    reader.finish();
    reader.output
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A literal with incremental indexing of `:authority` (static name index 1).
    fn authority_literal(value: &[u8], huffman: bool) -> Vec<u8> {
        let mut out = vec![0x41];
        if huffman {
            let mut h = Vec::new();
            httlib_huffman::encode(value, &mut h).unwrap();
            encode_integer(&mut out, 0x80, 7, h.len());
            out.extend_from_slice(&h);
        } else {
            encode_integer(&mut out, 0, 7, value.len());
            out.extend_from_slice(value);
        }
        out
    }

    fn value_of(block: &[u8]) -> Vec<u8> {
        // The blocks here start with one :authority literal.
        string(block, 1).unwrap().0
    }

    #[test]
    fn a_percent_encoded_socket_path_becomes_a_host_name_of_the_same_length() {
        for huffman in [false, true] {
            let mut r = Rewriter::default();
            // :method POST (indexed 3), then the authority, then :path (literal, indexed name 4).
            let mut block = vec![0x83];
            block.extend(authority_literal(b"tmp%2Fcrl%2Fcorral.sock", huffman));
            block.extend([0x44, 0x03, b'/', b'a', b'b']);
            let out = r.block(&block).unwrap().expect("rewritten");
            assert_eq!(value_of(&out[1..]), b"tmpx2Fcrlx2Fcorral.sock");
            assert!(valid_authority(&value_of(&out[1..])));
            assert!(out.ends_with(&[0x44, 0x03, b'/', b'a', b'b']), "the other fields stay as they were");
            // The next request names it by index (62): it stays, and the table agrees.
            assert_eq!(r.block(&[0x83, 0xbe]).unwrap(), None);
            assert_eq!(r.table.entries[0].0, b":path");
            assert_eq!(r.table.entries[1], (b":authority".to_vec(), 10 + 23 + 32));
        }
    }

    #[test]
    fn valid_authorities_and_other_fields_pass_unchanged() {
        let mut r = Rewriter::default();
        let mut block = vec![0x82, 0x86];
        block.extend(authority_literal(b"localhost", true));
        assert_eq!(r.block(&block).unwrap(), None);
        // A literal name ":authority", never indexed, invalid: rewritten without touching the table.
        let mut never = vec![0x10, 0x0a];
        never.extend_from_slice(b":authority");
        never.extend([0x05, b'a', b'%', b'2', b'0', b'b']);
        let out = r.block(&never).unwrap().expect("rewritten");
        assert_eq!(&out[12..], &[0x05, b'a', b'x', b'2', b'0', b'b']);
        assert_eq!(r.table.entries.len(), 1);
        // A size update and eviction.
        assert_eq!(r.block(&[0x20]).unwrap(), None);
        assert!(r.table.entries.is_empty());
        // Garbage is refused, not guessed at.
        assert!(r.block(&[0x80]).is_err());
        assert!(r.block(&[0x41, 0x7f]).is_err());
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_split_anywhere_come_out_rewritten() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let mut block = vec![0x83];
        block.extend(authority_literal(b"run%2Fcorral.sock", true));
        let (a, b) = block.split_at(3);
        wire.extend(frame(HEADERS, PADDED, 1, &[&[2u8][..], a, &[0, 0]].concat()));
        wire.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        wire.extend(frame(0x0, END_STREAM, 1, b"data"));
        for step in [1, 7, 4096] {
            let mut reader = Reader::new();
            for chunk in wire.chunks(step) {
                reader.input.extend_from_slice(chunk);
                reader.process();
            }
            let out = reader.output;
            assert!(out.starts_with(PREFACE));
            let rest = &out[PREFACE.len() + 9..];
            assert_eq!(rest[3], HEADERS);
            assert_eq!(rest[4], END_HEADERS, "one HEADERS frame, unpadded");
            let len = (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            assert_eq!(value_of(&rest[9 + 1..9 + len]), b"runx2Fcorral.sock");
            assert_eq!(&rest[9 + len..], &frame(0x0, END_STREAM, 1, b"data")[..]);
        }
    }

    #[test]
    fn an_endless_header_block_is_left_to_h2() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, 0, 1, &[0x83]));
        for _ in 0..(MAX_BLOCK / 1000 + 1) {
            wire.extend(frame(CONTINUATION, 0, 1, &[0x83; 1000]));
        }
        let mut reader = Reader::new();
        reader.input.extend_from_slice(&wire);
        reader.process();
        assert!(reader.passthrough);
        assert_eq!(reader.output, wire, "passed on as it came");
    }

    #[test]
    fn not_http2_passes_through() {
        let mut reader = Reader::new();
        reader.input.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        reader.process();
        assert_eq!(reader.output, b"GET / HTTP/1.1\r\n\r\n");
    }
}
