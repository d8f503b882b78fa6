//! SPDY/3.1 framing and sessions, as Kubernetes streaming (exec, attach, port-forward over
//! moby/spdystream) speaks them.
//!
//! - [`frame`]: the frame codec (pure, no I/O).
//! - [`headers`]: name/value blocks and their zlib compression with the SPDY/3 dictionary.
//! - [`session`]: client and server sessions over any tokio `AsyncRead + AsyncWrite`.
//!
//! Like spdystream, no SPDY flow control is enforced or sent: back-pressure is the
//! connection's own (a stream whose reader stalls stops the session reading the connection).

pub mod dictionary;
mod error;
pub mod frame;
pub mod headers;
pub mod session;

pub use headers::Headers;
pub use session::{Config, Error, Incoming, RecvHalf, SendHalf, Session, Stream};
