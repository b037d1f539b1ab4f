//! The cache's warm path against the bare cost of the same work, and the cold fetch against
//! a plain reqwest POST, side by side in one run. Ratios go in docs/benchmarks.md.

use std::hint::black_box;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use criterion::{Criterion, criterion_group, criterion_main};
use truelayer_auth::{
    AccessToken, ClientCredentials, Environment, KeyedTokenCache, Scopes, TokenCache, TokenClient,
};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_testkit::emulator::{credentials, environment, token_cache};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `work` `iters` times on each of `threads` threads at once; the mean time per call.
fn contended<F: Fn() + Sync>(threads: usize, iters: u64, work: F) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        work();
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

fn warm(c: &mut Criterion) {
    let rt = runtime();
    let emulator = rt.block_on(Emulator::start()).unwrap();
    let cache = token_cache(&emulator);
    let token = rt.block_on(cache.token()).unwrap();

    // The bare baseline: an ArcSwap load and a clone of the token value.
    let bare: ArcSwapOption<AccessToken> = ArcSwapOption::from_pointee(token.clone());
    let bare_get = || black_box(bare.load_full());
    // What the hard-margin check would cost with exact clocks instead of coarse ones.
    let exact_get = || {
        let t = bare.load_full();
        black_box(tokio::time::Instant::now());
        black_box(std::time::SystemTime::now());
        black_box(t)
    };
    let cached_get = || black_box(cache.cached());
    let awaited_get = || {
        let mut fut = std::pin::pin!(cache.token());
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(t) => black_box(t).ok(),
            Poll::Pending => unreachable!("a warm cache answers at once"),
        }
    };

    let mut g = c.benchmark_group("warm_token/1_thread");
    g.bench_function("baseline_arcswap_load_clone", |b| b.iter(bare_get));
    g.bench_function("load_clone_plus_exact_clocks", |b| b.iter(exact_get));
    g.bench_function("cache_cached", |b| b.iter(cached_get));
    g.bench_function("cache_token_await", |b| b.iter(awaited_get));
    g.finish();

    let mut g = c.benchmark_group("warm_token/2_threads");
    g.bench_function("baseline_arcswap_load_clone", |b| {
        b.iter_custom(|iters| contended(2, iters, || drop(bare_get())))
    });
    g.bench_function("cache_cached", |b| {
        b.iter_custom(|iters| contended(2, iters, || drop(cached_get())))
    });
    g.finish();
    drop(emulator);
}

fn cold(c: &mut Criterion) {
    let rt = runtime();
    let emulator = rt.block_on(Emulator::start()).unwrap();
    let env = environment(&emulator);
    let creds = credentials(&emulator);
    let secret = emulator.client_secret().to_owned();
    let scopes = Scopes::payments();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let client = TokenClient::new().unwrap();
    let url = emulator.token_url();

    let mut g = c.benchmark_group("cold_fetch/loopback");
    g.sample_size(50);
    g.bench_function("baseline_plain_reqwest_post", |b| {
        b.to_async(&rt).iter(|| async {
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", "emulator-client"),
                ("client_secret", secret.as_str()),
                ("scope", "payments"),
            ];
            let r = plain.post(&url).form(&form).send().await.unwrap();
            black_box(r.bytes().await.unwrap());
        })
    });
    g.bench_function("token_client_request_once", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                client
                    .request_token_once(&env, &creds, &scopes)
                    .await
                    .unwrap(),
            );
        })
    });
    g.bench_function("token_cache_cold", |b| {
        b.to_async(&rt).iter(|| async {
            let cache = TokenCache::builder(env.clone(), creds.clone())
                .client(client.clone())
                .build()
                .unwrap();
            black_box(cache.token().await.unwrap());
        })
    });
    g.finish();
}

/// `KeyedTokenCache::get` with 10,000 entries and the cache full: a hit against a miss that
/// must evict, on one thread and with two threads churning new keys at once.
fn keyed(c: &mut Criterion) {
    const FULL: usize = 10_000;
    let rt = runtime();
    let _enter = rt.enter();
    let env = Environment::custom("http://127.0.0.1:9").unwrap();
    let keyed = KeyedTokenCache::builder()
        .max_entries(FULL)
        .build()
        .unwrap();
    let creds =
        |i: u64| ClientCredentials::new(format!("merchant-{i}"), "secret-value".into()).unwrap();
    for i in 0..FULL as u64 {
        drop(keyed.get(&env, &creds(i), &Scopes::payments()));
    }
    let hit = creds(FULL as u64 - 1);
    let next = std::sync::atomic::AtomicU64::new(FULL as u64);
    let miss = || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(black_box(keyed.get(&env, &creds(i), &Scopes::payments())));
    };
    let hit_get = || drop(black_box(keyed.get(&env, &hit, &Scopes::payments())));
    let mut g = c.benchmark_group("keyed_get/10k_full");
    g.bench_function("hit", |b| b.iter(hit_get));
    g.bench_function("miss_evicting", |b| b.iter(miss));
    g.bench_function("miss_evicting_2_threads", |b| {
        b.iter_custom(|iters| contended(2, iters, miss))
    });
    g.finish();
    assert!(keyed.len() <= FULL, "bounded: {}", keyed.len());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = warm, cold, keyed
}
criterion_main!(benches);
