//! The crate's error type, shared by the codec, the header compression and the sessions.

use std::io;

/// Everything that can go wrong in SPDY framing, header compression or a session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol (bad frame layout, bad stream id, unsupported version...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A header block could not be compressed or decompressed.
    #[error("header compression error: {0}")]
    Compression(String),
    /// A frame or header block is over a configured limit (or the 24-bit frame length).
    #[error("too large: {0}")]
    TooLarge(String),
    /// The stream was reset (RST_STREAM) with this status, by the peer or locally.
    #[error("stream reset with status {status} ({})", crate::frame::rst::name(*status))]
    Reset {
        /// The RST_STREAM status code (see [`crate::frame::rst`]).
        status: u32,
    },
    /// The peer sent GOAWAY: no new streams may be opened, or this stream was never processed.
    #[error("the peer sent GOAWAY")]
    GoneAway,
    /// The session is closed (connection ended, `close()` called, or every handle dropped).
    #[error("session closed")]
    Closed,
    /// Opening one more stream would exceed `Config::max_streams`, or stream ids are used up.
    #[error("too many streams")]
    TooManyStreams,
}

impl Error {
    /// True for errors caused by what the peer sent: the session answers them with GOAWAY
    /// PROTOCOL_ERROR before closing.
    pub fn is_protocol(&self) -> bool {
        matches!(self, Error::Protocol(_) | Error::Compression(_) | Error::TooLarge(_))
    }
}

/// Shorthand used by the codec.
pub(crate) fn protocol(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}
