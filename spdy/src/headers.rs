//! SPDY/3 name/value header blocks and their zlib compression.
//!
//! A block is `u32 count` then, per pair, `u32 name length, name, u32 value length, value`.
//! Several values of one name travel NUL-separated in one value; this crate keeps such a value
//! as one string with the NULs in it (Kubernetes only uses single values), both ways.
//!
//! Blocks are compressed with zlib primed with the SPDY/3 [dictionary](crate::dictionary). Each
//! direction of a connection has *one* compression context for its whole life: every
//! SYN_STREAM, SYN_REPLY and HEADERS block continues the same zlib stream and ends with a sync
//! flush, so a [`Compressor`] and a [`Decompressor`] must see every header block of their
//! direction, in order.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::dictionary::SPDY3_DICTIONARY;
use crate::error::{protocol, Error};

/// Header list as sent on the wire: names lowercase, values possibly NUL-separated lists.
pub type Headers = Vec<(String, String)>;

/// Adler-32 of [`SPDY3_DICTIONARY`]: the DICTID in the zlib header of each direction's first block.
pub const DICTIONARY_ADLER32: u32 = 0xE3C6_A7C2;

/// Output grows by at most this much per zlib call.
const STEP: usize = 16 * 1024;

/// Encodes a name/value block; names are lowercased (SPDY/3 requires it).
pub fn encode_block(headers: &[(String, String)]) -> Result<Vec<u8>, Error> {
    let too_large = || Error::TooLarge("header block".into());
    let mut len: usize = 4;
    for (n, v) in headers {
        len = len
            .checked_add(n.len())
            .and_then(|l| l.checked_add(v.len()))
            .and_then(|l| l.checked_add(8))
            .ok_or_else(too_large)?;
    }
    let mut out = Vec::with_capacity(len);
    let count = u32::try_from(headers.len()).map_err(|_| too_large())?;
    out.extend_from_slice(&count.to_be_bytes());
    for (n, v) in headers {
        for s in [n.to_ascii_lowercase().as_str(), v.as_str()] {
            let l = u32::try_from(s.len()).map_err(|_| too_large())?;
            out.extend_from_slice(&l.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    Ok(out)
}

/// Decodes a name/value block. Names are lowercased; invalid UTF-8 is replaced (lossy); empty
/// names and trailing bytes are errors; duplicate names are kept as they come.
pub fn decode_block(block: &[u8]) -> Result<Headers, Error> {
    let mut p = block;
    let take_u32 = |p: &mut &[u8]| -> Result<u32, Error> {
        let Some((head, rest)) = p.split_first_chunk::<4>() else {
            return Err(protocol("header block truncated"));
        };
        *p = rest;
        Ok(u32::from_be_bytes(*head))
    };
    let count = take_u32(&mut p)? as usize;
    // Each pair needs at least 8 bytes: bounds the allocation by the block's size.
    if count > p.len() / 8 {
        return Err(protocol(format!("header block announces {count} pairs in {} bytes", p.len())));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let take_str = |p: &mut &[u8]| -> Result<String, Error> {
            let len = take_u32(p)? as usize;
            if len > p.len() {
                return Err(protocol("header block truncated"));
            }
            let (s, rest) = p.split_at(len);
            *p = rest;
            Ok(String::from_utf8_lossy(s).into_owned())
        };
        let name = take_str(&mut p)?.to_ascii_lowercase();
        if name.is_empty() {
            return Err(protocol("empty header name"));
        }
        let value = take_str(&mut p)?;
        headers.push((name, value));
    }
    if !p.is_empty() {
        return Err(protocol(format!("{} bytes after the header block", p.len())));
    }
    Ok(headers)
}

/// One direction's header compressor (zlib, best compression, SPDY/3 dictionary, sync flush).
pub struct Compressor {
    z: Compress,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").field("total_in", &self.z.total_in()).finish()
    }
}

impl Compressor {
    /// A fresh context, for the start of a connection.
    pub fn new() -> Result<Self, Error> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(&SPDY3_DICTIONARY).map_err(|e| Error::Compression(e.to_string()))?;
        Ok(Compressor { z })
    }

    /// Encodes and compresses `headers` (names lowercased). A block over `max_block` bytes
    /// uncompressed is refused *before* it touches the context (which stays usable).
    pub fn compress(&mut self, headers: &[(String, String)], max_block: usize) -> Result<Vec<u8>, Error> {
        let block = encode_block(headers)?;
        if block.len() > max_block {
            return Err(Error::TooLarge(format!("header block of {} bytes, limit {max_block}", block.len())));
        }
        self.compress_raw(&block)
    }

    /// Compresses an already encoded block, ending with a sync flush. An error here leaves the
    /// context out of step with the peer's: the connection must end.
    pub fn compress_raw(&mut self, block: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(block.len() / 2 + 64);
        let start = self.z.total_in();
        loop {
            let consumed = (self.z.total_in() - start) as usize;
            if out.len() == out.capacity() {
                out.reserve(STEP);
            }
            self.z
                .compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Compression(e.to_string()))?;
            let consumed = (self.z.total_in() - start) as usize;
            // Output space left over after all input went in: the flush is complete.
            if consumed >= block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// One direction's header decompressor, with a cap on each decompressed block.
pub struct Decompressor {
    z: Decompress,
    max_block: usize,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor")
            .field("total_in", &self.z.total_in())
            .field("max_block", &self.max_block)
            .finish()
    }
}

impl Decompressor {
    /// A fresh context; each block may decompress to at most `max_block` bytes.
    pub fn new(max_block: usize) -> Self {
        Decompressor { z: Decompress::new(true), max_block }
    }

    /// Decompresses one frame's header block (which must hold a whole, sync-flushed block).
    /// Output beyond `max_block` fails at once, without allocating more. The dictionary is
    /// supplied when zlib asks for it. An empty input gives an empty output and leaves the
    /// context alone.
    pub fn decompress(&mut self, input: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out: Vec<u8> = Vec::new();
        let start = self.z.total_in();
        loop {
            let consumed = (self.z.total_in() - start) as usize;
            if consumed >= input.len() && (out.len() < out.capacity() || input.is_empty()) {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                if out.len() > self.max_block {
                    return Err(Error::TooLarge(format!("header block over {} bytes", self.max_block)));
                }
                // Room for at most one byte past the limit: reaching it proves the block too large.
                let room = self.max_block.saturating_add(1).saturating_sub(out.len()).clamp(1, STEP);
                out.reserve_exact(room);
            }
            let before = (self.z.total_in(), self.z.total_out());
            match self.z.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync) {
                Ok(Status::StreamEnd) => return Err(protocol("header compression stream ended")),
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ADLER32) => {
                        self.z.set_dictionary(&SPDY3_DICTIONARY).map_err(|e| Error::Compression(e.to_string()))?;
                        continue;
                    }
                    Some(other) => return Err(Error::Compression(format!("unknown dictionary id {other:#010x}"))),
                    None => return Err(Error::Compression(e.to_string())),
                },
            }
            if out.len() > self.max_block {
                return Err(Error::TooLarge(format!("header block over {} bytes", self.max_block)));
            }
            if (self.z.total_in(), self.z.total_out()) == before {
                // No progress: all input is in and zlib has nothing more to give.
                if (self.z.total_in() - start) as usize >= input.len() {
                    return Ok(out);
                }
                return Err(Error::Compression("header decompression made no progress".into()));
            }
        }
    }

    /// Decompresses and decodes one frame's header block.
    pub fn decode(&mut self, input: &[u8]) -> Result<Headers, Error> {
        if input.is_empty() {
            return Ok(Headers::new());
        }
        decode_block(&self.decompress(input)?)
    }
}
