//! Client and server sessions talking over an in-memory duplex pipe.

use std::time::Duration;

use spdy::{Config, Incoming, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

fn h(pairs: &[(&str, &str)]) -> spdy::Headers {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// A connected client and server.
fn pair(config: Config) -> (Session, Incoming, Session, Incoming) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (c, ci) = Session::client(a, config.clone());
    let (s, si) = Session::server(b, config);
    (c, ci, s, si)
}

async fn timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

#[tokio::test]
async fn open_accept_exchange_data_both_ways_with_fin() {
    let (client, _ci, _server, mut si) = pair(Config::default());
    let opener = tokio::spawn(async move {
        let stream = client.open(h(&[("streamType", "stdin"), ("requestID", "0")]), false).await.unwrap();
        (client, stream)
    });
    let accepted = timeout(si.accept()).await.unwrap();
    assert_eq!(accepted.id(), 1);
    assert_eq!(accepted.headers(), &h(&[("streamtype", "stdin"), ("requestid", "0")]));
    assert_eq!(accepted.header("StreamType"), Some("stdin"));
    let (_client, opened) = timeout(opener).await.unwrap();
    assert_eq!(opened.id(), 1);
    assert!(opened.headers().is_empty());

    let (mut cr, mut cw) = opened.split();
    let (mut sr, mut sw) = accepted.split();
    cw.write_all(b"hello server").await.unwrap();
    cw.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(sr.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"hello server");

    sw.write_all(b"hello client").await.unwrap();
    sw.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(cr.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"hello client");
    // Writing after shutdown fails.
    assert!(sw.write_all(b"more").await.is_err());
}
