//! Why a webhook was refused, and why a verifier could not be built.

use std::time::Duration;

use http::StatusCode;
use truelayer_auth_signing::VerifyError;

/// Why a webhook was refused. Names what is wrong, never key material or the body.
///
/// [`status`](Self::status) is the answer the layer gives: 401 for a webhook that is not
/// TrueLayer's (or not now), 413 for a body over the limit, 400 for one that could not be
/// read or (with a ledger) has no single `event_id`, and 503 when the keys to check it could
/// not be fetched (TrueLayer retries).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// No `Tl-Signature` header (or one that is not text).
    #[error("the webhook has no Tl-Signature header")]
    MissingSignature,
    /// The `Tl-Signature` is not a detached JWS with a readable JOSE header.
    #[error("the webhook's Tl-Signature cannot be read")]
    MalformedSignature(#[source] VerifyError),
    /// The JOSE header names no `jku`.
    #[error("the webhook's Tl-Signature names no jku")]
    MissingJku,
    /// The `jku` is not on the allow-list (no fetch was made).
    #[error("the webhook's jku `{jku}` is not on the allow-list")]
    JkuNotAllowed {
        /// The `jku` sent (at most 200 characters).
        jku: String,
    },
    /// No `X-Tl-Webhook-Timestamp` header.
    #[error("the webhook has no X-Tl-Webhook-Timestamp header")]
    MissingTimestamp,
    /// `X-Tl-Webhook-Timestamp` is not an RFC 3339 time.
    #[error("the webhook's X-Tl-Webhook-Timestamp is not an RFC 3339 time")]
    InvalidTimestamp,
    /// The signature does not cover `X-Tl-Webhook-Timestamp`, so it could be replayed.
    #[error("the webhook's signature does not cover X-Tl-Webhook-Timestamp")]
    TimestampNotSigned,
    /// The timestamp is further from now than the window allows (either direction).
    #[error(
        "the webhook's timestamp is {skew_secs} s from now, outside the {}-second window",
        window.as_secs()
    )]
    TimestampOutsideWindow {
        /// Seconds from now to the timestamp (negative: in the past).
        skew_secs: i64,
        /// The window.
        window: Duration,
    },
    /// The JWKS at the `jku` has no key with the signature's `kid`.
    #[error("the JWKS has no key with id `{kid}`")]
    UnknownKey {
        /// The `kid` sent (at most 100 characters).
        kid: String,
    },
    /// The key with the signature's `kid` is not an EC P-521 key.
    #[error("the JWKS key `{kid}` is {found}, not an EC P-521 key")]
    UnsupportedKey {
        /// The `kid`.
        kid: String,
        /// What the key is (`kty` and `crv`).
        found: String,
    },
    /// The JWKS could not be fetched and no earlier copy is held.
    #[error("the JWKS needed to check the webhook could not be fetched")]
    KeysUnavailable(#[source] JwksError),
    /// The signature does not verify: body, path, headers or key differ.
    #[error("the webhook's signature does not verify")]
    InvalidSignature(#[source] VerifyError),
    /// The body is larger than the limit.
    #[error("the webhook's body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read.
    #[error("the webhook's body could not be read")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The body took longer than the body timeout to arrive.
    #[error("the webhook's body took too long to arrive")]
    BodyTimeout,
    /// With an [`EventLedger`](crate::EventLedger), the body must be a webhook envelope
    /// whose `event_id` the ledger and the handler read alike; this one is not.
    #[error("the webhook's body is not an envelope with one `type` and one `event_id`")]
    InvalidEnvelope(#[source] EnvelopeError),
}

impl WebhookError {
    /// The HTTP status the layer answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::Body(_) | WebhookError::InvalidEnvelope(_) => StatusCode::BAD_REQUEST,
            WebhookError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            WebhookError::KeysUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// A short, stable reason for the answer's body and for metrics (`jku_not_allowed`,
    /// `invalid_signature`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            WebhookError::MissingSignature => "missing_signature",
            WebhookError::MalformedSignature(_) => "malformed_signature",
            WebhookError::MissingJku => "missing_jku",
            WebhookError::JkuNotAllowed { .. } => "jku_not_allowed",
            WebhookError::MissingTimestamp => "missing_timestamp",
            WebhookError::InvalidTimestamp => "invalid_timestamp",
            WebhookError::TimestampNotSigned => "timestamp_not_signed",
            WebhookError::TimestampOutsideWindow { .. } => "timestamp_outside_window",
            WebhookError::UnknownKey { .. } => "unknown_key",
            WebhookError::UnsupportedKey { .. } => "unsupported_key",
            WebhookError::KeysUnavailable(_) => "keys_unavailable",
            WebhookError::InvalidSignature(_) => "invalid_signature",
            WebhookError::BodyTooLarge { .. } => "body_too_large",
            WebhookError::Body(_) => "body_unreadable",
            WebhookError::BodyTimeout => "body_timeout",
            WebhookError::InvalidEnvelope(EnvelopeError::NotAnObject { .. }) => "not_a_json_object",
            WebhookError::InvalidEnvelope(EnvelopeError::DuplicateKey { .. }) => "duplicate_key",
            WebhookError::InvalidEnvelope(EnvelopeError::MissingEventId) => "missing_event_id",
            WebhookError::InvalidEnvelope(EnvelopeError::MissingType) => "missing_type",
        }
    }
}

/// Why a webhook's body is not an envelope the [`EventLedger`](crate::EventLedger) can key
/// (the layer reads it once, and hands the same [`Webhook`](crate::Webhook) to the handler).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not JSON, or JSON that is not an object. Only where parsing stopped is kept: serde's
    /// messages quote the values they met, and a body is never logged.
    #[error("the body is not a JSON object ({category} error at line {line}, column {column})")]
    NotAnObject {
        /// syntax, data, eof or io.
        category: &'static str,
        /// Where parsing stopped.
        line: usize,
        /// Where parsing stopped.
        column: usize,
    },
    /// A top-level key appears more than once. JSON parsers disagree on which value counts
    /// (serde keeps the last, others the first), so the ledger and a handler could read two
    /// different `event_id`s from one signed body.
    #[error("the top-level key `{key}` appears more than once")]
    DuplicateKey {
        /// The key (at most 100 characters, control characters replaced).
        key: String,
    },
    /// No `event_id`, or one that is not a string.
    #[error("the body has no string `event_id`")]
    MissingEventId,
    /// No `type` (nor the older `event_type`), or one that is not a string.
    #[error("the body has no string `type` or `event_type`")]
    MissingType,
}

/// Why a JWKS could not be fetched or used.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The request failed (connection, TLS, timeout).
    #[error("the JWKS request to `{jku}` failed")]
    Transport {
        /// The URL.
        jku: String,
        /// The cause (the transport's own error type is not part of this API).
        #[source]
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
    /// No fetch has finished yet (the runtime running it shut down).
    #[error("the JWKS at `{jku}` has not been fetched yet")]
    NotFetched {
        /// The URL.
        jku: String,
    },
    /// The fetch took longer than the fetch timeout.
    #[error("the JWKS request to `{jku}` timed out")]
    Timeout {
        /// The URL.
        jku: String,
    },
    /// An answer other than 200.
    #[error("the JWKS at `{jku}` answered {status}")]
    Status {
        /// The URL.
        jku: String,
        /// The status.
        status: u16,
    },
    /// A body larger than the JWKS limit.
    #[error("the JWKS at `{jku}` is larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        jku: String,
        /// The limit.
        limit: usize,
    },
    /// A body that is not a JWKS (`{"keys": [...]}`).
    #[error("the document at `{jku}` is not a JWKS")]
    NotJwks {
        /// The URL.
        jku: String,
    },
    /// A custom [`JwksSource`](crate::JwksSource)'s failure.
    #[error("the JWKS source failed")]
    Source(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
}

impl JwksError {
    /// A failure of a custom [`JwksSource`](crate::JwksSource), with its cause.
    pub fn source_failed(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        JwksError::Source(std::sync::Arc::from(cause.into()))
    }
}

/// A setting [`WebhookVerifierBuilder::build`](crate::WebhookVerifierBuilder::build)
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid webhook verifier setting `{name}`: {reason}")]
pub struct ConfigError {
    pub(crate) name: &'static str,
    pub(crate) reason: String,
}

impl ConfigError {
    /// The setting's name.
    pub fn setting(&self) -> &'static str {
        self.name
    }
}
