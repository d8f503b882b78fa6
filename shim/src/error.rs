//! The shim's error types: [`Error`] for setup, where every failure carries what was being done
//! when it happened, and [`Fail`] for a failed request, with the kind corrald maps to a gRPC
//! status.

use std::io;

use proto::v1::ErrorKind;

use crate::sys;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed; `context` says what the shim was doing.
    #[error("{context}: {}", errno_display(.source))]
    Io { context: String, source: io::Error },
    /// config.json asks for something invalid or unsupported.
    #[error("invalid config.json: {0}")]
    Spec(String),
    /// Any other failure, already worded for the user.
    #[error("{0}")]
    Msg(String),
}

/// A failed request: the kind corrald maps to a gRPC status, and the message.
#[derive(Debug)]
pub struct Fail {
    pub kind: ErrorKind,
    pub msg: String,
}

impl Fail {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Fail {
        Fail { kind, msg: msg.into() }
    }
}

/// `EPERM` for known errno values, else the io error's own text.
pub fn errno_display(e: &io::Error) -> String {
    match sys::errno_name(e) {
        Some(name) => name.to_string(),
        None => e.to_string(),
    }
}

/// Adds context to io results.
pub trait Context<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|source| Error::Io { context: f(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_show_errno_names() {
        let r: io::Result<()> = Err(io::Error::from_raw_os_error(libc::EPERM));
        let e = r.ctx(|| "mounting proc at /proc".into()).unwrap_err();
        assert_eq!(e.to_string(), "mounting proc at /proc: EPERM");
    }
}
