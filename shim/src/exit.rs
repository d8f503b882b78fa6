//! Reaping (the shim is a child subreaper, or PID 1 in pause mode) and the exit record
//! `<bundle>/exit`, written atomically before the exit is reported anywhere.

use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::v1::Exit;

use crate::sys;

pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Writes the exit record as JSON through a temp file and a rename.
pub fn write_record(bundle: &Path, exit: &Exit) -> io::Result<()> {
    let json = serde_json::to_vec(exit).map_err(io::Error::other)?;
    let tmp = bundle.join(format!("{}.tmp", proto::EXIT_FILE));
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, bundle.join(proto::EXIT_FILE))
}

/// Reaps every child on a small thread, handing each (pid, wait status) to `reaped`.
pub fn spawn_reaper(reaped: impl Fn(i32, i32) + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new().name("reaper".into()).stack_size(64 * 1024).spawn(move || loop {
        while let Ok(Some((pid, status))) = sys::waitpid(-1, true) {
            reaped(pid, status);
        }
        // SIGCHLD is blocked in every thread, so one that arrives between the waitpid
        // and this wait stays pending; the timeout is only a safety net, kept long so an
        // idle shim does not wake (and fault code back in, see sys::release_setup_code).
        sys::wait_signal(&[libc::SIGCHLD], 60_000);
    })?;
    Ok(())
}
