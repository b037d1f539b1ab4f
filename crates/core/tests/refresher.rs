//! The refresh engine through its public, generic face: `Refresher` over a `Refresh` that is
//! not a token request, as the Data API connections will use it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::{Instant, advance, sleep};
use truelayer_auth::{
    AccessToken, CacheSettings, Error, Refresh, RefreshFuture, Refresher, TokenSource,
};
use truelayer_auth_emulator::{Emulator, Fault};
use truelayer_auth_testkit::emulator::token_cache;

/// Mints hour-long tokens after `delay`, counting calls; panics when told to, and fails
/// (retryably) while `failures` lasts.
struct Mint {
    calls: AtomicU32,
    delay: Duration,
    panics: bool,
    failures: AtomicU32,
}

impl Mint {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Mint {
            calls: AtomicU32::new(0),
            delay,
            panics: false,
            failures: AtomicU32::new(0),
        })
    }
}

/// The `Refresh`, sharing its counter with the test.
struct Minter(Arc<Mint>);

impl Refresh for Minter {
    fn refresh(&self) -> RefreshFuture<'_> {
        let mint = &self.0;
        mint.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            sleep(mint.delay).await;
            assert!(!mint.panics, "a bug in a Refresh");
            let failing = mint.failures.load(Ordering::SeqCst);
            if failing > 0 {
                mint.failures.store(failing - 1, Ordering::SeqCst);
                return Err(Error::Timeout);
            }
            Ok(AccessToken::new(
                "minted".into(),
                Duration::from_secs(3600),
                Instant::now(),
                None,
            )
            .unwrap())
        })
    }

    fn time_limit(&self) -> Duration {
        Duration::from_secs(10)
    }
}

#[tokio::test(start_paused = true)]
async fn any_refresh_gets_single_flight_and_refresh_ahead() {
    let mint = Mint::new(Duration::from_millis(200));
    let tokens =
        Refresher::new(Minter(mint.clone()), CacheSettings::default().jitter(0.0)).unwrap();
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let tokens = tokens.clone();
            tokio::spawn(async move { tokens.token().await.unwrap().id() })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for caller in callers {
        ids.insert(caller.await.unwrap());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(
        mint.calls.load(Ordering::SeqCst),
        1,
        "one refresh for 1000 callers"
    );
    // Past the soft margin (5 minutes before expiry, less a second), with nobody reading:
    // one refresh in the background.
    advance(Duration::from_secs(3600 - 300)).await;
    sleep(Duration::from_millis(300)).await;
    assert_eq!(mint.calls.load(Ordering::SeqCst), 2);
    assert!(!ids.contains(&tokens.cached().unwrap().id()));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_panics_is_a_retryable_failure_not_a_hang() {
    let mint = Arc::new(Mint {
        calls: AtomicU32::new(0),
        delay: Duration::ZERO,
        panics: true,
        failures: AtomicU32::new(0),
    });
    let tokens = Refresher::new(
        Minter(mint.clone()),
        CacheSettings::default().wait_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let started = Instant::now();
    let err = tokens.token().await.unwrap_err();
    assert!(matches!(err, Error::RefreshPanicked), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() <= Duration::from_secs(5));
    // Retried with backoff, not in a loop: a handful of attempts in those 5 s.
    let calls = mint.calls.load(Ordering::SeqCst);
    assert!((1..=6).contains(&calls), "{calls} attempts");
    assert_eq!(tokens.stats().fetch_failures, u64::from(calls));
}

#[tokio::test(start_paused = true)]
async fn a_replay_does_not_wait_for_a_refresh_that_already_failed() {
    let emulator = Emulator::start().await.unwrap();
    let cache = token_cache(&emulator);
    let first = cache.token().await.unwrap();
    // A fresh token is rejected: it is kept, and refreshed at once; that refresh meets a
    // 429 with a long hint and fails before the replay asks for its token.
    emulator.fail_next([Fault::rate_limited(30)]);
    advance(Duration::from_secs(5)).await;
    assert!(cache.invalidate(&first));
    sleep(Duration::from_millis(10)).await;
    assert_eq!(
        emulator.stats().token_requests,
        2,
        "the refresh ran and failed"
    );
    let asked = Instant::now();
    let replay = TokenSource::replacement(&cache, &first, &http::Extensions::new())
        .await
        .unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "the replay waited {:?} for a refresh that had ended",
        asked.elapsed()
    );
    assert_eq!(replay.id(), first.id(), "the still-valid token");
}

#[tokio::test(start_paused = true)]
async fn a_retry_held_back_by_the_rate_bound_still_runs_with_nobody_reading() {
    let mint = Mint::new(Duration::ZERO);
    // Backoffs far shorter than the rate bound: every retry is first due before the rate
    // bound allows it, and must be rescheduled to when it does.
    let settings = CacheSettings::default()
        .jitter(0.0)
        .refresh_backoff(Duration::from_millis(1), Duration::from_millis(1))
        .min_fetch_interval(Duration::from_secs(1));
    let tokens = Refresher::new(Minter(mint.clone()), settings).unwrap();
    let first = tokens.token().await.unwrap();
    mint.failures.store(3, Ordering::SeqCst);
    // Past the soft margin, with nobody reading: the refresh fails three times, a second
    // apart, and the fourth attempt brings a token.
    advance(Duration::from_secs(3600 - 300)).await;
    for _ in 0..60 {
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mint.calls.load(Ordering::SeqCst), 5, "1 + 3 failures + 1");
    assert_ne!(tokens.cached().unwrap().id(), first.id());
}

/// Panics before it even returns its future.
struct PanicsAtOnce;

impl Refresh for PanicsAtOnce {
    fn refresh(&self) -> RefreshFuture<'_> {
        panic!("a bug in a Refresh, outside its future")
    }

    fn time_limit(&self) -> Duration {
        Duration::from_secs(1)
    }
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_panics_before_its_future_is_a_failure_too() {
    let tokens = Refresher::new(
        PanicsAtOnce,
        CacheSettings::default().wait_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let err = tokens.token().await.unwrap_err();
    assert!(matches!(err, Error::RefreshPanicked), "{err:?}");
    assert!(tokens.stats().fetch_failures >= 1);
}
