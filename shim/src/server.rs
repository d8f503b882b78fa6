//! The shim socket: one framed Request per connection, each connection on its own small
//! thread. A request is answered with one framed Response, but for the streaming sessions
//! (ExecStream, Attach), which keep the connection for more answers.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use proto::v1::{request, response, Empty, ErrorKind, Request, Response};

use crate::conn::answer;
use crate::daemon::Shim;
use crate::error::Fail;
use crate::{attach, exec, sys, warn};

fn empty(r: std::result::Result<(), Fail>) -> std::result::Result<response::Kind, Fail> {
    r.map(|()| response::Kind::Empty(Empty {}))
}

/// Runs one request that is answered once.
pub fn dispatch(shim: &Shim, req: Request) -> Response {
    let Some(kind) = req.kind else {
        return answer(Err(Fail::new(ErrorKind::InvalidArgument, "empty request")));
    };
    answer(match kind {
        request::Kind::State(_) => Ok(response::Kind::State(shim.state())),
        request::Kind::Start(_) => empty(shim.start()),
        request::Kind::Kill(k) => empty(shim.kill(k.signal, k.all)),
        request::Kind::Wait(w) => {
            let timeout = (w.timeout_ms > 0).then(|| Duration::from_millis(w.timeout_ms));
            match shim.wait_exit(timeout) {
                Some(e) => Ok(response::Kind::Exit(e)),
                None => Err(Fail::new(
                    ErrorKind::DeadlineExceeded,
                    format!("container did not exit within {} ms", w.timeout_ms),
                )),
            }
        }
        request::Kind::Exec(e) => exec::run(shim, &e).map(response::Kind::Exec),
        request::Kind::ReopenLog(_) => empty(shim.reopen_log()),
        request::Kind::Shutdown(_) => empty(shim.shutdown()),
        request::Kind::CloseStdin(_) => {
            shim.close_stdin();
            Ok(response::Kind::Empty(Empty {}))
        }
        request::Kind::ExecStream(_) | request::Kind::Attach(_) => {
            Err(Fail::new(ErrorKind::InvalidArgument, "a streaming session is not a single answer"))
        }
    })
}

fn handle(shim: &Shim, mut conn: UnixStream) {
    let req: Request = match proto::read_frame(&mut conn) {
        Ok(r) => r,
        Err(e) => {
            warn!("bad request: {e}");
            return;
        }
    };
    match req.kind {
        Some(request::Kind::ExecStream(r)) => exec::stream::serve(shim, &r, conn),
        Some(request::Kind::Attach(r)) => attach::serve(shim, &r, conn),
        kind => {
            let resp = dispatch(shim, Request { kind });
            let _ = proto::write_frame(&mut conn, &resp);
            drop(conn);
        }
    }
    if shim.exit_requested() {
        shim.teardown_and_exit();
    }
}

/// How long the socket stays quiet after a request before the shim drops its code pages
/// again: requests come in bursts (Start and then the runtime's Wait, an exec), and a shim
/// then sits idle, usually for the container's whole life.
const SETTLE: Duration = Duration::from_millis(50);

/// Serves the socket forever (the process ends through Shutdown or a pause Kill). Once a burst
/// of requests has settled, the code they touched leaves the resident set again
/// ([`crate::sys::release_setup_code`]); a thread still waiting (Wait) is asleep by then.
pub fn serve(listener: UnixListener, shim: Arc<Shim>) -> ! {
    let fd = listener.as_raw_fd();
    let mut busy = false;
    loop {
        if busy {
            match sys::poll(&[fd], SETTLE.as_millis() as i32) {
                Ok(ready) if ready.first().is_some_and(|r| *r != 0) => {}
                _ => {
                    busy = false;
                    sys::release_setup_code();
                    continue;
                }
            }
        }
        match listener.accept() {
            Ok((conn, _)) => {
                busy = true;
                let shim = shim.clone();
                let spawned = std::thread::Builder::new().stack_size(128 * 1024).spawn(move || handle(&shim, conn));
                if let Err(e) = spawned {
                    warn!("spawning a connection thread: {e}");
                }
            }
            Err(e) => {
                warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
