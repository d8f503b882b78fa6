//! Exec and attach sessions, whatever the transport: the client's streams (stdin, stdout,
//! stderr, resize, error) on one side, a command or a container's stdio on the other. The end of
//! a session follows kubelet's order: input stops, output is drained and closed, then the final
//! status goes on the error stream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::protocol::{status_message, Outcome, Version};
use super::resize::ResizeDecoder;
use super::{AttachParams, Backend, BoxFuture, ExecParams, Reader, Terminal, Writer};

/// How long output is still copied after the command exited: a background child that holds
/// the pipes or the terminal must not keep the session open.
const DRAIN: Duration = Duration::from_secs(2);
/// Copy buffer per stream.
const BUF: usize = 32 * 1024;

/// The client's side of a remote command session.
pub struct Channels {
    pub version: Version,
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    pub stderr: Option<Writer>,
    pub resize: Option<Reader>,
    pub error: Option<Writer>,
    /// Resolves when the client went away.
    pub gone: BoxFuture<()>,
}

/// Copies `from` to `to` until EOF, then closes `to`.
async fn pump(mut from: Reader, mut to: Writer) {
    let mut buf = vec![0u8; BUF];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Applies the client's resize events to `terminal`.
async fn resizes(mut from: Reader, terminal: Terminal) {
    let mut decoder = ResizeDecoder::default();
    let mut buf = [0u8; 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match decoder.push(&buf[..n]) {
            Ok(sizes) => {
                for (w, h) in sizes {
                    if let Err(e) = terminal.resize(w, h) {
                        debug!(error = %e, "resizing the terminal");
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "ignoring the rest of the resize stream");
                return;
            }
        }
    }
}

/// Writes the final status and closes the streams still open.
async fn finish(version: Version, outcome: Outcome, cmd: &[String], error: Option<Writer>, rest: Vec<Writer>) {
    for mut w in rest {
        let _ = w.shutdown().await;
    }
    if let Some(mut e) = error {
        let msg = status_message(version, &outcome, cmd);
        if !msg.is_empty() {
            let _ = e.write_all(&msg).await;
        }
        let _ = e.shutdown().await;
    }
}

fn abort_all(tasks: &[JoinHandle<()>]) {
    for t in tasks {
        t.abort();
    }
}

/// Waits for `tasks` at most `limit`, then aborts those still running.
async fn drain(tasks: Vec<JoinHandle<()>>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout_at(deadline, t).await.is_err() {
            abort.abort();
        }
    }
}

/// Runs an exec session to its end (or until the client went away, which ends the command).
pub async fn exec(backend: &dyn Backend, p: &ExecParams, ch: Channels) {
    let Channels { version, stdin, stdout, stderr, resize, error, mut gone } = ch;
    let process = match backend.exec(p).await {
        Ok(process) => process,
        Err(e) => {
            let outcome = Outcome::Failed(format!("error executing command in container: {e}"));
            finish(version, outcome, &p.cmd, error, stdout.into_iter().chain(stderr).collect()).await;
            return;
        }
    };
    let mut inputs = Vec::new();
    if let (Some(mut from), Some(mut to)) = (stdin, process.stdin) {
        let tty = p.tty;
        inputs.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut to).await;
            // Without a tty the end of the client's stdin is the command's (its pipe closes
            // with `to`); with one it only stops the input, as containerd does.
            if !tty {
                let _ = to.shutdown().await;
            }
        }));
    }
    if let (Some(from), Some(terminal)) = (resize, process.terminal) {
        inputs.push(tokio::spawn(resizes(from, terminal)));
    }
    let mut outputs = Vec::new();
    for (from, to) in [(process.stdout, stdout), (process.stderr, stderr)] {
        match (from, to) {
            (Some(from), Some(to)) => outputs.push(tokio::spawn(pump(from, to))),
            (None, Some(mut to)) => {
                let _ = to.shutdown().await;
            }
            // Output nobody asked for is read anyway: a full pipe or terminal stops the command.
            (Some(from), None) => outputs.push(tokio::spawn(pump(from, Box::new(tokio::io::sink())))),
            (None, None) => {}
        }
    }
    let mut exit = process.exit;
    let code = tokio::select! {
        code = &mut exit => code,
        () = &mut gone => {
            debug!(container = %p.container_id, "exec client went away; ending the command");
            abort_all(&inputs);
            abort_all(&outputs);
            return;
        }
    };
    drop(exit);
    tokio::select! {
        () = drain(outputs, DRAIN) => {}
        () = &mut gone => {}
    }
    abort_all(&inputs);
    let outcome = match code {
        Ok(0) => Outcome::Success,
        Ok(code) => Outcome::Exited(code),
        Err(e) => Outcome::Failed(format!("error executing command in container: {e}")),
    };
    finish(version, outcome, &p.cmd, error, Vec::new()).await;
}

/// Writes one chunk of the container's output to the client stream it belongs to.
async fn write_output(out: &mut Option<Writer>, data: &[u8]) {
    if let Some(w) = out {
        if w.write_all(data).await.is_err() {
            *out = None;
        }
    }
}

/// Runs an attach session until the container's output ends, the client detaches (its stdin
/// ended, unless that closes the container's stdin) or goes away.
pub async fn attach(backend: &dyn Backend, p: &AttachParams, ch: Channels) {
    let Channels { version, stdin, mut stdout, mut stderr, resize, error, mut gone } = ch;
    let attached = match backend.attach(p).await {
        Ok(a) => a,
        Err(e) => {
            let outcome = Outcome::Failed(format!("error attaching to container: {e}"));
            finish(version, outcome, &[], error, stdout.into_iter().chain(stderr).collect()).await;
            return;
        }
    };
    let stdin_once = attached.stdin_once;
    let mut output = attached.output;
    let mut resizer = None;
    if let (Some(from), Some(terminal)) = (resize, attached.terminal) {
        resizer = Some(tokio::spawn(resizes(from, terminal)));
    }
    let had_stdin = attached.stdin.is_some() && stdin.is_some();
    // Ends when the client's stdin ended: true when the session goes on after it.
    let mut input: BoxFuture<bool> = match (stdin, attached.stdin) {
        (Some(mut from), Some(mut to)) => {
            let closes = stdin_once && !p.tty;
            Box::pin(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                drop(to);
                closes
            })
        }
        _ => Box::pin(std::future::pending()),
    };
    let mut input_done = false;
    loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Some((2, data)) if !p.tty => write_output(&mut stderr, &data).await,
                Some((_, data)) => write_output(&mut stdout, &data).await,
                None => break,
            },
            goes_on = &mut input, if !input_done => {
                input_done = true;
                if goes_on {
                    if let Err(e) = backend.close_stdin(&p.container_id).await {
                        warn!(container = %p.container_id, error = %e, "closing stdin after the attach (stdin_once)");
                    }
                } else {
                    break;
                }
            }
            () = &mut gone => break,
        }
    }
    drop(input);
    if let Some(r) = resizer {
        r.abort();
    }
    if stdin_once && had_stdin {
        if let Err(e) = backend.close_stdin(&p.container_id).await {
            debug!(container = %p.container_id, error = %e, "closing stdin after the attach (stdin_once)");
        }
    }
    finish(version, Outcome::Success, &[], error, stdout.into_iter().chain(stderr).collect()).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::io::{duplex, AsyncReadExt, DuplexStream};
    use tokio::sync::oneshot;

    use super::*;
    use crate::streaming::{Attached, Process};

    /// A command whose ends the test holds: what it reads from stdin, what it writes, when it exits.
    #[derive(Default)]
    struct Fake {
        /// The command's side of stdin, readable by the test.
        stdin: Mutex<Option<DuplexStream>>,
        /// Output the command writes, then EOF.
        output: Vec<u8>,
        exit: Mutex<Option<oneshot::Receiver<i32>>>,
        /// The exit future was dropped (the session ended the command).
        dropped: Arc<AtomicUsize>,
        closed_stdin: AtomicUsize,
        stdin_once: bool,
        output_open: Mutex<Option<tokio::sync::mpsc::Sender<(u32, bytes::Bytes)>>>,
    }

    struct DropFlag(Arc<AtomicUsize>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[async_trait::async_trait]
    impl Backend for Fake {
        async fn exec(&self, _: &ExecParams) -> Result<Process, String> {
            let (ours, theirs) = duplex(1024);
            *self.stdin.lock().unwrap() = Some(theirs);
            let rx = self.exit.lock().unwrap().take().ok_or("exec twice")?;
            let flag = DropFlag(self.dropped.clone());
            Ok(Process {
                stdin: Some(Box::new(ours)),
                stdout: Some(Box::new(std::io::Cursor::new(self.output.clone()))),
                stderr: None,
                terminal: None,
                exit: Box::pin(async move {
                    let _flag = flag;
                    rx.await.map_err(|_| "gone".to_string())
                }),
            })
        }
        async fn attach(&self, _: &AttachParams) -> Result<Attached, String> {
            let (ours, theirs) = duplex(1024);
            *self.stdin.lock().unwrap() = Some(theirs);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send((1, bytes::Bytes::from(self.output.clone()))).await.map_err(|e| e.to_string())?;
            // The output stays open as long as the fake "container" runs.
            *self.output_open.lock().unwrap() = Some(tx);
            Ok(Attached { stdin: Some(Box::new(ours)), output: rx, terminal: None, stdin_once: self.stdin_once })
        }
        async fn close_stdin(&self, _: &str) -> Result<(), String> {
            self.closed_stdin.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn dial(&self, _: &str, _: u16) -> Result<tokio::net::TcpStream, String> {
            Err("no network here".into())
        }
    }

    struct Client {
        stdin: DuplexStream,
        stdout: DuplexStream,
        error: DuplexStream,
        gone: Option<oneshot::Sender<()>>,
    }

    fn channels(version: Version) -> (Channels, Client) {
        let (stdin_c, stdin_s) = duplex(1024);
        let (stdout_s, stdout_c) = duplex(1024);
        let (error_s, error_c) = duplex(1024);
        let (gone_tx, gone_rx) = oneshot::channel::<()>();
        let ch = Channels {
            version,
            stdin: Some(Box::new(stdin_s)),
            stdout: Some(Box::new(stdout_s)),
            stderr: None,
            resize: None,
            error: Some(Box::new(error_s)),
            gone: Box::pin(async move {
                let _ = gone_rx.await;
            }),
        };
        (ch, Client { stdin: stdin_c, stdout: stdout_c, error: error_c, gone: Some(gone_tx) })
    }

    fn exec_params() -> ExecParams {
        ExecParams {
            container_id: "c".into(),
            cmd: vec!["cat".into()],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: false,
        }
    }

    #[tokio::test]
    async fn exec_copies_both_ways_and_reports_the_exit_code() {
        let (exit_tx, exit_rx) = oneshot::channel();
        let fake = Arc::new(Fake { output: b"out".to_vec(), exit: Mutex::new(Some(exit_rx)), ..Fake::default() });
        let (ch, mut client) = channels(Version::V4);
        let backend = fake.clone();
        let session = tokio::spawn(async move { exec(backend.as_ref(), &exec_params(), ch).await });
        client.stdin.write_all(b"in").await.unwrap();
        client.stdin.shutdown().await.unwrap();
        let mut out = Vec::new();
        client.stdout.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"out");
        // Without a tty the client's EOF is the command's.
        let mut theirs = fake.stdin.lock().unwrap().take().unwrap();
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"in");
        exit_tx.send(3).unwrap();
        let mut status = Vec::new();
        client.error.read_to_end(&mut status).await.unwrap();
        session.await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(v["details"]["causes"][0]["message"], "3");
    }

    #[tokio::test]
    async fn a_client_that_goes_away_ends_the_command() {
        let (_exit_tx, exit_rx) = oneshot::channel();
        let fake = Arc::new(Fake { exit: Mutex::new(Some(exit_rx)), ..Fake::default() });
        let (ch, mut client) = channels(Version::V4);
        let backend = fake.clone();
        let session = tokio::spawn(async move { exec(backend.as_ref(), &exec_params(), ch).await });
        tokio::task::yield_now().await;
        client.gone.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), session).await.unwrap().unwrap();
        assert_eq!(fake.dropped.load(Ordering::SeqCst), 1, "the command's session was not dropped");
        let mut status = Vec::new();
        let _ = client.error.read_to_end(&mut status).await;
        assert!(status.is_empty(), "no status for a client that is gone");
    }

    #[tokio::test]
    async fn attach_with_stdin_once_closes_the_container_stdin_at_the_clients_eof() {
        let fake = Arc::new(Fake { output: b"hello".to_vec(), stdin_once: true, ..Fake::default() });
        let (ch, mut client) = channels(Version::V4);
        let p = AttachParams { container_id: "c".into(), tty: false, stdin: true, stdout: true, stderr: false };
        let backend = fake.clone();
        let session = tokio::spawn(async move { attach(backend.as_ref(), &p, ch).await });
        let mut buf = [0u8; 5];
        client.stdout.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        client.stdin.shutdown().await.unwrap();
        for _ in 0..100 {
            if fake.closed_stdin.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(fake.closed_stdin.load(Ordering::SeqCst), 1);
        // The session goes on (the container may still write) until the client leaves.
        assert!(!session.is_finished());
        client.gone.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), session).await.unwrap().unwrap();
        let mut status = Vec::new();
        client.error.read_to_end(&mut status).await.unwrap();
        assert_eq!(status, br#"{"status":"Success"}"#);
    }
}
