//! The writer task: takes queued frames in order, compresses header blocks with the
//! connection's one outgoing zlib context, and writes frames out in batches.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::stream::{StreamCell, StreamState};
use super::{lock, Inner, OpenedStream, Out, Queued, GOAWAY_GRACE};
use crate::error::Error;
use crate::frame::{self, rst, Frame, FLAG_FIN};
use crate::headers::{Compressor, Headers};

/// Frames are gathered up to about this many bytes per write.
const BATCH: usize = 64 * 1024;

/// Runs the writer until the session ends or writing fails; then ends the session and shuts
/// the connection's write side down.
pub(crate) async fn run<W: AsyncWrite + Unpin>(inner: Arc<Inner>, mut w: W, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let mut closed = inner.closed.subscribe();
    let res = tokio::select! {
        biased;
        _ = closed.wait_for(|c| *c) => Ok(()),
        r = write_loop(&inner, &mut w, &mut rx) => r,
    };
    if let Err(e) = res {
        tracing::debug!(client = inner.client, error = %e, "spdy writer stops");
    }
    inner.shutdown();
    let _ = tokio::time::timeout(GOAWAY_GRACE, w.shutdown()).await;
}

/// Writes queued frames until [`Out::Close`], the queue closing, or an error.
async fn write_loop<W: AsyncWrite + Unpin>(
    inner: &Inner,
    w: &mut W,
    rx: &mut mpsc::UnboundedReceiver<Queued>,
) -> Result<(), Error> {
    let mut enc = Encoder {
        compressor: Compressor::new()?,
        small: BytesMut::with_capacity(BATCH),
        segments: Vec::new(),
        sealed: 0,
        acks: Vec::new(),
        close: false,
    };
    let mut written = Vec::new();
    loop {
        let Some(q) = rx.recv().await else { return Ok(()) };
        enc.encode(inner, q.out)?;
        written.push(q.permit);
        while enc.size() < BATCH && !enc.close {
            let Ok(q) = rx.try_recv() else { break };
            enc.encode(inner, q.out)?;
            written.push(q.permit);
        }
        enc.seal();
        write_segments(w, &mut enc.segments).await?;
        w.flush().await?;
        enc.sealed = 0;
        // Returns the budget the written frames held.
        written.clear();
        for ack in enc.acks.drain(..) {
            let _ = ack.send(());
        }
        if enc.close {
            tracing::debug!(client = inner.client, "spdy session: last handle dropped, queue written");
            return Ok(());
        }
    }
}

/// Segments written at most per vectored write (IOV_MAX is 1024).
const MAX_IOV: usize = 64;

/// Writes `segments` in order with as few (vectored) writes as the connection takes, and empties
/// it: a DATA frame's header and payload go out in one system call.
async fn write_segments<W: AsyncWrite + Unpin>(w: &mut W, segments: &mut Vec<bytes::Bytes>) -> std::io::Result<()> {
    use bytes::Buf;
    let mut first = 0;
    while first < segments.len() {
        if segments[first].is_empty() {
            first += 1;
            continue;
        }
        let slices: Vec<std::io::IoSlice<'_>> =
            segments[first..].iter().take(MAX_IOV).map(|s| std::io::IoSlice::new(s)).collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < segments.len() {
            let len = segments[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                segments[first].advance(n);
                n = 0;
            }
        }
    }
    segments.clear();
    Ok(())
}

/// Frame encoding state of the writer: a batch of frames ready to write.
struct Encoder {
    compressor: Compressor,
    /// Small frames (and DATA headers), gathered.
    small: BytesMut,
    /// The batch in order: gathered small frames, and large DATA payloads as they are (no copy).
    segments: Vec<bytes::Bytes>,
    /// Bytes in `segments`.
    sealed: usize,
    /// GOAWAY senders waiting for the batch to be written.
    acks: Vec<oneshot::Sender<()>>,
    /// [`Out::Close`] was reached: the batch is the last one.
    close: bool,
}

/// DATA payloads from this size on are written from their own buffer rather than copied.
const NO_COPY: usize = 8 * 1024;

impl Encoder {
    /// Moves the gathered small frames into the segment list.
    fn seal(&mut self) {
        if !self.small.is_empty() {
            self.sealed += self.small.len();
            self.segments.push(self.small.split().freeze());
        }
    }

    /// Bytes in the batch.
    fn size(&self) -> usize {
        self.sealed + self.small.len()
    }

    /// Appends `out` to the batch. Errors end the session (the compression context is lost).
    fn encode(&mut self, inner: &Inner, out: Out) -> Result<(), Error> {
        match out {
            Out::Syn { headers, fin, done } => self.open(inner, headers, fin, done)?,
            Out::Reply { id, headers } => {
                let block = self.compressor.compress(&headers, inner.config.max_header_block)?;
                Frame::SynReply { stream_id: id, flags: 0, block: block.into() }.encode(&mut self.small)?;
            }
            Out::Data { id, data, fin } => {
                frame::encode_data_header(&mut self.small, id, if fin { FLAG_FIN } else { 0 }, data.len())?;
                if data.len() >= NO_COPY {
                    self.seal();
                    self.sealed += data.len();
                    self.segments.push(data);
                } else {
                    self.small.extend_from_slice(&data);
                }
            }
            Out::Rst { id, status } => Frame::RstStream { stream_id: id, status }.encode(&mut self.small)?,
            Out::Ping { id } => Frame::Ping { id }.encode(&mut self.small)?,
            Out::GoAway { status, done } => {
                let last_good_stream_id = {
                    let mut st = lock(&inner.state);
                    st.goaway_sent = true;
                    st.last_peer_stream_id
                };
                Frame::GoAway { last_good_stream_id, status }.encode(&mut self.small)?;
                self.acks.extend(done);
            }
            Out::Close => self.close = true,
        }
        Ok(())
    }

    /// Allocates the next stream id, registers the stream and encodes its SYN_STREAM; reports
    /// the stream (or why not) to the opener.
    fn open(
        &mut self,
        inner: &Inner,
        headers: Headers,
        fin: bool,
        done: oneshot::Sender<Result<OpenedStream, Error>>,
    ) -> Result<(), Error> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let registered = {
            let mut st = lock(&inner.state);
            let id = st.next_stream_id;
            if st.closed {
                Err(Error::Closed)
            } else if st.goaway_received.is_some() {
                Err(Error::GoneAway)
            } else if st.streams.len() >= inner.config.max_streams || id > frame::STREAM_ID_MASK {
                Err(Error::TooManyStreams)
            } else {
                st.next_stream_id = id.saturating_add(2);
                let cell =
                    StreamCell::new(id, StreamState { local_fin: fin, reply: Some(reply_tx), ..Default::default() });
                st.streams.insert(id, cell.clone());
                Ok(cell)
            }
        };
        let cell = match registered {
            Ok(cell) => cell,
            Err(e) => {
                let _ = done.send(Err(e));
                return Ok(());
            }
        };
        let block = match self.compressor.compress(&headers, inner.config.max_header_block) {
            Ok(block) => block,
            Err(e @ Error::TooLarge(_)) => {
                // Refused before compression: the context is intact, the id just goes unused.
                lock(&inner.state).streams.remove(&cell.id);
                let _ = done.send(Err(e));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let flags = if fin { FLAG_FIN } else { 0 };
        Frame::SynStream { stream_id: cell.id, associated_id: 0, priority: 0, slot: 0, flags, block: block.into() }
            .encode(&mut self.small)?;
        if let Err(Ok(opened)) = done.send(Ok(OpenedStream { cell, reply: reply_rx })) {
            // The opener went away: nobody will use the stream.
            let cell = opened.cell;
            if cell.mark_reset(rst::CANCEL, true) {
                Frame::RstStream { stream_id: cell.id, status: rst::CANCEL }.encode(&mut self.small)?;
            }
            inner.forget_if_finished(&cell);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Takes at most 5 bytes per write, vectored or not.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(5);
            self.0.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(5 - n);
                self.0.extend_from_slice(&b[..take]);
                n += take;
                if n == 5 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn segments_go_out_whole_and_in_order_across_short_writes() {
        let parts: [&[u8]; 5] = [b"head", b"", b"payload-one", b"x", b"tail-of-it"];
        let mut segments: Vec<bytes::Bytes> = parts.iter().map(|p| bytes::Bytes::copy_from_slice(p)).collect();
        let mut w = Trickle(Vec::new());
        write_segments(&mut w, &mut segments).await.unwrap();
        assert!(segments.is_empty());
        assert_eq!(w.0, parts.concat());
    }
}
