//! A connection's answers: a Response from a request's outcome, and for the streaming sessions
//! (ExecStream, Attach), which keep their connection, the first answer with descriptors attached
//! and telling when corrald closed its end.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use proto::v1::{response, ErrorKind, Response};

use crate::error::Fail;

/// The Response of a request's outcome.
pub fn answer(kind: Result<response::Kind, Fail>) -> Response {
    match kind {
        Ok(k) => Response { error: String::new(), error_kind: ErrorKind::Unspecified as i32, kind: Some(k) },
        Err(f) => Response { error: f.msg, error_kind: f.kind as i32, kind: None },
    }
}

/// Writes `resp` as one frame, `fds` attached to its first byte (SCM_RIGHTS). The caller closes
/// its copies of `fds` afterwards.
pub fn send_with_fds(conn: &UnixStream, resp: &Response, fds: &[RawFd]) -> io::Result<()> {
    common::fdpass::send_with_fds(conn.as_raw_fd(), &proto::encode_frame(resp), fds)
}

/// Once poll said `conn` is readable: whether corrald closed it (end of stream, or an error).
/// corrald sends nothing after its request; anything it does send is read and dropped.
pub fn closed(conn: &mut UnixStream) -> bool {
    let mut buf = [0u8; 256];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn closed_only_at_the_end_of_the_stream() {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"stray").unwrap();
        assert!(!closed(&mut ours));
        drop(theirs);
        assert!(closed(&mut ours));
    }

    #[test]
    fn answers_carry_the_failure() {
        let r = answer(Err(Fail::new(ErrorKind::FailedPrecondition, "container is not running")));
        assert_eq!(
            (r.error.as_str(), r.error_kind),
            ("container is not running", ErrorKind::FailedPrecondition as i32)
        );
        assert!(r.kind.is_none());
    }
}
