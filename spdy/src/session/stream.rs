//! Streams: the state a session keeps per stream, and the user's handles on it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, Notify};

use super::{lock, Handle, Out};
use crate::error::Error;
use crate::frame::rst;
use crate::headers::Headers;

/// A drained receive buffer bigger than this is freed rather than kept for reuse.
const KEEP_BUFFER: usize = 64 * 1024;

/// What the session knows of one stream, shared by the session tasks and the stream's halves.
#[derive(Debug)]
pub(crate) struct StreamCell {
    pub(crate) id: u32,
    state: Mutex<StreamState>,
    /// Signalled when the receive buffer shrinks or stops mattering (the session reader waits
    /// on it while the buffer is full).
    pub(crate) space: Notify,
}

/// The mutable part of a [`StreamCell`].
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    /// DATA received and not read yet.
    pub(crate) buf: BytesMut,
    /// The peer sent FIN.
    pub(crate) remote_fin: bool,
    /// We sent (queued) FIN, or the stream is unidirectional from the peer.
    pub(crate) local_fin: bool,
    /// RST_STREAM sent or received, with its status.
    pub(crate) reset: Option<u32>,
    /// The session ended.
    pub(crate) gone: bool,
    /// The RecvHalf was dropped: DATA is discarded.
    pub(crate) recv_dropped: bool,
    /// The SendHalf was dropped.
    pub(crate) send_dropped: bool,
    /// The RecvHalf waiting for data.
    pub(crate) read_waker: Option<Waker>,
    /// For streams we opened: where the peer's SYN_REPLY (or its refusal) goes.
    pub(crate) reply: Option<oneshot::Sender<Result<Headers, Error>>>,
}

impl StreamState {
    /// Both directions are over: the session forgets the stream (freeing its slot).
    pub(crate) fn finished(&self) -> bool {
        self.reset.is_some()
            || self.gone
            || (self.remote_fin && self.local_fin)
            || (self.recv_dropped && self.send_dropped)
    }

    /// Wakes the RecvHalf, if it waits.
    pub(crate) fn wake_reader(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
    }
}

impl StreamCell {
    /// A new stream.
    pub(crate) fn new(id: u32, state: StreamState) -> Arc<Self> {
        Arc::new(StreamCell { id, state: Mutex::new(state), space: Notify::new() })
    }

    /// Locks the state.
    pub(crate) fn lock(&self) -> MutexGuard<'_, StreamState> {
        lock(&self.state)
    }

    /// Marks the stream reset with `status` (if it is not over already: reset, FIN both ways, or
    /// session gone) and wakes everyone concerned. `local`: we reset it, so unread data is
    /// dropped. Returns whether it changed.
    pub(crate) fn mark_reset(&self, status: u32, local: bool) -> bool {
        let mut st = self.lock();
        if st.reset.is_some() || st.gone || (st.remote_fin && st.local_fin) {
            return false;
        }
        st.reset = Some(status);
        if local {
            st.buf = BytesMut::new();
        }
        if let Some(reply) = st.reply.take() {
            let _ = reply.send(Err(Error::Reset { status }));
        }
        st.wake_reader();
        drop(st);
        self.space.notify_one();
        true
    }

    /// Marks the session gone for this stream.
    pub(crate) fn mark_gone(&self) {
        let mut st = self.lock();
        st.gone = true;
        if let Some(reply) = st.reply.take() {
            let _ = reply.send(Err(Error::Closed));
        }
        st.wake_reader();
        drop(st);
        self.space.notify_one();
    }
}

/// One SPDY stream: the headers it was opened (or accepted) with, and both directions.
#[derive(Debug)]
pub struct Stream {
    headers: Headers,
    recv: RecvHalf,
    send: SendHalf,
}

impl Stream {
    /// Builds the handles of a stream.
    pub(crate) fn new(handle: Arc<Handle>, cell: Arc<StreamCell>, headers: Headers) -> Self {
        Stream {
            headers,
            recv: RecvHalf { handle: handle.clone(), cell: cell.clone() },
            send: SendHalf { handle, cell, shutdown_sent: false },
        }
    }

    /// Sets the headers (an opened stream's, once the SYN_REPLY came).
    pub(crate) fn set_headers(&mut self, headers: Headers) {
        self.headers = headers;
    }

    /// The stream id.
    pub fn id(&self) -> u32 {
        self.recv.cell.id
    }

    /// The SYN_STREAM headers (a stream the peer opened) or SYN_REPLY headers (one we opened).
    /// Names are lowercase.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Sends RST_STREAM with `status` (see [`crate::frame::rst`]); both directions end.
    pub fn reset(&self, status: u32) {
        self.send.reset(status)
    }

    /// Splits into the reading and the writing direction.
    pub fn split(self) -> (RecvHalf, SendHalf) {
        (self.recv, self.send)
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

/// The reading direction of a stream: DATA bytes in order, EOF (`Ok(0)`) after the peer's FIN,
/// an error after RST_STREAM (kind `ConnectionReset`, inner [`Error::Reset`]) or when the
/// session ends without FIN (kind `UnexpectedEof`). Dropping it discards further DATA.
#[derive(Debug)]
pub struct RecvHalf {
    handle: Arc<Handle>,
    cell: Arc<StreamCell>,
}

impl RecvHalf {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.cell.id
    }
}

impl AsyncRead for RecvHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut st = self.cell.lock();
        if !st.buf.is_empty() {
            let n = st.buf.len().min(buf.remaining());
            buf.put_slice(&st.buf[..n]);
            st.buf.advance(n);
            if st.buf.is_empty() && st.buf.capacity() > KEEP_BUFFER {
                st.buf = BytesMut::new();
            }
            drop(st);
            self.cell.space.notify_one();
            return Poll::Ready(Ok(()));
        }
        if st.remote_fin {
            return Poll::Ready(Ok(()));
        }
        if let Some(status) = st.reset {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, Error::Reset { status })));
        }
        if st.gone {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, Error::Closed)));
        }
        st.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for RecvHalf {
    fn drop(&mut self) {
        {
            let mut st = self.cell.lock();
            st.recv_dropped = true;
            st.buf = BytesMut::new();
        }
        self.cell.space.notify_one();
        self.handle.inner.half_dropped(&self.cell);
    }
}

/// The writing direction of a stream. Each write becomes one DATA frame of at most
/// `Config::max_send_data` bytes, queued for the session's writer (writes wait while the
/// session's send queue is full). `poll_shutdown` queues an empty DATA frame with FIN, once;
/// flushing is a no-op (queued frames go out in order). Dropping it without shutdown sends
/// nothing more.
#[derive(Debug)]
pub struct SendHalf {
    handle: Arc<Handle>,
    cell: Arc<StreamCell>,
    shutdown_sent: bool,
}

impl SendHalf {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.cell.id
    }

    /// Sends RST_STREAM with `status` (e.g. [`rst::CANCEL`]); the reading side ends too.
    /// Does nothing if the stream is already over.
    pub fn reset(&self, status: u32) {
        let inner = &self.handle.inner;
        if self.cell.mark_reset(status, true) {
            inner.queue(Out::Rst { id: self.cell.id, status }, None);
            inner.forget_if_finished(&self.cell);
        }
    }

    /// Why writing is not possible now, if it is not.
    fn check_writable(&self) -> io::Result<()> {
        let st = self.cell.lock();
        if st.gone {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, Error::Closed));
        }
        if let Some(status) = st.reset {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, Error::Reset { status }));
        }
        if st.local_fin {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream already shut down for writing"));
        }
        Ok(())
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check_writable()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let inner = &self.handle.inner;
        let n = buf.len().min(inner.config.max_send_data);
        let permit = match inner.data_budget.poll_acquire(cx, n) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(p)) => p,
            Poll::Ready(Err(())) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, Error::Closed))),
        };
        // The stream may have ended while we waited.
        self.check_writable()?;
        let data = Bytes::copy_from_slice(&buf[..n]);
        inner.queue(Out::Data { id: self.cell.id, data, fin: false }, Some(permit));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shutdown_sent {
            return Poll::Ready(Ok(()));
        }
        self.check_writable()?;
        self.shutdown_sent = true;
        self.cell.lock().local_fin = true;
        let inner = &self.handle.inner;
        inner.queue(Out::Data { id: self.cell.id, data: Bytes::new(), fin: true }, None);
        inner.forget_if_finished(&self.cell);
        Poll::Ready(Ok(()))
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        self.cell.lock().send_dropped = true;
        self.handle.inner.half_dropped(&self.cell);
    }
}

/// The status a stream is reset with when both halves are dropped while it is still open.
pub(crate) const DROP_STATUS: u32 = rst::CANCEL;
