//! The reader task: reads the connection, decodes frames and dispatches them to streams.

use std::sync::{Arc, Weak};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;

use super::stream::{StreamCell, StreamState};
use super::{lock, Handle, Inner, Out, Stream, DATA_CHUNK, GOAWAY_GRACE};
use crate::error::{protocol, Error};
use crate::frame::{self, rst, DataChunk, Decoded, Decoder, Frame, Limits, FLAG_FIN, FLAG_UNIDIRECTIONAL};
use crate::headers::Decompressor;

/// Bytes asked of the connection per read.
const READ_SIZE: usize = 64 * 1024;

/// Runs the reader until the connection ends, fails or breaks the protocol (answered with
/// GOAWAY PROTOCOL_ERROR), or the session is closed; then ends the session.
pub(crate) async fn run<R: AsyncRead + Unpin>(inner: Arc<Inner>, handle: Weak<Handle>, r: R) {
    let mut closed = inner.closed.subscribe();
    let limits = Limits { max_control_frame: inner.config.max_control_frame, max_data_chunk: DATA_CHUNK };
    let mut reader = Reader {
        decoder: Decoder::new(limits),
        decompressor: Decompressor::new(inner.config.max_header_block),
        buf: BytesMut::new(),
        inner: inner.clone(),
        handle,
    };
    let res = tokio::select! {
        biased;
        _ = closed.wait_for(|c| *c) => Ok(()),
        r = reader.run(r) => r,
    };
    match res {
        Ok(()) => tracing::debug!(client = inner.client, "spdy connection ended"),
        Err(e) if e.is_protocol() => {
            tracing::debug!(client = inner.client, error = %e, "spdy peer broke the protocol; sending GOAWAY");
            let (tx, rx) = oneshot::channel();
            inner.queue(Out::GoAway { status: frame::goaway::PROTOCOL_ERROR, done: Some(tx) }, None);
            let _ = tokio::time::timeout(GOAWAY_GRACE, rx).await;
        }
        Err(e) => tracing::debug!(client = inner.client, error = %e, "spdy reader stops"),
    }
    inner.shutdown();
}

/// The reader's state.
struct Reader {
    inner: Arc<Inner>,
    /// For the handles of streams the peer opens (weak: the session ends with its last handle).
    handle: Weak<Handle>,
    decoder: Decoder,
    /// The incoming direction's one zlib context: sees every header block, in order.
    decompressor: Decompressor,
    buf: BytesMut,
}

impl Reader {
    /// Reads and dispatches until EOF or an error.
    async fn run<R: AsyncRead + Unpin>(&mut self, mut r: R) -> Result<(), Error> {
        loop {
            while let Some(d) = self.decoder.decode(&mut self.buf)? {
                self.dispatch(d).await?;
            }
            self.buf.reserve(READ_SIZE);
            if r.read_buf(&mut self.buf).await? == 0 {
                if !self.buf.is_empty() || !self.decoder.is_idle() {
                    tracing::debug!("spdy connection ends inside a frame");
                }
                return Ok(());
            }
        }
    }

    async fn dispatch(&mut self, d: Decoded) -> Result<(), Error> {
        let f = match d {
            Decoded::Data(chunk) => return self.on_data(chunk).await,
            Decoded::Control(f) => f,
        };
        tracing::trace!(frame = ?f, "spdy frame received");
        match f {
            Frame::SynStream { stream_id, flags, block, .. } => self.on_syn_stream(stream_id, flags, &block).await,
            Frame::SynReply { stream_id, flags, block } => self.on_syn_reply(stream_id, flags, &block).await,
            Frame::RstStream { stream_id, status } => {
                if let Some(cell) = self.stream(stream_id) {
                    cell.mark_reset(status, false);
                    self.inner.forget_if_finished(&cell);
                }
                Ok(())
            }
            Frame::Ping { id } => self.on_ping(id).await,
            Frame::GoAway { last_good_stream_id, status } => {
                self.on_goaway(last_good_stream_id, status);
                Ok(())
            }
            Frame::Headers { stream_id, flags, block } => self.on_headers(stream_id, flags, &block).await,
            Frame::Settings { .. } | Frame::WindowUpdate { .. } => Ok(()),
            Frame::Data { .. } => Err(protocol("decoder returned a whole DATA frame")),
        }
    }

    /// The open stream `id`, if any.
    fn stream(&self, id: u32) -> Option<Arc<StreamCell>> {
        lock(&self.inner.state).streams.get(&id).cloned()
    }

    async fn rst(&self, id: u32, status: u32) -> Result<(), Error> {
        tracing::debug!(id, status = rst::name(status), "spdy: resetting stream");
        self.inner.queue_control(Out::Rst { id, status }).await
    }

    async fn on_syn_stream(&mut self, id: u32, flags: u8, block: &[u8]) -> Result<(), Error> {
        // Decompressed first whatever happens to the stream: the context must see every block.
        let headers = self.decompressor.decode(block)?;
        if !self.inner.is_peer_id(id) {
            return Err(protocol(format!("SYN_STREAM with stream id {id}, of the wrong parity")));
        }
        enum Verdict {
            Accept(Arc<StreamCell>, tokio::sync::mpsc::UnboundedSender<Stream>),
            Refuse,
            Reject(u32),
            Duplicate(Option<Arc<StreamCell>>),
        }
        let verdict = {
            let mut st = lock(&self.inner.state);
            if id < st.last_peer_stream_id {
                return Err(protocol(format!("SYN_STREAM id {id} after {}", st.last_peer_stream_id)));
            }
            if id == st.last_peer_stream_id || st.streams.contains_key(&id) {
                Verdict::Duplicate(st.streams.get(&id).cloned())
            } else {
                st.last_peer_stream_id = id;
                if let Some(status) = self.inner.config.check.and_then(|check| check(&headers)) {
                    Verdict::Reject(status)
                } else {
                    match st.incoming.clone() {
                        Some(tx)
                            if !tx.is_closed()
                                && !st.goaway_sent
                                && st.streams.len() < self.inner.config.max_streams =>
                        {
                            let cell = StreamCell::new(
                                id,
                                StreamState {
                                    remote_fin: flags & FLAG_FIN != 0,
                                    local_fin: flags & FLAG_UNIDIRECTIONAL != 0,
                                    ..Default::default()
                                },
                            );
                            st.streams.insert(id, cell.clone());
                            Verdict::Accept(cell, tx)
                        }
                        _ => Verdict::Refuse,
                    }
                }
            }
        };
        match verdict {
            Verdict::Duplicate(cell) => {
                if let Some(cell) = cell {
                    cell.mark_reset(rst::PROTOCOL_ERROR, true);
                    self.inner.forget_if_finished(&cell);
                }
                self.rst(id, rst::PROTOCOL_ERROR).await
            }
            Verdict::Refuse => self.rst(id, rst::REFUSED_STREAM).await,
            Verdict::Reject(status) => self.rst(id, status).await,
            Verdict::Accept(cell, tx) => {
                tracing::debug!(id, ?headers, "spdy stream opened by peer");
                if flags & FLAG_UNIDIRECTIONAL == 0 {
                    self.inner.queue_control(Out::Reply { id, headers: Vec::new() }).await?;
                }
                let Some(handle) = self.handle.upgrade() else {
                    cell.mark_gone();
                    return Err(Error::Closed);
                };
                // If accept() is gone, the stream comes back and its drop resets it.
                let _ = tx.send(Stream::new(handle, cell, headers));
                Ok(())
            }
        }
    }

    async fn on_syn_reply(&mut self, id: u32, flags: u8, block: &[u8]) -> Result<(), Error> {
        let headers = self.decompressor.decode(block)?;
        let Some(cell) = self.stream(id) else {
            return self.rst(id, rst::INVALID_STREAM).await;
        };
        let in_use = {
            let mut st = cell.lock();
            if st.reset.is_some() || st.gone {
                false
            } else if let Some(reply) = st.reply.take() {
                if flags & FLAG_FIN != 0 {
                    st.remote_fin = true;
                }
                let _ = reply.send(Ok(headers));
                false
            } else {
                true
            }
        };
        if in_use {
            cell.mark_reset(rst::STREAM_IN_USE, true);
            self.rst(id, rst::STREAM_IN_USE).await?;
        }
        self.inner.forget_if_finished(&cell);
        Ok(())
    }

    async fn on_headers(&mut self, id: u32, flags: u8, block: &[u8]) -> Result<(), Error> {
        let headers = self.decompressor.decode(block)?;
        tracing::debug!(id, ?headers, "spdy HEADERS ignored");
        let Some(cell) = self.stream(id) else {
            return self.rst(id, rst::INVALID_STREAM).await;
        };
        if flags & FLAG_FIN != 0 {
            let mut st = cell.lock();
            st.remote_fin = true;
            st.wake_reader();
        }
        self.inner.forget_if_finished(&cell);
        Ok(())
    }

    async fn on_ping(&mut self, id: u32) -> Result<(), Error> {
        if self.inner.is_peer_id(id) {
            return self.inner.queue_control(Out::Ping { id }).await;
        }
        if let Some(tx) = lock(&self.inner.state).pings.remove(&id) {
            let _ = tx.send(());
        }
        Ok(())
    }

    /// No new streams of ours; those above `last_good` that wait for their reply were never
    /// processed and fail with [`Error::GoneAway`].
    fn on_goaway(&mut self, last_good: u32, status: u32) {
        tracing::debug!(last_good, status, "spdy GOAWAY received");
        let unprocessed: Vec<Arc<StreamCell>> = {
            let mut st = lock(&self.inner.state);
            st.goaway_received = Some(last_good);
            st.streams.values().filter(|c| c.id > last_good && !self.inner.is_peer_id(c.id)).cloned().collect()
        };
        for cell in unprocessed {
            let refused = {
                let mut st = cell.lock();
                match st.reply.take() {
                    Some(reply) if st.reset.is_none() && !st.gone => {
                        let _ = reply.send(Err(Error::GoneAway));
                        st.reset = Some(rst::REFUSED_STREAM);
                        st.wake_reader();
                        true
                    }
                    reply => {
                        st.reply = reply;
                        false
                    }
                }
            };
            if refused {
                self.inner.forget_if_finished(&cell);
            }
        }
    }

    async fn on_data(&mut self, chunk: DataChunk) -> Result<(), Error> {
        let id = chunk.stream_id;
        let Some(cell) = self.stream(id) else {
            if chunk.first {
                return self.rst(id, rst::INVALID_STREAM).await;
            }
            return Ok(());
        };
        // Back-pressure: wait while the stream's unread data is at its limit.
        let limit = self.inner.config.stream_buffer;
        loop {
            {
                let st = cell.lock();
                if chunk.data.is_empty()
                    || st.buf.len() < limit
                    || st.recv_dropped
                    || st.remote_fin
                    || st.reset.is_some()
                    || st.gone
                {
                    break;
                }
            }
            cell.space.notified().await;
        }
        let after_fin = {
            let mut st = cell.lock();
            if st.reset.is_some() || st.gone {
                return Ok(());
            }
            if st.remote_fin {
                chunk.first
            } else {
                if !st.recv_dropped {
                    st.buf.extend_from_slice(&chunk.data);
                }
                if chunk.fin() {
                    st.remote_fin = true;
                }
                st.wake_reader();
                false
            }
        };
        if after_fin {
            cell.mark_reset(rst::STREAM_ALREADY_CLOSED, true);
            self.rst(id, rst::STREAM_ALREADY_CLOSED).await?;
        }
        self.inner.forget_if_finished(&cell);
        Ok(())
    }
}
