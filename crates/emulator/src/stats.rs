//! Counters of what the emulator has served, and `GET /emulator/stats`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State as AxumState;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::state::State;

/// Counters of what the emulator has served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Requests to `POST /connect/token`, whatever their outcome.
    pub token_requests: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// Token requests answered with an injected fault.
    pub faults_served: u64,
    /// Token requests answered with an OAuth2 error.
    pub token_errors: u64,
    /// Payments API requests.
    pub api_requests: u64,
    /// Payments API requests rejected for their bearer token.
    pub api_rejections: u64,
    /// Payments API requests rejected for their `Tl-Signature` or a missing
    /// `Idempotency-Key`.
    pub signature_rejections: u64,
    /// Payments created (an idempotent repeat creates none).
    pub payments_created: u64,
    /// Webhook delivery attempts, retries included.
    pub webhooks_sent: u64,
    /// Webhooks answered with a 2xx status.
    pub webhooks_delivered: u64,
    /// Webhooks given up on after their last attempt failed.
    pub webhooks_abandoned: u64,
}

/// One counter of [`Stats`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    TokenRequest,
    TokenIssued,
    FaultServed,
    TokenError,
    ApiRequest,
    ApiRejection,
    SignatureRejection,
    PaymentCreated,
    WebhookSent,
    WebhookDelivered,
    WebhookAbandoned,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    token_requests: AtomicU64,
    tokens_issued: AtomicU64,
    faults_served: AtomicU64,
    token_errors: AtomicU64,
    api_requests: AtomicU64,
    api_rejections: AtomicU64,
    signature_rejections: AtomicU64,
    payments_created: AtomicU64,
    webhooks_sent: AtomicU64,
    webhooks_delivered: AtomicU64,
    webhooks_abandoned: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    pub(crate) fn count(&self, counter: Counter) {
        let atomic = match counter {
            Counter::TokenRequest => &self.token_requests,
            Counter::TokenIssued => &self.tokens_issued,
            Counter::FaultServed => &self.faults_served,
            Counter::TokenError => &self.token_errors,
            Counter::ApiRequest => &self.api_requests,
            Counter::ApiRejection => &self.api_rejections,
            Counter::SignatureRejection => &self.signature_rejections,
            Counter::PaymentCreated => &self.payments_created,
            Counter::WebhookSent => &self.webhooks_sent,
            Counter::WebhookDelivered => &self.webhooks_delivered,
            Counter::WebhookAbandoned => &self.webhooks_abandoned,
        };
        atomic.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> Stats {
        let load = |atomic: &AtomicU64| atomic.load(Ordering::Relaxed);
        Stats {
            token_requests: load(&self.token_requests),
            tokens_issued: load(&self.tokens_issued),
            faults_served: load(&self.faults_served),
            token_errors: load(&self.token_errors),
            api_requests: load(&self.api_requests),
            api_rejections: load(&self.api_rejections),
            signature_rejections: load(&self.signature_rejections),
            payments_created: load(&self.payments_created),
            webhooks_sent: load(&self.webhooks_sent),
            webhooks_delivered: load(&self.webhooks_delivered),
            webhooks_abandoned: load(&self.webhooks_abandoned),
        }
    }
}

/// `GET /emulator/stats`.
pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new().route("/emulator/stats", get(stats))
}

async fn stats(AxumState(state): AxumState<Arc<State>>) -> Response {
    Json(state.stats.snapshot()).into_response()
}
