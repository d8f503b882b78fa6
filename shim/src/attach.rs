//! Attach: a session on the container's own stdio, on the request's connection. The first
//! answer is Fds carrying, when stdin is asked for and the container has one (created with
//! stdin, or a tty, and not closed by CloseStdin), a new descriptor of its stdin writer (the pty
//! master with a tty, which also takes the window size). Then one Output answer per chunk of
//! the container's output on the streams asked for (a tty's is stdout), as the copiers read it,
//! until those streams ended (with none asked for: all of them), when the shim closes the
//! connection. An attach more than 1 MiB behind is closed at once (the copier shuts the
//! connection down); corrald closing the connection ends the session.

use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use proto::v1::{response, AttachRequest, ErrorKind, Fds, Output};

use crate::conn::{self, answer};
use crate::daemon::Shim;
use crate::error::{errno_display, Fail};
use crate::logger::{End, Stream, Subscription};
use crate::{sys, warn};

/// Serves one Attach session on `conn` until the container's output ended or either side
/// closed the connection.
pub fn serve(shim: &Shim, req: &AttachRequest, mut conn: UnixStream) {
    let (sub, stdin) = match open(shim, req, &conn) {
        Ok(opened) => opened,
        Err(f) => {
            let _ = proto::write_frame(&mut conn, &answer(Err(f)));
            return;
        }
    };
    let raw: Vec<RawFd> = stdin.iter().map(AsRawFd::as_raw_fd).collect();
    let fds = response::Kind::Fds(Fds { count: raw.len() as u32, pid: 0 });
    if conn::send_with_fds(&conn, &answer(Ok(fds)), &raw).is_err() {
        return;
    }
    drop(stdin);
    loop {
        let (chunks, end) = sub.take();
        if end == Some(End::Lagged) {
            warn!("an attach fell more than 1 MiB behind the container's output and was closed");
            return;
        }
        for (stream, data) in chunks {
            let stream = match stream {
                Stream::Stdout => 1,
                Stream::Stderr => 2,
            };
            let out = response::Kind::Output(Output { stream, data: data.to_vec() });
            if proto::write_frame(&mut conn, &answer(Ok(out))).is_err() {
                return;
            }
        }
        if end.is_some() {
            return;
        }
        match sys::poll(&[conn.as_raw_fd(), sub.wake_fd()], -1) {
            Ok(revents) if revents[0] != 0 && conn::closed(&mut conn) => return,
            Ok(_) => {}
            Err(e) => {
                warn!("attach: poll: {e}");
                return;
            }
        }
    }
}

/// Subscribes to the output (before answering, so nothing written in reply to the first input
/// is missed) and takes the stdin descriptor.
fn open(shim: &Shim, req: &AttachRequest, conn: &UnixStream) -> Result<(Subscription, Option<OwnedFd>), Fail> {
    if shim.role.exec_target().is_none() {
        return Err(Fail::new(ErrorKind::FailedPrecondition, "no container process to attach to"));
    }
    if !shim.is_running() {
        return Err(Fail::new(ErrorKind::FailedPrecondition, "container is not running"));
    }
    let internal =
        |what: &str, e: std::io::Error| Fail::new(ErrorKind::Internal, format!("{what}: {}", errno_display(&e)));
    let closer = conn.try_clone().map_err(|e| internal("duplicating the connection", e))?;
    let on_lag = Box::new(move || {
        let _ = closer.shutdown(Shutdown::Both);
    });
    let sub = shim.logger.subscribe(req.stdout, req.stderr, on_lag).map_err(|e| internal("subscribing", e))?;
    let stdin = if req.stdin { shim.attach_stdin()? } else { None };
    Ok((sub, stdin))
}
