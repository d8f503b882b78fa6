//! Interop harness against moby/spdystream over TCP (see spdy/interop/README.md).
//!
//! `interop server ADDR`: echo server; each stream's data comes back after a `streamtype:`
//! prefix, then FIN. `interop client ADDR`: the same exchanges as the Go client, against the
//! Go echo server.

use std::time::Duration;

use spdy::{Config, Session, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

/// Reads a stream to its end and echoes it back with the prefix.
async fn echo(stream: Stream) {
    let prefix = format!("{}:", stream.header("streamtype").unwrap_or(""));
    let (mut r, mut w) = stream.split();
    let mut data = Vec::new();
    if r.read_to_end(&mut data).await.is_err() {
        return; // reset
    }
    let _ = w.write_all(prefix.as_bytes()).await;
    let _ = w.write_all(&data).await;
    let _ = w.shutdown().await;
}

async fn exchange(session: &Session, kind: &str, n: usize, seed: usize) {
    let headers = vec![("streamType".to_string(), kind.to_string()), ("port".to_string(), "8080".to_string())];
    let stream = session.open(headers, false).await.expect("open");
    let (mut r, mut w) = stream.split();
    let data = pattern(n, seed);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.expect("write");
        w.shutdown().await.expect("shutdown");
        w
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.expect("read");
    let mut want = format!("{kind}:").into_bytes();
    want.extend(data);
    assert!(got == want, "stream {kind}: got {} bytes, want {}", got.len(), want.len());
    writer.await.expect("writer");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, addr) = (args[1].as_str(), args[2].as_str());
    match mode {
        "server" => {
            let listener = TcpListener::bind(addr).await.expect("bind");
            println!("listening");
            let (tcp, _) = listener.accept().await.expect("accept");
            let (session, mut incoming) = Session::server(tcp, Config::default());
            let mut n = 0;
            while let Some(stream) = incoming.accept().await {
                n += 1;
                tokio::spawn(echo(stream));
            }
            session.closed().await;
            println!("rust server: OK ({n} streams)");
        }
        "client" => {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let (session, _incoming) = Session::client(tcp, Config::default());
            exchange(&session, "error", 0, 1).await;
            exchange(&session, "stdout", 10, 2).await;
            exchange(&session, "stdin", 4 << 20, 3).await;
            session.ping().await.expect("ping");
            let mut tasks = Vec::new();
            for i in 0..50 {
                let s = session.clone();
                tasks.push(tokio::spawn(async move { exchange(&s, &format!("s{i}"), 100_000 + i, i).await }));
            }
            for t in tasks {
                t.await.expect("exchange");
            }
            let stream = session.open(vec![("streamtype".into(), "reset".into())], false).await.expect("open");
            stream.reset(spdy::frame::rst::CANCEL);
            session.ping().await.expect("ping");
            session.goaway().await.expect("goaway");
            tokio::time::sleep(Duration::from_millis(100)).await;
            session.close();
            println!("rust client: OK");
        }
        _ => panic!("usage: interop server|client ADDR"),
    }
}
