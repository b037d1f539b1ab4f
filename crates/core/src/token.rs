//! The access token and what is known about it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::cache::CacheKey;
use crate::error::{InvalidResponse, InvalidToken};
use crate::scope::Scopes;
use crate::token_source::TokenFuture;

/// Where a token came from: the cache a 401 for it is reported to.
pub(crate) trait Issuer: Send + Sync {
    /// See [`TokenSource::invalidate`](crate::TokenSource::invalidate).
    fn invalidate(&self, token: &AccessToken) -> bool;
    /// See [`TokenSource::replacement`](crate::TokenSource::replacement); `None` once the
    /// issuer is gone.
    fn replacement(&self, rejected: &AccessToken) -> Option<TokenFuture>;
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A payments access token: a plain value.
///
/// Cloning is cheap (one reference count). The token value is a [`SecretString`]; `Debug`
/// never shows it, and [`AccessToken::authorization_header`] is marked sensitive so HTTP
/// libraries and `Debug` of a request do not print it either.
///
/// Expiry is on tokio's monotonic clock, counted from the instant the request was sent, so
/// a wall-clock jump changes nothing and the clock can be paused in tests.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use truelayer_auth::AccessToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), truelayer_auth::InvalidToken> {
/// let token = AccessToken::new(
///     "eyJhbGciOi.example.token".into(),
///     Duration::from_secs(3600),
///     tokio::time::Instant::now(),
///     Some("payments".into()),
/// )?;
/// assert_eq!(token.authorization_header(), "Bearer eyJhbGciOi.example.token");
/// assert!(token.authorization_header().is_sensitive());
/// assert!(!format!("{token:?}").contains("eyJhbGciOi"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AccessToken {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    secret: SecretString,
    header: HeaderValue,
    lifetime: Duration,
    issued_at: Instant,
    issued_at_wall: SystemTime,
    granted_scope: Option<String>,
    /// The keyed-cache entry it was fetched for, so a keyed cache can route a rejection.
    key: Option<CacheKey>,
    /// The cache that fetched it, set once per fetch.
    issuer: Option<Weak<dyn Issuer>>,
}

impl AccessToken {
    /// A token that lives for `lifetime`, counted from `issued_at` (when its request was sent).
    ///
    /// # Errors
    ///
    /// [`InvalidToken`] for an empty token or one that cannot be put in a header.
    pub fn new(
        secret: SecretString,
        lifetime: Duration,
        issued_at: Instant,
        granted_scope: Option<String>,
    ) -> Result<Self, InvalidToken> {
        // The wall-clock moment that corresponds to `issued_at`.
        let wall = crate::clock::wall_now()
            .checked_sub(Instant::now().saturating_duration_since(issued_at))
            .unwrap_or_else(crate::clock::wall_now);
        Self::issued(secret, lifetime, issued_at, wall, granted_scope)
    }

    pub(crate) fn issued(
        secret: SecretString,
        lifetime: Duration,
        issued_at: Instant,
        issued_at_wall: SystemTime,
        granted_scope: Option<String>,
    ) -> Result<Self, InvalidToken> {
        let value = secret.expose_secret();
        if value.is_empty() {
            return Err(InvalidToken::Empty);
        }
        // RFC 6750 b64token characters, plus anything else visible: no spaces, no controls.
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidToken::Characters);
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {value}"))
            .map_err(|_| InvalidToken::Characters)?;
        header.set_sensitive(true);
        Ok(AccessToken {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                secret,
                header,
                lifetime,
                issued_at,
                issued_at_wall,
                granted_scope,
                key: None,
                issuer: None,
            }),
        })
    }

    /// The same token, tagged with the cache that fetched it and its keyed-cache entry.
    /// A fresh token is tagged in place; a shared one is copied (same id), which copies the
    /// secret once more (zeroized on drop like the first).
    pub(crate) fn tagged(mut self, key: Option<CacheKey>, issuer: Weak<dyn Issuer>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.key = key;
            inner.issuer = Some(issuer);
            return self;
        }
        let inner = &self.inner;
        AccessToken {
            inner: Arc::new(Inner {
                id: inner.id,
                secret: inner.secret.clone(),
                header: inner.header.clone(),
                lifetime: inner.lifetime,
                issued_at: inner.issued_at,
                issued_at_wall: inner.issued_at_wall,
                granted_scope: inner.granted_scope.clone(),
                key,
                issuer: Some(issuer),
            }),
        }
    }

    pub(crate) fn issuer(&self) -> Option<Arc<dyn Issuer>> {
        self.inner.issuer.as_ref()?.upgrade()
    }

    pub(crate) fn key(&self) -> Option<&CacheKey> {
        self.inner.key.as_ref()
    }

    /// The token value. Expose it only where it is sent.
    pub fn secret(&self) -> &SecretString {
        &self.inner.secret
    }

    /// `Bearer <token>`, marked sensitive. Cloning it does not copy the token.
    pub fn authorization_header(&self) -> HeaderValue {
        self.inner.header.clone()
    }

    /// The lifetime the server granted (`expires_in`).
    pub fn lifetime(&self) -> Duration {
        self.inner.lifetime
    }

    /// When the request for this token was sent.
    pub fn issued_at(&self) -> Instant {
        self.inner.issued_at
    }

    pub(crate) fn issued_at_wall(&self) -> SystemTime {
        self.inner.issued_at_wall
    }

    /// When the token expires, on the monotonic clock.
    pub fn expires_at(&self) -> Instant {
        crate::clock::saturating_add(self.inner.issued_at, self.inner.lifetime)
    }

    /// Time left before expiry, zero once expired.
    pub fn remaining(&self) -> Duration {
        self.expires_at().saturating_duration_since(Instant::now())
    }

    /// Whether the token has expired.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.expires_at()
    }

    /// The `scope` the server granted, as sent, if it sent one. It may differ from what was asked.
    pub fn granted_scope(&self) -> Option<&str> {
        self.inner.granted_scope.as_deref()
    }

    /// The granted scopes, parsed.
    ///
    /// # Errors
    ///
    /// [`InvalidResponse::MissingField`] when the server sent no scope, and
    /// [`InvalidResponse::InvalidScope`] when it is not a valid scope list.
    pub fn granted_scopes(&self) -> Result<Scopes, InvalidResponse> {
        let scope = self
            .granted_scope()
            .ok_or(InvalidResponse::MissingField("scope"))?;
        Scopes::parse_without_payments(scope)
            .map_err(|e| InvalidResponse::InvalidScope(e.to_string()))
    }

    /// A process-unique identity: two tokens are the same token (from the same fetch)
    /// exactly when their ids match, whatever their values.
    pub fn id(&self) -> u64 {
        self.inner.id
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
