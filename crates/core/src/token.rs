//! The access token and what is known about it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::cache::Engine;
use crate::error::{ConfigError, InvalidResponse};
use crate::scope::Scopes;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A payments access token.
///
/// Cloning is cheap (one reference count). The token value is a [`SecretString`]; `Debug`
/// never shows it, and [`AccessToken::authorization_header`] is marked sensitive so HTTP
/// libraries and `Debug` of a request do not print it either.
///
/// Expiry is on tokio's monotonic clock, counted from the instant the request was sent, so
/// a wall-clock jump changes nothing and the clock can be paused in tests.
#[derive(Clone)]
pub struct AccessToken {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    id: u64,
    secret: SecretString,
    header: HeaderValue,
    lifetime: Duration,
    issued_at: Instant,
    expires_at: Instant,
    granted_scope: Option<String>,
    /// The cache that handed this token out, for [`AccessToken::invalidate`].
    origin: OnceLock<Weak<Engine>>,
}

impl AccessToken {
    /// A token that lives for `lifetime`, counted from `issued_at` (when its request was sent).
    ///
    /// # Errors
    ///
    /// [`InvalidResponse::EmptyAccessToken`] for an empty token and
    /// [`InvalidResponse::AccessTokenCharacters`] for one that cannot be put in a header.
    pub fn new(
        secret: SecretString,
        lifetime: Duration,
        issued_at: Instant,
        granted_scope: Option<String>,
    ) -> Result<Self, InvalidResponse> {
        let value = secret.expose_secret();
        if value.is_empty() {
            return Err(InvalidResponse::EmptyAccessToken);
        }
        // RFC 6750 b64token characters, plus anything else visible: no spaces, no controls.
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidResponse::AccessTokenCharacters);
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {value}"))
            .map_err(|_| InvalidResponse::AccessTokenCharacters)?;
        header.set_sensitive(true);
        Ok(AccessToken {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                secret,
                header,
                lifetime,
                issued_at,
                expires_at: issued_at + lifetime,
                granted_scope,
                origin: OnceLock::new(),
            }),
        })
    }

    /// The token value. Expose it only where it is sent.
    pub fn secret(&self) -> &SecretString {
        &self.inner.secret
    }

    /// `Bearer <token>`, marked sensitive. Cloning it does not copy the token.
    pub fn authorization_header(&self) -> HeaderValue {
        self.inner.header.clone()
    }

    /// The header value by reference.
    pub fn authorization_header_ref(&self) -> &HeaderValue {
        &self.inner.header
    }

    /// The lifetime the server granted (`expires_in`).
    pub fn lifetime(&self) -> Duration {
        self.inner.lifetime
    }

    /// When the request for this token was sent.
    pub fn issued_at(&self) -> Instant {
        self.inner.issued_at
    }

    /// When the token expires.
    pub fn expires_at(&self) -> Instant {
        self.inner.expires_at
    }

    /// Time left before expiry, zero once expired.
    pub fn remaining(&self) -> Duration {
        self.inner
            .expires_at
            .saturating_duration_since(Instant::now())
    }

    /// Whether the token has expired.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.inner.expires_at
    }

    /// The `scope` the server granted, as sent, if it sent one. It may differ from what was asked.
    pub fn granted_scope(&self) -> Option<&str> {
        self.inner.granted_scope.as_deref()
    }

    /// The granted scopes, parsed.
    ///
    /// # Errors
    ///
    /// As [`Scopes::parse_without_payments`]: the server sent no scope or a malformed one.
    pub fn granted_scopes(&self) -> Result<Scopes, ConfigError> {
        Scopes::parse_without_payments(self.granted_scope().unwrap_or(""))
    }

    /// Withdraws this token from the [`TokenCache`](crate::TokenCache) that handed it out,
    /// after the API rejected it (a 401), and starts a refresh there.
    ///
    /// Same as `cache.invalidate(&token)`, for code that holds the token but not the cache
    /// (such as a response future). Returns whether the token was withdrawn: `false` if the
    /// cache already moved on to a newer token, if it was already invalidated, or if the token
    /// did not come from a cache.
    pub fn invalidate(&self) -> bool {
        match self.inner.origin.get().and_then(Weak::upgrade) {
            Some(engine) => engine.invalidate(self),
            None => false,
        }
    }

    pub(crate) fn set_origin(&self, engine: Weak<Engine>) {
        let _ = self.inner.origin.set(engine);
    }

    pub(crate) fn from_shared(inner: Arc<Inner>) -> Self {
        AccessToken { inner }
    }

    pub(crate) fn shared(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// A process-unique identity: two tokens are the same token exactly when their ids match.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Whether `self` and `other` are the same token (same fetch), not merely equal values.
    pub fn same_as(&self, other: &AccessToken) -> bool {
        self.inner.id == other.inner.id
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("id", &self.inner.id)
            .field("token", &"[redacted]")
            .field("lifetime", &self.inner.lifetime)
            .field("remaining", &self.remaining())
            .field("granted_scope", &self.inner.granted_scope)
            .finish()
    }
}
