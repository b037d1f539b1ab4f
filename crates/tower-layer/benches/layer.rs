//! The bearer layer against the physical limit for putting a header on a request
//! (`SetRequestHeaderLayer` with a static value), side by side in one run: around a trivial
//! inner service, and end to end over loopback. Ratios go in docs/benchmarks.md.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_http::set_header::SetRequestHeaderLayer;
use truelayer_auth_emulator::Emulator;
use truelayer_auth_testkit::emulator::{signer, token_cache};
use truelayer_auth_tower::{BearerAuthLayer, NoReplay};

/// Polls readiness and the call once each: the inner service answers at once.
fn drive<S>(svc: &mut S) -> S::Response
where
    S: Service<Request<Empty<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => unreachable!("the trivial service is always ready"),
    }
    let mut fut = std::pin::pin!(svc.call(Request::new(Empty::new())));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(r)) => r,
        _ => unreachable!("the trivial service answers at once"),
    }
}

fn contended<S>(svc: &S, iters: u64) -> Duration
where
    S: Service<Request<Empty<Bytes>>> + Clone + Send + Sync,
    S::Error: std::fmt::Debug,
    S::Response: Send,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(drive(&mut svc));
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

fn around_trivial_service(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let emulator = rt.block_on(Emulator::start()).unwrap();
    let tokens = token_cache(&emulator);
    let token = rt.block_on(tokens.token()).unwrap();

    let inner = service_fn(|req: Request<Empty<Bytes>>| async move {
        black_box(req.headers().len());
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    });
    let static_header =
        SetRequestHeaderLayer::overriding(AUTHORIZATION, token.authorization_header()).layer(inner);
    let bearer = BearerAuthLayer::new(tokens.clone()).layer(inner);
    let bearer_no_replay = BearerAuthLayer::new(tokens.clone())
        .replay_policy(NoReplay)
        .layer(inner);

    let mut g = c.benchmark_group("layer/1_thread");
    g.bench_function("baseline_set_request_header_static", |b| {
        let mut s = static_header.clone();
        b.iter(|| black_box(drive(&mut s)))
    });
    g.bench_function("bearer_auth_replayable", |b| {
        let mut s = bearer.clone();
        b.iter(|| black_box(drive(&mut s)))
    });
    g.bench_function("bearer_auth_no_replay", |b| {
        let mut s = bearer_no_replay.clone();
        b.iter(|| black_box(drive(&mut s)))
    });
    g.finish();

    let mut g = c.benchmark_group("layer/2_threads");
    g.bench_function("baseline_set_request_header_static", |b| {
        b.iter_custom(|iters| contended(&static_header, iters))
    });
    g.bench_function("bearer_auth_replayable", |b| {
        b.iter_custom(|iters| contended(&bearer, iters))
    });
    g.bench_function("bearer_auth_no_replay", |b| {
        b.iter_custom(|iters| contended(&bearer_no_replay, iters))
    });
    g.finish();
}

/// `iters` GETs of one payment from `concurrency` tasks at once; the elapsed time.
async fn load<S>(svc: S, url: &str, iters: u64, concurrency: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<hyper::body::Incoming>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let svc = svc.clone();
            let url = url.to_owned();
            let n = iters / concurrency + u64::from(t < iters % concurrency);
            tokio::spawn(async move {
                for _ in 0..n {
                    let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                    let res = svc.clone().oneshot(req).await.unwrap();
                    assert_eq!(res.status(), 200);
                    black_box(res.into_body().collect().await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn end_to_end(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let emulator = rt.block_on(Emulator::start()).unwrap();
    let tokens = token_cache(&emulator);
    let token = rt.block_on(tokens.token()).unwrap();
    let hyper_client =
        rt.block_on(async { Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>() });
    // One payment to read back.
    let created = rt.block_on(async {
        let req = Request::post(format!("{}/v3/payments", emulator.url()))
            .header(AUTHORIZATION, token.authorization_header())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        // Payments API POSTs must be signed, as at TrueLayer.
        let res = truelayer_auth_signing::SigningLayer::new(signer(&emulator))
            .layer(hyper_client.clone())
            .oneshot(req)
            .await
            .unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    let url = format!("{}/v3/payments/{created}", emulator.url());
    let static_header =
        SetRequestHeaderLayer::overriding(AUTHORIZATION, token.authorization_header())
            .layer(hyper_client.clone());
    let bearer = BearerAuthLayer::new(tokens.clone()).layer(hyper_client.clone());

    let mut g = c.benchmark_group("end_to_end/loopback_32_concurrent");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(6));
    g.throughput(criterion::Throughput::Elements(1));
    g.bench_function("baseline_set_request_header_static", |b| {
        b.iter_custom(|iters| rt.block_on(load(static_header.clone(), &url, iters, 32)))
    });
    g.bench_function("bearer_auth", |b| {
        b.iter_custom(|iters| rt.block_on(load(bearer.clone(), &url, iters, 32)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = around_trivial_service, end_to_end
}
criterion_main!(benches);
