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
