//! The token cache's behaviour, on a paused tokio clock, against the emulator over loopback.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::{Instant, advance, sleep};
use truelayer_auth::{
    CacheSettings, ClientCredentials, CredentialsError, CredentialsFuture, CredentialsSource,
    Error, OAuthErrorCode, TokenCache,
};
use truelayer_auth_emulator::{Emulator, Fault};
use truelayer_auth_testkit::emulator::{cache_builder, credentials, environment};

const HOUR: Duration = Duration::from_secs(3600);

/// Lets every ready task and loopback exchange run (the clock is paused, so this only moves
/// time once the runtime is idle, and by 1 ms).
async fn settle() {
    sleep(Duration::from_millis(1)).await;
}

fn requests(emulator: &Emulator) -> u64 {
    emulator.stats().token_requests
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_callers_on_a_cold_cache_cause_exactly_one_request() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_latency(Duration::from_millis(200));
    let cache = cache_builder(&emulator).build().unwrap();
    let callers: Vec<_> = (0..10_000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for caller in callers {
        ids.insert(caller.await.unwrap().unwrap().id());
    }
    assert_eq!(ids.len(), 1, "every caller got the same token");
    assert_eq!(requests(&emulator), 1);
    let stats = cache.stats();
    assert_eq!(stats.fetches, 1);
    assert_eq!(stats.waits, 10_000);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_runs_once_in_the_background_and_nobody_waits() {
    let emulator = Emulator::start().await.unwrap();
    let cache = cache_builder(&emulator).jitter(0.0).build().unwrap();
    let first = cache.token().await.unwrap();
    let t0 = first.issued_at();

    // Just before the soft margin (5 minutes before expiry, less the second whole-second
    // expiry can cost): no refresh yet.
    advance(HOUR - Duration::from_secs(302)).await;
    settle().await;
    assert_eq!(requests(&emulator), 1);

    // Past it, with a slow token endpoint: one refresh starts, callers get the old token at once.
    emulator.set_latency(Duration::from_secs(8));
    advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(requests(&emulator), 2, "the refresh started");
    let during = Instant::now();
    for _ in 0..100 {
        let token = cache.token().await.unwrap();
        assert!(token.id() == first.id());
    }
    let handed: Vec<_> = (0..100)
        .map(|_| {
            let c = cache.clone();
            tokio::spawn(async move { c.token().await.unwrap() })
        })
        .collect();
    for h in handed {
        assert!(h.await.unwrap().id() == first.id());
    }
    assert_eq!(Instant::now(), during, "no caller waited");

    advance(Duration::from_secs(9)).await;
    settle().await;
    let second = cache.token().await.unwrap();
    assert!(second.id() != first.id());
    assert_eq!(requests(&emulator), 2, "exactly one background refresh");
    assert!(second.issued_at() >= t0 + HOUR - Duration::from_secs(301));
    assert_eq!(cache.stats().waits, 1, "only the very first call waited");
}

#[tokio::test(start_paused = true)]
async fn a_token_within_the_hard_margin_is_never_handed_out() {
    let emulator = Emulator::start().await.unwrap();
    let cache = cache_builder(&emulator)
        .jitter(0.0)
        .wait_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let first = cache.token().await.unwrap();
    emulator.fail_randomly(1.0, vec![Fault::unavailable()]);

    // Refreshes fail; the token is served until 30 s (the hard margin) before expiry, less
    // the second whole-second expiry can cost.
    advance(HOUR - Duration::from_secs(32)).await;
    settle().await;
    assert!(cache.cached().unwrap().id() == first.id());
    assert!(cache.token().await.unwrap().id() == first.id());

    advance(Duration::from_secs(2)).await;
    settle().await;
    assert!(cache.cached().is_none(), "withdrawn at the hard margin");
    let started = Instant::now();
    let err = cache.token().await.unwrap_err();
    assert!(matches!(err, Error::ServerError { .. }), "{err:?}");
    assert!(
        started.elapsed() <= Duration::from_secs(5),
        "bounded by the wait deadline"
    );
    assert!(
        !first.is_expired(),
        "withdrawn while still valid: never sent near expiry"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_refreshes_back_off_exponentially_while_the_valid_token_is_served() {
    let emulator = Emulator::start().await.unwrap();
    // The jitter's draw pinned to 1: each wait is the full exponential cap.
    let settings = CacheSettings::default().jitter(0.0).fixed_backoff_draw(1.0);
    let cache = cache_builder(&emulator).settings(settings).build().unwrap();
    let first = cache.token().await.unwrap();
    emulator.fail_next(std::iter::repeat_n(Fault::unavailable(), 6));

    advance(HOUR - Duration::from_secs(300)).await;
    settle().await;
    assert_eq!(requests(&emulator), 2, "first refresh attempt");

    // Step through time: record when each attempt happens; callers always succeed meanwhile.
    let step = Duration::from_millis(50);
    let mut attempts = vec![Instant::now()];
    let mut seen = requests(&emulator);
    while seen < 8 {
        advance(step).await;
        settle().await;
        let now = requests(&emulator);
        if now < 8 {
            assert!(
                cache.token().await.unwrap().id() == first.id(),
                "served while valid"
            );
        }
        if now > seen {
            attempts.push(Instant::now());
            seen = now;
        }
        assert!(
            attempts[0].elapsed() < Duration::from_secs(200),
            "backoff stalled"
        );
    }
    // After the n-th failure in a row the next attempt comes 2^(n-1) s later (1 s doubling,
    // capped at 60 s), observed to within one step of the test's clock.
    let gaps: Vec<Duration> = attempts.windows(2).map(|p| p[1] - p[0]).collect();
    for (n, gap) in gaps.iter().enumerate() {
        let want = Duration::from_secs(1 << n);
        assert!(
            *gap >= want && *gap <= want + step,
            "gap {n}: {gap:?}, want {want:?}; all gaps {gaps:?}"
        );
    }
    let fresh = cache.token().await.unwrap();
    assert!(fresh.id() != first.id(), "the 7th attempt succeeded");
    assert_eq!(cache.stats().consecutive_failures, 0);
    assert_eq!(cache.stats().fetch_failures, 6);
}

#[tokio::test(start_paused = true)]
async fn background_retries_honour_retry_after() {
    let emulator = Emulator::start().await.unwrap();
    let cache = cache_builder(&emulator).jitter(0.0).build().unwrap();
    cache.token().await.unwrap();
    emulator.fail_next([Fault::rate_limited(45)]);
    advance(HOUR - Duration::from_secs(300)).await;
    settle().await;
    assert_eq!(requests(&emulator), 2);
    advance(Duration::from_secs(44)).await;
    settle().await;
    assert_eq!(requests(&emulator), 2, "not before Retry-After");
    advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(requests(&emulator), 3);
}

#[tokio::test(start_paused = true)]
async fn a_suspect_token_is_withdrawn_once_and_a_late_401_never_discards_a_fresh_one() {
    let emulator = Emulator::start().await.unwrap();
    let cache = cache_builder(&emulator).build().unwrap();
    let old = cache.token().await.unwrap();
    // Handed out for two minutes, then rejected: it was probably revoked.
    advance(Duration::from_secs(120)).await;

    assert!(cache.invalidate(&old));
    assert!(
        cache.cached().is_none(),
        "a suspect token is withdrawn at once"
    );
    let fresh = cache.token().await.unwrap();
    assert_ne!(fresh.id(), old.id());
    assert_eq!(requests(&emulator), 2);

    // A late 401 for the old token must not throw away the fresh one.
    assert!(!cache.invalidate(&old));
    assert_eq!(cache.cached().unwrap().id(), fresh.id());
    advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(requests(&emulator), 2);

    // Many concurrent reports for the same token: one is acted on, one refresh.
    advance(Duration::from_secs(120)).await;
    let results: Vec<bool> = (0..50).map(|_| cache.invalidate(&fresh)).collect();
    assert_eq!(results.iter().filter(|r| **r).count(), 1);
    let newest = cache.token().await.unwrap();
    assert_ne!(newest.id(), fresh.id());
    assert_eq!(requests(&emulator), 3);
    assert_eq!(cache.stats().invalidations, 2);
}

#[tokio::test(start_paused = true)]
async fn a_fresh_token_that_is_rejected_keeps_being_served_while_a_refresh_runs() {
    let emulator = Emulator::start().await.unwrap();
    let cache = cache_builder(&emulator).build().unwrap();
    let first = cache.token().await.unwrap();
    advance(Duration::from_secs(5)).await;
    let before = Instant::now();
    assert!(cache.invalidate(&first));
    // Not withdrawn: callers get it at once while the refresh runs.
    assert_eq!(cache.token().await.unwrap().id(), first.id());
    assert_eq!(Instant::now(), before, "nobody waited");
    settle().await;
    assert_eq!(requests(&emulator), 2, "one background refresh");
    let second = cache.cached().unwrap();
    assert_ne!(second.id(), first.id());
    assert_eq!(cache.stats().waits, 1, "only the very first call waited");
}

#[tokio::test(start_paused = true)]
async fn a_401_storm_costs_a_bounded_number_of_fetches_and_no_waits() {
    let emulator = Emulator::start().await.unwrap();
    let cache = cache_builder(&emulator).build().unwrap();
    cache.token().await.unwrap();
    // An upstream that answers 401 to every request, once a second, for an hour.
    for _ in 0..3600 {
        let before = Instant::now();
        let token = cache.token().await.unwrap();
        assert_eq!(Instant::now(), before, "no caller waits");
        cache.invalidate(&token);
        advance(Duration::from_secs(1)).await;
    }
    let fetches = requests(&emulator);
    // Replacements that are rejected too wait 1 s, 2 s, 4 s ... up to 5 minutes.
    assert!(fetches <= 25, "{fetches} fetches in an hour of 401s");
    assert!(
        fetches >= 3,
        "a rejected fresh token is still replaced: {fetches}"
    );
    assert_eq!(cache.stats().waits, 1);
}

/// A credentials store that, like a secrets manager client, serves a cached copy until asked
/// to reload.
#[derive(Debug)]
struct RotatingSource {
    client_id: String,
    store: Arc<Mutex<String>>,
    cached: Mutex<String>,
    reloads: AtomicU32,
}

impl RotatingSource {
    fn creds(secret: &str, id: &str) -> Result<ClientCredentials, CredentialsError> {
        ClientCredentials::new(id, secret.into()).map_err(|e| CredentialsError::new(e.to_string()))
    }
}

impl CredentialsSource for RotatingSource {
    fn credentials(&self) -> CredentialsFuture<'_> {
        let secret = self.cached.lock().unwrap().clone();
        Box::pin(async move { Self::creds(&secret, &self.client_id) })
    }
    fn reload(&self) -> CredentialsFuture<'_> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        let secret = self.store.lock().unwrap().clone();
        *self.cached.lock().unwrap() = secret.clone();
        Box::pin(async move { Self::creds(&secret, &self.client_id) })
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_client_reloads_the_credentials_once_and_retries_once() {
    let emulator = Emulator::start().await.unwrap();
    let store = Arc::new(Mutex::new(emulator.client_secret().to_owned()));
    let source = Arc::new(RotatingSource {
        client_id: emulator.client_id().to_owned(),
        store: store.clone(),
        cached: Mutex::new(emulator.client_secret().to_owned()),
        reloads: AtomicU32::new(0),
    });
    let cache = TokenCache::builder(environment(&emulator), source.clone())
        .build()
        .unwrap();
    let old = cache.token().await.unwrap();

    // The secret is rotated and the new one written to the store.
    let rotated = emulator.rotate_secret(emulator.client_id()).unwrap();
    *store.lock().unwrap() = rotated;
    advance(Duration::from_secs(120)).await;
    assert!(cache.invalidate(&old));
    let fresh = cache.token().await.expect("no caller sees the rotation");
    assert!(fresh.id() != old.id());
    assert_eq!(source.reloads.load(Ordering::SeqCst), 1);
    assert_eq!(requests(&emulator), 3, "initial, rejected, retried");

    // A rotation the store does not know about yet: one reload, which brings the same
    // secret, so no retry: the error.
    emulator.rotate_secret(emulator.client_id()).unwrap();
    advance(Duration::from_secs(120)).await;
    assert!(cache.invalidate(&fresh));
    let err = cache.token().await.unwrap_err();
    assert_eq!(
        err.oauth().map(|o| o.code.clone()),
        Some(OAuthErrorCode::InvalidClient)
    );
    assert_eq!(source.reloads.load(Ordering::SeqCst), 2);
    assert_eq!(
        requests(&emulator),
        4,
        "no retry with unchanged credentials"
    );
}

#[tokio::test(start_paused = true)]
async fn odd_lifetimes_do_not_busy_loop() {
    let emulator = Emulator::start().await.unwrap();
    for (lifetime, max_fetches) in [(0, 10), (1, 62), (5, 21)] {
        emulator.set_token_lifetime(Some(lifetime));
        let before = requests(&emulator);
        let cache = cache_builder(&emulator)
            .wait_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let started = Instant::now();
        let mut ok = 0;
        while started.elapsed() < Duration::from_secs(60) {
            if cache.token().await.is_ok() {
                ok += 1;
            }
            advance(Duration::from_millis(250)).await;
        }
        let fetches = requests(&emulator) - before;
        assert!(
            fetches <= max_fetches,
            "expires_in={lifetime}: {fetches} fetches in 60 s"
        );
        if lifetime == 0 {
            assert_eq!(ok, 0, "a zero lifetime is never a usable token");
            assert!(fetches >= 3, "but fetching goes on, backing off: {fetches}");
        } else {
            assert!(
                ok > 100,
                "expires_in={lifetime}: short tokens are still handed out ({ok})"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn expiry_follows_expires_in_on_the_monotonic_clock_not_wall_clocks() {
    let emulator = Emulator::start().await.unwrap();
    // The server's wall clock is two hours ahead: its JWT `exp` disagrees with ours.
    emulator.advance_clock(2 * HOUR);
    let cache = cache_builder(&emulator).jitter(0.0).build().unwrap();
    let first = cache.token().await.unwrap();
    let wall_before = std::time::SystemTime::now();
    advance(HOUR - Duration::from_secs(302)).await;
    settle().await;
    // Almost an hour passed on the monotonic clock and (nearly) none on the wall clock: the
    // cache acted on the former only.
    assert!(wall_before.elapsed().unwrap() < Duration::from_secs(60));
    assert!(cache.cached().unwrap().id() == first.id());
    assert_eq!(requests(&emulator), 1);
    advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(
        requests(&emulator),
        2,
        "refreshed by expires_in, whatever the JWT says"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_background_task() {
    let emulator = Emulator::start().await.unwrap();
    let creds = Arc::new(credentials(&emulator));
    let cache = TokenCache::builder(environment(&emulator), creds.clone())
        .build()
        .unwrap();
    let clone = cache.clone();
    cache.token().await.unwrap();
    assert!(Arc::strong_count(&creds) > 1);
    drop(cache);
    settle().await;
    assert!(Arc::strong_count(&creds) > 1, "a clone keeps it alive");
    drop(clone);
    settle().await;
    assert_eq!(
        Arc::strong_count(&creds),
        1,
        "the task ended and released its state"
    );
    advance(3 * HOUR).await;
    settle().await;
    assert_eq!(
        requests(&emulator),
        1,
        "no refresh after the handles are gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_endpoint_gives_a_typed_error_after_the_wait_deadline() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_latency(HOUR);
    let cache = cache_builder(&emulator)
        .wait_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = cache.token().await.unwrap_err();
    assert!(matches!(err, Error::WaitTimedOut { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn with_the_defaults_a_hanging_endpoint_times_out_within_the_wait_and_the_caller_gets_that_at_15_s()
 {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_latency(HOUR);
    let cache = cache_builder(&emulator).build().unwrap();
    let started = Instant::now();
    let err = cache.token().await.unwrap_err();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(15),
        "the default wait"
    );
    // The request's own timeout (10 s total) failed the first attempt within the wait, so the
    // caller gets that, not a wait timeout; the second attempt was still under way. (Checks
    // in between are unreliable here: the paused clock runs ahead of the sockets' real I/O.)
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(requests(&emulator), 2);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_reaches_callers_at_once() {
    let emulator = Emulator::start().await.unwrap();
    let wrong = ClientCredentials::new(emulator.client_id(), "not-the-secret".into()).unwrap();
    let cache = TokenCache::builder(environment(&emulator), wrong)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = cache.token().await.unwrap_err();
    assert!(err.is_invalid_client());
    assert!(started.elapsed() < Duration::from_millis(10));
    // Later callers get it at once too, without a request each.
    for _ in 0..20 {
        assert!(cache.token().await.unwrap_err().is_invalid_client());
    }
    assert_eq!(
        requests(&emulator),
        1,
        "one request; the reload brought the same secret, so no retry"
    );
    let stats = cache.stats();
    assert!(stats.last_error.unwrap().contains("invalid_client"));
    assert_eq!(stats.token_remaining, None);
}

#[tokio::test(start_paused = true)]
async fn stats_describe_health_without_the_token() {
    let emulator = Emulator::start().await.unwrap();
    let cache = cache_builder(&emulator).build().unwrap();
    let token = cache.token().await.unwrap();
    for _ in 0..9 {
        cache.token().await.unwrap();
    }
    advance(Duration::from_secs(60)).await;
    let stats = cache.stats();
    assert_eq!(
        (stats.fetches, stats.fetch_failures, stats.hits, stats.waits),
        (1, 0, 9, 1)
    );
    assert_eq!(stats.token_age, Some(Duration::from_secs(60)));
    assert_eq!(stats.token_remaining, Some(Duration::from_secs(3540)));
    let shown = format!("{cache:?} {stats:?}");
    assert!(!shown.contains(token.secret().expose_secret()));
    assert!(!shown.contains(emulator.client_secret()));
}
