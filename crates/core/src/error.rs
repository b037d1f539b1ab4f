//! Errors: configuration mistakes, and why a token could not be had.
//!
//! No error here ever holds a client secret or an access token: the types that carry them
//! are never put into an error, and text that came from a server is scrubbed of the secret
//! that was sent to it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

type BoxError = Arc<dyn std::error::Error + Send + Sync>;

/// A configuration mistake, found before any request is sent. Never retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A URL did not parse or is not usable as a base URL.
    #[error("`{url}` is not a usable base URL: {reason}")]
    InvalidUrl {
        /// The URL as given (or its host, when it carried credentials).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Plain `http` to a host that is not loopback: the client secret would travel in clear text.
    #[error(
        "refusing plain http to `{host}`: client secrets are only sent over https \
         (http is allowed for loopback hosts such as 127.0.0.1 and localhost)"
    )]
    InsecureUrl {
        /// The host that was refused.
        host: String,
    },
    /// An environment name that is neither `sandbox`, `production` nor a URL.
    #[error(
        "unknown environment `{0}`: use `sandbox`, `production` or a base URL such as https://auth.example.com"
    )]
    UnknownEnvironment(String),
    /// A scope token that RFC 6749 §3.3 does not allow.
    #[error("invalid scope `{scope}`: {reason}")]
    InvalidScope {
        /// The offending token, escaped for display.
        scope: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// A scope set with nothing in it.
    #[error("no scopes given: a payments token needs at least the `payments` scope")]
    NoScopes,
    /// A scope set without `payments` that did not opt out of it.
    #[error(
        "the scopes `{requested}` lack `payments`, which every Payments API request needs; \
         add it, or use Scopes::without_payments for a token that is not used with the Payments API"
    )]
    MissingPaymentsScope {
        /// The scopes that were requested.
        requested: String,
    },
    /// An empty client_id.
    #[error("the client_id is empty: copy it from App Settings in TrueLayer Console")]
    EmptyClientId,
    /// An empty client_secret.
    #[error(
        "the client_secret is empty: it was generated when the app was created in TrueLayer Console"
    )]
    EmptyClientSecret,
    /// A setting is out of its allowed range.
    #[error("invalid setting {name}: {reason}")]
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// What the allowed range is.
        reason: &'static str,
    },
}

/// An OAuth2 error code from the token endpoint (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OAuthErrorCode {
    /// `invalid_client`: the client_id/client_secret pair was rejected.
    InvalidClient,
    /// `invalid_scope`: a scope is unknown or not enabled for this client.
    InvalidScope,
    /// `invalid_grant`: the grant was rejected.
    InvalidGrant,
    /// `unauthorized_client`: this client may not use the `client_credentials` grant.
    UnauthorizedClient,
    /// `unsupported_grant_type`: the server does not support the grant type sent.
    UnsupportedGrantType,
    /// `invalid_request`: a parameter is missing, repeated or malformed.
    InvalidRequest,
    /// `server_error`: the server failed; retryable.
    ServerError,
    /// `temporarily_unavailable`: the server is overloaded or in maintenance; retryable.
    TemporarilyUnavailable,
    /// Any other code, kept verbatim (truncated to 100 characters).
    Other(String),
}

impl OAuthErrorCode {
    /// Maps the `error` field of an OAuth2 error response.
    pub fn from_code(code: &str) -> Self {
        match code {
            "invalid_client" => Self::InvalidClient,
            "invalid_scope" => Self::InvalidScope,
            "invalid_grant" => Self::InvalidGrant,
            "unauthorized_client" => Self::UnauthorizedClient,
            "unsupported_grant_type" => Self::UnsupportedGrantType,
            "invalid_request" => Self::InvalidRequest,
            "server_error" => Self::ServerError,
            "temporarily_unavailable" => Self::TemporarilyUnavailable,
            other => Self::Other(truncate(other, 100)),
        }
    }

    /// The code as the server sent it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InvalidClient => "invalid_client",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidRequest => "invalid_request",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::Other(s) => s,
        }
    }

    fn advice(&self) -> &'static str {
        match self {
            Self::InvalidClient => {
                "the client_id/client_secret pair was rejected: check that the credentials belong to \
                 the environment you are calling (sandbox credentials do not work in production) and \
                 that the secret has not been rotated"
            }
            Self::InvalidScope => {
                "check that every requested scope is enabled for this client in TrueLayer Console"
            }
            Self::InvalidGrant => {
                "the grant was refused: a user's code or refresh token that is expired, spent or \
                 revoked (the user must connect again), or, for client_credentials, a client not \
                 allowed that grant in TrueLayer Console"
            }
            Self::UnauthorizedClient => {
                "check that this client may use this grant in TrueLayer Console"
            }
            Self::UnsupportedGrantType | Self::InvalidRequest => {
                "the request was malformed; check that the URL points at a TrueLayer token endpoint"
            }
            Self::ServerError | Self::TemporarilyUnavailable => {
                "the authorization server failed; this is retried"
            }
            Self::Other(_) => "see the description; this error code is not one RFC 6749 defines",
        }
    }
}

impl fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OAuth2 error response from the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OAuthError {
    /// The `error` code.
    pub code: OAuthErrorCode,
    /// The `error_description`, if any (truncated, control characters removed).
    pub description: Option<String>,
    /// The HTTP status it came with.
    pub status: StatusCode,
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the token endpoint answered {} `{}`",
            self.status.as_u16(),
            self.code
        )?;
        if let Some(d) = &self.description {
            write!(f, " ({d})")?;
        }
        write!(f, ": {}", self.code.advice())
    }
}

impl std::error::Error for OAuthError {}

/// A response from the token endpoint that is not a usable token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidResponse {
    /// The body was empty.
    #[error("the body is empty")]
    EmptyBody,
    /// The body was an HTML page (typically a proxy or load balancer error page).
    #[error(
        "the body is an HTML page, not JSON: the URL may point at a web page or a proxy rather than the token endpoint"
    )]
    HtmlPage,
    /// The body was not valid JSON.
    #[error("the body is not valid JSON ({detail})")]
    NotJson {
        /// The parser's description, with line and column; never the body itself.
        detail: String,
    },
    /// The body was JSON, but not an object.
    #[error("the body is JSON but not an object")]
    NotAnObject,
    /// The body was larger than the configured limit.
    #[error("the body exceeds the {limit}-byte limit")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A required field is missing.
    #[error("the field `{0}` is missing")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("the field `{field}` is not {expected}")]
    WrongFieldType {
        /// The field.
        field: &'static str,
        /// The type it should have.
        expected: &'static str,
    },
    /// `access_token` is an empty string.
    #[error("`access_token` is empty")]
    EmptyAccessToken,
    /// `access_token` has characters that an `Authorization` header cannot carry.
    #[error("`access_token` has characters a bearer header cannot carry")]
    AccessTokenCharacters,
    /// `token_type` is not `Bearer`.
    #[error("`token_type` is `{0}`, not Bearer")]
    NotBearer(String),
    /// `expires_in` is zero: the token would be expired on arrival.
    #[error("`expires_in` is 0: the token would be expired on arrival")]
    ZeroLifetime,
    /// `expires_in` is negative.
    #[error("`expires_in` is negative ({0})")]
    NegativeLifetime(i64),
    /// `expires_in` is longer than any TrueLayer token lives.
    #[error("`expires_in` is {seconds} s, more than the {max} s this client accepts")]
    LifetimeTooLong {
        /// The lifetime the server sent (saturated at `u64::MAX`).
        seconds: u64,
        /// The largest lifetime accepted.
        max: u64,
    },
    /// A field appears twice in the object.
    #[error("the field `{0}` appears more than once")]
    DuplicateField(String),
    /// The body ended before the length the server announced.
    #[error("the body was cut off before its end")]
    Truncated,
    /// The `scope` the server granted is not a valid scope list.
    #[error("the granted `scope` is not a valid scope list ({0})")]
    InvalidScope(String),
}

/// A value that cannot be a bearer token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidToken {
    /// The token is an empty string.
    #[error("an access token cannot be empty")]
    Empty,
    /// The token has characters an `Authorization` header cannot carry (spaces, controls,
    /// non-ASCII).
    #[error("an access token may only contain visible ASCII characters")]
    Characters,
}

/// A connection-level failure of the HTTP client, kept opaque so that the client library is
/// not part of this crate's API. `Display` and `source()` are the underlying error's.
#[derive(Clone)]
pub struct TransportError(BoxError);

impl TransportError {
    pub(crate) fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        TransportError(Arc::new(error))
    }
}

impl fmt::Debug for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TransportError")
            .field(&self.0.to_string())
            .finish()
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A credentials source failed.
///
/// The message describes the source's own failure and must not contain secret material;
/// sources build it from what they know (a secret id, a missing field name, an IAM action)
/// and attach the underlying error with [`with_source`](Self::with_source).
#[derive(Clone)]
pub struct CredentialsError {
    message: String,
    retryable: bool,
    source: Option<BoxError>,
}

impl CredentialsError {
    /// A permanent failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        CredentialsError {
            message: message.into(),
            retryable: false,
            source: None,
        }
    }

    /// A transient failure (throttling, a timeout) with this message.
    pub fn retryable(message: impl Into<String>) -> Self {
        CredentialsError {
            retryable: true,
            ..Self::new(message)
        }
    }

    /// Attaches the underlying error (which must not contain secret material either).
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Debug for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsError")
            .field("message", &self.message)
            .field("retryable", &self.retryable)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CredentialsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// The failure of a [`Refresh`](crate::Refresh) implementation outside this crate, carried
/// through the engine to its callers ([`Error::Refresh`]).
///
/// ```
/// use truelayer_auth::{Error, RefreshError};
///
/// let e = Error::Refresh(RefreshError::new(std::io::Error::other("disk full"), true));
/// assert!(e.is_retryable());
/// let Error::Refresh(inner) = &e else { unreachable!() };
/// assert!(inner.get_ref().downcast_ref::<std::io::Error>().is_some());
/// ```
#[derive(Debug, Clone)]
pub struct RefreshError {
    source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    retryable: bool,
}

impl RefreshError {
    /// `source`, which a retry may or may not cure.
    pub fn new(source: impl std::error::Error + Send + Sync + 'static, retryable: bool) -> Self {
        RefreshError {
            source: std::sync::Arc::new(source),
            retryable,
        }
    }

    /// The cause, to downcast to the implementation's own error type.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// Whether a retry may help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the token's refresh failed")
    }
}

impl std::error::Error for RefreshError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Why a token could not be had.
///
/// Every variant says whether trying again may help ([`Error::is_retryable`]); the
/// `Display` text says what failed and what to check, and [`source`](std::error::Error::source)
/// carries the cause, if there is one (never both). Neither the client secret nor a token
/// ever appears in it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token endpoint answered with an OAuth2 error (`invalid_client`, `invalid_scope`, ...).
    #[error(transparent)]
    OAuth(OAuthError),
    /// 429 Too Many Requests.
    #[error("the token endpoint is rate limiting this client (429){}", after(.retry_after))]
    RateLimited {
        /// How long the server asked to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// A 5xx answer.
    #[error("the token endpoint failed with {status}{}; this is usually transient", after(.retry_after))]
    ServerError {
        /// The status.
        status: StatusCode,
        /// How long the server asked to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// A status that is neither success, a redirect, 429, 5xx nor an OAuth2 error.
    #[error(
        "the token endpoint answered {status} without an OAuth2 error body: check that the URL is a TrueLayer token endpoint"
    )]
    UnexpectedStatus {
        /// The status.
        status: StatusCode,
    },
    /// The token endpoint redirected; redirects are never followed, so the credentials
    /// cannot be replayed to another host.
    #[error("the token endpoint redirected ({status}{}); redirects are not followed so credentials stay on the configured host: configure the final URL", fmt_location(.location))]
    RedirectRefused {
        /// The redirect status.
        status: StatusCode,
        /// The `Location` header, without query or credentials.
        location: Option<String>,
    },
    /// The request or response did not complete in time.
    #[error(
        "the token request timed out: check network reachability of the token endpoint, or raise the timeout"
    )]
    Timeout,
    /// The connection could not be made.
    #[error("could not connect to the token endpoint: check DNS, firewall and proxy settings")]
    Connect(#[source] TransportError),
    /// The connection failed during the exchange (reset, closed early, TLS failure).
    #[error("the connection to the token endpoint failed mid-request")]
    Transport(#[source] TransportError),
    /// The response was not a usable token.
    #[error("the token endpoint answered {status} with an unusable response")]
    InvalidResponse {
        /// The status the response came with.
        status: StatusCode,
        /// What was wrong.
        #[source]
        problem: InvalidResponse,
    },
    /// A user grant's 2xx answer held a usable new refresh token but no usable access token
    /// (a missing `token_type`, an `expires_in` out of range, ...). TrueLayer spent the old
    /// refresh token when it answered, so this one is the only copy: store it
    /// ([`Error::salvaged_refresh_token`]) and refresh again with it. Retryable.
    #[error(
        "the token endpoint answered {status} with a new refresh token but an unusable access token"
    )]
    RefreshTokenOnly {
        /// The status the answer came with.
        status: StatusCode,
        /// What was wrong with the rest of the answer.
        #[source]
        problem: InvalidResponse,
        /// The new refresh token.
        refresh_token: secrecy::SecretString,
    },
    /// The token arrived so late that less than the hard margin of its lifetime was left:
    /// it would have been unusable on arrival. Retryable.
    #[error(
        "the token took {} ms to arrive and its {} s lifetime left too little to use it: the token endpoint is too slow",
        took.as_millis(),
        lifetime.as_secs()
    )]
    SlowFetch {
        /// How long the request took.
        took: Duration,
        /// The lifetime the server granted.
        lifetime: Duration,
    },
    /// The configuration is wrong; nothing was sent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The credentials source failed (for example AWS Secrets Manager).
    #[error("the client credentials could not be loaded")]
    Credentials(#[source] CredentialsError),
    /// A [`Refresh`](crate::Refresh) implementation panicked; the attempt counts as failed
    /// and is retried with backoff.
    #[error(
        "the token refresh panicked (a bug in the Refresh implementation); retrying with backoff"
    )]
    RefreshPanicked,
    /// A [`Refresh`](crate::Refresh) implementation of another crate failed in its own way
    /// (a Data API connection's store, say); the cause is the source, and it says whether a
    /// retry may help.
    #[error(transparent)]
    Refresh(RefreshError),
    /// Every handle of the cache that issued the token was dropped while a request waited on
    /// it (a 401's replay).
    #[error("the token cache was dropped while a request waited for a token from it")]
    CacheDropped,
    /// No usable token arrived within the cache's wait deadline, and no attempt had failed yet.
    #[error("no access token within {} ms: the refresh under way (credentials load and token request) has not finished; check the credentials source and the token endpoint's reachability, or raise the wait deadline", waited.as_millis())]
    WaitTimedOut {
        /// How long the caller waited.
        waited: Duration,
    },
    /// A request reached a [`KeyedTokenCache`](crate::KeyedTokenCache) used as a token source
    /// without a [`CacheKey`](crate::CacheKey) extension naming its merchant.
    #[error(
        "the request names no merchant: insert the merchant's CacheKey into the request's extensions"
    )]
    MissingCacheKey,
    /// A request named a merchant the [`KeyedTokenCache`](crate::KeyedTokenCache) has no
    /// credentials for.
    #[error(
        "no credentials for client_id `{client_id}`: register it with KeyedTokenCache::get or get_with_source, or give the builder a credentials resolver"
    )]
    UnknownCacheKey {
        /// The client_id the request named.
        client_id: String,
    },
}

fn after(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", asked to retry after {} s", d.as_secs()),
        None => String::new(),
    }
}

fn fmt_location(location: &Option<String>) -> String {
    match location {
        Some(l) => format!(" to {l}"),
        None => String::new(),
    }
}

impl Error {
    /// Whether trying the same request again later may succeed.
    ///
    /// Rate limiting, 5xx answers, timeouts, connection failures, malformed answers and slow
    /// fetches are retryable; rejected credentials, refused scopes, redirects, unexpected
    /// statuses (the URL is probably not a token endpoint) and configuration mistakes are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::OAuth(e) => matches!(
                e.code,
                OAuthErrorCode::ServerError | OAuthErrorCode::TemporarilyUnavailable
            ),
            Error::RateLimited { .. }
            | Error::ServerError { .. }
            | Error::Timeout
            | Error::Connect(_)
            | Error::Transport(_)
            | Error::SlowFetch { .. } => true,
            // A malformed answer from a token endpoint is a server fault (an error page from a
            // load balancer, a bad deploy): worth another try, later.
            Error::InvalidResponse { .. } | Error::RefreshTokenOnly { .. } => true,
            Error::UnexpectedStatus { status } => *status == StatusCode::REQUEST_TIMEOUT,
            Error::RedirectRefused { .. }
            | Error::Config(_)
            | Error::MissingCacheKey
            | Error::UnknownCacheKey { .. } => false,
            Error::Credentials(e) => e.is_retryable(),
            Error::WaitTimedOut { .. } | Error::RefreshPanicked => true,
            Error::Refresh(e) => e.retryable,
            Error::CacheDropped => false,
        }
    }

    /// How long the server asked to wait before trying again (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after } | Error::ServerError { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The OAuth2 error, if the server sent one.
    pub fn oauth(&self) -> Option<&OAuthError> {
        match self {
            Error::OAuth(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the server rejected the client credentials (`invalid_client`): the secret may
    /// have been rotated, so a credentials source is worth reloading.
    pub fn is_invalid_client(&self) -> bool {
        matches!(self.oauth(), Some(e) if e.code == OAuthErrorCode::InvalidClient)
    }

    /// The new refresh token of an answer whose access token was unusable
    /// ([`Error::RefreshTokenOnly`]): the only copy of it, to be stored.
    pub fn salvaged_refresh_token(&self) -> Option<&secrecy::SecretString> {
        match self {
            Error::RefreshTokenOnly { refresh_token, .. } => Some(refresh_token),
            _ => None,
        }
    }

    /// Whether the server refused the grant itself (`invalid_grant`): for a user's code or
    /// refresh token, it is expired, spent or revoked, and retrying cannot help.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self.oauth(), Some(e) if e.code == OAuthErrorCode::InvalidGrant)
    }

    /// The HTTP status of the response, if one arrived.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::OAuth(e) => Some(e.status),
            Error::RateLimited { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            Error::ServerError { status, .. }
            | Error::UnexpectedStatus { status }
            | Error::RedirectRefused { status, .. }
            | Error::InvalidResponse { status, .. }
            | Error::RefreshTokenOnly { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the request timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout)
    }

    /// Whether the connection could not be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }

    /// A short, stable name of the kind of error, for logs and metrics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Error::OAuth(_) => "oauth",
            Error::RateLimited { .. } => "rate_limited",
            Error::ServerError { .. } => "server_error",
            Error::UnexpectedStatus { .. } => "unexpected_status",
            Error::RedirectRefused { .. } => "redirect_refused",
            Error::Timeout => "timeout",
            Error::Connect(_) => "connect",
            Error::Transport(_) => "transport",
            Error::InvalidResponse { .. } => "invalid_response",
            Error::RefreshTokenOnly { .. } => "refresh_token_only",
            Error::SlowFetch { .. } => "slow_fetch",
            Error::Config(_) => "config",
            Error::Credentials(_) => "credentials",
            Error::WaitTimedOut { .. } => "wait_timed_out",
            Error::RefreshPanicked => "refresh_panicked",
            Error::Refresh(_) => "refresh",
            Error::CacheDropped => "cache_dropped",
            Error::MissingCacheKey => "missing_cache_key",
            Error::UnknownCacheKey { .. } => "unknown_cache_key",
        }
    }
}

/// Shortens server-provided text and drops control characters, so a hostile response
/// cannot flood or forge log lines.
pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect();
    if s.chars()
        .filter(|c| !c.is_control())
        .nth(max_chars)
        .is_some()
    {
        out.push('…');
    }
    out
}

/// Shared with the workspace's other crates (`truelayer-auth-http`, re-exported at the root).
pub(crate) use truelayer_auth_http::error_chain;
