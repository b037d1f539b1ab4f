//! Twelve seconds of Payments API requests from 64 tasks through a real client stack
//! (hyper-util, the bearer layer, the emulator's Payments stand-in) while the token endpoint
//! fails half of the token requests in every way it can, issues 2-second tokens, and a 401
//! is reported every 600 ms (each the start of a new run of rejections), so refreshes never
//! stop and callers keep meeting withdrawn tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};
use truelayer_auth::{Error, TokenClient};
use truelayer_auth_emulator::{Emulator, Fault};
use truelayer_auth_signing::SigningLayer;
use truelayer_auth_testkit::emulator::{cache_builder, signer};
use truelayer_auth_tower::{BearerAuthError, BearerAuthLayer, CloneBodies};

const DURATION: Duration = Duration::from_secs(12);
const TASKS: u64 = 64;
const LIFETIME_S: i64 = 2;

/// A memory figure of this process from `/proc/self/status`. Panics when it cannot be read:
/// a 0 would let the memory-growth assertion pass without measuring anything.
fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status")
        .expect("this test measures memory through /proc/self/status (Linux)");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_holds_under_token_endpoint_faults_and_load() {
    let emulator = Emulator::start().await.unwrap();
    let token_client = TokenClient::builder()
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let tokens = cache_builder(&emulator)
        .client(token_client)
        .wait_timeout(Duration::from_secs(3))
        .refresh_backoff(Duration::from_millis(100), Duration::from_secs(1))
        .min_fetch_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let client = BearerAuthLayer::new(tokens.clone())
        .replay_policy(CloneBodies)
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    // One payment to read back, made (signed) before the faults start.
    let created = SigningLayer::new(signer(&emulator))
        .layer(client.clone())
        .oneshot(
            Request::post(format!("{}/v3/payments", emulator.url()))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
        .await
        .unwrap();
    let body = created.into_body().collect().await.unwrap().to_bytes();
    let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!("{}/v3/payments/{id}", emulator.url());

    emulator.set_token_lifetime(Some(LIFETIME_S));
    emulator.fail_randomly(
        0.5,
        vec![
            Fault::internal_error(),
            Fault::unavailable(),
            Fault::rate_limited(1),
            Fault::delay(Duration::from_millis(1500)), // past the 500 ms client timeout
            Fault::DropConnection,
            Fault::Truncate,
            Fault::malformed("<html>502 Bad Gateway</html>"),
            Fault::malformed("{\"access_token\":"),
            Fault::malformed(r#"{"access_token":"x","expires_in":0,"token_type":"Bearer"}"#),
        ],
    );
    tokens.invalidate(&tokens.token().await.unwrap()); // start on a 2-second token

    // Besides the 2-second lifetime, report the token rejected as a 401 would, far enough apart
    // that each report starts a new run: a token in use for half a second or more is
    // withdrawn, a fresher one refreshed in the background.
    let churn = tokio::spawn({
        let tokens = tokens.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(600));
            loop {
                every.tick().await;
                if let Some(token) = tokens.cached() {
                    tokens.invalidate(&token);
                }
            }
        }
    });
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let violations = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (client, url, tokens) = (client.clone(), url.clone(), tokens.clone());
            let (ok, failed, violations) = (ok.clone(), failed.clone(), violations.clone());
            tokio::spawn(async move {
                while started.elapsed() < DURATION {
                    let request = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                    let sent = Instant::now();
                    match client.clone().oneshot(request).await {
                        Ok(response) => {
                            let status = response.status();
                            response.into_body().collect().await.unwrap();
                            if status == 200 {
                                ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                violations
                                    .lock()
                                    .unwrap()
                                    .push(format!("answered {status}"));
                            }
                        }
                        Err(BearerAuthError::Token(e)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            // Only acceptable if no usable token existed while this request waited:
                            // the cache holds none, or got its current one during the wait.
                            let stats = tokens.stats();
                            let waited = sent.elapsed() + Duration::from_millis(600);
                            if stats.token_age.is_some_and(|age| age > waited) {
                                violations
                                    .lock()
                                    .unwrap()
                                    .push(format!("failed with a usable token cached: {e}"));
                            }
                            if !matches!(
                                e,
                                Error::ServerError { .. }
                                    | Error::RateLimited { .. }
                                    | Error::Timeout
                                    | Error::Transport(_)
                                    | Error::InvalidResponse { .. }
                                    | Error::WaitTimedOut { .. }
                            ) {
                                violations
                                    .lock()
                                    .unwrap()
                                    .push(format!("unexpected error kind: {e:?}"));
                            }
                        }
                        Err(other) => violations
                            .lock()
                            .unwrap()
                            .push(format!("inner service failed: {other}")),
                    }
                }
            })
        })
        .collect();
    // Sample RSS once a fifth of the requests are done, to compare with the end.
    let sampler = tokio::spawn({
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(20));
            while started.elapsed() < DURATION / 5 {
                every.tick().await;
            }
            rss_kib("VmRSS:")
        }
    });
    for task in tasks {
        task.await.unwrap();
    }
    let rss_early = sampler.await.unwrap();
    let elapsed = started.elapsed();
    churn.abort();
    let stats = emulator.stats();
    let invalidations = tokens.stats().invalidations;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let rss_end = rss_kib("VmRSS:");
    let minimum_fetches = elapsed.as_secs_f64() / (LIFETIME_S as f64 * 0.75);
    eprintln!(
        "faults under load: {ok} ok, {failed} failed ({:.2}%), in {elapsed:.1?}; token requests {} \
         ({} faults injected, {} tokens issued; the lifetime and {invalidations} invalidations imply \
         at least {:.0}); RSS {rss_early} KiB at 20%, {rss_end} KiB at the end, peak {} KiB",
        100.0 * failed as f64 / (ok + failed) as f64,
        stats.token_requests,
        stats.faults_served,
        stats.tokens_issued,
        minimum_fetches + invalidations as f64,
        rss_kib("VmHWM:"),
    );

    let violations = violations.lock().unwrap();
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        violations.first()
    );
    assert!(ok + failed > 10_000, "under load: {} requests", ok + failed);
    assert_eq!(
        stats.api_rejections, 0,
        "no request reached the API without a valid token"
    );
    assert_eq!(
        stats.api_requests,
        ok + 1,
        "every success was one API call (plus the setup)"
    );
    assert!(
        stats.faults_served >= 5,
        "faults were really injected: {}",
        stats.faults_served
    );
    let implied = minimum_fetches + invalidations as f64;
    assert!(
        (stats.tokens_issued as f64) <= implied + 2.0,
        "{} tokens issued where the lifetime and invalidations imply {implied:.0}",
        stats.tokens_issued
    );
    assert!(
        rss_end.saturating_sub(rss_early) < 32 * 1024,
        "memory grew from {rss_early} to {rss_end} KiB"
    );
}
