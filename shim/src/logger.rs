//! The CRI log file: `<RFC3339Nano UTC> <stdout|stderr> <F|P> <text>\n` per line, lines longer
//! than 16 KiB split into P chunks followed by an F; reopened on request after rotation.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest text of one log entry; longer lines are split.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits a byte stream into log entries: (text, partial).
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes, emitting every complete entry.
    pub fn push(&mut self, data: &[u8], emit: &mut dyn FnMut(&[u8], bool)) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(nl) if nl <= MAX_LINE => {
                    emit(&rest[..nl], false);
                    start += nl + 1;
                }
                _ if rest.len() > MAX_LINE => {
                    emit(&rest[..MAX_LINE], true);
                    start += MAX_LINE;
                }
                _ => break,
            }
        }
        self.buf.drain(..start);
        if self.buf.capacity() > 4 * MAX_LINE && self.buf.len() < MAX_LINE {
            self.buf.shrink_to(MAX_LINE);
        }
    }

    /// End of stream: unterminated output is a partial (P) entry, as containerd writes it: the
    /// kubelet adds a newline after F entries only, so the log reads back as it was written.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8], bool)) {
        if !self.buf.is_empty() {
            emit(&self.buf, true);
            self.buf.clear();
        }
        self.buf.shrink_to(0);
    }
}

/// RFC 3339 UTC with nanoseconds: 2026-11-25T14:00:00.123456789Z.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z", rem / 3600, (rem / 60) % 60, rem % 60, d.subsec_nanos())
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats one entry.
pub fn format_entry(ts: &str, stream: Stream, partial: bool, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ts.len() + text.len() + 12);
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// The log file shared by the stdout and stderr copiers.
pub struct Logger {
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
    open_streams: Mutex<usize>,
    drained: Condvar,
}

fn open_log(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

impl Logger {
    /// A logger writing to `path`, or discarding without one.
    pub fn new(path: Option<PathBuf>) -> io::Result<Logger> {
        let file = path.as_ref().map(open_log).transpose()?;
        Ok(Logger { path, file: Mutex::new(file), open_streams: Mutex::new(0), drained: Condvar::new() })
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    fn write_entry(&self, stream: Stream, partial: bool, text: &[u8]) {
        let line = format_entry(&rfc3339_nano(SystemTime::now()), stream, partial, text);
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = f.as_mut() {
            // A full disk or a removed file must not stop the copier: the line is lost.
            let _ = f.write_all(&line);
        }
    }

    /// Reopens the log path (after rotation renamed it). On failure the old file stays.
    pub fn reopen(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let new = open_log(path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(new);
        Ok(())
    }

    /// Copies `src` to the log until EOF (or EIO, the end of a pty) on a small thread.
    pub fn spawn_copier(self: &std::sync::Arc<Self>, stream: Stream, mut src: impl Read + Send + 'static) {
        *self.open_streams.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let me = self.clone();
        let spawned = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            let mut splitter = LineSplitter::default();
            let mut buf = vec![0u8; 8192];
            loop {
                match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => splitter.push(&buf[..n], &mut |t, p| me.write_entry(stream, p, t)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            splitter.finish(&mut |t, p| me.write_entry(stream, p, t));
            let mut n = me.open_streams.lock().unwrap_or_else(|p| p.into_inner());
            *n -= 1;
            me.drained.notify_all();
        });
        if spawned.is_err() {
            *self.open_streams.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        }
    }

    /// Waits until every copier reached EOF, at most `timeout`.
    pub fn wait_drained(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut n = self.open_streams.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            n = match self.drained.wait_timeout(n, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut |t, p| out.push((t.to_vec(), p)));
        }
        s.finish(&mut |t, p| out.push((t.to_vec(), p)));
        out
    }

    #[test]
    fn lines_across_chunks() {
        let out = split(&[b"hel", b"lo\nwor", b"ld\n\n"]);
        assert_eq!(out, vec![(b"hello".to_vec(), false), (b"world".to_vec(), false), (b"".to_vec(), false)]);
    }

    #[test]
    fn unterminated_output_is_partial_at_eof() {
        assert_eq!(split(&[b"a\nb"]), vec![(b"a".to_vec(), false), (b"b".to_vec(), true)]);
    }

    #[test]
    fn long_lines_split_into_partials() {
        let line = vec![b'x'; 2 * MAX_LINE + 100];
        let mut data = line.clone();
        data.push(b'\n');
        let out = split(&[&data[..1000], &data[1000..]]);
        assert_eq!(out.len(), 3);
        assert!(out[0].1 && out[1].1 && !out[2].1);
        assert_eq!(out[0].0.len(), MAX_LINE);
        assert_eq!(out[2].0.len(), 100);
    }

    #[test]
    fn exactly_max_line_is_one_full_entry() {
        let mut data = vec![b'y'; MAX_LINE];
        data.push(b'\n');
        let out = split(&[&data]);
        assert_eq!(out, vec![(vec![b'y'; MAX_LINE], false)]);
    }

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        let t = UNIX_EPOCH + Duration::new(1_795_615_200, 123_456_789);
        assert_eq!(rfc3339_nano(t), "2026-11-25T14:00:00.123456789Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339_nano(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn entries_are_formatted() {
        let e = format_entry("T", Stream::Stderr, true, b"abc");
        assert_eq!(e, b"T stderr P abc\n");
    }

    #[test]
    fn reopen_fails_without_creating_when_dir_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("0.log");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let logger = Logger::new(Some(path.clone())).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_dir(dir.path().join("sub")).unwrap();
        assert!(logger.reopen().is_err());
        assert!(!path.exists());
    }
}
