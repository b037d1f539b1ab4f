//! The layer's error: no token could be had, or the inner service failed.

use std::fmt;

/// Why a request through [`BearerAuth`](crate::BearerAuth) failed.
///
/// When no token can be had the request is never sent: [`BearerAuthError::Token`] carries
/// the token cache's typed error (retryable or not, with what to check). Neither variant
/// contains the token or the client secret.
#[derive(Debug)]
#[non_exhaustive]
pub enum BearerAuthError<E> {
    /// No usable token; the request was not sent.
    Token(truelayer_auth::Error),
    /// The inner service failed.
    Service(E),
}

impl<E> BearerAuthError<E> {
    /// The token error, if that is what this is.
    pub fn token_error(&self) -> Option<&truelayer_auth::Error> {
        match self {
            BearerAuthError::Token(e) => Some(e),
            BearerAuthError::Service(_) => None,
        }
    }

    /// The inner service's error, if that is what this is.
    pub fn service_error(&self) -> Option<&E> {
        match self {
            BearerAuthError::Service(e) => Some(e),
            BearerAuthError::Token(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for BearerAuthError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The cause is the source; this layer says what it did about it.
            BearerAuthError::Token(_) => {
                f.write_str("no TrueLayer access token; the request was not sent")
            }
            // Transparent: the inner service's failure is not this layer's to describe.
            BearerAuthError::Service(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for BearerAuthError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BearerAuthError::Token(e) => Some(e),
            BearerAuthError::Service(e) => e.source(),
        }
    }
}
