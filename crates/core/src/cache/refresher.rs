//! The refresh engine's public face: [`Refresh`] says how to get a fresh token,
//! [`Refresher`] serves it and keeps it fresh.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::CacheSettings;
use super::engine::Engine;
use super::keyed::CacheKey;
use super::stats::CacheStats;
use crate::error::{ConfigError, Error};
use crate::token::AccessToken;
use crate::token_source::{TokenFuture, TokenSource};

/// The future of [`Refresh::refresh`].
pub type RefreshFuture<'a> = Pin<Box<dyn Future<Output = Result<AccessToken, Error>> + Send + 'a>>;

/// How to get a fresh token: what a [`Refresher`] refreshes.
///
/// [`TokenCache`](crate::TokenCache) is a `Refresher` of a `client_credentials` fetch; a
/// Data API connection's refresh (through its store, under its lock) is another. The
/// refresher decides when to call [`refresh`](Self::refresh), at most one call at a time.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use truelayer_auth::{AccessToken, CacheSettings, Refresh, RefreshFuture, Refresher};
///
/// /// Tokens minted locally, say for a test double of an upstream.
/// struct Mint;
///
/// impl Refresh for Mint {
///     fn refresh(&self) -> RefreshFuture<'_> {
///         Box::pin(async {
///             let token = AccessToken::new(
///                 "minted-token".into(),
///                 Duration::from_secs(3600),
///                 tokio::time::Instant::now(),
///                 None,
///             )
///             .expect("a valid token");
///             Ok(token)
///         })
///     }
///
///     fn time_limit(&self) -> Duration {
///         Duration::from_secs(1)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tokens = Refresher::new(Mint, CacheSettings::default())?;
/// let token = tokens.token().await?;
/// assert_eq!(tokens.cached().map(|t| t.id()), Some(token.id()));
/// # Ok(()) }
/// ```
pub trait Refresh: Send + Sync + 'static {
    /// One attempt at a fresh token. It runs in a task of its own, so a caller that stops
    /// waiting does not cancel it. Errors are judged by [`Error::is_retryable`].
    fn refresh(&self) -> RefreshFuture<'_>;

    /// The longest one attempt takes when its runtime runs it: the sum of its own time
    /// limits. The refresher cuts an attempt off there ([`Error::Timeout`]), and one still
    /// unfinished a second later (its runtime no longer runs it) is replaced.
    fn time_limit(&self) -> Duration;

    /// The tracing span attempts run in. Default: none.
    fn span(&self) -> tracing::Span {
        tracing::Span::none()
    }
}

/// Serves a token while it is usable and refreshes it ahead of expiry: the engine behind
/// [`TokenCache`](crate::TokenCache), for tokens that come from any [`Refresh`].
///
/// Cheap to clone (clones share the token). It keeps every guarantee the
/// [`TokenCache`](crate::TokenCache) docs list: lock-free reads, one attempt at a time,
/// refresh ahead in the background, the hard margin checked by every reader on both
/// clocks, backoff while a valid token is served, bounded waits, and nothing that rests on
/// a task staying alive.
pub struct Refresher<R> {
    engine: Arc<Engine<R>>,
}

impl<R> Clone for Refresher<R> {
    fn clone(&self) -> Self {
        Refresher {
            engine: self.engine.clone(),
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for Refresher<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refresher")
            .field("refresh", &self.engine.refresh)
            .finish_non_exhaustive()
    }
}

impl<R: Refresh> Refresher<R> {
    /// A refresher of `refresh` with `settings`. Nothing is fetched until a token is asked for.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidSetting`] for settings [`CacheSettings`] documents as invalid.
    pub fn new(refresh: R, settings: CacheSettings) -> Result<Self, ConfigError> {
        settings.validate()?;
        Ok(Self::with_key(refresh, settings, None))
    }

    pub(crate) fn with_key(refresh: R, settings: CacheSettings, key: Option<CacheKey>) -> Self {
        Refresher {
            engine: Engine::new(refresh, settings, key),
        }
    }

    /// A usable token: the held one, or the next one fetched, waited for up to the wait
    /// deadline.
    ///
    /// # Errors
    ///
    /// When no usable token can be had: the attempt's [`Error`] once another is not worth
    /// waiting for (not retryable, or it would start past the deadline), and after the
    /// deadline the last failure or [`Error::WaitTimedOut`].
    pub async fn token(&self) -> Result<AccessToken, Error> {
        match self.engine.cached() {
            Some(token) => Ok(token),
            None => self.engine.wait_for_token().await,
        }
    }

    /// The held token if it is usable now; never waits and never fetches.
    pub fn cached(&self) -> Option<AccessToken> {
        self.engine.cached()
    }

    /// Reports that the API rejected `token` (a 401); returns whether the report was acted
    /// on. See [`TokenCache::invalidate`](crate::TokenCache::invalidate).
    pub fn invalidate(&self, token: &AccessToken) -> bool {
        self.engine.invalidate(token)
    }

    /// A snapshot of the refresher's health. It never contains the token.
    pub fn stats(&self) -> CacheStats {
        self.engine.stats()
    }

    /// What is refreshed.
    pub fn get_ref(&self) -> &R {
        &self.engine.refresh
    }

    /// Whether a handle other than `self` exists (the keyed cache's "in use").
    pub(crate) fn is_shared(&self) -> bool {
        Arc::strong_count(&self.engine) > 1
    }
}

impl<R: Refresh> TokenSource for Refresher<R> {
    fn cached(&self, _request: &http::Extensions) -> Result<Option<AccessToken>, Error> {
        Ok(self.engine.cached())
    }

    fn token(&self, _request: &http::Extensions) -> TokenFuture {
        if let Some(token) = self.engine.cached() {
            return Box::pin(std::future::ready(Ok(token)));
        }
        let engine = self.engine.clone();
        Box::pin(async move { engine.wait_for_token().await })
    }

    fn invalidate(&self, token: &AccessToken) -> bool {
        self.engine.invalidate(token)
    }

    fn replacement(&self, rejected: &AccessToken, _request: &http::Extensions) -> TokenFuture {
        let (engine, rejected) = (self.engine.clone(), rejected.clone());
        Box::pin(async move { engine.replacement(&rejected).await })
    }
    fn reports_through_tokens(&self) -> bool {
        true
    }
}
