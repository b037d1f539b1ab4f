//! The token cache: a [`Refresher`] of `client_credentials` tokens, and the keyed cache of
//! many. The engine is in `engine.rs` (effects) and `state.rs` (decisions); the diagram of
//! its states is in `docs/architecture.md`.

mod engine;
mod grant;
mod keyed;
mod refresher;
mod schedule;
mod state;
mod stats;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use keyed::{CacheKey, KeyedTokenCache, KeyedTokenCacheBuilder};
pub use refresher::{Refresh, RefreshFuture, Refresher};
pub use stats::CacheStats;

use self::grant::ClientCredentialsGrant;
use self::schedule::Margins;
use crate::client::TokenClient;
use crate::environment::Environment;
use crate::error::{ConfigError, Error};
use crate::scope::Scopes;
use crate::source::CredentialsSource;
use crate::token::AccessToken;
use crate::token_source::{TokenFuture, TokenSource};

/// A cached, self-refreshing payments access token for one client and scope set.
///
/// Cheap to clone (clones share the cache) and `Send + Sync`.
///
/// - **Hot path**: while a token is usable, [`token`](Self::token) and
///   [`cached`](Self::cached) return it without locks, I/O or allocation: an `ArcSwap`
///   load, a read of the kernel's coarse clocks, a striped hit counter and a reference count.
/// - **Hard margin, checked by every caller**: a token within the hard margin of expiry
///   (30 s plus the renewal time of recent fetches, scaled down for short lifetimes) is never
///   handed out, by the monotonic clock or the wall clock, whichever says so first (a
///   suspended machine's monotonic clock stops; the server's does not). Callers then wait for
///   a fresh one, up to the wait deadline, and get a typed [`Error`] after it.
/// - **Single flight**: one fetch at a time, however many callers wait, and fetches are at
///   least [`min_fetch_interval`](TokenCacheBuilder::min_fetch_interval) apart.
/// - **Refresh ahead**: when less than the soft margin of the lifetime remains (5 minutes
///   of an hour by default, scaled down for short lifetimes and jittered by ±10% so a fleet
///   does not refresh in lockstep), one refresh runs in the background while callers keep
///   getting the current token.
/// - **Whole seconds**: margins count back from `expires_in` less 1 s, because servers compare
///   a JWT's whole-second `exp` and can reject a token up to a second early.
/// - **Serve while valid**: failed refreshes are retried in the background with exponential
///   backoff and full jitter (1 s doubling to 60 s by default), at least as late as the
///   server's `Retry-After` but never later than the longest backoff, while callers keep
///   getting the still-valid token. With no token held, a waiting caller does not wait out a
///   server's hint, only the backoff. After a permanent failure (say `invalid_client`) with
///   no token held, nothing is fetched until a caller asks again.
/// - **Invalidate**: [`invalidate`](Self::invalidate) reports a 401 for exactly the token it
///   is given, so a late 401 for an old token never throws away a fresh one.
/// - **Rotation**: on `invalid_client` the credentials source is reloaded once, and the
///   request retried once if the reload brought different credentials.
/// - **Runtimes**: each fetch runs in a task of its own, in the runtime of whoever started
///   it. One that ends without an answer (its runtime was dropped, it panicked) is seen by
///   the next caller, which starts another in its own runtime; one that outlives its time
///   limit (its runtime is no longer driven) is replaced likewise. A credentials source that
///   panics or hangs (5 s by default) counts as a failed fetch.
///
/// Dropping the last handle stops all refreshing.
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
    refresher: Refresher<ClientCredentialsGrant>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let grant = self.refresher.get_ref();
        f.debug_struct("TokenCache")
            .field("environment", &grant.environment)
            .field("scopes", &grant.scopes.as_str())
            .field("source", &grant.source)
            .field("stats", &self.stats())
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
            settings: CacheSettings::default(),
        }
    }

    /// A usable token: the cached one, or, when there is none, the next one fetched,
    /// waited for up to the wait deadline.
    ///
    /// # Errors
    ///
    /// When no usable token can be had: the fetch's [`Error`] once it is not worth waiting
    /// for another attempt (not retryable, or the next attempt would start past the
    /// deadline), and after the deadline the last failure or [`Error::WaitTimedOut`].
    pub async fn token(&self) -> Result<AccessToken, Error> {
        self.refresher.token().await
    }

    /// The cached token if one is usable now; never waits and never fetches.
    pub fn cached(&self) -> Option<AccessToken> {
        self.refresher.cached()
    }

    /// Reports that the API rejected `token` (a 401). Returns whether the report was acted
    /// on: `false` when `token` is not the one handed out (the cache already moved on), or was
    /// already reported.
    ///
    /// Rejections come in runs (each within a minute, or a quarter of a short lifetime, of the
    /// last one):
    ///
    /// - The first rejection of a run withdraws a token that has been handed out long enough
    ///   to be suspect (that minute): it was probably revoked, and callers wait for a fresh
    ///   one. A fresher token is more likely rejected for another reason (a gateway, a
    ///   signature error, a hostile upstream): it keeps being served while a refresh runs in
    ///   the background, at once.
    /// - Later rejections in the run never withdraw: the token keeps being served and the
    ///   refresh waits 1 s, 2 s, 4 s ... up to 5 minutes, so a 401 storm costs a handful of
    ///   fetches an hour, not one a second, and no caller waits.
    pub fn invalidate(&self, token: &AccessToken) -> bool {
        self.refresher.invalidate(token)
    }

    /// A snapshot of the cache's health: fetches, failures, hits, waits, the token's age and
    /// remaining lifetime. It never contains the token.
    pub fn stats(&self) -> CacheStats {
        self.refresher.stats()
    }

    /// The environment tokens come from.
    pub fn environment(&self) -> &Environment {
        &self.refresher.get_ref().environment
    }

    /// The scopes requested.
    pub fn scopes(&self) -> &Scopes {
        &self.refresher.get_ref().scopes
    }

    /// Whether a handle other than `self` exists (the keyed cache's "in use").
    pub(crate) fn is_shared(&self) -> bool {
        self.refresher.is_shared()
    }

    pub(crate) fn from_parts(
        client: TokenClient,
        source: Arc<dyn CredentialsSource>,
        environment: Environment,
        scopes: Scopes,
        key: Option<CacheKey>,
        settings: CacheSettings,
    ) -> Self {
        let grant = ClientCredentialsGrant {
            client,
            source,
            environment,
            scopes,
            credentials_timeout: settings.credentials_timeout,
        };
        TokenCache {
            refresher: Refresher::with_key(grant, settings, key),
        }
    }
}

impl TokenSource for TokenCache {
    fn cached(&self, request: &http::Extensions) -> Result<Option<AccessToken>, Error> {
        TokenSource::cached(&self.refresher, request)
    }

    fn token(&self, request: &http::Extensions) -> TokenFuture {
        TokenSource::token(&self.refresher, request)
    }

    fn invalidate(&self, token: &AccessToken) -> bool {
        self.refresher.invalidate(token)
    }

    fn replacement(&self, rejected: &AccessToken, request: &http::Extensions) -> TokenFuture {
        TokenSource::replacement(&self.refresher, rejected, request)
    }
    fn reports_through_tokens(&self) -> bool {
        true
    }
}

/// When a cache refreshes, how long callers wait, and how failures back off: the settings
/// of a [`TokenCache`], each key of a [`KeyedTokenCache`], and a [`Refresher`].
///
/// Builders refuse, with [`ConfigError::InvalidSetting`], a jitter outside `[0, 0.5]`, a
/// hard margin not below the soft one, and a zero wait or credentials timeout.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use truelayer_auth::CacheSettings;
///
/// let settings = CacheSettings::default()
///     .soft_margin(Duration::from_secs(600))
///     .wait_timeout(Duration::from_secs(5));
/// # let _ = settings;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub(crate) margins: Margins,
    pub(crate) wait_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) min_fetch_interval: Duration,
    pub(crate) credentials_timeout: Duration,
    pub(crate) fixed_backoff_draw: Option<f64>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            margins: Margins {
                soft: Duration::from_secs(5 * 60),
                hard: Duration::from_secs(30),
                jitter: 0.1,
            },
            wait_timeout: Duration::from_secs(15),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            min_fetch_interval: Duration::from_secs(1),
            credentials_timeout: Duration::from_secs(5),
            fixed_backoff_draw: None,
        }
    }
}

impl CacheSettings {
    /// Refresh this long before expiry (scaled down for short lifetimes). Default 5 minutes.
    #[must_use]
    pub fn soft_margin(mut self, margin: Duration) -> Self {
        self.margins.soft = margin;
        self
    }

    /// Stop handing a token out this long (plus the recent renewal time) before expiry
    /// (scaled down for short lifetimes). Default 30 s.
    #[must_use]
    pub fn hard_margin(mut self, margin: Duration) -> Self {
        self.margins.hard = margin;
        self
    }

    /// The soft margin's random spread, as a fraction (0.1 is ±10%). Default 0.1.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.margins.jitter = fraction;
        self
    }

    /// How long a caller waits for a token when none is usable. Default 15 s.
    #[must_use]
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// Backoff between failed fetches: full jitter over `initial` doubling up to `max`, which
    /// also caps how long a server's `Retry-After` can pause refreshing. Default 1 s to 60 s.
    #[must_use]
    pub fn refresh_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// The least time between two fetches, whatever lifetimes, invalidations and waiting
    /// callers ask for. Default 1 s.
    #[must_use]
    pub fn min_fetch_interval(mut self, interval: Duration) -> Self {
        self.min_fetch_interval = interval;
        self
    }

    /// How long a credentials source may take to answer before the fetch counts as failed
    /// (retryable). Default 5 s, so that a credentials load and a token request (10 s by
    /// default) both fit in the default wait (15 s) and a slow source reaches callers as its
    /// own error, not as [`Error::WaitTimedOut`]. Used by caches that load client credentials
    /// ([`TokenCache`], [`KeyedTokenCache`]); a [`Refresh`] bounds its own steps.
    #[must_use]
    pub fn credentials_timeout(mut self, timeout: Duration) -> Self {
        self.credentials_timeout = timeout;
        self
    }

    /// Replaces the backoff's random draw with `unit` (clamped to `[0, 1]`; 1 waits the full
    /// exponential cap) so a test can assert exact retry times. Not for production: a fleet
    /// that retries in step is what the jitter prevents.
    #[doc(hidden)]
    #[must_use]
    pub fn fixed_backoff_draw(mut self, unit: f64) -> Self {
        self.fixed_backoff_draw = Some(unit);
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidSetting`] for a jitter outside `[0, 0.5]`, a hard margin not
    /// below the soft one, or a zero wait or credentials timeout.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason| Err(ConfigError::InvalidSetting { name, reason });
        if !(0.0..=0.5).contains(&self.margins.jitter) {
            return invalid("jitter", "the jitter fraction must be between 0 and 0.5");
        }
        if self.margins.hard >= self.margins.soft {
            return invalid(
                "hard_margin",
                "the hard margin must be smaller than the soft margin",
            );
        }
        if self.wait_timeout.is_zero() {
            return invalid("wait_timeout", "the wait timeout must be greater than zero");
        }
        if self.credentials_timeout.is_zero() {
            return invalid(
                "credentials_timeout",
                "the credentials timeout must be greater than zero",
            );
        }
        Ok(())
    }
}

/// Builds a [`TokenCache`].
#[derive(Debug)]
pub struct TokenCacheBuilder {
    environment: Environment,
    source: Arc<dyn CredentialsSource>,
    scopes: Scopes,
    client: Option<TokenClient>,
    settings: CacheSettings,
}

impl TokenCacheBuilder {
    /// The scopes to request. Default: `payments`.
    #[must_use]
    pub fn scopes(mut self, scopes: Scopes) -> Self {
        self.scopes = scopes;
        self
    }

    /// The token client (its connection pool, timeouts and body limit) to use. Default: a
    /// new [`TokenClient`].
    #[must_use]
    pub fn client(mut self, client: TokenClient) -> Self {
        self.client = Some(client);
        self
    }

    /// All the refresh settings at once (replacing any set before).
    #[must_use]
    pub fn settings(mut self, settings: CacheSettings) -> Self {
        self.settings = settings;
        self
    }

    /// See [`CacheSettings::soft_margin`].
    #[must_use]
    pub fn soft_margin(mut self, margin: Duration) -> Self {
        self.settings = self.settings.soft_margin(margin);
        self
    }

    /// See [`CacheSettings::hard_margin`].
    #[must_use]
    pub fn hard_margin(mut self, margin: Duration) -> Self {
        self.settings = self.settings.hard_margin(margin);
        self
    }

    /// See [`CacheSettings::jitter`].
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.settings = self.settings.jitter(fraction);
        self
    }

    /// See [`CacheSettings::wait_timeout`].
    #[must_use]
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.settings = self.settings.wait_timeout(timeout);
        self
    }

    /// See [`CacheSettings::refresh_backoff`].
    #[must_use]
    pub fn refresh_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.settings = self.settings.refresh_backoff(initial, max);
        self
    }

    /// See [`CacheSettings::min_fetch_interval`].
    #[must_use]
    pub fn min_fetch_interval(mut self, interval: Duration) -> Self {
        self.settings = self.settings.min_fetch_interval(interval);
        self
    }

    /// See [`CacheSettings::credentials_timeout`].
    #[must_use]
    pub fn credentials_timeout(mut self, timeout: Duration) -> Self {
        self.settings = self.settings.credentials_timeout(timeout);
        self
    }

    /// Builds the cache. Nothing is fetched until the first call.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidSetting`] for settings [`CacheSettings`] refuses, and as
    /// [`TokenClient::new`].
    pub fn build(self) -> Result<TokenCache, ConfigError> {
        self.settings.validate()?;
        let client = match self.client {
            Some(client) => client,
            None => TokenClient::new()?,
        };
        Ok(TokenCache::from_parts(
            client,
            self.source,
            self.environment,
            self.scopes,
            None,
            self.settings,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientCredentials;
    use crate::clock::test_hooks;
    use truelayer_auth_emulator::Emulator;

    async fn emulator_and_cache() -> (Emulator, TokenCache) {
        let emulator = Emulator::start().await.unwrap();
        let creds =
            ClientCredentials::new(emulator.client_id(), emulator.client_secret().into()).unwrap();
        let cache = TokenCache::builder(Environment::custom(&emulator.url()).unwrap(), creds)
            .build()
            .unwrap();
        (emulator, cache)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_suspend_past_the_hard_margin_retires_the_token_although_no_monotonic_time_passed() {
        let (emulator, cache) = emulator_and_cache().await;
        let first = cache.token().await.unwrap();
        assert_eq!(cache.cached().unwrap().id(), first.id());
        // The laptop sleeps for an hour: the monotonic clock stops, the wall clock (and the
        // server's) does not.
        test_hooks::suspend_for(Duration::from_secs(3600));
        assert!(
            first.remaining() > Duration::from_secs(3000),
            "monotonic: still fresh"
        );
        assert!(cache.cached().is_none(), "the wall clock says it expired");
        let fresh = cache.token().await.unwrap();
        assert_ne!(fresh.id(), first.id());
        assert_eq!(emulator.stats().token_requests, 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_suspend_past_the_soft_margin_refreshes_at_once_while_serving() {
        let (emulator, cache) = emulator_and_cache().await;
        let first = cache.token().await.unwrap();
        // Asleep for 59 minutes: past the soft margin by the wall clock, not the hard one.
        test_hooks::suspend_for(Duration::from_secs(59 * 60));
        assert_eq!(cache.cached().unwrap().id(), first.id(), "still served");
        // Until the refresh has been answered and published (the emulator counts a request
        // when it arrives, a moment before the cache has its answer).
        for _ in 0..100 {
            if cache.cached().unwrap().id() != first.id() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            emulator.stats().token_requests,
            2,
            "the task refreshes by the wall clock, without waiting for the monotonic one"
        );
        assert_ne!(cache.cached().unwrap().id(), first.id());
    }
}
