//! The proxy in-process, in front of the emulator and of a recording upstream.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use truelayer_auth::{ClientCredentials, TokenCache};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_proxy::Proxy;
use truelayer_auth_testkit::emulator::{environment, signer, token_cache};
use truelayer_auth_testkit::recording::{Answer, RecordingServer};

mod support;
use support::{recorder, recorder_with, start};

/// The upstream answers the next request 401, with a large body: the proxy must read it
/// before replaying on this connection.
fn unauthorized_next(upstream: &RecordingServer) {
    upstream.answer_next([Answer::status(401).body("x".repeat(20_000))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_path_query_and_headers_are_forwarded_faithfully() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy = start(Proxy::builder(
        upstream.url("/base"),
        token_cache(&emulator),
    ))
    .await;
    let response = reqwest::Client::new()
        .patch(proxy.url("/v3/mandates/m-1?limit=5&cursor=a%20b"))
        .header("idempotency-key", "idem-1")
        .header("x-custom", "one")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must not pass")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body("{\"x\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-upstream"], "kept");
    assert_eq!(response.headers()["via"], "1.1 tlauth");
    assert!(response.headers().get("x-upstream-hop").is_none());
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "PATCH");
    assert_eq!(echo["uri"], "/base/v3/mandates/m-1?limit=5&cursor=a%20b");
    assert_eq!(echo["bytes"], 7);
    let h = &echo["headers"];
    assert_eq!(h["idempotency-key"], json!(["idem-1"]));
    assert_eq!(h["x-custom"], json!(["one"]));
    assert_eq!(h["via"], json!(["1.1 tlauth"]));
    assert!(
        h.get("x-hop").is_none(),
        "headers named in Connection are dropped: {h}"
    );
    let auth = h["authorization"].as_array().unwrap();
    assert_eq!(auth.len(), 1);
    let bearer = auth[0].as_str().unwrap().strip_prefix("Bearer ").unwrap();
    emulator
        .verify_token(bearer)
        .expect("a valid token from the emulator");
    proxy.stop.shutdown();
    proxy.served.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_posts_create_payments_and_a_replay_keeps_its_idempotency_key() {
    let emulator = Emulator::start().await.unwrap();
    let proxy =
        start(Proxy::builder(emulator.url(), token_cache(&emulator)).signer(signer(&emulator)))
            .await;
    let http = reqwest::Client::new();
    let pay = |body: &'static str| {
        http.post(proxy.url("/v3/payments"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(pay("{}").await.unwrap().status(), 201);
    // The token is revoked: the upstream answers 401, the proxy replays with a fresh token,
    // the same Idempotency-Key and a valid signature.
    emulator.revoke_all_tokens();
    let replayed = pay(r#"{"amount_in_minor":5}"#).await.unwrap();
    assert_eq!(replayed.status(), 201);
    let stats = emulator.stats();
    assert_eq!((stats.api_rejections, stats.signature_rejections), (1, 0));
    assert_eq!(stats.payments_created, 2);
    // A caller's own key is kept: the same request twice is one payment.
    let twice = || {
        http.post(proxy.url("/v3/payments"))
            .header("idempotency-key", "caller-key-1")
            .body("{}")
            .send()
    };
    let first: Value = twice().await.unwrap().json().await.unwrap();
    let second: Value = twice().await.unwrap().json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(emulator.stats().payments_created, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_failure_is_a_502_naming_the_cause_and_readiness_is_503() {
    let emulator = Emulator::start().await.unwrap();
    let marker = "MARKER-proxy-secret-77";
    let wrong = ClientCredentials::new(emulator.client_id(), marker.into()).unwrap();
    let tokens = TokenCache::builder(environment(&emulator), wrong)
        .build()
        .unwrap();
    let proxy = start(Proxy::builder(emulator.url(), tokens)).await;
    let response = reqwest::get(proxy.url("/v3/payments/p-1")).await.unwrap();
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"], "token_unavailable");
    assert!(
        body["message"].as_str().unwrap().contains("invalid_client"),
        "{text}"
    );
    assert!(!text.contains(marker));
    assert_eq!(
        emulator.stats().api_requests,
        0,
        "nothing was sent without a token"
    );
    let health = reqwest::get(proxy.url("/.tlauth/healthz")).await.unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["ready"], false);
    assert!(!health.to_string().contains(marker));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_lives_off_the_proxied_paths_and_upstream_healthz_stays_reachable() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let tokens = token_cache(&emulator);
    tokens.token().await.unwrap();
    let proxy = start(Proxy::builder(upstream.url(""), tokens).admin_path("/_proxy")).await;
    let health = reqwest::get(proxy.url("/_proxy/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(
        (health["status"].as_str(), health["ready"].as_bool()),
        (Some("ok"), Some(true))
    );
    assert!(
        !health.to_string().contains("eyJ"),
        "health never shows the token"
    );
    let upstream_health: Value = reqwest::get(proxy.url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        upstream_health["uri"], "/healthz",
        "forwarded to the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_hosts_and_cross_site_browsers_are_refused() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy = start(
        Proxy::builder(upstream.url(""), token_cache(&emulator))
            .allow_origin("https://console.example"),
    )
    .await;
    let http = reqwest::Client::new();
    // A page on evil.example rebound its name to 127.0.0.1: its requests carry its Host.
    let rebound = http
        .get(proxy.url("/v3/payments/p-1"))
        .header("host", format!("evil.example:{}", proxy.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let refusal = rebound.json::<Value>().await.unwrap();
    assert_eq!(refusal["error"], "host_not_allowed");
    // The answer names the flag that allows a host that is yours.
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("--allow-host"),
        "{refusal}"
    );
    let cross_site = http
        .post(proxy.url("/v3/payments"))
        .header("origin", "https://evil.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let refusal = cross_site.json::<Value>().await.unwrap();
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("--allow-origin"),
        "{refusal}"
    );
    let fetch_site = http
        .get(proxy.url("/v3/payments/p-1"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(fetch_site.status(), 403);
    assert_eq!(upstream.requests(), 0, "nothing was forwarded");
    // Its own host and an allowed origin pass.
    let ok = http
        .get(proxy.url("/v3/payments/p-1"))
        .header("host", format!("localhost:{}", proxy.addr.port()))
        .header("origin", "https://console.example")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_shed_and_others_keep_being_served() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy = start(
        Proxy::builder(upstream.url(""), token_cache(&emulator))
            .header_read_timeout(Duration::from_millis(800))
            .max_connections(256),
    )
    .await;
    // 100 slowloris connections: a request line, then a header byte a little at a time.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x")
            .await
            .unwrap();
        slow.push(stream);
    }
    let dripping = tokio::spawn(async move {
        let mut closed = 0;
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            closed = 0;
            for stream in &mut slow {
                if stream.write_all(b"x").await.is_err() {
                    closed += 1;
                    continue;
                }
                let mut byte = [0u8; 1];
                let read =
                    tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await;
                if let Ok(Ok(0) | Err(_)) = read {
                    closed += 1;
                }
            }
        }
        closed
    });
    // Meanwhile, ordinary clients are served at once.
    for _ in 0..10 {
        let started = std::time::Instant::now();
        let response = reqwest::get(proxy.url("/v3/payments/p-1")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    let closed = dripping.await.unwrap();
    assert_eq!(
        closed, 100,
        "every slow connection was shed after the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_body_is_read_before_the_replay_so_the_connection_is_reused() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy = start(Proxy::builder(upstream.url(""), token_cache(&emulator))).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(proxy.url("/warm"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let before = upstream.connections();
    unauthorized_next(&upstream);
    let response = client.get(proxy.url("/replayed")).send().await.unwrap();
    assert_eq!(response.status(), 200, "replayed after the 401");
    assert_eq!(upstream.requests(), 3);
    assert_eq!(
        upstream.connections(),
        before,
        "the 401 and the replay went over the pooled connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chunked_bodies_are_replayed_and_large_ones_streamed() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy =
        start(Proxy::builder(upstream.url(""), token_cache(&emulator)).replay_limit(1024)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<futures_stream::Chunks>>();
    let chunked = |chunks: usize| {
        Request::post(proxy.url("/upload"))
            .body(StreamBody::new(futures_stream::Chunks(chunks)))
            .unwrap()
    };
    unauthorized_next(&upstream);
    let small = client.request(chunked(3)).await.unwrap();
    assert_eq!(
        small.status(),
        200,
        "a short chunked body was held and replayed"
    );
    let echo: Value =
        serde_json::from_slice(&small.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["bytes"], 300);
    unauthorized_next(&upstream);
    let large = client.request(chunked(50)).await.unwrap();
    assert_eq!(
        large.status(),
        401,
        "a long one streams, so its 401 comes back"
    );
}

mod futures_stream {
    use super::*;

    /// `n` chunks of 100 bytes, no length known in advance.
    pub(super) struct Chunks(pub(super) usize);

    impl futures_core::Stream for Chunks {
        type Item = Result<Frame<Bytes>, std::convert::Infallible>;

        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(None);
            }
            self.0 -= 1;
            std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'c'; 100])))))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_with_requests_latency_replays_and_token_health() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy = start(Proxy::builder(upstream.url(""), token_cache(&emulator))).await;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        http.get(proxy.url("/v3/payments/p-1"))
            .send()
            .await
            .unwrap();
    }
    unauthorized_next(&upstream);
    http.post(proxy.url("/v3/payments"))
        .body("{}")
        .send()
        .await
        .unwrap();
    http.get(proxy.url("/nope"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    let text = http
        .get(proxy.url("/.tlauth/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name}: {other:?}"),
            })
            .sum()
    };
    assert_eq!(
        value(
            "tlauth_proxy_requests_total",
            &[("method", "GET"), ("status", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        value(
            "tlauth_proxy_requests_total",
            &[("method", "POST"), ("status", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "tlauth_proxy_requests_total",
            &[("method", "GET"), ("status", "4xx")]
        ),
        1.0
    );
    assert_eq!(value("tlauth_proxy_replays_total", &[]), 1.0);
    assert_eq!(value("tlauth_proxy_refused_total", &[]), 1.0);
    // The first token, and the refresh the 401 asked for.
    assert_eq!(value("tlauth_proxy_token_fetches_total", &[]), 2.0);
    assert_eq!(value("tlauth_proxy_token_usable", &[]), 1.0);
    assert!(value("tlauth_proxy_token_remaining_seconds", &[]) > 3000.0);
    let latency = scrape
        .samples
        .iter()
        .find(|s| s.metric == "tlauth_proxy_upstream_duration_seconds")
        .expect("the latency histogram");
    match &latency.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let total = buckets.last().unwrap().count;
            assert_eq!(total, 5.0, "four requests and one replay: {buckets:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!text.contains("eyJ"), "metrics never show the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_api_latency(Duration::from_millis(500));
    let proxy = start(Proxy::builder(emulator.url(), token_cache(&emulator))).await;
    let in_flight = tokio::spawn({
        let url = proxy.url("/v3/payments/p-1");
        async move { reqwest::get(url).await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.stop.shutdown();
    assert_eq!(in_flight.await.unwrap(), 404, "finished (no such payment)");
    proxy.served.await.unwrap();
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_the_port_reuse_upstream_connections_and_stop_together() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy = start(Proxy::builder(upstream.url(""), token_cache(&emulator)).workers(3)).await;
    assert_eq!(proxy.workers, 3, "three workers were made");
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..16 {
        let addr = proxy.addr;
        clients.spawn(async move {
            // Exactly one connection per client, 20 requests on it.
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            for _ in 0..20 {
                sender.ready().await.unwrap();
                let request = Request::get(format!("/c/{client}"))
                    .header("host", addr.to_string())
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.unwrap();
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    assert_eq!(upstream.requests(), 320);
    let connections = upstream.connections();
    // At most one per client connection in use at a time, give or take a connection that
    // is still being handed back when the next request comes.
    assert!(
        connections <= 32,
        "upstream connections are kept and reused: {connections} for 320 requests"
    );
    proxy.stop.shutdown();
    tokio::time::timeout(Duration::from_secs(10), proxy.served)
        .await
        .expect("every worker drains and stops")
        .unwrap();
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "no worker listens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_closes_its_connections_costs_no_failed_request() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder_with(false).await;
    let proxy = start(Proxy::builder(upstream.url(""), token_cache(&emulator))).await;
    let http = reqwest::Client::new();
    for i in 0..50 {
        let response = http
            .get(proxy.url(&format!("/r/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        response.bytes().await.unwrap();
    }
    assert_eq!(upstream.requests(), 50);
    assert_eq!(upstream.connections(), 50, "one per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_serve_stops_every_worker() {
    let emulator = Emulator::start().await.unwrap();
    let proxy = start(Proxy::builder(emulator.url(), token_cache(&emulator)).workers(3)).await;
    assert_eq!(proxy.workers, 3, "three workers were made");
    assert!(TcpStream::connect(proxy.addr).await.is_ok());
    // The serve future is dropped, not shut down: the worker threads must not live on
    // with the merchant's token.
    proxy.served.abort();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while TcpStream::connect(proxy.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a worker still listens after serve() was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_requests_are_not_forwarded() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = recorder().await;
    let proxy = start(Proxy::builder(upstream.url(""), token_cache(&emulator))).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "CONNECT api.truelayer.com:443 HTTP/1.1\r\nhost: {}\r\n\r\n",
                proxy.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = vec![0u8; 64];
    let n = stream.read(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 405"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert_eq!(upstream.requests(), 0);
}

/// An upstream that answers `/early` at once with 413 (keep-alive), then reads the request's
/// body as slowly as it comes; anything else gets 200. Raw TCP, so nothing closes the
/// connection behind the test's back.
async fn early_answering_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                    buffer.drain(..end + 4);
                    if head.contains(" /early") {
                        let _ = stream
                            .write_all(
                                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
                            )
                            .await;
                        // Read (and drop) the upload for as long as it lasts.
                        while let Ok(n) = stream.read(&mut chunk).await {
                            if n == 0 {
                                return;
                            }
                        }
                        return;
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_answered_early_does_not_hold_up_the_next_request() {
    let emulator = Emulator::start().await.unwrap();
    let upstream = early_answering_upstream().await;
    let proxy = start(Proxy::builder(upstream, token_cache(&emulator)).replay_limit(1024)).await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(proxy.url("/warm")).send().await.unwrap().status(),
        200
    );
    // An upload that streams past the replay limit, then stalls for good.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 4096]))))
        .await
        .unwrap();
    let stalled = StreamBody::new(tokio_stream_from(rx));
    let upload = tokio::spawn({
        let url = proxy.url("/early");
        async move {
            reqwest::Client::new()
                .post(url)
                .body(reqwest::Body::wrap(stalled))
                .send()
                .await
                .map(|r| r.status())
        }
    });
    // Give the upload time to be answered 413 upstream (its body still being sent).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        http.get(proxy.url("/next")).send().await.unwrap().status()
    })
    .await
    .expect("the next request does not wait for the stalled upload's connection");
    assert_eq!(next, 200);
    drop(tx);
    upload.abort();
}

/// A stream over an mpsc receiver (no tokio-stream dependency for one test).
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send + 'static {
    futures_util_poll_fn(move |cx| rx.poll_recv(cx))
}

fn futures_util_poll_fn<T, F>(f: F) -> PollFnStream<F>
where
    F: FnMut(&mut std::task::Context<'_>) -> std::task::Poll<Option<T>>,
{
    PollFnStream(f)
}

struct PollFnStream<F>(F);

impl<T, F> futures_core::Stream for PollFnStream<F>
where
    F: FnMut(&mut std::task::Context<'_>) -> std::task::Poll<Option<T>> + Unpin,
{
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        (self.0)(cx)
    }
}

#[test]
fn configuration_mistakes_are_refused_before_listening() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let emulator = Emulator::start().await.unwrap();
        let err = Proxy::builder("http://api.truelayer.com", token_cache(&emulator))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("clear text"), "{err}");
        let err = Proxy::builder(emulator.url(), token_cache(&emulator))
            .listen("0.0.0.0:0".parse().unwrap())
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
    });
}
