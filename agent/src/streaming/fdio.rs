//! The descriptors a shim hands over for a session, as tokio reads and writes them: an exec's
//! own pipes and pty master (corrald's alone, so made non-blocking), a terminal to resize, and
//! an attach's stdin, whose descriptor the shim shares and which is therefore written from a
//! thread of its own in blocking mode.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::PollSender;

use crate::sys;

/// A pipe end or pty master that only corrald uses. Clones share the descriptor (a pty master
/// is read by one task and written by another).
#[derive(Clone)]
pub struct FdStream {
    fd: Arc<AsyncFd<File>>,
}

impl FdStream {
    pub fn new(fd: OwnedFd) -> io::Result<FdStream> {
        sys::set_nonblocking(fd.as_fd())?;
        Ok(FdStream { fd: Arc::new(sys::async_file(fd)?) })
    }
}

impl AsyncRead for FdStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| f.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A pty master reads EIO once no process holds the terminal: its end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(data)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Nothing to do: the descriptor closes when the last clone is dropped.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A terminal (pty master) to resize.
pub struct Terminal {
    fd: OwnedFd,
}

impl Terminal {
    pub fn new(fd: OwnedFd) -> Terminal {
        Terminal { fd }
    }

    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        sys::set_window_size(self.fd.as_fd(), width, height)
    }
}

/// Chunks queued for a [`SharedWriter`]'s thread.
const QUEUE: usize = 8;
/// How long the thread waits for room before it looks whether the writer was dropped.
const POLL_MS: i32 = 500;
/// Bytes written at once after poll said there is room: a pipe takes PIPE_BUF then without
/// blocking.
const STEP: usize = 4096;

/// Writes to a descriptor the shim shares (its blocking mode must stay), from a thread of its
/// own; dropping the writer ends the thread and closes the descriptor, also while the reader
/// on the other side does not read.
pub struct SharedWriter {
    tx: PollSender<Bytes>,
}

impl SharedWriter {
    pub fn new(fd: OwnedFd) -> io::Result<SharedWriter> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        std::thread::Builder::new().name("attach-stdin".into()).stack_size(64 * 1024).spawn(move || {
            let file = File::from(fd);
            'chunks: while let Some(chunk) = rx.blocking_recv() {
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    match sys::poll_one(file.as_fd(), libc::POLLOUT, POLL_MS) {
                        Ok(true) => {}
                        Ok(false) if rx.is_closed() => break 'chunks,
                        Ok(false) => continue,
                        Err(_) => break 'chunks,
                    }
                    match (&file).write(&rest[..rest.len().min(STEP)]) {
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break 'chunks,
                    }
                }
            }
        })?;
        Ok(SharedWriter { tx: PollSender::new(tx) })
    }
}

impl AsyncWrite for SharedWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the container's stdin is closed");
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
        self.tx.send_item(Bytes::copy_from_slice(data)).map_err(|_| closed())?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn pipes_read_and_write_without_blocking() {
        let (r, w) = std::io::pipe().unwrap();
        let mut w = FdStream::new(OwnedFd::from(w)).unwrap();
        let mut r = FdStream::new(OwnedFd::from(r)).unwrap();
        let writer = tokio::spawn(async move {
            w.write_all(&vec![7u8; 1 << 20]).await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), 1 << 20);
    }

    #[tokio::test]
    async fn a_shared_writer_lets_go_of_a_full_pipe_when_dropped() {
        let (r, w) = std::io::pipe().unwrap();
        let mut sw = SharedWriter::new(OwnedFd::from(w)).unwrap();
        sw.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        (&r).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // Fill the pipe (nobody reads), then drop: the thread must give up and close.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(300), sw.write_all(&vec![0u8; 1 << 20])).await;
        drop(sw);
        let started = std::time::Instant::now();
        let mut sink = Vec::new();
        (&r).read_to_end(&mut sink).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
