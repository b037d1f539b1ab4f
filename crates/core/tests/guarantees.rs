//! The cache's guarantees where they used to rest on the refresh task staying alive and
//! well-behaved: other runtimes, dead and stuck tasks, hostile credentials sources, long
//! server hints, permanent failures, slow fetches and absurd settings.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::{Instant, advance, sleep};
use truelayer_auth::{
    ClientCredentials, CredentialsError, CredentialsFuture, CredentialsSource, Error, TokenCache,
    TokenCacheBuilder,
};
use truelayer_auth_emulator::{Emulator, Fault};
use truelayer_auth_testkit::emulator::{cache_builder, credentials, environment, environment_at};

const HOUR: Duration = Duration::from_secs(3600);
const CLIENT: &str = "runtime-client";
const SECRET: &str = "runtime-secret-0123";

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A free loopback address, so emulators in successive runtimes can share it.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Runs `body` in a new paused runtime, with an emulator on `addr` running in that runtime
/// (tokio's paused clock is only reliable for I/O inside its own runtime). It knows the
/// fixed client, so a cache built once works against every one of them.
fn in_new_runtime<F, T>(addr: SocketAddr, body: impl FnOnce(Arc<Emulator>) -> F) -> T
where
    F: Future<Output = T>,
{
    let runtime = paused_runtime();
    runtime.block_on(async {
        let emulator = Arc::new(Emulator::bind(addr).await.unwrap());
        emulator.add_client(CLIENT, SECRET, ["payments"]);
        // Held here too: a body that ignores its emulator must not stop it.
        body(emulator.clone()).await
    })
}

fn fixed_client(addr: SocketAddr) -> TokenCacheBuilder {
    let creds = ClientCredentials::new(CLIENT, SECRET.into()).unwrap();
    TokenCache::builder(environment_at(addr), creds)
}

async fn settle() {
    sleep(Duration::from_millis(1)).await;
}

fn requests(emulator: &Emulator) -> u64 {
    emulator.stats().token_requests
}

#[test]
fn a_cache_outliving_the_runtime_of_its_task_never_serves_past_the_hard_margin() {
    let addr = free_addr();
    let cache = fixed_client(addr).build().unwrap();
    // Warmed in one runtime, which is then dropped with the refresh task in it.
    let first = in_new_runtime(addr, |_| {
        let cache = cache.clone();
        async move { cache.token().await.unwrap() }
    });
    in_new_runtime(addr, |emulator| async move {
        assert_eq!(cache.cached().unwrap().id(), first.id(), "still valid");
        advance(HOUR - Duration::from_secs(20)).await;
        // No task withdrew it: the caller's own check must refuse it.
        assert!(cache.cached().is_none(), "handed out past its hard margin");
        let started = Instant::now();
        let fresh = cache
            .token()
            .await
            .expect("a new task fetches in this runtime");
        assert_ne!(fresh.id(), first.id());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(requests(&emulator), 1);
    });
}

#[test]
fn after_an_invalidation_in_another_runtime_callers_get_a_fresh_token_not_a_timeout() {
    let addr = free_addr();
    let cache = fixed_client(addr)
        .wait_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let first = in_new_runtime(addr, |_| {
        let cache = cache.clone();
        async move { cache.token().await.unwrap() }
    });
    in_new_runtime(addr, |_| async move {
        advance(Duration::from_secs(120)).await;
        assert!(cache.invalidate(&first), "a suspect token is withdrawn");
        let started = Instant::now();
        let fresh = cache
            .token()
            .await
            .expect("no wait for a task that is gone");
        assert_ne!(fresh.id(), first.id());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    });
}

#[test]
fn a_static_cache_shared_by_many_runtimes_keeps_working() {
    use std::sync::LazyLock;
    static ADDR: LazyLock<SocketAddr> = LazyLock::new(free_addr);
    static CACHE: LazyLock<TokenCache> = LazyLock::new(|| fixed_client(*ADDR).build().unwrap());
    // Like #[tokio::test]s sharing a static: a runtime each, one after another.
    let mut seen = std::collections::HashSet::new();
    for round in 0..5 {
        let id = in_new_runtime(*ADDR, |_| async move {
            let token = CACHE.token().await.unwrap();
            // Each runtime's clock moves past the hard margin of what it fetched.
            advance(HOUR).await;
            assert!(
                CACHE.cached().is_none(),
                "round {round}: expired token served"
            );
            token.id()
        });
        seen.insert(id);
    }
    assert_eq!(seen.len(), 5, "a fresh token per runtime");
}

#[test]
fn a_sync_wrapper_with_a_runtime_per_call_gets_usable_tokens() {
    let addr = free_addr();
    let cache = fixed_client(addr).build().unwrap();
    let mut ids = Vec::new();
    for call in 1..=3u32 {
        // Runtime::new()?.block_on(cache.token()) per call. A new paused runtime's clock
        // starts at the real now, so each call first moves its clock 70 minutes per call past
        // it: every call finds the token the previous one got expired.
        let token = in_new_runtime(addr, |_| {
            let cache = cache.clone();
            async move {
                advance(call * Duration::from_secs(70 * 60)).await;
                let token = cache.token().await.unwrap();
                assert!(token.remaining() > Duration::from_secs(3000), "call {call}");
                token
            }
        });
        ids.push(token.id());
    }
    ids.dedup();
    assert_eq!(
        ids.len(),
        3,
        "a fresh token whenever the last one had expired"
    );
}

#[test]
fn a_task_in_a_runtime_that_is_no_longer_driven_is_replaced_by_a_waiting_caller() {
    let addr = free_addr();
    let cache = fixed_client(addr)
        .wait_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Warm in a runtime that stays alive but is never driven again.
    let idle = paused_runtime();
    let emulator = idle.block_on(async {
        let emulator = Emulator::bind(addr).await.unwrap();
        emulator.add_client(CLIENT, SECRET, ["payments"]);
        emulator
    });
    let first = idle.block_on(cache.token()).unwrap();
    idle.block_on(async move {
        drop(emulator);
        tokio::task::yield_now().await; // the aborted server task lets go of the port
    });
    in_new_runtime(addr, |emulator| async move {
        advance(Duration::from_secs(120)).await;
        assert!(cache.invalidate(&first));
        let started = Instant::now();
        let fresh = cache.token().await.expect("the stuck task is replaced");
        assert_ne!(fresh.id(), first.id());
        assert!(
            started.elapsed() <= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(requests(&emulator), 1);
    });
    drop(idle);
}

/// A credentials source that panics, hangs or answers, as told.
#[derive(Debug)]
struct Unruly {
    creds: ClientCredentials,
    mode: AtomicU32,
    calls: AtomicU32,
}

const ANSWER: u32 = 0;
const PANIC: u32 = 1;
const HANG: u32 = 2;

impl CredentialsSource for Unruly {
    fn credentials(&self) -> CredentialsFuture<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mode = self.mode.load(Ordering::SeqCst);
        Box::pin(async move {
            match mode {
                PANIC => panic!("a bug in the credentials source"),
                HANG => std::future::pending().await,
                _ => Ok::<_, CredentialsError>(self.creds.clone()),
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn with_the_defaults_a_hanging_credentials_source_reaches_callers_as_its_own_error() {
    let emulator = Emulator::start().await.unwrap();
    let source = Arc::new(Unruly {
        creds: credentials(&emulator),
        mode: AtomicU32::new(HANG),
        calls: AtomicU32::new(0),
    });
    let cache = TokenCache::builder(environment(&emulator), source.clone())
        .build()
        .unwrap();
    let started = Instant::now();
    let err = cache.token().await.unwrap_err();
    // Each load is cut off at 5 s, inside the 15 s wait: the caller learns which part hung.
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(15),
        "the default wait"
    );
    assert!(matches!(err, Error::Credentials(_)), "{err:?}");
    let chain = truelayer_auth::error_chain(&err);
    assert!(chain.contains("did not answer within 5000 ms"), "{chain}");
    assert!(
        source.calls.load(Ordering::SeqCst) >= 2,
        "retried after the cut"
    );
    assert_eq!(requests(&emulator), 0);
}

#[tokio::test(start_paused = true)]
async fn a_credentials_source_that_panics_or_hangs_neither_kills_nor_wedges_the_cache() {
    let emulator = Emulator::start().await.unwrap();
    let source = Arc::new(Unruly {
        creds: credentials(&emulator),
        mode: AtomicU32::new(PANIC),
        calls: AtomicU32::new(0),
    });
    let cache = TokenCache::builder(environment(&emulator), source.clone())
        .wait_timeout(Duration::from_secs(3))
        .credentials_timeout(Duration::from_secs(1))
        .build()
        .unwrap();

    // A panic is a failed, retryable fetch, retried within the caller's deadline.
    let started = Instant::now();
    let err = cache.token().await.unwrap_err();
    assert!(matches!(err, Error::Credentials(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() <= Duration::from_secs(3));
    assert!(
        source.calls.load(Ordering::SeqCst) >= 2,
        "retried after the panic"
    );
    source.mode.store(ANSWER, Ordering::SeqCst);
    // The backoff after those failures (full jitter) may reach past a new caller's deadline,
    // which gets the last error at once, by design: callers keep asking, as a service would.
    let asked = Instant::now();
    while let Err(e) = cache.token().await {
        assert!(
            asked.elapsed() < Duration::from_secs(130),
            "the cache did not survive the panic: {e:?}"
        );
        advance(Duration::from_secs(5)).await;
    }

    // A hanging source is cut off after its timeout.
    let held = cache.token().await.unwrap();
    advance(Duration::from_secs(120)).await;
    source.mode.store(HANG, Ordering::SeqCst);
    assert!(cache.invalidate(&held));
    let started = Instant::now();
    let err = cache.token().await.unwrap_err();
    assert!(matches!(err, Error::Credentials(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    source.mode.store(ANSWER, Ordering::SeqCst);
    // Callers keep asking; within the longest backoff (60 s, jittered) one gets a token.
    let asked = Instant::now();
    let fresh = loop {
        match cache.token().await {
            Ok(token) => break token,
            Err(e) => assert!(
                asked.elapsed() < Duration::from_secs(130),
                "no recovery after a hang: {e:?}"
            ),
        }
        advance(Duration::from_secs(5)).await;
    };
    assert_ne!(fresh.id(), held.id());
}

#[tokio::test(start_paused = true)]
async fn retry_after_an_hour_at_the_soft_margin_does_not_starve_callers() {
    let emulator = Emulator::start().await.unwrap();
    let cache = cache_builder(&emulator).jitter(0.0).build().unwrap();
    let first = cache.token().await.unwrap();
    // A WAF answers the refresh with `Retry-After: 3600`, then recovers.
    emulator.fail_next([Fault::rate_limited(3600)]);
    advance(HOUR - Duration::from_secs(300)).await;
    settle().await;
    assert_eq!(requests(&emulator), 2, "the refresh met the 429");
    // The pause is capped by the longest backoff (60 s): the token is replaced long before
    // its hard margin, 4.5 minutes on.
    for _ in 0..70 {
        advance(Duration::from_secs(1)).await;
        settle().await;
        assert!(cache.cached().is_some(), "callers always have a token");
    }
    let fresh = cache.cached().unwrap();
    assert_ne!(fresh.id(), first.id(), "refreshed within the capped pause");
    assert_eq!(requests(&emulator), 3);
}

#[tokio::test(start_paused = true)]
async fn with_no_token_held_a_waiting_caller_does_not_wait_out_a_server_hint() {
    let emulator = Emulator::start().await.unwrap();
    emulator.fail_next([Fault::rate_limited(3600)]);
    let cache = cache_builder(&emulator)
        .wait_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // The first attempt meets `Retry-After: 3600`; the waiting caller's demand starts the
    // next one after the backoff (at most 1 s after a first failure), not after the hour.
    let started = Instant::now();
    cache
        .token()
        .await
        .expect("the waiting caller gets a token");
    assert!(
        started.elapsed() <= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(requests(&emulator), 2);
}

#[tokio::test(start_paused = true)]
async fn after_a_permanent_failure_nothing_is_fetched_until_a_caller_asks_again() {
    let emulator = Emulator::start().await.unwrap();
    let wrong = ClientCredentials::new(emulator.client_id(), "not-the-secret".into()).unwrap();
    let cache = TokenCache::builder(environment(&emulator), wrong)
        .build()
        .unwrap();
    assert!(cache.token().await.unwrap_err().is_invalid_client());
    assert_eq!(requests(&emulator), 1);
    // A day passes with nobody asking: no background attempts.
    for _ in 0..24 {
        advance(HOUR).await;
        settle().await;
    }
    assert_eq!(
        requests(&emulator),
        1,
        "no background retries of a permanent failure"
    );
    // A caller asks: one attempt.
    assert!(cache.token().await.unwrap_err().is_invalid_client());
    assert_eq!(requests(&emulator), 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_that_arrives_inside_its_hard_margin_is_a_failed_attempt() {
    let emulator = Emulator::start().await.unwrap();
    // 20-second tokens are usable until about 16.6 s; this one takes 18 s to arrive.
    emulator.set_token_lifetime(Some(20));
    emulator.fail_next([Fault::delay(Duration::from_secs(18))]);
    let patient = truelayer_auth::TokenClient::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let cache = cache_builder(&emulator)
        .client(patient)
        .wait_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let token = cache.token().await.unwrap();
    assert!(
        token.remaining() > Duration::from_secs(15),
        "the late token was not handed out: {:?} left",
        token.remaining()
    );
    assert_eq!(requests(&emulator), 2);
    let stats = cache.stats();
    assert_eq!(stats.fetch_failures, 1);
    assert!(stats.last_error.is_none(), "the retry succeeded");
}

#[tokio::test(start_paused = true)]
async fn huge_settings_saturate_instead_of_panicking() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_latency(Duration::from_secs(5));
    let cache = cache_builder(&emulator)
        .wait_timeout(Duration::MAX)
        .min_fetch_interval(Duration::MAX)
        .refresh_backoff(Duration::MAX, Duration::MAX)
        .build()
        .unwrap();
    let first = cache.token().await.unwrap();
    advance(Duration::from_secs(120)).await;
    assert!(cache.invalidate(&first));
    // The rate bound is "never again": the next caller gets no token, but no panic either.
    let waited = tokio::time::timeout(Duration::from_secs(30), cache.token()).await;
    assert!(
        waited.is_err(),
        "no second fetch within a Duration::MAX rate bound"
    );
    assert_eq!(requests(&emulator), 1);
}

/// A cache whose credentials source hangs until told to answer, for the fixed client.
fn hanging_cache(addr: SocketAddr, wait: Duration) -> (TokenCache, Arc<Unruly>) {
    let source = Arc::new(Unruly {
        creds: ClientCredentials::new(CLIENT, SECRET.into()).unwrap(),
        mode: AtomicU32::new(HANG),
        calls: AtomicU32::new(0),
    });
    let cache = TokenCache::builder(environment_at(addr), source.clone())
        .wait_timeout(wait)
        .build()
        .unwrap();
    (cache, source)
}

#[test]
fn a_fetch_abandoned_with_its_runtime_does_not_wedge_the_cache() {
    let addr = free_addr();
    let (cache, source) = hanging_cache(addr, Duration::from_secs(10));
    // Warm-up under a timeout, in a runtime that is then dropped mid-fetch.
    let warm = paused_runtime();
    let gave_up =
        warm.block_on(async { tokio::time::timeout(Duration::from_secs(2), cache.token()).await });
    assert!(gave_up.is_err(), "the credentials source hangs");
    drop(warm);
    source.mode.store(ANSWER, Ordering::SeqCst);
    in_new_runtime(addr, |emulator| async move {
        let started = Instant::now();
        cache
            .token()
            .await
            .expect("the abandoned attempt does not hold callers");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(requests(&emulator), 1);
    });
}

#[test]
fn a_task_stuck_mid_fetch_in_a_runtime_no_longer_driven_is_replaced() {
    let addr = free_addr();
    let (cache, source) = hanging_cache(addr, Duration::from_secs(120));
    // The fetch starts in a runtime that stays alive but is never driven again.
    let idle = paused_runtime();
    let gave_up =
        idle.block_on(async { tokio::time::timeout(Duration::from_secs(1), cache.token()).await });
    assert!(gave_up.is_err(), "the credentials source hangs");
    source.mode.store(ANSWER, Ordering::SeqCst);
    in_new_runtime(addr, |emulator| async move {
        let started = Instant::now();
        cache
            .token()
            .await
            .expect("a caller waiting on the stuck fetch gets the task replaced");
        // Callers give a fetch as long as a driven one can take (2 credentials loads of 5 s
        // and 2 requests of 10 s, plus 1 s), then the task 1 s to answer.
        assert!(
            started.elapsed() <= Duration::from_secs(33),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(requests(&emulator), 1);
    });
    drop(idle);
}
