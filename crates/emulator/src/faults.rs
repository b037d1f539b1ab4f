//! Faults the token endpoint can be told to produce.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One misbehaviour of the token endpoint, used in place of a normal answer.
///
/// Over the admin API a fault is JSON tagged by `kind`, for example
/// `{"kind":"status","status":503,"retry_after":"2"}` or `{"kind":"drop_connection"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status (500, 503, 429, ...) and an empty body, with `Retry-After` if given.
    Status {
        /// The HTTP status.
        status: u16,
        /// The `Retry-After` header value, verbatim (seconds or an HTTP-date).
        #[serde(default)]
        retry_after: Option<String>,
    },
    /// Answer with this status, content type and body (malformed JSON, HTML pages, ...).
    Body {
        /// The HTTP status.
        status: u16,
        /// The `Content-Type` header.
        content_type: String,
        /// The body.
        body: String,
    },
    /// Close the connection without answering.
    DropConnection,
    /// Announce a longer body than is sent, then close the connection.
    Truncate,
    /// Redirect to `location` with 307 (which would replay the POST, secret included).
    Redirect {
        /// The `Location` header.
        location: String,
    },
    /// Wait this long, then answer normally.
    Delay {
        /// The delay in milliseconds.
        millis: u64,
    },
}

impl Fault {
    /// A 500 Internal Server Error.
    pub fn internal_error() -> Self {
        Fault::Status {
            status: 500,
            retry_after: None,
        }
    }

    /// A 503 Service Unavailable.
    pub fn unavailable() -> Self {
        Fault::Status {
            status: 503,
            retry_after: None,
        }
    }

    /// A 429 Too Many Requests with `Retry-After: <seconds>`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Fault::Status {
            status: 429,
            retry_after: Some(retry_after_secs.to_string()),
        }
    }

    /// A 200 with this body as `application/json`.
    pub fn malformed(body: impl Into<String>) -> Self {
        Fault::Body {
            status: 200,
            content_type: "application/json".into(),
            body: body.into(),
        }
    }

    /// A delay before an otherwise normal answer.
    pub fn delay(delay: Duration) -> Self {
        Fault::Delay {
            millis: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        }
    }
}
