//! An upstream that closes idle keep-alive connections at random moments (issue #20): a
//! request written on a pooled connection just as the upstream closed it never reached the
//! upstream, and is sent once more on a fresh connection instead of becoming a 502.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_proxy::Proxy;
use truelayer_auth_testkit::emulator::token_cache;

mod support;
use support::start;

/// Requests the flaky upstream answered, and connections it closed while idle.
#[derive(Default)]
struct Counts {
    answered: AtomicUsize,
    closed_idle: AtomicUsize,
}

/// An HTTP/1.1 upstream that answers `200 ok` with keep-alive, and after about one answer in
/// four closes the connection 0 to 2 ms later without reading what may have arrived since.
async fn flaky_upstream(counts: Arc<Counts>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, counts.clone()));
        }
    });
    addr
}

async fn serve(mut stream: TcpStream, counts: Arc<Counts>) {
    let mut buffer = Vec::new();
    loop {
        // One request: a head, then its Content-Length's worth of body.
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..head_end + length);
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
        if stream.write_all(answer).await.is_err() {
            return;
        }
        counts.answered.fetch_add(1, Ordering::Relaxed);
        if fastrand::u8(..4) == 0 {
            tokio::time::sleep(Duration::from_micros(fastrand::u64(..2000))).await;
            counts.closed_idle.fetch_add(1, Ordering::Relaxed);
            return; // closed, whatever arrived meanwhile unread
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_connections_the_upstream_closed_while_idle_are_sent_again_not_502() {
    let emulator = Emulator::start().await.unwrap();
    let counts = Arc::new(Counts::default());
    let upstream = flaky_upstream(counts.clone()).await;
    let tokens = token_cache(&emulator);
    tokens.token().await.unwrap();
    let proxy = start(Proxy::builder(format!("http://{upstream}"), tokens)).await;
    let client = reqwest::Client::new();
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..16 {
        let (client, url, failures) = (client.clone(), proxy.url("/v3/payments"), failures.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..625 {
                // GETs, and POSTs that carry an Idempotency-Key (so may be sent again).
                let request = if n % 2 == 0 {
                    client.get(format!("{url}/p-{n}"))
                } else {
                    client
                        .post(&url)
                        .header("idempotency-key", format!("k-{task}-{n}"))
                        .body("{}")
                };
                match request.send().await {
                    Ok(response) if response.status() == 200 => {}
                    Ok(response) => {
                        eprintln!(
                            "{}: {}",
                            response.status(),
                            response.text().await.unwrap_or_default()
                        );
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("client error: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let closed = counts.closed_idle.load(Ordering::Relaxed);
    assert!(
        closed > 1000,
        "the upstream closed {closed} idle connections"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "client-visible errors in 10,000 requests ({closed} idle connections closed)"
    );
}
