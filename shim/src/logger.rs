//! The container's output. The CRI log file: `<RFC3339Nano UTC> <stdout|stderr> <F|P> <text>\n`
//! per line, lines longer than 16 KiB split into P chunks followed by an F; reopened on request
//! after rotation. And the fan-out to attach sessions: each subscriber gets the raw chunks as
//! they are read, through a queue of its own, and is dropped when it falls 1 MiB behind.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sys;

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

/// How far (bytes queued) an attach may fall behind the container's output before it is
/// dropped.
pub const MAX_BEHIND: usize = 1 << 20;

/// A stream's bit in stream masks.
fn bit(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => 1,
        Stream::Stderr => 2,
    }
}

/// How a subscription ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Every stream it watched reached its end (the container exited or closed them).
    Finished,
    /// It fell [`MAX_BEHIND`] behind and was dropped.
    Lagged,
}

/// A chunk of output as the copier read it, shared by every subscriber that gets it.
pub type Chunk = (Stream, Arc<[u8]>);

/// What the copiers queue for one subscription.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    end: Option<End>,
}

/// A subscription's queue, shared with the copiers, and the eventfd that wakes its reader.
struct Shared {
    queue: Mutex<Queue>,
    wake: File,
}

impl Shared {
    fn wake(&self) {
        // Non-blocking: a counter about to overflow is already readable.
        let _ = (&self.wake).write(&1u64.to_ne_bytes());
    }

    fn end(&self, end: End) {
        lock(&self.queue).end.get_or_insert(end);
        self.wake();
    }
}

/// A subscription as the copiers see it.
struct Subscriber {
    id: u64,
    /// Streams whose chunks it gets.
    forward: u8,
    /// Streams whose end it waits for: those it gets, or every open one when it gets none.
    watch: u8,
    shared: Arc<Shared>,
    /// Run once when it is dropped for falling behind.
    on_lag: Option<Box<dyn FnOnce() + Send>>,
}

#[derive(Default)]
struct Fanout {
    /// Streams whose copier has not reached the end yet.
    open: u8,
    next_id: u64,
    subscribers: Vec<Subscriber>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A subscription to the container's output ([`Logger::subscribe`]); dropping it unsubscribes.
pub struct Subscription {
    logger: Arc<Logger>,
    id: u64,
    shared: Arc<Shared>,
}

impl Subscription {
    /// Readable (poll) when there is something to [`Subscription::take`].
    pub fn wake_fd(&self) -> RawFd {
        self.shared.wake.as_raw_fd()
    }

    /// Takes the queued chunks (raw bytes as the container wrote them, in order) and, once the
    /// subscription ended, how (after its last chunk).
    pub fn take(&self) -> (Vec<Chunk>, Option<End>) {
        let mut counter = [0u8; 8];
        let _ = (&self.shared.wake).read(&mut counter);
        let mut q = lock(&self.shared.queue);
        q.bytes = 0;
        (q.chunks.drain(..).collect(), q.end)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.logger.fanout).subscribers.retain(|s| s.id != self.id);
    }
}

/// The container's output: the copiers read it, write the CRI log (when there is one) and
/// hand every chunk to the attached subscribers.
pub struct Logger {
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
    open_streams: Mutex<usize>,
    drained: Condvar,
    fanout: Mutex<Fanout>,
}

fn open_log(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

impl Logger {
    /// A logger writing to `path`, or to no log without one.
    pub fn new(path: Option<PathBuf>) -> io::Result<Logger> {
        let file = path.as_ref().map(open_log).transpose()?;
        Ok(Logger {
            path,
            file: Mutex::new(file),
            open_streams: Mutex::new(0),
            drained: Condvar::new(),
            fanout: Mutex::new(Fanout::default()),
        })
    }

    fn write_entry(&self, stream: Stream, partial: bool, text: &[u8]) {
        let line = format_entry(&rfc3339_nano(SystemTime::now()), stream, partial, text);
        let mut f = lock(&self.file);
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
        *lock(&self.file) = Some(new);
        Ok(())
    }

    /// Subscribes to the container's output from now on: the chunks of stdout and stderr, those
    /// asked for and still open. It ends once they all ended; with none of them, once every
    /// stream of the container ended (at once when none is open). `on_lag` runs (on a copier's
    /// thread) if it is dropped for falling [`MAX_BEHIND`] behind: the container and the log are
    /// never held up by a subscriber.
    pub fn subscribe(
        self: &Arc<Self>,
        stdout: bool,
        stderr: bool,
        on_lag: Box<dyn FnOnce() + Send>,
    ) -> io::Result<Subscription> {
        let shared = Arc::new(Shared { queue: Mutex::new(Queue::default()), wake: sys::eventfd()? });
        let mut f = lock(&self.fanout);
        let asked = if stdout { bit(Stream::Stdout) } else { 0 } | if stderr { bit(Stream::Stderr) } else { 0 };
        let forward = asked & f.open;
        let watch = if forward != 0 { forward } else { f.open };
        let id = f.next_id;
        f.next_id += 1;
        if watch == 0 {
            shared.end(End::Finished);
        } else {
            f.subscribers.push(Subscriber { id, forward, watch, shared: shared.clone(), on_lag: Some(on_lag) });
        }
        Ok(Subscription { logger: self.clone(), id, shared })
    }

    /// Queues a chunk of `stream` for its subscribers; one that is too far behind is dropped.
    fn fan_out(&self, stream: Stream, data: &[u8]) {
        let mut lagged = Vec::new();
        {
            let mut f = lock(&self.fanout);
            let mut chunk: Option<Arc<[u8]>> = None;
            f.subscribers.retain_mut(|s| {
                if s.forward & bit(stream) == 0 {
                    return true;
                }
                let mut q = lock(&s.shared.queue);
                if q.bytes + data.len() > MAX_BEHIND {
                    q.end.get_or_insert(End::Lagged);
                    drop(q);
                    s.shared.wake();
                    lagged.extend(s.on_lag.take());
                    return false;
                }
                q.bytes += data.len();
                q.chunks.push_back((stream, chunk.get_or_insert_with(|| Arc::from(data)).clone()));
                drop(q);
                s.shared.wake();
                true
            });
        }
        for on_lag in lagged {
            on_lag();
        }
    }

    /// `stream` reached its end: subscriptions left watching nothing end.
    fn stream_ended(&self, stream: Stream) {
        let mut f = lock(&self.fanout);
        f.open &= !bit(stream);
        f.subscribers.retain_mut(|s| {
            s.forward &= !bit(stream);
            s.watch &= !bit(stream);
            if s.watch == 0 {
                s.shared.end(End::Finished);
            }
            s.watch != 0
        });
    }

    /// Copies `src` until EOF (or EIO, the end of a pty) on a small thread: to the log, and to
    /// the subscribers.
    pub fn spawn_copier(self: &Arc<Self>, stream: Stream, mut src: impl Read + Send + 'static) {
        *lock(&self.open_streams) += 1;
        lock(&self.fanout).open |= bit(stream);
        let me = self.clone();
        let spawned = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            let mut splitter = LineSplitter::default();
            let logged = me.path.is_some();
            let mut buf = vec![0u8; 8192];
            loop {
                match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        me.fan_out(stream, &buf[..n]);
                        if logged {
                            splitter.push(&buf[..n], &mut |t, p| me.write_entry(stream, p, t));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            splitter.finish(&mut |t, p| me.write_entry(stream, p, t));
            me.stream_ended(stream);
            *lock(&me.open_streams) -= 1;
            me.drained.notify_all();
        });
        if spawned.is_err() {
            *lock(&self.open_streams) -= 1;
            lock(&self.fanout).open &= !bit(stream);
        }
    }

    /// Waits until every copier reached EOF, at most `timeout`.
    pub fn wait_drained(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut n = lock(&self.open_streams);
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

    use std::sync::atomic::{AtomicBool, Ordering};

    fn nothing() -> Box<dyn FnOnce() + Send> {
        Box::new(|| {})
    }

    /// Takes from `sub` until `f` holds of what came (all of it) or the subscription ended.
    fn take_until(
        sub: &Subscription,
        got: &mut Vec<(Stream, Vec<u8>)>,
        f: impl Fn(&[(Stream, Vec<u8>)]) -> bool,
    ) -> Option<End> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (chunks, end) = sub.take();
            got.extend(chunks.into_iter().map(|(s, d)| (s, d.to_vec())));
            if end.is_some() || f(got) || Instant::now() > deadline {
                return end;
            }
            let _ = sys::poll(&[sub.wake_fd()], 100);
        }
    }

    fn bytes_of(got: &[(Stream, Vec<u8>)], stream: Stream) -> Vec<u8> {
        got.iter().filter(|(s, _)| *s == stream).flat_map(|(_, d)| d.clone()).collect()
    }

    #[test]
    fn subscribers_get_the_streams_they_asked_for_until_those_end() {
        let logger = Arc::new(Logger::new(None).unwrap());
        let (out_r, mut out_w) = io::pipe().unwrap();
        let (err_r, mut err_w) = io::pipe().unwrap();
        logger.spawn_copier(Stream::Stdout, out_r);
        logger.spawn_copier(Stream::Stderr, err_r);
        let both = logger.subscribe(true, true, nothing()).unwrap();
        let out_only = logger.subscribe(true, false, nothing()).unwrap();
        let neither = logger.subscribe(false, false, nothing()).unwrap();
        out_w.write_all(b"out\n").unwrap();
        err_w.write_all(b"err").unwrap();
        let mut got = Vec::new();
        let ready =
            |g: &[(Stream, Vec<u8>)]| bytes_of(g, Stream::Stdout) == b"out\n" && bytes_of(g, Stream::Stderr) == b"err";
        assert_eq!(take_until(&both, &mut got, ready), None);
        assert!(ready(&got), "{got:?}");
        let mut got = Vec::new();
        assert_eq!(take_until(&out_only, &mut got, |g| !g.is_empty()), None);
        assert_eq!(got, vec![(Stream::Stdout, b"out\n".to_vec())]);
        // The end of stdout ends the stdout-only subscription, not the others.
        drop(out_w);
        assert_eq!(take_until(&out_only, &mut got, |_| false), Some(End::Finished));
        assert_eq!(both.take().1, None);
        assert_eq!(neither.take(), (vec![], None));
        // A subscription for a stream that already ended watches those still open.
        let late = logger.subscribe(true, false, nothing()).unwrap();
        assert_eq!(late.take().1, None);
        drop(err_w);
        assert_eq!(take_until(&both, &mut Vec::new(), |_| false), Some(End::Finished));
        assert_eq!(take_until(&neither, &mut Vec::new(), |_| false), Some(End::Finished));
        assert_eq!(take_until(&late, &mut Vec::new(), |_| false), Some(End::Finished));
        // Once every stream ended, a new subscription ends at once.
        logger.wait_drained(Duration::from_secs(5));
        assert_eq!(logger.subscribe(true, true, nothing()).unwrap().take(), (vec![], Some(End::Finished)));
        assert!(lock(&logger.fanout).subscribers.is_empty());
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_dropped_and_holds_nothing_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let logger = Arc::new(Logger::new(Some(path.clone())).unwrap());
        let (out_r, mut out_w) = io::pipe().unwrap();
        logger.spawn_copier(Stream::Stdout, out_r);
        let lagged = Arc::new(AtomicBool::new(false));
        let flag = lagged.clone();
        let slow = logger.subscribe(true, false, Box::new(move || flag.store(true, Ordering::SeqCst))).unwrap();
        let fast = logger.subscribe(true, false, nothing()).unwrap();
        // 3 MiB in lines: the writer is never blocked by the slow subscriber, which never takes;
        // it keeps within 256 KiB of the fast one, so that one cannot fall behind on a busy machine.
        let consumed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = consumed.clone();
        let line = [b'x'; 1023];
        let writer = std::thread::spawn(move || {
            for i in 0..3 * 1024 {
                while i * 1024 > seen.load(Ordering::SeqCst) + (256 << 10) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                out_w.write_all(&line).unwrap();
                out_w.write_all(b"\n").unwrap();
            }
        });
        let total = 3 << 20;
        let (mut fast_got, mut fast_end) = (0, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while fast_got < total && fast_end.is_none() && Instant::now() < deadline {
            let _ = sys::poll(&[fast.wake_fd()], 100);
            let (chunks, end) = fast.take();
            fast_got += chunks.iter().map(|c| c.1.len()).sum::<usize>();
            consumed.store(fast_got, Ordering::SeqCst);
            fast_end = end;
        }
        assert_eq!(fast_got, total);
        assert_ne!(fast_end, Some(End::Lagged));
        writer.join().unwrap();
        assert!(lagged.load(Ordering::SeqCst));
        let (chunks, end) = slow.take();
        assert_eq!(end, Some(End::Lagged));
        assert!(chunks.iter().map(|c| c.1.len()).sum::<usize>() <= MAX_BEHIND);
        // The other one and the log got everything.
        if fast_end.is_none() {
            assert_eq!(take_until(&fast, &mut Vec::new(), |_| false), Some(End::Finished));
        }
        logger.wait_drained(Duration::from_secs(5));
        let log = std::fs::read_to_string(&path).unwrap();
        assert_eq!(log.lines().count(), 3 * 1024);
        drop(fast);
        assert!(lock(&logger.fanout).subscribers.is_empty());
    }

    #[test]
    fn dropping_a_subscription_unsubscribes() {
        let logger = Arc::new(Logger::new(None).unwrap());
        let (out_r, mut out_w) = io::pipe().unwrap();
        logger.spawn_copier(Stream::Stdout, out_r);
        let sub = logger.subscribe(true, true, nothing()).unwrap();
        assert_eq!(lock(&logger.fanout).subscribers.len(), 1);
        drop(sub);
        assert!(lock(&logger.fanout).subscribers.is_empty());
        out_w.write_all(b"nobody listens").unwrap();
        drop(out_w);
        logger.wait_drained(Duration::from_secs(5));
        assert_eq!(lock(&logger.fanout).open, 0);
    }
}
