//! The shim's own terse log, `<bundle>/shim.log` (its stdio is /dev/null).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

static LOG: Mutex<Option<File>> = Mutex::new(None);

pub fn init(path: &Path) {
    if let Ok(f) = OpenOptions::new().append(true).create(true).open(path) {
        *LOG.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }
}

pub fn write(level: &str, msg: std::fmt::Arguments<'_>) {
    let mut g = LOG.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = g.as_mut() {
        let _ = writeln!(f, "{} {level} {msg}", crate::logger::rfc3339_nano(SystemTime::now()));
    }
}

/// `info!("...")`: one line in shim.log.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::shimlog::write("info", format_args!($($arg)*)) };
}

/// `warn!("...")`: one line in shim.log.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::shimlog::write("warn", format_args!($($arg)*)) };
}
