//! [`Error`]: why a call on the emulator's handle was refused.

use crate::payments::PaymentStatus;

/// The cause behind an [`Error`], when the emulator has one: an error of a library it uses,
/// kept opaque so that library is not part of this crate's API.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the emulator refused a call on its [`Emulator`](crate::Emulator) handle, or a name
/// given to it.
///
/// A variant's message says what the emulator refused and why, in its own terms; a cause
/// from a library it uses is never in the message, only in
/// [`source`](std::error::Error::source). No variant holds a client secret, a token or a
/// private key, and a webhook URL is kept without its user information, query and fragment
/// (where a receiver's secret may be).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request-signing public key ([`Emulator::register_signing_key`]) that is not an EC
    /// P-521 public key in SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    ///
    /// [`Emulator::register_signing_key`]: crate::Emulator::register_signing_key
    #[error("not an EC P-521 public key (SPKI PEM)")]
    InvalidSigningKey {
        /// Why the PEM could not be read as such a key.
        #[source]
        source: Cause,
    },

    /// A webhook URL ([`Emulator::set_webhook_url`]) that is not a URL.
    ///
    /// [`Emulator::set_webhook_url`]: crate::Emulator::set_webhook_url
    #[error("the webhook URL {url:?} is not a valid URL")]
    WebhookUrlInvalid {
        /// The URL as given, without user information, query or fragment.
        url: String,
        /// Why it does not parse.
        #[source]
        source: Cause,
    },
    /// An `https://` webhook URL: the emulator has no TLS client.
    #[error(
        "the webhook URL {url:?} is https, but the emulator has no TLS client: use an http:// URL (a local receiver, or a tunnel's http address)"
    )]
    WebhookUrlHttps {
        /// The URL as given, without user information, query or fragment.
        url: String,
    },
    /// A webhook URL with a scheme other than `http` (or `https`).
    #[error("the webhook URL {url:?} has the scheme {scheme:?}; only http:// is supported")]
    WebhookUrlScheme {
        /// The URL as given, without user information, query or fragment.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// A relative webhook URL.
    #[error("the webhook URL {url:?} is not absolute; give it as http://host:port/path")]
    WebhookUrlRelative {
        /// The URL as given, without user information, query or fragment.
        url: String,
    },
    /// A webhook URL without a host, or with user information (`user:password@`).
    #[error("the webhook URL {url:?} must name a host, without user information")]
    WebhookUrlHost {
        /// The URL as given, without user information, query or fragment.
        url: String,
    },

    /// No payment has this id.
    #[error("there is no payment {payment_id}")]
    UnknownPayment {
        /// The id asked for.
        payment_id: String,
    },
    /// A name that is not one of TrueLayer's payment statuses (`failed` is not a
    /// [`PaymentStatus`]: a payment fails with [`Emulator::fail_payment`]).
    ///
    /// [`Emulator::fail_payment`]: crate::Emulator::fail_payment
    #[error("unknown payment status {status:?}")]
    UnknownPaymentStatus {
        /// The name given.
        status: String,
    },
    /// A payment asked to move to the status it is in.
    #[error("payment {payment_id} is already {status}")]
    PaymentAlreadyInStatus {
        /// The payment.
        payment_id: String,
        /// Its status.
        status: PaymentStatus,
    },
    /// A payment asked to move back to an earlier status.
    #[error("payment {payment_id} is {status}; it cannot move back to {to}")]
    PaymentCannotMoveBack {
        /// The payment.
        payment_id: String,
        /// Its status.
        status: PaymentStatus,
        /// The earlier status asked for.
        to: PaymentStatus,
    },
    /// A settled payment asked to move: settled is final.
    #[error("payment {payment_id} is settled, and settled is final")]
    PaymentSettled {
        /// The payment.
        payment_id: String,
    },
    /// A failed payment asked to move: failed is final.
    #[error("payment {payment_id} has failed, and failed is final")]
    PaymentFailed {
        /// The payment.
        payment_id: String,
    },
    /// A payment failed without a reason (TrueLayer's `failure_reason`).
    #[error("a failure reason is needed")]
    MissingFailureReason,

    /// A bearer token that is not a JWT.
    #[error("the token is not a JWT")]
    TokenNotJwt,
    /// A JWT whose `kid` is not the emulator's token-signing key.
    #[error("unknown signing key")]
    TokenUnknownKey,
    /// A JWT whose signature, audience or issuer is not the emulator's.
    #[error("the signature or claims are invalid")]
    TokenInvalid,
    /// A token past its expiry, by the emulator's clock.
    #[error("the token has expired")]
    TokenExpired,
    /// A token before its `nbf`, by the emulator's clock.
    #[error("the token is not valid yet")]
    TokenNotYetValid,
    /// A revoked token.
    #[error("the token has been revoked")]
    TokenRevoked,
    /// A valid token without the `payments` scope (the Payments API answers it 403).
    #[error("the token lacks the payments scope")]
    TokenLacksScope,
}

/// An error and its causes, `: `-separated, for the emulator's own answers and logs.
pub(crate) use truelayer_auth_http::error_chain as chain;

/// `url` without user information, query or fragment, for an error message: a receiver's
/// secret may be in any of them.
pub(crate) fn redact_url(url: &str) -> String {
    let url = url.trim();
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    match url[authority_start..authority_end].rfind('@') {
        Some(at) => format!(
            "{}{}",
            &url[..authority_start],
            &url[authority_start + at + 1..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_errors_lose_user_information_query_and_fragment() {
        assert_eq!(
            redact_url(" http://user:pw@example.com:8080/hooks?token=s3cret#x "),
            "http://example.com:8080/hooks"
        );
        assert_eq!(redact_url("http://a@b@host/p@q"), "http://host/p@q");
        assert_eq!(redact_url("/relative?k=v"), "/relative");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn messages_leave_the_cause_to_source() {
        use std::error::Error as _;
        let error = Error::InvalidSigningKey {
            source: "bad base64".into(),
        };
        assert_eq!(error.to_string(), "not an EC P-521 public key (SPKI PEM)");
        assert_eq!(error.source().unwrap().to_string(), "bad base64");
        assert_eq!(
            chain(&error),
            "not an EC P-521 public key (SPKI PEM): bad base64"
        );
    }
}
