//! Verify TrueLayer webhooks in tower and axum servers.
//!
//! TrueLayer signs each webhook with a `Tl-Signature` (ES512, detached JWS v2, the same
//! scheme as requests) whose JOSE header names, in `jku`, the JWKS holding its key, and
//! covers an `X-Tl-Webhook-Timestamp` header. What people get wrong, and what this crate
//! does instead:
//!
//! - **Trusting the `jku` they are sent**: anyone can sign a webhook with their own key and
//!   point `jku` at their own JWKS. The `jku` must match an allow-list exactly (TrueLayer's
//!   production and sandbox URLs by default), checked before anything is fetched.
//! - **Fetching the JWKS on every webhook, or never refreshing it**: the JWKS of each
//!   allowed URL is cached per its `Cache-Control` (within a floor and a ceiling), refetched
//!   once when a webhook names an unknown `kid` (a key rotation), at most once per interval
//!   however many webhooks ask (a flood of made-up kids costs one fetch), and the last good
//!   copy is served when a refresh fails.
//! - **Accepting replays**: the timestamp must be signed and within a window of now (5
//!   minutes by default, both directions), and an [`EventLedger`] hands each `event_id` to the
//!   handler until it succeeds once (TrueLayer retries until it gets a 2xx).
//!
//! [`InMemoryLedger`] covers one process. TrueLayer's retries of one event may reach
//! different replicas; with the `postgres` feature, `PostgresLedger` keeps the ledger in
//! PostgreSQL (one row per event, claimed atomically, leases on the database's clock), so a
//! fleet hands each event to one handler run at a time and to none once one succeeded.
//!
//! [`VerifyWebhooksLayer`] does all of it in front of any tower service; with the `axum` feature
//! (on by default), a handler takes a typed [`Webhook`] as an extractor.
//!
//! A verified webhook proves that TrueLayer sent it, recently, to this path. It does not
//! prove that it is about one of your payments: every TrueLayer client receives validly
//! signed webhooks for its own, and sandbox webhooks are signed too. Look `payment_id` up
//! in your records before acting, and in production allow only the production JWKS.
//!
//! # Example
//!
//! ```
//! use axum::{Router, http::StatusCode, routing::post};
//! use truelayer_auth_webhooks::{
//!     InMemoryLedger, VerifyWebhooksLayer, Webhook, WebhookEvent, WebhookVerifier,
//! };
//!
//! async fn on_webhook(webhook: Webhook) -> StatusCode {
//!     match &webhook.event {
//!         WebhookEvent::PaymentSettled(settled) => {
//!             println!("payment {} settled", settled.payment_id);
//!         }
//!         WebhookEvent::PaymentFailed(failed) => {
//!             println!("payment {} failed: {:?}", failed.payment_id, failed.failure_reason);
//!         }
//!         other => println!("ignoring {}", other.event_type()),
//!     }
//!     StatusCode::OK
//! }
//!
//! // TrueLayer's production JWKS only (the default allows its sandbox's too).
//! let verifier = WebhookVerifier::builder().production_only().build()?;
//! let app: Router = Router::new()
//!     .route("/tl-webhook", post(on_webhook))
//!     .layer(VerifyWebhooksLayer::new(verifier).ledger(InMemoryLedger::new(100_000)));
//! # let _ = app;
//! # Ok::<(), truelayer_auth_webhooks::ConfigError>(())
//! ```

#![forbid(unsafe_code)]

#[cfg(feature = "axum")]
mod axum_extract;
mod error;
mod event;
mod jwks;
mod layer;
mod ledger;
#[cfg(feature = "postgres")]
mod postgres;
mod verifier;

#[cfg(feature = "axum")]
pub use axum_extract::WebhookRejection;
pub use error::{ConfigError, EnvelopeError, JwksError, WebhookError};
pub use event::{
    PaymentAuthorized, PaymentExecuted, PaymentFailed, PaymentSettled, Webhook, WebhookEvent,
};
pub use jwks::{FetchedJwks, JwksFuture, JwksSource, MAX_JWKS_BYTES};
pub use layer::{DEFAULT_MAX_BODY, ResponseFuture, VerifyWebhooks, VerifyWebhooksLayer};

/// The old name of [`VerifyWebhooksLayer`], kept for a release so upgrades compile.
#[deprecated(
    since = "0.1.0",
    note = "renamed `VerifyWebhooksLayer` (tower-http's `Foo`/`FooLayer` pairs)"
)]
pub type WebhookLayer = VerifyWebhooksLayer;
pub use ledger::{Begin, EventLedger, InMemoryLedger, LedgerError, LedgerFuture};
#[cfg(feature = "postgres")]
pub use postgres::{MAX_EVENT_ID_BYTES, PostgresLedger, PostgresLedgerBuilder, TlsMode};
/// The header names, shared with the other `truelayer-auth` crates.
pub use truelayer_auth_http::{TL_SIGNATURE, X_TL_WEBHOOK_TIMESTAMP};
pub use verifier::{
    TRUELAYER_PRODUCTION_JKU, TRUELAYER_SANDBOX_JKU, VerifiedWebhook, WebhookVerifier,
    WebhookVerifierBuilder,
};
