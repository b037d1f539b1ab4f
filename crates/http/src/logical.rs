//! One logical request, however many times a client stack sends it.

use std::fmt;
use std::sync::{Arc, OnceLock};

use http::HeaderValue;

/// Marks the copies of one logical request as the same request: a request extension that
/// the original and every replay share (cloning it shares it).
///
/// A layer that may send a request again (the bearer layer's replay after a 401) puts one in
/// the request before copying it; a layer below that gives the request an identity (the
/// signing layer's `Idempotency-Key`) records it here, so a replay carries the same key. A
/// new key on a replay could make a second payment.
///
/// # Example
///
/// ```
/// use http::HeaderValue;
/// use truelayer_auth_http::LogicalRequest;
///
/// let original = LogicalRequest::new();
/// let replay = original.clone();
/// let key = original.idempotency_key(|| HeaderValue::from_static("first"));
/// assert_eq!(replay.idempotency_key(|| HeaderValue::from_static("second")), key);
/// ```
#[derive(Clone, Default)]
pub struct LogicalRequest(Arc<OnceLock<HeaderValue>>);

impl LogicalRequest {
    /// A new logical request.
    pub fn new() -> Self {
        Self::default()
    }

    /// The request's `Idempotency-Key`: the one recorded by an earlier send, or `make()`'s,
    /// recorded now.
    pub fn idempotency_key(&self, make: impl FnOnce() -> HeaderValue) -> HeaderValue {
        self.0.get_or_init(make).clone()
    }
}

impl fmt::Debug for LogicalRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogicalRequest")
            .field("idempotency_key", &self.0.get())
            .finish()
    }
}
