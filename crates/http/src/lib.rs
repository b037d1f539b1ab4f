//! The HTTP vocabulary the `truelayer-auth` crates share, and nothing else: TrueLayer's header
//! names as [`HeaderName`]s and [`LogicalRequest`], the request extension that gives a request
//! and its replays one identity.
//!
//! It depends only on [`http`], so a crate that signs requests or receives webhooks can use it
//! without building the token client (`truelayer-auth`, which pulls in reqwest).
//!
//! # Example
//!
//! ```
//! use truelayer_auth_http::{IDEMPOTENCY_KEY, TL_SIGNATURE};
//!
//! let request = http::Request::post("/v3/payments")
//!     .header(IDEMPOTENCY_KEY, "2f4e6f0a-7c1b-4b8e-9a55-6a2f1c3d4e5f")
//!     .header(TL_SIGNATURE, "eyJhbGciOiJFUzUxMiJ9..c2ln")
//!     .body(())?;
//! assert!(request.headers().contains_key("Tl-Signature"));
//! # Ok::<(), http::Error>(())
//! ```

#![forbid(unsafe_code)]

mod logical;

use http::HeaderName;

pub use logical::LogicalRequest;

/// `Tl-Signature`: the detached JWS (ES512) over a request TrueLayer's Payments API receives,
/// or over a webhook TrueLayer sends.
pub const TL_SIGNATURE: HeaderName = HeaderName::from_static("tl-signature");

/// `Idempotency-Key`: the identity of a payment request; TrueLayer answers a repeat of it
/// (same key, same body) as it answered the first.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// `X-Tl-Webhook-Timestamp`: when TrueLayer sent a webhook (RFC 3339). The webhook's
/// `Tl-Signature` must cover it.
pub const X_TL_WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("x-tl-webhook-timestamp");

/// An error and its sources, joined by `: `, for log lines and messages: each layer's
/// `Display` says what failed, the last one why (the errors of this workspace never print
/// their cause themselves, so nothing repeats). Shared by the workspace's crates; not part
/// of the API.
#[doc(hidden)]
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn error_chain_joins_each_layer_once() {
        let error = Layer(
            "no token",
            Some(Box::new(Layer(
                "connection failed",
                Some(Box::new(Layer("refused", None))),
            ))),
        );
        assert_eq!(error_chain(&error), "no token: connection failed: refused");
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
    }

    #[test]
    fn header_names_are_the_wire_names() {
        assert_eq!(TL_SIGNATURE, "tl-signature");
        assert_eq!(IDEMPOTENCY_KEY, "idempotency-key");
        assert_eq!(X_TL_WEBHOOK_TIMESTAMP, "x-tl-webhook-timestamp");
    }
}
