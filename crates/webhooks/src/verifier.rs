//! [`WebhookVerifier`]: the checks, in the order that keeps forged webhooks cheap.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use truelayer_auth_http::{TL_SIGNATURE, X_TL_WEBHOOK_TIMESTAMP};
use truelayer_auth_signing::{Signable, jws_header};

use crate::error::{ConfigError, WebhookError};
use crate::jwks::{HttpJwksSource, JwksCache, JwksSource, Policy, truncate};

/// TrueLayer's production webhook JWKS.
pub const TRUELAYER_PRODUCTION_JKU: &str = "https://webhooks.truelayer.com/.well-known/jwks";

/// TrueLayer's sandbox webhook JWKS.
pub const TRUELAYER_SANDBOX_JKU: &str = "https://webhooks.truelayer-sandbox.com/.well-known/jwks";

/// What a verified webhook was signed with: put in the request's extensions by
/// [`VerifyWebhooksLayer`](crate::VerifyWebhooksLayer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedWebhook {
    kid: String,
    jku: String,
    timestamp: SystemTime,
}

impl VerifiedWebhook {
    /// The id of the key that signed it.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS URL the key came from (one on the allow-list).
    pub fn jku(&self) -> &str {
        &self.jku
    }

    /// When TrueLayer says it sent the webhook (`X-Tl-Webhook-Timestamp`, signed).
    pub fn timestamp(&self) -> SystemTime {
        self.timestamp
    }
}

/// Checks that a webhook request is TrueLayer's, and recent.
///
/// In order, so that a forged or replayed webhook costs no fetch and no ECDSA:
/// 1. `Tl-Signature` is a detached JWS whose `jku` is **exactly** one of the allowed URLs
///    (by default [`TRUELAYER_PRODUCTION_JKU`] and [`TRUELAYER_SANDBOX_JKU`]);
/// 2. `X-Tl-Webhook-Timestamp` is present, among the signed headers, and within the window
///    of now (5 minutes by default, either direction);
/// 3. the JWKS at that `jku` (cached, see below) has an EC P-521 key with the signature's
///    `kid`;
/// 4. the signature verifies over the request's method, path, signed headers and body.
///
/// The JWKS of each allowed URL is fetched only from that URL, cached per its
/// `Cache-Control: max-age` within a floor and a ceiling, refetched at most once per
/// refetch interval when a webhook names an unknown `kid` (one fetch for any number of
/// concurrent webhooks), and the last good copy is served when a refresh fails.
///
/// Cheap to clone: clones share the cache.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use truelayer_auth_webhooks::{TRUELAYER_SANDBOX_JKU, WebhookVerifier};
///
/// // Sandbox only, a 3-minute window.
/// let verifier = WebhookVerifier::builder()
///     .allowed_jkus([TRUELAYER_SANDBOX_JKU])
///     .timestamp_window(Duration::from_secs(180))
///     .build()?;
/// # let _ = verifier;
/// # Ok::<(), truelayer_auth_webhooks::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct WebhookVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    jwks: JwksCache,
    window: Duration,
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("jwks", &self.inner.jwks)
            .field("window", &self.inner.window)
            .finish()
    }
}

impl WebhookVerifier {
    /// A builder with TrueLayer's production and sandbox JWKS URLs allowed.
    pub fn builder() -> WebhookVerifierBuilder {
        WebhookVerifierBuilder::default()
    }

    /// Verifies a webhook: its method, path (as TrueLayer addressed it: behind a proxy that
    /// rewrites paths, pass the original), headers and exact body bytes.
    ///
    /// # Errors
    ///
    /// A [`WebhookError`] naming the first check that failed.
    pub async fn verify(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<VerifiedWebhook, WebhookError> {
        let checked = self.check_headers(headers)?;
        self.check_signature(checked, method, path, headers, body)
            .await
    }

    /// The checks that need no body and no key: run before a body is read.
    pub(crate) fn check_headers(&self, headers: &HeaderMap) -> Result<HeaderCheck, WebhookError> {
        let signature = headers
            .get(TL_SIGNATURE)
            .and_then(|v| v.to_str().ok())
            .ok_or(WebhookError::MissingSignature)?;
        let jose = jws_header(signature).map_err(WebhookError::MalformedSignature)?;
        let jku = jose.jku.as_deref().ok_or(WebhookError::MissingJku)?;
        if !self.inner.jwks.allows(jku) {
            return Err(WebhookError::JkuNotAllowed {
                jku: truncate(jku, 200),
            });
        }
        let timestamp = self.check_timestamp(headers)?;
        if !jose
            .signed_headers()
            .any(|name| name.eq_ignore_ascii_case(X_TL_WEBHOOK_TIMESTAMP.as_str()))
        {
            return Err(WebhookError::TimestampNotSigned);
        }
        Ok(HeaderCheck {
            signature: signature.to_owned(),
            jku: jku.to_owned(),
            kid: jose.kid,
            timestamp,
        })
    }

    /// The key and the signature, after [`check_headers`](Self::check_headers).
    pub(crate) async fn check_signature(
        &self,
        checked: HeaderCheck,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<VerifiedWebhook, WebhookError> {
        let keys = self.inner.jwks.keys_for(&checked.jku, &checked.kid).await?;
        let request = Signable::new(method.as_str(), path)
            .headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
            .body(body);
        keys.verifier
            .verify(&request, &checked.signature)
            .map_err(WebhookError::InvalidSignature)?;
        Ok(VerifiedWebhook {
            kid: checked.kid,
            jku: checked.jku,
            timestamp: checked.timestamp,
        })
    }

    fn check_timestamp(&self, headers: &HeaderMap) -> Result<SystemTime, WebhookError> {
        let value = headers
            .get(X_TL_WEBHOOK_TIMESTAMP)
            .ok_or(WebhookError::MissingTimestamp)?;
        let sent = value
            .to_str()
            .ok()
            .and_then(|v| OffsetDateTime::parse(v.trim(), &Rfc3339).ok())
            .ok_or(WebhookError::InvalidTimestamp)?;
        let now = OffsetDateTime::now_utc();
        let skew = sent - now;
        let window = self.inner.window;
        if skew.unsigned_abs() > window {
            return Err(WebhookError::TimestampOutsideWindow {
                skew_secs: skew.whole_seconds(),
                window,
            });
        }
        Ok(SystemTime::from(sent))
    }
}

/// What the header checks found, for the signature check.
pub(crate) struct HeaderCheck {
    signature: String,
    jku: String,
    kid: String,
    timestamp: SystemTime,
}

/// Settings of a [`WebhookVerifier`].
pub struct WebhookVerifierBuilder {
    jkus: Vec<String>,
    window: Duration,
    source: Option<Arc<dyn JwksSource>>,
    policy: Policy,
}

impl fmt::Debug for WebhookVerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifierBuilder")
            .field("jkus", &self.jkus)
            .field("window", &self.window)
            .field("source", &self.source)
            .field("policy", &self.policy)
            .finish()
    }
}

impl Default for WebhookVerifierBuilder {
    fn default() -> Self {
        WebhookVerifierBuilder {
            jkus: vec![
                TRUELAYER_PRODUCTION_JKU.to_owned(),
                TRUELAYER_SANDBOX_JKU.to_owned(),
            ],
            window: Duration::from_secs(5 * 60),
            source: None,
            policy: Policy {
                min_ttl: Duration::from_secs(60),
                max_ttl: Duration::from_secs(24 * 3600),
                default_ttl: Duration::from_secs(15 * 60),
                refetch_interval: Duration::from_secs(30),
                fetch_timeout: Duration::from_secs(10),
            },
        }
    }
}

impl WebhookVerifierBuilder {
    /// The JWKS URLs a webhook's `jku` may name, compared exactly (replacing TrueLayer's
    /// two). `https`, or `http` on a loopback host (the emulator).
    #[must_use]
    pub fn allowed_jkus<I, S>(mut self, jkus: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.jkus = jkus.into_iter().map(Into::into).collect();
        self
    }

    /// Only TrueLayer's production JWKS: what a production service should trust. (A
    /// sandbox webhook is as validly signed as a production one; it is not about your
    /// money.)
    #[must_use]
    pub fn production_only(self) -> Self {
        self.allowed_jkus([TRUELAYER_PRODUCTION_JKU])
    }

    /// Only TrueLayer's sandbox JWKS.
    #[must_use]
    pub fn sandbox_only(self) -> Self {
        self.allowed_jkus([TRUELAYER_SANDBOX_JKU])
    }

    /// How far `X-Tl-Webhook-Timestamp` may be from now, in either direction (5 minutes by
    /// default). The window bounds how long a captured webhook can be replayed; the
    /// [`EventLedger`](crate::EventLedger) closes it.
    #[must_use]
    pub fn timestamp_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The floor and ceiling on how long a fetched JWKS is fresh, whatever its
    /// `Cache-Control` says (1 minute and 24 hours by default; the floor at least 1 s), and
    /// how long it is fresh when it says nothing (15 minutes).
    #[must_use]
    pub fn jwks_ttl(mut self, floor: Duration, default: Duration, ceiling: Duration) -> Self {
        self.policy.min_ttl = floor;
        self.policy.default_ttl = default;
        self.policy.max_ttl = ceiling;
        self
    }

    /// The least time between two fetches of one JWKS (30 s by default, at least 1 s): an
    /// unknown `kid` or a stale copy triggers at most one fetch per interval, so a flood of
    /// made-up kids cannot make the verifier fetch in a loop. A key TrueLayer rotates in
    /// within this interval of the last fetch is refused until it passes (TrueLayer retries
    /// the webhook).
    #[must_use]
    pub fn jwks_refetch_interval(mut self, interval: Duration) -> Self {
        self.policy.refetch_interval = interval;
        self
    }

    /// How long one JWKS fetch may take (10 s by default).
    #[must_use]
    pub fn jwks_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.policy.fetch_timeout = timeout;
        self
    }

    /// Gets JWKS documents from `source` instead of the built-in HTTPS client.
    #[must_use]
    pub fn jwks_source(mut self, source: impl JwksSource) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Checks the settings and builds the verifier.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an empty allow-list, a `jku` that is not an absolute `https` URL
    /// (or `http` on loopback) or carries user info or a fragment, a zero window or fetch
    /// timeout, or a floor above the ceiling.
    pub fn build(self) -> Result<WebhookVerifier, ConfigError> {
        if self.jkus.is_empty() {
            return Err(ConfigError {
                name: "allowed_jkus",
                reason: "at least one JWKS URL must be allowed".into(),
            });
        }
        for jku in &self.jkus {
            check_jku(jku)?;
        }
        if self.window.is_zero() {
            return Err(ConfigError {
                name: "timestamp_window",
                reason: "the window must be longer than zero".into(),
            });
        }
        let policy = self.policy;
        if policy.fetch_timeout.is_zero() {
            return Err(ConfigError {
                name: "jwks_fetch_timeout",
                reason: "the timeout must be longer than zero".into(),
            });
        }
        if policy.min_ttl < Duration::from_secs(1)
            || policy.refetch_interval < Duration::from_secs(1)
        {
            return Err(ConfigError {
                name: "jwks_refetch_interval",
                reason: "the JWKS floor and refetch interval are at least 1 s (else a flood of webhooks could make it fetch in a loop)".into(),
            });
        }
        if policy.min_ttl > policy.max_ttl
            || policy.default_ttl < policy.min_ttl
            || policy.default_ttl > policy.max_ttl
        {
            return Err(ConfigError {
                name: "jwks_ttl",
                reason: "the floor is above the ceiling, or the default outside them".into(),
            });
        }
        // Instants a day or so ahead are all the cache computes; keep them representable.
        let year = Duration::from_secs(365 * 24 * 3600);
        if policy.max_ttl > year || policy.refetch_interval > year {
            return Err(ConfigError {
                name: "jwks_ttl",
                reason: "JWKS durations are limited to a year".into(),
            });
        }
        if self.window > 100 * year {
            return Err(ConfigError {
                name: "timestamp_window",
                reason: "the window is limited to a century".into(),
            });
        }
        let source =
            match self.source {
                Some(source) => source,
                None => Arc::new(HttpJwksSource::new(policy.fetch_timeout).map_err(|_| {
                    ConfigError {
                        name: "http client",
                        reason: "the HTTP client could not be built (TLS setup)".into(),
                    }
                })?),
            };
        Ok(WebhookVerifier {
            inner: Arc::new(Inner {
                jwks: JwksCache::new(&self.jkus, source, policy),
                window: self.window,
            }),
        })
    }
}

fn check_jku(jku: &str) -> Result<(), ConfigError> {
    let refuse = |reason: &str| ConfigError {
        name: "allowed_jkus",
        reason: format!("`{}`: {reason}", truncate(jku, 200)),
    };
    let url = url::Url::parse(jku).map_err(|_| refuse("not an absolute URL"))?;
    if url.as_str() != jku && url.as_str() != format!("{jku}/") {
        // A URL the parser rewrites would never match a jku compared exactly.
        return Err(refuse("not in normal form (as a parser writes it back)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("carries user info"));
    }
    if url.fragment().is_some() {
        return Err(refuse("carries a fragment"));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(refuse(
            "plain http is allowed for loopback hosts only (keys fetched in clear text could be swapped)",
        )),
        _ => Err(refuse("not an http(s) URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jku_allow_list_entries_are_checked() {
        for good in [
            TRUELAYER_PRODUCTION_JKU,
            TRUELAYER_SANDBOX_JKU,
            "http://127.0.0.1:8080/webhooks/jwks",
            "http://localhost:1/jwks",
        ] {
            assert!(check_jku(good).is_ok(), "{good}");
        }
        for bad in [
            "webhooks.truelayer.com/.well-known/jwks",
            "http://webhooks.truelayer.com/.well-known/jwks",
            "https://user:pw@webhooks.truelayer.com/.well-known/jwks",
            "https://webhooks.truelayer.com/.well-known/jwks#x",
            "https://WEBHOOKS.truelayer.com/.well-known/jwks",
            "ftp://127.0.0.1/jwks",
        ] {
            assert!(check_jku(bad).is_err(), "{bad}");
        }
        assert!(
            WebhookVerifier::builder()
                .allowed_jkus(Vec::<String>::new())
                .build()
                .is_err()
        );
    }
}
