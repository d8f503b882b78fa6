//! SPDY/3.1 framing and sessions, as Kubernetes streaming (exec, attach, port-forward over
//! moby/spdystream) speaks them.
//!
//! - [`frame`]: the frame codec (pure, no I/O).
//! - [`headers`]: name/value blocks and their zlib compression with the SPDY/3 dictionary.
//! - [`session`]: client and server sessions over any tokio `AsyncRead + AsyncWrite`.
//!
//! Like spdystream, no SPDY flow control is enforced or sent: back-pressure is the
//! connection's own (a stream whose reader stalls stops the session reading the connection).
//!
//! ```
//! use spdy::{Config, Session};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (a, b) = tokio::io::duplex(64 * 1024); // in real life: the upgraded HTTP connection
//! let (server, mut incoming) = Session::server(b, Config::default());
//! let (client, _) = Session::client(a, Config::default());
//!
//! tokio::spawn(async move {
//!     // Each stream the client opens was already answered with SYN_REPLY.
//!     while let Some(stream) = incoming.accept().await {
//!         assert_eq!(stream.header("streamType"), Some("stdout"));
//!         let (_recv, mut send) = stream.split();
//!         send.write_all(b"hello").await.unwrap();
//!         send.shutdown().await.unwrap(); // DATA with FIN
//!     }
//! });
//!
//! let headers = vec![("streamType".to_string(), "stdout".to_string())];
//! let stream = client.open(headers, false).await.unwrap(); // waits for the SYN_REPLY
//! let (mut recv, _send) = stream.split();
//! let mut out = String::new();
//! recv.read_to_string(&mut out).await.unwrap(); // EOF at the server's FIN
//! assert_eq!(out, "hello");
//! client.ping().await.unwrap();
//! server.close();
//! # }
//! ```

pub mod dictionary;
mod error;
pub mod frame;
pub mod headers;
pub mod session;

pub use headers::Headers;
pub use session::{Config, Error, Incoming, RecvHalf, SendHalf, Session, Stream};
