//! Request bodies that arrive slowly, or not at all (issue #20): every read of a body has an
//! idle and a total deadline, answered 408, and the memory held by bodies in flight is
//! bounded as a whole. Real time: the clients are real sockets, so the deadlines are short.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use truelayer_auth_emulator::Emulator;
use truelayer_auth_proxy::{Proxy, ProxyBuilder};
use truelayer_auth_testkit::emulator::{signer, token_cache};

mod support;
use support::{Running, recorder, start};

const IDLE: Duration = Duration::from_millis(400);
const TOTAL: Duration = Duration::from_millis(1500);

/// A request head for `path` declaring a `length`-byte body, and the first bytes of it.
async fn upload(
    proxy: &Running,
    method: &str,
    path: &str,
    length: usize,
    first: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        proxy.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first).await.unwrap();
    stream
}

/// Everything the proxy sends until it closes the connection (or 10 s pass).
async fn answer(stream: &mut TcpStream) -> String {
    let mut text = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut text)).await;
    String::from_utf8_lossy(&text).into_owned()
}

fn paced<K>(builder: ProxyBuilder<K>) -> ProxyBuilder<K> {
    builder.body_idle_timeout(IDLE).body_timeout(TOTAL)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_the_signing_layer_collects_gets_408_and_its_connection_closes() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy = start(paced(
        Proxy::builder(upstream.url(""), token_cache(&emulator)).signer(signer(&emulator)),
    ))
    .await;
    // Longer than the replay limit, so streamed into the signing layer: one byte, then silence.
    let started = Instant::now();
    let mut stream = upload(&proxy, "POST", "/v3/payments", 100_000, b"{").await;
    let text = answer(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_body_too_slow"), "{text}");
    let took = started.elapsed();
    assert!(
        took >= IDLE && took < TOTAL,
        "cut off by the idle timeout: {took:?}"
    );
    assert_eq!(upstream.requests(), 0, "nothing was sent upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_unsigned_upload_streamed_upstream_gets_408() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let tokens = token_cache(&emulator);
    tokens.token().await.unwrap();
    let proxy = start(paced(Proxy::builder(upstream.url(""), tokens))).await;
    let started = Instant::now();
    let mut stream = upload(&proxy, "PUT", "/files/f-1", 100_000, &[b'x'; 1000]).await;
    let text = answer(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() >= IDLE, "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_is_cut_off_at_the_total_timeout() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy = start(paced(
        Proxy::builder(upstream.url(""), token_cache(&emulator)).signer(signer(&emulator)),
    ))
    .await;
    // A held body (under the replay limit), one byte every 200 ms: never idle for 400 ms.
    let started = Instant::now();
    let mut stream = upload(&proxy, "POST", "/v3/payments", 1000, b"{").await;
    let (mut read, mut write) = stream.split();
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let mut text = Vec::new();
    let reading = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut text));
    let (_, _) = tokio::join!(trickle, reading);
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let took = started.elapsed();
    assert!(
        took >= TOTAL,
        "cut off at the total timeout, not sooner: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_flight_share_one_memory_budget_charged_as_they_arrive() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let tokens = token_cache(&emulator);
    tokens.token().await.unwrap();
    let proxy = start(paced(
        Proxy::builder(upstream.url(""), tokens)
            .signer(signer(&emulator))
            .signing_limit(64 * 1024)
            .body_memory(128 * 1024),
    ))
    .await;
    let http = reqwest::Client::new();
    let post = |size: usize| {
        http.post(proxy.url("/v3/payments"))
            .body(vec![b' '; size])
            .send()
    };
    // Declaring a large body costs nothing until it arrives: twenty uploads that promise
    // 64 KiB each and send a byte leave room for others.
    let mut promised = Vec::new();
    for _ in 0..20 {
        promised.push(upload(&proxy, "POST", "/v3/payments", 64 * 1024, b"{").await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(post(4096).await.unwrap().status(), 200);
    drop(promised);
    // Two uploads that did send 63 KiB each hold 126 KiB of the 128...
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(
            upload(
                &proxy,
                "POST",
                "/v3/payments",
                64 * 1024,
                &[b' '; 63 * 1024],
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ... so a 4 KiB body finds no room: 503 at once, with a hint to retry.
    let busy = post(4096).await.unwrap();
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["retry-after"], "1");
    // A request without a body needs no room.
    let get = http
        .get(proxy.url("/v3/payments/p-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    // Once the stalled ones are cut off, their room is given back.
    for stream in &mut stalled {
        assert!(answer(stream).await.starts_with("HTTP/1.1 408"));
    }
    assert_eq!(post(4096).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_connection_cap_full_of_slow_clients_health_still_answers() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let tokens = token_cache(&emulator);
    tokens.token().await.unwrap();
    let proxy = start(
        Proxy::builder(upstream.url(""), tokens)
            .max_connections(4)
            .body_idle_timeout(Duration::from_secs(30))
            .body_timeout(Duration::from_secs(30)),
    )
    .await;
    // Four uploads that stall fill the cap.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(upload(&proxy, "PUT", "/files/f-1", 1000, b"x").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A readiness probe gets its answer on a connection beyond the cap...
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let health = tokio::time::timeout(
        Duration::from_secs(2),
        fresh().get(proxy.url("/.tlauth/healthz")).send(),
    )
    .await
    .expect("health answers while the cap is full")
    .unwrap();
    assert_eq!(health.status(), 200);
    // ... where anything else is told to come back, not left hanging.
    let other = tokio::time::timeout(
        Duration::from_secs(2),
        fresh().get(proxy.url("/v3/payments/p-1")).send(),
    )
    .await
    .expect("answered at once")
    .unwrap();
    assert_eq!(other.status(), 503);
    assert_eq!(other.headers()["retry-after"], "1");
    // Once the slow clients are gone, the cap has room again.
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served = fresh()
        .get(proxy.url("/v3/payments/p-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_timeouts_too_long_to_count_mean_no_limit_not_a_panic() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy = start(
        Proxy::builder(upstream.url(""), token_cache(&emulator))
            .signer(signer(&emulator))
            .body_idle_timeout(Duration::MAX)
            .body_timeout(Duration::MAX),
    )
    .await;
    let http = reqwest::Client::new();
    for size in [10, 100_000] {
        let response = http
            .post(proxy.url("/v3/payments"))
            .body(vec![b' '; size])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{size} bytes");
    }
}
