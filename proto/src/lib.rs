//! The corrald <-> corral-shim protocol: the messages of `shim.proto` and their framing
//! (a 4-byte big-endian length, then the protobuf bytes; one request and one response per
//! connection on `<bundle>/shim.sock`).

#![deny(unsafe_code)]

use std::io::{self, Read, Write};

use prost::Message;

#[allow(clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/corral.shim.v1.rs"));
}

/// Frames bigger than this are refused.
pub const MAX_FRAME: usize = 16 << 20;

/// File name of the shim socket inside a bundle.
pub const SOCKET_NAME: &str = "shim.sock";
/// File name of the exit record inside a bundle.
pub const EXIT_FILE: &str = "exit";

/// Annotations corrald puts in config.json for the shim.
pub mod annotations {
    /// Host path of the CRI log file (absent: output is discarded).
    pub const LOG_PATH: &str = "io.corral.log-path";
    /// "true" when the container keeps a stdin pipe open.
    pub const STDIN: &str = "io.corral.stdin";
    /// "true" when stdin is closed after the first attach ends.
    pub const STDIN_ONCE: &str = "io.corral.stdin-once";
}

/// The frame of a message: length prefix and body.
pub fn encode_frame<M: Message>(msg: &M) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // Encoding into a Vec cannot run out of space.
    let _ = msg.encode(&mut out);
    out
}

/// The body length announced by a frame header, refused when too big.
pub fn frame_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    Ok(len)
}

pub fn decode<M: Message + Default>(body: &[u8]) -> io::Result<M> {
    M::decode(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one framed message.
pub fn write_frame<M: Message>(w: &mut impl Write, msg: &M) -> io::Result<()> {
    w.write_all(&encode_frame(msg))?;
    w.flush()
}

/// Reads one framed message.
pub fn read_frame<M: Message + Default>(r: &mut impl Read) -> io::Result<M> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let mut body = vec![0u8; frame_len(header)?];
    r.read_exact(&mut body)?;
    decode(&body)
}

#[cfg(test)]
mod tests {
    use super::v1::{request, KillRequest, Request};
    use super::*;

    #[test]
    fn frames_round_trip() {
        let req = Request { kind: Some(request::Kind::Kill(KillRequest { signal: 15, all: true })) };
        let bytes = encode_frame(&req);
        let back: Request = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        assert!(frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()).is_err());
        let req = Request { kind: Some(request::Kind::Kill(KillRequest { signal: 9, all: false })) };
        let bytes = encode_frame(&req);
        assert!(read_frame::<Request>(&mut &bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn exit_record_is_json_with_proto_names() {
        let exit = v1::Exit { exit_code: 137, signal: 9, oom_killed: true, ..Default::default() };
        let json = serde_json::to_string(&exit).unwrap();
        assert!(json.contains("\"exit_code\":137") && json.contains("\"oom_killed\":true"), "{json}");
        let back: v1::Exit = serde_json::from_str(r#"{"exit_code":1}"#).unwrap();
        assert_eq!(back.exit_code, 1);
    }
}
