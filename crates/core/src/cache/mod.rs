//! The token cache: single flight, refresh ahead in the background, serve while valid.

mod engine;
mod keyed;
mod schedule;
mod stats;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub use keyed::{CacheKey, KeyedTokenCache, KeyedTokenCacheBuilder};
pub use stats::CacheStats;

pub(crate) use self::engine::Engine;
use self::engine::{Config, Status, Worker};
use self::schedule::Margins;
use crate::client::TokenClient;
use crate::environment::Environment;
use crate::error::{ConfigError, Error};
use crate::scope::Scopes;
use crate::source::CredentialsSource;
use crate::token::AccessToken;

/// A cached, self-refreshing payments access token for one client and scope set.
///
/// Cheap to clone (clones share the cache) and `Send + Sync`.
///
/// - **Hot path**: while a token is usable, [`token`](Self::token) and
///   [`cached`](Self::cached) return it without locks, I/O or allocation: one atomic load
///   and one reference count.
/// - **Single flight**: one background task per cache does every fetch, so however many
///   callers wait, one request is in flight.
/// - **Refresh ahead**: when less than the soft margin of the lifetime remains (5 minutes
///   of an hour by default, scaled down for short lifetimes and jittered by ±10% so a fleet
///   does not refresh in lockstep), the task refreshes in the background while callers keep
///   getting the current token.
/// - **Whole seconds**: margins count back from `expires_in` less 1 s, because servers compare
///   a JWT's whole-second `exp` and can reject a token up to a second early.
/// - **Hard margin**: a token within the hard margin of expiry (30 s plus the renewal time
///   of recent fetches, scaled down for short lifetimes) is withdrawn; callers then wait for
///   the fresh one, up to the wait deadline, and get a typed [`Error`] after it.
/// - **Serve while valid**: failed refreshes are retried in the background with exponential
///   backoff and full jitter (1 s doubling to 60 s by default), at least as late as the
///   server's `Retry-After`, while callers keep getting the still-valid token.
/// - **Invalidate**: [`invalidate`](Self::invalidate) withdraws exactly the token it is
///   given, so a late 401 for an old token never throws away a fresh one.
/// - **Rotation**: on `invalid_client` the credentials source is reloaded once and the
///   request retried once.
/// - **Time** is tokio's monotonic clock: wall-clock jumps change nothing.
///
/// Dropping the last handle stops the background task.
///
/// # Example
///
/// ```no_run
/// use truelayer_auth::{ClientCredentials, Environment, Scope, Scopes, TokenCache};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let creds = ClientCredentials::new("sandbox-acme-1a2b3c", std::env::var("SECRET")?.into())?;
/// let tokens = TokenCache::builder(Environment::Sandbox, creds)
///     .scopes(Scopes::payments().with(Scope::RecurringPaymentsSweeping))
///     .build()?;
/// let token = tokens.token().await?; // fetched once, then served from the cache
/// let header = token.authorization_header();
/// # let _ = header; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenCache {
    handle: Arc<Handle>,
}

struct Handle {
    engine: Arc<Engine>,
    started: AtomicBool,
    spawning: Mutex<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The last handle is gone: stop the refresh task.
        self.engine.closed.store(true, Ordering::Release);
        self.engine.shutdown.notify_one();
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.handle.engine;
        f.debug_struct("TokenCache")
            .field("environment", &e.environment)
            .field("scopes", &e.scopes.as_str())
            .field("source", &e.source)
            .field("stats", &e.stats())
            .finish()
    }
}

impl TokenCache {
    /// A builder for a cache of tokens for `environment`, with credentials from `source`.
    pub fn builder(environment: Environment, source: impl CredentialsSource) -> TokenCacheBuilder {
        TokenCacheBuilder {
            environment,
            source: Arc::new(source),
            scopes: Scopes::payments(),
            client: None,
            config: TokenCacheBuilder::DEFAULT_CONFIG,
        }
    }

    /// A usable token: the cached one, or, when there is none, the one the background task
    /// fetches next, waited for up to the wait deadline.
    ///
    /// # Errors
    ///
    /// When no usable token can be had: the fetch's [`Error`] once it is not worth waiting
    /// for the next attempt (not retryable, or the next attempt is past the deadline), and
    /// after the deadline the last failure or [`Error::WaitTimedOut`].
    pub async fn token(&self) -> Result<AccessToken, Error> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        self.wait_for_token().await
    }

    /// The cached token if one is usable now; never waits and never fetches.
    pub fn cached(&self) -> Option<AccessToken> {
        let engine = &self.handle.engine;
        let token = engine.load()?;
        engine.hits.add();
        Some(token)
    }

    /// Withdraws `token` after the API rejected it (a 401), and starts a refresh.
    ///
    /// Only that exact token is withdrawn: if the cache already holds a newer one, nothing
    /// happens and `false` is returned. Many concurrent invalidations of one token cause one
    /// refresh.
    ///
    /// [`AccessToken::invalidate`] does the same from the token alone.
    pub fn invalidate(&self, token: &AccessToken) -> bool {
        self.handle.engine.invalidate(token)
    }

    /// A snapshot of the cache's health: fetches, failures, hits, waits, the token's age and
    /// remaining lifetime. It never contains the token.
    pub fn stats(&self) -> CacheStats {
        self.handle.engine.stats()
    }

    /// The environment tokens come from.
    pub fn environment(&self) -> &Environment {
        &self.handle.engine.environment
    }

    /// The scopes requested.
    pub fn scopes(&self) -> &Scopes {
        &self.handle.engine.scopes
    }

    fn ensure_worker(&self) {
        if self.handle.started.load(Ordering::Acquire) {
            return;
        }
        let _spawning = self
            .handle
            .spawning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.handle.started.load(Ordering::Acquire) {
            Worker::spawn(self.handle.engine.clone());
            self.handle.started.store(true, Ordering::Release);
        }
    }

    async fn wait_for_token(&self) -> Result<AccessToken, Error> {
        let engine = &self.handle.engine;
        let started = Instant::now();
        let deadline = started + engine.config.wait_timeout;
        // Subscribe before looking again, so no publication can slip between the two.
        let mut status = engine.status.subscribe();
        self.ensure_worker();
        engine.waits.fetch_add(1, Ordering::Relaxed);
        loop {
            if let Some(token) = engine.load() {
                return Ok(token);
            }
            if let Some(error) = verdict(&status.borrow_and_update(), deadline) {
                return Err(error);
            }
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    if let Some(token) = engine.load() {
                        return Ok(token);
                    }
                    return Err(status
                        .borrow()
                        .error
                        .clone()
                        .unwrap_or(Error::WaitTimedOut {
                            waited: started.elapsed(),
                        }));
                }
            }
        }
    }
}

/// Whether a waiting caller should give up now, with which error.
fn verdict(status: &Status, deadline: Instant) -> Option<Error> {
    if status.in_flight {
        return None;
    }
    let error = status.error.as_ref()?;
    let next_too_late = status.next_attempt.is_some_and(|next| next > deadline);
    (!error.is_retryable() || next_too_late).then(|| error.clone())
}

/// Builds a [`TokenCache`].
#[derive(Debug)]
pub struct TokenCacheBuilder {
    environment: Environment,
    source: Arc<dyn CredentialsSource>,
    scopes: Scopes,
    client: Option<TokenClient>,
    config: Config,
}

impl TokenCacheBuilder {
    const DEFAULT_CONFIG: Config = Config {
        margins: Margins {
            soft: Duration::from_secs(5 * 60),
            hard: Duration::from_secs(30),
            jitter: 0.1,
        },
        wait_timeout: Duration::from_secs(15),
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
        min_fetch_interval: Duration::from_secs(1),
    };

    /// The scopes to request. Default: `payments`.
    #[must_use]
    pub fn scopes(mut self, scopes: Scopes) -> Self {
        self.scopes = scopes;
        self
    }

    /// The token client (and so the connection pool and timeouts) to use. Default: a new
    /// [`TokenClient`]. Its retry policy is not used: the cache retries on its own schedule.
    #[must_use]
    pub fn client(mut self, client: TokenClient) -> Self {
        self.client = Some(client);
        self
    }

    /// Refresh this long before expiry (scaled down for short lifetimes). Default 5 minutes.
    #[must_use]
    pub fn soft_margin(mut self, margin: Duration) -> Self {
        self.config.margins.soft = margin;
        self
    }

    /// Stop handing a token out this long (plus the recent renewal time) before expiry
    /// (scaled down for short lifetimes). Default 30 s.
    #[must_use]
    pub fn hard_margin(mut self, margin: Duration) -> Self {
        self.config.margins.hard = margin;
        self
    }

    /// The soft margin's random spread, as a fraction (0.1 is ±10%). Default 0.1.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.config.margins.jitter = fraction;
        self
    }

    /// How long a caller waits for a token when none is usable. Default 15 s.
    #[must_use]
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.config.wait_timeout = timeout;
        self
    }

    /// Backoff between failed fetches: full jitter over `initial` doubling up to `max`.
    /// Default 1 s to 60 s.
    #[must_use]
    pub fn refresh_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.backoff_initial = initial;
        self.config.backoff_max = max.max(initial);
        self
    }

    /// The least time between two fetches, whatever lifetimes and invalidations ask for.
    /// Default 1 s.
    #[must_use]
    pub fn min_fetch_interval(mut self, interval: Duration) -> Self {
        self.config.min_fetch_interval = interval;
        self
    }

    /// Builds the cache. The background task starts with the first call to
    /// [`TokenCache::token`], inside the caller's tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidSetting`] for a jitter outside `[0, 0.5]`, a hard margin not
    /// below the soft one, or a zero wait timeout; and as [`TokenClient::new`].
    pub fn build(self) -> Result<TokenCache, ConfigError> {
        let c = &self.config;
        if !(0.0..=0.5).contains(&c.margins.jitter) {
            return Err(ConfigError::InvalidSetting {
                name: "jitter",
                reason: "the jitter fraction must be between 0 and 0.5",
            });
        }
        if c.margins.hard >= c.margins.soft {
            return Err(ConfigError::InvalidSetting {
                name: "hard_margin",
                reason: "the hard margin must be smaller than the soft margin",
            });
        }
        if c.wait_timeout.is_zero() {
            return Err(ConfigError::InvalidSetting {
                name: "wait_timeout",
                reason: "the wait timeout must be greater than zero",
            });
        }
        let client = match self.client {
            Some(client) => client,
            None => TokenClient::new()?,
        };
        let engine = Engine::new(
            client,
            self.source,
            self.environment,
            self.scopes,
            self.config,
        );
        Ok(TokenCache {
            handle: Arc::new(Handle {
                engine: Arc::new(engine),
                started: AtomicBool::new(false),
                spawning: Mutex::new(()),
            }),
        })
    }
}
