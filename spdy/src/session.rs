//! SPDY/3.1 sessions over any tokio `AsyncRead + AsyncWrite`.
//!
//! A session runs two tasks: the *reader* reads and decodes frames and dispatches them (it also
//! answers SYN_STREAM with SYN_REPLY, PING with its echo, and protocol errors with RST_STREAM or
//! GOAWAY), and the *writer* takes frames from one FIFO queue, compresses header blocks (one
//! zlib context per direction, so blocks must be compressed in the order they are written) and
//! writes them. What waits in the queue is bounded: DATA by a byte budget of four
//! `max_send_data` (writers wait for room), frames queued by the reader by a count (the reader
//! stops reading the connection while the queue is full).
//!
//! No SPDY flow control: WINDOW_UPDATE and SETTINGS are accepted and ignored, never sent (as in
//! moby/spdystream, whose peers never grant window). Back-pressure on receiving is per stream:
//! once `stream_buffer` bytes wait unread on a stream, the reader stops reading the connection
//! until that stream's [`RecvHalf`] reads (or is dropped).
//!
//! The session ends when the connection ends or fails, on a protocol error, on
//! [`Session::close`] (at once), or when every handle on it ([`Session`] clones, [`Incoming`],
//! and the halves of every stream) is dropped (after writing what was queued: a last write and
//! FIN are not lost).

mod budget;
mod reader;
mod stream;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::error::Error;
use crate::frame;
use crate::headers::Headers;
use budget::{Budget, Permit};
use stream::StreamCell;
pub use stream::{RecvHalf, SendHalf, Stream};

/// Session limits.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest control frame payload accepted (compressed header blocks live here). Default 64 KiB.
    pub max_control_frame: usize,
    /// Largest decompressed name/value block (also the largest we send). Default 256 KiB.
    pub max_header_block: usize,
    /// Streams open at once (either side); a SYN_STREAM beyond it gets RST_STREAM
    /// REFUSED_STREAM, an `open()` beyond it fails with [`Error::TooManyStreams`]. Default 1024.
    pub max_streams: usize,
    /// Bytes of DATA buffered per stream not yet read by its RecvHalf; beyond it the session stops
    /// reading the connection until the reader catches up (back-pressure, no SPDY flow control).
    /// Default 1 MiB.
    pub stream_buffer: usize,
    /// Largest DATA frame we send (writes are split). Default 32 KiB, at most 16 MiB - 1.
    pub max_send_data: usize,
    /// Judges the headers of each stream the peer opens before it is answered: Some(status)
    /// refuses it with RST_STREAM `status` and no SYN_REPLY (as Kubernetes refuses a
    /// port-forward stream without a valid port). Default: none.
    pub check: Option<StreamCheck>,
}

/// See [`Config::check`].
pub type StreamCheck = fn(&Headers) -> Option<u32>;

impl Default for Config {
    fn default() -> Self {
        Config {
            max_control_frame: 64 * 1024,
            max_header_block: 256 * 1024,
            max_streams: 1024,
            stream_buffer: 1024 * 1024,
            max_send_data: 32 * 1024,
            check: None,
        }
    }
}

impl Config {
    /// The same limits brought into the ranges the protocol allows.
    fn normalized(mut self) -> Self {
        self.max_send_data = self.max_send_data.clamp(1, frame::MAX_FRAME_PAYLOAD);
        self.max_control_frame = self.max_control_frame.min(frame::MAX_FRAME_PAYLOAD);
        // What we send must stay well under the 24-bit frame length once compressed.
        self.max_header_block = self.max_header_block.min(8 * 1024 * 1024);
        self.stream_buffer = self.stream_buffer.max(1);
        self
    }
}

/// Largest piece of DATA payload the reader hands on at once.
const DATA_CHUNK: usize = 64 * 1024;
/// Frames the reader may have waiting in the write queue (SYN_REPLY, PING echo, RST...).
const CONTROL_QUEUE: usize = 1024;
/// How long a GOAWAY sent because of a protocol error may take to go out before the end.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);
/// How long queued frames may take to go out once every handle is dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Locks a mutex, ignoring poisoning (the state stays consistent: no code panics while
/// holding these locks).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A frame waiting for the writer task. Header blocks are compressed by the writer, in order.
#[derive(Debug)]
pub(crate) enum Out {
    /// Open a stream: the writer allocates the id (so ids go out increasing), registers the
    /// stream and reports it back.
    Syn { headers: Headers, fin: bool, done: oneshot::Sender<Result<OpenedStream, Error>> },
    /// SYN_REPLY.
    Reply { id: u32, headers: Headers },
    /// DATA.
    Data { id: u32, data: bytes::Bytes, fin: bool },
    /// RST_STREAM.
    Rst { id: u32, status: u32 },
    /// PING.
    Ping { id: u32 },
    /// GOAWAY; `last_good` is filled in by the writer. `done` hears when it has been written.
    GoAway { status: u32, done: Option<oneshot::Sender<()>> },
    /// End the session once everything queued before is written (the last handle is gone).
    Close,
}

/// What the writer reports back for [`Out::Syn`]: the registered stream and where its reply
/// will arrive.
#[derive(Debug)]
pub(crate) struct OpenedStream {
    cell: Arc<StreamCell>,
    reply: oneshot::Receiver<Result<Headers, Error>>,
}

/// An [`Out`] with the budget it holds until written.
#[derive(Debug)]
pub(crate) struct Queued {
    out: Out,
    permit: Option<Permit>,
}

/// Session state under one lock.
#[derive(Debug)]
struct State {
    /// Open streams (either side opened them).
    streams: HashMap<u32, Arc<StreamCell>>,
    /// Next id for a stream we open.
    next_stream_id: u32,
    /// Highest stream id the peer opened.
    last_peer_stream_id: u32,
    /// Next PING id of ours.
    next_ping_id: u32,
    /// Our PINGs waiting for their echo.
    pings: HashMap<u32, oneshot::Sender<()>>,
    /// The peer's GOAWAY (last good stream id), if one came.
    goaway_received: Option<u32>,
    /// We sent GOAWAY: new streams from the peer are refused.
    goaway_sent: bool,
    /// The session has ended.
    closed: bool,
    /// Where streams the peer opens go (None once the session ended).
    incoming: Option<mpsc::UnboundedSender<Stream>>,
}

/// What the tasks and handles share.
#[derive(Debug)]
pub(crate) struct Inner {
    config: Config,
    client: bool,
    state: Mutex<State>,
    out: mpsc::UnboundedSender<Queued>,
    data_budget: Arc<Budget>,
    control_budget: Arc<Budget>,
    closed: watch::Sender<bool>,
}

impl Inner {
    /// Queues a frame for the writer (dropped silently once the writer is gone).
    pub(crate) fn queue(&self, out: Out, permit: Option<Permit>) {
        let _ = self.out.send(Queued { out, permit });
    }

    /// Queues a frame from the reader task, waiting while the reader's share of the queue is full.
    async fn queue_control(&self, out: Out) -> Result<(), Error> {
        let permit = self.control_budget.acquire(1).await.map_err(|()| Error::Closed)?;
        self.queue(out, Some(permit));
        Ok(())
    }

    /// True if `id` is of the parity the peer opens (client: odd ids, server: even ids).
    fn is_peer_id(&self, id: u32) -> bool {
        (id % 2 == 1) != self.client
    }

    /// Forgets `cell` if both its directions are over.
    pub(crate) fn forget_if_finished(&self, cell: &Arc<StreamCell>) {
        let mut st = lock(&self.state);
        if let Some(c) = st.streams.get(&cell.id) {
            if Arc::ptr_eq(c, cell) && cell.lock().finished() {
                st.streams.remove(&cell.id);
            }
        }
    }

    /// One half of a stream was dropped: when both are, a stream still open gets RST CANCEL.
    pub(crate) fn half_dropped(&self, cell: &Arc<StreamCell>) {
        let rst = {
            let mut st = cell.lock();
            let open = st.reset.is_none() && !st.gone && !(st.remote_fin && st.local_fin);
            if st.recv_dropped && st.send_dropped && open {
                st.reset = Some(stream::DROP_STATUS);
                st.reply = None;
                true
            } else {
                false
            }
        };
        if rst {
            self.queue(Out::Rst { id: cell.id, status: stream::DROP_STATUS }, None);
        }
        self.forget_if_finished(cell);
    }

    /// Ends the session (idempotent): every stream's reader sees EOF-with-error unless it got
    /// FIN, writes fail, pending opens and pings fail, `accept()` returns None, tasks stop.
    pub(crate) fn shutdown(&self) {
        let (streams, pings, incoming) = {
            let mut st = lock(&self.state);
            if st.closed {
                return;
            }
            st.closed = true;
            (std::mem::take(&mut st.streams), std::mem::take(&mut st.pings), st.incoming.take())
        };
        tracing::debug!(client = self.client, streams = streams.len(), "spdy session ends");
        for cell in streams.values() {
            cell.mark_gone();
        }
        self.data_budget.close();
        self.control_budget.close();
        self.closed.send_replace(true);
        // Dropped outside the lock: dropping queued streams takes it.
        drop(pings);
        drop(incoming);
    }
}

/// Ends the session when the last user handle goes.
#[derive(Debug)]
pub(crate) struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    /// The last handle is gone: frames already queued (a last write, a FIN) still go out,
    /// then the session ends; if the peer does not take them within [`DRAIN_TIMEOUT`], the
    /// session ends anyway.
    fn drop(&mut self) {
        self.inner.queue(Out::Close, None);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let inner = self.inner.clone();
                rt.spawn(async move {
                    let mut closed = inner.closed.subscribe();
                    if tokio::time::timeout(DRAIN_TIMEOUT, closed.wait_for(|c| *c)).await.is_err() {
                        inner.shutdown();
                    }
                });
            }
            Err(_) => self.inner.shutdown(),
        }
    }
}

/// A handle on one SPDY session (cheap to clone). Background tasks own the connection.
#[derive(Clone, Debug)]
pub struct Session {
    handle: Arc<Handle>,
}

/// Streams the peer opened, in order. Each got its SYN_REPLY (empty headers) as soon as it
/// was received, before `accept()` returns it.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::UnboundedReceiver<Stream>,
    _handle: Arc<Handle>,
}

impl Incoming {
    /// The next stream the peer opened; None once the session has ended.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.rx.recv().await
    }
}

impl Session {
    /// Server side: the peer opens odd stream ids; we would open even ones. Must be called
    /// within a tokio runtime (spawns the session's tasks).
    pub fn server<IO>(io: IO, config: Config) -> (Session, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, config, false)
    }

    /// Client side: we open odd stream ids. Must be called within a tokio runtime.
    pub fn client<IO>(io: IO, config: Config) -> (Session, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, config, true)
    }

    fn start<IO>(io: IO, config: Config, client: bool) -> (Session, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let config = config.normalized();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (closed, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            data_budget: Budget::new(config.max_send_data.saturating_mul(4)),
            control_budget: Budget::new(CONTROL_QUEUE),
            config,
            client,
            state: Mutex::new(State {
                streams: HashMap::new(),
                next_stream_id: if client { 1 } else { 2 },
                last_peer_stream_id: 0,
                next_ping_id: if client { 1 } else { 2 },
                pings: HashMap::new(),
                goaway_received: None,
                goaway_sent: false,
                closed: false,
                incoming: Some(in_tx),
            }),
            out: out_tx,
            closed,
        });
        let handle = Arc::new(Handle { inner: inner.clone() });
        let (r, w) = tokio::io::split(io);
        tokio::spawn(writer::run(inner.clone(), w, out_rx));
        tokio::spawn(reader::run(inner, Arc::downgrade(&handle), r));
        (Session { handle: handle.clone() }, Incoming { rx: in_rx, _handle: handle })
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// Opens a stream: SYN_STREAM with `headers` (names lowercased; `fin`: we will send
    /// nothing on it), then waits for the peer's SYN_REPLY. A RST_STREAM instead gives
    /// [`Error::Reset`]; a GOAWAY from the peer gives [`Error::GoneAway`].
    pub async fn open(&self, headers: Headers, fin: bool) -> Result<Stream, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner().queue(Out::Syn { headers, fin, done: tx }, None);
        let opened = rx.await.map_err(|_| Error::Closed)??;
        // Built before the reply comes: if this future is dropped meanwhile, the halves'
        // drop resets the stream and frees its slot.
        let mut stream = Stream::new(self.handle.clone(), opened.cell, Headers::new());
        let headers = opened.reply.await.map_err(|_| Error::Closed)??;
        stream.set_headers(headers);
        Ok(stream)
    }

    /// Sends a PING and waits for its echo; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = lock(&self.inner().state);
            if st.closed {
                return Err(Error::Closed);
            }
            let id = st.next_ping_id;
            st.next_ping_id = if id >= frame::STREAM_ID_MASK - 1 { id % 2 + 2 } else { id + 2 };
            st.pings.insert(id, tx);
            id
        };
        // Forgets the ping however this future ends (echo, session end, or dropped).
        struct Forget<'a>(&'a Inner, u32);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                let tx = lock(&self.0.state).pings.remove(&self.1);
                drop(tx);
            }
        }
        let _forget = Forget(self.inner(), id);
        let start = Instant::now();
        self.inner().queue(Out::Ping { id }, None);
        rx.await.map_err(|_| Error::Closed)?;
        Ok(start.elapsed())
    }

    /// PINGs sent and not echoed yet.
    pub fn pending_pings(&self) -> usize {
        lock(&self.inner().state).pings.len()
    }

    /// Sends GOAWAY (status OK, last good stream = the last one the peer opened) and waits
    /// until it is written. Existing streams continue; new ones from the peer are refused.
    pub async fn goaway(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.inner().queue(Out::GoAway { status: frame::goaway::OK, done: Some(tx) }, None);
        rx.await.map_err(|_| Error::Closed)
    }

    /// Ends the session now: the connection is shut down, every stream's reader sees an error
    /// (or EOF after FIN), writes fail.
    pub fn close(&self) {
        self.inner().shutdown();
    }

    /// Resolves when the session has ended (peer closed, error, or `close()`).
    pub async fn closed(&self) {
        let mut rx = self.inner().closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        *self.inner().closed.borrow()
    }

    /// Whether the peer sent GOAWAY (it opens no more streams; a Go spdystream peer also stops
    /// reading).
    pub fn peer_went_away(&self) -> bool {
        lock(&self.inner().state).goaway_received.is_some()
    }

    /// Streams open now (either side).
    pub fn stream_count(&self) -> usize {
        lock(&self.inner().state).streams.len()
    }
}
